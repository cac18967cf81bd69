/**
 * pdump, the lcore side: the ethdev queue callback (QueueCallbackModule) that pdumpInit registers.
 * Each queue comes wrapped: after an RX burst, before a TX burst, the wrapper loads one word, its
 * port and direction's queue mask, and does nothing more while it is 0: the whole cost when nobody
 * captures. When a capture is on, the queue's lcore copies the burst's frames into its own
 * single-producer byte ring of the region (layout: region.ts); a full ring drops and counts.
 * TX records are committed only for the frames the driver took, so a frame offered twice is
 * captured once.
 */
import { MbufView } from '../mempool/mbuf_view.js';
import { MBUF_NONE } from '../mempool/mbuf.js';
import type { PortData, RxInterrupt, RxQueue, TxQueue } from '../ethdev/ethdev.js';
import {
  CAPTURE_MAGIC, CAPTURE_MAX_PORTS, CAPTURE_MAX_QUEUES, MASK_BASE, REC_HEADER, RING_BASE, RING_SLOT, S_DROPS, S_HEAD,
  S_PACKETS, S_TAIL, SLOT_WORDS, W_MAGIC, W_SNAPLEN, WRAP, captureSlot, mapRegion, type CaptureViews,
  type PdumpCallbackArg,
} from './region.js';

/** Most frames of one burst a capture records (larger bursts are captured in part). */
const MAX_BURST = 512;

/** This thread's mapping of the region, by fd (mapped for the thread's life: queues hold views). */
let mapped: { fd: number; views: CaptureViews | null } | null = null;

/** The region behind fd, mapped once per thread; null when it cannot be (the queues then run unwrapped). */
function region(fd: number): CaptureViews | null {
  if (mapped?.fd === fd) return mapped.views;
  let views: CaptureViews | null = null;
  try {
    views = mapRegion(fd).views;
    if (Atomics.load(views.i32, W_MAGIC) !== CAPTURE_MAGIC) views = null;
  } catch {
    views = null;
  }
  mapped = { fd, views };
  return views;
}

/** Copies bursts of one queue into its ring while its mask bit is set. */
class Tap {
  private readonly i32: Int32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly base: number;
  private readonly w: number;
  private readonly v = new MbufView();
  /** where the last captured burst's i-th record ends (TX commits only the frames taken) */
  private readonly ends = new Float64Array(MAX_BURST);
  private readonly now = new Float64Array(2);
  readonly maskWord: number;
  private readonly bit: number;
  /** the ring's head before the last copy() */
  private start = 0;

  constructor(r: CaptureViews, port: number, dir: number, q: number) {
    this.i32 = r.i32;
    this.u8 = r.u8;
    this.dv = r.dv;
    const s = captureSlot(dir, q);
    this.base = RING_BASE + s * RING_SLOT;
    this.w = SLOT_WORDS + s * 4;
    this.maskWord = MASK_BASE + port * 2 + dir;
    this.bit = 1 << q;
  }

