/**
 * rte_ring semantics on shared memory: a fixed-size FIFO of u32 entries (mbuf indices, object
 * ids), lock-free, safe between worker threads and, when placed in DMA memory, between processes.
 *
 * Counters are free-running u32 head/tail pairs (compared modulo 2^32), so all `size` slots are
 * usable. Producer head+tail share one cache line and consumer head+tail another; entries follow.
 * Single-producer/-consumer sides copy with plain stores and publish the tail with one store: a
 * plain one on x86 (TSO orders it after the copies, the store-release DPDK uses there; a seq-cst
 * Atomics.store would add a fence that stalls until the line is ours, -25 % two-core rate),
 * Atomics.store elsewhere. Multi sides claim a range with compareExchange on the head and publish
 * in order through the tail, like DPDK.
 * Each thread builds its own Ring object over the same memory (Ring.attach): the object also keeps
 * a thread-local copy of the opposite tail so the hot path rarely reads the other side's line.
 */
import { viewOf } from '../../src/os/libc.js';
import { TSO } from '../../src/os/arch.js';

const MAGIC = 0x72696e67; // "ring"
const OFF_MAGIC = 0, OFF_SIZE = 1, OFF_FLAGS = 2;
const PROD_HEAD = 32, PROD_TAIL = 33; // byte 128
const CONS_HEAD = 64, CONS_TAIL = 65; // byte 256
const ENTRIES = 96; // byte 384
const HEADER_BYTES = ENTRIES * 4;
const F_SP = 1, F_SC = 2;

/** Ring creation flags, as in rte_ring_create (default: multi-producer, multi-consumer). */
export interface RingFlags {
  /** single producer: only one thread ever enqueues */
  sp?: boolean;
  /** single consumer: only one thread ever dequeues */
  sc?: boolean;
}

/** A ring's location as plain data, postable to a worker: rebuilt there with Ring.attach. */
export interface RingDesc {
  name: string;
  /** a SharedArrayBuffer, or the address of DMA memory (valid in this process) */
  memory: SharedArrayBuffer | bigint;
  /** byte offset of the ring inside memory (SharedArrayBuffer only) */
  offset: number;
  /**
   * entries it holds. Required to attach a ring in DMA memory: another party (a device) may write
   * that memory, so the size the view is made for comes from here and the size word in memory
   * must agree; a SharedArrayBuffer ring may leave it out.
   */
  size?: number;
}

/** Bytes a ring of `size` entries occupies. */
export function ringBytes(size: number): number {
  return HEADER_BYTES + size * 4;
}

function checkSize(name: string, size: number): void {
  if (!Number.isInteger(size) || size < 1 || size > 0x4000_0000 || (size & (size - 1)) !== 0) {
    throw new RangeError(`ring "${name}": size ${size} must be a power of two from 1 to 2^30 (e.g. ${nextPow2(Math.max(1, size | 0))})`);
  }
}

/** The smallest power of two >= n. */
export function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** A lock-free FIFO of u32 values on shared memory. */
export class Ring {
  // Fields are `declare`d and assigned in the constructor: a class field would first be defined as
  // undefined, and V8 would then tag-check every number and map-check every view read from it in
  // the hot loops (docs/performance.md).
  declare readonly name: string;
  /** number of entries it can hold */
  declare readonly size: number;
  declare readonly sp: boolean;
  declare readonly sc: boolean;
  /** where it lives, for attach() in other threads */
  declare readonly desc: RingDesc;
  /** free entries after the last enqueue, used entries after the last dequeue (like DPDK's out args) */
  lastFree = 0;
  lastAvailable = 0;
  private declare readonly i32: Int32Array;
  private declare readonly u32: Uint32Array;
  private declare readonly mask: number;
  private declare cachedConsTail: number;
  private declare cachedProdTail: number;
  /** publish tails with plain stores (TSO CPUs: x86) */
  private declare readonly plainPublish: boolean;

  private constructor(desc: RingDesc, buffer: ArrayBufferLike, offset: number, init: { size: number; flags: number } | null) {
    this.name = desc.name;
    this.desc = desc;
    const words = new Int32Array(buffer, offset, HEADER_BYTES / 4);
    if (init) {
      words.fill(0);
      words[OFF_SIZE] = init.size;
      words[OFF_FLAGS] = init.flags;
      Atomics.store(words, OFF_MAGIC, MAGIC);
    } else if (Atomics.load(words, OFF_MAGIC) !== MAGIC) {
      throw new Error(`ring "${desc.name}": no ring at this memory (bad magic); was it created?`);
    }
    this.size = words[OFF_SIZE];
    if (desc.size !== undefined && this.size !== desc.size) {
      throw new Error(`ring "${desc.name}": its size word reads ${this.size}, its descriptor says ${desc.size} (the memory was overwritten)`);
    }
    checkSize(desc.name, this.size);
    this.mask = this.size - 1;
    this.sp = (words[OFF_FLAGS] & F_SP) !== 0;
    this.sc = (words[OFF_FLAGS] & F_SC) !== 0;
    this.i32 = new Int32Array(buffer, offset, ENTRIES + this.size);
    this.u32 = new Uint32Array(buffer, offset, ENTRIES + this.size);
    this.plainPublish = TSO;
    this.cachedConsTail = Atomics.load(this.i32, CONS_TAIL);
    this.cachedProdTail = Atomics.load(this.i32, PROD_TAIL);
  }

