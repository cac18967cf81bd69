/**
 * The telemetry commands of a tspmd app, answered with DPDK 22.11's keys so that tools written
 * for DPDK read them: /ethdev/list, /ethdev/stats, /ethdev/xstats, /ethdev/info,
 * /ethdev/link_status, /eal/params, /eal/app_params, /eal/lcore/list and /eal/lcore/info.
 * Every answer is read on the main thread from the ports' shared counters (EthDev.stats()).
 */
import { listPorts, type EthDev } from '../ethdev/ethdev.js';
import type { Lcores } from '../../src/lcore/lcores.js';
import type { TelemetryServer, TelemetryValue } from './server.js';

/** Per-queue arrays in /ethdev/stats have DPDK's fixed length (RTE_ETHDEV_QUEUE_STAT_CNTRS). */
export const QUEUE_STAT_CNTRS = 16;

/** DPDK's port state for an open port (RTE_ETH_DEV_ATTACHED). */
const STATE_ATTACHED = 1;

/** The port a "port_id" parameter names, or null (not a number, or no such port): the reply is then null, as in DPDK. */
export function portParam(params: string | null): EthDev | null {
  if (params === null || !/^\d/.test(params)) return null;
  const id = Number.parseInt(params, 10);
  return listPorts().find((p) => p.port === id) ?? null;
}

/** A per-queue list padded (or cut) to QUEUE_STAT_CNTRS entries. */
function queueArray(v: readonly number[]): number[] {
  return Array.from({ length: QUEUE_STAT_CNTRS }, (_, q) => v[q] ?? 0);
}

/** /ethdev/stats: rte_eth_stats's fields, per-queue arrays of 16 (q_errors stays 0: tspmd counts errors per port). */
export function ethdevStats(p: EthDev): Record<string, TelemetryValue> {
  const s = p.stats();
  return {
    ipackets: s.ipackets, opackets: s.opackets, ibytes: s.ibytes, obytes: s.obytes, imissed: s.imissed,
    ierrors: s.ierrors, oerrors: s.oerrors, rx_nombuf: s.rx_nombuf,
    q_ipackets: queueArray(s.q_ipackets), q_opackets: queueArray(s.q_opackets),
    q_ibytes: queueArray(s.q_ibytes), q_obytes: queueArray(s.q_obytes), q_errors: queueArray([]),
  };
}

/** /ethdev/info: DPDK 22.11's keys (fields tspmd has no notion of are 0), then tspmd's own (driver, limits, capabilities). */
export function ethdevInfo(p: EthDev): Record<string, TelemetryValue> {
  const c = p.configuration;
  const di = p.info();
  const started = p.status === 'started' ? 1 : 0;
  const nrx = c?.rxQueues ?? 0, ntx = c?.txQueues ?? 0;
  return {
    name: p.name, state: STATE_ATTACHED, nb_rx_queues: nrx, nb_tx_queues: ntx, port_id: p.port, mtu: c?.mtu ?? 1500,
    rx_mbuf_size_min: 0, mac_addr: p.macString(), promiscuous: p.isPromiscuous ? 1 : 0, scattered_rx: 0, all_multicast: 0,
    dev_started: started, lro: 0, dev_configured: c ? 1 : 0,
    rxq_state: Array.from({ length: nrx }, () => started), txq_state: Array.from({ length: ntx }, () => started),
    numa_node: -1, dev_flags: 0, rx_offloads: 0, tx_offloads: 0, ethdev_rss_hf: 0,
    driver: di.driverName, status: p.status, max_rx_queues: di.maxRxQueues, max_tx_queues: di.maxTxQueues,
    min_mtu: di.minMtu, max_mtu: di.maxMtu, capabilities: di.capabilities,
  };
}

/** /ethdev/link_status: {"status": "DOWN"} or {"status": "UP", "speed": Mbps, "duplex": "full-duplex"|"half-duplex"}. */
export function ethdevLink(p: EthDev): Record<string, TelemetryValue> {
  const l = p.link();
  if (!l.up) return { status: 'DOWN' };
  return { status: 'UP', speed: l.speedMbps, duplex: l.fullDuplex ? 'full-duplex' : 'half-duplex' };
}

/** What the EAL commands report. */
export interface EalTelemetryContext {
  /** the EAL arguments (before "--"), program name first, for /eal/params */
  params: string[];
  /** the application's arguments (after "--"), program name first, for /eal/app_params */
  appParams: string[];
  lcores: Lcores;
}

/** Register the ethdev commands (DPDK's /ethdev/...) on server. */
export function registerEthdevCommands(server: TelemetryServer): void {
  const perPort = (fn: (p: EthDev) => TelemetryValue) => (params: string | null): TelemetryValue => {
    const p = portParam(params);
    return p ? fn(p) : null;
  };
  server.register('/ethdev/list', 'Returns list of available ethdev ports. Takes no parameters', () => listPorts().map((p) => p.port));
  server.register('/ethdev/stats', 'Returns the common stats for a port. Parameters: int port_id', perPort(ethdevStats));
  server.register('/ethdev/xstats', 'Returns the extended stats for a port. Parameters: int port_id', perPort((p) => p.xstats()));
  server.register('/ethdev/link_status', 'Returns the link status for a port. Parameters: int port_id', perPort(ethdevLink));
  server.register('/ethdev/info', 'Returns the device info for a port. Parameters: int port_id', perPort(ethdevInfo));
}

/** Register the EAL commands (/eal/params, /eal/app_params, /eal/lcore/list, /eal/lcore/info) on server. */
export function registerEalCommands(server: TelemetryServer, ctx: EalTelemetryContext): void {
  const ids = (): number[] => [ctx.lcores.main, ...ctx.lcores.workers].sort((a, b) => a - b);
  server.register('/eal/params', 'Returns EAL commandline parameters used. Takes no parameters', () => [...ctx.params]);
  server.register('/eal/app_params', 'Returns app commandline parameters used. Takes no parameters', () => [...ctx.appParams]);
  server.register('/eal/lcore/list', 'List of lcore ids. Takes no parameters', ids);
  server.register('/eal/lcore/info', 'Returns lcore info. Parameters: int lcore_id', (params) => {
    if (params === null || !/^\d+$/.test(params)) return null;
    const id = Number(params);
    if (!ids().includes(id)) return null;
    const main = id === ctx.lcores.main;
    return { lcore_id: id, socket: 0, role: 'RTE', cpuset: [ctx.lcores.cpuOf(id)], main: main ? 1 : 0, busy: !main && ctx.lcores.busy(id) ? 1 : 0 };
  });
}
