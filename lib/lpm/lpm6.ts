/**
 * IPv6 longest-prefix match with DPDK rte_lpm6's layout: a tbl24 of 2^24 entries indexed by an
 * address's first three bytes, then tbl8 groups of 256 entries, one level per further byte (up to
 * 13 levels for a /128). A lookup is one load per level the address's longest match needs: two for
 * a /32, four for a /48, six for a /64.
 *
 * Why this layout: it is DPDK's, so the tables hold what DPDK's hold, the lookup does what
 * rte_lpm6_lookup does, and the benchmark compares like with like. Wider strides (a 16-bit level
 * after the first) would save a load for /48s but multiply the memory of every group by 256;
 * a path-compressed trie saves memory but makes each step a compare and a branch, which is what
 * JavaScript does worst next to C. The cost is the first level's 64 MiB, the same as DPDK's.
 *
 * Where it differs from DPDK's lpm6 (22.11):
 *  - next hops have 24 bits (DPDK's lpm6: 21), as the IPv4 table; an entry is next hop or group
 *    index in bits 0-23, valid bit 24, "points to a group" bit 25. The depth each entry comes from
 *    (0-128, too wide for the word) is in a writer-only shadow array: readers never need it.
 *  - deleting a rule rewrites only the entries it owned (with the longest shorter rule that covers
 *    it, or invalid) and then frees each group, from the deepest up, that has become uniform (every
 *    entry the same rule of a depth the level above can hold, or invalid); DPDK counts references
 *    per group instead. Nothing is rebuilt.
 *  - readers get the same guarantee as the IPv4 table (lib/lpm/lpm.ts has the argument): every
 *    reachable entry changes by one 32-bit store, a new group is written in full before the
 *    Atomics.store that links it, and an unlinked group is reused only after every online reader
 *    passed a quiescent point (QSBR). DPDK's lpm6 has no RCU support.
 */
import { LpmFullError } from './lpm.js';
import { LpmTable, TBL24_ENTRIES, checkAttach, checkInt as checkIntOf, createTables } from './table.js';
import type { LpmKind, LpmWriterBase } from './table.js';
import { formatIpv6Prefix } from '../net/ipaddr.js';

const KIND: LpmKind = { tag: 'lpm6', cls: 'Lpm6', label: 'LPM6', magic: 0x6c706d36 /* "lpm6" */ };
/** Largest next hop: 24 bits. */
export const LPM6_MAX_NEXT_HOP = 0xffffff;
/** Most tbl8 groups (as DPDK's RTE_LPM6_TBL8_MAX_NUM_GROUPS): 2 GiB of groups. */
export const LPM6_MAX_TBL8S = 1 << 21;
/** Most rules a table may have. */
export const LPM6_MAX_RULES = 1 << 24;

const VALID = 0x1000000, EXT = 0x2000000, HOP = 0xffffff;

/** Options of Lpm6.create (rte_lpm6_config). */
export interface Lpm6Options {
  /** most rules (prefixes); adding more throws LpmFullError */
  maxRules: number;
  /** tbl8 groups (1 KiB each; a prefix longer than 24 needs up to one per byte past the third that no other prefix shares) */
  numberTbl8s: number;
  /** reader ids 0..maxReaders-1 (default MAX_LCORE, so an lcore id is a reader id) */
  maxReaders?: number;
  /** how long add() waits for readers to pass a quiescent point when every free group waits for them (ms, default 1000) */
  reclaimWaitMs?: number;
}

/** A table's location as plain data, postable to a worker: rebuilt there with Lpm6.attach. */
export interface Lpm6Desc {
  name: string;
  memory: SharedArrayBuffer;
  numberTbl8s: number;
  maxReaders: number;
}

function checkInt(what: string, v: number, min: number, max: number, table: string): void {
  checkIntOf('lpm6', what, v, min, max, table);
}

/** The 16 address bytes as four big-endian int32 words, masked to depth, into out[0..4). */
function maskedWords(b: Uint8Array, depth: number, out: Int32Array): void {
  for (let i = 0; i < 4; i++) {
    const w = (b[4 * i] << 24) | (b[4 * i + 1] << 16) | (b[4 * i + 2] << 8) | b[4 * i + 3];
    const keep = depth - 32 * i;
    out[i] = keep >= 32 ? w : keep <= 0 ? 0 : w & (-1 << (32 - keep));
  }
}

