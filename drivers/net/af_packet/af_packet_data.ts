/**
 * net_af_packet data path. RX walks the TPACKET_V3 RX ring block by block (a block is ours while
 * its status has TP_STATUS_USER; we give it back by writing TP_STATUS_KERNEL) and copies each frame
 * into an mbuf. TX copies each mbuf into the next free frame of the TX ring, marks it
 * TP_STATUS_SEND_REQUEST, and kicks the kernel once per burst with send(). Frames are copied: the
 * rings are the kernel's memory, mbufs are ours.
 */
import { viewOf, sendKick, MSG_DONTWAIT, E } from '../../../src/os/libc.js';
import { TSO } from '../../../src/os/arch.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { copyBytes } from '../../../lib/net/copy.js';
import {
  type PortData, type RxQueue, type TxQueue, type RxInterrupt, rxqStatsBase, txqStatsBase,
  RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_NOMBUF, RXQ_INTERRUPTS, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
} from '../../../lib/ethdev/ethdev.js';
import { FdRxInterrupt } from '../../../lib/ethdev/rx_intr.js';
import {
  BD_BLOCK_STATUS, BD_NUM_PKTS, BD_OFFSET_TO_FIRST_PKT, H3_NEXT_OFFSET, H3_SNAPLEN, H3_LEN, H3_STATUS, H3_MAC,
  TP_STATUS_USER, TP_STATUS_KERNEL, TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST, TP_STATUS_WRONG_FORMAT, TPACKET3_TX_DATA,
  SIZEOF_VIRTIO_NET_HDR, VNET_HDR_LEN,
} from './uapi.js';

/** Per-queue plain data: the socket and where its rings are mapped. */
export interface AfPacketQueueData {
  fd: number;
  va: bigint;
  len: number;
  blockSize: number;
  blockCount: number;
  frameSize: number;
  frameCount: number;
  /** byte offset of the TX ring in the mapping (after the RX ring) */
  txOffset: number;
  /** give the RX queue an Rx interrupt (the port was configured with intr.rxq) */
  intr?: boolean;
  /** the socket has PACKET_VNET_HDR: TX frames start with a virtio_net_hdr */
  vnetHdr?: boolean;
}

// errno values from the one table (src/os/libc.ts), copied into module constants: the burst loops
// compare them per call, and a module constant costs no import-binding check per use.
const EAGAIN = E.EAGAIN, ENOBUFS = E.ENOBUFS;
/** TX frames up to this size are copied into a linear skb by the kernel (with PACKET_VNET_HDR). */
const LINEAR_MAX = 255;

/** Typed views over a queue's mapped rings (one mapping: RX ring, then TX ring). */
class RingViews {
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
  constructor(q: AfPacketQueueData) {
    const ab = viewOf(q.va, q.len);
    this.u8 = new Uint8Array(ab);
    this.u16 = new Uint16Array(ab);
    this.u32 = new Uint32Array(ab);
    this.i32 = new Int32Array(ab);
  }
}

class AfPacketRx extends RingViews implements RxQueue {
  private readonly bs: number;
  private readonly nblocks: number;
  private readonly room: number;
  private readonly v = new MbufView();
  private block = 0;
  private held = false;
  private left = 0;
  private pkt = 0;
  /**
   * The socket fd as Rx interrupt: it polls readable (level) once the kernel retires a block to
   * us (full, or after the ring's block timeout), the moment rxBurst would see it too.
   */
  readonly intr?: RxInterrupt;

  constructor(q: AfPacketQueueData, private readonly pool: Mempool, private readonly port: number, private readonly stats: Float64Array, private readonly s: number) {
    super(q);
    this.bs = q.blockSize;
    this.nblocks = q.blockCount;
    this.room = pool.userWord(1);
    if (q.intr === true) this.intr = new FdRxInterrupt(q.fd, stats, s + RXQ_INTERRUPTS, () => this.pending());
  }

