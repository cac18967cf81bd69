/**
 * Mempool: fixed-size objects in one memzone of DMA memory, handed out as u32 handles.
 *
 * A handle is (pool id << 24) | object index, so any thread can find an object's pool and address
 * from the handle alone (as DPDK finds m->pool). The objects are DMA memory; the pool's own state
 * is not: its header, its free list (a ring) and one cache per lcore in front of it live in a
 * SharedArrayBuffer of this process ("meta", so audit() can count the caches from any thread).
 * DMA memory is handed to devices (a vfio-user device maps all of it): a device that writes there
 * can spoil packet bytes and mbuf headers, never which objects are free. Another thread rebuilds
 * the pool with Mempool.attach(desc) (the descriptor carries the zone and the meta buffer).
 *
 * Layout: meta = header (128 B) | ring | one cache per lcore; zone = objects.
 */
import { viewOf } from '../../src/os/libc.js';
import { lcoreId, MAX_LCORE } from '../../src/lcore/id.js';
import type { EalMemory, Memzone } from '../../src/memory/memory.js';
import { iovaContiguous } from '../../src/memory/segment.js';
import { Ring, ringBytes, nextPow2 } from '../ring/ring.js';

const MAGIC = 0x6d706f6c; // "mpol"
const H_MAGIC = 0, H_ID = 1, H_COUNT = 2, H_OBJ_SIZE = 3, H_OBJ_OFF = 4, H_CACHE_SIZE = 5, H_FLUSH = 6;
const H_RING_OFF = 7, H_CACHE_OFF = 8, H_CACHE_STRIDE = 9, H_POPULATED = 10, H_USER = 16; // H_USER..31: for the layer above
const HEADER_BYTES = 128;

/** Largest object count per pool: the index must fit in 24 bits of a handle. */
export const MEMPOOL_MAX_OBJECTS = 1 << 24;
/** Largest per-lcore cache (like RTE_MEMPOOL_CACHE_MAX_SIZE). */
export const MEMPOOL_CACHE_MAX = 512;
/** Handle bits that hold the object index. */
export const HANDLE_INDEX_MASK = 0xffffff;

/** A pool's location as plain data, postable to workers (Mempool.attach). */
export interface MempoolDesc {
  name: string;
  zone: Memzone;
  /** header, free ring and lcore caches (process memory, never DMA memory); pool.desc carries it */
  meta?: SharedArrayBuffer;
}

/** Options for Mempool.create. */
export interface MempoolOptions {
  /** per-lcore cache size (0: none); default 0 */
  cacheSize?: number;
  /** object alignment within the pool (default 64) */
  align?: number;
  /** called once per object at creation (e.g. to write an mbuf header) */
  init?: (pool: Mempool, handle: number, byteOffset: number) => void;
  /** pa mode: the byte range [start, objSize) of each object that must be IOVA-contiguous */
  contiguousFrom?: number;
  /** words H_USER.. of the header for the layer above (e.g. mbuf geometry) */
  user?: readonly number[];
}

/** Counts that prove nothing leaked: every object is either available or in use. */
export interface MempoolAudit {
  /** objects the pool holds (populated) */
  size: number;
  /** objects free: in the ring plus in every lcore cache */
  available: number;
  /** objects handed out */
  inUse: number;
}

/** Pools this thread knows, by id (the top 8 bits of a handle). */
const POOLS: Mempool[] = [];
let nextId = 0;

/** The pool that owns a handle (in this thread). */
export function poolOf(handle: number): Mempool {
  return POOLS[handle >>> 24];
}

/** A pool of fixed-size objects with per-lcore caches. */
export class Mempool {
  // Fields are `declare`d and assigned in the constructor: a class field would first be defined as
  // undefined, and V8 would then tag-check every number and map-check every view read from it in
  // the hot loops (docs/performance.md).
  declare readonly name: string;
  declare readonly zone: Memzone;
  declare readonly id: number;
  /** objects it holds */
  declare readonly size: number;
  declare readonly objSize: number;
  /** byte offset of object 0 in the zone */
  declare readonly objOffset: number;
  declare readonly cacheSize: number;
  /** views over the whole memzone, for object access at byte offsets */
  declare readonly u8: Uint8Array;
  declare readonly u16: Uint16Array;
  declare readonly u32: Uint32Array;
  /** 8-byte stores of prepared bit patterns (see pktmbufAllocInit) */
  declare readonly f64: Float64Array;
  declare readonly dv: DataView;
  /** the zone's address as a number (user addresses fit in 2^53), for system calls on mbuf data */
  declare readonly va: number;
  /** header, ring and caches (see the file comment) */
  declare readonly meta: SharedArrayBuffer;
  private declare readonly ring: Ring;
  /** the meta buffer as words: header and caches */
  private declare readonly i32: Int32Array;
  private declare readonly mu32: Uint32Array;
  private declare readonly flushThresh: number;
  private declare readonly cacheOffset: number;
  private declare readonly cacheStride: number;

