/**
 * lib/lpm (IPv6): the table against an obviously right reference (one Map per prefix length,
 * probed from the longest down) on random route sets with a realistic prefix-length distribution
 * (mostly /48 and /32, /0 to /128, /25-/31 in the first tbl8 level, deep /64-/128), overlapping
 * prefixes and deletions that fall back, with the tbl8 groups checked against what the rules
 * need; the limits; bad input; QSBR; a worker lcore looking up while the main thread adds and
 * deletes (every answer the old or the new next hop); no allocation in the lookups.
 * The seed varies per run and is printed: TSPMD_LPM_SEED=<seed> replays a run.
 */
import t from 'tap';
import { Lpm6 } from '../../lib/lpm/lpm6.js';
import { LpmFullError } from '../../lib/lpm/lpm.js';
import { parseIpv6, parseIpv6Prefix, formatIpv6, formatIpv6Prefix, maskIpv6 } from '../../lib/net/ipaddr.js';
import { prng } from '../prng.js';
import { ALLOC_RULE, assertNoAlloc, measureInWorker } from '../alloc.js';
import type { CheckerArg, BulkOpArg } from './lpm-workers.js';
import { addAndCompare, deleteAndReAdd, type RandomKit } from './random.js';
import { WORKERS, checkConcurrent, closeLcores, lcoresOnce, runConcurrent, type ConcurrentRun } from './concurrent.js';

const SEED = process.env.TSPMD_LPM_SEED !== undefined ? Number(process.env.TSPMD_LPM_SEED) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
const v6 = parseIpv6;
const MAX_HOP = 0xffffff;

const POW2 = Array.from({ length: 53 }, (_, k) => 2 ** k);

/** The first 52 bits of the address at a[off..] as a number (exact in a double). */
function lead52(a: Uint8Array, off: number): number {
  const hi = ((a[off] << 24) | (a[off + 1] << 16) | (a[off + 2] << 8) | a[off + 3]) >>> 0;
  return hi * 1048576 + ((a[off + 4] << 12) | (a[off + 5] << 4) | (a[off + 6] >>> 4));
}

/**
 * The masked address at a[off..] as a Map key: up to 52 bits, the masked leading bits as a number
 * (lead: lead52 of it); longer, a string of its masked 16-bit groups.
 */
function refKey(a: Uint8Array, off: number, d: number, lead: number): number | string {
  if (d <= 52) return Math.floor(lead / POW2[52 - d]);
  let s = '';
  const full = d >> 4, rem = d & 15;
  for (let i = 0; i < full; i++) s += String.fromCharCode((a[off + 2 * i] << 8) | a[off + 2 * i + 1]);
  if (rem) s += String.fromCharCode(((a[off + 2 * full] << 8) | a[off + 2 * full + 1]) & (0xffff << (16 - rem)) & 0xffff);
  return s;
}

/**
 * The reference: one Map per prefix length, masked address -> next hop, probed from /128 down to
 * /0. A length above 24 is probed only when some rule of that length starts with the address's
 * first 24 bits (a count per /24 and length): any rule that matches does.
 */
