/**
 * Helpers of the emulated virtio-net hardening tests (virtio-net-device.test.ts beside this file).
 *
 * HardWorld is VnetWorld (test/emu/virtio-net-helpers.ts) with two more handles on the device: its
 * backend may be a net_ring port with injectable faults (this module is also that port's data
 * module: openRxQueue/openTxQueue below wrap net_ring's, and the lcore imports this file through
 * PortData.module), and the loop's end is recorded (result or error) instead of thrown at close.
 * The device's control half and vfio-user server run in the same host thread as VnetWorld's
 * (test/emu/virtio-net-host.ts); its poll loop on lcore 1.
 *
 * Faults (Int32 words of HardWorld.fault, each a count of remaining occurrences):
 *   FAULT_RX_THROW: rxBurst throws before taking anything (the loop crashes holding no mbuf);
 *   FAULT_RX_BOGUS: rxBurst returns the mbufs it got plus one handle of a pool that no thread
 *     has (0xfe000000): the device crashes on it in the middle of the burst, holding the others;
 *   FAULT_TX_THROW: txBurst throws and takes nothing (the device holds the burst's mbufs).
 */
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { Eal } from '../../src/eal.js';
import * as os from '../../src/os/libc.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import * as ringData from '../../drivers/net/ring/ring_data.js';
import { openRxQueue as ethOpenRx, openTxQueue as ethOpenTx, type EthDev, type PortData, type RxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAllocInit, readPacket, writePacket, pktmbufFree } from '../../lib/mempool/mbuf.js';
import type { Mempool } from '../../lib/mempool/mempool.js';
import { VfioUserClient } from '../../lib/vfio-user/client.js';
import * as V from '../../lib/virtio/virtio.js';
import { VIRTIO_NET_LOOP_MODULE, VIRTIO_NET_LOOP_FN } from '../../drivers/emu/virtio-net/device.js';
import type { VirtioNetLoopArg, VirtioNetLoopResult } from '../../drivers/emu/virtio-net/datapath.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import type { HostData } from '../emu/virtio-net-host.js';
import type { TestQueue, TestVirtioNet } from '../emu/virtio-net-driver.js';
import '../../drivers/net/ring/ring.js';

export const FAULT_RX_THROW = 0, FAULT_RX_BOGUS = 1, FAULT_TX_THROW = 2;
const FAULT_WORDS = 4;
/** A handle of pool 254: no thread of the test ever has that many pools. */
export const BOGUS_MBUF = 0xfe00_0000;

/** A net_ring PortData with a fault table (structured-cloneable: the SharedArrayBuffer is shared). */
interface FaultyPortData extends PortData {
  fault: SharedArrayBuffer;
}

/** Take one occurrence of fault w (false when none is left). */
function take(f: Int32Array, w: number): boolean {
  for (;;) {
    const n = Atomics.load(f, w);
    if (n <= 0) return false;
    if (Atomics.compareExchange(f, w, n, n - 1) === n) return true;
  }
}

/** Data module of the faulty backend: net_ring's RX queue q with FAULT_RX_* applied. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  const inner = ringData.openRxQueue(port, q, stats);
  const f = new Int32Array((port as FaultyPortData).fault);
  return {
    rxBurst(out: Uint32Array, n: number): number {
      if (take(f, FAULT_RX_THROW)) throw new Error('tsp faulty backend: rxBurst failed');
      const k = inner.rxBurst(out, n);
      if (k === 0 || k >= n || !take(f, FAULT_RX_BOGUS)) return k;
      out[k] = BOGUS_MBUF;
      return k + 1;
    },
  };
}

/** Data module of the faulty backend: net_ring's TX queue q with FAULT_TX_THROW applied. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  const inner = ringData.openTxQueue(port, q, stats);
  const f = new Int32Array((port as FaultyPortData).fault);
  return {
    txBurst(pkts: Uint32Array, n: number, off = 0): number {
      if (take(f, FAULT_TX_THROW)) throw new Error('tsp faulty backend: txBurst failed');
      return inner.txBurst(pkts, n, off);
    },
  };
}

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

/** The test's EAL: memfd memory, lcore 0 (the test) and lcore 1 (the device's poll loop). */
export function hardEal(prefix: string): Eal {
  const cpus = os.getAffinity();
  return new Eal({ noHuge: true, filePrefix: `${prefix}${process.pid}`, lcores: [{ id: 0, cpu: cpus[0] }, { id: 1, cpu: cpus[1] ?? cpus[0] }], mainLcore: 0 });
}

