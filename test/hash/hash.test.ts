/**
 * lib/hash: the hash function (published MurmurHash3 vectors, bucket and signature distribution),
 * the table against a Map under random add/delete/lookup for every key size l3fwd and users need,
 * a table filled to its limit, keys that share both buckets, bulk against single lookups, a reader
 * lcore looking up while this thread adds, deletes and displaces, and no allocation in lookups.
 */
import t from 'tap';
import { Hash, HashFullError, hashMurmur3, HASH_VALUE_MAX } from '../../lib/hash/hash.js';
import { Lcores } from '../../src/lcore/lcores.js';
import { siblingModule } from '../../src/lcore/module.js';
import { prng } from '../prng.js';
import { ALLOC_RULE, assertNoAlloc, measureInWorker } from '../alloc.js';
import { C_LOOKUPS, C_STARTED, C_STOP, type ReaderArg, type ReaderResult } from './hash-workers.js';

const WORKERS = siblingModule(import.meta.url, 'hash-workers');
const KEY_SIZES = [4, 13, 16, 37, 40, 64];
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

/** n random keys of len bytes, packed, all different. */
function randomKeys(rnd: () => number, n: number, len: number): Uint8Array {
  const keys = new Uint8Array(n * len);
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    for (;;) {
      for (let b = 0; b < len; b++) keys[i * len + b] = Math.floor(rnd() * 256);
      const s = Buffer.from(keys.buffer, i * len, len).toString('latin1');
      if (!seen.has(s)) {
        seen.add(s);
        break;
      }
    }
  }
  return keys;
}

/** n keys of len bytes counting up from 1 (little endian), as DPDK's hash_perf_autotest makes them. */
function sequentialKeys(n: number, len: number): Uint8Array {
  const keys = new Uint8Array(n * len);
  for (let i = 0; i < n; i++) {
    let v = i + 1;
    for (let b = 0; b < len && v > 0; b++, v = Math.floor(v / 256)) keys[i * len + b] = v & 255;
  }
  return keys;
}

const keyStr = (keys: Uint8Array, i: number, len: number): string => Buffer.from(keys.buffer, keys.byteOffset + i * len, len).toString('latin1');

t.test('MurmurHash3_x86_32: published vectors; the table hashes keys with it', async (t) => {
  const vectors: Array<[string, number, number]> = [
    ['', 0, 0], ['', 1, 0x514e28b7], ['', 0xffffffff, 0x81f16f39], ['test', 0, 0xba6bd213], ['hello', 0, 0x248bfa47],
    ['abc', 0, 0xb3dd93fa], ['The quick brown fox jumps over the lazy dog', 0, 0x2e4ff723],
    ['aaaa', 0x9747b28c, 0x5a97808a], ['abc', 0x9747b28c, 0xc84a62dd], ['Hello, world!', 0x9747b28c, 0x24884cba],
  ];
  for (const [s, seed, want] of vectors) {
    const b = enc(s);
    t.equal(hashMurmur3(b, 0, b.length, seed), want, `murmur3_32(${JSON.stringify(s)}, 0x${seed.toString(16)}) = 0x${want.toString(16)}`);
  }
  // at an offset, and the table's own hash for every key size (whole words and a tail), with a seed
  const rnd = prng(7);
  for (const len of [1, 2, 3, ...KEY_SIZES]) {
    for (const seed of [0, 0x12345678]) {
      const h = Hash.create(`vec${len}`, { entries: 64, keyLen: len, seed });
      const buf = randomKeys(rnd, 20, len);
      const padded = new Uint8Array(buf.length + 3);
      padded.set(buf, 3);
      let same = 0;
      for (let i = 0; i < 20; i++) if (h.hash(padded, 3 + i * len) === hashMurmur3(buf, i * len, len, seed)) same++;
      t.equal(same, 20, `key length ${len}, seed ${seed}: h.hash(key) = hashMurmur3(key) (at an unaligned offset)`);
    }
  }
});

