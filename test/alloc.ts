/**
 * The one rule of every allocation test ("this loop allocates nothing per packet"):
 *
 * 1. Measure on a thread where only the code under test runs: a worker or an lcore, never the test
 *    runner's main thread, where tap and the test itself allocate (a 0-GC assertion there is a coin
 *    toss).
 * 2. After a warm-up of at least `warmOps` operations AND `warmMs` milliseconds: operations alone
 *    are a few milliseconds on a fast machine (before the optimizing compiler has run), time alone is
 *    a handful of packets on a loaded one.
 * 3. Over a window of at least `windowOps` operations AND `windowMs` milliseconds, assert what shows
 *    allocation: no scavenge (a young-generation collection: garbage made per operation starts
 *    there) began in the window, at most one mark-compact (a marking begun before the window, by
 *    set-up or control work, may end in it at the latest; a loop that allocates makes scavenges
 *    first), and, where the loop can read its own heap, its young generation (where new objects
 *    are born) grew less than `maxGrowth` + `maxBytesPerOp` per operation + `maxBytesPerTurn` per
 *    turn of the loop over it (one 16-byte object per operation would be megabytes). No collection is forced before the window: V8 then
 *    discards optimized code and compiles it again inside the window (+200 KiB of code space
 *    measured), which looks like allocation.
 *
 * Three ways in: AllocMeter inside a loop the test writes (an lcore function of the test),
 * measureInWorker for code the test calls itself (a per-operation function run in a worker), and
 * driveWindow + gcsIn for a product's loop on an lcore that the test drives from the main thread
 * (the lcore's collections are read afterwards with eal.lcores.gcLog()).
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { getHeapSpaceStatistics } from 'node:v8';
import type { Test } from 'tap';
import { countGc, type GcCounter, type GcEntry } from '../src/lcore/gc.js';

/** How long to warm up and how long to measure (see the file comment). */
export interface AllocRule {
  /** operations (packets, bursts, rounds: the test's unit) before the window may begin */
  warmOps: number;
  /** and milliseconds */
  warmMs: number;
  /** operations the window lasts at least */
  windowOps: number;
  /** and milliseconds */
  windowMs: number;
  /** bytes the heap may grow over any window (code compiled late, feedback): not per operation */
  maxGrowth: number;
  /** and bytes per operation on top: an object is 12 bytes or more, so 0.5 is one per 24 operations
   * (a window of a loop that allocates nothing grows by the clock reads and V8 bookkeeping: 0.02-0.06
   * per operation seen) */
  maxBytesPerOp: number;
  /** and bytes per turn of the loop (a call of AllocMeter.at, with or without operations): a loop
   * that spins over empty queues grows by V8's own bookkeeping, 0.02-0.06 per turn measured (a
   * net_virtio loop spinning idle at 12-40 M turns/s: 0.5-1.5 MB/s with no object of its own), so
   * a loaded machine, where most turns find nothing, must not read as allocation per packet */
  maxBytesPerTurn: number;
}

/** The times every allocation test uses; tests give their operation counts. */
export const ALLOC_RULE: AllocRule = { warmOps: 10_000, warmMs: 1000, windowOps: 100_000, windowMs: 2000, maxGrowth: 64 * 1024, maxBytesPerOp: 0.5, maxBytesPerTurn: 0.1 };

/** What a measured window saw. */
export interface AllocResult {
  /** operations and ms of the warm-up */
  warmOps: number;
  warmMs: number;
  /** operations and ms of the window */
  ops: number;
  ms: number;
  /** scavenges and other collections (mark-compact, incremental steps) that began in the window */
  scavenges: number;
  others: number;
  /** growth of the young generation over the window (bytes), -1 when not measured */
  growth: number;
  /** turns of the loop in the window (calls of AllocMeter.at; 0 when not counted) */
  turns: number;
  /** windows measured, this one the last (see MAX_WINDOWS) */
  windows: number;
}

/** The most the young generation may grow over a window of r's operations and turns. */
function growthBound(rule: AllocRule, r: AllocResult): number {
  return rule.maxGrowth + r.ops * rule.maxBytesPerOp + r.turns * rule.maxBytesPerTurn;
}

