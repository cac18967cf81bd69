/**
 * Clients that load a running app's telemetry and metrics endpoints, and what /proc says about
 * the app meanwhile; shared by bench/metrics-load.ts and the hardening tests. Loopback only:
 * every TCP connection goes to 127.0.0.1 (or the host given, which callers keep on loopback),
 * every telemetry client to a unix socket path.
 *
 * - httpGet: one request on a fresh raw TCP connection ("Connection: close"), with a deadline.
 * - openIdleTcp / openIdleTelemetry: many connections opened in batches that then send nothing.
 * - threadCpu / fdCount: a process's CPU time per thread and its open fds, from /proc.
 */
import { Socket } from 'node:net';
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import * as os from '../src/os/libc.js';
import { TelemetryClient } from '../index.js';

/** What one HTTP request on a fresh connection gave: the status and body, or why there was none. */
export interface HttpResult {
  /** the status code; 0 when no response came */
  status: number;
  /** the body (after the blank line) */
  body: string;
  /** the response headers, names in lower case */
  headers: Record<string, string>;
  /** milliseconds from connect() to the end of the response (or the failure) */
  ms: number;
  /** null, or why no response came: "timeout", "closed without a response", an errno code such as ECONNRESET */
  error: string | null;
}

/** How httpGet asks. */
export interface HttpGetOptions {
  /** the Host header (default "HOST:PORT" of the connection); null sends none (HTTP/1.0) */
  hostHeader?: string | null;
  /** give up after this long (default 5000 ms) */
  timeoutMs?: number;
  /** the method (default GET) */
  method?: string;
}

/**
 * GET path from host:port on a new TCP connection (Connection: close), reading until the server
 * closes. Never rejects: failures come back in error.
 */
export function httpGet(port: number, path = '/metrics', opts: HttpGetOptions = {}, host = '127.0.0.1'): Promise<HttpResult> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const t0 = performance.now();
  return new Promise((resolve) => {
    const s = new Socket();
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (error: string | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      const raw = Buffer.concat(chunks).toString('utf8');
      const sep = raw.indexOf('\r\n\r\n');
      const head = sep >= 0 ? raw.slice(0, sep).split('\r\n') : [];
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? '');
      const headers: Record<string, string> = {};
      for (const l of head.slice(1)) {
        const c = l.indexOf(':');
        if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
      }
      const status = m ? Number(m[1]) : 0;
      resolve({ status, body: sep >= 0 ? raw.slice(sep + 4) : '', headers, ms: performance.now() - t0, error: status === 0 && error === null ? 'closed without a response' : status === 0 ? error : null });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => finish(e.code ?? e.message));
    s.on('close', () => finish(null));
    s.connect(port, host, () => {
      const hostLine = opts.hostHeader === null ? '' : `Host: ${opts.hostHeader ?? `${host.includes(':') ? `[${host}]` : host}:${port}`}\r\n`;
      const version = opts.hostHeader === null ? '1.0' : '1.1';
      s.write(`${opts.method ?? 'GET'} ${path} HTTP/${version}\r\n${hostLine}Connection: close\r\n\r\n`);
    });
  });
}

/** Idle TCP connections: the sockets, how many connected, and how many the server has closed since. */
export interface IdleTcp {
  sockets: Socket[];
  /** connections established */
  connected: number;
  /** connections that failed to connect (errno codes counted) */
  failed: Map<string, number>;
  /** connections the server closed (or reset) after they were established */
  closedByServer: number;
  /** destroy every socket */
  close(): void;
}

/**
 * Open n TCP connections to host:port, `batch` at a time (each batch connected or failed before
 * the next starts), sending `send` on each once connected (default nothing: idle connections).
 */
export async function openIdleTcp(port: number, n: number, opts: { batch?: number; host?: string; send?: string } = {}): Promise<IdleTcp> {
  const batch = opts.batch ?? 200;
  const host = opts.host ?? '127.0.0.1';
  const r: IdleTcp = {
    sockets: [], connected: 0, failed: new Map(), closedByServer: 0,
    close() { for (const s of this.sockets) s.destroy(); },
  };
  for (let i = 0; i < n; i += batch) {
    const wave: Promise<void>[] = [];
    for (let j = i; j < Math.min(n, i + batch); j++) {
      wave.push(new Promise<void>((resolve) => {
        const s = new Socket();
        r.sockets.push(s);
        let up = false;
        s.setNoDelay(true);
        s.on('data', () => { /* an idle client ignores what it is sent */ });
        s.on('error', (e: NodeJS.ErrnoException) => {
          if (!up) {
            const code = e.code ?? e.message;
            r.failed.set(code, (r.failed.get(code) ?? 0) + 1);
            resolve();
          }
        });
        s.on('close', () => { if (up) r.closedByServer++; else resolve(); });
        s.connect(port, host, () => {
          up = true;
          r.connected++;
          if (opts.send) s.write(opts.send);
          resolve();
        });
      }));
    }
    await Promise.all(wave);
  }
  return r;
}

