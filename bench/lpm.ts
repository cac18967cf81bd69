/**
 * LPM benchmark (`npm run bench -- lpm --help` lists the options), beside DPDK 22.11's
 * lpm_perf_autotest and lpm6_perf_autotest in the same run:
 *  - IPv4: the route table DPDK's test_lpm_perf.c makes (about 1.1 M prefixes from its per-length,
 *    per-class counts, which it took from a real router's table, spread over each class's space
 *    the same way; the same five extra routes), in a table configured as DPDK's (max_rules 2 M,
 *    number_tbl8s 2048: most prefixes longer than 24 do not fit, as in DPDK's run), all next hops
 *    0xAA. Then, on a worker lcore on CPU 1: per iteration 4096 random addresses (untimed), looked
 *    up one by one, in bulks of 32 and in fours (DPDK's lookupx4), 1024 iterations each;
 *    ns per lookup -> lookups/s. DPDK prints TSC cycles per lookup for the same three loops;
 *    its lookups/s = TSC Hz / cycles. Rounds alternate which goes first; ratio = tspmd / DPDK per
 *    round, median over rounds.
 *  - IPv6 (reported): 1000 random prefixes with DPDK's test table's length distribution (uniform
 *    over /1-/128; its fixed table is not copied), 100 addresses under each (random host bits),
 *    every address looked up per pass, one by one and in one bulk call as DPDK's test does.
 *  - The build time and memory of a 1,000,000-prefix IPv4 table (the first million distinct
 *    prefixes of the table above, with tbl8 groups for all of them), beside what DPDK's figures
 *    give: its average add cycles and rte_lpm_create's memory for the same configuration.
 * dpdk-test runs with DPDK_TEST=<test> (it runs that test and exits with its result), on lcore 1
 * (CPU 1) without hugepages, under its own --file-prefix.
 */
