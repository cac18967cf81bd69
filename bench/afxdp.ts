/**
 * af_xdp forwarding benchmark over real veth pairs between two network namespaces (root), the
 * afpacket benchmark's topology:
 *
 *   AF_XDP generator in ns A  ->  A-side veth  ->  forwarder  ->  B-side veth  ->  ns B
 *
 * In each round, three forwarders take turns on CPU 1 behind the same generator on CPU 0: tspmd
 * l2fwd on net_af_xdp ports, DPDK testpmd mac forwarding on DPDK's net_af_xdp ports, and tspmd
 * l2fwd on net_af_packet ports. The figure is what the kernel counted arriving in namespace B
 * (rx_packets of B's veth) per second after a warm-up; the offered rate is what A's veth sent.
 * The generator is an AF_XDP one so that it offers more than the forwarders take: DPDK testpmd
 * txonly on net_af_xdp by default (an independent generator, the same for every forwarder), or
 * `--gen tspmd` for tspmd pktgen on net_af_xdp. Both veth ends run XDP in copy mode (veth has no
 * zero copy), so the gain over af_packet is smaller than on a NIC with zero-copy support.
 *
 *   npm run bench -- afxdp [--json] [--quick] [--rounds N] [--gen dpdk|tspmd] [--devargs K=V,...]
 */
import { createTopology, type Topology } from '../lib/netns/topology.js';
import { ensureDpdk, ensureHugepages, median, runTestpmd, TESTPMD_HUGEPAGES } from './dpdk.js';
import { WARMUP_S, macOfB, mean, measureB, r3, roundsOption, tspmdApp, type VethWindow } from './veth.js';

type Forwarder = 'tspmd_af_xdp' | 'dpdk_af_xdp' | 'tspmd_af_packet';
/** Extra devargs of tspmd's net_af_xdp ports (--devargs ",busy_budget=0"). */
let xdpDevargs = '';
const FORWARDERS: Forwarder[] = ['tspmd_af_xdp', 'dpdk_af_xdp', 'tspmd_af_packet'];

/** The AF_XDP generator in namespace A, 64-byte frames to B's MAC, sending on CPU 0. */
function generator(gen: 'dpdk' | 'tspmd', topo: Topology, seconds: number): Promise<unknown> {
  const macB = macOfB(topo);
  if (gen === 'tspmd') {
    return tspmdApp(['pktgen', '--no-huge', '-l', '1,0', '--main-lcore', '1', '--file-prefix', `${topo.prefix}gen`,
      '--vdev', `net_af_xdp0,iface=${topo.ifA}`, '--', '--duration', String(seconds), '--size', '64', '--dst-mac', macB, '-T', '0'], topo.nsA);
  }
  return runTestpmd({
    vdevs: [`net_af_xdp0,iface=${topo.ifA}`], forwardMode: 'txonly', seconds, netns: topo.nsA,
    lcores: '0,1', mainLcore: 1, extraApp: ['--txpkts=64', `--eth-peer=0,${macB}`],
  });
}

/** A forwarder on the host ends, forwarding on CPU 1 (its main lcore on CPU 0 only waits). */
function forwarder(kind: Forwarder, topo: Topology, seconds: number): Promise<unknown> {
  if (kind === 'dpdk_af_xdp') {
    return runTestpmd({ vdevs: [`net_af_xdp0,iface=${topo.hostA}`, `net_af_xdp1,iface=${topo.hostB}`], forwardMode: 'mac', seconds, lcores: '0-1', mainLcore: 0 });
  }
  const pmd = kind === 'tspmd_af_xdp' ? 'net_af_xdp' : 'net_af_packet', extra = kind === 'tspmd_af_xdp' ? xdpDevargs : '';
  return tspmdApp(['l2fwd', '--no-huge', '-l', '0-1', '--main-lcore', '0', '--file-prefix', `${topo.prefix}bench`,
    '--vdev', `${pmd}0,iface=${topo.hostA}${extra}`, '--vdev', `${pmd}1,iface=${topo.hostB}${extra}`, '--', '--duration', String(seconds), '-T', '0']);
}

