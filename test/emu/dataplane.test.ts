/**
 * The emudev data plane (lib/emudev/dataplane.ts) with a real worker lcore: table publish and
 * reload, translation bounds and permissions, IRQs through an eventfd (masked, pending, delivered
 * on unmask; INTx automask), the mailbox for memory without fd, the pause handshake (quiesce returns
 * only while the worker is parked; a worker that never services times out; a worker attaching
 * during a change parks), DMA_UNMAP of memory a worker reads in a tight loop (never a crash), and
 * the dmatest engine on its lcore: copies, idle cost, unmaps and resets while descriptors are in
 * flight, then serving the next client. Two lcores attached to one device at once: unmaps while
 * both read, attaching during a change, detach of one, the maximum, the mailbox taken in turn.
 *
 * Worker lcores 1 and 2 share the second CPU: never more than two busy CPUs. Lcore 3 (the first CPU)
 * runs only a worker that mostly waits for the mailbox, so that two requests really race for it.
 */
import t from 'tap';
import { fstatSync, readdirSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { Eal } from '../../src/eal.js';
import { siblingModule } from '../../src/lcore/module.js';
import { DataPlane, DataPlaneControl, MAX_PLANE_LCORES, type PlaneMemoryAccess, type PlaneRegion } from '../../lib/emudev/dataplane.js';
import { EmuDevice } from '../../lib/emudev/emudev.js';
import { DmatestDevice } from '../../drivers/emu/dmatest/dmatest.js';
import * as R from '../../lib/dmatest/regs.js';
import * as W from './dataplane-workers.js';

const WORKERS = siblingModule(import.meta.url, 'dataplane-workers');
const RW = 3, RD = 1, WR = 2;
const MSIX = U.VFIO_PCI_MSIX_IRQ_INDEX, INTX = U.VFIO_PCI_INTX_IRQ_INDEX;
const cpus = os.getAffinity();
const eal = new Eal({ noHuge: true, filePrefix: `tspdp${process.pid}`, memoryMb: 1, lcores: [{ id: 0, cpu: cpus[0] }, { id: 1, cpu: cpus[1] ?? cpus[0] }, { id: 2, cpu: cpus[1] ?? cpus[0] }, { id: 3, cpu: cpus[0] }], mainLcore: 0 });
t.teardown(() => eal.close());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Busy-wait on this thread (the worker must not get the event loop's help). */
function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) { /* spin */ }
}
async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

/** A planeWorker on an lcore (1 unless told) and the test's end of its command block. */
class Worker {
  readonly c = new Int32Array(new SharedArrayBuffer(4 * W.C_WORDS));
  readonly data = new Uint8Array(new SharedArrayBuffer(256 * 1024));
  readonly run: Promise<{ reloads: number }>;
  private seq = 0;

  constructor(plane: DataPlaneControl, gated = false, lcore = 1) {
    const arg: W.PlaneWorkerArg = { plane: plane.desc(), cmd: this.c.buffer as SharedArrayBuffer, data: this.data.buffer as SharedArrayBuffer, gated };
    this.run = eal.lcores.launch(lcore, WORKERS, 'planeWorker', arg);
  }

  attached(): Promise<void> {
    return until('the worker to attach', () => Atomics.load(this.c, W.C_ATTACH) === 2);
  }

  /** Post a command; returns a promise of its 16 result words. */
  post(op: number, args: number[] = []): Promise<number[]> {
    args.forEach((v, i) => Atomics.store(this.c, W.C_ARG + i, v | 0));
    Atomics.store(this.c, W.C_OP, op);
    const s = ++this.seq;
    Atomics.store(this.c, W.C_REQ, s);
    return until(`command ${op}`, () => Atomics.load(this.c, W.C_DONE) === s).then(() => Array.from(this.c.subarray(W.C_RES, W.C_RES + 16)));
  }

  /** Translate: [offset or -1/-2, hit, regions, generation, byte at the offset]. */
  at(iova: number, len: number, write: boolean): Promise<number[]> {
    return this.post(W.OP_AT, [iova % 0x1_0000_0000, Math.floor(iova / 0x1_0000_0000), len, write ? 1 : 0]);
  }

  async exit(): Promise<{ reloads: number }> {
    await this.post(W.OP_EXIT);
    return this.run;
  }
}

const noMemory: PlaneMemoryAccess = {
  read: () => Promise.reject(new Error('no client memory')),
  write: () => Promise.reject(new Error('no client memory')),
};

/** Anonymous memory that a test unmaps at teardown. */
function anon(t: { teardown(fn: () => unknown): void }, len: number): { va: bigint; u8: Uint8Array } {
  const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS, -1, 0);
  t.teardown(() => os.munmap(va, len));
  return { va, u8: new Uint8Array(os.viewOf(va, len)) };
}