t.test('distribution: chi-square of primary buckets, secondary buckets and signatures, sequential and random keys', async (t) => {
  const rnd = prng(11);
  const buckets = 1 << 14, n = 1 << 19, mask = buckets - 1;
  // chi-square with k - 1 degrees of freedom: mean k - 1, standard deviation sqrt(2 (k - 1))
  const check = (counts: Uint32Array, what: string): void => {
    const k = counts.length, mean = n / k;
    let chi = 0;
    for (let i = 0; i < k; i++) chi += (counts[i] - mean) ** 2 / mean;
    const z = (chi - (k - 1)) / Math.sqrt(2 * (k - 1));
    t.ok(Math.abs(z) < 6, `${what}: chi-square ${chi.toFixed(0)} over ${k} cells (${k - 1} expected), z = ${z.toFixed(2)}`);
  };
  for (const len of [13, 16]) {
    for (const kind of ['sequential', 'random'] as const) {
      const keys = kind === 'sequential' ? sequentialKeys(n, len) : new Uint8Array(n * len).map(() => Math.floor(rnd() * 256));
      const prim = new Uint32Array(buckets), sec = new Uint32Array(buckets), sig = new Uint32Array(1 << 16);
      for (let i = 0; i < n; i++) {
        const h = hashMurmur3(keys, i * len, len, 0);
        prim[h & mask]++;
        sec[(h ^ (h >>> 16)) & mask]++;
        sig[h >>> 16]++;
      }
      check(prim, `${len}-byte ${kind} keys, primary bucket (h & mask), ${buckets} buckets`);
      check(sec, `${len}-byte ${kind} keys, secondary bucket ((h ^ sig) & mask)`);
      check(sig, `${len}-byte ${kind} keys, 16-bit signature (h >>> 16)`);
    }
  }
});

t.test('load: sequential and random keys fill at least 95 % of the entries before the first failure', async (t) => {
  const rnd = prng(12);
  for (const kind of ['sequential', 'random'] as const) {
    const entries = 1 << 14, len = 16;
    const keys = kind === 'sequential' ? sequentialKeys(entries, len) : randomKeys(rnd, entries, len);
    const h = Hash.create(`load_${kind}`, { entries, keyLen: len });
    let added = 0;
    try {
      for (; added < entries; added++) h.add(keys, added * len, added);
    } catch (e) {
      if (!(e instanceof HashFullError)) throw e;
    }
    t.ok(added >= entries * 0.95, `${kind}: ${added} of ${entries} keys (${((added / entries) * 100).toFixed(1)} %) before the first failure, ${h.stats().moves} cuckoo moves`);
    let found = 0;
    for (let i = 0; i < added; i++) if (h.lookup(keys, i * len) === i) found++;
    t.equal(found, added, `${kind}: every key added is found with its value`);
  }
});

