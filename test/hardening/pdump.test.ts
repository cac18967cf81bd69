/**
 * Issue 22, finding 5 and the pdump part of finding 2: `tspmd pdump` against a capture region and
 * a telemetry socket it cannot trust, and an app whose pdump dies.
 *  - A record the app side wrote wrong (a captured length of 0xFFFFFFF0 made the reader's
 *    `(cap+3)&~3` wrap and the reader spin forever, deaf to --duration and SIGINT) ends the
 *    capture at once with one clear line; so does every other record that does not fit the snap
 *    length, the ring or the published head, and a region that is not a sealed memfd of the size.
 *  - A pdump killed with SIGKILL leaves its capture masks set: the app's main thread notices the
 *    dead reader (the owner pid in the region) and switches the capture off within a few seconds,
 *    and forwards on.
 *  - pdump follows only a telemetry socket served by the process the greeting names (SO_PEERCRED
 *    pid) and run by the caller's uid or root: a forged socket of another process (`tspmd pdump
 *    --file-prefix`), or of another user (root only: the forger runs as nobody; the check pdump
 *    makes, called here), is refused with a clear error; the app's own socket is followed.
 * One l2fwd on two net_null ports serves the end-to-end cases (three pdump runs); the other record
 * cases run against this process's own capture region. The forgers are tiny python3 servers.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, chmodSync, chownSync, constants, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import { runtimeDir, TELEMETRY_SOCKET } from '../../lib/telemetry/server.js';
import { capture, mapCaptureRegion } from '../../lib/pdump/capture.js';
import { pdumpInit } from '../../lib/pdump/pdump.js';
import {
  CAPTURE_MAX_PORTS, CAPTURE_REGION, MASK_BASE, REC_HEADER, RING_BASE, RING_SLOT, S_HEAD, S_TAIL, SLOT_WORDS, W_OWNER, WRAP,
  captureSlot, type CaptureViews,
} from '../../lib/pdump/region.js';
import { readCaptureFile } from '../../lib/pcap/pcap.js';
import { socketPeerApp } from '../../app/pdump/pdump.js';
import { CLI, CHILD_ENV, killChildren, runCli } from '../cli.js';

const isRoot = process.getuid?.() === 0;
const PYTHON = ['/usr/bin/python3', '/usr/local/bin/python3'].find((p) => { try { accessSync(p, constants.X_OK); return true; } catch { return false; } });
const needPython = PYTHON ? false : 'needs /usr/bin/python3 to serve a forged telemetry socket';

const tag = `tsp${process.pid}hp`;
const dir = mkdtempSync(join(tmpdir(), `${tag}-`));
const children = new Set<ChildProcess>();
const prefixes: string[] = [];
const unmaps: Array<() => void> = [];
t.teardown(async () => {
  for (const u of unmaps) u();
  await killChildren(children);
  for (const p of prefixes) rmSync(runtimeDir(p), { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
});

/** Wait until cond() holds (true) or ms pass (false). */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/** A spawned child with its output collected. */
interface Child { child: ChildProcess; out: () => string; done: Promise<number> }

