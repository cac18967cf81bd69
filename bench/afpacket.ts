/**
 * af_packet forwarding benchmark over real veth pairs between two network namespaces (root):
 *
 *   generator in ns A  ->  A-side veth  ->  forwarder (af_packet ports)  ->  B-side veth  ->  ns B
 *
 * Each generator feeds each forwarder in turn: tspmd l2fwd on net_af_packet ports, then DPDK
 * testpmd mac forwarding on DPDK's net_af_packet ports, both forwarding on CPU 1. The figure is
 * what the kernel counted arriving in namespace B (rx_packets of B's veth) per second, after a
 * warm-up. Two generators, both 64-byte frames on CPU 0:
 *  - `tspmd pktgen` on net_af_packet (the headline figures): it leaves the kernel's delivery into
 *    the forwarder's RX ring, which runs on the generator's CPU, enough room to show what each
 *    forwarder's sockets cost;
 *  - DPDK testpmd txonly on DPDK's net_af_packet (the `dpdkgen_*` figures): its socket also takes
 *    a copy of every frame it sends (no PACKET_IGNORE_OUTGOING), so on 2 vCPUs it saturates CPU 0
 *    by itself and caps both forwarders near its own rate.
 * The kernel-side cost: CPU 0's softirq share (delivery into the forwarder's RX ring and the
 * generator's own frames) while each forwarder runs, from /proc/stat over the measured window.
 */
import { createTopology, type Topology } from '../lib/netns/topology.js';
import { ensureDpdk, ensureHugepages, runTestpmd, TESTPMD_HUGEPAGES } from './dpdk.js';
import { WARMUP_S, macOfB, mean, measureB, r3, roundsOption, tspmdApp } from './veth.js';

type Generator = 'tspmd' | 'dpdk';
type Forwarder = 'tspmd' | 'dpdk';

/** A generator in namespace A addressed to B, 64-byte frames on CPU 0, for `seconds` in total. */
function generator(kind: Generator, topo: Topology, seconds: number): Promise<unknown> {
  const macB = macOfB(topo);
  if (kind === 'tspmd') {
    // lcore 0 (CPU 0) sends; the main lcore 1 only waits
    return tspmdApp(['pktgen', '--no-huge', '-l', '1,0', '--main-lcore', '1', '--file-prefix', `${topo.prefix}gen`,
      '--vdev', `net_af_packet0,iface=${topo.ifA}`, '--', '--duration', String(seconds), '--size', '64', '--dst-mac', macB, '-T', '0'], topo.nsA);
  }
  return runTestpmd({
    vdevs: [`net_af_packet0,iface=${topo.ifA}`], forwardMode: 'txonly', seconds, netns: topo.nsA,
    lcores: '0,1', mainLcore: 1, extraApp: ['--txpkts=64', `--eth-peer=0,${macB}`],
  });
}

/** A forwarder on the host ends for `seconds`: tspmd l2fwd or DPDK testpmd mac, forwarding on CPU 1. */
function forwarder(kind: Forwarder, topo: Topology, seconds: number): Promise<unknown> {
  if (kind === 'tspmd') {
    return tspmdApp(['l2fwd', '--no-huge', '-l', '0-1', '--main-lcore', '0', '--file-prefix', `${topo.prefix}bench`,
      '--vdev', `net_af_packet0,iface=${topo.hostA}`, '--vdev', `net_af_packet1,iface=${topo.hostB}`, '--', '--duration', String(seconds), '-T', '0']);
  }
  return runTestpmd({ vdevs: [`net_af_packet0,iface=${topo.hostA}`, `net_af_packet1,iface=${topo.hostB}`], forwardMode: 'mac', seconds, lcores: '0-1', mainLcore: 0 });
}

