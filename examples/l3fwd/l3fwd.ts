/**
 * l3fwd: DPDK's layer-3 forwarding sample, one module written against the package's entry point.
 * Every IPv4 and IPv6 packet received is looked up by its destination address (--lookup lpm: the
 * longest prefix in an Lpm/Lpm6 table) or by its 5-tuple (--lookup em: an exact match in a Hash
 * table) and sent out of the port the route names, with the destination MAC of that port (default
 * 02:00:00:00:00:<port>, --eth-dest) and the port's own MAC as source, IPv4 TTL decremented with an
 * incremental checksum update (RFC 1624) and the IPv6 hop limit decremented.
 *
 * By default it makes DPDK 22.11 l3fwd's decisions: the RFC 1812 checks it does (IPv4 version 4,
 * header length >= 20 bytes, total length >= 20; the checksum is left to hardware, so not checked),
 * a packet that fails them is dropped; a TTL of 1 is decremented and forwarded; a packet with no
 * route, and a frame that is neither IPv4 nor IPv6, goes back out of the port it came in on.
 * --strict adds what a router must do: header checksum verified, TTL/hop limit <= 1 dropped, no
 * route dropped, non-IP frames dropped, each counted by reason in the summary.
 *
 * Routes change at run time through the telemetry socket (LPM mode): /l3fwd/route_add,PREFIX,PORT,
 * /l3fwd/route_del,PREFIX and /l3fwd/routes. The lcores read the tables while the main thread
 * writes them; they pass a quiescent point (QSBR) after every round of bursts, so a table group is
 * reused only when no lcore can still be reading it (lib/lpm).
 *
 *   node dist/examples/l3fwd/l3fwd.js --no-huge --vdev net_pcap0,rx_pcap=in.pcap --vdev net_pcap1,tx_pcap=out.pcap -- -p 0x3
 *   npx tspmd l3fwd ...                     (the same app as a tspmd subcommand)
 */
import { readFileSync } from 'node:fs';
import {
  type App, type LcoreContext, type PortData, type RxQueue, type TxQueue, type LpmDesc, type Lpm6Desc, type HashDesc,
  UsageError, MbufView, Mempool, Lpm, Lpm6, Hash, LpmFullError,
  appMain, countGc, eachOption, intOption, listPorts, macWords, numberOption, openRxQueue, openTxQueue, pktmbufFreeBulk, portmaskOption,
  pktmbufPoolCreate, probePorts, runLcoresUntilDone, StatsReporter, wholeNumber, parseMac, formatMac, telemetryOf,
  parseIpv4, parseIpv4Prefix, parseIpv6, parseIpv6Prefix, formatIpv4Prefix, formatIpv6Prefix, maskIpv4, maskIpv6,
  type TelemetryValue,
} from '../../index.js';

/** How packets are looked up: longest prefix of the destination, or exact 5-tuple. */
export type L3fwdLookup = 'lpm' | 'em';

/** An IPv4 LPM route (a line "R198.18.0.0/24 0" of a rule file). */
export interface Route4 { ip: number; depth: number; port: number }
/** An IPv6 LPM route. */
export interface Route6 { ip: Uint8Array; depth: number; port: number }
/** An exact-match rule: destination, source, destination port, source port, protocol, out port. */
export interface EmRule { v6: boolean; dst: Uint8Array; src: Uint8Array; dport: number; sport: number; proto: number; port: number }
/** One RX queue and the lcore that polls it (a "(port,queue,lcore)" of --config). */
export interface RxConfig { port: number; queue: number; lcore: number }

/** l3fwd's options. */
export interface L3fwdOptions {
  portmask: number | null;
  config: RxConfig[] | null;
  lookup: L3fwdLookup;
  /** destination MAC per port (--eth-dest) */
  ethDest: Map<number, number[]>;
  /** routes read from --rule_ipv4 / --rule_ipv6 (null: DPDK's defaults) */
  routes4: Route4[] | null;
  routes6: Route6[] | null;
  em4: EmRule[] | null;
  em6: EmRule[] | null;
  ipv6: boolean;
  maxPktLen: number | null;
  strict: boolean;
  promiscuous: boolean;
  periodS: number;
  durationS: number;
  json: boolean;
  burst: number;
  rxDesc: number;
  txDesc: number;
}

// ---- rule files (DPDK 22.11 lpm_route_parse.c / em_route_parse.c formats) ----

/** DPDK's GET_CB_FIELD: strtoul base 0 (decimal, 0x hex, 0 octal) up to lim, nothing after it. */
function cbField(s: string, lim: number): number | null {
  let v: number;
  if (/^0x[0-9a-f]+$/i.test(s)) v = Number.parseInt(s.slice(2), 16);
  else if (/^0[0-7]*$/.test(s)) v = Number.parseInt(s, 8);
  else if (/^[1-9][0-9]*$/.test(s)) v = Number(s);
  else return null;
  return v <= lim ? v : null;
}

/**
 * The rules of a file in DPDK 22.11's format: '#' lines and blank lines are skipped, every other
 * line starts with 'R', then whitespace-separated fields. LPM: "R<addr>/<len> <port>"; EM:
 * "R<dst> <src> <dst port> <src port> <proto> <port>". parse turns the fields of one line into a
 * rule or throws a message. Throws UsageError naming the option, the file and the line.
 */
