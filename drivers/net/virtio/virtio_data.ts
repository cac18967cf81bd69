/**
 * net_virtio data path: split virtqueues in DMA memory, rebuilt in the lcore that owns them.
 *
 * RX: every descriptor always holds one mbuf of the queue's pool, posted device-writable from
 * 12 bytes before the mbuf's data offset, so the virtio_net_hdr lands in the headroom and the frame
 * at data_off. A burst first counts the used entries that make up whole packets (with
 * MRG_RXBUF a packet spans num_buffers entries; only a full buffer can be followed by another,
 * so num_buffers is read only there), allocates that many replacements in one
 * pktmbufAllocInit, then hands the filled mbufs out (chained when merged) and reposts the same
 * descriptors with the replacements. No replacement, no receive: the packets wait in the ring.
 *
 * TX: a single-segment mbuf that owns its headroom gets a zeroed header written in front of its
 * data and goes out as one descriptor; anything else (chains, shared mbufs, no headroom) takes a
 * header slot of the queue's own and one descriptor per segment. Each segment is recorded on its
 * descriptor; completed packets are freed from that record at the start of the next burst, in one
 * pktmbufFreeRecorded.
 *
 * Both directions set VRING_AVAIL_F_NO_INTERRUPT (control half, at start) and ring the doorbell
 * only when the used ring's flags lack VRING_USED_F_NO_NOTIFY, once per burst: a polling device
 * costs no MMIO write at all. The doorbell is an MmioReg chosen at set-up: a 16-bit store into the
 * mapped notify register, or (notify area not mmap'd) pwrite on the kernel VFIO fd, an 8-byte
 * write to the ioeventfd a vfio-user server offered for it, or else a no-reply REGION_WRITE on the
 * vfio-user socket. Each doorbell is counted (rx/tx_qN_kicks), and by way: _kicks_eventfd, _kicks_message.
 *
 * Rx interrupts (the port configured with intr.rxq): the control half routes the queue's MSI-X
 * vector to an eventfd; enable() clears VRING_AVAIL_F_NO_INTERRUPT and re-reads the used index
 * (seq-cst store then load against the device's used-index store then flags load: one of the two
 * sides sees the other), disable() sets the flag again and drains the eventfd into RXQ_INTERRUPTS.
 *
 * Distrust: the device may write any DMA memory (a vfio-user device maps all of it), so nothing
 * the driver relies on lives there. The bookkeeping (the mbuf behind each descriptor, TX chain
 * lengths and next links, which RX descriptors are posted, the last used index) is a
 * SharedArrayBuffer of this process (VirtqBook); the descriptor table and the rings are only
 * written, or read and checked: a used id must be below the queue size and name a descriptor the
 * driver posted and has not taken back (RX: posted before this burst, so an id used twice is seen;
 * TX: a chain head in flight), a length must fit the buffer, num_buffers must fit the ring and what
 * was counted, the used index may not run more than the queue size ahead, and a received mbuf's
 * header is rewritten (MbufView.rearm) before it is handed out. A sent mbuf's header is DMA memory
 * the device may rewrite while it holds the mbuf: each segment is recorded when it is queued (with
 * whether it was shared), and completion and stop free from the record (pktmbufFreeRecorded),
 * never following `next` or believing refcnt and nb_segs as the device left them. A lying device
 * loses its packets (counted as errors), never a driver mbuf, and never makes the driver free one
 * twice.
 */
import { MappedBar, type BarData, type MmioReg } from '../../../src/iommu/bar.js';
import { viewOf, readNoThrow, E } from '../../../src/os/libc.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeRecorded, pktmbufFree, pktmbufHeadroom, pktmbufDataRoom, MBUF_HDR, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { MbufOff, MbufW32, MbufVal } from '../../../lib/mempool/mbuf_layout.js';
import {
  type PortData, type RxQueue, type RxInterrupt, type TxQueue, rxqStatsBase, txqStatsBase,
  RXQ_INTERRUPTS, RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_NOMBUF, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
} from '../../../lib/ethdev/ethdev.js';
import { NET_HDR_SIZE, NET_HDR_NUM_BUFFERS, VRING_USED_F_NO_NOTIFY, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, USED_FLAGS } from '../../../lib/virtio/virtio.js';
import {
  type VirtqLayout, HDR_SLOT, USED_ELEM_WORDS, availIdxWord, availRingWord, usedIdxWord, usedRingWord, iovaHalves,
} from './virtqueue.js';