t.test('publish and reload; translation bounds and permissions (-1, -2)', async (t) => {
  const ctl = new DataPlaneControl('tables', [0, 0, 0, 0, 0], 16, noMemory);
  t.teardown(() => ctl.close());
  const a = anon(t, 0x4000), b = anon(t, 0x1000), c = anon(t, 0x1000);
  a.u8[0] = 0x11; a.u8[0x3fff] = 0x22; b.u8[5] = 0x33; c.u8[7] = 0x44;
  const w = new Worker(ctl);
  await w.attached();
  t.ok(ctl.attached, 'attached');
  const [, , regions0, gen0] = await w.post(W.OP_INFO);
  t.equal(regions0, 0, 'no regions yet');
  const table: PlaneRegion[] = [
    { iova: 0x10000n, len: 0x4000, flags: RW, va: a.va },
    { iova: 0x14000n, len: 0x1000, flags: RD, va: b.va }, // adjacent to A
    { iova: 0x30000n, len: 0x1000, flags: WR, va: c.va },
    { iova: 0x40000n, len: 0x1000, flags: RW, va: 0n }, // no fd: the mailbox
    { iova: 1n << 53n, len: 0x1000, flags: RW, va: a.va }, // not expressible as a number: skipped
  ];
  ctl.quiesce(() => ctl.publishDma(table));
  const [, , regions1, gen1] = await w.post(W.OP_INFO);
  t.equal(regions1, 4, 'the published table, without the region at 2^53');
  t.equal(gen1, gen0 + 1, 'reloaded once');
  const [, , , gen2] = await w.post(W.OP_INFO);
  t.equal(gen2, gen1, 'no change: no reload');
  const cases: Array<[string, number, number, boolean, number, number]> = [
    // what, iova, len, write, expected offset, expected byte
    ['start of A, whole region', 0x10000, 0x4000, false, 0, 0x11],
    ['last byte of A, write', 0x13fff, 1, true, 0x3fff, 0x22],
    ['A crossing its end into B', 0x13fff, 2, false, -1, -1],
    ['below A', 0xffff, 2, false, -1, -1],
    ['B read', 0x14005, 1, false, 5, 0x33],
    ['B (read-only) write', 0x14000, 4, true, -1, -1],
    ['C (write-only) read', 0x30000, 4, false, -1, -1],
    ['C write', 0x30007, 1, true, 7, 0x44],
    ['D without fd', 0x40000, 16, false, -2, -1],
    ['D without fd, write', 0x40ff0, 16, true, -2, -1],
    ['D past its end', 0x40ff0, 17, false, -1, -1],
    ['unmapped', 0x50000, 1, false, -1, -1],
  ];
  for (const [what, iova, len, write, off, byte] of cases) {
    const [o, , , , b8] = await w.at(iova, len, write);
    t.same([o, b8], [off, byte], what);
  }
  ctl.quiesce(() => ctl.publishDma([{ iova: 0x10000n, len: 0x1000, flags: RD, va: b.va }]));
  const [o, , regions2, gen3, b8] = await w.at(0x10005, 1, false);
  t.same([o, b8, regions2, gen3], [5, 0x33, 1, gen1 + 1], 'a new table: the same IOVA now reaches the new memory');
  t.equal((await w.at(0x30000, 1, true))[0], -1, 'the old regions are gone');
  ctl.quiesce(() => ctl.publishDma([]));
  t.equal((await w.at(0x10000, 1, false))[0], -1, 'empty table');
  const r = await w.exit();
  t.ok(r.reloads >= 4, `reloads seen by the worker: ${r.reloads}`);
  t.notOk(ctl.attached, 'detached');
});

t.test('IRQs through an eventfd: masked -> pending -> delivered on unmask; INTx automask', async (t) => {
  const ctl = new DataPlaneControl('irqs', [1, 0, 2, 0, 0], 4, noMemory);
  t.teardown(() => ctl.close());
  const efd = os.eventfd(0, os.EFD_NONBLOCK), intx = os.eventfd(0, os.EFD_NONBLOCK);
  t.teardown(() => { os.close(efd); os.close(intx); });
  const cnt = new Uint8Array(8);
  const take = (fd: number): number => (os.pollOne(fd, os.POLLIN, 0) & os.POLLIN ? (os.read(fd, cnt), Number(new DataView(cnt.buffer).getBigUint64(0, true))) : 0);
  const w = new Worker(ctl);
  await w.attached();
  t.equal((await w.post(W.OP_IRQ, [MSIX, 0]))[0], 0, 'no eventfd yet: not signalled');
  ctl.quiesce(() => { ctl.setIrqFd(MSIX, 0, efd); ctl.setIrqFd(INTX, 0, intx); });
  t.equal((await w.post(W.OP_IRQ, [MSIX, 0]))[0], 1, 'signalled');
  t.equal(take(efd), 1, 'the eventfd counted one interrupt');
  t.equal((await w.post(W.OP_IRQ, [MSIX, 1]))[0], 0, 'vector 1 has no eventfd');
  t.equal((await w.post(W.OP_IRQ, [MSIX, 2]))[0], 0, 'vector out of range: false, no throw');
  t.equal((await w.post(W.OP_IRQ, [7, 0]))[0], 0, 'index out of range: false');
  ctl.quiesce(() => ctl.setIrqMasked(MSIX, 0, true));
  t.equal((await w.post(W.OP_IRQ, [MSIX, 0]))[0], 0, 'masked: held');
  t.equal((await w.post(W.OP_IRQ, [MSIX, 0]))[0], 0, 'masked: held (twice)');
  t.equal(os.pollOne(efd, os.POLLIN, 50), 0, 'nothing delivered while masked');
  let pending = false;
  ctl.quiesce(() => { pending = ctl.setIrqMasked(MSIX, 0, false); });
  t.ok(pending, 'unmask reports the pending interrupt');
  t.ok(ctl.triggerIrq(MSIX, 0), 'and delivers it');
  t.equal(take(efd), 1, 'one interrupt for the two held');
  t.notOk(ctl.setIrqMasked(MSIX, 0, false), 'nothing pending any more');
  t.equal((await w.post(W.OP_IRQ, [INTX, 0]))[0], 1, 'INTx signalled');
  t.equal((await w.post(W.OP_IRQ, [INTX, 0]))[0], 0, 'INTx automasked: the second is held');
  t.equal(take(intx), 1);
  t.ok(ctl.setIrqMasked(INTX, 0, false), 'INTx unmask: pending');
  // unmasks racing with the worker raising the vector (no quiesce): every raise is delivered once
  let delivered = 0;
  for (let i = 0; i < 200; i++) {
    ctl.setIrqMasked(MSIX, 0, true);
    const p = w.post(W.OP_IRQ, [MSIX, 0]);
    spin(Math.random() * 0.05);
    if (ctl.setIrqMasked(MSIX, 0, false)) ctl.triggerIrq(MSIX, 0);
    await p;
    delivered += take(efd);
  }
  t.equal(delivered, 200, 'masks and unmasks without quiesce racing 200 raises: none lost, none doubled');
  ctl.quiesce(() => ctl.setIrqFd(MSIX, 0, -1));
  t.equal((await w.post(W.OP_IRQ, [MSIX, 0]))[0], 0, 'eventfd removed: not signalled');
  await w.exit();
});

