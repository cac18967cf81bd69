/**
 * Packet buffers (mbufs): mempool objects with a 64-byte header, then headroom and data room.
 *
 *   0  u64 buf_iova     IOVA of the buffer (headroom start), for devices
 *   8  u32 pkt_len      total length of the chain (first segment)
 *  12  u16 data_len     bytes of data in this segment
 *  14  u16 data_off     where data starts, from the buffer start
 *  16  u16 refcnt
 *  18  u16 nb_segs      segments in the chain (first segment)
 *  20  u16 port         input port
 *  22  u16 buf_len      headroom + data room
 *  24  u32 ol_flags     offload flags (low word), 28 high word
 *  32  u32 next         next segment's handle, or MBUF_NONE
 *  36  u32 packet_type
 *  40  u32 hash (RSS)
 *  44  u16 vlan_tci
 *  48..63 free for drivers and apps
 *
 * An mbuf is named by its u32 handle (see mempool.ts); bursts are Uint32Arrays of handles. The
 * functions below read and write these fields through the owning pool's views; none allocates.
 */
import type { EalMemory } from '../../src/memory/memory.js';
import { iovaAt } from '../../src/memory/segment.js';
import { Mempool, poolOf } from './mempool.js';
import { MbufView } from './mbuf_view.js';

export const MBUF_HDR = 64;
export const MBUF_HEADROOM = 128;
export const MBUF_DATAROOM = 2048;
export const MBUF_NONE = 0xffffffff;
/** Segments a chain may have at most. */
export const MBUF_MAX_SEGS = 0xffff;

// Field offsets, in bytes from the mbuf start.
export const F_BUF_IOVA = 0, F_PKT_LEN = 8, F_DATA_LEN = 12, F_DATA_OFF = 14, F_REFCNT = 16, F_NB_SEGS = 18;
export const F_PORT = 20, F_BUF_LEN = 22, F_OL_FLAGS = 24, F_NEXT = 32, F_PTYPE = 36, F_HASH = 40, F_VLAN = 44;

/** Options for a packet mbuf pool. */
export interface PktmbufPoolOptions {
  /** per-lcore cache (default 256, or less for small pools) */
  cacheSize?: number;
  /** data room after the headroom (default 2048) */
  dataRoom?: number;
  /** headroom before the data (default 128) */
  headroom?: number;
}

/** Create a pool of n packet mbufs (rte_pktmbuf_pool_create). */
export function pktmbufPoolCreate(memory: EalMemory, name: string, n: number, opts: PktmbufPoolOptions = {}): Mempool {
  const headroom = opts.headroom ?? MBUF_HEADROOM;
  const dataRoom = opts.dataRoom ?? MBUF_DATAROOM;
  if (!Number.isInteger(headroom) || headroom < 0 || headroom > 1024) throw new RangeError(`mbuf pool "${name}": headroom ${headroom} must be 0..1024`);
  if (!Number.isInteger(dataRoom) || dataRoom < 64 || headroom + dataRoom > 0xffff) {
    throw new RangeError(`mbuf pool "${name}": data room ${dataRoom} must be 64..${0xffff - headroom}`);
  }
  const cacheSize = opts.cacheSize ?? Math.min(256, Math.floor(n / 1.5));
  const bufLen = headroom + dataRoom;
  return Mempool.create(memory, name, n, MBUF_HDR + bufLen, {
    cacheSize,
    contiguousFrom: MBUF_HDR,
    user: [headroom, dataRoom],
    init: (pool, m, off) => {
      pool.u8.fill(0, off, off + MBUF_HDR);
      const seg = memory.segment(pool.zone.segment);
      pool.dv.setBigUint64(off + F_BUF_IOVA, iovaAt(seg, pool.zone.offset + off + MBUF_HDR), true);
      pool.u16[(off + F_BUF_LEN) >> 1] = bufLen;
      pool.u16[(off + F_REFCNT) >> 1] = 1;
      pool.u32[(off + F_NEXT) >> 2] = MBUF_NONE;
    },
  });
}

/** The headroom a pool's mbufs start with. */
export function pktmbufHeadroom(pool: Mempool): number {
  return pool.userWord(0);
}

/** The data room of a pool's mbufs. */
export function pktmbufDataRoom(pool: Mempool): number {
  return pool.userWord(1);
}