function readRuleFile<R>(opt: string, file: string, fields: number, parse: (f: string[]) => R): R[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`${opt}=${file}: cannot read the rule file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const out: R[] = [];
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.startsWith('#') || /^\s*$/.test(line)) return;
    const where = `${opt}=${file} line ${i + 1}`;
    if (line[0] !== 'R') throw new UsageError(`${where}: "${line}": a rule line starts with R (comments with #)`);
    const f = line.slice(1).split(/[ \t]+/).filter((x) => x !== '');
    if (f.length < fields) throw new UsageError(`${where}: "${line}": expected ${fields} fields, found ${f.length}`);
    try {
      out.push(parse(f));
    } catch (e) {
      throw new UsageError(`${where}: "${line}": ${(e as Error).message}`);
    }
  });
  if (out.length === 0) throw new UsageError(`${opt}=${file}: no rule (R...) lines in the file`);
  return out;
}

const outPort = (s: string): number => {
  const v = cbField(s, 255);
  if (v === null) throw new Error(`out port "${s}" must be a number from 0 to 255`);
  return v;
};

/** Read an LPM rule file of one family (DPDK 22.11's --rule_ipv4 / --rule_ipv6 with --lookup lpm). */
export function readLpmRules(opt: string, file: string, v6: false): Route4[];
export function readLpmRules(opt: string, file: string, v6: true): Route6[];
export function readLpmRules(opt: string, file: string, v6: boolean): Route4[] | Route6[] {
  if (v6) return readRuleFile(opt, file, 2, (f) => ({ ...parseIpv6Prefix(f[0]), port: outPort(f[1]) }));
  return readRuleFile(opt, file, 2, (f) => ({ ...parseIpv4Prefix(f[0]), port: outPort(f[1]) }));
}

/** Read an EM rule file of one family (DPDK 22.11's --rule_ipv4 / --rule_ipv6 with --lookup em). */
export function readEmRules(opt: string, file: string, v6: boolean): EmRule[] {
  return readRuleFile(opt, file, 6, (f) => {
    const addr = (s: string): Uint8Array => {
      if (v6) return parseIpv6(s);
      const ip = parseIpv4(s);
      return new Uint8Array([ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255]);
    };
    const num = (s: string, lim: number, what: string): number => {
      const v = cbField(s, lim);
      if (v === null) throw new Error(`${what} "${s}" must be a number from 0 to ${lim}`);
      return v;
    };
    return { v6, dst: addr(f[0]), src: addr(f[1]), dport: num(f[2], 0xffff, 'destination port'), sport: num(f[3], 0xffff, 'source port'), proto: num(f[4], 255, 'protocol'), port: outPort(f[5]) };
  });
}

/** DPDK l3fwd's built-in LPM routes: 198.18.P.0/24 -> P and 2001:200:0:P::/64 -> P, P = 0..15. */
export function defaultLpmRoutes(): { v4: Route4[]; v6: Route6[] } {
  const v4: Route4[] = [], v6: Route6[] = [];
  for (let p = 0; p < 16; p++) {
    v4.push({ ip: ((198 << 24) | (18 << 16) | (p << 8)) >>> 0, depth: 24, port: p });
    v6.push({ ip: new Uint8Array([0x20, 0x01, 0x02, 0, 0, 0, 0, p, 0, 0, 0, 0, 0, 0, 0, 0]), depth: 64, port: p });
  }
  return { v4, v6 };
}

/** DPDK l3fwd's built-in EM rules: UDP 9 -> 9 from 198.18.P.1 to 198.18.P.0 (2001:200:0:P::1 to ::0) -> P. */
export function defaultEmRules(v6: boolean): EmRule[] {
  const out: EmRule[] = [];
  for (let p = 0; p < 16; p++) {
    const dst = v6 ? new Uint8Array([0x20, 0x01, 0x02, 0, 0, 0, 0, p, 0, 0, 0, 0, 0, 0, 0, 0]) : new Uint8Array([198, 18, p, 0]);
    const src = dst.slice();
    src[src.length - 1] = 1;
    out.push({ v6, dst, src, dport: 9, sport: 9, proto: 17, port: p });
  }
  return out;
}

/** Bytes of an EM key: IPv4 16 (proto, src, dst, ports as in the header from TTL on), IPv6 40 (proto, src, dst, ports). */
export const EM_KEY4 = 16, EM_KEY6 = 40;

/** The EM key of a rule (IPv4 or IPv6), laid out as the lcore loop gathers it from a packet header. */
export function emRuleKey(r: EmRule): Uint8Array {
  const k = new Uint8Array(r.v6 ? EM_KEY6 : EM_KEY4);
  if (!r.v6) {
    k[1] = r.proto; k.set(r.src, 4); k.set(r.dst, 8);
    k[12] = r.sport >>> 8; k[13] = r.sport & 255; k[14] = r.dport >>> 8; k[15] = r.dport & 255;
  } else {
    k[0] = r.proto; k.set(r.src, 4); k.set(r.dst, 20);
    k[36] = r.sport >>> 8; k[37] = r.sport & 255; k[38] = r.dport >>> 8; k[39] = r.dport & 255;
  }
  return k;
}

/** Parse --config "(port,queue,lcore),...". */
export function parseConfig(s: string): RxConfig[] {
  const out: RxConfig[] = [];
  const re = /\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)/y;
  let i = 0;
  const t = s.trim();
  while (i < t.length) {
    re.lastIndex = i;
    const m = re.exec(t);
    if (!m) throw new UsageError(`--config "${s}": expected (port,queue,lcore) triples separated by commas, e.g. "(0,0,1),(1,0,1)"`);
    out.push({ port: Number(m[1]), queue: Number(m[2]), lcore: Number(m[3]) });
    i = re.lastIndex;
    while (t[i] === ',' || t[i] === ' ') i++;
  }
  if (out.length === 0) throw new UsageError(`--config "${s}": no (port,queue,lcore) triple`);
  return out;
}

