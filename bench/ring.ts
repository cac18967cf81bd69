/**
 * Ring benchmarks:
 *  - SP/SC bursts of 32 between two pinned worker lcores (one per CPU), M entries/s: median of 5
 *    runs of 64 M entries after 3 warm-up runs. JSON: spsc_burst32_two_workers_mpps (the median),
 *    runs (each run's figure), runs_min_mpps, runs_max_mpps, spread_pct ((max - min) / median),
 *    gc_count (the workers' garbage collections that began inside the measured loops: must be 0)
 *    and gc_count_with_setup (also the tasks' set-up and the settling after each loop, where V8's
 *    memory reducer may run a collection of an idle heap);
 *  - enqueue+dequeue in one thread, bursts of 1, 8 and 32, ns per entry.
 */
import Benchmark from 'benchmark';
import { Ring, Lcores, siblingModule } from '../index.js';
import { ringConsumer, ringProducer, type RingPipeArg, type RingPipeResult } from './ring-lcores.js';

const PIPE = siblingModule(import.meta.url, 'ring-lcores');

/** Run a synchronous benchmark.js benchmark; stats.mean is seconds per call of fn. */
export function measure(name: string, fn: () => void, opts: { minSamples?: number; maxTime?: number } = {}): Promise<Benchmark> {
  return new Promise((resolve, reject) => {
    const b = new Benchmark(name, { fn, minSamples: opts.minSamples ?? 5, maxTime: opts.maxTime ?? 3 });
    b.on('complete', () => (b.error ? reject(b.error) : resolve(b)));
    b.on('error', () => reject(b.error));
    b.run({ async: true });
  });
}

/** Move `total` entries producer -> consumer through ring once; returns both reports. */
async function pipeOnce(lcores: Lcores, ring: Ring, total: number, burst: number): Promise<[RingPipeResult, RingPipeResult]> {
  const arg: RingPipeArg = { ring: ring.desc, total, burst };
  const c = lcores.launch(2, PIPE, ringConsumer, arg);
  const p = lcores.launch(1, PIPE, ringProducer, arg);
  return Promise.all([p, c]);
}

/** The ring figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | number[]>> {
  const quick = args.includes('--quick');
  // lcore 0 = main (CPU 0, idle while waiting), producer lcore 1 on CPU 0, consumer lcore 2 on CPU 1.
  const lcores = new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 0 }, { id: 2, cpu: 1 }], 0);
  const ring = Ring.create('bench', 2048, { sp: true, sc: true });
  const total = quick ? 4_000_000 : 64_000_000;
  let gcCount = 0, gcAll = 0, ordered = true;
  try {
    // Warm up: the loops are optimized (and re-optimized) during the first runs.
    for (let w = 0; w < 3; w++) await pipeOnce(lcores, ring, total, 32);
    // Per run: from the producer's first enqueue to the consumer's last dequeue (epoch times the
    // workers report; thread start-up excluded), median of the runs: a deferred benchmark.js
    // cycle does not time two threads reliably.
    const runs = quick ? 3 : 5;
    const rates: number[] = [];
    for (let r = 0; r < runs; r++) {
      const [p, c] = await pipeOnce(lcores, ring, total, 32);
      rates.push(total / ((c.endMs - p.startMs) / 1e3) / 1e6);
      if (process.env.TSPMD_BENCH_VERBOSE) console.log(`  run ${r}: ${rates[r].toFixed(1)} M/s, producer loop ${(total / (p.endMs - p.startMs) / 1e3).toFixed(1)}, consumer loop ${(total / (c.endMs - c.startMs) / 1e3).toFixed(1)}, GCs in the loops ${p.gcInLoop + c.gcInLoop} (${p.gcCount + c.gcCount} with set-up and settling)`);
      gcCount += p.gcInLoop + c.gcInLoop;
      gcAll += p.gcCount + c.gcCount;
      if (!c.inOrder || c.entries !== total) ordered = false;
    }
    if (!ordered) throw new Error('ring benchmark: entries arrived out of order or were lost');
    const perRun = rates.map((x) => Number(x.toFixed(1)));
    const sorted = [...rates].sort((a, b) => a - b);
    const mpps = sorted[sorted.length >> 1];
    const min = sorted[0], max = sorted[sorted.length - 1];
    const spreadPct = ((max - min) / mpps) * 100;
    console.log(`ring SP/SC burst 32, two pinned workers: ${mpps.toFixed(1)} M entries/s (median of ${runs} runs of ${total / 1e6} M: ${perRun.join(', ')}; spread (max-min)/median ${spreadPct.toFixed(1)} %), worker GCs in the loops: ${gcCount} (${gcAll} with set-up and settling)`);

    const single: Record<string, number> = {};
    for (const burst of [1, 8, 32]) {
      const r = Ring.create(`st${burst}`, 1024, { sp: true, sc: true });
      const buf = new Uint32Array(burst);
      const iters = 10_000;
      const s = await measure(`ring enqueue+dequeue burst ${burst}`, () => {
        for (let i = 0; i < iters; i++) {
          r.enqueueBulk(buf, burst);
          r.dequeueBulk(buf, burst);
        }
      }, { minSamples: quick ? 2 : 5, maxTime: quick ? 0.5 : 2 });
      const ns = (s.stats.mean / (iters * burst)) * 1e9;
      single[`single_thread_burst${burst}_ns_per_entry`] = Number(ns.toFixed(2));
      console.log(`ring enqueue+dequeue, one thread, burst ${burst}: ${ns.toFixed(2)} ns per entry`);
    }
    return {
      spsc_burst32_two_workers_mpps: Number(mpps.toFixed(1)), gc_count: gcCount, ...single,
      runs: perRun, runs_min_mpps: Number(min.toFixed(1)), runs_max_mpps: Number(max.toFixed(1)), spread_pct: Number(spreadPct.toFixed(1)),
      gc_count_with_setup: gcAll,
    };
  } finally {
    await lcores.close();
  }
}
