/**
 * Hardening of the emulated virtio-net device's data path (issue 14, items 1, 2, 9b and 10c),
 * driven like test/emu/virtio-net-device.test.ts: a hand-written split-ring driver
 * (test/emu/virtio-net-driver.ts) over a real vfio-user connection, the device's control half and
 * server in a host thread, its poll loop on lcore 1, a net_ring backend whose peer is the wire.
 *
 *   1   DMA regions of 2 GiB and of 4 GiB (sparse memfds: ftruncate only), at IOVAs above 4 GiB,
 *       with rings and buffers beyond 2 GiB into the region and at its very end: packets move both
 *       ways, byte for byte. A device reset restores the crash budget; once the budget is spent the
 *       queues park (DEVICE_NEEDS_RESET) until a reset instead of the loop ending.
 *   2   A transmit buffer (or a control ack) in memory mapped without fd, so the device waits in
 *       the mailbox for the server's DMA_READ/WRITE; meanwhile the rings' region is unmapped, the
 *       client goes away or the driver resets the device: the process survives, nothing of the
 *       burst is committed or sent, no other queue is served from the old state, and the device
 *       works again after a re-map (or with the next client).
 *   9b  Descriptor walks are bounded per burst: receive chains that share descriptors, zero-length
 *       receive buffers with MRG_RXBUF, control and transmit chains that share descriptors, with
 *       16384-entry queues: DEVICE_NEEDS_RESET at once (the lcore still pauses for the control
 *       half); without MRG_RXBUF a zero-length chain is a buffer too small (dropped and counted,
 *       measured once per burst); legitimate traffic on the same queues unaffected.
 *   10c Exceptions in the middle of a burst (a backend that throws from txBurst, or hands over an
 *       mbuf handle the device cannot resolve) return every mbuf of that burst to its pool.
 *
 * Threads: the test (driver) thread, the host thread (idle in poll) and the device's lcore.
 */
import t, { type Test as Tap } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import type { VfioUserClient } from '../../lib/vfio-user/client.js';
import * as V from '../../lib/virtio/virtio.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import { TestVirtioNet, type TestQueue } from '../emu/virtio-net-driver.js';
import { VnetWorld, testEal, frame, until, sleep } from '../emu/virtio-net-helpers.js';
import { faultyWorld, bringUp, clientSocketFd, NoFdMemory, FAULT_RX_THROW, FAULT_RX_BOGUS, FAULT_TX_THROW } from './virtio-net-hardening-helpers.js';
import { assertLoopNoAlloc } from '../alloc.js';

const dir = mkdtempSync(join(tmpdir(), `tsp-hvn-${process.pid}-`));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const eal = testEal('tsphvn');
t.teardown(() => eal.close());

const F = V.featureBit;
const BASE = F(V.VIRTIO_F_VERSION_1) | F(V.VIRTIO_NET_F_MAC) | F(V.VIRTIO_NET_F_STATUS);
const MRG = BASE | F(V.VIRTIO_NET_F_MRG_RXBUF);
const R = L.NeedsReset;
const GiB = 2 ** 30;

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));
const needsReset = (d: TestVirtioNet): boolean => (d.status() & V.STATUS_DEVICE_NEEDS_RESET) !== 0;

/** Put frames on transmitq q as one avail update (one descriptor each, header first): one burst. */
function sendBatch(d: TestVirtioNet, q: number, frames: Uint8Array[]): void {
  const tq = d.queues.get(q)!;
  frames.forEach((f, i) => {
    const head = (tq.nextDesc + i) % tq.size;
    const b = tq.buf + head * tq.bufSize;
    d.u8.fill(0, b, b + V.NET_HDR_SIZE);
    d.u8.set(f, b + V.NET_HDR_SIZE);
    d.writeDesc(q, head, d.iovaOf(b), V.NET_HDR_SIZE + f.byteLength, 0, 0);
    d.dv.setUint16(tq.avail + V.AVAIL_RING + 2 * ((tq.availIdx + i) % tq.size), head, true);
  });
  tq.nextDesc = (tq.nextDesc + frames.length) % tq.size;
  tq.availIdx = (tq.availIdx + frames.length) & 0xffff;
  Atomics.store(new Uint16Array(d.u8.buffer, tq.avail, 2), 1, tq.availIdx);
  d.kick(q);
}