t.test('against a Map: random add/delete/lookup, key sizes 4, 13, 16, 37, 40, 64, bulk equals single', async (t) => {
  const seed = Number(process.env.TSP_HASH_SEED ?? (Date.now() & 0x7fffffff));
  t.comment(`seed ${seed} (TSP_HASH_SEED=${seed} replays it)`);
  const rnd = prng(seed);
  // every key size on x86's plain loads and stores, and two with the Atomics path of other CPUs
  // (switched on by hand here: a white-box test of code that x86 never runs)
  for (const [len, atomics] of [...KEY_SIZES.map((l) => [l, false] as const), [13, true] as const, [16, true] as const]) {
    const entries = 1024, poolN = 1800;
    const pool = randomKeys(rnd, poolN, len);
    const h = Hash.create(`map${len}`, { entries, keyLen: len });
    if (atomics) (h as unknown as { plain: boolean }).plain = false;
    const mode = atomics ? ' (Atomics path)' : '';
    const ref = new Map<string, number>();
    const out = new Int32Array(poolN + 5);
    let adds = 0, full = 0, dels = 0, lookups = 0, diffs = 0, bulkDiffs = 0, lost = 0;
    const note = (ok: boolean, what: () => string): void => {
      if (!ok && diffs++ < 5) t.fail(`${len}-byte keys, seed ${seed}: ${what()}`);
    };
    for (let op = 0; op < 30_000; op++) {
      const i = Math.floor(rnd() * poolN), k = keyStr(pool, i, len), r = rnd();
      if (r < 0.5) {
        const value = rnd() < 0.1 ? -1 : Math.floor(rnd() * HASH_VALUE_MAX);
        try {
          const pos = h.add(pool, i * len, value);
          // without a value: a new key gets its position, a key already there keeps its value
          if (value !== -1) ref.set(k, value);
          else if (!ref.has(k)) ref.set(k, pos);
          adds++;
        } catch (e) {
          if (!(e instanceof HashFullError)) throw e;
          full++;
          note(!ref.has(k), () => `add of a key already there failed: ${(e as Error).message}`);
          note(h.count === ref.size, () => `a failed add changed the count: ${h.count} != ${ref.size}`);
        }
      } else if (r < 0.8) {
        const pos = h.delete(pool, i * len);
        note((pos >= 0) === ref.has(k), () => `delete of key ${i}: ${pos}, the Map ${ref.has(k) ? 'has' : 'has not'} it`);
        ref.delete(k);
        dels++;
      } else {
        const v = h.lookup(pool, i * len);
        note(v === (ref.get(k) ?? -1), () => `lookup of key ${i}: ${v}, the Map says ${ref.get(k) ?? -1}`);
        lookups++;
      }
      if (op % 3000 === 2999) {
        note(h.count === ref.size, () => `count ${h.count}, the Map has ${ref.size}`);
        // the whole pool, in bulk (one call: several 64-key steps) and one by one, against the Map
        const hits = h.lookupBulk(pool, 0, poolN, out, 5);
        let want = 0;
        for (let j = 0; j < poolN; j++) {
          const e = ref.get(keyStr(pool, j, len)) ?? -1;
          if (e !== -1) want++;
          if (out[5 + j] !== e) bulkDiffs++;
          if (h.lookup(pool, j * len) !== e) lost++;
        }
        note(hits === want, () => `lookupBulk found ${hits}, the Map has ${want} of the pool`);
      }
    }
    t.equal(diffs, 0, `${len}-byte keys${mode}: no difference from the Map in ${adds} adds (${full} full), ${dels} deletes, ${lookups} lookups`);
    t.equal(bulkDiffs, 0, `${len}-byte keys${mode}: lookupBulk over the pool equals the Map at every check`);
    t.equal(lost, 0, `${len}-byte keys${mode}: single lookups over the pool equal the Map at every check`);
    t.ok(full > 0 && h.stats().moves > 0 && h.stats().recycles > 0, `${len}-byte keys${mode}: the table was full at times (${full}), entries were displaced (${h.stats().moves} moves) and deleted slots reused (${h.stats().recycles} recycles)`);
  }
});

