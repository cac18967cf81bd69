/**
 * `tspmd pdump --file-prefix P --port N [--queue Q|'*'] [--dir rx|tx|both] --out FILE [--duration S]`:
 * capture a running tspmd app's port traffic into a pcap file without stopping it (DPDK's
 * dpdk-pdump). It finds the app through its telemetry socket (<run dir>/dpdk/P/dpdk_telemetry.v2
 * greets with the app's pid; or --pid), maps the app's capture region (lib/pcap/capture.ts: a
 * memfd reached through /proc/PID/fd), switches the capture on for that port's queues, drains
 * their rings into FILE (classic pcap, nanosecond timestamps) every few milliseconds, and switches
 * it off after --duration seconds or at SIGINT/SIGTERM. The app's lcores do the copying; while
 * nobody captures they test one word per burst.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { eachOption, numberOption, type App } from '../../lib/app/app.js';
import { UsageError } from '../../src/options.js';
import * as os from '../../src/os/libc.js';
import { runtimeDir, TELEMETRY_SOCKET } from '../../lib/telemetry/server.js';
import { PcapWriter } from '../../lib/pcap/pcap.js';
import {
  CAPTURE_MAGIC, CAPTURE_MAX_PORTS, CAPTURE_MAX_QUEUES, CAPTURE_MEMFD, CAPTURE_REGION, CAPTURE_VERSION, MASK_BASE, REC_HEADER,
  RING_BASE, RING_SLOT, S_DROPS, S_HEAD, S_TAIL, SLOT_WORDS, W_MAGIC, W_OWNER, W_SNAPLEN, W_VERSION, WRAP, captureSlot,
  captureViews, type CaptureViews,
} from '../../lib/pcap/capture.js';

/** pdump's options. */
export interface PdumpOptions {
  port: number;
  /** a queue number, or -1 for all ('*') */
  queue: number;
  dir: 'rx' | 'tx' | 'both';
  out: string;
  durationS: number;
  pid: number | null;
  snaplen: number;
}

/** What a capture gave. */
export interface PdumpResult {
  pid: number;
  port: number;
  packets: number;
  drops: number;
  out: string;
}

/** Ask the app's telemetry socket for its pid (the v2 greeting's "pid"). */
export function appPid(filePrefix: string): number {
  const path = join(runtimeDir(filePrefix), TELEMETRY_SOCKET);
  const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET, 0);
  try {
    try {
      os.connect(fd, os.sockaddrUn(path), path);
    } catch (e) {
      throw new Error(`no tspmd app answers on ${path} (${(e as Error).message}): start the app with --file-prefix ${filePrefix} (and telemetry on), or give its --pid`);
    }
    if (os.pollOne(fd, os.POLLIN, 3000) === 0) throw new Error(`${path}: no greeting within 3 s`);
    const m = os.recvmsg(fd, 16384);
    const pid = m ? (JSON.parse(Buffer.from(m.data).toString('utf8')) as { pid?: unknown }).pid : undefined;
    if (typeof pid !== 'number') throw new Error(`${path}: the greeting has no pid`);
    return pid;
  } finally {
    os.close(fd);
  }
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
  if (!target) throw new Error(`process ${pid} has no capture region (memfd ${CAPTURE_MEMFD}): run the app through the tspmd command (tspmd l2fwd ...), which sets one up`);
  const fd = os.open(target, os.O_RDWR);
  try {
    const va = os.mmap(0n, CAPTURE_REGION, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
    const views = captureViews(va);
    if (views.i32[W_MAGIC] !== CAPTURE_MAGIC || views.i32[W_VERSION] !== CAPTURE_VERSION) {
      os.munmap(va, CAPTURE_REGION);
      throw new Error(`process ${pid}: the capture region has version ${views.i32[W_VERSION]}, this pdump speaks ${CAPTURE_VERSION}: use the same tspmd for both`);
    }
    return { views, va };
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

/** Capture per the options until the duration ends or stop() resolves; the region is left switched off. */
export async function capture(o: PdumpOptions, pid: number, stop: Promise<void>, info: (line: string) => void = () => {}): Promise<PdumpResult> {
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

/** The pdump app (tspmd pdump). */
export const pdump: App<PdumpOptions> = {
  name: 'pdump',
  summary: 'Capture a running app\'s port traffic into a pcap file, as DPDK\'s dpdk-pdump.',
  help: `  --port N            port to capture (required)
  --queue Q|*         queue number, or * for all (default *)
  --dir rx|tx|both    direction (default both)
  --out FILE          pcap file to write (required; nanosecond timestamps)
  --duration SEC      stop after SEC seconds (default: at SIGINT/SIGTERM)
  --snaplen N         bytes kept of each frame (default 65535)
  --pid PID           the app's pid (default: asked from its telemetry socket, by --file-prefix)`,
  ownFlags: { '--port': true, '--queue': true, '--dir': true, '--out': true, '--duration': true, '--snaplen': true, '--pid': true },
  ealDefaults: { noHuge: true, noTelemetry: true },
  parse(args) {
    const o: PdumpOptions = { port: -1, queue: -1, dir: 'both', out: '', durationS: 0, pid: null, snaplen: 65535 };
    eachOption(args, (flag, value) => {
      switch (flag) {
        case '--port': o.port = numberOption('--port', value(), 0, CAPTURE_MAX_PORTS - 1); break;
        case '--queue': {
          const q = value();
          o.queue = q === '*' ? -1 : numberOption('--queue', q, 0, CAPTURE_MAX_QUEUES - 1);
          break;
        }
        case '--dir': {
          const d = value();
          if (d !== 'rx' && d !== 'tx' && d !== 'both') throw new UsageError(`--dir ${d}: expected rx, tx or both`);
          o.dir = d;
          break;
        }
        case '--out': o.out = value(); break;
        case '--duration': o.durationS = numberOption('--duration', value(), 0, 1e7); break;
        case '--snaplen': o.snaplen = numberOption('--snaplen', value(), 64, 65535); break;
        case '--pid': o.pid = numberOption('--pid', value(), 1, 1 << 30); break;
        default: throw new UsageError(`unknown pdump option "${flag}" (see --help)`);
      }
    });
    if (o.port < 0) throw new UsageError('pdump needs --port N: the port to capture');
    if (!o.out) throw new UsageError('pdump needs --out FILE: where to write the capture');
    return o;
  },
  async main(eal, o) {
    const pid = o.pid ?? appPid(eal.options.filePrefix);
    let stopNow: () => void = () => {};
    const stop = new Promise<void>((r) => { stopNow = r; });
    eal.handleSignals(() => stopNow());
    const r = await capture(o, pid, stop, (l) => console.log(l));
    console.log(`pdump: ${r.packets} packets written to ${r.out}${r.drops ? `, ${r.drops} dropped (the capture ring was full)` : ''}`);
    return 0;
  },
};
