/**
 * Test world for the emulated virtio-net device: an EAL (memfd memory, lcores 0 and 1), two
 * net_ring ports linked back to back (the device's backend and the test's "wire"; or, with
 * loopback, one net_ring port that receives what it sends and no wire), the device as its
 * net_virtio_emu port with its vfio-user server in a host worker thread (virtio-net-host.ts), the
 * forwarding loop `tspmd emu` runs (virtioNetFwdLoop) between that port and the backend on lcore 1,
 * and vfio-user clients in the test's thread. The loop's end is recorded (result or error): close()
 * throws the error, shutdown() returns it. The loop may see the backend's port data through a
 * wrapper (e.g. a data module with injectable faults: test/hardening/virtio-net-hardening-helpers.ts).
 */
import { Worker } from 'node:worker_threads';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue, openTxQueue, type EthDev, type PortData, type RxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAllocInit, readPacket, writePacket, pktmbufFree } from '../../lib/mempool/mbuf.js';
import type { Mempool } from '../../lib/mempool/mempool.js';
import { VfioUserClient } from '../../lib/vfio-user/client.js';
import { VIRTIO_NET_FWD_MODULE, VIRTIO_NET_FWD_FN, FWD_STOP, FWD_RUNNING, FWD_IDLE, FWD_CTL_WORDS, type VirtioNetFwdArg, type VirtioNetFwdResult } from '../../drivers/emu/virtio-net/emu.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import type { HostData } from './virtio-net-host.js';
import * as os from '../../src/os/libc.js';
import { CLI, CHILD_ENV } from '../cli.js';
import '../../drivers/net/ring/ring.js';

/** Sleep without spinning. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Wait for cond (polling every ms), false on timeout. */
export async function until(cond: () => boolean, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(1);
  }
  return true;
}

/** The test's EAL: memfd memory, the main lcore and one worker lcore (the device's). */
export function testEal(prefix: string): Eal {
  const cpus = os.getAffinity();
  return new Eal({ noHuge: true, filePrefix: `${prefix}${process.pid}`, lcores: [{ id: 0, cpu: cpus[0] }, { id: 1, cpu: cpus[1] ?? cpus[0] }], mainLcore: 0 });
}

/** How the device's poll loop ended. */
export interface LoopEnd {
  result: VirtioNetFwdResult | null;
  error: Error | null;
}

let seq = 0;

/** An lcore function to run instead of the forwarding loop (it must set and honour the control words FWD_RUNNING and FWD_STOP). */
export interface LcoreFn {
  module: string;
  fn: string;
  /** its argument, from the loop's */
  arg(loop: VirtioNetFwdArg): unknown;
}

/** What the host thread posts once the device's port is started. */
interface Ready {
  guest: PortData;
  state: SharedArrayBuffer;
  stats: SharedArrayBuffer;
}

/** One device served in this process, its backend, its wire and its lcore. */
export class VnetWorld {
  readonly eal: Eal;
  readonly socket: string;
  readonly state: Int32Array;
  readonly stats: Float64Array;
  readonly backend: EthDev;
  /** the backend's peer (null with a loopback backend) */
  readonly wire: EthDev | null;
  /** the pool of the backend's (and the wire's) RX queue */
  readonly pool: Mempool;
  private readonly host: Worker;
  /** the forwarding loop's control words (FWD_STOP, FWD_RUNNING, FWD_IDLE) */
  private readonly ctl = new Int32Array(new SharedArrayBuffer(4 * FWD_CTL_WORDS));
  private readonly wireRx: RxQueue | null;
  private readonly wireTx: TxQueue | null;
  private readonly loop: Promise<LoopEnd>;
  private ended: LoopEnd | null = null;
  private readonly clients: VfioUserClient[] = [];
  private readonly burst = new Uint32Array(64);
  private closed = false;

