/**
 * The emulated virtio-net device as an emudev provider and its engine's lcore-side object, on the
 * main thread (no client, no lcore): backendDesc (the queue table is the common configuration's
 * words, the named attributes, the statistics region, the doorbells of both notify modes), the
 * events the device posts (queue enable, status writes, the queues disabled at reset) in order,
 * VirtioNetBackend.open through the back-end API alone (errors naming what is missing; a device
 * the driver has not started moves nothing, and deliver leaves the packets to the caller), and the
 * engine on an lcore driven step by step (virtio-net-engine-lcore.ts) against a driver over
 * vfio-user: deliver takes as many packets as the driver posted buffers for, receive returns the
 * driver's frames as mbufs.
 *
 * Register writes happen only while no back-end is attached: a write publishes inside the data
 * plane's quiesce, which waits for attached back-ends, and this thread would be the one waited for.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { siblingModule } from '../../src/lcore/module.js';
import { EmuBackend, QUEUE_SIZE, QUEUE_DOORBELL, attrSpec, type EmuBackendDesc } from '../../lib/emudev/backend.js';
import { EmuEventReader, EVENT_ALL, EVENT_QUEUE_ENABLED, EVENT_QUEUE_DISABLED, EVENT_STATUS_CHANGED } from '../../lib/emudev/events.js';
import { pktmbufAlloc, pktmbufFree, pktmbufPoolCreate } from '../../lib/mempool/mbuf.js';
import * as V from '../../lib/virtio/virtio.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import { STAT_COUNT, A } from '../../drivers/emu/virtio-net/defs.js';
import { VirtioNetDevice } from '../../drivers/emu/virtio-net/device.js';
import { VirtioNetBackend } from '../../drivers/emu/virtio-net/backend.js';
import { TestVirtioNet } from './virtio-net-driver.js';
import { VnetWorld, testEal, until } from './virtio-net-helpers.js';
import { CMD, ARG, LEN, TOOK, COUNT, LENS, CTL_WORDS, CMD_DELIVER, CMD_RECEIVE, type EngineLcoreArg } from './virtio-net-engine-lcore.js';

const BAR4 = U.VFIO_PCI_BAR0_REGION_INDEX + L.BAR_CFG;
const eal = testEal('tspvnb');
t.teardown(() => eal.close());
const dir = mkdtempSync(join(tmpdir(), 'tsp-vnb-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const F = V.featureBit;
const MAC = [0x02, 0x74, 0x73, 0x70, 0x00, 0x07];

/** A device of its own name, closed at teardown. */
function device(t: { teardown(fn: () => unknown): void }, extra: Partial<L.VirtioNetConfig> = {}): VirtioNetDevice {
  const dev = new VirtioNetDevice({ ...L.parseVirtioNetArgs({ queues: '2' }), mac: MAC, ...extra }, `tsp-vnb${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
  t.teardown(() => dev.close());
  return dev;
}

/** A driver's write of an n-byte register of the common configuration. */
function wr(dev: VirtioNetDevice, off: number, n: number, v: number): void {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (v >>> (8 * i)) & 0xff;
  dev.emu.regionWrite(BAR4, BigInt(L.COMMON_OFF + off), b);
}

/** Queue q: size 32, rings at base, enabled. */
function setUpQueue(dev: VirtioNetDevice, q: number, base: number): void {
  wr(dev, V.COMMON_Q_SELECT, 2, q);
  wr(dev, V.COMMON_Q_SIZE, 2, 32);
  wr(dev, V.COMMON_Q_DESCLO, 4, base);
  wr(dev, V.COMMON_Q_DESCLO + 4, 4, 1); // high half: above 4 GiB
  wr(dev, V.COMMON_Q_ENABLE, 2, 1);
}

function descOf(dev: VirtioNetDevice): EmuBackendDesc {
  return { id: 7, ...dev.backendDesc() };
}

t.test('backendDesc: the queue table is the common configuration\'s words; attributes, the stats region and doorbells by name', async (t) => {
  const dev = device(t);
  t.same(dev.info(), { type: 'virtio-net', maxQueuePairs: 2, maxQueues: 5, maxEvents: 64 }, 'info: 2 pairs, 5 queues');
  wr(dev, V.COMMON_STATUS, 1, V.STATUS_ACKNOWLEDGE | V.STATUS_DRIVER);
  setUpQueue(dev, 3, 0x4000);
  const desc = descOf(dev);
  t.same([desc.queues.base, desc.queues.stride, desc.queues.count], [L.Q_BASE, L.Q_WORDS, 5], 'queue table: the state words from Q_BASE, Q_WORDS apart, 5 queues');
  const be = EmuBackend.attach(desc);
  try {
    const q3 = be.queueInfo(3);
    t.same([q3.size, q3.enabled, q3.desc, q3.doorbell], [32, true, 0x1_0000_4000n, 3], 'queue 3 as the driver set it (size, enable, a ring address above 4 GiB), doorbell id 3');
    t.ok(q3.epoch > be.queueInfo(2).epoch, 'enabling bumped queue 3\'s epoch');
    t.same([be.queueInfo(0).enabled, be.queues[be.queueBase(0) + QUEUE_SIZE]], [false, 256], 'queue 0 untouched: disabled, the largest size');
    t.throws(() => be.queueInfo(5), /queue 5 does not exist \(the device has 5\)/, 'a queue beyond the table is refused by number');
    const word = (n: string): number => be.attrs[be.attrWord(n)];
    t.equal(word(A.STATUS), V.STATUS_ACKNOWLEDGE | V.STATUS_DRIVER, 'status: what the driver wrote');
    t.same([word(A.MAX_PAIRS), word(A.ACTIVE_PAIRS), word(A.NEEDS_RESET), word(A.LINK_DOWN)], [2, 1, 0, 0], 'max_pairs 2, active_pairs 1, needs_reset 0, link up');
    const mac = be.attrWord(A.MAC);
    const bytes = new Uint8Array(new Int32Array([be.attrs[mac], be.attrs[mac + 1]]).buffer).slice(0, 6);
    t.same([...bytes], MAC, 'mac: two words, bytes 0-3 then 4-5');
    t.equal(attrSpec(desc.attrs.specs, A.MAC, desc.name).kind, 'mac', 'the mac attribute says its kind');
    t.same(desc.attrs.specs.filter((s) => s.writer === 'backend').map((s) => s.name).sort(), [A.ACTIVE_PAIRS, A.ERR_QUEUE, A.ISR, A.NEEDS_RESET].sort(), 'the back-end writes needs_reset, err_queue, isr and active_pairs, nothing else');
    t.equal(be.attrWord(A.GENERATION), be.generationWord, 'generation: the word the provider bumps');
    const g = be.generation;
    be.detach();
    dev.setLink(false);
    wr(dev, V.COMMON_MSIX, 2, 4);
    const be2 = EmuBackend.attach(desc);
    t.ok(be2.generation > g, `a published change bumps the generation (${g} -> ${be2.generation})`);
    t.same([be2.attrs[be2.attrWord(A.LINK_DOWN)], be2.attrs[be2.attrWord(A.CONFIG_VECTOR)]], [1, 4], 'link_down and config_vector follow');
    t.throws(() => be2.attrWord('speed'), /no attribute "speed" \(attributes: status, features_lo/, 'an unknown attribute is refused, the known ones named');
    t.equal(be2.region('stats').byteLength, 8 * STAT_COUNT, 'region stats: the device\'s statistics');
    t.same(desc.doorbells.map((b) => [b.id, b.kind]), [0, 1, 2, 3, 4].map((q) => [q, 'mem']), 'notify page mapped: a polled word per queue');
    const b2 = be2.doorbell(2);
    t.ok(b2.kind === 'mem' && b2.va === dev.emu.barAddress(L.BAR_CFG) + BigInt(L.NOTIFY_OFF + 2 * L.NOTIFY_MULTIPLIER), 'doorbell 2: queue 2\'s notify word in the BAR');
    be2.detach();
  } catch (e) {
    try { be.detach(); } catch { /* detached already */ }
    throw e;
  }
  const fdDev = device(t, { mapNotify: false });
  const fdDesc = descOf(fdDev);
  t.same(fdDesc.doorbells.map((b) => [b.id, b.kind]), [0, 1, 2, 3, 4].flatMap((q) => [[q, 'fd'], [5 + q, 'mem']]), 'FD doorbells: queue q rings eventfd q; the notify words follow for message kicks');
  t.ok(fdDesc.doorbells.every((b) => b.kind !== 'fd' || b.fd === -1), 'no eventfd before a client took them');
  t.same(Array.from({ length: 5 }, (_, q) => fdDev.state[L.qw(q, QUEUE_DOORBELL)]), [0, 1, 2, 3, 4], 'each queue\'s QUEUE_DOORBELL word names its doorbell');
});

t.test('events: status writes, a queue enable and the reset that disables it reach a subscription in order', async (t) => {
  const dev = device(t);
  const ch = dev.emu.subscribe(EVENT_ALL);
  t.teardown(() => dev.emu.unsubscribe(ch));
  const r = EmuEventReader.attach(ch.desc());
  wr(dev, V.COMMON_STATUS, 1, V.STATUS_ACKNOWLEDGE);
  setUpQueue(dev, 1, 0x8000);
  setUpQueue(dev, 4, 0x9000);
  wr(dev, V.COMMON_STATUS, 1, 0);
  const got: Array<[number, number]> = [];
  for (let type = r.next(); type !== 0; type = r.next()) got.push([type, r.arg]);
  t.same(got, [
    [EVENT_STATUS_CHANGED, V.STATUS_ACKNOWLEDGE], [EVENT_QUEUE_ENABLED, 1], [EVENT_QUEUE_ENABLED, 4],
    [EVENT_QUEUE_DISABLED, 1], [EVENT_QUEUE_DISABLED, 4], [EVENT_STATUS_CHANGED, 0],
  ], 'status 1, queues 1 and 4 enabled, then the reset: both disabled, status 0');
  wr(dev, V.COMMON_Q_SELECT, 2, 1);
  wr(dev, V.COMMON_Q_ENABLE, 2, 0);
  t.equal(r.next(), 0, 'writing 0 to queue_enable changes nothing and posts nothing');
});

t.test('VirtioNetBackend.open: the back-end API alone; what is missing is named; a device not started moves nothing', async (t) => {
  const pool = pktmbufPoolCreate(eal.memory, `tspvnb${process.pid}`, 255);
  const dev = device(t);
  const desc = descOf(dev);
  const noIsr = { ...desc, attrs: { ...desc.attrs, specs: desc.attrs.specs.filter((s) => s.name !== A.ISR) } };
  t.throws(() => VirtioNetBackend.open({ desc: noIsr, pairs: 2, maxQueueSize: 256 }, pool), /no attribute "isr"/, 'a device without the isr attribute: refused by name');
  t.throws(() => VirtioNetBackend.open({ desc, pairs: 3, maxQueueSize: 256 }, pool), /5 queues in the queue table, 7 needed for 3 pairs/, 'more pairs than the queue table holds: refused');
  // Both failures detached again: a register write (a quiesce) completes.
  wr(dev, V.COMMON_STATUS, 1, V.STATUS_ACKNOWLEDGE);
  t.equal(dev.deviceStatus, V.STATUS_ACKNOWLEDGE, 'the device publishes after the refused opens (nothing left attached)');
  const be = VirtioNetBackend.open(dev.engineArg(), pool);
  let closed = false;
  t.teardown(() => { if (!closed) be.close(); });
  const inUse = pool.inUseCount();
  const out = new Uint32Array(8);
  t.equal(be.queuePairs, 2, 'two pairs');
  t.equal(be.service(), 0, 'service: no kicks, no commands');
  t.equal(be.receive(out, out.length), 0, 'receive: nothing from a driver that has not set DRIVER_OK');
  const pkts = new Uint32Array([pktmbufAlloc(pool), pktmbufAlloc(pool)]);
  t.equal(be.deliver(pkts, 2), 0, 'deliver: takes none (no receiveq ready)');
  t.equal(pool.inUseCount(), inUse + 2, 'the packets it did not take are still the caller\'s');
  for (const m of pkts) pktmbufFree(m);
  t.equal(be.idle(1), 0, 'idle: a 1 ms back-off, no eventfd kicks');
  t.equal(be.statistics[0], 0, 'tx_packets 0');
  be.close();
  closed = true;
  wr(dev, V.COMMON_STATUS, 1, 0);
  t.equal(dev.deviceStatus, 0, 'after close the device publishes again (reset)');
});

t.test('VirtioNetBackend on an lcore: deliver takes what the posted buffers hold and leaves the rest; receive hands over the driver\'s frames', async (t) => {
  const ctl = new Int32Array(new SharedArrayBuffer(4 * CTL_WORDS));
  const w = await VnetWorld.create(eal, dir, {}, true, true, (d) => d, {
    module: siblingModule(import.meta.url, 'virtio-net-engine-lcore'), fn: 'engineSteps',
    arg: (loop): EngineLcoreArg => ({ loop, ctl: ctl.buffer as SharedArrayBuffer }),
  });
  t.teardown(() => w.close());
  const d = new TestVirtioNet(w.connect());
  t.teardown(() => d.close());
  d.reset();
  t.ok(d.negotiate(F(V.VIRTIO_F_VERSION_1) | F(V.VIRTIO_NET_F_MAC)), 'FEATURES_OK');
  d.setupQueue(0, 64);
  d.setupQueue(1, 64);
  d.driverOk();
  const run = async (cmd: number, arg = 0, len = 0): Promise<void> => {
    ctl[ARG] = arg;
    ctl[LEN] = len;
    Atomics.store(ctl, CMD, cmd);
    if (!(await until(() => Atomics.load(ctl, CMD) === 0, 10_000))) throw new Error(`the engine lcore did not run command ${cmd}`);
  };
  d.postRx(0, 3);
  await run(CMD_DELIVER, 5, 100);
  t.equal(ctl[TOOK], 3, 'deliver: 3 of 5 taken (3 buffers posted); the other 2 stay the caller\'s');
  t.ok(await d.waitUsed(0, 3), 'three used entries on receiveq 0');
  const got = d.receive(0, d.used(0));
  t.same(got.map((p) => [p.numBuffers, p.data.byteLength]), [[1, 100], [1, 100], [1, 100]], 'three packets of 100 bytes, one buffer each');
  t.ok(got.every((p, i) => p.data.every((b, j) => b === ((i + j) & 0xff))), 'the first three packets\' bytes, in order');
  t.same([w.stat('rx_packets'), w.stat('rx_nobuf_drops')], [3, 0], 'the engine counts what it delivered; the packets it left are not its drops');
  const frames = [0x11, 0x22].map((v) => Uint8Array.from({ length: 60 }, (_, j) => (v + j) & 0xff));
  for (const f of frames) d.send(1, f);
  await run(CMD_RECEIVE);
  t.equal(ctl[COUNT], 2, 'receive: both frames');
  t.same([ctl[LENS], ctl[LENS + 1], ctl[LENS + 2], ctl[LENS + 3]], [60, 0x11, 60, 0x22], 'as mbufs of 60 bytes after the header, in order');
  t.ok(await d.waitUsed(1, 2), 'both transmit chains returned');
  t.same(d.used(1).map((e) => e.len), [0, 0], 'used length 0: the device wrote nothing into them');
  t.same([w.stat('tx_packets'), w.stat('tx_bytes')], [2, 120], 'tx statistics: what receive handed over');
  await run(CMD_RECEIVE);
  t.equal(ctl[COUNT], 0, 'nothing more to receive');
});
