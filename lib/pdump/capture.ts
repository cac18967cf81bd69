/**
 * pdump, the capturing side (what `tspmd pdump` runs): map another process's capture region
 * through /proc/PID/fd, claim it (an owner word: one capture at a time; a dead owner is taken
 * over), set the queue masks, drain the rings into a pcap file, clear the masks. The app's side is
 * pdump.ts and queue.ts; the layout, region.ts.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import * as os from '../../src/os/libc.js';
import { PcapWriter } from '../pcap/pcap.js';
import {
  CAPTURE_MAGIC, CAPTURE_MAX_PORTS, CAPTURE_MAX_QUEUES, CAPTURE_MEMFD, CAPTURE_REGION, CAPTURE_VERSION, MASK_BASE, REC_HEADER,
  RING_BASE, RING_SLOT, S_DROPS, S_HEAD, S_TAIL, SLOT_WORDS, W_MAGIC, W_OWNER, W_SNAPLEN, W_VERSION, WRAP, captureSlot,
  mapRegion, type CaptureViews,
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

/** Map the capture region of process pid; errors say why there is none. */
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
  const fd = os.open(target, os.O_RDWR);
  try {
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

/** Move every complete record of a slot's ring into the writer; returns how many. */
function drain(v: CaptureViews, slot: number, w: PcapWriter): number {
  const sw = SLOT_WORDS + slot * 4, base = RING_BASE + slot * RING_SLOT;
  const head = Atomics.load(v.i32, sw + S_HEAD);
  let tail = Atomics.load(v.i32, sw + S_TAIL), n = 0;
  while (tail !== head) {
    const pos = (tail >>> 0) % RING_SLOT;
    const room = RING_SLOT - pos;
    const cap = v.dv.getUint32(base + pos, true);
    if (room < REC_HEADER || cap === WRAP) {
      tail = (tail + room) | 0;
      continue;
    }
    const orig = v.dv.getUint32(base + pos + 4, true), sec = v.dv.getUint32(base + pos + 8, true), nsec = v.dv.getUint32(base + pos + 12, true);
    w.write(v.u8, base + pos + REC_HEADER, cap, sec, nsec, orig);
    tail = (tail + REC_HEADER + ((cap + 3) & ~3)) | 0;
    n++;
  }
  Atomics.store(v.i32, sw + S_TAIL, tail);
  return n;
}

/** Capture process pid's port per o until the duration ends or stop resolves; the region is left switched off. */
export async function capture(o: CaptureOptions, pid: number, stop: Promise<void>, info: (line: string) => void = () => {}): Promise<CaptureResult> {
  if (!Number.isInteger(o.port) || o.port < 0 || o.port >= CAPTURE_MAX_PORTS) throw new RangeError(`capture: port ${o.port} is outside 0..${CAPTURE_MAX_PORTS - 1}`);
  if (!Number.isInteger(o.queue) || o.queue < -1 || o.queue >= CAPTURE_MAX_QUEUES) throw new RangeError(`capture: queue ${o.queue} is outside 0..${CAPTURE_MAX_QUEUES - 1} (or -1 for all)`);
  const { views: v, va } = mapCaptureRegion(pid);
  const me = process.pid;
  const owner = Atomics.compareExchange(v.i32, W_OWNER, 0, me);
  if (owner !== 0 && owner !== me) {
    if (os.processAlive(owner)) {
      os.munmap(va, CAPTURE_REGION);
      throw new Error(`process ${pid} is already being captured by pdump pid ${owner}: wait for it to end`);
    }
    Atomics.store(v.i32, W_OWNER, me); // its pdump died: take over
  }
  const dirs = o.dir === 'rx' ? [0] : o.dir === 'tx' ? [1] : [0, 1];
  const queues = o.queue < 0 ? [...Array(CAPTURE_MAX_QUEUES).keys()] : [o.queue];
  const slots = dirs.flatMap((d) => queues.map((q) => captureSlot(d, q)));
  const drops0 = slots.map((s) => Atomics.load(v.i32, SLOT_WORDS + s * 4 + S_DROPS));
  let w: PcapWriter | null = null;
  let drops = 0;
  try {
    w = new PcapWriter(o.out, { snaplen: o.snaplen });
    // Only what happens from now on: skip what an earlier capture left.
    for (const s of slots) Atomics.store(v.i32, SLOT_WORDS + s * 4 + S_TAIL, Atomics.load(v.i32, SLOT_WORDS + s * 4 + S_HEAD));
    // Another port's or direction's leftover masks (from a pdump that died) are cleared.
    for (let i = 0; i < CAPTURE_MAX_PORTS * 2; i++) Atomics.store(v.i32, MASK_BASE + i, 0);
    v.i32[W_SNAPLEN] = o.snaplen;
    const mask = o.queue < 0 ? (1 << CAPTURE_MAX_QUEUES) - 1 : 1 << o.queue;
    for (const d of dirs) Atomics.store(v.i32, MASK_BASE + o.port * 2 + d, mask);
    info(`pdump: capturing port ${o.port} ${o.dir} queue ${o.queue < 0 ? '*' : o.queue} of pid ${pid} into ${o.out}`);
    let done = false;
    void stop.then(() => { done = true; });
    const end = o.durationS > 0 ? Date.now() + o.durationS * 1000 : Infinity;
    while (!done && Date.now() < end) {
      for (const s of slots) drain(v, s, w);
      await new Promise((r) => setTimeout(r, 2));
    }
  } finally {
    for (const d of dirs) Atomics.store(v.i32, MASK_BASE + o.port * 2 + d, 0);
    // A burst that saw the mask set may still be copying: let it finish, then take the rest.
    await new Promise((r) => setTimeout(r, 50));
    let err: unknown = null;
    try {
      if (w) for (const s of slots) drain(v, s, w);
      w?.close();
    } catch (e) {
      err = e;
    }
    drops = slots.reduce((sum, s, i) => sum + (Atomics.load(v.i32, SLOT_WORDS + s * 4 + S_DROPS) - drops0[i]), 0);
    Atomics.compareExchange(v.i32, W_OWNER, me, 0);
    os.munmap(va, CAPTURE_REGION); // no view of v is used after this
    if (err) throw err;
  }
  return { pid, port: o.port, packets: w?.packets ?? 0, drops, out: o.out };
}
