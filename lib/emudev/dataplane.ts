/**
 * The emudev data plane: how an emulated device's poll loops run on lcores (worker threads) while
 * the vfio-user transport keeps running on the main thread.
 *
 * Up to MAX_PLANE_LCORES workers attach to one device at once (a network port's RX and its TX
 * polled by two lcores, as l2fwd with two workers does), each a DataPlane of its own: its own
 * views of client memory and translation state, a slot (a bit in the ATTACHED word and an
 * acknowledgement word). The threads share one SharedArrayBuffer (the control block), never JS
 * objects:
 *   - the client's DMA memory table (iova, length, flags, local address), so each worker builds its
 *     own views of client memory and translates IOVAs with bounds and permission checks;
 *   - the IRQ table (eventfd, masked, pending per vector), so workers raise interrupts themselves
 *     (atomically: two raising one vector at once deliver or hold it like one raising it twice);
 *   - a pause handshake: before the main thread changes either table (DMA_MAP/UNMAP, SET_IRQS,
 *     reset, disconnect) it asks the workers to pause, waits until every attached one acknowledged,
 *     changes the table (and only then unmaps memory or closes fds), and releases them; each
 *     rebuilds its views. A view is therefore never used after its memory is unmapped. Each request
 *     carries a new epoch number and each worker acknowledges that epoch in its slot's word, so an
 *     acknowledgement left over from the previous pause is never taken for the current one; the
 *     request is raised even when no worker is attached, so a worker attaching meanwhile parks in
 *     attach() until the change is done (it raises its ATTACHED bit then reads the request, the
 *     main thread the other way round). A worker detaching meanwhile is no longer waited for;
 *   - a mailbox for client memory that came without fd: a worker takes it (one request at a time
 *     for all workers: MAIL_OP is also its lock word), posts a read or write and waits; the main
 *     thread performs it with DMA_READ/WRITE messages and answers through a bounce buffer, and the
 *     worker frees the mailbox once it has the answer. A request the worker gave up on (timeout) is
 *     marked abandoned and keeps the mailbox busy until the main thread is done with it, so a late
 *     answer never lands in a later request;
 *   - the doorbell table: the ioeventfds a vfio-user server made for the device's declared FD
 *     doorbells (one word each, -1 when none), set inside quiesce like the IRQ table; a worker
 *     reads them without blocking (doorbell(i)), so a signal there has the effect of the write,
 *     and an idle loop may sleep on them (sleepOnDoorbells). Which worker reads which doorbell is
 *     the device's business (a doorbell's count goes to the one that reads it).
 *
 * Devices may keep their own state in another SharedArrayBuffer and change it inside quiesce() too;
 * wake() interrupts every worker's idle sleep (e.g. after a doorbell written through REGION_WRITE).
 *
 * The main half is DataPlaneControl (owned by EmuDevice); the worker half is DataPlane, built in
 * the lcore from DataPlaneControl.desc(). Addresses are numbers in the worker: IOVAs at or above
 * 2^53 cannot be expressed and are treated as unmapped.
 */
import * as os from '../../src/os/libc.js';
import { PiecedView } from '../../src/os/pieces.js';
import { log } from '../../src/log.js';

/** How many lcores may attach to one device's data plane at once. */
export const MAX_PLANE_LCORES = 8;
// Control words (Int32 indexes). ATTACHED: a bit per attached slot. ACK_SEQ: bumped (and notified)
// by every acknowledgement and detach, so quiesce() sleeps on one word for all of them.
const ATTACHED = 0, PAUSE_REQ = 1, ACK_SEQ = 2, DMA_GEN = 3, DMA_COUNT = 4;
const MAIL_OP = 5, MAIL_DONE = 6, MAIL_LEN = 7, MAIL_IOVA_LO = 8, MAIL_IOVA_HI = 9;
/** set when an eventfd write met EAGAIN: some unmasked vector holds a pending interrupt to retry */
const IRQ_RETRY = 10;
/** the epoch each slot acknowledged last (0: none), one word per slot */
const ACK_BASE = 16;
const HEADER_WORDS = ACK_BASE + MAX_PLANE_LCORES;
const ALL_SLOTS = (1 << MAX_PLANE_LCORES) - 1;
/**
 * Mailbox states, in MAIL_OP. NONE: free; CLAIMED: a worker holds it and fills it in; READ/WRITE:
 * posted, the main thread works on it; ANSWERED: done (result in MAIL_DONE), the worker copies the
 * answer out of the bounce buffer and frees it; ABANDONED: the worker timed out, the main thread
 * frees it when done. Every transition away from a state another thread may also change is a
 * compareExchange.
 */
const OP_NONE = 0, OP_READ = 1, OP_WRITE = 2, OP_ABANDONED = 3, OP_CLAIMED = 4, OP_ANSWERED = 5;
const DONE_OK = 1, DONE_FAILED = 2;
// IRQ vector words: eventfd, masked, pending.
const IRQ_FD = 0, IRQ_MASKED = 1, IRQ_PENDING = 2, IRQ_WORDS = 3;
/**
 * The masked word is a set of reasons, the vector is masked while any is set: SET_IRQS MASK (and
 * INTx's automask), the vector's mask bit in an MSI-X table, the MSI-X function mask.
 */
