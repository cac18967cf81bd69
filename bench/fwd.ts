/**
 * Forwarding benchmark: tspmd l2fwd on two net_null ports with one forwarding lcore, and DPDK's
 * testpmd in mac forwarding mode on two net_null ports with one forwarding core, in the same run.
 * Both figures are the sum of the two ports' RX rates, median per-second/period rate after warm-up.
 * Options: --rounds N (pairs of runs, default 3), --quick (one round of 4 s).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dpdkNullMacFwd } from './dpdk.js';

/** Run l2fwd as a user would (the tspmd command) and return its JSON summary. */
export function runL2fwdNull(seconds: number): { steady_rx_mpps: number; worker_gc_count: number; total_rx_mpps: number } {
  const cli = fileURLToPath(new URL('../app/tspmd.js', import.meta.url));
  const out = execFileSync(process.execPath, [
    cli, 'l2fwd', '--no-huge', '-l', '0-1', '--main-lcore', '0', '--file-prefix', `tspbench${process.pid}`,
    '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '--duration', String(seconds), '--json',
  ], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const last = out.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as { steady_rx_mpps: number; worker_gc_count: number; total_rx_mpps: number };
}

/** The median of xs (the mean of the middle two for an even count). */
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b), h = s.length >> 1;
  return s.length % 2 === 1 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/**
 * The fwd figures (see bench/run.ts for the contract): `--rounds N` (default 3) pairs of runs,
 * DPDK then tspmd in each, so that the machine's drift over minutes falls on both alike; every
 * round's ratio is reported, and the headline figures are the medians.
 */
export async function run(args: string[]): Promise<Record<string, number | number[]>> {
  const quick = args.includes('--quick');
  const seconds = quick ? 4 : 10;
  const ri = args.indexOf('--rounds');
  const rounds = ri >= 0 ? Number(args[ri + 1]) : quick ? 1 : 3;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new Error(`--rounds takes a whole number from 1 to 50, not "${args[ri + 1]}"`);
  const dpdk: number[] = [], tspmd: number[] = [], ratios: number[] = [];
  let gcs = 0;
  for (let r = 1; r <= rounds; r++) {
    console.log(`round ${r}/${rounds}: DPDK testpmd, mac forwarding, 2 x net_null, 1 forwarding core, ${seconds} s ...`);
    const d = await dpdkNullMacFwd(seconds);
    console.log(`  dpdk: ${d.toFixed(1)} Mpps`);
    console.log(`round ${r}/${rounds}: tspmd l2fwd, 2 x net_null, 1 forwarding lcore, ${seconds} s ...`);
    const t = runL2fwdNull(seconds);
    console.log(`  tspmd: ${t.steady_rx_mpps.toFixed(1)} Mpps (whole run incl. warm-up ${t.total_rx_mpps.toFixed(1)}), worker GCs after the first second: ${t.worker_gc_count}`);
    dpdk.push(Number(d.toFixed(2)));
    tspmd.push(t.steady_rx_mpps);
    ratios.push(Number((t.steady_rx_mpps / d).toFixed(3)));
    gcs += t.worker_gc_count;
    console.log(`  ratio tspmd/dpdk: ${(t.steady_rx_mpps / d).toFixed(2)}`);
  }
  const ratio = median(ratios);
  console.log(`ratios ${ratios.join(' ')}; median ${ratio.toFixed(3)} (tspmd ${median(tspmd).toFixed(1)} Mpps, dpdk ${median(dpdk).toFixed(1)} Mpps, medians of ${rounds})`);
  return {
    tspmd_mpps: Number(median(tspmd).toFixed(3)), dpdk_mpps: Number(median(dpdk).toFixed(2)), ratio: Number(ratio.toFixed(3)),
    worker_gc_count: gcs, rounds, ratios, tspmd_runs_mpps: tspmd, dpdk_runs_mpps: dpdk,
  };
}
