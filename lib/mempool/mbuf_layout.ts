/**
 * The mbuf header layout: the one place that says where each field of the 64-byte header lives.
 * Everything that touches a header (mbuf.ts, MbufView, a driver's inlined fast path, an emulated
 * device) takes the numbers from here.
 *
 *   0  u64 buf_iova     IOVA of the buffer (headroom start), for devices
 *   8  u32 pkt_len      total length of the chain (first segment)
 *  12  u16 data_len     bytes of data in this segment
 *  14  u16 data_off     where data starts, from the buffer start
 *  16  u16 refcnt
 *  18  u16 nb_segs      segments in the chain (first segment)
 *  20  u16 port         input port
 *  22  u16 buf_len      headroom + data room
 *  24  u64 ol_flags     offload flags
 *  32  u32 next         next segment's handle, or MBUF_NONE
 *  36  u32 packet_type
 *  40  u32 hash (RSS)
 *  44  u16 vlan_tci
 *  48..63 free for drivers and apps
 *
 * Why `const enum`: tsc writes each member's value as a plain number literal at every use, so a
 * per-packet loop indexes the header exactly as fast as with hand-written literals (an imported
 * `const` is read through its module cell with a hole check on every use, which costs in loops
 * that are past V8's inlining budget), and yet the numbers are written only here: change a field
 * and every use changes with it at the next build. Word indexes are derived from the byte
 * offsets, never written twice. (Code run by a transpile-only loader, as in tests, reads the
 * members from the enum object instead: same values, slower.)
 */

/** Byte offsets of the header fields from the mbuf's start (rte_mbuf's fields, this layout). */
export const enum MbufOff {
  BufIova = 0,
  PktLen = 8,
  DataLen = 12,
  DataOff = 14,
  Refcnt = 16,
  NbSegs = 18,
  Port = 20,
  BufLen = 22,
  OlFlags = 24,
  Next = 32,
  Ptype = 36,
  Hash = 40,
  Vlan = 44,
  /** header size: the buffer (headroom, then data room) starts here */
  Buf = 64,
}

/** Indexes of the header's u32 words, for Uint32Array access at (mbuf offset >> 2) + index. */
export const enum MbufW32 {
  BufIovaLo = MbufOff.BufIova >> 2,
  BufIovaHi = (MbufOff.BufIova >> 2) + 1,
  PktLen = MbufOff.PktLen >> 2,
  /** data_len | data_off << 16 */
  LenOff = MbufOff.DataLen >> 2,
  /** refcnt | nb_segs << 16: 0x10001 (REFSEGS_SOLE) for a lone segment with one owner */
  RefSegs = MbufOff.Refcnt >> 2,
  /** port | buf_len << 16 */
  PortBuf = MbufOff.Port >> 2,
  OlFlagsLo = MbufOff.OlFlags >> 2,
  OlFlagsHi = (MbufOff.OlFlags >> 2) + 1,
  Next = MbufOff.Next >> 2,
  Ptype = MbufOff.Ptype >> 2,
  Hash = MbufOff.Hash >> 2,
}

/** Indexes of the header's u16 fields, for Uint16Array access at (mbuf offset >> 1) + index. */
export const enum MbufW16 {
  DataLen = MbufOff.DataLen >> 1,
  DataOff = MbufOff.DataOff >> 1,
  Refcnt = MbufOff.Refcnt >> 1,
  NbSegs = MbufOff.NbSegs >> 1,
  Port = MbufOff.Port >> 1,
  BufLen = MbufOff.BufLen >> 1,
  Vlan = MbufOff.Vlan >> 1,
}

/**
 * Indexes of the header's 8-byte words, for Float64Array access at (mbuf offset >> 3) + index
 * (mbufs are 64-byte aligned): the rearm writes a precomputed bit pattern per word, as DPDK's
 * `rearm_data` store does.
 */
export const enum MbufW64 {
  /** pkt_len, data_len, data_off */
  Lens = MbufOff.PktLen >> 3,
  /** refcnt, nb_segs, port, buf_len */
  RefPort = MbufOff.Refcnt >> 3,
  OlFlags = MbufOff.OlFlags >> 3,
  /** next, packet_type */
  NextPtype = MbufOff.Next >> 3,
}

/** Values the fast paths compare and store whole. */
export const enum MbufVal {
  /** the u32 at MbufW32.RefSegs of a lone segment with one owner (refcnt 1, nb_segs 1) */
  RefSegsSole = 0x10001,
  /** "no mbuf": the end of a chain, an empty slot (MBUF_NONE) */
  None = 0xffffffff,
}
