/**
 * Benchmark runner: `npm run bench -- <name> [--json] [options]`. Each benchmark is bench/<name>.ts
 * exporting run(args) that prints progress and returns its figures (snake_case, unit in the name);
 * with --json the last line of output is those figures as one JSON object.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BENCHES: Record<string, string> = {
  ring: 'ring buffer: two pinned workers SP/SC burst 32 (M entries/s); bulk 32 beside DPDK ring_perf_autotest, rounds alternating (ratio per round, median); one-thread enqueue+dequeue (ns/entry)',
  mempool: 'mempool bulk alloc+free with per-lcore cache (ns/object)',
  fwd: 'l2fwd on two net_null ports beside DPDK testpmd mac forwarding (Mpps, ratio)',
  'fwd-parts': 'per-packet cost of the forwarding path\'s parts on one lcore: alloc/free, mbuf init, net_null rx/tx, capture hook, loop, MAC rewrite (ns/packet)',
  afpacket: 'l2fwd on af_packet ports between two namespaces beside DPDK testpmd (Mpps, ratio; root)',
  afxdp: 'l2fwd on af_xdp ports between two namespaces beside DPDK testpmd on af_xdp and tspmd on af_packet, AF_XDP generator (Mpps, ratios; root)',
  virtio: 'emulated virtio-net device generating -> virtio PMD receiving, two processes, beside DPDK vhost/virtio_user (Mpps, ratio)',
  vswitch: 'a switch on one core between a guest\'s virtio-net over vfio-user and net_null, both directions (net_virtio_emu + l2fwd beside net_vhost + testpmd mac, virtio_user guest), rounds alternating (Mpps, median ratios)',
  'metrics-load': 'l2fwd on two net_null ports unloaded vs. with 2,000 TCP connections to --metrics-port and 100 telemetry clients (Mpps, ratio; slowest fresh answers)',
  hash: 'hash table bulk lookups, 16-byte keys, table 75 % full, beside DPDK hash_perf_autotest\'s cell (without locks, primary or secondary, 8-byte data, no pre-computed hash, Lookup_bulk), rounds alternating (ns per lookup, ratio)',
  l3fwd: 'tspmd l3fwd (LPM, one lcore) beside DPDK 22.11 l3fwd built from dpdk-doc with no RX offloads, net_pcap infinite RX of IPv4 to the default routes, rounds alternating (Mpps, median ratio)',
  kick: 'virtio doorbell write: mapped store vs vfio-user REGION_WRITE fallback vs pwrite floor (ns per kick)',
  lpm: 'IPv4 LPM lookups (single, bulk 32, x4) on DPDK lpm_perf_autotest\'s table beside it, rounds alternating (M lookups/s, ratio per round, median); IPv6 beside lpm6_perf_autotest; build time and memory of 1,000,000 IPv4 prefixes',
};

/** What every benchmark module exports. */
export interface BenchModule {
  run(args: string[]): Promise<Record<string, number | string | boolean | number[]>>;
}

function usage(): string {
  return `usage: npm run bench -- <name> [--json] [options]\n\nbenchmarks:\n${Object.entries(BENCHES).map(([n, d]) => `  ${n.padEnd(10)} ${d}`).join('\n')}`;
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const rest = args.filter((a) => a !== '--json');
  const name = rest.shift();
  if (!name || name === '--help' || name === '-h') {
    console.log(usage());
    return name ? 0 : 2;
  }
  const here = fileURLToPath(import.meta.url);
  const ext = here.endsWith('.ts') ? '.ts' : '.js';
  const file = new URL(`./${name}${ext}`, import.meta.url);
  if (!(name in BENCHES) || !existsSync(file)) {
    console.error(`unknown benchmark "${name}"\n${usage()}`);
    return 2;
  }
  const mod = (await import(file.href)) as BenchModule;
  const figures = await mod.run(rest);
  if (json) console.log(JSON.stringify(figures));
  return 0;
}

main().then((code) => process.exit(code), (e: unknown) => {
  console.error(e instanceof Error ? e.stack ?? e.message : String(e));
  process.exit(1);
});
