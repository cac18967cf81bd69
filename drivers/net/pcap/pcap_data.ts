/**
 * net_pcap data path. RX from a file copies the next packets of the preloaded capture (shared
 * memory: bytes and (offset, length) pairs) into fresh mbufs; RX from an interface reads one frame
 * per read(2) straight into an mbuf. TX to a file appends a record header and the frame to the
 * shared 1 MiB buffer and writes the buffer out when the next frame does not fit (the control half
 * flushes the rest at stop); TX to an interface writes each single-segment frame with write(2).
 * Nothing is allocated per packet or per burst.
 */
import { writeSync } from 'node:fs';
import { readRaw, writeRaw, writeNoThrow, E } from '../../../src/os/libc.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { MbufOff, MbufW16, MbufW32 } from '../../../lib/mempool/mbuf_layout.js';
import { copyBytes } from '../../../lib/net/copy.js';
import { PCAP_RECORD_HEADER, putRecordHeader, wallClock } from '../../../lib/pcap/pcap.js';
import {
  type PortData, type RxQueue, type TxQueue, rxqStatsBase, txqStatsBase,
  RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_NOMBUF, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
} from '../../../lib/ethdev/ethdev.js';

/** Index of the TX buffer's fill level (bytes) in its control words. */
export const TX_FILL = 0;
/** Number of Int32 control words of a TX file buffer. */
export const TX_CTL_WORDS = 2;
// errno values from the one table (src/os/libc.ts), copied into module constants: the burst loops
// compare them per call, and a module constant costs no import-binding check per use.
const EAGAIN = E.EAGAIN, ENOBUFS = E.ENOBUFS;

/** Plain data of the RX queue. */
export interface PcapRxData {
  kind: 'file' | 'iface' | 'none';
  /** file: the packets' bytes, their (offset, length) u32 pairs, the count and the shared position */
  bytes?: SharedArrayBuffer;
  index?: SharedArrayBuffer;
  count: number;
  pos?: SharedArrayBuffer;
  infinite: boolean;
  /** iface: the AF_PACKET socket */
  fd: number;
}

/** Plain data of the TX queue. */
export interface PcapTxData {
  kind: 'file' | 'iface' | 'drop';
  /** file: the capture file's fd; iface: the socket's */
  fd: number;
  buf?: SharedArrayBuffer;
  ctl?: SharedArrayBuffer;
  snaplen: number;
}

/** RX that never receives. */
class NoRx implements RxQueue {
  rxBurst(): number {
    return 0;
  }
}

/** RX from a preloaded capture file. */
class FileRx implements RxQueue {
  // declare: no class-field definition to undefined first, which would make every field a
  // generic tagged one (numbers boxed or tag-checked, views map-checked) in optimized code.
  private declare readonly u8: Uint8Array;
  private declare readonly u32: Uint32Array;
  private declare readonly idx: Uint32Array;
  private declare readonly pos: Int32Array;
  private declare readonly room: number;
  private declare readonly count: number;
  private declare readonly infinite: boolean;
  private declare readonly pool: Mempool;
  private declare readonly port: number;
  private declare readonly stats: Float64Array;
  private declare readonly s: number;

  constructor(d: PcapRxData, pool: Mempool, port: number, stats: Float64Array, s: number) {
    this.u8 = new Uint8Array(d.bytes!);
    this.u32 = new Uint32Array(d.bytes!, 0, d.bytes!.byteLength >>> 2);
    this.idx = new Uint32Array(d.index!);
    this.pos = new Int32Array(d.pos!);
    this.count = d.count;
    this.infinite = d.infinite;
    this.pool = pool;
    this.port = port;
    this.stats = stats;
    this.s = s;
    this.room = pool.userWord(1);
  }

  rxBurst(out: Uint32Array, n: number): number {
    const count = this.count;
    let p = this.pos[0];
    if (p >= count) {
      if (!this.infinite || count === 0) return 0;
      p = 0;
    }
    const want = this.infinite ? n : Math.min(n, count - p);
    const pool = this.pool;
    if (!pktmbufAllocInit(pool, out, want, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += want;
      return 0;
    }
    // Every mbuf is from this pool: its views and geometry in locals, the header indexed directly.
    const idx = this.idx, src8 = this.u8, src32 = this.u32, room = this.room;
    const dst8 = pool.u8, dst16 = pool.u16, dst32 = pool.u32;
    let got = 0, bytes = 0, errors = 0;
    for (let i = 0; i < want; i++) {
      if (p >= count) p = 0; // infinite: round again
      const off = idx[2 * p], len = idx[2 * p + 1];
      p++;
      if (len > room) {
        errors++; // larger than an mbuf's data room
        continue;
      }
      const o = pool.offsetOf(out[got]);
      dst16[(o >> 1) + MbufW16.DataLen] = len;
      dst32[(o >> 2) + MbufW32.PktLen] = len;
      copyBytes(dst8, dst32, o + MbufOff.Buf + dst16[(o >> 1) + MbufW16.DataOff], src8, src32, off, len);
      bytes += len;
      got++;
    }
    if (got < want) pool.freeBulk(out, want - got, got);
    this.pos[0] = p;
    this.stats[this.s + RXQ_PACKETS] += got;
    this.stats[this.s + RXQ_BYTES] += bytes;
    if (errors > 0) this.stats[this.s + RXQ_ERRORS] += errors;
    return got;
  }
}

/** RX from an AF_PACKET socket: one read(2) per frame, into the mbuf. */
class IfaceRx implements RxQueue {
  private readonly room: number;
  private readonly v = new MbufView();