  /** Frames are waiting: some left in the held block, or the next block is already ours. No system call. */
  private pending(): boolean {
    if (this.left > 0) return true;
    const next = this.held ? (this.block + 1 === this.nblocks ? 0 : this.block + 1) : this.block;
    return (Atomics.load(this.i32, (next * this.bs + BD_BLOCK_STATUS) >> 2) & TP_STATUS_USER) !== 0;
  }

  /** Take the next block if the kernel has handed it over; gives the finished one back first. */
  private nextBlock(): boolean {
    if (this.held) {
      Atomics.store(this.i32, (this.block * this.bs + BD_BLOCK_STATUS) >> 2, TP_STATUS_KERNEL);
      this.held = false;
      this.block = this.block + 1 === this.nblocks ? 0 : this.block + 1;
    }
    const b = this.block * this.bs;
    if ((Atomics.load(this.i32, (b + BD_BLOCK_STATUS) >> 2) & TP_STATUS_USER) === 0) return false;
    this.held = true;
    this.left = this.u32[(b + BD_NUM_PKTS) >> 2];
    this.pkt = b + this.u32[(b + BD_OFFSET_TO_FIRST_PKT) >> 2];
    return true;
  }

  rxBurst(out: Uint32Array, n: number): number {
    if (this.left === 0 && !this.nextBlock()) return 0;
    const pool = this.pool;
    if (!pktmbufAllocInit(pool, out, n, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += n;
      return 0;
    }
    const r8 = this.u8, r16 = this.u16, r32 = this.u32, v = this.v;
    let got = 0, bytes = 0, errors = 0;
    while (got < n) {
      if (this.left === 0 && !this.nextBlock()) break;
      if (this.left === 0) continue; // an empty block (timed out): on to the next
      const h = this.pkt;
      const len = r32[(h + H3_SNAPLEN) >> 2];
      this.pkt = h + r32[(h + H3_NEXT_OFFSET) >> 2];
      this.left--;
      if (len > this.room || len !== r32[(h + H3_LEN) >> 2]) {
        errors++; // larger than an mbuf, or truncated by the ring's frame size
        continue;
      }
      v.at(out[got]); // all from this.pool: the view resolves it once
      v.setLen(len);
      copyBytes(v.u8, v.u32, v.data, r8, r32, h + r16[(h + H3_MAC) >> 1], len);
      bytes += len;
      got++;
    }
    if (got < n) pool.freeBulk(out, n - got, got);
    if (this.left === 0 && this.held) this.nextBlock(); // give a finished block back at once
    this.stats[this.s + RXQ_PACKETS] += got;
    this.stats[this.s + RXQ_BYTES] += bytes;
    if (errors > 0) this.stats[this.s + RXQ_ERRORS] += errors;
    return got;
  }
}

class AfPacketTx extends RingViews implements TxQueue {
  private readonly base: number;
  private readonly fsize: number;
  private readonly nframes: number;
  /** bytes of virtio_net_hdr before each frame's data: 0, or 10 with PACKET_VNET_HDR */
  private readonly vh: number;
  private readonly v = new MbufView();
  private idx = 0;
  /** frame status read and published with plain accesses (TSO CPUs: x86), else with Atomics */
  private readonly plainStatus = TSO;