/** Reset an mbuf's header to a fresh single-segment packet (rte_pktmbuf_reset). */
export function pktmbufReset(m: number): void {
  const p = poolOf(m);
  const o = p.offsetOf(m);
  const u16 = p.u16, u32 = p.u32;
  u32[(o + F_PKT_LEN) >> 2] = 0;
  u16[(o + F_DATA_LEN) >> 1] = 0;
  u16[(o + F_DATA_OFF) >> 1] = p.userWord(0);
  u16[(o + F_NB_SEGS) >> 1] = 1;
  u16[(o + F_PORT) >> 1] = 0xffff;
  u32[(o + F_OL_FLAGS) >> 2] = 0;
  u32[(o + F_OL_FLAGS + 4) >> 2] = 0;
  u32[(o + F_NEXT) >> 2] = MBUF_NONE;
  u32[(o + F_PTYPE) >> 2] = 0;
}

/**
 * Allocate n mbufs into out[off..] (all or none) initialized as single-segment packets of len
 * bytes from port: rte_pktmbuf_alloc_bulk plus a driver's "rearm" in one pass: bytes 8..39, next
 * included (every free path restores next = MBUF_NONE, but a free mbuf is DMA memory that a device
 * may have written since; next and packet_type go in one 8-byte store, so it costs nothing).
 */
export function pktmbufAllocInit(pool: Mempool, out: Uint32Array, n: number, off: number, len: number, port: number): boolean {
  if (!pool.allocBulk(out, n, off)) return false;
  const headroom = pool.userWord(0);
  const lenOff = (len | (headroom << 16)) >>> 0; // data_len | data_off << 16
  const portBuf = (port | ((headroom + pool.userWord(1)) << 16)) >>> 0; // port | buf_len << 16
  // Like DPDK's 64-bit "rearm" writes: bytes 8..15 and 16..23 each as one float64 store of the
  // prepared bit pattern (mbufs are 64-byte aligned). A NaN pattern could be canonicalized, so
  // those (never seen with sane lengths) take the 32-bit path.
  BITS[0] = len; BITS[1] = lenOff;
  const a = BITS_F64[0];
  BITS[0] = 0x10001; BITS[1] = portBuf; // refcnt 1, nb_segs 1 | port, buf_len
  const b = BITS_F64[0];
  if (a === a && b === b) {
    // Module constants read in a loop cost a context load and a TDZ check each: locals.
    const f64 = pool.f64, c = NEXT_NONE_PTYPE_0;
    let i = 0;
    // Four at a time: a quarter of the loop's back edges (each with an interrupt check).
    for (; i + 4 <= n; i += 4) {
      const x0 = pool.offsetOf(out[off + i]) >> 3, x1 = pool.offsetOf(out[off + i + 1]) >> 3;
      const x2 = pool.offsetOf(out[off + i + 2]) >> 3, x3 = pool.offsetOf(out[off + i + 3]) >> 3;
      f64[x0 + 1] = a; f64[x0 + 2] = b; f64[x0 + 3] = 0; f64[x0 + 4] = c;
      f64[x1 + 1] = a; f64[x1 + 2] = b; f64[x1 + 3] = 0; f64[x1 + 4] = c;
      f64[x2 + 1] = a; f64[x2 + 2] = b; f64[x2 + 3] = 0; f64[x2 + 4] = c;
      f64[x3 + 1] = a; f64[x3 + 2] = b; f64[x3 + 3] = 0; f64[x3 + 4] = c;
    }
    for (; i < n; i++) {
      const x = pool.offsetOf(out[off + i]) >> 3;
      f64[x + 1] = a; // pkt_len, data_len, data_off
      f64[x + 2] = b; // refcnt, nb_segs, port, buf_len
      f64[x + 3] = 0; // ol_flags
      f64[x + 4] = c; // next, packet_type
    }
    return true;
  }
  const u32 = pool.u32;
  for (let i = 0; i < n; i++) {
    const w = pool.offsetOf(out[off + i]) >> 2;
    u32[w + 2] = len;
    u32[w + 3] = lenOff;
    u32[w + 4] = 0x10001;
    u32[w + 5] = portBuf;
    u32[w + 6] = 0;
    u32[w + 7] = 0;
    u32[w + 8] = MBUF_NONE;
    u32[w + 9] = 0;
  }
  return true;
}

const BITS_F64 = new Float64Array(1);
const BITS = new Uint32Array(BITS_F64.buffer);
// next = MBUF_NONE (low word), packet_type = 0 (high word): a denormal, never a NaN, so the bits survive a float64 store.
BITS[0] = MBUF_NONE; BITS[1] = 0;
const NEXT_NONE_PTYPE_0 = BITS_F64[0];