/** The writer's rules: (prefix, depth) -> next hop, open addressing on typed arrays (as lpm.ts's Rules4, four key words). */
class Rules6 {
  declare count: number;
  /** rules per depth 0..128 */
  declare readonly perDepth: Int32Array;
  private declare keys: Int32Array;
  private declare depths: Int16Array;
  private declare hops: Int32Array;
  private declare mask: number;

  constructor() {
    this.count = 0;
    this.perDepth = new Int32Array(129);
    this.alloc(1024);
  }

  private alloc(cap: number): void {
    this.keys = new Int32Array(cap * 4);
    this.depths = new Int16Array(cap).fill(-1);
    this.hops = new Int32Array(cap);
    this.mask = cap - 1;
  }

  get bytes(): number {
    return this.depths.length * 22;
  }

  private slot(k: Int32Array, ko: number, depth: number): number {
    let h = Math.imul(depth + 1, 0x9e3779b1);
    for (let i = 0; i < 4; i++) {
      h = Math.imul(h ^ k[ko + i], 0x85ebca6b);
      h ^= h >>> 15;
    }
    h = Math.imul(h, 0xc2b2ae35);
    return (h ^ (h >>> 13)) & this.mask;
  }

  private find(k: Int32Array, depth: number): number {
    const keys = this.keys, depths = this.depths, mask = this.mask;
    for (let i = this.slot(k, 0, depth); ; i = (i + 1) & mask) {
      const d = depths[i];
      if (d < 0) return -1;
      if (d === depth && keys[4 * i] === k[0] && keys[4 * i + 1] === k[1] && keys[4 * i + 2] === k[2] && keys[4 * i + 3] === k[3]) return i;
    }
  }

  /** Next hop of the rule whose masked key words are k, or -1. */
  get(k: Int32Array, depth: number): number {
    const i = this.find(k, depth);
    return i < 0 ? -1 : this.hops[i];
  }

  set(k: Int32Array, depth: number, hop: number): void {
    const i = this.find(k, depth);
    if (i >= 0) {
      this.hops[i] = hop;
      return;
    }
    if ((this.count + 1) * 2 > this.depths.length) this.grow();
    const mask = this.mask;
    let j = this.slot(k, 0, depth);
    while (this.depths[j] >= 0) j = (j + 1) & mask;
    this.keys.set(k.subarray(0, 4), 4 * j);
    this.depths[j] = depth;
    this.hops[j] = hop;
    this.count++;
    this.perDepth[depth]++;
  }

  private grow(): void {
    const keys = this.keys, depths = this.depths, hops = this.hops;
    this.alloc(depths.length * 2);
    const mask = this.mask;
    for (let i = 0; i < depths.length; i++) {
      if (depths[i] < 0) continue;
      let j = this.slot(keys, 4 * i, depths[i]);
      while (this.depths[j] >= 0) j = (j + 1) & mask;
      this.keys.set(keys.subarray(4 * i, 4 * i + 4), 4 * j);
      this.depths[j] = depths[i];
      this.hops[j] = hops[i];
    }
  }

  remove(k: Int32Array, depth: number): boolean {
    let i = this.find(k, depth);
    if (i < 0) return false;
    const keys = this.keys, depths = this.depths, hops = this.hops, mask = this.mask;
    for (let j = (i + 1) & mask; depths[j] >= 0; j = (j + 1) & mask) {
      const home = this.slot(keys, 4 * j, depths[j]);
      if (((j - home) & mask) >= ((j - i) & mask)) {
        keys.copyWithin(4 * i, 4 * j, 4 * j + 4);
        depths[i] = depths[j];
        hops[i] = hops[j];
        i = j;
      }
    }
    depths[i] = -1;
    this.count--;
    this.perDepth[depth]--;
    return true;
  }

  *entries(): IterableIterator<[Uint8Array, number, number]> {
    for (let i = 0; i < this.depths.length; i++) {
      if (this.depths[i] < 0) continue;
      const ip = new Uint8Array(16);
      for (let w = 0; w < 4; w++) {
        const v = this.keys[4 * i + w];
        ip[4 * w] = v >>> 24;
        ip[4 * w + 1] = (v >>> 16) & 255;
        ip[4 * w + 2] = (v >>> 8) & 255;
        ip[4 * w + 3] = v & 255;
      }
      yield [ip, this.depths[i], this.hops[i]];
    }
  }

