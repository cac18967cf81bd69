/**
 * The lcore side of the hash benchmark: attach the table the main thread filled and look up every
 * key in bursts, DPDK's timed_lookups_multi loop: the keys in shuffled order, each burst's answers
 * checked against the value each key was added with. The loop polls the stop word with
 * Atomics.load on ctx.control (a plain function: no per-launch closure in it, docs/performance.md).
 */
import { Hash, countGc, type HashDesc, type LcoreContext } from '../index.js';

/** Arguments of hashBulkLookups. */
export interface HashBenchArg {
  desc: HashDesc;
  /** n keys of desc.keyLen bytes, packed, in the order they are looked up */
  keys: SharedArrayBuffer;
  /** Int32Array(n): the value key i was added with */
  expected: SharedArrayBuffer;
  n: number;
  /** keys per lookupBulk call */
  burst: number;
  /** passes over all n keys before the clock starts, and timed */
  warmPasses: number;
  passes: number;
}

/** What one run measured. */
export interface HashBenchResult {
  lookups: number;
  /** the timed passes' wall time per lookup */
  nsPerLookup: number;
  /** answers that were not the key's value (must be 0) */
  bad: number;
  /** garbage collections that began inside the timed loop (must be 0), and in the whole task */
  gcInLoop: number;
  gcCount: number;
}

/** passes over all keys in bursts; returns the wrong answers. */
function lookupPasses(h: Hash, keys: Uint8Array, expected: Int32Array, out: Int32Array, n: number, burst: number, passes: number, control: Int32Array): number {
  const len = h.keyLen;
  let bad = 0;
  for (let p = 0; p < passes && Atomics.load(control, 0) === 0; p++) {
    for (let j = 0; j + burst <= n; j += burst) {
      if (h.lookupBulk(keys, j * len, burst, out, 0) !== burst) bad++;
      for (let k = 0; k < burst; k++) if (out[k] !== expected[j + k]) bad++;
    }
  }
  return bad;
}

/** Attach, warm up, then time `passes` passes of bulk lookups over all keys. */
export async function hashBulkLookups(a: HashBenchArg, ctx: LcoreContext): Promise<HashBenchResult> {
  const h = Hash.attach(a.desc);
  const keys = new Uint8Array(a.keys);
  const expected = new Int32Array(a.expected);
  const out = new Int32Array(a.burst);
  const gc = countGc();
  let bad = lookupPasses(h, keys, expected, out, a.n, a.burst, a.warmPasses, ctx.control);
  const t0 = performance.now();
  bad += lookupPasses(h, keys, expected, out, a.n, a.burst, a.passes, ctx.control);
  const t1 = performance.now();
  await gc.settle();
  gc.stop();
  const lookups = Math.floor(a.n / a.burst) * a.burst * a.passes;
  return { lookups, nsPerLookup: ((t1 - t0) * 1e6) / lookups, bad, gcInLoop: gc.countBetween(t0, t1), gcCount: gc.count() };
}
