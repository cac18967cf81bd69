/**
 * The telemetry socket against other local users and misbehaving clients (issue 22: findings 2,
 * 3 and 8 for telemetry, and the command-line fuzzer).
 *
 * - finding 2: the runtime directory. As root, with real users: `nobody` (setpriv) plays the other
 *   user and a throwaway system user tsp<random> (useradd, removed at the end) the victim, both
 *   without XDG_RUNTIME_DIR, so their runtime directory is /tmp/dpdk/<prefix>: a first user's
 *   server leaves /tmp/dpdk shared (01777) and a second user serves beside it; a directory the
 *   other user made at the victim's prefix is never used, and the victim's `tspmd l2fwd` still
 *   forwards, with one warning. In this process: every way a directory can be wrong (a symlink, a
 *   file, another owner, open to others, a parent others can write), the modes made (01777 shared
 *   parent, 0700 directory, 0600 socket under a umask), and a non-socket file or 64 live sockets at
 *   the socket names not blocking an app's start.
 * - finding 3: a server at its fd limit (a child under prlimit with its fd table filled) waits
 *   100 ms between accept attempts and says so once, instead of re-polling at once; it serves the
 *   waiting clients when fds are free again.
 * - finding 8: at the client limit a new client evicts the one idle longest; idle clients time
 *   out; `tspmd pdump` gets its answer while eight idle clients are connected.
 * - the fuzzer: seeded command lines (long, invalid UTF-8, NULs, huge parameters, many commas,
 *   empty messages, descriptors attached, floods); the server answers each with one JSON reply,
 *   answers a valid command afterwards, and its fd count returns to idle.
 *
 * Everything made here is named tsp...<pid> and removed in teardowns (/tmp/dpdk too when it did
 * not exist before; the prefix directories always).
 */
import t, { type Test } from 'tap';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, rmdirSync, symlinkSync, writeFileSync, type Stats,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import '../../drivers/index.js';
import * as os from '../../src/os/libc.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { TelemetryServer, TELEMETRY_SOCKET, MAX_OUTPUT_LEN, type TelemetryOptions } from '../../lib/telemetry/server.js';
import { registerEthdevCommands, registerEalCommands } from '../../lib/telemetry/commands.js';
import { startTelemetry } from '../../lib/telemetry/start.js';
import { TelemetryClient } from '../../lib/telemetry/client.js';
import { CHILD_ENV, runCli, killChildren } from '../cli.js';
import { sleep, tempDir, ownFdCount, until } from './server-helpers.js';
import { prng } from '../prng.js';

const PID = process.pid;
const root = process.getuid?.() === 0;
const needRoot = root ? false : 'needs root (another user\'s directories, setpriv, useradd)';
t.setTimeout(290_000);

/** A unique prefix: tsp-<pid>-<random>. */
const prefixName = (tag: string): string => `tsp-${PID}-${tag}${randomBytes(3).toString('hex')}`;
/** What a directory or file is, for messages: "dir 0700 uid 0". */
const what = (st: Stats): string => `${st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : st.isSocket() ? 'socket' : 'file'} 0${(st.mode & 0o7777).toString(8)} uid ${st.uid}`;

/** A SEQPACKET client of a telemetry socket; never blocks the event loop (servers of this process run on it). */
class Conn {
  readonly fd: number;
  closed = false;
  constructor(path: string) {
    // connected and non-blocking as the package's client makes it; this class reads and writes raw
    this.fd = new TelemetryClient(path).fd;
  }
  /** Send bytes as one message (with descriptors); false when the socket is full or gone. */
  send(data: Uint8Array | string, fds: readonly number[] = []): boolean {
    const b = typeof data === 'string' ? Buffer.from(data) : data;
    try {
      return os.sendmsg(this.fd, b, fds, os.MSG_NOSIGNAL | os.MSG_DONTWAIT) === b.byteLength;
    } catch {
      return false;
    }
  }
  /** The next message as text; null when the server closed the connection; 'timeout' after ms. */
  async recv(ms = 10_000): Promise<string | null | 'timeout'> {
    const deadline = Date.now() + ms;
    for (;;) {
      let m: os.RecvResult | null;
      try {
        m = os.recvmsg(this.fd, 65536, os.MSG_DONTWAIT);
      } catch {
        return null; // ECONNRESET
      }
      if (m) {
        for (const fd of m.fds) os.close(fd);
        return m.data.length === 0 ? null : Buffer.from(m.data).toString('utf8');
      }
      const left = deadline - Date.now();
      if (left <= 0) return 'timeout';
      await os.pollAsync([this.fd], os.POLLIN, Math.min(100, left));
    }
  }
  /** Send a request and parse its reply (null: closed, 'timeout'). */
  async ask(req: string, ms = 10_000): Promise<Record<string, unknown> | null | 'timeout'> {
    if (!this.send(req)) return null;
    const r = await this.recv(ms);
    return r === null || r === 'timeout' ? r : (JSON.parse(r) as Record<string, unknown>);
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try { os.close(this.fd); } catch { /* closed */ }
  }
}

