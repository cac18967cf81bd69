/**
 * The emudev back-end API on dmatest and a small provider with FD doorbells: every query of a
 * device handle (info, memory table, queue, IRQ and doorbell info, attributes, region_map,
 * backendDesc), event channels (a full ring gives EVENT_OVERFLOW with the lost count), and events
 * reaching a back-end on a worker lcore (test/emu/backend-api-workers.ts): memory table changes
 * (a DMA unmap while it reads client memory: it is parked during the change and resumes after,
 * never touching the unmapped memory), queue enable/disable, status changes and reset, each seen in
 * order with the state it announces already in place; an idle back-end asleep in poll(2) on the
 * channel's eventfd wakes on a post.
 *
 * One worker lcore (the second CPU) besides the main thread.
 */
import t from 'tap';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { Eal } from '../../src/eal.js';
import { siblingModule } from '../../src/lcore/module.js';
import { EmuDevice } from '../../lib/emudev/emudev.js';
import { emudevAllocate, type EmuProvider, type EmuProviderInfo } from '../../lib/emudev/registry.js';
import { QUEUE_WORDS, type EmuBackendDesc } from '../../lib/emudev/backend.js';
import * as E from '../../lib/emudev/events.js';
import { DmatestDevice } from '../../drivers/emu/dmatest/dmatest.js';
import * as R from '../../lib/dmatest/regs.js';
import * as W from './backend-api-workers.js';
import { emudevBackend } from '../../examples/emudev/backend.js';

const WORKERS = siblingModule(import.meta.url, 'backend-api-workers');
const P = `tsp${process.pid}`;
const RW = 3, RD = 1;
const MSIX = U.VFIO_PCI_MSIX_IRQ_INDEX;
const cpus = os.getAffinity();
const eal = new Eal({ noHuge: true, filePrefix: `tspba${process.pid}`, memoryMb: 1, lcores: [{ id: 0, cpu: cpus[0] }, { id: 1, cpu: cpus[1] ?? cpus[0] }], mainLcore: 0 });
t.teardown(() => eal.close());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) { /* spin */ }
}
async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}
/** Write a 32-bit register of dmatest BAR0 as a client's REGION_WRITE would. */
function writeReg(d: DmatestDevice, off: number, v: number): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  d.emu.regionWrite(0, BigInt(off), b);
}
/** A sealed memfd of len bytes filled with byte, closed at teardown. */
function memfd(t: { teardown(fn: () => unknown): void }, len: number, byte: number): number {
  const fd = os.memfdCreate(`${P}-mem`, os.MFD_ALLOW_SEALING);
  t.teardown(() => os.close(fd));
  os.ftruncate(fd, len);
  const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  new Uint8Array(os.viewOf(va, len)).fill(byte);
  os.munmap(va, len);
  return fd;
}
const irqSet = (flags: number, start: number, count: number): { argsz: number; flags: number; index: number; start: number; count: number; bools: Uint8Array } =>
  ({ argsz: 0, flags, index: MSIX, start, count, bools: new Uint8Array(0) });

