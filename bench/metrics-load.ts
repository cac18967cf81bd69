/**
 * Forwarding under load on the management surfaces: tspmd l2fwd on two net_null ports (one
 * forwarding lcore) with --metrics-port and the telemetry socket, run unloaded and then with 2,000
 * TCP connections to the metrics port (topped up every second as the server closes them: a flood
 * of new connections) and 100 telemetry clients (reconnected every 5 s), plus one fresh /metrics
 * scrape and one fresh telemetry request a second. The figure: the loaded run's steady RX rate
 * against the unloaded one's (goal: within 10 %), rounds alternating so the machine's drift falls
 * on both alike; and the slowest fresh answers seen under load. The load runs in this process,
 * kept off the lcore's CPU. Loopback and a unix socket only.
 * Options: --rounds N (pairs of runs, default 3), --seconds S (per run, default 10), --quick (one round of 6 s).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { getAffinity, setAffinity } from '../src/os/libc.js';
import { openIdleTcp, openIdleTelemetry, httpGet, telemetryAsk, type IdleTcp, type IdleTelemetry } from './load-clients.js';

const TCP = 2000;
const TELEMETRY = 100;

/** What one l2fwd run gave. */
interface RunResult {
  steady_rx_mpps: number;
  /** slowest fresh /metrics answer under load (ms; 0 unloaded) */
  metrics_max_ms: number;
  /** slowest fresh telemetry answer under load (ms; 0 unloaded) */
  telemetry_max_ms: number;
  /** fresh requests that got no answer */
  failures: number;
}

