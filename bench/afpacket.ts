/**
 * af_packet forwarding benchmark over real veth pairs between two network namespaces (root):
 *
 *   generator in ns A  ->  A-side veth  ->  forwarder (af_packet ports)  ->  B-side veth  ->  ns B
 *
 * The same generator (DPDK testpmd txonly, 64-byte frames, ~2 Mpps offered, on CPU 0) feeds each
 * forwarder in turn: tspmd l2fwd on net_af_packet ports, then DPDK testpmd mac forwarding on
 * DPDK's net_af_packet ports, both forwarding on CPU 1. The figure is what the kernel counted
 * arriving in namespace B (rx_packets of B's veth) per second, after a warm-up.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createTopology, type Topology } from '../lib/netns/topology.js';
import { ensureDpdk, ensureHugepages, runTestpmd, TESTPMD_HUGEPAGES } from './dpdk.js';

const WARMUP_S = 4;

function rxB(topo: Topology): number {
  return Number(topo.exec(topo.nsB, ['cat', `/sys/class/net/${topo.ifB}/statistics/rx_packets`]).trim());
}

/** Kernel-counted packets per second into namespace B over `seconds`, after the warm-up. */
async function measureB(topo: Topology, seconds: number): Promise<number> {
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
  const a = rxB(topo), t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  return (rxB(topo) - a) / ((performance.now() - t0) / 1000) / 1e6;
}

/** The DPDK txonly generator in namespace A, addressed to B, for `seconds` in total. */
function generator(topo: Topology, seconds: number): Promise<unknown> {
  const macB = topo.exec(topo.nsB, ['cat', `/sys/class/net/${topo.ifB}/address`]).trim();
  return runTestpmd({
    vdevs: [`net_af_packet0,iface=${topo.ifA}`], forwardMode: 'txonly', seconds, netns: topo.nsA,
    lcores: '0,1', mainLcore: 1, extraApp: ['--txpkts=64', `--eth-peer=0,${macB}`],
  });
}

/** tspmd l2fwd on the host ends for `seconds`. */
function tspmdForwarder(topo: Topology, seconds: number): Promise<void> {
  const cli = fileURLToPath(new URL('../app/tspmd.js', import.meta.url));
  const child = spawn(process.execPath, [cli, 'l2fwd', '--no-huge', '-l', '0-1', '--main-lcore', '0', '--file-prefix', `${topo.prefix}bench`,
    '--vdev', `net_af_packet0,iface=${topo.hostA}`, '--vdev', `net_af_packet1,iface=${topo.hostB}`, '--', '--duration', String(seconds), '--json'],
  { stdio: ['ignore', 'ignore', 'inherit'] });
  return new Promise((resolve, reject) => child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`tspmd l2fwd exited with ${code}`)))));
}

/** DPDK testpmd mac forwarding on its af_packet PMD on the host ends for `seconds`. */
function dpdkForwarder(topo: Topology, seconds: number): Promise<unknown> {
  return runTestpmd({ vdevs: [`net_af_packet0,iface=${topo.hostA}`, `net_af_packet1,iface=${topo.hostB}`], forwardMode: 'mac', seconds, lcores: '0-1', mainLcore: 0 });
}

/** The afpacket figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number>> {
  if (process.getuid?.() !== 0) throw new Error('the afpacket benchmark needs root (network namespaces, veth, AF_PACKET)');
  const seconds = args.includes('--quick') ? 5 : 10;
  ensureDpdk();
  const restore = ensureHugepages(2 * TESTPMD_HUGEPAGES);
  const topo = createTopology();
  try {
    const total = WARMUP_S + seconds + 4;
    // Alternate the forwarders, twice each (once with --quick): the kernel-bound figures vary.
    const rounds = args.includes('--quick') ? 1 : 2;
    const t: number[] = [], d: number[] = [];
    for (let r = 0; r < rounds; r++) {
      console.log(`tspmd l2fwd (net_af_packet) between veths, DPDK txonly generator in ns A, ${seconds} s ...`);
      const g1 = generator(topo, total + 2);
      const f1 = tspmdForwarder(topo, total);
      t.push(await measureB(topo, seconds));
      await Promise.all([f1, g1]);
      console.log(`  tspmd: ${t[r].toFixed(3)} Mpps into namespace B`);
      console.log(`DPDK testpmd mac (net_af_packet) between the same veths, same generator, ${seconds} s ...`);
      const g2 = generator(topo, total + 2);
      const f2 = dpdkForwarder(topo, total);
      d.push(await measureB(topo, seconds));
      await Promise.all([f2, g2]);
      console.log(`  dpdk: ${d[r].toFixed(3)} Mpps into namespace B`);
    }
    const mean = (x: number[]): number => x.reduce((a, b) => a + b, 0) / x.length;
    const tspmd = mean(t), dpdk = mean(d);
    const ratio = tspmd / dpdk;
    console.log(`tspmd ${tspmd.toFixed(3)} Mpps, dpdk ${dpdk.toFixed(3)} Mpps (mean of ${rounds}), ratio tspmd/dpdk: ${ratio.toFixed(2)}`);
    return { tspmd_mpps: Number(tspmd.toFixed(3)), dpdk_mpps: Number(dpdk.toFixed(3)), ratio: Number(ratio.toFixed(3)) };
  } finally {
    topo.destroy();
    restore();
  }
}

