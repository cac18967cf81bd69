/**
 * net_af_xdp data path: the four rings of one AF_XDP socket, mapped from the kernel.
 *
 * UMEM over the mempool (the normal case): the UMEM is the memory of the RX queue's mempool, so
 * the fill ring gets the address of each lent mbuf's buffer and the kernel writes a received frame
 * into that mbuf's data room: rxBurst only rewrites the header and hands the mbuf out. txBurst puts
 * the address of an mbuf's data on the TX ring as it lies (an mbuf of another pool, a chain or one
 * with more than one reference is first copied into one of ours), and the completion ring gives
 * the address back when the kernel is done with it. Every mbuf lent to the fill or the TX ring is
 * marked in a byte array per queue and direction (rxLent, txLent: SharedArrayBuffers, indexed by
 * mbuf index) so that stop returns each to its pool whatever the kernel did with it.
 *
 * Private UMEM (the fallback when the kernel refused the pool's memory): frames of our own, one
 * copy each way, as net_af_packet does.
 *
 * Ring ordering, the contract of the kernel's net/xdp/xsk_queue.h. Producer side (fill, TX: we
 * produce): write the entries, then publish the producer index with a store-release; read the
 * consumer index with a load-acquire before reusing entries it freed. Consumer side (RX,
 * completion: we consume): read the producer index with a load-acquire, then the entries, then
 * publish the consumer index with a store-release (it orders our loads of the entries before the
 * kernel's overwriting them). On x86 (TSO) loads are not reordered with loads, stores not with
 * stores, and loads not with later stores: every one of these is a plain access there, provided the
 * compiler keeps program order (V8 keeps typed-array loads and stores on one effect chain and
 * does not move them across each other). Elsewhere the index words go through Atomics.load /
 * Atomics.store (sequentially consistent: at least acquire / release). Entries never need a
 * barrier of their own. Each index is read or published once per burst, never per packet.
 */
import { viewOf, sendKick, recvKick, MSG_DONTWAIT, E } from '../../../src/os/libc.js';
import { TSO } from '../../../src/os/arch.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFree, pktmbufFreeBulk, pktmbufFreeRecorded } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { MbufOff, MbufW32, MbufVal } from '../../../lib/mempool/mbuf_layout.js';
import { copyBytes } from '../../../lib/net/copy.js';
import {
  type PortData, type RxQueue, type TxQueue, type RxInterrupt, rxqStatsBase, txqStatsBase, xstatIndex,
  RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_NOMBUF, RXQ_INTERRUPTS, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
} from '../../../lib/ethdev/ethdev.js';
import { FdRxInterrupt } from '../../../lib/ethdev/rx_intr.js';

/** One mapped ring: its mapping and the byte offsets of its words inside it (XDP_MMAP_OFFSETS). */
export interface XskRing {
  va: bigint;
  len: number;
  producer: number;
  consumer: number;
  desc: number;
  flags: number;
  /** entries, a power of two */
  size: number;
}

/** Per-queue plain data: the socket, its rings, and where its UMEM is. */
export interface AfXdpQueueData {
  fd: number;
  rx: XskRing;
  tx: XskRing;
  fill: XskRing;
  comp: XskRing;
  /** 'mempool': the UMEM is the RX pool's memory (no copy); 'private': frames of our own, one copy each way */
  umem: 'mempool' | 'private';
  /** mempool: UMEM address of the pool's zone byte 0 */
  zoneAddr: number;
  /** private: the UMEM mapping, its frame size, RX frames (the first ones) and TX frames (after them) */
  umemVa: bigint;
  umemLen: number;
  frameSize: number;
  rxFrames: number;
  txFrames: number;
  /** the longest frame TX may put on the ring (the UMEM chunk) */
  txMax: number;
  /** mempool: one byte per mbuf of the pool, 1 while lent to the fill ring (rxLent) or the TX ring (txLent) */
  rxLent: SharedArrayBuffer;
  txLent: SharedArrayBuffer;
  /** mempool: mbufs the fill ring should hold, and how many the control half put there at start */
  fillTarget: number;
  filled: number;
  /** busy polling (SO_PREFER_BUSY_POLL): an empty RX poll and every TX burst make a system call that runs the driver */
  busyPoll: boolean;
  /** give the RX queue an Rx interrupt (the port was configured with intr.rxq) */
  intr: boolean;
  /** xstat index of this queue's data-path counters (XS_*) */
  xstat: number;
}

