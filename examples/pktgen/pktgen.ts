/**
 * pktgen: a packet generator, one module written against the package's entry point. Sends
 * Ethernet/IPv4/UDP frames with valid checksums out of one port, at a rate or as fast as possible,
 * spread over N flows (source address and UDP port vary per flow), and counts what arrives on an
 * RX port. The generator loop pktgenLoop, exported from this module, runs on a worker lcore.
 *
 *   node dist/examples/pktgen/pktgen.js --no-huge --vdev net_ring0 -- --tx-port 0 --rx-port 0 --count 100000
 */
import {
  type App, type EthDev, type LcoreContext, type MempoolDesc, type PortData, UsageError, MbufView, Mempool,
  appMain, buildUdpFrame, countGc, eachOption, intOption, listPorts, numberOption, openRxQueue, openTxQueue, parseIpv4, parseMac,
  pktmbufAllocBulk, pktmbufFreeBulk, pktmbufPoolCreate, probePorts, runLcoresUntilDone, StatsReporter,
} from '../../index.js';

/** pktgen's options. */
export interface PktgenOptions {
  txPort: number;
  rxPort: number | null;
  rate: number;
  size: number;
  count: number;
  flows: number;
  dstMac: number[] | null;
  srcMac: number[] | null;
  srcIp: number;
  dstIp: number;
  srcPort: number;
  dstPort: number;
  burst: number;
  periodS: number;
  durationS: number;
  json: boolean;
}

/** The pktgen app (tspmd pktgen). */
export const pktgen: App<PktgenOptions> = {
  name: 'pktgen',
  summary: 'Packet generator: UDP flows at a rate, counting what comes back.',
  help: `  --tx-port P         port to send on (default 0)
  --rx-port P         port to count received packets on (default: none)
  --rate PPS          packets per second, 0 for as fast as possible (default 0)
  --size N            frame size in bytes without FCS, 42..9018 (default 64)
  --count N           packets to send, 0 for no limit (default 0)
  --flows N           flows: source IP and UDP port vary over N values (default 1)
  --dst-mac MAC       destination MAC (default ff:ff:ff:ff:ff:ff)
  --src-mac MAC       source MAC (default: the TX port's)
  --src-ip IP         first source address (default 10.0.0.1)
  --dst-ip IP         destination address (default 10.0.1.1)
  --sport N / --dport N  UDP ports (default 1024 / 1024)
  --burst N           packets per burst (default 32)
  -T SEC              statistics period, 0 to disable (default 10)
  --duration SEC      stop after SEC seconds (default: until --count is sent, or SIGINT)
  --json              print the final summary as one JSON line`,
  parse(args) {
    const o: PktgenOptions = {
      txPort: 0, rxPort: null, rate: 0, size: 64, count: 0, flows: 1, dstMac: null, srcMac: null,
      srcIp: parseIpv4('10.0.0.1'), dstIp: parseIpv4('10.0.1.1'), srcPort: 1024, dstPort: 1024, burst: 32, periodS: 10, durationS: 0, json: false,
    };
    const mac = (flag: string, v: string): number[] => {
      try { return parseMac(v); } catch (e) { throw new UsageError(`${flag}: ${(e as Error).message}`); }
    };
    const ip = (flag: string, v: string): number => {
      try { return parseIpv4(v); } catch (e) { throw new UsageError(`${flag}: ${(e as Error).message}`); }
    };
    eachOption(args, (flag, value) => {
      switch (flag) {
        case '--tx-port': o.txPort = intOption(flag, value(), 0, 1023); break;
        case '--rx-port': o.rxPort = intOption(flag, value(), 0, 1023); break;
        case '--rate': o.rate = intOption(flag, value(), 0, 1e9); break;
        case '--size': o.size = intOption(flag, value(), 42, 9018); break;
        case '--count': o.count = intOption(flag, value(), 0, Number.MAX_SAFE_INTEGER); break;
        case '--flows': o.flows = intOption(flag, value(), 1, 65536); break;
        case '--dst-mac': o.dstMac = mac(flag, value()); break;
        case '--src-mac': o.srcMac = mac(flag, value()); break;
        case '--src-ip': o.srcIp = ip(flag, value()); break;
        case '--dst-ip': o.dstIp = ip(flag, value()); break;
        case '--sport': o.srcPort = intOption(flag, value(), 0, 65535); break;
        case '--dport': o.dstPort = intOption(flag, value(), 0, 65535); break;
        case '--burst': o.burst = intOption(flag, value(), 1, 512); break;
        case '-T': o.periodS = numberOption(flag, value(), 0, 86400); break;
        case '--duration': o.durationS = numberOption(flag, value(), 0, 1e7); break;
        case '--json': o.json = true; break;
        default: throw new UsageError(`unknown pktgen option "${flag}" (see --help)`);
      }
    });
    if (o.count === 0 && o.durationS === 0 && o.json) throw new UsageError('--json needs an end: give --count or --duration');
    return o;
  },
  async main(eal, o) {
    await probePorts(eal);
    const all = listPorts();
    const find = (id: number, flag: string): EthDev => {
      const p = all.find((x) => x.port === id);
      if (!p) throw new UsageError(`${flag} ${id}: no such port (ports: ${all.map((x) => `${x.port}=${x.name}`).join(', ') || 'none; add one with --vdev'})`);
      return p;
    };
    const tx = find(o.txPort, '--tx-port');
    const rx = o.rxPort === null ? null : find(o.rxPort, '--rx-port');
    const lcore = eal.lcores.workers[0];
    if (lcore === undefined) throw new UsageError('pktgen needs a worker lcore besides the main one: use -l with two cores, e.g. -l 0-1');
    const pool = pktmbufPoolCreate(eal.memory, 'pktgen_pool', 8191, { cacheSize: 256, dataRoom: Math.max(2048, o.size) });
    const ports = rx && rx !== tx ? [tx, rx] : [tx];
    for (const p of ports) {
      p.configure({ rxQueues: 1, txQueues: 1, promiscuous: true });
      p.rxQueueSetup(0, 1024, pool);
      p.txQueueSetup(0, 1024);
      p.start();
    }
    const frames = new Uint8Array(o.flows * o.size);
    for (let f = 0; f < o.flows; f++) {
      frames.set(buildUdpFrame({
        dstMac: o.dstMac ?? [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], srcMac: o.srcMac ?? tx.macAddr(),
        srcIp: (o.srcIp + f) >>> 0, dstIp: o.dstIp, srcPort: (o.srcPort + f) & 0xffff, dstPort: o.dstPort, size: o.size,
      }), f * o.size);
    }
    const counters = new SharedArrayBuffer(8 * 4);
    const cv = new Float64Array(counters);
    const reporter = new StatsReporter(ports, (i) => (ports[i] === tx ? cv[1] : 0));
    reporter.start(o.json ? 0 : o.periodS);
    const arg: PktgenLcoreArg = {
      tx: tx.data(), rx: rx ? rx.data() : null, pool: pool.desc, frames, size: o.size, flows: o.flows, rate: o.rate, count: o.count, burst: o.burst, counters,
    };
    if (!o.json) console.log(`pktgen: ${o.size}-byte UDP frames, ${o.flows} flow(s), ${o.rate ? o.rate + ' pps' : 'line rate'}, TX port ${tx.port} (${tx.name})${rx ? `, RX port ${rx.port} (${rx.name})` : ''} on lcore ${lcore}`);
    let results: Array<{ gcCount: number }>;
    try {
      ({ results } = await runLcoresUntilDone(eal, [eal.lcores.launch(lcore, import.meta.url, pktgenLoop, arg)], o.durationS));
    } finally {
      reporter.stop();
    }
    for (const p of ports) p.stop();
    const summary = reporter.summary('pktgen', {
      sent: cv[0], received: cv[3], tx_dropped: cv[1], no_mbuf: cv[2],
      worker_gc_count: results[0].gcCount, mbufs_in_use_after_stop: pool.inUseCount(),
    });
    reporter.printSummary(summary, o.json);
    return 0;
  },
};

