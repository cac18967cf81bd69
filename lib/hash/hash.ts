/**
 * rte_hash in TypeScript: an exact-match table for fixed-size keys, cuckoo hashing with buckets of
 * 8 entries and 16-bit short signatures, in one SharedArrayBuffer that every lcore reads while one
 * writer (the thread that created it) adds and deletes.
 *
 * Layout (one SharedArrayBuffer):
 *   header (128 B: geometry, the key count; the table change counter alone on the second line)
 *   buckets: numBuckets x 64 B = 8 x u16 signature | 8 x u32 key index | 16 B unused
 *   key store: (entries + 1) x entry = u32 value | key as u32 words (little endian, zero-padded);
 *              index 0 is the dummy that an empty bucket slot names (as in rte_hash)
 *
 * Hashing: MurmurHash3_x86_32 of the key bytes (seed = the `seed` option, rte_hash's
 * hash_func_init_val). The key is read as little-endian u32 words, so the hash is one Math.imul
 * round per 4 bytes and a finalizer: no tables to compete with buckets and keys for L1, and its
 * finalizer avalanches every input bit into both the low bits (the bucket) and the high 16 (the
 * signature). It is the reference algorithm, so any C or Python murmur3 gives the same value for
 * a key (test/hash/hash.test.ts checks published vectors). rte_hash defaults to CRC32C with SSE4.2
 * (one instruction per 8 bytes in C); JavaScript has no CRC instruction and a table CRC costs a
 * table load per byte. The high 16 bits are the signature, the low bits the primary bucket, and
 * the secondary bucket is (primary ^ signature) & mask, as rte_hash has it: an entry finds its other
 * bucket from the one it is in and its signature, without the key.
 *
 * Concurrency: one writer, lock-free readers (RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY_LF). The table
 * change counter (rte_hash's tbl_chng_cnt) has two halves: the low 16 bits count cuckoo moves, the
 * high 16 bits count key-slot recycles (a carry out of the low half reads as a recycle: the safe
 * direction). Why each step is safe:
 *  - Publishing a key: its key words and value are written into a key-store entry no reader can
 *    reach (see recycling), then the bucket slot's signature, then its key index. Stores become
 *    visible in that order (x86 TSO: plain stores; elsewhere Atomics.store), so a reader that reads
 *    the new key index reads the finished entry. A reader that sees the new signature with the old
 *    (empty) index skips the slot: it misses a key that was being added, which is an answer from
 *    before the add.
 *  - A cuckoo move along a path (breadth-first search as rte_hash, at most 1000 buckets) runs
 *    from the empty slot back to the new key's bucket; each step copies an entry into the next
 *    slot of the path first (the entry is then in both of its buckets), and the slot it came from
 *    is overwritten only in the next step, after the counter was bumped. A reader that missed a key
 *    that stayed in the table must have read the slot it left after it was overwritten, so (loads
 *    in order) it also reads the bumped counter at its end, and searches the keys it missed again.
 *  - Deleting empties the bucket slot (signature, then index) and puts the key-store entry in
 *    limbo, not on the free list: its words stay as they were, so a reader that took the index
 *    before the delete compares the old key and returns the old value, an answer from before
 *    the delete. Only when the free list is empty does the writer recycle the limbo entries: it
 *    bumps the counter's recycle half once for the whole batch, then reuses them. A reader that
 *    began before that bump and read an entry being rewritten (a torn key, another key's value)
 *    sees the bump when it re-reads the counter and throws its whole answer away; a reader that
 *    began after it cannot reach the old indices (they left every bucket before the bump). So hits
 *    are checked too, unlike rte_hash, whose readers rely on RCU or on the application to delay
 *    reuse (rte_hash_free_key_with_position); here readers need no registration.
 *  - Updating the value of a key that is in the table is one aligned 32-bit store: old or new.
 * The reader reads the counter with Atomics.load before and after (also a barrier the JIT does not
 * move loads across), everything else with plain loads on x86, Atomics.load elsewhere (a chain of
 * acquire loads is in program order, which plain loads are not there). Counter bumps are
 * Atomics.store on every CPU (a full fence on x86; the writer is the control plane).
 * A reader retries while the counter moves, as rte_hash's do: a writer that never pauses its
 * cuckoo moves can delay a lookup, never corrupt it.
 */
import { TSO } from '../../src/os/arch.js';
import { adviseHugePages } from '../../src/os/libc.js';

const MAGIC = 0x68617368; // "hash"
const H_MAGIC = 0, H_KEY_LEN = 1, H_ENTRIES = 2, H_BUCKETS = 3, H_ENTRY_WORDS = 4, H_SEED = 5, H_COUNT = 6;
/** the table change counter: word 16 = byte 64, a cache line of its own (readers poll it) */
const H_CHANGE = 16;
const HEADER_BYTES = 128;
const BUCKET_BYTES = 64;
/** keys per bulk step: the scratch arrays hold this many (rte_hash's RTE_HASH_LOOKUP_BULK_MAX) */
const BULK = 64;
/** nodes of the breadth-first cuckoo search (RTE_HASH_BFS_QUEUE_MAX_LEN) */
const BFS_MAX = 1000;
const RECYCLE = 0x10000;
const MAX_KEY_LEN = 1024;
const MAX_BYTES = 0x7fff_ffff;
/** the largest value a key can carry: lookups answer -1 for a miss */
export const HASH_VALUE_MAX = 0x7fff_ffff;

