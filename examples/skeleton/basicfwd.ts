/**
 * skeleton: DPDK's basic forwarding sample. Every packet received on port 0 leaves on port 1 and
 * the other way round, unchanged, on one worker lcore, until SIGINT or --duration.
 *
 *   node dist/examples/skeleton/basicfwd.js --no-huge --vdev net_null0 --vdev net_null1 -- --duration 2
 */
import {
  type App, type LcoreContext, type PortData, UsageError, appMain, numberOption, openRxQueue, openTxQueue,
  pktmbufFreeBulk, pktmbufPoolCreate, probePorts, runLcoresUntilDone,
} from '../../index.js';

const BURST = 32;

/** The lcore loop: port 0 -> port 1 and port 1 -> port 0; returns the packets forwarded. */
export async function basicFwd(ports: PortData[], ctx: LcoreContext): Promise<number> {
  const rx = [await openRxQueue(ports[0], 0), await openRxQueue(ports[1], 0)];
  const tx = [await openTxQueue(ports[1], 0), await openTxQueue(ports[0], 0)];
  const burst = new Uint32Array(BURST);
  let forwarded = 0;
  while (!ctx.stopRequested()) {
    for (let p = 0; p < 2; p++) {
      const n = rx[p].rxBurst(burst, BURST);
      if (n === 0) continue;
      const sent = tx[p].txBurst(burst, n);
      if (sent < n) pktmbufFreeBulk(burst, n - sent, sent); // TX full: drop the rest
      forwarded += sent;
    }
  }
  return forwarded;
}

const skeleton: App<{ durationS: number }> = {
  name: 'basicfwd',
  summary: 'Forward every packet between port 0 and port 1, unchanged (DPDK\'s skeleton).',
  help: '  --duration SEC   stop after SEC seconds (default: until SIGINT)',
  parse(args) {
    if (args.length === 0) return { durationS: 0 };
    if (args[0] !== '--duration') throw new UsageError(`unknown option "${args[0]}" (see --help)`);
    return { durationS: numberOption('--duration', args[1], 0, 1e7) };
  },
  async main(eal, { durationS }) {
    const ports = await probePorts(eal);
    if (ports.length !== 2) throw new UsageError(`basicfwd needs exactly 2 ports, found ${ports.length}: e.g. --vdev net_null0 --vdev net_null1`);
    const lcore = eal.lcores.workers[0];
    if (lcore === undefined) throw new UsageError('basicfwd needs a worker lcore: use -l with two cores, e.g. -l 0-1');
    const pool = pktmbufPoolCreate(eal.memory, 'MBUF_POOL', 8191);
    for (const port of ports) {
      port.configure({ rxQueues: 1, txQueues: 1 });
      port.rxQueueSetup(0, 1024, pool);
      port.txQueueSetup(0, 1024);
      port.start();
      console.log(`port ${port.port}: ${port.name}, MAC ${port.macString()}`);
    }
    const running = eal.lcores.launch(lcore, import.meta.url, basicFwd, ports.map((p) => p.data()));
    const { results } = await runLcoresUntilDone(eal, [running], durationS);
    for (const port of ports) port.stop();
    console.log(`forwarded ${results[0]} packets; mbufs still in use: ${pool.inUseCount()}`);
    return 0;
  },
};

appMain(import.meta.url, skeleton);
