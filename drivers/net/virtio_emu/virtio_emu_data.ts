/**
 * net_virtio_emu data path: a queue object is the device's engine (VirtioNetBackend, written
 * against the emudev back-end API) seen as a port queue. RX: the guest's transmitqs (receive);
 * TX: the guest's receiveqs (deliver, which takes and frees what fits; the caller frees the rest).
 *
 * One engine per port, on the lcore that opened the RX queue (the owner): the only one attached to
 * the device's data plane; its rxBurst runs service() (pauses, DMA table and state changes,
 * control queue, link, interrupt retries). A second lcore opening RX is refused (two engines would
 * both serve the control queue and link). A TX queue opened on the owner delivers directly; one
 * opened on another lcore (foreign) enqueues the mbuf handles on the port's single-producer
 * single-consumer ring (the TX queue's nb_desc slots, created by the control half at start), and
 * the owner's rxBurst drains it (one atomic load when empty) and delivers, freeing what the guest
 * has no buffers for (rx_nobuf_drops). A TX queue opened before the RX queue on the same lcore turns
 * direct when that lcore opens RX. Each lcore leaves when the control half stops the port
 * (RELEASE_GEN bumped): the thread drops its engine and claims once it is idle, i.e. once its loop
 * stopped polling; the control half then frees what is left in the ring.
 */
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufFreeBulk } from '../../../lib/mempool/mbuf.js';
import { Ring, type RingDesc } from '../../../lib/ring/ring.js';
import type { PortData, RxQueue, TxQueue } from '../../../lib/ethdev/ethdev.js';
import { VirtioNetBackend } from '../../emu/virtio-net/backend.js';
import { S_RX_NOBUF } from '../../emu/virtio-net/defs.js';
import type { VirtioNetBackendArg } from '../../emu/virtio-net/vq.js';

/**
 * Release words (Int32): RELEASE_GEN is bumped by stop; ATTACHES counts the lcores holding the port
 * (stop waits for 0); OWNER is 1 while an lcore's engine is attached (the RX lcore); PRODUCER is 1
 * while a foreign lcore sends through the ring.
 */
export const RELEASE_GEN = 0, ATTACHES = 1, OWNER = 2, PRODUCER = 3, RELEASE_WORDS = 4;

/** Per-queue driver data (both directions carry the same). */
export interface VirtioEmuQueueData {
  /** what the engine opens with */
  backend: VirtioNetBackendArg;
  /** the release words */
  release: SharedArrayBuffer;
  /** foreign TX -> owner: mbuf handles, one producer and one consumer */
  txRing: RingDesc;
}

/** What this thread holds of a port: its engine once it opened RX, its foreign TX queue. */
interface Held {
  be: VirtioNetBackend | null;
  pool: Mempool | null;
  ring: Ring;
  /** the TX queue opened here, if any (turned direct when this thread opens RX) */
  tx: VirtioEmuTx | null;
  /** this thread holds PRODUCER */
  producer: boolean;
  /** drop the engine and the claims and forget it (once) */
  release: () => void;
}

/** What this thread holds, by port name. */
const held = new Map<string, Held>();