t.test('a table filled to its limit: a clear error, nothing lost', async (t) => {
  // buckets first: 2048 entries in 256 buckets of 8, random keys until cuckoo finds no room
  const rnd = prng(21);
  const len = 16, entries = 2048;
  const keys = randomKeys(rnd, entries, len);
  const h = Hash.create('flows', { entries, keyLen: len });
  let added = 0, err: unknown = null;
  for (; added < entries; added++) {
    try {
      h.add(keys, added * len, added * 3);
    } catch (e) {
      err = e;
      break;
    }
  }
  t.ok(err instanceof HashFullError, `the add that does not fit throws HashFullError (after ${added} keys)`);
  const msg = (err as Error).message;
  t.match(msg, /^hash "flows": /, 'the message names the table');
  t.match(msg, /table of 2048 entries/, 'and its size');
  t.match(msg, /larger entries option/, 'and the option to change');
  t.equal(msg.split('\n').length, 1, `one line: ${msg}`);
  t.equal(h.count, added, 'the failed add left the count alone');
  let found = 0;
  for (let i = 0; i < added; i++) if (h.lookup(keys, i * len) === i * 3) found++;
  t.equal(found, added, `every key added before (${added}) is found with its value`);
  t.equal(h.lookup(keys, added * len), -1, 'the key that did not fit is not there');
  t.throws(() => h.add(keys, added * len, 1), HashFullError, 'it does not fit the second time either');
  t.equal(h.delete(keys, 0), 0, 'after a delete ...');
  t.doesNotThrow(() => h.add(keys, added * len, 1), '... it fits');

  // the key store: 600 entries (128 buckets, 1024 slots): the 601st key has no entry
  const small = Hash.create('acl', { entries: 600, keyLen: 4 });
  const k4 = sequentialKeys(601, 4);
  for (let i = 0; i < 600; i++) small.add(k4, i * 4, i);
  t.throws(() => small.add(k4, 600 * 4, 600), { name: 'HashFullError', message: 'hash "acl": full: 600 keys in a table of 600 entries; create the table with a larger entries option' },
    'a full key store: the table, its size and the option');
  let all = 0;
  for (let i = 0; i < 600; i++) if (small.lookup(k4, i * 4) === i) all++;
  t.equal(all, 600, 'all 600 keys still found');
  t.equal(small.add(k4, 5 * 4, 77), 5, 'a key already there still takes a new value when the table is full (its position returned)');
  t.equal(small.lookup(k4, 5 * 4), 77);
});

t.test('keys that collide in both buckets: 16 fit, all found; the 17th is refused, nothing lost', async (t) => {
  // 128 entries = 16 buckets: find keys whose primary bucket and secondary bucket are the same
  const len = 16, h = Hash.create('coll', { entries: 128, keyLen: len }), mask = h.buckets - 1;
  const rnd = prng(31);
  const groups = new Map<number, number[]>();
  const cand = randomKeys(rnd, 20_000, len);
  let group: number[] = [];
  for (let i = 0; i < 20_000 && group.length < 17; i++) {
    const x = h.hash(cand, i * len), prim = x & mask, sec = (prim ^ (x >>> 16)) & mask;
    if (sec === prim) continue;
    const g = groups.get(prim * 16 + sec) ?? [];
    g.push(i);
    groups.set(prim * 16 + sec, g);
    if (g.length >= 17) group = g;
  }
  t.equal(group.length, 17, '17 keys with the same primary and the same secondary bucket');
  const first = h.hash(cand, group[0] * len);
  t.comment(`buckets ${first & mask} and ${((first & mask) ^ (first >>> 16)) & mask}`);
  for (let j = 0; j < 16; j++) h.add(cand, group[j] * len, 1000 + j);
  let found = 0;
  for (let j = 0; j < 16; j++) if (h.lookup(cand, group[j] * len) === 1000 + j) found++;
  t.equal(found, 16, 'all 16 found with their values');
  const bulk = new Uint8Array(17 * len);
  for (let j = 0; j < 17; j++) bulk.set(cand.subarray(group[j] * len, group[j] * len + len), j * len);
  const out = new Int32Array(17);
  t.equal(h.lookupBulk(bulk, 0, 17, out), 16, 'in bulk too');
  t.same([...out], [...Array.from({ length: 16 }, (_, j) => 1000 + j), -1]);
  t.throws(() => h.add(cand, group[16] * len, 9), HashFullError, 'the 17th: both buckets full, no cuckoo path');
  found = 0;
  for (let j = 0; j < 16; j++) if (h.lookup(cand, group[j] * len) === 1000 + j) found++;
  t.equal(found, 16, 'after the refusal all 16 are still found');
  t.equal(h.count, 16);
  t.equal(h.delete(cand, group[3] * len) >= 0, true, 'one deleted');
  h.add(cand, group[16] * len, 9);
  t.equal(h.lookup(cand, group[16] * len), 9, 'the 17th fits in its place');
  t.equal(h.lookup(cand, group[3] * len), -1, 'the deleted one is gone');

  // the same hash for every key (addWithHash): the signatures never tell them apart, the keys do
  const same = Hash.create('samehash', { entries: 1024, keyLen: 13 });
  const keys = randomKeys(rnd, 17, 13);
  const hash = 0xbeef0005; // primary bucket 5, signature 0xbeef: secondary 5 ^ 0xbeef & 127
  for (let j = 0; j < 16; j++) same.addWithHash(keys, j * 13, hash, j);
  const hashes = new Uint32Array(17).fill(hash);
  const o2 = new Int32Array(17);
  t.equal(same.lookupBulkWithHash(keys, 0, 17, hashes, 0, o2), 16, 'one full hash for 16 keys: all found in bulk');
  t.same([...o2], [...Array.from({ length: 16 }, (_, j) => j), -1]);
  let one = 0;
  for (let j = 0; j < 16; j++) if (same.lookupWithHash(keys, j * 13, hash) === j) one++;
  t.equal(one, 16, 'and one by one');
  t.throws(() => same.addWithHash(keys, 16 * 13, hash, 16), HashFullError, 'the 17th with that hash is refused');
  t.equal(same.deleteWithHash(keys, 7 * 13, hash), 7, 'deleteWithHash');
  t.equal(same.lookupWithHash(keys, 7 * 13, hash), -1);

  // a signature whose low bits are 0: both buckets are one, 8 keys fit
  const one8 = Hash.create('onebucket', { entries: 1024, keyLen: 4 });
  const k4 = sequentialKeys(9, 4);
  const h8 = 0x00800003; // signature 0x0080, & 127 = 0: secondary = primary = 3
  for (let j = 0; j < 8; j++) one8.addWithHash(k4, j * 4, h8, j);
  t.throws(() => one8.addWithHash(k4, 8 * 4, h8, 8), HashFullError, 'a key whose two buckets are one: the 9th is refused');
  let f8 = 0;
  for (let j = 0; j < 8; j++) if (one8.lookupWithHash(k4, j * 4, h8) === j) f8++;
  t.equal(f8, 8, 'the 8 are found');
});

