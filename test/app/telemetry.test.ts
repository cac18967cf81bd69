/**
 * Telemetry (lib/telemetry): the DPDK telemetry v2 socket and the Prometheus server.
 *
 * In this process (no root): the protocol on a real SOCK_SEQPACKET socket in a private directory
 * (greeting, one reply per request, "/" and /help, null for unknown commands and bad parameters,
 * replies cut to max_output_len, the client limit (the client idle longest makes room), a stale socket replaced, a second server on the
 * prefix taking instance :1, socket and directory removed at close), the ethdev commands against
 * a real net_null port, DPDK's runtime directory rules, and the EAL options.
 *
 * As root, end to end: DPDK's own client, /usr/bin/dpdk-telemetry.py (Debian's dpdk package),
 * reads a running `tspmd l2fwd` through /var/run/dpdk/<prefix>/dpdk_telemetry.v2, and its
 * /ethdev/stats,0 ipackets matches l2fwd's own final count within one second of traffic; SIGTERM
 * removes the socket and its directory; a SIGKILLed run's socket is replaced by the next start.
 * Without root (or without the script) those parts skip. And `--metrics-port 0`: /metrics of a
 * running l2fwd in the text format, its RX counter growing (no root needed).
 *
 * Everything made here is named tsp...<pid> and removed in teardowns.
 */
import t from 'tap';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../drivers/index.js';
import * as os from '../../src/os/libc.js';
import { Eal } from '../../src/eal.js';
import { parseEalArgs, UsageError, EAL_HELP } from '../../src/options.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { TelemetryServer, runtimeDir, MAX_OUTPUT_LEN, TELEMETRY_SOCKET } from '../../lib/telemetry/server.js';
import { registerEthdevCommands, registerEalCommands, QUEUE_STAT_CNTRS } from '../../lib/telemetry/commands.js';
import { renderMetrics } from '../../lib/telemetry/metrics.js';
import { CLI, CHILD_ENV, killChildren } from '../cli.js';
import { TelemetryClient } from '../../index.js';

const root = process.getuid?.() === 0;
const SCRIPT = '/usr/bin/dpdk-telemetry.py';
const rootSkip = !root ? 'needs root (/var/run/dpdk)' : !existsSync(SCRIPT) ? `${SCRIPT} is missing (apt-get install -y dpdk)` : false;
const PID = process.pid;
// Three l2fwd runs and a few more: a worker's start-up alone takes 5-40 s on a loaded 2-vCPU machine.
t.setTimeout(1_200_000);

/** A private directory for in-process servers, removed at the end. */
const base = join(tmpdir(), `tsptel${PID}`);
t.teardown(() => rmSync(base, { recursive: true, force: true }));

t.test('runtimeDir: DPDK\'s rules (RUNTIME_DIRECTORY, /var/run for root, XDG_RUNTIME_DIR or /tmp)', async (t) => {
  t.equal(runtimeDir('tsp', {}, 0), '/var/run/dpdk/tsp');
  t.equal(runtimeDir('x', {}, 1000), '/tmp/dpdk/x');
  t.equal(runtimeDir('x', { XDG_RUNTIME_DIR: '/run/user/1000' }, 1000), '/run/user/1000/dpdk/x');
  t.equal(runtimeDir('x', { RUNTIME_DIRECTORY: '/srv/r', XDG_RUNTIME_DIR: '/run/user/1000' }, 0), '/srv/r/dpdk/x');
});

t.test('EAL options: --no-telemetry, --telemetry, --metrics-port, --metrics-host', async (t) => {
  const d = parseEalArgs([]);
  t.same([d.noTelemetry, d.metricsPort, d.metricsHost], [false, null, '127.0.0.1'], 'defaults: telemetry on, no metrics server');
  t.equal(parseEalArgs(['--no-telemetry']).noTelemetry, true);
  t.equal(parseEalArgs(['--no-telemetry', '--telemetry']).noTelemetry, false, '--telemetry undoes it');
  t.equal(parseEalArgs(['--metrics-port', '9100']).metricsPort, 9100);
  t.equal(parseEalArgs(['--metrics-port=0', '--metrics-host', '::1']).metricsHost, '::1');
  t.throws(() => parseEalArgs(['--metrics-port', '70000']), /--metrics-port "70000": expected a whole number from 0 to 65535/);
  t.throws(() => parseEalArgs(['--metrics-port', '1', '--metrics-host', 'a b']), UsageError);
  t.throws(() => parseEalArgs(['--metrics-host', '::1']), /--metrics-host needs --metrics-port/);
  for (const o of ['--no-telemetry', '--metrics-port PORT', '--metrics-host ADDR']) t.match(EAL_HELP, o, `--help lists ${o}`);
});