  /** Create a ring in a new SharedArrayBuffer. */
  static create(name: string, size: number, flags: RingFlags = {}): Ring {
    checkSize(name, size);
    const sab = new SharedArrayBuffer(ringBytes(size));
    return new Ring({ name, memory: sab, offset: 0, size }, sab, 0, { size, flags: (flags.sp ? F_SP : 0) | (flags.sc ? F_SC : 0) });
  }

  /** Create a ring inside DMA memory at address va (ringBytes(size) bytes, 64-byte aligned). */
  static createAt(name: string, va: bigint, buffer: ArrayBufferLike, offset: number, size: number, flags: RingFlags = {}): Ring {
    checkSize(name, size);
    if (offset % 64 !== 0) throw new RangeError(`ring "${name}": offset ${offset} must be 64-byte aligned`);
    return new Ring({ name, memory: va, offset: 0, size }, buffer, offset, { size, flags: (flags.sp ? F_SP : 0) | (flags.sc ? F_SC : 0) });
  }

  /**
   * Rebuild a ring from its descriptor in this thread; view(va, len) maps DMA memory (default:
   * viewOf). In DMA memory the view covers exactly desc.size entries, and a size word that says
   * otherwise is refused: the memory's own word never decides how much is mapped.
   */
  static attach(desc: RingDesc, view: (va: bigint, len: number) => ArrayBuffer = viewOf): Ring {
    if (typeof desc.memory === 'bigint') {
      const head = new Int32Array(view(desc.memory, HEADER_BYTES));
      if (Atomics.load(head, OFF_MAGIC) !== MAGIC) throw new Error(`ring "${desc.name}": no ring at this memory (bad magic); was it created?`);
      if (desc.size === undefined) throw new Error(`ring "${desc.name}": a ring in DMA memory is attached with its size in the descriptor (use ring.desc)`);
      checkSize(desc.name, desc.size);
      return new Ring(desc, view(desc.memory, ringBytes(desc.size)), 0, null);
    }
    return new Ring(desc, desc.memory, desc.offset, null);
  }

  /** Create a ring at byte offset (64-byte aligned) of a SharedArrayBuffer that holds other things too (e.g. a mempool's meta buffer). */
  static createIn(name: string, sab: SharedArrayBuffer, offset: number, size: number, flags: RingFlags = {}): Ring {
    checkSize(name, size);
    if (offset % 64 !== 0 || offset < 0 || offset + ringBytes(size) > sab.byteLength) {
      throw new RangeError(`ring "${name}": ${ringBytes(size)} bytes at offset ${offset} do not fit its buffer (${sab.byteLength} bytes, 64-byte aligned)`);
    }
    return new Ring({ name, memory: sab, offset, size }, sab, offset, { size, flags: (flags.sp ? F_SP : 0) | (flags.sc ? F_SC : 0) });
  }

  /** Entries in the ring now (a snapshot). */
  count(): number {
    return (Atomics.load(this.i32, PROD_TAIL) - Atomics.load(this.i32, CONS_TAIL)) | 0;
  }

  /** Free slots now (a snapshot). */
  freeCount(): number {
    return this.size - this.count();
  }

  /** Enqueue all n entries of objs[off..] or none; returns n or 0. */
  enqueueBulk(objs: Uint32Array, n: number, off = 0): number {
    return this.enqueue(objs, off, n, true);
  }

  /** Enqueue as many of n entries as fit; returns how many. */
  enqueueBurst(objs: Uint32Array, n: number, off = 0): number {
    return this.enqueue(objs, off, n, false);
  }

  /** Dequeue exactly n entries into objs[off..] or none; returns n or 0. */
  dequeueBulk(objs: Uint32Array, n: number, off = 0): number {
    return this.dequeue(objs, off, n, true);
  }

  /** Dequeue up to n entries into objs[off..]; returns how many. */
  dequeueBurst(objs: Uint32Array, n: number, off = 0): number {
    return this.dequeue(objs, off, n, false);
  }

  /** Enqueue one value; false when full. */
  enqueueOne(v: number): boolean {
    ONE[0] = v;
    return this.enqueue(ONE, 0, 1, true) === 1;
  }

