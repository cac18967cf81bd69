/**
 * Helpers of the emulated virtio-net hardening tests (virtio-net-device.test.ts beside this file),
 * on top of VnetWorld (test/emu/virtio-net-helpers.ts) and TestVirtioNet (test/emu/virtio-net-driver.ts).
 *
 * faultyWorld: a VnetWorld whose device sees its net_ring backend through this module's data
 * functions (openRxQueue/openTxQueue below wrap net_ring's; the lcore imports this file through
 * PortData.module), with faults injectable through an Int32Array of counters:
 *   FAULT_RX_THROW: rxBurst throws before taking anything (the loop crashes holding no mbuf);
 *   FAULT_RX_BOGUS: rxBurst returns the mbufs it got plus one handle of a pool that no thread
 *     has (0xfe000000): the device crashes on it in the middle of the burst, holding the others;
 *   FAULT_TX_THROW: txBurst throws and takes nothing (the device holds the burst's mbufs).
 */
import type { Eal } from '../../src/eal.js';
import * as os from '../../src/os/libc.js';
import * as ringData from '../../drivers/net/ring/ring_data.js';
import type { PortData, RxQueue, TxQueue } from '../../lib/ethdev/ethdev.js';
import type { VfioUserClient } from '../../lib/vfio-user/client.js';
import * as V from '../../lib/virtio/virtio.js';
import type * as L from '../../drivers/emu/virtio-net/layout.js';
import { VnetWorld } from '../emu/virtio-net-helpers.js';
import type { TestVirtioNet } from '../emu/virtio-net-driver.js';

/** Indexes of the fault counters (see the header). */
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

/** A VnetWorld whose backend has injectable faults, and its fault counters (FAULT_* words, each a count of occurrences left). */
export async function faultyWorld(eal: Eal, dir: string, config: Partial<L.VirtioNetConfig> = {}): Promise<{ w: VnetWorld; fault: Int32Array }> {
  const fault = new Int32Array(new SharedArrayBuffer(4 * FAULT_WORDS));
  const faulty = (data: PortData): FaultyPortData => ({ ...data, module: import.meta.url, fault: fault.buffer as SharedArrayBuffer });
  return { w: await VnetWorld.create(eal, dir, config, true, false, faulty), fault };
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