t.test('every back-end query on dmatest', async (t) => {
  const dev = new DmatestDevice(`${P}q`);
  const h = emudevAllocate(`${P}q`, dev);
  t.teardown(() => h.release());
  t.match(h.info(), { type: 'dmatest', maxQueuePairs: 0, maxQueues: 1, maxEvents: 64, memRegions: 0, numRegions: 9, numIrqs: 5 }, 'device info');
  t.same(h.memTable(), [], 'no memory table before a client maps memory');
  const fd = memfd(t, 0x40000, 0);
  dev.emu.dmaMap(0x10_0000n, 0x40000n, RW, fd, 0n);
  dev.emu.dmaMap(0x80_0000n, 0x1000n, RD, -1, 0n);
  const mt = h.memTable();
  t.match(mt, [{ iova: 0x10_0000n, length: 0x40000, flags: RW }, { iova: 0x80_0000n, length: 0x1000, flags: RD, va: 0n }], 'the memory table: iova, length, flags');
  t.ok(mt[0].va !== 0n, `memory sent by fd is mapped here (0x${mt[0].va.toString(16)}); memory without fd is not`);
  t.equal(h.info().memRegions, 2, 'info counts the regions');

  t.same(h.queueInfo(0), { index: 0, size: 0, enabled: false, desc: 0n, avail: 0n, used: 0n, vector: 0, doorbell: 0, epoch: 0 }, 'queue 0 before the driver enables the engine');
  writeReg(dev, R.REG_RING_LO, 0x10_0000);
  writeReg(dev, R.REG_RING_HI, 0);
  writeReg(dev, R.REG_RING_ENTRIES, 16);
  writeReg(dev, R.REG_CTRL, R.CTRL_ENABLE);
  t.same(h.queueInfo(0), { index: 0, size: 16, enabled: true, desc: 0x10_0000n, avail: 0n, used: 0n, vector: 0, doorbell: 0, epoch: 1 }, 'and after: the ring, enabled, a new epoch');
  t.throws(() => h.queueInfo(1), { message: `${P}q: queue 1 does not exist (the device has 1)` }, 'queue 1: a clear error');
  t.same(h.attrs().map((a) => `${a.name}:${a.writer}`), ['status:provider', 'ring_lo:provider', 'ring_hi:provider', 'entries:provider', 'enabled:provider', 'completed:backend', 'errors:backend'], 'dmatest\'s attributes and who writes them');
  t.same(['status', 'ring_lo', 'entries', 'enabled', 'completed'].map((n) => h.getAttr(n)), [R.STATUS_RUNNING, 0x10_0000, 16, true, 0], 'attributes read the engine state');
  t.throws(() => h.setAttr('status', 0), /written by the device model only/, 'the status is the provider\'s');

  t.same(h.irqInfo(MSIX, 0), { index: MSIX, vector: 0, fd: -1, masked: false }, 'MSI-X vector 0: no eventfd yet');
  const efd = os.eventfd(0, os.EFD_NONBLOCK); // the device's after SET_IRQS: closed when it closes
  dev.emu.setIrqs(irqSet(U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1), [efd]);
  t.same(h.irqInfo(MSIX, 0), { index: MSIX, vector: 0, fd: efd, masked: false }, 'the client\'s eventfd');
  dev.emu.setIrqs(irqSet(U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_MASK, 0, 1), []);
  t.equal(h.irqInfo(MSIX, 0).masked, true, 'masked after SET_IRQS MASK');
  t.throws(() => h.irqInfo(MSIX, 1), { message: `${P}q: IRQ index ${MSIX} has no vector 1 (it has 1)` }, 'a vector past the count');
  t.throws(() => h.irqInfo(9, 0), /IRQ index 9 is out of range/, 'an IRQ index past the PCI ones');

  const bar0 = dev.emu.barAddress(0);
  t.same(h.doorbells(), [{ id: 0, kind: 'mem', bar: 0, offset: R.REG_DOORBELL, size: 4, va: bar0 + BigInt(R.REG_DOORBELL) }], 'one MEM doorbell: the producer index in BAR0\'s shared page');
  const db = h.doorbellInfo(0);
  Atomics.store(new Int32Array(dev.emu.barMemory(0).buffer), R.REG_DOORBELL >> 2, 77);
  t.equal(db.kind === 'mem' ? new Int32Array(os.viewOf(db.va, 4))[0] : -1, 77, 'its address shows what the driver stores there');
  t.throws(() => h.doorbellInfo(3), { message: `${P}q: no doorbell 3 (ids: 0)` }, 'an unknown doorbell');

  const state = new Int32Array(h.regionMap('state'));
  t.equal(state[h.attrs().find((a) => a.name === 'status')!.word], R.STATUS_RUNNING, 'region "state" holds the attribute words');
  t.throws(() => h.regionMap('ring'), { message: `${P}q: no region "ring" (the device maps: state)` }, 'an unknown region names those there are');
  const bd = h.backendDesc();
  t.match(bd, { id: h.id, name: `${P}q`, type: 'dmatest', queues: { count: 1, stride: QUEUE_WORDS } }, 'backendDesc: the registry\'s id filled in');
  t.equal(bd.queues.words, bd.regions.state, 'queue table and attributes are the same words');
});