/** A connection closed at teardown. */
function conn(t: Test, path: string): Conn {
  const c = new Conn(path);
  t.teardown(() => c.close());
  return c;
}

/** Collect what this process writes to stderr (log lines) until restore(); it is still written. */
function captureStderr(t: Test): { text(): string; restore(): void } {
  const orig = process.stderr.write.bind(process.stderr);
  let buf = '';
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
    buf += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    return orig(chunk, ...rest);
  }) as typeof process.stderr.write;
  const restore = (): void => { process.stderr.write = orig; };
  t.teardown(restore);
  return { text: () => buf, restore };
}

/** The log lines of one level and component in text. */
const logLines = (text: string, level: string): string[] => text.split('\n').filter((l) => l.startsWith(`tspmd: ${level}: telemetry:`));

/** The child server (test/hardening/telemetry-child.ts), in the language of this test. */
const CHILD = fileURLToPath(new URL('./telemetry-child' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url));

/** A running child server: its JSON lines on stdout, its stderr, commands on stdin. */
interface Child {
  proc: ChildProcess;
  err(): string;
  /** the next JSON line on stdout (within ms), or null when the child ended first */
  next(ms?: number): Promise<Record<string, unknown> | null>;
  cmd(c: string): Promise<Record<string, unknown> | null>;
}

/** Start the child server with args, run through wrap (setpriv, prlimit); SIGKILLed at teardown if still running. */
function startChild(t: Test, args: Record<string, unknown>, wrap: string[] = [], env: NodeJS.ProcessEnv = CHILD_ENV): Child {
  const cmd = [...wrap, process.execPath, ...process.execArgv, CHILD, JSON.stringify(args)];
  const proc = spawn(cmd[0], cmd.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], env });
  t.teardown(() => killChildren([proc]));
  let out = '', err = '';
  const lines: string[] = [];
  let wake: (() => void) | null = null;
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    let i;
    while ((i = out.indexOf('\n')) >= 0) { lines.push(out.slice(0, i)); out = out.slice(i + 1); }
    wake?.();
  });
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  let ended = false;
  proc.on('exit', () => { ended = true; wake?.(); });
  const next = async (ms = 60_000): Promise<Record<string, unknown> | null> => {
    const deadline = Date.now() + ms;
    while (lines.length === 0) {
      if (ended || Date.now() > deadline) return null;
      await new Promise<void>((r) => { wake = r; setTimeout(r, 100); });
    }
    return JSON.parse(lines.shift()!) as Record<string, unknown>;
  };
  return { proc, err: () => err, next, cmd: async (c) => { proc.stdin!.write(`${c}\n`); return next(); } };
}

/** The environment of a user without XDG_RUNTIME_DIR (runtime directory /tmp/dpdk/<prefix>). */
function xdgFreeEnv(): NodeJS.ProcessEnv {
  const env = { ...CHILD_ENV };
  delete env.XDG_RUNTIME_DIR;
  delete env.RUNTIME_DIRECTORY;
  delete env.TSPMD_LOG_LEVEL;
  return env;
}

/** setpriv to nobody (65534:65534), the other local user. */
const AS_NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

/** A throwaway system user tsp<random> (with its group), removed at teardown; returns its name, uid and setpriv wrap. */
function makeUser(t: Test): { name: string; uid: number; wrap: string[] } {
  const name = `tsp${randomBytes(4).toString('hex')}`;
  execFileSync('useradd', ['--system', '--no-create-home', '--user-group', '--shell', '/usr/sbin/nologin', name], { stdio: 'pipe' });
  t.teardown(() => { spawnSync('userdel', [name], { stdio: 'ignore' }); });
  const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
  return { name, uid, wrap: ['setpriv', `--reuid=${name}`, `--regid=${name}`, '--clear-groups'] };
}

// ---- finding 2: the runtime directory ----

const SHARED = '/tmp/dpdk';
/** /tmp/dpdk as this file found it: removed at the end if it was not there (with whatever prefix directories the tests left). */
const sharedBefore = (() => { try { return lstatSync(SHARED); } catch { return null; } })();
const sharedPrefixes: string[] = [];
t.teardown(() => {
  for (const p of sharedPrefixes) rmSync(join(SHARED, p), { recursive: true, force: true });
  if (sharedBefore === null) { try { rmdirSync(SHARED); } catch { /* not empty: someone else's prefix is in it now */ } }
});
/** Why /tmp/dpdk cannot serve as the shared directory here (null: it can). */
function sharedSkip(): string | false {
  if (!root) return needRoot;
  let st: Stats;
  try { st = lstatSync(SHARED); } catch { return false; }
  if (st.isDirectory() && (st.mode & 0o1777) === 0o1777) return false;
  return `${SHARED} exists as ${what(st)} (made before it was shared, e.g. by DPDK): other users cannot make their prefix directories in it; remove it to run this test`;
}

