/**
 * `tspmd netns up|down`: build or remove the two-namespace topology of topology.ts from the
 * command line, to try af_packet or af_xdp forwarding by hand (each veth end has one RX and one
 * TX queue, as native XDP on veth wants: the same count on both ends):
 *   tspmd netns up            prints the names and the l2fwd commands that join the namespaces
 *   tspmd netns down --prefix P
 */
import { existsSync, readdirSync } from 'node:fs';
import { UsageError } from '../../src/options.js';
import { createTopology, sh, uniquePrefix } from '../../lib/netns/topology.js';

/** Run the netns command; returns the exit code. */
export function netnsMain(args: string[]): number {
  const [cmd, ...rest] = args;
  let prefix: string | null = null;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--prefix') prefix = rest[++i] ?? null;
    else throw new UsageError(`netns: unknown option "${rest[i]}" (usage: tspmd netns up|down [--prefix tspNAME])`);
  }
  if (prefix !== null && !/^tsp[a-z0-9]{1,9}$/.test(prefix)) throw new UsageError(`--prefix ${prefix}: use "tsp" and 1-9 more characters from a-z 0-9`);
  if (cmd === 'up') {
    const t = createTopology(prefix ?? uniquePrefix());
    console.log(`namespace ${t.nsA}: ${t.ifA} ${t.ipA}/24    namespace ${t.nsB}: ${t.ifB} ${t.ipB}/24`);
    console.log(`forwarder ends (this namespace): ${t.hostA} ${t.hostB}`);
    console.log(`forward:  tspmd l2fwd --no-huge -l 0-1 --vdev net_af_packet0,iface=${t.hostA} --vdev net_af_packet1,iface=${t.hostB} -- -T 1`);
    console.log(`or:       tspmd l2fwd --no-huge -l 0-1 --vdev net_af_xdp0,iface=${t.hostA} --vdev net_af_xdp1,iface=${t.hostB} -- -p 0x3 -T 1`);
    console.log(`try:      ip netns exec ${t.nsA} ping ${t.ipB}`);
    console.log(`remove:   tspmd netns down --prefix ${t.prefix}`);
    return 0;
  }
  if (cmd === 'down') {
    if (prefix === null) throw new UsageError('netns down needs --prefix (as printed by "tspmd netns up")');
    let removed = 0;
    for (const ns of existsSync('/run/netns') ? readdirSync('/run/netns') : []) {
      if (ns === `${prefix}A` || ns === `${prefix}B`) { sh(['ip', 'netns', 'del', ns]); removed++; }
    }
    for (const i of [`${prefix}a1`, `${prefix}b1`]) {
      if (!existsSync(`/sys/class/net/${i}`)) continue;
      // deleting a namespace takes its veth peers with it, asynchronously: the end may vanish meanwhile
      try { sh(['ip', 'link', 'del', i]); } catch (e) { if (existsSync(`/sys/class/net/${i}`)) throw e; }
      removed++;
    }
    console.log(removed ? `removed ${prefix}` : `nothing named ${prefix} to remove`);
    return 0;
  }
  throw new UsageError('usage: tspmd netns up|down [--prefix tspNAME] (root)');
}