  private constructor(name: string, zone: Memzone, meta: SharedArrayBuffer | undefined) {
    if (meta === undefined || meta.byteLength < HEADER_BYTES || new Int32Array(meta, 0, 1)[H_MAGIC] !== MAGIC) {
      throw new Error(`mempool "${name}": memzone "${zone.name}" holds no mempool (bad magic)`);
    }
    const h = new Int32Array(meta, 0, HEADER_BYTES / 4);
    checkHeader(name, zone, meta, h);
    const ab = viewOf(zone.va, zone.len);
    this.meta = meta;
    this.name = name;
    this.zone = zone;
    this.id = h[H_ID];
    this.size = h[H_POPULATED];
    this.objSize = h[H_OBJ_SIZE];
    this.objOffset = h[H_OBJ_OFF];
    this.cacheSize = h[H_CACHE_SIZE];
    this.flushThresh = h[H_FLUSH];
    this.cacheOffset = h[H_CACHE_OFF];
    this.cacheStride = h[H_CACHE_STRIDE];
    this.u8 = new Uint8Array(ab);
    this.u16 = new Uint16Array(ab, 0, zone.len >>> 1);
    this.u32 = new Uint32Array(ab, 0, zone.len >>> 2);
    this.f64 = new Float64Array(ab, 0, zone.len >>> 3);
    this.dv = new DataView(ab);
    this.va = Number(zone.va);
    this.i32 = new Int32Array(meta);
    this.mu32 = new Uint32Array(meta);
    this.ring = Ring.attach({ name: `${name}.ring`, memory: meta, offset: h[H_RING_OFF], size: nextPow2(h[H_COUNT]) });
  }

  /** Create a pool of count objects of objSize bytes in a new memzone named after it. */
  static create(memory: EalMemory, name: string, count: number, objSize: number, opts: MempoolOptions = {}): Mempool {
    if (!Number.isInteger(count) || count < 1 || count >= MEMPOOL_MAX_OBJECTS) {
      throw new RangeError(`mempool "${name}": object count ${count} must be 1..${MEMPOOL_MAX_OBJECTS - 1}`);
    }
    if (!Number.isInteger(objSize) || objSize < 4 || objSize > 1 << 20) {
      throw new RangeError(`mempool "${name}": object size ${objSize} must be 4..1048576 bytes`);
    }
    const cacheSize = opts.cacheSize ?? 0;
    if (!Number.isInteger(cacheSize) || cacheSize < 0 || cacheSize > MEMPOOL_CACHE_MAX || cacheSize * 1.5 > count) {
      throw new RangeError(`mempool "${name}": cache size ${cacheSize} must be 0..${MEMPOOL_CACHE_MAX} and at most count/1.5 (${Math.floor(count / 1.5)})`);
    }
    if (nextId >= 256) throw new Error(`mempool "${name}": this process already has 256 mempools, the most a handle can name`);
    const align = opts.align ?? 64;
    const size = Math.ceil(objSize / align) * align;
    const ringSize = nextPow2(count);
    const flush = Math.ceil(cacheSize * 1.5);
    const ringOff = HEADER_BYTES;
    const cacheOff = Math.ceil((ringOff + ringBytes(ringSize)) / 64) * 64;
    const stride = Math.ceil((4 + 8 * flush) / 64) * 64; // len word + room for 2*flush entries
    const metaBytes = cacheOff + (cacheSize > 0 ? stride * MAX_LCORE : 0);
    const objOff = 0; // the zone holds the objects only
    if (objOff + count * size >= 2 ** 31) {
      throw new RangeError(`mempool "${name}": ${count} objects of ${size} bytes need ${Math.ceil((objOff + count * size) / 2 ** 20)} MB; a pool holds less than 2 GiB (make several pools)`);
    }
    const zone = memory.reserve(`mp_${name}`, objOff + count * size, Math.max(align, 64));
    try {
      const meta = new SharedArrayBuffer(metaBytes);
      const h = new Int32Array(meta, 0, HEADER_BYTES / 4);
      const id = nextId++;
      h.set([0, id, count, size, objOff, cacheSize, flush, ringOff, cacheOff, stride, 0]);
      if (opts.user) h.set(opts.user, H_USER);
      const ring = Ring.createIn(`${name}.ring`, meta, ringOff, ringSize);
      // Populate: in pa mode skip objects whose DMA range crosses non-adjacent physical pages.
      const seg = memory.segment(zone.segment);
      const from = opts.contiguousFrom ?? 0;
      const handles = new Uint32Array(count);
      let n = 0;
      for (let i = 0; i < count; i++) {
        const segOff = zone.offset + objOff + i * size;
        if (iovaContiguous(seg, segOff + from, size - from)) handles[n++] = (id << 24) | i;
      }
      h[H_POPULATED] = n;
      Atomics.store(h, H_MAGIC, MAGIC);
      const pool = new Mempool(name, zone, meta);
      POOLS[id] = pool;
      if (opts.init) for (let k = 0; k < n; k++) opts.init(pool, handles[k], pool.offsetOf(handles[k]));
      ring.enqueueBulk(handles, n);
      return pool;
    } catch (e) {
      memory.free(zone.name);
      throw e;
    }
  }