/** A provider with two FD doorbells in BAR0 (vfio-user ioeventfds). */
class BellProvider implements EmuProvider {
  readonly emu = new EmuDevice({ name: `${P}fd`, pci: { vendorId: 0x1b36, deviceId: 0x10f3, classCode: 0xff0000 }, bars: [{ index: 0, size: 0x1000, ioeventfds: [{ offset: 0, size: 4 }, { offset: 4, size: 4 }] }], irqs: [] });
  private readonly words = new SharedArrayBuffer(4 * (4 + QUEUE_WORDS));
  info(): EmuProviderInfo { return { type: 'bells', maxQueuePairs: 1, maxQueues: 1, maxEvents: 16 }; }
  backendDesc(): Omit<EmuBackendDesc, 'id'> {
    return {
      name: this.emu.name, type: 'bells', plane: this.emu.plane.desc(), queues: { words: this.words, base: 4, stride: QUEUE_WORDS, count: 1 }, attrs: { words: this.words, specs: [] }, generation: 0, regions: {},
      doorbells: [{ id: 0, kind: 'fd', bar: 0, offset: 0, size: 4, fd: -1 }, { id: 1, kind: 'fd', bar: 0, offset: 4, size: 4, fd: -1 }],
    };
  }
  close(): void { this.emu.close(); }
}

t.test('FD doorbells: the eventfds the client took, -1 before and after', async (t) => {
  const h = emudevAllocate(`${P}fd`, new BellProvider());
  t.teardown(() => h.release());
  t.same(h.doorbells().map((d) => [d.id, d.kind, d.kind === 'fd' ? d.fd : 0]), [[0, 'fd', -1], [1, 'fd', -1]], 'two FD doorbells, no eventfds yet');
  const fds = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)]; // the device's from setIoeventfds on
  h.emu.setIoeventfds(0, fds);
  t.same(h.doorbells().map((d) => (d.kind === 'fd' ? d.fd : 0)), fds, 'each doorbell\'s eventfd');
  t.match(h.doorbellInfo(1), { id: 1, kind: 'fd', bar: 0, offset: 4, size: 4, fd: fds[1] }, 'doorbellInfo(1)');
  h.emu.disconnected();
  t.same(h.doorbells().map((d) => (d.kind === 'fd' ? d.fd : 0)), [-1, -1], 'gone with the client');
});

t.test('a full event ring: EVENT_OVERFLOW with the lost count, then the next event; masks filter', async (t) => {
  const dev = new DmatestDevice(`${P}o`);
  const h = emudevAllocate(`${P}o`, dev);
  t.teardown(() => h.release());
  const ch = h.subscribe(1 << E.EVENT_STATUS_CHANGED, 16);
  const r = E.EmuEventReader.attach(ch.desc());
  for (let i = 0; i < 21; i++) dev.emu.postEvent(E.EVENT_STATUS_CHANGED, i);
  dev.emu.postEvent(E.EVENT_QUEUE_ENABLED, 0); // not asked for
  t.equal(ch.lost, 5, '16 fit, 5 lost');
  t.equal(ch.backlog, 16, 'a backlog of 16 unread');
  const got: number[] = [];
  for (let ty = r.next(); ty !== 0; ty = r.next()) got.push(ty === E.EVENT_STATUS_CHANGED ? r.arg : -ty);
  t.same(got, Array.from({ length: 16 }, (_, i) => i), 'the first 16 in order; the unasked type is not there');
  t.equal(ch.backlog, 0, 'none unread');
  dev.emu.postEvent(E.EVENT_STATUS_CHANGED, 99);
  t.equal(r.next(), E.EVENT_OVERFLOW, 'then EVENT_OVERFLOW');
  t.equal(r.arg, 5, 'with the lost count');
  t.equal(r.next(), E.EVENT_STATUS_CHANGED, 'then the event that fitted');
  t.same([r.arg, r.seq], [99, 22], 'its arg, and its sequence number counts the lost ones');
  t.equal(r.next(), 0, 'empty');
  h.unsubscribe(ch);
  dev.emu.postEvent(E.EVENT_STATUS_CHANGED, 1);
  t.equal(ch.lost, 5, 'an ended subscription takes no more posts');
});