/** Options of a HardWorld. */
export interface HardWorldOptions {
  config?: Partial<L.VirtioNetConfig>;
  /** the backend's data module is this file's (faults injectable through HardWorld.fault) */
  faulty?: boolean;
}

/** How the device's poll loop ended. */
export interface LoopEnd {
  result: VirtioNetLoopResult | null;
  error: Error | null;
}

let seq = 0;

/** One device served in this process, its net_ring backend and the backend's peer (the wire). */
export class HardWorld {
  readonly eal: Eal;
  readonly socket: string;
  readonly state: Int32Array;
  readonly stats: Float64Array;
  readonly pool: Mempool;
  /** the fault words (faulty worlds), else null */
  readonly fault: Int32Array | null;
  private readonly backend: EthDev;
  private readonly wire: EthDev;
  private readonly host: Worker;
  private readonly wireRx: RxQueue;
  private readonly wireTx: TxQueue;
  private readonly burst = new Uint32Array(64);
  private readonly clients: VfioUserClient[] = [];
  private readonly loop: Promise<LoopEnd>;
  private ended: LoopEnd | null = null;
  private closed = false;

  private constructor(eal: Eal, socket: string, host: Worker, arg: VirtioNetLoopArg, state: SharedArrayBuffer, stats: SharedArrayBuffer, backend: EthDev, wire: EthDev, pool: Mempool, fault: Int32Array | null, rx: RxQueue, tx: TxQueue) {
    this.eal = eal;
    this.socket = socket;
    this.host = host;
    this.state = new Int32Array(state);
    this.stats = new Float64Array(stats);
    this.backend = backend;
    this.wire = wire;
    this.pool = pool;
    this.fault = fault;
    this.wireRx = rx;
    this.wireTx = tx;
    this.loop = eal.lcores.launch<VirtioNetLoopResult>(1, VIRTIO_NET_LOOP_MODULE, VIRTIO_NET_LOOP_FN, arg).then(
      (result) => (this.ended = { result, error: null }),
      (e: unknown) => (this.ended = { result: null, error: e instanceof Error ? e : new Error(String(e)) }),
    );
  }

  /** Build a world (ports, pool, host thread, poll loop running once this resolves). */
  static async create(eal: Eal, dir: string, opts: HardWorldOptions = {}): Promise<HardWorld> {
    const n = seq++;
    const [backend, wire] = await probeVdevs(eal, [`net_ring${40 + 2 * n}`, `net_ring${41 + 2 * n},peer=net_ring${40 + 2 * n}`]);
    const pool = pktmbufPoolCreate(eal.memory, `tsp_hvn_pool${n}`, 4095, { cacheSize: 64 });
    for (const p of [backend, wire]) {
      p.configure({ rxQueues: 1, txQueues: 1 });
      p.rxQueueSetup(0, 1024, pool);
      p.txQueueSetup(0, 1024);
      p.start();
    }
    const socket = join(dir, `hvn${n}.sock`);
    const config: L.VirtioNetConfig = { ...L.parseVirtioNetArgs({}), ...opts.config };
    let data: PortData = backend.data();
    let fault: Int32Array | null = null;
    if (opts.faulty) {
      fault = new Int32Array(new SharedArrayBuffer(4 * FAULT_WORDS));
      const faulty: FaultyPortData = { ...data, module: import.meta.url, fault: fault.buffer as SharedArrayBuffer };
      data = faulty;
    }
    const hostData: HostData = { socket, config, backend: data, resetOnDisconnect: true };
    const hostUrl = new URL('../emu/virtio-net-host' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url);
    const host = new Worker(hostUrl, { workerData: hostData });
    const ready = await new Promise<{ arg: VirtioNetLoopArg; state: SharedArrayBuffer; stats: SharedArrayBuffer }>((resolve, reject) => {
      host.once('message', resolve);
      host.once('error', reject);
    });
    const w = new HardWorld(eal, socket, host, ready.arg, ready.state, ready.stats, backend, wire, pool, fault, await ethOpenRx(wire.data(), 0), await ethOpenTx(wire.data(), 0));
    if (!(await until(() => Atomics.load(w.state, L.G_RUNNING) === 1 || w.ended !== null, 20_000))) throw new Error('the virtio-net poll loop did not start');
    return w;
  }

