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
  d0: number; d1: number; d2: number;
  s0: number; s1: number; s2: number;
  drop: number;
}

/** MAC bytes as three little-endian u16 words, for three stores per address. */
function words(mac: number[]): [number, number, number] {
  return [mac[0] | (mac[1] << 8), mac[2] | (mac[3] << 8), mac[4] | (mac[5] << 8)];
}

/** Forward until stopped; returns this lcore's garbage-collection count. */
export async function l2fwdLoop(arg: L2fwdLcoreArg, ctx: LcoreContext): Promise<{ gcCount: number }> {
  const fwd: Fwd[] = [];
  for (const a of arg.assignments) {
    const [d0, d1, d2] = words(a.dstMac), [s0, s1, s2] = words(a.srcMac);
    fwd.push({ rx: await openRxQueue(a.rx, 0), tx: await openTxQueue(a.tx, 0), d0, d1, d2, s0, s1, s2, drop: a.dropIndex });
  }
  const drops = new Float64Array(arg.drops);
  const burst = arg.burst, mac = arg.macUpdating, nf = fwd.length;
  const buf = new Uint32Array(burst);
  const gc = countGc();
  while (!ctx.stopRequested()) {
    for (let i = 0; i < nf; i++) {
      const f = fwd[i];
      const n = f.rx.rxBurst(buf, burst);
      if (n === 0) continue;
      if (mac) {
        for (let k = 0; k < n; k++) {
          const m = buf[k];
          const p = poolOf(m);
          const o = p.offsetOf(m);
          const d = o + MBUF_HDR + p.u16[(o + F_DATA_OFF) >> 1];
          if ((d & 1) === 0) {
            const u16 = p.u16, w = d >> 1;
            u16[w] = f.d0; u16[w + 1] = f.d1; u16[w + 2] = f.d2;
            u16[w + 3] = f.s0; u16[w + 4] = f.s1; u16[w + 5] = f.s2;
          } else {
            const u8 = p.u8;
            u8[d] = f.d0 & 0xff; u8[d + 1] = f.d0 >> 8; u8[d + 2] = f.d1 & 0xff; u8[d + 3] = f.d1 >> 8; u8[d + 4] = f.d2 & 0xff; u8[d + 5] = f.d2 >> 8;
            u8[d + 6] = f.s0 & 0xff; u8[d + 7] = f.s0 >> 8; u8[d + 8] = f.s1 & 0xff; u8[d + 9] = f.s1 >> 8; u8[d + 10] = f.s2 & 0xff; u8[d + 11] = f.s2 >> 8;
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
  await gc.settle();
  gc.stop();
  for (const a of arg.assignments) for (const d of a.rx.rxPools) Mempool.attach(d).flushCache();
  return { gcCount: gc.count() };
}