/** Publish `count` avail entries on queue q that all name head (a driver offering one chain many times). */
function availAll(d: TestVirtioNet, q: number, head: number, count: number): void {
  const tq = d.queues.get(q)!;
  for (let i = 0; i < count; i++) d.dv.setUint16(tq.avail + V.AVAIL_RING + 2 * ((tq.availIdx + i) % tq.size), head, true);
  tq.availIdx = (tq.availIdx + count) & 0xffff;
  Atomics.store(new Uint16Array(d.u8.buffer, tq.avail, 2), 1, tq.availIdx);
  d.kick(q);
}

/** Descriptors 0..n-1 of queue q as one chain: each of len bytes at addr (the last of lastLen), flags plus NEXT. */
function chainOf(d: TestVirtioNet, q: number, n: number, addr: number, len: number, flags: number, lastLen = len): void {
  for (let i = 0; i < n; i++) d.writeDesc(q, i, addr, i === n - 1 ? lastLen : len, flags | (i < n - 1 ? V.VRING_DESC_F_NEXT : 0), i + 1);
}

/** Traffic both ways through pair 0 of a driver brought up with MRG_RXBUF: frames equal. */
async function traffic(t: Tap, w: VnetWorld, d: TestVirtioNet, what: string): Promise<void> {
  w.receiveFromDevice();
  const out = [frame(60, 1), frame(1514, 2), frame(333, 3)];
  out.forEach((f) => d.send(1, f));
  const got = await w.collectFromDevice(out.length, 10_000);
  t.ok(got.length === out.length && out.every((f, i) => same(f, got[i])), `${what}: ${out.length} frames out, same bytes (${got.length} seen)`);
  d.postRx(0, 8);
  const inn = [frame(100, 4), frame(1400, 5)];
  w.sendToDevice(inn);
  const ok = await d.waitUsed(0, inn.length, 10_000);
  const pk = ok ? d.receive(0, d.used(0)) : [];
  t.ok(pk.length === inn.length && inn.every((f, i) => same(f, pk[i].data)), `${what}: ${inn.length} frames in, same bytes`);
}

