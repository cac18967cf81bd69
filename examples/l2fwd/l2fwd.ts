/**
 * l2fwd: DPDK's layer-2 forwarding sample, one module written against the package's entry point.
 * Ports are paired 0<->1, 2<->3 (in portmask order); every packet received on a port leaves
 * through its pair with the destination MAC set to 02:00:00:00:00:<destination port> and the
 * source MAC set to the pair's own MAC (unless --no-mac-updating). Each worker lcore polls up to
 * -q ports. The control part (options, ports, lcores, statistics) runs on the main thread; the
 * forwarding loop l2fwdLoop, exported from this same module, runs on the worker lcores.
 * With --rx-mode interrupt or adaptive, an lcore whose ports go quiet sleeps on their Rx
 * interrupts (RxIdleSleeper, as DPDK's l3fwd-power) instead of spinning.
 *
 *   node dist/examples/l2fwd/l2fwd.js --no-huge --vdev net_null0 --vdev net_null1 -- -T 1
 *   npx tspmd l2fwd ...                     (the same app as a tspmd subcommand)
 */
import {
  type App, type EthDev, type LcoreContext, type PortData, type RxQueue, type TxQueue, UsageError, MbufView, Mempool,
  appMain, countGc, rxInterruptDriverNames, eachOption, intOption, listPorts, macWords, numberOption, openRxQueue, openTxQueue, pktmbufFreeBulk, portmaskOption,
  pktmbufPoolCreate, probePorts, runLcoresUntilDone, StatsReporter, RxIdleSleeper, type RxIdleQueue, type RxIdleStats,
} from '../../index.js';

/** How lcores wait for packets: always polling, sleeping whenever a round finds nothing, or after --idle-polls empty rounds. */
export type RxMode = 'poll' | 'interrupt' | 'adaptive';
/** Longest sleep of an idle lcore: it sees its stop flag at least this often. */
const MAX_SLEEP_MS = 100;

/** l2fwd's options. */
export interface L2fwdOptions {
  portmask: number | null;
  /** ports per lcore; null: spread the ports over the worker lcores */
  queuesPerLcore: number | null;
  periodS: number;
  macUpdating: boolean;
  durationS: number;
  json: boolean;
  burst: number;
  rxDesc: number;
  txDesc: number;
  rxMode: RxMode;
  /** empty polling rounds before an lcore sleeps (adaptive mode) */
  idlePolls: number;
}

/** Which lcore polls which RX port, and each port's destination. */
export function planL2fwd(ports: EthDev[], workers: number[], perLcore: number): Array<{ lcore: number; rx: EthDev; tx: EthDev }> {
  if (ports.length === 0) throw new UsageError('no ports to forward between: add some, e.g. --vdev net_null0 --vdev net_null1');
  if (ports.length % 2 !== 0) throw new UsageError(`l2fwd pairs ports 0<->1, 2<->3: the portmask selects ${ports.length} ports, an odd number`);
  if (workers.length === 0) throw new UsageError('l2fwd needs a worker lcore besides the main one: use -l with two cores, e.g. -l 0-1');
  const need = Math.ceil(ports.length / perLcore);
  if (need > workers.length) {
    throw new UsageError(`${ports.length} ports at -q ${perLcore} per lcore need ${need} worker lcores, ${workers.length} available: raise -q or give more cores with -l`);
  }
  return ports.map((rx, i) => ({ lcore: workers[Math.floor(i / perLcore)], rx, tx: ports[i ^ 1] }));
}

