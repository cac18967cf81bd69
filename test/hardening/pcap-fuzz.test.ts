/**
 * The pcap/pcapng reader's fuzz contract (issue 22): mutated capture files, made from a corpus of
 * valid ones (classic pcap in both byte orders, micro- and nanosecond, Ethernet, Linux cooked and
 * raw-IP link types; pcapng in both byte orders with several sections and interfaces, if_tsresol
 * and if_tsoffset, Enhanced, Simple and obsolete Packet blocks and blocks to skip; see
 * pcap-corpus.ts), each either loads or fails with the one-line error:
 *
 * - lib/pcap's parseCapture, in memory: returns an index whose every packet lies inside the file, or
 *   throws a PcapFormatError of one line that starts with the file's name;
 * - net_pcap's loader (`rx_pcap=`, the port's constructor, reading the file from disk): loads
 *   exactly when parseCapture loads and every packet is Ethernet, else fails with one line naming
 *   the file; a loaded port's RX hands out exactly parseCapture's packets (those larger than the
 *   mbuf data room counted as RX errors), and writes nothing outside the packet's bytes: every byte
 *   of the pool's memory but the mbuf headers is filled with a guard pattern, and after each file
 *   the headroom, the data room past each packet and the space between objects still hold it;
 * - each file takes under 1 s of CPU (parse, load, RX of every packet; CPU time, not wall time:
 *   on a loaded 2-vCPU box a niced test process can wait a second for a CPU, and a parser that
 *   spins shows as CPU), and the process's resident size stays under its size at the start plus
 *   RSS_BOUND_MIB;
 * - a child-process spot check: `tspmd l2fwd` with the first refused file exits 2 with that line.
 *
 * TSPMD_PCAP_FUZZ_FILES files (default 2,000; the full contract is 10,000), seed random and printed
 * (TSPMD_PCAP_FUZZ_SEED replays a run; TSPMD_PCAP_FUZZ_FIRST=i with TSPMD_PCAP_FUZZ_FILES=1 replays
 * file i alone: each file has its own generator seeded from the seed and its number).
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { UsageError } from '../../src/options.js';
import { openRxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, MBUF_HDR } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import { PcapFormatError, parseCapture, capturedPacket, type CaptureIndex } from '../../lib/pcap/pcap.js';
import { PcapPort } from '../../drivers/net/pcap/pcap.js';
import { runCli } from '../cli.js';
import { tempDir } from './server-helpers.js';
import { seedCorpus } from './pcap-corpus.js';
import { prng } from '../prng.js';

const FILES = Number(process.env.TSPMD_PCAP_FUZZ_FILES ?? 2000);
const FIRST = Number(process.env.TSPMD_PCAP_FUZZ_FIRST ?? 0);
const SEED = process.env.TSPMD_PCAP_FUZZ_SEED !== undefined ? Number(process.env.TSPMD_PCAP_FUZZ_SEED) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
/** The contract's time per file (CPU time of this process). */
const FILE_MS = 1000;
/** Resident size may grow at most this much over the run (GC heap, JIT code; the files are small). */
const RSS_BOUND_MIB = 128;
/** The guard pattern, as a u32 word. */
const GUARD = 0xa5a5a5a5;
/** Data room of the fuzzer's pool: frames of the corpus are up to 3000 bytes, so some do not fit. */
const DATA_ROOM = 2048;

const rssNow = (): number => process.memoryUsage.rss();

/** Where a valid file's fields lie: 32-bit words (lengths, types, ids), 16-bit option words, and block or record starts. */
interface Layout {
  name: string;
  bytes: Uint8Array;
  /** [offset, little endian] of each 32-bit header word */
  words: Array<[number, boolean]>;
  /** [offset, little endian] of each option's code and length word */
  halves: Array<[number, boolean]>;
  /** offsets where a block or record starts, and the file's end */
  bounds: number[];
  /** pcapng: [start, end, little endian] of each block */
  blocks: Array<[number, number, boolean]>;
}

