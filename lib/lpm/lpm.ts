/**
 * IPv4 longest-prefix match as DPDK's rte_lpm (DIR-24-8): a tbl24 of 2^24 entries indexed by an
 * address's first 24 bits, and tbl8 groups of 256 entries, indexed by the last 8 bits, for the
 * /24s that hold prefixes longer than 24. A lookup is one load, or two.
 *
 * Memory. The tables are Int32 words in one SharedArrayBuffer: the QSBR words (lib/lpm/qsbr.ts),
 * then tbl24 (64 MiB), then numberTbl8s groups of 1 KiB. `lpm.desc` is plain data (the buffer is
 * shared, not copied, when posted): an lcore rebuilds the table with Lpm.attach(desc) and looks up
 * in the same memory, read-only. The rules (prefix, length, next hop), the free groups and the
 * groups waiting for readers are the writer's own, on the thread that called Lpm.create.
 *
 * An entry (DPDK's rte_lpm_tbl_entry, same bits): next hop or group index in bits 0-23, valid
 * bit 24, "points to a tbl8 group" bit 25 (tbl24 only), the depth of the rule it comes from in
 * bits 26-31 (the writer's, for deletes). Depth 0 (a default route) is a rule like any other.
 *
 * The reader guarantee: while the writer adds and deletes, a lookup returns the next hop the
 * address had before the change or the one it has after it, nothing else. How each step keeps it:
 *  - Every entry a reader can reach changes by one aligned 32-bit store of the whole word.
 *    ECMAScript makes aligned integer typed-array accesses tear-free, so a reader sees the old
 *    word or the new one; and a lookup reads one tbl24 word and at most one tbl8 word, so one
 *    address's answer depends on one store. Entry updates that publish nothing else are plain
 *    stores: their order among themselves does not matter.
 *  - A new group is written in full (a copy of the tbl24 entry it replaces, plus the new rule)
 *    before the tbl24 entry is switched to it with Atomics.store, a seq-cst store: the group's
 *    words are visible to any thread that sees the link. The reader's load of the group depends on
 *    the link's value (its address is computed from it), which orders it after the link's load on
 *    every CPU JavaScript runs on, as DPDK's plain loads rely on.
 *  - A group that becomes uniform again (every entry from one rule of depth <= 24, or invalid) is
 *    unlinked with one Atomics.store of that entry into tbl24; its words stay as they were, and it
 *    is reused (zeroed, refilled) only after every online reader passed a quiescent point after the
 *    unlink (QSBR, lib/lpm/qsbr.ts). A reader that read the old link therefore reads an intact
 *    group whose entries say what the new tbl24 entry says.
 * Readers call readerOnline(id) before their first lookup, readerQuiescent(id) between bursts and
 * readerOffline(id) when they stop; with no reader online, an unlinked group is free at once.
 */
import { LpmTable, TBL24_ENTRIES, checkAttach, checkInt as checkIntOf, createTables } from './table.js';
import type { LpmKind, LpmWriterBase } from './table.js';
import { formatIpv4Prefix, maskIpv4 } from '../net/ipaddr.js';

const KIND: LpmKind = { tag: 'lpm', cls: 'Lpm', label: 'LPM', magic: 0x6c706d34 /* "lpm4" */ };
/** Largest next hop: 24 bits, as rte_lpm. */
export const LPM_MAX_NEXT_HOP = 0xffffff;
/** Most tbl8 groups a table may have: a group's first entry, g << 8, must stay a 31-bit integer. */
export const LPM_MAX_TBL8S = 1 << 23;
/** Most rules a table may have. */
export const LPM_MAX_RULES = 1 << 26;
/** Prefix lengths up to this one live in tbl24 alone. */
const MAX_DEPTH_TBL24 = 24;

/** Entry bits. Hot paths use the literals (docs/performance.md: no module constants in loops). */
const VALID = 0x1000000, EXT = 0x2000000, HOP = 0xffffff;

/** Options of Lpm.create (rte_lpm_config). */
export interface LpmOptions {
  /** most rules (prefixes) the table holds; adding more throws LpmFullError */
  maxRules: number;
  /** tbl8 groups (1 KiB each): one per /24 that holds prefixes longer than 24; adding more throws LpmFullError */
  numberTbl8s: number;
  /** reader ids 0..maxReaders-1 (default MAX_LCORE, so an lcore id is a reader id) */
  maxReaders?: number;
  /** how long add() waits for readers to pass a quiescent point when every free group waits for them (ms, default 1000) */
  reclaimWaitMs?: number;
}

