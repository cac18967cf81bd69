/**
 * net_tap data path: one non-blocking read() per received frame straight into the mbuf's data
 * room, one write() per sent frame straight from it (a TAP fd carries one frame per call, so a
 * system call per packet is inherent here; everything else allocates nothing).
 */
import { readRaw, writeRaw, write as writeBuf, OsError } from '../../../src/os/libc.js';
import { Mempool, poolOf } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, MBUF_HDR, MBUF_NONE, F_DATA_OFF, F_DATA_LEN, F_PKT_LEN, F_NEXT } from '../../../lib/mempool/mbuf.js';
import { copyBytes } from '../../../lib/net/copy.js';
import {
  type PortData, type RxQueue, type TxQueue, rxqStatsBase, txqStatsBase,
  RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_NOMBUF, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
} from '../../../lib/ethdev/ethdev.js';

/** Per-queue plain data. */
export interface TapQueueData {
  fd: number;
}

const EAGAIN = 11;

class TapRx implements RxQueue {
  private readonly room: number;
  constructor(private readonly fd: number, private readonly pool: Mempool, private readonly port: number, private readonly stats: Float64Array, private readonly s: number) {
    this.room = pool.userWord(1);
  }

  rxBurst(out: Uint32Array, n: number): number {
    const pool = this.pool;
    if (!pktmbufAllocInit(pool, out, n, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += n;
      return 0;
    }
    let got = 0, bytes = 0, errors = 0;
    while (got < n) {
      const o = pool.offsetOf(out[got]);
      const r = readRaw(this.fd, pool.va + o + MBUF_HDR + pool.u16[(o + F_DATA_OFF) >> 1], this.room);
      if (r < 0) {
        if (r !== -EAGAIN) errors++;
        break;
      }
      pool.u16[(o + F_DATA_LEN) >> 1] = r;
      pool.u32[(o + F_PKT_LEN) >> 2] = r;
      bytes += r;
      got++;
    }
    if (got < n) pool.freeBulk(out, n - got, got);
    if (got > 0) {
      this.stats[this.s + RXQ_PACKETS] += got;
      this.stats[this.s + RXQ_BYTES] += bytes;
    }
    if (errors > 0) this.stats[this.s + RXQ_ERRORS] += errors;
    return got;
  }
}

class TapTx implements TxQueue {
  /** frames of several segments are gathered here first */
  private readonly flat = new Uint8Array(65536);
  private readonly flat32 = new Uint32Array(this.flat.buffer);
  constructor(private readonly fd: number, private readonly stats: Float64Array, private readonly s: number) {}

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    let k = 0, errors = 0;
    for (; k < n; k++) {
      const m = pkts[off + k];
      const p = poolOf(m);
      const o = p.offsetOf(m);
      let r: number;
      if (p.u32[(o + F_NEXT) >> 2] === MBUF_NONE) {
        r = writeRaw(this.fd, p.va + o + MBUF_HDR + p.u16[(o + F_DATA_OFF) >> 1], p.u16[(o + F_DATA_LEN) >> 1]);
      } else {
        r = this.writeChain(m);
      }
      if (r === -EAGAIN) break; // the kernel's queue is full: the rest stays the caller's
      if (r < 0) errors++; // interface down or gone: the frame is dropped and counted
    }
    const bytes = pktmbufFreeBulk(pkts, k, off);
    this.stats[this.s + TXQ_PACKETS] += k - errors;
    this.stats[this.s + TXQ_BYTES] += bytes;
    if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
    return k;
  }

  /** A chained frame: gather the segments, then one write. Rare: the slow path. */
  private writeChain(m: number): number {
    let at = 0;
    for (let seg = m; seg !== MBUF_NONE; seg = poolOf(seg).u32[(poolOf(seg).offsetOf(seg) + F_NEXT) >> 2]) {
      const p = poolOf(seg);
      const o = p.offsetOf(seg);
      const len = p.u16[(o + F_DATA_LEN) >> 1];
      if (at + len > this.flat.length) return -90; // EMSGSIZE
      copyBytes(this.flat, this.flat32, at, p.u8, p.u32, o + MBUF_HDR + p.u16[(o + F_DATA_OFF) >> 1], len);
      at += len;
    }
    return writeFlat(this.fd, this.flat, at);
  }
}

/** write() of a JS buffer, with -errno instead of an exception (slow path only). */
function writeFlat(fd: number, b: Uint8Array, len: number): number {
  try {
    return writeBuf(fd, b, len);
  } catch (e) {
    return e instanceof OsError ? -e.errno : -5;
  }
}

/** Rebuild RX queue q in this thread. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  return new TapRx((port.rxq[q] as TapQueueData).fd, Mempool.attach(port.rxPools[q]), port.port, stats, rxqStatsBase(q));
}

/** Rebuild TX queue q in this thread. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  return new TapTx((port.txq[q] as TapQueueData).fd, stats, txqStatsBase(q));
}