/** This queue's data-path xstats, from AfXdpQueueData.xstat: copies on TX, TX wake-ups, RX wake-ups. */
export const XS_TX_COPIES = 0, XS_TX_WAKEUPS = 1, XS_RX_WAKEUPS = 2, XS_PER_QUEUE = 3;

// errno values from the one table (src/os/libc.ts), copied into module constants: the burst loops
// compare them per call, and a module constant costs no import-binding check per use.
const EAGAIN = E.EAGAIN, EBUSY = E.EBUSY, DONTWAIT = MSG_DONTWAIT;
/** Mbufs the fill ring gets per refill at most (and the completion scratch size). */
const BATCH = 64;
/** TX wake-ups per burst at most: copy mode sends 32 frames per call and says EAGAIN while more wait. */
const MAX_KICKS = 4;

/** A ring's mapping as u32 words, with its word indexes (producer, consumer, flags, first entry). */
class RingWords {
  declare readonly w: Uint32Array;
  declare readonly prod: number;
  declare readonly cons: number;
  declare readonly flags: number;
  declare readonly desc: number;
  declare readonly mask: number;
  declare readonly size: number;
  constructor(r: XskRing) {
    this.w = new Uint32Array(viewOf(r.va, r.len));
    this.prod = r.producer >> 2;
    this.cons = r.consumer >> 2;
    this.flags = r.flags >> 2;
    this.desc = r.desc >> 2;
    this.mask = r.size - 1;
    this.size = r.size;
  }
}

/** Load-acquire of a ring index word (a plain load on x86, see the file comment). */
function loadAcquire(w: Uint32Array, i: number, plain: boolean): number {
  return plain ? w[i] : Atomics.load(w, i);
}

/** Store-release of a ring index word (a plain store on x86, see the file comment). */
function storeRelease(w: Uint32Array, i: number, v: number, plain: boolean): void {
  if (plain) w[i] = v;
  else Atomics.store(w, i, v);
}

/** RX ring and fill ring reading shared by both RX kinds. */
abstract class XskRxBase implements RxQueue {
  declare protected readonly rx: RingWords;
  declare protected readonly fill: RingWords;
  declare protected readonly fd: number;
  declare protected readonly pool: Mempool;
  declare protected readonly busy: boolean;
  declare protected readonly plain: boolean;
  declare protected readonly stats: Float64Array;
  declare protected readonly s: number;
  /** stats index of this queue's RX wake-ups (xstats) */
  declare protected readonly xs: number;
  declare protected cons: number;
  declare protected fprod: number;
  declare readonly intr?: RxInterrupt;

  constructor(d: AfXdpQueueData, pool: Mempool, stats: Float64Array, s: number) {
    this.rx = new RingWords(d.rx);
    this.fill = new RingWords(d.fill);
    this.fd = d.fd;
    this.pool = pool;
    this.busy = d.busyPoll;
    this.plain = TSO;
    this.stats = stats;
    this.s = s;
    this.xs = xstatIndex(d.xstat + XS_RX_WAKEUPS);
    this.cons = this.rx.w[this.rx.cons];
    this.fprod = this.fill.w[this.fill.prod];
    if (d.intr) this.intr = new FdRxInterrupt(d.fd, stats, s + RXQ_INTERRUPTS, () => this.pending());
  }

  /** Frames wait in the RX ring (no system call). */
  private pending(): boolean {
    return loadAcquire(this.rx.w, this.rx.prod, this.plain) !== this.cons;
  }

  abstract rxBurst(out: Uint32Array, n: number): number;
}

/** RX with the UMEM over the pool: frames land in the mbufs the fill ring lent. */
class XskRxPool extends XskRxBase {
  declare private readonly pu32: Uint32Array;
  declare private readonly lent: Uint8Array;
  declare private readonly poolHi: number;
  declare private readonly objOff: number;
  declare private readonly objSize: number;
  declare private readonly nObj: number;
  /** UMEM address of mbuf 0's buffer (header end) */
  declare private readonly buf0: number;
  declare private readonly portBuf: number;
  declare private readonly target: number;
  declare private readonly scratch: Uint32Array;
  declare private inFill: number;