export const MASK_IRQ = 1, MASK_VECTOR = 2, MASK_FUNCTION = 4;
const EAGAIN = os.E.EAGAIN;
// DMA table entry words: iova lo/hi, length lo/hi, flags, va lo/hi.
const DMA_WORDS = 7;
/** Size of the mailbox's bounce buffer; larger transfers go in pieces. */
const BOUNCE = 64 * 1024;
/** How long the main thread waits for a worker to acknowledge a pause. */
const PAUSE_TIMEOUT_MS = 5000;
/** How long a worker waits for the main thread to answer a mailbox request. */
const MAIL_TIMEOUT_MS = 10_000;

const DMA_FLAG_READ = 1, DMA_FLAG_WRITE = 2;
/** VFIO_PCI_INTX_IRQ_INDEX: automasked when signalled */
const INTX_INDEX = 0;
const TWO32 = 0x1_0000_0000;

/** One DMA region as the control half publishes it. */
export interface PlaneRegion {
  iova: bigint;
  len: number;
  flags: number;
  /** local address (0n: the client sent no fd; reachable through the mailbox only) */
  va: bigint;
}

/** Plain data from which a worker builds its DataPlane (structured-cloneable). */
export interface DataPlaneDesc {
  name: string;
  control: SharedArrayBuffer;
  bounce: SharedArrayBuffer;
  maxRegions: number;
  /** first vector word of each IRQ index, and its vector count */
  irqBase: number[];
  irqCount: number[];
  /** where the DMA table starts (Int32 index) */
  dmaBase: number;
  /** where the doorbell table starts (Int32 index), and how many doorbells it holds */
  doorbellBase: number;
  doorbellCount: number;
}

/** How the control half reaches client memory for the mailbox (EmuDevice.dmaRead/dmaWrite). */
export interface PlaneMemoryAccess {
  read(iova: bigint, len: number): Promise<Uint8Array>;
  write(iova: bigint, data: Uint8Array): Promise<void>;
}

/** The main thread's half: publishes tables, pauses the worker around changes, serves the mailbox. */
export class DataPlaneControl {
  private readonly ctl: Int32Array;
  private readonly bounce: Uint8Array;
  private readonly irqBase: number[] = [];
  private readonly irqCount: number[] = [];
  private readonly dmaBase: number;
  private readonly doorbellBase: number;
  private pauseDepth = 0;
  private epoch = 0;
  private serving = false;
  private closed = false;
  /** releases (munmap, close) that wait for the worker's next acknowledged pause */
  private deferred: Array<() => void> = [];
  /** how long quiesce() waits for the worker to acknowledge a pause (ms) */
  pauseTimeoutMs = PAUSE_TIMEOUT_MS;

  /** Lay out the control block for irqCounts[index] vectors, doorbells FD doorbells and up to maxRegions DMA regions. */
  constructor(readonly name: string, irqCounts: number[], readonly maxRegions: number, private readonly memory: PlaneMemoryAccess, readonly doorbells = 0) {
    let w = HEADER_WORDS;
    for (const c of irqCounts) {
      this.irqBase.push(w);
      this.irqCount.push(c);
      w += c * IRQ_WORDS;
    }
    this.doorbellBase = w;
    w += doorbells;
    this.dmaBase = w;
    this.ctl = new Int32Array(new SharedArrayBuffer(4 * (w + maxRegions * DMA_WORDS)));
    this.bounce = new Uint8Array(new SharedArrayBuffer(BOUNCE));
    for (let i = 0; i < irqCounts.length; i++) for (let v = 0; v < irqCounts[i]; v++) this.ctl[this.irqBase[i] + v * IRQ_WORDS + IRQ_FD] = -1;
    this.ctl.fill(-1, this.doorbellBase, this.doorbellBase + doorbells);
  }

  /** Plain data for DataPlane.attach in a worker; starts serving the mailbox. */
  desc(): DataPlaneDesc {
    this.serveMailbox();
    return {
      name: this.name, control: this.ctl.buffer as SharedArrayBuffer, bounce: this.bounce.buffer as SharedArrayBuffer,
      maxRegions: this.maxRegions, irqBase: [...this.irqBase], irqCount: [...this.irqCount], dmaBase: this.dmaBase,
      doorbellBase: this.doorbellBase, doorbellCount: this.doorbells,
    };
  }

  /** Whether a worker is attached. */
  get attached(): boolean {
    return Atomics.load(this.ctl, ATTACHED) !== 0;
  }

  /** How many workers are attached (at most MAX_PLANE_LCORES). */
  get attachedCount(): number {
    let m = Atomics.load(this.ctl, ATTACHED), n = 0;
    for (; m !== 0; m &= m - 1) n++;
    return n;
  }

  /** How many attached workers have not acknowledged epoch e yet (0: all are parked, or none is attached). */
  private unpaused(e: number): number {
    const m = Atomics.load(this.ctl, ATTACHED);
    let n = 0;
    for (let s = 0; s < MAX_PLANE_LCORES; s++) if ((m & (1 << s)) !== 0 && Atomics.load(this.ctl, ACK_BASE + s) !== e) n++;
    return n;
  }

