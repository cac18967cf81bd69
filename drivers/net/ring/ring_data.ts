/** net_ring data path: RX dequeues handles from a ring, TX enqueues them (zero copy). */
import { Ring, type RingDesc } from '../../../lib/ring/ring.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { viewOf } from '../../../src/os/libc.js';
import {
  type PortData, type RxQueue, type TxQueue, rxqStatsBase, txqStatsBase,
  RXQ_PACKETS, RXQ_BYTES, TXQ_PACKETS, TXQ_BYTES,
} from '../../../lib/ethdev/ethdev.js';

class RingRx implements RxQueue {
  private readonly v = new MbufView();
  constructor(private readonly ring: Ring, private readonly port: number, private readonly stats: Float64Array, private readonly s: number) {}

  rxBurst(out: Uint32Array, n: number): number {
    const k = this.ring.dequeueBurst(out, n);
    if (k === 0) return 0;
    const v = this.v, port = this.port;
    let bytes = 0;
    for (let i = 0; i < k; i++) {
      v.at(out[i]);
      bytes += v.pktLen;
      v.port = port;
    }
    this.stats[this.s + RXQ_PACKETS] += k;
    this.stats[this.s + RXQ_BYTES] += bytes;
    return k;
  }
}

class RingTx implements TxQueue {
  /** packet lengths of the burst, read before the enqueue: after it the mbufs belong to the peer */
  private lens = new Uint32Array(512);
  private readonly v = new MbufView();
  constructor(private readonly ring: Ring, private readonly stats: Float64Array, private readonly s: number) {}

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    if (n > this.lens.length) this.lens = new Uint32Array(n); // once, for an unusually large burst
    const lens = this.lens, v = this.v;
    for (let i = 0; i < n; i++) lens[i] = v.at(pkts[off + i]).pktLen;
    const k = this.ring.enqueueBurst(pkts, n, off);
    let bytes = 0;
    for (let i = 0; i < k; i++) bytes += lens[i];
    this.stats[this.s + TXQ_PACKETS] += k;
    this.stats[this.s + TXQ_BYTES] += bytes;
    return k;
  }
}

/** Rebuild RX queue q in this thread. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  Mempool.attach(port.rxPools[q]);
  return new RingRx(Ring.attach(port.rxq[q] as RingDesc, viewOf), port.port, stats, rxqStatsBase(q));
}

/** Rebuild TX queue q in this thread. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  return new RingTx(Ring.attach(port.txq[q] as RingDesc, viewOf), stats, txqStatsBase(q));
}
