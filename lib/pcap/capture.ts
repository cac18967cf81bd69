/**
 * Live capture of a running app's port traffic (DPDK's pdump), in two halves.
 *
 * In the app: every process that imports ethdev owns one capture region, a memfd named
 * "tspmd-pdump" created by the main thread (sparse: no memory is used until a capture runs) and
 * found by the lcores through /proc/self/fd. ethdev's openRxQueue/openTxQueue wrap each queue
 * (wrapRxQueue / wrapTxQueue): after an RX burst, before a TX burst, the wrapper loads one word,
 * its port and direction's queue mask, and does nothing more while it is 0: the whole cost when
 * nobody captures. When a capture is on, the queue's lcore copies the burst's frames (a 16-byte
 * record header: captured length, original length, seconds, nanoseconds; then the bytes, padded to
 * 4) into its own single-producer byte ring of the region; a full ring drops and counts.
 * TX records are committed only for the frames the driver took, so a frame offered twice is
 * captured once.
 *
 * In the pdump process (app/pdump): it opens the app's memfd through /proc/PID/fd, claims the
 * region (owner word), sets the masks, drains the rings into a pcap file, clears the masks.
 *
 * Region layout (Int32 words, then rings at RING_BASE, RING_SLOT bytes each):
 *   [0] magic  [1] version  [2] owner pid (0: free)  [3] snaplen
 *   [MASK_BASE + port*2 + dir]  queue bitmask being captured (dir 0 RX, 1 TX), ports 0..MAX_PORTS-1
 *   ring slot s = dir*MAX_QUEUES + queue: [head, tail, drops, packets] words at SLOT_WORDS + s*4,
 *   bytes at RING_BASE + s*RING_SLOT (head/tail count bytes freely; a record never wraps: a header
 *   with captured length WRAP says "continue at offset 0").
 */
import { isMainThread } from 'node:worker_threads';
import { readdirSync, readlinkSync } from 'node:fs';
import * as os from '../../src/os/libc.js';
import { MbufView } from '../mempool/mbuf_view.js';
import { MBUF_NONE } from '../mempool/mbuf.js';
import type { RxQueue, RxInterrupt, TxQueue } from '../ethdev/ethdev.js';

/** The memfd's name (shown as /memfd:tspmd-pdump in /proc/PID/fd). */
export const CAPTURE_MEMFD = 'tspmd-pdump';
/** The region's first word once it is initialized, and its layout version. */
export const CAPTURE_MAGIC = 0x70647570, CAPTURE_VERSION = 1;
/** Ports and queues a region covers. */
export const CAPTURE_MAX_PORTS = 32, CAPTURE_MAX_QUEUES = 16;
/** Header words: magic, version, the capturing pdump's pid, the snap length. */
export const W_MAGIC = 0, W_VERSION = 1, W_OWNER = 2, W_SNAPLEN = 3;
/** First queue-mask word (port*2 + dir follow). */
export const MASK_BASE = 16;
/** First ring-slot word (4 per slot). */
export const SLOT_WORDS = MASK_BASE + CAPTURE_MAX_PORTS * 2;
/** Per-slot words: bytes produced, bytes consumed, frames dropped (ring full), frames captured. */
export const S_HEAD = 0, S_TAIL = 1, S_DROPS = 2, S_PACKETS = 3;
/** Byte offset of the first ring, bytes per ring, and the region's size. */
export const RING_BASE = 4096;
export const RING_SLOT = 1 << 21;
export const CAPTURE_REGION = RING_BASE + 2 * CAPTURE_MAX_QUEUES * RING_SLOT;
/** Record header bytes; a captured length of WRAP marks the rest of the ring unused. */
export const REC_HEADER = 16, WRAP = 0xffffffff;

/** The ring slot of a queue and direction (0 RX, 1 TX). */
export function captureSlot(dir: number, q: number): number {
  return dir * CAPTURE_MAX_QUEUES + q;
}

/** Typed views over a mapped region. */
export interface CaptureViews {
  i32: Int32Array;
  u32: Uint32Array;
  u8: Uint8Array;
  dv: DataView;
}