/** Parse --eth-dest=P,MM:MM:MM:MM:MM:MM. */
function parseEthDest(v: string, into: Map<number, number[]>): void {
  const c = v.indexOf(',');
  const port = c < 0 ? null : wholeNumber(v.slice(0, c), 0, 31, 10);
  let mac: number[] | null = null;
  try { mac = c < 0 ? null : parseMac(v.slice(c + 1)); } catch { mac = null; }
  if (port === null || mac === null) throw new UsageError(`--eth-dest=${v}: expected PORT,MM:MM:MM:MM:MM:MM, e.g. --eth-dest=1,02:00:00:00:00:01`);
  into.set(port, mac);
}

// ---- drop reasons (the summary's "dropped" object) ----

/** Why a packet was dropped: index into the lcores' counters. */
export const DROP_REASONS = ['bad_header', 'bad_length', 'bad_checksum', 'ttl_exceeded', 'no_route', 'not_ip'] as const;
/** Counters per lcore: the reasons, then "TX full" per port (up to 32 ports). */
const COUNTERS_PER_LCORE = 8 + 32;

/** The l3fwd app (tspmd l3fwd). */
export const l3fwd: App<L3fwdOptions> = {
  name: 'l3fwd',
  summary: 'Layer-3 forwarding by longest prefix or exact 5-tuple, as DPDK\'s l3fwd sample.',
  help: `  -p PORTMASK         hexadecimal mask of ports to use (default: all)
  -P                  promiscuous mode on the ports
  --config "(port,queue,lcore),..."
                      which lcore polls which RX queue (default: queue 0 of each port, the ports
                      spread over the worker lcores)
  --lookup lpm|em     longest prefix match of the destination (default) or exact 5-tuple match (-L / -E)
  --eth-dest=P,MAC    destination MAC for packets out of port P (default 02:00:00:00:00:0P)
  --rule_ipv4=FILE    IPv4 rules, DPDK 22.11's format ("R198.18.0.0/24 0" for lpm;
                      "R<dst> <src> <dport> <sport> <proto> <port>" for em); default DPDK's table
  --rule_ipv6=FILE    IPv6 rules, the same formats
  --ipv6              em: use the IPv6 rules (DPDK: the EM tables hold one family)
  --max-pkt-len N     largest frame: sets the ports' MTU to N - 18
  --parse-ptype       accepted (packet types are always parsed in software)
  --strict            drop what a router must: bad IPv4 checksum, TTL/hop limit <= 1, no route,
                      non-IP frames (default: DPDK l3fwd's decisions, see docs/l3fwd.md)
  -T SEC              statistics period in seconds, 0 to disable (default 10)
  --burst N           packets per burst (default 32)
  --rxd N / --txd N   descriptors per RX / TX queue (default 1024)
  --duration SEC      stop by itself after SEC seconds (default: until SIGINT)
  --json              print the final summary as one JSON line`,
  parse(args) {
    const o: L3fwdOptions = {
      portmask: null, config: null, lookup: 'lpm', ethDest: new Map(), routes4: null, routes6: null, em4: null, em6: null,
      ipv6: false, maxPktLen: null, strict: false, promiscuous: false, periodS: 10, durationS: 0, json: false, burst: 32, rxDesc: 1024, txDesc: 1024,
    };
    let rule4: string | null = null, rule6: string | null = null;
    eachOption(args, (flag, value) => {
      switch (flag) {
        case '-p': o.portmask = portmaskOption('-p', value()); break;
        case '-P': o.promiscuous = true; break;
        case '--config': o.config = parseConfig(value()); break;
        case '--lookup': {
          const v = value();
          if (v !== 'lpm' && v !== 'em') throw new UsageError(`--lookup ${v}: expected lpm or em`);
          o.lookup = v;
          break;
        }
        case '-L': o.lookup = 'lpm'; break;
        case '-E': o.lookup = 'em'; break;
        case '--eth-dest': parseEthDest(value(), o.ethDest); break;
        case '--rule_ipv4': rule4 = value(); break;
        case '--rule_ipv6': rule6 = value(); break;
        case '--ipv6': o.ipv6 = true; break;
        case '--max-pkt-len': o.maxPktLen = intOption('--max-pkt-len', value(), 64, 9018); break;
        case '--parse-ptype': break;
        case '--strict': o.strict = true; break;
        case '-T': o.periodS = numberOption('-T', value(), 0, 86400); break;
        case '--burst': o.burst = intOption('--burst', value(), 1, 512); break;
        case '--rxd': o.rxDesc = intOption('--rxd', value(), 1, 65536); break;
        case '--txd': o.txDesc = intOption('--txd', value(), 1, 65536); break;
        case '--duration': o.durationS = numberOption('--duration', value(), 0, 1e7); break;
        case '--json': o.json = true; break;
        default: throw new UsageError(`unknown l3fwd option "${flag}" (see --help)`);
      }
    });
    // One rule file is enough (DPDK 22.11 needs both): the other family keeps DPDK's defaults.
    if (o.lookup === 'lpm') {
      if (rule4 !== null) o.routes4 = readLpmRules('--rule_ipv4', rule4, false);
      if (rule6 !== null) o.routes6 = readLpmRules('--rule_ipv6', rule6, true);
    } else {
      if (rule4 !== null) o.em4 = readEmRules('--rule_ipv4', rule4, false);
      if (rule6 !== null) o.em6 = readEmRules('--rule_ipv6', rule6, true);
    }
    return o;
  },
  async main(eal, o) {
    const info = (line: string): void => void (o.json ? process.stderr : process.stdout).write(line + '\n');
    await probePorts(eal);
    const all = listPorts();
    if (o.portmask !== null && o.portmask >= 2 ** all.length) {
      throw new UsageError(`-p 0x${o.portmask.toString(16)} names ports that do not exist (there are ${all.length}: ${all.map((p) => `${p.port}=${p.name}`).join(', ') || 'none'})`);
    }
    const ports = all.filter((p) => o.portmask === null || (o.portmask & (1 << p.port)) !== 0);
    if (ports.length === 0) throw new UsageError('no ports to forward between: add some, e.g. --vdev net_pcap0,rx_pcap=in.pcap --vdev net_pcap1,tx_pcap=out.pcap');
    if (ports.length > 32) throw new UsageError(`l3fwd forwards between at most 32 ports (${ports.length} enabled): narrow them with -p`);
    const workers = eal.lcores.workers;
    if (workers.length === 0) throw new UsageError('l3fwd needs a worker lcore besides the main one: use -l with two cores, e.g. -l 0-1');
    const enabled = new Set(ports.map((p) => p.port));
    const config = o.config ?? ports.map((p, i) => ({ port: p.port, queue: 0, lcore: workers[i % workers.length] }));
    for (const c of config) {
      if (!enabled.has(c.port)) throw new UsageError(`--config (${c.port},${c.queue},${c.lcore}): port ${c.port} is not enabled by the portmask (-p)`);
      if (c.lcore === eal.lcores.main) throw new UsageError(`--config (${c.port},${c.queue},${c.lcore}): lcore ${c.lcore} is the main lcore, which runs the control plane: name a worker (${workers.join(', ')})`);
      if (!workers.includes(c.lcore)) throw new UsageError(`--config (${c.port},${c.queue},${c.lcore}): lcore ${c.lcore} is not enabled: give it with -l (workers: ${workers.join(', ')})`);
    }
    const seen = new Set<string>();
    for (const c of config) {
      const k = `${c.port}/${c.queue}`;
      if (seen.has(k)) throw new UsageError(`--config: port ${c.port} queue ${c.queue} is given twice`);
      seen.add(k);
    }
    const lcores = [...new Set(config.map((c) => c.lcore))].sort((a, b) => a - b);
    const rxQueues = new Map<number, number>();
    for (const c of config) rxQueues.set(c.port, Math.max(rxQueues.get(c.port) ?? 0, c.queue + 1));
    for (const p of ports) {
      const di = p.info();
      const nrx = rxQueues.get(p.port) ?? 0;
      if (nrx > di.maxRxQueues) throw new UsageError(`--config: port ${p.port} (${p.name}, ${di.driverName}) has ${di.maxRxQueues} RX queue(s), the config uses ${nrx}`);
      if (lcores.length > di.maxTxQueues) throw new UsageError(`port ${p.port} (${p.name}, ${di.driverName}) has ${di.maxTxQueues} TX queue(s): each of the ${lcores.length} forwarding lcores needs one; use fewer lcores in --config`);
    }
    const nbMbufs = Math.max(8191, ports.length * (o.rxDesc * 2 + o.txDesc * lcores.length) + lcores.length * (o.burst * (ports.length + 2) + 512) - 1);
    const pool = pktmbufPoolCreate(eal.memory, 'l3fwd_pool', nbMbufs, { cacheSize: 256 });
    for (const p of ports) {
      const nrx = Math.max(1, rxQueues.get(p.port) ?? 0);
      p.configure({ rxQueues: nrx, txQueues: lcores.length, promiscuous: o.promiscuous, ...(o.maxPktLen !== null ? { mtu: o.maxPktLen - 18 } : {}) });
      for (let q = 0; q < nrx; q++) p.rxQueueSetup(q, o.rxDesc, pool);
      for (let q = 0; q < lcores.length; q++) p.txQueueSetup(q, o.txDesc);
      p.start();
      info(`port ${p.port} (${p.name}, ${p.info().driverName}): MAC ${p.macString()}, destination MAC ${formatMac(o.ethDest.get(p.port) ?? [2, 0, 0, 0, 0, p.port])}`);
    }

    // The tables: created here, so this thread is their writer; the lcores attach read-only.
    const tables = new L3fwdTables(o, enabled, info);
    const tel = telemetryOf(eal);
    if (tel) tables.registerCommands(tel);

    const counters = new SharedArrayBuffer(8 * COUNTERS_PER_LCORE * lcores.length);
    const cview = new Float64Array(counters);
    const portIndex = new Array<number>(Math.max(...ports.map((p) => p.port)) + 1).fill(-1);
    ports.forEach((p, i) => { portIndex[p.port] = i; });
    const macs = ports.flatMap((p) => macWords(o.ethDest.get(p.port) ?? [2, 0, 0, 0, 0, p.port & 0xff], p.macAddr()));
    const reporter = new StatsReporter(ports, (i) => {
      let s = 0;
      for (let k = 0; k < lcores.length; k++) s += cview[k * COUNTERS_PER_LCORE + 8 + i];
      return s;
    });
    reporter.start(o.json ? 0 : o.periodS);
    const running = lcores.map((lcore, k) => {
      const rx = config.filter((c) => c.lcore === lcore).map((c) => ({ port: ports[portIndex[c.port]].data(), queue: c.queue }));
      for (const c of config.filter((x) => x.lcore === lcore)) info(`lcore ${lcore}: RX port ${c.port} queue ${c.queue}`);
      const arg: L3fwdLcoreArg = {
        rx, tx: ports.map((p) => p.data()), txQueue: k, portIndex, macs, burst: o.burst, strict: o.strict, lookup: o.lookup,
        lpm4: tables.lpm4?.desc ?? null, lpm6: tables.lpm6?.desc ?? null, em4: tables.em4?.desc ?? null, em6: tables.em6?.desc ?? null,
        counters, counterBase: k * COUNTERS_PER_LCORE,
      };
      return eal.lcores.launch(lcore, import.meta.url, l3fwdLoop, arg);
    });
    let results: L3fwdLcoreResult[];
    try {
      ({ results } = await runLcoresUntilDone(eal, running, o.durationS));
    } finally {
      reporter.stop();
    }
    const gcCount = results.reduce((a, r) => a + r.gcCount, 0), gcSteady = results.reduce((a, r) => a + r.gcCountAfterWarmup, 0);
    const scavenges = results.reduce((a, r) => a + r.scavengesAfterWarmup, 0);
    for (const p of ports) p.stop();
    const leaked = pool.inUseCount();
    const dropped: Record<string, number> = {};
    DROP_REASONS.forEach((r, j) => {
      let s = 0;
      for (let k = 0; k < lcores.length; k++) s += cview[k * COUNTERS_PER_LCORE + j];
      dropped[r] = s;
    });
    const summary = reporter.summary('l3fwd', {
      lookup: o.lookup, strict: o.strict, dropped, route_changes: tables.changes,
      worker_gc_count: gcSteady, worker_scavenges: scavenges, worker_gc_count_with_warmup: gcCount, mbufs_in_use_after_stop: leaked,
    });
    reporter.printSummary(summary, o.json);
    if (!o.json) info(`  dropped: ${DROP_REASONS.map((r) => `${r} ${dropped[r]}`).join(', ')}`);
    if (leaked !== 0) console.error(`tspmd l3fwd: warning: ${leaked} mbufs were not returned to the pool`);
    return 0;
  },
};