class Ref6 {
  readonly maps = Array.from({ length: 129 }, () => new Map<number | string, number>());
  /** the prefixes themselves, per length, for listing */
  readonly prefixes = Array.from({ length: 129 }, () => new Map<number | string, Uint8Array>());
  /** first 24 bits -> rules of each length 25-128 under them */
  readonly under = new Map<number, Int32Array>();
  add(a: Uint8Array, d: number, hop: number): void {
    const k = refKey(a, 0, d, lead52(a, 0));
    if (d > 24 && !this.maps[d].has(k)) this.count(a, d, 1);
    this.maps[d].set(k, hop);
    this.prefixes[d].set(k, maskIpv6(Uint8Array.from(a), d));
  }
  delete(a: Uint8Array, d: number): boolean {
    const k = refKey(a, 0, d, lead52(a, 0));
    this.prefixes[d].delete(k);
    const had = this.maps[d].delete(k);
    if (had && d > 24) this.count(a, d, -1);
    return had;
  }
  private count(a: Uint8Array, d: number, by: number): void {
    const top = (a[0] << 16) | (a[1] << 8) | a[2];
    let c = this.under.get(top);
    if (!c) this.under.set(top, (c = new Int32Array(129)));
    c[d] += by;
  }
  get(a: Uint8Array, d: number): number {
    return this.maps[d].get(refKey(a, 0, d, lead52(a, 0))) ?? -1;
  }
  lookup(a: Uint8Array, off: number): number {
    const lead = lead52(a, off);
    const c = this.under.get((a[off] << 16) | (a[off + 1] << 8) | a[off + 2]);
    for (let d = 128; d >= 0; d--) {
      if (d > 24 && (c === undefined || c[d] === 0)) continue;
      const m = this.maps[d];
      if (m.size === 0) continue;
      const h = m.get(refKey(a, off, d, lead));
      if (h !== undefined) return h;
    }
    return -1;
  }
  get size(): number {
    return this.maps.reduce((s, m) => s + m.size, 0);
  }
  rules(): Array<[Uint8Array, number]> {
    return this.prefixes.flatMap((m, d) => [...m.values()].map((p): [Uint8Array, number] => [p, d]));
  }
  /**
   * The tbl8 groups a table must have linked: one for each b-bit prefix (b = 24, 32, ... 120)
   * under which a rule longer than b exists, and no other.
   */
  groups(): number {
    const per = Array.from({ length: 13 }, () => new Set<number | string>()); // per level, the b-bit prefixes
    for (let d = 25; d <= 128; d++) {
      for (const p of this.prefixes[d].values()) {
        const lead = lead52(p, 0);
        for (let b = 24; b < d; b += 8) per[(b - 24) >> 3].add(refKey(p, 0, b, lead));
      }
    }
    return per.reduce((n, s) => n + s.size, 0);
  }
}

/**
 * Prefix lengths weighted about as in the IPv6 Internet table (/48 most, then /32, /44, /40, /29,
 * /36 ...), with /56 and /64 customer routes, host routes, some of every tbl8 level (/25-/31 in the
 * first, up to /128 in the thirteenth) and a few short ones.
 */
const WEIGHTS: Array<[number, number]> = [
  [48, 4500], [32, 1200], [44, 700], [40, 600], [29, 400], [36, 300], [46, 300], [47, 200], [45, 200], [28, 100], [30, 50], [31, 30],
  [33, 60], [34, 60], [35, 60], [37, 60], [38, 60], [39, 60], [41, 100], [42, 100], [43, 100],
  [56, 200], [64, 200], [52, 40], [60, 40], [49, 10], [50, 10], [51, 10], [72, 10], [96, 10], [120, 10], [127, 10], [128, 40],
  [25, 30], [26, 30], [27, 30], [24, 20], [20, 10], [16, 5], [12, 2], [8, 1], [4, 0.5], [2, 0.2], [1, 0.2],
];

function depthPicker(rnd: () => number): () => number {
  const total = WEIGHTS.reduce((s, [, w]) => s + w, 0);
  return () => {
    let x = rnd() * total;
    for (const [d, w] of WEIGHTS) if ((x -= w) < 0) return d;
    return 48;
  };
}

/** Copy p's first d bits into out and fill the rest with random bits. */
function extend(rnd: () => number, p: Uint8Array, d: number, out: Uint8Array): void {
  let r = 0;
  for (let i = 0; i < 16; i++) {
    if ((i & 3) === 0) r = (rnd() * 4294967296) >>> 0; // four random bytes per draw
    const keep = d - 8 * i, x = (r >>> (8 * (i & 3))) & 0xff;
    out[i] = keep >= 8 ? p[i] : keep <= 0 ? x : (p[i] & (0xff << (8 - keep))) | (x & (0xff >> keep));
  }
}

/**
 * 3000 provider /32s in 2000::/4.
 */
function providerBases(rnd: () => number): Uint8Array[] {
  const bases: Uint8Array[] = [];
  for (let i = 0; i < 3000; i++) {
    const b = new Uint8Array(16);
    b[0] = 0x20 | Math.floor(rnd() * 16);
    for (let j = 1; j < 4; j++) b[j] = Math.floor(rnd() * 256);
    bases.push(b);
  }
  return bases;
}

/**
 * n distinct random routes, clustered as real allocations are: under the provider /32s, longer
 * prefixes under them mostly in a few /40s and /56s each, half of all routes nested in an earlier one.
 */
