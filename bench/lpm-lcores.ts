/**
 * The lookup loops of the LPM benchmark, run on a worker lcore over the tables the main thread
 * built (attached through their descriptors: the same memory, no copy). They follow DPDK 22.11's
 * app/test/test_lpm_perf.c and test_lpm6_perf.c: per iteration a batch of addresses is made
 * (untimed), then looked up (timed): one at a time, in bursts of 32 and, for IPv4, in fours.
 * The loops are module-level functions with typed-array state, so a launch never deoptimizes them
 * (docs/performance.md); each batch ends with the reader's quiescent point, as an lcore would.
 */
import { Lpm, Lpm6, countGc, type LpmDesc, type Lpm6Desc, type LcoreContext } from '../index.js';

/** Argument of lpmPerf. */
export interface LpmPerfArg {
  desc: LpmDesc;
  /** batches (DPDK: ITERATIONS, 1024) */
  iterations: number;
  /** addresses per batch (DPDK: BATCH_SIZE, 4096) */
  batch: number;
  /** xorshift seed of the random addresses */
  seed: number;
}

/** Nanoseconds per lookup and failure share of each way of looking up. */
export interface LpmPerfResult {
  singleNs: number;
  bulkNs: number;
  x4Ns: number;
  singleFailPct: number;
  bulkFailPct: number;
  x4FailPct: number;
  lookups: number;
  /** garbage collections that began inside the timed loops */
  gcInLoop: number;
}

/** Fill ips[0..n) with xorshift32 numbers (st[0]: the state). rte_rand() stands here for DPDK. */
function fill(ips: Uint32Array, n: number, st: Uint32Array): void {
  let x = st[0];
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    ips[i] = x;
  }
  st[0] = x;
}

/** rte_lpm_lookup per address; returns the misses. */
function single(lpm: Lpm, ips: Uint32Array, n: number): number {
  let fails = 0;
  for (let j = 0; j < n; j++) if (lpm.lookup(ips[j]) < 0) fails++;
  return fails;
}

/** rte_lpm_lookup_bulk per `burst` addresses, the results checked as DPDK's loop does; returns the misses. */
function bulk(lpm: Lpm, ips: Uint32Array, out: Int32Array, n: number, burst: number): number {
  let fails = 0;
  for (let j = 0; j < n; j += burst) {
    lpm.lookupBulk(ips, out, burst, j);
    for (let k = j; k < j + burst; k++) if (out[k] < 0) fails++;
  }
  return fails;
}

/** One mode over all batches: ns per lookup in t[0], misses in t[1]. */
function runMode(lpm: Lpm, mode: number, a: LpmPerfArg, ips: Uint32Array, out: Int32Array, st: Uint32Array, t: Float64Array): void {
  t[0] = 0;
  t[1] = 0;
  for (let it = 0; it < a.iterations; it++) {
    fill(ips, a.batch, st);
    const t0 = performance.now();
    const f = mode === 0 ? single(lpm, ips, a.batch) : bulk(lpm, ips, out, a.batch, mode === 1 ? 32 : 4);
    t[0] += performance.now() - t0;
    t[1] += f;
    lpm.readerQuiescent(1);
  }
  t[0] = (t[0] * 1e6) / (a.iterations * a.batch);
}

/** The IPv4 lookups: single, bulk of 32, fours (DPDK's x4), after one untimed pass of each. */
export async function lpmPerf(a: LpmPerfArg, _ctx: LcoreContext): Promise<LpmPerfResult> {
  const lpm = Lpm.attach(a.desc);
  lpm.readerOnline(1);
  const ips = new Uint32Array(a.batch), out = new Int32Array(a.batch), st = Uint32Array.of(a.seed || 1), t = new Float64Array(2);
  const warm = { ...a, iterations: Math.max(1, a.iterations >> 3) };
  for (let m = 0; m < 3; m++) runMode(lpm, m, warm, ips, out, st, t);
  const gc = countGc();
  const from = performance.now();
  const ns: number[] = [], fails: number[] = [];
  for (let m = 0; m < 3; m++) {
    runMode(lpm, m, a, ips, out, st, t);
    ns.push(t[0]);
    fails.push((t[1] * 100) / (a.iterations * a.batch));
  }
  const to = performance.now();
  lpm.readerOffline(1);
  await gc.settle();
  gc.stop();
  return {
    singleNs: ns[0], bulkNs: ns[1], x4Ns: ns[2], singleFailPct: fails[0], bulkFailPct: fails[1], x4FailPct: fails[2],
    lookups: 3 * a.iterations * a.batch, gcInLoop: gc.countBetween(from, to),
  };
}

/** Argument of lpm6Perf. */
export interface Lpm6PerfArg {
  desc: Lpm6Desc;
  /** SharedArrayBuffer of n * 16 address bytes (DPDK: 100 per route, 100,000) */
  ips: SharedArrayBuffer;
  n: number;
  /** passes over all n (DPDK: ITERATIONS, 1024) */
  iterations: number;
}

/** IPv6 nanoseconds per lookup. */
export interface Lpm6PerfResult {
  singleNs: number;
  bulkNs: number;
  singleFailPct: number;
  bulkFailPct: number;
  lookups: number;
  gcInLoop: number;
}

function single6(lpm: Lpm6, ips: Uint8Array, n: number): number {
  let fails = 0;
  for (let j = 0; j < n; j++) if (lpm.lookup(ips, j << 4) < 0) fails++;
  return fails;
}

/** rte_lpm6_lookup_bulk_func over all n in one call (as DPDK's test), the misses counted outside the timing. */
function runMode6(lpm: Lpm6, mode: number, iterations: number, ips: Uint8Array, out: Int32Array, n: number, t: Float64Array): void {
  t[0] = 0;
  t[1] = 0;
  for (let it = 0; it < iterations; it++) {
    const t0 = performance.now();
    if (mode === 0) t[1] += single6(lpm, ips, n);
    else lpm.lookupBulk(ips, out, n);
    t[0] += performance.now() - t0;
    if (mode === 1) for (let j = 0; j < n; j++) if (out[j] < 0) t[1]++;
    lpm.readerQuiescent(1);
  }
  t[0] = (t[0] * 1e6) / (iterations * n);
}

/** The IPv6 lookups: single and bulk, after one untimed pass of each. */
export async function lpm6Perf(a: Lpm6PerfArg, _ctx: LcoreContext): Promise<Lpm6PerfResult> {
  const lpm = Lpm6.attach(a.desc);
  lpm.readerOnline(1);
  const ips = new Uint8Array(a.ips), out = new Int32Array(a.n), t = new Float64Array(2);
  for (let m = 0; m < 2; m++) runMode6(lpm, m, Math.max(1, a.iterations >> 3), ips, out, a.n, t);
  const gc = countGc();
  const from = performance.now();
  const ns: number[] = [], fails: number[] = [];
  for (let m = 0; m < 2; m++) {
    runMode6(lpm, m, a.iterations, ips, out, a.n, t);
    ns.push(t[0]);
    fails.push((t[1] * 100) / (a.iterations * a.n));
  }
  const to = performance.now();
  lpm.readerOffline(1);
  await gc.settle();
  gc.stop();
  return { singleNs: ns[0], bulkNs: ns[1], singleFailPct: fails[0], bulkFailPct: fails[1], lookups: 2 * a.iterations * a.n, gcInLoop: gc.countBetween(from, to) };
}