t.test('mailbox: memory without fd read and written through the main thread', async (t) => {
  const BASE = 0x9000_0000, SIZE = 200 * 1024;
  const client = new Uint8Array(randomBytes(SIZE));
  let slowUntil = 0, reads = 0, writes = 0;
  const memory: PlaneMemoryAccess = {
    read: async (iova, len) => {
      reads++;
      const off = Number(iova) - BASE;
      await sleep(Date.now() < slowUntil ? 300 : 0); // a slow client
      if (off < 0 || off + len > SIZE) throw new Error('EFAULT');
      return client.slice(off, off + len);
    },
    write: async (iova, data) => {
      writes++;
      const off = Number(iova) - BASE;
      await sleep(0);
      if (off < 0 || off + data.byteLength > SIZE) throw new Error('EFAULT');
      client.set(data, off);
    },
  };
  const ctl = new DataPlaneControl('mail', [0, 0, 0, 0, 0], 4, memory);
  t.teardown(() => ctl.close());
  const w = new Worker(ctl);
  await w.attached();
  ctl.quiesce(() => ctl.publishDma([{ iova: BigInt(BASE), len: SIZE, flags: RW, va: 0n }]));
  t.equal((await w.at(BASE, 16, false))[0], -2, 'at(): memory without fd');
  const n = 150_000; // more than one bounce buffer (64 KiB)
  t.equal((await w.post(W.OP_MREAD, [BASE + 1000, 0, n]))[0], 1, 'messageRead ok');
  t.ok(Buffer.from(w.data.subarray(0, n)).equals(client.subarray(1000, 1000 + n)), `${n} bytes read in ${reads} pieces`);
  t.equal(reads, 3, 'in 64 KiB pieces');
  const pattern = randomBytes(70_000);
  w.data.set(pattern);
  t.equal((await w.post(W.OP_MWRITE, [BASE + 5, 0, pattern.byteLength]))[0], 1, 'messageWrite ok');
  t.ok(Buffer.from(client.subarray(5, 5 + pattern.byteLength)).equals(pattern), 'written into client memory');
  t.equal(writes, 2);
  t.equal((await w.post(W.OP_MREAD, [BASE + SIZE - 10, 0, 20]))[0], 0, 'a failing read: false');
  t.equal((await w.post(W.OP_MWRITE, [BASE - 10, 0, 20]))[0], 0, 'a failing write: false');
  // A change while the worker waits for the main thread: the worker pauses inside the wait.
  slowUntil = Date.now() + 10_000;
  const genBefore = (await w.post(W.OP_INFO))[3];
  const pending = w.post(W.OP_MREAD, [BASE, 0, 64]);
  await sleep(50);
  const t0 = performance.now();
  ctl.quiesce(() => ctl.publishDma([{ iova: BigInt(BASE), len: SIZE, flags: RW, va: 0n }, { iova: 0x1000n, len: 0x1000, flags: RW, va: 0n }]));
  const pauseMs = performance.now() - t0;
  t.ok(pauseMs < 2000, `quiesce while the worker waits in the mailbox: ${pauseMs.toFixed(1)} ms`);
  slowUntil = 0;
  const [ok, , regions, gen] = await pending;
  t.same([ok, regions, gen], [1, 2, genBefore + 1], 'the read completes; the new table was loaded while waiting');
  t.ok(Buffer.from(w.data.subarray(0, 64)).equals(client.subarray(0, 64)), 'with the right bytes');
  await w.exit();
});

t.test('pause handshake: quiesce returns only while the worker is parked; timeout; attach during a change', async (t) => {
  const ctl = new DataPlaneControl('pause', [0, 0, 0, 0, 0], 4, noMemory);
  t.teardown(() => ctl.close());
  t.equal(ctl.quiesce(() => 42), 42, 'no worker: runs at once and returns fn\'s value');
  const w = new Worker(ctl);
  await w.attached();
  const counting = w.post(W.OP_COUNT);
  await until('the worker to count', () => Atomics.load(w.c, W.C_COUNTER) > 1000);
  let moved = 0, nested = 0;
  const N = 1000;
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    ctl.quiesce(() => {
      const a = Atomics.load(w.c, W.C_COUNTER);
      spin(0.02);
      ctl.quiesce(() => { nested++; }); // nests without another handshake
      if (Atomics.load(w.c, W.C_COUNTER) !== a) moved++;
    });
    if (i % 100 === 0) spin(0.5); // let it run between some of them
  }
  const ms = performance.now() - t0;
  t.equal(moved, 0, `${N} back-to-back quiesces: the worker never moved while one was held (${(ms * 1000 / N).toFixed(0)} µs each)`);
  t.equal(nested, N);
  const before = Atomics.load(w.c, W.C_COUNTER);
  await sleep(20);
  t.ok(Atomics.load(w.c, W.C_COUNTER) > before, 'released: it runs again');
  Atomics.store(w.c, W.C_HALT, 1);
  await counting;
  Atomics.store(w.c, W.C_HALT, 0);

  const blocked = w.post(W.OP_BLOCK, [2000]);
  await until('the worker to block', () => Atomics.load(w.c, W.C_BLOCKING) === 1);
  ctl.pauseTimeoutMs = 300;
  const t1 = Date.now();
  t.throws(() => ctl.quiesce(() => t.fail('fn must not run')), /pause: the device's lcore did not pause within 300 ms/, 'a worker that never services: a clear error');
  t.ok(Date.now() - t1 >= 290, 'after the timeout');
  await blocked;
  ctl.pauseTimeoutMs = 5000;
  t.equal(ctl.quiesce(() => 'ok'), 'ok', 'servicing again: quiesce works');
  await w.exit();

  // A worker attaching while a change is under way parks in attach() until it is done.
  const g = new Worker(ctl, true);
  await eal.lcores.waitStarted(); // its task is posted from the event loop: running, gated before attach()
  let state = -1, attachedInside = false;
  ctl.quiesce(() => {
    Atomics.store(g.c, W.C_GO, 1);
    Atomics.notify(g.c, W.C_GO);
    const deadline = Date.now() + 20_000;
    while (Atomics.load(g.c, W.C_ATTACH) === 0 && Date.now() < deadline) spin(1);
    spin(100);
    state = Atomics.load(g.c, W.C_ATTACH);
    attachedInside = ctl.attached;
  });
  t.equal(state, 1, 'the worker is inside attach() and has not returned from it during the change');
  t.ok(attachedInside, 'it registered as attached, and waits');
  await t.resolves(g.attached(), 'it returns once the change is done');
  await g.exit();
});