function randomRoutes(rnd: () => number, n: number, bases: Uint8Array[]): Array<[Uint8Array, number, number]> {
  const pick = depthPicker(rnd);
  const out: Array<[Uint8Array, number, number]> = [];
  const have = new Set<string>();
  while (out.length < n) {
    const d = pick(), a = new Uint8Array(16);
    const parent = out.length > 0 && rnd() < 0.5 ? out[Math.floor(rnd() * out.length)] : null;
    const nested = parent !== null && parent[1] < d;
    const from = nested ? parent[1] : 32;
    extend(rnd, nested ? parent[0] : bases[Math.floor(rnd() * bases.length)], from, a);
    // bytes 4-6 past the parent's prefix mostly from a few values: a few /40s per /32, /56s per /48
    for (let j = 4; j < 7; j++) if (8 * j >= from && rnd() < 0.9) a[j] &= 3;
    maskIpv6(a, d);
    const key = `${d}/${a.join('.')}`;
    if (have.has(key)) continue; // n distinct rules
    have.add(key);
    out.push([a, d, Math.floor(rnd() * (MAX_HOP + 1))]);
  }
  return out;
}

/** n addresses (n * 16 bytes): 70 % inside a random rule, 15 % anywhere in 2000::/4, 15 % anywhere. */
function probeAddresses(rnd: () => number, ref: Ref6, n: number): Uint8Array {
  const rules = ref.rules(), out = new Uint8Array(n * 16), a = new Uint8Array(16), zero = new Uint8Array(16);
  for (let i = 0; i < n; i++) {
    const x = rnd();
    if (rules.length > 0 && x < 0.7) {
      const [p, d] = rules[Math.floor(rnd() * rules.length)];
      extend(rnd, p, d, a);
    } else {
      extend(rnd, zero, 0, a);
      if (x < 0.85) a[0] = 0x20 | (a[0] & 15);
    }
    out.set(a, i * 16);
  }
  return out;
}

/** lookup and lookupBulk (into Int32Array and Uint32Array) against the reference; the differences, the first few described. */
function compare(lpm: Lpm6, ref: Ref6, addrs: Uint8Array): { diffs: number; examples: string[]; expected: Int32Array } {
  const n = addrs.length / 16, bulk = new Int32Array(n), bulkU = new Uint32Array(n), expected = new Int32Array(n);
  for (let off = 0; off < n; off += 1000) lpm.lookupBulk(addrs, bulk, Math.min(1000, n - off), off);
  lpm.lookupBulk(addrs, bulkU, n);
  let diffs = 0;
  const examples: string[] = [];
  for (let i = 0; i < n; i++) {
    const want = ref.lookup(addrs, i * 16);
    expected[i] = want;
    const one = lpm.lookup(addrs, i * 16);
    if (one !== want || bulk[i] !== want || (bulkU[i] | 0) !== want) {
      diffs++;
      if (examples.length < 5) examples.push(`${formatIpv6(addrs, i * 16)}: lookup ${one}, bulk ${bulk[i]}, bulk into a Uint32Array ${bulkU[i]}, reference ${want}`);
    }
  }
  return { diffs, examples, expected };
}

t.test(`random routes against a Map per prefix length: 100,000 routes, 1,000,000 lookups after the adds, 500,000 after deletes and after re-adds (seed ${SEED})`, async (t) => {
  t.comment(`seed ${SEED}: TSPMD_LPM_SEED=${SEED} replays this run`);
  const rnd = prng(SEED);
  const lpm = Lpm6.create('tsp_random6', { maxRules: 200_000, numberTbl8s: 65_536 });
  const ref = new Ref6();
  const bases = providerBases(rnd);
  const routes = randomRoutes(rnd, 100_000, bases);
  routes.push([v6('::'), 0, 77], [v6('2001:db8::'), 32, 78], [v6('2001:db8::1'), 128, 79], [v6('2001:db8:0:1::'), 64, 80], [v6('2001:db8::'), 25, 81]);
  const k: RandomKit<Uint8Array, Uint8Array> = {
    lpm, ref, rnd, maxHop: MAX_HOP, any: v6('::'),
    randomRoutes: (n) => randomRoutes(rnd, n, bases), probes: (n) => probeAddresses(rnd, ref, n), head: (p, n) => p.subarray(0, n * 16),
    compare: (p) => compare(lpm, ref, p), groupsFreed: 'groups no longer needed were freed, at every level', fellBackOf: 'addresses',
  };
  const added = addAndCompare(t, k, routes, 'rule count as the reference', 'tbl8 groups: exactly one per 24/32/.../120-bit prefix with a longer rule under it');
  const { addrs } = deleteAndReAdd(t, k, added.addrs, added.before);
  t.equal(lpm.tbl8sUsed, ref.groups(), 'groups still exactly what the rules need');

  let present = 0;
  const sample = ref.rules().slice(0, 5000);
  for (const [a, d] of sample) if (lpm.isRulePresent(a, d) === ref.get(a, d)) present++;
  t.equal(present, sample.length, 'isRulePresent gives each rule\'s next hop');
  const listed = lpm.ruleList();
  t.equal(listed.length, ref.size, 'ruleList has as many rules as the reference');
  t.equal(listed.filter(([a, d, h]) => ref.get(a, d) === h).length, ref.size, 'each listed rule is in the reference with its next hop');

  lpm.deleteAll();
  t.equal(lpm.rules, 0, 'deleteAll: no rules');
  t.equal(lpm.tbl8sUsed, 0, 'deleteAll: every group free (no reader online)');
  const none = new Int32Array(1000);
  lpm.lookupBulk(addrs, none, 1000);
  t.ok(none.every((x) => x === -1), 'deleteAll: no address has a route');
});

