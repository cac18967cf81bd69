/**
 * net_virtio against tspmd's emulated virtio-net device over vfio-user (no root), for two things
 * the other virtio tests do not cover:
 *
 * - the unmapped-notify fallback: a device started with notify_mmap=0 (no sparse mmap area over the
 *   notify page), notify_fds=0 (no ioeventfds either: virtio-fd-doorbell.test.ts has those) and
 *   kicks=1 (VRING_USED_F_NO_NOTIFY clear, so the data half rings a doorbell per
 *   burst): the port starts, frames go both ways byte-exact, and the data half's doorbells reach the
 *   device as no-reply REGION_WRITE messages (the device counts them), from this thread and from a
 *   worker lcore, while the main thread's own requests keep getting their replies;
 * - Rx interrupts and link-state-change events: intr { rxq, lsc }: MSI-X vectors routed to
 *   eventfds; an armed, idle queue gets no interrupt; frames arriving wake the eventfd, the
 *   interrupt is counted (rx_q0_interrupts) and the frames are received; taking the emulated link
 *   down and up reaches onLinkChange; a worker lcore in Rx interrupt mode (RxIdleSleeper) sleeps
 *   on the eventfd while idle and is woken once per batch of frames;
 * - MappedBar.reg on the pread/pwrite path (a memfd standing in for a kernel VFIO device fd) and
 *   its refusals; the fallbacks (and an ioeventfd doorbell) allocate nothing per write (no GC over 100000 writes each), and a
 *   message write is exactly one 34-byte no-reply REGION_WRITE; a kernel VFIO device (memfd
 *   stand-in) gives BarData.io = pread/pwrite on its fd at the region offset.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probePorts } from '../../drivers/bus/probe.js';
import { openRxQueue, openTxQueue, type LinkStatus } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate } from '../../lib/mempool/mbuf.js';
import { VirtioNetPort } from '../../drivers/net/virtio/virtio.js';
import { Bar, MappedBar } from '../../src/iommu/bar.js';
import { MemfdVfioDevice, REGION_SHIFT, RWM } from '../pci/fake-vfio.js';
import { ALLOC_RULE, assertNoAlloc, measureInWorker } from '../alloc.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import * as os from '../../src/os/libc.js';
import { VnetWorld, testEal, until } from '../emu/virtio-net-helpers.js';
import { siblingModule } from '../../src/lcore/module.js';
import { messageReg, regionWriteIo } from '../../lib/vfio-user/reg.js';
import { fallbackKickLoop, intrRxLoop } from './virtio-intr-worker.js';
import { pmdSend, pmdReceive, udpFrame, sameFrames, stopAndCheckPool, sleep, type Client } from './virtio-client.js';

const PEER_MAC = [0x02, 0x74, 0x73, 0x70, 0x77, 0x09];
const CPUS = os.getAffinity();
const WORKER = siblingModule(import.meta.url, 'virtio-intr-worker');
/** the module that writes vfio-user registers from other threads */
const REG_MODULE = new URL('../../lib/vfio-user/reg' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url).href;

