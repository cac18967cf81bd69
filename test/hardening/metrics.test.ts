/**
 * The Prometheus port (--metrics-port, lib/telemetry/metrics.ts) as a remote peer would attack it
 * (issue 22, finding 3, the metrics part):
 *
 * - A running `tspmd l2fwd` under a 256-fd limit, 600 idle TCP connections to its metrics port:
 *   a fresh client still gets /metrics within 1 s, the idle connections are closed after the idle
 *   timeout, the app's fds return to their idle count, and forwarding goes on.
 * - In this process: at the connection limit a new connection evicts the oldest one that has not
 *   completed a request (a keep-alive scraper is kept); a client that sends its headers a byte at
 *   a time is cut off by the header timeout, one that sends nothing by the idle timeout.
 * - The Host check against DNS rebinding: IP literals, localhost, the machine's name and names
 *   given to the server are served; any other name gets 421, on every path.
 *
 * Loopback only; connections and processes are closed in teardowns.
 */
import t from 'tap';
import { Socket } from 'node:net';
import { hostname } from 'node:os';
import { MetricsServer } from '../../lib/telemetry/metrics.js';
import { httpGet, openIdleTcp, fdCount, waitFor, cpuShare } from '../../bench/load-clients.js';
import { startL2fwd } from './l2fwd-metrics.js';

const PID = process.pid;
t.setTimeout(400_000);

/** An in-process metrics server on 127.0.0.1, closed at teardown. */
async function server(t: { teardown(fn: () => unknown): void }, opts?: ConstructorParameters<typeof MetricsServer>[2]): Promise<{ s: MetricsServer; port: number }> {
  const s = new MetricsServer('127.0.0.1', 0, opts);
  const a = await s.start();
  t.teardown(() => s.close());
  return { s, port: a.port };
}

/** A connection to port with its state: connected, closed by the server, and the data it got. */
function conn(t: { teardown(fn: () => unknown): void }, port: number): Promise<{ sock: Socket; closed: () => boolean; data: () => string; wait: (ms: number) => Promise<boolean> }> {
  return new Promise((resolve, reject) => {
    const sock = new Socket();
    let closed = false, data = '';
    t.teardown(() => { sock.destroy(); });
    sock.on('data', (d: Buffer) => { data += d.toString(); });
    sock.on('error', () => { /* a reset: close follows */ });
    sock.on('close', () => { closed = true; });
    sock.once('error', reject);
    sock.connect(port, '127.0.0.1', () => {
      sock.off('error', reject);
      resolve({ sock, closed: () => closed, data: () => data, wait: (ms) => waitFor(() => closed, ms) });
    });
  });
}

