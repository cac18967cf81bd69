/**
 * The pktgen loop on one lcore: transmit prebuilt UDP frames (cycling through the flows) at a
 * rate or as fast as possible, and count what arrives on the RX port.
 */
import { openRxQueue, openTxQueue, type PortData } from '../../lib/ethdev/ethdev.js';
import { Mempool } from '../../lib/mempool/mempool.js';
import { pktmbufAllocBulk, pktmbufFreeBulk, MBUF_HDR, F_DATA_OFF, F_DATA_LEN, F_PKT_LEN } from '../../lib/mempool/mbuf.js';
import { countGc } from '../../src/lcore/gc.js';
import type { LcoreContext } from '../../src/lcore/types.js';

/** Argument of pktgenLoop. */
export interface PktgenLcoreArg {
  tx: PortData;
  rx: PortData | null;
  /** all flows' frames back to back, each `size` bytes */
  frames: Uint8Array;
  size: number;
  flows: number;
  /** packets per second, 0 for as fast as possible */
  rate: number;
  /** packets to send, 0 for no limit */
  count: number;
  burst: number;
  /** Float64Array: [0] sent, [1] dropped at TX, [2] no mbuf, [3] received */
  counters: SharedArrayBuffer;
}

/** Generate until stopped or count is sent (then drain RX until quiet); returns the GC count. */
export async function pktgenLoop(a: PktgenLcoreArg, ctx: LcoreContext): Promise<{ gcCount: number }> {
  const tx = await openTxQueue(a.tx, 0);
  const rx = a.rx ? await openRxQueue(a.rx, 0) : null;
  const pool = Mempool.attach(a.tx.rxPools[0]);
  const tmpl: Uint8Array[] = [];
  for (let f = 0; f < a.flows; f++) tmpl.push(a.frames.subarray(f * a.size, (f + 1) * a.size));
  const c = new Float64Array(a.counters);
  const buf = new Uint32Array(a.burst), rbuf = new Uint32Array(a.burst);
  const size = a.size, flows = a.flows, rate = a.rate, count = a.count, burst = a.burst;
  const u8 = pool.u8, u16 = pool.u16, u32 = pool.u32;
  let flow = 0, sent = 0, lastRx = performance.now();
  const t0 = performance.now();
  const gc = countGc();
  while (!ctx.stopRequested()) {
    let n = burst;
    if (count > 0 && count - sent < n) n = count - sent;
    if (rate > 0) {
      const allowed = Math.floor(((performance.now() - t0) * rate) / 1000) - sent;
      if (allowed < n) n = allowed > 0 ? allowed : 0;
    }
    if (n > 0) {
      if (pktmbufAllocBulk(pool, buf, n)) {
        for (let i = 0; i < n; i++) {
          const o = pool.offsetOf(buf[i]);
          u8.set(tmpl[flow], o + MBUF_HDR + u16[(o + F_DATA_OFF) >> 1]);
          u16[(o + F_DATA_LEN) >> 1] = size;
          u32[(o + F_PKT_LEN) >> 2] = size;
          if (++flow === flows) flow = 0;
        }
        const k = tx.txBurst(buf, n, 0);
        if (k < n) {
          pktmbufFreeBulk(buf, n - k, k);
          c[1] += n - k;
        }
        sent += n;
        c[0] += k;
      } else c[2] += n;
    }
    if (rx !== null) {
      const r = rx.rxBurst(rbuf, burst);
      if (r > 0) {
        c[3] += r;
        pktmbufFreeBulk(rbuf, r, 0);
        lastRx = performance.now();
      }
    }
    // With a count: once all is sent, wait until RX has been quiet for 100 ms.
    if (count > 0 && sent >= count && (rx === null || performance.now() - lastRx > 100)) break;
  }
  await gc.settle();
  gc.stop();
  pool.flushCache();
  return { gcCount: gc.count() };
}