  /** Rebuild a pool in this thread from its descriptor (pool.desc, posted: the meta buffer is shared). */
  static attach(desc: MempoolDesc): Mempool {
    const known = desc.meta && desc.meta.byteLength >= HEADER_BYTES ? POOLS[new Int32Array(desc.meta, 0, HEADER_BYTES / 4)[H_ID]] : undefined;
    if (known && known.meta === desc.meta) return known;
    const pool = new Mempool(desc.name, desc.zone, desc.meta);
    POOLS[pool.id] = pool;
    return pool;
  }

  /** Plain-data descriptor for attach() in a worker. */
  get desc(): MempoolDesc {
    return { name: this.name, zone: this.zone, meta: this.meta };
  }

  /** Header words reserved for the layer above (mbuf geometry). */
  userWord(i: number): number {
    return this.i32[H_USER + i];
  }

  /** Byte offset of an object in the zone views (u8/u16/u32/dv). */
  offsetOf(handle: number): number {
    // Math.imul keeps the arithmetic in int32 (a plain * may leave it as a float64 in JIT code);
    // create() keeps every pool below 2 GiB so the result is exact and non-negative.
    // 0xffffff is HANDLE_INDEX_MASK: an exported const is read through a cell with a TDZ check.
    return this.objOffset + Math.imul(handle & 0xffffff, this.objSize);
  }

  /** Take n objects into out[off..], all or none; returns true on success. */
  allocBulk(out: Uint32Array, n: number, off = 0): boolean {
    const lc = lcoreId();
    if (this.cacheSize === 0 || lc < 0 || n > this.cacheSize) return this.ring.dequeueBulk(out, n, off) === n;
    const i32 = this.i32;
    const c = (this.cacheOffset + lc * this.cacheStride) >> 2;
    let len = i32[c];
    if (len < n) {
      // Refill the cache up to cacheSize beyond the request, straight into the cache array.
      const want = this.cacheSize + n - len;
      const got = this.ring.dequeueBulk(this.mu32, want, c + 1 + len);
      if (got === 0) {
        // Not enough for a full refill: serve the request from the ring alone.
        return this.ring.dequeueBulk(out, n, off) === n;
      }
      len += got;
    }
    const u32 = this.mu32;
    // The cache's top n entries, top first (LIFO: the most recently freed are warmest), four at a time.
    let i = 0;
    for (; i + 4 <= n; i += 4) {
      const t = c + len - i;
      out[off + i] = u32[t]; out[off + i + 1] = u32[t - 1]; out[off + i + 2] = u32[t - 2]; out[off + i + 3] = u32[t - 3];
    }
    for (; i < n; i++) out[off + i] = u32[c + len - i];
    i32[c] = len - n;
    return true;
  }