/** VirtqBook.state words: the last used index the data half consumed, the RX posting epoch, the avail index the driver published. */
export const BK_LAST_USED = 0, BK_EPOCH = 1, BK_AVAIL_IDX = 2;
const BK_STATE_BYTES = 16;

/**
 * The driver's bookkeeping of one virtqueue, in a SharedArrayBuffer that only this process's
 * threads see (never DMA memory, which the device may rewrite): the control half creates it and
 * frees what `mbufs` holds at stop, the lcore that owns the queue updates it.
 */
export class VirtqBook {
  /** the mbuf each descriptor holds (RX: always one; TX: the segment whose data it points to, MBUF_NONE for a header slot or a free descriptor) */
  readonly mbufs: Uint32Array;
  /** TX: 1 where that segment was given with more than one reference (refcnt > 1 when sent) */
  readonly shared: Uint8Array;
  /** RX: the epoch in which the descriptor was posted (0: not posted) */
  readonly posted: Uint32Array;
  /** TX: descriptors in the chain starting at this head (0: not a head in flight) */
  readonly chain: Uint16Array;
  /** TX: the driver's own copy of each descriptor's next link */
  readonly next: Uint16Array;
  /** [BK_LAST_USED, BK_EPOCH, BK_AVAIL_IDX] */
  readonly state: Uint32Array;

  /** Views over sab for a queue of size entries (sab from VirtqBook.create). */
  constructor(readonly sab: SharedArrayBuffer, readonly size: number) {
    if (sab.byteLength !== VirtqBook.bytes(size)) throw new RangeError(`virtqueue bookkeeping of ${sab.byteLength} bytes does not fit a queue of ${size}`);
    this.state = new Uint32Array(sab, 0, BK_STATE_BYTES >> 2);
    this.mbufs = new Uint32Array(sab, BK_STATE_BYTES, size);
    this.posted = new Uint32Array(sab, BK_STATE_BYTES + 4 * size, size);
    this.chain = new Uint16Array(sab, BK_STATE_BYTES + 8 * size, size);
    this.next = new Uint16Array(sab, BK_STATE_BYTES + 10 * size, size);
    this.shared = new Uint8Array(sab, BK_STATE_BYTES + 12 * size, size);
  }

  /** Bytes of the bookkeeping of a queue of size entries. */
  static bytes(size: number): number {
    return BK_STATE_BYTES + 13 * size;
  }

  /** Fresh bookkeeping: no mbufs, nothing posted, used index 0, epoch 1 (what RX descriptors posted at start carry). */
  static create(size: number): VirtqBook {
    const b = new VirtqBook(new SharedArrayBuffer(VirtqBook.bytes(size)), size);
    b.mbufs.fill(MBUF_NONE);
    b.state[BK_EPOCH] = RX_START_EPOCH;
    return b;
  }
}

/** The epoch of RX descriptors posted by the control half at start. */
export const RX_START_EPOCH = 1;

/** Plain data for one queue (RX or TX), built by the control half at start. */
export interface VirtioQueueData {
  /** virtqueue index: 2k for RX queue k, 2k+1 for TX queue k */
  vq: number;
  layout: VirtqLayout;
  /** the queue's memzone */
  va: bigint;
  len: number;
  /** its IOVA as two 32-bit halves (no BigInt on the data path) */
  iovaLo: number;
  iovaHi: number;
  /** the BAR holding the notify register, and the register's offset in it */
  notify: BarData;
  notifyOff: number;
  /** VIRTIO_NET_F_MRG_RXBUF negotiated */
  mergeable: boolean;
  /** float64 index of this queue's doorbell counter (an xstat), or -1 */
  kickStat: number;
  /** float64 indexes of its counters of doorbells rung through an ioeventfd and sent as messages, or -1 */
  kickEventfdStat: number;
  kickMessageStat: number;
  /** RX: the eventfd the queue's MSI-X vector signals (Rx interrupt), or -1 (poll mode only) */
  intrFd: number;
  /** the driver's bookkeeping (VirtqBook), shared with the control half, never with the device */
  book: SharedArrayBuffer;
}