t.test('finding 2: /tmp/dpdk is made shared (01777) by the first user, and a second user serves telemetry beside the first', { skip: sharedSkip() }, async (t) => {
  const victim = makeUser(t);
  const p1 = prefixName('a'), p2 = prefixName('b');
  sharedPrefixes.push(p1, p2);
  const env = xdgFreeEnv();
  const first = startChild(t, { prefix: p1 }, AS_NOBODY, env);
  const r1 = await first.next();
  t.match(r1, { ready: true, path: `${SHARED}/${p1}/${TELEMETRY_SOCKET}` }, `the first user (nobody) serves in ${SHARED}/${p1}${r1?.ready ? '' : `: ${JSON.stringify(r1)} ${first.err()}`}`);
  const st = lstatSync(SHARED);
  if (sharedBefore === null) t.equal(st.mode & 0o7777, 0o1777, `${SHARED} it made is sticky and world-writable, as /tmp (${what(st)})`);
  const second = startChild(t, { prefix: p2 }, victim.wrap, env);
  const r2 = await second.next();
  t.match(r2, { ready: true, path: `${SHARED}/${p2}/${TELEMETRY_SOCKET}` }, `a second user (${victim.name}) serves in ${SHARED}/${p2} while the first runs${r2?.ready ? '' : `: ${JSON.stringify(r2)} ${second.err()}`}`);
  if (r2?.ready) {
    const d = lstatSync(join(SHARED, p2)), s = lstatSync(join(SHARED, p2, TELEMETRY_SOCKET));
    t.ok(d.isDirectory() && d.uid === victim.uid && (d.mode & 0o777) === 0o700, `its directory is its own, 0700 (${what(d)})`);
    t.ok(s.isSocket() && s.uid === victim.uid && (s.mode & 0o777) === 0o600, `its socket is its own, 0600 (${what(s)})`);
    const c = conn(t, join(SHARED, p2, TELEMETRY_SOCKET));
    const hello = await c.recv();
    t.equal(typeof hello === 'string' ? (JSON.parse(hello) as { pid: number }).pid : hello, second.proc.pid, 'and answers: the greeting names its pid');
  }
  for (const c of [first, second]) c.proc.stdin!.end();
  t.equal(await new Promise((r) => second.proc.once('exit', r)), r2?.ready ? 0 : 1);
  await new Promise((r) => (first.proc.exitCode !== null ? r(null) : first.proc.once('exit', r)));
  t.notOk(existsSync(join(SHARED, p2)), 'its prefix directory is removed at close');
  t.ok(existsSync(SHARED), `${SHARED} stays: it is shared, like /tmp`);
});

t.test('finding 2: a directory another user made at the victim\'s prefix is not used; the victim\'s l2fwd forwards, telemetry off, one warning', { skip: sharedSkip() }, async (t) => {
  const victim = makeUser(t);
  const p = prefixName('c');
  sharedPrefixes.push(p);
  const dir = join(SHARED, p);
  // The other user makes it first, open to everyone (and /tmp/dpdk too when there is none yet, as the issue's attacker did).
  execFileSync(AS_NOBODY[0], [...AS_NOBODY.slice(1), 'sh', '-c', `umask 0 && mkdir -p ${dir}`], { stdio: 'pipe' });
  const before = lstatSync(dir);
  t.equal(before.mode & 0o777, 0o777, `the other user's ${dir}: ${what(before)}`);
  // Watch it while the victim runs: nothing of the victim's may appear in it.
  const seen = new Set<string>();
  const watch = setInterval(() => { try { for (const e of readdirSync(dir)) seen.add(e); } catch { /* gone */ } }, 50);
  t.teardown(() => clearInterval(watch));
  const r = await runCli(['l2fwd', '--no-huge', '--file-prefix', p, '--log-level', 'info', '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1',
    '--', '--duration', '1', '-T', '0', '--json'], { wrap: victim.wrap, env: xdgFreeEnv(), timeoutMs: 200_000 });
  clearInterval(watch);
  t.equal(r.code, 0, `l2fwd exits 0${r.code === 0 ? '' : `\n${r.stderr.slice(-3000)}`}`);
  const summary = (() => { try { return JSON.parse(r.stdout.trim().split('\n').pop()!) as { ports: Array<{ ipackets: number }> }; } catch { return null; } })();
  t.ok(summary !== null && summary.ports[0].ipackets > 0, `and forwards (${summary?.ports[0].ipackets} packets on port 0)`);
  const warns = logLines(r.stderr, 'warn');
  t.equal(warns.length, 1, `one telemetry warning:\n${warns.join('\n')}`);
  t.match(warns[0] ?? '', dir, 'it names the directory');
  t.match(warns[0] ?? '', /XDG_RUNTIME_DIR/, 'and the fix: XDG_RUNTIME_DIR');
  t.match(warns[0] ?? '', /--file-prefix/, 'or another --file-prefix');
  t.notMatch(r.stderr, /telemetry: socket /, 'no socket served');
  t.same([...seen], [], 'nothing appeared in the other user\'s directory while l2fwd ran');
  const after = lstatSync(dir);
  t.ok(after.uid === 65534 && (after.mode & 0o777) === 0o777, `the other user's directory is left as it was (${what(after)})`);
});