  constructor(d: AfXdpQueueData, pool: Mempool, port: number, stats: Float64Array, s: number) {
    super(d, pool, stats, s);
    this.pu32 = pool.u32;
    this.lent = new Uint8Array(d.rxLent);
    this.poolHi = pool.id << 24;
    this.objOff = pool.objOffset;
    this.objSize = pool.objSize;
    this.nObj = this.lent.length;
    this.buf0 = d.zoneAddr + pool.objOffset + MbufOff.Buf;
    this.portBuf = MbufView.portBufWord(pool, port);
    this.target = d.fillTarget;
    this.scratch = new Uint32Array(BATCH);
    this.inFill = d.filled;
  }

  rxBurst(out: Uint32Array, n: number): number {
    const rx = this.rx, w = rx.w, cons = this.cons;
    let avail = (loadAcquire(w, rx.prod, this.plain) - cons) >>> 0;
    if (avail === 0) {
      if (this.inFill < this.target) this.refill(false);
      // Busy polling: the system call runs the driver's NAPI poll in this thread. A zero-copy
      // driver that ran dry asks for the same call through the fill ring's flag.
      if (this.busy || (this.fill.w[this.fill.flags] & 1) !== 0) {
        recvKick(this.fd, DONTWAIT);
        this.stats[this.xs]++;
      }
      return 0;
    }
    if (avail > n) avail = n;
    const u32 = this.pu32, lent = this.lent, mask = rx.mask, desc = rx.desc;
    const buf0 = this.buf0, objOff = this.objOff, objSize = this.objSize, nObj = this.nObj, hi = this.poolHi, portBuf = this.portBuf;
    let got = 0, bytes = 0, errors = 0;
    for (let i = 0; i < avail; i++) {
      const e = desc + (((cons + i) & mask) << 2); // xdp_desc: addr lo, addr hi, len, options
      const addr = w[e], len = w[e + 2];
      // Unaligned chunks: the low 48 bits are the fill address we gave (an mbuf's buffer start),
      // the high 16 the data's offset from it (XDP_PACKET_HEADROOM + the UMEM headroom).
      const off = w[e + 1] >>> 16;
      const rel = addr - buf0, idx = (rel / objSize) | 0;
      if (rel < 0 || idx * objSize !== rel || idx >= nObj || lent[idx] !== 1) {
        errors++; // not an address this queue lent: the kernel's, or a bug; it is not ours to hand out
        continue;
      }
      lent[idx] = 0;
      const hw = (objOff + Math.imul(idx, objSize)) >> 2;
      // The whole header, as for a device that could have written it: lengths, data offset, one
      // reference and segment, port and buf_len, no flags, no next, no packet type.
      u32[hw + MbufW32.PktLen] = len;
      u32[hw + MbufW32.LenOff] = (len | (off << 16)) >>> 0;
      u32[hw + MbufW32.RefSegs] = MbufVal.RefSegsSole;
      u32[hw + MbufW32.PortBuf] = portBuf;
      u32[hw + MbufW32.OlFlagsLo] = 0;
      u32[hw + MbufW32.OlFlagsHi] = 0;
      u32[hw + MbufW32.Next] = MbufVal.None;
      u32[hw + MbufW32.Ptype] = 0;
      out[got++] = hi | idx;
      bytes += len;
    }
    this.cons = (cons + avail) >>> 0;
    storeRelease(w, rx.cons, this.cons, this.plain);
    this.inFill -= got;
    this.refill(true);
    const st = this.stats, s = this.s;
    st[s + RXQ_PACKETS] += got;
    st[s + RXQ_BYTES] += bytes;
    if (errors > 0) st[s + RXQ_ERRORS] += errors;
    return got;
  }