const HDR = NET_HDR_SIZE;
const TWO32 = 0x1_0000_0000;

/** Views and indices over one queue's memzone. */
class QueueViews {
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly size: number;
  readonly mask: number;
  readonly vq: number;
  readonly descW: number;
  readonly availIdxW: number;
  readonly availRingW: number;
  readonly usedIdxW: number;
  readonly usedFlagsW: number;
  readonly usedRingW: number;
  readonly book: VirtqBook;
  /** the doorbell: mapped store or fallback, chosen once here */
  readonly kick: MmioReg;
  readonly notifyOff: number;
  readonly kickStat: number;
  /** the counter of the way this queue's doorbells go (eventfd or message), or -1 */
  readonly kickViaStat: number;
  protected availIdx: number;
  protected lastUsed: number;

  constructor(d: VirtioQueueData, notify: MappedBar) {
    const ab = viewOf(d.va, d.len);
    const l = d.layout;
    this.u8 = new Uint8Array(ab);
    this.u16 = new Uint16Array(ab);
    this.u32 = new Uint32Array(ab);
    this.size = l.size;
    this.mask = l.size - 1;
    this.vq = d.vq;
    this.descW = l.desc >> 2;
    this.availIdxW = availIdxWord(l);
    this.availRingW = availRingWord(l);
    this.usedIdxW = usedIdxWord(l);
    this.usedFlagsW = (l.used + USED_FLAGS) >> 1;
    this.usedRingW = usedRingWord(l);
    this.book = new VirtqBook(d.book, l.size);
    this.kick = notify.reg(d.notifyOff, 2);
    this.notifyOff = d.notifyOff;
    this.kickStat = d.kickStat;
    this.kickViaStat = this.kick.via === 'eventfd' ? d.kickEventfdStat : this.kick.via === 'message' ? d.kickMessageStat : -1;
    // Resume where the last owner of the queue stopped (a queue may be reopened while started).
    this.availIdx = this.book.state[BK_AVAIL_IDX] & 0xffff;
    this.lastUsed = this.book.state[BK_LAST_USED] & 0xffff;
  }

  /** Publish the avail index, then ring the doorbell unless the device said it polls. */
  protected publish(ai: number, stats: Float64Array): void {
    this.book.state[BK_AVAIL_IDX] = ai;
    Atomics.store(this.u16, this.availIdxW, ai);
    // Atomics.store then Atomics.load: a full barrier between our index and the device's flags.
    if ((Atomics.load(this.u16, this.usedFlagsW) & VRING_USED_F_NO_NOTIFY) === 0) {
      this.kick.write(this.vq);
      if (this.kickStat >= 0) stats[this.kickStat]++;
      if (this.kickViaStat >= 0) stats[this.kickViaStat]++;
    }
  }
}

class VirtioRx extends QueueViews implements RxQueue {
  private readonly repl: Uint32Array;
  /** where a descriptor starts inside an mbuf's buffer: headroom - 12 */
  private readonly bufOff: number;
  private readonly room: number;
  /** a posted descriptor's length (header + data room): a used length below it ends the packet */
  private readonly full: number;
  private readonly mergeable: boolean;
  /** byte offset of num_buffers from an RX mbuf's start: the header sits at bufOff in the buffer */
  private readonly nbOff: number;
  /** port | buf_len << 16 of a received mbuf (MbufView.rearm) */
  private readonly portBuf: number;
  private readonly mbufs: Uint32Array;
  private readonly posted: Uint32Array;
  /** the epoch of this burst's reposts: a descriptor posted in it is not in flight yet */
  private epoch: number;
  private readonly v = new MbufView();