t.test('the protocol on a real socket: greeting, commands, null answers, size limit, close', async (t) => {
  const dir = join(base, 'proto', 'dpdk', 'tspp');
  const s = new TelemetryServer({ filePrefix: 'tspp', dir });
  s.register('/test/echo', 'Echoes its parameters', (params) => params);
  s.register('/test/big', 'A dict over max_output_len', () => Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`key_${i}`, i])));
  s.register('/test/throws', 'Fails', () => { throw new Error('boom'); });
  t.throws(() => s.register('nope', 'x', () => 1), /starts with "\/"/);
  t.throws(() => s.register('/test/echo', 'x', () => 1), /already registered/);
  s.start();
  t.teardown(() => s.close());
  t.equal(s.path, join(dir, TELEMETRY_SOCKET), 'the socket is dpdk_telemetry.v2 in the directory');
  t.equal(s.instance, 0);
  const c = new TelemetryClient(s.path);
  t.teardown(() => c.close());
  const hello = JSON.parse((await c.recv())!) as Record<string, unknown>;
  t.same(Object.keys(hello), ['version', 'pid', 'max_output_len'], 'greeting keys, in DPDK\'s order');
  t.equal(hello.pid, PID);
  t.equal(hello.max_output_len, MAX_OUTPUT_LEN);
  t.match(hello.version, /^tspmd \d+\.\d+/);
  t.same(await c.ask('/'), { '/': ['/', '/help', '/info', '/test/big', '/test/echo', '/test/throws'] }, '"/" lists the commands, sorted');
  t.same(await c.ask('/info'), { '/info': hello }, '/info is the greeting');
  t.same(await c.ask('/help,/test/echo'), { '/help': { '/test/echo': 'Echoes its parameters' } });
  t.same(await c.ask('/help'), { '/help': 'Returns help text for a command. Parameters: string command' }, '/help alone: its own help');
  t.same(await c.ask('/help,/nope'), { '/help': null });
  t.same(await c.ask('/test/echo,a,b'), { '/test/echo': 'a,b' }, 'parameters are everything after the first comma');
  t.same(await c.ask('/test/echo'), { '/test/echo': null }, 'no parameters: null');
  t.same(await c.ask('/nope,1'), { '/nope': null }, 'unknown command: null');
  t.same(await c.ask('/test/throws'), { '/test/throws': null }, 'a failing handler: null, the server goes on');
  os.send(c.fd, Buffer.from('/test/big'), 9, os.MSG_NOSIGNAL);
  const big = (await c.recv())!;
  t.ok(Buffer.byteLength(big) <= MAX_OUTPUT_LEN, `a reply over max_output_len is cut to ${Buffer.byteLength(big)} bytes`);
  const entries = Object.keys((JSON.parse(big) as Record<string, Record<string, number>>)['/test/big']);
  t.ok(entries.length > 100 && entries.length < 2000 && entries[0] === 'key_0', `and is still JSON, with its first ${entries.length} entries`);
  t.same(await c.ask('/info'), { '/info': hello }, 'the connection still serves');
  t.equal(s.stats.requests, 11, 'every request counted');

  await s.close();
  t.equal(await c.recv(), null, 'close() ends the connection');
  t.notOk(existsSync(s.path), 'the socket file is gone');
  t.notOk(existsSync(dir), 'and the directory it made');
});