/** A table's location as plain data, postable to a worker: rebuilt there with Lpm.attach. */
export interface LpmDesc {
  name: string;
  memory: SharedArrayBuffer;
  numberTbl8s: number;
  maxReaders: number;
}

/** A table is full: `limit` names the create() option that would have to be larger. */
export class LpmFullError extends Error {
  /** which limit was reached */
  declare readonly limit: 'maxRules' | 'numberTbl8s';

  /** message: the whole one-line error. */
  constructor(message: string, limit: 'maxRules' | 'numberTbl8s') {
    super(message);
    this.name = 'LpmFullError';
    this.limit = limit;
  }
}

/** Check a whole number in [min, max]; throws RangeError naming what and the table. */
function checkInt(what: string, v: number, min: number, max: number, table: string): void {
  checkIntOf('lpm', what, v, min, max, table);
}

/**
 * The writer's rules: (prefix, depth) -> next hop, an open-addressing hash table on typed arrays
 * (linear probing, deletion by backward shift), growing by doubling up to its limit. DPDK keeps
 * the rules in one array scanned per depth; a hash makes add and delete O(1) for 1 M prefixes.
 */
class Rules4 {
  declare count: number;
  /** rules per depth 0..32: the deletes' search for a covering rule skips empty depths */
  declare readonly perDepth: Int32Array;
  private declare ips: Int32Array;
  private declare depths: Int8Array;
  private declare hops: Int32Array;
  private declare mask: number;

  constructor() {
    this.count = 0;
    this.perDepth = new Int32Array(33);
    this.alloc(1024);
  }

  private alloc(cap: number): void {
    this.ips = new Int32Array(cap);
    this.depths = new Int8Array(cap).fill(-1);
    this.hops = new Int32Array(cap);
    this.mask = cap - 1;
  }

  /** Bytes the table takes now. */
  get bytes(): number {
    return this.ips.length * 9;
  }

  private slot(ip: number, depth: number): number {
    let h = Math.imul(ip ^ Math.imul(depth + 1, 0x9e3779b1), 0x85ebca6b);
    h ^= h >>> 15;
    h = Math.imul(h, 0xc2b2ae35);
    return (h ^ (h >>> 13)) & this.mask;
  }

  /** Index of the rule, or -1. */
  private find(ip: number, depth: number): number {
    const ips = this.ips, depths = this.depths, mask = this.mask;
    for (let i = this.slot(ip, depth); ; i = (i + 1) & mask) {
      const d = depths[i];
      if (d < 0) return -1;
      if (d === depth && ips[i] === ip) return i;
    }
  }

  /** The rule's next hop, or -1. */
  get(ip: number, depth: number): number {
    const i = this.find(ip | 0, depth);
    return i < 0 ? -1 : this.hops[i];
  }

  /** Add or update; the caller checked the limit for a new rule. */
  set(ip: number, depth: number, hop: number): void {
    ip |= 0;
    const i = this.find(ip, depth);
    if (i >= 0) {
      this.hops[i] = hop;
      return;
    }
    if ((this.count + 1) * 2 > this.ips.length) this.grow();
    const ips = this.ips, depths = this.depths, mask = this.mask;
    let j = this.slot(ip, depth);
    while (depths[j] >= 0) j = (j + 1) & mask;
    ips[j] = ip;
    depths[j] = depth;
    this.hops[j] = hop;
    this.count++;
    this.perDepth[depth]++;
  }

  private grow(): void {
    const ips = this.ips, depths = this.depths, hops = this.hops;
    this.alloc(ips.length * 2);
    const mask = this.mask;
    for (let i = 0; i < ips.length; i++) {
      if (depths[i] < 0) continue;
      let j = this.slot(ips[i], depths[i]);
      while (this.depths[j] >= 0) j = (j + 1) & mask;
      this.ips[j] = ips[i];
      this.depths[j] = depths[i];
      this.hops[j] = hops[i];
    }
  }

