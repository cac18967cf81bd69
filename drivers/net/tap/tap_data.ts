/**
 * net_tap data path: one non-blocking read() per received frame straight into the mbuf's data
 * room, one write() per sent frame straight from it (a TAP fd carries one frame per call, so a
 * system call per packet is inherent here; everything else allocates nothing).
 */
import { readRaw, writeRaw, write as writeBuf, OsError, E } from '../../../src/os/libc.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { copyBytes } from '../../../lib/net/copy.js';
import {
  type PortData, type RxQueue, type TxQueue, type RxInterrupt, rxqStatsBase, txqStatsBase,
  RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_NOMBUF, RXQ_INTERRUPTS, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
} from '../../../lib/ethdev/ethdev.js';
import { FdRxInterrupt } from '../../../lib/ethdev/rx_intr.js';

/** Per-queue plain data. */
export interface TapQueueData {
  fd: number;
  /** give the RX queue an Rx interrupt (the port was configured with intr.rxq) */
  intr?: boolean;
}

// errno values from the one table (src/os/libc.ts), copied into module constants: the burst loops
// compare them per call, and a module constant costs no import-binding check per use.
const EAGAIN = E.EAGAIN;

class TapRx implements RxQueue {
  private readonly room: number;
  private readonly v = new MbufView();
  /** The TAP fd as Rx interrupt: readable (level) while a frame waits, so arming needs no re-check. */
  readonly intr?: RxInterrupt;
  constructor(private readonly fd: number, private readonly pool: Mempool, private readonly port: number, private readonly stats: Float64Array, private readonly s: number, intr: boolean) {
    this.room = pool.userWord(1);
    if (intr) this.intr = new FdRxInterrupt(fd, stats, s + RXQ_INTERRUPTS);
  }

  rxBurst(out: Uint32Array, n: number): number {
    const pool = this.pool;
    if (!pktmbufAllocInit(pool, out, n, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += n;
      return 0;
    }
    const v = this.v;
    let got = 0, bytes = 0, errors = 0;
    while (got < n) {
      v.at(out[got]);
      const r = readRaw(this.fd, v.dataVa, this.room);
      if (r < 0) {
        if (r !== -EAGAIN) errors++;
        break;
      }
      v.setLen(r);
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
  private readonly v = new MbufView();
  constructor(private readonly fd: number, private readonly stats: Float64Array, private readonly s: number) {}

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    const v = this.v;
    let k = 0, errors = 0;
    for (; k < n; k++) {
      v.at(pkts[off + k]);
      let r: number;
      if (v.next === MBUF_NONE) {
        r = writeRaw(this.fd, v.dataVa, v.dataLen);
      } else {
        r = this.writeChain();
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

  /** A chained frame (the view is at its first segment): gather the segments, then one write. Rare: the slow path. */
  private writeChain(): number {
    const v = this.v;
    let at = 0;
    for (;;) {
      const len = v.dataLen;
      if (at + len > this.flat.length) return -90; // EMSGSIZE
      copyBytes(this.flat, this.flat32, at, v.u8, v.u32, v.data, len);
      at += len;
      const next = v.next;
      if (next === MBUF_NONE) break;
      v.at(next);
    }
    return writeFlat(this.fd, this.flat, at);
  }
}

/** write() of a JS buffer, with -errno instead of an exception (slow path only). */
function writeFlat(fd: number, b: Uint8Array, len: number): number {
  try {
    return writeBuf(fd, b, len);
  } catch (e) {
    return e instanceof OsError ? -e.errno : -E.EIO;
  }
}

/** Rebuild RX queue q in this thread. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  const d = port.rxq[q] as TapQueueData;
  return new TapRx(d.fd, Mempool.attach(port.rxPools[q]), port.port, stats, rxqStatsBase(q), d.intr === true);
}

/** Rebuild TX queue q in this thread. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  return new TapTx((port.txq[q] as TapQueueData).fd, stats, txqStatsBase(q));
}