/** Allocate n reset mbufs into out[off..], all or none (rte_pktmbuf_alloc_bulk). */
export function pktmbufAllocBulk(pool: Mempool, out: Uint32Array, n: number, off = 0): boolean {
  return pktmbufAllocInit(pool, out, n, off, 0, 0xffff);
}

/** Allocate one reset mbuf; -1 when the pool is empty. */
export function pktmbufAlloc(pool: Mempool): number {
  const m = pool.alloc();
  if (m >= 0) pktmbufReset(m);
  return m;
}

/** Free one segment: drop a reference; back to its pool at zero. Returns the next segment. */
export function pktmbufFreeSeg(m: number): number {
  const p = poolOf(m);
  const o = p.offsetOf(m);
  const next = p.u32[(o + F_NEXT) >> 2];
  const r = p.u16[(o + F_REFCNT) >> 1];
  if (r > 1) {
    p.u16[(o + F_REFCNT) >> 1] = r - 1;
    return next;
  }
  // Free mbufs keep no chain, one reference, one segment (pktmbufAllocInit relies on it).
  p.u32[(o + F_NEXT) >> 2] = MBUF_NONE;
  p.u16[(o + F_NB_SEGS) >> 1] = 1;
  p.free(m);
  return next;
}

/** Free a whole chain (rte_pktmbuf_free). */
export function pktmbufFree(m: number): void {
  let s = m;
  while (s !== MBUF_NONE) s = pktmbufFreeSeg(s);
}

/**
 * Free n packets (chain heads) from ms[off..] (rte_pktmbuf_free_bulk); returns the sum of their
 * packet lengths, which TX paths need for byte counters and get here without a second pass.
 */
export function pktmbufFreeBulk(ms: Uint32Array, n: number, off = 0): number {
  if (n === 0) return 0;
  // Fast path: one pool, every mbuf a single segment with one reference (the u32 at F_REFCNT
  // holds refcnt | nb_segs << 16, so one load checks both): one bulk put.
  const first = poolOf(ms[off]), id = ms[off] >>> 24, u32 = first.u32;
  let bytes = 0, i = 0;
  // Word offsets as literals (4 = F_REFCNT >> 2, 2 = F_PKT_LEN >> 2): exported consts are read
  // through cells with a TDZ check, in every iteration. Four at a time while all four pass; the
  // loop after it checks the rest one by one.
  for (; i + 4 <= n; i += 4) {
    const m0 = ms[off + i], m1 = ms[off + i + 1], m2 = ms[off + i + 2], m3 = ms[off + i + 3];
    if ((((m0 >>> 24) ^ id) | ((m1 >>> 24) ^ id) | ((m2 >>> 24) ^ id) | ((m3 >>> 24) ^ id)) !== 0) break;
    const w0 = first.offsetOf(m0) >> 2, w1 = first.offsetOf(m1) >> 2, w2 = first.offsetOf(m2) >> 2, w3 = first.offsetOf(m3) >> 2;
    if (((u32[w0 + 4] ^ 0x10001) | (u32[w1 + 4] ^ 0x10001) | (u32[w2 + 4] ^ 0x10001) | (u32[w3 + 4] ^ 0x10001)) !== 0) break;
    bytes += u32[w0 + 2] + u32[w1 + 2] + u32[w2 + 2] + u32[w3 + 2];
  }
  for (; i < n; i++) {
    const m = ms[off + i];
    if (m >>> 24 !== id) break;
    const w = first.offsetOf(m) >> 2;
    if (u32[w + 4] !== 0x10001) break;
    bytes += u32[w + 2];
  }
  if (i === n) {
    first.freeBulk(ms, n, off);
    return bytes;
  }
  bytes = 0;
  for (i = 0; i < n; i++) {
    const m = ms[off + i];
    const p = poolOf(m);
    const o = p.offsetOf(m);
    bytes += p.u32[(o + F_PKT_LEN) >> 2];
    // Single segment, sole owner: straight to the pool cache.
    if (p.u32[(o + F_NEXT) >> 2] === MBUF_NONE && p.u16[(o + F_REFCNT) >> 1] === 1) p.free(m);
    else pktmbufFree(m);
  }
  return bytes;
}

// The single-mbuf accessors below go through one cursor of this module. Created on first use:
// mbuf_view.ts imports this module, so it may not be evaluated yet when this one is.
let cursor: MbufView | undefined;

/** This module's cursor, at m. */
function at(m: number): MbufView {
  return (cursor ??= new MbufView()).at(m);
}

/** Byte offset of the packet data (rte_pktmbuf_mtod) in the pool's views: poolOf(m).u8[off]. */
export function mtod(m: number): number {
  return at(m).data;
}

