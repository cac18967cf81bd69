/**
 * Hash benchmark (`npm run bench -- hash --help` lists the options): bulk lookups of 16-byte keys
 * in a table 75 % full, beside the same cell of DPDK's hash_perf_autotest in the same run.
 *
 * The cell (the same in every run): DPDK 22.11 app/test/test_hash_perf.c, "Without locks in the
 * code", "ELEMENTS IN PRIMARY OR SECONDARY LOCATION", "Operations with 8-byte data", "Without
 * pre-computed hash values", key size 16, column Lookup_bulk: rte_hash_lookup_bulk_data over
 * 2^19 * 0.75 = 393,216 keys in a table of 2^19 entries (jhash, the test's hash function), bursts
 * of 16, keys in shuffled order, five passes, every answer checked, TSC cycles per lookup. That is
 * what tspmd's lookupBulk does: it hashes the keys, returns each key's value and the caller checks
 * them. DPDK's table there has no read-write concurrency flag; tspmd's readers always run the
 * lock-free protocol (two Atomics.load of the change counter per burst).
 *
 * tspmd's side: the table built on the main thread with the same keys (a little-endian counter
 * 0, 1, 2, ... in the 16 bytes, DPDK's get_input_keys) in the same order, each with a value, then
 * shuffled; an lcore on CPU 1 attaches it and runs one warm-up pass and five timed passes of
 * lookupBulk with bursts of 16, checking every answer. DPDK runs on CPU 1 too (`-l 1`).
 * Rounds alternate which side goes first; ratio = DPDK ns per lookup / tspmd ns per lookup
 * (tspmd's rate / DPDK's), median over the rounds.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, rmSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { Hash, Lcores, siblingModule } from '../index.js';
import { ensureDpdkTest, median, tscMhz } from './dpdk.js';
import { loadAvg, roundsOptions } from './options.js';
import type { HashBenchArg, HashBenchResult } from './hash-lcore.js';

const LCORE = siblingModule(import.meta.url, 'hash-lcore');
const ENTRIES = 1 << 19, KEY_LEN = 16, BURST = 16;
const KEYS = ENTRIES * 0.75;
const VERBOSE = Boolean(process.env.TSPMD_BENCH_VERBOSE);

const HELP = `usage: npm run bench -- hash [--json] [--quick] [--rounds N] [--no-dpdk]

  --quick      one round, two timed passes instead of five
  --rounds N   rounds (default 3): each one tspmd run and one DPDK hash_perf_autotest run, the
               order alternating
  --no-dpdk    leave DPDK out
  --json       print the figures as one JSON object on the last line

DPDK's figure is one cell of hash_perf_autotest (its whole test runs each round, about a minute or
more): without locks, elements in primary or secondary location, with 8-byte data, without
pre-computed hash, key size 16, Lookup_bulk, in TSC cycles per lookup.`;

/** The cell of hash_perf_autotest's output the benchmark compares with. */
export const HASH_PERF_CELL = { locks: 'without', location: 'primary or secondary', data: 'with 8-byte data', hash: 'without pre-computed hash', keySize: 16, column: 'Lookup_bulk' } as const;

/** One row of hash_perf_autotest's tables: cycles per operation. */
export interface HashPerfRow {
  add: number;
  lookup: number;
  lookupBulk: number;
  del: number;
}

/**
 * hash_perf_autotest's tables by section: key `locks|location|data|hash|keySize` (locks `without`
 * or `with`; location `primary`, `primary or secondary` or `extendable`; data `without data` or
 * `with 8-byte data`; hash `without pre-computed hash` or `with pre-computed hash`).
 */
export function parseHashPerf(text: string): Map<string, HashPerfRow> {
  const rows = new Map<string, HashPerfRow>();
  let locks = '', location = '', data = '', hash = '';
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === 'Without locks in the code') locks = 'without';
    else if (line === 'With locks in the code') locks = 'with';
    else if (line === 'ALL ELEMENTS IN PRIMARY LOCATION') location = 'primary';
    else if (line === 'ELEMENTS IN PRIMARY OR SECONDARY LOCATION') location = 'primary or secondary';
    else if (line === 'EXTENDABLE BUCKETS PERFORMANCE') {
      location = 'extendable';
      locks = 'without';
    } else if (line === 'Operations without data') data = 'without data';
    else if (line === 'Operations with 8-byte data') data = 'with 8-byte data';
    else if (line === 'Without pre-computed hash values') hash = 'without pre-computed hash';
    else if (line === 'With pre-computed hash values') hash = 'with pre-computed hash';
    else {
      const m = /^(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$/.exec(line);
      if (m && locks && location && data && hash) {
        rows.set(`${locks}|${location}|${data}|${hash}|${m[1]}`, { add: Number(m[2]), lookup: Number(m[3]), lookupBulk: Number(m[4]), del: Number(m[5]) });
      }
    }
  }
  return rows;
}