const dir = mkdtempSync(join(tmpdir(), 'tsp-vintr-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const devEal = testEal('tspvintr');
t.teardown(() => devEal.close());

let seq = 0;

/** A PMD EAL on the device's socket, the port configured with conf.intr and started, queues opened here. */
async function open(tt: { teardown(fn: () => unknown): void }, socket: string, intr?: { rxq?: boolean; lsc?: boolean }, workers: number[] = []): Promise<Client> {
  const eal = new Eal({
    noHuge: true, noPci: true, filePrefix: `tspvintr${process.pid}_${seq++}`, allow: [`vfio-user:${socket}`],
    lcores: [{ id: 0, cpu: CPUS[0] }, ...workers.map((id) => ({ id, cpu: CPUS[0] }))], mainLcore: 0,
  });
  tt.teardown(() => eal.close());
  const port = (await probePorts(eal)).find((p) => p.name === `vfio-user:${socket}`);
  if (!(port instanceof VirtioNetPort)) throw new Error(`no net_virtio port for vfio-user:${socket}`);
  const pool = pktmbufPoolCreate(eal.memory, 'tspvintr_pool', 2047, { cacheSize: 0 });
  const txPool = pktmbufPoolCreate(eal.memory, 'tspvintr_txpool', 1023, { cacheSize: 0 });
  port.configure({ rxQueues: 1, txQueues: 1, intr });
  port.rxQueueSetup(0, 256, pool);
  port.txQueueSetup(0, 256);
  port.start();
  return { eal, port, pool, txPool, rx: [await openRxQueue(port.data(), 0)], tx: [await openTxQueue(port.data(), 0)], chained: 0 };
}

t.test('notify page not mmap-able: the port starts, doorbells go as REGION_WRITE messages, frames both ways', async (t) => {
  const w = await VnetWorld.create(devEal, dir, { mapNotify: false, notifyFds: false, wantKicks: true });
  t.teardown(() => w.close());
  const c = await open(t, w.socket);
  const bar = c.port.pci.bar(c.port.pci.caps.notify);
  t.same(bar.mapped, [], 'the notify BAR has no mapped area (the device offered none)');
  const io = bar.data().io;
  t.same(io?.kind === 'message' && [io.transport, io.module], ['vfio-user', REG_MODULE], 'its BarData says how a worker reaches it: vfio-user messages, written by lib/vfio-user/reg');
  const mac = c.port.macAddr();
  const kicks0 = w.stat('kicks');
  const out = Array.from({ length: 200 }, (_, i) => udpFrame(mac, PEER_MAC, 0xaa, 1, i));
  await pmdSend(c, out);
  sameFrames(t, await w.collectFromDevice(out.length), out, true, 'PMD TX -> device -> backend');
  const inj = Array.from({ length: 100 }, (_, i) => udpFrame(PEER_MAC, mac, 0x55, 1, i));
  t.equal(w.sendToDevice(inj.slice(0, 50)) + w.sendToDevice(inj.slice(50)), inj.length, 'frames put into the backend (50 at a time)');
  sameFrames(t, (await pmdReceive(c, inj.length))[0], inj, true, 'backend -> device -> PMD RX');
  const x = c.port.xstats();
  t.ok(x.tx_q0_kicks > 0 && x.rx_q0_kicks > 0, `the data half rang doorbells (TX ${x.tx_q0_kicks}, RX ${x.rx_q0_kicks})`);
  t.same([x.tx_q0_kicks_message, x.rx_q0_kicks_message, x.tx_q0_kicks_eventfd, x.rx_q0_kicks_eventfd], [x.tx_q0_kicks, x.rx_q0_kicks, 0, 0], 'all of them as messages');
  t.ok(await until(() => w.stat('kicks') - kicks0 >= 1, 2000), `the device saw them (${w.stat('kicks') - kicks0} kicks)`);
  // The main thread's requests still get their own replies after the no-reply messages.
  t.equal(c.port.link().up, true, 'a register read on the main thread after the doorbell messages works');
  t.equal(c.port.stats().oerrors + c.port.stats().ierrors, 0, 'no errors');
  stopAndCheckPool(t, c, 'fallback');
  await c.eal.close();
});

t.test('notify fallback from a worker lcore: doorbells while the main thread makes requests', async (t) => {
  const w = await VnetWorld.create(devEal, dir, { mapNotify: false, notifyFds: false, wantKicks: true });
  t.teardown(() => w.close());
  const c = await open(t, w.socket, undefined, [1]);
  const before = w.stat('kicks');
  // The lcore sends frames (each burst rings the TX doorbell by message) while this thread keeps
  // the socket busy with register reads: no reply may get lost or mixed up.
  const drained = new Int32Array(new SharedArrayBuffer(8));
  const done = c.eal.lcores.launch(1, WORKER, fallbackKickLoop, { port: c.port.data(), txPool: c.txPool.desc, frames: 3000, drained: drained.buffer as SharedArrayBuffer });
  let reads = 0;
  const collected: Uint8Array[] = [];
  let finished = false;
  void done.then(() => { finished = true; }, () => { finished = true; });
  while (!finished) {
    if (c.port.link().up) reads++;
    collected.push(...w.receiveFromDevice());
    Atomics.store(drained, 0, collected.length);
    await sleep(0);
  }
  const sent = await done;
  collected.push(...await w.collectFromDevice(Math.max(0, sent - collected.length), 10_000));
  t.equal(sent, 3000, 'the lcore sent every frame');
  t.equal(collected.length, sent, `and every frame came out of the backend (device tx_dropped ${w.stat('tx_dropped')})`);
  t.ok(reads > 10, `the main thread made ${reads} REGION_READ requests meanwhile, each answered`);
  t.ok(w.stat('kicks') - before > 0, `the device counted ${w.stat('kicks') - before} doorbells from the lcore`);
  stopAndCheckPool(t, c, 'worker fallback');
  await c.eal.close();
});

t.test('Rx interrupt: none while idle and armed, one when frames arrive, frames received; link changes reach onLinkChange', async (t) => {
  const w = await VnetWorld.create(devEal, dir, {});
  t.teardown(() => w.close());
  const c = await open(t, w.socket, { rxq: true, lsc: true });
  const caps = c.port.info().capabilities;
  t.ok(caps.includes('rx-interrupt') && caps.includes('lsc-interrupt'), `capabilities: ${caps.join(', ')}`);
  const rx = c.rx[0];
  const intr = rx.intr;
  if (!intr) { t.fail('the RX queue has no interrupt'); return; }
  t.ok(intr.fd >= 0, `RX queue 0 interrupt eventfd ${intr.fd}`);

  t.equal(intr.enable(), true, 'armed on an idle queue');
  t.equal(os.pollOne(intr.fd, os.POLLIN, 300), 0, 'no interrupt in 300 ms of idleness');
  intr.disable();
  t.equal(c.port.xstats().rx_q0_interrupts, 0, 'rx_q0_interrupts 0 while idle');

  const mac = c.port.macAddr();
  for (let round = 0; round < 3; round++) {
    t.equal(intr.enable(), true, `round ${round}: armed`);
    const inj = Array.from({ length: 20 }, (_, i) => udpFrame(PEER_MAC, mac, 0x55, 10 + round, i));
    const t0 = performance.now();
    w.sendToDevice(inj);
    const [ev] = await os.pollAsync([intr.fd], os.POLLIN, 5000);
    const woke = performance.now() - t0;
    t.ok((ev & os.POLLIN) !== 0, `round ${round}: the eventfd turned readable (${woke.toFixed(1)} ms)`);
    intr.disable();
    sameFrames(t, (await pmdReceive(c, inj.length))[0], inj, true, `round ${round}: the frames after the wake-up`);
  }
  const n = c.port.xstats().rx_q0_interrupts;
  t.ok(n >= 3, `rx_q0_interrupts ${n} after three wake-ups`);

  // Frames already waiting: enable() says so instead of arming.
  const inj = [udpFrame(PEER_MAC, mac, 0x66, 20, 0)];
  w.sendToDevice(inj);
  t.ok(await until(() => w.stat('rx_packets') >= 61, 5000), 'the device delivered the frame');
  t.equal(intr.enable(), false, 'enable() returns false when packets are already in the ring');
  intr.disable();
  t.equal((await pmdReceive(c, 1))[0].length, 1, 'the waiting frame is received');

  // Link-state changes.
  const events: LinkStatus[] = [];
  const off = c.port.onLinkChange((l) => events.push(l));
  L.setLinkState(w.state, false);
  t.ok(await until(() => events.length >= 1, 3000), 'link down reached onLinkChange');
  t.equal(events[0]?.up, false, 'with up: false');
  t.equal(c.port.link().up, false, 'link() says down');
  L.setLinkState(w.state, true);
  t.ok(await until(() => events.length >= 2, 3000), 'link up reached onLinkChange');
  t.equal(events[1]?.up, true, 'with up: true');
  off();
  stopAndCheckPool(t, c, 'interrupts');
  await c.eal.close();
});

t.test('Rx interrupt mode on a worker lcore (RxIdleSleeper): it sleeps while idle and wakes for each batch', async (t) => {
  const w = await VnetWorld.create(devEal, dir, {});
  t.teardown(() => w.close());
  const c = await open(t, w.socket, { rxq: true }, [1]);
  const mac = c.port.macAddr();
  const progress = new Float64Array(new SharedArrayBuffer(16));
  const done = c.eal.lcores.launch(1, WORKER, intrRxLoop, { port: c.port.data(), frames: 60, timeoutMs: 30_000, progress: progress.buffer as SharedArrayBuffer });
  // The lcore starts (a new thread loads its modules), polls, then sleeps on the eventfd.
  t.ok(await until(() => progress[1] >= 3, 20_000), 'the lcore went to sleep');
  await sleep(300);
  const idleInterrupts = c.port.xstats().rx_q0_interrupts;
  for (let b = 0; b < 3; b++) {
    const asleep = progress[1];
    w.sendToDevice(Array.from({ length: 20 }, (_, i) => udpFrame(PEER_MAC, mac, 0x77, 30 + b, i)));
    await until(() => progress[0] >= 20 * (b + 1), 5000);
    await until(() => progress[1] > asleep + 1, 5000); // asleep again
  }
  const r = await done;
  t.equal(r.received, 60, 'the lcore received all 60 frames');
  t.equal(idleInterrupts, 0, 'no interrupt while idle');
  t.ok(r.wakeups >= 1, `it slept ${r.sleeps} times (${r.sleptMs.toFixed(0)} ms), woken by a packet ${r.wakeups} times, ${r.timeouts} timeouts, ${r.raced} races`);
  t.ok(r.sleptMs > 250, `the idle time was spent asleep (${r.sleptMs.toFixed(0)} ms), not polling`);
  t.ok(c.port.xstats().rx_q0_interrupts >= 1, `rx_q0_interrupts ${c.port.xstats().rx_q0_interrupts}`);
  stopAndCheckPool(t, c, 'interrupt mode');
  await c.eal.close();
});

t.test('MappedBar.reg: mapped or fallback decided per register; the file path reads and writes; clear refusals', async (t) => {
  const fd = os.memfdCreate('tsp-vintr-bar', 0);
  t.teardown(() => os.close(fd));
  os.ftruncate(fd, 8192);
  const io = { kind: 'file' as const, fd, offset: 4096n, readable: true, writable: true };
  const mb = new MappedBar({ name: 'memfd BAR0', va: 0n, size: 4096, mapped: [], io });
  const r16 = mb.reg(0x10, 2), r32 = mb.reg(0x20, 4), r8 = mb.reg(0x31, 1);
  t.same([r16.mapped, r32.mapped, r8.mapped], [false, false, false], 'nothing mapped: every register takes the fallback');
  r16.write(0xbeef); r32.write(0xdeadbeef); r8.write(0x5a);
  const back = new Uint8Array(4);
  os.pread(fd, back, 2, 4096n + 0x10n);
  t.same([...back.subarray(0, 2)], [0xef, 0xbe], 'pwrite landed at the region offset + the register offset, little endian');
  t.same([r16.read(), r32.read(), r8.read()], [0xbeef, 0xdeadbeef, 0x5a], 'pread reads them back');
  t.throws(() => mb.reg(0x11, 2), /memfd BAR0\+0x11: a 16-bit register must be aligned/);
  t.throws(() => mb.reg(0x1000, 4), /lies outside the BAR/);
  t.throws(() => new MappedBar({ name: 'x BAR2', va: 0n, size: 4096, mapped: [] }), /x BAR2: nothing of the BAR is mapped and its VFIO back end gives no other path/);
  const vuData = { name: 'vu BAR4', va: 0n, size: 4096, mapped: [], io: regionWriteIo({ fd: -1, region: 4, lock: new SharedArrayBuffer(4), msgId: 0x8000 }) };
  t.throws(() => new MappedBar(vuData).reg(0x100, 2), /vu BAR4\+0x100 is written by vfio-user messages from .*reg\.(ts|js), which is not loaded here: rebuild the BAR with await MappedBar\.open\(data\)/, 'built without its module: reg() says how to load it');
  const user = await MappedBar.open(structuredClone(vuData));
  await t.rejects(MappedBar.open({ ...vuData, io: { kind: 'message', transport: 'tsp-x', module: 'node:os', arg: null } }), /vu BAR4: node:os exports no messageReg\(\); it cannot write tsp-x registers/);
  t.throws(() => new MappedBar({ ...vuData, io: { kind: 'message', transport: 'vfio-user', module: REG_MODULE, arg: { fd: 1 } } }, { messageReg }).reg(0x100, 2), /vu BAR4\+0x100: the vfio-user register data is not \{ fd, region, lock, msgId \}/);
  t.throws(() => user.reg(0x100, 2, true), /vu BAR4\+0x100 is not mapped, and vfio-user registers are reached from a worker by no-reply REGION_WRITE only/);
  const w = user.reg(0x100, 2);
  t.throws(() => w.write(1), /vu BAR4\+0x100: sending VFIO_USER_REGION_WRITE failed \(EBADF\)/, 'a write on a dead socket names the register and the error');
});

t.test('the fallback writes allocate nothing (measured in a worker), one write is one message', async (t) => {
  // pwrite + REGION_WRITE + eventfd triples, measured by the allocation rule in a worker of their own
  const rule = { ...ALLOC_RULE, windowOps: 100_000 };
  const r = await measureInWorker(WORKER, 'fallbackWrites', null, rule);
  t.comment(`${((r.ms * 1000) / r.ops).toFixed(2)} µs per pwrite + message + eventfd triple`);
  assertNoAlloc(t, r, 'fallback register writes (pwrite, REGION_WRITE and ioeventfd) in a worker', rule);
  const [a, b] = os.socketpair(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK);
  t.teardown(() => { os.close(a); os.close(b); });
  const user = (await MappedBar.open({ name: 'pair BAR4', va: 0n, size: 4096, mapped: [], io: regionWriteIo({ fd: a, region: 4, lock: new SharedArrayBuffer(4), msgId: 0x8000 }) })).reg(0x40, 2);
  const last = new Uint8Array(34);
  t.equal(user.mapped, false, 'the message path');
  user.write(0x1234);
  t.equal(os.readNoThrow(b, last, 34), 34, 'one write is one 34-byte message');
  const dv = new DataView(last.buffer);
  t.same([dv.getUint16(0, true), dv.getUint16(2, true), dv.getUint32(4, true), dv.getUint32(8, true), Number(dv.getBigUint64(16, true)), dv.getUint32(24, true), dv.getUint32(28, true), dv.getUint16(32, true)],
    [0x8000, 10, 34, 0x10, 0x40, 4, 2, 0x1234], 'header (id 0x8000, REGION_WRITE, size 34, command | No_reply), offset 0x40, region 4, count 2, data');
});

t.test('kernel VFIO: Bar.data().io is pread/pwrite on the device fd at the region offset, from plain data', async (t) => {
  // A memfd stands in for the device fd (regions at index << 40, test/pci/fake-vfio.ts); BAR2 has
  // its first page mappable, the rest only through pread/pwrite (like a kernel's MSI-X table).
  const dev = new MemfdVfioDevice('0000:00:0f.0', [{ index: 2, size: 0x4000, flags: RWM, sparse: [{ offset: 0, size: 0x1000 }] }]);
  t.teardown(() => dev.close());
  const bar = Bar.open(dev, 2);
  t.teardown(() => bar.close());
  const data = structuredClone(bar.data()); // what a worker gets
  t.same(data.io, { kind: 'file', fd: dev.fd, offset: 2n << REGION_SHIFT, readable: true, writable: true }, 'io: the device fd and the region offset');
  const mb = new MappedBar(data);
  const mapped = mb.reg(0x100, 4), unmapped = mb.reg(0x2008, 4);
  t.same([mapped.mapped, unmapped.mapped], [true, false], 'page 0 mapped, 0x2008 through the fd');
  mapped.write(0x11223344);
  unmapped.write(0xcafef00d);
  const peek = (off: number): number => { const b = new Uint8Array(4); os.pread(dev.fd, b, 4, (2n << REGION_SHIFT) + BigInt(off)); return new DataView(b.buffer).getUint32(0, true); };
  t.same([peek(0x100), peek(0x2008)], [0x11223344, 0xcafef00d], 'both writes reached the device at their offsets');
  t.same([bar.read32(0x2008), unmapped.read()], [0xcafef00d, 0xcafef00d], 'the main thread\'s Bar and the worker\'s register read the same');
});