t.test('DMA_UNMAP of memory a worker reads in a tight loop never crashes the process', async (t) => {
  const dev = new EmuDevice({ name: 'hammer', pci: { vendorId: 0x1b36, deviceId: 0x10f1, classCode: 0xff0000 }, bars: [], irqs: [] });
  t.teardown(() => dev.close());
  const w = new Worker(dev.plane);
  await w.attached();
  const SIZE = 256 * 1024;
  const fds = [0, 1, 2].map((i) => { const fd = os.memfdCreate(`tsp-hammer${i}`, os.MFD_ALLOW_SEALING); os.ftruncate(fd, SIZE); return fd; });
  t.teardown(() => fds.forEach((fd) => os.close(fd)));
  dev.dmaMap(0x100_0000n, BigInt(SIZE), RW, fds[0], 0n); // stays mapped throughout
  const hammer = w.post(W.OP_HAMMER, [0, 0, 0]);
  await sleep(10);
  const CYCLES = 1000;
  const t0 = Date.now();
  let maps = 0;
  for (let i = 0; i < CYCLES; i++) {
    const iova = 0x200_0000n + BigInt((i % 7) * SIZE);
    dev.dmaMap(iova, BigInt(SIZE), i % 3 === 0 ? RD : RW, fds[1], 0n);
    const off = BigInt((i % 4) * 4096);
    dev.dmaMap(0x800_0000n + off, BigInt(SIZE / 2), RW, fds[2], off);
    maps += 2;
    if (i % 4 === 0) await sleep(0); // let the worker read them for a while
    else spin(Math.random() * 0.3);
    if (i % 50 === 49) {
      dev.disconnected(); // everything at once, the persistent region too
      dev.dmaMap(0x100_0000n, BigInt(SIZE), RW, fds[0], 0n);
    } else {
      dev.dmaUnmap(iova, BigInt(SIZE));
      dev.dmaUnmap(0x800_0000n + off, BigInt(SIZE / 2));
    }
  }
  Atomics.store(w.c, W.C_HALT, 1);
  const [passes, reloads] = await hammer;
  t.ok(passes > 0, `the worker read every mapped byte (1 per 64) in ${passes} passes across ${maps} maps and their unmaps in ${Date.now() - t0} ms`);
  t.ok(reloads > 10, `it rebuilt its views ${reloads} times (changes made while it was parked coalesce)`);
  t.equal(dev.dmaRegions().length, 1, 'the persistent region is left');
  const end = await w.exit();
  t.ok(end.reloads >= reloads, `the worker answers its exit command and returns normally, ${end.reloads} reloads in all`);
  t.notOk(dev.plane.attached, 'and has detached from the plane');
});

t.test('two lcores attached to one device: DMA unmaps while both translate and read client memory in a loop', async (t) => {
  const dev = new EmuDevice({ name: 'hammer2', pci: { vendorId: 0x1b36, deviceId: 0x10f1, classCode: 0xff0000 }, bars: [], irqs: [] });
  t.teardown(() => dev.close());
  const a = new Worker(dev.plane, false, 1), b = new Worker(dev.plane, false, 2);
  await a.attached();
  await b.attached();
  t.equal(dev.plane.attachedCount, 2, 'both attached at once');
  const SIZE = 256 * 1024, KEEP = 0x100_0000, COMES = 0x200_0000;
  const fds = [0, 1, 2, 3].map((i) => { const fd = os.memfdCreate(`tsp-hammer2-${process.pid}-${i}`, os.MFD_ALLOW_SEALING); os.ftruncate(fd, SIZE); return fd; });
  t.teardown(() => fds.forEach((fd) => os.close(fd)));
  dev.dmaMap(BigInt(KEEP), BigInt(SIZE), RW, fds[0], 0n); // mapped throughout (as far as the lcores can see)
  // a translates into the region that stays, b into one that comes and goes
  const ha = a.post(W.OP_HAMMER, [KEEP + 0x100, 0, 64]), hb = b.post(W.OP_HAMMER, [COMES + 0x100, 0, 64]);
  await until('both lcores to read', () => Atomics.load(a.c, W.C_COUNTER) > 0 && Atomics.load(b.c, W.C_COUNTER) > 0);
  const CYCLES = 300;
  let moved = 0, unmaps = 0;
  const t0 = Date.now();
  for (let i = 0; i < CYCLES; i++) {
    const iova = BigInt(COMES + (i % 3) * SIZE), off = BigInt((i % 4) * 4096);
    dev.dmaMap(iova, BigInt(SIZE), i % 5 === 0 ? RD : RW, fds[1], 0n);
    dev.dmaMap(0x800_0000n + off, BigInt(SIZE / 2), RW, fds[2], off);
    if (i % 4 === 0) await sleep(0); // let them read for a while
    else spin(Math.random() * 0.3);
    // The unmaps inside one more pause, watched: neither lcore may finish a pass meanwhile.
    dev.plane.quiesce(() => {
      const ca = Atomics.load(a.c, W.C_COUNTER), cb = Atomics.load(b.c, W.C_COUNTER);
      if (i % 50 === 49) {
        dev.disconnected(); // everything at once; the lasting region is back before they resume
        dev.dmaMap(BigInt(KEEP), BigInt(SIZE), RW, fds[0], 0n);
      } else {
        dev.dmaUnmap(iova, BigInt(SIZE));
        dev.dmaUnmap(0x800_0000n + off, BigInt(SIZE / 2));
      }
      unmaps += 2;
      spin(0.2);
      if (Atomics.load(a.c, W.C_COUNTER) !== ca || Atomics.load(b.c, W.C_COUNTER) !== cb) moved++;
    });
  }
  const ms = Date.now() - t0;
  Atomics.store(a.c, W.C_HALT, 1);
  Atomics.store(b.c, W.C_HALT, 1);
  const [ra, rb] = await Promise.all([ha, hb]);
  t.equal(moved, 0, `${CYCLES} watched pauses around ${unmaps} unmaps (and ${CYCLES * 2} maps) in ${ms} ms: neither lcore read on while one was held`);
  t.ok(ra[0] > 0 && rb[0] > 0, `both read every mapped byte (1 per 64) meanwhile: ${ra[0]} and ${rb[0]} passes`);
  t.ok(ra[1] > 10 && rb[1] > 10, `both rebuilt their own views: ${ra[1]} and ${rb[1]} times`);
  t.same([ra[4] > 0, ra[5]], [true, 0], `the lasting region translated on every one of ${ra[4]} passes`);
  t.ok(rb[5] > 0, `the coming and going one: ${rb[4]} hits, ${rb[5]} misses`);
  Atomics.store(a.c, W.C_HALT, 0);
  Atomics.store(b.c, W.C_HALT, 0);
  // Fresh views after it all: a new region with known bytes, reached by both.
  const fresh = new Uint8Array(SIZE).fill(0x77);
  fresh[0x1234] = 0xa5;
  os.pwrite(fds[3], fresh, SIZE, 0);
  dev.dmaMap(0x300_0000n, BigInt(SIZE), RD, fds[3], 0n);
  for (const [name, w] of [['a', a], ['b', b]] as const) {
    const [o, , regions, , byte] = await w.at(0x300_1234, 1, false);
    t.same([o, byte, regions], [0x1234, 0xa5, 2], `lcore ${name}: the new region's byte through fresh views, beside the lasting region`);
  }
  await a.exit();
  await b.exit();
  t.equal(dev.plane.attachedCount, 0, 'both detached');
});

