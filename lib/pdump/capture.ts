/**
 * pdump, the capturing side (what `tspmd pdump` runs): map another process's capture region
 * through /proc/PID/fd, claim it (an owner word: one capture at a time; a dead owner's claim is
 * released by the app, or taken over when the app does not), set the queue masks, drain the rings
 * into a pcap file, clear the masks. The app's side is pdump.ts and queue.ts; the layout, region.ts.
 *
 * The region is written by another process, so it is read like input: it must be a sealed memfd
 * of the full size (it cannot shrink under the mapping), and every record is checked against the
 * largest snap length, the ring's end and the published head before a byte of it is used; a bad
 * one ends the capture with an error naming the ring and the offset. Each ring's tail lives here
 * (the region's tail word is only a copy for the producer), so the app cannot move it.
 */
import { fstatSync, readdirSync, readlinkSync } from 'node:fs';
import * as os from '../../src/os/libc.js';
import { PcapWriter } from '../pcap/pcap.js';
import {
  CAPTURE_MAGIC, CAPTURE_MAX_PORTS, CAPTURE_MAX_QUEUES, CAPTURE_MAX_SNAPLEN, CAPTURE_MEMFD, CAPTURE_REGION, CAPTURE_VERSION,
  MASK_BASE, REC_HEADER, RING_BASE, RING_SLOT, S_DROPS, S_HEAD, S_TAIL, SLOT_WORDS, W_MAGIC, W_OWNER, W_SNAPLEN, W_VERSION, WRAP,
  captureSlot, mapRegion, readerGone, type CaptureViews,
} from './region.js';

/** What to capture and where to. */
export interface CaptureOptions {
  port: number;
  /** a queue number, or -1 for all */
  queue: number;
  dir: 'rx' | 'tx' | 'both';
  /** the pcap file to write (nanosecond timestamps) */
  out: string;
  /** seconds; 0: until stop resolves */
  durationS: number;
  snaplen: number;
  /** stop after this many packets are written; 0: no limit (DPDK dumpcap's -c) */
  count?: number;
}

/** What a capture gave. */
export interface CaptureResult {
  pid: number;
  port: number;
  packets: number;
  /** frames the app could not record because its ring was full */
  drops: number;
  out: string;
}

/** How long a pdump waits for the app to release a dead pdump's claim before taking it over. */
const RELEASE_WAIT_MS = 3000;