  /** Remove; false when absent. Backward-shift deletion keeps every probe chain unbroken. */
  remove(ip: number, depth: number): boolean {
    let i = this.find(ip | 0, depth);
    if (i < 0) return false;
    const ips = this.ips, depths = this.depths, hops = this.hops, mask = this.mask;
    for (let j = (i + 1) & mask; depths[j] >= 0; j = (j + 1) & mask) {
      const home = this.slot(ips[j], depths[j]);
      // move j into the hole at i if its home is not in the cyclic range (i, j]
      if (((j - home) & mask) >= ((j - i) & mask)) {
        ips[i] = ips[j];
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

  /** Every rule as [ip, depth, hop] (for tests and dumps). */
  *entries(): IterableIterator<[number, number, number]> {
    for (let i = 0; i < this.ips.length; i++) if (this.depths[i] >= 0) yield [this.ips[i] >>> 0, this.depths[i], this.hops[i]];
  }

  clear(): void {
    this.count = 0;
    this.perDepth.fill(0);
    this.alloc(1024);
  }
}

/** The writer's own state: present only on the table Lpm.create returned. */
interface Writer extends LpmWriterBase<[number, number, number]> {
  rules: Rules4;
}

/** An IPv4 LPM table (struct rte_lpm): one writer (the creating thread), lock-free readers on any lcore. */
export class Lpm extends LpmTable<Writer, [number, number, number], LpmDesc> {
  private constructor(desc: LpmDesc, writer: Writer | null) {
    super(KIND, desc, writer);
  }

  /**
   * Create a table in a new SharedArrayBuffer (rte_lpm_create): 64 MiB of tbl24 plus 1 KiB per
   * tbl8 group, zeroed (no routes). The calling thread is the table's writer.
   */
  static create(name: string, opts: LpmOptions): Lpm {
    const { desc, groups } = createTables(KIND, name, opts, LPM_MAX_RULES, LPM_MAX_TBL8S);
    return new Lpm(desc, { rules: new Rules4(), groups, maxRules: opts.maxRules });
  }

  /** Rebuild a table from its descriptor in this thread, for lookups only (rte_lpm_find_existing in a secondary). */
  static attach(desc: LpmDesc): Lpm {
    checkAttach(KIND, desc);
    return new Lpm(desc, null);
  }

  private checkIp(ip: number): void {
    if (!Number.isInteger(ip) || ip < -0x80000000 || ip > 0xffffffff) {
      throw new RangeError(`lpm "${this.name}": address ${ip} must be a 32-bit whole number (a.b.c.d as a << 24 | b << 16 | c << 8 | d; parseIpv4 makes one)`);
    }
  }

  /**
   * Add a route, or change the next hop of an existing one (rte_lpm_add): ip/depth (depth 0-32;
   * bits after depth are ignored) to nextHop (0 to 2^24 - 1). Throws LpmFullError, with the table
   * unchanged, when the rules or the tbl8 groups are exhausted; RangeError for bad arguments.
   */
  add(ip: number, depth: number, nextHop: number): void {
    const w = this.writer('add');
    this.checkIp(ip);
    checkInt('depth', depth, 0, 32, this.name);
    checkInt('next hop', nextHop, 0, LPM_MAX_NEXT_HOP, this.name);
    const ipm = maskIpv4(ip, depth);
    const old = w.rules.get(ipm, depth);
    if (old === nextHop) return;
    if (old < 0 && w.rules.count >= w.maxRules) {
      throw new LpmFullError(`lpm "${this.name}": cannot add ${formatIpv4Prefix(ipm, depth)}: the rules table is full (maxRules ${w.maxRules}); raise maxRules in Lpm.create`, 'maxRules');
    }
    if (depth > MAX_DEPTH_TBL24 && (this.tbl24[ipm >>> 8] & EXT) === 0) {
      const why = w.groups.ensure(1);
      if (why) {
        throw new LpmFullError(`lpm "${this.name}": cannot add ${formatIpv4Prefix(ipm, depth)}: no free tbl8 group: ${why}; raise numberTbl8s (${this.numberTbl8s}) in Lpm.create`, 'numberTbl8s');
      }
    }
    w.rules.set(ipm, depth, nextHop);
    if (depth <= MAX_DEPTH_TBL24) this.addSmall(ipm, depth, nextHop);
    else this.addBig(w, ipm, depth, nextHop);
  }

  /** A rule of depth <= 24: its tbl24 range, and inside groups the entries of shorter rules. */
  private addSmall(ipm: number, depth: number, hop: number): void {
    const t24 = this.tbl24, t8 = this.tbl8;
    const e = VALID | (depth << 26) | hop;
    const from = ipm >>> 8, to = from + (1 << (24 - depth));
    for (let i = from; i < to; i++) {
      const t = t24[i];
      if ((t & EXT) === 0) {
        // a longer rule's entry stays; ours replaces a shorter one's (or none): one store
        if ((t & VALID) === 0 || t >>> 26 <= depth) t24[i] = e;
      } else {
        const g = (t & HOP) << 8;
        for (let j = g; j < g + 256; j++) {
          const u = t8[j];
          if ((u & VALID) === 0 || u >>> 26 <= depth) t8[j] = e;
        }
      }
    }
  }

  /** A rule of depth 25-32: entries of its /24's group, creating the group if needed. */
  private addBig(w: Writer, ipm: number, depth: number, hop: number): void {
    const t24 = this.tbl24, t8 = this.tbl8;
    const i24 = ipm >>> 8, t = t24[i24];
    const e = VALID | (depth << 26) | hop;
    const lo = ipm & 0xff, hi = lo + (1 << (32 - depth));
    if ((t & EXT) === 0) {
      // A free group: never linked, or unlinked and every reader passed a quiescent point since
      // (QSBR), so no reader can read it while it is filled.
      const g = w.groups.take();
      const base = g << 8;
      const fill = (t & VALID) !== 0 ? t : 0; // what the /24 answers now, depth included
      for (let j = 0; j < 256; j++) t8[base + j] = j >= lo && j < hi ? e : fill;
      // Publish: seq-cst, so the 256 stores above are visible to whoever sees the link.
      Atomics.store(t24, i24, VALID | EXT | g);
    } else {
      const base = (t & HOP) << 8;
      for (let j = base + lo; j < base + hi; j++) {
        const u = t8[j];
        if ((u & VALID) === 0 || u >>> 26 <= depth) t8[j] = e;
      }
    }
  }

  /**
   * Delete a route (rte_lpm_delete); the addresses it covered fall back to the longest remaining
   * rule that covers them, or to no route. Returns false when there is no such rule.
   */
  delete(ip: number, depth: number): boolean {
    const w = this.writer('delete');
    this.checkIp(ip);
    checkInt('depth', depth, 0, 32, this.name);
    const ipm = maskIpv4(ip, depth);
    if (!w.rules.remove(ipm, depth)) return false;
    // The covering rule: the longest shorter one. It covers every address of the deleted rule
    // (prefixes nest), so one replacement entry serves the whole range.
    let rep = 0;
    for (let d = depth - 1; d >= 0; d--) {
      if (w.rules.perDepth[d] === 0) continue;
      const hop = w.rules.get(maskIpv4(ipm, d), d);
      if (hop >= 0) {
        rep = VALID | (d << 26) | hop;
        break;
      }
    }
    if (depth <= MAX_DEPTH_TBL24) this.deleteSmall(ipm, depth, rep);
    else this.deleteBig(w, ipm, depth, rep);
    return true;
  }

  /** Entries of exactly this depth in the range are the deleted rule's (one rule per prefix and depth): each gets the replacement in one store. */
  private deleteSmall(ipm: number, depth: number, rep: number): void {
    const t24 = this.tbl24, t8 = this.tbl8;
    const from = ipm >>> 8, to = from + (1 << (24 - depth));
    for (let i = from; i < to; i++) {
      const t = t24[i];
      if ((t & EXT) === 0) {
        if ((t & VALID) !== 0 && t >>> 26 === depth) t24[i] = rep;
      } else {
        const g = (t & HOP) << 8;
        for (let j = g; j < g + 256; j++) {
          const u = t8[j];
          if ((u & VALID) !== 0 && u >>> 26 === depth) t8[j] = rep;
        }
      }
    }
  }

  private deleteBig(w: Writer, ipm: number, depth: number, rep: number): void {
    const t24 = this.tbl24, t8 = this.tbl8;
    const i24 = ipm >>> 8, g = t24[i24] & HOP, base = g << 8;
    const lo = ipm & 0xff, hi = lo + (1 << (32 - depth));
    for (let j = base + lo; j < base + hi; j++) {
      const u = t8[j];
      if ((u & VALID) !== 0 && u >>> 26 === depth) t8[j] = rep;
    }
    // Collapse the group when it no longer says more than one tbl24 entry could (DPDK's
    // tbl8_recycle_check): every entry invalid, or every entry the same rule of depth <= 24.
    const first = t8[base];
    if ((first & VALID) !== 0 && first >>> 26 > MAX_DEPTH_TBL24) return;
    for (let j = base + 1; j < base + 256; j++) if (t8[j] !== first) return;
    // Unlink with one seq-cst store (the group's words stay: a reader holding the old link reads
    // the same answer there), then let QSBR hand it back once every reader passed it.
    Atomics.store(t24, i24, first);
    w.groups.retire(g);
  }

  /**
   * The next hop of the rule ip/depth, or -1 when there is none (rte_lpm_is_rule_present; the
   * writer's rules, so only on the creating thread).
   */
  isRulePresent(ip: number, depth: number): number {
    const w = this.writer('isRulePresent');
    this.checkIp(ip);
    checkInt('depth', depth, 0, 32, this.name);
    return w.rules.get(maskIpv4(ip, depth), depth);
  }

  /** Delete every rule (rte_lpm_delete_all): each tbl24 entry cleared by one store, every group unlinked and handed to QSBR. */
  deleteAll(): void {
    const w = this.writer('deleteAll');
    const t24 = this.tbl24, used = new Int32Array(w.groups.used);
    let n = 0;
    // Element by element, not fill(): a reader must never see a half-cleared link.
    for (let i = 0; i < TBL24_ENTRIES; i++) {
      const t = t24[i];
      if (t === 0) continue;
      if ((t & EXT) !== 0) {
        Atomics.store(t24, i, 0);
        used[n++] = t & HOP;
      } else t24[i] = 0;
    }
    w.groups.retireList(used, n);
    w.rules.clear();
  }

  /**
   * The next hop for an address (rte_lpm_lookup), or -1 when no rule covers it. ip is a u32 (an
   * int32 with the same bits is fine). Allocates nothing. The answer is made without a branch on
   * the valid bit (bit 24): ((e >>> 24) & 1) - 1 is 0 for a valid entry and -1 for none, so a miss
   * (a random share of lookups) costs no mispredicted branch.
   */
  lookup(ip: number): number {
    let e = this.tbl24[ip >>> 8];
    if ((e & 0x3000000) === 0x3000000) e = this.tbl8[((e & 0xffffff) << 8) | (ip & 0xff)];
    return (e & 0xffffff) | (((e >>> 24) & 1) - 1);
  }

  /**
   * Look up n addresses ips[off..off+n) into out[off..off+n) (rte_lpm_lookup_bulk): the next hop,
   * or -1 (0xffffffff in a Uint32Array) for no route. Allocates nothing. Four at a time: the four
   * tbl24 loads are issued before any is used, so their cache misses overlap.
   */
  lookupBulk(ips: Uint32Array, out: Int32Array | Uint32Array, n: number, off = 0): void {
    const t24 = this.tbl24, t8 = this.tbl8;
    const end = off + n;
    let i = off;
    for (; i + 4 <= end; i += 4) {
      const a = ips[i], b = ips[i + 1], c = ips[i + 2], d = ips[i + 3];
      let ea = t24[a >>> 8], eb = t24[b >>> 8], ec = t24[c >>> 8], ed = t24[d >>> 8];
      if ((ea & 0x3000000) === 0x3000000) ea = t8[((ea & 0xffffff) << 8) | (a & 0xff)];
      if ((eb & 0x3000000) === 0x3000000) eb = t8[((eb & 0xffffff) << 8) | (b & 0xff)];
      if ((ec & 0x3000000) === 0x3000000) ec = t8[((ec & 0xffffff) << 8) | (c & 0xff)];
      if ((ed & 0x3000000) === 0x3000000) ed = t8[((ed & 0xffffff) << 8) | (d & 0xff)];
      out[i] = (ea & 0xffffff) | (((ea >>> 24) & 1) - 1);
      out[i + 1] = (eb & 0xffffff) | (((eb >>> 24) & 1) - 1);
      out[i + 2] = (ec & 0xffffff) | (((ec >>> 24) & 1) - 1);
      out[i + 3] = (ed & 0xffffff) | (((ed >>> 24) & 1) - 1);
    }
    for (; i < end; i++) {
      const a = ips[i];
      let e = t24[a >>> 8];
      if ((e & 0x3000000) === 0x3000000) e = t8[((e & 0xffffff) << 8) | (a & 0xff)];
      out[i] = (e & 0xffffff) | (((e >>> 24) & 1) - 1);
    }
  }

  /** The writer's rules table and its group lists. */
  protected writerBytes(w: Writer): number {
    return w.rules.bytes + this.numberTbl8s * 12;
  }
}