t.test('events reach a back-end lcore in order, after their change; an unmap parks it; an idle one wakes from poll(2)', async (t) => {
  const dev = new DmatestDevice(`${P}l`);
  const h = emudevAllocate(`${P}l`, dev);
  t.teardown(() => h.release());
  const ch = h.subscribe(E.EVENT_ALL);
  const k = new Int32Array(new SharedArrayBuffer(4 * W.K_WORDS));
  const A = 0x10_0000, B = 0x20_0000, LEN = 0x40000;
  const arg: W.BackendWorkerArg = { backend: h.backendDesc(), channel: ch.desc(), control: k.buffer as SharedArrayBuffer, probeIova: B, sleepMs: 10_000 };
  const run = eal.lcores.launch<{ sum: number }>(1, WORKERS, 'backendWorker', arg);
  t.teardown(async () => { Atomics.store(k, W.K_HALT, 1); dev.emu.postEvent(E.EVENT_STATUS_CHANGED, 0); await run.catch(() => undefined); });
  await until('the back-end to attach', () => Atomics.load(k, W.K_ATTACHED) === 1);
  const events = (): number => Atomics.load(k, W.K_EVENTS);
  const log = (i: number): number[] => Array.from(k.subarray(W.K_LOG + i * W.LOG_WORDS, W.K_LOG + (i + 1) * W.LOG_WORDS));

  dev.emu.dmaMap(BigInt(A), BigInt(LEN), RW, memfd(t, LEN, 1), 0n);
  await until('MEM_TABLE_CHANGED 1', () => events() === 1);
  dev.emu.dmaMap(BigInt(B), BigInt(LEN), RW, memfd(t, LEN, 2), 0n);
  await until('MEM_TABLE_CHANGED 2', () => events() === 2);
  writeReg(dev, R.REG_RING_LO, A);
  writeReg(dev, R.REG_RING_HI, 0);
  writeReg(dev, R.REG_RING_ENTRIES, 32);
  writeReg(dev, R.REG_CTRL, R.CTRL_ENABLE);
  await until('QUEUE_ENABLED and STATUS_CHANGED', () => events() === 4);
  const r0 = Atomics.load(k, W.K_ROUNDS);
  await until('the back-end to read client memory', () => Atomics.load(k, W.K_ROUNDS) > r0 + 10);

  let during: number[] = [];
  dev.emu.events.once('dma-unmap', () => { // inside the change, before the munmap
    const a = Atomics.load(k, W.K_ROUNDS);
    spin(30);
    during = [a, Atomics.load(k, W.K_ROUNDS), events()];
  });
  dev.emu.dmaUnmap(BigInt(B), BigInt(LEN));
  t.equal(during[1], during[0], `parked during the unmap: no round in 30 ms (${during[0]} rounds before)`);
  t.equal(during[2], 4, 'and the event is not seen before the change is done');
  await until('MEM_TABLE_CHANGED after the unmap', () => events() === 5);
  const r1 = Atomics.load(k, W.K_ROUNDS);
  await until('the back-end to resume', () => Atomics.load(k, W.K_ROUNDS) > r1 + 10);
  t.pass(`resumed: ${Atomics.load(k, W.K_ROUNDS)} rounds over the memory left, the process alive`);
  writeReg(dev, R.REG_CTRL, 0);
  await until('QUEUE_DISABLED and STATUS_CHANGED', () => events() === 7);
  dev.emu.reset();
  await until('DEVICE_RESET', () => events() === 8);

  const { EVENT_MEM_TABLE_CHANGED: MEM, EVENT_QUEUE_ENABLED: QE, EVENT_QUEUE_DISABLED: QD, EVENT_STATUS_CHANGED: ST, EVENT_DEVICE_RESET: RST } = E;
  const seen = Array.from({ length: 8 }, (_, i) => log(i));
  t.same(seen.map(([ty, a]) => [E.EVENT_NAMES[ty], a]), [[MEM, 1], [MEM, 2], [QE, 0], [ST, 1], [MEM, 1], [QD, 0], [ST, 0], [RST, 0]].map(([ty, a]) => [E.EVENT_NAMES[ty], a]), 'map, map, enable, unmap, disable, reset: each event as posted, in order');
  t.same(seen.map((l) => l[2]), [1, 2, 3, 4, 5, 6, 7, 8], 'sequence numbers 1..8: nothing lost or reordered');
  t.same([seen[0].slice(3), seen[1].slice(3), seen[4].slice(3)], [[1, -1], [2, 0], [1, -1]], 'at each MEM_TABLE_CHANGED the back-end already has the new table (regions = arg; the probed region in, then out)');
  t.same(seen[2].slice(3), [1, 32], 'at QUEUE_ENABLED queue 0 is enabled with its 32 entries');
  t.same([seen[3][3], seen[6][3]], [R.STATUS_RUNNING, 0], 'at STATUS_CHANGED the status attribute holds the new status');
  t.same(seen[5].slice(3, 4), [0], 'at QUEUE_DISABLED queue 0 is disabled');
  t.same(seen[7].slice(3), [0, 0], 'at DEVICE_RESET queue 0 is cleared');

  // A burst without waiting: 10 enable/disable cycles, 40 events, all in order.
  for (let i = 0; i < 10; i++) {
    writeReg(dev, R.REG_RING_ENTRIES, 32);
    writeReg(dev, R.REG_CTRL, R.CTRL_ENABLE);
    writeReg(dev, R.REG_CTRL, 0);
  }
  await until('40 more events', () => events() === 48);
  const burst = Array.from({ length: 40 }, (_, i) => log(8 + i));
  const want = Array.from({ length: 10 }, () => [[QE, 0], [ST, R.STATUS_RUNNING], [QD, 0], [ST, 0]]).flat();
  t.same(burst.map(([ty, a]) => [ty, a]), want, 'a burst of 40: every event, in order');
  t.same(burst.map((l) => l[2]), Array.from({ length: 40 }, (_, i) => 9 + i), 'consecutive sequence numbers');
  t.equal(ch.lost, 0, 'none lost');

  // Idle: the back-end sleeps in poll(2) on the channel's eventfd (10 s timeout) until a post.
  Atomics.store(k, W.K_HALT, 1);
  await until('the back-end to sleep', () => Atomics.load(k, W.K_SLEEPING) === 1);
  await sleep(200);
  t.same([Atomics.load(k, W.K_SLEEPING), Atomics.load(k, W.K_POLL_RET)], [1, 0], 'still asleep 200 ms later');
  const posted = Date.now();
  h.setAttr('errors', 0);
  await until('the back-end to wake', () => Atomics.load(k, W.K_SLEEPING) === 0, 5000);
  const latency = Atomics.load(k, W.K_WOKE_AT) - (posted % 0x7fff_ffff);
  t.equal(Atomics.load(k, W.K_POLL_RET), 1, 'poll(2) returned with the eventfd readable');
  t.same([Atomics.load(k, W.K_WOKE_TYPE), Atomics.load(k, W.K_WOKE_ARG)], [E.EVENT_ATTR_CHANGED, h.attrs().findIndex((a) => a.name === 'errors')], 'the event that woke it: ATTR_CHANGED of "errors"');
  t.ok(latency >= 0 && latency < 1000, `woke ${latency} ms after the post (the timeout was 10 s)`);
  const { sum } = await run;
  t.ok(sum > 0, `the back-end read client memory (sum ${sum}) and returned`);
  t.notOk(dev.emu.plane.attached, 'and detached');
});