  /** Dequeue one value; -1 when empty. */
  dequeueOne(): number {
    return this.dequeue(ONE, 0, 1, true) === 1 ? ONE[0] : -1;
  }

  private enqueue(objs: Uint32Array, off: number, n: number, bulk: boolean): number {
    const i32 = this.i32, size = this.size;
    let head: number, free: number;
    if (this.sp) {
      head = i32[PROD_HEAD];
      free = (size + this.cachedConsTail - head) | 0;
      if (free < n) {
        this.cachedConsTail = Atomics.load(i32, CONS_TAIL);
        free = (size + this.cachedConsTail - head) | 0;
      }
      if (free < n) {
        if (bulk || free === 0) { this.lastFree = free; return 0; }
        n = free;
      }
      const end = (head + n) | 0, at = head & this.mask, a = size - at < n ? size - at : n;
      copyWords(this.u32, ENTRIES + at, objs, off, a); // up to the end of the slots,
      if (a < n) copyWords(this.u32, ENTRIES, objs, off + a, n - a); // then from the first
      // Publish: the tail first, then the head (the same cache line, ours by then). On a TSO CPU a
      // plain store is already a release (the entries' stores are seen first), like DPDK's
      // store-release there; Atomics.store would add a full fence that waits for the line.
      if (this.plainPublish) i32[PROD_TAIL] = end;
      else Atomics.store(i32, PROD_TAIL, end);
      i32[PROD_HEAD] = end;
      this.lastFree = free - n;
      return n;
    } else {
      for (;;) {
        head = Atomics.load(i32, PROD_HEAD);
        free = (size + Atomics.load(i32, CONS_TAIL) - head) | 0;
        if (free < n) {
          if (bulk || free === 0) { this.lastFree = free; return 0; }
          n = free;
        }
        if (Atomics.compareExchange(i32, PROD_HEAD, head, (head + n) | 0) === head) break;
      }
    }
    const u32 = this.u32, mask = this.mask;
    for (let i = 0; i < n; i++) u32[ENTRIES + ((head + i) & mask)] = objs[off + i];
    if (!this.sp) while (Atomics.load(i32, PROD_TAIL) !== head) { /* earlier producers publish first */ }
    Atomics.store(i32, PROD_TAIL, (head + n) | 0);
    this.lastFree = free - n;
    return n;
  }

  private dequeue(objs: Uint32Array, off: number, n: number, bulk: boolean): number {
    const i32 = this.i32;
    let head: number, avail: number;
    if (this.sc) {
      head = i32[CONS_HEAD];
      avail = (this.cachedProdTail - head) | 0;
      if (avail < n) {
        this.cachedProdTail = Atomics.load(i32, PROD_TAIL);
        avail = (this.cachedProdTail - head) | 0;
      }
      if (avail < n) {
        if (bulk || avail === 0) { this.lastAvailable = avail; return 0; }
        n = avail;
      }
      const end = (head + n) | 0, size = this.size, at = head & this.mask, a = size - at < n ? size - at : n;
      copyWords(objs, off, this.u32, ENTRIES + at, a);
      if (a < n) copyWords(objs, off + a, this.u32, ENTRIES, n - a);
      if (this.plainPublish) i32[CONS_TAIL] = end;
      else Atomics.store(i32, CONS_TAIL, end);
      i32[CONS_HEAD] = end;
      this.lastAvailable = avail - n;
      return n;
    } else {
      for (;;) {
        head = Atomics.load(i32, CONS_HEAD);
        avail = (Atomics.load(i32, PROD_TAIL) - head) | 0;
        if (avail < n) {
          if (bulk || avail === 0) { this.lastAvailable = avail; return 0; }
          n = avail;
        }
        if (Atomics.compareExchange(i32, CONS_HEAD, head, (head + n) | 0) === head) break;
      }
    }
    const u32 = this.u32, mask = this.mask;
    for (let i = 0; i < n; i++) objs[off + i] = u32[ENTRIES + ((head + i) & mask)];
    if (!this.sc) while (Atomics.load(i32, CONS_TAIL) !== head) { /* earlier consumers release first */ }
    Atomics.store(i32, CONS_TAIL, (head + n) | 0);
    this.lastAvailable = avail - n;
    return n;
  }
}

const ONE = new Uint32Array(1);

/** Copy n words src[s..] to dst[d..], four at a time. */
function copyWords(dst: Uint32Array, d: number, src: Uint32Array, s: number, n: number): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    dst[d + i] = src[s + i];
    dst[d + i + 1] = src[s + i + 1];
    dst[d + i + 2] = src[s + i + 2];
    dst[d + i + 3] = src[s + i + 3];
  }
  for (; i < n; i++) dst[d + i] = src[s + i];
}
