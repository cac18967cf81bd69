/**
 * net_igb data path: rxBurst and txBurst on the 82576's advanced descriptor rings, rebuilt in the
 * lcore that owns a queue (read top-down, like ixy's ixgbe driver).
 *
 * RX: every descriptor holds one mbuf of the queue's pool, posted with its packet address at the
 * mbuf's data offset (header address 0, so the status word reads 0 until the NIC writes the
 * descriptor back). A burst counts the descriptors with DD set, allocates that many replacements
 * in one pktmbufAllocInit, hands the filled mbufs out, reposts the descriptors with the
 * replacements and moves the tail (RDT) once. No replacement, no receive: packets wait in the ring.
 *
 * TX: one advanced data descriptor per page of DMA memory a segment's data touches, report-status
 * on every descriptor, each segment recorded at its last descriptor; the tail (TDT) is written
 * once per burst. Completed descriptors (DD written back) are cleaned at the start of the next
 * burst, their segments freed from the record in one pktmbufFreeRecorded.
 *
 * Distrust: the NIC writes descriptors in DMA memory, so what the driver relies on lives in
 * SharedArrayBuffers of this process: the mbuf behind each descriptor and the ring indices. A
 * length larger than the buffer, an error bit or a descriptor without EOP (frames never span
 * buffers: the buffer size covers the MTU) drops the frame and reposts its mbuf (counted as an
 * error), never hands out a buffer the NIC did not fill. An mbuf's header is DMA memory too, and
 * the NIC may rewrite it while it holds the mbuf: a received one is rewritten (MbufView.rearm)
 * before it is handed out; a sent packet's header is read once when it is queued (its segments,
 * their addresses and lengths, which ones are shared), what the descriptors say and what will be
 * freed recorded from that one read, and completion and stop free from the record
 * (pktmbufFreeRecorded), never following `next` or believing refcnt and nb_segs as the NIC left
 * them. A chain whose links name no mbuf is dropped and counted, never followed.
 *
 * Faults: a TX ring that stops completing is checked against the NIC's head register (one MMIO
 * read, only after STALL_BURSTS bursts without progress): when the head has passed descriptors
 * whose write-back never arrived, the NIC's DMA failed (e.g. an IOMMU fault) and the queue is
 * marked broken (IgbQueueState.BROKEN): bursts return 0 at once instead of spinning, and the
 * control half reports the port as broken. (Not on vfio-user where TDH is not mapped: a worker
 * cannot read such a register, so that queue has no fault check.)
 *
 * Registers: each one the lcore touches (RDT, TDT, TDH, EICR/EIMS/EIMC) is one MmioReg from
 * MappedBar.reg, chosen once when the queue is rebuilt: a plain store/load on BAR0's mapping where
 * it is mapped, pwrite/pread on the device fd (kernel VFIO) or a no-reply REGION_WRITE (vfio-user)
 * where it is not (a sparse BAR0, bar_unmap=, bar_mmap=0). Nothing is looked up per packet.
 */
import { MappedBar, type BarData, type MmioReg } from '../../../src/iommu/bar.js';
import { viewOf, readRaw, mmap, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS } from '../../../src/os/libc.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeRecorded, pktmbufHeadroom, isMbuf, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import {
  type PortData, type RxQueue, type TxQueue, type RxInterrupt, rxqStatsBase, txqStatsBase,
  RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_NOMBUF, RXQ_INTERRUPTS, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
} from '../../../lib/ethdev/ethdev.js';
import * as R from './igb_regs.js';

/** Words of a queue's state SharedArrayBuffer (Int32Array). */
export const ST_NEXT = 0, ST_CLEAN = 1, ST_BROKEN = 2, ST_WORDS = 4;
/** Bursts without TX progress before the head register is checked. */
const STALL_BURSTS = 4096;
const TWO32 = 2 ** 32;

/** What the control half hands a worker for one queue. */
export interface IgbQueueData {
  q: number;
  /** ring memory: address, IOVA halves unused here, descriptor count */
  va: bigint;
  size: number;
  /** BAR0 (the tail and interrupt registers: a store on its mapping, else pwrite or a message; MappedBar.reg) */
  bar: BarData;
  /** the mbuf behind each descriptor (Uint32Array over it) */
  mbufs: SharedArrayBuffer;
  /** TX: 1 byte per descriptor, 1 where its mbuf was given with more than one reference */
  shared: SharedArrayBuffer;
  /** ST_* words */
  state: SharedArrayBuffer;
  /** RX: data bytes a buffer holds (SRRCTL's packet buffer size) */
  bufLen: number;
  /** RX: MSI-X vector bit and eventfd, when the port was configured with intr.rxq */
  intr: { fd: number; bit: number } | null;
  /** xstat slot counting DMA faults (TX), or -1 */
  faultStat: number;
  /** TX: the EAL's page size (a power of two): no descriptor's buffer crosses a page */
  pageSize: number;
}

