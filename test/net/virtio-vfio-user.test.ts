/**
 * End to end: tspmd's virtio PMD drives tspmd's emulated virtio-net device, two processes, real
 * bytes. The device (`tspmd emu virtio-net`) runs in a child process inside a tsp-prefixed network
 * namespace, its backend a net_tap interface there; a wire helper in the same namespace
 * (virtio-vfio-user-wire.ts, an AF_PACKET socket on that TAP) sees what the device sends and
 * injects what the device must receive. This process probes the device with an EAL
 * (`-a vfio-user:SOCKET`, --no-huge) and drives the port from its main thread:
 *
 *   this process: VirtioNetPort --vfio-user--> [ns: tspmd emu virtio-net -- net_tap <== TAP ==> wire helper]
 *
 * Checked: frames both ways byte-exact, MAC and link from the device configuration, the port's
 * counters against the device's exit statistics and the kernel's TAP counters, stop/start, a second
 * client after the first one left, two queue pairs, mrg=0 and mrg=1, every mbuf back in its pool.
 *
 * Threads busy-polling at once: the device's lcore only (this process polls from its main thread
 * with 1 ms sleeps when idle; the wire helper waits in poll(2)). Needs root (namespaces, TAP).
 */
import t, { type Test as Tap } from 'tap';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { siblingModule } from '../../src/lcore/module.js';
import { type PortStats } from '../../lib/ethdev/ethdev.js';
import { formatMac } from '../../lib/net/mac.js';
import { sh, uniquePrefix } from '../../lib/netns/topology.js';
import { startEmu, tempDir, type EmuProcess } from '../vfio-user/helpers.js';
import { CHILD_ENV } from '../cli.js';
import { openClient, startClient, pmdSend, pmdReceive, udpFrame, sameFrames, stopAndCheckPool, sleep, type Client } from './virtio-client.js';

const WIRE = fileURLToPath(siblingModule(import.meta.url, 'virtio-vfio-user-wire'));

function hasIp(): boolean {
  try { execFileSync('ip', ['-V'], { stdio: 'ignore' }); return true; } catch { return false; }
}
const skip = process.getuid?.() !== 0 ? 'needs root: a network namespace and a TAP interface need CAP_NET_ADMIN'
  : !existsSync('/dev/net/tun') ? 'needs /dev/net/tun (the tun module) for the net_tap backend'
    : !hasIp() ? 'needs iproute2 (ip) for the network namespace' : false;

const PREFIX = uniquePrefix();
const NS = `${PREFIX}n`;
const PEER_MAC = [0x02, 0x74, 0x73, 0x70, 0x77, 0x01];

// ---- the namespace: one per run, removed at teardown and at exit, whatever happened ----

let nsCreated = false;
function removeNamespace(): void {
  if (!nsCreated || !existsSync(`/run/netns/${NS}`)) return;
  try { sh(['ip', 'netns', 'del', NS]); } catch { /* gone */ }
}
function ensureNamespace(): void {
  if (nsCreated) return;
  nsCreated = true;
  process.once('exit', removeNamespace);
  sh(['ip', 'netns', 'add', NS]);
  const inNs = (cmd: string[]): string => sh(['ip', 'netns', 'exec', NS, ...cmd]);
  inNs(['ip', 'link', 'set', 'lo', 'up']);
  // No IPv6 chatter (router solicitations, MLD, DAD) on the TAP: the kernel sends nothing of its
  // own, so every counter is exactly our frames. "default" applies to interfaces created later.
  for (const k of ['all', 'default']) {
    try { inNs(['sysctl', '-qw', `net.ipv6.conf.${k}.disable_ipv6=1`]); } catch { /* no IPv6 */ }
  }
}
if (!skip) t.teardown(removeNamespace);

// ---- the wire helper ----

/** The wire helper process: an AF_PACKET socket on the TAP inside the namespace. */
class Wire {
  private readonly proc: ChildProcess;
  private readonly waiting: Array<(line: string) => void> = [];
  private err = '';
  private exited = false;

  private constructor(proc: ChildProcess) {
    this.proc = proc;
    proc.stderr!.on('data', (d: Buffer) => { this.err += d.toString(); });
    proc.on('exit', () => { this.exited = true; });
    createInterface({ input: proc.stdout! }).on('line', (l) => this.waiting.shift()?.(l));
  }

