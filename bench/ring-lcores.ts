/**
 * Poll functions for the ring benchmarks and tests: a producer and a consumer lcore moving a
 * numbered sequence through one ring in bursts. Both count their own garbage collections.
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
  gcCount: number;
  /** consumer: SP/SC order check, and the int32-wrapping sum of values received */
  inOrder: boolean;
  sum: number;
  /** consumer, totals up to 2^22: values never received, and receptions beyond the first */
  missing: number;
  duplicated: number;
}

/** Enqueue total numbered entries in bursts (value = producer index + k * producers). */
export async function ringProducer(a: RingPipeArg, ctx: LcoreContext): Promise<RingPipeResult> {
  const ring = Ring.attach(a.ring);
  const gc = countGc();
  const burst = new Uint32Array(a.burst);
  const step = a.producers ?? 1;
  let next = a.index ?? 0;
  let sent = 0;
  const startMs = performance.timeOrigin + performance.now();
  while (sent < a.total && !ctx.stopRequested()) {
    const n = Math.min(a.burst, a.total - sent);
    for (let i = 0; i < n; i++) burst[i] = next + i * step;
    const k = a.bulk ? ring.enqueueBulk(burst, n) : ring.enqueueBurst(burst, n);
    // Entries not taken go again next round: rewind to the first unsent value.
    next += k * step;
    sent += k;
  }
  const endMs = performance.timeOrigin + performance.now();
  await gc.settle();
  gc.stop();
  return { entries: sent, startMs, endMs, gcCount: gc.count(), inOrder: true, sum: 0, missing: 0, duplicated: 0 };
}

/** Dequeue total entries in bursts, checking order (single producer) or recording what came. */
export async function ringConsumer(a: RingPipeArg, ctx: LcoreContext): Promise<RingPipeResult> {
  const ring = Ring.attach(a.ring);
  const gc = countGc();
  const burst = new Uint32Array(a.burst);
  const track = a.total <= 1 << 22 ? new Uint8Array(a.total) : null;
  const single = (a.producers ?? 1) === 1;
  let got = 0, expect = 0, inOrder = true, sum = 0;
  const startMs = performance.timeOrigin + performance.now();
  while (got < a.total && !ctx.stopRequested()) {
    const n = a.bulk ? ring.dequeueBulk(burst, Math.min(a.burst, a.total - got)) : ring.dequeueBurst(burst, a.burst);
    for (let i = 0; i < n; i++) {
      const v = burst[i];
      if (single && v !== expect) inOrder = false;
      expect = v + 1;
      sum = (sum + v) | 0; // wrapping: a double here would allocate
      if (track !== null && v < track.length && track[v] < 255) track[v]++;
      else if (track !== null && v >= track.length) track[0] = 255; // out of range: counts as a duplicate
    }
    got += n;
  }
  const endMs = performance.timeOrigin + performance.now();
  await gc.settle();
  gc.stop();
  let missing = 0, duplicated = 0;
  if (track !== null) for (let v = 0; v < track.length; v++) {
    if (track[v] === 0) missing++;
    else duplicated += track[v] - 1;
  }
  return { entries: got, startMs, endMs, gcCount: gc.count(), inOrder, sum, missing, duplicated };
}
