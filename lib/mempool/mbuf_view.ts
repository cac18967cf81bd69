/**
 * MbufView: the packet API of the data path. A cursor you point at an mbuf handle with at(m) and
 * then read or write that mbuf through: data offset, lengths, headroom prepend/adj, chain links,
 * IOVA and the Ethernet header. It resolves the pool only when a handle's pool id differs from the
 * previous one (bursts almost always come from one pool), so a loop of at() + accessors costs what
 * the raw offset arithmetic costs. It allocates nothing; keep one per queue or loop, never one per
 * packet.
 *
 *   const v = new MbufView();
 *   for (let i = 0; i < n; i++) { v.at(burst[i]); v.swapMacs(); }
 *
 * `u8`, `u16`, `u32` and `off` (the mbuf's byte offset in them) are public for code that copies
 * packet bytes itself: the data starts at `u8[v.data]`.
 */
import { Mempool, poolOf } from './mempool.js';
import { MbufOff, MbufW16, MbufW32, MbufVal } from './mbuf_layout.js';

const TWO32 = 2 ** 32;

/** A reusable cursor over mbufs (see the file comment). */
export class MbufView {
  /** views of the current mbuf's pool (its whole memzone) */
  u8: Uint8Array = EMPTY8;
  u16: Uint16Array = EMPTY16;
  u32: Uint32Array = EMPTY32;
  /** byte offset of the current mbuf (its header) in the views */
  off = 0;
  /** the current mbuf's pool */
  pool: Mempool | null = null;
  /** the current mbuf's handle */
  m: number = MbufVal.None;
  private pid = -1;

  /** Point the view at mbuf m (its pool must be known in this thread); returns the view. */
  at(m: number): this {
    const id = m >>> 24;
    if (id !== this.pid) this.switchPool(m);
    this.m = m;
    this.off = this.pool!.offsetOf(m);
    return this;
  }

  private switchPool(m: number): void {
    const p = poolOf(m);
    if (p === undefined) throw new RangeError(`mbuf 0x${(m >>> 0).toString(16)}: pool ${m >>> 24} is not known in this thread (Mempool.attach it first)`);
    this.pool = p;
    this.u8 = p.u8;
    this.u16 = p.u16;
    this.u32 = p.u32;
    this.pid = m >>> 24;
  }

  /** Byte offset of the packet data in u8 (rte_pktmbuf_mtod). */
  get data(): number {
    const o = this.off;
    return o + MbufOff.Buf + this.u16[(o >> 1) + MbufW16.DataOff];
  }

  /** Where the data starts, from the buffer start (the headroom in use). */
  get dataOff(): number {
    return this.u16[(this.off >> 1) + MbufW16.DataOff];
  }

  set dataOff(v: number) {
    this.u16[(this.off >> 1) + MbufW16.DataOff] = v;
  }

  /** Bytes of data in this segment. */
  get dataLen(): number {
    return this.u16[(this.off >> 1) + MbufW16.DataLen];
  }

  set dataLen(v: number) {
    this.u16[(this.off >> 1) + MbufW16.DataLen] = v;
  }

  /** Bytes in the whole chain (meaningful on the first segment). */
  get pktLen(): number {
    return this.u32[(this.off >> 2) + MbufW32.PktLen];
  }

  set pktLen(v: number) {
    this.u32[(this.off >> 2) + MbufW32.PktLen] = v;
  }

  /** Set a single-segment packet's data length and packet length at once. */
  setLen(len: number): void {
    this.u16[(this.off >> 1) + MbufW16.DataLen] = len;
    this.u32[(this.off >> 2) + MbufW32.PktLen] = len;
  }

  /** Headroom + data room of the buffer. */
  get bufLen(): number {
    return this.u16[(this.off >> 1) + MbufW16.BufLen];
  }

  /** Bytes free before the data. */
  get headroom(): number {
    return this.dataOff;
  }

  /** Bytes free after this segment's data. */
  get tailroom(): number {
    const o = this.off, u16 = this.u16;
    return u16[(o >> 1) + MbufW16.BufLen] - u16[(o >> 1) + MbufW16.DataOff] - u16[(o >> 1) + MbufW16.DataLen];
  }

  /** Grow the data at the front by len bytes (rte_pktmbuf_prepend); the new data offset in u8, or -1 without room. */
  prepend(len: number): number {
    const o = this.off, u16 = this.u16;
    const d = u16[(o >> 1) + MbufW16.DataOff];
    if (len < 0 || len > d) return -1;
    u16[(o >> 1) + MbufW16.DataOff] = d - len;
    u16[(o >> 1) + MbufW16.DataLen] += len;
    this.u32[(o >> 2) + MbufW32.PktLen] += len;
    return o + MbufOff.Buf + d - len;
  }