  /**
   * Run fn while every attached worker is paused (at once when none is attached): none touches
   * client memory or an eventfd until fn returns. Nests. Throws when one does not acknowledge.
   */
  quiesce<T>(fn: () => T): T {
    if (this.pauseDepth > 0) {
      this.pauseDepth++;
      try { return fn(); } finally { this.pauseDepth--; }
    }
    // A fresh epoch: a stale acknowledgement (of the previous pause) never matches it. Raised even
    // without a worker, so one that attaches now parks until the change below is done: a worker
    // sets its ATTACHED bit then reads the request, this thread stores the request then reads the
    // bits, so either it waits for that worker's acknowledgement or the worker sees the request.
    this.epoch = (this.epoch % 0x7fff_ffff) + 1;
    const e = this.epoch;
    Atomics.store(this.ctl, PAUSE_REQ, e);
    Atomics.notify(this.ctl, PAUSE_REQ);
    const deadline = Date.now() + this.pauseTimeoutMs;
    for (;;) {
      const seq = Atomics.load(this.ctl, ACK_SEQ); // before the check: an acknowledgement after it changes seq
      const late = this.unpaused(e);
      if (late === 0) break;
      if (Date.now() > deadline) {
        Atomics.store(this.ctl, PAUSE_REQ, 0);
        Atomics.notify(this.ctl, PAUSE_REQ);
        const who = late === 1 && this.attachedCount === 1 ? 'the device\'s lcore' : `${late} of the device's ${this.attachedCount} lcores`;
        throw new Error(`${this.name}: ${who} did not pause within ${this.pauseTimeoutMs} ms (is a poll loop blocked, or not calling service()?)`);
      }
      Atomics.wait(this.ctl, ACK_SEQ, seq, 50);
    }
    this.pauseDepth++;
    try {
      this.runDeferred();
      return fn();
    } finally {
      this.pauseDepth--;
      Atomics.store(this.ctl, PAUSE_REQ, 0);
      Atomics.notify(this.ctl, PAUSE_REQ);
    }
  }

  /**
   * Run fn as if the worker were paused when it does not acknowledge (a wedged poll loop): quiesce()
   * calls inside run at once. Only for changes that must happen regardless (disconnect, reset): the
   * tables fn publishes are picked up at the worker's next service(); memory and fds the worker
   * may still use must be released with deferRelease(), never inside fn.
   */
  force<T>(fn: () => T): T {
    this.pauseDepth++;
    try { return fn(); } finally { this.pauseDepth--; }
  }

  /**
   * Release something a worker may still use (unmap, close) once it is known that none does: after
   * the next pause every attached worker acknowledges, or at once when none is attached.
   */
  deferRelease(fn: () => void): void {
    this.deferred.push(fn);
    if (!this.attached && this.pauseDepth === 0) this.runDeferred();
  }

  /** Releases still waiting for the worker (deferRelease). */
  get deferredReleases(): number {
    return this.deferred.length;
  }

  /** Run the deferred releases (each one's error is reported, the others still run). */
  private runDeferred(): void {
    while (this.deferred.length) {
      const fn = this.deferred.shift()!;
      try { fn(); } catch (e) { log('warn', 'emudev', `${this.name}: deferred release failed: ${(e as Error).message}`); }
    }
  }

  /** Wake every attached worker from sleep() now (e.g. a doorbell arrived through a trapped write). */
  wake(): void {
    Atomics.notify(this.ctl, PAUSE_REQ);
  }

  /** Publish the DMA table (call inside quiesce when a worker may be attached). */
  publishDma(regions: readonly PlaneRegion[]): void {
    if (regions.length > this.maxRegions) throw new RangeError(`${this.name}: ${regions.length} DMA regions exceed the data plane's ${this.maxRegions}`);
    regions.forEach((r, i) => {
      const o = this.dmaBase + i * DMA_WORDS;
      this.ctl[o] = Number(r.iova & 0xffffffffn) | 0;
      this.ctl[o + 1] = Number((r.iova >> 32n) & 0xffffffffn) | 0;
      this.ctl[o + 2] = r.len % TWO32 | 0;
      this.ctl[o + 3] = Math.floor(r.len / TWO32);
      this.ctl[o + 4] = r.flags;
      this.ctl[o + 5] = Number(r.va & 0xffffffffn) | 0;
      this.ctl[o + 6] = Number(r.va >> 32n) | 0;
    });
    Atomics.store(this.ctl, DMA_COUNT, regions.length);
    Atomics.add(this.ctl, DMA_GEN, 1);
  }

  /** The ioeventfd of doorbell i (-1: none). */
  doorbellFd(i: number): number {
    return Atomics.load(this.ctl, this.bell(i));
  }

  /** Set doorbell i's ioeventfd (-1: none); call inside quiesce (the worker may be reading the old one). */
  setDoorbellFd(i: number, fd: number): void {
    Atomics.store(this.ctl, this.bell(i), fd);
  }

