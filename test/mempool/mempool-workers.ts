/**
 * lcore functions for test/mempool/mempool.test.ts: the mbuf and ring hot path, counting the
 * worker's garbage collections. With `allocate` the same loop also copies each burst (one small
 * allocation per burst, a typical hot-path mistake): the control that shows GCs are seen at all.
 */
import { Mempool, type MempoolDesc } from '../../lib/mempool/mempool.js';
import { pktmbufAllocBulk, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { Ring, type RingDesc } from '../../lib/ring/ring.js';
import { viewOf } from '../../src/os/libc.js';
import { countGc } from '../../src/lcore/gc.js';
import { lcoreId } from '../../src/lcore/id.js';
import type { LcoreContext } from '../../src/lcore/types.js';

/** Argument of hotPath. */
export interface HotPathArg {
  pool: MempoolDesc;
  ring: RingDesc;
  /** pktmbufAllocBulk + pktmbufFreeBulk bursts of 32 */
  mbufBursts: number;
  /** ring enqueueBulk + dequeueBulk bursts of 32 */
  ringBursts: number;
  /** copy every burst (allocates): the control */
  allocate: boolean;
}

/** What hotPath reports. */
export interface HotPathResult {
  lcore: number;
  gcCount: number;
  /** bursts that failed (pool empty, ring full/empty): must be 0 */
  failures: number;
  /** int32 sum of every handle allocated: shows the loop ran */
  checksum: number;
  mbufMs: number;
  ringMs: number;
  /** control only: length of the last burst copy (keeps the copies observable) */
  copied: number;
}

let sink: Uint32Array = new Uint32Array(0);
let checksum = 0;

function mbufLoop(pool: Mempool, burst: Uint32Array, bursts: number, allocate: boolean, ctx: LcoreContext): number {
  let failures = 0;
  for (let i = 0; i < bursts; i++) {
    if (!pktmbufAllocBulk(pool, burst, 32)) {
      failures++;
      if (ctx.stopRequested()) break;
      continue;
    }
    checksum = (checksum + burst[i & 31]) | 0;
    if (allocate) sink = burst.slice();
    pktmbufFreeBulk(burst, 32);
  }
  return failures;
}

function ringLoop(ring: Ring, burst: Uint32Array, back: Uint32Array, bursts: number): number {
  let failures = 0;
  for (let i = 0; i < bursts; i++) {
    if (ring.enqueueBulk(burst, 32) !== 32) failures++;
    if (ring.dequeueBulk(back, 32) !== 32) failures++;
    checksum = (checksum + back[i & 31]) | 0;
  }
  return failures;
}

/** Alloc/free mbuf bursts, then ring bursts, with the GC counter running around both loops. */
export async function hotPath(a: HotPathArg, ctx: LcoreContext): Promise<HotPathResult> {
  const pool = Mempool.attach(a.pool);
  const ring = Ring.attach(a.ring, viewOf);
  const burst = new Uint32Array(32);
  const back = new Uint32Array(32);
  for (let i = 0; i < 32; i++) burst[i] = i;
  // Warm up outside the count, so the loops run optimized code (as a long poll loop would).
  mbufLoop(pool, burst, 20_000, false, ctx);
  ringLoop(ring, burst, back, 20_000);
  checksum = 0;
  const gc = countGc();
  const t0 = performance.now();
  let failures = mbufLoop(pool, burst, a.mbufBursts, a.allocate, ctx);
  const t1 = performance.now();
  for (let i = 0; i < 32; i++) burst[i] = i * 3;
  failures += ringLoop(ring, burst, back, a.ringBursts);
  const t2 = performance.now();
  await gc.settle();
  gc.stop();
  pool.flushCache(); // this lcore's cached objects back to the ring before it returns
  const copied = sink.length;
  sink = new Uint32Array(0);
  return { lcore: lcoreId(), gcCount: gc.count(), failures, checksum, mbufMs: t1 - t0, ringMs: t2 - t1, copied };
}
