/**
 * net_virtio_emu: the emulated virtio-net device as a port of an ordinary app. `tspmd l2fwd` in a
 * child process serves the device on a unix socket (`--vdev net_virtio_emu0,socket=S`) and forwards
 * between it and a loopback net_ring port; the guest is tspmd's own net_virtio in this process
 * (`-a vfio-user:S`, --no-huge memfd memory, virtio-client.ts):
 *
 *   this process: net_virtio --vfio-user--> [l2fwd: net_virtio_emu0 (port 0) <-> net_ring0 (port 1, loopback)]
 *
 * A frame the guest sends is port 0's RX, goes out of the ring (port 1 TX), comes back as port 1's
 * RX and reaches the guest through port 0's TX: both directions of the port, byte for byte
 * (--no-mac-updating). Checked: the frames, every count in l2fwd's JSON summary, no mbuf left in
 * either process, the socket file gone after exit, and bad arguments exit 2 naming the key.
 *
 * Busy-polling threads: l2fwd's worker lcore (this process polls with 1 ms sleeps when idle). No root.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, CHILD_ENV, runCli, removeRunDir, killChildren } from '../cli.js';
import { tempDir } from '../vfio-user/helpers.js';
import { formatMac } from '../../lib/net/mac.js';
import { openClient, pmdSend, pmdReceive, udpFrame, sameFrames, stopAndCheckPool, sleep } from './virtio-client.js';

const PEER_MAC = [0x02, 0x74, 0x73, 0x70, 0x77, 0x03];
const MAC = '02:74:73:70:76:09';
const children = new Set<ChildProcess>();
t.teardown(() => killChildren(children));

/** A running `tspmd l2fwd ... --json`: its output so far and its exit. */
interface Run { proc: ChildProcess; stdout(): string; stderr(): string; exit: Promise<number | null> }

function l2fwd(args: string[]): Run {
  const proc = spawn(process.execPath, [...process.execArgv, CLI, 'l2fwd', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  children.add(proc);
  let out = '', err = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => { children.delete(proc); resolve(code); }));
  return { proc, stdout: () => out, stderr: () => err, exit };
}

/** l2fwd's --json summary (the parts checked here), or null when stdout is not one. */
interface Summary {
  ports: Array<{ name: string; ipackets: number; opackets: number; ibytes: number; obytes: number; dropped: number; imissed: number; ierrors: number; oerrors: number }>;
  mbufs_in_use_after_stop: number;
}
function parseSummary(text: string): Summary | null {
  try { return JSON.parse(text) as Summary; } catch { return null; }
}