/** The median of xs. */
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b), h = s.length >> 1;
  return s.length % 2 === 1 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** The CPUs this process may use, and those the load keeps to (all but the lcore's CPU 1). */
let allCpus: number[] = [], loadCpus: number[] = [];

/** Run l2fwd for seconds, loading its metrics port and telemetry socket while it runs when load is set. */
async function runL2fwd(seconds: number, load: boolean, tag: string): Promise<RunResult> {
  const cli = fileURLToPath(new URL('../app/tspmd.js', import.meta.url));
  // The child inherits this thread's CPUs: give it all of them (its lcore goes to CPU 1), then
  // keep the load here off CPU 1 again.
  setAffinity(allCpus);
  const child = spawn(process.execPath, [
    cli, 'l2fwd', '--no-huge', '-l', '0-1', '--main-lcore', '0', '--file-prefix', `tspbench${process.pid}${tag}`, '--metrics-port', '0', '--log-level', 'info',
    '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '--duration', String(seconds), '--json', '-T', '0',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  setAffinity(loadCpus);
  let out = '', err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number>((r) => child.on('exit', (c) => r(c ?? 1)));
  let running = true;
  void exited.then(() => { running = false; });
  const r: RunResult = { steady_rx_mpps: 0, metrics_max_ms: 0, telemetry_max_ms: 0, failures: 0 };
  if (load) {
    // Load from the moment both endpoints are named (the lcore starts about then).
    while (running && !(/Prometheus metrics on http:\/\/127\.0\.0\.1:\d+/.test(err) && /telemetry: socket \S+/.test(err))) await new Promise((res) => setTimeout(res, 50));
    const port = Number(/Prometheus metrics on http:\/\/127\.0\.0\.1:(\d+)/.exec(err)?.[1] ?? 0);
    const sock = /telemetry: socket (\S+)/.exec(err)?.[1] ?? '';
    const tcp: IdleTcp[] = [];
    let tel: IdleTelemetry | null = null;
    const open = (xs: IdleTcp[]): number => xs.reduce((a, x) => a + x.connected - x.closedByServer, 0);
    for (let tick = 0; running; tick++) {
      const t0 = Date.now();
      const need = TCP - open(tcp);
      if (need > 0) tcp.push(await openIdleTcp(port, need, { batch: 200 }));
      // The telemetry clients are reconnected every 5 s (this side does not notice the server closing them).
      if (tick % 5 === 0) {
        tel?.close();
        tel = await openIdleTelemetry(sock, TELEMETRY, 20);
      }
      if (!running) break;
      const m = await httpGet(port, '/metrics', { timeoutMs: 5000 });
      const q = await telemetryAsk(sock, '/ethdev/stats,0', 5000);
      if (m.status !== 200) r.failures++;
      else r.metrics_max_ms = Math.max(r.metrics_max_ms, m.ms);
      if (q.error !== null) r.failures++;
      else r.telemetry_max_ms = Math.max(r.telemetry_max_ms, q.ms);
      await new Promise((res) => setTimeout(res, Math.max(0, 1000 - (Date.now() - t0))));
    }
    tel?.close();
    for (const x of tcp) x.close();
  }
  const code = await exited;
  if (code !== 0) throw new Error(`l2fwd exited ${code}:\n${err.slice(-2000)}`);
  r.steady_rx_mpps = (JSON.parse(out.trim().split('\n').pop() ?? '{}') as { steady_rx_mpps: number }).steady_rx_mpps;
  r.metrics_max_ms = Math.round(r.metrics_max_ms);
  r.telemetry_max_ms = Math.round(r.telemetry_max_ms);
  return r;
}

/** The metrics-load figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | number[]>> {
  const quick = args.includes('--quick');
  const ri = args.indexOf('--rounds'), si = args.indexOf('--seconds');
  const rounds = ri >= 0 ? Number(args[ri + 1]) : quick ? 1 : 3;
  const seconds = si >= 0 ? Number(args[si + 1]) : quick ? 6 : 10;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new Error(`--rounds takes a whole number from 1 to 50, not "${args[ri + 1]}"`);
  if (!Number.isInteger(seconds) || seconds < 4 || seconds > 600) throw new Error(`--seconds takes a whole number from 4 to 600, not "${args[si + 1]}"`);
  // The load runs here: keep this process off CPU 1, where -l 0-1 puts the forwarding lcore.
  allCpus = getAffinity();
  loadCpus = allCpus.length > 1 ? allCpus.filter((c) => c !== 1) : allCpus;
  setAffinity(loadCpus);
  const unloaded: number[] = [], loaded: number[] = [], ratios: number[] = [];
  let metricsMax = 0, telemetryMax = 0, failures = 0;
  for (let i = 1; i <= rounds; i++) {
    console.log(`round ${i}/${rounds}: l2fwd, 2 x net_null, 1 forwarding lcore, ${seconds} s, metrics port and telemetry idle ...`);
    const u = await runL2fwd(seconds, false, `u${i}`);
    console.log(`  unloaded: ${u.steady_rx_mpps.toFixed(2)} Mpps`);
    console.log(`round ${i}/${rounds}: the same with ${TCP} TCP connections to the metrics port and ${TELEMETRY} telemetry clients ...`);
    const l = await runL2fwd(seconds, true, `l${i}`);
    console.log(`  loaded: ${l.steady_rx_mpps.toFixed(2)} Mpps; slowest fresh answer: /metrics ${l.metrics_max_ms} ms, telemetry ${l.telemetry_max_ms} ms; ${l.failures} unanswered`);
    unloaded.push(u.steady_rx_mpps);
    loaded.push(l.steady_rx_mpps);
    ratios.push(Number((l.steady_rx_mpps / u.steady_rx_mpps).toFixed(3)));
    metricsMax = Math.max(metricsMax, l.metrics_max_ms);
    telemetryMax = Math.max(telemetryMax, l.telemetry_max_ms);
    failures += l.failures;
  }
  const ratio = median(ratios);
  console.log(`loaded/unloaded ratios ${ratios.join(' ')}; median ${ratio.toFixed(3)} (goal: at least 0.9)`);
  return {
    unloaded_mpps: Number(median(unloaded).toFixed(3)), loaded_mpps: Number(median(loaded).toFixed(3)), ratio: Number(ratio.toFixed(3)),
    fresh_metrics_max_ms: metricsMax, fresh_telemetry_max_ms: telemetryMax, fresh_unanswered: failures, rounds, ratios,
  };
}