t.test('the example back-end (examples/emudev/backend.ts) sees each event with the state it announces', async (t) => {
  const lines: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]): void => { lines.push(a.join(' ')); };
  let code: number;
  try {
    code = await emudevBackend.main(eal, {});
  } finally {
    console.log = log;
  }
  t.equal(code, 0, 'it returns 0');
  t.same(lines.slice(0, 8), [
    '#1 mem-table-changed: 1 regions (1 table slots here)',
    '#2 queue-enabled: queue 0: 16 entries at 0x100000, doorbell 0, vector 0; first descriptor copies 1234 bytes',
    '#3 status-changed: status 1 (attribute "status": 1)',
    '#4 attr-changed: attribute "errors" = 0',
    '#5 queue-disabled: arg 0',
    '#6 status-changed: status 0 (attribute "status": 0)',
    '#7 mem-table-changed: 0 regions (0 table slots here)',
    '#8 device-reset: queue 0 disabled',
  ], 'the lines it prints: the descriptor read through the main thread (memory without fd), every event in order');
  t.match(lines[8], /^device \d+ "emudev-example": \{"type":"dmatest"/, 'and the device\'s info');
});

t.test('dmatest started through the registry: configure lcore=1, start, a copy, stop frees the lcore, start again', async (t) => {
  const dev = new DmatestDevice(`${P}s`, { eal });
  const h = emudevAllocate(`${P}s`, dev);
  t.teardown(() => h.release());
  h.configure({ lcore: '1' });
  await h.start();
  t.ok(dev.started && h.started, 'the engine polls on lcore 1');
  const SIZE = 0x10000, IOVA = 0x100_0000;
  const fd = memfd(t, SIZE, 0);
  const va = os.mmap(0n, SIZE, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  t.teardown(() => os.munmap(va, SIZE));
  const mem = new Uint8Array(os.viewOf(va, SIZE)), dv = new DataView(mem.buffer);
  dev.emu.dmaMap(BigInt(IOVA), BigInt(SIZE), RW, fd, 0n);
  writeReg(dev, R.REG_RING_LO, IOVA);
  writeReg(dev, R.REG_RING_HI, 0);
  writeReg(dev, R.REG_RING_ENTRIES, 4);
  writeReg(dev, R.REG_CTRL, R.CTRL_ENABLE);
  const bar = new Uint32Array(dev.emu.barMemory(0).buffer);
  let producer = 0;
  const copy = async (src: number, dst: number, len: number): Promise<void> => {
    const o = (producer & 3) * R.DESC_SIZE;
    for (let i = 0; i < len; i++) mem[src + i] = (i * 7 + producer) & 0xff;
    dv.setBigUint64(o + R.DESC_SRC, BigInt(IOVA + src), true);
    dv.setBigUint64(o + R.DESC_DST, BigInt(IOVA + dst), true);
    dv.setUint32(o + R.DESC_LEN, len, true);
    producer++;
    Atomics.store(bar, R.REG_DOORBELL >> 2, producer);
    await until('the copy', () => Atomics.load(bar, R.REG_CONSUMER >> 2) === producer);
  };
  await copy(0x1000, 0x8000, 3000);
  t.ok(Buffer.from(mem.subarray(0x8000, 0x8000 + 3000)).equals(mem.subarray(0x1000, 0x1000 + 3000)), 'the engine copied');
  t.equal(h.getAttr('completed'), 1, 'attribute "completed": 1');
  await h.stop();
  t.notOk(dev.started || dev.emu.plane.attached, 'stop: the engine left its lcore');
  await h.start();
  t.ok(dev.started, 'started again on the configured lcore');
  await copy(0x2000, 0x9000, 100);
  t.equal(h.getAttr('completed'), 2, 'and copies again');
});