  /**
   * Lend mbufs to the fill ring up to its target, and wake the kernel when the ring's flag asks
   * and `kick` allows. The ring always has room: it never holds more than the mbufs lent to it
   * (inFill), and inFill stays at most its size.
   */
  private refill(kick: boolean): void {
    let want = this.target - this.inFill;
    if (want <= 0) return;
    if (want > BATCH) want = BATCH;
    const sc = this.scratch;
    if (!this.pool.allocBulk(sc, want)) {
      this.stats[this.s + RXQ_NOMBUF]++; // an allocation failure; the next burst tries again
      return;
    }
    const f = this.fill, w = f.w, mask = f.mask, desc = f.desc, lent = this.lent, buf0 = this.buf0, objSize = this.objSize;
    const p = this.fprod;
    for (let k = 0; k < want; k++) {
      const idx = sc[k] & 0xffffff;
      lent[idx] = 1;
      const e = desc + (((p + k) & mask) << 1); // u64 address: lo, hi (0: a UMEM is below 4 GiB)
      w[e] = buf0 + Math.imul(idx, objSize);
      w[e + 1] = 0;
    }
    this.fprod = (p + want) >>> 0;
    storeRelease(w, f.prod, this.fprod, this.plain);
    this.inFill += want;
    if (kick && (w[f.flags] & 1) !== 0) { // XDP_RING_NEED_WAKEUP
      recvKick(this.fd, DONTWAIT);
      this.stats[this.xs]++;
    }
  }
}

/** Completion-ring reading shared by both TX kinds. */
abstract class XskTxBase implements TxQueue {
  declare protected readonly tx: RingWords;
  declare protected readonly comp: RingWords;
  declare protected readonly fd: number;
  declare protected readonly busy: boolean;
  declare protected readonly plain: boolean;
  declare protected readonly stats: Float64Array;
  declare protected readonly s: number;
  /** stats indexes of this queue's TX copies and TX wake-ups (xstats) */
  declare protected readonly xsCopies: number;
  declare protected readonly xsWakeups: number;
  declare protected readonly txMax: number;
  declare protected prod: number;
  /** the kernel's TX consumer index as last read */
  declare protected tcons: number;
  declare protected ccons: number;

  constructor(d: AfXdpQueueData, stats: Float64Array, s: number) {
    this.tx = new RingWords(d.tx);
    this.comp = new RingWords(d.comp);
    this.fd = d.fd;
    this.busy = d.busyPoll;
    this.plain = TSO;
    this.stats = stats;
    this.s = s;
    this.xsCopies = xstatIndex(d.xstat + XS_TX_COPIES);
    this.xsWakeups = xstatIndex(d.xstat + XS_TX_WAKEUPS);
    this.txMax = d.txMax;
    this.prod = this.tx.w[this.tx.prod];
    this.tcons = this.tx.w[this.tx.cons];
    this.ccons = this.comp.w[this.comp.cons];
  }

  abstract txBurst(pkts: Uint32Array, n: number, off?: number): number;

  /** Free TX ring slots, reading the kernel's consumer index again only when the cached one says too few. */
  protected room(n: number): number {
    const t = this.tx;
    let free = t.size - ((this.prod - this.tcons) >>> 0);
    if (free < n) {
      this.tcons = loadAcquire(t.w, t.cons, this.plain);
      free = t.size - ((this.prod - this.tcons) >>> 0);
    }
    return free;
  }

  /** Publish `slots` new TX entries and wake the kernel when it asks (or always, with busy polling). */
  protected publish(slots: number): void {
    const t = this.tx;
    this.prod = (this.prod + slots) >>> 0;
    storeRelease(t.w, t.prod, this.prod, this.plain);
    if (!this.busy && (t.w[t.flags] & 1) === 0) return; // XDP_RING_NEED_WAKEUP clear: the driver polls
    for (let i = 0; i < MAX_KICKS; i++) {
      const r = sendKick(this.fd, DONTWAIT);
      this.stats[this.xsWakeups]++;
      // EAGAIN: the kernel sent a batch and more wait, or the completion ring is full (empty it);
      // anything else (ENOBUFS, ENETDOWN: interface down or gone) leaves the frames on the ring
      // for the next burst's wake-up.
      if (r >= 0 || (r !== -EAGAIN && r !== -EBUSY)) return;
      this.reclaim();
      if (loadAcquire(t.w, t.cons, this.plain) === this.prod) return;
    }
  }

  /** Take what the completion ring gives back. */
  protected abstract reclaim(): void;
}