  /** the Rx interrupt (the port was configured with intr.rxq) */
  readonly intr?: RxInterrupt;

  constructor(d: VirtioQueueData, notify: MappedBar, private readonly pool: Mempool, private readonly port: number, private readonly stats: Float64Array, private readonly s: number) {
    super(d, notify);
    if (d.intrFd >= 0) this.intr = new VirtioRxInterrupt(d.intrFd, this.u16, d.layout.avail >> 1, this.usedIdxW, this, stats, s + RXQ_INTERRUPTS);
    this.room = pktmbufDataRoom(pool);
    this.full = HDR + this.room;
    this.bufOff = pktmbufHeadroom(pool) - HDR;
    this.nbOff = MBUF_HDR + this.bufOff + NET_HDR_NUM_BUFFERS;
    this.mergeable = d.mergeable;
    this.repl = new Uint32Array(d.layout.size);
    this.portBuf = MbufView.portBufWord(pool, port);
    this.mbufs = this.book.mbufs;
    this.posted = this.book.posted;
    this.epoch = this.book.state[BK_EPOCH];
  }

  /** The used index the next burst starts from. */
  get consumed(): number {
    return this.lastUsed;
  }

  /**
   * num_buffers of the packet starting in descriptor id's mbuf, whose used length is len (1 without
   * MRG_RXBUF, for a bad id, or for a buffer the device did not fill: see rxBurst).
   */
  private numBuffers(id: number, len: number): number {
    if (!this.mergeable || id >= this.size || len < this.full) return 1;
    this.v.at(this.mbufs[id]);
    return this.numBuffersHere();
  }

  /** num_buffers of the packet in the view's mbuf (mergeable only). */
  private numBuffersHere(): number {
    const v = this.v, x = v.off + this.nbOff;
    const nb = v.u8[x] | (v.u8[x + 1] << 8);
    // More buffers than the ring has can never be published: -1 marks the packet bad (dropped, counted)
    return nb === 0 ? 1 : nb > this.size ? -1 : nb;
  }

  /**
   * Put mbuf nm into descriptor id and offer the descriptor at avail slot ai (moves the view to nm).
   * For the further buffers of a merged packet; rxBurst writes the same stores inline for a
   * packet in one buffer (keep the two alike).
   */
  private repost(id: number, nm: number, ai: number, epoch: number): void {
    this.mbufs[id] = nm;
    this.posted[id] = epoch;
    const u32 = this.u32, w = this.descW + (id << 2);
    this.v.at(nm).storeIova(u32, w, this.bufOff);
    this.u16[this.availRingW + (ai & this.mask)] = id;
  }

