/**
 * Poll functions for the ring benchmarks and tests: a producer and a consumer lcore moving a
 * numbered sequence through one ring in bursts. Both count their own garbage collections.
 *
 * Each task's loop runs in a plain module-level function (produce/consume) that polls the stop
 * word with Atomics.load on ctx.control: ctx.stopRequested is a new closure per launch, and a call
 * to it in the loop deoptimized the loop ("wrong call target") at the start of every run, which
 * then ran interpreted until a new optimized version was compiled.
 */
import { Ring, countGc, type RingDesc, type LcoreContext } from '../index.js';

/** Arguments of ringProducer/ringConsumer. */
export interface RingPipeArg {
  ring: RingDesc;
  /** entries to move */
  total: number;
  burst: number;
  /** bulk (all or nothing) instead of burst */
  bulk?: boolean;
  /** several producers: each sends values v with v % producers === index */
  producers?: number;
  index?: number;
}

/** What a producer or consumer reports. */
export interface RingPipeResult {
  entries: number;
  /** wall-clock ms (epoch) when it started and ended */
  startMs: number;
  endMs: number;
  /** garbage collections while the task ran (loop, set-up and the settling after it) */
  gcCount: number;
  /** garbage collections that began inside the loop (between startMs and endMs) */
  gcInLoop: number;
  /** consumer: SP/SC order check, and the int32-wrapping sum of values received */
  inOrder: boolean;
  sum: number;
  /** consumer, totals up to 2^22: values never received, and receptions beyond the first */
  missing: number;
  duplicated: number;
}

/** The producer's loop: enqueue total values first, first + step, ... in bursts of burst.length; returns how many went in. */
function produce(ring: Ring, burst: Uint32Array, total: number, bulk: boolean, first: number, step: number, control: Int32Array): number {
  const size = burst.length;
  let next = first, sent = 0;
  while (sent < total && Atomics.load(control, 0) === 0) {
    const left = total - sent;
    const n = left < size ? left : size;
    for (let i = 0; i < n; i++) burst[i] = next + i * step;
    const k = bulk ? ring.enqueueBulk(burst, n) : ring.enqueueBurst(burst, n);
    // Entries not taken go again next round: rewind to the first unsent value.
    next += k * step;
    sent += k;
  }
  return sent;
}

/** Consumer loop state that outlives one call (numbers kept as int32 in a typed array: no boxing). */
const ST_GOT = 0, ST_EXPECT = 1, ST_INORDER = 2, ST_SUM = 3;

/** The consumer's loop: dequeue total values, checking order (single) and recording them in track; results in st. */
function consume(ring: Ring, burst: Uint32Array, total: number, bulk: boolean, single: boolean, track: Uint8Array | null, control: Int32Array, st: Int32Array): void {
  const size = burst.length;
  let got = 0, expect = 0, inOrder = 1, sum = 0;
  while (got < total && Atomics.load(control, 0) === 0) {
    let n: number;
    if (bulk) {
      const left = total - got;
      n = ring.dequeueBulk(burst, left < size ? left : size);
    } else n = ring.dequeueBurst(burst, size);
    for (let i = 0; i < n; i++) {
      const v = burst[i];
      if (single && v !== expect) inOrder = 0;
      expect = v + 1;
      sum = (sum + v) | 0; // wrapping: a double here would allocate
      if (track !== null) {
        if (v < track.length) {
          if (track[v] < 255) track[v]++;
        } else track[0] = 255; // out of range: counts as a duplicate
      }
    }
    got += n;
  }
  st[ST_GOT] = got;
  st[ST_EXPECT] = expect;
  st[ST_INORDER] = inOrder;
  st[ST_SUM] = sum;
}

/** Enqueue total numbered entries in bursts (value = producer index + k * producers). */
export async function ringProducer(a: RingPipeArg, ctx: LcoreContext): Promise<RingPipeResult> {
  const ring = Ring.attach(a.ring);
  const burst = new Uint32Array(a.burst);
  return timedProducer(() => produce(ring, burst, a.total, a.bulk === true, a.index ?? 0, a.producers ?? 1, ctx.control));
}

/** Run a producer loop (it returns the entries it enqueued) with its span and garbage collections counted. */
async function timedProducer(loop: () => number): Promise<RingPipeResult> {
  const gc = countGc();
  const startPerf = performance.now();
  const sent = loop();
  const endPerf = performance.now();
  await gc.settle();
  gc.stop();
  return {
    entries: sent, startMs: performance.timeOrigin + startPerf, endMs: performance.timeOrigin + endPerf,
    gcCount: gc.count(), gcInLoop: gc.countBetween(startPerf, endPerf), inOrder: true, sum: 0, missing: 0, duplicated: 0,
  };
}