t.test('levels: /0, /24 in tbl24, /25-/31 in the first group, each level to /128, multi-level groups made and freed', async (t) => {
  const lpm = Lpm6.create('tsp_levels6', { maxRules: 300, numberTbl8s: 64 });
  const q = (s: string): number => lpm.lookup(v6(s));
  t.equal(q('2001:db8::1'), -1, 'empty table: no route');
  lpm.add(v6('::'), 0, 1);
  t.equal(q('ffff::1'), 1, '/0 covers everything');
  lpm.add(v6('2001:db8::'), 24, 24);
  t.equal(q('2001:dff::'), 24, 'a /24 in tbl24 (2001:0d00::/24 holds 2001:0dff::)');
  t.equal(lpm.tbl8sUsed, 0, 'no group for /24 and shorter');
  for (let d = 25; d <= 31; d++) lpm.add(v6('2001:db8::'), d, d);
  t.equal(lpm.tbl8sUsed, 1, '/25-/31 share the first level\'s group');
  t.equal(q('2001:db8::'), 31);
  t.equal(q('2001:db9::'), 31, '2001:db9:: is inside 2001:db8::/31');
  t.equal(q('2001:dba::'), 30, '2001:dba:: is inside /30, not /31');
  for (let d = 32; d <= 128; d += 8) lpm.add(v6('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), d, d);
  t.equal(lpm.tbl8sUsed, 13, 'a /128 passes through 13 groups (bytes 3 to 15)');
  t.equal(q('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), 128, '/128 wins');
  t.equal(q('2001:db8:aaaa:bbbb:cccc:dddd:eeee:fffe'), 120, 'the last byte differs: /120');
  t.equal(q('2001:db8:aaaa:bbbb:cccc:dddd:eeee:0'), 112);
  t.equal(q('2001:db8:aaaa:bb00::'), 56);
  t.equal(q('2001:db8:aa00::'), 40);
  t.equal(q('2001:db8:ff::'), 32);
  t.equal(q('2001:dba::'), 30);
  lpm.add(v6('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), 60, 60);
  t.equal(q('2001:db8:aaaa:bbb0::'), 60, 'a /60 in the middle of a byte');
  t.equal(q('2001:db8:aaaa:bbcf::'), 56, 'outside the /60');
  lpm.add(v6('2001:db8:aaaa:bbbb::'), 33, 33);
  // the /33 is 2001:db8:8000::/33 (aaaa's top bit)
  t.equal(q('2001:db8:a000::'), 33, 'a /33 added after longer rules covers what only the /32 covered');
  t.equal(q('2001:db8:aa00::'), 40, 'but does not override the /40 below it');
  t.equal(q('2001:db8:7fff::'), 32, 'the other half of the /32 stays the /32\'s');
  // deleting from the bottom frees the groups level by level
  t.ok(lpm.delete(v6('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), 128));
  t.equal(q('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), 120, 'falls back to the /120');
  t.equal(lpm.tbl8sUsed, 12, 'the last group (byte 15) held only the /120 now: collapsed into its parent entry');
  t.ok(lpm.delete(v6('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ff00'), 120));
  t.equal(lpm.tbl8sUsed, 11, 'and the next one with the /120');
  for (let d = 112; d >= 72; d -= 8) lpm.delete(v6('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), d);
  t.equal(lpm.tbl8sUsed, 5, 'down to the /64: the groups of bytes 3-7 that the /33-/64 need');
  t.equal(q('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), 64);
  lpm.delete(v6('2001:db8:aaaa:bbbb::'), 64);
  t.equal(q('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), 60, 'the /64 falls back to the /60 in the middle of a byte');
  lpm.delete(v6('2001:db8:aaaa:bbb0::'), 60);
  t.equal(q('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), 56);
  // a deep rule under no covering rule but /0, deleted at once: several levels collapse in one delete
  const used = lpm.tbl8sUsed;
  lpm.add(v6('3fff:1:2:3:4:5:6:7'), 128, 128);
  t.equal(lpm.tbl8sUsed, used + 13, 'a lone /128 elsewhere: 13 new groups');
  lpm.delete(v6('3fff:1:2:3:4:5:6:7'), 128);
  t.equal(lpm.tbl8sUsed, used, 'and all 13 freed by its delete');
  t.equal(q('3fff:1:2:3:4:5:6:7'), 1, 'the /0 answers again');
  // next hop extremes, host bits ignored, updates
  lpm.add(v6('2001:db8:1::ffff'), 48, 0);
  t.equal(q('2001:db8:1::1'), 0, 'next hop 0 is a route; host bits of the rule ignored');
  lpm.add(v6('2001:db8:1::'), 48, MAX_HOP);
  t.equal(q('2001:db8:1::1'), MAX_HOP, 'next hop 2^24 - 1, an update');
  t.equal(lpm.isRulePresent(v6('2001:db8:1:ff::'), 48), MAX_HOP, 'isRulePresent masks the address');
  t.equal(lpm.delete(v6('2001:db8:2::'), 48), false, 'deleting a rule that is not there: false');
  t.ok(lpm.delete(v6('::'), 0));
  t.equal(q('ffff::1'), -1, 'without /0: no route');
  // lookup reads the address where it is
  const pkt = new Uint8Array(40);
  pkt.set(v6('2001:db8:1::5'), 24); // an IPv6 header's destination address
  t.equal(lpm.lookup(pkt, 24), MAX_HOP, 'lookup at an offset (a packet\'s destination address)');
});

t.test('limits: a full rules table and exhausted tbl8 groups throw LpmFullError naming the option, with the table unchanged', async (t) => {
  const lpm = Lpm6.create('tsp_limits6', { maxRules: 4, numberTbl8s: 14 });
  lpm.add(v6('2001:db8::'), 32, 1);
  lpm.add(v6('2001:db8::1'), 128, 2);
  t.equal(lpm.tbl8sUsed, 13);
  const probes = ['2001:db8::1', '2001:db8::2', '2001:db9::', '2002::1'].map(v6);
  const snapshot = (): number[] => probes.map((p) => lpm.lookup(p));
  const before = snapshot();
  const err = t.throws(() => lpm.add(v6('2002::1'), 128, 3)) as LpmFullError;
  t.ok(err instanceof LpmFullError);
  t.equal(err.limit, 'numberTbl8s');
  t.match(err.message, /^lpm6 "tsp_limits6": cannot add 2002::1\/128: it needs 13 more tbl8 groups: 13 of 14 are in use, 1 free; raise numberTbl8s \(14\) in Lpm6\.create$/, 'how many it needed, which option');
  t.same(snapshot(), before, 'lookups unchanged');
  t.equal(lpm.tbl8sUsed, 13, 'no group taken');
  t.equal(lpm.rules, 2, 'no rule added');
  lpm.add(v6('2001:db8::3'), 128, 3);
  t.equal(lpm.lookup(v6('2001:db8::3')), 3, 'a /128 sharing the existing chain needs no group');
  lpm.add(v6('2002::'), 32, 4);
  t.equal(lpm.tbl8sUsed, 14, 'a /32 elsewhere takes the last group');
  const full = t.throws(() => lpm.add(v6('2003::'), 16, 5)) as LpmFullError;
  t.equal(full.limit, 'maxRules');
  t.match(full.message, /^lpm6 "tsp_limits6": cannot add 2003::\/16: the rules table is full \(maxRules 4\); raise maxRules in Lpm6\.create$/);
  lpm.add(v6('2002::'), 32, 6);
  t.equal(lpm.lookup(v6('2002::1')), 6, 'a full table still takes next-hop updates');
});

t.test('bad input: clear one-line errors', async (t) => {
  const lpm = Lpm6.create('tsp_bad6', { maxRules: 10, numberTbl8s: 1 });
  t.throws(() => lpm.add(v6('::'), 129, 1), /^lpm6 "tsp_bad6": depth 129 must be a whole number from 0 to 128$/, 'depth 129');
  t.throws(() => lpm.delete(v6('::'), -1), /depth -1 must be/, 'depth -1');
  t.throws(() => lpm.add(v6('::'), 8, 2 ** 24), /next hop 16777216 must be a whole number from 0 to 16777215/, 'next hop 2^24');
  t.throws(() => lpm.add(new Uint8Array(4), 8, 1), /^lpm6 "tsp_bad6": an address is a Uint8Array of 16 bytes \(parseIpv6 makes one\), not 4 bytes$/, '4 bytes');
  t.throws(() => lpm.add([1, 2] as unknown as Uint8Array, 8, 1), /an address is a Uint8Array of 16 bytes \(parseIpv6 makes one\), not object/, 'an array');
  t.throws(() => Lpm6.create('x', { maxRules: 1, numberTbl8s: 2 ** 21 + 1 }), /numberTbl8s 2097153 must be a whole number from 0 to 2097152/, 'too many groups');
  const ro = Lpm6.attach(lpm.desc);
  t.throws(() => ro.add(v6('::'), 8, 1), /^lpm6 "tsp_bad6": add on a table attached read-only \(Lpm6\.attach\); routes change on the thread that created it$/);
  t.throws(() => Lpm6.attach({ ...lpm.desc, numberTbl8s: 2 }), /does not describe an LPM6 table/);
  t.equal(lpm.rules, 0, 'nothing was added');
  // the text helpers
  t.same([...v6('2001:db8::1')], [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  t.same([...v6('::ffff:192.0.2.1')], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1], 'a dotted IPv4 tail');
  t.same([...v6('1:2:3:4:5:6:7:8')], [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]);
  t.same([...v6('::')], new Array(16).fill(0));
  t.equal(formatIpv6(v6('2001:0db8:0000:0000:0001:0000:0000:0001')), '2001:db8::1:0:0:1', 'RFC 5952: the first of two equal zero runs');
  t.equal(formatIpv6(v6('2001:db8:0:1:1:1:1:1')), '2001:db8:0:1:1:1:1:1', 'RFC 5952: one zero group is not shortened');
  t.equal(formatIpv6(v6('FE80::A')), 'fe80::a', 'lower case');
  t.equal(formatIpv6Prefix(v6('2001:db8::'), 32), '2001:db8::/32');
  t.same(parseIpv6Prefix('2001:db8::1/64').depth, 64);
  for (const [bad, why] of [
    ['1:2:3:4:5:6:7:8:9', /9 groups, not 8/], ['1:2:3', /3 groups, not 8/], ['1::2::3', /more than one "::"/], [':::', /more than one "::"/],
    ['g::1', /"g" is not a group of 1-4 hex digits/], ['12345::', /"12345" is not a group of 1-4 hex digits/], ['1:2:3:4:5:6:7::8', /8 groups and "::" make more than 8/],
    ['::ffff:1.2.3', /"1\.2\.3" is not a dotted IPv4 tail/], ['1:', /an empty group/], ['', /0 groups, not 8/],
  ] as Array<[string, RegExp]>) {
    t.throws(() => v6(bad), new RegExp(`^"${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}" is not an IPv6 address: ${why.source} \\(e\\.g\\. 2001:db8::1\\)$`), `"${bad}"`);
  }
  t.throws(() => parseIpv6Prefix('2001:db8::/129'), /^"2001:db8::\/129": prefix length "129" must be a whole number from 0 to 128$/, 'a prefix length of 129');
  t.throws(() => parseIpv6Prefix('2001:db8::'), /is not an IPv6 prefix \(expected addr\/len, e\.g\. 2001:db8::\/32\)/, 'no length');
  t.throws(() => parseIpv6Prefix('2001:db8::/6x'), /prefix length "6x" must be/, 'a bad length');
});

t.test('QSBR: unlinked groups (several levels at once) are reused only after every online reader passed a quiescent point', async (t) => {
  const lpm = Lpm6.create('tsp_qsbr6', { maxRules: 10, numberTbl8s: 13, reclaimWaitMs: 30 });
  const reader = Lpm6.attach(lpm.desc);
  reader.readerOnline(7);
  lpm.add(v6('2001:db8::1'), 128, 1);
  t.equal(lpm.tbl8sUsed, 13);
  t.ok(lpm.delete(v6('2001:db8::1'), 128));
  t.equal(lpm.tbl8sWaiting, 13, 'all 13 groups wait for reader 7');
  t.equal(reader.lookup(v6('2001:db8::1')), -1, 'no route now');
  const err = t.throws(() => lpm.add(v6('2001:db8::2'), 128, 2)) as LpmFullError;
  t.match(err.message, /needs 13 more tbl8 groups: 13 unlinked groups wait for reader 7, which has not passed a quiescent point for 30 ms/, 'the error names the reader');
  t.equal(lpm.add(v6('2001:db8::'), 24, 3), undefined, 'a /24 needs no group');
  reader.readerQuiescent(7);
  lpm.add(v6('2001:db8::2'), 128, 2);
  t.equal(reader.lookup(v6('2001:db8::2')), 2, 'after the quiescent point the groups are reused');
  reader.readerOffline(7);
  t.ok(lpm.delete(v6('2001:db8::2'), 128));
  t.equal(lpm.tbl8sWaiting, 0, 'no reader online: free at once');
});

/**
 * The concurrent run: blocks 2001:db8:x::/48 (x = 0..63) of four kinds, each toggled by the
 * writer, so that every probe has exactly two legal answers at any time (2001:db8::/32 covers all):
 *  - A (x % 4 = 0): the /48 stays; a /56 (x:100::/56) comes and goes: one group made and freed.
 *  - B (x % 4 = 1): no /48; a /64 (x:200::/64) comes and goes: two groups made and freed.
 *  - C (x % 4 = 2): the /48 and a /60 (x:300::/60) stay; the /128 x:300::1 comes and goes: eight
 *    groups (bytes 8-15) made and freed in one add and one delete.
 *  - D (x % 4 = 3): the /48 itself comes and goes (an entry of a shared group).
 * Hops are unique per block and role, and the groups free for toggling (24) are far fewer than
 * the toggles could use, so groups are reused all the time.
 */
function buildConcurrent(online: boolean): { lpm: Lpm6; arg: CheckerArg; toggle: (x: number) => number; state: Uint8Array } {
  const blocks = 64, perBlock = 32, n = blocks * perBlock;
  // (test/lpm/lpm.test.ts has a control run of the same design without QSBR, which shows wrong answers)
  // shared: bytes 3, 4, 5 (3 groups); each C block holds bytes 6 and 7 (32 groups); 24 to toggle with
  const lpm = Lpm6.create(`tsp_conc6_${online ? 'on' : 'off'}`, { maxRules: 1000, numberTbl8s: 3 + 32 + 24, reclaimWaitMs: 2000 });
  const probes = new Uint8Array(new SharedArrayBuffer(n * 16));
  const legalA = new Int32Array(new SharedArrayBuffer(n * 4)), legalB = new Int32Array(new SharedArrayBuffer(n * 4));
  const blk = (x: number, b6: number, b7: number, last: number): Uint8Array => {
    const a = v6('2001:db8::');
    a[5] = x;
    a[6] = b6;
    a[7] = b7;
    a[15] = last;
    return a;
  };
  const hop = (x: number, role: number): number => 1000 + x * 8 + role;
  const top = 7;
  lpm.add(v6('2001:db8::'), 32, top);
  for (let x = 0; x < blocks; x++) {
    const kind = x % 4;
    if (kind === 0 || kind === 2) lpm.add(blk(x, 0, 0, 0), 48, hop(x, 0));
    if (kind === 2) lpm.add(blk(x, 3, 0, 0), 60, hop(x, 2));
    for (let p = 0; p < perBlock; p++) {
      const i = x * perBlock + p;
      let a: Uint8Array, l: [number, number];
      if (kind === 0) {
        const inside = p < 16;
        a = blk(x, inside ? 1 : 0x10 + p, p, p);
        l = inside ? [hop(x, 0), hop(x, 1)] : [hop(x, 0), hop(x, 0)];
      } else if (kind === 1) {
        const inside = p < 16;
        a = blk(x, 2, inside ? 0 : p, p);
        l = inside ? [top, hop(x, 1)] : [top, top];
      } else if (kind === 2) {
        a = p < 8 ? blk(x, 3, 0, 1) : p < 16 ? blk(x, 3, p, p) : blk(x, 0x20 + p, 0, p);
        l = p < 8 ? [hop(x, 2), hop(x, 3)] : p < 16 ? [hop(x, 2), hop(x, 2)] : [hop(x, 0), hop(x, 0)];
      } else {
        a = blk(x, p, p, p);
        l = [top, hop(x, 0)];
      }
      probes.set(a, i * 16);
      [legalA[i], legalB[i]] = l;
    }
  }
  const state = new Uint8Array(blocks);
  /** Toggle block x; returns the groups it now holds beyond the permanent ones (+ on, - off). */
  const toggle = (x: number): number => {
    const kind = x % 4, on = state[x] === 1;
    state[x] ^= 1;
    if (kind === 0) {
      if (on) lpm.delete(blk(x, 1, 0, 0), 56);
      else lpm.add(blk(x, 1, 0, 0), 56, hop(x, 1));
      return on ? -1 : 1;
    }
    if (kind === 1) {
      if (on) lpm.delete(blk(x, 2, 0, 0), 64);
      else lpm.add(blk(x, 2, 0, 0), 64, hop(x, 1));
      return on ? -2 : 2;
    }
    if (kind === 2) {
      if (on) lpm.delete(blk(x, 3, 0, 1), 128);
      else lpm.add(blk(x, 3, 0, 1), 128, hop(x, 3));
      return on ? -8 : 8;
    }
    if (on) lpm.delete(blk(x, 0, 0, 0), 48);
    else lpm.add(blk(x, 0, 0, 0), 48, hop(x, 0));
    return 0;
  };
  const arg: CheckerArg = {
    desc: lpm.desc, probes: probes.buffer as SharedArrayBuffer, n, legalA: legalA.buffer as SharedArrayBuffer, legalB: legalB.buffer as SharedArrayBuffer,
    seen: new SharedArrayBuffer(n), ready: new SharedArrayBuffer(4), readerId: 2, online,
  };
  return { lpm, arg, toggle, state };
}

/** Toggle random blocks for ms, keeping the groups the toggled-on rules hold within the 24 there are. */
function writeFor(ms: number, rnd: () => number, toggle: (x: number) => number, state: Uint8Array): number {
  const need = [1, 2, 8, 0];
  const end = performance.now() + ms;
  let n = 0, held = 0;
  while (performance.now() < end) {
    for (let k = 0; k < 100; k++) {
      const x = Math.floor(rnd() * 64);
      if (state[x] === 0 && held + need[x % 4] > 24) continue;
      held += toggle(x);
      n++;
    }
  }
  return n;
}

/** Run the reader lcore against the writer for ms (concurrent.ts), on a new table. */
function run(online: boolean, ms: number, seed: number): Promise<ConcurrentRun<Lpm6>> {
  const { lpm, arg, toggle, state } = buildConcurrent(online);
  return runConcurrent(lcoresOnce(), 'lpm6Checker', lpm, arg, ms, seed, (ms, rnd) => writeFor(ms, rnd, toggle, state));
}
t.teardown(closeLcores);

t.test('concurrent: a worker lcore looks up while the main thread adds and deletes; every answer is the old or the new next hop', async (t) => {
  checkConcurrent(t, await run(true, 2000, SEED ^ 0x5bd1e995));
});

t.test('lookupBulk and lookup allocate nothing (a burst of 32 per operation, in a worker)', async (t) => {
  const lpm = Lpm6.create('tsp_alloc6', { maxRules: 100_000, numberTbl8s: 16_384 });
  const rnd = prng(SEED ^ 0x1234567);
  const ref = new Ref6();
  for (const [a, d, h] of randomRoutes(rnd, 3000, providerBases(rnd))) {
    lpm.add(a, d, h);
    ref.add(a, d, h);
  }
  const ips = new Uint8Array(new SharedArrayBuffer(1024 * 16));
  ips.set(probeAddresses(rnd, ref, 1024));
  const arg: BulkOpArg = { desc: lpm.desc, ips: ips.buffer as SharedArrayBuffer };
  const rule = { ...ALLOC_RULE, warmOps: 20_000, windowOps: 100_000 };
  const r = await measureInWorker(WORKERS, 'lpm6BulkOp', arg, rule);
  assertNoAlloc(t, r, 'IPv6 lookupBulk x2 + lookup + readerQuiescent per operation', rule);
});
