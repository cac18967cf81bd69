/**
 * The concurrent runs of test/lpm/lpm.test.ts and lpm6.test.ts: one reader lcore (lpm-workers.ts's
 * checker) looks up while this thread toggles routes; the two files differ only in the table and
 * the toggles they build.
 */
import type { Test } from 'tap';
import { Lcores } from '../../src/lcore/lcores.js';
import { siblingModule } from '../../src/lcore/module.js';
import { prng } from '../prng.js';
import type { CheckerArg, CheckerResult } from './lpm-workers.js';

/** The worker module of the reader lcore and the allocation probes. */
export const WORKERS = siblingModule(import.meta.url, 'lpm-workers');

/** Promise that resolves once the shared flag is 1 (the reader is online), polling the event loop. */
export async function until(flag: Int32Array, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (Atomics.load(flag, 0) === 0 && performance.now() < end) await new Promise((r) => setTimeout(r, 2));
  return Atomics.load(flag, 0) === 1;
}

/** The table a run toggles routes in: what the assertions read of it. */
export interface ConcurrentTable {
  readonly tbl8sUsed: number;
  readonly tbl8sWaiting: number;
  reclaim(): number;
}

/** What a run saw: the reader's result, the toggles, and how many two-answer probes showed both. */
export interface ConcurrentRun<L> {
  r: CheckerResult;
  toggles: number;
  ms: number;
  both: number;
  twoWay: number;
  lpm: L;
  ready: boolean;
}

/**
 * Launch the checker (export `checker` of lpm-workers.ts) on lcore 1 against arg, let write toggle
 * routes for ms with a generator seeded by seed once the reader is online, stop the reader and count.
 */
export async function runConcurrent<L>(lcores: Lcores, checker: string, lpm: L, arg: CheckerArg, ms: number, seed: number, write: (ms: number, rnd: () => number) => number): Promise<ConcurrentRun<L>> {
  const running = lcores.launch<CheckerResult>(1, WORKERS, checker, arg);
  const ready = await until(new Int32Array(arg.ready), 30_000);
  const t0 = performance.now();
  const toggles = ready ? write(ms, prng(seed)) : 0;
  const took = performance.now() - t0;
  lcores.requestStop();
  const r = await running;
  const seen = new Uint8Array(arg.seen), a = new Int32Array(arg.legalA), b = new Int32Array(arg.legalB);
  let both = 0, twoWay = 0;
  for (let i = 0; i < arg.n; i++) {
    if (a[i] === b[i]) continue;
    twoWay++;
    if (seen[i] === 3) both++;
  }
  return { r, toggles, ms: took, both, twoWay, lpm, ready };
}

/** The assertions of a run with the reader online: every answer legal, both sides busy, nothing left waiting. */
export function checkConcurrent(t: Test, run: ConcurrentRun<ConcurrentTable>): void {
  const { r, toggles, ms, both, twoWay, lpm, ready } = run;
  t.ok(ready, 'the reader came online');
  t.comment(`${toggles} adds/deletes in ${ms.toFixed(0)} ms by the writer; ${r.lookups} lookups (${r.bursts} bursts) by the reader; ${lpm.tbl8sUsed} groups in use at the end`);
  t.equal(r.violations, 0, `no answer other than the old or the new next hop ${JSON.stringify(r.examples)}`);
  t.ok(r.lookups > 100_000, `the reader looked up throughout (${r.lookups} lookups)`);
  t.ok(toggles > 10_000, `the writer changed routes throughout (${toggles})`);
  t.ok(both > twoWay / 2, `the reader saw both answers at ${both} of the ${twoWay} probes that have two`);
  lpm.reclaim();
  t.equal(lpm.tbl8sWaiting, 0, 'the reader went offline: nothing waits');
}

/** One reader lcore (CPU 1) for the concurrent runs, the main thread writing on CPU 0: its worker starts once. */
let readerLcores: Lcores | null = null;
/** The reader lcores, started on first use; closeLcores ends them. */
export function lcoresOnce(): Lcores {
  readerLcores ??= new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }], 0);
  return readerLcores;
}

/** Close the reader lcores if they were started (a test file's teardown). */
export async function closeLcores(): Promise<void> {
  await readerLcores?.close();
  readerLcores = null;
}
