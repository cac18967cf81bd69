/**
 * virtio-net, emulated: the engine's queue state (the lcore side of the device, written only
 * against the emudev back-end API, lib/emudev/backend.ts). It reads what the provider published
 * (the queue table's words, the attributes status, features, vectors, active_pairs, ...), locates
 * each enabled queue's rings in the DMA table, and owns what every direction shares: the region
 * windows of the fast paths, used/avail helpers, commits with their interrupts, and
 * DEVICE_NEEDS_RESET. guest_tx.ts, guest_rx.ts and ctrlq.ts build on it, backend.ts ties them.
 *
 * Nothing from the driver is trusted: head and next indexes are checked against the queue size,
 * chains longer than the queue (loops) are cut, directions and the INDIRECT flag are checked, the
 * avail idx may not run more than the queue size ahead, and every buffer is translated by
 * plane.at() (bounds and permission) before it is touched. The descriptors one burst walks are
 * bounded by the queue size (twice that on a receiveq: once to measure chains, once to fill them;
 * each chain is measured once per burst), so chains that share descriptors cannot make a burst
 * walk size x size of them; with MRG_RXBUF a receive buffer must hold the 12-byte header (spec
 * 5.1.6.3.1), so zero-length buffers cannot stall it either. A violation sets DEVICE_NEEDS_RESET
 * (reason in the needs_reset attribute), raises the config interrupt and stops the queues until reset.
 *
 * Progress of a burst (avail entries taken, used entries written) is committed only at its end:
 * a burst interrupted by a DMA table change in the middle (possible only on the slow path for
 * memory mapped without fd) is discarded whole and redone with fresh views. After any slow-path
 * message (this.slow) the engine refreshes (pause requests, state and views re-derived) before it
 * touches another queue: the message's wait may have let the main thread unmap memory.
 *
 * A view of client memory (plane.u8[k]) is up to 4 GiB (a larger region is several views, see
 * DataPlane): offsets in a view are numbers below 2^32, never int32 (>>> for word indexes, never
 * >>; lib/net/copy.ts copyBytes works up to 4 GiB the same way). A buffer across two views is
 * at() -2 and goes through messageRead/messageWrite (a copy, no message) like memory without fd;
 * a ring across two views is refused like a ring without fd (RING_UNMAPPED).
 *
 * Hot path: no allocation per packet or burst (preallocated index arrays, a preallocated header,
 * copies with copyBytes between existing views), numbers only, no try/catch.
 */
import { VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from '../../../src/iommu/vfio-uapi.js';
import { log } from '../../../src/log.js';
import { EmuBackend, QUEUE_SIZE, QUEUE_ENABLE, QUEUE_VECTOR, QUEUE_DESC_LO, QUEUE_AVAIL_LO, QUEUE_USED_LO, QUEUE_EPOCH, type EmuBackendDesc } from '../../../lib/emudev/backend.js';
import type { DataPlane } from '../../../lib/emudev/dataplane.js';
import type { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufHeadroom, pktmbufDataRoom } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { viewOf } from '../../../src/os/libc.js';
import * as V from '../../../lib/virtio/virtio.js';
import * as D from './defs.js';

/** What the engine is opened with, as plain data (VirtioNetBackend.open; structured-cloneable). */
export interface VirtioNetBackendArg {
  /** the device's back-end description (VirtioNetDevice.backendDesc, or the registry's) */
  desc: EmuBackendDesc;
  /** queue pairs of the device (max_pairs) */
  pairs: number;
  /** the largest queue size the driver may set (the device's `size`) */
  maxQueueSize: number;
  /** true: leave VRING_USED_F_NO_NOTIFY clear, so the driver rings a doorbell per burst (the device still polls) */
  wantKicks?: boolean;
  /** the port number written into the mbufs receive() returns (default 0) */
  port?: number;
}

/**
 * Packets a burst moves per queue. 64, not DPDK's usual 32: the per-burst costs (the used-index
 * publish with its fence, the avail-index read, the interrupt check) are line transfers between
 * cores, and halving them per packet was worth 16 % on the virtio benchmark (A/B, same placement).
 */
export const BURST = 64;
// Module-local constants (each engine file keeps its own copies: a module's own const folds into
// optimized code, an imported binding is a load).
const TWO32 = 0x1_0000_0000;
/** IOVAs from 2^53 cannot be numbers: treated as unmapped. */
const MAX_HI = 0x20_0000;
const NO_VECTOR = V.VIRTIO_MSI_NO_VECTOR;
/** Results of the per-packet helpers (>= 0: a length): FATAL (NEEDS_RESET set), DROP (packet dropped, counted), ABORT (redo the burst), NOROOM (no receive buffer: the packet stays the caller's). */
export const FATAL = -1, DROP = -2, ABORT = -3, NOROOM = -4;
const R = D.NeedsReset;
/** Regions the fast paths remember per direction (a DMA table rarely has more). */
const WINDOWS = 8;

/** The engine's queue state and the helpers every direction shares. */
export class VirtQueues {
  /** the device's back-end side (queue table, attributes, regions) */
  protected readonly be: EmuBackend;
  /** client memory: translation, interrupts, FD doorbells */
  protected readonly plane: DataPlane;
  // Attribute word indexes (in st), resolved once at open by name.
  protected readonly genWord: number;
  protected readonly wStatus: number;
  protected readonly wFeatLo: number;
  protected readonly wConfigVec: number;
  protected readonly wNeedsReset: number;
  protected readonly wErrQueue: number;
  protected readonly wIsr: number;
  protected readonly wActivePairs: number;
  protected readonly wLinkDown: number;
  protected readonly wResets: number;
  /** the queue table's words and each queue's first one */
  protected readonly qw: Int32Array;
  protected readonly qBase: Int32Array;
  /** polled notify words (MEM doorbells): one view over them, and each one's index in it */
  protected readonly notify: Uint32Array;
  protected readonly notifyAt: Int32Array;
  /** ioeventfd doorbells: their data plane indexes */
  protected readonly bellIds: Int32Array;
  /** the attribute words */
  protected readonly st: Int32Array;
  /** the statistics (the region 'stats', defs.ts S_*) */
  protected readonly stats: Float64Array;
  protected readonly pairs: number;
  protected readonly nq: number;
  protected readonly ctrlQ: number;
  protected readonly bells: number;
  /** where the transmitted packets' mbufs come from */
  protected readonly pool: Mempool;
  protected readonly port: number;
  protected readonly headroom: number;
  protected readonly room: number;
  // Views of each DMA region (same indexes as plane.u8), rebuilt when the table changes.
  protected ru8: Uint8Array[] = [];
  protected ru16: Uint16Array[] = [];
  protected ru32: Uint32Array[] = [];
  protected viewGen = -1;
  protected gen = -1;
  protected live = false;
  protected mrg = false;
  protected ctrlVq = false;
  protected mq = false;
  protected activePairs = 1;
  /** exceptions since the last device reset (the resets attribute as last seen) */
  protected errors = 0;
  protected resets = 0;
  /** a slow-path message was sent since the last refresh(): refresh before another queue */
  protected slow = false;
  /** the used rings' flags: VRING_USED_F_NO_NOTIFY, or 0 when doorbells are wanted (wantKicks) */
  protected readonly usedFlags: number;
  /** the link_down this engine last signalled */
  protected linkDown = 0;
  /** mbufs the burst in hand owns: mbArr[0..mbHeld) and rbArr[0..rbHeld), freed by crashed() */
  protected mbArr: Uint32Array = new Uint32Array(0);
  protected mbHeld = 0;
  protected rbArr: Uint32Array = new Uint32Array(0);
  protected rbHeld = 0;
  // Per queue: configuration, derived ring locations (region index and byte offset, below 2^32), progress.
  protected readonly qSize: Int32Array;
  protected readonly qEnable: Uint8Array;
  protected readonly qReady: Uint8Array;
  protected readonly qVec: Int32Array;
  protected readonly qEpoch: Int32Array;
  protected readonly qDesc: Float64Array;
  protected readonly qAvail: Float64Array;
  protected readonly qUsed: Float64Array;
  protected readonly qDescK: Int32Array;
  protected readonly qDescOff: Float64Array;
  protected readonly qAvailK: Int32Array;
  protected readonly qAvailOff: Float64Array;
  protected readonly qUsedK: Int32Array;
  protected readonly qUsedOff: Float64Array;
  protected readonly lastAvail: Int32Array;
  protected readonly usedIdx: Int32Array;
  /** avail entries taken (= used entries written) in the burst, not yet committed */
  protected readonly take: Int32Array;
  /** descriptors the burst on each queue may still walk */
  protected readonly walkLeft: Int32Array;
  // Receive chains measured in this burst, per receiveq (pair p at p * maxQ): slots [0, measured[q])
  // after lastAvail have their head and capacity here, so a chain is measured once per burst.
  protected readonly maxQ: number;
  protected readonly measured: Int32Array;
  protected readonly chainHead: Uint16Array;
  protected readonly chainCap: Float64Array;
  // Preallocated burst and scratch memory.
  protected readonly hdr = new Uint8Array(16);
  protected readonly hdr32 = new Uint32Array(this.hdr.buffer);
  protected readonly ctrlBuf = new Uint8Array(64);
  protected readonly ackBuf = new Uint8Array(4);
  // The mbuf cursor of both directions (they never interleave): at the mbuf being filled
  // (transmit) or, from deliver() on, at the segment the RX source cursor below reads.
  protected readonly v = new MbufView();
  // The RX source cursor: header bytes first, then the mbuf's segments (this.v is at the current one).
  protected cHdr = 0;
  protected cOff = 0;
  protected cLeft = 0;
  /** bytes of the packet (with header) still to write */
  protected wLeft = 0;
  // Regions found by at() for the fast paths, [start, end) as IOVAs and region index, with the one
  // hit last: writable ones (receive buffers) and readable ones (transmit buffers).
  protected readonly wWin = new Float64Array(2 * WINDOWS);
  protected readonly wK = new Int32Array(WINDOWS);
  protected wCount = 0;
  protected wLast = 0;
  protected readonly rWin = new Float64Array(2 * WINDOWS);
  protected readonly rK = new Int32Array(WINDOWS);
  protected rCount = 0;
  protected rLast = 0;
  /** rxFast: bytes of the packets it delivered; whether it stopped for want of buffers */
  protected fastBytes = 0;
  protected fastOut = false;

  /** Attach to the device's back-end side and read its state (VirtioNetBackend.open). */
  protected constructor(arg: VirtioNetBackendArg, pool: Mempool) {
    const be = EmuBackend.attach(arg.desc);
    this.be = be;
    this.plane = be.memory;
    try {
      this.st = be.attrs;
      this.genWord = be.generationWord;
      this.wStatus = be.attrWord(D.A.STATUS); this.wFeatLo = be.attrWord(D.A.FEAT_LO); this.wConfigVec = be.attrWord(D.A.CONFIG_VECTOR);
      this.wNeedsReset = be.attrWord(D.A.NEEDS_RESET); this.wErrQueue = be.attrWord(D.A.ERR_QUEUE); this.wIsr = be.attrWord(D.A.ISR);
      this.wActivePairs = be.attrWord(D.A.ACTIVE_PAIRS); this.wLinkDown = be.attrWord(D.A.LINK_DOWN); this.wResets = be.attrWord(D.A.RESETS);
      this.stats = new Float64Array(be.region('stats'));
      this.pairs = arg.pairs;
      this.nq = 2 * arg.pairs + 1;
      this.ctrlQ = 2 * arg.pairs;
      if (be.queueCount < this.nq) throw new Error(`${be.name}: ${be.queueCount} queues in the queue table, ${this.nq} needed for ${arg.pairs} pairs: pairs must be the device's max_pairs`);
      this.qw = be.queues;
      this.qBase = new Int32Array(this.nq);
      for (let q = 0; q < this.nq; q++) this.qBase[q] = be.queueBase(q);
      // Doorbells: polled words (one view from the lowest to the highest) and eventfds.
      const mem = arg.desc.doorbells.filter((b) => b.kind === 'mem').map((b) => b.va);
      const lo = mem.reduce((a, b) => (b < a ? b : a), mem[0] ?? 0n), hi = mem.reduce((a, b) => (b > a ? b : a), lo);
      if (hi - lo > 0x10000n) throw new Error(`${be.name}: the polled doorbells span ${hi - lo} bytes (at most 64 KiB)`);
      this.notify = mem.length > 0 ? new Uint32Array(viewOf(lo, Number(hi - lo) + 4)) : new Uint32Array(0);
      this.notifyAt = Int32Array.from(mem, (va) => Number(va - lo) / 4);
      this.bellIds = Int32Array.from(arg.desc.doorbells.filter((b) => b.kind === 'fd' && b.id < this.plane.doorbellCount).map((b) => b.id));
      this.bells = this.bellIds.length;
      this.pool = pool;
      this.port = arg.port ?? 0;
      this.headroom = pktmbufHeadroom(pool);
      this.room = pktmbufDataRoom(pool);
      const n = this.nq;
      this.qSize = new Int32Array(n); this.qEnable = new Uint8Array(n); this.qReady = new Uint8Array(n);
      this.qVec = new Int32Array(n); this.qEpoch = new Int32Array(n).fill(-1);
      this.qDesc = new Float64Array(n); this.qAvail = new Float64Array(n); this.qUsed = new Float64Array(n);
      this.qDescK = new Int32Array(n); this.qDescOff = new Float64Array(n); this.qAvailK = new Int32Array(n);
      this.qAvailOff = new Float64Array(n); this.qUsedK = new Int32Array(n); this.qUsedOff = new Float64Array(n);
      this.lastAvail = new Int32Array(n); this.usedIdx = new Int32Array(n); this.take = new Int32Array(n);
      this.walkLeft = new Int32Array(n); this.measured = new Int32Array(n);
      const maxQ = arg.maxQueueSize >= 1 && arg.maxQueueSize <= V.VIRTQ_MAX_SIZE ? arg.maxQueueSize : V.VIRTQ_MAX_SIZE;
      this.maxQ = maxQ;
      this.usedFlags = arg.wantKicks === true ? 0 : V.VRING_USED_F_NO_NOTIFY;
      this.chainHead = new Uint16Array(arg.pairs * maxQ);
      this.chainCap = new Float64Array(arg.pairs * maxQ);
      this.resets = Atomics.load(this.st, this.wResets);
      this.reload();
    } catch (e) {
      be.detach();
      throw e;
    }
  }

  /** Honour pause requests, pick up a new DMA table and re-read what the provider published (cheap when nothing changed). */
  protected refresh(): void {
    // State first: a reset published during the pause must be seen before the rings are
    // re-derived, or the old state would judge unmapped rings and set DEVICE_NEEDS_RESET anew.
    const dma = this.plane.service();
    if (Atomics.load(this.st, this.genWord) !== this.gen) this.reload();
    else if (dma || this.slow || this.viewsChanged()) this.rederive();
    this.slow = false;
  }

  // ---- state ----

  /** Re-read what the provider published. */
  protected reload(): void {
    const st = this.st;
    this.gen = Atomics.load(st, this.genWord);
    const resets = Atomics.load(st, this.wResets);
    if (resets !== this.resets) { this.resets = resets; this.errors = 0; } // a device reset: a new crash budget
    const status = st[this.wStatus], lo = st[this.wFeatLo];
    this.mrg = ((lo >>> V.VIRTIO_NET_F_MRG_RXBUF) & 1) === 1;
    this.ctrlVq = ((lo >>> V.VIRTIO_NET_F_CTRL_VQ) & 1) === 1;
    this.mq = ((lo >>> V.VIRTIO_NET_F_MQ) & 1) === 1;
    const ap = st[this.wActivePairs];
    this.activePairs = ap >= 1 && ap <= this.pairs ? ap : 1;
    const qw = this.qw;
    for (let q = 0; q < this.nq; q++) {
      const b = this.qBase[q];
      const size = qw[b + QUEUE_SIZE];
      this.qSize[q] = size >= 1 && size <= this.maxQ && (size & (size - 1)) === 0 ? size : this.maxQ; // the control half allows no other
      this.qEnable[q] = qw[b + QUEUE_ENABLE] !== 0 ? 1 : 0;
      this.qVec[q] = qw[b + QUEUE_VECTOR];
      this.qDesc[q] = addr(qw, b + QUEUE_DESC_LO);
      this.qAvail[q] = addr(qw, b + QUEUE_AVAIL_LO);
      this.qUsed[q] = addr(qw, b + QUEUE_USED_LO);
      const epoch = qw[b + QUEUE_EPOCH];
      if (epoch !== this.qEpoch[q]) {
        this.qEpoch[q] = epoch;
        this.lastAvail[q] = 0;
        this.usedIdx[q] = 0;
        this.take[q] = 0;
      }
    }
    const both = V.STATUS_DRIVER_OK | V.STATUS_FEATURES_OK;
    this.live = (status & both) === both && (status & V.STATUS_FAILED) === 0 && st[this.wNeedsReset] === 0;
    this.rederive();
  }

  /** Whether the plane rebuilt its views since rederive() (service() or a slow-path message). */
  protected viewsChanged(): boolean {
    return this.plane.generation !== this.viewGen;
  }

  /** After a slow-path message: did the DMA table or the state change meanwhile? */
  protected changed(): boolean {
    return this.viewsChanged() || Atomics.load(this.st, this.genWord) !== this.gen;
  }

  /** Rebuild region views and locate each enabled queue's rings in them. */
  protected rederive(): void {
    const p = this.plane;
    if (this.viewsChanged()) {
      // Views reach 4 GiB: lengths as numbers (>> 1 of 2 GiB is negative, >>> 1 of 4 GiB is 0).
      this.ru8 = p.u8.slice();
      this.ru16 = p.u8.map((v) => new Uint16Array(v.buffer, v.byteOffset, Math.floor(v.byteLength / 2)));
      this.ru32 = p.u8.map((v) => new Uint32Array(v.buffer, v.byteOffset, Math.floor(v.byteLength / 4)));
      this.viewGen = p.generation;
      this.forget();
    }
    this.qReady.fill(0);
    if (!this.live) return;
    for (let q = 0; q < this.nq; q++) {
      if (!this.qEnable[q] || (q === this.ctrlQ && !this.ctrlVq)) continue;
      const size = this.qSize[q];
      // Rings must be in memory mapped by fd (at() -2 is refused too): they are read every poll.
      const d = this.qDesc[q] < 0 ? -1 : p.at(this.qDesc[q], V.descTableSize(size), false);
      const dk = p.hit;
      const a = d < 0 || this.qAvail[q] < 0 ? -1 : p.at(this.qAvail[q], V.availRingSize(size), false);
      const ak = p.hit;
      const u = a < 0 || this.qUsed[q] < 0 ? -1 : p.at(this.qUsed[q], V.usedRingSize(size), true);
      const uk = p.hit;
      if (d < 0 || a < 0 || u < 0) { this.fail(R.RING_UNMAPPED, q); return; }
      if ((d & 15) !== 0 || (a & 1) !== 0 || (u & 3) !== 0) { this.fail(R.RING_ALIGN, q); return; }
      this.qDescK[q] = dk; this.qDescOff[q] = d;
      this.qAvailK[q] = ak; this.qAvailOff[q] = a;
      this.qUsedK[q] = uk; this.qUsedOff[q] = u;
      this.qReady[q] = 1;
      Atomics.store(this.ru16[uk], u >>> 1, this.usedFlags);
    }
  }

  /** Empty the fast paths' region windows (the views changed). */
  protected forget(): void {
    this.wWin.fill(0); this.rWin.fill(0); // [0, 0) holds nothing
    this.wCount = this.rCount = 0;
    this.wLast = this.rLast = 0;
  }

  /**
   * Find [hi:lo, +len) with at() and remember its region in win/ks (write: writable, else readable):
   * the window index, or -1 when at() refuses it or the memory has no fd. Called with int32 halves
   * rather than the address so the call boxes no number.
   */
  protected learn(win: Float64Array, ks: Int32Array, write: boolean, hi: number, lo: number, len: number): number {
    const a = hi * TWO32 + (lo >>> 0), p = this.plane;
    const off = p.at(a, len, write);
    if (off < 0) return -1;
    const start = a - off, k = p.hit;
    let j = write ? this.wCount : this.rCount;
    for (let t = 0; t < j; t++) if (ks[t] === k) return t; // (cannot happen: the scan found no window)
    if (j < WINDOWS) { if (write) this.wCount++; else this.rCount++; } else j = k % WINDOWS; // full: replace one
    win[2 * j] = start;
    win[2 * j + 1] = start + this.ru8[k].byteLength;
    ks[j] = k;
    return j;
  }

  /** The writable window holding [hi:lo, +len) (int32 halves: no number is boxed), or -1. */
  protected findW(hi: number, lo: number, len: number): number {
    const a = hi * TWO32 + (lo >>> 0), win = this.wWin;
    const j = this.wLast;
    if (a >= win[2 * j] && a + len <= win[2 * j + 1]) return j;
    for (let t = 0; t < this.wCount; t++) if (a >= win[2 * t] && a + len <= win[2 * t + 1]) return (this.wLast = t);
    const t = this.learn(win, this.wK, true, hi, lo, len);
    if (t >= 0) this.wLast = t;
    return t;
  }

  /** The readable window holding [hi:lo, +len), or -1. */
  protected findR(hi: number, lo: number, len: number): number {
    const a = hi * TWO32 + (lo >>> 0), win = this.rWin;
    const j = this.rLast;
    if (a >= win[2 * j] && a + len <= win[2 * j + 1]) return j;
    for (let t = 0; t < this.rCount; t++) if (a >= win[2 * t] && a + len <= win[2 * t + 1]) return (this.rLast = t);
    const t = this.learn(win, this.rK, false, hi, lo, len);
    if (t >= 0) this.rLast = t;
    return t;
  }

  /** DEVICE_NEEDS_RESET: record why, stop the queues, raise the config interrupt. */
  protected fail(reason: number, q: number): number {
    const st = this.st;
    this.live = false;
    this.qReady.fill(0);
    if (Atomics.load(st, this.wNeedsReset) !== 0) return FATAL;
    Atomics.store(st, this.wErrQueue, q);
    Atomics.store(st, this.wNeedsReset, reason);
    this.stats[D.S_NEEDS_RESET]++;
    Atomics.or(st, this.wIsr, V.ISR_CONFIG);
    const v = Atomics.load(st, this.wConfigVec);
    if (v !== NO_VECTOR) this.plane.irq(VFIO_PCI_MSIX_IRQ_INDEX, v);
    else this.plane.irq(VFIO_PCI_INTX_IRQ_INDEX, 0);
    log('warn', 'virtio-net', `queue ${q}: ${D.NEEDS_RESET_NAMES[reason]}: DEVICE_NEEDS_RESET set, queues stopped until the driver resets the device`);
    return FATAL;
  }

  /** The link went up or down (G_LINK_DOWN): a configuration-change interrupt, once the driver is up. */
  protected linkChange(): void {
    this.linkDown = Atomics.load(this.st, this.wLinkDown);
    if ((Atomics.load(this.st, this.wStatus) & V.STATUS_DRIVER_OK) === 0) return;
    Atomics.or(this.st, this.wIsr, V.ISR_CONFIG);
    const v = Atomics.load(this.st, this.wConfigVec);
    if (v !== NO_VECTOR) this.plane.irq(VFIO_PCI_MSIX_IRQ_INDEX, v);
    else this.plane.irq(VFIO_PCI_INTX_IRQ_INDEX, 0);
    this.stats[D.S_IRQS]++;
  }

  /** Used entries were published on queue q: interrupt unless the driver suppressed it. */
  protected interrupt(q: number): void {
    const flags = Atomics.load(this.ru16[this.qAvailK[q]], this.qAvailOff[q] >>> 1);
    if ((flags & V.VRING_AVAIL_F_NO_INTERRUPT) !== 0) { this.stats[D.S_IRQS_SUPPRESSED]++; return; }
    Atomics.or(this.st, this.wIsr, V.ISR_QUEUE);
    const v = this.qVec[q];
    if (v !== NO_VECTOR) this.plane.irq(VFIO_PCI_MSIX_IRQ_INDEX, v);
    else this.plane.irq(VFIO_PCI_INTX_IRQ_INDEX, 0);
    this.stats[D.S_IRQS]++;
  }

  /** Commit queue q's burst: advance the indexes, publish used idx, interrupt. */
  protected commit(q: number): void {
    const n = this.take[q];
    if (n === 0) return;
    this.take[q] = 0;
    this.lastAvail[q] = (this.lastAvail[q] + n) & 0xffff;
    this.usedIdx[q] = (this.usedIdx[q] + n) & 0xffff;
    Atomics.store(this.ru16[this.qUsedK[q]], (this.qUsedOff[q] >>> 1) + 1, this.usedIdx[q]);
    this.interrupt(q);
  }

  /** Write used entry number take[q] of the burst (id, len) and count it. */
  protected putUsed(q: number, id: number, len: number): void {
    const u = (this.qUsedOff[q] >>> 2) + 1 + 2 * ((this.usedIdx[q] + this.take[q]) & (this.qSize[q] - 1));
    const u32 = this.ru32[this.qUsedK[q]];
    u32[u] = id;
    u32[u + 1] = len;
    this.take[q]++;
  }

  /** Avail entries the driver added beyond the burst's position (-1: more than the queue holds). */
  protected pending(q: number): number {
    const idx = Atomics.load(this.ru16[this.qAvailK[q]], (this.qAvailOff[q] >>> 1) + 1);
    const n = (idx - this.lastAvail[q]) & 0xffff;
    return n > this.qSize[q] ? -1 : n - this.take[q];
  }

  protected headAt(q: number, i: number): number {
    return this.ru16[this.qAvailK[q]][(this.qAvailOff[q] >>> 1) + 2 + ((this.lastAvail[q] + i) & (this.qSize[q] - 1))];
  }
}

/** A 64-bit address from two words; -1 when it cannot be a number (>= 2^53). */
function addr(w: Int32Array, lo: number): number {
  const hi = w[lo + 1] >>> 0;
  return hi >= MAX_HI ? -1 : hi * TWO32 + (w[lo] >>> 0);
}
