/**
 * virtio-net, emulated: the poll loop `tspmd emu virtio-net` runs on an lcore until a back-end PMD
 * takes its place: the engine (backend.ts, VirtioNetBackend) between the device's queues and an EAL
 * port's queue 0. Each round: service() (pauses, state, control queue, doorbells); the guest's
 * transmitqs -> the port's TX (what it does not send is freed and counted tx_dropped); the port's RX
 * -> the guest's receiveqs (what finds no buffer is freed and counted rx_nobuf_drops); after
 * IDLE_MS without work it backs off, sleeping 1 ms at a time on the FD doorbells.
 *
 * An exception (a bug, or a backend failing) reaches the try/catch outside the loop: the engine
 * frees the burst's mbufs and sets DEVICE_NEEDS_RESET (crashed), and the loop goes on, or after
 * its crash budget parks the queues until the driver resets the device.
 */
import { countGc } from '../../../src/lcore/gc.js';
import { log } from '../../../src/log.js';
import type { LcoreContext } from '../../../src/lcore/types.js';
import { openRxQueue, openTxQueue, type PortData, type RxQueue, type TxQueue } from '../../../lib/ethdev/ethdev.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufFreeBulk } from '../../../lib/mempool/mbuf.js';
import { VirtioNetBackend, BURST, type VirtioNetBackendArg } from './backend.js';
import * as D from './defs.js';
import * as L from './layout.js';

/** What the loop needs, as plain data (VirtioNetDevice.loopArg). */
export interface VirtioNetLoopArg {
  /** the engine's argument (the device's back-end description and its sizes) */
  engine: VirtioNetBackendArg;
  /** the backend port: its queue 0 carries every queue pair */
  backend: PortData;
}

/** What the loop returns. */
export interface VirtioNetLoopResult {
  iterations: number;
  /** garbage collections in the loop, and after its first second (warm-up) */
  gcCount: number;
  gcCountAfterWarmup: number;
  /** of those after warm-up, scavenges (young-generation collections: garbage made per packet shows there first) */
  scavengesAfterWarmup: number;
}

/** No work for this long: poll once per millisecond instead of back to back. */
const IDLE_MS = 100;
/** Interpreted and baseline code box doubles until the loop is optimized: allow it a second. */
const WARMUP_MS = 1000;

/** The loop's state (kept across exceptions). */
class PortLoop {
  iterations = 0;
  /** packets of out the TX burst in hand holds (freed by dropHeld after an exception) */
  private held = 0;
  private readonly out: Uint32Array;
  private readonly rb = new Uint32Array(BURST);
  private readonly stats: Float64Array;

  constructor(private readonly be: VirtioNetBackend, private readonly rx: RxQueue, private readonly tx: TxQueue, private readonly st: Int32Array, private readonly ctx: LcoreContext) {
    this.out = new Uint32Array(BURST * be.queuePairs);
    this.stats = be.statistics;
  }

  /** Whether the loop was asked to return (the lcore's stop, or the device's stop word). */
  stopped(): boolean {
    return this.ctx.stopRequested() || Atomics.load(this.st, L.G_STOP) !== 0;
  }

  /** After an exception: free the packets a TX burst held when it threw. */
  dropHeld(): void {
    const n = this.held;
    this.held = 0;
    if (n > 0) pktmbufFreeBulk(this.out, n, 0);
  }

  /** Poll until stopped. */
  run(): void {
    const be = this.be, st = this.st, out = this.out, rb = this.rb, stats = this.stats;
    let idleIters = 0, idleSince = -1, idle = false;
    while (!this.stopped()) {
      let work = be.service();
      const got = be.receive(out, out.length);
      if (got > 0) {
        work += got;
        // A backend that throws is taken to have kept none of them (dropHeld() frees them).
        this.held = got;
        const sent = this.tx.txBurst(out, got, 0);
        this.held = 0;
        if (sent < got) {
          const bytes = pktmbufFreeBulk(out, got - sent, sent);
          stats[D.S_TX_PACKETS] -= got - sent;
          stats[D.S_TX_BYTES] -= bytes;
          stats[D.S_TX_DROPPED] += got - sent;
        }
      }
      const n = this.rx.rxBurst(rb, BURST);
      if (n > 0) {
        work += n;
        const took = be.deliver(rb, n);
        if (took < n) {
          pktmbufFreeBulk(rb, n - took, took);
          stats[D.S_RX_NOBUF] += n - took;
        }
      }
      this.iterations++;
      if (work > 0) {
        idleIters = 0;
        idleSince = -1;
        if (idle) { idle = false; Atomics.store(st, L.G_IDLE, 0); }
      } else if (idle) {
        // A pause request or stop ends it at once, a doorbell eventfd too (the client took FD
        // doorbells: then the sleep is poll(2) on them, and a pause waits for its end, 1 ms at most).
        if (be.idle(1) > 0) { idle = false; idleIters = 0; idleSince = -1; Atomics.store(st, L.G_IDLE, 0); }
      } else if (++idleIters >= 1024) {
        idleIters = 0;
        const now = performance.now();
        if (idleSince < 0) idleSince = now;
        else if (now - idleSince > IDLE_MS) { idle = true; Atomics.store(st, L.G_IDLE, 1); }
      }
    }
  }
}

/** The device's poll loop (eal.lcores.launch(lcore, VIRTIO_NET_LOOP_MODULE, 'virtioNetLoop', arg)). */
export async function virtioNetLoop(arg: VirtioNetLoopArg, ctx: LcoreContext): Promise<VirtioNetLoopResult> {
  const rx = await openRxQueue(arg.backend, 0);
  const tx = await openTxQueue(arg.backend, 0);
  const st = new Int32Array(arg.engine.desc.attrs.words);
  const pool = Mempool.attach(arg.backend.rxPools[0]);
  const gc = countGc();
  const warm = performance.now() + WARMUP_MS;
  let iterations = 0, end = 0;
  try {
    const be = VirtioNetBackend.open(arg.engine, pool);
    const loop = new PortLoop(be, rx, tx, st, ctx);
    Atomics.store(st, L.G_RUNNING, 1);
    try {
      for (;;) {
        try {
          loop.run();
          break;
        } catch (e) {
          try { loop.dropHeld(); } catch (f) { log('error', 'virtio-net', `data path: freeing the failed TX burst: ${(f as Error).message}`); }
          if (!be.crashed(e) && !be.park(() => loop.stopped())) break;
        }
      }
    } finally {
      iterations = loop.iterations;
      be.close();
    }
  } finally {
    end = performance.now();
    Atomics.store(st, L.G_IDLE, 0);
    Atomics.store(st, L.G_RUNNING, 0);
    pool.flushCache();
  }
  await gc.settle();
  gc.stop();
  const after = gc.kindsBetween(warm, end);
  return { iterations, gcCount: gc.count(), gcCountAfterWarmup: after.scavenges + after.others, scavengesAfterWarmup: after.scavenges };
}