import { spawnSync } from 'node:child_process';
import { rmSync, accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { Lpm, Lpm6, LpmFullError, Lcores, siblingModule, maskIpv6 } from '../index.js';
import { ensureDpdkTest, median, tscMhz } from './dpdk.js';
import { loadAvg } from './options.js';
import { prng } from './prng.js';
import type { LpmPerfArg, LpmPerfResult, Lpm6PerfArg, Lpm6PerfResult } from './lpm-lcores.js';

const LCORES = siblingModule(import.meta.url, 'lpm-lcores');

const HELP = `usage: npm run bench -- lpm [--json] [--quick] [--rounds N] [--no-dpdk] [--no-ipv6] [--seed N]

  --quick      one round, tspmd's loops shortened (IPv4 256 iterations of 4096, IPv6 16 passes)
  --rounds N   rounds beside DPDK (default 3): a tspmd run and a dpdk-test run each, the order alternating
  --no-dpdk    tspmd only
  --no-ipv6    IPv4 only
  --seed N     the route and address generator's seed (default: from the clock, printed)
  --json       print the figures as one JSON object on the last line

Each lpm_perf_autotest run takes DPDK itself about a minute or more (its rules table is scanned
per add). Trust rates taken with a load average below about 1.`;

/**
 * Prefixes per length 1-32 in DPDK 22.11's test_lpm_perf.c, for its three address classes (first
 * bit 0; first bits 10; first bits 110). DPDK took these counts from a real router's table.
 */
const RULE_COUNT: number[][] = [
  [0, 0, 1, 0, 2, 1, 3, 185, 26, 16, 39, 144, 233, 528, 866, 3856, 3268, 5662, 17301, 22226, 11147, 16746, 17120, 77578, 401, 656, 1107, 1121, 2316, 717, 10, 66],
  [0, 0, 0, 0, 1, 1, 1, 3, 3, 30, 25, 168, 305, 569, 1129, 50800, 1645, 1820, 3506, 3258, 3424, 4971, 6885, 39771, 424, 170, 433, 92, 366, 377, 2, 200],
  [0, 0, 0, 0, 0, 0, 0, 12, 8, 9, 33, 69, 237, 1007, 1717, 14663, 8070, 16185, 48261, 36870, 33960, 50638, 61422, 466549, 1829, 4824, 4927, 5914, 10254, 4905, 1, 716],
];
const CLASS_BITS = [1, 2, 3], CLASS_HEAD = [0x00000000, 0x80000000, 0xc0000000];

/**
 * The route table as DPDK's generate_large_route_rule_table() makes it: per class and length, the
 * count of prefixes spaced evenly over the class's space from a random start; then five routes
 * DPDK adds by hand, each put at a random position (the route there moves to the end). Returns
 * parallel arrays of addresses and lengths, in DPDK's order.
 */
function dpdkRouteTable(rnd: () => number): { ips: Uint32Array; depths: Uint8Array } {
  const ips: number[] = [], depths: number[] = [];
  for (let c = 0; c < 3; c++) {
    for (let depth = 1; depth <= 32; depth++) {
      const n = RULE_COUNT[c][depth - 1];
      if (n === 0) continue;
      const classDepth = depth - CLASS_BITS[c], range = 2 ** classDepth, mask = range - 1;
      const step = range <= n ? 1 : Math.round(range / n);
      let start = Math.floor(rnd() * range);
      for (let k = 0; k < n; k++) {
        ips.push((start * 2 ** (32 - depth) + CLASS_HEAD[c]) >>> 0);
        depths.push(depth);
        start = (start + step) % (mask + 1);
      }
    }
  }
  for (const [ip, depth] of [[0, 8], [0x0a021793, 32], [0xc0a8640a, 24], [0xc0a81964, 24], [0xc0a8817c, 32]]) {
    const pos = Math.floor(rnd() * ips.length);
    ips.push(ips[pos]);
    depths.push(depths[pos]);
    ips[pos] = ip;
    depths[pos] = depth;
  }
  return { ips: Uint32Array.from(ips), depths: Uint8Array.from(depths) };
}

/** 1000 random IPv6 prefixes, lengths uniform over 1-128 (the distribution of DPDK's test table), and 100 addresses under each. */
function ipv6Table(rnd: () => number): { routes: Array<[Uint8Array, number]>; ips: Uint8Array } {
  const routes: Array<[Uint8Array, number]> = [];
  const ips = new Uint8Array(new SharedArrayBuffer(100_000 * 16));
  for (let j = 0; j < 1000; j++) {
    const a = new Uint8Array(16);
    for (let i = 0; i < 16; i++) a[i] = Math.floor(rnd() * 256);
    const depth = 1 + Math.floor(rnd() * 128);
    routes.push([maskIpv6(a, depth), depth]);
    for (let k = 0; k < 100; k++) {
      const at = (j * 100 + k) * 16;
      for (let i = 0; i < 16; i++) {
        const keep = depth - 8 * i, r = Math.floor(rnd() * 256);
        ips[at + i] = keep >= 8 ? a[i] : keep <= 0 ? r : (a[i] & (0xff << (8 - keep))) | (r & (0xff >> keep));
      }
    }
  }
  return { routes, ips };
}

let runCount = 0;

/** What a dpdk-test perf run printed. */
interface AutotestResult {
  /** cycles per lookup: single, bulk, x4 (x4 absent in lpm6) */
  single: number;
  bulk: number;
  x4: number;
  singleFailPct: number;
  addCycles: number;
  routes: number;
  added: number;
  command: string;
  log: string;
}

/** The dpdk-test binary: $DPDK_TEST_BIN if set, else dpdk-test from PATH (installing DPDK's Debian packages if needed). */
function dpdkTestBin(): string {
  const own = process.env.DPDK_TEST_BIN;
  if (own) {
    accessSync(own, constants.X_OK);
    return own;
  }
  return ensureDpdkTest();
}

/** One run of DPDK's lpm_perf_autotest or lpm6_perf_autotest on lcore 1 without hugepages; its figures. */
function runAutotest(test: 'lpm_perf_autotest' | 'lpm6_perf_autotest'): AutotestResult {
  const bin = dpdkTestBin();
  const prefix = `tsp-lpmperf-${process.pid}-${runCount++}`;
  const argv = [bin, '-l', '1', '--no-pci', '--no-huge', '-m', '1024', '--file-prefix', prefix];
  const command = `DPDK_TEST=${test} ${argv.join(' ')}`;
  if (process.env.TSPMD_BENCH_VERBOSE) console.log(`dpdk: ${command}`);
  const r = spawnSync(argv[0], argv.slice(1), {
    env: { ...process.env, DPDK_TEST: test }, input: '', encoding: 'utf8', timeout: 900_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20,
  });
  rmSync(join(process.getuid?.() === 0 ? '/var/run' : process.env.XDG_RUNTIME_DIR ?? '/tmp', 'dpdk', prefix), { recursive: true, force: true });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const fail = (why: string): Error => new Error(`dpdk-test ${test} ${why}\ncommand: ${command}\n--- last lines of its output ---\n${log.split('\n').slice(-30).join('\n')}`);
  if (r.error) throw fail(`could not run: ${r.error.message}`);
  if (r.status !== 0) throw fail(`exited with ${r.signal ?? `code ${r.status}`}`);
  const num = (re: RegExp, what: string, optional = false): number => {
    const m = re.exec(log);
    if (!m) {
      if (optional) return NaN;
      throw fail(`printed no "${what}" line`);
    }
    return Number(m[1]);
  };
  return {
    single: num(/Average LPM Lookup: ([\d.]+) cycles/, 'Average LPM Lookup'),
    singleFailPct: num(/Average LPM Lookup: [\d.]+ cycles \(fails = ([\d.]+)%\)/, 'Average LPM Lookup (fails)'),
    bulk: num(/BULK LPM Lookup: ([\d.]+) cycles/, 'BULK LPM Lookup'),
    x4: num(/LPM LookupX4: ([\d.]+) cycles/, 'LPM LookupX4', test === 'lpm6_perf_autotest'),
    addCycles: num(/Average LPM Add: ([\d.e+]+) cycles/, 'Average LPM Add'),
    routes: num(/No\. routes = (\d+)/, 'No. routes'),
    added: num(/Unique added entries = (\d+)/, 'Unique added entries'),
    command, log,
  };
}

const r3 = (x: number): number => Number(x.toFixed(3));
const r1 = (x: number): number => Number(x.toFixed(1));

/** The LPM figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | string | boolean | number[]>> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log(HELP);
    return {};
  }
  const valued = new Set(['--rounds', '--seed']);
  const known = new Set(['--quick', '--no-dpdk', '--no-ipv6', ...valued]);
  const bad = args.find((a, i) => !known.has(a) && !valued.has(args[i - 1]));
  if (bad !== undefined) throw new Error(`lpm benchmark: unknown option "${bad}"\n${HELP}`);
  const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const quick = args.includes('--quick');
  const rounds = Number(opt('--rounds') ?? (quick ? 1 : 3));
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error(`--rounds takes a whole number from 1 to 20, not "${opt('--rounds')}"`);
  const seed = opt('--seed') !== undefined ? Number(opt('--seed')) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
  const withDpdk = !args.includes('--no-dpdk'), withV6 = !args.includes('--no-ipv6');
  const tsc = withDpdk ? tscMhz() : null;
  const tscHz = tsc ? tsc.mhz * 1e6 : 0;
  const loadStart = loadAvg();
  console.log(`load averages at the start: ${loadStart.join(' ')}; seed ${seed}${tsc ? `; TSC ${tsc.mhz} MHz from ${tsc.source}` : ''}`);
  const out: Record<string, number | string | boolean | number[]> = { seed };

  // ---- IPv4: DPDK's table, DPDK's configuration ----
  const rnd = prng(seed);
  const table = dpdkRouteTable(rnd);
  const nRoutes = table.ips.length;
  const lpm = Lpm.create('bench_lpm', { maxRules: 2_000_000, numberTbl8s: 2048 });
  let added = 0, full = 0;
  let t0 = performance.now();
  for (let i = 0; i < nRoutes; i++) {
    try {
      lpm.add(table.ips[i], table.depths[i], 0xaa);
      added++;
    } catch (e) {
      if (!(e instanceof LpmFullError)) throw e;
      full++;
    }
  }
  const addMs = performance.now() - t0;
  console.log(`IPv4: ${nRoutes} routes as DPDK's lpm_perf_autotest makes them; ${added} added, ${full} refused (2048 tbl8 groups, as DPDK's); ${lpm.rules} rules; add ${((addMs * 1e6) / nRoutes).toFixed(0)} ns per route`);
  Object.assign(out, { ipv4_routes: nRoutes, ipv4_added: added, ipv4_refused_tbl8: full, ipv4_add_ns: r1((addMs * 1e6) / nRoutes) });

  // lcore 0 = main on CPU 0 (waits), the lookups on lcore 1 / CPU 1, where dpdk-test runs too
  const lcores = new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }], 0);
  try {
    const iterations = quick ? 256 : 1024;
    interface Round4 { t: LpmPerfResult; d: AutotestResult | null; load1: number }
    const v4: Round4[] = [];
    for (let r = 0; r < rounds; r++) {
      const load1 = loadAvg()[0];
      let t: LpmPerfResult | null = null, d: AutotestResult | null = null;
      for (const who of r % 2 === 0 ? ['tspmd', 'dpdk'] : ['dpdk', 'tspmd']) {
        if (who === 'tspmd') {
          const arg: LpmPerfArg = { desc: lpm.desc, iterations, batch: 4096, seed: (seed + r * 7919) >>> 0 };
          t = await lcores.launch<LpmPerfResult>(1, LCORES, 'lpmPerf', arg);
        } else if (withDpdk) d = runAutotest('lpm_perf_autotest');
      }
      v4.push({ t: t!, d, load1 });
      const mlps = (ns: number): string => (1e3 / ns).toFixed(1);
      const dl = (c: number): string => (tscHz / c / 1e6).toFixed(1);
      console.log(`  IPv4 round ${r + 1} (load ${load1}): tspmd single ${mlps(t!.singleNs)}, bulk32 ${mlps(t!.bulkNs)}, x4 ${mlps(t!.x4Ns)} M lookups/s (fails ${t!.singleFailPct.toFixed(1)} %, GCs in the loops ${t!.gcInLoop})` +
        (d ? `; DPDK ${d.single} / ${d.bulk} / ${d.x4} cycles = ${dl(d.single)} / ${dl(d.bulk)} / ${dl(d.x4)} M lookups/s (fails ${d.singleFailPct} %, ${d.added} of ${d.routes} routes added)` : ''));
    }
    const col = (f: (x: Round4) => number, digits = 1): number[] => v4.map((x) => Number(f(x).toFixed(digits)));
    Object.assign(out, {
      ipv4_single_mlps: r1(median(v4.map((x) => 1e3 / x.t.singleNs))), ipv4_bulk32_mlps: r1(median(v4.map((x) => 1e3 / x.t.bulkNs))), ipv4_x4_mlps: r1(median(v4.map((x) => 1e3 / x.t.x4Ns))),
      ipv4_single_runs_mlps: col((x) => 1e3 / x.t.singleNs), ipv4_bulk32_runs_mlps: col((x) => 1e3 / x.t.bulkNs), ipv4_x4_runs_mlps: col((x) => 1e3 / x.t.x4Ns),
      ipv4_fail_pct: r1(v4[0].t.singleFailPct), ipv4_gc_in_loops: v4.reduce((s, x) => s + x.t.gcInLoop, 0), ipv4_lookups_per_mode: iterations * 4096,
      rounds_load_avg_1m: col((x) => x.load1, 2),
    });
    if (withDpdk) {
      const ratio = (f: (x: Round4) => number, c: (d: AutotestResult) => number): number[] => v4.map((x) => r3(f(x) / (tscHz / c(x.d!) / 1e6)));
      const rs = ratio((x) => 1e3 / x.t.singleNs, (d) => d.single), rb = ratio((x) => 1e3 / x.t.bulkNs, (d) => d.bulk), rx = ratio((x) => 1e3 / x.t.x4Ns, (d) => d.x4);
      Object.assign(out, {
        dpdk_ipv4_single_mlps: r1(median(v4.map((x) => tscHz / x.d!.single / 1e6))), dpdk_ipv4_bulk_mlps: r1(median(v4.map((x) => tscHz / x.d!.bulk / 1e6))), dpdk_ipv4_x4_mlps: r1(median(v4.map((x) => tscHz / x.d!.x4 / 1e6))),
        dpdk_ipv4_single_cycles: col((x) => x.d!.single), dpdk_ipv4_bulk_cycles: col((x) => x.d!.bulk), dpdk_ipv4_x4_cycles: col((x) => x.d!.x4),
        dpdk_ipv4_fail_pct: v4[0].d!.singleFailPct, dpdk_ipv4_routes: v4[0].d!.routes, dpdk_ipv4_added: v4[0].d!.added, dpdk_ipv4_add_cycles: col((x) => x.d!.addCycles, 0),
        ipv4_ratio_single_median: r3(median(rs)), ipv4_ratios_single: rs,
        ipv4_ratio_bulk32_median: r3(median(rb)), ipv4_ratios_bulk32: rb,
        ipv4_ratio_x4_median: r3(median(rx)), ipv4_ratios_x4: rx,
        ratio_median: r3(median(rb)),
        dpdk_command: v4[0].d!.command, tsc_mhz: tsc!.mhz, tsc_source: tsc!.source,
      });
      console.log(`IPv4 ratio tspmd / DPDK (median of ${rounds}): single ${out.ipv4_ratio_single_median}, bulk32 ${out.ipv4_ratio_bulk32_median}, x4 ${out.ipv4_ratio_x4_median}`);
    }

    // ---- IPv6 (reported) ----
    if (withV6) {
      const t6 = ipv6Table(rnd);
      const lpm6 = Lpm6.create('bench_lpm6', { maxRules: 1_000_000, numberTbl8s: 1 << 16 });
      t0 = performance.now();
      for (const [a, d] of t6.routes) lpm6.add(a, d, 0xaa);
      const add6Ms = performance.now() - t0;
      console.log(`IPv6: 1000 random prefixes (/1-/128), ${lpm6.rules} rules, ${lpm6.tbl8sUsed} tbl8 groups; 100,000 addresses, 100 under each prefix; add ${((add6Ms * 1e6) / 1000).toFixed(0)} ns per route`);
      const passes = quick ? 16 : 128;
      interface Round6 { t: Lpm6PerfResult; d: AutotestResult | null }
      const v6: Round6[] = [];
      for (let r = 0; r < rounds; r++) {
        let t: Lpm6PerfResult | null = null, d: AutotestResult | null = null;
        for (const who of r % 2 === 0 ? ['tspmd', 'dpdk'] : ['dpdk', 'tspmd']) {
          if (who === 'tspmd') {
            const arg: Lpm6PerfArg = { desc: lpm6.desc, ips: t6.ips.buffer as SharedArrayBuffer, n: 100_000, iterations: passes };
            t = await lcores.launch<Lpm6PerfResult>(1, LCORES, 'lpm6Perf', arg);
          } else if (withDpdk) d = runAutotest('lpm6_perf_autotest');
        }
        v6.push({ t: t!, d });
        console.log(`  IPv6 round ${r + 1}: tspmd single ${(1e3 / t!.singleNs).toFixed(1)}, bulk ${(1e3 / t!.bulkNs).toFixed(1)} M lookups/s (fails ${t!.singleFailPct.toFixed(1)} %, GCs in the loops ${t!.gcInLoop})` +
          (d ? `; DPDK ${d.single} / ${d.bulk} cycles = ${(tscHz / d.single / 1e6).toFixed(1)} / ${(tscHz / d.bulk / 1e6).toFixed(1)} M lookups/s (fails ${d.singleFailPct} %)` : ''));
      }
      Object.assign(out, {
        ipv6_single_mlps: r1(median(v6.map((x) => 1e3 / x.t.singleNs))), ipv6_bulk_mlps: r1(median(v6.map((x) => 1e3 / x.t.bulkNs))),
        ipv6_fail_pct: r1(v6[0].t.singleFailPct), ipv6_gc_in_loops: v6.reduce((s, x) => s + x.t.gcInLoop, 0), ipv6_tbl8s: lpm6.tbl8sUsed,
      });
      if (withDpdk) {
        const rs = v6.map((x) => r3((1e3 / x.t.singleNs) / (tscHz / x.d!.single / 1e6))), rb = v6.map((x) => r3((1e3 / x.t.bulkNs) / (tscHz / x.d!.bulk / 1e6)));
        Object.assign(out, {
          dpdk_ipv6_single_mlps: r1(median(v6.map((x) => tscHz / x.d!.single / 1e6))), dpdk_ipv6_bulk_mlps: r1(median(v6.map((x) => tscHz / x.d!.bulk / 1e6))),
          dpdk_ipv6_single_cycles: v6.map((x) => x.d!.single), dpdk_ipv6_bulk_cycles: v6.map((x) => x.d!.bulk), dpdk_ipv6_fail_pct: v6[0].d!.singleFailPct,
          ipv6_ratio_single_median: r3(median(rs)), ipv6_ratios_single: rs, ipv6_ratio_bulk_median: r3(median(rb)), ipv6_ratios_bulk: rb,
        });
        console.log(`IPv6 ratio tspmd / DPDK (median of ${rounds}): single ${out.ipv6_ratio_single_median}, bulk ${out.ipv6_ratio_bulk_median}`);
      }
    }
  } finally {
    await lcores.close();
  }

  // ---- Build time and memory of 1,000,000 IPv4 prefixes ----
  const seen = new Set<number>(), ips = new Uint32Array(1_000_000), depths = new Uint8Array(1_000_000), long24 = new Set<number>();
  let n = 0;
  for (let i = 0; i < nRoutes && n < 1_000_000; i++) {
    const key = table.depths[i] * 2 ** 32 + table.ips[i];
    if (seen.has(key)) continue;
    seen.add(key);
    ips[n] = table.ips[i];
    depths[n] = table.depths[i];
    if (depths[n] > 24) long24.add(ips[n] >>> 8);
    n++;
  }
  const rss0 = process.memoryUsage().rss;
  t0 = performance.now();
  const big = Lpm.create('bench_lpm_1m', { maxRules: n, numberTbl8s: long24.size });
  for (let i = 0; i < n; i++) big.add(ips[i], depths[i], i & 0xffffff);
  const buildMs = performance.now() - t0;
  const rssMiB = (process.memoryUsage().rss - rss0) / 2 ** 20;
  const memMiB = big.memoryBytes / 2 ** 20;
  console.log(`1,000,000 IPv4 prefixes (${long24.size} tbl8 groups): built in ${buildMs.toFixed(0)} ms (${((buildMs * 1e6) / n).toFixed(0)} ns per prefix); ` +
    `${memMiB.toFixed(1)} MiB (tables ${(big.desc.memory.byteLength / 2 ** 20).toFixed(1)} MiB shared, rules ${((big.memoryBytes - big.desc.memory.byteLength) / 2 ** 20).toFixed(1)} MiB on the writer); RSS grew ${rssMiB.toFixed(0)} MiB`);
  Object.assign(out, {
    build_1m_ms: Math.round(buildMs), build_1m_ns_per_prefix: Math.round((buildMs * 1e6) / n), build_1m_tbl8s: long24.size,
    memory_1m_mib: r1(memMiB), memory_1m_tables_mib: r1(big.desc.memory.byteLength / 2 ** 20), rss_growth_1m_mib: Math.round(rssMiB),
    // rte_lpm_create for the same configuration: tbl24 (4 B x 2^24) + 8 B per rule + 1 KiB per group
    dpdk_memory_1m_mib: r1((2 ** 26 + 8 * n + 1024 * long24.size) / 2 ** 20),
  });
  if (withDpdk && typeof out.dpdk_ipv4_add_cycles === 'object') {
    const cyc = median(out.dpdk_ipv4_add_cycles as number[]);
    out.dpdk_build_1m_ms_at_its_add_rate = Math.round((cyc * n) / tscHz * 1e3);
    console.log(`DPDK: ${cyc} cycles per add in its run (its ${out.dpdk_ipv4_routes} routes, 2048 groups): ${out.dpdk_build_1m_ms_at_its_add_rate} ms for 1,000,000 at that rate; rte_lpm_create's memory for this configuration ${out.dpdk_memory_1m_mib} MiB`);
  }
  const loadEnd = loadAvg();
  console.log(`load averages at the end: ${loadEnd.join(' ')}`);
  Object.assign(out, { load_avg_start: loadStart, load_avg_end: loadEnd });
  return out;
}