function findInPath(name: string): string | undefined {
  for (const d of [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/bin', '/bin']) {
    try {
      accessSync(join(d, name), constants.X_OK);
      return join(d, name);
    } catch { /* not here */ }
  }
  return undefined;
}

/** One run of `echo hash_perf_autotest | dpdk-test -l 1 --no-pci --no-huge -m 1024`: the cell's cycles per lookup. */
export function runHashPerf(): { cycles: number; command: string; seconds: number } {
  const bin = ensureDpdkTest();
  // Our own file prefix: the default one ("rte") would collide with any other DPDK process.
  const prefix = `tsp-hashperf-${process.pid}-${Date.now() & 0xffff}`;
  const setpriv = findInPath('setpriv');
  const argv = [...(setpriv ? [setpriv, '--pdeathsig', 'KILL', '--'] : []), bin, '-l', '1', '--no-pci', '--no-huge', '-m', '1024', '--file-prefix', prefix];
  const command = `echo hash_perf_autotest | ${argv.join(' ')}`;
  if (VERBOSE) console.log(`dpdk: ${command}`);
  const t0 = performance.now();
  const r = spawnSync(argv[0], argv.slice(1), { input: 'hash_perf_autotest\n', encoding: 'utf8', timeout: 1_200_000, killSignal: 'SIGKILL', maxBuffer: 16 << 20 });
  const seconds = (performance.now() - t0) / 1e3;
  rmSync(join(process.getuid?.() === 0 ? '/var/run' : process.env.XDG_RUNTIME_DIR ?? '/tmp', 'dpdk', prefix), { recursive: true, force: true });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const tail = (): string => log.split('\n').slice(-30).join('\n');
  if (r.error) throw new Error(`dpdk-test hash_perf_autotest could not run: ${r.error.message}\ncommand: ${command}\n${tail()}`);
  if (r.status !== 0) throw new Error(`dpdk-test hash_perf_autotest exited with ${r.signal ?? `code ${r.status}`}\ncommand: ${command}\n${tail()}`);
  const c = HASH_PERF_CELL;
  const row = parseHashPerf(log).get(`${c.locks}|${c.location}|${c.data}|${c.hash}|${c.keySize}`);
  if (!row || !(row.lookupBulk > 0)) throw new Error(`dpdk-test hash_perf_autotest printed no key-size-16 row under "Without locks", "ELEMENTS IN PRIMARY OR SECONDARY LOCATION", "Operations with 8-byte data", "Without pre-computed hash values"\ncommand: ${command}\n${tail()}`);
  return { cycles: row.lookupBulk, command, seconds };
}

/** DPDK's get_input_keys: key i is the little-endian counter i in KEY_LEN bytes. */
function dpdkKeys(n: number): Uint8Array {
  const keys = new Uint8Array(n * KEY_LEN);
  for (let i = 0; i < n; i++) {
    keys[i * KEY_LEN] = i & 255;
    keys[i * KEY_LEN + 1] = (i >>> 8) & 255;
    keys[i * KEY_LEN + 2] = (i >>> 16) & 255;
    keys[i * KEY_LEN + 3] = i >>> 24;
  }
  return keys;
}

/** The hash figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | string | number[]>> {
  const o = roundsOptions('hash', args, HELP, { rounds: 3, quickRounds: 1, maxRounds: 20 });
  if (!o) return {};
  const { quick, rounds, withDpdk } = o;
  const tsc = withDpdk ? tscMhz() : null;
  const loadStart = loadAvg();
  console.log(`load averages at the start: ${loadStart.join(' ')}`);

  // The table: DPDK's keys added in order, each with its index as value, then shuffled for lookups.
  const keys = dpdkKeys(KEYS);
  const h = Hash.create('bench_hash', { entries: ENTRIES, keyLen: KEY_LEN });
  const b0 = performance.now();
  for (let i = 0; i < KEYS; i++) h.add(keys, i * KEY_LEN, i);
  const buildMs = performance.now() - b0;
  const stats = h.stats();
  console.log(`table: ${KEYS} keys of ${KEY_LEN} bytes in ${ENTRIES} entries (${h.buckets} buckets), added in ${buildMs.toFixed(0)} ms (${((buildMs * 1e6) / KEYS).toFixed(0)} ns per add), ${stats.moves} cuckoo moves`);
  const order = new Uint8Array(new SharedArrayBuffer(KEYS * KEY_LEN));
  const expected = new Int32Array(new SharedArrayBuffer(KEYS * 4));
  const perm = new Int32Array(KEYS);
  for (let i = 0; i < KEYS; i++) perm[i] = i;
  let seed = 0x2545f491;
  for (let i = KEYS - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1103515245) + 12345) | 0;
    const j = (seed >>> 1) % (i + 1);
    const x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  for (let i = 0; i < KEYS; i++) {
    order.set(keys.subarray(perm[i] * KEY_LEN, perm[i] * KEY_LEN + KEY_LEN), i * KEY_LEN);
    expected[i] = perm[i];
  }

  const lcores = new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }], 0);
  const arg: HashBenchArg = { desc: h.desc, keys: order.buffer as SharedArrayBuffer, expected: expected.buffer as SharedArrayBuffer, n: KEYS, burst: BURST, warmPasses: 1, passes: quick ? 2 : 5 };
  const tspmdNs: number[] = [], dpdkCycles: number[] = [], dpdkNs: number[] = [], ratios: number[] = [], load1: number[] = [];
  let gcInLoop = 0, badAnswers = 0, dpdkCommand = '', dpdkSeconds = 0;
  try {
    for (let r = 0; r < rounds; r++) {
      load1.push(loadAvg()[0]);
      const order2 = r % 2 === 0 ? ['tspmd', 'dpdk'] : ['dpdk', 'tspmd'];
      let ns = 0, cycles = 0;
      for (const who of order2) {
        if (who === 'tspmd') {
          const res = await lcores.launch<HashBenchResult>(1, LCORE, 'hashBulkLookups', arg);
          ns = res.nsPerLookup;
          gcInLoop += res.gcInLoop;
          badAnswers += res.bad;
          if (res.bad !== 0) throw new Error(`hash benchmark: ${res.bad} wrong answers from lookupBulk`);
        } else if (tsc) {
          const d = runHashPerf();
          cycles = d.cycles;
          dpdkCommand = d.command;
          dpdkSeconds = d.seconds;
        }
      }
      tspmdNs.push(ns);
      if (tsc) {
        const dns = (cycles / tsc.mhz) * 1e3;
        dpdkCycles.push(cycles);
        dpdkNs.push(dns);
        ratios.push(dns / ns);
        console.log(`  round ${r + 1} (${order2[0]} first, load ${load1[r]}): tspmd ${ns.toFixed(1)} ns per lookup (${(1e3 / ns).toFixed(1)} M/s), DPDK ${cycles} cycles = ${dns.toFixed(1)} ns (${(1e3 / dns).toFixed(1)} M/s, its whole test took ${dpdkSeconds.toFixed(0)} s); ratio ${(dns / ns).toFixed(3)}`);
      } else console.log(`  round ${r + 1} (load ${load1[r]}): tspmd ${ns.toFixed(1)} ns per lookup (${(1e3 / ns).toFixed(1)} M/s)`);
    }
  } finally {
    await lcores.close();
  }
  const loadEnd = loadAvg();
  const tns = median(tspmdNs);
  const out: Record<string, number | string | number[]> = {
    tspmd_bulk16_ns_per_lookup: Number(tns.toFixed(2)), tspmd_mlookups_per_s: Number((1e3 / tns).toFixed(2)),
    tspmd_rounds_ns: tspmdNs.map((x) => Number(x.toFixed(2))), gc_count: gcInLoop, wrong_answers: badAnswers,
    table_entries: ENTRIES, keys: KEYS, key_len: KEY_LEN, burst: BURST, build_ms: Number(buildMs.toFixed(0)), cuckoo_moves: stats.moves,
  };
  if (tsc) {
    const ratio = median(ratios);
    console.log(`ratio tspmd / DPDK (lookups per second): median ${ratio.toFixed(3)} of ${ratios.map((x) => x.toFixed(3)).join(' ')}; tspmd ${tns.toFixed(1)} ns, DPDK ${median(dpdkNs).toFixed(1)} ns per lookup; GCs in the timed loops ${gcInLoop}`);
    Object.assign(out, {
      dpdk_ns_per_lookup: Number(median(dpdkNs).toFixed(2)), dpdk_rounds_cycles: dpdkCycles, dpdk_rounds_ns: dpdkNs.map((x) => Number(x.toFixed(2))),
      ratio_median: Number(ratio.toFixed(3)), ratios: ratios.map((x) => Number(x.toFixed(3))),
      dpdk_cell: `${HASH_PERF_CELL.locks} locks | ${HASH_PERF_CELL.location} | ${HASH_PERF_CELL.data} | ${HASH_PERF_CELL.hash} | key ${HASH_PERF_CELL.keySize} | ${HASH_PERF_CELL.column}`,
      dpdk_command: dpdkCommand, dpdk_test_seconds: Number(dpdkSeconds.toFixed(0)), tsc_mhz: tsc.mhz, tsc_source: tsc.source,
    });
  } else console.log(`tspmd: ${tns.toFixed(1)} ns per lookup (median of ${rounds}); GCs in the timed loops ${gcInLoop}`);
  Object.assign(out, { rounds_load_avg_1m: load1, load_avg_start: loadStart, load_avg_end: loadEnd });
  return out;
}
