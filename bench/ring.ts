/**
 * Ring benchmarks (`npm run bench -- ring --help` lists the options):
 *  - SP/SC bursts of 32 between two pinned worker lcores (one per CPU), M entries/s: median of 5
 *    runs of 64 M entries after 3 warm-up runs. JSON: spsc_burst32_two_workers_mpps (the median),
 *    runs (each run's figure), runs_min_mpps, runs_max_mpps, spread_pct ((max - min) / median),
 *    gc_count (the workers' garbage collections that began inside the measured loops: must be 0)
 *    and gc_count_with_setup (also the tasks' set-up and the settling after each loop, where V8's
 *    memory reducer may run a collection of an idle heap);
 *  - beside DPDK: rounds of one tspmd SP/SC bulk-32 run between the two workers and one run of
 *    DPDK's ring_perf_autotest (its two-lcore SP/SC bulk-32 line), the order alternating round by
 *    round, each round's ratio reported (bench/dpdk.ts says how cycles become entries per second);
 *  - enqueue+dequeue in one thread, bursts of 1, 8 and 32, ns per entry.
 */
import Benchmark from 'benchmark';
import { Ring, Lcores, siblingModule } from '../index.js';
import { ringBulkConsumer, ringBulkProducer, ringConsumer, ringProducer, type RingBulkArg, type RingPipeArg, type RingPipeResult } from './ring-lcores.js';
import { loadAvg, roundsOptions } from './options.js';
import { median, runRingPerf, tscMhz } from './dpdk.js';

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

/** Move `total` entries through ring in SP/SC bulks of 32 with DPDK's test loop (nothing per entry); returns both reports. */
async function bulkPipeOnce(lcores: Lcores, ring: Ring, total: number): Promise<[RingPipeResult, RingPipeResult]> {
  const arg: RingBulkArg = { ring: ring.desc, total, burst: 32 };
  const c = lcores.launch(2, PIPE, ringBulkConsumer, arg);
  const p = lcores.launch(1, PIPE, ringBulkProducer, arg);
  return Promise.all([p, c]);
}

const HELP = `usage: npm run bench -- ring [--json] [--quick] [--rounds N] [--no-dpdk]

  --quick      shorter runs (4 M entries instead of 64 M, 3 burst runs, 2 rounds beside DPDK)
  --rounds N   rounds beside DPDK (default 5): each is one tspmd SP/SC bulk-32 run between the
               two workers and one DPDK ring_perf_autotest run, the order alternating
  --no-dpdk    leave DPDK out (no rounds, no DPDK figures)
  --json       print the figures as one JSON object on the last line

Every figure is taken with the load averages it ran under (uptime): two spinning workers on a
2-vCPU machine measure the other jobs as much as the ring when the load is above about 1.`;

/** One round beside DPDK: its figures. */
interface Round {
  tspmdMpps: number;
  dpdkCycles: number;
  dpdkMpps: number;
  ratio: number;
  ratioLiteral: number;
  load1: number;
  gcInLoop: number;
}