const PHASE = 0, WINDOWS = 15, NEXT_OPS = 1, T0 = 2, WARM_OPS = 3, WARM_MS = 4, W_T0 = 5, W_OPS = 6, W_HEAP = 7, W_T1 = 8, W_OPS1 = 9, W_HEAP1 = 10, LAST_OPS = 11, TURNS = 12, W_TURNS = 13, W_TURNS1 = 14;
const WARMING = 0, MEASURING = 1, ENDED = 2, DONE = 3;
/**
 * Windows measured back to back at most: a loaded machine starves V8's background compiler, and a
 * loop still running its baseline code (which boxes every double it touches) after the warm-up
 * allocates in the first window; a loop that allocates per operation does so in every window.
 */
export const MAX_WINDOWS = 4;

/**
 * Bytes in use in the young generation, where new objects are born: code compiled late and its
 * feedback go to the code and old spaces (+150 KiB seen in a window of a loop that allocates
 * nothing), garbage made per operation comes here.
 */
function youngUsed(): number {
  let n = 0;
  for (const s of getHeapSpaceStatistics()) if (s.space_name === 'new_space' || s.space_name === 'new_large_object_space') n += s.space_used_size;
  return n;
}

/**
 * Inside a loop the test writes: call at(ops) once per burst (or per few operations) with the
 * operations done so far; it returns true once the window is over. at() allocates nothing.
 */
export class AllocMeter {
  private readonly st = new Float64Array(16);
  private readonly gc: GcCounter;

  /** Start the warm-up clock now. */
  constructor(private readonly rule: AllocRule = ALLOC_RULE) {
    this.gc = countGc();
    this.st[NEXT_OPS] = 1;
    this.st[T0] = performance.now();
  }

  /** Whether the window is over (then await settled()); ops: operations done so far (monotonic). */
  at(ops: number): boolean {
    const st = this.st;
    if (st[PHASE] >= ENDED) return true;
    st[LAST_OPS] = ops;
    st[TURNS]++;
    if (ops < st[NEXT_OPS]) return false;
    // performance.now() returns a fresh heap number: read it about every 10 ms, not every call
    const now = performance.now(), phaseStart = st[PHASE] === MEASURING ? st[W_T0] : st[T0];
    const phaseOps = ops - (st[PHASE] === MEASURING ? st[W_OPS] : 0);
    st[NEXT_OPS] = ops + Math.max(1, Math.floor((phaseOps / Math.max(now - phaseStart, 1)) * 10));
    if (st[PHASE] === WARMING) {
      const ms = now - st[T0];
      if (ops < this.rule.warmOps || ms < this.rule.warmMs) return false;
      st[WARM_OPS] = ops;
      st[WARM_MS] = ms;
      this.begin(ops);
      return false;
    }
    if (ops - st[W_OPS] < this.rule.windowOps || now - st[W_T0] < this.rule.windowMs) return false;
    this.end(now, ops);
    return true;
  }

  private begin(ops: number): void {
    const st = this.st;
    st[W_OPS] = ops;
    st[W_TURNS] = st[TURNS];
    st[NEXT_OPS] = ops + 1;
    st[PHASE] = MEASURING;
    st[WINDOWS]++;
    st[W_HEAP] = youngUsed();
    st[W_T0] = performance.now();
  }

  private end(now: number, ops: number): void {
    const st = this.st;
    st[W_T1] = now;
    st[W_OPS1] = ops;
    st[W_HEAP1] = youngUsed();
    st[W_TURNS1] = st[TURNS];
    st[PHASE] = ENDED;
  }

  /**
   * Once at() returned true: judge the window (its collections are read here, after the loop let
   * the event loop deliver them). True: the verdict is in, stop and read result(). False: the
   * window saw allocation and fewer than MAX_WINDOWS were measured: another window has begun, go
   * on calling at().
   */
  async settled(): Promise<boolean> {
    const st = this.st;
    if (st[PHASE] !== ENDED) return st[PHASE] === DONE;
    await this.gc.settle();
    const r = this.window();
    if (st[WINDOWS] < MAX_WINDOWS && (r.scavenges > 0 || r.growth >= growthBound(this.rule, r))) {
      this.begin(st[LAST_OPS]);
      return false;
    }
    st[PHASE] = DONE;
    return true;
  }