  /** A new vfio-user client of the device (closed by close()). */
  connect(): VfioUserClient {
    const c = VfioUserClient.connect(this.socket, { timeoutMs: 10_000 });
    this.clients.push(c);
    return c;
  }

  /** A statistic by name. */
  stat(name: (typeof L.STAT_NAMES)[number]): number {
    return this.stats[L.STAT_NAMES.indexOf(name)];
  }

  /** Whether the poll loop still runs (the lcore function has not returned). */
  get running(): boolean {
    return this.ended === null && Atomics.load(this.state, L.G_RUNNING) === 1;
  }

  /** How the loop ended (null while it runs). */
  get end(): LoopEnd | null {
    return this.ended;
  }

  /** The DEVICE_NEEDS_RESET reason the device recorded (0: none). */
  get needsReset(): number {
    return Atomics.load(this.state, L.G_NEEDS_RESET);
  }

  /** Frames the device sent out of its backend so far (read from the wire, mbufs freed). */
  receiveFromDevice(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let n = this.wireRx.rxBurst(this.burst, 64); n > 0; n = this.wireRx.rxBurst(this.burst, 64)) {
      for (let i = 0; i < n; i++) {
        const b = new Uint8Array(16384);
        out.push(b.slice(0, readPacket(this.burst[i], b)));
        pktmbufFree(this.burst[i]);
      }
    }
    return out;
  }

  /** Wait until n frames came out of the device (or timeout). */
  async collectFromDevice(n: number, timeoutMs = 10_000): Promise<Uint8Array[]> {
    const out: Uint8Array[] = [];
    await until(() => { out.push(...this.receiveFromDevice()); return out.length >= n; }, timeoutMs);
    return out;
  }

  /** Put frames (at most 64) on the wire: the backend receives them. Returns how many went. */
  sendToDevice(frames: Uint8Array[]): number {
    const b = this.burst;
    if (!pktmbufAllocInit(this.pool, b, frames.length, 0, 0, 0)) throw new Error('wire pool empty');
    frames.forEach((f, i) => { if (!writePacket(b[i], f)) throw new Error(`frame of ${f.byteLength} bytes does not fit an mbuf`); });
    const sent = this.wireTx.txBurst(b, frames.length, 0);
    for (let i = sent; i < frames.length; i++) pktmbufFree(b[i]);
    return sent;
  }

  /** Stop the loop, close clients, host thread and ports; how the loop ended. */
  async close(): Promise<LoopEnd | null> {
    if (this.closed) return null;
    this.closed = true;
    for (const c of this.clients) c.close();
    Atomics.store(this.state, L.G_STOP, 1);
    const end = await this.loop;
    await new Promise<void>((resolve) => {
      this.host.on('message', (m: { op: string }) => { if (m.op === 'closed') resolve(); });
      this.host.postMessage({ op: 'close' });
    });
    await this.host.terminate();
    this.receiveFromDevice();
    this.backend.close();
    this.wire.close();
    return end;
  }
}

/** An Ethernet frame of len bytes: broadcast destination, a source, IPv4 ethertype, then a pattern seeded by seed. */
export function frame(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0, 0, 0, 0x48, seed & 0xff], 6);
  f[12] = 0x08; f[13] = 0x00;
  for (let i = 14; i < len; i++) f[i] = (i * 11 + seed * 17) & 0xff;
  return f;
}