t.test('item 1: DMA regions of 2 GiB and 4 GiB above 4 GiB IOVA, rings beyond 2 GiB into them', async (t) => {
  const w = await VnetWorld.create(eal, dir, { queueSize: 256 });
  let closed = false;
  t.teardown(() => (closed ? undefined : w.shutdown()));
  const c = w.connect();
  const cases = [
    { name: '2 GiB region at IOVA 4 GiB', len: 2 * GiB, iova: 4 * GiB },
    { name: '4 GiB region at IOVA 64 GiB', len: 4 * GiB, iova: 64 * GiB },
  ];
  for (const k of cases) {
    await t.test(k.name, async (t) => {
      const d = new TestVirtioNet(c, k.len, k.iova); // a sparse memfd: only the pages written below exist
      t.teardown(() => d.close());
      d.reset();
      t.ok(d.negotiate(MRG), 'FEATURES_OK');
      // Rings and buffers in the region's last 64 MiB: beyond 2 GiB into the 4 GiB region.
      const top = k.len - 64 * 2 ** 20;
      const size = 256;
      d.setupQueue(0, size, V.VIRTIO_MSI_NO_VECTOR, 2048, { desc: top, avail: top + 0x1_0000, used: top + 0x2_0000, buf: top + 0x10_0000 });
      const tq = d.setupQueue(1, size, V.VIRTIO_MSI_NO_VECTOR, 2048, { desc: top + 0x4_0000, avail: top + 0x5_0000, used: top + 0x6_0000, buf: top + 0x100_0000 });
      d.driverOk();
      await sleep(50);
      t.ok(w.running, `the lcore runs (${w.end?.error?.message ?? 'no error'})`);
      t.equal(w.needsReset, 0, 'no DEVICE_NEEDS_RESET');

      // transmit: the inline path (one descriptor) and gatherTx (chains of 2 and 3)
      w.receiveFromDevice();
      const out = [frame(60, 1), frame(1514, 2), frame(700, 3), frame(300, 4)];
      out.forEach((f, i) => d.send(1, f, i < 2 ? 1 : i));
      // and a frame in the region's last bytes
      const last = frame(200, 5), lastOff = k.len - (V.NET_HDR_SIZE + last.byteLength);
      d.u8.fill(0, lastOff, lastOff + V.NET_HDR_SIZE);
      d.u8.set(last, lastOff + V.NET_HDR_SIZE);
      const head = tq.nextDesc;
      tq.nextDesc = (tq.nextDesc + 1) % size;
      d.writeDesc(1, head, d.iovaOf(lastOff), V.NET_HDR_SIZE + last.byteLength, 0, 0);
      d.pushAvail(1, head);
      out.push(last);
      const got = await w.collectFromDevice(out.length, 10_000);
      t.equal(got.length, out.length, `${out.length} frames on the wire`);
      t.ok(out.every((f, i) => got[i] && same(f, got[i])), 'byte for byte (chains of 1-3 descriptors, one at the region\'s end)');
      t.ok(await d.waitUsed(1, out.length, 5000), 'every transmit buffer returned');
      d.used(1);

      // receive: first a buffer in the region's last 2048 bytes (the fast path, up to the last byte)
      const rxq = d.queues.get(0)!;
      const endOff = k.len - 2048;
      d.writeDesc(0, 0, d.iovaOf(endOff), 2048, V.VRING_DESC_F_WRITE, 0);
      rxq.nextDesc = 1;
      d.pushAvail(0, 0);
      const tail = frame(2048 - V.NET_HDR_SIZE, 10);
      w.sendToDevice([tail]);
      t.ok(await d.waitUsed(0, 1, 5000), 'the buffer at the region\'s end was used');
      t.same(d.used(0), [{ id: 0, len: 2048 }], 'its used entry: header and frame, 2048 bytes');
      t.ok(same(d.u8.subarray(endOff + V.NET_HDR_SIZE, k.len), tail), 'the frame\'s bytes, up to the region\'s last byte');
      // then MRG chains (the general path), then one buffer per packet (rxFast) behind them
      d.postRx(0, 8, 256);
      const big = frame(1000, 6);
      w.sendToDevice([big]);
      t.ok(await d.waitUsed(0, 4, 5000), 'a 1000-byte frame in four 256-byte buffers');
      const [p] = d.receive(0, d.used(0));
      t.ok(p && p.numBuffers === 4 && same(p.data, big), `num_buffers ${p?.numBuffers}, same bytes`);
      d.postRx(0, 16); // behind the four 256-byte buffers left: 2048-byte ones
      const inn = [frame(100, 7), frame(1514, 8), frame(64, 9)];
      w.sendToDevice(inn);
      t.ok(await d.waitUsed(0, 6, 5000), 'three frames in: 1 + 4 + 1 buffers');
      const pk = d.receive(0, d.used(0));
      t.ok(pk.length === 3 && inn.every((f, i) => same(f, pk[i].data)), `same bytes (num_buffers ${pk.map((x) => x.numBuffers).join(', ')})`);
      t.ok(w.running && w.needsReset === 0, `still running, no DEVICE_NEEDS_RESET (reason ${w.needsReset})`);
      d.reset();
    });
  }
  const end = await w.shutdown();
  closed = true;
  t.equal(end?.error ?? null, null, 'the loop ended without an error');
  assertLoopNoAlloc(t, end?.result, `the device's poll loop (${end?.result?.iterations} iterations)`);
  const a = w.pool.audit();
  t.equal(a.inUse, 0, `every mbuf back in the pool (${a.available} of ${a.size})`);
});