/** Map the capture region of process pid (a sealed memfd of the full size); errors say why there is none or why it is refused. */
export function mapCaptureRegion(pid: number): { views: CaptureViews; va: bigint } {
  let target: string | null = null;
  let entries: string[];
  try {
    entries = readdirSync(`/proc/${pid}/fd`);
  } catch (e) {
    throw new Error(`cannot list /proc/${pid}/fd (${(e as Error).message}): is process ${pid} running, and are you its user or root?`);
  }
  for (const f of entries) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${f}`).startsWith(`/memfd:${CAPTURE_MEMFD}`)) { target = `/proc/${pid}/fd/${f}`; break; }
    } catch { /* closed meanwhile */ }
  }
  if (!target) {
    throw new Error(`process ${pid} has no capture region (memfd ${CAPTURE_MEMFD}): it was started with TSPMD_PDUMP=0, or it is not an app of the app framework (runApp/appMain) and does not call pdumpInit()`);
  }
  const fd = os.open(target, os.O_RDWR | os.O_CLOEXEC);
  try {
    // A region that could shrink, or is short, would make reading it a SIGBUS: the app seals it.
    let seals: number;
    try {
      seals = os.getSeals(fd);
    } catch (e) {
      throw new Error(`process ${pid}: its capture region ${target} is not a memfd (${(e as Error).message}): refusing to map it`);
    }
    if ((seals & os.F_SEAL_SHRINK) === 0) throw new Error(`process ${pid}: its capture region is not sealed against shrinking (a tspmd app of this version seals it): refusing to map it; use the same tspmd for both`);
    const size = fstatSync(fd).size;
    if (size < CAPTURE_REGION) throw new Error(`process ${pid}: its capture region is ${size} bytes, not ${CAPTURE_REGION}: refusing to map it; use the same tspmd for both`);
    const m = mapRegion(fd);
    if (m.views.i32[W_MAGIC] !== CAPTURE_MAGIC || m.views.i32[W_VERSION] !== CAPTURE_VERSION) {
      const version = m.views.i32[W_VERSION];
      os.munmap(m.va, CAPTURE_REGION);
      throw new Error(`process ${pid}: the capture region has version ${version}, this pdump speaks ${CAPTURE_VERSION}: use the same tspmd for both`);
    }
    return m;
  } finally {
    os.close(fd);
  }
}

/** A record of a capture ring that does not fit: the capture stops. */
class BadRecord extends Error {}

/** One ring being drained: its slot, its words and bytes, and the tail this process keeps. */
interface Ring {
  slot: number;
  /** "port 0 rx queue 3", for errors */
  name: string;
  /** the bytes consumed, kept here: the region's tail word is written, never read back */
  tail: number;
}

/**
 * Move every complete record of ring r into the writer; returns how many. Each record is checked
 * before it is used: a captured length up to CAPTURE_MAX_SNAPLEN and the original length, the
 * nanoseconds, the record inside the ring and before the published head; a bad one throws BadRecord.
 * At most limit records are taken; the rest stay in the ring.
 */
function drain(v: CaptureViews, r: Ring, w: PcapWriter, pid: number, limit: number): number {
  const sw = SLOT_WORDS + r.slot * 4, base = RING_BASE + r.slot * RING_SLOT;
  const head = Atomics.load(v.i32, sw + S_HEAD);
  let tail = r.tail, n = 0;
  const bad = (problem: string): never => {
    throw new BadRecord(`process ${pid}'s capture ring of ${r.name} has a bad record at byte ${(tail >>> 0) % RING_SLOT}: ${problem}; capture stopped (the region is corrupt or was written by something else)`);
  };
  let left = (head - tail) >>> 0; // bytes published and not read yet
  if (left > RING_SLOT) bad(`its head is ${left} bytes ahead of the tail, more than the ring's ${RING_SLOT}`);
  if ((head & 3) !== 0) bad(`its head ${head >>> 0} is not a multiple of 4`);
  while (left > 0 && n < limit) {
    const pos = (tail >>> 0) % RING_SLOT;
    const room = RING_SLOT - pos;
    const cap = room < REC_HEADER ? WRAP : v.dv.getUint32(base + pos, true);
    if (cap === WRAP) {
      // the rest of the ring is unused: the next record is at offset 0
      if (room > left) bad(`the wrap marker skips ${room} bytes, past the published head (${left} bytes on)`);
      tail = (tail + room) | 0;
      left -= room;
      continue;
    }
    if (cap > CAPTURE_MAX_SNAPLEN) bad(`captured length ${cap} is over ${CAPTURE_MAX_SNAPLEN}, the largest snap length`);
    const orig = v.dv.getUint32(base + pos + 4, true), sec = v.dv.getUint32(base + pos + 8, true), nsec = v.dv.getUint32(base + pos + 12, true);
    if (cap > orig) bad(`captured length ${cap} is over the original length ${orig}`);
    if (nsec >= 1e9) bad(`nanoseconds ${nsec} are not below 10^9`);
    const size = REC_HEADER + ((cap + 3) & ~3);
    if (size > room) bad(`the record (${size} bytes) runs past the end of the ring (${room} bytes left)`);
    if (size > left) bad(`the record (${size} bytes) runs past the published head (${left} bytes on)`);
    w.write(v.u8, base + pos + REC_HEADER, cap, sec, nsec, orig); // the writer cuts it to its own snap length
    tail = (tail + size) | 0;
    left -= size;
    n++;
  }
  r.tail = tail;
  Atomics.store(v.i32, sw + S_TAIL, tail);
  return n;
}

