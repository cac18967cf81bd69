/**
 * Packet buffers (mbufs): mempool objects with a 64-byte header (mbuf_layout.ts), then headroom
 * and data room. An mbuf is named by its u32 handle (see mempool.ts); bursts are Uint32Arrays of
 * handles. Here: pools of mbufs, allocation with the header rearmed, freeing (chains, references,
 * bursts), and the chain operations of rte_mbuf.h as functions. Per-mbuf field access is
 * MbufView's (mbuf_view.ts): the functions below that take one mbuf are thin wrappers over it.
 * None allocates.
 */
import type { EalMemory } from '../../src/memory/memory.js';
import { iovaAt } from '../../src/memory/segment.js';
import { Mempool, poolOf } from './mempool.js';
import { MbufView } from './mbuf_view.js';
import { MbufOff, MbufW16, MbufW32, MbufW64, MbufVal } from './mbuf_layout.js';

/** Header bytes before the buffer. */
export const MBUF_HDR: number = MbufOff.Buf;
/** Default headroom (RTE_PKTMBUF_HEADROOM). */
export const MBUF_HEADROOM = 128;
/** Default data room after the headroom. */
export const MBUF_DATAROOM = 2048;
/** "No mbuf": the end of a chain (rte_mbuf's NULL next). */
export const MBUF_NONE: number = MbufVal.None;
/** Segments a chain may have at most. */
export const MBUF_MAX_SEGS = 0xffff;

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
      pool.dv.setBigUint64(off + MbufOff.BufIova, iovaAt(seg, pool.zone.offset + off + MBUF_HDR), true);
      pool.u16[(off >> 1) + MbufW16.BufLen] = bufLen;
      pool.u16[(off >> 1) + MbufW16.Refcnt] = 1;
      pool.u32[(off >> 2) + MbufW32.Next] = MbufVal.None;
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
  const o = p.offsetOf(m), h = o >> 1, w = o >> 2;
  const u16 = p.u16, u32 = p.u32;
  u32[w + MbufW32.PktLen] = 0;
  u16[h + MbufW16.DataLen] = 0;
  u16[h + MbufW16.DataOff] = p.userWord(0);
  u16[h + MbufW16.NbSegs] = 1;
  u16[h + MbufW16.Port] = 0xffff;
  u32[w + MbufW32.OlFlagsLo] = 0;
  u32[w + MbufW32.OlFlagsHi] = 0;
  u32[w + MbufW32.Next] = MbufVal.None;
  u32[w + MbufW32.Ptype] = 0;
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
  // (Inline, not through f64Bits: a call that returns a double boxes it when not inlined.)
  BITS[0] = len; BITS[1] = lenOff;
  const a = BITS_F64[0];
  BITS[0] = MbufVal.RefSegsSole; BITS[1] = portBuf;
  const b = BITS_F64[0];
  if (a === a && b === b) {
    // Module constants read in a loop cost a context load and a TDZ check each: locals.
    const f64 = pool.f64, c = NEXT_NONE_PTYPE_0;
    let i = 0;
    // Four at a time: a quarter of the loop's back edges (each with an interrupt check).
    for (; i + 4 <= n; i += 4) {
      const x0 = pool.offsetOf(out[off + i]) >> 3, x1 = pool.offsetOf(out[off + i + 1]) >> 3;
      const x2 = pool.offsetOf(out[off + i + 2]) >> 3, x3 = pool.offsetOf(out[off + i + 3]) >> 3;
      f64[x0 + MbufW64.Lens] = a; f64[x0 + MbufW64.RefPort] = b; f64[x0 + MbufW64.OlFlags] = 0; f64[x0 + MbufW64.NextPtype] = c;
      f64[x1 + MbufW64.Lens] = a; f64[x1 + MbufW64.RefPort] = b; f64[x1 + MbufW64.OlFlags] = 0; f64[x1 + MbufW64.NextPtype] = c;
      f64[x2 + MbufW64.Lens] = a; f64[x2 + MbufW64.RefPort] = b; f64[x2 + MbufW64.OlFlags] = 0; f64[x2 + MbufW64.NextPtype] = c;
      f64[x3 + MbufW64.Lens] = a; f64[x3 + MbufW64.RefPort] = b; f64[x3 + MbufW64.OlFlags] = 0; f64[x3 + MbufW64.NextPtype] = c;
    }
    for (; i < n; i++) {
      const x = pool.offsetOf(out[off + i]) >> 3;
      f64[x + MbufW64.Lens] = a;
      f64[x + MbufW64.RefPort] = b;
      f64[x + MbufW64.OlFlags] = 0;
      f64[x + MbufW64.NextPtype] = c;
    }
    return true;
  }
  const u32 = pool.u32;
  for (let i = 0; i < n; i++) {
    const w = pool.offsetOf(out[off + i]) >> 2;
    u32[w + MbufW32.PktLen] = len;
    u32[w + MbufW32.LenOff] = lenOff;
    u32[w + MbufW32.RefSegs] = MbufVal.RefSegsSole;
    u32[w + MbufW32.PortBuf] = portBuf;
    u32[w + MbufW32.OlFlagsLo] = 0;
    u32[w + MbufW32.OlFlagsHi] = 0;
    u32[w + MbufW32.Next] = MbufVal.None;
    u32[w + MbufW32.Ptype] = 0;
  }
  return true;
}