  private bell(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= this.doorbells) throw new RangeError(`${this.name}: doorbell ${i} is out of range (0..${this.doorbells - 1})`);
    return this.doorbellBase + i;
  }

  /** The eventfd of a vector (-1: none). */
  irqFd(index: number, vector: number): number {
    return Atomics.load(this.ctl, this.vec(index, vector) + IRQ_FD);
  }

  /**
   * Set a vector's eventfd (-1: none), clearing its pending bit and its SET_IRQS mask (MSI-X table
   * and function masks stay: they are device state). Call inside quiesce.
   */
  setIrqFd(index: number, vector: number, fd: number): void {
    const o = this.vec(index, vector);
    Atomics.store(this.ctl, o + IRQ_FD, fd);
    Atomics.and(this.ctl, o + IRQ_MASKED, ~MASK_IRQ);
    Atomics.store(this.ctl, o + IRQ_PENDING, 0);
  }

  /**
   * Mask or unmask a vector (SET_IRQS MASK/UNMASK); returns whether an interrupt was pending when
   * it became unmasked (and clears it: the caller delivers it with triggerIrq). Safe against a
   * worker raising the vector meanwhile.
   */
  setIrqMasked(index: number, vector: number, masked: boolean): boolean {
    return this.setIrqMaskBits(index, vector, MASK_IRQ, masked);
  }

  /**
   * Set or clear mask reasons (MASK_IRQ, MASK_VECTOR, MASK_FUNCTION) of a vector; returns whether
   * the vector became unmasked with an interrupt pending (cleared: deliver it with triggerIrq).
   */
  setIrqMaskBits(index: number, vector: number, bits: number, masked: boolean): boolean {
    const o = this.vec(index, vector);
    if (masked) { Atomics.or(this.ctl, o + IRQ_MASKED, bits); return false; }
    const left = Atomics.and(this.ctl, o + IRQ_MASKED, ~bits) & ~bits;
    return left === 0 && Atomics.exchange(this.ctl, o + IRQ_PENDING, 0) !== 0;
  }

  /** Whether a vector is masked (for any reason). */
  irqMasked(index: number, vector: number): boolean {
    return Atomics.load(this.ctl, this.vec(index, vector) + IRQ_MASKED) !== 0;
  }

  /** Whether a vector holds an interrupt (masked meanwhile, or its eventfd was full). */
  irqPending(index: number, vector: number): boolean {
    return Atomics.load(this.ctl, this.vec(index, vector) + IRQ_PENDING) !== 0;
  }

  /** Clear every mask and pending bit. */
  clearIrqMasks(): void {
    for (let i = 0; i < this.irqCount.length; i++) {
      for (let v = 0; v < this.irqCount[i]; v++) {
        const o = this.vec(i, v);
        Atomics.store(this.ctl, o + IRQ_MASKED, 0);
        Atomics.store(this.ctl, o + IRQ_PENDING, 0);
      }
    }
  }

  /**
   * Raise a vector from the main thread (held pending while masked, or while its eventfd is full);
   * returns whether it was signalled. Interrupts left pending by a full eventfd are retried first.
   */
  triggerIrq(index: number, vector: number): boolean {
    const o = this.vec(index, vector);
    if (Atomics.load(this.ctl, IRQ_RETRY) !== 0) retryIrqs(this.ctl, this.irqBase, this.irqCount);
    return signal(this.ctl, o);
  }

  /** Retry the interrupts an eventfd refused (EAGAIN); the worker does this in service(). */
  retryPendingIrqs(): void {
    if (Atomics.load(this.ctl, IRQ_RETRY) !== 0) retryIrqs(this.ctl, this.irqBase, this.irqCount);
  }

  /** Stop serving the mailbox. */
  close(): void {
    this.closed = true;
    Atomics.notify(this.ctl, MAIL_OP);
    if (!this.attached) this.runDeferred();
    else if (this.deferred.length) log('warn', 'emudev', `${this.name}: closed while its lcore is still attached: ${this.deferred.length} client mappings or fds are left as they are`);
  }

  private vec(index: number, vector: number): number {
    if (index < 0 || index >= this.irqCount.length || vector < 0 || vector >= this.irqCount[index]) throw new RangeError(`${this.name}: IRQ index ${index} has no vector ${vector}`);
    return this.irqBase[index] + vector * IRQ_WORDS;
  }

  /**
   * Answer worker requests for client memory without fd, one at a time, until close(). The mailbox
   * and its bounce buffer are one for all attached workers, taken in turn (MAIL_OP is the lock
   * word): requests go one at a time to one client over one socket anyway, and it is the slow path
   * (memory sent without fd), so a mailbox per slot would add 64 KiB of bounce buffer per slot and
   * a loop over slots here for no gain.
   */
  private serveMailbox(): void {
    if (this.serving || this.closed) return;
    this.serving = true;
    const loop = async (): Promise<void> => {
      while (!this.closed) {
        const op = Atomics.load(this.ctl, MAIL_OP);
        if (op !== OP_READ && op !== OP_WRITE) {
          const w = waitAsync(this.ctl, MAIL_OP, op, 1000);
          if (w.async) await w.value;
          continue;
        }
        const iova = (BigInt(this.ctl[MAIL_IOVA_HI] >>> 0) << 32n) | BigInt(this.ctl[MAIL_IOVA_LO] >>> 0);
        const len = this.ctl[MAIL_LEN];
        let done = DONE_OK;
        try {
          if (op === OP_READ) {
            const data = await this.memory.read(iova, len);
            if (data.byteLength !== len) throw new RangeError(`read ${data.byteLength} bytes, not ${len}`);
            // Even when abandoned meanwhile: the mailbox stays busy until freed below, so the
            // bounce buffer is still this request's.
            this.bounce.set(data);
          } else {
            await this.memory.write(iova, this.bounce.slice(0, len));
          }
        } catch {
          done = DONE_FAILED;
        }
        // The result before ANSWERED; the worker copies the answer out and frees the mailbox. One
        // that gave up (ABANDONED) waits for nothing: free it here.
        Atomics.store(this.ctl, MAIL_DONE, done);
        if (Atomics.compareExchange(this.ctl, MAIL_OP, op, OP_ANSWERED) !== op) Atomics.store(this.ctl, MAIL_OP, OP_NONE);
        Atomics.notify(this.ctl, MAIL_OP);
      }
      this.serving = false;
    };
    void loop();
  }
}

