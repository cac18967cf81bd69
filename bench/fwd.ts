/**
 * Forwarding benchmark: tspmd l2fwd on two net_null ports with one forwarding lcore, and DPDK's
 * testpmd in mac forwarding mode on two net_null ports with one forwarding core, in the same run.
 * Both figures are the sum of the two ports' RX rates, median per-second/period rate after warm-up.
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

/** The fwd figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number>> {
  const seconds = args.includes('--quick') ? 4 : 10;
  console.log(`DPDK testpmd, mac forwarding, 2 x net_null, 1 forwarding core, ${seconds} s ...`);
  const dpdk = await dpdkNullMacFwd(seconds);
  console.log(`  dpdk: ${dpdk.toFixed(1)} Mpps`);
  console.log(`tspmd l2fwd, 2 x net_null, 1 forwarding lcore, ${seconds} s ...`);
  const t = runL2fwdNull(seconds);
  console.log(`  tspmd: ${t.steady_rx_mpps.toFixed(1)} Mpps (whole run incl. warm-up ${t.total_rx_mpps.toFixed(1)}), worker GCs after the first second: ${t.worker_gc_count}`);
  const ratio = t.steady_rx_mpps / dpdk;
  console.log(`ratio tspmd/dpdk: ${ratio.toFixed(2)}`);
  return { tspmd_mpps: t.steady_rx_mpps, dpdk_mpps: Number(dpdk.toFixed(2)), ratio: Number(ratio.toFixed(3)), worker_gc_count: t.worker_gc_count };
}