/** TX with the UMEM over the pool: mbufs of the pool are sent from where they lie. */
class XskTxPool extends XskTxBase {
  declare private readonly pool: Mempool;
  declare private readonly pu8: Uint8Array;
  declare private readonly pu32: Uint32Array;
  declare private readonly lent: Uint8Array;
  declare private readonly poolId: number;
  declare private readonly zoneAddr: number;
  declare private readonly objOff: number;
  declare private readonly objSize: number;
  declare private readonly nObj: number;
  declare private readonly headroom: number;
  declare private readonly bufLen: number;
  declare private readonly v: MbufView;
  declare private readonly scratch: Uint32Array;
  declare private readonly one: Uint32Array;

  constructor(d: AfXdpQueueData, pool: Mempool, stats: Float64Array, s: number) {
    super(d, stats, s);
    this.pool = pool;
    this.pu8 = pool.u8;
    this.pu32 = pool.u32;
    this.lent = new Uint8Array(d.txLent);
    this.poolId = pool.id;
    this.zoneAddr = d.zoneAddr;
    this.objOff = pool.objOffset;
    this.objSize = pool.objSize;
    this.nObj = this.lent.length;
    this.headroom = pool.userWord(0);
    this.bufLen = pool.userWord(0) + pool.userWord(1);
    this.v = new MbufView();
    this.scratch = new Uint32Array(BATCH);
    this.one = new Uint32Array(1);
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    this.reclaim();
    const free = this.room(n);
    const t = this.tx, w = t.w, mask = t.mask, desc = t.desc, lent = this.lent, v = this.v;
    const pid = this.poolId, zoneAddr = this.zoneAddr, txMax = this.txMax, bufLen = this.bufLen, p = this.prod;
    let k = 0, slots = 0, bytes = 0, errors = 0, copies = 0;
    for (; k < n && slots < free; k++) {
      const m = pkts[off + k];
      v.at(m);
      let idx = 0, addr = 0, len = 0;
      if (m >>> 24 === pid && v.refSegs === MbufVal.RefSegsSole) {
        // Ours alone: its data goes on the ring where it lies.
        len = v.dataLen;
        if (len > txMax || v.dataOff + len > bufLen) {
          errors++; // does not fit a chunk (or a header that lies): dropped
          this.one[0] = m;
          pktmbufFreeRecorded(this.one, 1);
          continue;
        }
        idx = m & 0xffffff;
        addr = zoneAddr + v.data;
      } else {
        // Another pool's, a chain, or shared: copied into one of ours, the original freed.
        len = v.pktLen;
        if (len > txMax || this.headroom + len > bufLen) {
          errors++;
          pktmbufFree(m);
          continue;
        }
        const c = this.copyIn(m, len);
        if (c < 0) break; // our pool is empty: the rest stays the caller's
        idx = c;
        addr = zoneAddr + this.objOff + Math.imul(idx, this.objSize) + MbufOff.Buf + this.headroom;
        copies++;
      }
      lent[idx] = 1;
      const e = desc + (((p + slots) & mask) << 2);
      w[e] = addr;
      w[e + 1] = 0;
      w[e + 2] = len;
      w[e + 3] = 0;
      slots++;
      bytes += len;
    }
    if (slots > 0) this.publish(slots);
    const st = this.stats, s = this.s;
    st[s + TXQ_PACKETS] += slots;
    st[s + TXQ_BYTES] += bytes;
    if (errors > 0) st[s + TXQ_ERRORS] += errors;
    if (copies > 0) st[this.xsCopies] += copies;
    return k;
  }

  /** Copy packet m (len bytes, any pool, any chain) into a new mbuf of ours and free m; the new index, or -1 when our pool is empty. */
  private copyIn(m: number, len: number): number {
    if (!this.pool.allocBulk(this.one, 1)) return -1;
    const idx = this.one[0] & 0xffffff;
    const o = this.objOff + Math.imul(idx, this.objSize), hw = o >> 2, u32 = this.pu32;
    let at = o + MbufOff.Buf + this.headroom;
    const v = this.v;
    for (let seg = m; ;) {
      const sl = v.dataLen;
      copyBytes(this.pu8, u32, at, v.u8, v.u32, v.data, sl);
      at += sl;
      seg = v.next;
      if (seg === MbufVal.None) break;
      v.at(seg);
    }
    pktmbufFree(m);
    // A lone segment with one reference; only its lengths and data offset matter to TX and stop.
    u32[hw + MbufW32.PktLen] = len;
    u32[hw + MbufW32.LenOff] = (len | (this.headroom << 16)) >>> 0;
    u32[hw + MbufW32.RefSegs] = MbufVal.RefSegsSole;
    u32[hw + MbufW32.Next] = MbufVal.None;
    return idx;
  }