t.test('clients: several at once, a bounded number, a stale socket replaced, a second server takes instance :1', async (t) => {
  const dir = join(base, 'multi');
  mkdirSync(dir, { recursive: true });
  // What a killed server leaves: a socket file nobody listens on.
  const path = join(dir, TELEMETRY_SOCKET);
  const stale = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET, 0);
  os.bind(stale, os.sockaddrUn(path));
  os.close(stale);
  t.ok(existsSync(path), 'a stale socket file is there');
  const s = new TelemetryServer({ filePrefix: 'tspm', dir, maxClients: 2 });
  s.start();
  t.teardown(() => s.close());
  t.equal(s.path, path, 'the stale socket was replaced: instance 0');
  const a = new TelemetryClient(path), b = new TelemetryClient(path), c = new TelemetryClient(path);
  t.teardown(() => { a.close(); b.close(); c.close(); });
  t.match(await a.recv(), /"pid"/, 'client 1 greeted');
  t.match(await b.recv(), /"pid"/, 'client 2 greeted');
  t.match(await c.recv(), /"pid"/, 'client 3, over the limit of 2: greeted too');
  t.equal(await a.recv(), null, 'client 1, idle longest, made room for it');
  t.same(await b.ask('/info'), await c.ask('/info'), 'both connections answer');
  a.close();
  await new Promise((r) => setTimeout(r, 200));
  const d = new TelemetryClient(path);
  t.teardown(() => d.close());
  t.match(await d.recv(), /"pid"/, 'once one left, a new client is served');
  t.equal(s.clientCount, 2);

  const second = new TelemetryServer({ filePrefix: 'tspm', dir });
  second.start();
  t.teardown(() => second.close());
  t.equal(second.instance, 1, 'a live socket on the prefix: the second server takes instance 1');
  t.equal(second.path, `${path}:1`, 'dpdk_telemetry.v2:1, where dpdk-telemetry.py -i 1 looks');
  const e = new TelemetryClient(second.path);
  t.teardown(() => e.close());
  t.match(await e.recv(), /"max_output_len"/);
  await second.close();
  t.notOk(existsSync(`${path}:1`), 'its socket removed');
  t.ok(existsSync(path), 'the first one\'s left alone');
  await s.close();
  t.notOk(existsSync(dir), 'nothing left: the emptied directory is removed too (a killed run may have made it)');
});