/** Atomics.waitAsync (Node 16+; not yet in TypeScript's es2022 lib). */
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number, ms: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;

/** An 8-byte eventfd increment of 1, at a fixed address (for writeRaw). */
let ONE = 0;
function oneAddress(): number {
  if (ONE === 0) {
    const va = os.mmap(0n, 4096, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS, -1, 0);
    new Uint8Array(os.viewOf(va, 8))[0] = 1;
    ONE = Number(va);
  }
  return ONE;
}

/**
 * Signal the vector at word o of ctl (pending while masked). No allocation, no throw, never
 * blocks: eventfds are O_NONBLOCK (EmuDevice.setIrqs makes them so), and one whose counter is full
 * (EAGAIN) keeps the interrupt pending and raises IRQ_RETRY, so service() delivers it later. An
 * unmask racing with it (setIrqMaskBits exchanges the pending bit) delivers the interrupt exactly once.
 */
function signal(ctl: Int32Array, o: number): boolean {
  const fd = Atomics.load(ctl, o + IRQ_FD);
  if (fd < 0) return false;
  if (Atomics.load(ctl, o + IRQ_MASKED) !== 0) {
    Atomics.store(ctl, o + IRQ_PENDING, 1);
    if (Atomics.load(ctl, o + IRQ_MASKED) !== 0 || Atomics.exchange(ctl, o + IRQ_PENDING, 0) === 0) return false;
  }
  const r = os.writeRaw(fd, ONE === 0 ? oneAddress() : ONE, 8);
  if (r === 8) return true;
  if (r === -EAGAIN) {
    // The counter is at its maximum: the reader has an interrupt it has not consumed. Keep this one
    // pending; IRQ_RETRY makes the next service() (or main-thread trigger) try again.
    Atomics.store(ctl, o + IRQ_PENDING, 1);
    Atomics.store(ctl, IRQ_RETRY, 1);
  }
  return false;
}

/** Deliver the pending interrupts of unmasked vectors (after EAGAIN). No allocation. */
function retryIrqs(ctl: Int32Array, irqBase: readonly number[], irqCount: readonly number[]): void {
  Atomics.store(ctl, IRQ_RETRY, 0);
  for (let i = 0; i < irqCount.length; i++) {
    for (let v = 0; v < irqCount[i]; v++) {
      const o = irqBase[i] + v * IRQ_WORDS;
      if (Atomics.load(ctl, o + IRQ_FD) < 0 || Atomics.load(ctl, o + IRQ_MASKED) !== 0) continue;
      if (Atomics.exchange(ctl, o + IRQ_PENDING, 0) !== 0) signal(ctl, o);
    }
  }
}

/**
 * The worker's half. Call service() once per poll-loop iteration; use at() to translate IOVAs
 * (then read and write u8[hit] / dv[hit] at the returned offset), irq() to raise interrupts.
 *
 * A view (one ArrayBuffer) covers at most 4 GiB, so a region larger than that (a guest with more
 * than about 6 GiB of RAM) is served as several views: the PiecedView pieces of its mapping, one
 * table slot each (u8/dv indexes are slots, not regions). An access inside one piece is a view
 * like any other. An access that straddles two pieces of a region cannot be one view: at() answers
 * -2 for it and messageRead/messageWrite copy it piece by piece from the mapping (no message is
 * sent). Copied rather than split, so every user that handles memory without fd handles it too,
 * with no second code path; pieces are 4 GiB, so only accesses across a 4 GiB line of a region
 * take the copy.
 */