t.test('item 1: a device reset restores the crash budget; a spent budget parks the queues until a reset', async (t) => {
  const { w, fault: f } = await faultyWorld(eal, dir);
  t.teardown(() => w.shutdown());
  const c = w.connect();
  const d = new TestVirtioNet(c);
  t.teardown(() => d.close());
  bringUp(d, MRG, 64);

  Atomics.store(f, FAULT_RX_THROW, 60);
  t.ok(await until(() => Atomics.load(f, FAULT_RX_THROW) === 0, 20_000), 'the backend threw 60 times');
  t.equal(w.needsReset, R.INTERNAL, 'DEVICE_NEEDS_RESET: internal error');
  t.ok(needsReset(d), 'the driver sees DEVICE_NEEDS_RESET');
  d.reset();
  Atomics.store(f, FAULT_RX_THROW, 60);
  t.ok(await until(() => Atomics.load(f, FAULT_RX_THROW) === 0, 20_000), '60 more after a reset');
  await sleep(100);
  t.ok(w.running, `120 exceptions, 60 since the reset: the loop runs (${w.end?.error?.message ?? 'no error'})`);

  d.reset();
  Atomics.store(f, FAULT_RX_THROW, 150);
  t.ok(await until(() => Atomics.load(f, FAULT_RX_THROW) <= 50, 20_000), '100 exceptions since the reset');
  await sleep(300);
  t.equal(Atomics.load(f, FAULT_RX_THROW), 50, 'then the queues are parked: the backend is not polled');
  t.ok(w.running, 'parked, not ended: the lcore still answers pauses');
  t.ok(needsReset(d), 'DEVICE_NEEDS_RESET while parked');
  d.reset();
  t.ok(await until(() => Atomics.load(f, FAULT_RX_THROW) === 0, 20_000), 'a reset brings the loop back (the 50 left are thrown now)');
  await sleep(50);
  t.ok(w.running, 'running');
  bringUp(d, MRG, 64);
  await traffic(t, w, d, 'after the reset');
});

t.test('item 10c: a burst that crashes gives its mbufs back', async (t) => {
  const { w, fault: f } = await faultyWorld(eal, dir);
  t.teardown(() => w.shutdown());
  const c = w.connect();
  const d = new TestVirtioNet(c);
  t.teardown(() => d.close());
  const inUse = (): number => w.pool.audit().inUse;

  bringUp(d, MRG, 64);
  t.ok(await until(() => inUse() === 0, 5000), 'idle: no mbuf in use');
  Atomics.store(f, FAULT_TX_THROW, 1);
  const out = [frame(60, 1), frame(600, 2), frame(1514, 3), frame(64, 4), frame(999, 5)];
  sendBatch(d, 1, out);
  t.ok(await until(() => w.needsReset === R.INTERNAL, 5000), 'txBurst threw: DEVICE_NEEDS_RESET (internal error)');
  t.equal(Atomics.load(f, FAULT_TX_THROW), 0, 'the fault fired');
  t.ok(await until(() => inUse() === 0, 5000), `the ${out.length} mbufs the device filled are back in the pool (in use: ${inUse()})`);
  t.same(w.receiveFromDevice(), [], 'nothing went out');

  bringUp(d, MRG, 64);
  d.postRx(0, 16);
  Atomics.store(f, FAULT_RX_BOGUS, 1);
  const inn = [frame(60, 6), frame(700, 7), frame(1514, 8), frame(200, 9), frame(61, 10)];
  w.sendToDevice(inn);
  t.ok(await until(() => w.needsReset === R.INTERNAL, 5000), 'an mbuf handle the device cannot resolve: DEVICE_NEEDS_RESET (internal error)');
  t.equal(Atomics.load(f, FAULT_RX_BOGUS), 0, 'the fault fired');
  t.ok(await until(() => inUse() === 0, 5000), `the burst's ${inn.length} real mbufs are back in the pool (in use: ${inUse()})`);
  t.equal(d.usedIdx(0), 0, 'nothing of the crashed burst was committed');

  bringUp(d, MRG, 64);
  await traffic(t, w, d, 'after a reset');
  t.ok(await until(() => inUse() === 0, 5000), `idle again: no mbuf in use (${inUse()})`);
});