  constructor(q: AfPacketQueueData, private readonly fd: number, private readonly stats: Float64Array, private readonly s: number) {
    super(q);
    this.base = q.txOffset;
    this.fsize = q.frameSize;
    this.nframes = q.frameCount;
    this.vh = q.vnetHdr === true ? SIZEOF_VIRTIO_NET_HDR : 0;
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    const r8 = this.u8, r16 = this.u16, r32 = this.u32, i32 = this.i32, v = this.v;
    let k = 0, errors = 0;
    for (; k < n; k++) {
      const f = this.base + this.idx * this.fsize;
      // (x86 loads are acquires: a plain load, not the builtin call)
      const st = this.plainStatus ? i32[(f + H3_STATUS) >> 2] : Atomics.load(i32, (f + H3_STATUS) >> 2);
      if (st === TP_STATUS_WRONG_FORMAT) errors++; // the kernel refused that frame earlier
      else if (st !== TP_STATUS_AVAILABLE) break; // ring full: the rest stays the caller's
      v.at(pkts[off + k]);
      const len = v.pktLen;
      // Data offset (PACKET_TX_HAS_OFF) chosen so frame and mbuf data agree modulo 4: word copies.
      // With PACKET_VNET_HDR a virtio_net_hdr comes first. For a small frame its hdr_len is the
      // whole frame: the kernel copies it into one linear skb instead of mapping the ring's page
      // as a zero-copy fragment, which a local receiver (veth, a tap) must copy out again
      // (skb_copy_ubufs: a page allocation per frame). Larger frames keep the zero-copy path.
      const d0 = v.data, vh = this.vh;
      const doff = TPACKET3_TX_DATA + ((d0 - (f + TPACKET3_TX_DATA + vh)) & 3);
      if (doff + vh + len > this.fsize) {
        errors++; // does not fit a frame: dropped (freed below with the sent ones)
        Atomics.store(i32, (f + H3_STATUS) >> 2, TP_STATUS_AVAILABLE);
        continue;
      }
      if (vh !== 0) {
        const h = f + doff; // all 0 (no offloads, gso none), hdr_len = len (LE) for a small frame
        for (let b = 0; b < vh; b++) r8[h + b] = 0;
        if (len <= LINEAR_MAX) {
          r8[h + VNET_HDR_LEN] = len;
          r8[h + VNET_HDR_LEN + 1] = 0;
        }
      }
      // The first segment's data starts at d0; further ones (rare) each move the view.
      let at = f + doff + vh, src = d0;
      for (;;) {
        const sl = v.dataLen;
        copyBytes(r8, r32, at, v.u8, v.u32, src, sl);
        at += sl;
        const next = v.next;
        if (next === MBUF_NONE) break;
        src = v.at(next).data;
      }
      r32[(f + H3_NEXT_OFFSET) >> 2] = 0;
      r32[(f + H3_LEN) >> 2] = len + vh;
      r32[(f + H3_SNAPLEN) >> 2] = len + vh;
      r16[(f + H3_MAC) >> 1] = doff;
      // The frame's bytes before its status. x86 keeps stores in order (TSO): a plain store
      // publishes like the store-release the kernel's side pairs with; Atomics.store is a call to
      // V8's builtin and an xchg, a full fence per frame. Other CPUs keep the fence.
      if (this.plainStatus) i32[(f + H3_STATUS) >> 2] = TP_STATUS_SEND_REQUEST;
      else Atomics.store(i32, (f + H3_STATUS) >> 2, TP_STATUS_SEND_REQUEST);
      this.idx = this.idx + 1 === this.nframes ? 0 : this.idx + 1;
    }
    if (k > 0) {
      const r = sendKick(this.fd, MSG_DONTWAIT);
      // EAGAIN/ENOBUFS: frames stay queued for the next kick; anything else (interface down or
      // gone) is counted, and the ring keeps the frames until the kernel can take them.
      if (r < 0 && r !== -EAGAIN && r !== -ENOBUFS) errors++;
    }
    const bytes = pktmbufFreeBulk(pkts, k, off);
    this.stats[this.s + TXQ_PACKETS] += k;
    this.stats[this.s + TXQ_BYTES] += bytes;
    if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
    return k;
  }
}

/** Rebuild RX queue q in this thread. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  return new AfPacketRx(port.rxq[q] as AfPacketQueueData, Mempool.attach(port.rxPools[q]), port.port, stats, rxqStatsBase(q));
}

/** Rebuild TX queue q in this thread. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  const d = port.txq[q] as AfPacketQueueData;
  return new AfPacketTx(d, d.fd, stats, txqStatsBase(q));
}