  /** The last window as measured. */
  private window(): AllocResult {
    const st = this.st;
    const from = performance.timeOrigin + st[W_T0], to = performance.timeOrigin + st[W_T1];
    const inside = this.gc.entries().filter((e) => e.at >= from && e.at < to);
    const scavenges = inside.filter((e) => e.kind === 'minor').length;
    return {
      warmOps: st[WARM_OPS], warmMs: st[WARM_MS], ops: st[W_OPS1] - st[W_OPS], ms: st[W_T1] - st[W_T0],
      scavenges, others: inside.length - scavenges, growth: st[W_HEAP1] - st[W_HEAP], turns: st[W_TURNS1] - st[W_TURNS], windows: st[WINDOWS],
    };
  }

  /** Whether the window has begun (the warm-up is over). */
  get measuring(): boolean {
    return this.st[PHASE] !== WARMING;
  }

  /** After the loop: what the last window saw (a window cut short by a stop counts as measured so far). */
  async result(): Promise<AllocResult> {
    const st = this.st;
    if (st[PHASE] === MEASURING) this.end(performance.now(), st[LAST_OPS]);
    await this.gc.settle();
    this.gc.stop();
    if (st[PHASE] === WARMING) return { warmOps: 0, warmMs: 0, ops: 0, ms: 0, scavenges: 0, others: 0, growth: -1, turns: 0, windows: 0 };
    return this.window();
  }
}

/** Assert the rule on a measured window: long enough, no collection in it, the heap flat. */
export function assertNoAlloc(t: Test, r: AllocResult, what: string, rule: AllocRule = ALLOC_RULE): void {
  const seen = `${r.ops} ops in ${r.ms.toFixed(0)} ms after a warm-up of ${r.warmOps} ops in ${r.warmMs.toFixed(0)} ms, window ${r.windows} of at most ${MAX_WINDOWS}`;
  t.ok(r.ops >= rule.windowOps && r.ms >= rule.windowMs && r.warmOps >= rule.warmOps && r.warmMs >= rule.warmMs,
    `${what}: the window ran its full length (${seen})`);
  assertCollections(t, r.scavenges, r.others, `${what}: ${seen}`);
  if (r.growth !== -1) {
    const bound = growthBound(rule, r);
    t.ok(r.growth < bound, `${what}: the young generation grew ${r.growth} bytes over the window (${(r.growth / Math.max(r.ops, 1)).toFixed(4)} per op, ${r.turns} turns), less than ${bound.toFixed(0)}`);
  }
}

/** What l2fwd's JSON summary says of its lcores' collections after their warm-up (time and packets). */
export interface ForwarderGcSummary {
  worker_gc_count?: number;
  worker_scavenges?: number;
  worker_gc_count_with_warmup?: number;
}

/** The rule on an l2fwd run's summary: no scavenge on its lcores after warm-up, at most one other collection per run. */
export function assertForwarderNoAlloc(t: Test, s: ForwarderGcSummary, what: string): void {
  const all = s.worker_gc_count ?? -1, scavenges = s.worker_scavenges ?? -1;
  t.ok(all >= 0 && scavenges >= 0, `${what}: the summary reports the lcores' collections (worker_gc_count ${all}, worker_scavenges ${scavenges})`);
  assertCollections(t, scavenges, all - scavenges, `${what}: l2fwd's lcores after their warm-up of 1 s and 10,000 packets, ${s.worker_gc_count_with_warmup ?? '?'} collections with it`);
}

/** The rule on a product loop that counts its own collections after its warm-up (e.g. the virtio-net device's loop result). */
export function assertLoopNoAlloc(t: Test, r: { gcCountAfterWarmup: number; scavengesAfterWarmup: number } | null | undefined, what: string): void {
  if (!r) {
    t.fail(`${what}: the loop returned no result`);
    return;
  }
  assertCollections(t, r.scavengesAfterWarmup, r.gcCountAfterWarmup - r.scavengesAfterWarmup, `${what}: after the loop's own warm-up`);
}

/** The collections part of the rule: no scavenge, at most one other collection. */
function assertCollections(t: Test, scavenges: number, others: number, what: string): void {
  t.equal(scavenges, 0, `no scavenge in the window (${what})`);
  t.ok(others <= 1, `at most one other collection in it, the end of a marking begun before (${others}: ${what})`);
}

/** The function measureInWorker calls once per operation (i counts up from 0); close, if given, runs after the window (file descriptors the set-up opened). */
export type AllocOp = ((i: number) => void) & { close?: () => void };

