/**
 * The capture region shared by an app and a pdump process: its layout, in one place.
 *
 * One memfd per app process, named CAPTURE_MEMFD (shown as /memfd:tspmd-pdump in /proc/PID/fd),
 * sparse: it uses no memory until a capture runs. Int32 words, then rings at RING_BASE, RING_SLOT
 * bytes each:
 *   [0] magic  [1] version  [2] owner pid (0: free)  [3] snaplen
 *   [MASK_BASE + port*2 + dir]  queue bitmask being captured (dir 0 RX, 1 TX), ports 0..MAX_PORTS-1
 *   ring slot s = dir*MAX_QUEUES + queue: [head, tail, drops, packets] words at SLOT_WORDS + s*4,
 *   bytes at RING_BASE + s*RING_SLOT (head/tail count bytes freely; a record never wraps: a header
 *   with captured length WRAP says "continue at offset 0").
 * A record is a 16-byte header (captured length, original length, seconds, nanoseconds), then the
 * bytes, padded to 4. The app makes the memfd sealed against shrinking and growing (version 2).
 * The owner pid is how the app tells a dead pdump: its main thread clears the masks and releases
 * the claim of an owner that is gone (lib/pdump/pdump.ts).
 */
import { readFileSync } from 'node:fs';
import * as os from '../../src/os/libc.js';

/** The memfd's name (shown as /memfd:tspmd-pdump in /proc/PID/fd). */
export const CAPTURE_MEMFD = 'tspmd-pdump';
/** The region's first word once it is initialized, and its layout version. */
export const CAPTURE_MAGIC = 0x70647570, CAPTURE_VERSION = 2;
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
/** The largest snap length, so the largest captured length of a record. */
export const CAPTURE_MAX_SNAPLEN = 65535;

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

/** What pdump's queue callback gets (QueueCallback.arg): the region's fd, which every thread of the process can map. */
export interface PdumpCallbackArg {
  fd: number;
}

/** Map the region behind fd (shared, read-write); the caller munmaps va with CAPTURE_REGION when done. */
export function mapRegion(fd: number): { views: CaptureViews; va: bigint } {
  const va = os.mmap(0n, CAPTURE_REGION, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  return { views: captureViews(va), va };
}

/** Whether the pdump with this pid (an owner word) is gone: no such process, a zombie, or no valid pid at all. */
export function readerGone(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return true;
  if (!os.processAlive(pid)) return true;
  try {
    // A killed pdump whose parent has not reaped it yet still answers kill(pid, 0).
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return !os.processAlive(pid);
  }
}