/** The layout of a valid corpus file (walked here, independently of lib/pcap). */
function layout(name: string, b: Uint8Array): Layout {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const words: Array<[number, boolean]> = [], halves: Array<[number, boolean]> = [], bounds: number[] = [];
  const blocks: Array<[number, number, boolean]> = [];
  if (dv.getUint32(0, true) === 0x0a0d0d0a) {
    let le = true;
    for (let off = 0; off + 12 <= b.length;) {
      const type = dv.getUint32(off, true);
      if (type === 0x0a0d0d0a) le = dv.getUint32(off + 8, true) === 0x1a2b3c4d;
      const len = dv.getUint32(off + 4, le);
      bounds.push(off);
      blocks.push([off, off + len, le]);
      words.push([off, le], [off + 4, le], [off + len - 4, le]);
      const t = dv.getUint32(off, le);
      // fixed fields, then options: SHB 16 bytes, IDB 8, EPB 20 + data, OPB 20 + data, others none known
      const fixed = t === 0x0a0d0d0a ? 16 : t === 1 ? 8 : t === 6 || t === 2 ? 20 + ((dv.getUint32(off + 20, le) + 3) & ~3) : t === 3 ? 4 : -1;
      for (let k = 8; k < Math.min(fixed, 28); k += 4) words.push([off + k, le]);
      if (t === 1 || t === 0x0a0d0d0a || t === 6) {
        for (let o = off + 8 + fixed; o + 4 <= off + len - 4;) {
          halves.push([o, le], [o + 2, le]);
          const code = dv.getUint16(o, le), olen = dv.getUint16(o + 2, le);
          if (code === 0) break;
          o += 4 + ((olen + 3) & ~3);
        }
      }
      off += len;
    }
  } else {
    const m = dv.getUint32(0, true);
    const le = m === 0xa1b2c3d4 || m === 0xa1b23c4d;
    words.push([0, le], [4, le], [16, le], [20, le]);
    bounds.push(24);
    for (let off = 24; off + 16 <= b.length;) {
      words.push([off + 8, le], [off + 12, le]);
      off += 16 + dv.getUint32(off + 8, le);
      bounds.push(off);
    }
  }
  bounds.push(b.length);
  return { name, bytes: b, words: words.filter(([o]) => o >= 0 && o + 4 <= b.length), halves, bounds, blocks };
}

const INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 16, 19, 20, 24, 27, 28, 31, 32, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffff0, 0xfffffffc, 0xffffffff];