t.test('two lcores on one plane: the second attaching during a change parks; detach of one leaves the other working; the most that attach', async (t) => {
  const ctl = new DataPlaneControl('pair', [0, 0, 0, 0, 0], 4, noMemory);
  t.teardown(() => ctl.close());
  const m1 = anon(t, 0x1000), m2 = anon(t, 0x1000);
  m1.u8[1] = 0x31; m2.u8[2] = 0x42;
  const a = new Worker(ctl, false, 1), b = new Worker(ctl, true, 2);
  await a.attached();
  await eal.lcores.waitStarted(); // b runs, gated before attach()
  let state = -1, count = -1;
  ctl.quiesce(() => {
    Atomics.store(b.c, W.C_GO, 1);
    Atomics.notify(b.c, W.C_GO);
    const deadline = Date.now() + 20_000;
    while (Atomics.load(b.c, W.C_ATTACH) === 0 && Date.now() < deadline) spin(1);
    spin(100);
    state = Atomics.load(b.c, W.C_ATTACH);
    count = ctl.attachedCount;
  });
  t.same([state, count], [1, 2], 'b, attaching beside a during a change, registered and parked in attach() until it was done');
  await t.resolves(b.attached(), 'then it returns from attach()');
  ctl.quiesce(() => ctl.publishDma([{ iova: 0x10000n, len: 0x1000, flags: RW, va: m1.va }]));
  t.same([(await a.at(0x10001, 1, false))[4], (await b.at(0x10001, 1, false))[4]], [0x31, 0x31], 'both translate the published table');

  // The most: up to MAX_PLANE_LCORES (these extra ones on this thread, which services no pause: none is asked for meanwhile).
  const extra: DataPlane[] = [];
  t.teardown(() => extra.forEach((p) => p.detach()));
  for (let i = 2; i < MAX_PLANE_LCORES; i++) extra.push(DataPlane.attach(ctl.desc()));
  t.equal(ctl.attachedCount, MAX_PLANE_LCORES, `${MAX_PLANE_LCORES} attached`);
  t.throws(() => DataPlane.attach(ctl.desc()), new RegExp(`^pair: ${MAX_PLANE_LCORES} lcores already run this device's data plane, the most it takes: detach one first$`), 'one more: a clear error');
  t.equal(ctl.attachedCount, MAX_PLANE_LCORES, 'the refused attach took no slot');
  extra.pop()!.detach();
  extra.push(DataPlane.attach(ctl.desc()));
  t.equal(ctl.attachedCount, MAX_PLANE_LCORES, 'a detached slot is taken again');
  extra.forEach((p) => p.detach());
  extra[0].detach(); // a second detach changes nothing
  extra.length = 0;
  t.equal(ctl.attachedCount, 2, 'back to the two lcores');

  // a leaves; b goes on, and pauses wait for b alone.
  await a.exit();
  t.equal(ctl.attachedCount, 1, 'one left');
  const counting = b.post(W.OP_COUNT);
  await until('b to count', () => Atomics.load(b.c, W.C_COUNTER) > 100);
  let moved = 0;
  const t0 = performance.now();
  for (let i = 0; i < 200; i++) {
    ctl.quiesce(() => {
      const c = Atomics.load(b.c, W.C_COUNTER);
      ctl.publishDma([{ iova: 0x10000n, len: 0x1000, flags: RW, va: i % 2 ? m2.va : m1.va }]);
      spin(0.02);
      if (Atomics.load(b.c, W.C_COUNTER) !== c) moved++;
    });
  }
  const us = (performance.now() - t0) * 1000 / 200;
  t.equal(moved, 0, `200 pauses after a left: b parked in each (${us.toFixed(0)} µs each)`);
  Atomics.store(b.c, W.C_HALT, 1);
  await counting;
  Atomics.store(b.c, W.C_HALT, 0);
  t.equal((await b.at(0x10002, 1, false))[4], 0x42, 'b reads the last table');

  // A new lcore takes the freed slot and both pause again.
  const c = new Worker(ctl, false, 1);
  await c.attached();
  t.equal(ctl.attachedCount, 2, 'a new lcore attached beside b');
  ctl.quiesce(() => ctl.publishDma([{ iova: 0x20000n, len: 0x1000, flags: RD, va: m1.va }]));
  t.same([(await b.at(0x20001, 1, false))[4], (await c.at(0x20001, 1, false))[4]], [0x31, 0x31], 'both see the next table');
  // One that stops servicing: the error counts it among the attached.
  const blocked = c.post(W.OP_BLOCK, [1500]);
  await until('c to block', () => Atomics.load(c.c, W.C_BLOCKING) === 1);
  ctl.pauseTimeoutMs = 300;
  t.throws(() => ctl.quiesce(() => t.fail('fn must not run')), /^pair: 1 of the device's 2 lcores did not pause within 300 ms/, 'one of two that never services: a clear error');
  ctl.pauseTimeoutMs = 5000;
  await blocked;
  t.equal(ctl.quiesce(() => 'ok'), 'ok', 'servicing again: quiesce works');
  await b.exit();
  await c.exit();
  t.notOk(ctl.attached, 'none attached');
});

t.test('mailbox: requests from two lcores at once, each answered with its own bytes', async (t) => {
  const BASE = 0xa000_0000, SIZE = 1 << 20, WBASE = 0xb000_0000, WSIZE = 64 * 1024;
  const client = Uint8Array.from({ length: SIZE }, (_, i) => W.patternByte(i));
  const written = new Uint8Array(WSIZE);
  let reads = 0;
  const memory: PlaneMemoryAccess = {
    read: async (iova, len) => {
      reads++;
      await sleep(0);
      const off = Number(iova) - BASE;
      if (off < 0 || off + len > SIZE) throw new Error('EFAULT');
      return client.slice(off, off + len);
    },
    write: async (iova, data) => {
      await sleep(0);
      const off = Number(iova) - WBASE;
      if (off < 0 || off + data.byteLength > WSIZE) throw new Error('EFAULT');
      written.set(data, off);
    },
  };
  const ctl = new DataPlaneControl('mail2', [0, 0, 0, 0, 0], 4, memory);
  t.teardown(() => ctl.close());
  const table: PlaneRegion[] = [{ iova: BigInt(BASE), len: SIZE, flags: RD, va: 0n }, { iova: BigInt(WBASE), len: WSIZE, flags: WR, va: 0n }];
  const a = new Worker(ctl, false, 1), b = new Worker(ctl, false, 3);
  await a.attached();
  await b.attached();
  ctl.quiesce(() => ctl.publishDma(table));
  // Reads of 100 000 bytes (two bounce-buffer pieces each) at different offsets from both at once,
  // with pauses (the same table published again) while they wait.
  const N = 60, LEN = 100_000;
  const pa = a.post(W.OP_MCHECK, [BASE, 0, N, LEN, SIZE, 1]), pb = b.post(W.OP_MCHECK, [BASE, 0, N, LEN, SIZE, 2]);
  let done = false, pauses = 0;
  void Promise.all([pa, pb]).then(() => { done = true; });
  while (!done) {
    await sleep(3);
    ctl.quiesce(() => ctl.publishDma(table));
    pauses++;
  }
  const [ra, rb] = await Promise.all([pa, pb]);
  t.same([ra[0], ra[1], ra[4]], [N, 0, 0], `lcore 1: ${N} reads of ${LEN} bytes, every byte right`);
  t.same([rb[0], rb[1], rb[4]], [N, 0, 0], `lcore 3: ${N} reads of ${LEN} bytes, every byte right`);
  t.equal(reads, 2 * N * 2, `${reads} requests served, each once, ${pauses} pauses while they waited`);
  // Writes from both at once to their own halves, a few times over.
  for (let r = 0; r < 10; r++) {
    const da = randomBytes(WSIZE / 2), db = randomBytes(WSIZE / 2);
    a.data.set(da);
    b.data.set(db);
    const [wa, wb] = await Promise.all([a.post(W.OP_MWRITE, [WBASE, 0, WSIZE / 2]), b.post(W.OP_MWRITE, [WBASE + WSIZE / 2, 0, WSIZE / 2])]);
    if (wa[0] !== 1 || wb[0] !== 1 || !Buffer.from(written.subarray(0, WSIZE / 2)).equals(da) || !Buffer.from(written.subarray(WSIZE / 2)).equals(db)) {
      t.fail(`round ${r}: writes from both at once: ${wa[0]}, ${wb[0]}, the client memory holds ${Buffer.from(written.subarray(0, WSIZE / 2)).equals(da) ? 'a\'s' : 'not a\'s'} bytes and ${Buffer.from(written.subarray(WSIZE / 2)).equals(db) ? 'b\'s' : 'not b\'s'}`);
      break;
    }
    if (r === 9) t.pass('10 rounds of writes from both at once: each lands in its own half whole');
  }
  await a.exit();
  await b.exit();
});

/** Write a 32-bit register of dmatest BAR0 as a client's REGION_WRITE would. */
function writeReg(d: DmatestDevice, off: number, v: number): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  d.emu.regionWrite(0, BigInt(off), b);
}
function readReg(d: DmatestDevice, off: number): number {
  return new DataView(d.emu.regionRead(0, BigInt(off), 4).buffer).getUint32(0, true);
}