t.test('bulk: chunks of 64, offsets, empty bursts, unaligned and packed keys of every size', async (t) => {
  const rnd = prng(41);
  for (const len of KEY_SIZES) {
    const h = Hash.create(`bulk${len}`, { entries: 512, keyLen: len });
    const n = 300;
    const keys = randomKeys(rnd, n, len);
    for (let i = 0; i < n; i += 2) h.add(keys, i * len, i);
    // the same keys one byte into a buffer: nothing is 4-byte aligned
    const shifted = new Uint8Array(n * len + 1);
    shifted.set(keys, 1);
    const out = new Int32Array(n + 3).fill(-7);
    t.equal(h.lookupBulk(shifted, 1, n, out, 3), n / 2, `${len}-byte keys: 150 of 300 found in one call of 300`);
    let same = 0;
    for (let i = 0; i < n; i++) if (out[3 + i] === h.lookup(keys, i * len) && out[3 + i] === (i % 2 === 0 ? i : -1)) same++;
    t.equal(same, n, `${len}-byte keys: bulk (unaligned) equals single lookups`);
    t.same([...out.subarray(0, 3)], [-7, -7, -7], 'nothing written before outOff');
    const hashes = new Uint32Array(n);
    for (let i = 0; i < n; i++) hashes[i] = h.hash(keys, i * len);
    const o2 = new Int32Array(n);
    h.lookupBulkWithHash(keys, 0, n, hashes, 0, o2);
    t.same([...o2], [...out.subarray(3)], `${len}-byte keys: lookupBulkWithHash equals lookupBulk`);
    t.equal(h.lookupBulk(keys, 0, 0, out), 0, 'an empty burst');
  }
  const h = Hash.create('args', { entries: 64, keyLen: 8 });
  const k = new Uint8Array(16), out = new Int32Array(2);
  t.throws(() => h.lookupBulk(k, 1, 2, out), RangeError, 'keys past the array');
  t.throws(() => h.lookupBulk(k, 0, 2, out, 1), RangeError, 'results past out');
  t.throws(() => h.lookup(k, 9), /a 8-byte key at offset 9 does not fit its array \(length 16\)/, 'a key past the array');
  t.throws(() => h.add(k, 0, HASH_VALUE_MAX + 1), /value 2147483648 must be a whole number from 0 to 2147483647/);
  t.throws(() => h.add(k, 0, 1.5), RangeError);
  t.throws(() => Hash.create('x', { entries: 4, keyLen: 8 }), /hash "x": entries 4 must be a whole number from 8/);
  t.throws(() => Hash.create('x', { entries: 64, keyLen: 0 }), /keyLen 0 must be a whole number of bytes from 1 to 1024/);
  t.throws(() => Hash.create('x', { entries: 1 << 28, keyLen: 64 }), /more than the 2 GiB a table may take; lower entries/);
});