  rxBurst(out: Uint32Array, n: number): number {
    const u32 = this.u32, mask = this.mask;
    let pending = (Atomics.load(this.u16, this.usedIdxW) - this.lastUsed) & 0xffff;
    if (pending === 0 || n <= 0) return 0;
    // At most size entries can be in flight: a used index further ahead is a lie (the rest is read
    // in later bursts, and fails the checks below), and e never exceeds repl's size.
    if (pending > this.size) pending = this.size;
    // Pass 1: how many used entries make up at most n whole packets.
    let e = 0, pk = 0;
    if (!this.mergeable) {
      e = pk = pending < n ? pending : n;
    } else {
      // A packet spans several buffers only when its first one is full: the device must fill all
      // buffers of a packet but the last (virtio 1.2, 5.1.6.4.2). So num_buffers, in a line of the
      // packet's headroom that the device just wrote from another core, is read only for a full
      // buffer; the used lengths, read here, are on the used ring's lines pass 2 reads anyway. A
      // device that breaks the rule gets the rest of its packet taken as packets of their own,
      // checked like any other (bad ids and lengths are still caught in pass 2).
      const lim = pending < n ? pending : n;
      const at = this.usedRingW + 1, lu = this.lastUsed, full = this.full;
      let i = 0;
      while (i < lim && u32[at + Math.imul((lu + i) & mask, USED_ELEM_WORDS)] < full) i++;
      if (i === lim) e = pk = lim;
    }
    if (e === 0) {
      while (pk < n && e < pending) {
        const w = this.usedRingW + Math.imul((this.lastUsed + e) & mask, USED_ELEM_WORDS);
        const nb = Math.abs(this.numBuffers(u32[w], u32[w + 1]));
        if (e + nb > pending) break; // the rest of this packet is not published yet
        e += nb;
        pk++;
      }
      if (e === 0) return 0;
    }
    const pool = this.pool, repl = this.repl;
    if (!pktmbufAllocInit(pool, repl, e, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += e;
      return 0; // the packets stay in the ring until the pool has mbufs again
    }
    // Pass 2: hand the filled mbufs out and repost their descriptors with the replacements. Every
    // mbuf a descriptor holds is of this queue's pool, so a packet in one buffer (the common case)
    // is handled inline on the pool's words: no call, no pool lookup. A merged packet takes the
    // view (one view for both: each descriptor is reposted before its mbuf is filled in, and a
    // merged segment is linked to the previous one while the view is still there).
    const v = this.v, mergeable = this.mergeable, size = this.size, maxLen = this.room, segOff = this.bufOff, full = this.full;
    const mbufs = this.mbufs, posted = this.posted, portBuf = this.portBuf, headroom = segOff + HDR;
    const pu32 = pool.u32, u16 = this.u16, descW = this.descW, availRingW = this.availRingW, usedRingW = this.usedRingW;
    // pool.offsetOf(h) by hand: this loop is past the compiler's inlining budget
    const objOff = pool.objOffset, objSize = pool.objSize;
    const lenOff0 = (headroom << 16) >>> 0; // data_len | data_off << 16, data_len to be or-ed in
    // A descriptor is in flight when posted in an earlier burst and not taken back since: reposts
    // carry this burst's epoch (never 0), so an id the device returns twice is caught.
    let epoch = (this.epoch + 1) >>> 0;
    if (epoch === 0) epoch = 1;
    this.epoch = epoch;
    this.book.state[BK_EPOCH] = epoch;
    let last = this.lastUsed, ai = this.availIdx, r = 0, c = 0, got = 0, bytes = 0, errors = 0;
    while (c < e) {
      let w = usedRingW + Math.imul(last & mask, USED_ELEM_WORDS);
      let id = u32[w];
      let len = u32[w + 1];
      last = (last + 1) & 0xffff;
      c++;
      // Out of range, or not in flight (never posted, or used twice): no descriptor to repost.
      if (id >= size || posted[id] === 0 || posted[id] === epoch) { errors++; continue; }
      const m = mbufs[id];
      // Repost: the replacement's buffer IOVA + bufOff into the descriptor (length and flags stay).
      const nm = repl[r++];
      mbufs[id] = nm;
      posted[id] = epoch;
      const nw = (objOff + Math.imul(nm & 0xffffff, objSize)) >> 2, dw = descW + (id << 2), lo = pu32[nw + MbufW32.BufIovaLo] + segOff;
      u32[dw] = lo; // wraps modulo 2^32; the carry goes to the high word
      u32[dw + 1] = pu32[nw + MbufW32.BufIovaHi] + (lo >= TWO32 ? 1 : 0);
      u16[availRingW + (ai & mask)] = id;
      ai = (ai + 1) & 0xffff;
      if (!mergeable || len < full) {
        // One buffer. The header as MbufView.rearm writes it, and pkt_len.
        const mw = (objOff + Math.imul(m & 0xffffff, objSize)) >> 2;
        const bad = len < HDR || len - HDR > maxLen;
        const plen = bad ? 0 : len - HDR;
        pu32[mw + MbufW32.PktLen] = plen;
        pu32[mw + MbufW32.LenOff] = (lenOff0 | plen) >>> 0;
        pu32[mw + MbufW32.RefSegs] = MbufVal.RefSegsSole;
        pu32[mw + MbufW32.PortBuf] = portBuf;
        pu32[mw + MbufW32.OlFlagsLo] = 0;
        pu32[mw + MbufW32.OlFlagsHi] = 0;
        pu32[mw + MbufW32.Next] = MbufVal.None;
        if (bad) { errors++; pktmbufFree(m); continue; }
        out[got++] = m;
        bytes += plen;
        continue;
      }
      v.at(m);
      let nb = this.numBuffersHere();
      let bad = len < HDR || len - HDR > maxLen || nb < 0;
      if (nb < 0) nb = 1;
      const plen0 = bad ? 0 : len - HDR;
      v.rearm(headroom, plen0, portBuf);
      let total = plen0, segs = 1;
      // Further buffers of a merged packet: pure data from the descriptor's start (no header).
      // c < e: never past what pass 1 counted (and allocated replacements for), even if the device
      // rewrote num_buffers since; a packet cut short that way is dropped.
      if (c + nb - 1 > e) bad = true;
      for (let j = 1; j < nb && c < e; j++) {
        w = usedRingW + Math.imul(last & mask, USED_ELEM_WORDS);
        id = u32[w];
        len = u32[w + 1];
        last = (last + 1) & 0xffff;
        c++;
        if (id >= size || posted[id] === 0 || posted[id] === epoch) { bad = true; continue; }
        const sm = mbufs[id];
        v.next = sm; // the view is at the previous segment
        this.repost(id, repl[r++], ai, epoch);
        ai = (ai + 1) & 0xffff;
        v.at(sm);
        if (len > maxLen + HDR) { bad = true; len = 0; }
        v.rearm(segOff, len, portBuf);
        segs++;
        total += len;
      }
      // nb_segs is 1 in a posted mbuf (pktmbufAllocInit): written once, not counted up per segment.
      if (segs > 1) v.at(m).nbSegs = segs;
      v.pktLen = total;
      if (bad) {
        errors++;
        pktmbufFree(m);
        continue;
      }
      out[got++] = m;
      bytes += total;
    }
    if (r < e) pool.freeBulk(repl, e - r, r); // replacements for entries with bad ids
    this.lastUsed = last;
    this.book.state[BK_LAST_USED] = last;
    if (ai !== this.availIdx) {
      this.availIdx = ai;
      this.publish(ai, this.stats);
    }
    this.stats[this.s + RXQ_PACKETS] += got;
    this.stats[this.s + RXQ_BYTES] += bytes;
    if (errors > 0) this.stats[this.s + RXQ_ERRORS] += errors;
    return got;
  }
}

/**
 * An RX queue's interrupt: VRING_AVAIL_F_NO_INTERRUPT cleared while armed, the MSI-X vector's
 * eventfd (non-blocking) drained at disarm. EVENT_IDX is not negotiated, so the flag is the only
 * suppression.
 */
class VirtioRxInterrupt implements RxInterrupt {
  private readonly buf = new Uint8Array(8);
  private readonly dv = new DataView(this.buf.buffer);