/** One view over a ring: descriptor words. */
function ringWords(d: IgbQueueData): Uint32Array {
  return new Uint32Array(viewOf(d.va, d.size * R.DESC_BYTES));
}

class IgbRx implements RxQueue {
  readonly intr?: RxInterrupt;
  private readonly ring: Uint32Array;
  private readonly mbufs: Uint32Array;
  private readonly state: Int32Array;
  /** RDT: a store on BAR0's mapping, or pwrite/a message where it is not mapped (chosen at set-up) */
  private readonly rdt: MmioReg;
  private readonly mask: number;
  private readonly size: number;
  private readonly headroom: number;
  private readonly portBuf: number;
  private readonly dataRoom: number;
  private readonly fresh: Uint32Array;
  private readonly spare: Uint32Array;
  private readonly v = new MbufView();
  private next: number;

  constructor(d: IgbQueueData, private readonly pool: Mempool, private readonly port: number, private readonly stats: Float64Array, private readonly s: number) {
    this.ring = ringWords(d);
    this.mbufs = new Uint32Array(d.mbufs);
    this.state = new Int32Array(d.state);
    const bar = new MappedBar(d.bar);
    this.rdt = bar.reg(R.rdt(d.q), 4);
    this.size = d.size;
    this.mask = d.size - 1;
    this.headroom = pktmbufHeadroom(pool);
    this.portBuf = MbufView.portBufWord(pool, port);
    this.dataRoom = Math.min(d.bufLen, pool.userWord(1));
    this.fresh = new Uint32Array(d.size);
    this.spare = new Uint32Array(d.size);
    this.next = Atomics.load(this.state, ST_NEXT);
    if (d.intr) this.intr = new IgbRxInterrupt(d, bar, this.ring, this.state, stats, s);
  }

  rxBurst(out: Uint32Array, n: number): number {
    const ring = this.ring, mask = this.mask;
    // 1. how many descriptors are done (the NIC writes DD last)
    let ready = 0;
    for (let i = this.next; ready < n; i = (i + 1) & mask) {
      if ((Atomics.load(ring, 4 * i + 2) & R.RXD_STAT_DD) === 0) break;
      ready++;
    }
    if (ready === 0) return 0;
    // 2. replacements first: without them the packets stay in the ring
    if (!pktmbufAllocInit(this.pool, this.fresh, ready, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF] += ready;
      return 0;
    }
    const v = this.v, mbufs = this.mbufs, fresh = this.fresh, spare = this.spare, room = this.headroom, dataRoom = this.dataRoom;
    let got = 0, bytes = 0, errors = 0, i = this.next;
    for (let k = 0; k < ready; k++, i = (i + 1) & mask) {
      const w = 4 * i;
      const status = ring[w + 2], len = ring[w + 3] & 0xffff, m = mbufs[i];
      if ((status & R.RXD_STAT_EOP) === 0 || (status & R.RXD_ERR_MASK) !== 0 || len === 0 || len > dataRoom) {
        // drop: the same mbuf is posted again, its replacement goes back to the pool
        spare[errors++] = fresh[k];
      } else {
        v.at(m).rearm(room, len, this.portBuf);
        v.pktLen = len;
        v.hash = ring[w + 1];
        out[got++] = m;
        bytes += len;
        mbufs[i] = fresh[k];
      }
      // repost: packet address at the data offset, header address 0 (clears the status word)
      v.at(mbufs[i]).storeIova(ring, w, room);
      ring[w + 2] = 0;
      ring[w + 3] = 0;
    }
    if (errors > 0) {
      this.pool.freeBulk(spare, errors, 0);
      this.stats[this.s + RXQ_ERRORS] += errors;
    }
    this.next = i;
    Atomics.store(this.state, ST_NEXT, i);
    // the tail is the last descriptor the NIC may fill: one behind the next one we will read
    this.rdt.write((i + this.size - 1) & mask);
    if (got > 0) {
      this.stats[this.s + RXQ_PACKETS] += got;
      this.stats[this.s + RXQ_BYTES] += bytes;
    }
    return got;
  }

}