t.test('attach: read-only views of the same memory; add/delete refused; a descriptor that does not match is refused', async (t) => {
  const h = Hash.create('shared', { entries: 256, keyLen: 13 });
  const keys = sequentialKeys(10, 13);
  h.add(keys, 0, 42);
  const desc = structuredClone(h.desc);
  t.ok(desc.memory instanceof SharedArrayBuffer, 'desc is plain data around a SharedArrayBuffer');
  const r = Hash.attach(desc);
  t.equal(r.lookup(keys, 0), 42, 'an attached table sees what the writer added');
  h.add(keys, 13, 43);
  h.add(keys, 0, 44);
  t.equal(r.lookup(keys, 13), 43, 'and what it adds later');
  t.equal(r.lookup(keys, 0), 44, 'and the new value');
  t.equal(r.count, 2, 'the count too');
  t.throws(() => r.add(keys, 26, 1), /hash "shared": add on a table attached read-only; only the thread that created it \(Hash.create\) writes/);
  t.throws(() => r.delete(keys, 0), /delete on a table attached read-only/);
  t.throws(() => r.reset(), /reset on a table attached read-only/);
  t.throws(() => Hash.attach({ ...desc, entries: 512 }), /its memory is|its descriptor says/, 'another size');
  t.throws(() => Hash.attach({ ...desc, keyLen: 16 }), /holds a table of 256 entries of 13-byte keys, its descriptor says 256 of 16/);
  t.throws(() => Hash.attach({ ...desc, memory: new SharedArrayBuffer(desc.memory.byteLength) }), /no table in this memory \(bad magic\)/);
  h.reset();
  t.equal(r.lookup(keys, 0), -1, 'reset empties it');
  t.equal(h.count, 0);
  h.add(keys, 26, 5);
  t.equal(r.lookup(keys, 26), 5, 'and it fills again');
});