  /** Start it on iface in the namespace; resolves once its socket is bound. */
  static async start(t: { teardown(fn: () => unknown): void }, iface: string): Promise<Wire> {
    const proc = spawn('ip', ['netns', 'exec', NS, process.execPath, ...process.execArgv, WIRE, iface], { stdio: ['pipe', 'pipe', 'pipe'], env: CHILD_ENV });
    const w = new Wire(proc);
    t.teardown(() => w.close());
    const ready = await w.next<{ ready: number }>(30_000);
    if (!(ready.ready > 0)) throw new Error(`wire helper: ${JSON.stringify(ready)}`);
    return w;
  }

  private next<T>(timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`wire helper: no answer within ${timeoutMs} ms (exited: ${this.exited}): ${this.err}`)), timeoutMs);
      this.waiting.push((l) => { clearTimeout(timer); resolve(JSON.parse(l) as T); });
    });
  }

  private request<T>(o: unknown): Promise<T> {
    const p = this.next<T>(30_000);
    this.proc.stdin!.write(JSON.stringify(o) + '\n');
    return p;
  }

  /** Send frames out of the TAP (to the device's backend); resolves to how many were sent. */
  async send(frames: Uint8Array[]): Promise<number> {
    return (await this.request<{ sent: number }>({ op: 'send', frames: frames.map((f) => Buffer.from(f).toString('hex')) })).sent;
  }

  /** Frames received on the TAP (from the device's backend) since the last take. */
  async take(): Promise<{ frames: Uint8Array[]; truncated: number }> {
    const r = await this.request<{ frames: string[]; truncated: number }>({ op: 'take' });
    return { frames: r.frames.map((h) => new Uint8Array(Buffer.from(h, 'hex'))), truncated: r.truncated };
  }

  /** Wait until n frames arrived (or timeout); returns what arrived. */
  async collect(n: number, timeoutMs = 30_000): Promise<Uint8Array[]> {
    const out: Uint8Array[] = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.take();
      if (r.truncated) throw new Error(`wire helper: ${r.truncated} frame(s) truncated`);
      out.push(...r.frames);
      if (out.length >= n || Date.now() > deadline) break;
      await sleep(20);
    }
    // anything extra would show in the counts: one more look after a pause
    await sleep(50);
    out.push(...(await this.take()).frames);
    return out;
  }

  /** The TAP's kernel counters. */
  stats(): Promise<{ rx_packets: number; tx_packets: number; rx_bytes: number; tx_bytes: number }> {
    return this.request({ op: 'stats' });
  }

  /** Close its stdin and wait for it (SIGKILL after 5 s). */
  async close(): Promise<void> {
    if (this.exited) return;
    const done = new Promise<void>((r) => this.proc.once('exit', () => r()));
    this.proc.stdin!.end();
    const k = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await done;
    clearTimeout(k);
  }
}

// ---- the device process ----

/** Start `tspmd emu virtio-net,...` in the namespace with a net_tap backend; stopped at teardown. */
async function startDevice(t: { teardown(fn: () => unknown): void }, spec: string, iface: string): Promise<EmuProcess> {
  const dir = tempDir(t);
  const emu = await startEmu(join(dir, 'virtio-net.sock'), spec, ['--vdev', `net_tap0,iface=${iface}`, '-l', '0-1'], ['ip', 'netns', 'exec', NS]);
  t.teardown(() => stopDevice(emu));
  return emu;
}

/** SIGTERM the device and wait for its exit code (SIGKILL after 15 s). */
async function stopDevice(emu: EmuProcess): Promise<number | null> {
  if (!emu.alive()) return emu.proc.exitCode;
  const k = setTimeout(() => emu.proc.kill('SIGKILL'), 15_000);
  try { return await emu.stop(); } finally { clearTimeout(k); }
}

/** The device's statistics line printed at exit ("virtio-net: tx_packets N, ..."). */
function deviceStats(stderr: string): Record<string, number> | null {
  const line = stderr.split('\n').find((l) => l.startsWith('virtio-net: tx_packets '));
  if (!line) return null;
  const out: Record<string, number> = {};
  for (const kv of line.slice('virtio-net: '.length).split(', ')) {
    const i = kv.lastIndexOf(' ');
    out[kv.slice(0, i)] = Number(kv.slice(i + 1));
  }
  return out;
}

/** Totals a client's port counted (kept across clients for the device's statistics). */
interface Totals { ipackets: number; opackets: number; ibytes: number; obytes: number }
function addStats(tot: Totals, s: PortStats): void {
  tot.ipackets += s.ipackets;
  tot.opackets += s.opackets;
  tot.ibytes += s.ibytes;
  tot.obytes += s.obytes;
}

/**
 * One round of traffic: `count` frames out of the PMD (spread over its TX queues) must arrive on the
 * TAP byte-exact, then `count` frames injected into the TAP (in batches smaller than the RX ring)
 * must arrive in the PMD byte-exact. Returns the frames per RX queue.
 */