t.test('ethdev and EAL commands read the ports\' own counters', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tsptelp${PID}`, lcores: [{ id: 0, cpu: 0 }, { id: 1, cpu: os.getAffinity().at(-1)! }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const [port] = await probeVdevs(eal, ['net_null0']);
  const pool = pktmbufPoolCreate(eal.memory, 'tel_pool', 1023);
  port.configure({ rxQueues: 2, txQueues: 1 });
  port.rxQueueSetup(0, 256, pool);
  port.rxQueueSetup(1, 256, pool);
  port.txQueueSetup(0, 256);
  port.start();
  const rxq = await openRxQueue(port.data(), 1);
  const burst = new Uint32Array(32);
  const n = rxq.rxBurst(burst, 32);
  pktmbufFreeBulk(burst, n);
  t.ok(n > 0, `${n} packets received from net_null`);
  const s = new TelemetryServer({ filePrefix: 'tspe', dir: join(base, 'ethdev') });
  registerEthdevCommands(s);
  registerEalCommands(s, { params: ['tspmd x', '--no-huge'], appParams: ['tspmd x', '-T', '0'], lcores: eal.lcores });
  const ask = (req: string): Record<string, unknown> => (JSON.parse(s.handle(req)) as Record<string, Record<string, unknown>>)[req.split(',')[0]];
  const st = ask(`/ethdev/stats,${port.port}`);
  t.same(Object.keys(st), ['ipackets', 'opackets', 'ibytes', 'obytes', 'imissed', 'ierrors', 'oerrors', 'rx_nombuf', 'q_ipackets', 'q_opackets', 'q_ibytes', 'q_obytes', 'q_errors'],
    'DPDK 22.11\'s keys, in its order');
  t.equal(st.ipackets, port.stats().ipackets, 'ipackets is the port\'s counter');
  t.equal(st.ipackets, n);
  t.equal((st.q_ipackets as number[]).length, QUEUE_STAT_CNTRS, 'per-queue arrays of 16');
  t.same((st.q_ipackets as number[]).slice(0, 2), [0, n], 'queue 1 received them');
  t.equal(ask(`/ethdev/xstats,${port.port}`).rx_q1_packets, n, 'xstats: the port\'s own names');
  const info = ask(`/ethdev/info,${port.port}`);
  t.match(info, { name: port.name, port_id: port.port, nb_rx_queues: 2, nb_tx_queues: 1, dev_started: 1, mac_addr: port.macString(), driver: 'net_null', state: 1, rxq_state: [1, 1] });
  t.same(ask(`/ethdev/link_status,${port.port}`), { status: 'UP', speed: port.link().speedMbps, duplex: 'full-duplex' });
  t.ok((ask('/ethdev/list') as unknown as number[]).includes(port.port), '/ethdev/list has the port');
  for (const bad of ['/ethdev/stats', '/ethdev/stats,x', '/ethdev/stats,999', '/ethdev/info,-1']) t.equal(ask(bad), null, `${bad}: null`);
  t.same(ask('/eal/lcore/list'), [0, 1]);
  t.match(ask('/eal/lcore/info,1'), { lcore_id: 1, main: 0, cpuset: [eal.lcores.cpuOf(1)] });
  t.same(ask('/eal/params'), ['tspmd x', '--no-huge']);
  t.same(ask('/eal/app_params'), ['tspmd x', '-T', '0']);
  const m = renderMetrics([port]);
  t.match(m, `# TYPE tspmd_port_rx_packets_total counter\ntspmd_port_rx_packets_total{port="${port.port}",name="${port.name}"} ${n}\n`, 'Prometheus: the same counter');
  t.match(m, `tspmd_port_xstat{port="${port.port}",name="${port.name}",xstat="rx_q1_packets"} ${n}`, 'xstats with an xstat label');
  t.match(m, `tspmd_port_rx_queue_packets_total{port="${port.port}",name="${port.name}",queue="1"} ${n}`);
  const sample = /^[a-z_]+(\{[a-z_]+="[^"\\\n]*"(,[a-z_]+="[^"\\\n]*")*\})? -?\d+(\.\d+)?(e[+-]?\d+)?$/;
  const comment = /^# (HELP [a-z_]+ .+|TYPE [a-z_]+ (counter|gauge))$/;
  const lines = m.trim().split('\n');
  t.same(lines.filter((l) => !(l.startsWith('#') ? comment : sample).test(l)), [], `all ${lines.length} lines are HELP, TYPE or sample lines`);
  port.stop();
});

/** Run dpdk-telemetry.py -f prefix with these commands on stdin; resolves to the JSON replies (one per command). */
function telemetryPy(prefix: string, cmds: string[], extra: string[] = []): Promise<Array<Record<string, unknown>>> {
  return new Promise((resolve, reject) => {
    const p = execFile('python3', [SCRIPT, '-f', prefix, ...extra], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) { reject(new Error(`${SCRIPT}: ${err.message}\n${stderr}`)); return; }
      const lines = stdout.trim().split('\n').filter((l) => l.startsWith('{'));
      if (lines.length !== cmds.length) { reject(new Error(`${SCRIPT}: ${lines.length} replies to ${cmds.length} commands: ${stdout}${stderr}`)); return; }
      resolve(lines.map((l) => JSON.parse(l) as Record<string, unknown>));
    });
    p.stdin!.end(cmds.join('\n') + '\n');
  });
}

/** A dpdk-telemetry.py session kept open (unbuffered output): one command in, one JSON line out. */
class TelemetryPySession {
  private readonly proc: ChildProcess;
  private buf = '';
  private readonly lines: string[] = [];
  private wake: (() => void) | null = null;
  private ended = false;
  constructor(prefix: string) {
    this.proc = spawn('python3', [SCRIPT, '-f', prefix], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
    this.proc.stdout!.on('data', (d: Buffer) => {
      this.buf += d.toString();
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        if (line.startsWith('{')) this.lines.push(line);
      }
      this.wake?.();
    });
    this.proc.stderr!.resume();
    this.proc.on('exit', () => { this.ended = true; this.wake?.(); });
  }
  /** The reply to cmd, or null once the session ended (the app closed its socket). */
  async ask(cmd: string, timeoutMs = 20_000): Promise<Record<string, unknown> | null> {
    if (this.ended) return null;
    this.proc.stdin!.write(cmd + '\n');
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.ended) return null;
      if (Date.now() > deadline) throw new Error(`${SCRIPT}: no reply to ${cmd} within ${timeoutMs} ms`);
      await new Promise<void>((r) => { this.wake = r; setTimeout(r, 100); });
    }
    return JSON.parse(this.lines.shift()!) as Record<string, unknown>;
  }
  close(): void {
    if (!this.ended) this.proc.kill('SIGKILL');
  }
}

