/**
 * A forwarding `tspmd l2fwd` on two net_null ports with its metrics server (and optionally its
 * telemetry socket) for the metrics, load and Prometheus tests: spawned with the tspmd command
 * (the compiled dist/app/tspmd.js when dist/ is up to date, as after `npm test`'s build: it starts
 * in about a second where the TypeScript loader takes 5-40 s; else test/cli.ts's CLI under the
 * loader), optionally under a lower open-files limit, and ready once it names its metrics URL and
 * its RX counter has started to grow (the forwarding lcore runs). Killed and its run directory
 * removed at teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLI, CHILD_ENV, killChildren, removeRunDir } from '../cli.js';
import { httpGet } from '../../bench/load-clients.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

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

/** The command that runs tspmd: node and the compiled CLI when dist/ is fresh, else node with this process's loader and the .ts CLI. */
export function tspmdCommand(): string[] {
  const dist = join(ROOT, 'dist/app/tspmd.js');
  return CLI.endsWith('.js') || !distIsFresh() ? [process.execPath, ...process.execArgv, CLI] : [process.execPath, dist];
}

/** What tap's test object offers that the helper uses. */
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
  /** how long to wait for it to forward (default 150 s: a worker's start-up takes 5-40 s on a loaded 2-vCPU machine) */
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
  const args = ['l2fwd', '--no-huge', '--file-prefix', o.prefix, ...(o.telemetry ? [] : ['--no-telemetry']), '--metrics-port', '0', '--log-level', 'info',
    '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1', ...(o.eal ?? []), '--', ...(o.app ?? ['-T', '0', '--json'])];
  const node = [...tspmdCommand(), ...args];
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
  const deadline = Date.now() + (o.startMs ?? 150_000);
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