// ---- the tables and the route commands (main thread) ----

/** l3fwd's lookup tables, built from the rules of the enabled ports; in LPM mode changed at run time. */
export class L3fwdTables {
  lpm4: Lpm | null = null;
  lpm6: Lpm6 | null = null;
  em4: Hash | null = null;
  em6: Hash | null = null;
  /** routes added or deleted through the telemetry socket */
  changes = 0;

  /** Build the tables o asks for; routes to ports outside enabled are left out (as DPDK does), each with a line to info. */
  constructor(private readonly o: L3fwdOptions, private readonly enabled: Set<number>, info: (line: string) => void) {
    if (o.lookup === 'lpm') {
      const d = defaultLpmRoutes();
      this.lpm4 = Lpm.create('l3fwd_ipv4', { maxRules: 1 << 16, numberTbl8s: 1024 });
      this.lpm6 = Lpm6.create('l3fwd_ipv6', { maxRules: 1 << 16, numberTbl8s: 4096 });
      for (const r of o.routes4 ?? d.v4) {
        if (!enabled.has(r.port)) { info(`LPM: skipping route ${formatIpv4Prefix(r.ip, r.depth)} -> port ${r.port} (not enabled)`); continue; }
        this.lpm4.add(r.ip, r.depth, r.port);
      }
      for (const r of o.routes6 ?? d.v6) {
        if (!enabled.has(r.port)) { info(`LPM: skipping route ${formatIpv6Prefix(r.ip, r.depth)} -> port ${r.port} (not enabled)`); continue; }
        this.lpm6.add(r.ip, r.depth, r.port);
      }
      info(`LPM: ${this.lpm4.rules} IPv4 routes, ${this.lpm6.rules} IPv6 routes`);
    } else {
      // As DPDK's EM mode: one family's rules in the tables (--ipv6 picks IPv6).
      const rules = o.ipv6 ? (o.em6 ?? defaultEmRules(true)) : (o.em4 ?? defaultEmRules(false));
      const h = Hash.create(o.ipv6 ? 'l3fwd_em6' : 'l3fwd_em4', { entries: Math.max(1024, rules.length * 2), keyLen: o.ipv6 ? EM_KEY6 : EM_KEY4 });
      for (const r of rules) {
        if (!enabled.has(r.port)) { info(`EM: skipping rule to port ${r.port} (not enabled)`); continue; }
        h.add(emRuleKey(r), 0, r.port);
      }
      if (o.ipv6) this.em6 = h; else this.em4 = h;
      info(`EM: ${h.count} ${o.ipv6 ? 'IPv6' : 'IPv4'} rules`);
    }
  }