/** The l2fwd app (tspmd l2fwd). */
export const l2fwd: App<L2fwdOptions> = {
  name: 'l2fwd',
  summary: 'Layer-2 forwarding between port pairs (0<->1, 2<->3), as DPDK\'s l2fwd sample.',
  help: `  -p PORTMASK         hexadecimal mask of ports to use (default: all)
  -q N                ports polled per lcore (default: spread the ports over the worker lcores)
  -T SEC              statistics period in seconds, 0 to disable (default 10)
  --no-mac-updating   leave MAC addresses unchanged
  --mac-updating      rewrite MAC addresses (the default)
  --burst N           packets per burst (default 32)
  --rxd N / --txd N   descriptors per RX / TX queue (default 1024)
  --duration SEC      stop by itself after SEC seconds (default: until SIGINT)
  --rx-mode MODE      poll: lcores spin on their ports (the default, lowest latency, 100 % of a core);
                      interrupt: an lcore sleeps on its ports' Rx interrupts whenever a round finds
                      nothing; adaptive: it sleeps after --idle-polls empty rounds in a row, so a busy
                      lcore forwards at the polling rate and an idle one costs almost no CPU.
                      interrupt and adaptive need drivers with Rx interrupts (${rxInterruptDriverNames()})
  --idle-polls N      empty rounds before sleeping in adaptive mode (default 300)
  --json              print the final summary as one JSON line`,
  parse(args) {
    const o: L2fwdOptions = { portmask: null, queuesPerLcore: null, periodS: 10, macUpdating: true, durationS: 0, json: false, burst: 32, rxDesc: 1024, txDesc: 1024, rxMode: 'poll', idlePolls: 300 };
    eachOption(args, (flag, value) => {
      switch (flag) {
        case '-p': o.portmask = portmaskOption('-p', value()); break;
        case '-q': o.queuesPerLcore = intOption('-q', value(), 1, 64); break;
        case '-T': o.periodS = numberOption('-T', value(), 0, 86400); break;
        case '--no-mac-updating': o.macUpdating = false; break;
        case '--mac-updating': o.macUpdating = true; break;
        case '--burst': o.burst = intOption('--burst', value(), 1, 512); break;
        case '--rxd': o.rxDesc = intOption('--rxd', value(), 1, 65536); break;
        case '--txd': o.txDesc = intOption('--txd', value(), 1, 65536); break;
        case '--duration': o.durationS = numberOption('--duration', value(), 0, 1e7); break;
        case '--rx-mode': {
          const v = value();
          if (v !== 'poll' && v !== 'interrupt' && v !== 'adaptive') throw new UsageError(`--rx-mode ${v}: expected poll, interrupt or adaptive`);
          o.rxMode = v;
          break;
        }
        case '--idle-polls': o.idlePolls = intOption('--idle-polls', value(), 1, 1e9); break;
        case '--json': o.json = true; break;
        default: throw new UsageError(`unknown l2fwd option "${flag}" (see --help)`);
      }
    });
    return o;
  },
  async main(eal, o) {
    // With --json, stdout carries only the summary: progress goes to stderr.
    const info = (line: string): void => void (o.json ? process.stderr : process.stdout).write(line + '\n');
    await probePorts(eal);
    const all = listPorts();
    const ports = all.filter((p) => o.portmask === null || (o.portmask & (1 << p.port)) !== 0);
    if (o.portmask !== null && o.portmask >= 1 << all.length) {
      throw new UsageError(`-p 0x${o.portmask.toString(16)} names ports that do not exist (there are ${all.length}: ${all.map((p) => `${p.port}=${p.name}`).join(', ') || 'none'})`);
    }
    const perLcore = o.queuesPerLcore ?? Math.max(1, Math.ceil(ports.length / Math.max(1, eal.lcores.workers.length)));
    const plan = planL2fwd(ports, eal.lcores.workers, perLcore);
    const lcoresUsed = new Set(plan.map((a) => a.lcore)).size;
    const nbMbufs = Math.max(8191, ports.length * (o.rxDesc + o.txDesc + o.burst) + lcoresUsed * 512 - 1);
    const sleeping = o.rxMode !== 'poll';
    if (sleeping) {
      for (const p of ports) {
        const di = p.info();
        if (!di.capabilities.includes('rx-interrupt')) {
          throw new UsageError(`--rx-mode ${o.rxMode}: port ${p.port} (${p.name}) uses driver ${di.driverName}, which has no Rx interrupt: use --rx-mode poll, leave the port out with -p, or use a driver that has one (${rxInterruptDriverNames()})`);
        }
      }
    }
    const pool = pktmbufPoolCreate(eal.memory, 'l2fwd_pool', nbMbufs, { cacheSize: 256 });
    for (const p of ports) {
      p.configure({ rxQueues: 1, txQueues: 1, promiscuous: true, ...(sleeping ? { intr: { rxq: true } } : {}) });
      p.rxQueueSetup(0, o.rxDesc, pool);
      p.txQueueSetup(0, o.txDesc);
      p.start();
      info(`port ${p.port} (${p.name}, ${p.info().driverName}): MAC ${p.macString()}, link ${p.link().up ? 'up' : 'down'}`);
    }
    const drops = new SharedArrayBuffer(8 * 64);
    const dropView = new Float64Array(drops);
    const byLcore = new Map<number, L2fwdAssignment[]>();
    for (const a of plan) {
      const dst = a.tx.port;
      const list = byLcore.get(a.lcore) ?? [];
      list.push({ rx: a.rx.data(), tx: a.tx.data(), dstMac: [2, 0, 0, 0, 0, dst & 0xff], srcMac: a.tx.macAddr(), dropIndex: ports.indexOf(a.rx) });
      byLcore.set(a.lcore, list);
      info(`lcore ${a.lcore}: RX port ${a.rx.port} -> TX port ${dst}`);
    }
    const reporter = new StatsReporter(ports, (i) => dropView[i]);
    reporter.start(o.json ? 0 : o.periodS);
    const running = [...byLcore].map(([lcore, assignments]) => {
      const arg: L2fwdLcoreArg = {
        assignments, burst: o.burst, macUpdating: o.macUpdating, drops,
        idlePolls: o.rxMode === 'poll' ? 0 : o.rxMode === 'interrupt' ? 1 : o.idlePolls,
      };
      return eal.lcores.launch(lcore, import.meta.url, l2fwdLoop, arg);
    });
    let results: L2fwdLcoreResult[];
    try {
      ({ results } = await runLcoresUntilDone(eal, running, o.durationS));
    } finally {
      reporter.stop();
    }
    const rs = results;
    const gcCount = rs.reduce((a, r) => a + r.gcCount, 0), gcSteady = rs.reduce((a, r) => a + r.gcCountAfterWarmup, 0);
    const scavenges = rs.reduce((a, r) => a + r.scavengesAfterWarmup, 0);
    const sum = (k: 'sleeps' | 'wakeups' | 'timeouts' | 'raced' | 'errors' | 'sleptMs'): number => rs.reduce((a, r) => a + r[k], 0);
    // Interrupts each port's RX queue delivered (its rx_q0_interrupts xstat), read before stop.
    const intrs = ports.map((p) => p.xstats()['rx_q0_interrupts'] ?? 0);
    for (const p of ports) p.stop();
    const leaked = pool.inUseCount();
    const summary = reporter.summary('l2fwd', {
      worker_gc_count: gcSteady, worker_scavenges: scavenges, worker_gc_count_with_warmup: gcCount, mbufs_in_use_after_stop: leaked,
      rx_mode: o.rxMode, rx_interrupts: intrs.reduce((a, b) => a + b, 0), rx_interrupts_per_port: intrs,
      lcore_sleeps: sum('sleeps'), lcore_wakeups: sum('wakeups'), lcore_sleep_timeouts: sum('timeouts'), lcore_sleeps_raced: sum('raced'), lcore_sleep_errors: sum('errors'),
      lcore_asleep_s: Math.round(sum('sleptMs')) / 1000,
    });
    reporter.printSummary(summary, o.json);
    if (sleeping && !o.json) {
      info(`  rx-mode ${o.rxMode}: ${summary.rx_interrupts} Rx interrupts, ${summary.lcore_sleeps} sleeps (${summary.lcore_wakeups} woken by packets, ${summary.lcore_sleep_timeouts} timed out, ${summary.lcore_sleeps_raced} abandoned for packets that raced in), ${summary.lcore_asleep_s} s asleep`);
    }
    if (leaked !== 0) console.error(`tspmd l2fwd: warning: ${leaked} mbufs were not returned to the pool`);
    return 0;
  },
};