/** This thread's entry of the port (counted in ATTACHES until stop releases it). */
function hold(port: PortData): Held {
  const h = held.get(port.name);
  if (h) return h;
  const d = port.rxq[0] as VirtioEmuQueueData;
  const ctl = new Int32Array(d.release);
  const gen = Atomics.load(ctl, RELEASE_GEN);
  Atomics.add(ctl, ATTACHES, 1);
  let done = false;
  const entry: Held = {
    be: null, pool: null, ring: Ring.attach(d.txRing), tx: null, producer: false,
    release: () => {
      if (done) return;
      done = true;
      if (held.get(port.name) === entry) held.delete(port.name);
      try {
        if (entry.be) {
          entry.be.close();
          Atomics.store(ctl, OWNER, 0);
        }
        entry.pool?.flushCache();
      } finally {
        if (entry.producer) Atomics.store(ctl, PRODUCER, 0);
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

/** Attach this thread's engine (it opens the RX queue): the port's owner. */
function own(port: PortData, h: Held): VirtioNetBackend {
  const d = port.rxq[0] as VirtioEmuQueueData;
  const ctl = new Int32Array(d.release);
  if (Atomics.compareExchange(ctl, OWNER, 0, 1) !== 0) {
    throw new Error(`${port.name}: another lcore polls its RX queue already: one lcore polls a net_virtio_emu port's RX (and serves the device); TX may be sent from any one other lcore`);
  }
  const pool = Mempool.attach(port.rxPools[0]);
  try {
    h.be = VirtioNetBackend.open(d.backend, pool);
  } catch (e) {
    Atomics.store(ctl, OWNER, 0);
    throw new Error(`${port.name}: this lcore cannot attach to the device: ${(e as Error).message}`);
  }
  h.pool = pool;
  // A TX queue this thread opened before is the owner's now: direct, the ring's producer no more.
  if (h.tx) h.tx.be = h.be;
  if (h.producer) { h.producer = false; Atomics.store(ctl, PRODUCER, 0); }
  return h.be;
}

/**
 * Drop what this thread holds of the port named name, if anything (the control half's thread
 * at stop: it cannot wait for its own event loop).
 */
export function releaseHeld(name: string): void {
  held.get(name)?.release();
}

/** The engine this thread holds for the port, if it opened its RX queue (the emu app's idle back-off uses it). */
export function heldBackend(port: PortData): VirtioNetBackend | null {
  return held.get(port.name)?.be ?? null;
}

/** Handles a burst is copied through (deliver takes pkts[0..n); the ring drains into it). */
const SCRATCH = 256;

/** RX: what the guest transmits; first, what foreign lcores sent through the ring goes to the guest. */
class VirtioEmuRx implements RxQueue {
  private declare readonly be: VirtioNetBackend;
  private declare readonly ring: Ring;
  private declare readonly scratch: Uint32Array;
  constructor(be: VirtioNetBackend, ring: Ring) {
    this.be = be;
    this.ring = ring;
    this.scratch = new Uint32Array(SCRATCH);
  }

  rxBurst(out: Uint32Array, n: number): number {
    const be = this.be;
    try {
      be.service();
      const k = this.ring.dequeueBurst(this.scratch, SCRATCH);
      if (k > 0) {
        const took = be.deliver(this.scratch, k);
        if (took < k) {
          pktmbufFreeBulk(this.scratch, k - took, took);
          be.statistics[S_RX_NOBUF] += k - took;
        }
      }
      return be.receive(out, n);
    } catch (e) {
      be.crashed(e); // logged, the burst's mbufs freed, DEVICE_NEEDS_RESET: the queues rest until the driver resets the device
      return 0;
    }
  }
}

/** TX: into the guest's receive buffers on the owner lcore (be set), through the ring to it elsewhere. */
class VirtioEmuTx implements TxQueue {
  /** the engine on the owner lcore; null: a foreign lcore, the ring */
  declare be: VirtioNetBackend | null;
  private declare readonly ring: Ring;
  private declare readonly scratch: Uint32Array;
  constructor(be: VirtioNetBackend | null, ring: Ring) {
    this.be = be;
    this.ring = ring;
    this.scratch = new Uint32Array(SCRATCH);
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    const be = this.be;
    if (be === null) return this.ring.enqueueBurst(pkts, n, off);
    /** packets given to deliver so far (taken or freed by crashed) */
    let upTo = n;
    try {
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

/** Open RX queue q (0) in this thread: it becomes the port's owner (attached to the device). */
export function openRxQueue(port: PortData, _q: number, _stats: Float64Array): RxQueue {
  const h = hold(port);
  return new VirtioEmuRx(h.be ?? own(port, h), h.ring);
}

/** Open TX queue q (0) in this thread: direct on the owner, through the ring on any one other lcore. */
export function openTxQueue(port: PortData, _q: number, _stats: Float64Array): TxQueue {
  const h = hold(port);
  if (h.tx) return h.tx;
  if (!h.be) {
    const ctl = new Int32Array((port.txq[0] as VirtioEmuQueueData).release);
    if (Atomics.compareExchange(ctl, PRODUCER, 0, 1) !== 0) {
      throw new Error(`${port.name}: another lcore sends on its TX queue already: a net_virtio_emu port takes TX from its RX lcore and from one other lcore`);
    }
    h.producer = true;
  }
  h.tx = new VirtioEmuTx(h.be, h.ring);
  return h.tx;
}

/** Atomics.waitAsync (Node 16+; not yet in TypeScript's es2022 lib). */
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;