t.test('finding 2: the runtime directory is used only when it is a real directory of this user that nobody else can reach', { skip: needRoot }, async (t) => {
  const base = tempDir(t);
  chmodSync(base, 0o1777); // a stand-in for /tmp: shared and sticky
  const elsewhere = join(base, 'elsewhere');
  mkdirSync(elsewhere, { mode: 0o700 });
  const parent = join(base, 'dpdk');
  mkdirSync(parent, { mode: 0o700 });
  const fix = /--file-prefix.*RUNTIME_DIRECTORY/; // root's runtime directory follows RUNTIME_DIRECTORY (other users': XDG_RUNTIME_DIR)
  const refused = (name: string, why: RegExp, prepare: (dir: string) => void): void => {
    const dir = join(parent, name);
    prepare(dir);
    const s = new TelemetryServer({ filePrefix: name, dir });
    let err: Error | null = null;
    try { s.start(); } catch (e) { err = e as Error; }
    t.teardown(() => s.close());
    t.ok(err, `${name}: refused`);
    t.match(err?.message ?? '', dir, `${name}: the message names ${dir}`);
    t.match(err?.message ?? '', why, `${name}: and says why`);
    t.match(err?.message ?? '', fix, `${name}: and the fix`);
    t.notOk((err?.message ?? '').includes('\n'), `${name}: in one line`);
    t.notOk(existsSync(join(dir, TELEMETRY_SOCKET)), `${name}: no socket made in it`);
  };
  refused('tsplink', /symbolic link/, (d) => symlinkSync(elsewhere, d));
  t.same(readdirSync(elsewhere), [], 'nothing made where the symlink points');
  refused('tspfile', /not a directory/, (d) => writeFileSync(d, 'x'));
  refused('tspother', /uid 65534/, (d) => { mkdirSync(d, { mode: 0o700 }); chownSync(d, 65534, 65534); });
  refused('tspopen', /writable by other users|0777/, (d) => { mkdirSync(d); chmodSync(d, 0o777); });
  // A parent others can write to (not sticky): they could swap the prefix directory.
  const open = join(base, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  const openDir = join(open, 'tspx');
  const s0 = new TelemetryServer({ filePrefix: 'tspx', dir: openDir });
  t.teardown(() => s0.close());
  t.throws(() => s0.start(), new RegExp(`${open}.*(writable by other users|not sticky)`), 'a parent writable by others and not sticky: refused');

  // Ours, but readable by others (made by hand with umask 022): narrowed to 0700 and used.
  const mine = join(parent, 'tspmine');
  mkdirSync(mine, { mode: 0o755 });
  chmodSync(mine, 0o755);
  const s1 = new TelemetryServer({ filePrefix: 'tspmine', dir: mine });
  s1.start();
  t.teardown(() => s1.close());
  t.equal(lstatSync(mine).mode & 0o777, 0o700, 'a directory of ours open to reading is narrowed to 0700');

  // Made fresh under a shared parent (as /tmp): <base>/dpdk2 01777, the prefix 0700, the socket 0600, under a umask (restored).
  const umask = process.umask();
  const freshParent = join(base, 'dpdk2');
  const s2 = new TelemetryServer({ filePrefix: 'tspfresh', dir: join(freshParent, 'tspfresh') });
  s2.start();
  t.teardown(() => s2.close());
  t.equal(process.umask(), umask, 'the process umask is restored');
  t.equal(lstatSync(freshParent).mode & 0o7777, 0o1777, `the parent in a shared directory is made 01777 (${what(lstatSync(freshParent))})`);
  t.equal(lstatSync(join(freshParent, 'tspfresh')).mode & 0o7777, 0o700, 'the prefix directory 0700');
  const sock = lstatSync(s2.path);
  t.ok(sock.isSocket() && (sock.mode & 0o777) === 0o600, `the socket 0600 (${what(sock)})`);
  await s2.close();
  t.ok(existsSync(freshParent), 'the shared parent stays after close; the prefix directory goes');
  t.notOk(existsSync(join(freshParent, 'tspfresh')));
});

t.test('finding 2: a non-socket file at the socket name or 64 live sockets do not stop an app from starting', async (t) => {
  const base = tempDir(t);
  const saved = process.env.RUNTIME_DIRECTORY;
  process.env.RUNTIME_DIRECTORY = base;
  t.teardown(() => { if (saved === undefined) delete process.env.RUNTIME_DIRECTORY; else process.env.RUNTIME_DIRECTORY = saved; });
  const eal = new Eal({ noHuge: true, filePrefix: prefixName('e'), lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const args = { prog: 'tspmd test', ealArgs: [], appArgs: [] };

  // A regular file where the socket goes: left alone, the next name is served.
  const p1 = prefixName('f');
  const d1 = join(base, 'dpdk', p1);
  mkdirSync(d1, { recursive: true, mode: 0o700 });
  writeFileSync(join(d1, TELEMETRY_SOCKET), 'not a socket');
  const eal1 = new Eal({ noHuge: true, filePrefix: p1, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal1.close());
  const log1 = captureStderr(t);
  let started: Awaited<ReturnType<typeof startTelemetry>> | null = null;
  try { started = await startTelemetry(eal1, args); } catch (e) { t.fail(`startTelemetry threw: ${(e as Error).message}`); }
  log1.restore();
  t.equal(started?.telemetry?.path, join(d1, `${TELEMETRY_SOCKET}:1`), 'served as instance 1');
  t.match(logLines(log1.text(), 'warn').join('\n'), /not a socket/, 'with a warning about the file');
  t.equal(readFileSync(join(d1, TELEMETRY_SOCKET), 'utf8'), 'not a socket', 'the file is left as it was');
  await started?.telemetry?.close();

  // 64 live sockets (listening, never greeting): the app starts without telemetry and says so once, quickly.
  const p2 = prefixName('g');
  const d2 = join(base, 'dpdk', p2);
  mkdirSync(d2, { recursive: true, mode: 0o700 });
  const held: number[] = [];
  t.teardown(() => { for (const fd of held) os.close(fd); });
  for (let i = 0; i < 64; i++) {
    const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET, 0);
    held.push(fd);
    os.bind(fd, os.sockaddrUn(join(d2, i === 0 ? TELEMETRY_SOCKET : `${TELEMETRY_SOCKET}:${i}`)));
    os.listen(fd, 4);
  }
  const eal2 = new Eal({ noHuge: true, filePrefix: p2, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal2.close());
  const log2 = captureStderr(t);
  const t0 = Date.now();
  let started2: Awaited<ReturnType<typeof startTelemetry>> | null = null;
  try { started2 = await startTelemetry(eal2, args); } catch (e) { t.fail(`startTelemetry threw: ${(e as Error).message}`); }
  const took = Date.now() - t0;
  log2.restore();
  t.equal(started2?.telemetry, null, 'no telemetry for this run');
  const w = logLines(log2.text(), 'warn');
  t.equal(w.length, 1, `one warning: ${w.join(' | ')}`);
  t.match(w[0] ?? '', d2, 'naming the directory');
  t.ok(took < 8000, `start-up not held by probing 64 sockets (${took} ms)`);
});

// ---- finding 3: accept at the fd limit ----

t.test('finding 3 (telemetry): at the fd limit accept backs off (one log line per episode, no re-poll spin) and serves the waiting clients when fds are free', async (t) => {
  const dir = join(tempDir(t), 'dpdk', 'tspemfile');
  const env = { ...CHILD_ENV, TSPMD_LOG_LEVEL: 'debug' };
  const child = startChild(t, { prefix: 'tspemfile', dir }, ['prlimit', '--nofile=160:160'], env);
  const ready = await child.next();
  t.match(ready, { ready: true }, `the server runs under a 160-fd limit${ready?.ready ? '' : `: ${JSON.stringify(ready)} ${child.err()}`}`);
  if (!ready?.ready) return;
  const path = ready.path as string;
  const filled = await child.cmd('fill');
  t.ok(filled && (filled.filled as number) > 50, `its fd table filled (${filled?.filled} more fds): what a flood of metrics connections did`);
  const from = child.err().length;
  const cpu0 = cpuTicks(child.proc.pid!);
  const clients = [0, 1, 2].map(() => conn(t, path));
  const WINDOW = 2000;
  await sleep(WINDOW);
  const cpu1 = cpuTicks(child.proc.pid!);
  const st = await child.cmd('stats');
  const lines = child.err().slice(from).split('\n').filter((l) => /accept/i.test(l));
  const stats = (st?.stats ?? {}) as Record<string, number>;
  t.comment(`in ${WINDOW} ms at EMFILE: ${lines.length} accept log lines, ${stats.acceptErrors ?? 'no'} failed accepts counted, ${cpu1 - cpu0} CPU ticks (${Math.round(((cpu1 - cpu0) * 10 * 100) / WINDOW)} % of a CPU)`);
  t.ok(lines.length <= 2, `at most one line per episode (and one when it ends): ${lines.length} lines${lines.length <= 2 ? '' : `, the first: ${lines[0]}`}`);
  t.ok(typeof stats.acceptErrors === 'number' && stats.acceptErrors >= 1 && stats.acceptErrors <= WINDOW / 30,
    `accept is retried at intervals, not at once (${stats.acceptErrors} attempts in ${WINDOW} ms; 100 ms apart would be ~${WINDOW / 100})`);
  t.match(lines[0] ?? '', /EMFILE|too many open files/i, 'the line says what is wrong');
  const freed = await child.cmd('free');
  t.ok(freed && (freed.freed as number) > 0, 'fds free again');
  for (const [i, c] of clients.entries()) {
    const hello = await c.recv(10_000);
    t.match(hello, /"pid"/, `waiting client ${i + 1} is greeted once fds are free`);
  }
  const st2 = await child.cmd('stats');
  t.equal(st2?.clients, 3, 'all three connected');
  child.proc.stdin!.end();
  t.equal(await new Promise((r) => (child.proc.exitCode !== null ? r(child.proc.exitCode) : child.proc.once('exit', r))), 0, 'the server closes and exits 0');
});

/** utime + stime of a process, in clock ticks (10 ms). */
function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}

// ---- finding 8: the client limit ----

t.test('finding 8 (telemetry): at the client limit a new client evicts the one idle longest, idle clients time out, pdump is answered', async (t) => {
  const base = tempDir(t);
  // tspmd pdump while eight idle clients hold the socket (before: "SyntaxError: Unexpected end of
  // JSON input"): started first, it runs while the rest is checked in this process.
  let pdump: Promise<{ code: number; stderr: string }> | null = null;
  if (root) {
    const p = prefixName('p');
    const s3 = new TelemetryServer({ filePrefix: p });
    s3.start();
    t.teardown(() => s3.close());
    for (let i = 0; i < 8; i++) t.match(await conn(t, s3.path).recv(), /"pid"/, `pdump's app: idle client ${i + 1}`);
    pdump = runCli(['pdump', '--file-prefix', p, '--port', '0', '--out', join(base, 'tsp.pcap'), '--duration', '1'], { timeoutMs: 120_000 });
  } else {
    t.comment('pdump part skipped: needs root (its socket is under /var/run/dpdk)');
  }

  const s = new TelemetryServer({ filePrefix: 'tsplimit', dir: join(base, 'dpdk', 'tsplimit'), maxClients: 8 });
  s.start();
  t.teardown(() => s.close());
  const cs: Conn[] = [];
  for (let i = 0; i < 8; i++) {
    const c = conn(t, s.path);
    cs.push(c);
    t.match(await c.recv(), /"pid"/, `client ${i + 1} greeted`);
  }
  await sleep(20);
  t.match(await cs[0].ask('/info'), { '/info': { pid: PID } }, 'client 1 asks something: it is the most recently active');
  const fresh = conn(t, s.path);
  const hello = await fresh.recv();
  t.match(hello, /"pid"/, `a ninth client is greeted (${hello === null ? 'closed without a greeting' : String(hello).slice(0, 40)})`);
  t.match(await fresh.ask('/info'), { '/info': { pid: PID } }, 'and answered');
  t.equal(await cs[1].recv(3000), null, 'client 2 (idle longest: connected second, never asked) was closed');
  t.match(await cs[0].ask('/info'), { '/info': { pid: PID } }, 'client 1 still served');
  t.match(await cs[7].ask('/info'), { '/info': { pid: PID } }, 'client 8 still served');
  t.equal(s.clientCount, 8, 'eight connections');

  // Idle timeout.
  const s2 = new TelemetryServer({ filePrefix: 'tspidle', dir: join(base, 'dpdk', 'tspidle'), idleTimeoutMs: 1000 } as TelemetryOptions);
  s2.start();
  t.teardown(() => s2.close());
  const idle = conn(t, s2.path), busy = conn(t, s2.path);
  t.match(await idle.recv(), /"pid"/);
  t.match(await busy.recv(), /"pid"/);
  let answered = 0;
  const deadline = Date.now() + 8000;
  let idleClosed = false;
  while (Date.now() < deadline && !idleClosed) {
    if (typeof (await busy.ask('/info')) === 'object') answered++;
    idleClosed = (await idle.recv(300)) === null;
  }
  t.ok(idleClosed, 'a client that asks nothing for longer than the idle timeout is closed');
  t.ok(answered >= 2 && typeof (await busy.ask('/info')) === 'object', `one that keeps asking stays (${answered} answers)`);

  if (pdump) {
    const r = await pdump;
    t.notMatch(r.stderr, /SyntaxError|Unexpected end of JSON/, `pdump is not left parsing an empty reply: ${r.stderr.trim().split('\n')[0]}`);
    t.match(r.stderr, String(PID), 'it got this process\'s pid from the greeting (and then finds no capture region here)');
  }
});

// ---- the command-line fuzzer ----

const FUZZ_COUNT = Number(process.env.TSPMD_TELEMETRY_FUZZ ?? 2000);
const FUZZ_SEED = process.env.TSPMD_FUZZ_SEED !== undefined ? Number(process.env.TSPMD_FUZZ_SEED) >>> 0 : (Date.now() ^ (PID << 16)) >>> 0;


t.test(`telemetry command fuzzer: ${FUZZ_COUNT} seeded command lines (seed 0x${FUZZ_SEED.toString(16)}); the server answers each, then a valid command, and its fds return to idle`, async (t) => {
  t.comment(`seed 0x${FUZZ_SEED.toString(16)} (replay: TSPMD_FUZZ_SEED=${FUZZ_SEED}), ${FUZZ_COUNT} command lines`);
  const eal = new Eal({ noHuge: true, filePrefix: prefixName('z'), lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  await probeVdevs(eal, ['net_null0']);
  const s = new TelemetryServer({ filePrefix: 'tspfuzz', dir: join(tempDir(t), 'dpdk', 'tspfuzz') });
  registerEthdevCommands(s);
  registerEalCommands(s, { params: ['tspmd fuzz'], appParams: ['tspmd fuzz'], lcores: eal.lcores });
  s.register('/test/echo', 'Echoes its parameters', (params) => params);
  s.start();
  t.teardown(() => s.close());
  await sleep(100);
  const idleFds = ownFdCount();
  const rnd = prng(FUZZ_SEED);
  const int = (n: number): number => Math.floor(rnd() * n);
  const pick = <T>(a: readonly T[]): T => a[int(a.length)];
  const cmds = [...s.list(), '/ethdev/stats', '/nope', '', '/', '//', '/ethdev', 'ethdev/stats'];
  const params = ['', '0', '1', '-1', '00', '0x0', '1e3', ' 0', '0 ', '4294967296', '9'.repeat(400), '0,1,2', '/ethdev/stats', '\u00e9', '\u{1f600}', 'null', '{}'];
  const bytes = (n: number, lo = 0, hi = 256): Buffer => Buffer.from(Array.from({ length: n }, () => lo + int(hi - lo)));
  const utf8Bad = [[0x80], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xff], [0xe2, 0x82]];
  const kinds: Record<string, number> = {};
  const make = (): { kind: string; data: Buffer; fds: number } => {
    const k = int(12);
    const base = Buffer.from(pick(cmds));
    switch (k) {
      case 0: return { kind: 'valid', data: Buffer.from(`${pick(cmds)},${pick(params)}`), fds: 0 };
      case 1: return { kind: 'long', data: Buffer.concat([base, Buffer.from(','), Buffer.from('A'.repeat(int(70_000)))]), fds: 0 };
      case 2: { // invalid UTF-8 spliced in
        const parts: Buffer[] = [base];
        for (let i = int(8) + 1; i > 0; i--) parts.push(Buffer.from(pick(utf8Bad)), bytes(int(4), 0x20, 0x7f));
        return { kind: 'utf8', data: Buffer.concat(parts), fds: 0 };
      }
      case 3: { // NULs
        const b = Buffer.from(`${pick(cmds)},${pick(params)}`);
        const out = Buffer.concat([b, Buffer.alloc(1)]);
        for (let i = int(4); i > 0 && out.length > 1; i--) out[int(out.length)] = 0;
        return { kind: 'nul', data: out, fds: 0 };
      }
      case 4: return { kind: 'huge-param', data: Buffer.from(`${pick(['/ethdev/stats', '/ethdev/info', '/eal/lcore/info', '/help', '/test/echo'])},${pick(['9', '-', '0', '\u00e9'])
        .repeat(int(2000) + 1)}`), fds: 0 };
      case 5: return { kind: 'commas', data: Buffer.from(`${pick(cmds)}${','.repeat(int(3000) + 1)}${pick(params)}`), fds: 0 };
      case 6: return { kind: 'random', data: bytes(int(300) + 1), fds: 0 };
      case 7: { // a long command name: around MAX_CMD_LEN, multi-byte characters
        const ch = pick(['a', '\u00e9', '\u{1f600}', '/']);
        return { kind: 'cmd-len', data: Buffer.from(`/${ch.repeat(50 + int(20))},0`), fds: 0 };
      }
      case 8: { // bit flips in a valid line
        const b = Buffer.from(`${pick(cmds)},${pick(params)}`);
        for (let i = int(4) + 1; i > 0 && b.length > 0; i--) b[int(b.length)] ^= 1 << int(8);
        return { kind: 'flip', data: b, fds: 0 };
      }
      case 9: return { kind: 'fds', data: Buffer.from(`${pick(cmds)},${pick(params)}`), fds: int(3) + 1 };
      case 10: return { kind: 'crlf', data: Buffer.from(`${pick(cmds)},${pick(params)}${pick(['\n', '\r\n', '\r', '\n\n', ' '])}`), fds: 0 };
      default: return { kind: 'empty', data: Buffer.alloc(0), fds: 0 };
    }
  };
  let c = new Conn(s.path);
  t.teardown(() => c.close());
  t.match(await c.recv(), /"pid"/);
  const bad: string[] = [];
  let replies = 0, closes = 0, sent = 0;
  for (let n = 0; n < FUZZ_COUNT; n++) {
    const m = make();
    // Every 50th: a flood of 2-30 copies before reading any reply. The server answers what fits in
    // the client's receive queue and drops a client that lets it fill (documented); both are fine.
    const burst = n % 50 === 49 ? 2 + int(29) : 1;
    const kind = burst > 1 ? `flood-${m.kind}` : m.kind;
    kinds[kind] = (kinds[kind] ?? 0) + 1;
    const extra: number[] = [];
    for (let i = 0; i < m.fds; i++) extra.push(os.open('/dev/null', os.O_RDONLY | os.O_CLOEXEC));
    let queued = 0;
    while (queued < burst && c.send(m.data, extra)) queued++;
    for (const fd of extra) os.close(fd);
    sent += queued;
    const show = `#${n} ${kind} x${burst} ${JSON.stringify(m.data.subarray(0, 80).toString('latin1'))}${m.data.length > 80 ? `...(${m.data.length} bytes)` : ''}`;
    if (queued === 0 && burst === 1) { bad.push(`${show}: could not send`); break; }
    let closed = false;
    for (let i = 0; i < queued && !closed; i++) {
      const r = await c.recv(5000);
      if (r === 'timeout') { bad.push(`${show}: no reply within 5 s`); break; }
      if (r === null) { closed = true; break; }
      replies++;
      let v: unknown;
      try { v = JSON.parse(r); } catch (e) { bad.push(`${show}: reply is not JSON: ${(e as Error).message}: ${r.slice(0, 80)}`); continue; }
      if (v === null || typeof v !== 'object' || Array.isArray(v) || Object.keys(v).length !== 1) bad.push(`${show}: reply is not an object with one key: ${r.slice(0, 80)}`);
      if (Buffer.byteLength(r) > MAX_OUTPUT_LEN) bad.push(`${show}: reply of ${Buffer.byteLength(r)} bytes`);
    }
    if (m.kind === 'empty' && !closed) bad.push(`${show}: an empty message (end of input, as DPDK reads it) did not end the connection`);
    if (closed) {
      if (m.kind !== 'empty' && burst === 1) bad.push(`${show}: connection closed`);
      closes++;
      c.close();
      c = new Conn(s.path);
      const h = await c.recv();
      if (typeof h !== 'string' || !h.includes('"pid"')) bad.push(`${show}: reconnecting: no greeting (${String(h)})`);
    }
    if (bad.length >= 10) break;
  }
  t.comment(`kinds: ${JSON.stringify(kinds)}; ${sent} sent, ${replies} replies, ${closes} closes (empty messages, floods), server stats ${JSON.stringify(s.stats)}`);
  t.same(bad, [], 'every command line answered with one JSON object of one key, at most max_output_len bytes (an empty message ends the connection, as in DPDK)');
  // Still serving: a fresh client gets its greeting and a valid answer.
  const fresh = conn(t, s.path);
  t.match(await fresh.recv(), /"pid"/, 'a fresh client is greeted');
  t.match(await fresh.ask('/ethdev/list'), { '/ethdev/list': [0] }, 'and /ethdev/list answered');
  t.match(await c.ask('/info'), { '/info': { pid: PID } }, 'the fuzzing connection too');
  fresh.close();
  c.close();
  const back = await until(() => s.clientCount === 0 && ownFdCount() === idleFds, 10_000);
  t.ok(back, `fd count back to idle (${ownFdCount()} now, ${idleFds} idle; ${s.clientCount} clients)`);
});