/** Spawn cmd (default: tspmd args under this test's loader) and collect its output. */
function start(args: string[], cmd: string[] = [process.execPath, ...process.execArgv, CLI]): Child {
  const child = spawn(cmd[0], [...cmd.slice(1), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  children.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const done = new Promise<number>((r) => child.on('exit', (c, sig) => r(c ?? (sig ? 128 + osConstants.signals[sig] : 1))));
  return { child, out: () => out, done };
}

/** The capture region of process pid, mapped into this process until the end of the file. */
function regionOf(pid: number): CaptureViews {
  const { views, va } = mapCaptureRegion(pid);
  unmaps.push(() => os.munmap(va, CAPTURE_REGION));
  return views;
}

/** Every queue-mask word of a region, summed (0: nothing is being captured). */
function masks(v: CaptureViews): number {
  let n = 0;
  for (let i = 0; i < CAPTURE_MAX_PORTS * 2; i++) n += Atomics.load(v.i32, MASK_BASE + i) !== 0 ? 1 : 0;
  return n;
}

/** Ask the telemetry socket of prefix for port 0's received packets. */
function ipackets(prefix: string): number {
  const path = join(runtimeDir(prefix), TELEMETRY_SOCKET);
  const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET, 0);
  try {
    os.connect(fd, os.sockaddrUn(path), path);
    const recv = (): string => {
      if (os.pollOne(fd, os.POLLIN, 10_000) === 0) throw new Error(`${path}: no answer within 10 s`);
      return Buffer.from(os.recvmsg(fd, 65536)!.data).toString('utf8');
    };
    recv(); // the greeting
    const q = Buffer.from('/ethdev/stats,0');
    os.send(fd, q, q.length, os.MSG_NOSIGNAL);
    return (JSON.parse(recv()) as { '/ethdev/stats': { ipackets: number } })['/ethdev/stats'].ipackets;
  } finally {
    os.close(fd);
  }
}

/** Forge a record into ring slot s of v as a producing lcore would: header at head, then head moved on by advance bytes. */
function forge(v: CaptureViews, s: number, rec: { cap: number; orig: number; nsec?: number; advance: number }): void {
  const w = SLOT_WORDS + s * 4, head = Atomics.load(v.i32, w + S_HEAD);
  const at = RING_BASE + s * RING_SLOT + (head >>> 0) % RING_SLOT;
  v.dv.setUint32(at, rec.cap >>> 0, true);
  if ((head >>> 0) % RING_SLOT + 16 <= RING_SLOT) {
    v.dv.setUint32(at + 4, rec.orig >>> 0, true);
    v.dv.setUint32(at + 8, Math.floor(Date.now() / 1000), true);
    v.dv.setUint32(at + 12, rec.nsec ?? 0, true);
  }
  Atomics.store(v.i32, w + S_HEAD, (head + rec.advance) | 0);
}

/** The app every end-to-end case captures: l2fwd on two net_null ports, telemetry on. */
let app: Child | null = null;
/** Set when pdump did not end on the forged record: the cases below would hang this very process. */
let readerHangs = false;
const appPrefix = `${tag}a`;
let appRegion: CaptureViews | null = null;

async function theApp(t: Test): Promise<{ pid: number; v: CaptureViews }> {
  if (app === null) {
    prefixes.push(appPrefix);
    app = start(['l2fwd', '--no-huge', '--file-prefix', appPrefix, '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '-T', '0', '--duration', '600']);
    const ok = await until(() => /lcore \d+: RX port/.test(app!.out()) || app!.child.exitCode !== null, 60_000);
    if (!ok || app.child.exitCode !== null) throw new Error(`l2fwd did not start:\n${app.out()}`);
    appRegion = regionOf(app.child.pid!);
  }
  t.equal(app.child.exitCode, null, 'the app runs');
  return { pid: app.child.pid!, v: appRegion! };
}

t.test('finding 5: a SIGKILLed pdump leaves no capture on: the app switches it off within a few seconds and forwards on', { timeout: 120_000 }, async (t) => {
  const { v } = await theApp(t);
  const pd = start(['pdump', '--file-prefix', appPrefix, '--', '--port', '0', '--out', join(dir, 'killed.pcap')]);
  t.ok(await until(() => /capturing port 0/.test(pd.out()) || pd.child.exitCode !== null, 60_000), `pdump attached, found by --file-prefix (the app's own socket passes the peer check) ${pd.out()}`);
  t.equal(Atomics.load(v.i32, W_OWNER), pd.child.pid, 'the region names the pdump as its reader');
  t.ok(masks(v) > 0, 'capture masks set');
  pd.child.kill('SIGKILL');
  await pd.done;
  const t0 = Date.now();
  const cleared = await until(() => masks(v) === 0 && Atomics.load(v.i32, W_OWNER) === 0, 10_000);
  const ms = Date.now() - t0;
  t.ok(cleared, `the app cleared the masks and the owner (${cleared ? `${ms} ms` : 'not within 10 s'} after the kill)`);
  t.ok(ms < 5000, 'within 5 s');
  const a = ipackets(appPrefix);
  await new Promise((r) => setTimeout(r, 1000));
  const b = ipackets(appPrefix);
  t.ok(b > a, `the app forwards on (port 0 ipackets ${a} -> ${b})`);
  t.match(app!.out(), /pdump pid \d+ ended without switching its capture off/, 'the app says so once');
});

t.test('finding 5: a forged record (captured length 0xFFFFFFF0) ends pdump with a clear error well within --duration', { timeout: 120_000 }, async (t) => {
  const { pid, v } = await theApp(t);
  // Queue 3 of port 0: l2fwd's lcores use queue 0 only, so this test is the only producer of its ring.
  const s = captureSlot(0, 3);
  let said = '';
  const t0 = Date.now();
  // By --pid: runCli removes the run directory of a --file-prefix whose command a signal ended.
  const running = runCli(['pdump', '--', '--pid', String(pid), '--port', '0', '--queue', '3', '--dir', 'rx', '--out', join(dir, 'forged.pcap'), '--duration', '30'],
    { timeoutMs: 60_000, onSpawn: (c) => c.stdout!.on('data', (d: Buffer) => { said += d.toString(); }) });
  // pdump says "capturing" once its masks are set: a record forged earlier would be skipped as an old one.
  t.ok(await until(() => /capturing port 0 rx queue 3/.test(said), 60_000), 'pdump attached to queue 3');
  t.ok((Atomics.load(v.i32, MASK_BASE) & (1 << 3)) !== 0, 'port 0 rx queue 3 is being captured');
  const attached = Date.now();
  forge(v, s, { cap: 0xfffffff0, orig: 64, advance: REC_HEADER + 64 });
  const r = await running;
  const after = Date.now() - attached;
  readerHangs = r.code === 137;
  t.equal(r.code, 1, `pdump exits 1 (${r.stderr.trim()})`);
  t.match(r.stderr, new RegExp(`^tspmd pdump: process ${pid}'s capture ring of port 0 rx queue 3 has a bad record at byte \\d+: captured length 4294967280 is over 65535, the largest snap length; capture stopped \\(the region is corrupt or was written by something else\\)\\n$`), 'one clear line');
  t.ok(after < 20_000, `it ended ${after} ms after the forged record (--duration 30; ${Date.now() - t0} ms in all)`);
  t.equal(masks(v), 0, 'its masks are cleared');
  t.equal(Atomics.load(v.i32, W_OWNER), 0, 'the region is free again');
  t.equal(app!.child.exitCode, null, 'the app runs on');
});

/** One bad region state, set up on ring slot s of this process's region (tail = head = where the capture starts). */
interface BadCase {
  name: string;
  /** where head and tail stand before the capture starts (ring byte offset) */
  at?: number;
  forge(v: CaptureViews, s: number): void;
  error: RegExp;
}

const CASES: BadCase[] = [
  { name: 'captured length 0xFFFFFFF0', forge: (v, s) => forge(v, s, { cap: 0xfffffff0, orig: 64, advance: 80 }), error: /captured length 4294967280 is over 65535, the largest snap length/ },
  { name: 'captured length over the largest snap length', forge: (v, s) => forge(v, s, { cap: 65536, orig: 65536, advance: 16 + 65536 }), error: /captured length 65536 is over 65535, the largest snap length/ },
  { name: 'captured length over the original length', forge: (v, s) => forge(v, s, { cap: 64, orig: 10, advance: 80 }), error: /captured length 64 is over the original length 10/ },
  { name: 'nanoseconds of 10^9 or more', forge: (v, s) => forge(v, s, { cap: 64, orig: 64, nsec: 1e9, advance: 80 }), error: /nanoseconds 1000000000 are not below 10\^9/ },
  { name: 'a record past the published head', forge: (v, s) => forge(v, s, { cap: 64, orig: 64, advance: 32 }), error: /the record \(80 bytes\) runs past the published head \(32 bytes on\)/ },
  { name: 'a record past the end of the ring', at: RING_SLOT - 32, forge: (v, s) => forge(v, s, { cap: 64, orig: 64, advance: 80 }), error: /the record \(80 bytes\) runs past the end of the ring \(32 bytes left\)/ },
  { name: 'a wrap marker past the published head', at: RING_SLOT - 64, forge: (v, s) => forge(v, s, { cap: WRAP, orig: 0, advance: 32 }), error: /the wrap marker skips 64 bytes, past the published head \(32 bytes on\)/ },
  { name: 'a head more than a ring ahead', forge: (v, s) => forge(v, s, { cap: 64, orig: 64, advance: RING_SLOT + 80 }), error: /its head is 2097232 bytes ahead of the tail, more than the ring's 2097152/ },
];

t.test('finding 5: every record that does not fit the snap length, the ring or the head ends the capture with one clear error', { timeout: 60_000 }, async (t) => {
  if (readerHangs) {
    t.fail('not run: pdump hung on a bad record (the test above), so a capture in this process would hang it');
    return;
  }
  t.equal(pdumpInit(), true, 'this process has a capture region');
  const v = regionOf(process.pid);
  const fds0 = readdirSync('/proc/self/fd').length;
  for (const [i, c] of CASES.entries()) {
    const q = 4 + i % 12, s = captureSlot(0, q);
    const w = SLOT_WORDS + s * 4;
    const at = c.at ?? (Atomics.load(v.i32, w + S_HEAD) >>> 0) % RING_SLOT;
    Atomics.store(v.i32, w + S_HEAD, at);
    Atomics.store(v.i32, w + S_TAIL, at);
    let attached: () => void = () => {};
    const ready = new Promise<void>((r) => { attached = r; });
    const out = join(dir, `case${i}.pcap`);
    const t0 = Date.now();
    const running = capture({ port: 0, queue: q, dir: 'rx', out, durationS: 20, snaplen: 128 }, process.pid, new Promise(() => {}), () => attached());
    await ready;
    c.forge(v, s);
    const err = await running.then(() => null, (e: unknown) => e as Error);
    t.match(err?.message ?? 'no error', new RegExp(`^process ${process.pid}'s capture ring of port 0 rx queue ${q} has a bad record at byte \\d+: ${c.error.source}; capture stopped`), `${c.name}: ${err?.message}`);
    t.ok(Date.now() - t0 < 10_000, `${c.name}: ended at once (${Date.now() - t0} ms, --duration 20)`);
    t.equal(masks(v), 0, `${c.name}: masks cleared`);
    t.equal(Atomics.load(v.i32, W_OWNER), 0, `${c.name}: region released`);
    t.equal(readCaptureFile(out).count, 0, `${c.name}: the file is a valid, empty capture`);
  }
  t.equal(readdirSync('/proc/self/fd').length, fds0, 'no fd left open');
});

t.test('finding 5: a capture region that is not a sealed memfd of the full size is refused before it is mapped', { skip: needPython, timeout: 60_000 }, async (t) => {
  // A process with a memfd of the region's name but 4 KiB long: reading it whole would be a SIGBUS.
  const py = `import os, sys, time\nfd = os.memfd_create('tspmd-pdump', 0)\nos.ftruncate(fd, 4096)\nprint('ready', flush=True)\ntime.sleep(60)\n`;
  const f = start(['-c', py], [PYTHON!]);
  t.ok(await until(() => f.out().includes('ready'), 10_000), 'the small memfd exists');
  t.throws(() => mapCaptureRegion(f.child.pid!), { message: new RegExp(`^process ${f.child.pid}: its capture region (is not sealed against shrinking|is 4096 bytes, not \\d+)`) });
  f.child.kill('SIGKILL');
});

/** A python3 server on path greeting every client as the DPDK telemetry v2 socket of process pid would. */
function forger(path: string, pid: number, wrap: string[] = []): Child {
  const py = [
    'import socket, sys, json',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)',
    `s.bind(${JSON.stringify(path)})`,
    's.listen(8)',
    "print('ready', flush=True)",
    'while True:',
    '    c, _ = s.accept()',
    `    c.send(json.dumps({"version": "DPDK 22.11.0", "pid": ${pid}, "max_output_len": 16384}).encode())`,
    '    c.close()',
  ].join('\n');
  return start(['-c', py], [...wrap, PYTHON!]);
}

t.test('pdump peer credentials: a telemetry socket served by another process than the one it names is refused', { skip: needPython, timeout: 120_000 }, async (t) => {
  const { pid, v } = await theApp(t);
  const prefix = `${tag}f`;
  prefixes.push(prefix);
  const rdir = runtimeDir(prefix);
  mkdirSync(rdir, { recursive: true, mode: 0o700 });
  const f = forger(join(rdir, TELEMETRY_SOCKET), pid);
  t.ok(await until(() => f.out().includes('ready'), 10_000), `a forger (pid ${f.child.pid}) greets as pid ${pid}`);
  const out = join(dir, 'follow.pcap');
  const r = await runCli(['pdump', '--file-prefix', prefix, '--', '--port', '0', '--out', out, '--duration', '1']);
  t.equal(r.code, 1, 'pdump refuses');
  t.match(r.stderr, new RegExp(`^tspmd pdump: ${rdir}/${TELEMETRY_SOCKET}: the greeting names pid ${pid} but the socket is served by pid ${f.child.pid}; refusing to capture a process other than the one answering\\n$`), r.stderr);
  t.notOk(existsSync(out), 'the app named in the greeting was not captured (no file)');
  t.equal(Atomics.load(v.i32, W_OWNER), 0, 'the app\'s region is free');
  f.child.kill('SIGKILL');
});

t.test('pdump peer credentials: a telemetry socket served by another user is refused', { skip: !isRoot ? 'needs root to serve a socket as another user (setpriv --reuid)' : needPython, timeout: 60_000 }, async (t) => {
  // The check pdump makes on its --file-prefix socket (socketPeerApp), here on a socket in a
  // directory another user holds, as if that user had taken the run directory over.
  const { pid, v } = await theApp(t);
  const other = join(dir, 'other');
  mkdirSync(other, { mode: 0o700 });
  chmodSync(dir, 0o711);
  chownSync(other, 65534, 65534);
  const path = join(other, TELEMETRY_SOCKET);
  const f = forger(path, pid, ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--']);
  t.ok(await until(() => f.out().includes('ready') || f.child.exitCode !== null, 10_000) && f.child.exitCode === null, `a forger as nobody (pid ${f.child.pid}) greets as pid ${pid}: ${f.out()}`);
  t.throws(() => socketPeerApp(path, `${tag}u`), { message: new RegExp(`^${path} is served by uid 65534 \\(pid ${f.child.pid}\\), not by you \\(uid 0\\): refusing to follow it; .*give the app's --pid$`) });
  t.equal(Atomics.load(v.i32, W_OWNER), 0, 'the app named in the greeting was not attached to');
  f.child.kill('SIGKILL');
});

t.test('pdump peer credentials: the app\'s own socket is followed (the first test attached by --file-prefix), and the app ends normally', { timeout: 60_000 }, async (t) => {
  const { pid } = await theApp(t);
  t.equal(socketPeerApp(join(runtimeDir(appPrefix), TELEMETRY_SOCKET), appPrefix), pid, 'the app\'s socket names the app');
  app!.child.kill('SIGINT');
  t.equal(await app!.done, 0, 'l2fwd ends normally');
});