/** Rounds of tspmd's SP/SC bulk-32 pipe and DPDK's ring_perf_autotest, alternating which goes first. */
async function besideDpdk(lcores: Lcores, total: number, rounds: number, tscHz: number): Promise<{ rounds: Round[]; section: string; command: string }> {
  // 4096 entries, as DPDK's test ring.
  const ring = Ring.create('bench_bulk', 4096, { sp: true, sc: true });
  // Warm-ups: these loops are not the burst runs' loops.
  for (let w = 0; w < 2; w++) await bulkPipeOnce(lcores, ring, total);
  const out: Round[] = [];
  let section = '', command = '';
  for (let r = 0; r < rounds; r++) {
    const load1 = loadAvg()[0];
    let tspmd = 0, gc = 0, cycles = 0;
    for (const who of r % 2 === 0 ? ['tspmd', 'dpdk'] : ['dpdk', 'tspmd']) {
      if (who === 'tspmd') {
        const [p, c] = await bulkPipeOnce(lcores, ring, total);
        if (!c.inOrder || c.entries !== total) throw new Error('ring benchmark: entries arrived out of order or were lost (bulk)');
        tspmd = total / ((c.endMs - p.startMs) / 1e3) / 1e6;
        gc = p.gcInLoop + c.gcInLoop;
      } else {
        const d = runRingPerf();
        if (section && d.section !== section) throw new Error(`ring_perf_autotest changed sections between rounds ("${section}", then "${d.section}")`);
        ({ section, command } = d);
        cycles = d.cyclesPerEntry;
      }
    }
    // DPDK's figure is enqueue + dequeue cycles per entry of two loops running side by side.
    const dpdkMpps = (2 * tscHz) / cycles / 1e6;
    const round: Round = { tspmdMpps: tspmd, dpdkCycles: cycles, dpdkMpps, ratio: tspmd / dpdkMpps, ratioLiteral: tspmd / (dpdkMpps / 2), load1, gcInLoop: gc };
    out.push(round);
    console.log(`  round ${r + 1} (${r % 2 === 0 ? 'tspmd first' : 'DPDK first'}, load ${load1}): tspmd ${tspmd.toFixed(1)} M/s, DPDK ${cycles} cycles/entry = ${dpdkMpps.toFixed(1)} M/s through the ring; ratio ${round.ratio.toFixed(3)} (against TSC/figure = ${(dpdkMpps / 2).toFixed(1)}: ${round.ratioLiteral.toFixed(3)}), GCs in the loops ${gc}`);
  }
  return { rounds: out, section, command };
}

/** The ring figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | string | number[]>> {
  const o = roundsOptions('ring', args, HELP, { rounds: 5, quickRounds: 2, maxRounds: 50 });
  if (!o) return {};
  const { quick, rounds, withDpdk } = o;
  const tsc = withDpdk ? tscMhz() : null;
  const loadStart = loadAvg();
  console.log(`load averages at the start: ${loadStart.join(' ')}`);
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

    let dpdk: Record<string, number | string | number[]> = {};
    if (tsc) {
      console.log(`beside DPDK's ring_perf_autotest (SP/SC bulk 32, two lcores), ${rounds} round(s), TSC ${tsc.mhz} MHz from ${tsc.source}:`);
      const d = await besideDpdk(lcores, total, rounds, tsc.mhz * 1e6);
      const col = (k: keyof Round, digits: number): number[] => d.rounds.map((x) => Number(x[k].toFixed(digits)));
      const ratio = median(d.rounds.map((x) => x.ratio)), ratioLiteral = median(d.rounds.map((x) => x.ratioLiteral));
      console.log(`ratio tspmd / DPDK (entries per second through the ring): median ${ratio.toFixed(3)} of ${col('ratio', 3).join(' ')}; against TSC/figure: median ${ratioLiteral.toFixed(3)}; DPDK section "${d.section}"`);
      dpdk = {
        tspmd_bulk32_two_workers_mpps: Number(median(d.rounds.map((x) => x.tspmdMpps)).toFixed(1)), tspmd_bulk32_runs: col('tspmdMpps', 1),
        dpdk_mpps: Number(median(d.rounds.map((x) => x.dpdkMpps)).toFixed(1)), dpdk_runs_mpps: col('dpdkMpps', 1), dpdk_runs_cycles_per_entry: col('dpdkCycles', 2),
        ratio_median: Number(ratio.toFixed(3)), ratios: col('ratio', 3),
        ratio_literal_median: Number(ratioLiteral.toFixed(3)), ratios_literal: col('ratioLiteral', 3),
        rounds_load_avg_1m: col('load1', 2), rounds_gc_count: d.rounds.reduce((a, x) => a + x.gcInLoop, 0),
        dpdk_section: d.section, dpdk_command: d.command, tsc_mhz: tsc.mhz, tsc_source: tsc.source,
      };
    }

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
    const loadEnd = loadAvg();
    console.log(`load averages at the end: ${loadEnd.join(' ')}`);
    return {
      spsc_burst32_two_workers_mpps: Number(mpps.toFixed(1)), gc_count: gcCount, ...single,
      runs: perRun, runs_min_mpps: Number(min.toFixed(1)), runs_max_mpps: Number(max.toFixed(1)), spread_pct: Number(spreadPct.toFixed(1)),
      gc_count_with_setup: gcAll, ...dpdk, load_avg_start: loadStart, load_avg_end: loadEnd,
    };
  } finally {
    await lcores.close();
  }
}
