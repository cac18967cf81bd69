/**
 * net_virtio_emu data path: a queue object is the device's engine (VirtioNetBackend, written
 * against the emudev back-end API) seen as a port queue. RX: the guest's transmitqs (receive);
 * TX: the guest's receiveqs (deliver, which takes and frees what fits; the caller frees the rest).
 *
 * One engine per port, on one lcore: the RX and TX queue opened in one thread share it (an lcore
 * attaches to the device once; a second lcore is refused: two engines would both serve the device's
 * control queue and link), and rxBurst runs its service() (pauses, DMA table and state
 * changes, control queue, link, interrupt retries); a TX queue polled without the RX queue in its
 * thread runs service() itself. The engine detaches when the control half stops the port
 * (RELEASE_GEN bumped): the thread drops it once it is idle, i.e. once its loop stopped polling.
 */
import { Mempool } from '../../../lib/mempool/mempool.js';
import type { PortData, RxQueue, TxQueue } from '../../../lib/ethdev/ethdev.js';
import { VirtioNetBackend } from '../../emu/virtio-net/backend.js';
import type { VirtioNetBackendArg } from '../../emu/virtio-net/vq.js';

/** Release words (Int32): RELEASE_GEN is bumped by stop, ATTACHES is 1 while an lcore holds the device. */
export const RELEASE_GEN = 0, ATTACHES = 1, RELEASE_WORDS = 2;

/** Per-queue driver data (both directions carry the same). */
export interface VirtioEmuQueueData {
  /** what the engine opens with */
  backend: VirtioNetBackendArg;
  /** the release words */
  release: SharedArrayBuffer;
}

/** A port's engine in this thread, and which of its queues this thread opened. */
interface Held {
  be: VirtioNetBackend;
  pool: Mempool;
  rx: boolean;
  /** detach and forget it (once) */
  release: () => void;
}

/** The engines this thread holds, by port name. */
const held = new Map<string, Held>();

/** This thread's engine of the port (opened and attached on first use). */
function hold(port: PortData): Held {
  const h = held.get(port.name);
  if (h) return h;
  const d = port.rxq[0] as VirtioEmuQueueData;
  const ctl = new Int32Array(d.release);
  // One lcore per port: two engines on one device would both serve its control queue and link.
  if (Atomics.compareExchange(ctl, ATTACHES, 0, 1) !== 0) {
    throw new Error(`${port.name}: another lcore polls this port already: a net_virtio_emu port's RX and TX queues are polled by one lcore (e.g. l2fwd -l 0-1, one worker, or -q 2 so that one lcore polls both ports)`);
  }
  const gen = Atomics.load(ctl, RELEASE_GEN);
  const pool = Mempool.attach(port.rxPools[0]);
  let be: VirtioNetBackend;
  try {
    be = VirtioNetBackend.open(d.backend, pool);
  } catch (e) {
    Atomics.store(ctl, ATTACHES, 0);
    throw new Error(`${port.name}: this lcore cannot attach to the device: ${(e as Error).message}`);
  }
  let done = false;
  const entry: Held = {
    be, pool, rx: false,
    release: () => {
      if (done) return;
      done = true;
      if (held.get(port.name) === entry) held.delete(port.name);
      try {
        be.close();
        pool.flushCache();
      } finally {
        Atomics.sub(ctl, ATTACHES, 1);
        Atomics.notify(ctl, ATTACHES);
      }
    },
  };
  held.set(port.name, entry);
  // Runs when this thread's event loop is free (its poll loop has returned) after stop bumps RELEASE_GEN.
  const w = waitAsync(ctl, RELEASE_GEN, gen);
  if (w.async) void (w.value as Promise<string>).then(entry.release);
  else entry.release();
  return entry;
}

/**
 * Drop the engine this thread holds for the port named name, if any (the control half's thread
 * at stop: it cannot wait for its own event loop).
 */
export function releaseHeld(name: string): void {
  held.get(name)?.release();
}

/** The engine this thread holds for the port, if it opened one of its queues (the emu app's idle back-off uses it). */
export function heldBackend(port: PortData): VirtioNetBackend | null {
  return held.get(port.name)?.be ?? null;
}

/** RX: what the guest transmits. */
class VirtioEmuRx implements RxQueue {
  private declare readonly be: VirtioNetBackend;
  constructor(be: VirtioNetBackend) {
    this.be = be;
  }

  rxBurst(out: Uint32Array, n: number): number {
    const be = this.be;
    try {
      be.service();
      return be.receive(out, n);
    } catch (e) {
      be.crashed(e); // logged, the burst's mbufs freed, DEVICE_NEEDS_RESET: the queues rest until the driver resets the device
      return 0;
    }
  }
}

/** Handles a TX burst with an offset is copied through (deliver takes pkts[0..n)). */
const SCRATCH = 256;

/** TX: into the guest's receive buffers; runs service() itself when its thread polls no RX queue of the port. */
class VirtioEmuTx implements TxQueue {
  private declare readonly be: VirtioNetBackend;
  private declare readonly h: Held;
  private declare readonly scratch: Uint32Array;
  constructor(h: Held) {
    this.be = h.be;
    this.h = h;
    this.scratch = new Uint32Array(SCRATCH);
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    const be = this.be;
    /** packets given to deliver so far (taken or freed by crashed) */
    let upTo = n;
    try {
      if (!this.h.rx) be.service();
      if (off === 0) return be.deliver(pkts, n);
      let took = 0;
      while (took < n) {
        const k = n - took < SCRATCH ? n - took : SCRATCH;
        for (let i = 0; i < k; i++) this.scratch[i] = pkts[off + took + i];
        upTo = took + k;
        const d = be.deliver(this.scratch, k);
        took += d;
        if (d < k) break;
      }
      return took;
    } catch (e) {
      be.crashed(e); // it freed the burst in hand: those are taken
      return upTo;
    }
  }
}

/** Open RX queue q (0) in this thread. */
export function openRxQueue(port: PortData, _q: number, _stats: Float64Array): RxQueue {
  const h = hold(port);
  h.rx = true;
  return new VirtioEmuRx(h.be);
}

/** Open TX queue q (0) in this thread. */
export function openTxQueue(port: PortData, _q: number, _stats: Float64Array): TxQueue {
  return new VirtioEmuTx(hold(port));
}

/** Atomics.waitAsync (Node 16+; not yet in TypeScript's es2022 lib). */
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;