  clear(): void {
    this.count = 0;
    this.perDepth.fill(0);
    this.alloc(1024);
  }
}

/** The writer's own state: present only on the table Lpm6.create returned. */
interface Writer6 extends LpmWriterBase<[Uint8Array, number, number]> {
  rules: Rules6;
  /** depth of the rule each entry comes from (0 for invalid entries and links) */
  depth24: Uint8Array;
  depth8: Uint8Array;
  /** the entry that links each group: a tbl24 index, or TBL24_ENTRIES + a tbl8 index */
  owner: Int32Array;
  /** bits of the address consumed before each group's byte: 24, 32, ... 120 */
  base: Uint8Array;
  /** 1 while a group is linked */
  live: Uint8Array;
  /** scratch: the masked address, its words, the covering rule's words */
  m: Uint8Array;
  k: Int32Array;
  k2: Int32Array;
}

/** An IPv6 LPM table (struct rte_lpm6): one writer (the creating thread), lock-free readers on any lcore. */
export class Lpm6 extends LpmTable<Writer6, [Uint8Array, number, number], Lpm6Desc> {
  private constructor(desc: Lpm6Desc, writer: Writer6 | null) {
    super(KIND, desc, writer);
  }

  /** Create a table in a new SharedArrayBuffer (rte_lpm6_create): 64 MiB of tbl24 plus 1 KiB per group. The calling thread is its writer. */
  static create(name: string, opts: Lpm6Options): Lpm6 {
    const { desc, groups } = createTables(KIND, name, opts, LPM6_MAX_RULES, LPM6_MAX_TBL8S);
    const n = desc.numberTbl8s;
    const w: Writer6 = {
      rules: new Rules6(), groups, maxRules: opts.maxRules,
      depth24: new Uint8Array(TBL24_ENTRIES), depth8: new Uint8Array(n * 256),
      owner: new Int32Array(n), base: new Uint8Array(n), live: new Uint8Array(n),
      m: new Uint8Array(16), k: new Int32Array(4), k2: new Int32Array(4),
    };
    return new Lpm6(desc, w);
  }

  /** Rebuild a table from its descriptor in this thread, for lookups only. */
  static attach(desc: Lpm6Desc): Lpm6 {
    checkAttach(KIND, desc);
    return new Lpm6(desc, null);
  }

  /** Check the arguments, mask the address into w.m and its words into w.k. */
  private prepare(w: Writer6, ip: Uint8Array, depth: number): void {
    if (!(ip instanceof Uint8Array) || ip.length !== 16) {
      throw new RangeError(`lpm6 "${this.name}": an address is a Uint8Array of 16 bytes (parseIpv6 makes one), not ${ip instanceof Uint8Array ? `${ip.length} bytes` : typeof ip}`);
    }
    checkInt('depth', depth, 0, 128, this.name);
    const m = w.m;
    for (let i = 0; i < 16; i++) {
      const keep = depth - 8 * i;
      m[i] = keep >= 8 ? ip[i] : keep <= 0 ? 0 : ip[i] & (0xff << (8 - keep));
    }
    maskedWords(m, depth, w.k);
  }