/** Options of Hash.create (rte_hash_parameters). */
export interface HashOptions {
  /** keys the table holds at most (>= 8); buckets: this rounded up to a power of two, / 8 */
  entries: number;
  /** bytes per key, 1 to 1024 */
  keyLen: number;
  /** seed of the hash function (hash_func_init_val), default 0 */
  seed?: number;
}

/** A table's location as plain data, postable to an lcore: rebuilt there with Hash.attach. */
export interface HashDesc {
  name: string;
  memory: SharedArrayBuffer;
  entries: number;
  keyLen: number;
}

/** Counters of a table object (this thread's view): the writer's moves and recycles, a reader's retries. */
export interface HashStats {
  /** entries moved to their other bucket by cuckoo displacement (writer) */
  moves: number;
  /** batches of deleted key slots made reusable (writer): each one makes in-flight lookups retry */
  recycles: number;
  /** lookups (single or bulk steps) that read a changed table counter and searched again (this reader) */
  retries: number;
}

/** Thrown by add when the key does not fit: the table's key store is full, or both of its buckets are and no cuckoo path frees a slot. */
export class HashFullError extends Error {
  override readonly name = 'HashFullError';
}

const ST_MOVES = 0, ST_RECYCLES = 1, ST_RETRIES = 2;

/** MurmurHash3_x86_32 of len bytes of key at off (what a table with this seed uses; rte_jhash's place). */
export function hashMurmur3(key: Uint8Array, off: number, len: number, seed = 0): number {
  let h = seed | 0, q = off;
  const end = off + (len & ~3);
  for (; q < end; q += 4) {
    let k = key[q] | (key[q + 1] << 8) | (key[q + 2] << 16) | (key[q + 3] << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = len & 3;
  if (tail !== 0) {
    let k = key[q];
    if (tail > 1) k |= key[q + 1] << 8;
    if (tail > 2) k |= key[q + 2] << 16;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
  }
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Bytes of the SharedArrayBuffer a table of these options occupies. */
export function hashBytes(entries: number, keyLen: number): number {
  return layout(entries, keyLen).bytes;
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

function layout(entries: number, keyLen: number): { buckets: number; entryWords: number; keysOff: number; bytes: number } {
  const buckets = nextPow2(entries) / 8;
  // value + key words; up to 64 bytes a power of two, so that no entry straddles a cache line
  const raw = 1 + ((keyLen + 3) >> 2);
  const entryWords = raw <= 16 ? nextPow2(raw) : (raw + 3) & ~3;
  const keysOff = HEADER_BYTES + buckets * BUCKET_BYTES;
  return { buckets, entryWords, keysOff, bytes: keysOff + (entries + 1) * entryWords * 4 };
}

function checkOptions(name: string, o: HashOptions): void {
  if (!Number.isInteger(o.entries) || o.entries < 8 || o.entries > 1 << 28) {
    throw new RangeError(`hash "${name}": entries ${o.entries} must be a whole number from 8 to 2^28`);
  }
  if (!Number.isInteger(o.keyLen) || o.keyLen < 1 || o.keyLen > MAX_KEY_LEN) {
    throw new RangeError(`hash "${name}": keyLen ${o.keyLen} must be a whole number of bytes from 1 to ${MAX_KEY_LEN}`);
  }
  if (o.seed !== undefined && (!Number.isInteger(o.seed) || o.seed < -0x8000_0000 || o.seed > 0xffff_ffff)) {
    throw new RangeError(`hash "${name}": seed ${o.seed} must be a 32-bit whole number`);
  }
  const bytes = layout(o.entries, o.keyLen).bytes;
  if (bytes > MAX_BYTES) {
    throw new RangeError(`hash "${name}": ${o.entries} entries of ${o.keyLen}-byte keys need ${bytes} bytes, more than the 2 GiB a table may take; lower entries`);
  }
}

const EMPTY_U32 = new Uint32Array(0);

/**
 * The slots of bucket word bi whose signature is sg (sg2 = sg | sg << 16) as bits 0-7, compared
 * without a branch (rte_hash compares the eight with one vector instruction): where a match lies
 * is random, so a loop that stopped at the first one mispredicted about once per key. A bucket's
 * first four words hold the eight u16 signatures, two per word; (x - 1) >>> 31 is 1 exactly when
 * x is 0.
 */
function sigHits(idx: Int32Array, bi: number, sg2: number): number {
  const x0 = idx[bi] ^ sg2, x1 = idx[bi + 1] ^ sg2, x2 = idx[bi + 2] ^ sg2, x3 = idx[bi + 3] ^ sg2;
  return (((x0 & 0xffff) - 1) >>> 31) | ((((x0 >>> 16) - 1) >>> 31) << 1)
    | ((((x1 & 0xffff) - 1) >>> 31) << 2) | ((((x1 >>> 16) - 1) >>> 31) << 3)
    | ((((x2 & 0xffff) - 1) >>> 31) << 4) | ((((x2 >>> 16) - 1) >>> 31) << 5)
    | ((((x3 & 0xffff) - 1) >>> 31) << 6) | ((((x3 >>> 16) - 1) >>> 31) << 7);
}

/**
 * A cuckoo hash table of fixed-size keys with a 32-bit value per key (rte_hash with data). The
 * thread that creates it is its one writer; other threads attach read-only (Hash.attach(h.desc)).
 */
export class Hash {
  // Fields are `declare`d and assigned in the constructor: a class field would first be defined as
  // undefined, and V8 would then tag-check every number and map-check every view read from it in
  // the hot loops (docs/performance.md).
  declare readonly name: string;
  /** keys the table holds at most */
  declare readonly entries: number;
  /** bytes per key */
  declare readonly keyLen: number;
  /** buckets of 8 entries */
  declare readonly buckets: number;
  /** whether this object may add and delete (the creating thread's) */
  declare readonly writable: boolean;
  /** where it lives, for Hash.attach in other threads */
  declare readonly desc: HashDesc;
  private declare readonly mask: number;
  private declare readonly seed: number;
  private declare readonly keyWords: number;
  private declare readonly fullWords: number;
  private declare readonly tailBytes: number;
  private declare readonly entryWords: number;
  /** plain loads and stores (x86, TSO); Atomics elsewhere */
  private declare readonly plain: boolean;
  private declare readonly hdr: Int32Array;
  /** bucket b's signatures at b * 32 + slot */
  private declare readonly sig: Uint16Array;
  /** bucket b's key indices at b * 16 + 4 + slot */
  private declare readonly idx: Int32Array;
  /** key store: entry x at x * entryWords: value, then the key words */
  private declare readonly ks: Int32Array;
  // per-object scratch, so that lookups allocate nothing
  private declare readonly kw: Int32Array;
  private declare readonly hs: Int32Array;
  private declare readonly cand: Int32Array;
  private declare readonly vals: Int32Array;
  private declare readonly sink: Int32Array;
  private declare readonly st: Float64Array;
  /** the last key buffer seen on the word path, and an Int32Array over it */
  private declare kbuf: ArrayBufferLike | null;
  private declare kview: Int32Array;
  // the writer's own state (empty in readers)
  private declare readonly free: Int32Array;
  private declare nFree: number;
  private declare readonly limbo: Int32Array;
  private declare nLimbo: number;
  private declare readonly qBucket: Int32Array;
  private declare readonly qPrev: Int32Array;
  private declare readonly qSlot: Int32Array;

  private constructor(desc: HashDesc, init: HashOptions | null, writable: boolean) {
    const { name, memory, entries, keyLen } = desc;
    this.name = name;
    this.desc = desc;
    this.entries = entries;
    this.keyLen = keyLen;
    this.writable = writable;
    const g = layout(entries, keyLen);
    if (memory.byteLength < g.bytes) {
      throw new Error(`hash "${name}": its memory is ${memory.byteLength} bytes, a table of ${entries} entries of ${keyLen}-byte keys needs ${g.bytes}`);
    }
    const hdr = new Int32Array(memory, 0, HEADER_BYTES / 4);
    if (init) {
      hdr[H_KEY_LEN] = keyLen;
      hdr[H_ENTRIES] = entries;
      hdr[H_BUCKETS] = g.buckets;
      hdr[H_ENTRY_WORDS] = g.entryWords;
      hdr[H_SEED] = (init.seed ?? 0) | 0;
      Atomics.store(hdr, H_MAGIC, MAGIC);
    } else {
      if (Atomics.load(hdr, H_MAGIC) !== MAGIC) throw new Error(`hash "${name}": no table in this memory (bad magic); was it created with Hash.create?`);
      if (hdr[H_KEY_LEN] !== keyLen || hdr[H_ENTRIES] !== entries || hdr[H_BUCKETS] !== g.buckets || hdr[H_ENTRY_WORDS] !== g.entryWords) {
        throw new Error(`hash "${name}": its memory holds a table of ${hdr[H_ENTRIES]} entries of ${hdr[H_KEY_LEN]}-byte keys, its descriptor says ${entries} of ${keyLen} (pass h.desc unchanged)`);
      }
    }
    this.hdr = hdr;
    this.buckets = g.buckets;
    this.mask = g.buckets - 1;
    this.seed = hdr[H_SEED];
    this.keyWords = (keyLen + 3) >> 2;
    this.fullWords = keyLen >> 2;
    this.tailBytes = keyLen & 3;
    this.entryWords = g.entryWords;
    this.plain = TSO;
    this.sig = new Uint16Array(memory, HEADER_BYTES, g.buckets * (BUCKET_BYTES / 2));
    this.idx = new Int32Array(memory, HEADER_BYTES, g.buckets * (BUCKET_BYTES / 4));
    this.ks = new Int32Array(memory, g.keysOff, (entries + 1) * g.entryWords);
    this.kw = new Int32Array(BULK * this.keyWords);
    this.hs = new Int32Array(BULK);
    this.cand = new Int32Array(BULK);
    this.vals = new Int32Array(BULK);
    this.sink = new Int32Array(1);
    this.st = new Float64Array(3);
    this.kbuf = null;
    this.kview = new Int32Array(0);
    if (writable) {
      this.free = new Int32Array(entries);
      // popped from the end: key indices 1, 2, 3 ... in order
      for (let i = 0; i < entries; i++) this.free[i] = entries - i;
      this.nFree = entries;
      this.limbo = new Int32Array(entries);
      this.qBucket = new Int32Array(BFS_MAX);
      this.qPrev = new Int32Array(BFS_MAX);
      this.qSlot = new Int32Array(BFS_MAX);
    } else {
      this.free = this.limbo = this.qBucket = this.qPrev = this.qSlot = new Int32Array(0);
      this.nFree = 0;
    }
    this.nLimbo = 0;
  }

  /** Create an empty table in a new SharedArrayBuffer; this thread is its writer (rte_hash_create). */
  static create(name: string, options: HashOptions): Hash {
    checkOptions(name, options);
    const memory = new SharedArrayBuffer(layout(options.entries, options.keyLen).bytes);
    adviseHugePages(memory); // lookups land at random: a TLB entry per 2 MiB, not per 4 KiB
    return new Hash({ name, memory, entries: options.entries, keyLen: options.keyLen }, options, true);
  }

  /** Rebuild a table from its descriptor in this thread (an lcore), for lookups only. */
  static attach(desc: HashDesc): Hash {
    if (!(desc.memory instanceof SharedArrayBuffer)) throw new TypeError(`hash "${desc.name}": desc.memory must be the table's SharedArrayBuffer (pass h.desc)`);
    checkOptions(desc.name, { entries: desc.entries, keyLen: desc.keyLen });
    return new Hash(desc, null, false);
  }

  /** Keys in the table now (rte_hash_count). */
  get count(): number {
    return Atomics.load(this.hdr, H_COUNT);
  }

  /** This object's counters (see HashStats). */
  stats(): HashStats {
    return { moves: this.st[ST_MOVES], recycles: this.st[ST_RECYCLES], retries: this.st[ST_RETRIES] };
  }

  /** The table's hash of the key at key[off..] (rte_hash_hash): pass it to the *WithHash calls to hash once. */
  hash(key: Uint8Array, off = 0): number {
    this.checkKey(key, off);
    this.gatherOne(key, off);
    return this.hashAt(0) >>> 0;
  }

  // ---- lookups (any thread) ----

  /** The value of the key at key[off..], or -1 when it is not in the table (rte_hash_lookup_data). */
  lookup(key: Uint8Array, off = 0): number {
    this.checkKey(key, off);
    this.gatherOne(key, off);
    return this.lookupOne(this.hashAt(0));
  }

  /** lookup with the key's hash computed before (rte_hash_lookup_with_hash_data). */
  lookupWithHash(key: Uint8Array, off: number, hash: number): number {
    this.checkKey(key, off);
    this.gatherOne(key, off);
    return this.lookupOne(hash | 0);
  }

  /**
   * Look up n keys packed at key[off], key[off + keyLen], ...; out[outOff + i] gets key i's value
   * or -1. Returns the number found (rte_hash_lookup_bulk_data). Allocates nothing.
   */
  lookupBulk(keys: Uint8Array, off: number, n: number, out: Int32Array, outOff = 0): number {
    this.checkBulk(keys, off, n, out, outOff);
    let hits = 0;
    for (let done = 0; done < n; done += BULK) {
      const m = n - done < BULK ? n - done : BULK;
      hits += this.bulkStep(keys, off + done * this.keyLen, m, out, outOff + done, EMPTY_U32, 0, false);
    }
    return hits;
  }

  /** lookupBulk with each key's hash computed before, hashes[hashOff + i] for key i (rte_hash_lookup_with_hash_bulk_data). */
  lookupBulkWithHash(keys: Uint8Array, off: number, n: number, hashes: Uint32Array, hashOff: number, out: Int32Array, outOff = 0): number {
    this.checkBulk(keys, off, n, out, outOff);
    if (!Number.isInteger(hashOff) || hashOff < 0 || hashOff + n > hashes.length) {
      throw new RangeError(`hash "${this.name}": ${n} hashes from index ${hashOff} do not fit hashes (length ${hashes.length})`);
    }
    let hits = 0;
    for (let done = 0; done < n; done += BULK) {
      const m = n - done < BULK ? n - done : BULK;
      hits += this.bulkStep(keys, off + done * this.keyLen, m, out, outOff + done, hashes, hashOff + done, true);
    }
    return hits;
  }

  // ---- the writer ----

  /**
   * Add the key at key[off..] with value (0 to HASH_VALUE_MAX; default: the key's position), or
   * set the value of a key already there. Returns the key's position, 0 to entries - 1, stable
   * while the key stays (rte_hash_add_key_data). Throws HashFullError when it does not fit.
   */
  add(key: Uint8Array, off = 0, value = -1): number {
    this.checkKey(key, off);
    this.gatherOne(key, off);
    return this.addHashed(this.hashAt(0), value);
  }

  /** add with the key's hash computed before (rte_hash_add_key_with_hash_data). */
  addWithHash(key: Uint8Array, off: number, hash: number, value = -1): number {
    this.checkKey(key, off);
    this.gatherOne(key, off);
    return this.addHashed(hash | 0, value);
  }

  /** Delete the key at key[off..]; returns the position it had, or -1 when it was not there (rte_hash_del_key). */
  delete(key: Uint8Array, off = 0): number {
    this.checkKey(key, off);
    this.gatherOne(key, off);
    return this.deleteHashed(this.hashAt(0));
  }

  /** delete with the key's hash computed before (rte_hash_del_key_with_hash). */
  deleteWithHash(key: Uint8Array, off: number, hash: number): number {
    this.checkKey(key, off);
    this.gatherOne(key, off);
    return this.deleteHashed(hash | 0);
  }

  /** Delete every key (rte_hash_reset); safe beside readers, like delete. */
  reset(): void {
    this.checkWriter('reset');
    const idx = this.idx, sig = this.sig;
    for (let b = 0; b < this.buckets; b++) {
      for (let s = 0; s < 8; s++) {
        const o = (b << 4) + 4 + s, x = idx[o];
        if (x === 0) continue;
        this.store16(sig, (b << 5) + s, 0);
        this.store32(idx, o, 0);
        this.limbo[this.nLimbo++] = x;
      }
    }
    this.store32(this.hdr, H_COUNT, 0);
  }

  // ---- internals ----

  private checkKey(key: Uint8Array, off: number): void {
    if (!(off >= 0 && off + this.keyLen <= key.length) || !Number.isInteger(off)) {
      throw new RangeError(`hash "${this.name}": a ${this.keyLen}-byte key at offset ${off} does not fit its array (length ${key.length})`);
    }
  }

  private checkBulk(keys: Uint8Array, off: number, n: number, out: Int32Array, outOff: number): void {
    if (!Number.isInteger(n) || n < 0 || !Number.isInteger(off) || off < 0 || off + n * this.keyLen > keys.length) {
      throw new RangeError(`hash "${this.name}": ${n} keys of ${this.keyLen} bytes from offset ${off} do not fit keys (length ${keys.length})`);
    }
    if (!Number.isInteger(outOff) || outOff < 0 || outOff + n > out.length) {
      throw new RangeError(`hash "${this.name}": ${n} results from index ${outOff} do not fit out (length ${out.length})`);
    }
  }

  private checkWriter(what: string): void {
    if (!this.writable) throw new Error(`hash "${this.name}": ${what} on a table attached read-only; only the thread that created it (Hash.create) writes`);
  }

  /** The key's bytes at key[q..] as little-endian words, zero-padded, into kw[0..] (one key: no view to check). */
  private gatherOne(key: Uint8Array, q: number): void {
    const kw = this.kw, full = this.fullWords;
    let w = 0;
    for (; w < full; w++, q += 4) kw[w] = key[q] | (key[q + 1] << 8) | (key[q + 2] << 16) | (key[q + 3] << 24);
    const tail = this.tailBytes;
    if (tail !== 0) {
      let v = key[q];
      if (tail > 1) v |= key[q + 1] << 8;
      if (tail > 2) v |= key[q + 2] << 16;
      kw[w] = v;
    }
  }

  /**
   * Keys 0..m-1 at key[q], key[q + keyLen], ... as little-endian words, zero-padded, into kw at a
   * stride of keyWords. Whole words when the key length is a multiple of 4 and the keys are
   * 4-byte aligned in their buffer: through an Int32Array over that buffer, made once per buffer
   * (a caller that keeps its keys in one buffer allocates nothing); bytes otherwise.
   */
  private gather(key: Uint8Array, q: number, m: number): void {
    const kw = this.kw, kwN = this.keyWords;
    if (this.tailBytes === 0 && ((key.byteOffset + q) & 3) === 0) {
      const buf = key.buffer;
      if (buf !== this.kbuf) {
        this.kview = new Int32Array(buf, 0, buf.byteLength >> 2);
        this.kbuf = buf;
      }
      const v = this.kview, n = m * kwN;
      for (let i = 0, src = (key.byteOffset + q) >> 2; i < n; i++) kw[i] = v[src + i];
      return;
    }
    const full = this.fullWords, tail = this.tailBytes, len = this.keyLen;
    for (let i = 0; i < m; i++, q += len - (full << 2)) {
      const base = i * kwN;
      let w = 0;
      for (; w < full; w++, q += 4) kw[base + w] = key[q] | (key[q + 1] << 8) | (key[q + 2] << 16) | (key[q + 3] << 24);
      if (tail !== 0) {
        let v = key[q];
        if (tail > 1) v |= key[q + 1] << 8;
        if (tail > 2) v |= key[q + 2] << 16;
        kw[base + w] = v;
      }
    }
  }

  /** MurmurHash3_x86_32 of the gathered key at kw[base..] (the same as hashMurmur3 of its bytes). */
  private hashAt(base: number): number {
    const kw = this.kw, full = this.fullWords;
    let h = this.seed;
    for (let w = 0; w < full; w++) {
      let k = Math.imul(kw[base + w], 0xcc9e2d51);
      k = (k << 15) | (k >>> 17);
      h ^= Math.imul(k, 0x1b873593);
      h = (h << 13) | (h >>> 19);
      h = (Math.imul(h, 5) + 0xe6546b64) | 0;
    }
    if (this.tailBytes !== 0) {
      let k = Math.imul(kw[base + full], 0xcc9e2d51);
      k = (k << 15) | (k >>> 17);
      h ^= Math.imul(k, 0x1b873593);
    }
    h ^= this.keyLen;
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    return h ^ (h >>> 16);
  }

  /** Whether key-store entry x holds the gathered key at kw[base..]. */
  private keyEq(x: number, base: number): boolean {
    const ks = this.ks, kw = this.kw, n = this.keyWords, e = Math.imul(x, this.entryWords) + 1;
    if (this.plain) {
      for (let w = 0; w < n; w++) if (ks[e + w] !== kw[base + w]) return false;
    } else {
      for (let w = 0; w < n; w++) if (Atomics.load(ks, e + w) !== kw[base + w]) return false;
    }
    return true;
  }

  /**
   * The value of the gathered key kw[base..] in bucket b, or -1: the slots whose signature matches
   * (sigHits), lowest first, until one holds the key.
   */
  private searchBucket(b: number, sg: number, base: number): number {
    const idx = this.idx, bi = b << 4;
    if (!this.plain) return this.searchBucketAtomic(b, sg, base);
    for (let hit = sigHits(idx, bi, sg | (sg << 16)); hit !== 0; hit &= hit - 1) {
      const c = idx[bi + 4 + (31 - Math.clz32(hit & -hit))];
      if (c !== 0 && this.keyEq(c, base)) return this.ks[Math.imul(c, this.entryWords)];
    }
    return -1;
  }

  /** searchBucket with every shared load an Atomics.load: CPUs that reorder loads (not x86). */
  private searchBucketAtomic(b: number, sg: number, base: number): number {
    const sig = this.sig, idx = this.idx, bs = b << 5, bi = (b << 4) + 4;
    for (let s = 0; s < 8; s++) {
      if (Atomics.load(sig, bs + s) !== sg) continue;
      const x = Atomics.load(idx, bi + s);
      if (x !== 0 && this.keyEq(x, base)) return Atomics.load(this.ks, Math.imul(x, this.entryWords));
    }
    return -1;
  }

  /** The value of the gathered key kw[base..] with hash h in either of its buckets, or -1 (no counter check). */
  private search(base: number, h: number): number {
    const b = h & this.mask, sg = h >>> 16;
    const v = this.searchBucket(b, sg, base);
    if (v !== -1) return v;
    const b2 = (b ^ sg) & this.mask;
    return b2 === b ? -1 : this.searchBucket(b2, sg, base);
  }

  /** One lookup of the gathered key kw[0..] under the change counter. */
  private lookupOne(h: number): number {
    const hdr = this.hdr;
    let cb = Atomics.load(hdr, H_CHANGE);
    for (;;) {
      const v = this.search(0, h);
      const ca = Atomics.load(hdr, H_CHANGE);
      // unchanged: the answer stands; only moves since: a hit stands (its entry was not reused)
      if (ca === cb || (v !== -1 && ((ca ^ cb) >>> 16) === 0)) return v;
      this.st[ST_RETRIES]++;
      cb = ca;
    }
  }

  /**
   * Up to BULK keys: gather and hash them all, then load a word of each key's primary bucket in a
   * loop of its own (rte_hash's prefetch: nothing waits on these loads and no branch depends on
   * them, so the misses of the burst overlap), then probe. Measured in a table of 2^19 entries
   * (16-byte keys, 75 % full, alternated runs on a loaded machine): the loop of its own was faster
   * than none in 6 pairs of runs out of 6 (1-12 %), while the same load inside the hashing loop
   * was slower than none (211 against 191 ns).
   */
  private bulkStep(keys: Uint8Array, off: number, m: number, out: Int32Array, outOff: number, hashes: Uint32Array, hashOff: number, given: boolean): number {
    const hs = this.hs, kwN = this.keyWords, idx = this.idx, mask = this.mask;
    this.gather(keys, off, m);
    for (let i = 0; i < m; i++) hs[i] = given ? hashes[hashOff + i] | 0 : this.hashAt(i * kwN);
    let t = 0;
    for (let i = 0; i < m; i++) t = (t + idx[(hs[i] & mask) << 4]) | 0;
    this.sink[0] = t;
    const hdr = this.hdr;
    let cb = Atomics.load(hdr, H_CHANGE);
    let hits = this.probe(m, out, outOff);
    for (;;) {
      const ca = Atomics.load(hdr, H_CHANGE);
      if (ca === cb) return hits;
      this.st[ST_RETRIES]++;
      if (((ca ^ cb) >>> 16) !== 0) {
        // key slots were recycled: any answer may have read a rewritten entry
        cb = ca;
        hits = this.probe(m, out, outOff);
        continue;
      }
      // only cuckoo moves: the hits stand, the misses may have missed a moving key
      cb = ca;
      for (let i = 0; i < m; i++) {
        if (out[outOff + i] !== -1) continue;
        const v = this.search(i * kwN, hs[i]);
        if (v !== -1) {
          out[outOff + i] = v;
          hits++;
        }
      }
    }
  }

  /**
   * The gathered keys 0..m-1: first each key's first signature match in its primary bucket, its
   * entry's value read (which brings the entry's line in), or a touch of its secondary bucket when
   * nothing matched: no comparison waits on these loads, so the misses of different keys overlap
   * (rte_hash prefetches); then the key comparisons, and a full search of both buckets where the
   * first match was not the key (one pass that compares as it goes: 140-159 against 119-134 ns).
   * Signatures two at a time, as in searchBucket.
   */
  private probe(m: number, out: Int32Array, outOff: number): number {
    if (!this.plain) return this.probeAtomic(m, out, outOff);
    const hs = this.hs, cand = this.cand, vals = this.vals, sig = this.sig, idx = this.idx, ks = this.ks, kw = this.kw;
    const mask = this.mask, ew = this.entryWords, kwN = this.keyWords;
    let t = 0;
    for (let i = 0; i < m; i++) {
      const h = hs[i], b = h & mask, sg = h >>> 16, bi = b << 4, sg2 = sg | (sg << 16);
      let hit = sigHits(idx, bi, sg2), c = 0;
      while (hit !== 0) {
        // the lowest matching slot; an empty slot (index 0) matches signature 0: the next one
        c = idx[bi + 4 + (31 - Math.clz32(hit & -hit))];
        if (c !== 0) break;
        hit &= hit - 1;
      }
      cand[i] = c;
      if (c !== 0) vals[i] = ks[Math.imul(c, ew)];
      else t = (t + sig[((b ^ sg) & mask) << 5]) | 0;
    }
    this.sink[0] = t;
    let hits = 0;
    for (let i = 0; i < m; i++) {
      const c = cand[i], base = i * kwN;
      let eq = c !== 0;
      if (eq) {
        const e = Math.imul(c, ew) + 1;
        for (let w = 0; w < kwN; w++) {
          if (ks[e + w] !== kw[base + w]) {
            eq = false;
            break;
          }
        }
      }
      const v = eq ? vals[i] : this.search(base, hs[i]);
      out[outOff + i] = v;
      if (v !== -1) hits++;
    }
    return hits;
  }

  /** probe on CPUs that reorder loads: one key at a time, every shared load an Atomics.load. */
  private probeAtomic(m: number, out: Int32Array, outOff: number): number {
    let hits = 0;
    for (let i = 0; i < m; i++) {
      const v = this.search(i * this.keyWords, this.hs[i]);
      out[outOff + i] = v;
      if (v !== -1) hits++;
    }
    return hits;
  }

  private store32(a: Int32Array, i: number, v: number): void {
    if (this.plain) a[i] = v;
    else Atomics.store(a, i, v);
  }

  private store16(a: Uint16Array, i: number, v: number): void {
    if (this.plain) a[i] = v;
    else Atomics.store(a, i, v);
  }

  /** Bump the change counter: Atomics.store, a fence on every CPU, so no later store is seen before it. */
  private bump(by: number): void {
    Atomics.store(this.hdr, H_CHANGE, (this.hdr[H_CHANGE] + by) | 0);
  }

  /** The bucket slot (bucket * 8 + slot) holding the gathered key kw[0..] with hash h, or -1 (writer). */
  private findSlot(h: number): number {
    const b = h & this.mask, sg = h >>> 16, b2 = (b ^ sg) & this.mask;
    for (let k = 0; k < 2; k++) {
      const bb = k === 0 ? b : b2;
      if (k === 1 && b2 === b) break;
      for (let s = 0; s < 8; s++) {
        const x = this.idx[(bb << 4) + 4 + s];
        if (x !== 0 && this.sig[(bb << 5) + s] === sg && this.keyEq(x, 0)) return (bb << 3) + s;
      }
    }
    return -1;
  }

  private checkValue(value: number): void {
    if (value !== -1 && (!Number.isInteger(value) || value < 0 || value > HASH_VALUE_MAX)) {
      throw new RangeError(`hash "${this.name}": value ${value} must be a whole number from 0 to ${HASH_VALUE_MAX} (lookups answer -1 for a miss)`);
    }
  }

  private addHashed(h: number, value: number): number {
    this.checkWriter('add');
    this.checkValue(value);
    const ew = this.entryWords;
    const found = this.findSlot(h);
    if (found >= 0) {
      const x = this.idx[((found >> 3) << 4) + 4 + (found & 7)];
      if (value !== -1) this.store32(this.ks, Math.imul(x, ew), value);
      return x - 1;
    }
    const x = this.allocSlot();
    // the entry is unreachable (never used, or recycled after the readers were told): fill it, then publish
    const e = Math.imul(x, ew);
    this.store32(this.ks, e, value === -1 ? x - 1 : value);
    for (let w = 0; w < this.keyWords; w++) this.store32(this.ks, e + 1 + w, this.kw[w]);
    const b = h & this.mask, sg = h >>> 16, b2 = (b ^ sg) & this.mask;
    if (!this.insertIn(b, sg, x) && !this.cuckoo(b, sg, x) && (b2 === b || !this.cuckoo(b2, sg, x))) {
      this.free[this.nFree++] = x;
      throw new HashFullError(`hash "${this.name}": no room for the key: both of its buckets are full and no cuckoo path through up to ${BFS_MAX} buckets frees a slot ` +
        `(${this.count} keys in a table of ${this.entries} entries, ${this.buckets} buckets of 8); create the table with a larger entries option`);
    }
    this.store32(this.hdr, H_COUNT, this.hdr[H_COUNT] + 1);
    return x - 1;
  }

  /** A free key-store entry; recycles the deleted ones (one counter bump for the batch) when none is left. */
  private allocSlot(): number {
    if (this.nFree === 0) {
      if (this.nLimbo === 0) {
        throw new HashFullError(`hash "${this.name}": full: ${this.count} keys in a table of ${this.entries} entries; create the table with a larger entries option`);
      }
      // Readers that may still hold one of these indices see this bump at the end of their lookup and retry.
      this.bump(RECYCLE);
      this.st[ST_RECYCLES]++;
      for (let i = 0; i < this.nLimbo; i++) this.free[i] = this.limbo[i];
      this.nFree = this.nLimbo;
      this.nLimbo = 0;
    }
    return this.free[--this.nFree];
  }

  /** Put entry x with signature sg into an empty slot of bucket b (signature first, the index publishes). */
  private insertIn(b: number, sg: number, x: number): boolean {
    for (let s = 0; s < 8; s++) {
      if (this.idx[(b << 4) + 4 + s] !== 0) continue;
      this.store16(this.sig, (b << 5) + s, sg);
      this.store32(this.idx, (b << 4) + 4 + s, x);
      return true;
    }
    return false;
  }

  /**
   * Breadth-first cuckoo search from bucket start for an empty slot (rte_hash_cuckoo_make_space_mw),
   * then the moves along the path found, from the empty slot back to start, and entry x in start.
   */
  private cuckoo(start: number, sg: number, x: number): boolean {
    const qb = this.qBucket, qp = this.qPrev, qs = this.qSlot, idx = this.idx, sig = this.sig, mask = this.mask;
    qb[0] = start;
    qp[0] = -1;
    qs[0] = -1;
    let tail = 0, head = 1;
    while (tail < head && head <= BFS_MAX - 8) {
      const b = qb[tail];
      for (let s = 0; s < 8; s++) {
        if (idx[(b << 4) + 4 + s] === 0) {
          if (this.pathDistinct(tail, s)) {
            this.moveAlong(tail, s, sg, x);
            return true;
          }
          continue;
        }
        const alt = (b ^ sig[(b << 5) + s]) & mask;
        if (alt === b) continue; // an entry whose two buckets are one cannot move
        qb[head] = alt;
        qp[head] = tail;
        qs[head] = s;
        head++;
      }
      tail++;
    }
    return false;
  }

  /** Whether the path from the root to node n's slot s names no bucket slot twice (else the moves would overwrite an entry not yet copied). */
  private pathDistinct(n: number, s: number): boolean {
    const qb = this.qBucket, qp = this.qPrev, qs = this.qSlot;
    for (let a = n, sa = s; a !== -1; sa = qs[a], a = qp[a]) {
      for (let c = qp[a], sc = qs[a]; c !== -1; sc = qs[c], c = qp[c]) {
        if (qb[c] === qb[a] && sc === sa) return false;
      }
    }
    return true;
  }

  private moveAlong(n: number, s: number, sg: number, x: number): void {
    const qb = this.qBucket, qp = this.qPrev, qs = this.qSlot, idx = this.idx, sig = this.sig;
    let cur = n, curB = qb[n], curS = s, moved = false;
    while (qp[cur] !== -1) {
      const prev = qp[cur], prevB = qb[prev], prevS = qs[cur];
      // The slot overwritten now held the entry copied forward in the step before: tell the readers first.
      if (moved) this.bump(1);
      this.store16(sig, (curB << 5) + curS, sig[(prevB << 5) + prevS]);
      this.store32(idx, (curB << 4) + 4 + curS, idx[(prevB << 4) + 4 + prevS]);
      this.st[ST_MOVES]++;
      moved = true;
      cur = prev;
      curB = prevB;
      curS = prevS;
    }
    if (moved) this.bump(1);
    this.store16(sig, (curB << 5) + curS, sg);
    this.store32(idx, (curB << 4) + 4 + curS, x);
  }

  private deleteHashed(h: number): number {
    this.checkWriter('delete');
    const slot = this.findSlot(h);
    if (slot < 0) return -1;
    const b = slot >> 3, s = slot & 7, x = this.idx[(b << 4) + 4 + s];
    this.store16(this.sig, (b << 5) + s, 0);
    this.store32(this.idx, (b << 4) + 4 + s, 0);
    // limbo, not the free list: a reader may still compare this entry (see the file comment)
    this.limbo[this.nLimbo++] = x;
    this.store32(this.hdr, H_COUNT, this.hdr[H_COUNT] - 1);
    return x - 1;
  }
}