/** Wait until cond() holds (or timeout); whether it did. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

t.test('l2fwd between net_virtio_emu and a ring: a guest\'s frames out and back, counts, mbufs, socket removed', { timeout: 120_000 }, async (t) => {
  const sock = join(tempDir(t), 'vn.sock');
  const prefix = `tspvep${process.pid}`;
  const args = ['--no-huge', '-l', '0-1', '--file-prefix', prefix, '--no-telemetry', '--vdev', `net_virtio_emu0,socket=${sock},mac=${MAC}`, '--vdev', 'net_ring0',
    '--', '-p', '0x3', '--no-mac-updating', '--json'];
  const app = l2fwd(args);
  t.teardown(() => removeRunDir(['--file-prefix', prefix]));
  let code: number | null | undefined;
  void app.exit.then((c) => { code = c; });
  t.ok(await until(() => /lcore 1: RX port 1/.test(app.stderr()) || code !== undefined, 60_000), 'l2fwd runs with both ports on lcore 1', { stderr: app.stderr() });
  t.ok(existsSync(sock), `the device is served on ${sock}`);
  t.match(app.stderr(), /port 0 \(net_virtio_emu0, net_virtio_emu\): MAC 02:74:73:70:76:09/, 'port 0 is the net_virtio_emu port with the device\'s MAC');

  const c = await openClient(t, sock, 1);
  t.equal(formatMac(c.port.macAddr()), MAC, 'the guest reads the mac= of the --vdev');
  t.ok(c.port.link().up, 'the guest sees the link up');
  const count = 300;
  const out = Array.from({ length: count }, (_, i) => udpFrame(c.port.macAddr(), PEER_MAC, 0xa5, 1, i));
  await pmdSend(c, out);
  const back = (await pmdReceive(c, count))[0];
  await sleep(100);
  back.push(...(await pmdReceive(c, 1, 100))[0]); // nothing more may come
  sameFrames(t, back, out, true, 'guest TX -> net_virtio_emu0 RX -> net_ring0 -> net_virtio_emu0 TX -> guest RX');
  stopAndCheckPool(t, c, 'the guest');
  await c.eal.close();

  app.proc.kill('SIGINT');
  const k = setTimeout(() => app.proc.kill('SIGKILL'), 20_000);
  const exitCode = await app.exit;
  clearTimeout(k);
  t.equal(exitCode, 0, 'l2fwd exits 0 on SIGINT', { stderr: app.stderr().slice(-3000) });
  const summary = parseSummary(app.stdout());
  t.ok(summary, 'l2fwd printed its JSON summary', { stdout: app.stdout() });
  if (summary) {
    const [emu, ring] = summary.ports;
    const bytes = out.reduce((n, f) => n + f.length, 0);
    t.same([emu.name, emu.ipackets, emu.ibytes, emu.opackets, emu.obytes], ['net_virtio_emu0', count, bytes, count, bytes], 'port 0 (the device) received and sent every frame (its counters are the device\'s)');
    t.same([ring.ipackets, ring.opackets], [count, count], 'port 1 (the ring) sent and received them');
    t.same([emu.dropped, ring.dropped, emu.imissed, emu.ierrors, emu.oerrors], [0, 0, 0, 0, 0], 'no drops or errors');
    t.equal(summary.mbufs_in_use_after_stop, 0, 'every mbuf back in l2fwd\'s pool after stop');
  }
  t.notOk(existsSync(sock), 'the socket file is removed at exit');
});

t.test('bad net_virtio_emu arguments exit 2 with a message naming the key', { timeout: 120_000 }, async (t) => {
  const sock = join(tempDir(t), 'bad.sock');
  const run = (vdev: string): Promise<{ code: number; stderr: string }> =>
    runCli(['l2fwd', '--no-huge', '-l', '0-1', '--file-prefix', `tspvepb${process.pid}`, '--no-telemetry', '--vdev', vdev, '--vdev', 'net_ring0', '--', '-p', '0x3', '--duration', '1']);
  const cases: Array<[string, RegExp, string]> = [
    ['net_virtio_emu0', /socket=PATH is required/, 'no socket='],
    [`net_virtio_emu0,socket=${sock},backend=1`, /net_virtio_emu has no key "backend"/, 'backend= (the port is its own back end)'],
    [`net_virtio_emu0,socket=${sock},queues=0`, /queues=0 must be/, 'queues=0'],
    [`net_virtio_emu0,socket=${sock},mac=01:00:00:00:00:01`, /mac=01:00:00:00:00:01/, 'a multicast mac='],
  ];
  for (const [vdev, msg, what] of cases) {
    const r = await run(vdev);
    t.equal(r.code, 2, `${what}: exit code 2`, { stderr: r.stderr });
    t.match(r.stderr, msg, `${what}: the message names it`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
  }
  const r = await run(`net_virtio_emu0,socket=${join(sock, 'no-such-dir', 'x.sock')}`);
  t.equal(r.code, 1, 'a socket path that cannot be bound: exit code 1', { stderr: r.stderr });
  t.match(r.stderr, /net_virtio_emu0: cannot serve it on .*x\.sock/, 'the message names the port and the path');
  t.notOk(existsSync(sock), 'no socket file left behind');
});