  private constructor(eal: Eal, socket: string, host: Worker, ready: Ready, backend: EthDev, backendData: PortData, wire: EthDev | null, pool: Mempool, rx: RxQueue | null, tx: TxQueue | null, lcore?: LcoreFn) {
    this.eal = eal;
    this.socket = socket;
    this.host = host;
    this.state = new Int32Array(ready.state);
    this.stats = new Float64Array(ready.stats);
    this.backend = backend;
    this.wire = wire;
    this.pool = pool;
    this.wireRx = rx;
    this.wireTx = tx;
    const arg: VirtioNetFwdArg = { pairs: [{ guest: ready.guest, wire: backendData }], ctl: this.ctl.buffer as SharedArrayBuffer };
    const launched = lcore
      ? eal.lcores.launch<unknown>(1, lcore.module, lcore.fn, lcore.arg(arg)).then(() => null)
      : eal.lcores.launch<VirtioNetFwdResult>(1, VIRTIO_NET_FWD_MODULE, VIRTIO_NET_FWD_FN, arg);
    this.loop = launched.then(
      (result) => (this.ended = { result, error: null }),
      (e: unknown) => (this.ended = { result: null, error: e instanceof Error ? e : new Error(String(e)) }),
    );
  }

  /**
   * Build a world: ports, pool, host thread, forwarding loop (running once this resolves). With
   * loopback the backend is one net_ring port without a peer: what the device sends out of it comes
   * back in. The loop gets backendData(the backend's port data) as its wire (default: that data as is).
   */
  static async create(eal: Eal, dir: string, config: Partial<L.VirtioNetConfig> = {}, resetOnDisconnect = true, loopback = false, backendData: (data: PortData) => PortData = (d) => d, lcore?: LcoreFn): Promise<VnetWorld> {
    const n = seq++;
    const [backend, wire = null] = await probeVdevs(eal, loopback ? [`net_ring${10 + 2 * n}`] : [`net_ring${10 + 2 * n}`, `net_ring${11 + 2 * n},peer=net_ring${10 + 2 * n}`]);
    const pool = pktmbufPoolCreate(eal.memory, `vnt_pool${n}`, 4095, { cacheSize: 64 });
    for (const p of wire ? [backend, wire] : [backend]) {
      p.configure({ rxQueues: 1, txQueues: 1 });
      p.rxQueueSetup(0, 1024, pool);
      p.txQueueSetup(0, 1024);
      p.start();
    }
    const socket = join(dir, `vnet${n}.sock`);
    const cfg: L.VirtioNetConfig = { ...L.parseVirtioNetArgs({}), ...config };
    const data: HostData = { socket, config: cfg, pool: pool.desc, resetOnDisconnect };
    const host = new Worker(new URL('./virtio-net-host' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url), { workerData: data });
    const ready = await new Promise<Ready>((resolve, reject) => {
      host.once('message', resolve);
      host.once('error', reject);
    });
    const w = new VnetWorld(eal, socket, host, ready, backend, backendData(backend.data()), wire, pool, wire && await openRxQueue(wire.data(), 0), wire && await openTxQueue(wire.data(), 0), lcore);
    if (!(await until(() => Atomics.load(w.ctl, FWD_RUNNING) === 1 || w.ended !== null, 20_000))) throw new Error('the virtio-net forwarding loop did not start');
    return w;
  }

  /** A new vfio-user client of the device (closed by close()). */
  connect(): VfioUserClient {
    const c = VfioUserClient.connect(this.socket, { timeoutMs: 10_000 });
    this.clients.push(c);
    return c;
  }

  /** Statistics by name. */
  stat(name: (typeof L.STAT_NAMES)[number]): number {
    return this.stats[L.STAT_NAMES.indexOf(name)];
  }

  /** Whether the loop still runs (the lcore function has not returned). */
  get running(): boolean {
    return this.ended === null && Atomics.load(this.ctl, FWD_RUNNING) === 1;
  }

  /** Whether the forwarding loop backs off (no work for a while). */
  get idle(): boolean {
    return Atomics.load(this.ctl, FWD_IDLE) === 1;
  }

  /** How the loop ended (null while it runs). */
  get end(): LoopEnd | null {
    return this.ended;
  }

  /** The DEVICE_NEEDS_RESET reason the device recorded (0: none). */
  get needsReset(): number {
    return Atomics.load(this.state, L.G_NEEDS_RESET);
  }