  /** Copy pkts[off..off+n) into the ring (records' ends into this.ends); false when this queue is not captured. */
  copy(pkts: Uint32Array, off: number, n: number): boolean {
    const i32 = this.i32, w = this.w;
    if ((Atomics.load(i32, this.maskWord) & this.bit) === 0) return false;
    const start = Atomics.load(i32, w + S_HEAD);
    this.start = start;
    const tail = Atomics.load(i32, w + S_TAIL);
    const snap = this.i32[W_SNAPLEN] > 0 ? this.i32[W_SNAPLEN] : 65535;
    const t = this.now;
    const ms = performance.timeOrigin + performance.now();
    t[0] = Math.floor(ms / 1000);
    t[1] = Math.floor((ms - t[0] * 1000) * 1e6);
    const v = this.v, u8 = this.u8, dv = this.dv, base = this.base;
    let head = start, drops = 0;
    const max = n < MAX_BURST ? n : MAX_BURST;
    for (let i = 0; i < max; i++) {
      v.at(pkts[off + i]);
      const len = v.pktLen;
      const cap = len < snap ? len : snap;
      const need = REC_HEADER + ((cap + 3) & ~3);
      let pos = (head >>> 0) % RING_SLOT;
      let room = RING_SLOT - pos;
      if (room < need) {
        // the record does not fit before the end: mark the rest unused and start again at 0
        if (((head - tail) >>> 0) + room + need > RING_SLOT) { drops++; this.ends[i] = head; continue; }
        if (room >= 4) dv.setUint32(base + pos, WRAP, true);
        head = (head + room) | 0;
        pos = 0;
        room = RING_SLOT;
      }
      if (((head - tail) >>> 0) + need > RING_SLOT) { drops++; this.ends[i] = head; continue; }
      const at = base + pos;
      dv.setUint32(at, cap, true);
      dv.setUint32(at + 4, len, true);
      dv.setUint32(at + 8, t[0], true);
      dv.setUint32(at + 12, t[1], true);
      let d = at + REC_HEADER, left = cap, src = v.data;
      for (;;) {
        const dl = v.dataLen;
        const sl = dl < left ? dl : left;
        const s8 = v.u8;
        for (let k = 0; k < sl; k++) u8[d + k] = s8[src + k];
        d += sl;
        left -= sl;
        const next = v.next;
        if (left === 0 || next === MBUF_NONE) break;
        src = v.at(next).data;
      }
      head = (head + need) | 0;
      this.ends[i] = head;
    }
    if (drops > 0) Atomics.add(i32, w + S_DROPS, drops);
    return true;
  }

  /** Publish the records of the first k frames of the last copy() (k = all for RX). */
  commit(k: number): void {
    if (k === 0) return;
    const end = this.ends[(k < MAX_BURST ? k : MAX_BURST) - 1];
    if (end === this.start) return;
    Atomics.add(this.i32, this.w + S_PACKETS, k < MAX_BURST ? k : MAX_BURST);
    Atomics.store(this.i32, this.w + S_HEAD, end);
  }
}

/** An RX queue whose bursts a pdump may capture. */
class CapturedRx implements RxQueue {
  readonly intr?: RxInterrupt;
  private readonly mask: Int32Array;
  private readonly word: number;

  constructor(private readonly inner: RxQueue, private readonly tap: Tap, i32: Int32Array) {
    this.intr = inner.intr;
    this.mask = i32;
    this.word = tap.maskWord;
  }

  rxBurst(out: Uint32Array, n: number): number {
    const k = this.inner.rxBurst(out, n);
    if (this.mask[this.word] !== 0 && k > 0 && this.tap.copy(out, 0, k)) this.tap.commit(k);
    return k;
  }
}

/** A TX queue whose bursts a pdump may capture. */
class CapturedTx implements TxQueue {
  private readonly mask: Int32Array;
  private readonly word: number;

  constructor(private readonly inner: TxQueue, private readonly tap: Tap, i32: Int32Array) {
    this.mask = i32;
    this.word = tap.maskWord;
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    if (this.mask[this.word] === 0 || n === 0) return this.inner.txBurst(pkts, n, off);
    const captured = this.tap.copy(pkts, off, n);
    const k = this.inner.txBurst(pkts, n, off);
    if (captured) this.tap.commit(k);
    return k;
  }
}

/** The region of arg, when port and queue q fall inside what it covers. */
function regionFor(port: PortData, q: number, arg: unknown): CaptureViews | null {
  const fd = (arg as PdumpCallbackArg | undefined)?.fd;
  if (typeof fd !== 'number' || port.port >= CAPTURE_MAX_PORTS || q >= CAPTURE_MAX_QUEUES) return null;
  return region(fd);
}

/** ethdev queue callback: RX queue q of port, wrapped so a pdump can capture it (the queue itself when it cannot be). */
export function wrapRxQueue(port: PortData, q: number, queue: RxQueue, arg: unknown): RxQueue {
  const r = regionFor(port, q, arg);
  return r ? new CapturedRx(queue, new Tap(r, port.port, 0, q), r.i32) : queue;
}

/** ethdev queue callback: TX queue q of port, wrapped so a pdump can capture it (the queue itself when it cannot be). */
export function wrapTxQueue(port: PortData, q: number, queue: TxQueue, arg: unknown): TxQueue {
  const r = regionFor(port, q, arg);
  return r ? new CapturedTx(queue, new Tap(r, port.port, 1, q), r.i32) : queue;
}