/** CPU ticks (user + system) of this process's thread named name. */
function threadTicks(name: string): number {
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      if (readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() !== name) continue;
      const f = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
      return Number(f[11]) + Number(f[12]);
    } catch { /* gone */ }
  }
  return -1;
}

t.test('dmatest engine on its lcore: copies and checksums, idle cost, unmaps and resets in flight, the next client', async (t) => {
  const dev = new DmatestDevice('dmatest-lcore');
  t.teardown(() => dev.close());
  await dev.start(eal, 1);
  t.ok(dev.started && dev.emu.plane.attached, 'the engine polls on lcore 1');
  const bar = new Uint32Array(dev.emu.barMemory(0).buffer);
  const DOORBELL = R.REG_DOORBELL >> 2, CONSUMER = R.REG_CONSUMER >> 2;
  const SIZE = 8 << 20, IOVA = 0x4000_0000n, ENTRIES = 64, SRC = 0x10000, DST = 0x210000, JOB = 0x8000;
  const fd = os.memfdCreate('tsp-dmatest-client', os.MFD_ALLOW_SEALING);
  os.ftruncate(fd, SIZE);
  const va = os.mmap(0n, SIZE, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  t.teardown(() => { os.munmap(va, SIZE); os.close(fd); });
  const mem = new Uint8Array(os.viewOf(va, SIZE)), dv = new DataView(mem.buffer);
  mem.set(randomBytes(2 << 20), SRC);
  let efd = -1; // the client's MSI-X eventfd (the device owns it after SET_IRQS and closes it at disconnect)
  /** A client: map the memory, assign the eventfd, program the ring, enable. */
  const connect = (): void => {
    dev.emu.connected({ read: () => Promise.reject(new Error('no messages')), write: () => Promise.reject(new Error('no messages')) });
    dev.emu.dmaMap(IOVA, BigInt(SIZE), RW, fd, 0n);
    efd = os.eventfd(0, os.EFD_NONBLOCK);
    dev.emu.setIrqs({ argsz: 0, flags: U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, index: MSIX, start: 0, count: 1, bools: new Uint8Array(0) }, [efd]);
    writeReg(dev, R.REG_RING_LO, Number(IOVA & 0xffffffffn));
    writeReg(dev, R.REG_RING_HI, Number(IOVA >> 32n));
    writeReg(dev, R.REG_RING_ENTRIES, ENTRIES);
    writeReg(dev, R.REG_CTRL, R.CTRL_ENABLE);
  };
  let producer = 0;
  const submit = (src: number, dst: number, len: number): number => {
    const slot = producer & (ENTRIES - 1), o = slot * R.DESC_SIZE;
    dv.setBigUint64(o + R.DESC_SRC, IOVA + BigInt(src), true);
    dv.setBigUint64(o + R.DESC_DST, IOVA + BigInt(dst), true);
    dv.setUint32(o + R.DESC_LEN, len, true);
    dv.setUint32(o + R.DESC_CHECKSUM, 0, true);
    dv.setUint32(o + R.DESC_STATUS, 0, true);
    producer = (producer + 1) >>> 0;
    return slot;
  };
  const ring = (): void => { Atomics.store(bar, DOORBELL, producer); };

  connect();
  t.equal(readReg(dev, R.REG_STATUS), R.STATUS_RUNNING, 'enabled');
  const jobs = Array.from({ length: 48 }, (_, i) => ({ off: i * 0x9000 % 0x1f0000, len: 1 + ((i * 7919) % JOB) }));
  for (const j of jobs) submit(SRC + j.off, DST + j.off, j.len);
  submit(SRC, SIZE + 0x1000, 64); // destination outside the mapping
  ring();
  await until('49 completions', () => Atomics.load(bar, CONSUMER) === 49, 10_000);
  const ok = jobs.every((j, i) => dv.getUint32(i * R.DESC_SIZE + R.DESC_STATUS, true) === R.DESC_STATUS_DONE
    && dv.getUint32(i * R.DESC_SIZE + R.DESC_CHECKSUM, true) === R.adler32(mem.subarray(SRC + j.off, SRC + j.off + j.len)));
  t.ok(ok, 'every descriptor done with the Adler-32 of its source');
  t.ok(jobs.every((j) => Buffer.from(mem.subarray(DST + j.off, DST + j.off + j.len)).equals(mem.subarray(SRC + j.off, SRC + j.off + j.len))), 'destinations hold the copies');
  t.equal(dv.getUint32(48 * R.DESC_SIZE + R.DESC_STATUS, true), R.DESC_STATUS_ERROR, 'a destination outside client memory: error status');
  t.same([readReg(dev, R.REG_COMPLETED), readReg(dev, R.REG_ERRORS), readReg(dev, R.REG_STATUS)], [48, 1, R.STATUS_RUNNING], 'counters; the engine goes on');
  t.equal(os.pollOne(efd, os.POLLIN, 1000) & os.POLLIN, os.POLLIN, 'MSI-X eventfd signalled');
  os.read(efd, new Uint8Array(8));

  // overlapping source and destination in one region: memmove semantics
  const ov = mem.slice(SRC, SRC + 1000);
  submit(SRC, SRC + 10, 1000);
  ring();
  await until('the overlapping copy', () => Atomics.load(bar, CONSUMER) === producer);
  t.ok(Buffer.from(mem.subarray(SRC + 10, SRC + 1010)).equals(ov), 'overlapping copy: memmove');
  t.equal(dv.getUint32(((producer - 1) & (ENTRIES - 1)) * R.DESC_SIZE + R.DESC_CHECKSUM, true), R.adler32(ov), 'checksum of the source before the copy');

  await sleep(200); // idle: the engine backs off to its longest sleep
  const ticks0 = threadTicks('lcore-1'), w0 = Date.now();
  await sleep(1000);
  const idleTicks = threadTicks('lcore-1') - ticks0, wall = Date.now() - w0;
  t.ok(ticks0 >= 0, 'the lcore thread is found by name');
  t.ok(idleTicks <= 10, `idle engine: ${idleTicks} CPU ticks (1/100 s) in ${wall} ms`);

  // In flight: unmaps, disconnects and resets while the engine copies.
  let unmaps = 0, disconnects = 0, errorsSeen = 0;
  for (let i = 0; i < 60; i++) {
    const n = 8 + (i % 24);
    for (let k = 0; k < n; k++) submit(SRC + ((k * 0x8000) % 0x1f0000), DST + ((k * 0x8000) % 0x1f0000), JOB * 4);
    ring();
    spin(Math.random() * 2);
    if (i % 3 === 0) {
      dev.emu.disconnected();
      dev.emu.reset(); // what the server does when a client leaves
      disconnects++;
    } else {
      dev.emu.dmaUnmap(IOVA, BigInt(SIZE));
      unmaps++;
      if (readReg(dev, R.REG_STATUS) & R.STATUS_ERROR) errorsSeen++;
      dev.emu.disconnected();
      dev.emu.reset();
    }
    t.equal(readReg(dev, R.REG_CONSUMER), 0, `cycle ${i}: reset clears the shared page`);
    producer = 0;
    connect();
  }
  t.comment(`${unmaps} unmaps and ${disconnects} disconnects in flight; the ring became unreachable ${errorsSeen} times`);
  t.ok(dev.emu.plane.attached, 'the engine lives on');

  // The next client is served in full.
  mem.fill(0, DST, DST + (2 << 20));
  for (let i = 0; i < ENTRIES; i++) submit(SRC + i * JOB, DST + i * JOB, JOB);
  ring();
  await until('the next client\'s 64 completions', () => Atomics.load(bar, CONSUMER) === ENTRIES, 10_000);
  let good = 0;
  for (let i = 0; i < ENTRIES; i++) {
    const s = mem.subarray(SRC + i * JOB, SRC + (i + 1) * JOB);
    if (dv.getUint32(i * R.DESC_SIZE + R.DESC_STATUS, true) === R.DESC_STATUS_DONE && dv.getUint32(i * R.DESC_SIZE + R.DESC_CHECKSUM, true) === R.adler32(s)
      && Buffer.from(mem.subarray(DST + i * JOB, DST + (i + 1) * JOB)).equals(s)) good++;
  }
  t.equal(good, ENTRIES, 'the next client: every copy and checksum right');
  t.equal(readReg(dev, R.REG_COMPLETED), ENTRIES, 'counters restarted at the reset');
  t.equal(os.pollOne(efd, os.POLLIN, 1000) & os.POLLIN, os.POLLIN, 'and its interrupt arrives');

  // disable: the engine stops taking descriptors
  writeReg(dev, R.REG_CTRL, 0);
  t.equal(readReg(dev, R.REG_STATUS) & R.STATUS_RUNNING, 0, 'disabled');
  submit(SRC, DST, 16);
  ring();
  await sleep(50);
  t.equal(Atomics.load(bar, CONSUMER), ENTRIES, 'a disabled engine executes nothing');
  await dev.close();
  t.notOk(dev.emu.plane.attached, 'close(): the engine left its lcore');
  t.notOk(eal.lcores.busy(1), 'and the lcore is free');
});

t.test('a DMA region of 6 GiB (sparse memfd): served as views of at most 4 GiB; below, above and across 4 GiB, main thread and lcore', async (t) => {
  const GiB = 0x4000_0000, BIG = 6 * GiB, FOUR = 4 * GiB, IOVA = 0x2_0000_0000n, ENTRIES = 16;
  const rss = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
  const fd = os.memfdCreate(`tsp-big-${process.pid}`, os.MFD_ALLOW_SEALING);
  t.teardown(() => os.close(fd));
  os.ftruncate(fd, BIG); // sparse: only what this test writes takes memory
  const put = (off: number, b: Uint8Array): void => { os.pwrite(fd, b, b.byteLength, off); };
  const get = (off: number, len: number): Uint8Array => { const b = new Uint8Array(len); os.pread(fd, b, len, off); return b; };
  const dev = new DmatestDevice('dmatest-big');
  t.teardown(() => dev.close());
  const rss0 = rss();
  dev.emu.connected({ read: () => Promise.reject(new Error('no messages')), write: () => Promise.reject(new Error('no messages')) });
  dev.emu.dmaMap(IOVA, BigInt(BIG), RW, fd, 0n);
  t.not(dev.emu.dmaRegions()[0].va, 0n, 'a 6 GiB region is accepted and mapped by fd (one mapping)');

  // The main thread: dmaRead/dmaWrite below, above and across 4 GiB; translate() gives a view inside one piece only.
  const at = { below: 0x12_3000, above: FOUR + 0x45_6000, across: FOUR - 0x800 };
  for (const [where, off] of Object.entries(at)) {
    const b = randomBytes(0x1000);
    await dev.emu.dmaWrite(IOVA + BigInt(off), b);
    t.ok(Buffer.from(get(off, 0x1000)).equals(b), `main thread: a write ${where} 4 GiB lands in the file`);
    const c = randomBytes(0x1000);
    put(off, c);
    t.ok(Buffer.from(await dev.emu.dmaRead(IOVA + BigInt(off), 0x1000)).equals(c), `main thread: a read ${where} 4 GiB sees the file`);
  }
  t.equal(dev.emu.translate(IOVA + BigInt(at.across), 0x1000, false), null, 'translate: a range across the 4 GiB line is no single view (null: use dmaRead/dmaWrite)');
  t.equal(dev.emu.translate(IOVA + BigInt(at.above), 16, false)![0], get(at.above, 1)[0], 'translate: a view above 4 GiB, in the second piece');

  // The lcore: dmatest copies between the same places; every checksum and copy verified in the file.
  await dev.start(eal, 1);
  const bar = new Uint32Array(dev.emu.barMemory(0).buffer);
  writeReg(dev, R.REG_RING_LO, Number(IOVA & 0xffffffffn));
  writeReg(dev, R.REG_RING_HI, Number(IOVA >> 32n));
  writeReg(dev, R.REG_RING_ENTRIES, ENTRIES);
  writeReg(dev, R.REG_CTRL, R.CTRL_ENABLE);
  const LEN = 0x3000;
  const jobs = [
    { what: 'below to below', src: 0x10_0000, dst: 0x20_0000 },
    { what: 'above to above', src: FOUR + 0x10_0000, dst: 5 * GiB },
    { what: 'below to above', src: 0x30_0000, dst: BIG - LEN },
    { what: 'above to below', src: 5 * GiB + 0x10_0000, dst: 0x40_0000 },
    { what: 'across to below', src: FOUR - 0x1000, dst: 0x50_0000 },
    { what: 'below to across', src: 0x60_0000, dst: FOUR - 0x2000 },
    { what: 'across to across (overlapping)', src: FOUR - 0x1800, dst: FOUR - 0x1000 },
  ];
  const desc = new Uint8Array(R.DESC_SIZE), ddv = new DataView(desc.buffer);
  // One job at a time, checked before the next: some share bytes with the one before.
  for (const [i, j] of jobs.entries()) {
    const src = randomBytes(LEN);
    put(j.src, src);
    ddv.setBigUint64(R.DESC_SRC, IOVA + BigInt(j.src), true);
    ddv.setBigUint64(R.DESC_DST, IOVA + BigInt(j.dst), true);
    ddv.setUint32(R.DESC_LEN, LEN, true);
    put(i * R.DESC_SIZE, desc);
    Atomics.store(bar, R.REG_DOORBELL >> 2, i + 1);
    await until(`job ${i}`, () => Atomics.load(bar, R.REG_CONSUMER >> 2) === i + 1, 10_000);
    const d = new DataView(get(i * R.DESC_SIZE, R.DESC_SIZE).buffer);
    t.equal(d.getUint32(R.DESC_STATUS, true), R.DESC_STATUS_DONE, `lcore: ${j.what}: done`);
    t.equal(d.getUint32(R.DESC_CHECKSUM, true), R.adler32(src), `lcore: ${j.what}: Adler-32 of the source`);
    t.ok(Buffer.from(get(j.dst, LEN)).equals(src), `lcore: ${j.what}: the copy is in the file`);
  }
  t.same([readReg(dev, R.REG_COMPLETED), readReg(dev, R.REG_ERRORS)], [jobs.length, 0], 'no errors');

  const used = fstatSync(fd).blocks * 512, grown = rss() - rss0;
  t.ok(used < 1 << 20, `the 6 GiB file holds ${used} bytes: only what was written`);
  t.ok(grown < 64 << 20, `this process grew by ${grown >> 10} KiB mapping and using 6 GiB (sparse, views touch nothing)`);
  await dev.close();
});