export class DataPlane {
  readonly name: string;
  /** one view per DMA region (empty for regions without fd) */
  readonly u8: Uint8Array[] = [];
  /** a DataView over the same memory, per region */
  readonly dv: DataView[] = [];
  /** the region index the last successful at() found */
  hit = 0;
  private readonly ctl: Int32Array;
  private readonly bounce: Uint8Array;
  private readonly desc: DataPlaneDesc;
  /** doorbell(): the 8-byte eventfd counter read into bellBuf, seen as two 32-bit halves */
  private readonly bellBuf = new Uint8Array(8);
  private readonly bellCount = new Uint32Array(this.bellBuf.buffer);
  /** sleepOnDoorbells(): struct pollfd per doorbell, seen as int32 (fd) and int16 (events, revents) */
  private readonly pfds: Uint8Array;
  private readonly pfd32: Int32Array;
  private readonly pfd16: Int16Array;
  private count = 0;
  private gen = -1;
  private reloads = 0;
  /** this instance's bit in ATTACHED and its acknowledgement word (-1 once detached) */
  private slot: number;
  private start: Float64Array;
  private end: Float64Array;
  private flags: Int32Array;
  /** the published region each slot is a piece of */
  private region: Int32Array;

  private constructor(desc: DataPlaneDesc, slot: number) {
    this.desc = desc;
    this.slot = slot;
    this.name = desc.name;
    this.pfds = new Uint8Array(os.SIZEOF_POLLFD * Math.max(1, desc.doorbellCount));
    this.pfd32 = new Int32Array(this.pfds.buffer);
    this.pfd16 = new Int16Array(this.pfds.buffer);
    this.ctl = new Int32Array(desc.control);
    this.bounce = new Uint8Array(desc.bounce);
    this.start = new Float64Array(desc.maxRegions);
    this.end = new Float64Array(desc.maxRegions);
    this.flags = new Int32Array(desc.maxRegions);
    this.region = new Int32Array(desc.maxRegions);
    oneAddress();
  }

  /**
   * Attach this thread to the device's data plane, beside up to MAX_PLANE_LCORES - 1 others (each
   * with its own views); parks first while a change is under way.
   */
  static attach(desc: DataPlaneDesc): DataPlane {
    const ctl = new Int32Array(desc.control);
    let slot = -1;
    for (let m = Atomics.load(ctl, ATTACHED); slot < 0;) {
      if ((m & ALL_SLOTS) === ALL_SLOTS) throw new Error(`${desc.name}: ${MAX_PLANE_LCORES} lcores already run this device's data plane, the most it takes: detach one first`);
      const s = 31 - Math.clz32(~m & (m + 1)); // the lowest free slot
      const seen = Atomics.compareExchange(ctl, ATTACHED, m, m | (1 << s));
      if (seen === m) slot = s;
      else m = seen;
    }
    let p: DataPlane;
    try {
      p = new DataPlane(desc, slot);
    } catch (e) {
      Atomics.and(ctl, ATTACHED, ~(1 << slot));
      throw e;
    }
    p.service();
    return p;
  }

  /**
   * Leave: the main thread then changes tables without waiting for this thread (the others go on).
   * Views must not be used afterwards. A second call does nothing.
   */
  detach(): void {
    if (this.slot < 0) return;
    this.u8.length = 0;
    this.dv.length = 0;
    this.count = 0;
    this.gen = -1;
    Atomics.store(this.ctl, ACK_BASE + this.slot, 0); // a later occupant of the slot starts without an acknowledgement
    Atomics.and(this.ctl, ATTACHED, ~(1 << this.slot));
    this.slot = -1;
    Atomics.add(this.ctl, ACK_SEQ, 1);
    Atomics.notify(this.ctl, ACK_SEQ);
  }

  /**
   * Honour a pause request (blocking until released) and pick up a new DMA table. Returns true
   * when the table changed: views from before are gone, anything derived from them must be redone.
   */
  service(): boolean {
    if (Atomics.load(this.ctl, PAUSE_REQ) !== 0) this.pause();
    if (Atomics.load(this.ctl, IRQ_RETRY) !== 0) retryIrqs(this.ctl, this.desc.irqBase, this.desc.irqCount);
    if (Atomics.load(this.ctl, DMA_GEN) === this.gen) return false;
    this.reload();
    return true;
  }

  /** Number of DMA table slots now: one per region, one per 4 GiB piece of a larger region. */
  get regions(): number {
    return this.count;
  }

  /**
   * How many times the views were rebuilt. service() reports a change; messageRead/messageWrite
   * may rebuild too (they honour pauses while waiting): compare this across them before using an
   * offset from an earlier at().
   */
  get generation(): number {
    return this.reloads;
  }

  /**
   * Translate [iova, iova+len): the byte offset in u8[hit] / dv[hit], or -1 when the range is not
   * inside one region with the needed permission, -2 when it is in memory sent without fd or
   * straddles two 4 GiB pieces of a region (use messageRead/messageWrite).
   */
  at(iova: number, len: number, write: boolean): number {
    const end = iova + len;
    let k = this.hit;
    if (!(k < this.count && iova >= this.start[k] && end <= this.end[k])) {
      k = -1;
      for (let i = 0; i < this.count; i++) {
        if (iova >= this.start[i] && end <= this.end[i]) { k = i; break; }
      }
      if (k < 0) return this.straddles(iova, end, write) ? -2 : -1;
    }
    const f = this.flags[k];
    if ((f & (write ? DMA_FLAG_WRITE : DMA_FLAG_READ)) === 0) return -1;
    if (this.u8[k].byteLength === 0) return -2;
    this.hit = k;
    return iova - this.start[k];
  }