  /** Remove len bytes from the front of this segment (rte_pktmbuf_adj); false if it has fewer. */
  adj(len: number): boolean {
    const o = this.off, u16 = this.u16;
    if (len < 0 || len > u16[(o >> 1) + MbufW16.DataLen]) return false;
    u16[(o >> 1) + MbufW16.DataOff] += len;
    u16[(o >> 1) + MbufW16.DataLen] -= len;
    this.u32[(o >> 2) + MbufW32.PktLen] -= len;
    return true;
  }

  /** The next segment's handle, or MBUF_NONE. */
  get next(): number {
    return this.u32[(this.off >> 2) + MbufW32.Next];
  }

  set next(m: number) {
    this.u32[(this.off >> 2) + MbufW32.Next] = m;
  }

  /** Segments in the chain (first segment). */
  get nbSegs(): number {
    return this.u16[(this.off >> 1) + MbufW16.NbSegs];
  }

  set nbSegs(v: number) {
    this.u16[(this.off >> 1) + MbufW16.NbSegs] = v;
  }

  /** Reference count. */
  get refcnt(): number {
    return this.u16[(this.off >> 1) + MbufW16.Refcnt];
  }

  set refcnt(v: number) {
    this.u16[(this.off >> 1) + MbufW16.Refcnt] = v;
  }

  /** True for a lone segment with one owner: the common case fast paths test for. */
  get isSimple(): boolean {
    // one load: refcnt | nb_segs << 16
    return this.u32[(this.off >> 2) + MbufW32.RefSegs] === MbufVal.RefSegsSole;
  }

  /**
   * Rewrite every header field a device could have changed while it held this buffer (DMA memory
   * is the device's to write): data_off and data_len, one reference, one segment, the port and
   * buf_len word (portBuf, from MbufView.portBufWord), no offload flags, no next segment. Bytes
   * 12..35: six stores, no pool lookup.
   */
  rearm(dataOff: number, dataLen: number, portBuf: number): void {
    const w = this.off >> 2, u32 = this.u32;
    u32[w + MbufW32.LenOff] = (dataLen | (dataOff << 16)) >>> 0;
    u32[w + MbufW32.RefSegs] = MbufVal.RefSegsSole;
    u32[w + MbufW32.PortBuf] = portBuf;
    u32[w + MbufW32.OlFlagsLo] = 0;
    u32[w + MbufW32.OlFlagsHi] = 0;
    u32[w + MbufW32.Next] = MbufVal.None;
  }

  /**
   * refcnt | nb_segs << 16 in one load: a driver reads it once when it takes a packet, and what it
   * records (how many segments, whether it owns each alone) comes from that one read.
   */
  get refSegs(): number {
    return this.u32[(this.off >> 2) + MbufW32.RefSegs];
  }

  /** The port | buf_len << 16 word rearm() writes for mbufs of pool received on port. */
  static portBufWord(pool: Mempool, port: number): number {
    return ((port & 0xffff) | ((pool.userWord(0) + pool.userWord(1)) << 16)) >>> 0;
  }

  /** Input port of a received packet. */
  get port(): number {
    return this.u16[(this.off >> 1) + MbufW16.Port];
  }

  set port(v: number) {
    this.u16[(this.off >> 1) + MbufW16.Port] = v;
  }

  /** RSS hash. */
  get hash(): number {
    return this.u32[(this.off >> 2) + MbufW32.Hash];
  }

  set hash(v: number) {
    this.u32[(this.off >> 2) + MbufW32.Hash] = v;
  }

  /** Low 32 bits of the buffer's IOVA (headroom start). */
  get bufIovaLo(): number {
    return this.u32[(this.off >> 2) + MbufW32.BufIovaLo];
  }

  /** High 32 bits of the buffer's IOVA. */
  get bufIovaHi(): number {
    return this.u32[(this.off >> 2) + MbufW32.BufIovaHi];
  }

  /** Store buf_iova + off as two u32 words at dst[w] (low) and dst[w + 1] (high), e.g. a descriptor's address: two loads, two stores, no number boxed. */
  storeIova(dst: Uint32Array, w: number, off: number): void {
    const s = this.off >> 2;
    const lo = this.u32[s + MbufW32.BufIovaLo] + off;
    dst[w] = lo; // a Uint32Array store wraps lo modulo 2^32; the carry goes to the high word
    dst[w + 1] = this.u32[s + MbufW32.BufIovaHi] + (lo >= TWO32 ? 1 : 0);
  }

  /** User address of the packet data as a number (pool.va + data), for system calls on it. */
  get dataVa(): number {
    return this.pool!.va + this.data;
  }