interface ProbeData {
  tspAllocProbe: true;
  module: string;
  fn: string;
  arg: unknown;
  rule: AllocRule;
}

/**
 * Run module's export fn(arg) in a worker of its own: it returns the operation to measure (an
 * AllocOp, built there: its set-up is outside the measurement), which is then called in a loop
 * under the rule. Rejects with the worker's error.
 */
export function measureInWorker(module: string, fn: string, arg: unknown, rule: AllocRule = ALLOC_RULE): Promise<AllocResult> {
  const data: ProbeData = { tspAllocProbe: true, module, fn, arg, rule };
  const w = new Worker(new URL(import.meta.url), { workerData: data });
  return new Promise((resolve, reject) => {
    let result: AllocResult | null = null;
    w.on('message', (r: AllocResult) => { result = r; });
    w.on('error', reject);
    w.on('exit', (code) => (result ? resolve(result) : reject(new Error(`allocation probe ${fn} of ${module} exited with code ${code} and no result`))));
  });
}

/** The worker side of measureInWorker. */
async function probe(d: ProbeData): Promise<AllocResult> {
  const mod = (await import(d.module)) as Record<string, (arg: unknown) => AllocOp | Promise<AllocOp>>;
  if (typeof mod[d.fn] !== 'function') throw new Error(`allocation probe: ${d.module} exports no function ${d.fn}`);
  const op = await mod[d.fn](d.arg);
  const m = new AllocMeter(d.rule);
  let i = 0;
  do while (!m.at(i)) for (let k = 0; k < 256; k++) op(i++);
  while (!(await m.settled()));
  const r = await m.result();
  op.close?.();
  return r;
}

if (!isMainThread && (workerData as ProbeData | null)?.tspAllocProbe === true) {
  void probe(workerData as ProbeData).then((r) => parentPort!.postMessage(r));
}

/** A window on the clock every thread shares (epoch ms: performance.timeOrigin + now()). */
export interface DrivenWindow {
  from: number;
  to: number;
  warmOps: number;
  warmMs: number;
  ops: number;
  ms: number;
}

const epochNow = (): number => performance.timeOrigin + performance.now();

/**
 * Drive a product's loop (on an lcore) from this thread: call step() (it returns the operations
 * it made the loop do) through the warm-up, then through the window, and return the window.
 * Throws after limitMs when the loop stops making progress.
 */
export async function driveWindow(step: () => Promise<number>, rule: AllocRule = ALLOC_RULE, limitMs = 120_000): Promise<DrivenWindow> {
  const t0 = performance.now();
  let ops = 0;
  while (ops < rule.warmOps || performance.now() - t0 < rule.warmMs) {
    ops += await step();
    if (performance.now() - t0 > limitMs) throw new Error(`driveWindow: warm-up not done after ${limitMs} ms (${ops} of ${rule.warmOps} ops)`);
  }
  const warmOps = ops, warmMs = performance.now() - t0, w0 = performance.now(), from = epochNow();
  while (ops - warmOps < rule.windowOps || performance.now() - w0 < rule.windowMs) {
    ops += await step();
    if (performance.now() - t0 > limitMs) throw new Error(`driveWindow: window not done after ${limitMs} ms (${ops - warmOps} of ${rule.windowOps} ops)`);
  }
  return { from, to: epochNow(), warmOps, warmMs, ops: ops - warmOps, ms: performance.now() - w0 };
}

/** The collections of an lcore's GC log (eal.lcores.gcLog(id)) that began in window w. */
export function gcsIn(log: GcEntry[], w: DrivenWindow): GcEntry[] {
  return log.filter((e) => e.at >= w.from && e.at < w.to);
}

/** Assert the rule on a driven window with the lcore's GC log. */
export function assertNoGcIn(t: Test, log: GcEntry[], w: DrivenWindow, what: string): void {
  const inside = gcsIn(log, w);
  const scavenges = inside.filter((e) => e.kind === 'minor').length;
  assertCollections(t, scavenges, inside.length - scavenges, `${what} on the lcore: ${w.ops} ops in ${w.ms.toFixed(0)} ms after a warm-up of ${w.warmOps} ops in ${w.warmMs.toFixed(0)} ms; ${inside.map((e) => e.kind).join(', ') || 'none'} in it, ${log.length} in the lcore's life`);
}