  constructor(readonly fd: number, private readonly u16: Uint16Array, private readonly flagsW: number, private readonly usedIdxW: number,
    private readonly q: { readonly consumed: number }, private readonly stats: Float64Array, private readonly stat: number) {}

  enable(): boolean {
    Atomics.store(this.u16, this.flagsW, 0);
    // seq-cst store, then load: the device stores its used index, then loads our flags; one of
    // the two sides sees the other's write, so a packet is never left without an interrupt.
    if (Atomics.load(this.u16, this.usedIdxW) !== this.q.consumed) {
      Atomics.store(this.u16, this.flagsW, VRING_AVAIL_F_NO_INTERRUPT);
      return false;
    }
    return true;
  }

  disable(): void {
    Atomics.store(this.u16, this.flagsW, VRING_AVAIL_F_NO_INTERRUPT);
    const n = readNoThrow(this.fd, this.buf, 8);
    if (n === 8) this.stats[this.stat] += this.dv.getUint32(0, true) + this.dv.getUint32(4, true) * 0x1_0000_0000;
    else if (n !== -E.EAGAIN) throw new Error(`Rx interrupt eventfd ${this.fd}: read failed (${n < 0 ? `errno ${-n}` : `${n} bytes`}); was the port stopped under the lcore?`);
  }
}

class VirtioTx extends QueueViews implements TxQueue {
  /** free descriptor ids (a stack) */
  private readonly freeIds: Uint16Array;
  private nfree = 0;
  /** completed segments and their shared flags, freed in one pktmbufFreeRecorded */
  private readonly done: Uint32Array;
  private readonly doneShared: Uint8Array;
  private readonly hdrLo: number;
  private readonly hdrHi: number;
  private readonly v = new MbufView();
  private readonly mbufs: Uint32Array;
  private readonly shared: Uint8Array;
  private readonly chain: Uint16Array;
  private readonly next: Uint16Array;

