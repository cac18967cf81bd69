/**
 * A second process for test/os/bpf.test.ts (run as `node bpf-child.ts CMD ...`, possibly through
 * `ip netns exec NS`): it does one thing, prints one JSON line saying what it did (or the error's
 * name and message), and holds what it made until its stdin closes or it is killed.
 *
 *   attach IFNAME native|generic      an XSKMAP and tspmd's XDP program on IFNAME through a BPF link
 *   redirect IFNAME native|generic N  the same, plus one AF_XDP socket bound (copy mode) to each of
 *                                     queues 0..N-1, not yet in the map; then, one per stdin line:
 *                                     "set" enters them in the map, "delete" takes them out,
 *                                     "stats" sums their XDP_STATISTICS; each answers a JSON line
 *   claim IFNAME WHAT                 claimInterface(IFNAME, WHAT)
 */
import { createInterface } from 'node:readline';
import * as os from '../../src/os/libc.js';
import { attachXskRedirect, createXskMap, xskMapDelete, xskMapSet, type XdpMode } from '../../src/os/bpf.js';
import { claimInterface } from '../../src/os/ifclaim.js';
import { boundXsk, xskDropped } from './xsk-min.js';

const [cmd, ifname, arg, nq] = process.argv.slice(2);
const held: Array<() => void> = [];
const say = (o: object): void => { console.log(JSON.stringify({ pid: process.pid, ...o })); };
try {
  if (cmd === 'attach' || cmd === 'redirect') {
    const ifindex = os.ifNameToIndex(ifname);
    const queues = cmd === 'redirect' ? Number(nq) : 0;
    const mapFd = createXskMap(Math.max(queues, 4), 'tspmd_xsk_test');
    held.push(() => os.close(mapFd));
    const a = attachXskRedirect({ ifname, ifindex, mapFd, mode: arg as XdpMode });
    held.push(() => a.close());
    const socks: Array<{ fd: number; close(): void }> = [];
    for (let q = 0; q < queues; q++) {
      const s = boundXsk(ifindex, q);
      socks.push(s);
      held.push(() => s.close());
    }
    say({ progId: a.progId, linkId: a.linkId, mode: a.mode, sockets: socks.length });
    if (queues > 0) {
      createInterface({ input: process.stdin }).on('line', (l) => {
        try {
          if (l === 'set') { socks.forEach((s, q) => xskMapSet(mapFd, q, s.fd)); say({ set: socks.length }); }
          else if (l === 'delete') { socks.forEach((_, q) => xskMapDelete(mapFd, q)); say({ deleted: socks.length }); }
          else if (l === 'stats') say({ dropped: socks.reduce((n, s) => n + xskDropped(s.fd), 0) });
          else say({ error: 'Error', message: `unknown line "${l}"` });
        } catch (e) {
          say({ error: (e as Error).name, message: (e as Error).message });
        }
      });
    }
  } else if (cmd === 'claim') {
    const c = claimInterface(ifname, arg);
    held.push(() => c.close());
    say({ claimed: ifname });
  } else {
    throw new Error(`bpf-child: unknown command "${cmd}"`);
  }
} catch (e) {
  say({ error: (e as Error).name, message: (e as Error).message });
  process.exit(1);
}
process.stdin.on('end', () => { for (const f of held.reverse()) f(); process.exit(0); });
process.stdin.resume();
