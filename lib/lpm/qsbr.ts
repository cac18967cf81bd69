/**
 * Quiescent-state-based reclamation for the LPM tables, as DPDK's rte_rcu_qsbr: the one writer (the
 * thread that created the table) may reuse a tbl8 group it unlinked only once every reader lcore
 * has passed a quiescent point (a moment between two bursts, when it holds no entry it read
 * before) since the unlink.
 *
 * Shared words (Int32, in the table's SharedArrayBuffer):
 *  - the token, on a cache line of its own: a free-running counter the writer raises after each
 *    unlink (never 0);
 *  - one counter per reader, each on its own cache line (readers never write a line another
 *    reader writes): 0 = offline (not reading, ignored by the writer), else the token the reader
 *    read at its last quiescent point.
 * A group unlinked when the token was raised to t may be reused once every reader's counter is 0
 * or has reached t: a reader whose counter reached t read the token after the writer raised it, so
 * after the unlink; it then held no entry (quiescent) and every lookup it starts from there reads
 * the tables as they are after the unlink. Counters and tokens are compared modulo 2^32.
 * The writer keeps its free groups and the unlinked ones waiting for readers in its own memory.
 */
import { TSO } from '../../src/os/arch.js';
import { sleepMs } from '../../src/os/sleep.js';

/** Int32 words per reader counter: 64 bytes, a cache line each. */
export const QSBR_STRIDE = 16;
/** Header words before the first reader counter: the token's line (word 16) and the line before it. */
export const QSBR_HEADER_WORDS = 32;
/** Where the token lives. */
export const QSBR_TOKEN = 16;

/** Bytes the QSBR words of maxReaders readers take (header included). */
export function qsbrBytes(maxReaders: number): number {
  return (QSBR_HEADER_WORDS + maxReaders * QSBR_STRIDE) * 4;
}

/** The reader side: online/quiescent/offline of one reader id (any thread may hold one). */
export class QsbrReaders {
  /** reader ids go from 0 to maxReaders - 1 */
  declare readonly maxReaders: number;
  private declare readonly words: Int32Array;
  private declare readonly plain: boolean;
  private declare readonly what: string;

  /** words: the table's QSBR region (qsbrBytes(maxReaders) bytes), what: the table, for errors. */
  constructor(words: Int32Array, maxReaders: number, what: string) {
    this.words = words;
    this.maxReaders = maxReaders;
    this.plain = TSO;
    this.what = what;
  }

  private slot(id: number): number {
    if (!Number.isInteger(id) || id < 0 || id >= this.maxReaders) {
      throw new RangeError(`${this.what}: reader id ${id} must be a whole number from 0 to ${this.maxReaders - 1} (raise maxReaders in create() for more)`);
    }
    return QSBR_HEADER_WORDS + id * QSBR_STRIDE;
  }

  /**
   * Start reading as reader id (rte_rcu_qsbr_thread_register + _online): from now on the writer
   * waits for this reader before it reuses a group. The store is seq-cst (Atomics.store, a full
   * fence): either the writer's check sees this reader online, or the writer's unlink is visible
   * to every lookup that follows (the race DPDK closes with a fence in _online).
   */
  online(id: number): void {
    const s = this.slot(id);
    Atomics.store(this.words, s, Atomics.load(this.words, QSBR_TOKEN));
  }

  /**
   * A quiescent point of reader id (rte_rcu_qsbr_quiescent): call it between bursts, never while
   * an entry read earlier is still in use. Allocates nothing; a no-op while the reader is offline.
   * The token is read with Atomics.load (an acquire, and a call V8 does not move loads across): the
   * lookups after it see every unlink made before the token value it returns. The counter store
   * publishes "my earlier lookups are done": on x86 a plain store is not reordered before earlier
   * loads (TSO), like DPDK's store-release there; elsewhere Atomics.store.
   */
  quiescent(id: number): void {
    const w = this.words, s = 32 + id * 16; // QSBR_HEADER_WORDS + id * QSBR_STRIDE, as literals (no TDZ checks per call)
    if (w[s] === 0) return;
    const t = Atomics.load(w, 16); // QSBR_TOKEN
    if (this.plain) w[s] = t;
    else Atomics.store(w, s, t);
  }

  /** Stop reading (rte_rcu_qsbr_thread_offline): the writer no longer waits for reader id. Any thread may call it for a reader that stopped. */
  offline(id: number): void {
    Atomics.store(this.words, this.slot(id), 0);
  }

  /** Whether reader id is online. */
  isOnline(id: number): boolean {
    return Atomics.load(this.words, this.slot(id)) !== 0;
  }
}