/** One measurement: generator and forwarder started together, the rate into B after the warm-up. */
async function once(gen: 'dpdk' | 'tspmd', fwd: Forwarder, topo: Topology, seconds: number): Promise<VethWindow> {
  const total = WARMUP_S + seconds + 4;
  const g = generator(gen, topo, total + 2);
  const f = forwarder(fwd, topo, total);
  const w = await measureB(topo, seconds);
  await Promise.all([f, g]);
  console.log(`  ${fwd.padEnd(16)} ${w.mpps.toFixed(3)} Mpps into namespace B, offered ${w.offeredMpps.toFixed(3)} Mpps (softirq CPU 0 ${w.softirqPct[0]} %, CPU 1 ${w.softirqPct[1] ?? 0} %)`);
  return w;
}

/** The afxdp figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | string | number[]>> {
  if (process.getuid?.() !== 0) throw new Error('the afxdp benchmark needs root (network namespaces, veth, AF_XDP sockets, BPF)');
  const quick = args.includes('--quick');
  const seconds = quick ? 4 : 8;
  const rounds = roundsOption(args, quick ? 1 : 3);
  const gi = args.indexOf('--gen');
  const gen = gi >= 0 ? args[gi + 1] : 'dpdk';
  if (gen !== 'dpdk' && gen !== 'tspmd') throw new Error(`--gen takes dpdk or tspmd, not "${gen}"`);
  const di = args.indexOf('--devargs');
  xdpDevargs = di >= 0 ? `,${args[di + 1].replace(/^,/, '')}` : '';
  ensureDpdk();
  const restore = ensureHugepages(2 * TESTPMD_HUGEPAGES);
  const topo = createTopology();
  try {
    const res: Record<Forwarder, VethWindow[]> = { tspmd_af_xdp: [], dpdk_af_xdp: [], tspmd_af_packet: [] };
    console.log(`${gen} AF_XDP generator in namespace A (64-byte frames, CPU 0), forwarders on CPU 1, ${seconds} s each after ${WARMUP_S} s, ${rounds} round(s):`);
    for (let r = 0; r < rounds; r++) {
      for (const fwd of FORWARDERS) res[fwd].push(await once(gen, fwd, topo, seconds));
    }
    const mpps = (f: Forwarder): number[] => res[f].map((w) => w.mpps);
    const ratios = (a: Forwarder, b: Forwarder): number[] => mpps(a).map((x, i) => r3(x / mpps(b)[i]));
    const vsDpdk = ratios('tspmd_af_xdp', 'dpdk_af_xdp'), vsAfPacket = ratios('tspmd_af_xdp', 'tspmd_af_packet');
    console.log(`tspmd af_xdp / DPDK af_xdp: median ${median(vsDpdk).toFixed(3)} (rounds ${vsDpdk.join(' ')}); tspmd af_xdp / tspmd af_packet: median ${median(vsAfPacket).toFixed(3)} (rounds ${vsAfPacket.join(' ')})`);
    return {
      generator: `${gen} AF_XDP txonly`,
      offered_mpps: r3(mean(FORWARDERS.flatMap((f) => res[f].map((w) => w.offeredMpps)))),
      tspmd_af_xdp_mpps: r3(mean(mpps('tspmd_af_xdp'))), dpdk_af_xdp_mpps: r3(mean(mpps('dpdk_af_xdp'))), tspmd_af_packet_mpps: r3(mean(mpps('tspmd_af_packet'))),
      ratio: r3(median(vsDpdk)), ratios: vsDpdk,
      ratio_vs_af_packet: r3(median(vsAfPacket)), ratios_vs_af_packet: vsAfPacket,
      cpu0_softirq_pct_tspmd_af_xdp: r3(mean(res.tspmd_af_xdp.map((w) => w.softirqPct[0]))),
      cpu0_softirq_pct_dpdk_af_xdp: r3(mean(res.dpdk_af_xdp.map((w) => w.softirqPct[0]))),
      cpu1_softirq_pct_tspmd_af_xdp: r3(mean(res.tspmd_af_xdp.map((w) => w.softirqPct[1] ?? 0))),
      cpu1_softirq_pct_dpdk_af_xdp: r3(mean(res.dpdk_af_xdp.map((w) => w.softirqPct[1] ?? 0))),
      rounds,
    };
  } finally {
    topo.destroy();
    restore();
  }
}