  /**
   * Add a route, or change the next hop of an existing one (rte_lpm6_add): ip (16 bytes)/depth
   * (0-128; bits after depth are ignored) to nextHop (0 to 2^24 - 1). Throws LpmFullError, with
   * the table unchanged, when the rules or the tbl8 groups are exhausted; RangeError for bad arguments.
   */
  add(ip: Uint8Array, depth: number, nextHop: number): void {
    const w = this.writer('add');
    this.prepare(w, ip, depth);
    checkInt('next hop', nextHop, 0, LPM6_MAX_NEXT_HOP, this.name);
    const old = w.rules.get(w.k, depth);
    if (old === nextHop) return;
    const what = (): string => formatIpv6Prefix(w.m, depth);
    if (old < 0 && w.rules.count >= w.maxRules) {
      throw new LpmFullError(`lpm6 "${this.name}": cannot add ${what()}: the rules table is full (maxRules ${w.maxRules}); raise maxRules in Lpm6.create`, 'maxRules');
    }
    const need = this.groupsNeeded(w.m, depth);
    if (need > 0) {
      const why = w.groups.ensure(need);
      if (why) {
        throw new LpmFullError(`lpm6 "${this.name}": cannot add ${what()}: it needs ${need} more tbl8 group${need > 1 ? 's' : ''}: ${why}; raise numberTbl8s (${this.numberTbl8s}) in Lpm6.create`, 'numberTbl8s');
      }
    }
    w.rules.set(w.k, depth, nextHop);
    const e = VALID | nextHop, m = w.m;
    const i24 = (m[0] << 16) | (m[1] << 8) | m[2];
    if (depth <= 24) {
      this.setRange24(w, i24, i24 + (1 << (24 - depth)), depth, e);
      return;
    }
    // Walk down, creating the groups the prefix passes through (each written in full before its link).
    let g = this.linkOrCreate(w, -1, i24, 24);
    let covered = 32, k = 3;
    while (depth > covered) {
      g = this.linkOrCreate(w, g, m[k], covered);
      k++;
      covered += 8;
    }
    const lo = (g << 8) | m[k];
    this.setRange8(w, lo, lo + (1 << (covered - depth)), depth, e);
  }

  /** Groups add() would have to create for depth (DPDK's simulate_add). */
  private groupsNeeded(m: Uint8Array, depth: number): number {
    const t8 = this.tbl8;
    let e = this.tbl24[(m[0] << 16) | (m[1] << 8) | m[2]];
    let covered = 24, k = 3;
    while (depth > covered) {
      if ((e & EXT) === 0) return Math.ceil((depth - covered) / 8);
      e = t8[((e & HOP) << 8) | m[k++]];
      covered += 8;
    }
    return 0;
  }

  /**
   * The group behind entry x of group parent (-1: tbl24), creating it from the entry when it is a
   * plain entry: a free group (never linked, or every reader passed a quiescent point since it was
   * unlinked) gets 256 copies of the entry, then one seq-cst store links it. base: the bits of the
   * address consumed before the new group's byte (24 under tbl24).
   */
  private linkOrCreate(w: Writer6, parent: number, x: number, base: number): number {
    const arr = parent < 0 ? this.tbl24 : this.tbl8;
    const at = parent < 0 ? x : (parent << 8) | x;
    const t = arr[at];
    if ((t & EXT) !== 0) return t & HOP;
    const d = parent < 0 ? w.depth24[at] : w.depth8[at];
    const g = w.groups.take(), gb = g << 8, t8 = this.tbl8, d8 = w.depth8;
    const fill = (t & VALID) !== 0 ? t : 0, fd = fill !== 0 ? d : 0;
    for (let j = gb; j < gb + 256; j++) {
      t8[j] = fill;
      d8[j] = fd;
    }
    w.owner[g] = parent < 0 ? at : TBL24_ENTRIES + at;
    w.base[g] = base;
    w.live[g] = 1;
    Atomics.store(arr, at, VALID | EXT | g);
    if (parent < 0) w.depth24[at] = 0;
    else d8[at] = 0;
    return g;
  }

  /** Set tbl24 entries [from, to) to e where they hold no rule or a shorter one; links pass it down. One store per entry. */
  private setRange24(w: Writer6, from: number, to: number, depth: number, e: number): void {
    const t24 = this.tbl24, d24 = w.depth24;
    for (let i = from; i < to; i++) {
      const t = t24[i];
      if ((t & EXT) !== 0) this.setRange8(w, (t & HOP) << 8, ((t & HOP) << 8) + 256, depth, e);
      else if ((t & VALID) === 0 || d24[i] <= depth) {
        t24[i] = e;
        d24[i] = depth;
      }
    }
  }

  private setRange8(w: Writer6, from: number, to: number, depth: number, e: number): void {
    const t8 = this.tbl8, d8 = w.depth8;
    for (let j = from; j < to; j++) {
      const t = t8[j];
      if ((t & EXT) !== 0) this.setRange8(w, (t & HOP) << 8, ((t & HOP) << 8) + 256, depth, e);
      else if ((t & VALID) === 0 || d8[j] <= depth) {
        t8[j] = e;
        d8[j] = depth;
      }
    }
  }