/** The writer side: free groups, groups waiting for readers, and the token. Lives on the creating thread only. */
export class QsbrGroups {
  /** groups free for use now */
  private declare readonly free: Int32Array;
  private declare nFree: number;
  /** unlinked groups waiting for readers (FIFO, tokens ascending), and their tokens */
  private declare readonly waitGroup: Int32Array;
  private declare readonly waitToken: Int32Array;
  private declare waitHead: number;
  private declare nWait: number;
  private declare readonly words: Int32Array;
  private declare readonly maxReaders: number;
  /** how long takeable() waits for readers before giving up */
  declare waitMs: number;

  /** groups: how many there are; words/maxReaders: the QSBR region; the token starts at 1. */
  constructor(groups: number, words: Int32Array, maxReaders: number, waitMs: number) {
    this.free = new Int32Array(groups);
    // group 0 on top: a table that holds few groups uses the first ones (fewer pages touched)
    for (let i = 0; i < groups; i++) this.free[i] = groups - 1 - i;
    this.nFree = groups;
    this.waitGroup = new Int32Array(groups);
    this.waitToken = new Int32Array(groups);
    this.waitHead = 0;
    this.nWait = 0;
    this.words = words;
    this.maxReaders = maxReaders;
    this.waitMs = waitMs;
    Atomics.store(words, QSBR_TOKEN, 1);
  }

  /** Groups in use or waiting (not free). */
  get used(): number {
    return this.free.length - this.nFree;
  }

  /** Groups unlinked but not yet reusable. */
  get waiting(): number {
    return this.nWait;
  }

  /** Groups free now (without waiting for readers). */
  get available(): number {
    return this.nFree;
  }

  /**
   * Hand group g back after its last link was removed (with Atomics.store, before this call). It
   * waits under a new token: raising it with Atomics.store (seq-cst) orders it after that unlink
   * for every thread that reads it.
   */
  retire(g: number): void {
    this.push(g, this.raiseToken());
    this.reclaim();
  }

  /** Retire every group in gs[0..n) under one token (deleteAll). */
  retireList(gs: Int32Array, n: number): void {
    const t = this.raiseToken();
    for (let i = 0; i < n; i++) this.push(gs[i], t);
    this.reclaim();
  }

  private raiseToken(): number {
    let t = (Atomics.load(this.words, QSBR_TOKEN) + 1) | 0;
    if (t === 0) t = 1; // 0 means offline
    Atomics.store(this.words, QSBR_TOKEN, t);
    return t;
  }

  private push(g: number, t: number): void {
    const at = (this.waitHead + this.nWait) % this.waitGroup.length;
    this.waitGroup[at] = g;
    this.waitToken[at] = t;
    this.nWait++;
  }

  /**
   * Move the waiting groups every online reader has passed to the free list (rte_rcu_qsbr_dq_reclaim);
   * with no reader online, all of them. Returns how many became free.
   */
  reclaim(): number {
    if (this.nWait === 0) return 0;
    const w = this.words, cap = this.waitGroup.length;
    let moved = 0;
    while (this.nWait > 0) {
      const t = this.waitToken[this.waitHead];
      if (this.blockingReader(t, w) >= 0) break;
      this.free[this.nFree++] = this.waitGroup[this.waitHead];
      this.waitHead = (this.waitHead + 1) % cap;
      this.nWait--;
      moved++;
    }
    return moved;
  }

  /** The first online reader whose counter has not reached token t, or -1. */
  private blockingReader(t: number, w: Int32Array): number {
    for (let r = 0; r < this.maxReaders; r++) {
      const c = Atomics.load(w, QSBR_HEADER_WORDS + r * QSBR_STRIDE);
      if (c !== 0 && ((c - t) | 0) < 0) return r;
    }
    return -1;
  }

  /**
   * Make n groups free, reclaiming and, if groups wait for readers, waiting up to waitMs for them
   * (readers pass a quiescent point every burst: microseconds). Returns '' when n are free, else
   * why not (for the caller's error message).
   */
  ensure(n: number): string {
    if (this.nFree >= n) return '';
    this.reclaim();
    if (this.nFree >= n) return '';
    if (this.nFree + this.nWait < n) {
      const total = this.free.length;
      if (this.nFree === 0 && this.nWait === 0) return `all ${total} are in use`;
      return `${total - this.nFree - this.nWait} of ${total} are in use, ${this.nFree} free${this.nWait ? `, ${this.nWait} unlinked and waiting for readers` : ''}`;
    }
    const t0 = performance.now();
    for (;;) {
      sleepMs(0.05);
      this.reclaim();
      if (this.nFree >= n) return '';
      if (performance.now() - t0 >= this.waitMs) {
        const r = this.blockingReader(this.waitToken[this.waitHead], this.words);
        return `${this.nWait} unlinked groups wait for reader ${r}, which has not passed a quiescent point for ${this.waitMs} ms ` +
          '(a reader calls readerQuiescent between bursts and readerOffline when it stops reading)';
      }
    }
  }

  /** Take a free group (ensure() said there is one). */
  take(): number {
    if (this.nFree === 0) throw new Error('internal: no free tbl8 group (ensure() first)');
    return this.free[--this.nFree];
  }
}