async function round(t: Tap, c: Client, wire: Wire, r: number, count: number): Promise<{ rxPerQueue: number[] }> {
  const mac = c.port.macAddr();
  const queues = c.tx.length;
  const out = Array.from({ length: count }, (_, i) => udpFrame(mac, PEER_MAC, 0xaa, r, i));
  await pmdSend(c, out, (i) => i % queues);
  const atTap = await wire.collect(count);
  sameFrames(t, atTap, out, queues === 1, `round ${r}: PMD TX -> device -> TAP`);

  const inj = Array.from({ length: count }, (_, i) => udpFrame(PEER_MAC, mac, 0x55, r, i));
  const got: Uint8Array[] = [];
  const rxPerQueue = c.rx.map(() => 0);
  const BATCH = 64;
  let sent = 0;
  for (let i = 0; i < count; i += BATCH) {
    const batch = inj.slice(i, i + BATCH);
    sent += await wire.send(batch);
    const per = await pmdReceive(c, batch.length);
    per.forEach((fs, q) => { rxPerQueue[q] += fs.length; got.push(...fs); });
  }
  t.equal(sent, count, `round ${r}: ${count} frames injected into the TAP`);
  // nothing more than what was injected
  await sleep(50);
  (await pmdReceive(c, 1, 100)).forEach((fs, q) => { rxPerQueue[q] += fs.length; got.push(...fs); });
  sameFrames(t, got, inj, queues === 1, `round ${r}: TAP -> device -> PMD RX`);
  return { rxPerQueue };
}

/** The device's exit statistics against the ports' totals and the TAP's kernel counters. */
function checkDeviceStats(t: Tap, code: number | null, stderr: string, tot: Totals, tap: { rx_packets: number; tx_packets: number; rx_bytes: number; tx_bytes: number }): void {
  t.equal(code, 0, 'the device exited 0 on SIGTERM');
  const s = deviceStats(stderr);
  t.ok(s, `the device printed its statistics at exit${s ? '' : `: ${stderr}`}`);
  if (!s) return;
  t.equal(s.tx_packets, tot.opackets, `device tx_packets ${s.tx_packets} = port opackets`);
  t.equal(s.tx_bytes, tot.obytes, 'device tx_bytes = port obytes');
  t.equal(s.rx_packets, tot.ipackets, `device rx_packets ${s.rx_packets} = port ipackets`);
  t.equal(s.rx_bytes, tot.ibytes, 'device rx_bytes = port ibytes');
  t.equal(tap.rx_packets, tot.opackets, 'the kernel received on the TAP what the port sent');
  t.equal(tap.rx_bytes, tot.obytes, 'and those bytes');
  t.equal(tap.tx_packets, tot.ipackets, 'the port received what the kernel sent out of the TAP');
  t.same([s.tx_dropped, s.tx_errors, s.tx_nombuf, s.rx_nobuf_drops, s.rx_too_big_drops, s.needs_reset_events], [0, 0, 0, 0, 0, 0],
    'no drops, errors or resets: tx_dropped, tx_errors, tx_nombuf, rx_nobuf_drops, rx_too_big_drops, needs_reset_events');
}

let ifSeq = 0;
const macFor = (n: number): string => formatMac([0x02, 0x74, 0x73, 0x70, 0x76, n]);

