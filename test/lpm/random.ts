/**
 * The middle of the random-routes tests of lpm.test.ts and lpm6.test.ts, which do the same to
 * either table against its reference: delete 40 % of the rules in random order and compare,
 * then re-add some, add new ones, delete more and compare again.
 */
import type { Test } from 'tap';

/** A table as the random test drives it (Lpm or Lpm6), A its address type. */
export interface RandomTable<A> {
  add(a: A, d: number, h: number): void;
  delete(a: A, d: number): boolean;
  readonly rules: number;
  readonly tbl8sUsed: number;
  readonly tbl8sWaiting: number;
}

/** What the random test needs of one address family: table, reference, and how to make and compare addresses (P: a probe buffer). */
export interface RandomKit<A, P> {
  lpm: RandomTable<A>;
  ref: { add(a: A, d: number, h: number): void; delete(a: A, d: number): boolean; readonly size: number; rules(): Array<[A, number]>; groups(): number };
  rnd: () => number;
  maxHop: number;
  /** the default route's address (::, 0.0.0.0) */
  any: A;
  randomRoutes(n: number): Array<[A, number, number]>;
  /** n probe addresses, most covered by the reference's rules */
  probes(n: number): P;
  /** the first n addresses of p */
  head(p: P, n: number): P;
  compare(p: P): { diffs: number; examples: string[]; expected: Int32Array };
  /** what the group count after the deletes shows */
  groupsFreed: string;
  /** how a fall-back count is worded ("of the addresses", "addresses") */
  fellBackOf: string;
}

/**
 * Delete 40 % of the rules (the default route among them) and compare the first 500,000 of addrs
 * against before (their answers after the adds); then re-add, add and delete more and compare
 * 500,000 new probes. Returns those probes and their comparison.
 */
export function deleteAndReAdd<A, P>(t: Test, k: RandomKit<A, P>, addrs: P, before: Int32Array): { addrs: P; r: { diffs: number; examples: string[] } } {
  const { lpm, ref, rnd } = k;
  const rules = ref.rules();
  for (let i = rules.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [rules[i], rules[j]] = [rules[j], rules[i]];
  }
  const doomed = rules.slice(0, Math.floor(rules.length * 0.4));
  doomed.push([k.any, 0]);
  let ok = 0, missing = 0;
  let t0 = performance.now();
  for (const [a, d] of doomed) {
    const want = ref.delete(a, d);
    if (lpm.delete(a, d) === want) ok++;
    if (!want) missing++;
  }
  t.equal(ok, doomed.length, `delete returns whether the rule was there (${doomed.length} deletes, ${missing} of a rule already gone)`);
  t.comment(`${doomed.length} deletes in ${(performance.now() - t0).toFixed(0)} ms; ${lpm.tbl8sUsed} groups left`);
  t.equal(lpm.rules, ref.size, 'rule count after the deletes');
  t.equal(lpm.tbl8sUsed, ref.groups(), k.groupsFreed);
  t.equal(lpm.tbl8sWaiting, 0, 'with no reader online a freed group is free at once');
  let r = k.compare(k.head(addrs, 500_000));
  t.equal(r.diffs, 0, `after the deletes: no difference in 500,000 lookups ${r.examples.join('; ')}`);
  let fellBack = 0, toNone = 0;
  for (let i = 0; i < r.expected.length; i++) if (before[i] !== r.expected[i]) r.expected[i] >= 0 ? fellBack++ : toNone++;
  t.ok(fellBack > 10_000, `deletes fell back to shorter prefixes (${fellBack} ${k.fellBackOf} now answer a shorter rule, ${toNone} no route)`);

  // Re-add some, add new ones, delete more.
  t0 = performance.now();
  for (const [a, d] of doomed.slice(0, 20_000)) {
    const h = Math.floor(rnd() * (k.maxHop + 1));
    lpm.add(a, d, h);
    ref.add(a, d, h);
  }
  for (const [a, d, h] of k.randomRoutes(20_000)) {
    lpm.add(a, d, h);
    ref.add(a, d, h);
  }
  let agree = 0;
  for (const [a, d] of rules.slice(doomed.length, doomed.length + 20_000)) if (lpm.delete(a, d) === ref.delete(a, d)) agree++;
  t.equal(agree, 20_000, 'the second round of deletes agrees with the reference');
  t.comment(`40,000 adds and 20,000 deletes in ${(performance.now() - t0).toFixed(0)} ms`);
  const next = k.probes(500_000);
  r = k.compare(next);
  t.equal(r.diffs, 0, `after re-adds and more deletes: no difference in 500,000 lookups ${r.examples.join('; ')}`);
  return { addrs: next, r };
}

/**
 * Add routes, then 2000 next-hop updates of random ones, check the rule and group counts (the
 * messages say what each shows), and compare 1,000,000 probes. Returns the probes and their answers.
 */
export function addAndCompare<A, P>(t: Test, k: RandomKit<A, P>, routes: Array<[A, number, number]>, rulesSaid: string, groupsSaid: string): { addrs: P; before: Int32Array } {
  const { lpm, ref, rnd } = k;
  let t0 = performance.now();
  for (const [a, d, h] of routes) {
    lpm.add(a, d, h);
    ref.add(a, d, h);
  }
  // next-hop updates of existing rules
  for (let i = 0; i < 2000; i++) {
    const [a, d] = routes[Math.floor(rnd() * routes.length)];
    const h = Math.floor(rnd() * (k.maxHop + 1));
    lpm.add(a, d, h);
    ref.add(a, d, h);
  }
  t.comment(`${routes.length} adds and 2000 updates in ${(performance.now() - t0).toFixed(0)} ms; ${ref.size} distinct rules, ${lpm.tbl8sUsed} tbl8 groups`);
  t.equal(lpm.rules, ref.size, rulesSaid);
  t.equal(lpm.tbl8sUsed, ref.groups(), groupsSaid);
  const addrs = k.probes(1_000_000);
  t0 = performance.now();
  const r = k.compare(addrs);
  t.comment(`1,000,000 lookups (single, bulk, bulk into u32) compared in ${(performance.now() - t0).toFixed(0)} ms`);
  t.equal(r.diffs, 0, `after the adds: no difference in 1,000,000 lookups ${r.examples.join('; ')}`);
  return { addrs, before: r.expected };
}
