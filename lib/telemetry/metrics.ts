/**
 * Prometheus metrics of a tspmd app: the ports' counters in the text exposition format (version
 * 0.0.4) at http://HOST:PORT/metrics, served by node:http on the main thread. The same numbers as
 * the telemetry socket: EthDev.stats(), xstats() and link(), read when scraped.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { listPorts, type EthDev } from '../ethdev/ethdev.js';
import { log } from '../../src/log.js';
import { packageVersion } from './server.js';

/** One sample: a metric's labels and value. */
interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** One metric family: name, HELP text, TYPE and its samples. */
interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  samples: Sample[];
}

/** A label value escaped for the text format (backslash, double quote, newline). */
function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** A number in the text format (integers exactly, NaN and infinities by name). */
function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : '-Inf';
  return String(v);
}

/** The basic counters: metric name suffix, PortStats field, help. */
const PORT_COUNTERS = [
  ['rx_packets_total', 'ipackets', 'Packets received (rte_eth_stats.ipackets)'],
  ['tx_packets_total', 'opackets', 'Packets sent (rte_eth_stats.opackets)'],
  ['rx_bytes_total', 'ibytes', 'Bytes received (rte_eth_stats.ibytes)'],
  ['tx_bytes_total', 'obytes', 'Bytes sent (rte_eth_stats.obytes)'],
  ['rx_missed_total', 'imissed', 'Packets the device dropped because the RX queue was full (rte_eth_stats.imissed)'],
  ['rx_errors_total', 'ierrors', 'Erroneous packets received (rte_eth_stats.ierrors)'],
  ['tx_errors_total', 'oerrors', 'Packets that failed to be sent (rte_eth_stats.oerrors)'],
  ['rx_nombuf_total', 'rx_nombuf', 'RX mbuf allocation failures (rte_eth_stats.rx_nombuf)'],
] as const;

/** The metric families of these ports (default: every open port). */
function families(ports: readonly EthDev[]): Family[] {
  const fams = new Map<string, Family>();
  const fam = (name: string, help: string, type: Family['type']): Family => {
    let f = fams.get(name);
    if (!f) fams.set(name, f = { name, help, type, samples: [] });
    return f;
  };
  fam('tspmd_info', 'tspmd build information (always 1)', 'gauge').samples.push({ labels: { version: packageVersion() }, value: 1 });
  fam('tspmd_ports', 'Open ports', 'gauge').samples.push({ labels: {}, value: ports.length });
  for (const p of ports) {
    const port = { port: String(p.port), name: p.name };
    const s = p.stats();
    for (const [suffix, key, help] of PORT_COUNTERS) fam(`tspmd_port_${suffix}`, help, 'counter').samples.push({ labels: port, value: s[key] });
    s.q_ipackets.forEach((v, q) => fam('tspmd_port_rx_queue_packets_total', 'Packets received per RX queue', 'counter').samples.push({ labels: { ...port, queue: String(q) }, value: v }));
    s.q_opackets.forEach((v, q) => fam('tspmd_port_tx_queue_packets_total', 'Packets sent per TX queue', 'counter').samples.push({ labels: { ...port, queue: String(q) }, value: v }));
    s.q_ibytes.forEach((v, q) => fam('tspmd_port_rx_queue_bytes_total', 'Bytes received per RX queue', 'counter').samples.push({ labels: { ...port, queue: String(q) }, value: v }));
    s.q_obytes.forEach((v, q) => fam('tspmd_port_tx_queue_bytes_total', 'Bytes sent per TX queue', 'counter').samples.push({ labels: { ...port, queue: String(q) }, value: v }));
    const l = p.link();
    fam('tspmd_port_link_up', 'Link state (1 up, 0 down)', 'gauge').samples.push({ labels: port, value: l.up ? 1 : 0 });
    fam('tspmd_port_link_speed_mbps', 'Link speed in Mbit/s (0 when down or unknown)', 'gauge').samples.push({ labels: port, value: l.up ? l.speedMbps : 0 });
    fam('tspmd_port_started', 'Whether the port is started (1) or not (0)', 'gauge').samples.push({ labels: port, value: p.status === 'started' ? 1 : 0 });
    const xf = fam('tspmd_port_xstat', 'Extended statistics by DPDK xstat name (rte_eth_xstats_get), counting since the last stats reset', 'gauge');
    for (const [xstat, v] of Object.entries(p.xstats())) xf.samples.push({ labels: { ...port, xstat }, value: v });
  }
  return [...fams.values()];
}

/** The Prometheus text exposition of these ports' counters (default: every open port). */
export function renderMetrics(ports: readonly EthDev[] = listPorts()): string {
  const out: string[] = [];
  for (const f of families(ports)) {
    out.push(`# HELP ${f.name} ${f.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',');
      out.push(`${f.name}${labels ? `{${labels}}` : ''} ${formatValue(s.value)}`);
    }
  }
  return out.join('\n') + '\n';
}

/** The content type of the text exposition format. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** An HTTP server with /metrics; start() listens, close() stops it and its connections. */
export class MetricsServer {
  private server: Server | null = null;
  /** where it listens, once started */
  address: { host: string; port: number } | null = null;

  /** A server for host:port (port 0: a free port, see address after start()). */
  constructor(private readonly host: string, private readonly port: number) {}

  /** Listen; rejects naming host:port and the fix when the port is taken or the host is not local. */
  async start(): Promise<{ host: string; port: number }> {
    const server = createServer((req, res) => this.serve(req, res));
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        const why = e.code === 'EADDRINUSE' ? 'the port is in use' : e.code === 'EADDRNOTAVAIL' ? 'the address is not one of this machine\'s' : e.message;
        reject(new Error(`--metrics-port ${this.port}: cannot listen on ${this.host}:${this.port}: ${why} (${e.code ?? 'error'}); choose another --metrics-port${e.code === 'EADDRNOTAVAIL' ? ' or --metrics-host' : ''}`));
      });
      server.listen(this.port, this.host, () => resolve());
    });
    server.on('error', (e) => log('warn', 'metrics', `http server: ${e.message}`));
    this.server = server;
    const a = server.address() as AddressInfo;
    this.address = { host: this.host, port: a.port };
    const shown = this.host.includes(':') ? `[${this.host}]` : this.host;
    log('info', 'metrics', `Prometheus metrics on http://${shown}:${a.port}/metrics`);
    return this.address;
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' }).end('only GET and HEAD\n');
      return;
    }
    if (path === '/metrics') {
      let body: string;
      try {
        body = renderMetrics();
      } catch (e) {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(e as Error).message}\n`);
        return;
      }
      res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE, 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('tspmd: Prometheus metrics at /metrics\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end(`no ${path} here: the metrics are at /metrics\n`);
  }

  /** Stop listening and close open connections. */
  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }
}