/** One mutated file from the corpus, and what was done to it (1 to 3 steps, mostly aimed at the structure). */
function mutate(rnd: () => number, corpus: Layout[]): { bytes: Uint8Array; how: string } {
  const int = (n: number): number => Math.floor(rnd() * n);
  const pick = <T>(a: readonly T[]): T => a[int(a.length)];
  const seed = pick(corpus);
  let b = Uint8Array.from(seed.bytes);
  const how: string[] = [seed.name];
  const steps = rnd() < 0.6 ? 1 : rnd() < 0.7 ? 2 : 3;
  const insert = (at: number, piece: Uint8Array): void => { const x = new Uint8Array(b.length + piece.length); x.set(b.subarray(0, at)); x.set(piece, at); x.set(b.subarray(at), at + piece.length); b = x; };
  for (let s = 0; s < steps; s++) {
    const dv = new DataView(b.buffer);
    const r = rnd();
    if (r < 0.12 && seed.blocks.length && b.length === seed.bytes.length) {
      // a pcapng block resized but consistent (length and trailer agree): its body cut short or padded
      const [from, to, le] = pick(seed.blocks);
      const len = rnd() < 0.7 ? pick([12, 16, 20, 24, 28, 32, 36]) : Math.max(12, (to - from) + (int(9) - 4) * 4);
      const body = new Uint8Array(len - 12);
      body.set(b.subarray(from + 8, Math.min(to - 4, from + 8 + body.length)));
      const blk = new Uint8Array(len);
      const bv = new DataView(blk.buffer);
      blk.set(b.subarray(from, from + 4));
      bv.setUint32(4, len, le);
      blk.set(body, 8);
      bv.setUint32(len - 4, len, le);
      b = Uint8Array.from([...b.subarray(0, from), ...blk, ...(rnd() < 0.5 ? b.subarray(to) : [])]);
      how.push(`resize@${from}=${len}`);
    } else if (r < 0.35) {
      // a header word (length, type, interface id, captured length ...) set to a value that tests a bound
      const [o, le0] = pick(seed.words);
      if (o + 4 > b.length) continue;
      const le = rnd() < 0.9 ? le0 : !le0;
      const cur = dv.getUint32(o, le);
      const q = rnd();
      const val = q < 0.55 ? pick(INTERESTING) : q < 0.85 ? cur + (int(9) - 4) * 4 + (rnd() < 0.2 ? int(4) : 0) : b.length - o + int(33) - 16;
      dv.setUint32(o, val >>> 0, le);
      how.push(`u32@${o}=${val >>> 0}`);
    } else if (r < 0.5 && seed.halves.length) {
      // an option's code or length
      const [o, le] = pick(seed.halves);
      if (o + 2 > b.length) continue;
      const val = rnd() < 0.5 ? pick(INTERESTING) & 0xffff : pick([0, 1, 2, 9, 14, 0x8000]) + (rnd() < 0.3 ? int(16) : 0);
      dv.setUint16(o, val, le);
      how.push(`u16@${o}=${val}`);
    } else if (r < 0.6) {
      // the file cut at or just after a block or record start (a block at the end of the file)
      const n = Math.min(b.length, pick(seed.bounds) + int(32));
      b = b.slice(0, n);
      how.push(`cut@${n}`);
    } else if (r < 0.7) {
      // a block or record repeated, or taken from another seed (another format, byte order, section), at a boundary
      const src = rnd() < 0.5 ? seed : pick(corpus);
      const k = int(src.bounds.length - 1);
      const piece = src.bytes.slice(src.bounds[k], src.bounds[k + 1]);
      const at = Math.min(b.length, pick(seed.bounds));
      insert(at, piece);
      how.push(`block:${src.name}:${src.bounds[k]}+${piece.length}@${at}`);
    } else if (r < 0.75) {
      const k = int(seed.bounds.length - 1);
      const from = seed.bounds[k], to = Math.min(b.length, seed.bounds[k + 1]);
      if (from < to) b = Uint8Array.from([...b.subarray(0, from), ...b.subarray(to)]);
      how.push(`delete@${from}..${to}`);
    } else if (r < 0.87) {
      const o = int(b.length);
      if (rnd() < 0.7) b[o] ^= 1 << int(8);
      else b[o] = int(256);
      how.push(`byte@${o}`);
    } else if (r < 0.93) {
      const n = 1 + int(40);
      insert(b.length, Uint8Array.from({ length: n }, () => int(256)));
      how.push(`append${n}`);
    } else {
      const n = int(b.length + 1);
      b = b.slice(0, n);
      how.push(`cut@${n}`);
    }
  }
  return { bytes: b, how: how.join(' ') };
}

/** A one-line error: no newline, no stack frame. */
const oneLine = (s: string): boolean => !s.includes('\n') && s.trim() !== '';

