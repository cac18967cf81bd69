/**
 * A forwarding `tspmd l2fwd` on two net_null ports with its metrics server (and optionally its
 * telemetry socket) for the metrics, load and Prometheus tests: spawned as the compiled
 * dist/app/tspmd.js (it starts forwarding in about a second, where the TypeScript loader takes
 * 5-40 s on a loaded 2-vCPU machine: timing-sensitive checks need the fast start), dist/ being
 * built first when a source is newer than its compiled file (npm test builds it before the
 * suite); optionally under a lower open-files limit; ready once it names its metrics URL and its
 * RX counter has started to grow (the forwarding lcore runs). Killed and its run directory removed
 * at teardown.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHILD_ENV, killChildren, removeRunDir } from '../cli.js';
import { httpGet } from '../../bench/load-clients.js';

/** The package's root (this file is test/hardening/ in it, or dist/test/hardening/ when compiled). */
const ROOT = fileURLToPath(new URL(import.meta.url.endsWith('.ts') ? '../..' : '../../..', import.meta.url));

/** Whether every .ts source of the package has a compiled file in dist/ at least as new as itself. */
function distIsFresh(): boolean {
  const walk = (d: string): boolean => readdirSync(d, { withFileTypes: true }).every((e) => {
    const p = join(d, e.name);
    if (e.isDirectory()) return walk(p);
    if (!e.name.endsWith('.ts') || e.name.endsWith('.d.ts')) return true;
    const js = join(ROOT, 'dist', relative(ROOT, p).replace(/\.ts$/, '.js'));
    return existsSync(js) && statSync(js).mtimeMs >= statSync(p).mtimeMs;
  });
  try {
    return ['src', 'lib', 'drivers', 'app', 'examples'].every((d) => walk(join(ROOT, d)));
  } catch {
    return false;
  }
}

/** The compiled tspmd command. */
export const DIST_CLI = join(ROOT, 'dist/app/tspmd.js');

/** Build dist/ (tsc -p .) unless it is up to date; returns what it did, throws with tsc's output when the build fails. */
export function ensureDist(): string {
  if (existsSync(DIST_CLI) && distIsFresh()) return 'dist/ is up to date';
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', ROOT], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`building dist/ (npx tsc -p .) failed, needed to run ${DIST_CLI}: ${x.stdout ?? ''}${x.stderr ?? ''}${x.message}`);
  }
  return 'dist/ rebuilt (a source was newer than its compiled file)';
}

/** What tap's test object offers that startL2fwd uses. */
export interface Teardown {
  teardown(fn: () => unknown): void;
}

/** How to start l2fwd. */
export interface L2fwdOptions {
  /** --file-prefix (tsp... with the pid or a random part) */
  prefix: string;
  /** the open-files limit (soft and hard) to run it under; default: this process's */
  nofile?: number;
  /** serve the telemetry socket (default false: --no-telemetry) */
  telemetry?: boolean;
  /** more EAL options, before "--" */
  eal?: string[];
  /** l2fwd's options, after "--" (default: -T 0 --json) */
  app?: string[];
  /** --metrics-port (default 0: a free port) */
  metricsPort?: number;
  /** how long to wait for it to forward (default 60 s) */
  startMs?: number;
}

/** A running l2fwd. */
export interface RunningL2fwd {
  proc: ChildProcess;
  pid: number;
  /** the metrics server's port on 127.0.0.1 */
  port: number;
  /** the telemetry socket's path ("" with telemetry off) */
  telemetryPath: string;
  out(): string;
  err(): string;
  /** resolves with the exit code (128 + signal number when killed) */
  exit: Promise<number>;
  /** tspmd_port_rx_packets_total of port 0 from a fresh scrape, -1 when the scrape failed */
  rxPackets(): Promise<number>;
}

const METRICS_RE = /Prometheus metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/;
const TELEMETRY_RE = /telemetry: socket (\S+)/;

/** The rx_packets counter of port 0 in a metrics text, -1 when it is not there. */
export function rxOfPort0(body: string): number {
  const m = /^tspmd_port_rx_packets_total\{port="0",name="net_null0"\} (\d+)$/m.exec(body);
  return m ? Number(m[1]) : -1;
}

/** Start l2fwd on net_null0/net_null1 with --metrics-port 0 and wait until it forwards; throws with its output when it does not. */
export async function startL2fwd(t: Teardown, o: L2fwdOptions): Promise<RunningL2fwd> {
  const args = ['l2fwd', '--no-huge', '--file-prefix', o.prefix, ...(o.telemetry ? [] : ['--no-telemetry']), '--metrics-port', String(o.metricsPort ?? 0), '--log-level', 'info',
    '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1', ...(o.eal ?? []), '--', ...(o.app ?? ['-T', '0', '--json'])];
  ensureDist();
  const node = [process.execPath, DIST_CLI, ...args];
  // `ulimit -n N` in a shell that then execs node: same pid, both limits lowered (node raises its soft limit to the hard one).
  const cmd = o.nofile === undefined ? node : ['bash', '-c', `ulimit -n ${o.nofile} && exec "$0" "$@"`, ...node];
  const proc = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  let out = '', err = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exit = new Promise<number>((r) => proc.on('exit', (code, sig) => r(code ?? (sig ? 128 : 1))));
  t.teardown(async () => {
    await killChildren([proc]);
    removeRunDir(args);
  });
  const deadline = Date.now() + (o.startMs ?? 60_000);
  let port = 0;
  while (port === 0) {
    const m = METRICS_RE.exec(err);
    if (m) port = Number(m[1]);
    else if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`l2fwd did not name its metrics URL:\n${err.slice(-3000)}`);
    else await new Promise((r) => setTimeout(r, 100));
  }
  const rxPackets = async (): Promise<number> => {
    const r = await httpGet(port, '/metrics', { timeoutMs: 10_000 });
    return r.status === 200 ? rxOfPort0(r.body) : -1;
  };
  // Forwarding once the counter grows between two scrapes.
  let last = await rxPackets();
  for (;;) {
    await new Promise((r) => setTimeout(r, 300));
    const now = await rxPackets();
    if (last > 0 && now > last) break;
    last = now;
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`l2fwd does not forward (rx_packets ${now}):\n${err.slice(-3000)}`);
  }
  const telemetryPath = o.telemetry ? TELEMETRY_RE.exec(err)?.[1] ?? '' : '';
  return { proc, pid: proc.pid!, port, telemetryPath, out: () => out, err: () => err, exit, rxPackets };
}