  /**
   * Raise vector of IRQ index through its eventfd (pending while masked); false when none is set.
   * INTx (index 0) is automasked once signalled, as EmuDevice.triggerIrq does.
   */
  irq(index: number, vector: number): boolean {
    if (index < 0 || index >= this.desc.irqCount.length || vector < 0 || vector >= this.desc.irqCount[index]) return false;
    const o = this.desc.irqBase[index] + vector * IRQ_WORDS;
    const ok = signal(this.ctl, o);
    if (ok && index === INTX_INDEX) Atomics.or(this.ctl, o + IRQ_MASKED, MASK_IRQ);
    return ok;
  }

  /** How many FD doorbells the device declared (ids 0..n-1). */
  get doorbellCount(): number {
    return this.desc.doorbellCount;
  }

  /**
   * Signals on doorbell i's ioeventfd since the last call (a non-blocking read that empties it; 0
   * when there were none or no eventfd is set). Call outside pauses only, like every table read.
   */
  doorbell(i: number): number {
    if (i < 0 || i >= this.desc.doorbellCount) return 0;
    const fd = Atomics.load(this.ctl, this.desc.doorbellBase + i);
    if (fd < 0 || os.readNoThrow(fd, this.bellBuf, 8) !== 8) return 0;
    return this.bellCount[0] + this.bellCount[1] * TWO32;
  }

  /** Sleep up to ms (an idle loop's back-off); a pause request or wake() ends it at once. */
  sleep(ms: number): void {
    Atomics.wait(this.ctl, PAUSE_REQ, 0, ms);
  }

  /**
   * An idle loop's back-off for a device with FD doorbells: sleep up to ms in poll(2) on the
   * doorbell eventfds, so a doorbell ends it at once (a pause request or wake() is seen when it
   * returns, within ms: keep ms small). Without doorbell eventfds it is sleep(ms). Allocates nothing.
   */
  sleepOnDoorbells(ms: number): void {
    const n = this.desc.doorbellCount, base = this.desc.doorbellBase, p32 = this.pfd32, p16 = this.pfd16;
    let k = 0;
    for (let i = 0; i < n; i++) {
      const fd = Atomics.load(this.ctl, base + i);
      if (fd < 0) continue;
      p32[2 * k] = fd;
      p16[4 * k + 2] = os.POLLIN;
      p16[4 * k + 3] = 0;
      k++;
    }
    if (k === 0) this.sleep(ms);
    else os.pollFds(this.pfds, k, ms);
  }

  /**
   * Read client memory where at() answered -2 (slow path): memory without fd through the main
   * thread, an access across pieces of a mapped region by copying from each piece. False on failure.
   */
  messageRead(iova: number, dst: Uint8Array, dstOff: number, len: number): boolean {
    return this.slowCopy(iova, dst, dstOff, len, false);
  }

  /** Write client memory where at() answered -2 (slow path; see messageRead): false on failure. */
  messageWrite(iova: number, src: Uint8Array, srcOff: number, len: number): boolean {
    return this.slowCopy(iova, src, srcOff, len, true);
  }

  /** Whether [iova, end) lies in consecutive pieces of one region, each with the permission. */
  private straddles(iova: number, end: number, write: boolean): boolean {
    const need = write ? DMA_FLAG_WRITE : DMA_FLAG_READ;
    let k = -1;
    for (let i = 0; i < this.count; i++) if (iova >= this.start[i] && iova < this.end[i]) { k = i; break; }
    if (k < 0) return false;
    const r = this.region[k];
    for (; k < this.count && this.region[k] === r && (this.flags[k] & need) !== 0; k++) if (end <= this.end[k]) return true;
    return false;
  }

  /**
   * Copy [iova, +len) to or from buf slot by slot: from a slot's view when it has one, through
   * the mailbox (in bounce-buffer pieces) when the memory came without fd. A pause honoured while
   * waiting for the mailbox rebuilds the slots, so each step translates afresh.
   */
  private slowCopy(iova: number, buf: Uint8Array, at: number, len: number, write: boolean): boolean {
    const need = write ? DMA_FLAG_WRITE : DMA_FLAG_READ;
    while (len > 0) {
      let k = -1;
      for (let i = 0; i < this.count; i++) if (iova >= this.start[i] && iova < this.end[i]) { k = i; break; }
      if (k < 0 || (this.flags[k] & need) === 0) return false;
      const v = this.u8[k];
      let n = Math.min(len, this.end[k] - iova);
      if (v.byteLength !== 0) {
        const o = iova - this.start[k];
        if (write) v.set(buf.subarray(at, at + n), o);
        else buf.set(v.subarray(o, o + n), at);
      } else {
        n = Math.min(n, BOUNCE);
        if (!this.mail(write ? OP_WRITE : OP_READ, iova, buf, at, n)) return false;
      }
      iova += n; at += n; len -= n;
    }
    return true;
  }