/** Dequeue total entries in bursts, checking order (single producer) or recording what came. */
export async function ringConsumer(a: RingPipeArg, ctx: LcoreContext): Promise<RingPipeResult> {
  const ring = Ring.attach(a.ring);
  const gc = countGc();
  const burst = new Uint32Array(a.burst);
  const track = a.total <= 1 << 22 ? new Uint8Array(a.total) : null;
  const st = new Int32Array(4);
  const startPerf = performance.now();
  consume(ring, burst, a.total, a.bulk === true, (a.producers ?? 1) === 1, track, ctx.control, st);
  const endPerf = performance.now();
  await gc.settle();
  gc.stop();
  let missing = 0, duplicated = 0;
  if (track !== null) for (let v = 0; v < track.length; v++) {
    if (track[v] === 0) missing++;
    else duplicated += track[v] - 1;
  }
  return {
    entries: st[ST_GOT], startMs: performance.timeOrigin + startPerf, endMs: performance.timeOrigin + endPerf,
    gcCount: gc.count(), gcInLoop: gc.countBetween(startPerf, endPerf), inOrder: st[ST_INORDER] === 1, sum: st[ST_SUM], missing, duplicated,
  };
}

/**
 * Arguments of ringBulkProducer/ringBulkConsumer: the loop of DPDK's ring_perf_autotest two-core
 * test, SP/SC bulks of `burst` entries with nothing done per entry, for the comparison beside it.
 */
export interface RingBulkArg {
  ring: RingDesc;
  /** entries to move: a multiple of burst */
  total: number;
  burst: number;
}

/** Enqueue total / size bulks of burst; burst[0] carries the bulk's sequence number (the only per-bulk work). */
function produceBulks(ring: Ring, burst: Uint32Array, bulks: number, control: Int32Array): number {
  const size = burst.length;
  let seq = 0;
  while (seq < bulks && Atomics.load(control, 0) === 0) {
    burst[0] = seq;
    if (ring.enqueueBulk(burst, size) === size) seq++;
  }
  return seq * size;
}

/** Dequeue bulks until total entries came, checking each bulk's sequence number; results in st. */
function consumeBulks(ring: Ring, burst: Uint32Array, bulks: number, control: Int32Array, st: Int32Array): void {
  const size = burst.length;
  let seq = 0, inOrder = 1;
  while (seq < bulks && Atomics.load(control, 0) === 0) {
    if (ring.dequeueBulk(burst, size) === size) {
      if (burst[0] !== seq) inOrder = 0;
      seq++;
    }
  }
  st[ST_GOT] = seq * size;
  st[ST_INORDER] = inOrder;
}

function checkBulkArg(a: RingBulkArg): number {
  if (!(a.burst > 0) || a.total % a.burst !== 0) throw new RangeError(`ring bulk pipe: total ${a.total} must be a multiple of the burst ${a.burst}`);
  return a.total / a.burst;
}

/** Enqueue total entries in SP bulks of a.burst, as DPDK's two-core ring test does. */
export async function ringBulkProducer(a: RingBulkArg, ctx: LcoreContext): Promise<RingPipeResult> {
  const bulks = checkBulkArg(a);
  const ring = Ring.attach(a.ring);
  const burst = new Uint32Array(a.burst);
  return timedProducer(() => produceBulks(ring, burst, bulks, ctx.control));
}

/** Dequeue total entries in SC bulks of a.burst, checking the bulks arrive in order. */
export async function ringBulkConsumer(a: RingBulkArg, ctx: LcoreContext): Promise<RingPipeResult> {
  const bulks = checkBulkArg(a);
  const ring = Ring.attach(a.ring);
  const gc = countGc();
  const burst = new Uint32Array(a.burst);
  const st = new Int32Array(4);
  const startPerf = performance.now();
  consumeBulks(ring, burst, bulks, ctx.control, st);
  const endPerf = performance.now();
  await gc.settle();
  gc.stop();
  return {
    entries: st[ST_GOT], startMs: performance.timeOrigin + startPerf, endMs: performance.timeOrigin + endPerf,
    gcCount: gc.count(), gcInLoop: gc.countBetween(startPerf, endPerf), inOrder: st[ST_INORDER] === 1, sum: 0, missing: 0, duplicated: 0,
  };
}
