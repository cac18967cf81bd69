/**
 * Worker code for test/lpm: a reader lcore that looks up a set of probe addresses continuously and
 * checks every answer against the two answers each probe may legally have (the old and the new
 * next hop of whatever the writer toggles), and the allocation probes of the bulk lookups
 * (test/alloc.ts measureInWorker).
 */
import { Lpm, type LpmDesc } from '../../lib/lpm/lpm.js';
import { Lpm6, type Lpm6Desc } from '../../lib/lpm/lpm6.js';
import type { LcoreContext } from '../../src/lcore/types.js';
import type { AllocOp } from '../alloc.js';

/** Argument of lpmChecker / lpm6Checker. */
export interface CheckerArg {
  desc: LpmDesc | Lpm6Desc;
  /** v4: Uint32Array of n addresses; v6: Uint8Array of n * 16 bytes; n a multiple of 32 */
  probes: SharedArrayBuffer;
  n: number;
  /** Int32Array(n) each: the two legal answers of each probe */
  legalA: SharedArrayBuffer;
  legalB: SharedArrayBuffer;
  /** Uint8Array(n): bit 0 set once a probe answered legalA, bit 1 once legalB */
  seen: SharedArrayBuffer;
  /** Int32Array(1): set to 1 once the reader is online and looking up */
  ready: SharedArrayBuffer;
  readerId: number;
  /** register with QSBR (readerOnline); false only to show what happens without it */
  online: boolean;
}

/** What a checker saw. */
export interface CheckerResult {
  lookups: number;
  bursts: number;
  violations: number;
  /** the first few wrong answers: probe index, what came back, the two legal answers */
  examples: Array<{ probe: number; got: number; legal: [number, number] }>;
}

/** Check the burst out[off..off+k) against the legal answers; returns the violations, recording the first few. */
function check(out: Int32Array, off: number, k: number, a: Int32Array, b: Int32Array, seen: Uint8Array, r: CheckerResult): number {
  let bad = 0;
  for (let i = off; i < off + k; i++) {
    const v = out[i];
    if (v === a[i]) seen[i] |= 1;
    else if (v === b[i]) seen[i] |= 2;
    else {
      bad++;
      if (r.examples.length < 5) r.examples.push({ probe: i, got: v, legal: [a[i], b[i]] });
    }
  }
  return bad;
}

/** A table attached in this worker with its probe addresses: what the checker and the allocation probes run on either table. */
interface Probed {
  /** lookupBulk of probes [off, off + n) into out */
  bulk(out: Int32Array | Uint32Array, n: number, off: number): void;
  /** lookup of probe i */
  one(i: number): number;
  online(id: number): void;
  quiescent(id: number): void;
  offline(id: number): void;
}

/** The IPv4 table and addresses: probes is a Uint32Array. */
function probed4(desc: LpmDesc | Lpm6Desc, probes: SharedArrayBuffer): Probed {
  const lpm = Lpm.attach(desc as LpmDesc), ips = new Uint32Array(probes);
  return {
    bulk: (out, n, off) => lpm.lookupBulk(ips, out, n, off),
    one: (i) => lpm.lookup(ips[i]),
    online: (id) => lpm.readerOnline(id),
    quiescent: (id) => lpm.readerQuiescent(id),
    offline: (id) => lpm.readerOffline(id),
  };
}

/** The IPv6 table and addresses: probes is a Uint8Array of 16 bytes each. */
function probed6(desc: LpmDesc | Lpm6Desc, probes: SharedArrayBuffer): Probed {
  const lpm = Lpm6.attach(desc as Lpm6Desc), ips = new Uint8Array(probes);
  return {
    bulk: (out, n, off) => lpm.lookupBulk(ips, out, n, off),
    one: (i) => lpm.lookup(ips, i * 16),
    online: (id) => lpm.readerOnline(id),
    quiescent: (id) => lpm.readerQuiescent(id),
    offline: (id) => lpm.readerOffline(id),
  };
}

/** The reader loop: bursts of 32 with lookupBulk, one single lookup per burst, a quiescent point between bursts. */
function checker(t: Probed, arg: CheckerArg, ctx: LcoreContext): CheckerResult {
  const a = new Int32Array(arg.legalA), b = new Int32Array(arg.legalB);
  const seen = new Uint8Array(arg.seen), out = new Int32Array(arg.n), n = arg.n, id = arg.readerId;
  const r: CheckerResult = { lookups: 0, bursts: 0, violations: 0, examples: [] };
  if (arg.online) t.online(id);
  Atomics.store(new Int32Array(arg.ready), 0, 1);
  let off = 0;
  while (Atomics.load(ctx.control, 0) === 0) {
    t.bulk(out, 32, off);
    r.violations += check(out, off, 32, a, b, seen, r);
    // one single lookup too, of a probe of the burst (not the same one every time)
    const j = off + (r.bursts & 31);
    out[j] = t.one(j);
    r.violations += check(out, j, 1, a, b, seen, r);
    r.lookups += 33;
    r.bursts++;
    t.quiescent(id);
    off += 32;
    if (off >= n) off = 0;
  }
  if (arg.online) t.offline(id);
  return r;
}

/** The reader lcore for the IPv4 table (checker). */
export function lpmChecker(arg: CheckerArg, ctx: LcoreContext): CheckerResult {
  return checker(probed4(arg.desc, arg.probes), arg, ctx);
}

/** The reader lcore for the IPv6 table (checker). */
export function lpm6Checker(arg: CheckerArg, ctx: LcoreContext): CheckerResult {
  return checker(probed6(arg.desc, arg.probes), arg, ctx);
}

/** Argument of the allocation probes: a table and addresses to look up. */
export interface BulkOpArg {
  desc: LpmDesc | Lpm6Desc;
  /** v4: Uint32Array of 1024 addresses; v6: Uint8Array of 1024 * 16 bytes */
  ips: SharedArrayBuffer;
}

/** One operation: a burst of 32 lookups (lookupBulk into an Int32Array and a Uint32Array), a single lookup, a quiescent point. */
function bulkOp(t: Probed): AllocOp {
  const out = new Int32Array(1024), outU = new Uint32Array(1024), sink = new Int32Array(1);
  t.online(5);
  const op: AllocOp = (i) => {
    const off = (i & 31) << 5;
    t.bulk(out, 32, off);
    t.bulk(outU, 32, off);
    sink[0] += t.one(off + 7);
    t.quiescent(5);
  };
  op.close = () => t.offline(5);
  return op;
}

/** The allocation probe of the IPv4 table (bulkOp). */
export function lpmBulkOp(arg: BulkOpArg): AllocOp {
  return bulkOp(probed4(arg.desc, arg.ips));
}

/** The allocation probe of the IPv6 table (bulkOp). */
export function lpm6BulkOp(arg: BulkOpArg): AllocOp {
  return bulkOp(probed6(arg.desc, arg.ips));
}