/** Where a queue's rings and buffers go in the test driver's memory (byte offsets). */
export interface QueuePlace {
  desc: number;
  avail: number;
  used: number;
  buf: number;
  bufSize: number;
}

/**
 * Set up and enable queue q at the given offsets of the driver's memory (TestVirtioNet.setupQueue
 * allocates from the bottom of its memory; this puts rings anywhere, e.g. beyond 2 GiB into it),
 * and register it with the driver so that its send/postRx/used/receive work on it.
 */
export function setupQueueAt(d: TestVirtioNet, q: number, size: number, at: QueuePlace, vector = V.VIRTIO_MSI_NO_VECTOR): TestQueue {
  d.wr(V.COMMON_Q_SELECT, 2, q);
  d.wr(V.COMMON_Q_SIZE, 2, size);
  const tq: TestQueue = { index: q, size, desc: at.desc, avail: at.avail, used: at.used, buf: at.buf, bufSize: at.bufSize, availIdx: 0, lastUsed: 0, nextDesc: 0 };
  d.u8.fill(0, tq.desc, tq.desc + V.descTableSize(size));
  d.u8.fill(0, tq.avail, tq.avail + V.availRingSize(size));
  d.u8.fill(0, tq.used, tq.used + V.usedRingSize(size));
  const w64 = (lo: number, off: number): void => {
    const a = d.iovaOf(off);
    d.wr(lo, 4, a % 2 ** 32);
    d.wr(lo + 4, 4, Math.floor(a / 2 ** 32));
  };
  w64(V.COMMON_Q_DESCLO, tq.desc);
  w64(V.COMMON_Q_AVAILLO, tq.avail);
  w64(V.COMMON_Q_USEDLO, tq.used);
  d.wr(V.COMMON_Q_MSIX, 2, vector);
  d.wr(V.COMMON_Q_ENABLE, 2, 1);
  d.queues.set(q, tq);
  return tq;
}

/** Reset, negotiate, set up pair 0 (and the control queue) with TestVirtioNet.setupQueue, DRIVER_OK. */
export function bringUp(d: TestVirtioNet, features: bigint, size: number, opts: { ctrl?: boolean; rxBuf?: number; txBuf?: number; ctrlBuf?: number } = {}): void {
  d.reset();
  if (!d.negotiate(features)) throw new Error('FEATURES_OK refused');
  d.setupQueue(0, size, V.VIRTIO_MSI_NO_VECTOR, opts.rxBuf ?? 2048);
  d.setupQueue(1, size, V.VIRTIO_MSI_NO_VECTOR, opts.txBuf ?? 2048);
  if (opts.ctrl) d.setupQueue(d.rd(V.COMMON_NUMQ, 2) - 1, size, V.VIRTIO_MSI_NO_VECTOR, opts.ctrlBuf ?? 256);
  d.driverOk();
}

/**
 * The socket fd of a vfio-user client, to see (with poll) that the server has sent it a command
 * (DMA_READ/WRITE) it has not answered yet. VfioUserClient keeps its channel private; this reads
 * it and fails loudly if that ever changes.
 */
export function clientSocketFd(c: VfioUserClient): number {
  const ch: unknown = Reflect.get(c, 'ch');
  const fd: unknown = typeof ch === 'object' && ch !== null ? Reflect.get(ch, 'fd') : undefined;
  if (typeof fd !== 'number' || fd < 0) throw new Error('VfioUserClient no longer has a channel with an fd: update clientSocketFd');
  return fd;
}

/** Anonymous memory (no fd: a vfio-user client can only announce it for DMA_READ/WRITE). */
export class NoFdMemory {
  readonly va: bigint;
  readonly u8: Uint8Array;
  private freed = false;

  constructor(readonly len: number) {
    this.va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS, -1, 0);
    this.u8 = new Uint8Array(os.viewOf(this.va, len));
  }

  /** Unmap (once; the server must no longer be able to ask for it, i.e. unmapped or disconnected). */
  free(): void {
    if (this.freed) return;
    this.freed = true;
    os.munmap(this.va, this.len);
  }
}