// ---- the forwarding loop, on each worker lcore ----

/** One RX port of an lcore and where its packets go. */
export interface L2fwdAssignment {
  rx: PortData;
  tx: PortData;
  /** destination and source MAC written into each frame */
  dstMac: number[];
  srcMac: number[];
  /** index of the RX port in the drop counters */
  dropIndex: number;
}

/** Argument of l2fwdLoop. */
export interface L2fwdLcoreArg {
  assignments: L2fwdAssignment[];
  burst: number;
  macUpdating: boolean;
  /** Float64Array counters of packets dropped, per port */
  drops: SharedArrayBuffer;
  /** 0: poll without sleeping; n: sleep on the RX queues' interrupts after n empty rounds (ports need intr.rxq) */
  idlePolls?: number;
}

/**
 * What an l2fwd lcore reports: garbage collections in all, and in the loop after its warm-up (its
 * first second and 10,000 packets), of which scavenges (young-generation collections: garbage made
 * per packet shows there first; a mark-compact after warm-up is the end of a marking begun at
 * start-up), and its RxIdleSleeper's counts (all 0 in poll mode).
 */
export interface L2fwdLcoreResult extends RxIdleStats {
  gcCount: number;
  gcCountAfterWarmup: number;
  scavengesAfterWarmup: number;
}