  /** Add a route PREFIX -> port (IPv4 or IPv6 by the text); throws a one-line message on bad input. */
  add(prefix: string, port: number): void {
    if (!this.enabled.has(port)) throw new Error(`port ${port} is not enabled (enabled: ${[...this.enabled].join(', ')})`);
    if (prefix.includes(':')) {
      const p = parseIpv6Prefix(prefix);
      this.lpmOnly().lpm6!.add(p.ip, p.depth, port);
    } else {
      const p = parseIpv4Prefix(prefix);
      this.lpmOnly().lpm4!.add(p.ip, p.depth, port);
    }
    this.changes++;
  }

  /** Delete the route PREFIX; false when there was none. */
  delete(prefix: string): boolean {
    let ok: boolean;
    if (prefix.includes(':')) {
      const p = parseIpv6Prefix(prefix);
      ok = this.lpmOnly().lpm6!.delete(p.ip, p.depth);
    } else {
      const p = parseIpv4Prefix(prefix);
      ok = this.lpmOnly().lpm4!.delete(p.ip, p.depth);
    }
    if (ok) this.changes++;
    return ok;
  }

  private lpmOnly(): this {
    if (this.lpm4 === null || this.lpm6 === null) throw new Error('routes change at run time with --lookup lpm only');
    return this;
  }

