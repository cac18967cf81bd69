/**
 * Prometheus metrics of a tspmd app: the ports' counters in the text exposition format (version
 * 0.0.4) at http://HOST:PORT/metrics, served by node:http on the main thread. The same numbers as
 * the telemetry socket: EthDev.stats(), xstats() and link(), read when scraped.
 *
 * The port is open to whoever can reach it, so the server keeps what a peer can hold bounded
 * (see MetricsServer): a connection limit where a new connection evicts the oldest one that has
 * not completed a request (a fresh scraper is always served), timeouts of seconds for headers,
 * requests and idle connections, a limit kept well under the open-files limit, and a Host check
 * against DNS rebinding. None of it touches the lcores: they never wait for the main thread.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP, type AddressInfo, type Socket } from 'node:net';
import { readFileSync, readdirSync } from 'node:fs';
import { hostname } from 'node:os';
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

/** How a MetricsServer limits its peers (every field optional: the defaults are METRICS_DEFAULTS). */
export interface MetricsOptions {
  /**
   * Connections held at once; at the limit a new connection evicts the oldest one that has not
   * completed a request (default 64, and never more than half the fds the open-files limit leaves
   * when the server starts)
   */
  maxConnections?: number;
  /** time a client has to send a request's headers, from its connection or its last response (ms) */
  headersTimeoutMs?: number;
  /** time a client has to send a whole request (ms) */
  requestTimeoutMs?: number;
  /** a connection with no traffic either way for this long is closed; also the keep-alive timeout (ms) */
  idleTimeoutMs?: number;
  /**
   * Names the Host header may carry besides IP literals, localhost, this machine's hostname and
   * the listening host: e.g. the DNS name Prometheus scrapes this machine by
   */
  hostNames?: string[];
}

/** The limits a MetricsServer uses when not told otherwise. */
export const METRICS_DEFAULTS = {
  maxConnections: 64,
  headersTimeoutMs: 5000,
  requestTimeoutMs: 10_000,
  idleTimeoutMs: 5000,
} as const;

/** How often node checks the header and request timeouts of open connections (its default, 30 s, would let them run that much over). */
const TIMEOUT_CHECK_MS = 1000;
/** At most one warning per kind of trouble in this long (a flood of connections gives one line a minute, not one per connection). */
const WARN_EVERY_MS = 60_000;

/** One connection's state: whether it completed a request, whether one is being answered now. */
interface Conn {
  served: boolean;
  active: boolean;
}

/**
 * The host name of a Host header, lower case, without the port or a final dot ("::1" for
 * "[::1]:9100"); null when the header is not a host[:port] at all.
 */
export function hostOfHeader(header: string): string | null {
  let name: string, port: string;
  if (header.startsWith('[')) {
    const end = header.indexOf(']');
    if (end < 0) return null;
    name = header.slice(1, end);
    port = header.slice(end + 1);
    if (isIP(name) !== 6) return null;
  } else {
    const c = header.lastIndexOf(':');
    name = c < 0 ? header : header.slice(0, c);
    port = c < 0 ? '' : header.slice(c);
  }
  if (port !== '' && !/^:\d{1,5}$/.test(port)) return null;
  name = name.toLowerCase().replace(/\.$/, '');
  return name === '' ? null : name;
}

/** Half of the fds the open-files limit leaves now (null when /proc does not say): the most connections the server should hold. */
function fdBudget(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!m) return null; // unlimited
    return Math.floor((Number(m[1]) - readdirSync('/proc/self/fd').length) / 2);
  } catch {
    return null;
  }
}

/** The effective limits of a MetricsServer. */
export interface MetricsLimits {
  maxConnections: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
}