/** Spawn tspmd with args; collects its output; killed (SIGKILL) in teardown if still running. */
function spawnTspmd(t: { teardown(fn: () => unknown): void }, args: string[]): { proc: ChildProcess; out: () => string; err: () => string; exit: Promise<number | null> } {
  const proc = spawn(process.execPath, [...process.execArgv, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  let out = '', err = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exit = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  t.teardown(() => killChildren([proc]));
  return { proc, out: () => out, err: () => err, exit };
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
  return true;
}

t.test('dpdk-telemetry.py reads a running tspmd l2fwd; ipackets matches l2fwd\'s own count', { skip: rootSkip, timeout: 400_000 }, async (t) => {
  const prefix = `tsptl${PID}`;
  const dir = `/var/run/dpdk/${prefix}`;
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const DURATION = 6;
  const app = spawnTspmd(t, ['l2fwd', '--no-huge', '--file-prefix', prefix, '--log-level', 'info', '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1',
    '--', '--duration', String(DURATION), '-T', '0', '--json']);
  const sock = join(dir, TELEMETRY_SOCKET);
  const serving = await until(() => app.err().includes(`telemetry: socket ${sock}`), 150_000);
  t.ok(serving, `l2fwd says where its socket is at info level${serving ? '' : `\n${app.err()}`}`);
  t.ok(existsSync(sock), `${sock} exists while it runs`);
  const first = await telemetryPy(prefix, ['/', '/info', '/ethdev/list', '/ethdev/info,0', '/ethdev/link_status,1', '/eal/app_params']);
  t.ok((first[0]['/'] as string[]).includes('/ethdev/stats'), '"/" lists /ethdev/stats');
  t.equal((first[1]['/info'] as Record<string, unknown>).pid, app.proc.pid, '/info: l2fwd\'s pid');
  t.same(first[2], { '/ethdev/list': [0, 1] });
  t.match(first[3], { '/ethdev/info': { name: 'net_null0', port_id: 0, driver: 'net_null' } });
  t.match(first[4], { '/ethdev/link_status': { status: 'UP' } });
  t.same(first[5], { '/eal/app_params': ['tspmd l2fwd', '--duration', String(DURATION), '-T', '0', '--json'] });
  // One dpdk-telemetry.py session for the rest of the run, asked every ~0.2 s until l2fwd ends; the
  // last answer came at most one period before its lcores stopped, or after (then it is the final count).
  const session = new TelemetryPySession(prefix);
  t.teardown(() => session.close());
  let last = -1, lastAt = 0, samples = 0, moving = 0, goneAt = 0;
  for (;;) {
    const r = await session.ask('/ethdev/stats,0');
    if (r === null) { goneAt = Date.now(); break; } // the socket went away: l2fwd is closing
    const s = r['/ethdev/stats'] as Record<string, number>;
    if (last > 0 && s.ipackets > last) moving++;
    last = s.ipackets;
    lastAt = Date.now();
    samples++;
    await new Promise((res) => setTimeout(res, 200));
  }
  const code = await app.exit;
  t.equal(code, 0, `l2fwd exits 0${code === 0 ? '' : `\n${app.err().slice(-2000)}`}`);
  const summary = JSON.parse(app.out().trim().split('\n').pop()!) as { ports: Array<{ ipackets: number }> };
  const final = summary.ports[0].ipackets;
  const perSecond = final / DURATION;
  t.ok(samples >= 3 && moving >= 1, `${samples} answers while it ran, the count growing between them ${moving} time(s)`);
  // A loaded machine may delay the next question well past 0.2 s: the traffic that can have come
  // after the last answer is what flows until the socket went away, plus the one second allowed.
  const allowed = perSecond * (1 + Math.max(0, goneAt - lastAt - 200) / 1000);
  t.ok(last <= final && final - last <= allowed, `the last /ethdev/stats,0 ipackets (${last}, ${goneAt - lastAt} ms before the socket went away) is within one second of traffic (${Math.round(perSecond)}/s, ${Math.round(allowed)} allowed) of l2fwd's final ${final}`);
  t.notOk(existsSync(sock), 'the socket is removed at exit');
  t.notOk(existsSync(dir), 'and its directory');
});

t.test('SIGTERM removes the socket; after SIGKILL the next run replaces the stale one', { skip: rootSkip, timeout: 400_000 }, async (t) => {
  const prefix = `tsptk${PID}`;
  const dir = `/var/run/dpdk/${prefix}`;
  const sock = join(dir, TELEMETRY_SOCKET);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const args = ['l2fwd', '--no-huge', '--file-prefix', prefix, '--log-level', 'info', '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '-T', '0', '--json'];
  const a = spawnTspmd(t, args);
  t.ok(await until(() => a.err().includes('telemetry: socket'), 150_000), 'first run serves');
  a.proc.kill('SIGTERM');
  await a.exit;
  t.notOk(existsSync(sock), 'SIGTERM: socket removed');
  const b = spawnTspmd(t, args);
  t.ok(await until(() => b.err().includes('telemetry: socket'), 150_000), 'second run serves');
  b.proc.kill('SIGKILL');
  await b.exit;
  t.ok(existsSync(sock), 'SIGKILL: the socket file stays behind');
  const c = spawnTspmd(t, args);
  t.ok(await until(() => c.err().includes('telemetry: socket'), 150_000), 'third run serves');
  t.match(c.err(), `removed stale socket ${sock}`, 'and says it replaced the stale socket');
  const [r] = await telemetryPy(prefix, ['/ethdev/list']);
  t.same(r, { '/ethdev/list': [0, 1] }, 'dpdk-telemetry.py reaches the new run');
  c.proc.kill('SIGINT');
  await c.exit;
  t.notOk(existsSync(sock), 'SIGINT: socket removed');
});

t.test('--metrics-port 0: /metrics of a running l2fwd, its RX counter growing', { timeout: 400_000 }, async (t) => {
  const prefix = `tsptm${PID}`;
  t.teardown(() => rmSync(runtimeDir(prefix), { recursive: true, force: true }));
  const app = spawnTspmd(t, ['l2fwd', '--no-huge', '--file-prefix', prefix, '--no-telemetry', '--metrics-port', '0', '--log-level', 'info', '-l', '0-1',
    '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '-T', '0', '--json']);
  const re = /Prometheus metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/;
  const named = await until(() => re.test(app.err()), 150_000);
  t.ok(named, `l2fwd names the metrics URL${named ? '' : `\n${app.err()}`}`);
  t.notOk(app.err().includes('telemetry: socket'), '--no-telemetry: no socket');
  const url = re.exec(app.err())![1];
  const rx = async (): Promise<number> => {
    const res = await fetch(url);
    t.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
    const body = await res.text();
    t.match(body, '# TYPE tspmd_port_rx_packets_total counter');
    const m = /^tspmd_port_rx_packets_total\{port="0",name="net_null0"\} (\d+)$/m.exec(body);
    t.ok(m, 'a port 0 RX sample');
    return m ? Number(m[1]) : -1;
  };
  // The counter starts once the lcore runs (a worker's start-up takes a few seconds here).
  let a = await rx(), grew = false;
  for (let i = 0; i < 60 && !grew; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const b = await rx();
    grew = a > 0 && b > a;
    a = b;
  }
  t.ok(grew, 'tspmd_port_rx_packets_total grows between two scrapes');
  t.equal((await fetch(url.replace('/metrics', '/nope'))).status, 404);
  app.proc.kill('SIGTERM');
  t.equal(await app.exit, 0, 'SIGTERM: exit 0');
  await t.rejects(fetch(url), 'the metrics server is gone');
});
