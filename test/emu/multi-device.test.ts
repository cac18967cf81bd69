/**
 * Several devices in one `tspmd emu` process (one EAL), without root: a virtio-net device with a
 * net_ring loopback backend and a dmatest device, each on its own socket, served at once to two
 * clients of this process: tspmd's net_virtio over vfio-user on the first (frames out and back
 * byte-exact) and the dmatest client (app/emu/dmatest-demo.ts: copies and Adler-32 sums checked)
 * on the second. One client leaving (its device is reset) does not disturb the other, in both
 * orders; SIGINT ends the process with code 0, both devices' statistics, and no socket left.
 * Two virtio-net devices given one lcore share one forwarding loop: both carry frames to two PMD
 * clients at once, and one client leaving leaves the other working.
 * Also the command line: the multi-device form's mistakes are usage errors before the EAL starts.
 *
 *   this process: PMD (its EAL) --vfio-user--> [tspmd emu: virtio-net on lcore 1 -- net_ring0 loopback]
 *                 dmatest client (its EAL) --vfio-user--> [          dmatest on lcore 2             ]
 *   this process: PMD a --vfio-user--> [tspmd emu: virtio-net0 -- net_ring0 loopback ] one loop on lcore 1
 *                 PMD b --vfio-user--> [           virtio-net1 -- net_ring1 loopback ]
 */
import t, { type Test as Tap } from 'tap';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import '../../drivers/index.js';
import { spawnEmu, type EmuChild } from '../../lib/emudev/spawn.js';
import { DmatestSession, type DemoResult } from '../../app/emu/dmatest-demo.js';
import { emu as emuApp } from '../../app/emu/emu.js';
import { CLI, CHILD_ENV } from '../cli.js';
import { Eal } from '../../src/eal.js';
import { UsageError } from '../../src/options.js';
import { openClient, pmdSend, pmdReceive, udpFrame, sameFrames, stopAndCheckPool, sleep, type Client } from '../net/virtio-client.js';

const dir = mkdtempSync(join(tmpdir(), `tsp-emumulti-${process.pid}-`));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const vnSock = join(dir, 'vn.sock'), dmaSock = join(dir, 'dma.sock'), aSock = join(dir, 'a.sock'), bSock = join(dir, 'b.sock');
const prefix = `tspmulti${process.pid}`;

/** 150 frames out of the PMD must come back through the loopback backend, byte-exact and in order. */
async function loopback(t: Tap, c: Client, round: number, what: string): Promise<void> {
  const mine = c.port.macAddr();
  const frames = Array.from({ length: 150 }, (_, i) => udpFrame(mine, mine, 0xe0, round, i)); // < the 256 RX buffers: none dropped
  await pmdSend(c, frames);
  const got = (await pmdReceive(c, frames.length, 15_000))[0];
  sameFrames(t, got, frames, true, what);
}

/** Every job of a dmatest run verified. */
function allCopied(t: Tap, r: DemoResult, what: string): void {
  t.ok(r.ok === r.jobs && r.jobs > 0, `${what}: ${r.ok}/${r.jobs} copies and checksums verified (${r.ms} ms, ${r.interrupts} interrupts)`);
}

/** Close a PMD client as an application does: stop the port (every mbuf back), close its EAL (the connection goes). */
async function closeClient(t: Tap, c: Client, what: string): Promise<void> {
  stopAndCheckPool(t, c, what);
  await c.eal.close();
}