/**
 * An HTTP server with /metrics; start() listens, close() stops it and its connections.
 *
 * What a peer can hold: at most limits.maxConnections connections. At the limit a new connection
 * evicts the oldest one that has not completed a request (idle or slow clients, which cost the
 * server an fd each and give it nothing), else the oldest idle one: so a fresh client is always
 * served, and a scraper keeping its connection alive outlives connections that never ask. A
 * client has headersTimeoutMs to send its headers and requestTimeoutMs for the whole request; a
 * connection quiet for idleTimeoutMs is closed. The default limit stays under half the fds the
 * open-files limit leaves, so the server's own connections cannot run the process out of fds.
 * If the process runs out anyway (EMFILE, from fds held elsewhere), libuv accepts and at once
 * closes what is pending, with a spare fd it keeps for that (no busy loop); should node report the
 * failed accept as an 'error' instead, the server evicts a connection so the next accept finds an
 * fd. (node's own maxConnections and its 'drop' event are not used: they turn away the new
 * connection, the one a real scraper has just made, and keep the old ones.)
 *
 * The Host check, against DNS rebinding: a web page at http://evil.example:PORT/ whose name the
 * attacker's DNS server then re-points at 127.0.0.1 (or at this machine's address) makes the
 * browser of anyone who visits it send requests here and let the page read the answers, since for
 * the browser it is still the page's own origin. Such requests carry the attacker's name in Host.
 * The server answers only requests whose Host is an IP literal, localhost, this machine's
 * hostname, the host it listens on or a name in hostNames (or that have no Host: HTTP/1.0, never a
 * browser); any other name gets 421 Misdirected Request, on every path.
 */
export class MetricsServer {
  private server: Server | null = null;
  /** where it listens, once started */
  address: { host: string; port: number } | null = null;
  /** the limits in force (maxConnections as capped by the open-files limit, once started) */
  readonly limits: MetricsLimits;
  /** what it served and refused */
  readonly stats = { connections: 0, requests: 0, evicted: 0, misdirected: 0, acceptErrors: 0 };
  private readonly conns = new Map<Socket, Conn>();
  private readonly names: ReadonlySet<string>;
  private readonly lastWarn = new Map<string, number>();

  /** A server for host:port (port 0: a free port, see address after start()); opts: limits and extra host names. */
  constructor(private readonly host: string, private readonly port: number, private readonly opts: MetricsOptions = {}) {
    for (const k of ['maxConnections', 'headersTimeoutMs', 'requestTimeoutMs', 'idleTimeoutMs'] as const) {
      const v = opts[k];
      if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new RangeError(`metrics server: ${k} ${v} is not a whole number of at least 1`);
    }
    this.limits = {
      maxConnections: opts.maxConnections ?? METRICS_DEFAULTS.maxConnections,
      headersTimeoutMs: opts.headersTimeoutMs ?? METRICS_DEFAULTS.headersTimeoutMs,
      requestTimeoutMs: Math.max(opts.requestTimeoutMs ?? METRICS_DEFAULTS.requestTimeoutMs, opts.headersTimeoutMs ?? METRICS_DEFAULTS.headersTimeoutMs),
      idleTimeoutMs: opts.idleTimeoutMs ?? METRICS_DEFAULTS.idleTimeoutMs,
    };
    const names = ['localhost', hostname(), hostname().split('.')[0], host, ...(opts.hostNames ?? [])];
    this.names = new Set(names.map((n) => n.toLowerCase().replace(/\.$/, '')).filter((n) => n !== ''));
  }

