/**
 * A two-namespace test topology anyone can run (root): namespaces A and B, each holding one end
 * of a veth pair with an address on one /24; the other ends stay in the caller's namespace, up and
 * without addresses, for a forwarder (l2fwd on af_packet or af_xdp ports) to join A and B:
 *
 *   [ns A: <p>a0 10.x.y.1] == <p>a1 ~~ l2fwd ~~ <p>b1 == [ns B: <p>b0 10.x.y.2]
 *
 * Every name starts with the prefix (tsp...), unique per call; destroy() removes it all and is
 * safe to call twice or after a partial build. Needs iproute2 and ethtool: checksum and
 * segmentation offloads are turned off inside the namespaces, as for any userspace forwarder.
 * Both ends of each pair have the same number of RX and TX queues (1 unless asked), which native
 * XDP on veth needs (net_af_xdp).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** What createTopology built. */
export interface Topology {
  prefix: string;
  nsA: string;
  nsB: string;
  /** interfaces inside the namespaces */
  ifA: string;
  ifB: string;
  /** forwarder-side ends, in the caller's namespace */
  hostA: string;
  hostB: string;
  ipA: string;
  ipB: string;
  /** run a command in a namespace; returns stdout */
  exec(ns: string, cmd: string[], opts?: { timeoutMs?: number }): string;
  /** remove namespaces and interfaces */
  destroy(): void;
}

/** Run a command; the error names the command and shows its output. */
export function sh(cmd: string[], timeoutMs = 30000): string {
  try {
    return execFileSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${cmd.join(' ')} failed: ${(err.stderr || err.stdout || err.message).trim()}`);
  }
}

/** A unique name prefix: "tsp" + 6 characters (interface names stay within 15 characters). */
export function uniquePrefix(): string {
  return `tsp${(process.pid % 4096).toString(36).padStart(3, '0')}${Math.floor(Math.random() * 46656).toString(36).padStart(3, '0')}`;
}

/** How createTopology builds the veth pairs. */
export interface TopologyOptions {
  /**
   * RX and TX queues of every veth end (default 1). Both ends of a pair get the same counts: veth
   * refuses a native XDP program on an end with fewer RX queues than its peer has TX queues, and
   * a frame the peer sends on TX queue i arrives on RX queue i, where an AF_XDP socket bound to
   * queue i sees it.
   */
  queues?: number;
}

/** Build the topology (needs root and iproute2). subnet picks 10.<subnet>.0.0/24. */
export function createTopology(prefix = uniquePrefix(), subnet = 100 + Math.floor(Math.random() * 100), opts: TopologyOptions = {}): Topology {
  const nq = String(opts.queues ?? 1);
  const nsA = `${prefix}A`, nsB = `${prefix}B`;
  const ifA = `${prefix}a0`, hostA = `${prefix}a1`, ifB = `${prefix}b0`, hostB = `${prefix}b1`;
  const ipA = `10.${subnet}.0.1`, ipB = `10.${subnet}.0.2`;
  const topo: Topology = {
    prefix, nsA, nsB, ifA, ifB, hostA, hostB, ipA, ipB,
    exec: (ns, cmd, opts) => sh(['ip', 'netns', 'exec', ns, ...cmd], opts?.timeoutMs),
    destroy: () => {
      for (const ns of [nsA, nsB]) if (existsSync(`/run/netns/${ns}`)) try { sh(['ip', 'netns', 'del', ns]); } catch { /* gone */ }
      for (const i of [hostA, hostB]) if (existsSync(`/sys/class/net/${i}`)) try { sh(['ip', 'link', 'del', i]); } catch { /* gone */ }
    },
  };
  try {
    // The namespaces' ends get l2fwd's default destination MACs (02:00:00:00:00:<port>): A is
    // reached through port 0 and B through port 1, so frames forwarded with MAC updating (the
    // default, as in DPDK's l2fwd) are addressed to the interface that receives them.
    for (const [ns, inner, outer, ip, mac] of [[nsA, ifA, hostA, ipA, '02:00:00:00:00:00'], [nsB, ifB, hostB, ipB, '02:00:00:00:00:01']]) {
      sh(['ip', 'netns', 'add', ns]);
      sh(['ip', 'link', 'add', outer, 'numrxqueues', nq, 'numtxqueues', nq, 'type', 'veth', 'peer', 'name', inner, 'numrxqueues', nq, 'numtxqueues', nq, 'netns', ns]);
      sh(['ip', 'link', 'set', outer, 'up']);
      // The forwarder's ends carry no IPv6 chatter of their own.
      try { sh(['sysctl', '-qw', `net.ipv6.conf.${outer}.disable_ipv6=1`]); } catch { /* no IPv6 */ }
      topo.exec(ns, ['ip', 'link', 'set', 'lo', 'up']);
      // No IPv6 chatter (router solicitations, DAD) inside either: kernel counters stay exact.
      try { topo.exec(ns, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1']); } catch { /* no IPv6 */ }
      topo.exec(ns, ['ip', 'link', 'set', inner, 'address', mac]);
      topo.exec(ns, ['ip', 'addr', 'add', `${ip}/24`, 'dev', inner]);
      topo.exec(ns, ['ip', 'link', 'set', inner, 'up']);
      // A forwarder of plain frames needs plain frames: without this the namespaces' stacks hand
      // veth 64 KB TSO/GSO super-frames with checksums left for the "hardware" to fill in.
      topo.exec(ns, ['ethtool', '-K', inner, 'tx', 'off', 'tso', 'off', 'gso', 'off', 'gro', 'off']);
    }
    return topo;
  } catch (e) {
    topo.destroy();
    throw e;
  }
}

/** A kernel counter of an interface (statistics/<name>) in the caller's namespace. */
export function ifStat(iface: string, name: 'rx_packets' | 'tx_packets' | 'rx_bytes' | 'tx_bytes' | 'rx_dropped' | 'tx_dropped'): number {
  return Number(sh(['cat', `/sys/class/net/${iface}/statistics/${name}`]).trim());
}