  /** The routes, as "prefix" -> port. */
  routes(): { ipv4: Record<string, number>; ipv6: Record<string, number> } {
    const ipv4: Record<string, number> = {}, ipv6: Record<string, number> = {};
    for (const [ip, depth, hop] of this.lpm4?.ruleList() ?? []) ipv4[formatIpv4Prefix(maskIpv4(ip, depth), depth)] = hop;
    for (const [ip, depth, hop] of this.lpm6?.ruleList() ?? []) ipv6[formatIpv6Prefix(maskIpv6(ip.slice(), depth), depth)] = hop;
    return { ipv4, ipv6 };
  }

  /**
   * The telemetry commands. The socket's directory is 0700 and the socket 0600, owned by the user
   * running l3fwd (lib/telemetry/server.ts): only that user and root can connect, so only they can
   * change routes (docs/security.md).
   */
  registerCommands(tel: { register(cmd: string, help: string, fn: (params: string | null) => TelemetryValue): void }): void {
    const guard = (fn: (params: string | null) => TelemetryValue) => (params: string | null): TelemetryValue => {
      try {
        return fn(params);
      } catch (e) {
        return { error: e instanceof LpmFullError || e instanceof Error ? e.message : String(e) };
      }
    };
    tel.register('/l3fwd/routes', 'Returns the LPM routes as prefix: port. Takes no parameters', () => this.routes());
    tel.register('/l3fwd/route_add', 'Adds or changes a route. Parameters: string prefix, int port (e.g. 198.18.9.0/24,1)', guard((params) => {
      const m = /^\s*([^,\s]+)\s*,\s*(\d+)\s*$/.exec(params ?? '');
      if (!m) throw new Error(`expected PREFIX,PORT (e.g. 198.18.9.0/24,1), got "${params ?? ''}"`);
      this.add(m[1], Number(m[2]));
      return { added: m[1], port: Number(m[2]) };
    }));
    tel.register('/l3fwd/route_del', 'Deletes a route. Parameters: string prefix (e.g. 198.18.9.0/24)', guard((params) => {
      const prefix = (params ?? '').trim();
      if (prefix === '') throw new Error('expected PREFIX (e.g. 198.18.9.0/24)');
      if (!this.delete(prefix)) throw new Error(`no route ${prefix}`);
      return { deleted: prefix };
    }));
  }
}

// ---- the forwarding loop, on each worker lcore ----

/** Argument of l3fwdLoop. */
export interface L3fwdLcoreArg {
  /** the RX queues this lcore polls */
  rx: Array<{ port: PortData; queue: number }>;
  /** every enabled port, in portIndex order; this lcore sends on queue txQueue of each */
  tx: PortData[];
  txQueue: number;
  /** port id -> index into tx (-1: not enabled) */
  portIndex: number[];
  /** per tx port, the destination + source MAC as three u32 words (macWords) */
  macs: number[];
  burst: number;
  strict: boolean;
  lookup: L3fwdLookup;
  lpm4: LpmDesc | null;
  lpm6: Lpm6Desc | null;
  em4: HashDesc | null;
  em6: HashDesc | null;
  /** Float64Array counters shared with the main thread: drop reasons, then TX-full drops per port */
  counters: SharedArrayBuffer;
  counterBase: number;
}

/** What an l3fwd lcore reports: garbage collections in all and after its warm-up (as l2fwd's). */
export interface L3fwdLcoreResult {
  gcCount: number;
  gcCountAfterWarmup: number;
  scavengesAfterWarmup: number;
}

const WARMUP_MS = 1000, WARMUP_PACKETS = 10_000;

/**
 * Check and rewrite the IPv4 header at ip (after the lookup): RFC 1812's checks as DPDK l3fwd does
 * them, and with strict the router's. Returns -1 to forward (TTL decremented, checksum updated) or
 * the index of the drop reason. len: bytes of the frame.
 */
export function ipv4Process(u8: Uint8Array, ip: number, len: number, found: boolean, strict: boolean): number {
  const vihl = u8[ip];
  // DPDK's rfc1812_process: version 4, IHL >= 5, total length >= 20.
  if (vihl < 0x45 || vihl > 0x4f || (u8[ip + 2] === 0 && u8[ip + 3] < 20)) return 0;
  if (strict) {
    const why = ipv4Strict(u8, ip, len, found);
    if (why >= 0) return why;
  }
  // TTL - 1 and the checksum by RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), m the TTL/protocol word.
  const ttl = u8[ip + 8], proto = u8[ip + 9];
  const m = (ttl << 8) | proto, m2 = (((ttl - 1) & 0xff) << 8) | proto;
  let s = (~((u8[ip + 10] << 8) | u8[ip + 11]) & 0xffff) + (~m & 0xffff) + m2;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  const c = ~s & 0xffff;
  u8[ip + 8] = ttl - 1;
  u8[ip + 10] = c >>> 8;
  u8[ip + 11] = c & 0xff;
  return -1;
}

/** A router's checks on a header that passed RFC 1812's (apart from them so that ipv4Process stays small enough to inline): the drop reason, or -1. */
function ipv4Strict(u8: Uint8Array, ip: number, len: number, found: boolean): number {
  const vihl = u8[ip], ihl = (vihl & 15) << 2, tl = (u8[ip + 2] << 8) | u8[ip + 3];
  if (tl < ihl || ip + tl > len) return 1;
  let s = 0;
  for (let i = 0; i < ihl; i += 2) s += (u8[ip + i] << 8) | u8[ip + i + 1];
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  if (s !== 0xffff) return 2;
  if (u8[ip + 8] <= 1) return 3;
  if (!found) return 4;
  return -1;
}