  /**
   * Delete a route (rte_lpm6_delete); the addresses it covered fall back to the longest remaining
   * rule that covers them, or to no route. Returns false when there is no such rule.
   */
  delete(ip: Uint8Array, depth: number): boolean {
    const w = this.writer('delete');
    this.prepare(w, ip, depth);
    if (!w.rules.remove(w.k, depth)) return false;
    // The longest shorter rule covering the prefix covers all of it: one replacement for the range.
    let rep = 0, repDepth = 0;
    for (let d = depth - 1; d >= 0; d--) {
      if (w.rules.perDepth[d] === 0) continue;
      maskedWords(w.m, d, w.k2);
      const hop = w.rules.get(w.k2, d);
      if (hop >= 0) {
        rep = VALID | hop;
        repDepth = d;
        break;
      }
    }
    const m = w.m, i24 = (m[0] << 16) | (m[1] << 8) | m[2];
    if (depth <= 24) {
      this.replace24(w, i24, i24 + (1 << (24 - depth)), depth, rep, repDepth);
      return true;
    }
    // The rule existed, so every level down to its own is a link.
    let g = this.tbl24[i24] & HOP, covered = 32, k = 3;
    while (depth > covered) {
      g = this.tbl8[(g << 8) | m[k++]] & HOP;
      covered += 8;
    }
    const lo = (g << 8) | m[k];
    this.replace8(w, lo, lo + (1 << (covered - depth)), depth, rep, repDepth);
    this.collapse(w, g);
    return true;
  }

  /** Entries of exactly this depth are the deleted rule's (one rule per prefix and depth): each gets the replacement in one store. */
  private replace24(w: Writer6, from: number, to: number, depth: number, rep: number, repDepth: number): void {
    const t24 = this.tbl24, d24 = w.depth24;
    for (let i = from; i < to; i++) {
      const t = t24[i];
      if ((t & EXT) !== 0) this.replace8(w, (t & HOP) << 8, ((t & HOP) << 8) + 256, depth, rep, repDepth);
      else if ((t & VALID) !== 0 && d24[i] === depth) {
        t24[i] = rep;
        d24[i] = repDepth;
      }
    }
  }

  private replace8(w: Writer6, from: number, to: number, depth: number, rep: number, repDepth: number): void {
    const t8 = this.tbl8, d8 = w.depth8;
    for (let j = from; j < to; j++) {
      const t = t8[j];
      if ((t & EXT) !== 0) this.replace8(w, (t & HOP) << 8, ((t & HOP) << 8) + 256, depth, rep, repDepth);
      else if ((t & VALID) !== 0 && d8[j] === depth) {
        t8[j] = rep;
        d8[j] = repDepth;
      }
    }
  }

  /**
   * From group g up: while a group is uniform (every entry the same word from the same rule, of a
   * depth its parent entry can hold, or every entry invalid; no links), replace its link by that
   * entry with one seq-cst store and retire it to QSBR. Its words stay as they were, so a reader
   * that followed the old link reads the same answer there. Only the group where a deleted rule
   * ended and its ancestors can become uniform: a group below holds a longer rule still.
   */
  private collapse(w: Writer6, g: number): void {
    const t8 = this.tbl8, d8 = w.depth8;
    for (;;) {
      const gb = g << 8, first = t8[gb], fd = d8[gb];
      if ((first & EXT) !== 0 || fd > w.base[g]) return;
      for (let j = gb + 1; j < gb + 256; j++) if (t8[j] !== first || d8[j] !== fd) return;
      const o = w.owner[g];
      if (o < TBL24_ENTRIES) {
        Atomics.store(this.tbl24, o, first);
        w.depth24[o] = fd;
      } else {
        Atomics.store(t8, o - TBL24_ENTRIES, first);
        d8[o - TBL24_ENTRIES] = fd;
      }
      w.live[g] = 0;
      w.groups.retire(g);
      if (o < TBL24_ENTRIES) return;
      g = (o - TBL24_ENTRIES) >> 8;
    }
  }

  /** The next hop of the rule ip/depth, or -1 when there is none (rte_lpm6_is_rule_present; writer only). */
  isRulePresent(ip: Uint8Array, depth: number): number {
    const w = this.writer('isRulePresent');
    this.prepare(w, ip, depth);
    return w.rules.get(w.k, depth);
  }