t.test('item 2: the mailbox waits while the rings are unmapped or the client leaves', async (t) => {
  const w = await VnetWorld.create(eal, dir);
  t.teardown(() => w.shutdown());
  const NOFD = 0x9000_0000;
  const CTRL = F(V.VIRTIO_NET_F_CTRL_VQ);

  /** A client whose rings are in fd memory, with 64 KiB at NOFD announced without fd. */
  const open = (t: Tap): { c: VfioUserClient; d: TestVirtioNet; mem: NoFdMemory } => {
    const c = w.connect();
    const d = new TestVirtioNet(c);
    const mem = new NoFdMemory(0x1_0000);
    t.teardown(() => { d.close(); c.close(); mem.free(); });
    c.dmaMap(mem.va, BigInt(NOFD), mem.len); // no fd known for it: DMA_MAP without fd
    bringUp(d, MRG | CTRL, 64, { ctrl: true });
    return { c, d, mem };
  };
  /** Transmit a frame whose buffer is in the memory without fd. */
  const txNoFd = (d: TestVirtioNet, mem: NoFdMemory, f: Uint8Array): void => {
    mem.u8.fill(0, 0, V.NET_HDR_SIZE);
    mem.u8.set(f, V.NET_HDR_SIZE);
    const tq = d.queues.get(1)!;
    const head = tq.nextDesc;
    tq.nextDesc = (tq.nextDesc + 1) % tq.size;
    d.writeDesc(1, head, NOFD, V.NET_HDR_SIZE + f.byteLength, 0, 0);
    d.pushAvail(1, head);
  };
  /** Wait until the server has sent this client a DMA_READ/WRITE that it has not answered. */
  const mailboxWaits = (c: VfioUserClient): boolean => (os.pollOne(clientSocketFd(c), os.POLLIN, 10_000) & os.POLLIN) !== 0;

  await t.test('DMA_UNMAP of the rings while the device waits for a DMA_READ', async (t) => {
    const { c, d, mem } = open(t);
    w.receiveFromDevice();
    txNoFd(d, mem, frame(300, 1));
    t.ok(mailboxWaits(c), 'the device waits in the mailbox: DMA_READ sent, unanswered');
    d.postRx(0, 4);
    w.sendToDevice([frame(90, 2)]); // waiting in the backend for the same iteration's rxPoll
    d.unmap(); // the client answers the DMA_READ while it waits for this reply
    t.ok(await until(() => w.needsReset !== 0, 5000), 'the device re-derived its rings: DEVICE_NEEDS_RESET');
    t.equal(w.needsReset, R.RING_UNMAPPED, 'reason: ring outside the DMA memory');
    t.ok(w.running, 'the lcore lives (no access to the unmapped rings)');
    await sleep(50);
    t.same(w.receiveFromDevice(), [], 'the aborted burst sent nothing');
    d.map();
    bringUp(d, MRG | CTRL, 64, { ctrl: true });
    c.startService(); // DMA_READ/WRITE answered from the event loop from now on
    const f = frame(500, 3);
    txNoFd(d, mem, f);
    const got = await w.collectFromDevice(1, 10_000);
    t.ok(got.length === 1 && same(got[0], f), 'after the re-map: a frame from the memory without fd goes out, same bytes');
    await traffic(t, w, d, 'after the re-map');
  });

  await t.test('the client goes away while the device waits for a DMA_READ', async (t) => {
    const { c, d, mem } = open(t);
    w.receiveFromDevice();
    txNoFd(d, mem, frame(300, 4));
    t.ok(mailboxWaits(c), 'the device waits in the mailbox');
    w.sendToDevice([frame(90, 5)]);
    c.close();
    t.ok(await until(() => Atomics.load(w.state, L.G_STATUS) === 0 && w.needsReset === 0, 5000), 'disconnect: the device was reset');
    await sleep(100);
    t.ok(w.running, 'the lcore lives');
    t.same(w.receiveFromDevice(), [], 'the aborted burst sent nothing');
    const c2 = w.connect();
    const d2 = new TestVirtioNet(c2);
    t.teardown(() => { d2.close(); c2.close(); });
    bringUp(d2, MRG, 64);
    await traffic(t, w, d2, 'the next client');
  });

  await t.test('a device reset while the device waits for a DMA_READ: the old queues are not touched after it', async (t) => {
    const { c, d, mem } = open(t);
    w.receiveFromDevice();
    txNoFd(d, mem, frame(300, 8));
    t.ok(mailboxWaits(c), 'the device waits in the mailbox in the middle of a transmit burst');
    // A control command published now (the lcore is inside the transmit burst: it cannot have seen it).
    const cq = d.queues.get(2)!;
    d.u8.set([V.VIRTIO_NET_CTRL_RX, 0, 1], cq.buf);
    d.u8[cq.buf + 128] = 0xee;
    d.writeDesc(2, 0, d.iovaOf(cq.buf), 3, V.VRING_DESC_F_NEXT, 1);
    d.writeDesc(2, 1, d.iovaOf(cq.buf + 128), 1, V.VRING_DESC_F_WRITE, 0);
    d.pushAvail(2, 0);
    d.wr(V.COMMON_STATUS, 1, 0); // reset: the client answers the DMA_READ while it waits for this reply
    t.ok(await until(() => Atomics.load(w.state, L.G_STATUS) === 0, 5000), 'reset');
    // A doorbell is counted at the top of the loop: once it is, the interrupted iteration is over.
    const kicks = w.stat('kicks');
    d.kick(0);
    t.ok(await until(() => w.stat('kicks') > kicks, 10_000), 'the loop is back at its top (the DMA_READ was answered)');
    t.equal(d.usedIdx(2), 0, 'the command in the old control queue was not executed after the reset');
    t.equal(d.u8[cq.buf + 128], 0xee, 'its ack byte is untouched');
    t.equal(d.usedIdx(1), 0, 'the transmit burst was not committed');
    t.same(w.receiveFromDevice(), [], 'nor sent');
    t.ok(w.running, 'the lcore lives');
    bringUp(d, MRG | CTRL, 64, { ctrl: true });
    c.startService();
    await traffic(t, w, d, 'after the reset');
  });

  await t.test('DMA_UNMAP of the rings while the device waits for a control ack\'s DMA_WRITE', async (t) => {
    const { c, d, mem } = open(t);
    const cq = d.queues.get(2)!;
    const b = cq.buf;
    d.u8.set([V.VIRTIO_NET_CTRL_RX, 0, 1], b);
    mem.u8[0x100] = 0xee;
    d.writeDesc(2, 0, d.iovaOf(b), 3, V.VRING_DESC_F_NEXT, 1);
    d.writeDesc(2, 1, NOFD + 0x100, 1, V.VRING_DESC_F_WRITE, 0);
    d.pushAvail(2, 0);
    t.ok(mailboxWaits(c), 'the device waits in the mailbox: DMA_WRITE of the ack sent, unanswered');
    d.postRx(0, 4);
    w.sendToDevice([frame(90, 6)]);
    d.unmap();
    t.equal(mem.u8[0x100], V.VIRTIO_NET_ERR, 'the client wrote the ack (CTRL_RX: not offered)');
    t.ok(await until(() => w.needsReset !== 0, 5000), 'DEVICE_NEEDS_RESET');
    t.equal(w.needsReset, R.RING_UNMAPPED, 'reason: ring outside the DMA memory');
    t.ok(w.running, 'the lcore lives');
    d.map();
    bringUp(d, MRG, 64);
    await traffic(t, w, d, 'after the re-map');
  });
});

