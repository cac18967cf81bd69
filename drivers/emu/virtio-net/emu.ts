/**
 * The virtio-net device as `tspmd emu virtio-net` serves it: the device behind a net_virtio_emu
 * port (drivers/net/virtio_emu: the device, its engine as a port's queues, their lifecycle), an EAL
 * port as its backend (net_tap, af_packet, ring, null: --vdev, backend=PORT), and a forwarding
 * lcore between the two (virtioNetFwdLoop, started and stopped here; devices given one lcore share
 * one loop, VirtioNetEmu.startShared). `tspmd emu` (app/emu/emu.ts)
 * parses the command line, serves the device over vfio-user and prints. Both ports' RX queues
 * allocate from one pool in the EAL's memory.
 */
import type { Eal } from '../../../src/eal.js';
import { UsageError } from '../../../src/options.js';
import { log } from '../../../src/log.js';
import { countGc } from '../../../src/lcore/gc.js';
import { siblingModule } from '../../../src/lcore/module.js';
import type { LcoreContext } from '../../../src/lcore/types.js';
import { openRxQueue, openTxQueue, type EthDev, type PortData, type RxQueue, type TxQueue } from '../../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufFreeBulk } from '../../../lib/mempool/mbuf.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import type { EmuDevice } from '../../../lib/emudev/emudev.js';
import { VirtioEmuPort } from '../../net/virtio_emu/virtio_emu.js';
import { heldBackend, releaseHeld } from '../../net/virtio_emu/virtio_emu_data.js';
import type { VirtioNetDevice } from './device.js';
import { BURST, type VirtioNetBackend } from './backend.js';
import * as L from './layout.js';
import { S_TX_PACKETS, S_TX_BYTES, S_TX_DROPPED, S_RX_NOBUF } from './defs.js';

/** One line for `tspmd emu --help`. */
export const VIRTIO_NET_SUMMARY = 'virtio 1.x modern network device (split rings, MSI-X, MQ, MRG_RXBUF) on an EAL port: --vdev <backend>';

/** Descriptors of the ports' queues. */
const PORT_DESC = 1024;
/** No work for this long: the loop sleeps on the device's doorbells (1 ms at a time) instead of polling back to back. */
const IDLE_MS = 100;
/** The forwarding loop's control words (Int32 indexes): set by its owner to stop it. */
export const FWD_STOP = 0;
/** set by the loop: 1 while it runs */
export const FWD_RUNNING = 1;
/** set by the loop: 1 while it backs off (every device idle) */
export const FWD_IDLE = 2;
/** the control buffer's size in words */
export const FWD_CTL_WORDS = 4;
const STOP = FWD_STOP, RUNNING = FWD_RUNNING, IDLE = FWD_IDLE, CTL_WORDS = FWD_CTL_WORDS;

/** The forwarding loop's module and function (eal.lcores.launch(lcore, VIRTIO_NET_FWD_MODULE, VIRTIO_NET_FWD_FN, VirtioNetFwdArg)). */
export const VIRTIO_NET_FWD_MODULE = siblingModule(import.meta.url, 'emu');
/** The forwarding loop's function name. */
export const VIRTIO_NET_FWD_FN = 'virtioNetFwdLoop';

/** One device's ports on a forwarding lcore. */
export interface VirtioNetFwdPair {
  /** the device's net_virtio_emu port (the guest) and its backend port (the wire) */
  guest: PortData;
  wire: PortData;
}

/** What the forwarding lcore needs (plain data). */
export interface VirtioNetFwdArg {
  /** the devices it forwards for, in turn */
  pairs: VirtioNetFwdPair[];
  /** STOP, RUNNING, IDLE */
  ctl: SharedArrayBuffer;
}

/** What the forwarding loop returns. */
export interface VirtioNetFwdResult {
  iterations: number;
  /** garbage collections in the loop, and after its first second (warm-up) */
  gcCount: number;
  gcCountAfterWarmup: number;
  scavengesAfterWarmup: number;
}

/** A forwarding loop on one lcore and the devices it serves (one, or several given the same lcore). */
class FwdRun {
  private readonly ctl = new Int32Array(new SharedArrayBuffer(4 * CTL_WORDS));
  private running: Promise<VirtioNetFwdResult> | null = null;
  private stopping: Promise<VirtioNetFwdResult> | null = null;