const BITS_F64 = new Float64Array(1);
const BITS = new Uint32Array(BITS_F64.buffer);

// next = MBUF_NONE (low word), packet_type = 0 (high word) as one float64: a denormal, never a
// NaN, so the bits survive a float64 store.
BITS[0] = MbufVal.None; BITS[1] = 0;
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
  const next = p.u32[(o >> 2) + MbufW32.Next];
  const r = p.u16[(o >> 1) + MbufW16.Refcnt];
  if (r > 1) {
    p.u16[(o >> 1) + MbufW16.Refcnt] = r - 1;
    return next;
  }
  // Free mbufs keep no chain, one reference, one segment (pktmbufAllocInit relies on it).
  p.u32[(o >> 2) + MbufW32.Next] = MbufVal.None;
  p.u16[(o >> 1) + MbufW16.NbSegs] = 1;
  p.free(m);
  return next;
}

/** Free a whole chain (rte_pktmbuf_free). */
export function pktmbufFree(m: number): void {
  let s = m;
  while (s !== MbufVal.None) s = pktmbufFreeSeg(s);
}

/**
 * Free n packets (chain heads) from ms[off..] (rte_pktmbuf_free_bulk); returns the sum of their
 * packet lengths, which TX paths need for byte counters and get here without a second pass.
 */
export function pktmbufFreeBulk(ms: Uint32Array, n: number, off = 0): number {
  if (n === 0) return 0;
  // Fast path: one pool, every mbuf a single segment with one reference (the u32 at
  // MbufW32.RefSegs holds refcnt | nb_segs << 16, so one load checks both): one bulk put.
  const first = poolOf(ms[off]), id = ms[off] >>> 24, u32 = first.u32;
  let bytes = 0, i = 0;
  // Four at a time while all four pass; the loop after it checks the rest one by one.
  for (; i + 4 <= n; i += 4) {
    const m0 = ms[off + i], m1 = ms[off + i + 1], m2 = ms[off + i + 2], m3 = ms[off + i + 3];
    if ((((m0 >>> 24) ^ id) | ((m1 >>> 24) ^ id) | ((m2 >>> 24) ^ id) | ((m3 >>> 24) ^ id)) !== 0) break;
    const w0 = first.offsetOf(m0) >> 2, w1 = first.offsetOf(m1) >> 2, w2 = first.offsetOf(m2) >> 2, w3 = first.offsetOf(m3) >> 2;
    if (((u32[w0 + MbufW32.RefSegs] ^ MbufVal.RefSegsSole) | (u32[w1 + MbufW32.RefSegs] ^ MbufVal.RefSegsSole)
      | (u32[w2 + MbufW32.RefSegs] ^ MbufVal.RefSegsSole) | (u32[w3 + MbufW32.RefSegs] ^ MbufVal.RefSegsSole)) !== 0) break;
    bytes += u32[w0 + MbufW32.PktLen] + u32[w1 + MbufW32.PktLen] + u32[w2 + MbufW32.PktLen] + u32[w3 + MbufW32.PktLen];
  }
  for (; i < n; i++) {
    const m = ms[off + i];
    if (m >>> 24 !== id) break;
    const w = first.offsetOf(m) >> 2;
    if (u32[w + MbufW32.RefSegs] !== MbufVal.RefSegsSole) break;
    bytes += u32[w + MbufW32.PktLen];
  }
  if (i === n) {
    first.freeBulk(ms, n, off);
    return bytes;
  }
  bytes = 0;
  for (i = 0; i < n; i++) {
    const m = ms[off + i];
    const p = poolOf(m);
    const w = p.offsetOf(m) >> 2;
    bytes += p.u32[w + MbufW32.PktLen];
    // Single segment, sole owner: straight to the pool cache.
    if (p.u32[w + MbufW32.RefSegs] === MbufVal.RefSegsSole && p.u32[w + MbufW32.Next] === MbufVal.None) p.free(m);
    else pktmbufFree(m);
  }
  return bytes;
}

/**
 * Free n segments that a device held, from the driver's own record of them (TX completion, a ring
 * emptied at stop): ms[off..off+n) names each segment the driver put on a descriptor, one entry
 * per segment (a chain is recorded segment by segment: `next` is never followed). An mbuf header
 * is DMA memory the device may have rewritten while it held the mbuf, so nothing in it is read
 * for a segment the driver owned alone (shared null, or shared[off + i] 0: refcnt was 1 when the
 * driver took it): its refcnt, nb_segs and next are rewritten to a lone segment with one
 * reference (two stores) and it goes back to its pool, in one bulk put per run of one pool.
 * shared[off + i] 1 marks a segment given with more than one reference: the others' count is in
 * the header and only there, so one reference is dropped from it (rte_pktmbuf_free_seg), the
 * segment freed when it was the last; a device that rewrites that count can still make such a
 * segment leak or come back early (docs/security.md). Allocates nothing.
 */