  /**
   * One mailbox request: take the mailbox (other workers of the device may hold it), fill it (the
   * bytes to write from buf[at..], into the bounce buffer), post it, wait for the answer, copy a
   * read's bytes to buf[at..] and free the mailbox. While waiting (for the mailbox or the answer)
   * this thread touches no client memory, so it acknowledges pauses (e.g. an unmap arriving).
   */
  private mail(op: number, iova: number, buf: Uint8Array, at: number, len: number): boolean {
    const deadline = Date.now() + MAIL_TIMEOUT_MS;
    let ok = false;
    for (;;) { // busy: another worker's request, or one given up earlier
      const cur = Atomics.load(this.ctl, MAIL_OP);
      if (cur === OP_NONE && Atomics.compareExchange(this.ctl, MAIL_OP, OP_NONE, OP_CLAIMED) === OP_NONE) break;
      if (Atomics.load(this.ctl, PAUSE_REQ) !== 0) this.pause();
      if (Date.now() > deadline) return this.reloadIfChanged(false);
      if (cur !== OP_NONE) Atomics.wait(this.ctl, MAIL_OP, cur, 1);
    }
    if (op === OP_WRITE) this.bounce.set(buf.subarray(at, at + len));
    this.ctl[MAIL_IOVA_LO] = iova % TWO32;
    this.ctl[MAIL_IOVA_HI] = Math.floor(iova / TWO32);
    this.ctl[MAIL_LEN] = len;
    Atomics.store(this.ctl, MAIL_OP, op);
    Atomics.notify(this.ctl, MAIL_OP);
    for (;;) {
      if (Atomics.load(this.ctl, MAIL_OP) === OP_ANSWERED) {
        ok = Atomics.load(this.ctl, MAIL_DONE) === DONE_OK;
        if (ok && op === OP_READ) buf.set(this.bounce.subarray(0, len), at);
        Atomics.store(this.ctl, MAIL_OP, OP_NONE);
        Atomics.notify(this.ctl, MAIL_OP);
        break;
      }
      if (Atomics.load(this.ctl, PAUSE_REQ) !== 0) this.pause();
      // given up: the main thread frees the mailbox when it is done with the request
      if (Date.now() > deadline && Atomics.compareExchange(this.ctl, MAIL_OP, op, OP_ABANDONED) === op) break;
      Atomics.wait(this.ctl, MAIL_OP, op, 1);
    }
    return this.reloadIfChanged(ok);
  }

  /** Pick up a table published while waiting (pauses honoured meanwhile); returns ok. */
  private reloadIfChanged(ok: boolean): boolean {
    if (Atomics.load(this.ctl, DMA_GEN) !== this.gen) this.reload();
    return ok;
  }

  /** Double the slot arrays (regions over 4 GiB take a slot per piece). */
  private grow(): void {
    const n = Math.max(8, this.start.length * 2);
    const f64 = (a: Float64Array): Float64Array => { const b = new Float64Array(n); b.set(a); return b; };
    const i32 = (a: Int32Array): Int32Array => { const b = new Int32Array(n); b.set(a); return b; };
    this.start = f64(this.start); this.end = f64(this.end);
    this.flags = i32(this.flags); this.region = i32(this.region);
  }

  /** Park until the main thread releases the pause, acknowledging each request's epoch in this slot's word. */
  private pause(): void {
    for (;;) {
      const e = Atomics.load(this.ctl, PAUSE_REQ);
      if (e === 0) return;
      Atomics.store(this.ctl, ACK_BASE + this.slot, e);
      Atomics.add(this.ctl, ACK_SEQ, 1);
      Atomics.notify(this.ctl, ACK_SEQ);
      while (Atomics.load(this.ctl, PAUSE_REQ) === e) Atomics.wait(this.ctl, PAUSE_REQ, e, 100);
    }
  }

  /** Rebuild the views from the published table: one slot per region, per 4 GiB piece of a larger one. */
  private reload(): void {
    this.gen = Atomics.load(this.ctl, DMA_GEN);
    const n = Atomics.load(this.ctl, DMA_COUNT);
    this.u8.length = 0;
    this.dv.length = 0;
    let k = 0;
    for (let i = 0; i < n; i++) {
      const o = this.desc.dmaBase + i * DMA_WORDS;
      const hi = this.ctl[o + 1] >>> 0;
      if (hi >= 0x20_0000) continue; // iova >= 2^53: not expressible as a number
      const iova = hi * TWO32 + (this.ctl[o] >>> 0);
      const len = (this.ctl[o + 3] >>> 0) * TWO32 + (this.ctl[o + 2] >>> 0);
      const flags = this.ctl[o + 4];
      const va = (BigInt(this.ctl[o + 6] >>> 0) << 32n) | BigInt(this.ctl[o + 5] >>> 0);
      // memory without fd: one slot without view; mapped memory: one slot per piece
      const pieces = va === 0n ? [{ start: 0, u8: new Uint8Array(0), len }] : new PiecedView(va, len).pieces.map((p) => ({ start: p.start, u8: p.u8, len: p.u8.length }));
      for (const p of pieces) {
        if (k >= this.start.length) this.grow();
        this.start[k] = iova + p.start;
        this.end[k] = iova + p.start + p.len;
        this.flags[k] = flags;
        this.region[k] = i;
        this.u8.push(p.u8);
        this.dv.push(new DataView(p.u8.buffer, p.u8.byteOffset, p.u8.byteLength));
        k++;
      }
    }
    this.count = k;
    this.hit = 0;
    this.reloads++;
  }
}