t.test('the multi-device command line: --device forms, names, and mistakes named before the EAL starts', async (t) => {
  const o = emuApp.parse(['--device', 'virtio-net,socket=/s/a,lcore=2,mac=02:00:00:00:00:01', '--device', 'dmatest,socket=/s/b', '--device', 'virtio-net,socket=/s/c,backend=1']);
  t.same(o.devices.map((d) => [d.kind, d.name, d.socket, d.lcore, { ...d.args }]), [
    ['virtio-net', 'virtio-net0', '/s/a', 2, { mac: '02:00:00:00:00:01' }],
    ['dmatest', 'dmatest', '/s/b', undefined, {}],
    ['virtio-net', 'virtio-net1', '/s/c', undefined, { backend: '1' }],
  ], 'kinds, names (numbered when a kind repeats), sockets, lcores; socket= and lcore= are not the device\'s arguments');
  t.same(emuApp.parse(['dmatest', '--socket', '/s/x', '--device', 'dmatest,socket=/s/y']).devices.map((d) => [d.name, d.socket]), [['dmatest0', '/s/x'], ['dmatest1', '/s/y']], 'the single form and --device together');
  t.throws(() => emuApp.parse(['--device', 'dmatest']), /--device "dmatest": socket=PATH is required/);
  t.throws(() => emuApp.parse(['--device', 'dmatest,socket=/s/a', '--device', 'virtio-net,socket=/s/a']), /devices 1 and 2 both serve on \/s\/a: give each device its own socket/);
  t.throws(() => emuApp.parse(['--device', 'dmatest,socket=/s/a,lcore=1', '--device', 'dmatest,socket=/s/b,lcore=1']),
    new UsageError('devices 1 (dmatest) and 2 (dmatest) both ask for lcore=1: dmatest runs its own engine loop on its lcore; give each its own worker lcore (-l) or leave lcore= out'));
  t.throws(() => emuApp.parse(['--device', 'virtio-net,socket=/s/a,lcore=1', '--device', 'dmatest,socket=/s/b,lcore=1']),
    new UsageError('devices 1 (virtio-net) and 2 (dmatest) both ask for lcore=1: a virtio-net and a dmatest device share no poll loop; give each its own worker lcore (-l) or leave lcore= out'),
    'dmatest cannot share a virtio-net device\'s lcore');
  t.same(emuApp.parse(['--device', 'virtio-net,socket=/s/a,lcore=1', '--device', 'virtio-net,socket=/s/b,lcore=1,backend=1']).devices.map((d) => [d.name, d.lcore]),
    [['virtio-net0', 1], ['virtio-net1', 1]], 'two virtio-net devices may ask for one lcore');
  t.throws(() => emuApp.parse(['--device', 'virtio-net,socket=/s/a,colour=red']), /--device "virtio-net,socket=\/s\/a,colour=red": virtio-net has no key "colour"; valid keys: socket \(.*\), lcore \(.*\), mac \(/);
  t.throws(() => emuApp.parse(['--device', 'nosuch,socket=/s/a']), /unknown device "nosuch"/);
  t.throws(() => emuApp.parse(['--socket', '/s/a']), /--socket PATH goes with a device named before it/);
  // each server holds a thread of libuv's pool while it serves: more devices than the pool has room for is refused
  const pool = process.env.UV_THREADPOOL_SIZE;
  t.teardown(() => { if (pool === undefined) delete process.env.UV_THREADPOOL_SIZE; else process.env.UV_THREADPOOL_SIZE = pool; });
  const four = ['a', 'b', 'c', 'd'].flatMap((n) => ['--device', `dmatest,socket=/s/${n}`]);
  delete process.env.UV_THREADPOOL_SIZE;
  t.throws(() => emuApp.parse(four), new UsageError('4 devices need 5 threads in libuv\'s pool (one per device\'s server, one for the rest) and it has 4 (the default): run with UV_THREADPOOL_SIZE=8 in the environment'));
  t.equal(emuApp.parse(four.slice(0, 6)).devices.length, 3, 'three devices fit the default pool of 4');
  process.env.UV_THREADPOOL_SIZE = '5';
  t.equal(emuApp.parse(four).devices.length, 4, 'four with UV_THREADPOOL_SIZE=5');

  // main() before it serves anything (this test runs first: the ring ports are ports 0 and 1 of
  // this process): too few worker lcores, and two virtio-net devices on one backend
  const cpu0 = os.getAffinity()[0];
  const one = new Eal({ noHuge: true, filePrefix: `${prefix}b`, lcores: [{ id: 0, cpu: cpu0 }, { id: 1, cpu: cpu0 }], mainLcore: 0 });
  t.teardown(() => one.close());
  const two = emuApp.parse(['--device', `dmatest,socket=${join(dir, 'a.sock')}`, '--device', `dmatest,socket=${join(dir, 'b.sock')}`]);
  await t.rejects(emuApp.main(one, two), new UsageError('2 devices need 2 worker lcores (one each, unless virtio-net devices share one with the same lcore=N), and this process has 1 (1): give them with -l, e.g. -l 0-2 or ID@CPU to put several on one CPU'),
    'too few worker lcores: a usage error that says how many and how to give them');
  const ring = new Eal({ noHuge: true, filePrefix: `${prefix}c`, vdevs: ['net_ring0', 'net_ring1'], lcores: [0, 1, 2].map((id) => ({ id, cpu: cpu0 })), mainLcore: 0 });
  t.teardown(() => ring.close());
  const shared = emuApp.parse(['--device', `virtio-net,socket=${join(dir, 'c.sock')}`, '--device', `virtio-net,socket=${join(dir, 'd.sock')}`]);
  await t.rejects(emuApp.main(ring, shared), /virtio-net1: backend=0 \(port net_ring0\) is the backend of another device already; give each virtio-net device its own port/,
    'two virtio-net devices on one backend port: a usage error before any device serves');
  t.same(readdirSync(dir), [], 'no socket file left by the refused runs');
  t.match(emuApp.help, /--device <device>,socket=PATH\[,lcore=N\]/, '--help shows the multi-device form');
  t.match(emuApp.help, /e\.g\. tspmd emu --vdev net_ring0 -l 0-2 -- --device virtio-net,socket=\S+ --device dmatest,socket=\S+/, 'with an example');
});

t.test('one tspmd emu, virtio-net and dmatest on two sockets: two clients at once, either one leaving leaves the other working, SIGINT ends it clean', async (t) => {
  const cpus = os.getAffinity();
  const cpu = (i: number): number => cpus[i % cpus.length];
  // main lcore 0 and one worker per device; on a 2-CPU machine the dmatest engine (idle: asleep) shares a CPU
  const lcores = `0@${cpu(0)},1@${cpu(1)},2@${cpu(0)}`;
  let emu: EmuChild | null = await spawnEmu(CLI, ['--file-prefix', prefix, '--vdev', 'net_ring0', '-l', lcores, '--',
    '--device', `virtio-net,socket=${vnSock},mac=02:74:73:70:6d:01`, '--device', `dmatest,socket=${dmaSock}`], { env: CHILD_ENV, timeoutMs: 60_000 });
  t.teardown(async () => { await emu?.stop(); });
  t.ok(existsSync(vnSock) && existsSync(dmaSock), 'both sockets exist once it serves');

  // 1. both clients connected, traffic on both at once
  let c1: Client | null = await openClient(t, vnSock, 1);
  t.teardown(async () => { if (c1) await c1.eal.close(); });
  let dma: DmatestSession | null = await DmatestSession.open(dmaSock, 256);
  t.teardown(async () => { await dma?.close(); });
  const [r1] = await Promise.all([dma.run(), loopback(t, c1, 1, 'net_virtio while dmatest runs: PMD TX -> virtio-net -> loopback -> PMD RX')]);
  allCopied(t, r1, 'dmatest while net_virtio sends and receives');

  // 2. the net_virtio client leaves (its device resets); the dmatest client, still connected, keeps working
  await closeClient(t, c1, 'first net_virtio client');
  c1 = null;
  allCopied(t, await dma.run(), 'dmatest on the same connection after the net_virtio client left');

  // 3. a new net_virtio client is served; then the dmatest client leaves and net_virtio keeps working
  let c2: Client | null = await openClient(t, vnSock, 1);
  t.teardown(async () => { if (c2) await c2.eal.close(); });
  await loopback(t, c2, 2, 'a second net_virtio client after the first left');
  await dma.close();
  dma = null;
  await loopback(t, c2, 3, 'net_virtio after the dmatest client left');
  dma = await DmatestSession.open(dmaSock, 64);
  allCopied(t, await dma.run(), 'a new dmatest client after the first left');
  await dma.close();
  dma = null;
  await closeClient(t, c2, 'second net_virtio client');
  c2 = null;

  // 4. SIGINT: both devices stop, exit 0, statistics of both, no socket left
  const child = emu;
  const exited = new Promise<number | null>((resolve) => child.proc.once('exit', (code) => resolve(code)));
  child.proc.kill('SIGINT');
  const code = await Promise.race([exited, sleep(20_000).then(() => 'timeout' as const)]);
  emu = null;
  if (code === 'timeout') await child.stop(0);
  t.equal(code, 0, 'SIGINT: exit code 0');
  const err = child.stderr();
  t.match(err, /^virtio-net: tx_packets 450, tx_bytes \d+, .*rx_packets 450, /m, 'virtio-net\'s statistics at exit: the 3 × 150 frames each way');
  t.match(err, /tspmd emu: SIGINT: virtio-net on .*vn\.sock stopped after 2 connection\(s\)/, 'the virtio-net server saw its 2 clients');
  t.match(err, /tspmd emu: SIGINT: dmatest on .*dma\.sock stopped after 2 connection\(s\)/, 'the dmatest server saw its 2 clients');
  t.same(readdirSync(dir), [], 'no socket file left');
});

t.test('two virtio-net devices on one lcore: one forwarding loop serves both clients at once, one client leaving leaves the other working', async (t) => {
  const cpus = os.getAffinity();
  const macA = '02:74:73:70:6d:0a', macB = '02:74:73:70:6d:0b';
  let emu: EmuChild | null = await spawnEmu(CLI, ['--file-prefix', `${prefix}s`, '--vdev', 'net_ring0', '--vdev', 'net_ring1', '-l', `0@${cpus[0]},1@${cpus[1 % cpus.length]}`, '--',
    '--device', `virtio-net,socket=${aSock},lcore=1,mac=${macA}`, '--device', `virtio-net,socket=${bSock},lcore=1,backend=1,mac=${macB}`], { env: CHILD_ENV, timeoutMs: 60_000 });
  t.teardown(async () => { await emu?.stop(); });
  t.ok(existsSync(aSock) && existsSync(bSock), 'both sockets exist once it serves, with one worker lcore');

  let a: Client | null = await openClient(t, aSock, 1);
  t.teardown(async () => { if (a) await a.eal.close(); });
  let b: Client | null = await openClient(t, bSock, 1);
  t.teardown(async () => { if (b) await b.eal.close(); });
  t.same([a.port.macAddr(), b.port.macAddr()].map((m) => m.map((x) => x.toString(16).padStart(2, '0')).join(':')), [macA, macB], 'each client reaches its own device');
  await Promise.all([loopback(t, a, 1, 'device a while b carries frames'), loopback(t, b, 1, 'device b while a carries frames')]);

  await closeClient(t, a, 'client a');
  a = null;
  await loopback(t, b, 2, 'device b after client a left');
  await closeClient(t, b, 'client b');
  b = null;

  const child = emu;
  const exited = new Promise<number | null>((resolve) => child.proc.once('exit', (code) => resolve(code)));
  child.proc.kill('SIGINT');
  const code = await Promise.race([exited, sleep(20_000).then(() => 'timeout' as const)]);
  emu = null;
  if (code === 'timeout') await child.stop(0);
  t.equal(code, 0, 'SIGINT: exit code 0');
  const err = child.stderr();
  t.match(err, /^virtio-net0: tx_packets 150, tx_bytes \d+, .*rx_packets 150, /m, 'device a\'s own statistics: its 150 frames each way');
  t.match(err, /^virtio-net1: tx_packets 300, tx_bytes \d+, .*rx_packets 300, /m, 'device b\'s own statistics: its 2 × 150 frames each way');
  const iters = [...err.matchAll(/^virtio-net\d: .*loop iterations (\d+)/gm)].map((m) => m[1]);
  t.ok(iters.length === 2 && iters[0] === iters[1], `one loop served both: the same iteration count in both devices' lines (${iters.join(', ')})`);
  t.same(readdirSync(dir), [], 'no socket file left');
});
