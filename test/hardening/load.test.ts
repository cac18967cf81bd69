/**
 * Load on a forwarding `tspmd l2fwd`'s management surfaces (issue 22, the load contract): 2,000
 * TCP connections to its --metrics-port and 100 clients of its DPDK telemetry v2 socket, opened in
 * batches, which then idle. Meanwhile a fresh client gets /metrics and a telemetry answer within
 * 1 s each; the app's threads other than the lcores (named lcore-N) use under 20 % of a CPU
 * together while the attackers idle; the lcore keeps forwarding; and once the attackers go, the
 * app's open fds return to their idle count.
 *
 * Loopback and a unix socket only, bounded in count (2,100 connections) and time (each step waits
 * at most seconds). The forwarding rate under this load against an unloaded run is a bench figure
 * (`npm run bench -- metrics-load`), not asserted here.
 */
import t from 'tap';
import { openIdleTcp, openIdleTelemetry, httpGet, telemetryAsk, cpuShare, fdCount, waitFor } from '../../bench/load-clients.js';
import { startL2fwd } from './l2fwd-metrics.js';
import { METRICS_DEFAULTS } from '../../lib/telemetry/metrics.js';

const TCP = 2000;
const TELEMETRY = 100;

t.test('load: 2,000 metrics connections and 100 telemetry clients on a forwarding l2fwd: fresh clients served within 1 s, non-lcore threads under 20 % of a CPU, fds back to idle', { timeout: 300_000 }, async (t) => {
  const app = await startL2fwd(t, { prefix: `tsp${process.pid}ld`, telemetry: true });
  t.ok(app.telemetryPath !== '', `the telemetry socket: ${app.telemetryPath}`);
  const before = await telemetryAsk(app.telemetryPath, '/ethdev/stats,0');
  t.equal(before.error, null, 'telemetry answers before the load');
  await waitFor(() => false, 300);
  const idle = fdCount(app.pid);
  t.comment(`l2fwd pid ${app.pid}: ${idle} fds when idle`);

  const t0 = Date.now();
  const tcp = await openIdleTcp(app.port, TCP, { batch: 200 });
  t.teardown(() => tcp.close());
  const tel = await openIdleTelemetry(app.telemetryPath, TELEMETRY, 20);
  t.teardown(() => tel.close());
  t.comment(`${tcp.connected} TCP connections made (failed: ${JSON.stringify([...tcp.failed])}), ${tel.fds.length} telemetry connects (failed: ${JSON.stringify([...tel.failed])}) in ${Date.now() - t0} ms`);
  t.ok(tcp.connected >= TCP * 0.9, `most TCP connections were made (${tcp.connected} of ${TCP})`);
  await waitFor(() => false, 500);
  const loaded = fdCount(app.pid);
  t.ok(loaded - idle <= METRICS_DEFAULTS.maxConnections + TELEMETRY + 16,
    `the app holds ${loaded} fds under load: bounded by the metrics server's connection limit (${METRICS_DEFAULTS.maxConnections}) and the telemetry clients, not by the ${TCP} connections`);

  const m = await httpGet(app.port, '/metrics', { timeoutMs: 5000 });
  t.ok(m.status === 200 && m.ms < 1000, `a fresh client gets /metrics within 1 s (${m.error ?? `status ${m.status}`}, ${m.ms.toFixed(0)} ms)`);
  t.match(m.body, /tspmd_port_rx_packets_total/, 'with the port counters');
  const a = await telemetryAsk(app.telemetryPath, '/ethdev/stats,0', 5000);
  t.ok(a.error === null && a.ms < 1000, `a fresh telemetry client gets an answer within 1 s (${a.error ?? 'answered'}, ${a.ms.toFixed(0)} ms)`);
  t.match(a.reply ?? '', /"ipackets"/, 'its answer has the port\'s counters');

  const share = await cpuShare(app.pid, 2000);
  t.ok(share.others < 0.2, `while the attackers idle, the threads besides the lcores use ${(share.others * 100).toFixed(1)} % of a CPU together (busiest: ${share.busiestOther}); the lcore ${(share.lcores * 100).toFixed(0)} %`);
  const rx0 = await app.rxPackets();
  await waitFor(() => false, 500);
  t.ok(await app.rxPackets() > rx0, 'the lcore forwards under the load');

  tcp.close();
  tel.close();
  const back = await waitFor(() => fdCount(app.pid) <= idle, 15_000);
  t.ok(back, `after the attackers go, the app's fds return to the idle count (${fdCount(app.pid)}, idle ${idle}, ${loaded} under load)`);
  const after = await telemetryAsk(app.telemetryPath, '/info');
  t.equal(after.error, null, 'telemetry still answers');
  t.equal((await httpGet(app.port)).status, 200, 'and /metrics');
});