/** Idle telemetry clients: the connected fds and how many connects failed. */
export interface IdleTelemetry {
  fds: number[];
  /** connects that failed (errno codes counted) */
  failed: Map<string, number>;
  /** close every fd */
  close(): void;
}

/**
 * Open n SEQPACKET connections to the telemetry socket at path (non-blocking, `batch` at a time
 * with a pause between batches) that then read and send nothing.
 */
export async function openIdleTelemetry(path: string, n: number, batch = 20): Promise<IdleTelemetry> {
  const r: IdleTelemetry = {
    fds: [], failed: new Map(),
    close() { for (const fd of this.fds.splice(0)) { try { os.close(fd); } catch { /* closed */ } } },
  };
  for (let i = 0; i < n; i++) {
    const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET | os.SOCK_NONBLOCK, 0);
    try {
      os.connect(fd, os.sockaddrUn(path), path);
      r.fds.push(fd);
    } catch (e) {
      const code = e instanceof os.OsError ? e.code : (e as Error).message;
      r.failed.set(code, (r.failed.get(code) ?? 0) + 1);
      os.close(fd);
    }
    if ((i + 1) % batch === 0) await new Promise((res) => setTimeout(res, 20));
  }
  return r;
}

/** What one telemetry request on a fresh connection gave. */
export interface TelemetryResult {
  /** the greeting (JSON text) or null */
  greeting: string | null;
  /** the reply (JSON text) or null */
  reply: string | null;
  /** milliseconds from connect to the reply (or the failure) */
  ms: number;
  /** null, or what went wrong */
  error: string | null;
}

/** Connect to the telemetry socket at path, read the greeting, send request and read its reply; never rejects. */
export async function telemetryAsk(path: string, request: string, timeoutMs = 5000): Promise<TelemetryResult> {
  const t0 = performance.now();
  const deadline = Date.now() + timeoutMs;
  const r: TelemetryResult = { greeting: null, reply: null, ms: 0, error: null };
  let c: TelemetryClient | null = null;
  try {
    c = new TelemetryClient(path);
    r.greeting = await c.recv(timeoutMs);
    if (r.greeting === null) throw new Error('closed without a greeting');
    r.reply = await c.request(request, Math.max(0, deadline - Date.now()));
    if (r.reply === null) throw new Error('closed without a reply');
  } catch (e) {
    r.error = e instanceof os.OsError ? e.code : (e as Error).message;
  } finally {
    c?.close();
  }
  r.ms = performance.now() - t0;
  return r;
}

/** Clock ticks per second of /proc's utime and stime (getconf CLK_TCK; 100 when it cannot be asked). */
export const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** One thread of a process: its id, name (comm) and CPU time so far (utime + stime, in seconds). */
export interface ThreadCpu {
  tid: number;
  comm: string;
  cpuS: number;
}

/** The threads of process pid and their CPU time (from /proc/PID/task/TID/stat); threads that end while being read are left out. */
export function threadCpu(pid: number): ThreadCpu[] {
  const out: ThreadCpu[] = [];
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const f = stat.slice(close + 2).split(' ');
      // after "pid (comm) ": state is field 3, utime 14 and stime 15 (1-based) -> indexes 11, 12
      out.push({ tid: Number(tid), comm, cpuS: (Number(f[11]) + Number(f[12])) / CLK_TCK });
    } catch { /* the thread ended */ }
  }
  return out;
}

/** The lcore worker threads' name prefix (src/lcore/worker.ts names each "lcore-<id>"). */
export const LCORE_THREAD_PREFIX = 'lcore-';

/**
 * CPU used by process pid's threads over ms milliseconds, as a fraction of one CPU: the lcore
 * threads (named lcore-N) and all the others together.
 */
export async function cpuShare(pid: number, ms: number): Promise<{ lcores: number; others: number; busiestOther: string }> {
  const a = new Map(threadCpu(pid).map((x) => [x.tid, x]));
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const b = threadCpu(pid);
  const span = (performance.now() - t0) / 1000;
  let lcores = 0, others = 0, top = { name: '', s: -1 };
  for (const x of b) {
    const used = x.cpuS - (a.get(x.tid)?.cpuS ?? 0);
    if (x.comm.startsWith(LCORE_THREAD_PREFIX)) lcores += used;
    else {
      others += used;
      if (used > top.s) top = { name: `${x.comm} (tid ${x.tid}, ${(used / span * 100).toFixed(0)} %)`, s: used };
    }
  }
  return { lcores: lcores / span, others: others / span, busiestOther: top.name };
}

/** Open fds of process pid (entries of /proc/PID/fd). */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Wait until cond() holds, checking every 100 ms; false when ms passed first. */
export async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
  return true;
}
