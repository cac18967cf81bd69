/**
 * Split virtqueue geometry (virtio 1.2, 2.7) for this driver: where the descriptor table, the
 * avail ring, the used ring and the header slots live inside one IOVA-contiguous memzone per
 * queue, plus the index arithmetic both halves share. The device may write all of this memory, so
 * the driver's own bookkeeping (which mbuf each descriptor holds, chain lengths and links, indices)
 * is not here: it lives in a SharedArrayBuffer (VirtqBook, virtio_data.ts). Pure: no I/O, no control-plane
 * imports, so the data half may import it.
 *
 *   0        descriptor table     16 x size (16-byte aligned)
 *   avail    avail ring           flags, idx, ring[size], used_event (2-byte aligned)
 *   used     used ring            flags, idx, ring[size] of {id, len}, avail_event (page aligned)
 *   hdrs     16 x size            TX: a zeroed virtio_net_hdr per head for packets whose headroom
 *                                 cannot take one; control queue: command, data and ack buffers
 */
import { DESC_SIZE, availRingSize, usedRingSize, AVAIL_IDX, AVAIL_RING, USED_IDX, USED_RING, USED_ELEM_SIZE } from '../../../lib/virtio/virtio.js';

/** Byte offsets of one queue's parts inside its memzone. */
export interface VirtqLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
  hdrs: number;
  /** bytes the memzone needs */
  total: number;
}

/** Bytes per slot of the header area. */
export const HDR_SLOT = 16;

const align = (n: number, a: number): number => Math.ceil(n / a) * a;

/** The layout of a queue of size entries (a power of two, 1..32768). */
export function virtqLayout(size: number): VirtqLayout {
  if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
    throw new RangeError(`virtqueue size ${size} must be a power of two from 1 to 32768`);
  }
  const desc = 0;
  const avail = desc + DESC_SIZE * size;
  const used = align(avail + availRingSize(size), 4096);
  const hdrs = align(used + usedRingSize(size), 64);
  const total = align(hdrs + HDR_SLOT * size, 4096);
  return { size, desc, avail, used, hdrs, total };
}

/** u16 index (in a Uint16Array over the memzone) of the avail ring's idx. */
export function availIdxWord(l: VirtqLayout): number {
  return (l.avail + AVAIL_IDX) >> 1;
}

/** u16 index of avail ring slot 0. */
export function availRingWord(l: VirtqLayout): number {
  return (l.avail + AVAIL_RING) >> 1;
}

/** u16 index of the used ring's idx. */
export function usedIdxWord(l: VirtqLayout): number {
  return (l.used + USED_IDX) >> 1;
}

/** u32 index of used ring element 0's id (its len follows). */
export function usedRingWord(l: VirtqLayout): number {
  return (l.used + USED_RING) >> 2;
}

/** Bytes of one used element (for stride arithmetic in u32 words: USED_ELEM_SIZE / 4). */
export const USED_ELEM_WORDS = USED_ELEM_SIZE >> 2;

/** Used entries the device has published and the driver has not yet consumed (16-bit index arithmetic). */
export function usedPending(usedIdx: number, lastUsed: number): number {
  return (usedIdx - lastUsed) & 0xffff;
}

/** The IOVA of a byte inside a memzone at iova, split into 32-bit halves without BigInt: [lo, hi]. */
export function iovaHalves(iovaLo: number, iovaHi: number, off: number): [number, number] {
  const lo = iovaLo + off;
  return lo >= 0x1_0000_0000 ? [lo - 0x1_0000_0000, iovaHi + 1] : [lo, iovaHi];
}