  /** Frames the device sent out its backend so far (read from the wire). */
  receiveFromDevice(): Uint8Array[] {
    const out: Uint8Array[] = [];
    const rx = this.wireRx;
    if (!rx) return out;
    for (let n = rx.rxBurst(this.burst, 64); n > 0; n = rx.rxBurst(this.burst, 64)) {
      for (let i = 0; i < n; i++) {
        const b = new Uint8Array(16384);
        out.push(b.slice(0, readPacket(this.burst[i], b)));
        pktmbufFree(this.burst[i]);
      }
    }
    return out;
  }

  /** Wait until n frames came out of the device (or timeout), then look once more after a pause: anything extra shows in the count. */
  async collectFromDevice(n: number, timeoutMs = 30_000): Promise<Uint8Array[]> {
    const out: Uint8Array[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < n && Date.now() < deadline) {
      out.push(...this.receiveFromDevice());
      if (out.length < n) await sleep(1);
    }
    await sleep(50);
    out.push(...this.receiveFromDevice());
    return out;
  }

  /** Put frames (at most 64) on the wire: the backend receives them (into the device's RX). */
  sendToDevice(frames: Uint8Array[]): number {
    if (!this.wireTx) throw new Error('a loopback world has no wire');
    const b = this.burst;
    if (!pktmbufAllocInit(this.pool, b, frames.length, 0, 0, 0)) throw new Error('wire pool empty');
    frames.forEach((f, i) => { if (!writePacket(b[i], f)) throw new Error(`frame of ${f.byteLength} bytes does not fit an mbuf`); });
    const sent = this.wireTx.txBurst(b, frames.length, 0);
    for (let i = sent; i < frames.length; i++) pktmbufFree(b[i]);
    return sent;
  }

  /** Stop the loop (its result; its error thrown once all is closed), close the host thread (the device), the clients and the ports. */
  async close(): Promise<VirtioNetFwdResult | null> {
    const end = await this.shutdown();
    if (end?.error) throw end.error;
    return end?.result ?? null;
  }

  /** Like close(), but how the loop ended, its error returned instead of thrown (null once closed). */
  async shutdown(): Promise<LoopEnd | null> {
    if (this.closed) return null;
    this.closed = true;
    // the loop first: the port's stop then detaches its engine, and the clients' teardown (a device
    // reset) needs no pause of a loop that no longer runs
    Atomics.store(this.ctl, FWD_STOP, 1);
    const end = await this.loop;
    await new Promise<void>((resolve) => {
      this.host.on('message', (m: { op: string }) => { if (m.op === 'closed') resolve(); });
      this.host.postMessage({ op: 'close' });
    });
    await this.host.terminate();
    for (const c of this.clients) c.close();
    this.receiveFromDevice();
    this.backend.close();
    this.wire?.close();
    return end;
  }
}

/** An Ethernet frame of len bytes: broadcast destination, a source, IPv4 ethertype, then a pattern seeded by seed. */
export function frame(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0, 0, 0, 0, seed & 0xff], 6);
  f[12] = 0x08; f[13] = 0x00;
  for (let i = 14; i < len; i++) f[i] = (i * 7 + seed * 13) & 0xff;
  return f;
}

/** A `tspmd emu` child process. */
export interface EmuChild {
  stderr(): string;
  /** SIGTERM, then the exit code */
  stop(): Promise<number | null>;
}

/**
 * Start `tspmd emu <ealArgs> -- <appArgs>` and wait for its "serving" line. The application's
 * arguments go after "--": a device spec with key=value arguments is not recognised as a
 * positional before it (see the report on examples/vfio-user/positional.ts).
 */
export function startEmuArgs(ealArgs: string[], appArgs: string[]): Promise<EmuChild> {
  const proc = spawn(process.execPath, [...process.execArgv, CLI, 'emu', '--file-prefix', `tspvne${process.pid}`, ...ealArgs, '--', ...appArgs], { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  let out = '', err = '', exited = false;
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => { exited = true; resolve(code); }));
  proc.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const child: EmuChild = { stderr: () => err, stop: async () => { if (!exited) proc.kill('SIGTERM'); return exit; } };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`tspmd emu did not start within 30 s: ${err}`)); }, 30_000);
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('serving ')) { clearTimeout(timer); resolve(child); }
    });
    void exit.then((code) => { clearTimeout(timer); reject(new Error(`tspmd emu exited with ${code}: ${err}`)); });
  });
}