/** The IPv6 header at ip: with strict, version 6, hop limit > 1 and a route; the hop limit decremented (not below 0). -1 to forward, else the drop reason. */
export function ipv6Process(u8: Uint8Array, ip: number, len: number, found: boolean, strict: boolean): number {
  if (strict) {
    if ((u8[ip] >>> 4) !== 6) return 0;
    if (ip + 40 > len) return 1;
    if (u8[ip + 7] <= 1) return 3;
    if (!found) return 4;
  }
  const hl = u8[ip + 7];
  if (hl > 0) u8[ip + 7] = hl - 1;
  return -1;
}

/** Forward until stopped: per RX queue a burst, one bulk lookup per family, checks and rewrite per packet, one TX burst per output port. */
export async function l3fwdLoop(arg: L3fwdLcoreArg, ctx: LcoreContext): Promise<L3fwdLcoreResult> {
  const rxqs: RxQueue[] = [];
  const rxPort: number[] = [];
  for (const r of arg.rx) {
    rxqs.push(await openRxQueue(r.port, r.queue));
    rxPort.push(r.port.port);
  }
  const txqs: TxQueue[] = [];
  for (const p of arg.tx) txqs.push(await openTxQueue(p, arg.txQueue));
  const id = ctx.id;
  const lpm4 = arg.lpm4 ? Lpm.attach(arg.lpm4) : null;
  const lpm6 = arg.lpm6 ? Lpm6.attach(arg.lpm6) : null;
  const em4 = arg.em4 ? Hash.attach(arg.em4) : null;
  const em6 = arg.em6 ? Hash.attach(arg.em6) : null;
  lpm4?.readerOnline(id);
  lpm6?.readerOnline(id);
  try {
    return await forward(arg, ctx, rxqs, rxPort, txqs, lpm4, lpm6, em4, em6);
  } finally {
    lpm4?.readerOffline(id);
    lpm6?.readerOffline(id);
  }
}

/**
 * One burst's work, in three methods called once per burst: classify (EtherType and lookup keys),
 * lookup (one bulk lookup per family), route (checks, rewrite, per-port TX bursts). Each method
 * is optimized on its own, so the per-packet accessors it calls are inlined within its budget; one
 * loop body holding all three stages was past TurboFan's inlining budget and called MbufView's
 * getters and ipv4Process per packet. Everything is allocated in the constructor.
 */
class Burst {
  declare readonly size: number;
  declare readonly strict: boolean;
  declare readonly em: boolean;
  declare readonly ntx: number;
  declare readonly counters: Float64Array;
  declare readonly cb: number;
  declare readonly portIndex: Int32Array;
  declare readonly macs: Uint32Array;
  declare readonly buf: Uint32Array;
  declare readonly kind: Uint8Array;
  declare readonly slot: Int32Array;
  declare readonly ips4: Uint32Array;
  declare readonly ips6: Uint8Array;
  declare readonly keys4: Uint8Array;
  declare readonly keys6: Uint8Array;
  declare readonly hops4: Int32Array;
  declare readonly hops6: Int32Array;
  declare readonly stage: Uint32Array;
  declare readonly count: Int32Array;
  declare readonly dropBuf: Uint32Array;
  declare readonly v: MbufView;
  declare n4: number;
  declare n6: number;

  constructor(arg: L3fwdLcoreArg, ntx: number) {
    const burst = arg.burst;
    this.size = burst;
    this.strict = arg.strict;
    this.em = arg.lookup === 'em';
    this.ntx = ntx;
    this.counters = new Float64Array(arg.counters);
    this.cb = arg.counterBase;
    this.portIndex = Int32Array.from(arg.portIndex);
    this.macs = Uint32Array.from(arg.macs);
    this.buf = new Uint32Array(burst);
    this.kind = new Uint8Array(burst);
    this.slot = new Int32Array(burst);
    this.ips4 = new Uint32Array(burst);
    this.ips6 = new Uint8Array(burst * 16);
    this.keys4 = new Uint8Array(burst * EM_KEY4);
    this.keys6 = new Uint8Array(burst * EM_KEY6);
    this.hops4 = new Int32Array(burst);
    this.hops6 = new Int32Array(burst);
    this.stage = new Uint32Array(burst * ntx);
    this.count = new Int32Array(ntx);
    this.dropBuf = new Uint32Array(burst);
    this.v = new MbufView();
    this.n4 = 0;
    this.n6 = 0;
  }

  /** 1. classify by EtherType (as --parse-ptype does) and gather the lookup keys of each family. */
  classify(n: number): void {
    const buf = this.buf, kind = this.kind, slot = this.slot, v = this.v, em = this.em;
    const keys4 = this.keys4, keys6 = this.keys6, ips4 = this.ips4, ips6 = this.ips6;
    let n4 = 0, n6 = 0;
    for (let i = 0; i < n; i++) {
      v.at(buf[i]);
      const u8 = v.u8, d = v.data;
      const et = (u8[d + 12] << 8) | u8[d + 13];
      if (et === 0x0800) {
        kind[i] = 4;
        slot[i] = n4;
        if (em) {
          const k = n4 * 16, ip = d + 14;
          // TTL and checksum masked out, as DPDK's mask0: the key is protocol, addresses, ports
          keys4[k] = 0; keys4[k + 1] = u8[ip + 9]; keys4[k + 2] = 0; keys4[k + 3] = 0;
          for (let j = 4; j < 16; j++) keys4[k + j] = u8[ip + 8 + j];
        } else {
          ips4[n4] = ((u8[d + 30] << 24) | (u8[d + 31] << 16) | (u8[d + 32] << 8) | u8[d + 33]) >>> 0;
        }
        n4++;
      } else if (et === 0x86dd) {
        kind[i] = 6;
        slot[i] = n6;
        if (em) {
          const k = n6 * 40, ip = d + 14;
          keys6[k] = u8[ip + 6]; keys6[k + 1] = 0; keys6[k + 2] = 0; keys6[k + 3] = 0;
          for (let j = 0; j < 36; j++) keys6[k + 4 + j] = u8[ip + 8 + j];
        } else {
          const k = n6 * 16, a = d + 38;
          for (let j = 0; j < 16; j++) ips6[k + j] = u8[a + j];
        }
        n6++;
      } else {
        kind[i] = 0;
      }
    }
    this.n4 = n4;
    this.n6 = n6;
  }