/** Claim the region for this process (its pid in the owner word); a live owner refuses, a dead one's claim is waited for, then taken over. */
async function claim(v: CaptureViews, pid: number): Promise<void> {
  const me = process.pid;
  const deadline = Date.now() + RELEASE_WAIT_MS;
  for (;;) {
    const owner = Atomics.compareExchange(v.i32, W_OWNER, 0, me);
    if (owner === 0 || owner === me) return;
    if (!readerGone(owner)) throw new Error(`process ${pid} is already being captured by pdump pid ${owner}: wait for it to end`);
    // A pdump that died (SIGKILL) left its claim: the app's main thread releases it within about a
    // second (and clears its masks); an app that does not (a busy main thread) is taken over.
    if (Date.now() > deadline) {
      if (Atomics.compareExchange(v.i32, W_OWNER, owner, me) === owner) return;
      continue;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Capture process pid's port per o until the duration ends or stop resolves; the region is left switched off. A bad record rejects (the file keeps what came before it). */
export async function capture(o: CaptureOptions, pid: number, stop: Promise<void>, info: (line: string) => void = () => {}): Promise<CaptureResult> {
  if (!Number.isInteger(o.port) || o.port < 0 || o.port >= CAPTURE_MAX_PORTS) throw new RangeError(`capture: port ${o.port} is outside 0..${CAPTURE_MAX_PORTS - 1}`);
  if (!Number.isInteger(o.queue) || o.queue < -1 || o.queue >= CAPTURE_MAX_QUEUES) throw new RangeError(`capture: queue ${o.queue} is outside 0..${CAPTURE_MAX_QUEUES - 1} (or -1 for all)`);
  if (!Number.isInteger(o.snaplen) || o.snaplen < 1 || o.snaplen > CAPTURE_MAX_SNAPLEN) throw new RangeError(`capture: snaplen ${o.snaplen} is outside 1..${CAPTURE_MAX_SNAPLEN}`);
  const count = o.count ?? 0;
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`capture: count ${count} is not a whole number >= 0`);
  const max = count === 0 ? Infinity : count;
  const { views: v, va } = mapCaptureRegion(pid);
  try {
    await claim(v, pid);
  } catch (e) {
    os.munmap(va, CAPTURE_REGION);
    throw e;
  }
  const dirs = o.dir === 'rx' ? [0] : o.dir === 'tx' ? [1] : [0, 1];
  const queues = o.queue < 0 ? [...Array(CAPTURE_MAX_QUEUES).keys()] : [o.queue];
  const rings: Ring[] = dirs.flatMap((d) => queues.map((q) => ({ slot: captureSlot(d, q), name: `port ${o.port} ${d === 0 ? 'rx' : 'tx'} queue ${q}`, tail: 0 })));
  const dropsWord = (r: Ring): number => SLOT_WORDS + r.slot * 4 + S_DROPS;
  const drops0 = rings.map((r) => Atomics.load(v.i32, dropsWord(r)));
  let w: PcapWriter | null = null;
  let failure: unknown = null;
  try {
    w = new PcapWriter(o.out, { snaplen: o.snaplen });
    // Only what happens from now on: skip what an earlier capture left.
    for (const r of rings) {
      r.tail = Atomics.load(v.i32, SLOT_WORDS + r.slot * 4 + S_HEAD);
      Atomics.store(v.i32, SLOT_WORDS + r.slot * 4 + S_TAIL, r.tail);
    }
    // Another port's or direction's leftover masks (from a pdump that died) are cleared.
    for (let i = 0; i < CAPTURE_MAX_PORTS * 2; i++) Atomics.store(v.i32, MASK_BASE + i, 0);
    v.i32[W_SNAPLEN] = o.snaplen;
    const mask = o.queue < 0 ? (1 << CAPTURE_MAX_QUEUES) - 1 : 1 << o.queue;
    for (const d of dirs) Atomics.store(v.i32, MASK_BASE + o.port * 2 + d, mask);
    info(`pdump: capturing port ${o.port} ${o.dir} queue ${o.queue < 0 ? '*' : o.queue} of pid ${pid} into ${o.out}`);
    let done = false;
    void stop.then(() => { done = true; });
    const end = o.durationS > 0 ? Date.now() + o.durationS * 1000 : Infinity;
    while (!done && Date.now() < end && w.packets < max) {
      for (const r of rings) drain(v, r, w, pid, max - w.packets);
      await new Promise((r) => setTimeout(r, 2));
    }
  } catch (e) {
    failure = e;
  }
  for (const d of dirs) Atomics.store(v.i32, MASK_BASE + o.port * 2 + d, 0);
  if (w && !(failure instanceof BadRecord)) {
    // A burst that saw the mask set may still be copying: let it finish, then take the rest.
    await new Promise((r) => setTimeout(r, 50));
    try {
      for (const r of rings) drain(v, r, w, pid, max - w.packets);
    } catch (e) {
      failure ??= e;
    }
  }
  try {
    w?.close();
  } catch (e) {
    failure ??= e;
  }
  const drops = rings.reduce((sum, r, i) => sum + Math.max(0, (Atomics.load(v.i32, dropsWord(r)) - drops0[i]) | 0), 0);
  Atomics.compareExchange(v.i32, W_OWNER, process.pid, 0);
  os.munmap(va, CAPTURE_REGION); // no view of v is used after this
  if (failure !== null) throw failure;
  return { pid, port: o.port, packets: w?.packets ?? 0, drops, out: o.out };
}