  /** Delete every rule (rte_lpm6_delete_all): each tbl24 entry cleared by one store, every group unlinked and handed to QSBR. */
  deleteAll(): void {
    const w = this.writer('deleteAll');
    const t24 = this.tbl24;
    for (let i = 0; i < TBL24_ENTRIES; i++) {
      const t = t24[i];
      if (t === 0) continue;
      if ((t & EXT) !== 0) Atomics.store(t24, i, 0);
      else t24[i] = 0;
    }
    w.depth24.fill(0);
    // Groups below the first level became unreachable with their ancestors: all retire together.
    const live = new Int32Array(w.groups.used);
    let n = 0;
    for (let g = 0; g < this.numberTbl8s; g++) {
      if (w.live[g] === 0) continue;
      live[n++] = g;
      w.live[g] = 0;
    }
    w.groups.retireList(live, n);
    w.rules.clear();
  }

  /**
   * The next hop for the 16-byte address at ip[off..off+16) (rte_lpm6_lookup), or -1 when no rule
   * covers it. Reads the address where it is (a packet's bytes, say). Allocates nothing.
   */
  lookup(ip: Uint8Array, off = 0): number {
    const t8 = this.tbl8;
    let e = this.tbl24[(ip[off] << 16) | (ip[off + 1] << 8) | ip[off + 2]];
    let k = off + 3;
    while ((e & 0x3000000) === 0x3000000) e = t8[((e & 0xffffff) << 8) | ip[k++]];
    return (e & 0xffffff) | (((e >>> 24) & 1) - 1);
  }

  /**
   * Look up n addresses, 16 bytes each, from address index off of ips (bytes 16 * off ...) into
   * out[off..off+n) (rte_lpm6_lookup_bulk_func): the next hop, or -1 (0xffffffff in a Uint32Array).
   * Allocates nothing; the first-level loads of four addresses are issued together.
   */
  lookupBulk(ips: Uint8Array, out: Int32Array | Uint32Array, n: number, off = 0): void {
    const t24 = this.tbl24, t8 = this.tbl8;
    const end = off + n;
    let i = off;
    for (; i + 4 <= end; i += 4) {
      const a = i << 4, b = a + 16, c = a + 32, d = a + 48;
      let ea = t24[(ips[a] << 16) | (ips[a + 1] << 8) | ips[a + 2]];
      let eb = t24[(ips[b] << 16) | (ips[b + 1] << 8) | ips[b + 2]];
      let ec = t24[(ips[c] << 16) | (ips[c + 1] << 8) | ips[c + 2]];
      let ed = t24[(ips[d] << 16) | (ips[d + 1] << 8) | ips[d + 2]];
      let k = a + 3;
      while ((ea & 0x3000000) === 0x3000000) ea = t8[((ea & 0xffffff) << 8) | ips[k++]];
      k = b + 3;
      while ((eb & 0x3000000) === 0x3000000) eb = t8[((eb & 0xffffff) << 8) | ips[k++]];
      k = c + 3;
      while ((ec & 0x3000000) === 0x3000000) ec = t8[((ec & 0xffffff) << 8) | ips[k++]];
      k = d + 3;
      while ((ed & 0x3000000) === 0x3000000) ed = t8[((ed & 0xffffff) << 8) | ips[k++]];
      out[i] = (ea & 0xffffff) | (((ea >>> 24) & 1) - 1);
      out[i + 1] = (eb & 0xffffff) | (((eb >>> 24) & 1) - 1);
      out[i + 2] = (ec & 0xffffff) | (((ec >>> 24) & 1) - 1);
      out[i + 3] = (ed & 0xffffff) | (((ed >>> 24) & 1) - 1);
    }
    for (; i < end; i++) {
      const a = i << 4;
      let e = t24[(ips[a] << 16) | (ips[a + 1] << 8) | ips[a + 2]];
      let k = a + 3;
      while ((e & 0x3000000) === 0x3000000) e = t8[((e & 0xffffff) << 8) | ips[k++]];
      out[i] = (e & 0xffffff) | (((e >>> 24) & 1) - 1);
    }
  }

  /** The writer's rules, shadow and group tables. */
  protected writerBytes(w: Writer6): number {
    return w.rules.bytes + w.depth24.length + w.depth8.length + this.numberTbl8s * 22;
  }
}
