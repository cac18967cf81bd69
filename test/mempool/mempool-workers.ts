/**
 * lcore functions for test/mempool/mempool.test.ts: the mbuf and ring hot path, measured by the
 * allocation rule of test/alloc.ts. With `allocate` the same loop also copies each burst (one small
 * allocation per burst, a typical hot-path mistake): the control that shows the rule catches it.
 */
import { Mempool, type MempoolDesc } from '../../lib/mempool/mempool.js';
import { pktmbufAllocBulk, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { Ring, type RingDesc } from '../../lib/ring/ring.js';
import { viewOf } from '../../src/os/libc.js';
import { AllocMeter, type AllocResult, type AllocRule } from '../alloc.js';
import { lcoreId } from '../../src/lcore/id.js';
import type { LcoreContext } from '../../src/lcore/types.js';

/** Argument of hotPath. */
export interface HotPathArg {
  pool: MempoolDesc;
  ring: RingDesc;
  /** warm-up and window of each loop, in bursts of 32 (pktmbufAllocBulk + pktmbufFreeBulk, then ring enqueueBulk + dequeueBulk) */
  rule: AllocRule;
  /** copy every burst (allocates): the control */
  allocate: boolean;
}

/** What hotPath reports. */
export interface HotPathResult {
  lcore: number;
  /** the windows of the mbuf loop and of the ring loop */
  mbuf: AllocResult;
  ring: AllocResult;
  /** bursts that failed (pool empty, ring full/empty): must be 0 */
  failures: number;
  /** int32 sum of every handle allocated: shows the loop ran */
  checksum: number;
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

/** Alloc/free mbuf bursts, then ring bursts, each loop warmed up and measured by the rule. */
export async function hotPath(a: HotPathArg, ctx: LcoreContext): Promise<HotPathResult> {
  const pool = Mempool.attach(a.pool);
  const ring = Ring.attach(a.ring, viewOf);
  const burst = new Uint32Array(32);
  const back = new Uint32Array(32);
  for (let i = 0; i < 32; i++) burst[i] = i;
  checksum = 0;
  let failures = 0, n = 0;
  const mm = new AllocMeter(a.rule);
  while (!mm.at(n) && !ctx.stopRequested()) {
    failures += mbufLoop(pool, burst, 1024, a.allocate, ctx);
    n += 1024;
  }
  const mbuf = await mm.result();
  for (let i = 0; i < 32; i++) burst[i] = i * 3;
  const rm = new AllocMeter(a.rule);
  n = 0;
  while (!rm.at(n) && !ctx.stopRequested()) {
    failures += ringLoop(ring, burst, back, 1024);
    n += 1024;
  }
  const rg = await rm.result();
  pool.flushCache(); // this lcore's cached objects back to the ring before it returns
  const copied = sink.length;
  sink = new Uint32Array(0);
  return { lcore: lcoreId(), mbuf, ring: rg, failures, checksum, copied };
}