  protected reclaim(): void {
    const c = this.comp, w = c.w;
    const prod = loadAcquire(w, c.prod, this.plain);
    let cons = this.ccons;
    if (prod === cons) return;
    const mask = c.mask, desc = c.desc, lent = this.lent, sc = this.scratch, base = this.zoneAddr + this.objOff;
    const objSize = this.objSize, nObj = this.nObj, hi = this.poolId << 24;
    let j = 0, errors = 0;
    while (cons !== prod) {
      // The address we put on the TX ring: somewhere in the mbuf's data room.
      const rel = w[desc + ((cons & mask) << 1)] - base, idx = (rel / objSize) | 0;
      cons = (cons + 1) >>> 0;
      if (rel < 0 || idx >= nObj || lent[idx] !== 1) {
        errors++;
        continue;
      }
      lent[idx] = 0;
      sc[j++] = hi | idx;
      if (j === BATCH) {
        pktmbufFreeRecorded(sc, j);
        j = 0;
      }
    }
    this.ccons = cons;
    storeRelease(w, c.cons, cons, this.plain);
    if (j > 0) pktmbufFreeRecorded(sc, j);
    if (errors > 0) this.stats[this.s + TXQ_ERRORS] += errors;
  }
}

/** RX with a private UMEM: each frame copied into a new mbuf, its frame back on the fill ring at once. */
class XskRxPrivate extends XskRxBase {
  declare private readonly port: number;
  declare private readonly u8: Uint8Array;
  declare private readonly u32: Uint32Array;
  declare private readonly frameMask: number;
  declare private readonly room: number;
  declare private readonly v: MbufView;

  constructor(d: AfXdpQueueData, pool: Mempool, port: number, stats: Float64Array, s: number) {
    super(d, pool, stats, s);
    this.port = port;
    const ab = viewOf(d.umemVa, d.umemLen);
    this.u8 = new Uint8Array(ab);
    this.u32 = new Uint32Array(ab);
    this.frameMask = d.frameSize - 1;
    this.room = pool.userWord(1);
    this.v = new MbufView();
  }

  rxBurst(out: Uint32Array, n: number): number {
    const rx = this.rx, w = rx.w, cons = this.cons;
    let avail = (loadAcquire(w, rx.prod, this.plain) - cons) >>> 0;
    if (avail === 0) {
      if (this.busy || (this.fill.w[this.fill.flags] & 1) !== 0) {
        recvKick(this.fd, DONTWAIT);
        this.stats[this.xs]++;
      }
      return 0;
    }
    if (avail > n) avail = n;
    const pool = this.pool;
    if (!pktmbufAllocInit(pool, out, avail, 0, 0, this.port)) {
      this.stats[this.s + RXQ_NOMBUF]++; // the frames wait in the ring for the next burst
      return 0;
    }
    const f = this.fill, fw = f.w, fmask = f.mask, fdesc = f.desc, fp = this.fprod;
    const mask = rx.mask, desc = rx.desc, u8 = this.u8, u32 = this.u32, v = this.v, room = this.room, fm = this.frameMask;
    let got = 0, bytes = 0, errors = 0;
    for (let i = 0; i < avail; i++) {
      const e = desc + (((cons + i) & mask) << 2);
      const addr = w[e], len = w[e + 2]; // aligned chunks: addr is where the data starts
      const fe = fdesc + (((fp + i) & fmask) << 1);
      fw[fe] = addr & ~fm; // the frame goes back to the fill ring
      fw[fe + 1] = 0;
      if (len > room) {
        errors++;
        continue;
      }
      v.at(out[got]);
      v.setLen(len);
      copyBytes(v.u8, v.u32, v.data, u8, u32, addr, len);
      bytes += len;
      got++;
    }
    this.cons = (cons + avail) >>> 0;
    storeRelease(w, rx.cons, this.cons, this.plain);
    this.fprod = (fp + avail) >>> 0;
    storeRelease(fw, f.prod, this.fprod, this.plain);
    if ((fw[f.flags] & 1) !== 0) {
      recvKick(this.fd, DONTWAIT);
      this.stats[this.xs]++;
    }
    if (got < avail) pool.freeBulk(out, avail - got, got);
    const st = this.stats, s = this.s;
    st[s + RXQ_PACKETS] += got;
    st[s + RXQ_BYTES] += bytes;
    if (errors > 0) st[s + RXQ_ERRORS] += errors;
    return got;
  }
}

