/** Mempool benchmark: bulk alloc + free of 32 objects through the per-lcore cache, ns per object. */
import { Eal, pktmbufPoolCreate } from '../index.js';
import { measure } from './ring.js';

/** The mempool figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number>> {
  const quick = args.includes('--quick');
  const eal = new Eal({ noHuge: true, filePrefix: `tspbench${process.pid}` });
  try {
    const out: Record<string, number> = {};
    for (const cache of [256, 0]) {
      const pool = pktmbufPoolCreate(eal.memory, `bench_c${cache}`, 8191, { cacheSize: cache });
      const objs = new Uint32Array(32);
      const iters = 10_000;
      const b = await measure(`mempool alloc+free 32, cache ${cache}`, () => {
        for (let i = 0; i < iters; i++) {
          pool.allocBulk(objs, 32);
          pool.freeBulk(objs, 32);
        }
      }, { minSamples: quick ? 2 : 5, maxTime: quick ? 0.5 : 2 });
      const ns = (b.stats.mean / (iters * 32)) * 1e9;
      console.log(`mempool bulk alloc+free of 32, cache ${cache}: ${ns.toFixed(2)} ns per object`);
      if (pool.inUseCount() !== 0) throw new Error(`mempool benchmark leaked ${pool.inUseCount()} objects`);
      out[cache ? 'alloc_free_bulk32_cached_ns_per_object' : 'alloc_free_bulk32_uncached_ns_per_object'] = Number(ns.toFixed(2));
    }
    return out;
  } finally {
    await eal.close();
  }
}