  constructor(private readonly fd: number, private readonly pool: Mempool, private readonly port: number, private readonly stats: Float64Array, private readonly s: number) {
    this.room = pool.userWord(1);
  }

  rxBurst(out: Uint32Array, n: number): number {
    if (!pktmbufAllocInit(this.pool, out, n, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += n;
      return 0;
    }
    const v = this.v, pool = this.pool;
    let got = 0, bytes = 0, errors = 0;
    while (got < n) {
      v.at(out[got]);
      const r = readRaw(this.fd, pool.va + v.data, this.room);
      if (r < 0) {
        if (r !== -EAGAIN) errors++;
        break;
      }
      v.setLen(r);
      bytes += r;
      got++;
    }
    if (got < n) pool.freeBulk(out, n - got, got);
    this.stats[this.s + RXQ_PACKETS] += got;
    this.stats[this.s + RXQ_BYTES] += bytes;
    if (errors > 0) this.stats[this.s + RXQ_ERRORS] += errors;
    return got;
  }
}

/** TX that drops (counted as sent). */
class DropTx implements TxQueue {
  constructor(private readonly stats: Float64Array, private readonly s: number) {}

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    this.stats[this.s + TXQ_BYTES] += pktmbufFreeBulk(pkts, n, off);
    this.stats[this.s + TXQ_PACKETS] += n;
    return n;
  }
}

/** TX into a pcap file through the shared buffer. */
class FileTx implements TxQueue {
  private readonly u8: Uint8Array;
  private readonly u32: Uint32Array;
  private readonly dv: DataView;
  private readonly ctl: Int32Array;
  private readonly cap: number;
  private readonly now = new Float64Array(2);
  private readonly v = new MbufView();

  constructor(private readonly fd: number, d: PcapTxData, private readonly stats: Float64Array, private readonly s: number) {
    this.u8 = new Uint8Array(d.buf!);
    this.u32 = new Uint32Array(d.buf!);
    this.dv = new DataView(d.buf!);
    this.ctl = new Int32Array(d.ctl!);
    this.cap = d.snaplen;
  }

  /** Write the buffer's fill to the file; false (and the bytes dropped) when the file refuses. */
  private flush(fill: number): boolean {
    // one write(2) of the whole fill, no allocation; a short write (rare: a full disk) finishes with writeSync
    const r = writeNoThrow(this.fd, this.u8, fill);
    if (r === fill) return true;
    try {
      for (let done = r > 0 ? r : 0; done < fill;) done += writeSync(this.fd, this.u8, done, fill - done);
      return true;
    } catch {
      return false;
    }
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    const v = this.v, buf8 = this.u8, buf32 = this.u32, size = buf8.byteLength;
    wallClock(this.now);
    const sec = this.now[0], nsec = this.now[1];
    let fill = this.ctl[TX_FILL], errors = 0;
    for (let i = 0; i < n; i++) {
      v.at(pkts[off + i]);
      const len = v.pktLen;
      const cap = len < this.cap ? len : this.cap;
      if (fill + PCAP_RECORD_HEADER + cap > size) {
        if (!this.flush(fill)) errors++;
        fill = 0;
      }
      putRecordHeader(this.dv, fill, sec, nsec, cap, len);
      let at = fill + PCAP_RECORD_HEADER, left = cap, src = v.data;
      for (;;) {
        const sl = v.dataLen < left ? v.dataLen : left;
        copyBytes(buf8, buf32, at, v.u8, v.u32, src, sl);
        at += sl;
        left -= sl;
        const next = v.next;
        if (left === 0 || next === MBUF_NONE) break;
        src = v.at(next).data;
      }
      fill = at;
    }
    Atomics.store(this.ctl, TX_FILL, fill);
    this.stats[this.s + TXQ_BYTES] += pktmbufFreeBulk(pkts, n, off);
    this.stats[this.s + TXQ_PACKETS] += n;
    if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
    return n;
  }
}

/** TX to an AF_PACKET socket: one write(2) per single-segment frame. */
class IfaceTx implements TxQueue {
  private readonly v = new MbufView();

  constructor(private readonly fd: number, private readonly stats: Float64Array, private readonly s: number) {}

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    const v = this.v;
    let k = 0, errors = 0;
    for (; k < n; k++) {
      v.at(pkts[off + k]);
      if (v.next !== MBUF_NONE) {
        errors++; // chained frames are not sent (dropped with the sent ones below)
        continue;
      }
      const r = writeRaw(this.fd, v.pool!.va + v.data, v.dataLen);
      if (r === -EAGAIN || r === -ENOBUFS) break; // the socket is full: the rest stay the caller's
      if (r < 0) errors++;
    }
    const bytes = pktmbufFreeBulk(pkts, k, off);
    this.stats[this.s + TXQ_PACKETS] += k - errors;
    this.stats[this.s + TXQ_BYTES] += bytes;
    if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
    return k;
  }
}

/** Rebuild the RX queue in this thread. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  const d = port.rxq[q] as PcapRxData;
  if (d.kind === 'none') return new NoRx();
  const pool = Mempool.attach(port.rxPools[q]);
  if (d.kind === 'file') return new FileRx(d, pool, port.port, stats, rxqStatsBase(q));
  return new IfaceRx(d.fd, pool, port.port, stats, rxqStatsBase(q));
}

/** Rebuild the TX queue in this thread. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  const d = port.txq[q] as PcapTxData;
  if (d.kind === 'file') return new FileTx(d.fd, d, stats, txqStatsBase(q));
  if (d.kind === 'iface') return new IfaceTx(d.fd, stats, txqStatsBase(q));
  return new DropTx(stats, txqStatsBase(q));
}
