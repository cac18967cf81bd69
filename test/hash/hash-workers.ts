/**
 * Code that test/hash/hash.test.ts runs on other threads: the lcore that looks up while the main
 * thread writes (hashReader), and the allocation probe of the lookups (lookupOps).
 */
import { Hash, type HashDesc } from '../../lib/hash/hash.js';
import type { LcoreContext } from '../../src/lcore/types.js';
import type { AllocOp } from '../alloc.js';
import { prng } from '../prng.js';

/** Control words of the concurrency test (an Int32Array over ReaderArg.control). */
export const C_STOP = 0, C_STARTED = 1, C_LOOKUPS = 2;

/** What the reading lcore gets. */
export interface ReaderArg {
  desc: HashDesc;
  /** nKeys keys of desc.keyLen bytes, packed: key id i at i * keyLen */
  keys: SharedArrayBuffer;
  nKeys: number;
  /** ids below nStable stay in the table the whole time; the others come and go */
  nStable: number;
  /**
   * Int32Array(nKeys): the version the writer last gave each key, written after the table was;
   * a key's value is id << 16 | version
   */
  published: SharedArrayBuffer;
  /** Int32Array: C_STOP (set by the main thread), C_STARTED, C_LOOKUPS (keys looked up so far) */
  control: SharedArrayBuffer;
  seed: number;
  /** keys per bulk lookup */
  burst: number;
}

/** What it saw. */
export interface ReaderResult {
  lookups: number;
  bulkCalls: number;
  singleCalls: number;
  /** a stable key not found */
  stableMisses: number;
  /** a value whose id is another key's */
  wrongKey: number;
  /** a version older than the one published before the lookup began, or newer than the one published after it (+1: the table is written first) */
  wrongVersion: number;
  /** answers for keys that come and go: found, not found */
  churnHits: number;
  churnMisses: number;
  /** the reader's retries (a changed table counter) */
  retries: number;
  /** the first violations, as text */
  firstErrors: string[];
}

/**
 * Look up random keys (bursts with lookupBulk, alternating with single lookups) until C_STOP, and
 * judge every answer: a stable key is always found; a value always carries the key's own id; its
 * version lies between what was published before the lookup and after it.
 */
export function hashReader(a: ReaderArg, _ctx: LcoreContext): ReaderResult {
  const h = Hash.attach(a.desc);
  const len = a.desc.keyLen;
  const all = new Uint8Array(a.keys);
  const pub = new Int32Array(a.published);
  const control = new Int32Array(a.control);
  const rnd = prng(a.seed);
  const burst = a.burst;
  const ids = new Int32Array(burst), before = new Int32Array(burst), out = new Int32Array(burst);
  const packed = new Uint8Array(burst * len);
  const r: ReaderResult = { lookups: 0, bulkCalls: 0, singleCalls: 0, stableMisses: 0, wrongKey: 0, wrongVersion: 0, churnHits: 0, churnMisses: 0, retries: 0, firstErrors: [] };
  const judge = (id: number, v: number, p0: number): void => {
    if (v === -1) {
      if (id < a.nStable) {
        r.stableMisses++;
        if (r.firstErrors.length < 5) r.firstErrors.push(`stable key ${id} not found (published version ${p0})`);
      } else r.churnMisses++;
      return;
    }
    if (id >= a.nStable) r.churnHits++;
    const p1 = Atomics.load(pub, id);
    if (v >>> 16 !== id) {
      r.wrongKey++;
      if (r.firstErrors.length < 5) r.firstErrors.push(`key ${id} answered ${v >>> 16}:${v & 0xffff}, another key's value`);
    } else if ((v & 0xffff) < p0 || (v & 0xffff) > p1 + 1) {
      r.wrongVersion++;
      if (r.firstErrors.length < 5) r.firstErrors.push(`key ${id} answered version ${v & 0xffff}, published ${p0} before and ${p1} after`);
    }
  };
  Atomics.store(control, C_STARTED, 1);
  while (Atomics.load(control, C_STOP) === 0) {
    // a burst of random keys, most of them stable ones
    for (let i = 0; i < burst; i++) {
      const id = rnd() < 0.6 ? Math.floor(rnd() * a.nStable) : Math.floor(rnd() * a.nKeys);
      ids[i] = id;
      packed.set(all.subarray(id * len, id * len + len), i * len);
      before[i] = Atomics.load(pub, id);
    }
    h.lookupBulk(packed, 0, burst, out, 0);
    r.bulkCalls++;
    for (let i = 0; i < burst; i++) judge(ids[i], out[i], before[i]);
    // and the same keys one by one
    for (let i = 0; i < burst; i++) {
      before[i] = Atomics.load(pub, ids[i]);
      judge(ids[i], h.lookup(packed, i * len), before[i]);
    }
    r.singleCalls += burst;
    r.lookups += 2 * burst;
    Atomics.store(control, C_LOOKUPS, r.lookups);
  }
  r.retries = h.stats().retries;
  return r;
}

/** The allocation probe: one operation = a bulk lookup of 32 keys (16-byte, word path), one of 13-byte keys (byte path), and the single lookups. */
export function lookupOps(): AllocOp {
  const mk = (keyLen: number): { h: Hash; keys: Uint8Array; hashes: Uint32Array } => {
    const h = Hash.create(`alloc${keyLen}`, { entries: 4096, keyLen });
    const keys = new Uint8Array(256 * keyLen);
    const rnd = prng(keyLen);
    for (let i = 0; i < keys.length; i++) keys[i] = Math.floor(rnd() * 256);
    // every other key is in the table, so lookups both hit and miss
    for (let i = 0; i < 256; i += 2) h.add(keys, i * keyLen, i);
    const hashes = new Uint32Array(256);
    for (let i = 0; i < 256; i++) hashes[i] = h.hash(keys, i * keyLen);
    return { h, keys, hashes };
  };
  const a = mk(16), b = mk(13);
  const out = new Int32Array(32);
  const sink = new Int32Array(1);
  return (i) => {
    const at = (i & 7) * 32;
    a.h.lookupBulk(a.keys, at * 16, 32, out, 0);
    b.h.lookupBulk(b.keys, at * 13, 32, out, 0);
    a.h.lookupBulkWithHash(a.keys, at * 16, 32, a.hashes, at, out, 0);
    sink[0] = a.h.lookup(a.keys, (at + 1) * 16) + b.h.lookup(b.keys, at * 13) + a.h.lookupWithHash(a.keys, at * 16, a.hashes[at]);
  };
}