/** TX with a private UMEM: each packet copied into a free TX frame, the mbuf freed at once. */
class XskTxPrivate extends XskTxBase {
  declare private readonly u8: Uint8Array;
  declare private readonly u32: Uint32Array;
  declare private readonly frameMask: number;
  declare private readonly v: MbufView;
  /** free TX frames (UMEM addresses), a stack */
  declare private readonly frames: Uint32Array;
  declare private nfree: number;

  constructor(d: AfXdpQueueData, stats: Float64Array, s: number) {
    super(d, stats, s);
    const ab = viewOf(d.umemVa, d.umemLen);
    this.u8 = new Uint8Array(ab);
    this.u32 = new Uint32Array(ab);
    this.frameMask = d.frameSize - 1;
    this.v = new MbufView();
    this.frames = new Uint32Array(d.txFrames);
    // Frames on the ring or in the completion ring (a restart reopens a fresh socket: none).
    const out = (this.prod - this.ccons) >>> 0;
    this.nfree = d.txFrames - out;
    for (let i = 0; i < this.nfree; i++) this.frames[i] = (d.rxFrames + i) * d.frameSize;
  }

  txBurst(pkts: Uint32Array, n: number, off = 0): number {
    this.reclaim();
    const free = this.room(n);
    const t = this.tx, w = t.w, mask = t.mask, desc = t.desc, v = this.v, u8 = this.u8, u32 = this.u32, txMax = this.txMax, p = this.prod;
    let k = 0, slots = 0, bytes = 0, errors = 0;
    for (; k < n && slots < free && this.nfree > 0; k++) {
      v.at(pkts[off + k]);
      const len = v.pktLen;
      if (len > txMax) {
        errors++; // freed with the others below
        continue;
      }
      const frame = this.frames[--this.nfree];
      let at = frame;
      for (;;) {
        const sl = v.dataLen;
        copyBytes(u8, u32, at, v.u8, v.u32, v.data, sl);
        at += sl;
        const next = v.next;
        if (next === MbufVal.None) break;
        v.at(next);
      }
      const e = desc + (((p + slots) & mask) << 2);
      w[e] = frame;
      w[e + 1] = 0;
      w[e + 2] = len;
      w[e + 3] = 0;
      slots++;
      bytes += len;
    }
    if (slots > 0) this.publish(slots);
    pktmbufFreeBulk(pkts, k, off);
    const st = this.stats, s = this.s;
    st[s + TXQ_PACKETS] += slots;
    st[s + TXQ_BYTES] += bytes;
    if (errors > 0) st[s + TXQ_ERRORS] += errors;
    return k;
  }

  protected reclaim(): void {
    const c = this.comp, w = c.w;
    const prod = loadAcquire(w, c.prod, this.plain);
    let cons = this.ccons;
    if (prod === cons) return;
    const mask = c.mask, desc = c.desc, fm = this.frameMask, frames = this.frames;
    while (cons !== prod) {
      frames[this.nfree++] = w[desc + ((cons & mask) << 1)] & ~fm;
      cons = (cons + 1) >>> 0;
    }
    this.ccons = cons;
    storeRelease(w, c.cons, cons, this.plain);
  }
}

/** Rebuild RX queue q in this thread. */
export function openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue {
  const d = port.rxq[q] as AfXdpQueueData;
  const pool = Mempool.attach(port.rxPools[q]);
  return d.umem === 'mempool' ? new XskRxPool(d, pool, port.port, stats, rxqStatsBase(q)) : new XskRxPrivate(d, pool, port.port, stats, rxqStatsBase(q));
}

/** Rebuild TX queue q in this thread. */
export function openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue {
  const d = port.txq[q] as AfXdpQueueData;
  return d.umem === 'mempool'
    ? new XskTxPool(d, Mempool.attach(port.rxPools[q]), stats, txqStatsBase(q))
    : new XskTxPrivate(d, stats, txqStatsBase(q));
}