  /** IOVA of the data as a number (IOVAs stay below 2^53) (rte_pktmbuf_iova). */
  get dataIova(): number {
    const w = this.off >> 2;
    return this.u32[w + MbufW32.BufIovaHi] * TWO32 + this.u32[w + MbufW32.BufIovaLo] + this.u16[(this.off >> 1) + MbufW16.DataOff];
  }

  /** Copy len bytes of src (default all) into this segment at the data start and set the lengths; false if they do not fit. */
  write(src: Uint8Array, len = src.length): boolean {
    const o = this.off, d = this.u16[(o >> 1) + MbufW16.DataOff];
    if (len > this.u16[(o >> 1) + MbufW16.BufLen] - d) return false;
    this.u8.set(len === src.length ? src : src.subarray(0, len), o + MbufOff.Buf + d);
    this.setLen(len);
    return true;
  }

  // ---- the Ethernet header at the data start ----

  /**
   * Write destination and source MAC (12 bytes) given as three little-endian u32 words, e.g. from
   * macWords(dst, src): three stores per frame when the data is 4-byte aligned (the usual case).
   */
  setMacWords(w0: number, w1: number, w2: number): void {
    const d = this.data;
    if ((d & 3) === 0) {
      const w = d >> 2, u32 = this.u32;
      u32[w] = w0; u32[w + 1] = w1; u32[w + 2] = w2;
      return;
    }
    // Data moved off 4-byte alignment (prepend/adj): byte stores.
    const u8 = this.u8;
    u8[d] = w0; u8[d + 1] = w0 >>> 8; u8[d + 2] = w0 >>> 16; u8[d + 3] = w0 >>> 24;
    u8[d + 4] = w1; u8[d + 5] = w1 >>> 8; u8[d + 6] = w1 >>> 16; u8[d + 7] = w1 >>> 24;
    u8[d + 8] = w2; u8[d + 9] = w2 >>> 8; u8[d + 10] = w2 >>> 16; u8[d + 11] = w2 >>> 24;
  }

  /**
   * setMacWords for n packets, ms[off..off+n) (l2fwd's rewrite of a burst). One call per burst
   * with the pool's views and geometry in locals: per packet a handle check, the offset, data_off
   * and three stores, where at() + setMacWords per packet also reload the cursor's fields. Leaves
   * the view pointing at the last packet.
   */
  setMacWordsBurst(ms: Uint32Array, off: number, n: number, w0: number, w1: number, w2: number): void {
    let i = 0;
    while (i < n) {
      this.at(ms[off + i]); // resolves the pool when it changes
      const pid = this.pid, pool = this.pool!, objOff = pool.objOffset, objSize = pool.objSize;
      const u16 = this.u16, u32 = this.u32;
      for (; i < n; i++) {
        const m = ms[off + i];
        if (m >>> 24 !== pid) break;
        const o = objOff + Math.imul(m & 0xffffff, objSize);
        const d = o + MbufOff.Buf + u16[(o >> 1) + MbufW16.DataOff];
        if ((d & 3) !== 0) {
          this.at(m).setMacWords(w0, w1, w2);
          continue;
        }
        const w = d >> 2;
        u32[w] = w0; u32[w + 1] = w1; u32[w + 2] = w2;
      }
    }
    if (n > 0) this.at(ms[off + n - 1]);
  }

  /** Swap destination and source MAC (a reflector's rewrite). */
  swapMacs(): void {
    const u8 = this.u8, d = this.data;
    for (let i = 0; i < 6; i++) {
      const t = u8[d + i];
      u8[d + i] = u8[d + 6 + i];
      u8[d + 6 + i] = t;
    }
  }

  /** Byte offset of the destination MAC in u8 (the data start); the source MAC follows at +6. */
  get ethDst(): number {
    return this.data;
  }

  /** The EtherType (host order), bytes 12-13 of the frame. */
  get etherType(): number {
    const u8 = this.u8, d = this.data;
    return (u8[d + 12] << 8) | u8[d + 13];
  }

  set etherType(v: number) {
    const u8 = this.u8, d = this.data;
    u8[d + 12] = v >>> 8;
    u8[d + 13] = v;
  }
}

const EMPTY8 = new Uint8Array(0), EMPTY16 = new Uint16Array(0), EMPTY32 = new Uint32Array(0);

/** Destination then source MAC (6 bytes each) as the three little-endian u32 words setMacWords takes. */
export function macWords(dst: ArrayLike<number>, src: ArrayLike<number>): [number, number, number] {
  const b = [...Array.from(dst), ...Array.from(src)];
  if (b.length !== 12) throw new RangeError(`macWords: a MAC address has 6 bytes (got ${dst.length} and ${src.length})`);
  const w = (i: number): number => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
  return [w(0), w(4), w(8)];
}