t.test('the change counter: a deleted key\'s slot is reused only after its recycle half moved, and every cuckoo move bumps it', async (t) => {
  // White box: the counter is word 16 of the table's memory (lib/hash/hash.ts H_CHANGE). A reader
  // that took a key index before a delete re-reads it at the end: the index must not be rewritten
  // unless the recycle half (bits 16-31) changed, or the reader could return another key's value.
  const len = 8, entries = 48; // 8 buckets, 64 slots: the key store fills first
  const h = Hash.create('proto', { entries, keyLen: len });
  const change = new Int32Array(h.desc.memory, 64, 1);
  const keys = sequentialKeys(entries + 3, len);
  const pos: number[] = [];
  for (let i = 0; i < entries; i++) pos.push(h.add(keys, i * len, i));
  t.equal(change[0] >>> 16, 0, 'filling from empty recycles nothing');
  const c0 = change[0];
  t.equal(h.delete(keys, 5 * len), pos[5], 'delete returns the position');
  t.equal(change[0], c0, 'a delete alone does not move the counter');
  const p = h.add(keys, entries * len, 1);
  t.equal(p, pos[5], 'the full table reuses the deleted key\'s position ...');
  t.equal((change[0] - c0) >>> 16, 1, '... after one bump of the recycle half');
  const c1 = change[0];
  h.delete(keys, 7 * len);
  h.delete(keys, 9 * len);
  h.add(keys, (entries + 1) * len, 2);
  t.equal((change[0] - c1) >>> 16, 1, 'two deleted slots come back in one batch: one bump ...');
  const r2 = h.stats().recycles;
  h.add(keys, (entries + 2) * len, 3);
  t.equal(h.stats().recycles, r2, '... and the second is taken without another');
  t.equal(h.lookup(keys, (entries + 1) * len), 2, 'the keys in recycled slots are found ...');
  t.equal(h.lookup(keys, (entries + 2) * len), 3, '... with their values');
  // moves: one bump per entry moved (low half), one per recycle batch (high half), nothing else
  const rnd = prng(51);
  // at 97-100 % of the slots, where cuckoo paths are several moves long
  const big = Hash.create('proto2', { entries: 1024, keyLen: 16 });
  const bc = new Int32Array(big.desc.memory, 64, 1);
  const pool = randomKeys(rnd, 1500, 16);
  for (let i = 0; i < 1500; i++) {
    try {
      big.add(pool, i * 16, i);
    } catch (e) {
      if (!(e instanceof HashFullError)) throw e;
    }
  }
  for (let op = 0; op < 20_000; op++) {
    const i = Math.floor(rnd() * 1500);
    if (rnd() < 0.52) {
      try {
        big.add(pool, i * 16, i);
      } catch (e) {
        if (!(e instanceof HashFullError)) throw e;
      }
    } else big.delete(pool, i * 16);
  }
  const s = big.stats();
  t.ok(s.moves > 100 && s.recycles > 10, `entries moved (${s.moves}) and slots recycled (${s.recycles})`);
  t.equal(bc[0], (s.recycles * 0x10000 + s.moves) | 0, 'counter = recycles << 16 + moves: every move and every recycle was announced');
});