  constructor(d: VirtioQueueData, notify: MappedBar, private readonly stats: Float64Array, private readonly s: number) {
    super(d, notify);
    this.freeIds = new Uint16Array(d.layout.size);
    this.done = new Uint32Array(d.layout.size);
    this.doneShared = new Uint8Array(d.layout.size);
    [this.hdrLo, this.hdrHi] = iovaHalves(d.iovaLo, d.iovaHi, d.layout.hdrs);
    this.mbufs = this.book.mbufs;
    this.shared = this.book.shared;
    this.chain = this.book.chain;
    this.next = this.book.next;
    // Rebuild the free list: every descriptor not in a chain that is still in flight (the links
    // from the driver's own copy, not the descriptor table).
    const busy = new Uint8Array(this.size);
    for (let h = 0; h < this.size; h++) {
      let id = h;
      for (let k = this.chain[h]; k > 0; k--) {
        busy[id] = 1;
        id = this.next[id];
      }
    }
    for (let id = this.size - 1; id >= 0; id--) if (!busy[id]) this.freeIds[this.nfree++] = id;
  }

  /**
   * Take back what the device finished: descriptors to the free list, their segments freed from the
   * record in one pktmbufFreeRecorded (never from the headers, which the device could rewrite).
   */
  private reclaim(): void {
    const usedIdx = Atomics.load(this.u16, this.usedIdxW);
    let last = this.lastUsed;
    if (usedIdx === last) return;
    const u32 = this.u32, size = this.size, done = this.done, doneShared = this.doneShared;
    const chain = this.chain, next = this.next, mbufs = this.mbufs, shared = this.shared;
    let nd = 0, errors = 0, anyShared = 0;
    while (last !== usedIdx) {
      const head = u32[this.usedRingW + Math.imul(last & this.mask, USED_ELEM_WORDS)];
      last = (last + 1) & 0xffff;
      // Only the head of a chain in flight: out of range, not a head, or already taken back
      // (a used id twice) is a device bug, counted; the chain is walked through our own links.
      const cnt = head < size ? chain[head] : 0;
      if (cnt === 0) { errors++; continue; }
      let id = head;
      for (let k = 0; k < cnt; k++) {
        this.freeIds[this.nfree++] = id;
        const m = mbufs[id];
        if (m !== MBUF_NONE) {
          const sh = shared[id];
          done[nd] = m;
          doneShared[nd++] = sh;
          anyShared |= sh;
          mbufs[id] = MBUF_NONE;
          shared[id] = 0;
        }
        id = next[id];
      }
      chain[head] = 0;
    }
    this.lastUsed = last;
    this.book.state[BK_LAST_USED] = last;
    if (nd > 0) pktmbufFreeRecorded(done, nd, 0, anyShared !== 0 ? doneShared : null);
    if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    this.reclaim();
    const u32 = this.u32, u16 = this.u16, size = this.size, freeIds = this.freeIds, v = this.v, next = this.next;
    let k = 0, sent = 0, bytes = 0, errors = 0, ai = this.availIdx;
    for (; k < n; k++) {
      const m = pkts[off + k];
      v.at(m);
      // isSimple: one segment, one reference (a single load of refcnt | nb_segs << 16).
      const doff = v.dataOff;
      const push = v.isSimple && doff >= HDR;
      const need = push ? 1 : v.nbSegs + 1;
      if (need > size) { // can never fit this ring: dropped
        errors++;
        pktmbufFree(m);
        continue;
      }
      if (need > this.nfree) break; // ring full: the rest stays the caller's
      const head = freeIds[--this.nfree];
      const hw = this.descW + (head << 2);
      let used = 1; // descriptors in this chain
      bytes += v.pktLen; // read now: the chain walk below moves the view
      if (push) {
        // The header goes into the headroom right before the data; all zero (no offloads).
        const h = v.off + MbufOff.Buf + doff - HDR; // = v.data - HDR, without loading data_off again
        if ((h & 3) === 0) {
          const pu32 = v.u32;
          pu32[h >> 2] = 0; pu32[(h >> 2) + 1] = 0; pu32[(h >> 2) + 2] = 0;
        } else {
          const pu8 = v.u8;
          for (let i = 0; i < HDR; i++) pu8[h + i] = 0;
        }
        v.storeIova(u32, hw, doff - HDR);
        u32[hw + 2] = v.dataLen + HDR;
        u32[hw + 3] = 0; // flags 0, next 0
        this.mbufs[head] = m; // the record: a lone segment, sole owner (isSimple)
        this.shared[head] = 0;
      } else {
        // The queue's own zeroed header slot, then one descriptor per segment.
        const lo = this.hdrLo + head * HDR_SLOT;
        u32[hw] = lo;
        u32[hw + 1] = this.hdrHi + (lo >= TWO32 ? 1 : 0);
        u32[hw + 2] = HDR;
        // The view is at the first segment; each further one moves it.
        // At most need - 1 segments, whatever the links say (a header in DMA memory may have been
        // rewritten): the free list never gives out more than was checked above.
        let pw = hw, prev = head;
        used = 1;
        for (;;) {
          const id = freeIds[--this.nfree];
          u32[pw + 3] = VRING_DESC_F_NEXT | (id << 16);
          next[prev] = id; // the link as we keep it
          const dw = this.descW + (id << 2);
          v.storeIova(u32, dw, v.dataOff);
          u32[dw + 2] = v.dataLen;
          u32[dw + 3] = 0;
          // the record: this segment, and whether others hold it too
          this.mbufs[id] = v.m;
          this.shared[id] = v.refcnt === 1 ? 0 : 1;
          pw = dw;
          prev = id;
          used++;
          const nm = v.next;
          if (nm === MBUF_NONE || used === need) break;
          v.at(nm);
        }
      }
      this.chain[head] = used;
      u16[this.availRingW + (ai & this.mask)] = head;
      ai = (ai + 1) & 0xffff;
      sent++;
    }
    if (sent > 0) {
      this.availIdx = ai;
      this.publish(ai, this.stats);
      this.stats[this.s + TXQ_PACKETS] += sent;
      this.stats[this.s + TXQ_BYTES] += bytes;
    }
    if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
    return k;
  }
}

/** Rebuild RX queue q in this thread (the doorbell's BAR too: MappedBar.open loads what reaches it). */
export async function openRxQueue(port: PortData, q: number, stats: Float64Array): Promise<RxQueue> {
  const d = port.rxq[q] as VirtioQueueData;
  return new VirtioRx(d, await MappedBar.open(d.notify), Mempool.attach(port.rxPools[q]), port.port, stats, rxqStatsBase(q));
}

/** Rebuild TX queue q in this thread (the doorbell's BAR too: MappedBar.open loads what reaches it). */
export async function openTxQueue(port: PortData, q: number, stats: Float64Array): Promise<TxQueue> {
  const d = port.txq[q] as VirtioQueueData;
  return new VirtioTx(d, await MappedBar.open(d.notify), stats, txqStatsBase(q));
}