  /** Listen; rejects naming host:port and the fix when the port is taken or the host is not local. */
  async start(): Promise<{ host: string; port: number }> {
    if (this.opts.maxConnections === undefined) {
      const budget = fdBudget();
      if (budget !== null && budget < this.limits.maxConnections) {
        this.limits.maxConnections = Math.max(1, budget);
        log('info', 'metrics', `at most ${this.limits.maxConnections} connections at once: the open-files limit leaves room for no more (raise it with ulimit -n)`);
      }
    }
    const server = createServer({
      headersTimeout: this.limits.headersTimeoutMs,
      requestTimeout: this.limits.requestTimeoutMs,
      connectionsCheckingInterval: TIMEOUT_CHECK_MS,
      maxHeaderSize: 8192,
    }, (req, res) => this.serve(req, res));
    server.keepAliveTimeout = this.limits.idleTimeoutMs;
    server.timeout = this.limits.idleTimeoutMs; // no traffic for this long: the socket is destroyed
    server.maxHeadersCount = 64;
    server.on('connection', (sock: Socket) => this.admit(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        const why = e.code === 'EADDRINUSE' ? 'the port is in use' : e.code === 'EADDRNOTAVAIL' ? 'the address is not one of this machine\'s' : e.message;
        reject(new Error(`--metrics-port ${this.port}: cannot listen on ${this.host}:${this.port}: ${why} (${e.code ?? 'error'}); choose another --metrics-port${e.code === 'EADDRNOTAVAIL' ? ' or --metrics-host' : ''}`));
      });
      server.listen(this.port, this.host, () => resolve());
    });
    server.on('error', (e: NodeJS.ErrnoException) => this.onError(e));
    this.server = server;
    const a = server.address() as AddressInfo;
    this.address = { host: this.host, port: a.port };
    const shown = this.host.includes(':') ? `[${this.host}]` : this.host;
    log('info', 'metrics', `Prometheus metrics on http://${shown}:${a.port}/metrics`);
    return this.address;
  }

  /** Connections open now. */
  get connectionCount(): number {
    return this.conns.size;
  }

  /** A new connection: at the limit, evict one first. */
  private admit(sock: Socket): void {
    this.stats.connections++;
    if (this.conns.size >= this.limits.maxConnections) {
      this.evict();
      this.warn('limit', `${this.limits.maxConnections} connections open (the limit): the oldest that had not completed a request was closed for a new one ` +
        `(${this.stats.evicted} so far; a client opens connections without asking)`);
    }
    const c: Conn = { served: false, active: false };
    this.conns.set(sock, c);
    sock.once('close', () => { if (this.conns.get(sock) === c) this.conns.delete(sock); });
  }

  /** Close the oldest connection that has not completed a request, else the oldest not being answered, else the oldest; false when there is none. */
  private evict(): boolean {
    let victim: Socket | undefined, idle: Socket | undefined, oldest: Socket | undefined;
    for (const [sock, c] of this.conns) {
      oldest ??= sock;
      if (c.active) continue;
      if (!c.served) { victim = sock; break; }
      idle ??= sock;
    }
    const s = victim ?? idle ?? oldest;
    if (!s) return false;
    this.conns.delete(s);
    this.stats.evicted++;
    s.destroy(); // closes the fd at once
    return true;
  }

  /**
   * The server's 'error' event after listening: a failed accept. EMFILE/ENFILE: evict a
   * connection, so the fd it frees serves the next one (and an accept loop that reports each
   * failure ends).
   */
  private onError(e: NodeJS.ErrnoException): void {
    this.stats.acceptErrors++;
    if (e.code === 'EMFILE' || e.code === 'ENFILE') {
      this.evict();
      this.warn('emfile', `the process is out of fds (${e.code}): a connection was closed to accept new ones (${this.stats.acceptErrors} so far); raise ulimit -n`);
      return;
    }
    this.warn(`error ${e.code ?? e.message}`, `http server: ${e.message}`);
  }

  /** Log a warning of this kind at most once per WARN_EVERY_MS. */
  private warn(kind: string, text: string): void {
    const now = Date.now();
    if (now - (this.lastWarn.get(kind) ?? -Infinity) < WARN_EVERY_MS) return;
    this.lastWarn.set(kind, now);
    log('warn', 'metrics', text);
  }

  /** Whether a request's Host header names this server (see the class comment: DNS rebinding). */
  hostAllowed(header: string | undefined): boolean {
    if (header === undefined) return true;
    const name = hostOfHeader(header);
    return name !== null && (isIP(name) !== 0 || this.names.has(name));
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    this.stats.requests++;
    const c = this.conns.get(req.socket as Socket);
    if (c) {
      c.active = true;
      res.once('close', () => { c.active = false; c.served = true; });
    }
    if (!this.hostAllowed(req.headers.host)) {
      this.stats.misdirected++;
      const h = (req.headers.host ?? '').slice(0, 80);
      res.writeHead(421, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff', connection: 'close' })
        .end(`Host ${JSON.stringify(h)} is not a name of this server: ask for it by IP address, localhost or this machine's hostname ` +
          '(another name is how a web page reads a local server through DNS rebinding)\n');
      return;
    }
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
      for (const sock of this.conns.keys()) sock.destroy();
      this.conns.clear();
    });
  }
}
