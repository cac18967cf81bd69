/**
 * The l2fwd forwarding loop, run on each worker lcore: receive a burst on each of its ports,
 * rewrite the MAC addresses, send the burst out of the paired port, free what did not fit.
 */
import { openRxQueue, openTxQueue, type PortData, type RxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import { Mempool, poolOf } from '../../lib/mempool/mempool.js';
import { pktmbufFreeBulk, MBUF_HDR, F_DATA_OFF } from '../../lib/mempool/mbuf.js';
import { countGc } from '../../src/lcore/gc.js';
import type { LcoreContext } from '../../src/lcore/types.js';

/** One RX port of this lcore and where its packets go. */
export interface L2fwdAssignment {
  rx: PortData;
  tx: PortData;
  /** destination and source MAC written into each frame */
  dstMac: number[];
  srcMac: number[];
  /** index of the RX port in the drop counters */
  dropIndex: number;
}

/** Argument of l2fwdLoop. */
export interface L2fwdLcoreArg {
  assignments: L2fwdAssignment[];
  burst: number;
  macUpdating: boolean;
  /** Float64Array counters of packets dropped, per port */
  drops: SharedArrayBuffer;
}

interface Fwd {
  rx: RxQueue;
  tx: TxQueue;
  /** the 12 address bytes (destination, source) as three little-endian u32 words */
  w0: number; w1: number; w2: number;
  drop: number;
}

/** Destination then source MAC as three little-endian u32 words: three stores per frame. */
function words(dst: number[], src: number[]): [number, number, number] {
  const b = [...dst, ...src];
  const w = (i: number): number => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
  return [w(0), w(4), w(8)];
}

/** What an l2fwd lcore reports: garbage collections in all, and in the loop after its first second (warm-up). */
export interface L2fwdLcoreResult {
  gcCount: number;
  gcCountAfterWarmup: number;
}

/** Interpreted and baseline code box doubles until the loop is optimized: allow it a second. */
const WARMUP_MS = 1000;

/** Forward until stopped; returns this lcore's garbage-collection counts. */
export async function l2fwdLoop(arg: L2fwdLcoreArg, ctx: LcoreContext): Promise<L2fwdLcoreResult> {
  const fwd: Fwd[] = [];
  for (const a of arg.assignments) {
    const [w0, w1, w2] = words(a.dstMac, a.srcMac);
    fwd.push({ rx: await openRxQueue(a.rx, 0), tx: await openTxQueue(a.tx, 0), w0, w1, w2, drop: a.dropIndex });
  }
  const drops = new Float64Array(arg.drops);
  const burst = arg.burst, mac = arg.macUpdating, nf = fwd.length;
  const buf = new Uint32Array(burst);
  const gc = countGc();
  const warm = performance.now() + WARMUP_MS;
  while (!ctx.stopRequested()) {
    for (let i = 0; i < nf; i++) {
      const f = fwd[i];
      const n = f.rx.rxBurst(buf, burst);
      if (n === 0) continue;
      if (mac) {
        // The pool (and its views) only change when a handle's pool id does.
        let pid = buf[0] >>> 24, p = poolOf(buf[0]), u16 = p.u16, u32 = p.u32;
        for (let k = 0; k < n; k++) {
          const m = buf[k];
          if (m >>> 24 !== pid) { pid = m >>> 24; p = poolOf(m); u16 = p.u16; u32 = p.u32; }
          const o = p.offsetOf(m);
          const d = o + MBUF_HDR + u16[(o + F_DATA_OFF) >> 1];
          if ((d & 3) === 0) {
            const w = d >> 2;
            u32[w] = f.w0; u32[w + 1] = f.w1; u32[w + 2] = f.w2;
          } else {
            // Data moved off 4-byte alignment (prepend/adj): byte stores.
            const u8 = p.u8, a = f.w0, b = f.w1, c = f.w2;
            u8[d] = a; u8[d + 1] = a >>> 8; u8[d + 2] = a >>> 16; u8[d + 3] = a >>> 24;
            u8[d + 4] = b; u8[d + 5] = b >>> 8; u8[d + 6] = b >>> 16; u8[d + 7] = b >>> 24;
            u8[d + 8] = c; u8[d + 9] = c >>> 8; u8[d + 10] = c >>> 16; u8[d + 11] = c >>> 24;
          }
        }
      }
      const sent = f.tx.txBurst(buf, n, 0);
      if (sent < n) {
        pktmbufFreeBulk(buf, n - sent, sent);
        drops[f.drop] += n - sent;
      }
    }
  }
  const loopEnd = performance.now();
  await gc.settle();
  gc.stop();
  for (const a of arg.assignments) for (const d of a.rx.rxPools) Mempool.attach(d).flushCache();
  return { gcCount: gc.count(), gcCountAfterWarmup: gc.countBetween(warm, loopEnd) };
}