t.test('finding 3 (metrics): 600 idle connections to --metrics-port under a 256-fd limit: a fresh client gets /metrics within 1 s, idle ones are closed, fds return to idle', { timeout: 300_000 }, async (t) => {
  const app = await startL2fwd(t, { prefix: `tsp${PID}mfd`, nofile: 256 });
  // The idle count: no connection open (the readiness scrapes used Connection: close).
  await waitFor(() => false, 300);
  const idle = fdCount(app.pid);
  t.comment(`l2fwd pid ${app.pid}: ${idle} fds open when idle, limit 256`);

  const attack = await openIdleTcp(app.port, 600, { batch: 100 });
  t.teardown(() => attack.close());
  t.comment(`${attack.connected} connections established, failures: ${JSON.stringify([...attack.failed])}`);
  await waitFor(() => false, 500);
  const peak = fdCount(app.pid);
  t.ok(peak < 256, `the app holds ${peak} fds with 600 connections made (under its limit of 256)`);

  const fresh = await httpGet(app.port, '/metrics', { timeoutMs: 5000 });
  t.equal(fresh.status, 200, `a fresh client is served (${fresh.error ?? `status ${fresh.status}`}, ${fresh.ms.toFixed(0)} ms)`);
  t.ok(fresh.status === 200 && fresh.ms < 1000, `within 1 s (${fresh.ms.toFixed(0)} ms)`);
  t.ok(fresh.body.includes('tspmd_port_rx_packets_total'), 'with the port counters');

  const share = await cpuShare(app.pid, 2000);
  t.ok(share.others < 0.2, `while the connections idle, the threads besides the lcores use ${(share.others * 100).toFixed(1)} % of a CPU (busiest: ${share.busiestOther})`);

  // Idle connections go after the idle timeout (seconds, not minutes).
  const t0 = Date.now();
  const gone = await waitFor(() => attack.closedByServer >= attack.connected, 20_000);
  t.ok(gone, `the server closed all ${attack.connected} idle connections (${attack.closedByServer} closed after ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  attack.close();
  const back = await waitFor(() => fdCount(app.pid) <= idle, 10_000);
  t.ok(back, `fds back to the idle count (${fdCount(app.pid)}, idle ${idle})`);
  const before = await app.rxPackets();
  await waitFor(() => false, 500);
  t.ok(await app.rxPackets() > before, 'the lcore forwards all along');
  const noisy = app.err().split('\n').filter((l) => /metrics/.test(l)).length;
  t.ok(noisy < 10, `a few metrics log lines at most (${noisy})`);
});

t.test('finding 3 (metrics): at the connection limit a new connection evicts the oldest one that has not completed a request; a keep-alive scraper is kept', async (t) => {
  const { port } = await server(t, { maxConnections: 4 });
  // A scraper that completed a request and keeps its connection.
  const scraper = await conn(t, port);
  const ask = (c: { sock: Socket }): void => { c.sock.write(`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`); };
  ask(scraper);
  t.ok(await waitFor(() => /^HTTP\/1\.1 200/.test(scraper.data()), 5000), 'the scraper is served');
  const idle = [await conn(t, port), await conn(t, port), await conn(t, port)];
  await waitFor(() => false, 200);
  t.notOk(idle.some((c) => c.closed()) || scraper.closed(), '4 connections, the limit: none closed');
  const fifth = await conn(t, port);
  t.ok(await idle[0].wait(2000), 'a fifth: the oldest idle connection is closed');
  t.notOk(idle[1].closed() || idle[2].closed() || fifth.closed(), 'the others stay');
  t.notOk(scraper.closed(), 'the scraper (older, but it completed a request) stays');
  const fresh = await httpGet(port, '/metrics', { timeoutMs: 5000 });
  t.equal(fresh.status, 200, `a fresh client at the limit is served (${fresh.error ?? fresh.status}, ${fresh.ms.toFixed(0)} ms)`);
  t.ok(await idle[1].wait(2000), 'it evicted the next oldest idle connection');
  const len = scraper.data().length;
  ask(scraper);
  t.ok(await waitFor(() => scraper.data().length > len && /HTTP\/1\.1 200/.test(scraper.data().slice(len)), 5000), 'the scraper\'s connection still serves');

  // Only scrapers left: the oldest idle one of them goes.
  const { port: p2 } = await server(t, { maxConnections: 2 });
  const a = await conn(t, p2), b = await conn(t, p2);
  for (const c of [a, b]) c.sock.write(`GET / HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  t.ok(await waitFor(() => a.data().includes('200') && b.data().includes('200'), 5000), 'two scrapers served');
  const r = await httpGet(p2, '/metrics', { timeoutMs: 5000 });
  t.equal(r.status, 200, 'a third client is served even when every connection completed a request');
  t.ok(await a.wait(2000), 'the oldest of them was closed');
  t.notOk(b.closed(), 'the newer stays');
});

t.test('finding 3 (metrics): headers sent a byte at a time are cut off by the header timeout; a silent connection by the idle timeout', async (t) => {
  const { s, port } = await server(t);
  const slow = await conn(t, port);
  slow.sock.write('GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n');
  const drip = setInterval(() => { if (!slow.closed()) slow.sock.write('X'); }, 300);
  t.teardown(() => clearInterval(drip));
  const silent = await conn(t, port);
  const t0 = Date.now();
  t.ok(await silent.wait(20_000), `the silent connection is closed (after ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  t.ok(await slow.wait(20_000), `the one dripping its headers is closed (after ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  clearInterval(drip);
  const r = await httpGet(port, '/metrics');
  t.equal(r.status, 200, 'the server goes on serving');
  const l = s.limits;
  t.ok(l.headersTimeoutMs <= 10_000 && l.idleTimeoutMs <= 10_000, `its timeouts are seconds: headers ${l.headersTimeoutMs} ms, request ${l.requestTimeoutMs} ms, idle ${l.idleTimeoutMs} ms`);
});

t.test('finding 3 (metrics): the Host check refuses names other than this server\'s (DNS rebinding), 421 on every path', async (t) => {
  const { port } = await server(t, { hostNames: ['metrics.tsp.example'] });
  const ok = ['127.0.0.1', `127.0.0.1:${port}`, `localhost:${port}`, 'LOCALHOST', 'localhost.', `[::1]:${port}`, '[::ffff:127.0.0.1]', '10.1.2.3:9100',
    hostname(), `${hostname()}:${port}`, 'metrics.tsp.example', `Metrics.Tsp.Example:${port}`];
  for (const h of ok) {
    const r = await httpGet(port, '/metrics', { hostHeader: h });
    t.equal(r.status, 200, `Host: ${h} -> ${r.status}`);
  }
  const r10 = await httpGet(port, '/metrics', { hostHeader: null });
  t.equal(r10.status, 200, 'no Host header (HTTP/1.0, not a browser): served');
  const bad = [`evil.tsp.example:${port}`, 'evil.tsp.example', 'localhost.evil.tsp.example', '127.0.0.1.nip.io', `metrics.tsp.example.evil.tsp.example:${port}`, '[::1', 'localhost:x', ''];
  for (const h of bad) {
    for (const path of ['/metrics', '/', '/nope']) {
      const r = await httpGet(port, path, { hostHeader: h });
      t.equal(r.status, 421, `Host: "${h}" ${path} -> ${r.status}`);
      if (path === '/metrics') t.notMatch(r.body, /tspmd_/, 'no metrics in the answer');
    }
  }
  const r = await httpGet(port, '/metrics', { hostHeader: 'evil.tsp.example' });
  t.match(r.body, /Host "evil\.tsp\.example".*not a name of this server/, `the 421 says why: ${r.body.trim()}`);
});