t.test('concurrency: a reader lcore looks up while this thread adds, deletes, updates and displaces', async (t) => {
  const lcores = new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }], 0);
  t.teardown(() => lcores.close());
  const seed = Number(process.env.TSP_HASH_SEED ?? (Date.now() & 0x7fffffff));
  t.comment(`seed ${seed}`);
  const rnd = prng(seed);
  // 2048 entries (256 buckets): 1600 keys stay, 900 come and go (half of them in at a time), so the table runs at 95-100 %:
  // inserts displace the stable keys along cuckoo paths, deletes and re-adds recycle key slots
  const len = 16, entries = 2048, nStable = 1600, nKeys = 2500;
  const h = Hash.create('conc', { entries, keyLen: len });
  const keysSab = new SharedArrayBuffer(nKeys * len);
  const keys = new Uint8Array(keysSab);
  keys.set(randomKeys(rnd, nKeys, len));
  const pubSab = new SharedArrayBuffer(nKeys * 4), pub = new Int32Array(pubSab);
  const version = new Int32Array(nKeys);
  const present = new Uint8Array(nKeys);
  for (let id = 0; id < nStable; id++) {
    h.add(keys, id * len, id << 16);
    present[id] = 1;
  }
  const control = new Int32Array(new SharedArrayBuffer(64));
  const arg: ReaderArg = { desc: h.desc, keys: keysSab, nKeys, nStable, published: pubSab, control: control.buffer as SharedArrayBuffer, seed: seed ^ 0x5a5a, burst: 32 };
  const reader = lcores.launch<ReaderResult>(1, WORKERS, 'hashReader', arg);
  const t0 = performance.now();
  while (Atomics.load(control, C_STARTED) === 0) {
    if (performance.now() - t0 > 30_000) throw new Error('the reader lcore did not start in 30 s');
    await new Promise((r) => setTimeout(r, 5));
  }
  const before = h.stats();
  let adds = 0, dels = 0, updates = 0, full = 0, ops = 0;
  const lookupsAtStart = Atomics.load(control, C_LOOKUPS);
  const writeMs = 3000, w0 = performance.now();
  while (performance.now() - w0 < writeMs) {
    for (let k = 0; k < 500; k++, ops++) {
      const r = rnd();
      if (r < 0.25) {
        // a new version of a stable key: table first, then published
        const id = Math.floor(rnd() * nStable);
        const v = (version[id] + 1) & 0xffff;
        h.add(keys, id * len, (id << 16) | v);
        version[id] = v;
        Atomics.store(pub, id, v);
        updates++;
      } else {
        const id = nStable + Math.floor(rnd() * (nKeys - nStable));
        if (present[id]) {
          h.delete(keys, id * len);
          present[id] = 0;
          dels++;
        } else {
          const v = (version[id] + 1) & 0xffff;
          try {
            h.add(keys, id * len, (id << 16) | v);
          } catch (e) {
            if (!(e instanceof HashFullError)) throw e;
            full++;
            continue;
          }
          version[id] = v;
          Atomics.store(pub, id, v);
          present[id] = 1;
          adds++;
        }
      }
    }
    // let the event loop breathe (the lcore's messages), then go on writing
    await new Promise((r) => setImmediate(r));
  }
  const lookupsDuring = Atomics.load(control, C_LOOKUPS) - lookupsAtStart;
  Atomics.store(control, C_STOP, 1);
  const res = await reader;
  const after = h.stats();
  const moves = after.moves - before.moves, recycles = after.recycles - before.recycles;
  t.comment(`writer: ${ops} operations in ${writeMs} ms (${adds} adds, ${full} refused as full, ${dels} deletes, ${updates} value updates), ${moves} cuckoo moves, ${recycles} recycles`);
  t.comment(`reader: ${res.lookups} lookups (${res.bulkCalls} bursts of 32 and ${res.singleCalls} single), ${lookupsDuring} while the writer ran, ${res.retries} retries; keys that come and go: ${res.churnHits} found, ${res.churnMisses} not`);
  t.ok(lookupsDuring > 10_000, `the reader looked up while the writer wrote (${lookupsDuring})`);
  t.ok(moves > 1000 && recycles > 10 && full > 0, `the writer displaced entries (${moves} moves), reused deleted slots (${recycles} recycles) and ran the table full (${full})`);
  t.ok(res.churnHits > 0 && res.churnMisses > 0, 'the reader saw keys that come and go both present and absent');
  t.equal(res.stableMisses, 0, 'no stable key was ever missed');
  t.equal(res.wrongKey, 0, 'no answer carried another key\'s value');
  t.equal(res.wrongVersion, 0, 'every answer was the value before or after an update');
  if (res.firstErrors.length) t.comment(res.firstErrors.join('\n'));
  // and afterwards the table is exactly what the writer thinks
  let right = 0;
  for (let id = 0; id < nKeys; id++) if (h.lookup(keys, id * len) === (present[id] ? (id << 16) | version[id] : -1)) right++;
  t.equal(right, nKeys, 'afterwards every key is present or absent as the writer left it, with its last value');
});

t.test('lookup, lookupWithHash, lookupBulk and lookupBulkWithHash allocate nothing', async (t) => {
  const rule = { ...ALLOC_RULE, warmOps: 20_000, windowOps: 50_000 };
  const r = await measureInWorker(WORKERS, 'lookupOps', null, rule);
  assertNoAlloc(t, r, 'hash lookups (bulk of 32, 16- and 13-byte keys, and single) in a worker', rule);
});
