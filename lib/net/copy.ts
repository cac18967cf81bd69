/**
 * Copying bytes between two different memories (a kernel ring and an mbuf pool) without making a
 * view per copy: typed-array set() needs a source view of exactly the range, and a subarray per
 * packet is an allocation. When both offsets agree modulo 4 the middle moves as u32 words (a float64
 * copy could canonicalize NaN patterns in packet data); otherwise byte by byte.
 */

/** Copy len bytes from src[s..] to dst[d..] (offsets below 4 GiB); *32 are u32 views over the same buffers. */
export function copyBytes(dst: Uint8Array, dst32: Uint32Array, d: number, src: Uint8Array, src32: Uint32Array, s: number, len: number): void {
  const end = d + len;
  if (((d ^ s) & 3) === 0) {
    while ((d & 3) !== 0 && d < end) dst[d++] = src[s++];
    const words = (end - d) >>> 2;
    const dw = d >>> 2, sw = s >>> 2; // >>>: offsets of 2 GiB and more, in views of up to 4 GiB
    // Four words per round: a 64-byte frame is 4 rounds instead of 15 (the loop's compare and
    // branch cost as much as a word's load and store).
    let i = 0;
    for (; i + 4 <= words; i += 4) {
      dst32[dw + i] = src32[sw + i];
      dst32[dw + i + 1] = src32[sw + i + 1];
      dst32[dw + i + 2] = src32[sw + i + 2];
      dst32[dw + i + 3] = src32[sw + i + 3];
    }
    for (; i < words; i++) dst32[dw + i] = src32[sw + i];
    d += words * 4;
    s += words * 4;
  }
  while (d < end) dst[d++] = src[s++];
}