interface Fwd {
  rx: RxQueue;
  tx: TxQueue;
  /** the 12 address bytes (destination, source) as three little-endian u32 words */
  w0: number; w1: number; w2: number;
  drop: number;
}

/**
 * Interpreted and baseline code box doubles until the loop is optimized: allow it a second and
 * this many packets (time alone is a handful of packets on a loaded machine).
 */
const WARMUP_MS = 1000, WARMUP_PACKETS = 10_000;

/** Forward until stopped: receive a burst per port, rewrite the MACs, send it out of the pair, free what did not fit. */
export async function l2fwdLoop(arg: L2fwdLcoreArg, ctx: LcoreContext): Promise<L2fwdLcoreResult> {
  const fwd: Fwd[] = [];
  const idleQueues: RxIdleQueue[] = [];
  for (const a of arg.assignments) {
    const [w0, w1, w2] = macWords(a.dstMac, a.srcMac);
    const rx = await openRxQueue(a.rx, 0);
    fwd.push({ rx, tx: await openTxQueue(a.tx, 0), w0, w1, w2, drop: a.dropIndex });
    idleQueues.push({ rxq: rx, port: a.rx.port, name: a.rx.name, queue: 0 });
  }
  const idlePolls = arg.idlePolls ?? 0;
  const sleeper = idlePolls > 0 ? new RxIdleSleeper(idleQueues, { idlePolls, maxSleepMs: MAX_SLEEP_MS, stopRequested: ctx.stopRequested }) : null;
  const drops = new Float64Array(arg.drops);
  const burst = arg.burst, mac = arg.macUpdating, nf = fwd.length;
  const buf = new Uint32Array(burst);
  const pkt = new MbufView();
  const gc = countGc();
  let warm = performance.now() + WARMUP_MS, packets = 0, warmPackets = true;
  while (!ctx.stopRequested()) {
    let got = 0;
    for (let i = 0; i < nf; i++) {
      const f = fwd[i];
      const n = f.rx.rxBurst(buf, burst);
      if (n === 0) continue;
      got += n;
      if (mac) pkt.setMacWordsBurst(buf, 0, n, f.w0, f.w1, f.w2);
      const sent = f.tx.txBurst(buf, n, 0);
      if (sent < n) {
        pktmbufFreeBulk(buf, n - sent, sent);
        drops[f.drop] += n - sent;
      }
    }
    if (sleeper !== null) sleeper.round(got);
    if (warmPackets && (packets += got) >= WARMUP_PACKETS) {
      warmPackets = false;
      warm = Math.max(warm, performance.now());
    }
  }
  const loopEnd = performance.now();
  if (warmPackets) warm = loopEnd; // never warm: nothing after warm-up to count
  await gc.settle();
  gc.stop();
  for (const a of arg.assignments) for (const d of a.rx.rxPools) Mempool.attach(d).flushCache();
  const st = sleeper?.stats ?? { sleeps: 0, wakeups: 0, timeouts: 0, raced: 0, errors: 0, sleptMs: 0 };
  const after = gc.kindsBetween(warm, loopEnd);
  return { gcCount: gc.count(), gcCountAfterWarmup: after.scavenges + after.others, scavengesAfterWarmup: after.scavenges, ...st };
}

appMain(import.meta.url, l2fwd);