// ---- the generator loop, on a worker lcore ----

/** Argument of pktgenLoop. */
export interface PktgenLcoreArg {
  tx: PortData;
  rx: PortData | null;
  /** the pool the frames are built in */
  pool: MempoolDesc;
  /** all flows' frames back to back, each `size` bytes */
  frames: Uint8Array;
  size: number;
  flows: number;
  /** packets per second, 0 for as fast as possible */
  rate: number;
  /** packets to send, 0 for no limit */
  count: number;
  burst: number;
  /** Float64Array: [0] sent, [1] dropped at TX, [2] no mbuf, [3] received */
  counters: SharedArrayBuffer;
}

/** Generate until stopped or count is sent (then drain RX until quiet); returns the GC count. */
export async function pktgenLoop(a: PktgenLcoreArg, ctx: LcoreContext): Promise<{ gcCount: number }> {
  const tx = await openTxQueue(a.tx, 0);
  const rx = a.rx ? await openRxQueue(a.rx, 0) : null;
  const pool = Mempool.attach(a.pool);
  const tmpl: Uint8Array[] = [];
  for (let f = 0; f < a.flows; f++) tmpl.push(a.frames.subarray(f * a.size, (f + 1) * a.size));
  const c = new Float64Array(a.counters);
  const buf = new Uint32Array(a.burst), rbuf = new Uint32Array(a.burst);
  const flows = a.flows, rate = a.rate, count = a.count, burst = a.burst;
  const pkt = new MbufView();
  let flow = 0, sent = 0, lastRx = performance.now();
  const t0 = performance.now();
  const gc = countGc();
  while (!ctx.stopRequested()) {
    let n = burst;
    if (count > 0 && count - sent < n) n = count - sent;
    if (rate > 0) {
      const allowed = Math.floor(((performance.now() - t0) * rate) / 1000) - sent;
      if (allowed < n) n = allowed > 0 ? allowed : 0;
    }
    if (n > 0) {
      if (pktmbufAllocBulk(pool, buf, n)) {
        for (let i = 0; i < n; i++) {
          pkt.at(buf[i]).write(tmpl[flow]);
          if (++flow === flows) flow = 0;
        }
        const k = tx.txBurst(buf, n, 0);
        if (k < n) {
          pktmbufFreeBulk(buf, n - k, k);
          c[1] += n - k;
        }
        sent += n;
        c[0] += k;
      } else c[2] += n;
    }
    if (rx !== null) {
      const r = rx.rxBurst(rbuf, burst);
      if (r > 0) {
        c[3] += r;
        pktmbufFreeBulk(rbuf, r, 0);
        lastRx = performance.now();
      }
    }
    // With a count: once all is sent, wait until RX has been quiet for 100 ms.
    if (count > 0 && sent >= count && (rx === null || performance.now() - lastRx > 100)) break;
  }
  await gc.settle();
  gc.stop();
  pool.flushCache();
  return { gcCount: gc.count() };
}

appMain(import.meta.url, pktgen);
