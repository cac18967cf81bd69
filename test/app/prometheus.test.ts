/**
 * The metrics endpoint checked by the tools of its ecosystem: Debian's `prometheus` package
 * (installed with --no-install-recommends; .ci/run installs it, its service never started).
 *
 * - `promtool check metrics` accepts /metrics of a running l2fwd, and a rendering of ports whose
 *   names and xstat names hold quotes, backslashes and newlines.
 * - A Prometheus server of this test (loopback, a free port, its own temporary data directory
 *   tsp-prom-PID-*, scrape interval 1 s) scrapes a forwarding `tspmd l2fwd --json`; its query API's
 *   rate of the RX counters over the forwarding span comes within 25 % of l2fwd's own summary
 *   (steady_rx_mpps). Prometheus is stopped at the end (SIGTERM, SIGKILL in teardown if need be).
 *
 * Skips, saying why, only when prometheus or promtool is not installed.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { renderMetrics } from '../../lib/telemetry/metrics.js';
import type { EthDev, PortStats } from '../../lib/ethdev/ethdev.js';
import { httpGet, waitFor } from '../../bench/load-clients.js';
import { startL2fwd } from '../hardening/l2fwd-metrics.js';
import { killChildren } from '../cli.js';

const have = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const missing = ['prometheus', 'promtool'].filter((c) => !have(c));
const skip = missing.length > 0 ? `${missing.join(' and ')} not installed (apt-get install --no-install-recommends prometheus; .ci/run installs it)` : false;
t.setTimeout(300_000);

/** promtool check metrics on text: its exit code and what it said. */
function promtoolCheck(text: string): { code: number | null; out: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

/** A TCP port on 127.0.0.1 free a moment ago. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** One query of Prometheus's HTTP API (/api/v1/query) at time (unix seconds; default now). */
async function query(port: number, q: string, time?: number): Promise<Array<{ metric: Record<string, string>; value?: [number, string]; values?: Array<[number, string]> }>> {
  const url = `/api/v1/query?query=${encodeURIComponent(q)}${time !== undefined ? `&time=${time}` : ''}`;
  const r = await httpGet(port, url, { timeoutMs: 10_000 });
  if (r.status !== 200) throw new Error(`prometheus ${url}: ${r.error ?? `status ${r.status}`}: ${r.body.slice(0, 300)}`);
  const j = JSON.parse(r.body) as { status: string; data: { result: Array<{ metric: Record<string, string>; value?: [number, string]; values?: Array<[number, string]> }> } };
  if (j.status !== 'success') throw new Error(`prometheus ${url}: ${r.body.slice(0, 300)}`);
  return j.data.result;
}

t.test('promtool check metrics accepts label values that need escaping', { skip }, async (t) => {
  const stats: PortStats = { ipackets: 1, opackets: 2, ibytes: 3, obytes: 4, imissed: 0, ierrors: 0, oerrors: 0, rx_nombuf: 0, q_ipackets: [1], q_opackets: [2], q_ibytes: [3], q_obytes: [4] };
  const port = {
    port: 7, name: 'vfio-user:/tmp/a "quoted"\\path\nwith a newline', status: 'started',
    stats: () => stats, link: () => ({ up: true, speedMbps: 10000 }), xstats: () => ({ 'rx_q0_"odd"\\name': 5, rx_good_packets: 1 }),
  } as unknown as EthDev;
  const text = renderMetrics([port]);
  const r = promtoolCheck(text);
  t.equal(r.code, 0, `promtool check metrics: exit 0${r.out ? `\n${r.out}` : ''}`);
  t.equal(r.out, '', 'and no lint warnings');
  t.match(text, 'name="vfio-user:/tmp/a \\"quoted\\"\\\\path\\nwith a newline"', 'the name escaped as the text format says');
});

t.test('Prometheus scrapes a forwarding l2fwd; its rate of the RX counters is near l2fwd\'s own --json figure; promtool accepts /metrics', { skip, timeout: 200_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), `tsp-prom-${process.pid}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const [promPort, metricsPort] = [await freePort(), await freePort()];
  writeFileSync(join(dir, 'prometheus.yml'), [
    'global:', '  scrape_interval: 1s', '  scrape_timeout: 1s', '  evaluation_interval: 1s',
    'scrape_configs:', '  - job_name: tspmd', '    static_configs:', `      - targets: ['127.0.0.1:${metricsPort}']`, '',
  ].join('\n'));
  const prom: ChildProcess = spawn('prometheus', [
    `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn',
  ], { stdio: ['ignore', 'ignore', 'pipe'], cwd: dir });
  let promErr = '';
  prom.stderr!.on('data', (d: Buffer) => { promErr += d.toString(); });
  t.teardown(() => killChildren([prom]));
  let ready = false;
  await waitFor(() => false, 300);
  for (const end = Date.now() + 60_000; !ready && Date.now() < end && prom.exitCode === null;) {
    ready = (await httpGet(promPort, '/-/ready', { timeoutMs: 2000 })).status === 200;
    if (!ready) await waitFor(() => false, 300);
  }
  t.ok(ready, `prometheus serves on 127.0.0.1:${promPort}${ready ? '' : `\n${promErr.slice(-2000)}`}`);
  if (!ready) return;

  const DURATION = 12;
  const app = await startL2fwd(t, { prefix: `tsp${process.pid}pm`, metricsPort, app: ['-T', '0', '--json', '--duration', String(DURATION)] });
  const live = await httpGet(app.port, '/metrics');
  const check = promtoolCheck(live.body);
  t.equal(check.code, 0, `promtool check metrics accepts l2fwd's /metrics (${live.body.split('\n').length} lines)${check.out ? `\n${check.out}` : ''}`);
  t.equal(check.out, '', 'and has no lint warnings');
  let up = false;
  for (let i = 0; i < 50 && !up; i++) {
    up = (await query(promPort, 'up{job="tspmd"}'))[0]?.value?.[1] === '1';
    if (!up) await waitFor(() => false, 200);
  }
  t.ok(up, 'prometheus\'s target is up');

  const code = await app.exit;
  t.equal(code, 0, `l2fwd ran ${DURATION} s and exited 0`);
  const summary = JSON.parse(app.out().trim().split('\n').pop() ?? '{}') as { steady_rx_mpps: number; total_rx_mpps: number; elapsed_s: number };
  // Every sample of port 0's counter, to find the span over which it grew (l2fwd forwarding).
  const [series] = await query(promPort, `tspmd_port_rx_packets_total{port="0"}[2m]`);
  const samples = (series?.values ?? []).map(([ts, v]) => [ts, Number(v)] as const);
  const growing = samples.filter(([, v]) => v > 0);
  t.ok(growing.length >= 5, `prometheus has ${samples.length} samples, ${growing.length} while forwarding`);
  if (growing.length < 5) return;
  const last = growing[growing.length - 1][0];
  const span = Math.floor(last - growing[0][0]);
  const [rate] = await query(promPort, `sum(rate(tspmd_port_rx_packets_total[${span}s]))`, last);
  const promMpps = Number(rate?.value?.[1] ?? NaN) / 1e6;
  const ref = summary.steady_rx_mpps;
  t.ok(Number.isFinite(promMpps) && Math.abs(promMpps - ref) <= 0.25 * ref,
    `sum(rate(tspmd_port_rx_packets_total[${span}s])) = ${promMpps.toFixed(3)} Mpps, l2fwd's steady_rx_mpps ${ref} (total_rx_mpps ${summary.total_rx_mpps} over ${summary.elapsed_s} s): within 25 %`);

  prom.kill('SIGTERM');
  const stopped = await waitFor(() => prom.exitCode !== null || prom.signalCode !== null, 20_000);
  t.ok(stopped, 'prometheus stops on SIGTERM');
  t.equal((await httpGet(promPort, '/-/ready', { timeoutMs: 2000 })).status, 0, 'and nothing answers on its port any more');
});
