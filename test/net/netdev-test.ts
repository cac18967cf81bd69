/**
 * What the tests of the drivers on kernel interfaces (af_packet.test.ts, af_xdp.test.ts) share:
 * a topology removed in teardown, running other commands, and polling RX queues while a sender runs.
 */
import { execFile } from 'node:child_process';
import { createTopology, type Topology, type TopologyOptions } from '../../lib/netns/topology.js';
import { pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import type { RxQueue } from '../../lib/ethdev/ethdev.js';
import { undoAlways } from '../always.js';

/** Two namespaces joined by veth pairs (lib/netns/topology.ts), destroyed in t's teardown (or at exit: undoAlways). */
export function topology(t: { teardown(fn: () => void): void }, opts: TopologyOptions = {}): Topology {
  const topo = createTopology(undefined, undefined, opts);
  undoAlways(t, () => topo.destroy());
  return topo;
}

/** Run a command other than tspmd (ip, ping) to completion. */
export function run(cmd: string, args: string[], timeout = 60000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => execFile(cmd, args, { timeout, encoding: 'utf8' }, (err, stdout, stderr) =>
    resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })));
}

/**
 * Poll every queue in bursts of 32, freeing what arrives and yielding to the event loop between
 * rounds, until done(got) or ms pass; got[q] is what queue q received.
 */
export async function pollQueues(rxq: RxQueue[], done: (got: number[]) => boolean, ms = 20000): Promise<number[]> {
  const burst = new Uint32Array(32);
  const got = rxq.map(() => 0);
  const deadline = Date.now() + ms;
  while (!done(got) && Date.now() < deadline) {
    for (let q = 0; q < rxq.length; q++) {
      const n = rxq[q].rxBurst(burst, 32);
      got[q] += n;
      pktmbufFreeBulk(burst, n, 0);
    }
    await new Promise((r) => setImmediate(r));
  }
  return got;
}