  /** Launch the loop for devs on worker lcore `lcore`; resolves once it runs. */
  async launch(eal: Eal, lcore: number, devs: readonly VirtioNetEmu[]): Promise<void> {
    const arg: VirtioNetFwdArg = { pairs: devs.map((d) => ({ guest: d.port.data(), wire: d.backend.data() })), ctl: this.ctl.buffer as SharedArrayBuffer };
    const p = eal.lcores.launch<VirtioNetFwdResult>(lcore, VIRTIO_NET_FWD_MODULE, VIRTIO_NET_FWD_FN, arg);
    this.running = p;
    let failed: unknown = null;
    p.catch((e: unknown) => { failed = e; });
    const deadline = Date.now() + 20000;
    while (Atomics.load(this.ctl, RUNNING) === 0) {
      if (failed) throw failed as Error;
      if (Date.now() > deadline) throw new Error(`virtio-net: the forwarding loop did not start on lcore ${lcore} within 20 s`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Stop the loop (its own stop word: other lcores keep running) once, whichever of its devices asks first; its result. */
  stop(): Promise<VirtioNetFwdResult> | null {
    if (!this.running) return null;
    if (!this.stopping) {
      Atomics.store(this.ctl, STOP, 1);
      Atomics.notify(this.ctl, STOP);
      this.stopping = this.running;
    }
    return this.stopping;
  }
}

/** A virtio-net device served by the emu app: its net_virtio_emu port, the backend port and the forwarding lcore. */
export class VirtioNetEmu {
  /** the device's port (owns the device) */
  readonly port: VirtioEmuPort;
  readonly backend: EthDev;
  private run: FwdRun | null = null;
  private launched = false;
  private closed = false;

  /** Wrap a started device port and a started backend port. */
  constructor(port: VirtioEmuPort, backend: EthDev) {
    this.port = port;
    this.backend = backend;
  }

  /** The device. */
  get device(): VirtioNetDevice {
    return this.port.device;
  }

  /** The emudev device (for the vfio-user server). */
  get emu(): EmuDevice {
    return this.port.device.emu;
  }

  /** Launch the forwarding loop on worker lcore `lcore`; resolves once it runs. */
  start(eal: Eal, lcore: number): Promise<void> {
    return VirtioNetEmu.startShared(eal, lcore, [this]);
  }

  /**
   * Launch one forwarding loop on worker lcore `lcore` for all of devs (none started yet): it
   * forwards for each device in turn and backs off only when all are idle; resolves once it runs.
   * Stopping or closing any of them stops it for all.
   */
  static async startShared(eal: Eal, lcore: number, devs: readonly VirtioNetEmu[]): Promise<void> {
    if (devs.length === 0) throw new Error('virtio-net: a forwarding loop needs a device to forward for');
    const started = devs.find((d) => d.run !== null || d.closed);
    if (started) throw new Error(`${started.emu.name}: its forwarding loop was started (or the device closed) already`);
    const run = new FwdRun();
    for (const d of devs) { d.run = run; d.launched = true; }
    await run.launch(eal, lcore, devs);
  }

  /** Stop the forwarding loop (shared with the devices on its lcore); returns its result. */
  async stop(): Promise<VirtioNetFwdResult | null> {
    const run = this.run;
    this.run = null;
    return run ? await run.stop() : null;
  }

  /** Stop the loop, print the statistics (if it ever ran), release the device and stop the backend. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const r = await this.stop().catch((e: unknown) => { log('error', 'virtio-net', `forwarding loop failed: ${(e as Error).message}`); return null; });
    this.port.stop(); // the engine detaches from the device
    const s = this.device.statistics();
    if (this.launched) console.error(`${this.emu.name}: ${Object.entries(s).map(([k, v]) => `${k} ${v}`).join(', ')}${r ? `, loop iterations ${r.iterations}, gc ${r.gcCountAfterWarmup}` : ''}`);
    await this.port.shutdown();
    this.backend.stop();
  }
}

/**
 * Create the device named name from its arguments, its backend one of the app's ports (`tspmd emu
 * virtio-net,...`); the port must not serve another device already. The caller serves the device.
 */
export function createVirtioNetEmu(eal: Eal, args: Record<string, string>, ports: readonly EthDev[], name = 'virtio-net'): VirtioNetEmu {
  const cfg = L.parseVirtioNetArgs(args);
  if (ports.length === 0) throw new UsageError('virtio-net needs a backend port: add one, e.g. --vdev net_tap0,iface=tsp0 (or --vdev net_ring0 for a loopback)');
  const backend = ports.find((p) => p.port === cfg.backend);
  if (!backend) throw new UsageError(`${name}: backend=${cfg.backend} is not a port (ports: ${ports.map((p) => `${p.port}=${p.name}`).join(', ')}); choose one of them`);
  if (backend.status === 'started') throw new UsageError(`${name}: backend=${cfg.backend} (port ${backend.name}) is the backend of another device already; give each virtio-net device its own port (--vdev) and backend=PORT`);
  const pool = pktmbufPoolCreate(eal.memory, `vnet_pool${backend.port}`, 8191);
  const port = VirtioEmuPort.create(name, cfg, null);
  try {
    for (const p of [backend, port]) {
      p.configure({ rxQueues: 1, txQueues: 1, promiscuous: true });
      const info = p.info();
      const desc = Math.max(info.minDesc, Math.min(info.maxDesc, PORT_DESC));
      p.rxQueueSetup(0, desc, pool);
      p.txQueueSetup(0, desc);
      p.start();
    }
  } catch (e) {
    void port.shutdown();
    throw e;
  }
  return new VirtioNetEmu(port, backend);
}

// ---- the forwarding loop, on the device's lcore ----

/** Interpreted and baseline code box doubles until the loop is optimized: GCs in its first second are warm-up. */
const WARMUP_MS = 1000;

/** One device's queues and buffers in the forwarding loop. */
class FwdPair {
  readonly stats: Float64Array;
  /** a burst from every transmitq of the guest (receive takes up to BURST from each) */
  readonly out: Uint32Array;
  /** packets of out in hand (a burst between the guest's RX and the wire's TX: freed if that throws) */
  held = 0;
  /** out of crash budget: only pauses honoured until the driver resets the device */
  parked = false;

  constructor(readonly grx: RxQueue, readonly gtx: TxQueue, readonly wrx: RxQueue, readonly wtx: TxQueue, readonly be: VirtioNetBackend) {
    this.stats = be.statistics;
    this.out = new Uint32Array(BURST * be.queuePairs);
  }
}

/** Open a device's queues on this lcore (its engine attaches to the device). */
async function openPair(p: VirtioNetFwdPair): Promise<FwdPair> {
  const grx = await openRxQueue(p.guest, 0), gtx = await openTxQueue(p.guest, 0);
  const wrx = await openRxQueue(p.wire, 0), wtx = await openTxQueue(p.wire, 0);
  const be = heldBackend(p.guest);
  if (!be) throw new Error(`${p.guest.name}: its queues opened no engine in this lcore`);
  return new FwdPair(grx, gtx, wrx, wtx, be);
}

/** One forwarding round for one device: guest -> wire, wire -> guest; the packets moved. */
function forward(p: FwdPair, rb: Uint32Array): number {
  const out = p.out, stats = p.stats;
  const got = p.grx.rxBurst(out, out.length);
  if (got > 0) {
    p.held = got;
    const sent = p.wtx.txBurst(out, got, 0);
    p.held = 0;
    if (sent < got) {
      // not sent: not transmitted by the device either
      const bytes = pktmbufFreeBulk(out, got - sent, sent);
      stats[S_TX_PACKETS] -= got - sent;
      stats[S_TX_BYTES] -= bytes;
      stats[S_TX_DROPPED] += got - sent;
    }
  }
  const n = p.wrx.rxBurst(rb, BURST);
  if (n > 0) {
    const took = p.gtx.txBurst(rb, n, 0);
    if (took < n) {
      pktmbufFreeBulk(rb, n - took, took);
      stats[S_RX_NOBUF] += n - took;
    }
  }
  return got + n;
}

/**
 * A device's forwarding threw (its backend port failing, or a bug): free the burst in hand; the
 * engine frees what it held and sets DEVICE_NEEDS_RESET (crashed); out of crash budget the device
 * is parked until its driver resets it. The other devices go on.
 */
function failed(p: FwdPair, e: unknown): void {
  const n = p.held;
  p.held = 0;
  try {
    if (n > 0) pktmbufFreeBulk(p.out, n, 0);
  } catch (f) {
    log('error', 'virtio-net', `forwarding loop: freeing the failed burst: ${(f as Error).message}`);
  }
  if (!p.be.crashed(e)) {
    p.parked = true;
    log('error', 'virtio-net', 'forwarding loop: the crash budget is spent: the device\'s queues parked until the driver resets it');
  }
}

/**
 * Forward between each device's port and its backend port until stopped: each iteration, for each
 * device in turn, a burst the guest sent (from each of its transmitqs) goes out of its backend and
 * a burst its backend received goes to the guest; what a TX queue did not take is freed and
 * counted in that device's statistics (tx_dropped, taken back out of tx_packets/tx_bytes;
 * rx_nobuf_drops). After IDLE_MS without a packet on any device it sleeps on the devices'
 * doorbells, 1 ms at a time on one device after the other, until one rings or a packet arrives.
 * An exception is the device's whose forwarding threw (failed()); a parked device is skipped
 * (its pauses honoured) until its driver resets it.
 */
export async function virtioNetFwdLoop(arg: VirtioNetFwdArg, ctx: LcoreContext): Promise<VirtioNetFwdResult> {
  const ctl = new Int32Array(arg.ctl);
  const pairs: FwdPair[] = [];
  try {
    for (const p of arg.pairs) pairs.push(await openPair(p));
  } catch (e) {
    for (const p of arg.pairs) releaseHeld(p.guest.name); // the devices attached so far
    throw e;
  }
  const np = pairs.length, rb = new Uint32Array(BURST);
  const stopped = (): boolean => ctx.stopRequested() || Atomics.load(ctl, STOP) !== 0;
  const gc = countGc();
  const warm = performance.now() + WARMUP_MS;
  let iterations = 0, idle = false, idleIters = 0, idleSince = -1, sleeper = 0, cur = 0;
  Atomics.store(ctl, RUNNING, 1);
  try {
    while (!stopped()) {
      try {
        while (!ctx.stopRequested() && Atomics.load(ctl, STOP) === 0) {
          iterations++;
          let work = 0;
          for (cur = 0; cur < np; cur++) {
            const p = pairs[cur];
            if (!p.parked) work += forward(p, rb);
            else if (p.be.parkedPoll()) p.parked = false;
          }
          if (work > 0) {
            idleIters = 0;
            idleSince = -1;
            if (idle) { idle = false; Atomics.store(ctl, IDLE, 0); }
          } else if (idle) {
            // A doorbell, a pause request or 1 ms ends it; a doorbell ends the back-off too. The
            // others' rings are polled every round, so none waits more than about 1 ms.
            if (++sleeper >= np) sleeper = 0;
            cur = sleeper;
            if (pairs[sleeper].be.idle(1) > 0) { idle = false; idleIters = 0; idleSince = -1; Atomics.store(ctl, IDLE, 0); }
          } else if (++idleIters >= 1024) {
            idleIters = 0;
            const now = performance.now();
            if (idleSince < 0) idleSince = now;
            else if (now - idleSince > IDLE_MS) { idle = true; Atomics.store(ctl, IDLE, 1); }
          }
        }
      } catch (e) {
        failed(pairs[cur], e);
      }
    }
  } finally {
    Atomics.store(ctl, IDLE, 0);
    Atomics.store(ctl, RUNNING, 0);
    // a loop that returned holds no device: each engine detaches now (a device reset then waits for
    // no pause of this lcore), not only when the port stops
    for (const p of arg.pairs) releaseHeld(p.guest.name);
    for (const p of arg.pairs) Mempool.attach(p.guest.rxPools[0]).flushCache();
  }
  const end = performance.now();
  await gc.settle();
  gc.stop();
  const after = gc.kindsBetween(warm, end);
  return { iterations, gcCount: gc.count(), gcCountAfterWarmup: after.scavenges + after.others, scavengesAfterWarmup: after.scavenges };
}