/** Views over a region mapped at va. */
export function captureViews(va: bigint): CaptureViews {
  const ab = os.viewOf(va, CAPTURE_REGION);
  return { i32: new Int32Array(ab), u32: new Uint32Array(ab), u8: new Uint8Array(ab), dv: new DataView(ab) };
}

let regionViews: CaptureViews | null | undefined;

/** This process's region: created by the main thread at load, found and mapped once per thread. */
function region(): CaptureViews | null {
  if (regionViews !== undefined) return regionViews;
  regionViews = null;
  try {
    let fd = -1;
    for (const f of readdirSync('/proc/self/fd')) {
      try {
        if (readlinkSync(`/proc/self/fd/${f}`).startsWith(`/memfd:${CAPTURE_MEMFD}`)) { fd = Number(f); break; }
      } catch { /* closed meanwhile */ }
    }
    if (fd < 0) return null;
    const va = os.mmap(0n, CAPTURE_REGION, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
    regionViews = captureViews(va); // mapped for the life of the process: lcores may hold views
  } catch {
    regionViews = null; // no capture for this process; queues run unwrapped
  }
  return regionViews;
}

// TSPMD_PDUMP=0 in the environment: no region, queues run unwrapped (pdump then says so).
if (isMainThread && process.env.TSPMD_PDUMP !== '0') {
  try {
    const fd = os.memfdCreate(CAPTURE_MEMFD, 0);
    os.ftruncate(fd, CAPTURE_REGION);
    const v = region();
    if (v) {
      v.i32[W_VERSION] = CAPTURE_VERSION;
      Atomics.store(v.i32, W_MAGIC, CAPTURE_MAGIC);
    }
  } catch { /* no memfd: capture unavailable, nothing else changes */ }
}

/** Copies bursts of one queue into its ring while its mask bit is set. */
class Tap {
  private readonly i32: Int32Array;
  private readonly u32: Uint32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly base: number;
  private readonly w: number;
  private readonly v = new MbufView();
  /** where the last captured burst's i-th record ends (TX commits only the frames taken) */
  readonly ends = new Float64Array(512);
  private readonly now = new Float64Array(2);
  readonly maskWord: number;
  readonly bit: number;

  constructor(r: CaptureViews, port: number, dir: number, q: number) {
    this.i32 = r.i32;
    this.u32 = r.u32;
    this.u8 = r.u8;
    this.dv = r.dv;
    const s = captureSlot(dir, q);
    this.base = RING_BASE + s * RING_SLOT;
    this.w = SLOT_WORDS + s * 4;
    this.maskWord = MASK_BASE + port * 2 + dir;
    this.bit = 1 << q;
  }

  /** the ring's head before the last copy() */
  private start = 0;

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
    const max = n < this.ends.length ? n : this.ends.length;
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
    const end = this.ends[k - 1];
    if (end === this.start) return;
    Atomics.add(this.i32, this.w + S_PACKETS, k);
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
    if (this.mask[this.word] !== 0 && k > 0 && this.tap.copy(out, 0, k)) this.tap.commit(k > 512 ? 512 : k);
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
    if (captured) this.tap.commit(k > 512 ? 512 : k);
    return k;
  }
}

/** Wrap RX queue q of a port so pdump can capture it (the queue itself when capture is unavailable). */
export function wrapRxQueue(port: number, q: number, inner: RxQueue): RxQueue {
  const r = port < CAPTURE_MAX_PORTS && q < CAPTURE_MAX_QUEUES ? region() : null;
  return r ? new CapturedRx(inner, new Tap(r, port, 0, q), r.i32) : inner;
}

/** Wrap TX queue q of a port so pdump can capture it (the queue itself when capture is unavailable). */
export function wrapTxQueue(port: number, q: number, inner: TxQueue): TxQueue {
  const r = port < CAPTURE_MAX_PORTS && q < CAPTURE_MAX_QUEUES ? region() : null;
  return r ? new CapturedTx(inner, new Tap(r, port, 1, q), r.i32) : inner;
}
