/**
 * Views over an address range longer than one view can cover. A koffi view (one ArrayBuffer) reaches
 * at most 4 GiB, so a longer range (a BAR over 4 GiB, a large DMA region) is covered by pieces of
 * pieceSize bytes, each with its own typed arrays; piece(off) picks the piece holding an offset. The
 * piece size is a multiple of 8, so an aligned access of up to 8 bytes never crosses a piece, and
 * below 4 GiB, so an offset inside a piece fits `>>>`. copyOut/copyIn copy any byte range piece by
 * piece. Creating the views touches no memory: the range may be a PROT_NONE reservation with only
 * parts mapped, as long as only mapped bytes are accessed.
 */
import { viewOf } from './libc.js';

/** The most one view (koffi.view, one ArrayBuffer) covers: 4 GiB. */
export const MAX_VIEW_BYTES = 0x1_0000_0000;

/** One piece: typed arrays over [start, start + u8.length) of the range. */
export interface ViewPiece {
  /** offset of the piece's first byte in the range */
  readonly start: number;
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly u64: BigUint64Array;
}

/** Typed-array views over [va, va + length) in pieces of at most 4 GiB. */
export class PiecedView {
  /** bytes covered */
  readonly length: number;
  /** bytes per piece (the last piece may be shorter) */
  readonly pieceSize: number;
  readonly pieces: readonly ViewPiece[];
  private readonly single: ViewPiece | null;

  /**
   * Views over [va, va + length); pieceSize (default 4 GiB) must be a positive multiple of 4096 of
   * at most 4 GiB (tests lower it to cover several pieces without 4 GiB of address space).
   */
  constructor(va: bigint, length: number, pieceSize: number = MAX_VIEW_BYTES) {
    if (!(Number.isSafeInteger(length) && length > 0)) throw new RangeError(`PiecedView: length ${length} must be a positive integer`);
    if (!(Number.isSafeInteger(pieceSize) && pieceSize > 0 && pieceSize % 4096 === 0 && pieceSize <= MAX_VIEW_BYTES)) {
      throw new RangeError(`PiecedView: piece size ${pieceSize} must be a multiple of 4096 between 4096 and 4 GiB`);
    }
    this.length = length;
    this.pieceSize = pieceSize;
    const pieces: ViewPiece[] = [];
    for (let start = 0; start < length; start += pieceSize) {
      const buf = viewOf(va + BigInt(start), Math.min(pieceSize, length - start));
      pieces.push({
        // lengths by division: a 4 GiB byteLength is 2^32, which >>> would turn into 0
        start, u8: new Uint8Array(buf), u16: new Uint16Array(buf, 0, Math.floor(buf.byteLength / 2)),
        u32: new Uint32Array(buf, 0, Math.floor(buf.byteLength / 4)), u64: new BigUint64Array(buf, 0, Math.floor(buf.byteLength / 8)),
      });
    }
    this.pieces = pieces;
    this.single = pieces.length === 1 ? pieces[0] : null;
  }

  /** The piece holding offset off (0 <= off < length; not checked: callers check once). */
  piece(off: number): ViewPiece {
    return this.single ?? this.pieces[Math.floor(off / this.pieceSize)];
  }

  /** Copy len bytes of the range at off into dst at at, across pieces. */
  copyOut(off: number, dst: Uint8Array, at: number, len: number): void {
    while (len > 0) {
      const p = this.piece(off), o = off - p.start, n = Math.min(len, p.u8.length - o);
      dst.set(p.u8.subarray(o, o + n), at);
      off += n; at += n; len -= n;
    }
  }

  /** Copy len bytes of src from at into the range at off, across pieces. */
  copyIn(off: number, src: Uint8Array, at: number, len: number): void {
    while (len > 0) {
      const p = this.piece(off), o = off - p.start, n = Math.min(len, p.u8.length - o);
      p.u8.set(src.subarray(at, at + n), o);
      off += n; at += n; len -= n;
    }
  }
}