export function pktmbufFreeRecorded(ms: Uint32Array, n: number, off = 0, shared: Uint8Array | null = null): void {
  let i = 0;
  while (i < n) {
    const m0 = ms[off + i];
    if (shared !== null && shared[off + i] !== 0) {
      dropShared(m0);
      i++;
      continue;
    }
    // A run of one pool's sole segments: their headers made lone again, then one bulk put.
    const p = poolOf(m0), id = m0 >>> 24, u32 = p.u32, objOff = p.objOffset, objSize = p.objSize, start = i;
    for (; i < n; i++) {
      const m = ms[off + i];
      if (m >>> 24 !== id || (shared !== null && shared[off + i] !== 0)) break;
      const w = (objOff + Math.imul(m & 0xffffff, objSize)) >> 2;
      u32[w + MbufW32.RefSegs] = MbufVal.RefSegsSole;
      u32[w + MbufW32.Next] = MbufVal.None;
    }
    p.freeBulk(ms, i - start, off + start);
  }
}

/** Drop the driver's reference to a segment others hold too (pktmbufFreeRecorded); free it when it was the last. */
function dropShared(m: number): void {
  const p = poolOf(m), o = p.offsetOf(m);
  const r = p.u16[(o >> 1) + MbufW16.Refcnt];
  if (r > 1) {
    p.u16[(o >> 1) + MbufW16.Refcnt] = r - 1;
    return;
  }
  p.u32[(o >> 2) + MbufW32.RefSegs] = MbufVal.RefSegsSole;
  p.u32[(o >> 2) + MbufW32.Next] = MbufVal.None;
  p.free(m);
}

/**
 * Whether m names an mbuf of a pool this thread knows, inside that pool's memory: for a driver
 * walking a chain whose links it has not made (a header is DMA memory), before it follows one.
 */
export function isMbuf(m: number): boolean {
  const p = poolOf(m);
  // in float arithmetic: a bogus index times the object size may exceed 32 bits
  return p !== undefined && p.objOffset + ((m & 0xffffff) + 1) * p.objSize <= p.zone.len;
}

// The chain operations below go through one cursor of this module.
const cur = new MbufView();

/** Add delta to the reference count (e.g. +1 before sending one mbuf to two ports); returns the new count. */
export function refcntUpdate(m: number, delta: number): number {
  const v = cur.at(m), r = v.refcnt + delta;
  if (r < 1 || r > 0xffff) throw new RangeError(`mbuf 0x${(m >>> 0).toString(16)}: refcnt ${v.refcnt} + ${delta} is out of range`);
  v.refcnt = r;
  return r;
}

/** The last segment of a chain. */
export function lastSeg(m: number): number {
  let s = m;
  for (let n = cur.at(s).next; n !== MbufVal.None; n = cur.at(s).next) s = n;
  return s;
}

/** Grow the data at the end of the last segment (rte_pktmbuf_append); returns the offset of the new bytes in the pool's views, or -1. */
export function append(m: number, len: number): number {
  const v = cur.at(lastSeg(m));
  if (len < 0 || len > v.tailroom) return -1;
  const end = v.data + v.dataLen;
  v.dataLen += len;
  cur.at(m).pktLen += len;
  return end;
}

/** Remove len bytes from the end of the last segment (rte_pktmbuf_trim); false if it has fewer. */
export function trim(m: number, len: number): boolean {
  const v = cur.at(lastSeg(m));
  if (len < 0 || len > v.dataLen) return false;
  v.dataLen -= len;
  cur.at(m).pktLen -= len;
  return true;
}

/** Append chain tail to chain head (rte_pktmbuf_chain); false if the segment count would overflow. */
export function chain(head: number, tail: number): boolean {
  let v = cur.at(tail);
  const tailSegs = v.nbSegs, tailLen = v.pktLen;
  const segs = cur.at(head).nbSegs + tailSegs;
  if (segs > MBUF_MAX_SEGS) return false;
  cur.at(lastSeg(head)).next = tail;
  v = cur.at(head);
  v.nbSegs = segs;
  v.pktLen += tailLen;
  return true;
}

/** Copy a packet's bytes (all segments) into dst; returns the bytes copied (for tests and slow paths). */
export function readPacket(m: number, dst: Uint8Array): number {
  let n = 0;
  for (let s = m; s !== MbufVal.None && n < dst.length; s = cur.at(s).next) {
    const v = cur.at(s), off = v.data;
    const len = Math.min(v.dataLen, dst.length - n);
    dst.set(v.u8.subarray(off, off + len), n);
    n += len;
  }
  return n;
}

/** Write bytes as a single-segment packet (data length and packet length set); false if too long. */
export function writePacket(m: number, src: Uint8Array, len = src.length): boolean {
  return cur.at(m).write(src, len);
}
