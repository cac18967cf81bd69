/**
 * lcore functions for test/ring/ring.test.ts. Producers come from bench/ring-lcores.ts; this is a
 * consumer for several consumers at once: each records what it saw in its own shared array, and
 * all stop when together they have taken `total` entries.
 */
import { Ring, type RingDesc } from '../../lib/ring/ring.js';
import { viewOf } from '../../src/os/libc.js';
import type { LcoreContext } from '../../src/lcore/types.js';

/** Argument of mpmcConsumer. */
export interface MpmcConsumerArg {
  ring: RingDesc;
  /** entries all consumers take together */
  total: number;
  burst: number;
  /** number of producers: producer p sends values v with v % producers === p, ascending */
  producers: number;
  /** Int32Array(1) shared by all consumers: entries taken so far */
  taken: SharedArrayBuffer;
  /** Uint8Array(total) of this consumer: how often it received each value */
  seen: SharedArrayBuffer;
}

/** What one consumer reports. */
export interface MpmcConsumerResult {
  entries: number;
  /** values from each producer arrived in ascending order at this consumer */
  inOrder: boolean;
  /** values >= total (never sent) */
  outOfRange: number;
}

/** Dequeue in bursts until all consumers together have `total` entries (or stop is requested). */
export function mpmcConsumer(a: MpmcConsumerArg, ctx: LcoreContext): MpmcConsumerResult {
  const ring = Ring.attach(a.ring, viewOf);
  const taken = new Int32Array(a.taken);
  const seen = new Uint8Array(a.seen);
  const burst = new Uint32Array(a.burst);
  const last = new Float64Array(a.producers).fill(-1);
  let mine = 0, inOrder = true, outOfRange = 0;
  while (Atomics.load(taken, 0) < a.total && !ctx.stopRequested()) {
    const n = ring.dequeueBurst(burst, a.burst);
    if (n === 0) continue;
    for (let i = 0; i < n; i++) {
      const v = burst[i];
      if (v >= a.total) { outOfRange++; continue; }
      if (seen[v] < 255) seen[v]++;
      const p = v % a.producers;
      if (v <= last[p]) inOrder = false;
      last[p] = v;
    }
    mine += n;
    Atomics.add(taken, 0, n);
  }
  return { entries: mine, inOrder, outOfRange };
}
