/**
 * virtio-net, emulated: the data half, one poll loop on an lcore. Each iteration it honours the
 * data plane's pause requests, re-reads the queue state the control half published (device.ts),
 * then moves packets: each transmitq's new avail entries are copied into mbufs and sent out the
 * backend port's TX; what the backend receives is copied into the driver's receiveq buffers
 * (one descriptor chain per packet, or several with MRG_RXBUF) behind a 12-byte virtio_net_hdr;
 * the controlq answers VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET and VIRTIO_NET_ERR to anything else.
 * The device sets VRING_USED_F_NO_NOTIFY and polls the avail rings; the notify page is read
 * only to count kicks and to leave the idle back-off at once. Doorbells rung through ioeventfds
 * (notify page not mapped, the client took the FD doorbells) have the same effect: the loop reads
 * them without blocking, every FD_KICK_EVERY iterations while busy and at every idle back-off step,
 * and counts them as kicks (and kicks_eventfd); its idle back-off sleeps on them.
 *
 * Nothing from the driver is trusted: head and next indexes are checked against the queue size,
 * chains longer than the queue (loops) are cut, directions and the INDIRECT flag are checked, the
 * avail idx may not run more than the queue size ahead, and every buffer is translated by
 * plane.at() (bounds and permission) before it is touched. The descriptors one burst walks are
 * bounded by the queue size (twice that on a receiveq: once to measure chains, once to fill them;
 * each chain is measured once per burst), so chains that share descriptors cannot make a burst
 * walk size x size of them; with MRG_RXBUF a receive buffer must hold the 12-byte header (spec
 * 5.1.6.3.1), so zero-length buffers cannot stall it either. A violation sets DEVICE_NEEDS_RESET
 * (reason in the shared state), raises the config interrupt and stops the queues until reset.
 *
 * Progress of a burst (avail entries taken, used entries written) is committed only at its end:
 * a burst interrupted by a DMA table change in the middle (possible only on the slow path for
 * memory mapped without fd) is discarded whole and redone with fresh views. After any slow-path
 * message the loop goes back to its top (pause requests, state and views re-derived) before it
 * touches another queue: the message's wait may have let the main thread unmap memory.
 *
 * A view of client memory (plane.u8[k]) is up to 4 GiB (a larger region is several views, see
 * DataPlane): offsets in a view are numbers below 2^32, never int32 (>>> for word indexes, never
 * >>; lib/net/copy.ts copyBytes works up to 4 GiB the same way). A buffer across two views is
 * at() -2 and goes through messageRead/messageWrite (a copy, no message) like memory without fd;
 * a ring across two views is refused like a ring without fd (RING_UNMAPPED).
 *
 * An exception (a bug, or a backend failing) frees the mbufs the burst held, sets
 * DEVICE_NEEDS_RESET and the loop goes on; after CRASH_BUDGET of them since the last device reset
 * the queues are parked (pauses still honoured) until the driver resets the device.
 *
 * Hot path: no allocation per packet or burst (preallocated index arrays, a preallocated header,
 * copies with copyBytes between existing views), numbers only, no try/catch in the loop.
 */