  /** Return n objects from objs[off..] to the pool. */
  freeBulk(objs: Uint32Array, n: number, off = 0): void {
    const lc = lcoreId();
    if (this.cacheSize === 0 || lc < 0 || n > this.flushThresh) {
      this.ring.enqueueBulk(objs, n, off);
      return;
    }
    const i32 = this.i32, u32 = this.mu32;
    const c = (this.cacheOffset + lc * this.cacheStride) >> 2;
    let len = i32[c];
    const b = c + 1 + len;
    let i = 0;
    for (; i + 4 <= n; i += 4) {
      u32[b + i] = objs[off + i]; u32[b + i + 1] = objs[off + i + 1]; u32[b + i + 2] = objs[off + i + 2]; u32[b + i + 3] = objs[off + i + 3];
    }
    for (; i < n; i++) u32[b + i] = objs[off + i];
    len += n;
    if (len >= this.flushThresh) {
      this.ring.enqueueBulk(u32, len - this.cacheSize, c + 1 + this.cacheSize);
      len = this.cacheSize;
    }
    i32[c] = len;
  }

  /** Take one object; returns its handle or -1 when the pool is empty. */
  alloc(): number {
    return this.allocBulk(ONE, 1) ? ONE[0] : -1;
  }

  /** Return one object. */
  free(handle: number): void {
    ONE[0] = handle;
    this.freeBulk(ONE, 1);
  }

  /** Move this lcore's cached objects back to the ring (before an lcore exits). */
  flushCache(): void {
    const lc = lcoreId();
    if (this.cacheSize === 0 || lc < 0) return;
    const c = (this.cacheOffset + lc * this.cacheStride) >> 2;
    const len = this.i32[c];
    if (len > 0) this.ring.enqueueBulk(this.mu32, len, c + 1);
    this.i32[c] = 0;
  }

  /** Free objects now: ring plus every lcore cache (exact when no thread is allocating). */
  availableCount(): number {
    let n = this.ring.count();
    if (this.cacheSize > 0) for (let l = 0; l < MAX_LCORE; l++) n += this.i32[(this.cacheOffset + l * this.cacheStride) >> 2];
    return n;
  }

  /** Objects handed out now. */
  inUseCount(): number {
    return this.size - this.availableCount();
  }

  /** Counts for leak checks: size = available + inUse. */
  audit(): MempoolAudit {
    const available = this.availableCount();
    return { size: this.size, available, inUse: this.size - available };
  }
}

const ONE = new Uint32Array(1);

/**
 * Refuse a header that does not describe a pool whose objects fit its zone and whose ring and
 * caches fit its meta buffer: every view is then made for the bytes that are there.
 */
function checkHeader(name: string, zone: Memzone, meta: SharedArrayBuffer, h: Int32Array): void {
  const bad = (what: string): Error => new Error(`mempool "${name}": memzone "${zone.name}": bad header (${what})`);
  const id = h[H_ID], count = h[H_COUNT], objSize = h[H_OBJ_SIZE], objOff = h[H_OBJ_OFF], cacheSize = h[H_CACHE_SIZE];
  const flush = h[H_FLUSH], ringOff = h[H_RING_OFF], cacheOff = h[H_CACHE_OFF], stride = h[H_CACHE_STRIDE], populated = h[H_POPULATED];
  if (id < 0 || id > 255) throw bad(`pool id ${id}`);
  if (count < 1 || count >= MEMPOOL_MAX_OBJECTS || populated < 0 || populated > count) throw bad(`count ${count}, populated ${populated}`);
  if (objSize < 4 || objSize > 2 ** 21 || objOff < 0 || objOff + count * objSize > zone.len) throw bad(`${count} objects of ${objSize} bytes at ${objOff}`);
  if (ringOff < HEADER_BYTES || ringOff % 64 !== 0 || ringOff + ringBytes(nextPow2(count)) > cacheOff) throw bad(`ring at ${ringOff}`);
  if (cacheSize < 0 || cacheSize > MEMPOOL_CACHE_MAX || flush < cacheSize || flush > Math.ceil(cacheSize * 1.5)) throw bad(`cache size ${cacheSize}, flush threshold ${flush}`);
  if (cacheOff % 64 !== 0 || cacheOff > meta.byteLength || (cacheSize > 0 && (stride < 4 + 8 * flush || cacheOff + stride * MAX_LCORE > meta.byteLength))) throw bad(`caches at ${cacheOff}, stride ${stride}`);
}