/** IOVA of the packet data (rte_pktmbuf_iova). */
export function mbufDataIova(m: number): bigint {
  const p = poolOf(m);
  const o = p.offsetOf(m);
  return p.dv.getBigUint64(o + F_BUF_IOVA, true) + BigInt(p.u16[(o + F_DATA_OFF) >> 1]);
}

/** Data length of this segment. */
export function dataLen(m: number): number {
  return at(m).dataLen;
}

/** Packet length (whole chain, first segment). */
export function pktLen(m: number): number {
  return at(m).pktLen;
}

/** Set a single-segment packet's data and packet length at once. */
export function setLen(m: number, len: number): void {
  at(m).setLen(len);
}

/** Data offset from the buffer start (headroom in use). */
export function dataOff(m: number): number {
  return at(m).dataOff;
}

/** Bytes free before the data. */
export function headroom(m: number): number {
  return dataOff(m);
}

/** Bytes free after the data of this segment. */
export function tailroom(m: number): number {
  return at(m).tailroom;
}

/** Input port of a received packet. */
export function mbufPort(m: number): number {
  return at(m).port;
}

/** Set the input port. */
export function setMbufPort(m: number, port: number): void {
  at(m).port = port;
}

/** Reference count. */
export function refcnt(m: number): number {
  return at(m).refcnt;
}

/** Add delta to the reference count (e.g. +1 before sending one mbuf to two ports); returns the new count. */
export function refcntUpdate(m: number, delta: number): number {
  const p = poolOf(m);
  const i = (p.offsetOf(m) + F_REFCNT) >> 1;
  const v = p.u16[i] + delta;
  if (v < 1 || v > 0xffff) throw new RangeError(`mbuf 0x${m.toString(16)}: refcnt ${p.u16[i]} + ${delta} is out of range`);
  p.u16[i] = v;
  return v;
}

/** Segments in the chain. */
export function nbSegs(m: number): number {
  return at(m).nbSegs;
}

/** Next segment, or MBUF_NONE. */
export function nextSeg(m: number): number {
  return at(m).next;
}

/** The last segment of a chain. */
export function lastSeg(m: number): number {
  let s = m;
  for (let n = nextSeg(s); n !== MBUF_NONE; n = nextSeg(s)) s = n;
  return s;
}

/** Grow the data at the front by len bytes (rte_pktmbuf_prepend); returns the new data offset in the views, or -1. */
export function prepend(m: number, len: number): number {
  return at(m).prepend(len);
}

/** Grow the data at the end of the last segment (rte_pktmbuf_append); returns the offset of the new bytes, or -1. */
export function append(m: number, len: number): number {
  const v = at(lastSeg(m));
  if (len < 0 || len > v.tailroom) return -1;
  const end = v.data + v.dataLen;
  v.dataLen += len;
  at(m).pktLen += len;
  return end;
}

/** Remove len bytes from the front of the first segment (rte_pktmbuf_adj); false if it has fewer. */
export function adj(m: number, len: number): boolean {
  return at(m).adj(len);
}

/** Remove len bytes from the end of the last segment (rte_pktmbuf_trim); false if it has fewer. */
export function trim(m: number, len: number): boolean {
  const v = at(lastSeg(m));
  if (len < 0 || len > v.dataLen) return false;
  v.dataLen -= len;
  at(m).pktLen -= len;
  return true;
}

/** Append chain tail to chain head (rte_pktmbuf_chain); false if the segment count would overflow. */
export function chain(head: number, tail: number): boolean {
  let v = at(tail);
  const tailSegs = v.nbSegs, tailLen = v.pktLen;
  const segs = at(head).nbSegs + tailSegs;
  if (segs > MBUF_MAX_SEGS) return false;
  at(lastSeg(head)).next = tail;
  v = at(head);
  v.nbSegs = segs;
  v.pktLen += tailLen;
  return true;
}

/** Copy a packet's bytes (all segments) into dst; returns the bytes copied (for tests and slow paths). */
export function readPacket(m: number, dst: Uint8Array): number {
  let n = 0;
  for (let s = m; s !== MBUF_NONE && n < dst.length; s = at(s).next) {
    const v = at(s), off = v.data;
    const len = Math.min(v.dataLen, dst.length - n);
    dst.set(v.u8.subarray(off, off + len), n);
    n += len;
  }
  return n;
}

/** Write bytes as a single-segment packet (data length and packet length set); false if too long. */
export function writePacket(m: number, src: Uint8Array, len = src.length): boolean {
  return at(m).write(src, len);
}