/**
 * An RX queue's MSI-X interrupt: EICR and EIMS/EIMC are write-one registers, so lcores arming
 * different queues never race on a read-modify-write. Arming clears a stale cause first (a cause
 * set while masked would fire at once), then unmasks, then looks at the next descriptor: a packet
 * written back before the unmask is reported instead of slept on.
 */
class IgbRxInterrupt implements RxInterrupt {
  readonly fd: number;
  private readonly bit: number;
  private readonly scratch: number;
  private readonly scratchU32: Uint32Array;
  private readonly eicr: MmioReg;
  private readonly eims: MmioReg;
  private readonly eimc: MmioReg;

  constructor(d: IgbQueueData, bar: MappedBar, private readonly ring: Uint32Array, private readonly state: Int32Array, private readonly stats: Float64Array, private readonly s: number) {
    this.fd = d.intr!.fd;
    this.bit = d.intr!.bit;
    this.eicr = bar.reg(R.EICR, 4);
    this.eims = bar.reg(R.EIMS, 4);
    this.eimc = bar.reg(R.EIMC, 4);
    // eventfd reads land in a page of our own (the data path does not allocate)
    this.scratch = Number(mmap(0n, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    this.scratchU32 = new Uint32Array(viewOf(BigInt(this.scratch), 8));
  }

  enable(): boolean {
    this.eicr.write(this.bit);
    this.eims.write(this.bit);
    const next = Atomics.load(this.state, ST_NEXT);
    return (Atomics.load(this.ring, 4 * next + 2) & R.RXD_STAT_DD) === 0;
  }

  disable(): void {
    this.eimc.write(this.bit);
    if (readRaw(this.fd, this.scratch, 8) === 8) this.stats[this.s + RXQ_INTERRUPTS] += this.scratchU32[0];
  }
}

class IgbTx implements TxQueue {
  private readonly ring: Uint32Array;
  /** the driver's record: the segment whose data ends at each descriptor, else MBUF_NONE */
  private readonly mbufs: Uint32Array;
  /** 1 where that segment was given with more than one reference (refcnt > 1 when sent) */
  private readonly shared: Uint8Array;
  private readonly state: Int32Array;
  /** TDT: a store on BAR0's mapping, or pwrite/a message where it is not mapped (chosen at set-up) */
  private readonly tdt: MmioReg;
  /** TDH, read by the fault check; null where a worker cannot read it (vfio-user, not mapped): no fault check */
  private readonly tdh: MmioReg | null;
  private readonly mask: number;
  /** completed segments and their shared flags, freed in one pktmbufFreeRecorded */
  private readonly done: Uint32Array;
  private readonly doneShared: Uint8Array;
  /** a chain's segments as read once when it is sent: handle, buffer IOVA, data offset and length, shared */
  private readonly segM: Uint32Array;
  private readonly segLo: Uint32Array;
  private readonly segHi: Uint32Array;
  private readonly segOff: Uint16Array;
  private readonly segLen: Uint16Array;
  private readonly segShared: Uint8Array;
  /** bytes of the chain sendChain queued last */
  private chainBytes = 0;
  private readonly v = new MbufView();
  private readonly faultStat: number;
  /** page size - 1, and log2 of the page size */
  private readonly pmask: number;
  private readonly pshift: number;
  private next: number;
  private clean: number;
  private stalled = 0;

  constructor(d: IgbQueueData, private readonly stats: Float64Array, private readonly s: number) {
    this.pmask = d.pageSize - 1;
    this.pshift = 31 - Math.clz32(d.pageSize);
    this.ring = ringWords(d);
    this.mbufs = new Uint32Array(d.mbufs);
    this.shared = new Uint8Array(d.shared);
    this.state = new Int32Array(d.state);
    const bar = new MappedBar(d.bar);
    this.tdt = bar.reg(R.tdt(d.q), 4);
    this.tdh = bar.isMapped(R.tdh(d.q), 4) || d.bar.io?.kind === 'file' ? bar.reg(R.tdh(d.q), 4, true) : null;
    this.mask = d.size - 1;
    this.done = new Uint32Array(d.size);
    this.doneShared = new Uint8Array(d.size);
    this.segM = new Uint32Array(d.size);
    this.segLo = new Uint32Array(d.size);
    this.segHi = new Uint32Array(d.size);
    this.segOff = new Uint16Array(d.size);
    this.segLen = new Uint16Array(d.size);
    this.segShared = new Uint8Array(d.size);
    this.faultStat = d.faultStat;
    this.next = Atomics.load(this.state, ST_NEXT);
    this.clean = Atomics.load(this.state, ST_CLEAN);
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    if (this.state[ST_BROKEN] !== 0) return 0;
    const cleaned = this.cleanDone();
    const mask = this.mask, v = this.v, mbufs = this.mbufs, shared = this.shared;
    // one slot stays empty: head == tail means an empty ring to the NIC
    let free = (this.clean - this.next - 1) & mask;
    let i = this.next, k = 0, sent = 0, bytes = 0, errors = 0;
    const pmask = this.pmask, pshift = this.pshift;
    for (; k < n; k++) {
      const m = pkts[off + k];
      v.at(m);
      // Every header field the record and the descriptors come from is read once, here: what the
      // descriptors say and what the driver frees later always agree, whatever the header says later.
      const rs = v.refSegs;
      if (rs >>> 16 !== 1) {
        const used = this.sendChain(m, rs, i, free);
        if (used === 0) break; // no room: the rest stays the caller's
        if (used < 0) { errors++; continue; } // malformed: dropped
        i = (i + used) & mask;
        free -= used;
        bytes += this.chainBytes;
        sent++;
        continue;
      }
      // A lone segment (the common case). A segment that crosses a page of DMA memory takes one
      // descriptor per page: the pages are IOVA-contiguous, but a device model may map each buffer
      // in one piece from guest-physical memory, where they are not (QEMU's igb then drops the
      // frame uncounted), and the kernel's own drivers never hand a NIC such a buffer either.
      const lo = v.bufIovaLo, hi = v.bufIovaHi, doff = v.dataOff, len = v.dataLen;
      const need = len === 0 ? 1 : 1 + ((((lo + doff) & pmask) + len - 1) >>> pshift);
      if (need > free) break;
      i = this.emit(i, lo, hi, doff, len, len << R.TXD_PAYLEN_SHIFT, true);
      // the driver's record: the segment rides on its last descriptor, freed once that one is done
      const last = (i + mask) & mask;
      mbufs[last] = m;
      shared[last] = (rs & 0xffff) === 1 ? 0 : 1;
      free -= need;
      bytes += len;
      sent++;
    }
    if (k > 0) {
      if (sent > 0) {
        this.next = i;
        Atomics.store(this.state, ST_NEXT, i);
        this.tdt.write(i);
        this.stats[this.s + TXQ_PACKETS] += sent;
        this.stats[this.s + TXQ_BYTES] += bytes;
      }
      if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
      this.stalled = 0;
    } else if (cleaned === 0 && this.clean !== this.next && ++this.stalled >= STALL_BURSTS && this.tdh) {
      this.stalled = 0;
      this.checkFault();
    }
    return k;
  }

  /**
   * Descriptors for data [at, at + left) of the buffer at IOVA hi:lo, from slot i on: one per page
   * of DMA memory the data touches. olinfo (PAYLEN for a packet's first segment, else 0) goes on
   * the first, EOP on the last when eop. Returns the slot after them.
   */
  private emit(i: number, lo: number, hi: number, at: number, left: number, olinfo: number, eop: boolean): number {
    const ring = this.ring, pmask = this.pmask, mask = this.mask;
    for (;;) {
      const a = lo + at; // below 2^33: the low word wraps modulo 2^32 in the store, the carry goes to the high word
      const inPage = a & pmask;
      const len = inPage + left > pmask + 1 ? pmask + 1 - inPage : left;
      const w = 4 * i;
      ring[w] = a;
      ring[w + 1] = hi + (a >= TWO32 ? 1 : 0);
      ring[w + 2] = (len | R.TXD_DTYP_DATA | R.TXD_CMD_DEXT | R.TXD_CMD_IFCS | R.TXD_CMD_RS | (eop && len === left ? R.TXD_CMD_EOP : 0)) >>> 0;
      ring[w + 3] = olinfo;
      olinfo = 0;
      i = (i + 1) & mask;
      at += len;
      left -= len;
      if (left <= 0) return i;
    }
  }

  /**
   * A packet of several segments, or of an nb_segs that is not 1 (the view at its head m, rs its
   * refcnt | nb_segs word): each segment's handle, buffer IOVA, data offset and length and
   * whether it is shared read once into this queue's own arrays, each link checked before it is
   * followed; then the descriptors from slot i, each segment recorded on its last one. Returns the
   * descriptors used; 0 when they do not fit the free ones; -1 when the chain is malformed
   * (nb_segs 0, a link to no mbuf, more descriptors than the ring has) and was dropped, the
   * segments it names freed. Rare: the slow path.
   */
  private sendChain(m: number, rs: number, i: number, free: number): number {
    const v = this.v, segM = this.segM, segLo = this.segLo, segHi = this.segHi, segOff = this.segOff, segLen = this.segLen, segShared = this.segShared;
    const segs = rs >>> 16, pmask = this.pmask, pshift = this.pshift;
    // never more links than the arrays (one entry per descriptor) hold
    const limit = segs === 0 ? 1 : Math.min(segs, this.mask + 1);
    let cnt = 0, need = 0, total = 0, bad = segs === 0 || segs > this.mask;
    for (let s = m; ;) {
      const lo = v.bufIovaLo, doff = v.dataOff, len = v.dataLen;
      segM[cnt] = s;
      segLo[cnt] = lo;
      segHi[cnt] = v.bufIovaHi;
      segOff[cnt] = doff;
      segLen[cnt] = len;
      segShared[cnt] = (cnt === 0 ? rs & 0xffff : v.refcnt) === 1 ? 0 : 1;
      cnt++;
      need += len === 0 ? 1 : 1 + ((((lo + doff) & pmask) + len - 1) >>> pshift);
      total += len;
      if (cnt === limit) break;
      s = v.next;
      if (!isMbuf(s)) { bad = true; break; }
      v.at(s);
    }
    if (bad || need > this.mask) {
      pktmbufFreeRecorded(segM, cnt, 0, segShared);
      return -1;
    }
    if (need > free) return 0;
    const mbufs = this.mbufs, shared = this.shared, mask = this.mask;
    for (let j = 0; j < cnt; j++) {
      i = this.emit(i, segLo[j], segHi[j], segOff[j], segLen[j], j === 0 ? total << R.TXD_PAYLEN_SHIFT : 0, j === cnt - 1);
      const last = (i + mask) & mask;
      mbufs[last] = segM[j];
      shared[last] = segShared[j];
    }
    this.chainBytes = total;
    return need;
  }

  /**
   * Free the segments of descriptors the NIC has completed, from the driver's record (never from
   * their headers, which the NIC could write while it held them); returns how many descriptors
   * were cleaned.
   */
  private cleanDone(): number {
    const ring = this.ring, mask = this.mask, mbufs = this.mbufs, shared = this.shared, done = this.done, doneShared = this.doneShared;
    let c = this.clean, nfree = 0, count = 0, anyShared = 0;
    while (c !== this.next && (Atomics.load(ring, 4 * c + 3) & R.TXD_STAT_DD) !== 0) {
      const m = mbufs[c];
      if (m !== MBUF_NONE) {
        const sh = shared[c];
        done[nfree] = m;
        doneShared[nfree++] = sh;
        anyShared |= sh;
        mbufs[c] = MBUF_NONE;
        shared[c] = 0;
      }
      c = (c + 1) & mask;
      count++;
    }
    if (count === 0) return 0;
    if (nfree > 0) pktmbufFreeRecorded(done, nfree, 0, anyShared !== 0 ? doneShared : null);
    this.clean = c;
    Atomics.store(this.state, ST_CLEAN, c);
    return count;
  }

  /**
   * The ring made no progress for a while: if the NIC's head has moved past the oldest pending
   * descriptor while its write-back never came, the NIC's DMA is failing: mark the queue broken.
   */
  private checkFault(): void {
    const head = this.tdh!.read() & 0xffff;
    const pending = (this.next - this.clean) & this.mask;
    const consumed = (head - this.clean) & this.mask;
    if (consumed === 0 || consumed > pending) return;
    if ((Atomics.load(this.ring, 4 * this.clean + 3) & R.TXD_STAT_DD) !== 0) return;
    Atomics.store(this.state, ST_BROKEN, 1);
    this.stats[this.s + TXQ_ERRORS] += pending;
    if (this.faultStat >= 0) this.stats[this.faultStat] += 1;
  }
}

/** Rebuild RX queue q in this lcore. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  const d = port.rxq[q] as IgbQueueData;
  return new IgbRx(d, Mempool.attach(port.rxPools[q]), port.port, stats, rxqStatsBase(q));
}

/** Rebuild TX queue q in this lcore. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  return new IgbTx(port.txq[q] as IgbQueueData, stats, txqStatsBase(q));
}