import { viewOf } from '../../../src/os/libc.js';
import { VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from '../../../src/iommu/vfio-uapi.js';
import { countGc } from '../../../src/lcore/gc.js';
import { log } from '../../../src/log.js';
import type { LcoreContext } from '../../../src/lcore/types.js';
import { DataPlane, type DataPlaneDesc } from '../../../lib/emudev/dataplane.js';
import { openRxQueue, openTxQueue, type PortData, type RxQueue, type TxQueue } from '../../../lib/ethdev/ethdev.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { poolOf } from '../../../lib/mempool/mempool.js';
import { MbufOff, MbufW16, MbufW32 } from '../../../lib/mempool/mbuf_layout.js';
import { pktmbufAllocInit, pktmbufFreeBulk, pktmbufFreeSeg, pktmbufHeadroom, pktmbufDataRoom, MBUF_HDR, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { copyBytes } from '../../../lib/net/copy.js';
import * as V from '../../../lib/virtio/virtio.js';
import * as L from './layout.js';

/** What the loop needs, as plain data (VirtioNetDevice.loopArg). */
export interface VirtioNetLoopArg {
  name: string;
  plane: DataPlaneDesc;
  state: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  pairs: number;
  /** local address of the notify page (BAR4 shared memory) */
  notifyVa: bigint;
  /** the backend port: its queue 0 carries every queue pair */
  backend: PortData;
  /** the largest queue size the driver may set (the device's `size`) */
  maxQueueSize: number;
  /** true: leave VRING_USED_F_NO_NOTIFY clear, so the driver rings a doorbell per burst (the device still polls) */
  wantKicks?: boolean;
}

/** What the loop returns. */
export interface VirtioNetLoopResult {
  iterations: number;
  /** garbage collections in the loop, and after its first second (warm-up) */
  gcCount: number;
  gcCountAfterWarmup: number;
  /** of those after warm-up, scavenges (young-generation collections: garbage made per packet shows there first) */
  scavengesAfterWarmup: number;
}

/**
 * Packets a burst moves per queue. 64, not DPDK's usual 32: the per-burst costs (the used-index
 * publish with its fence, the avail-index read, the interrupt check) are line transfers between
 * cores, and halving them per packet was worth 16 % on the virtio benchmark (A/B, same placement).
 */
const BURST = 64;
/** Busy loop iterations between two reads of the ioeventfd doorbells (the rings are polled anyway). */
const FD_KICK_EVERY = 16;
/** No work for this long: poll once per millisecond instead of back to back. */
const IDLE_MS = 100;
const TWO32 = 0x1_0000_0000;
/** IOVAs from 2^53 cannot be numbers: treated as unmapped. */
const MAX_HI = 0x20_0000;
const HDR = V.NET_HDR_SIZE;
const NO_VECTOR = V.VIRTIO_MSI_NO_VECTOR;
const F_NEXT_ = V.VRING_DESC_F_NEXT, F_WRITE = V.VRING_DESC_F_WRITE, F_INDIRECT = V.VRING_DESC_F_INDIRECT;
// Results of the per-packet helpers (>= 0: a length).
const FATAL = -1, DROP = -2, ABORT = -3;
const R = L.NeedsReset;
/** Regions the fast paths remember per direction (a DMA table rarely has more). */
const WINDOWS = 8;
/** Exceptions since the last device reset after which the queues are parked until the next one. */
const CRASH_BUDGET = 100;

class Engine {
  private readonly st: Int32Array;
  private readonly stats: Float64Array;
  private readonly pairs: number;
  private readonly nq: number;
  private readonly ctrlQ: number;
  private readonly notify: Uint32Array;
  /** ioeventfd doorbells: id q is queue q's notify register */
  private readonly bells: number;
  private readonly pool: Mempool;
  private readonly port: number;
  private readonly headroom: number;
  private readonly room: number;
  // Views of each DMA region (same indexes as plane.u8), rebuilt when the table changes.
  private ru8: Uint8Array[] = [];
  private ru16: Uint16Array[] = [];
  private ru32: Uint32Array[] = [];
  private viewGen = -1;
  private gen = -1;
  private live = false;
  private mrg = false;
  private ctrlVq = false;
  private mq = false;
  private activePairs = 1;
  /** exceptions since the last device reset (G_RESETS as last seen) */
  private errors = 0;
  private resets = 0;
  /** a slow-path message was sent since the loop's top: go back there before another queue */
  private slow = false;
  /** the used rings' flags: VRING_USED_F_NO_NOTIFY, or 0 when doorbells are wanted (wantKicks) */
  private readonly usedFlags: number;
  /** the G_LINK_DOWN this loop last signalled */
  private linkDown = 0;
  /** the loop step to go on with after a slow-path message */
  private resume = 0;
  /** mbufs the burst in hand owns: mb[0..mbHeld) and rb[0..rbHeld), freed by crashed() */
  private mbHeld = 0;
  private rbHeld = 0;
  /** loop iterations (kept across exceptions) */
  iterations = 0;
  // Per queue: configuration, derived ring locations (region index and byte offset, below 2^32), progress.
  private readonly qSize: Int32Array;
  private readonly qEnable: Uint8Array;
  private readonly qReady: Uint8Array;
  private readonly qVec: Int32Array;
  private readonly qEpoch: Int32Array;
  private readonly qDesc: Float64Array;
  private readonly qAvail: Float64Array;
  private readonly qUsed: Float64Array;
  private readonly qDescK: Int32Array;
  private readonly qDescOff: Float64Array;
  private readonly qAvailK: Int32Array;
  private readonly qAvailOff: Float64Array;
  private readonly qUsedK: Int32Array;
  private readonly qUsedOff: Float64Array;
  private readonly lastAvail: Int32Array;
  private readonly usedIdx: Int32Array;
  /** avail entries taken (= used entries written) in the burst, not yet committed */
  private readonly take: Int32Array;
  /** descriptors the burst on each queue may still walk */
  private readonly walkLeft: Int32Array;
  // Receive chains measured in this burst, per receiveq (pair p at p * maxQ): slots [0, measured[q])
  // after lastAvail have their head and capacity here, so a chain is measured once per burst.
  private readonly maxQ: number;
  private readonly measured: Int32Array;
  private readonly chainHead: Uint16Array;
  private readonly chainCap: Float64Array;
  // Preallocated burst and scratch memory.
  private readonly mb = new Uint32Array(BURST);
  private readonly rb = new Uint32Array(BURST);
  private readonly hdr = new Uint8Array(16);
  private readonly hdr32 = new Uint32Array(this.hdr.buffer);
  private readonly ctrlBuf = new Uint8Array(64);
  private readonly ackBuf = new Uint8Array(4);
  // The mbuf cursor of both directions (they never interleave): at the mbuf being filled
  // (transmit) or, from deliver() on, at the segment the RX source cursor below reads.
  private readonly v = new MbufView();
  // The RX source cursor: header bytes first, then the mbuf's segments (this.v is at the current one).
  private cHdr = 0;
  private cOff = 0;
  private cLeft = 0;
  /** bytes of the packet (with header) still to write */
  private wLeft = 0;
  // Regions found by at() for the fast paths, [start, end) as IOVAs and region index, with the one
  // hit last: writable ones (receive buffers) and readable ones (transmit buffers).
  private readonly wWin = new Float64Array(2 * WINDOWS);
  private readonly wK = new Int32Array(WINDOWS);
  private wCount = 0;
  private wLast = 0;
  private readonly rWin = new Float64Array(2 * WINDOWS);
  private readonly rK = new Int32Array(WINDOWS);
  private rCount = 0;
  private rLast = 0;
  /** rxFast: bytes of the packets it delivered; whether it stopped for want of buffers */
  private fastBytes = 0;
  private fastOut = false;

  constructor(arg: VirtioNetLoopArg, private readonly plane: DataPlane, private readonly rx: RxQueue, private readonly tx: TxQueue) {
    this.st = new Int32Array(arg.state);
    this.stats = new Float64Array(arg.stats);
    this.pairs = arg.pairs;
    this.nq = 2 * arg.pairs + 1;
    this.ctrlQ = 2 * arg.pairs;
    this.notify = new Uint32Array(viewOf(arg.notifyVa, L.NOTIFY_SIZE), 0, this.nq);
    this.bells = Math.min(plane.doorbellCount, this.nq);
    this.pool = Mempool.attach(arg.backend.rxPools[0]);
    this.port = arg.backend.port;
    this.headroom = pktmbufHeadroom(this.pool);
    this.room = pktmbufDataRoom(this.pool);
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
    this.resets = Atomics.load(this.st, L.G_RESETS);
    this.reload();
  }

  /** Poll until stopped (iterations counts them). */
  loop(ctx: LcoreContext): void {
    const st = this.st, plane = this.plane;
    let idleIters = 0, idleSince = -1, idle = false;
    while (!ctx.stopRequested() && Atomics.load(st, L.G_STOP) === 0) {
      // State first: a reset published during the pause must be seen before the rings are
      // re-derived, or the old state would judge unmapped rings and set DEVICE_NEEDS_RESET anew.
      const dma = plane.service();
      if (Atomics.load(st, L.G_GEN) !== this.gen) this.reload();
      else if (dma || this.slow || this.viewsChanged()) this.rederive();
      this.slow = false;
      if (Atomics.load(st, L.G_LINK_DOWN) !== this.linkDown) this.linkChange();
      let work = this.kicks();
      if (this.bells > 0 && (idle || this.iterations % FD_KICK_EVERY === 0)) work += this.fdKicks();
      // Steps: each pair's transmitq, the controlq, then the backend's receive burst. After a
      // slow-path message (its wait honours pauses: the table or the state may have changed, views
      // may be of unmapped memory) no other queue is touched before the top; the next iteration
      // goes on with the step after (an aborted burst is read again in the next round).
      const steps = this.pairs + 2;
      for (let step = this.resume; step < steps; step++) {
        if (step < this.pairs) { if (this.live && this.qReady[2 * step + 1]) work += this.txQueue(2 * step + 1); }
        else if (step === this.pairs) { if (this.live && this.qReady[this.ctrlQ]) work += this.ctrlQueue(this.ctrlQ); }
        else work += this.rxPoll();
        if (this.slow) { this.resume = step + 1 < steps ? step + 1 : 0; break; }
      }
      if (!this.slow) this.resume = 0;
      this.iterations++;
      if (work > 0) {
        idleIters = 0;
        idleSince = -1;
        if (idle) { idle = false; Atomics.store(st, L.G_IDLE, 0); }
      } else if (idle) {
        // A pause request or stop ends it at once, a doorbell eventfd too (the client took FD
        // doorbells: then the sleep is poll(2) on them, and a pause waits for its end, 1 ms at most).
        plane.sleepOnDoorbells(1);
      } else if (++idleIters >= 1024) {
        idleIters = 0;
        const now = performance.now();
        if (idleSince < 0) idleSince = now;
        else if (now - idleSince > IDLE_MS) { idle = true; Atomics.store(st, L.G_IDLE, 1); }
      }
    }
  }

  /**
   * An exception escaped the loop (a bug, or a backend failing): free the mbufs the burst held,
   * stop the queues (DEVICE_NEEDS_RESET), keep serving. False once CRASH_BUDGET exceptions
   * happened since the last device reset (then park()).
   */
  crashed(e: unknown): boolean {
    log('error', 'virtio-net', `data path: ${(e as Error).stack ?? String(e)}`);
    try {
      const lost = this.release(this.mb, this.mbHeld) + this.release(this.rb, this.rbHeld);
      if (lost > 0) log('warn', 'virtio-net', `data path: ${lost} mbuf handle(s) of the failed burst name no pool of this thread: not freed`);
    } catch (f) {
      log('error', 'virtio-net', `data path: freeing the failed burst's mbufs: ${(f as Error).message}`);
    }
    this.mbHeld = this.rbHeld = 0;
    this.take.fill(0);
    this.slow = true; // re-derive everything at the top
    this.fail(R.INTERNAL, -1);
    return ++this.errors < CRASH_BUDGET;
  }

  /**
   * Out of crash budget: touch no queue and no mbuf, keep honouring pauses, until the driver
   * resets the device (true: the loop may go on, with a new budget) or the loop is stopped (false).
   */
  park(ctx: LcoreContext): boolean {
    const st = this.st;
    log('error', 'virtio-net', `data path: ${this.errors} exceptions since the last device reset: queues parked until the driver resets the device`);
    while (!ctx.stopRequested() && Atomics.load(st, L.G_STOP) === 0) {
      this.plane.service();
      if (Atomics.load(st, L.G_RESETS) !== this.resets) return true;
      this.plane.sleep(1);
    }
    return false;
  }

  /** Free n packets of ms whose segments belong to pools of this thread; the handles that do not. */
  private release(ms: Uint32Array, n: number): number {
    let lost = 0;
    for (let i = 0; i < n; i++) {
      let s = ms[i];
      while (s !== MBUF_NONE) {
        const p = poolOf(s);
        if (p === undefined || (s & 0xff_ffff) >= p.size) { lost++; break; }
        s = pktmbufFreeSeg(s);
      }
    }
    return lost;
  }

  // ---- state ----

  /** Re-read what the control half published. */
  private reload(): void {
    const st = this.st;
    this.gen = Atomics.load(st, L.G_GEN);
    const resets = Atomics.load(st, L.G_RESETS);
    if (resets !== this.resets) { this.resets = resets; this.errors = 0; } // a device reset: a new crash budget
    const status = st[L.G_STATUS], lo = st[L.G_FEAT_LO];
    this.mrg = ((lo >>> V.VIRTIO_NET_F_MRG_RXBUF) & 1) === 1;
    this.ctrlVq = ((lo >>> V.VIRTIO_NET_F_CTRL_VQ) & 1) === 1;
    this.mq = ((lo >>> V.VIRTIO_NET_F_MQ) & 1) === 1;
    const ap = st[L.G_ACTIVE_PAIRS];
    this.activePairs = ap >= 1 && ap <= this.pairs ? ap : 1;
    for (let q = 0; q < this.nq; q++) {
      const size = st[L.qw(q, L.Q_SIZE)];
      this.qSize[q] = size >= 1 && size <= this.maxQ && (size & (size - 1)) === 0 ? size : this.maxQ; // the control half allows no other
      this.qEnable[q] = st[L.qw(q, L.Q_ENABLE)] !== 0 ? 1 : 0;
      this.qVec[q] = st[L.qw(q, L.Q_VECTOR)];
      this.qDesc[q] = addr(st, L.qw(q, L.Q_DESC_LO));
      this.qAvail[q] = addr(st, L.qw(q, L.Q_AVAIL_LO));
      this.qUsed[q] = addr(st, L.qw(q, L.Q_USED_LO));
      const epoch = st[L.qw(q, L.Q_EPOCH)];
      if (epoch !== this.qEpoch[q]) {
        this.qEpoch[q] = epoch;
        this.lastAvail[q] = 0;
        this.usedIdx[q] = 0;
        this.take[q] = 0;
      }
    }
    const both = V.STATUS_DRIVER_OK | V.STATUS_FEATURES_OK;
    this.live = (status & both) === both && (status & V.STATUS_FAILED) === 0 && st[L.G_NEEDS_RESET] === 0;
    this.rederive();
  }

  /** Whether the plane rebuilt its views since rederive() (service() or a slow-path message). */
  private viewsChanged(): boolean {
    return this.plane.generation !== this.viewGen;
  }

  /** After a slow-path message: did the DMA table or the state change meanwhile? */
  private changed(): boolean {
    return this.viewsChanged() || Atomics.load(this.st, L.G_GEN) !== this.gen;
  }

  /** Rebuild region views and locate each enabled queue's rings in them. */
  private rederive(): void {
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
  private forget(): void {
    this.wWin.fill(0); this.rWin.fill(0); // [0, 0) holds nothing
    this.wCount = this.rCount = 0;
    this.wLast = this.rLast = 0;
  }

  /**
   * Find [hi:lo, +len) with at() and remember its region in win/ks (write: writable, else readable):
   * the window index, or -1 when at() refuses it or the memory has no fd. Called with int32 halves
   * rather than the address so the call boxes no number.
   */
  private learn(win: Float64Array, ks: Int32Array, write: boolean, hi: number, lo: number, len: number): number {
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
  private findW(hi: number, lo: number, len: number): number {
    const a = hi * TWO32 + (lo >>> 0), win = this.wWin;
    const j = this.wLast;
    if (a >= win[2 * j] && a + len <= win[2 * j + 1]) return j;
    for (let t = 0; t < this.wCount; t++) if (a >= win[2 * t] && a + len <= win[2 * t + 1]) return (this.wLast = t);
    const t = this.learn(win, this.wK, true, hi, lo, len);
    if (t >= 0) this.wLast = t;
    return t;
  }

  /** The readable window holding [hi:lo, +len), or -1. */
  private findR(hi: number, lo: number, len: number): number {
    const a = hi * TWO32 + (lo >>> 0), win = this.rWin;
    const j = this.rLast;
    if (a >= win[2 * j] && a + len <= win[2 * j + 1]) return j;
    for (let t = 0; t < this.rCount; t++) if (a >= win[2 * t] && a + len <= win[2 * t + 1]) return (this.rLast = t);
    const t = this.learn(win, this.rK, false, hi, lo, len);
    if (t >= 0) this.rLast = t;
    return t;
  }

  /** DEVICE_NEEDS_RESET: record why, stop the queues, raise the config interrupt. */
  private fail(reason: number, q: number): number {
    const st = this.st;
    this.live = false;
    this.qReady.fill(0);
    if (Atomics.load(st, L.G_NEEDS_RESET) !== 0) return FATAL;
    Atomics.store(st, L.G_ERR_QUEUE, q);
    Atomics.store(st, L.G_NEEDS_RESET, reason);
    this.stats[L.S_NEEDS_RESET]++;
    Atomics.or(st, L.G_ISR, V.ISR_CONFIG);
    const v = Atomics.load(st, L.G_CONFIG_VEC);
    if (v !== NO_VECTOR) this.plane.irq(VFIO_PCI_MSIX_IRQ_INDEX, v);
    else this.plane.irq(VFIO_PCI_INTX_IRQ_INDEX, 0);
    log('warn', 'virtio-net', `queue ${q}: ${L.NEEDS_RESET_NAMES[reason]}: DEVICE_NEEDS_RESET set, queues stopped until the driver resets the device`);
    return FATAL;
  }

  /** The link went up or down (G_LINK_DOWN): a configuration-change interrupt, once the driver is up. */
  private linkChange(): void {
    this.linkDown = Atomics.load(this.st, L.G_LINK_DOWN);
    if ((Atomics.load(this.st, L.G_STATUS) & V.STATUS_DRIVER_OK) === 0) return;
    Atomics.or(this.st, L.G_ISR, V.ISR_CONFIG);
    const v = Atomics.load(this.st, L.G_CONFIG_VEC);
    if (v !== NO_VECTOR) this.plane.irq(VFIO_PCI_MSIX_IRQ_INDEX, v);
    else this.plane.irq(VFIO_PCI_INTX_IRQ_INDEX, 0);
    this.stats[L.S_IRQS]++;
  }

  /** Used entries were published on queue q: interrupt unless the driver suppressed it. */
  private interrupt(q: number): void {
    const flags = Atomics.load(this.ru16[this.qAvailK[q]], this.qAvailOff[q] >>> 1);
    if ((flags & V.VRING_AVAIL_F_NO_INTERRUPT) !== 0) { this.stats[L.S_IRQS_SUPPRESSED]++; return; }
    Atomics.or(this.st, L.G_ISR, V.ISR_QUEUE);
    const v = this.qVec[q];
    if (v !== NO_VECTOR) this.plane.irq(VFIO_PCI_MSIX_IRQ_INDEX, v);
    else this.plane.irq(VFIO_PCI_INTX_IRQ_INDEX, 0);
    this.stats[L.S_IRQS]++;
  }

  /** Commit queue q's burst: advance the indexes, publish used idx, interrupt. */
  private commit(q: number): void {
    const n = this.take[q];
    if (n === 0) return;
    this.take[q] = 0;
    this.lastAvail[q] = (this.lastAvail[q] + n) & 0xffff;
    this.usedIdx[q] = (this.usedIdx[q] + n) & 0xffff;
    Atomics.store(this.ru16[this.qUsedK[q]], (this.qUsedOff[q] >>> 1) + 1, this.usedIdx[q]);
    this.interrupt(q);
  }

  /** Write used entry number take[q] of the burst (id, len) and count it. */
  private putUsed(q: number, id: number, len: number): void {
    const u = (this.qUsedOff[q] >>> 2) + 1 + 2 * ((this.usedIdx[q] + this.take[q]) & (this.qSize[q] - 1));
    const u32 = this.ru32[this.qUsedK[q]];
    u32[u] = id;
    u32[u + 1] = len;
    this.take[q]++;
  }

  /** Avail entries the driver added beyond the burst's position (-1: more than the queue holds). */
  private pending(q: number): number {
    const idx = Atomics.load(this.ru16[this.qAvailK[q]], (this.qAvailOff[q] >>> 1) + 1);
    const n = (idx - this.lastAvail[q]) & 0xffff;
    return n > this.qSize[q] ? -1 : n - this.take[q];
  }

  private headAt(q: number, i: number): number {
    return this.ru16[this.qAvailK[q]][(this.qAvailOff[q] >>> 1) + 2 + ((this.lastAvail[q] + i) & (this.qSize[q] - 1))];
  }

  private kicks(): number {
    const nf = this.notify;
    let n = 0;
    for (let q = 0; q < this.nq; q++) {
      if (nf[q] !== L.NOTIFY_IDLE) { Atomics.store(nf, q, L.NOTIFY_IDLE); n++; }
    }
    if (n > 0) this.stats[L.S_KICKS] += n;
    return n;
  }

  /** Doorbells rung through the ioeventfds since the last look (each is a kick). */
  private fdKicks(): number {
    let n = 0;
    for (let q = 0; q < this.bells; q++) n += this.plane.doorbell(q);
    if (n > 0) { this.stats[L.S_KICKS] += n; this.stats[L.S_KICKS_EVENTFD] += n; }
    return n;
  }

  // ---- transmit: driver -> backend ----

  private txQueue(q: number): number {
    let n = this.pending(q);
    if (n < 0) { this.fail(R.AVAIL_JUMP, q); return 0; }
    if (n === 0) return 0;
    if (n > BURST) n = BURST;
    const mb = this.mb, stats = this.stats;
    if (!pktmbufAllocInit(this.pool, mb, n, 0, 0, this.port)) { stats[L.S_TX_NOMBUF]++; return 0; }
    this.mbHeld = n;
    // mb is all from this.pool: its views serve the copies, the view the header.
    const size = this.qSize[q], mask = size - 1, room = this.room, pool = this.pool, pu8 = pool.u8, pu32 = pool.u32, v = this.v;
    const du32 = this.ru32[this.qDescK[q]], dBase = this.qDescOff[q] >>> 2;
    const au16 = this.ru16[this.qAvailK[q]], aBase = (this.qAvailOff[q] >>> 1) + 2, slot = this.lastAvail[q];
    this.walkLeft[q] = size; // chains in flight are disjoint: a burst walks at most the whole table
    const win = this.rWin, data = MBUF_HDR + this.headroom;
    let filled = 0, bytes = 0;
    for (let i = 0; i < n; i++) {
      const head = au16[aBase + ((slot + i) & mask)];
      let len = -4;
      // The common case inline: one device-readable descriptor, header and frame, in a region
      // mapped by fd. Anything else is gatherTx's to judge.
      if (head < size) {
        const d = dBase + (head << 2);
        const dlen = du32[d + 2], hi = du32[d + 1];
        if ((du32[d + 3] & 0xffff) === 0 && dlen > HDR && dlen - HDR <= room && hi < MAX_HI) {
          const a = hi * TWO32 + du32[d];
          let j = this.rLast;
          if ((a >= win[2 * j] && a + dlen <= win[2 * j + 1]) || (j = this.findR(hi, du32[d] | 0, dlen)) >= 0) {
            const k = this.rK[j], src = a - win[2 * j] + HDR, dst = v.at(mb[filled]).off + data;
            len = dlen - HDR;
            if (((src | dst) & 3) === 0) {
              const r32 = this.ru32[k], r8 = this.ru8[k], words = len >>> 2, sw = src >>> 2, dw = dst >>> 2;
              for (let w = 0; w < words; w++) pu32[dw + w] = r32[sw + w];
              for (let b = words << 2; b < len; b++) pu8[dst + b] = r8[src + b];
            } else copyBytes(pu8, pu32, dst, this.ru8[k], this.ru32[k], src, len);
            v.setLen(len);
          }
        }
      }
      if (len === -4) len = this.gatherTx(q, head, mb[filled]);
      if (len >= 0) { filled++; bytes += len; }
      else if (len !== DROP) { // FATAL or ABORT: nothing of the burst is committed
        this.take[q] = 0;
        this.mbHeld = 0; // before the free: one that fails half-way must not be freed again by crashed()
        pktmbufFreeBulk(mb, n, 0);
        return 0;
      }
      this.putUsed(q, head, 0); // the device wrote nothing into a transmit buffer
    }
    this.mbHeld = filled;
    if (filled < n) pktmbufFreeBulk(mb, n - filled, filled);
    this.commit(q);
    if (filled > 0) {
      // A backend that throws is taken to have kept none of them (crashed() frees them).
      const sent = this.tx.txBurst(mb, filled, 0);
      this.mbHeld = 0;
      if (sent < filled) {
        bytes -= pktmbufFreeBulk(mb, filled - sent, sent);
        stats[L.S_TX_DROPPED] += filled - sent;
      }
      stats[L.S_TX_PACKETS] += sent;
      stats[L.S_TX_BYTES] += bytes;
    }
    return n;
  }

  /** Copy a transmit chain (after its header) into mbuf m; its length, DROP, FATAL or ABORT. */
  private gatherTx(q: number, head: number, m: number): number {
    const size = this.qSize[q], p = this.plane;
    if (head >= size) return this.fail(R.HEAD_RANGE, q);
    // Nothing below moves the view: it is still at m for setLen at the end.
    const v = this.v.at(m), dst = v.off + MBUF_HDR + this.headroom, room = this.room, budget = this.walkLeft[q];
    let i = head, count = 0, skip = HDR, len = 0, over = false;
    for (;;) {
      if (++count > size) return this.fail(R.LOOP, q);
      if (count > budget) return this.fail(R.WALK, q);
      const du32 = this.ru32[this.qDescK[q]], d = (this.qDescOff[q] >>> 2) + 4 * i;
      const lo = du32[d], hi = du32[d + 1], dlen = du32[d + 2], w3 = du32[d + 3];
      if ((w3 & F_INDIRECT) !== 0) return this.fail(R.INDIRECT, q);
      if ((w3 & F_WRITE) !== 0) return this.fail(R.DIRECTION, q);
      if (dlen > 0) {
        if (hi >= MAX_HI) return this.fail(R.BAD_ADDRESS, q);
        // A window when the memory has an fd (no call boxes the address); at() decides the rest.
        const j = this.findR(hi, lo | 0, dlen);
        let off: number, k: number;
        if (j >= 0) { k = this.rK[j]; off = hi * TWO32 + lo - this.rWin[2 * j]; }
        else {
          off = p.at(hi * TWO32 + lo, dlen, false);
          if (off === -1) return this.fail(R.BAD_ADDRESS, q);
          k = p.hit;
        }
        const s = skip < dlen ? skip : dlen;
        skip -= s;
        const c = dlen - s;
        if (c > 0) {
          if (len + c > room) over = true;
          else {
            if (off >= 0) copyBytes(v.u8, v.u32, dst + len, this.ru8[k], this.ru32[k], off + s, c);
            else {
              this.slow = true;
              const ok = p.messageRead(hi * TWO32 + lo + s, v.u8, dst + len, c);
              if (this.changed()) return ABORT; // judged again with fresh state
              if (!ok) return this.fail(R.BAD_ADDRESS, q);
            }
            len += c;
          }
        }
      }
      if ((w3 & F_NEXT_) === 0) break;
      const next = w3 >>> 16;
      if (next >= size) return this.fail(R.NEXT_RANGE, q);
      i = next;
    }
    this.walkLeft[q] = budget - count;
    // Too long for an mbuf (no segmentation offload was offered), or shorter than its header.
    if (over || skip > 0 || len === 0) { this.stats[L.S_TX_ERRORS]++; return DROP; }
    v.setLen(len);
    return len;
  }

  // ---- receive: backend -> driver ----

  private rxPoll(): number {
    const rb = this.rb, stats = this.stats;
    const n = this.rx.rxBurst(rb, BURST);
    if (n === 0) return 0;
    this.rbHeld = n;
    // A new burst on every receiveq: no chain measured yet, the whole walk budget.
    for (let p = 0; p < this.pairs; p++) { this.measured[2 * p] = 0; this.walkLeft[2 * p] = 2 * this.qSize[2 * p]; }
    const v = this.v;
    let abort = false, k = 0, pkts = 0, bytes = 0, nobuf = 0;
    if (this.live && this.activePairs === 1 && this.qReady[0] && !this.viewsChanged()) {
      k = this.rxFast(rb, n);
      pkts = k;
      bytes = this.fastBytes;
      if (this.fastOut) { nobuf = n - k; k = n; } // no buffers for the rest
    }
    for (; k < n; k++) {
      const m = rb[k];
      if (!this.live || abort) { nobuf++; continue; }
      v.at(m);
      const len = v.pktLen;
      const q = this.activePairs > 1 ? 2 * this.steer(v.u8, v.data, v.dataLen) : 0;
      if (!this.qReady[q]) { nobuf++; continue; }
      const r = this.deliver(q, m, len);
      if (r === ABORT || r === FATAL) { abort = true; nobuf++; continue; }
      if (r === DROP) continue;
      pkts++;
      bytes += len;
    }
    this.rbHeld = 0; // before the free: a handle it fails on must not make crashed() free the others again
    pktmbufFreeBulk(rb, n, 0);
    if (pkts > 0) { stats[L.S_RX_PACKETS] += pkts; stats[L.S_RX_BYTES] += bytes; }
    if (nobuf > 0) stats[L.S_RX_NOBUF] += nobuf;
    for (let p = 0; p < this.pairs; p++) {
      if (abort || !this.live) this.take[2 * p] = 0; // interrupted: redo with fresh state
      else this.commit(2 * p);
    }
    return n;
  }

  /**
   * The common case on receiveq 0, without per-packet calls: a single-segment mbuf of the backend's
   * pool into a one-descriptor chain that holds header and frame, in the region that held the last
   * one. Returns how many packets of rb it delivered (their bytes in fastBytes); it stops at the
   * first packet that needs anything else (the general path then judges that one and the rest).
   */
  private rxFast(rb: Uint32Array, n: number): number {
    this.fastBytes = 0;
    this.fastOut = false;
    const size = this.qSize[0], mask = size - 1, take = this.take;
    const idx = Atomics.load(this.ru16[this.qAvailK[0]], (this.qAvailOff[0] >>> 1) + 1);
    const avail = (idx - this.lastAvail[0]) & 0xffff;
    if (avail > size) return 0; // the general path fails the queue
    let lim = avail - take[0];
    if (lim > n) lim = n;
    if (lim <= 0) { this.fastOut = lim === 0; return 0; }
    // Packets of the backend's pool only, so its views, hoisted, serve the copies.
    // (pool.offsetOf and the mbuf header read by hand, offsets from mbuf_layout.ts: this loop is
    // past the compiler's inlining budget.)
    const pool = this.pool, pid = pool.id, pu8 = pool.u8, pu16 = pool.u16, pu32 = pool.u32, objOff = pool.objOffset, objSize = pool.objSize;
    const du32 = this.ru32[this.qDescK[0]], dBase = this.qDescOff[0] >>> 2;
    const au16 = this.ru16[this.qAvailK[0]], aBase = (this.qAvailOff[0] >>> 1) + 2;
    const uu32 = this.ru32[this.qUsedK[0]], uBase = (this.qUsedOff[0] >>> 2) + 1;
    const win = this.wWin;
    const slot = this.lastAvail[0] + take[0], used = this.usedIdx[0] + take[0];
    let k = 0, bytes = 0, again = false;
    for (;; k++) {
      if (k === lim) {
        if (lim === n) break;
        // Out of buffers: the driver may have posted more meanwhile (looked at once per burst).
        if (again) { this.fastOut = true; break; }
        again = true;
        const more = (Atomics.load(au16, aBase - 1) - this.lastAvail[0]) & 0xffff;
        if (more > size) break; // the general path fails the queue
        lim = more - take[0] < n ? more - take[0] : n;
        if (lim <= k) { this.fastOut = true; break; }
      }
      const m = rb[k];
      if (m >>> 24 !== pid) break;
      const mo = objOff + Math.imul(m & 0xffffff, objSize);
      const len = pu32[(mo >> 2) + MbufW32.PktLen];
      if (pu16[(mo >> 1) + MbufW16.DataLen] !== len || len === 0) break; // chained (or empty): general path
      const head = au16[aBase + ((slot + k) & mask)];
      if (head >= size) break;
      const d = dBase + (head << 2);
      if ((du32[d + 3] & 0xffff) !== F_WRITE) break; // one device-writable descriptor, nothing else
      const dlen = du32[d + 2], need = HDR + len;
      if (dlen < need) break;
      const hi = du32[d + 1];
      if (hi >= MAX_HI) break;
      const a = hi * TWO32 + du32[d];
      // The whole descriptor inside a writable region mapped by fd: the last one's, another one
      // found before, or (rarely) one at() finds now.
      let j = this.wLast;
      if (!(a >= win[2 * j] && a + dlen <= win[2 * j + 1])) {
        if ((j = this.findW(hi, du32[d] | 0, dlen)) < 0) break; // the general path decides
      }
      const wk = this.wK[j], u8 = this.ru8[wk];
      const dst = a - win[2 * j], src = mo + MbufOff.Buf + pu16[(mo >> 1) + MbufW16.DataOff];
      if ((dst & 3) === 0) {
        // The header, all zero but num_buffers = 1, as three word stores.
        const u32 = this.ru32[wk], dw = dst >>> 2;
        u32[dw] = 0;
        u32[dw + 1] = 0;
        u32[dw + 2] = 0x10000;
        if ((src & 3) === 0) {
          const words = len >>> 2, sw = src >>> 2;
          for (let i = 0; i < words; i++) u32[dw + 3 + i] = pu32[sw + i];
          for (let i = words << 2; i < len; i++) u8[dst + HDR + i] = pu8[src + i];
        } else copyBytes(u8, u32, dst + HDR, pu8, pu32, src, len);
      } else {
        for (let i = 0; i < HDR; i++) u8[dst + i] = 0;
        u8[dst + 10] = 1;
        copyBytes(u8, this.ru32[wk], dst + HDR, pu8, pu32, src, len);
      }
      const u = uBase + 2 * ((used + k) & mask);
      uu32[u] = head;
      uu32[u + 1] = need;
      bytes += len;
    }
    take[0] += k;
    this.fastBytes = bytes;
    return k;
  }

  /** Flow steering over the pairs in use: a hash of the IPv4/IPv6 addresses and TCP/UDP ports. */
  private steer(u8: Uint8Array, d: number, len: number): number {
    let h = 0, from = 0, to = 0;
    const et = (u8[d + 12] << 8) | u8[d + 13];
    if (et === 0x0800 && len >= 34) {
      from = d + 26; to = d + 34;
      const ihl = (u8[d + 14] & 15) << 2, proto = u8[d + 23];
      if ((proto === 6 || proto === 17) && len >= 14 + ihl + 4) { for (let i = 0; i < 4; i++) h = Math.imul(h, 31) + u8[d + 14 + ihl + i]; }
    } else if (et === 0x86dd && len >= 54) {
      from = d + 22; to = d + 54;
    } else return 0;
    for (let i = from; i < to; i++) h = Math.imul(h, 31) + u8[i];
    h ^= h >>> 16;
    return (h >>> 0) % this.activePairs;
  }

  /** Copy one packet into receiveq q behind its header: 1, DROP (no room), FATAL or ABORT. */
  private deliver(q: number, m: number, len: number): number {
    const left = this.pending(q);
    if (left < 0) return this.fail(R.AVAIL_JUMP, q);
    const need = HDR + len;
    const max = this.mrg ? left : left > 0 ? 1 : 0;
    // Chains are measured once per burst (slots after lastAvail, cached from take on): a packet
    // that finds too little room does not make the next one walk the same chains again.
    const take0 = this.take[q], base = (q >>> 1) * this.maxQ, heads = this.chainHead, caps = this.chainCap;
    let cap = 0, chains = 0;
    while (cap < need && chains < max) {
      const s = take0 + chains;
      if (s >= this.measured[q]) {
        const head = this.headAt(q, s);
        const c = this.rxChain(q, head, false);
        if (c < 0) return c;
        // With MRG_RXBUF every buffer holds at least the header (5.1.6.3.1): no empty buffers.
        if (this.mrg && c < HDR) return this.fail(R.RX_SHORT, q);
        heads[base + s] = head;
        caps[base + s] = c;
        this.measured[q] = s + 1;
      }
      cap += caps[base + s];
      chains++;
    }
    if (cap < need) {
      // Without MRG_RXBUF a packet goes into one chain: too small a chain stays for a smaller packet.
      this.stats[chains > 0 && !this.mrg ? L.S_RX_TOO_BIG : L.S_RX_NOBUF]++;
      return DROP;
    }
    const hdr32 = this.hdr32;
    hdr32[0] = 0; // flags, gso_type, hdr_len: no offloads
    hdr32[1] = 0; // gso_size, csum_start
    hdr32[2] = chains << 16; // csum_offset, num_buffers (1 without MRG_RXBUF)
    const v = this.v.at(m); // stays at the cursor's segment until the packet is written
    this.cHdr = 0;
    this.cOff = v.data;
    this.cLeft = v.dataLen;
    this.wLeft = need;
    for (let c = 0; c < chains; c++) {
      const head = heads[base + take0 + c];
      const w = this.rxChain(q, head, true);
      if (w < 0) { this.take[q] = take0; return w; }
      this.putUsed(q, head, w);
    }
    if (this.wLeft > 0) return this.fail(R.CHAIN_CHANGED, q); // the driver rewrote descriptors under us
    return 1;
  }

  /** Walk a receive chain: its capacity, or (write) copy up to wLeft bytes into it and return them. */
  private rxChain(q: number, head: number, write: boolean): number {
    const size = this.qSize[q], p = this.plane, budget = this.walkLeft[q];
    if (head >= size) return this.fail(R.HEAD_RANGE, q);
    let i = head, count = 0, total = 0;
    for (;;) {
      if (++count > size) return this.fail(R.LOOP, q);
      if (count > budget) return this.fail(R.WALK, q);
      const du32 = this.ru32[this.qDescK[q]], d = (this.qDescOff[q] >>> 2) + 4 * i;
      const lo = du32[d], hi = du32[d + 1], dlen = du32[d + 2], w3 = du32[d + 3];
      if ((w3 & F_INDIRECT) !== 0) return this.fail(R.INDIRECT, q);
      if ((w3 & F_WRITE) === 0) return this.fail(R.DIRECTION, q);
      if (dlen > 0) {
        if (hi >= MAX_HI) return this.fail(R.BAD_ADDRESS, q);
        const j = this.findW(hi, lo | 0, dlen);
        let off = -2, k = 0;
        if (j >= 0) { k = this.wK[j]; off = hi * TWO32 + lo - this.wWin[2 * j]; }
        else {
          off = p.at(hi * TWO32 + lo, dlen, true);
          if (off === -1) return this.fail(R.BAD_ADDRESS, q);
          k = p.hit;
        }
        if (!write) total += dlen;
        else if (this.wLeft > 0) {
          const c = dlen < this.wLeft ? dlen : this.wLeft;
          const r = this.emit(hi, lo | 0, off, k, c);
          if (r < 0) return r;
          this.wLeft -= c;
          total += c;
        }
      }
      if ((w3 & F_NEXT_) === 0) break;
      const next = w3 >>> 16;
      if (next >= size) return this.fail(R.NEXT_RANGE, q);
      i = next;
    }
    this.walkLeft[q] = budget - count;
    return total;
  }

  /** Copy n bytes from the RX cursor (header, then mbuf segments) to guest address hi:lo (off in region k, or -2). */
  private emit(hi: number, lo: number, off: number, k: number, n: number): number {
    let done = 0;
    while (done < n) {
      let src8: Uint8Array, src32: Uint32Array, s: number, c: number;
      if (this.cHdr < HDR) {
        c = HDR - this.cHdr < n - done ? HDR - this.cHdr : n - done;
        src8 = this.hdr; src32 = this.hdr32; s = this.cHdr;
        this.cHdr += c;
      } else {
        const v = this.v;
        while (this.cLeft === 0) {
          const nx = v.next;
          if (nx === MBUF_NONE) { this.stats[L.S_RX_NOBUF]++; return DROP; } // pkt_len beyond the segments: a backend bug
          v.at(nx);
          this.cOff = v.data;
          this.cLeft = v.dataLen;
        }
        c = this.cLeft < n - done ? this.cLeft : n - done;
        src8 = v.u8; src32 = v.u32; s = this.cOff;
        this.cOff += c; this.cLeft -= c;
      }
      if (off >= 0) copyBytes(this.ru8[k], this.ru32[k], off + done, src8, src32, s, c);
      else {
        this.slow = true;
        const ok = this.plane.messageWrite(hi * TWO32 + (lo >>> 0) + done, src8, s, c);
        if (this.changed()) return ABORT;
        if (!ok) return this.fail(R.BAD_ADDRESS, -1);
      }
      done += c;
    }
    return done;
  }

  // ---- control queue ----

  private ctrlQueue(q: number): number {
    let n = this.pending(q);
    if (n < 0) { this.fail(R.AVAIL_JUMP, q); return 0; }
    if (n > BURST) n = BURST;
    this.walkLeft[q] = this.qSize[q];
    for (let i = 0; i < n; i++) {
      const head = this.headAt(q, i);
      const r = this.ctrlCommand(q, head);
      if (r < 0) { this.take[q] = 0; return 0; }
      this.putUsed(q, head, r);
    }
    this.commit(q);
    return n;
  }

  /** Execute one control command; the bytes written (the ack: 1, or 0 without a writable buffer). */
  private ctrlCommand(q: number, head: number): number {
    const size = this.qSize[q], p = this.plane, buf = this.ctrlBuf, budget = this.walkLeft[q];
    if (head >= size) return this.fail(R.HEAD_RANGE, q);
    let i = head, count = 0, got = 0, ack = -1, writing = false;
    for (;;) {
      if (++count > size) return this.fail(R.LOOP, q);
      if (count > budget) return this.fail(R.WALK, q);
      const du32 = this.ru32[this.qDescK[q]], d = (this.qDescOff[q] >>> 2) + 4 * i;
      const lo = du32[d], hi = du32[d + 1], dlen = du32[d + 2], w3 = du32[d + 3];
      const w = (w3 & F_WRITE) !== 0;
      if ((w3 & F_INDIRECT) !== 0) return this.fail(R.INDIRECT, q);
      if (writing && !w) return this.fail(R.DIRECTION, q); // device-readable after device-writable
      writing = w;
      if (dlen > 0) {
        if (hi >= MAX_HI) return this.fail(R.BAD_ADDRESS, q);
        const a = hi * TWO32 + lo;
        const off = p.at(a, dlen, w);
        if (off === -1) return this.fail(R.BAD_ADDRESS, q);
        if (w) { if (ack < 0) ack = a; }
        else if (got < buf.length) {
          const c = Math.min(dlen, buf.length - got);
          if (off >= 0) { const u8 = this.ru8[p.hit]; for (let b = 0; b < c; b++) buf[got + b] = u8[off + b]; }
          else {
            this.slow = true;
            const ok = p.messageRead(a, buf, got, c);
            if (this.changed()) return ABORT;
            if (!ok) return this.fail(R.BAD_ADDRESS, q);
          }
          got += c;
        }
      }
      if ((w3 & F_NEXT_) === 0) break;
      const next = w3 >>> 16;
      if (next >= size) return this.fail(R.NEXT_RANGE, q);
      i = next;
    }
    this.walkLeft[q] = budget - count;
    this.stats[L.S_CTRL]++;
    let result = V.VIRTIO_NET_ERR;
    if (got >= 4 && buf[0] === V.VIRTIO_NET_CTRL_MQ && buf[1] === V.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET && this.mq) {
      const pairs = buf[2] | (buf[3] << 8);
      if (pairs >= 1 && pairs <= this.pairs) {
        this.activePairs = pairs;
        Atomics.store(this.st, L.G_ACTIVE_PAIRS, pairs);
        result = V.VIRTIO_NET_OK;
      }
    }
    if (ack < 0) return 0;
    const off = p.at(ack, 1, true);
    if (off >= 0) this.ru8[p.hit][off] = result;
    else {
      this.ackBuf[0] = result;
      this.slow = true;
      const ok = p.messageWrite(ack, this.ackBuf, 0, 1);
      if (this.changed()) return ABORT;
      if (!ok) return this.fail(R.BAD_ADDRESS, q);
    }
    return 1;
  }
}

/** A 64-bit address from two state words; -1 when it cannot be a number (>= 2^53). */
function addr(st: Int32Array, lo: number): number {
  const hi = st[lo + 1] >>> 0;
  return hi >= MAX_HI ? -1 : hi * TWO32 + (st[lo] >>> 0);
}

/** Interpreted and baseline code box doubles until the loop is optimized: allow it a second. */
const WARMUP_MS = 1000;

/** The device's poll loop (eal.lcores.launch(lcore, VIRTIO_NET_LOOP_MODULE, 'virtioNetLoop', arg)). */
export async function virtioNetLoop(arg: VirtioNetLoopArg, ctx: LcoreContext): Promise<VirtioNetLoopResult> {
  const rx = await openRxQueue(arg.backend, 0);
  const tx = await openTxQueue(arg.backend, 0);
  const st = new Int32Array(arg.state);
  const plane = DataPlane.attach(arg.plane);
  const gc = countGc();
  const warm = performance.now() + WARMUP_MS;
  let iterations = 0, end = 0;
  try {
    const eng = new Engine(arg, plane, rx, tx);
    Atomics.store(st, L.G_RUNNING, 1);
    try {
      for (;;) {
        try {
          eng.loop(ctx);
          break;
        } catch (e) {
          if (!eng.crashed(e) && !eng.park(ctx)) break;
        }
      }
    } finally {
      iterations = eng.iterations;
    }
  } finally {
    end = performance.now();
    plane.detach();
    Atomics.store(st, L.G_IDLE, 0);
    Atomics.store(st, L.G_RUNNING, 0);
    Mempool.attach(arg.backend.rxPools[0]).flushCache();
  }
  await gc.settle();
  gc.stop();
  const after = gc.kindsBetween(warm, end);
  return { iterations, gcCount: gc.count(), gcCountAfterWarmup: after.scavenges + after.others, scavengesAfterWarmup: after.scavenges };
}
