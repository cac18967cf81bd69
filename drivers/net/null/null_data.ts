/**
 * net_null data path. RX allocates a burst of mbufs and gives them the configured length (with
 * copy=1 it also writes a frame into each); TX frees what it is given (with copy=1 it first reads
 * each frame, as a device would). With no-rx, RX is a queue that returns nothing (a class of its
 * own, as DPDK's eth_null_no_rx, so that the generating queue keeps no extra branch).
 */
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import {
  type PortData, type RxQueue, type TxQueue, rxqStatsBase, txqStatsBase,
  RXQ_PACKETS, RXQ_BYTES, RXQ_NOMBUF, TXQ_PACKETS, TXQ_BYTES,
} from '../../../lib/ethdev/ethdev.js';

/** Per-queue driver data. */
export interface NullQueueData {
  size: number;
  copy: boolean;
  /** RX returns nothing (TX ignores it) */
  noRx: boolean;
}

/** RX: fresh mbufs of `size` bytes. */
class NullRx implements RxQueue {
  // declare: no class-field definition to undefined first, which would make every field a
  // generic tagged one (numbers boxed or tag-checked, views map-checked) in optimized code.
  private declare readonly pool: Mempool;
  private declare readonly port: number;
  private declare readonly size: number;
  private declare readonly copy: boolean;
  private declare readonly stats: Float64Array;
  private declare readonly s: number;
  private declare readonly template: Uint8Array;
  private declare readonly v: MbufView;
  constructor(pool: Mempool, port: number, size: number, copy: boolean, stats: Float64Array, s: number) {
    this.pool = pool;
    this.port = port;
    this.size = size;
    this.copy = copy;
    this.stats = stats;
    this.s = s;
    this.v = new MbufView();
    // A broadcast Ethernet frame with an IPv4 ethertype and a zero payload.
    this.template = new Uint8Array(size);
    this.template.fill(0xff, 0, 6);
    this.template.set([0x02, 0x74, 0x73, 0x70, 0x00, port & 0xff], 6);
    this.template[12] = 0x08;
  }

  rxBurst(out: Uint32Array, n: number): number {
    if (!pktmbufAllocInit(this.pool, out, n, 0, this.size, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += n;
      return 0;
    }
    if (this.copy) {
      // All from this.pool: the view resolves it once.
      const v = this.v;
      for (let i = 0; i < n; i++) {
        v.at(out[i]);
        v.u8.set(this.template, v.data);
      }
    }
    const size = this.size;
    this.stats[this.s + RXQ_PACKETS] += n;
    this.stats[this.s + RXQ_BYTES] += n * size;
    return n;
  }
}

/** RX of a no-rx port: never a packet. */
class NoRx implements RxQueue {
  rxBurst(_out: Uint32Array, _n: number): number {
    return 0;
  }
}

/** TX: count and free. */
class NullTx implements TxQueue {
  private declare readonly copy: boolean;
  private declare readonly stats: Float64Array;
  private declare readonly s: number;
  private declare readonly sink: Uint8Array;
  private declare readonly v: MbufView;
  constructor(copy: boolean, stats: Float64Array, s: number, size: number) {
    this.copy = copy;
    this.stats = stats;
    this.s = s;
    this.sink = new Uint8Array(Math.max(size, 9000));
    this.v = new MbufView();
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    if (this.copy) {
      // Read each frame, as a device would.
      const sink = this.sink, v = this.v;
      for (let i = 0; i < n; i++) {
        v.at(pkts[off + i]);
        const d = v.data, u8 = v.u8;
        for (let j = 0, l = v.dataLen; j < l; j++) sink[j] = u8[d + j];
      }
    }
    this.stats[this.s + TXQ_BYTES] += pktmbufFreeBulk(pkts, n, off);
    this.stats[this.s + TXQ_PACKETS] += n;
    return n;
  }
}

/** Rebuild RX queue q in this thread. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  const d = port.rxq[q] as NullQueueData;
  if (d.noRx) return new NoRx();
  return new NullRx(Mempool.attach(port.rxPools[q]), port.port, d.size, d.copy, stats, rxqStatsBase(q));
}

/** Rebuild TX queue q in this thread. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  const d = port.txq[q] as NullQueueData;
  return new NullTx(d.copy, stats, txqStatsBase(q), d.size);
}