/** One measurement: generator and forwarder started together, the rate into B after the warm-up. */
async function once(gen: Generator, fwd: Forwarder, topo: Topology, seconds: number): Promise<{ mpps: number; cpu0SoftirqPct: number }> {
  const total = WARMUP_S + seconds + 4;
  const g = generator(gen, topo, total + 2);
  const f = forwarder(fwd, topo, total);
  const w = await measureB(topo, seconds);
  await Promise.all([f, g]);
  const m = { mpps: w.mpps, cpu0SoftirqPct: w.softirqPct[0] };
  console.log(`  ${gen} generator -> ${fwd} forwarder: ${m.mpps.toFixed(3)} Mpps into namespace B (CPU 0 softirq ${m.cpu0SoftirqPct.toFixed(0)} %)`);
  return m;
}


/** The afpacket figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | string | number[]>> {
  if (process.getuid?.() !== 0) throw new Error('the afpacket benchmark needs root (network namespaces, veth, AF_PACKET)');
  const quick = args.includes('--quick');
  const seconds = quick ? 5 : 8;
  // --rounds N: forwarder pairs per generator. Single runs vary by +-25 % with vCPU placement on
  // this kind of host, so a pair (tspmd, then DPDK, back to back) gives one ratio and the
  // figures are means over the rounds, with every round's ratio reported.
  const rounds = roundsOption(args, quick ? 1 : 4);
  ensureDpdk();
  const restore = ensureHugepages(2 * TESTPMD_HUGEPAGES);
  const topo = createTopology();
  try {
    const res: Record<string, { mpps: number[]; soft: number[] }> = {};
    for (const gen of ['tspmd', 'dpdk'] as const) {
      console.log(`${gen} generator in namespace A (64-byte frames, CPU 0), forwarders on CPU 1, ${seconds} s each after ${WARMUP_S} s, ${rounds} round(s):`);
      for (let r = 0; r < rounds; r++) {
        for (const fwd of ['tspmd', 'dpdk'] as const) {
          const m = await once(gen, fwd, topo, seconds);
          const k = `${gen}/${fwd}`;
          res[k] ??= { mpps: [], soft: [] };
          res[k].mpps.push(m.mpps);
          res[k].soft.push(m.cpu0SoftirqPct);
        }
      }
    }
    const fig = (k: string): number => mean(res[k].mpps);
    const soft = (k: string): number => Number(mean(res[k].soft).toFixed(1));
    const ratios = (gen: string): number[] => res[`${gen}/tspmd`].mpps.map((t, i) => r3(t / res[`${gen}/dpdk`].mpps[i]));
    const ratio = fig('tspmd/tspmd') / fig('tspmd/dpdk'), ratioD = fig('dpdk/tspmd') / fig('dpdk/dpdk');
    for (const [gen, rt] of [['tspmd', ratio], ['dpdk', ratioD]] as const) {
      const rr = ratios(gen);
      console.log(`${gen} generator: tspmd ${fig(`${gen}/tspmd`).toFixed(3)} Mpps, dpdk ${fig(`${gen}/dpdk`).toFixed(3)} Mpps (means of ${rounds}), ratio ${rt.toFixed(2)}; rounds: ${rr.join(' ')} (${Math.min(...rr)}-${Math.max(...rr)})`);
    }
    return {
      generator: 'tspmd pktgen',
      tspmd_mpps: r3(fig('tspmd/tspmd')), dpdk_mpps: r3(fig('tspmd/dpdk')), ratio: r3(ratio), ratios: ratios('tspmd'),
      cpu0_softirq_pct_tspmd: soft('tspmd/tspmd'), cpu0_softirq_pct_dpdk: soft('tspmd/dpdk'),
      dpdkgen_tspmd_mpps: r3(fig('dpdk/tspmd')), dpdkgen_dpdk_mpps: r3(fig('dpdk/dpdk')), dpdkgen_ratio: r3(ratioD), dpdkgen_ratios: ratios('dpdk'),
      dpdkgen_cpu0_softirq_pct_tspmd: soft('dpdk/tspmd'), dpdkgen_cpu0_softirq_pct_dpdk: soft('dpdk/dpdk'),
    };
  } finally {
    topo.destroy();
    restore();
  }
}