  /** 2. one bulk lookup per family; -1: no route. */
  lookup(lpm4: Lpm | null, lpm6: Lpm6 | null, em4: Hash | null, em6: Hash | null): void {
    const n4 = this.n4, n6 = this.n6;
    if (n4 > 0) {
      if (lpm4 !== null) lpm4.lookupBulk(this.ips4, this.hops4, n4);
      else if (em4 !== null) em4.lookupBulk(this.keys4, 0, n4, this.hops4);
      else this.hops4.fill(-1, 0, n4);
    }
    if (n6 > 0) {
      if (lpm6 !== null) lpm6.lookupBulk(this.ips6, this.hops6, n6);
      else if (em6 !== null) em6.lookupBulk(this.keys6, 0, n6, this.hops6);
      else this.hops6.fill(-1, 0, n6);
    }
  }

  /** 3. check, rewrite, and sort into per-port TX bursts; the dropped are freed and counted by reason. */
  route(n: number, inPort: number): void {
    const buf = this.buf, kind = this.kind, slot = this.slot, hops4 = this.hops4, hops6 = this.hops6, v = this.v;
    const strict = this.strict, portIndex = this.portIndex, macs = this.macs, counters = this.counters, cb = this.cb;
    const stage = this.stage, count = this.count, dropBuf = this.dropBuf, burst = this.size;
    let nd = 0;
    for (let i = 0; i < n; i++) {
      const m = buf[i];
      v.at(m);
      const u8 = v.u8, d = v.data, len = d + v.dataLen;
      const k = kind[i];
      let hop = -1, why = -1;
      if (k === 4) {
        hop = hops4[slot[i]];
        why = ipv4Process(u8, d + 14, len, hop >= 0, strict);
      } else if (k === 6) {
        hop = hops6[slot[i]];
        why = ipv6Process(u8, d + 14, len, hop >= 0, strict);
      } else if (strict) {
        why = 5;
      }
      let t = hop >= 0 && hop < portIndex.length ? portIndex[hop] : -1;
      if (t < 0) {
        if (strict && why < 0) why = 4;
        t = portIndex[inPort];
      }
      if (why >= 0) {
        counters[cb + why]++;
        dropBuf[nd++] = m;
        continue;
      }
      v.setMacWords(macs[3 * t], macs[3 * t + 1], macs[3 * t + 2]);
      stage[t * burst + count[t]++] = m;
    }
    if (nd > 0) pktmbufFreeBulk(dropBuf, nd, 0);
  }

  /** 4. one TX burst per output port; what a queue does not take is freed and counted. */
  send(txqs: TxQueue[]): void {
    const count = this.count, stage = this.stage, burst = this.size, counters = this.counters, cb = this.cb;
    for (let t = 0; t < this.ntx; t++) {
      const c = count[t];
      if (c === 0) continue;
      count[t] = 0;
      const sent = txqs[t].txBurst(stage, c, t * burst);
      if (sent < c) {
        pktmbufFreeBulk(stage, c - sent, t * burst + sent);
        counters[cb + 8 + t] += c - sent;
      }
    }
  }
}

/** The loop itself: everything it touches is allocated before it starts. */
async function forward(arg: L3fwdLcoreArg, ctx: LcoreContext, rxqs: RxQueue[], rxPort: number[], txqs: TxQueue[],
  lpm4: Lpm | null, lpm6: Lpm6 | null, em4: Hash | null, em6: Hash | null): Promise<L3fwdLcoreResult> {
  const id = ctx.id, nrx = rxqs.length;
  const b = new Burst(arg, txqs.length), buf = b.buf, size = b.size;
  const gc = countGc();
  let warm = performance.now() + WARMUP_MS, packets = 0, warmPackets = true;
  while (!ctx.stopRequested()) {
    let got = 0;
    for (let q = 0; q < nrx; q++) {
      const n = rxqs[q].rxBurst(buf, size);
      if (n === 0) continue;
      got += n;
      b.classify(n);
      b.lookup(lpm4, lpm6, em4, em6);
      b.route(n, rxPort[q]);
      b.send(txqs);
    }
    // Between rounds this lcore holds no table entry: a quiescent point for the route writer.
    if (lpm4 !== null) lpm4.readerQuiescent(id);
    if (lpm6 !== null) lpm6.readerQuiescent(id);
    if (warmPackets && (packets += got) >= WARMUP_PACKETS) {
      warmPackets = false;
      warm = Math.max(warm, performance.now());
    }
  }
  const loopEnd = performance.now();
  if (warmPackets) warm = loopEnd;
  await gc.settle();
  gc.stop();
  for (const r of arg.rx) for (const d of r.port.rxPools) Mempool.attach(d).flushCache();
  const after = gc.kindsBetween(warm, loopEnd);
  return { gcCount: gc.count(), gcCountAfterWarmup: after.scavenges + after.others, scavengesAfterWarmup: after.scavenges };
}

appMain(import.meta.url, l3fwd);
