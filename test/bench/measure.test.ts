/**
 * The vswitch and virtio benchmarks' measuring parts, without running a benchmark: sampleRate on
 * a counter that rises at a known rate (and one that never moves), and roundsOptions' --no-tspmd.
 */
import t from 'tap';
import { sampleRate } from '../../bench/virtio-guest.js';
import { roundsOptions } from '../../bench/options.js';

t.test('sampleRate: the median of 1 s periods of a counter rising by 2 M a second is 2 Mpps', async (t) => {
  const t0 = performance.now();
  // Still for the first 300 ms: sampleRate starts once the counter moves.
  const read = (): number => Math.max(0, Math.floor((performance.now() - t0 - 300) * 2000));
  const r = await sampleRate(read, 'a clock counter', 0, 2);
  t.equal(r.periods.length, 2, 'one figure per period');
  t.ok(Math.abs(r.mpps - 2) < 0.1, `2 Mpps within 5 % (got ${r.mpps.toFixed(3)})`);
});

t.test('sampleRate: a counter that never moves is an error naming what was measured', async (t) => {
  await t.rejects(sampleRate(() => 7, 'the quiet switch', 0, 1, 0.3), /the quiet switch: no packets within 0.3 s/);
});

t.test('roundsOptions: --no-tspmd only where the benchmark allows it, and not with --no-dpdk', async (t) => {
  const d = { rounds: 3, quickRounds: 1, maxRounds: 20 };
  t.match(roundsOptions('x', ['--no-tspmd'], 'help', { ...d, noTspmd: true }), { withTspmd: false, withDpdk: true, rounds: 3 });
  t.match(roundsOptions('x', ['--quick'], 'help', { ...d, noTspmd: true }), { withTspmd: true, withDpdk: true, rounds: 1 });
  t.throws(() => roundsOptions('x', ['--no-tspmd'], 'help', d), /x benchmark: unknown option "--no-tspmd"/);
  t.throws(() => roundsOptions('x', ['--no-tspmd', '--no-dpdk'], 'help', { ...d, noTspmd: true }), /leave nothing to measure/);
});