t.test(`pcap fuzzer: ${FILES} mutated pcap/pcapng files each load or fail with one line within 1 s; RX writes nothing outside the packet; RSS bounded (seed ${SEED})`, { timeout: 600_000 }, async (t) => {
  t.comment(`pcap fuzzer: seed ${SEED}, files ${FIRST}..${FIRST + FILES - 1} (replay: TSPMD_PCAP_FUZZ_SEED=${SEED}; one file: TSPMD_PCAP_FUZZ_FIRST=i TSPMD_PCAP_FUZZ_FILES=1)`);
  const dir = tempDir(t);
  const corpus = seedCorpus().map((c) => layout(c.name, c.bytes));
  for (const c of corpus) t.doesNotThrow(() => parseCapture(c.bytes, c.name), `seed ${c.name} is valid`);

  const eal = new Eal({ noHuge: true, noTelemetry: true, filePrefix: `tsp${process.pid}fz`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const pool = pktmbufPoolCreate(eal.memory, `tsp${process.pid}fz`, 255, { cacheSize: 0, dataRoom: DATA_ROOM });
  const objSize = pool.objSize, nObj = pool.size;
  const u32 = pool.u32;
  const zoneWords = pool.u8.byteLength >>> 2;
  /** Fill everything but the mbuf headers with the guard pattern. */
  const guardAll = (): void => {
    for (let i = 0; i < nObj; i++) { const o = pool.objOffset + i * objSize; u32.fill(GUARD, (o + MBUF_HDR) >>> 2, (o + objSize) >>> 2); }
    u32.fill(GUARD, (pool.objOffset + nObj * objSize) >>> 2, zoneWords);
  };
  /** Words outside the mbuf headers that lost the pattern (0 when RX stayed inside the packets, which were restored). */
  const guardBroken = (): number => {
    let bad = 0;
    for (let i = 0; i < nObj; i++) {
      const o = pool.objOffset + i * objSize;
      for (let w = (o + MBUF_HDR) >>> 2, e = (o + objSize) >>> 2; w < e; w++) if (u32[w] !== GUARD) bad++;
    }
    for (let w = (pool.objOffset + nObj * objSize) >>> 2; w < zoneWords; w++) if (u32[w] !== GUARD) bad++;
    return bad;
  };
  guardAll();

  const file = join(dir, 'fuzz.pcap');
  const burst = new Uint32Array(32);
  const v = new MbufView();
  const failures: string[] = [];
  const kinds = new Map<string, number>();
  const fail = (i: number, how: string, what: string): void => { if (failures.length < 20) failures.push(`file ${i} (${how}): ${what}`); };
  let loaded = 0, refused = 0, parsed = 0, packets = 0, rxErrors = 0, slowest = 0, slowestAt = -1, slowestWall = 0;
  let spot: { bytes: Uint8Array; message: string } | null = null;
  const rss0 = rssNow();
  let rssMax = rss0;
  const t0 = Date.now();

  for (let i = FIRST; i < FIRST + FILES; i++) {
    const rnd = prng((SEED ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0);
    const { bytes, how } = mutate(rnd, corpus);
    const name = `fuzz${i}.pcap`;
    const start = performance.now(), cpu0 = process.cpuUsage();
    // 1. the parser, in memory
    let ix: CaptureIndex | null = null;
    try {
      ix = parseCapture(bytes, name);
      parsed++;
      for (let k = 0; k < ix.count; k++) {
        if (!(ix.offset[k] >= 0 && ix.offset[k] + ix.capLen[k] <= bytes.length)) { fail(i, how, `packet ${k} at ${ix.offset[k]}+${ix.capLen[k]} lies outside the ${bytes.length}-byte file`); break; }
      }
    } catch (e) {
      const m = (e as Error).message;
      if (!(e instanceof PcapFormatError)) fail(i, how, `parseCapture threw ${(e as Error).name}: ${(e as Error).stack?.split('\n').slice(0, 3).join(' | ')}`);
      else if (!oneLine(m) || !m.startsWith(`${name}: `)) fail(i, how, `error not one line naming the file: ${JSON.stringify(m)}`);
      const kind = m.slice(name.length + 2).replace(/\d+/g, 'N').replace(/[0-9a-f]{2}( [0-9a-f]{2}){3}/, 'XX XX XX XX').slice(0, 70);
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    }
    // 2. net_pcap's loader, from the file, and RX of every packet into guarded mbufs
    writeFileSync(file, bytes);
    const ethernet = ix !== null && ix.linktype.every((lt) => lt === 1);
    let port: PcapPort | null = null;
    try {
      port = new PcapPort('net_pcapfz', { rxPcap: file, infiniteRx: false });
      loaded++;
    } catch (e) {
      refused++;
      const m = (e as Error).message;
      if (!(e instanceof UsageError)) fail(i, how, `the loader threw ${(e as Error).name}: ${(e as Error).stack?.split('\n').slice(0, 3).join(' | ')}`);
      else if (!oneLine(m) || !m.includes(file)) fail(i, how, `loader error not one line naming the file: ${JSON.stringify(m)}`);
      else if (ethernet) fail(i, how, `the loader refused a file parseCapture reads (all Ethernet): ${m}`);
      if (spot === null && e instanceof UsageError && ix === null) spot = { bytes, message: m };
    }
    if (port) {
      try {
        if (!ethernet) fail(i, how, 'the loader took a file parseCapture refuses or with non-Ethernet packets');
        port.configure({ rxQueues: 1, txQueues: 1 });
        port.rxQueueSetup(0, 32, pool);
        port.txQueueSetup(0, 32);
        port.start();
        const rx = await openRxQueue(port.data(), 0);
        let k = 0; // packet of ix expected next
        for (let n = rx.rxBurst(burst, 32); n > 0; n = rx.rxBurst(burst, 32)) {
          for (let j = 0; j < n; j++) {
            while (ix && k < ix.count && ix.capLen[k] > DATA_ROOM) k++; // skipped by RX, counted as errors
            const want = ix && k < ix.count ? capturedPacket(ix, k) : null;
            v.at(burst[j]);
            const got = v.u8.subarray(v.data, v.data + v.dataLen);
            if (!want || want.length !== got.length || Buffer.compare(Buffer.from(want), Buffer.from(got)) !== 0) { fail(i, how, `RX packet ${packets} differs from parseCapture's packet ${k}`); }
            v.u8.fill(0xa5, v.data, v.data + v.dataLen); // restore the pattern where the packet was
            k++;
            packets++;
          }
          pool.freeBulk(burst, n);
        }
        const st = port.stats();
        rxErrors += st.ierrors;
        const big = ix ? Array.from(ix.capLen).filter((c) => c > DATA_ROOM).length : 0;
        if (ix && (st.ipackets !== ix.count - big || st.ierrors !== big)) fail(i, how, `RX counted ${st.ipackets} packets and ${st.ierrors} errors; the file has ${ix.count - big} that fit and ${big} that do not`);
      } finally {
        port.close();
      }
    }
    const bad = guardBroken();
    if (bad > 0) { fail(i, how, `${bad} guard words outside the packets were written`); guardAll(); }
    if (pool.inUseCount() !== 0) fail(i, how, `${pool.inUseCount()} mbufs left in use`);
    const cpu = process.cpuUsage(cpu0), ms = (cpu.user + cpu.system) / 1000, wall = performance.now() - start;
    if (ms > slowest) { slowest = ms; slowestAt = i; }
    if (wall > slowestWall) slowestWall = wall;
    if (ms > FILE_MS) fail(i, how, `took ${ms.toFixed(0)} ms of CPU (${wall.toFixed(0)} ms)`);
    if (i % 50 === 0) rssMax = Math.max(rssMax, rssNow());
  }
  rssMax = Math.max(rssMax, rssNow());
  const mib = (x: number): string => (x / 1048576).toFixed(1);
  t.comment(`pcap fuzzer: seed ${SEED}: ${FILES} files in ${((Date.now() - t0) / 1000).toFixed(1)} s; parseCapture read ${parsed}, net_pcap loaded ${loaded} and refused ${refused}; ${packets} packets received, ${rxErrors} too large for the data room; slowest file ${slowest.toFixed(0)} ms of CPU (file ${slowestAt}), longest ${slowestWall.toFixed(0)} ms of wall time; RSS ${mib(rss0)} -> max ${mib(rssMax)} MiB`);
  t.comment(`parseCapture's errors, most frequent first:\n${[...kinds].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([k, n]) => `  ${String(n).padStart(5)}  ${k}`).join('\n')}`);
  t.same(failures, [], `every file loads or fails with one line, within ${FILE_MS} ms, nothing written outside the packets (seed ${SEED})`);
  t.ok(slowest < FILE_MS, `slowest file ${slowest.toFixed(0)} ms of CPU (under ${FILE_MS} ms)`);
  t.ok(rssMax - rss0 < RSS_BOUND_MIB * 1048576, `RSS grew ${mib(rssMax - rss0)} MiB (bound ${RSS_BOUND_MIB} MiB)`);
  if (FILES >= 100) t.ok(loaded > 0 && refused > 0, `both outcomes seen (loaded ${loaded}, refused ${refused})`);

  // The CLI with a file the loader refused: exit 2, that one line on stderr, no stack.
  if (spot) {
    const bad = join(dir, 'refused.pcap');
    writeFileSync(bad, spot.bytes);
    const r = await runCli(['l2fwd', '--no-huge', '--no-telemetry', '--file-prefix', `tsp${process.pid}fc`, '--vdev', `net_pcap0,rx_pcap=${bad}`, '--vdev', 'net_null1', '--', '-p', '0x3', '--duration', '1']);
    t.equal(r.code, 2, 'tspmd l2fwd with a refused file: exit 2', { stderr: r.stderr });
    t.ok(oneLine(r.stderr.trim()), `one line: ${r.stderr.trim()}`);
    const what = (line: string, path: string): string => line.slice(line.indexOf(`${path}: `) + path.length + 2);
    t.equal(what(r.stderr.trim(), bad), what(spot.message, file), 'the loader\'s line, as in this process');
  }
});