t.test('item 9b: descriptor walks bounded per burst (16384-entry queues)', async (t) => {
  const SIZE = 16384;
  const w = await VnetWorld.create(eal, dir, { queueSize: SIZE });
  t.teardown(() => w.shutdown());
  const c = w.connect();
  const d = new TestVirtioNet(c, 128 * 2 ** 20); // sparse: rings and a few buffers are touched
  t.teardown(() => d.close());
  const CTRL = F(V.VIRTIO_NET_F_CTRL_VQ);
  const up = (): void => bringUp(d, MRG | CTRL, SIZE, { ctrl: true, txBuf: 2048, ctrlBuf: 64 });
  /** The lcore still pauses for the control half: a reset (a quiesce) completes at once. */
  const resetTime = (): number => { const t0 = performance.now(); d.reset(); return performance.now() - t0; };
  const q = (i: number): TestQueue => d.queues.get(i)!;

  await t.test('receive: every avail entry names one chain of 16384 zero-length descriptors (MRG_RXBUF)', async (t) => {
    up();
    chainOf(d, 0, SIZE, d.iovaOf(q(0).buf), 0, V.VRING_DESC_F_WRITE);
    availAll(d, 0, 0, SIZE);
    w.sendToDevice(Array.from({ length: 32 }, (_, i) => frame(60, i)));
    t.ok(await until(() => w.needsReset !== 0, 3000), `DEVICE_NEEDS_RESET within 3 s (reason ${w.needsReset})`);
    t.equal(w.needsReset, R.RX_SHORT, 'reason: receive buffer smaller than the header (zero-length)');
    const ms = resetTime();
    t.ok(ms < 2000, `and the lcore pauses for a reset (${ms.toFixed(1)} ms)`);
  });

  await t.test('receive without MRG_RXBUF: the same zero-length chain is a buffer too small, dropped and counted', async (t) => {
    d.reset();
    if (!d.negotiate(BASE | CTRL)) throw new Error('FEATURES_OK refused');
    d.setupQueue(0, SIZE);
    d.setupQueue(1, SIZE);
    d.driverOk();
    chainOf(d, 0, SIZE, d.iovaOf(q(0).buf), 0, V.VRING_DESC_F_WRITE);
    availAll(d, 0, 0, SIZE);
    const drops = w.stat('rx_too_big_drops');
    w.sendToDevice(Array.from({ length: 32 }, (_, i) => frame(60, i)));
    t.ok(await until(() => w.stat('rx_too_big_drops') >= drops + 32, 3000), `32 frames dropped as too big within 3 s (${w.stat('rx_too_big_drops') - drops})`);
    t.equal(w.needsReset, 0, 'no DEVICE_NEEDS_RESET (a small buffer is allowed without MRG_RXBUF)');
    t.equal(d.usedIdx(0), 0, 'the chain stays with the device');
    const ms = resetTime();
    t.ok(ms < 2000, `reset (${ms.toFixed(1)} ms)`);
  });

  await t.test('receive: every avail entry names one chain (16383 empty descriptors, then 12 bytes)', async (t) => {
    up();
    chainOf(d, 0, SIZE, d.iovaOf(q(0).buf), 0, V.VRING_DESC_F_WRITE, V.NET_HDR_SIZE);
    availAll(d, 0, 0, SIZE);
    w.sendToDevice([frame(60, 1)]);
    t.ok(await until(() => w.needsReset !== 0, 3000), `DEVICE_NEEDS_RESET (reason ${w.needsReset})`);
    t.equal(w.needsReset, R.WALK, 'reason: chains share descriptors (more walked than the queue holds)');
    t.equal(d.usedIdx(0), 0, 'nothing committed');
    t.ok(resetTime() < 2000, 'reset');
  });

  await t.test('control queue: 16384 commands naming one chain of 16384 descriptors', async (t) => {
    up();
    const cq = q(2);
    d.u8.set([V.VIRTIO_NET_CTRL_RX, 0, 1], cq.buf);
    chainOf(d, 2, SIZE, d.iovaOf(cq.buf), 0, 0, 3);
    availAll(d, 2, 0, SIZE);
    t.ok(await until(() => w.needsReset !== 0, 3000), `DEVICE_NEEDS_RESET within 3 s (reason ${w.needsReset})`);
    t.equal(w.needsReset, R.WALK, 'reason: chains share descriptors');
    t.equal(d.usedIdx(2), 0, 'nothing committed');
    const ms = resetTime();
    t.ok(ms < 2000, `reset (${ms.toFixed(1)} ms)`);
  });

  await t.test('transmit: 32 avail entries naming one chain of 16384 descriptors', async (t) => {
    up();
    w.receiveFromDevice();
    const tq = q(1);
    d.u8.fill(0, tq.buf, tq.buf + V.NET_HDR_SIZE);
    d.u8.set(frame(60, 1), tq.buf + V.NET_HDR_SIZE);
    // the header and frame in the first descriptor, then 16383 empty ones
    for (let i = 0; i < SIZE; i++) d.writeDesc(1, i, d.iovaOf(tq.buf), i === 0 ? V.NET_HDR_SIZE + 60 : 0, i < SIZE - 1 ? V.VRING_DESC_F_NEXT : 0, i + 1);
    availAll(d, 1, 0, 32);
    t.ok(await until(() => w.needsReset !== 0, 3000), `DEVICE_NEEDS_RESET (reason ${w.needsReset})`);
    t.equal(w.needsReset, R.WALK, 'reason: chains share descriptors');
    await sleep(50);
    t.same(w.receiveFromDevice().length, 0, 'nothing went out');
    t.ok(resetTime() < 2000, 'reset');
  });

  await t.test('legitimate traffic on the same queues is not refused', async (t) => {
    up();
    // packets that find too little room, re-judged in the same burst: dropped and counted
    d.postRx(0, 3, 256);
    const drops = w.stat('rx_nobuf_drops');
    w.sendToDevice(Array.from({ length: 32 }, (_, i) => frame(1514, i)));
    t.ok(await until(() => w.stat('rx_nobuf_drops') >= drops + 32, 5000), `32 frames that need 6 buffers each, 3 posted: all dropped (${w.stat('rx_nobuf_drops') - drops})`);
    t.equal(w.needsReset, 0, 'no DEVICE_NEEDS_RESET');
    // one receive chain of 64 descriptors of 32 bytes
    const rq = q(0);
    const h = rq.nextDesc;
    for (let i = 0; i < 64; i++) d.writeDesc(0, h + i, d.iovaOf(rq.buf + h * rq.bufSize + 32 * i), 32, V.VRING_DESC_F_WRITE | (i < 63 ? V.VRING_DESC_F_NEXT : 0), h + i + 1);
    rq.nextDesc += 64;
    d.pushAvail(0, h);
    const f = frame(1000, 40);
    w.sendToDevice([f]);
    t.ok(await d.waitUsed(0, 4, 5000), 'used entries');
    const pk = d.receive(0, d.used(0));
    const last = pk[pk.length - 1];
    t.ok(last && same(last.data, f), 'a frame across a 64-descriptor chain');
    t.equal(w.needsReset, 0, 'no DEVICE_NEEDS_RESET');
    await traffic(t, w, d, '16384-entry queues');
  });
});
