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
 * (--no-mac-updating). With one worker (-l 0-1) one lcore polls both ports; with two (-l 0@0,1@1,2@0)
 * lcore 1 polls port 0 and lcore 2 port 1, so port 0's TX comes from lcore 2 through the port's
 * ring to lcore 1, which serves the device. Checked: the frames, every count in l2fwd's JSON
 * summary, no mbuf left in either process, the socket file gone after exit, and bad arguments exit
 * 2 naming the key. In this process: RX opened on a second lcore is refused and so is a second
 * foreign TX lcore, a TX queue opened before RX goes through the ring (drained by rxBurst, freed at
 * stop when nothing drained it, counted as rx_nobuf_drops) and turns direct once RX opens in its
 * thread, stop detaches the queues opened in its own thread, link down without a driver, the
 * device's counters as xstats, the device in the emudev registry while the port lives, and
 * `device=NAME`: the port of a device allocated there by others.
 *
 * As root, the same with two workers and a net_tap in a network namespace instead of the ring: the
 * tap's kernel answers the guest's ARP request (the QEMU lab's check, test/lab/virtio-net-guest.test.ts, with
 * tspmd's PMD as the guest).
 *
 * Busy-polling threads: l2fwd's worker lcores, one or two (this process polls with 1 ms sleeps when idle).
 */
import t, { type Test as Tap } from 'tap';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, CHILD_ENV, runCli, removeRunDir, killChildren } from '../cli.js';
import { tempDir } from '../vfio-user/helpers.js';
import { formatMac } from '../../lib/net/mac.js';
import { parseIpv4 } from '../../lib/net/packet.js';
import { uniquePrefix } from '../../lib/netns/topology.js';
import { undoAlways } from '../always.js';
import { listPorts, openRxQueue, openTxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { ATTACHES, OWNER, PRODUCER, type VirtioEmuQueueData } from '../../drivers/net/virtio_emu/virtio_emu_data.js';
import { Ring } from '../../lib/ring/ring.js';
import { testEal } from '../emu/virtio-net-helpers.js';
import { emudevAllocate, emudevFind, emudevRelease } from '../../lib/emudev/registry.js';
import { VirtioNetDevice } from '../../drivers/emu/virtio-net/device.js';
import type { EthDev } from '../../lib/ethdev/ethdev.js';
import '../../drivers/index.js';
import { parseVdev } from '../../drivers/bus/vdev/vdev.js';
import { UsageError } from '../../src/options.js';
import { parseDevargs } from '../../lib/kvargs/kvargs.js';
import { VirtioEmuPort, VIRTIO_EMU_ARGS } from '../../drivers/net/virtio_emu/virtio_emu.js';
import { virtioNetConfig } from '../../drivers/emu/virtio-net/layout.js';
import { openClient, pmdSend, pmdReceive, udpFrame, sameFrames, stopAndCheckPool, sleep } from './virtio-client.js';

const PEER_MAC = [0x02, 0x74, 0x73, 0x70, 0x77, 0x03];
const MAC = '02:74:73:70:76:09';
const children = new Set<ChildProcess>();
t.teardown(() => killChildren(children));

/** A running `tspmd l2fwd ... --json`: its output so far and its exit. */
interface Run { proc: ChildProcess; stdout(): string; stderr(): string; exit: Promise<number | null> }

/** Start `tspmd l2fwd ...args`; wrap: a command that runs node for it in place (e.g. ['ip', 'netns', 'exec', NS]). */
function l2fwd(args: string[], wrap: string[] = []): Run {
  const cmd = [...wrap, process.execPath, ...process.execArgv, CLI, 'l2fwd', ...args];
  const proc = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
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

/** SIGINT l2fwd and wait for its exit code (SIGKILL after 20 s). */
async function stopL2fwd(app: Run): Promise<number | null> {
  app.proc.kill('SIGINT');
  const k = setTimeout(() => app.proc.kill('SIGKILL'), 20_000);
  try { return await app.exit; } finally { clearTimeout(k); }
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

/**
 * l2fwd between net_virtio_emu0 and a loopback net_ring0 with workers worker lcores (1: both ports
 * on lcore 1; 2: port 1 on lcore 2, whose TX to port 0 goes through the port's ring), the guest in
 * this process: frames out and back, counts, mbufs, socket removed.
 */
async function l2fwdRing(t: Tap, workers: 1 | 2): Promise<void> {
  const sock = join(tempDir(t), 'vn.sock');
  const prefix = `tspvep${workers}${process.pid}`;
  // Two workers on a two-CPU machine: lcore 2 shares CPU 0 with the (idle) main lcore.
  const args = ['--no-huge', '-l', workers === 1 ? '0-1' : '0@0,1@1,2@0', '--file-prefix', prefix, '--no-telemetry', '--vdev', `net_virtio_emu0,socket=${sock},mac=${MAC}`, '--vdev', 'net_ring0',
    '--', '-p', '0x3', '--no-mac-updating', '--json'];
  const app = l2fwd(args);
  t.teardown(() => removeRunDir(['--file-prefix', prefix]));
  let code: number | null | undefined;
  void app.exit.then((c) => { code = c; });
  t.ok(await until(() => new RegExp(`lcore ${workers}: RX port 1`).test(app.stderr()) || code !== undefined, 60_000), `l2fwd runs with port 1 on lcore ${workers}`, { stderr: app.stderr() });
  t.match(app.stderr(), /lcore 1: RX port 0 -> TX port 1/, 'port 0 (the device) on lcore 1');
  t.match(app.stderr(), new RegExp(`lcore ${workers}: RX port 1 -> TX port 0`), `port 0's TX from lcore ${workers}${workers === 2 ? ' (foreign: through the ring)' : ''}`);
  t.ok(existsSync(sock), `the device is served on ${sock}`);
  t.match(app.stderr(), /port 0 \(net_virtio_emu0, net_virtio_emu\): MAC 02:74:73:70:76:09/, 'port 0 is the net_virtio_emu port with the device\'s MAC');

  const c = await openClient(t, sock, 1);
  t.equal(formatMac(c.port.macAddr()), MAC, 'the guest reads the mac= of the --vdev');
  t.ok(c.port.link().up, 'the guest sees the link up');
  const count = 300;
  const out = Array.from({ length: count }, (_, i) => udpFrame(c.port.macAddr(), PEER_MAC, 0xa5, 1, i));
  // In batches well below the guest's 256 RX buffers: frames come back while it sends, and
  // l2fwd drops what finds no buffer (as DPDK's net_vhost does).
  const back: Uint8Array[] = [];
  for (let i = 0; i < count; i += 50) {
    await pmdSend(c, out.slice(i, i + 50));
    back.push(...(await pmdReceive(c, Math.min(50, count - i)))[0]);
  }
  await sleep(100);
  back.push(...(await pmdReceive(c, 1, 100))[0]); // nothing more may come
  sameFrames(t, back, out, true, 'guest TX -> net_virtio_emu0 RX -> net_ring0 -> net_virtio_emu0 TX -> guest RX');
  stopAndCheckPool(t, c, 'the guest');
  await c.eal.close();

  const exitCode = await stopL2fwd(app);
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
}

t.test('l2fwd between net_virtio_emu and a ring, one worker: a guest\'s frames out and back, counts, mbufs, socket removed', { timeout: 120_000 }, (t) => l2fwdRing(t, 1));

t.test('l2fwd between net_virtio_emu and a ring, two workers (-l 0@0,1@1,2@0: port 0\'s TX from lcore 2 through the ring): frames out and back, counts, mbufs, socket removed', { timeout: 120_000 }, (t) => l2fwdRing(t, 2));

t.test('bad net_virtio_emu arguments: usage errors naming the key (exit 2), an unusable socket path names the port', { timeout: 60_000 }, async (t) => {
  const sock = join(tempDir(t), 'bad.sock');
  const cases: Array<[string, RegExp, string]> = [
    [`net_virtio_emu0,socket=${sock},backend=1`, /net_virtio_emu has no key "backend"/, 'backend= (the port is its own back end)'],
    [`net_virtio_emu0,socket=${sock},queues=0`, /queues=0 must be/, 'queues=0'],
    [`net_virtio_emu0,socket=${sock},mac=01:00:00:00:00:01`, /mac=01:00:00:00:00:01/, 'a multicast mac='],
  ];
  for (const [vdev, msg, what] of cases) {
    let err: unknown = null;
    try { parseVdev(vdev); } catch (e) { err = e; }
    t.ok(err instanceof UsageError, `${what}: a usage error`);
    t.match((err as Error).message, msg, `${what}: the message names it`);
  }
  // The same through the app: exit code 2, one line.
  const r = await runCli(['l2fwd', '--no-huge', '-l', '0-1', '--file-prefix', `tspvepb${process.pid}`, '--no-telemetry', '--vdev', cases[0][0], '--', '-p', '0x1']);
  t.equal(r.code, 2, 'tspmd l2fwd with backend= exits 2', { stderr: r.stderr });
  t.match(r.stderr, /^tspmd l2fwd: --vdev "net_virtio_emu0,socket=.*,backend=1": net_virtio_emu has no key "backend"; valid keys: socket/, 'with one line naming the key and the valid ones');
  // A path that cannot be bound: probe fails naming the port and the path, and leaves no port behind.
  const bad = join(sock, 'no-such-dir', 'x.sock');
  const { name, args } = parseDevargs(`net_virtio_emu7,socket=${bad}`, VIRTIO_EMU_ARGS, { option: '--vdev', driver: 'net_virtio_emu' });
  let err: unknown = null;
  try { VirtioEmuPort.create(name, virtioNetConfig(args, -1), { socket: args.socket! }); } catch (e) { err = e; }
  t.match((err as Error | null)?.message, new RegExp(`^net_virtio_emu7: cannot serve it on ${bad}: `), 'probe fails: the port and the path named');
  t.notOk(listPorts().some((p) => p.name === 'net_virtio_emu7'), 'no port left registered');
  t.notOk(existsSync(sock), 'no socket file left behind');
});

t.test('in one process: one RX lcore, one foreign TX lcore through the ring, stop detaches and frees the ring, link and counters', { timeout: 60_000 }, async (t) => {
  const eal = testEal('tspvepi');
  t.teardown(() => eal.close());
  const { name, args } = parseDevargs('net_virtio_emu5,socket=unused,queues=2', VIRTIO_EMU_ARGS, { option: '--vdev', driver: 'net_virtio_emu' });
  const port = VirtioEmuPort.create(name, virtioNetConfig(args, -1), null);
  t.teardown(() => port.shutdown());
  t.throws(() => port.configure({ rxQueues: 2, txQueues: 2 }), /2 RX queues requested, the driver supports 1\.\.1/, 'two queues refused (queues=2: one queue each way carries both pairs)');
  const pool = pktmbufPoolCreate(eal.memory, 'tspvepi_pool', 1023, { cacheSize: 0 });
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 256, pool);
  port.txQueueSetup(0, 256);
  port.start();
  t.notOk(port.link().up, 'link down while no driver has set DRIVER_OK');
  const data = port.data();
  const release = new Int32Array((data.rxq[0] as VirtioEmuQueueData).release);

  const ring = Ring.attach((data.txq[0] as VirtioEmuQueueData).txRing);
  t.equal(ring.size, 256, 'the foreign TX ring has the TX queue\'s 256 slots');

  // Another lcore polls RX (owns the engine), another sends as a foreign lcore: refused, naming the rule.
  Atomics.store(release, OWNER, 1);
  await t.rejects(openRxQueue(data, 0), /^net_virtio_emu5: another lcore polls its RX queue already: one lcore polls a net_virtio_emu port's RX/, 'RX opened on a second lcore is refused');
  Atomics.store(release, OWNER, 0);
  Atomics.store(release, PRODUCER, 1);
  await t.rejects(openTxQueue(data, 0), /^net_virtio_emu5: another lcore sends on its TX queue already: .* from its RX lcore and from one other lcore/, 'a second foreign TX lcore is refused');
  Atomics.store(release, PRODUCER, 0);

  // TX opened where no RX is: the ring's producer (as l2fwd's lcore 2 is).
  const m = new Uint32Array(1);
  const tx = await openTxQueue(data, 0);
  t.equal(Atomics.load(release, PRODUCER), 1, 'TX opened before RX in this thread: the ring\'s producer');
  t.notOk(port.device.emu.plane.attached, 'and no engine attached for it');
  t.ok(pktmbufAllocBulk(pool, m, 1), 'an mbuf to send');
  t.equal(tx.txBurst(m, 1, 0), 1, 'foreign TX: taken (enqueued on the ring)');
  t.equal(ring.count(), 1, 'it waits in the ring');

  const rx = await openRxQueue(data, 0);
  t.equal(Atomics.load(release, ATTACHES), 1, 'RX and TX opened in one thread: one holder');
  t.same([Atomics.load(release, OWNER), Atomics.load(release, PRODUCER)], [1, 0], 'RX made this thread the owner and its TX queue direct');
  t.ok(port.device.emu.plane.attached, 'the engine is attached to the device\'s data plane');
  const burst = new Uint32Array(32);
  t.equal(rx.rxBurst(burst, 32), 0, 'RX: nothing while no guest drives the device');
  t.equal(ring.count(), 0, 'rxBurst drained the ring');
  t.equal(port.xstats().rx_nobuf_drops, 1, 'the guest had no buffers: freed, counted as rx_nobuf_drops');
  t.equal(pool.inUseCount(), 0, 'that mbuf is back in the pool');
  t.ok(pktmbufAllocBulk(pool, m, 1), 'an mbuf to send');
  t.equal(tx.txBurst(m, 1, 0), 0, 'direct TX now: nothing taken while the guest has no receive buffers (it stays the caller\'s)');
  pktmbufFreeBulk(m, 1, 0);
  // A foreign lcore's packet left in the ring at stop (the ring's only producer is idle by then).
  t.ok(pktmbufAllocBulk(pool, m, 1), 'an mbuf left in the ring');
  t.equal(ring.enqueueBurst(m, 1), 1, 'enqueued as a foreign lcore does');
  const t0 = Date.now();
  port.stop();
  t.ok(Date.now() - t0 < 1000, `stop returns at once when the queues were opened in its own thread (${Date.now() - t0} ms)`);
  t.same([Atomics.load(release, ATTACHES), Atomics.load(release, OWNER)], [0, 0], 'stop detached the engine');
  t.equal(ring.count(), 0, 'stop emptied the ring');
  t.notOk(port.device.emu.plane.attached, 'the device\'s data plane has no lcore attached');
  t.equal(pool.inUseCount(), 0, 'every mbuf back in the pool');
  const xs = port.xstats();
  t.same([xs.rx_good_packets, xs.tx_good_packets, xs.tx_packets, xs.rx_packets, xs.kicks, xs.rx_nobuf_drops], [0, 0, 0, 0, 0, 2], 'counters and the device\'s own as xstats (the ring\'s two mbufs as rx_nobuf_drops)');
  await port.shutdown();
  t.equal(port.status, 'closed', 'shutdown closes the port');
  t.notOk(emudevFind('net_virtio_emu5'), 'and releases its device from the emudev registry');

  // device=NAME: the port of a device the application allocated (and serves and releases) itself.
  const dev = new VirtioNetDevice(virtioNetConfig(args, -1), 'tspvepdev');
  const h = emudevAllocate('tspvepdev', dev);
  t.teardown(() => emudevRelease(h).catch(() => undefined));
  const probe = async (vdev: string): Promise<EthDev> => {
    const spec = parseVdev(vdev);
    return spec.driver.probe(spec.name, spec.args, eal);
  };
  const byName = await probe('net_virtio_emu6,device=tspvepdev');
  t.ok(byName instanceof VirtioEmuPort && byName.device === dev, 'device=tspvepdev: the port of that device');
  await (byName as VirtioEmuPort).shutdown();
  t.equal(emudevFind('tspvepdev'), h, 'closing that port leaves the device to its allocator');
  await t.rejects(probe('net_virtio_emu6'), /--vdev net_virtio_emu6: socket=PATH is required .*, or device=NAME/, 'neither socket= nor device=: a usage error naming both');
  await t.rejects(probe('net_virtio_emu6,device=tspnone'), /device=tspnone names no device in the emudev registry \(devices: .*tspvepdev/, 'device= of no device: the error lists the devices');
  await t.rejects(probe('net_virtio_emu6,device=tspvepdev,socket=/tmp/x'), /device=tspvepdev goes without socket=/, 'device= with socket=: refused');
  t.notOk(listPorts().some((p) => p.name === 'net_virtio_emu6'), 'no port left registered by the refused ones');
});

const tapSkip = process.getuid?.() !== 0 ? 'needs root: a network namespace and a TAP interface need CAP_NET_ADMIN'
  : !existsSync('/dev/net/tun') ? 'needs /dev/net/tun (the tun module) for net_tap' : false;

/** An ARP request (60 bytes) from mac/ip for target. */
function arpRequest(mac: number[], ip: number, target: number): Uint8Array {
  const f = new Uint8Array(60);
  const dv = new DataView(f.buffer);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  dv.setUint16(12, 0x0806);
  dv.setUint16(14, 1); // Ethernet
  dv.setUint16(16, 0x0800);
  f[18] = 6;
  f[19] = 4;
  dv.setUint16(20, 1); // request
  f.set(mac, 22);
  dv.setUint32(28, ip);
  dv.setUint32(38, target);
  return f;
}

t.test('l2fwd with two workers between net_virtio_emu and net_tap in a namespace: the kernel answers the guest\'s ARP request', { skip: tapSkip, timeout: 120_000 }, async (t) => {
  const ns = `${uniquePrefix()}n`, tap = `${ns.slice(0, 9)}t`;
  execFileSync('ip', ['netns', 'add', ns]);
  undoAlways(t, () => { try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }); } catch { /* gone */ } });
  // No IPv6 chatter on the tap: the guest sees only what it asked for. "default" covers the tap made later.
  for (const k of ['all', 'default']) {
    try { execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${k}.disable_ipv6=1`], { stdio: 'ignore' }); } catch { /* no IPv6 */ }
  }
  const sock = join(tempDir(t), 'vn.sock');
  const prefix = `tspvept${process.pid}`;
  // As users run it (-l 0-2 on a two-CPU machine): the tap's frames reach the device from lcore 2 through the port's ring.
  const app = l2fwd(['--no-huge', '-l', '0@0,1@1,2@0', '--file-prefix', prefix, '--no-telemetry', '--vdev', `net_virtio_emu0,socket=${sock},mac=${MAC}`, '--vdev', `net_tap0,iface=${tap}`,
    '--', '-p', '0x3', '--no-mac-updating', '-T', '0'], ['ip', 'netns', 'exec', ns]);
  t.teardown(() => removeRunDir(['--file-prefix', prefix]));
  let code: number | null | undefined;
  void app.exit.then((c) => { code = c; });
  t.ok(await until(() => /lcore 2: RX port 1 -> TX port 0/.test(app.stdout()) || code !== undefined, 60_000), 'l2fwd runs in the namespace between the device and the tap, the tap on lcore 2', { stderr: app.stderr() });
  const HOST = parseIpv4('10.97.0.1'), GUEST = parseIpv4('10.97.0.2');
  execFileSync('ip', ['-n', ns, 'addr', 'add', '10.97.0.1/24', 'dev', tap]);
  execFileSync('ip', ['-n', ns, 'link', 'set', tap, 'up']);
  const tapMac = execFileSync('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${tap}/address`], { encoding: 'utf8' }).trim();

  const c = await openClient(t, sock, 1);
  const mac = c.port.macAddr();
  let reply: Uint8Array | undefined;
  // Up to 30 s: l2fwd's two workers may take seconds to attach on a busy two-CPU machine (the
  // requests wait in the guest's transmitq meanwhile).
  for (let i = 0; i < 15 && !reply; i++) {
    await pmdSend(c, [arpRequest(mac, GUEST, HOST)]);
    reply = (await pmdReceive(c, 1, 2000))[0].find((f) => f.length >= 42 && f[12] === 0x08 && f[13] === 0x06 && f[21] === 2);
  }
  t.ok(reply, 'an ARP reply reached the guest', { stderr: app.stderr(), stdout: app.stdout() });
  if (reply) {
    const dv = new DataView(reply.buffer, reply.byteOffset);
    t.same([formatMac([...reply.subarray(0, 6)]), formatMac([...reply.subarray(22, 28)]), dv.getUint32(28), dv.getUint32(38)], [MAC, tapMac, HOST, GUEST],
      `from the tap's kernel: to the guest's MAC, ${tapMac} is at 10.97.0.1, for 10.97.0.2`);
  }
  const tapRx = Number(execFileSync('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${tap}/statistics/rx_packets`], { encoding: 'utf8' }).trim());
  t.ok(tapRx >= 1, `the tap received the guest's frames (${tapRx})`);
  stopAndCheckPool(t, c, 'the guest');
  await c.eal.close();
  t.equal(await stopL2fwd(app), 0, 'l2fwd exits 0 on SIGINT', { stderr: app.stderr().slice(-3000) });
  t.notOk(existsSync(sock), 'the socket file is removed at exit');
});