t.test('queues=1 mrg=1: bytes both ways, MAC and link, stop/start, a second client, statistics, mbufs', { skip, timeout: 240_000 }, async (t) => {
  ensureNamespace();
  const iface = `${PREFIX}t${ifSeq++}`;
  const mac = macFor(1);
  const emu = await startDevice(t, `virtio-net,mac=${mac},queues=1,mrg=1`, iface);
  const wire = await Wire.start(t, iface);
  const tot: Totals = { ipackets: 0, opackets: 0, ibytes: 0, obytes: 0 };

  const c1 = await openClient(t, emu.path, 1);
  t.ok(c1.port.name.startsWith('vfio-user:'), `probed as ${c1.port.name}`);
  t.equal(formatMac(c1.port.macAddr()), mac, 'MAC from the device configuration = the device\'s mac= argument');
  t.ok(c1.port.link().up, 'link up from the device configuration');
  t.ok(c1.port.info().capabilities.includes('mergeable-rx'), 'MRG_RXBUF negotiated (mrg=1)');
  await round(t, c1, wire, 1, 200);
  let s = c1.port.stats();
  t.equal(s.opackets, 200, 'port opackets');
  t.equal(s.ipackets, 200, 'port ipackets');

  // stop/start: the device is reset and set up again; traffic flows as before
  stopAndCheckPool(t, c1, 'client 1, first stop');
  await startClient(c1);
  t.ok(c1.port.link().up, 'link up after restart');
  await round(t, c1, wire, 2, 150);
  s = c1.port.stats();
  t.equal(s.opackets, 350, 'port opackets, cumulative over the restart');
  t.equal(s.ipackets, 350, 'port ipackets, cumulative over the restart');
  stopAndCheckPool(t, c1, 'client 1, second stop');
  addStats(tot, c1.port.stats());
  await c1.eal.close(); // the client disconnects: the device resets itself and serves the next one

  t.ok(emu.alive(), 'the device still serves after its first client left');
  t.equal(c1.chained, 0, 'client 1 (2048-byte buffers): every frame in one buffer');
  // Client 2 posts 1024-byte buffers: frames over 1012 bytes span several of them (num_buffers > 1).
  const c2 = await openClient(t, emu.path, 1, { dataRoom: 1024 });
  t.equal(formatMac(c2.port.macAddr()), mac, 'second client: same MAC');
  t.ok(c2.port.link().up, 'second client: link up');
  await round(t, c2, wire, 3, 100);
  t.ok(c2.chained > 10, `client 2 (1024-byte buffers): ${c2.chained} frames arrived as mergeable buffer chains`);
  stopAndCheckPool(t, c2, 'client 2');
  addStats(tot, c2.port.stats());
  await c2.eal.close();

  const tap = await wire.stats();
  const code = await stopDevice(emu);
  checkDeviceStats(t, code, emu.stderr(), tot, tap);
  t.match(emu.stderr(), /stopped after 2 connection\(s\)/, 'the device served two connections');
});

t.test('queues=1 mrg=0: bytes both ways without mergeable RX buffers', { skip, timeout: 240_000 }, async (t) => {
  ensureNamespace();
  const iface = `${PREFIX}t${ifSeq++}`;
  const mac = macFor(2);
  const emu = await startDevice(t, `virtio-net,mac=${mac},mrg=0`, iface);
  const wire = await Wire.start(t, iface);
  const c = await openClient(t, emu.path, 1);
  t.equal(formatMac(c.port.macAddr()), mac, 'MAC = mac= argument');
  t.ok(c.port.link().up, 'link up');
  t.notOk(c.port.info().capabilities.includes('mergeable-rx'), 'MRG_RXBUF not negotiated (mrg=0)');
  await round(t, c, wire, 1, 200);
  stopAndCheckPool(t, c, 'mrg=0');
  const tot: Totals = { ipackets: 0, opackets: 0, ibytes: 0, obytes: 0 };
  addStats(tot, c.port.stats());
  t.equal(tot.opackets, 200, 'port opackets');
  t.equal(tot.ipackets, 200, 'port ipackets');
  await c.eal.close();
  const tap = await wire.stats();
  checkDeviceStats(t, await stopDevice(emu), emu.stderr(), tot, tap);
});

t.test('queues=2: both queue pairs carry traffic both ways', { skip, timeout: 240_000 }, async (t) => {
  ensureNamespace();
  const iface = `${PREFIX}t${ifSeq++}`;
  const mac = macFor(3);
  const emu = await startDevice(t, `virtio-net,mac=${mac},queues=2,mrg=1`, iface);
  const wire = await Wire.start(t, iface);
  const c = await openClient(t, emu.path, 2);
  t.equal(c.port.info().maxRxQueues, 2, 'the port offers 2 queue pairs (MQ)');
  t.equal(formatMac(c.port.macAddr()), mac, 'MAC = mac= argument');
  const { rxPerQueue } = await round(t, c, wire, 1, 256);
  const s = c.port.stats();
  t.same(s.q_opackets.slice(0, 2), [128, 128], 'TX: 128 frames through each queue pair');
  t.ok(rxPerQueue[0] > 0 && rxPerQueue[1] > 0, `RX: the device steered flows to both queue pairs (${rxPerQueue.join(' + ')})`);
  t.same(s.q_ipackets.slice(0, 2), rxPerQueue, 'per-queue RX counters = what each queue delivered');
  t.ok(c.port.ctrlCommands >= 1, 'the control queue set the queue pairs (MQ_VQ_PAIRS_SET)');
  stopAndCheckPool(t, c, 'queues=2');
  const tot: Totals = { ipackets: 0, opackets: 0, ibytes: 0, obytes: 0 };
  addStats(tot, c.port.stats());
  await c.eal.close();
  const tap = await wire.stats();
  checkDeviceStats(t, await stopDevice(emu), emu.stderr(), tot, tap);
});
