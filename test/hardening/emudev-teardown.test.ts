/**
 * emudev hardening, issue 14 item 5: client teardown never stops half way.
 *
 * When a client goes away, every DMA region must be unmapped, every IRQ eventfd closed and the
 * device reset, even when one step fails (a region's munmap, a 'dma-unmap' listener, a device
 * lcore that does not pause); otherwise the next client inherits the previous client's memory,
 * eventfds and device state. The failing step here is a 'dma-unmap' listener that throws (device
 * code the teardown calls), and a wedged lcore (a DataPlane attached in this thread that never
 * acknowledges a pause).
 */
import t from 'tap';
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { EmuDevice, type DmaRegion } from '../../lib/emudev/emudev.js';
import { DataPlane } from '../../lib/emudev/dataplane.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import { Channel, PeerClosedError, connectUnix } from '../../lib/vfio-user/transport.js';

const MSIX = U.VFIO_PCI_MSIX_IRQ_INDEX;
const RW = P.DMA_FLAG_READ | P.DMA_FLAG_WRITE;
const SIZE = 64 * 1024;
const NAME = `tsp-td-${process.pid}`;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A device with one MSI-X vector and a reset counter; closed at teardown. */
function device(t: { teardown(fn: () => unknown): void }, name: string): { dev: EmuDevice; resets: () => number } {
  let resets = 0;
  const dev = new EmuDevice({ name, pci: { vendorId: 0x1234, deviceId: 0x11ec, classCode: 0xff0000 }, bars: [], irqs: [{ index: MSIX, count: 2 }], onReset: () => { resets++; } });
  t.teardown(() => dev.close());
  return { dev, resets: () => resets };
}

/** n sealed client memfds of SIZE bytes named NAME-tag-i; closed at teardown. */
function memfds(t: { teardown(fn: () => unknown): void }, tag: string, n: number): number[] {
  const fds = Array.from({ length: n }, (_, i) => {
    const fd = os.memfdCreate(`${NAME}-${tag}-${i}`, os.MFD_ALLOW_SEALING);
    os.ftruncate(fd, SIZE);
    os.addSeals(fd, os.F_SEAL_SHRINK | os.F_SEAL_GROW);
    return fd;
  });
  t.teardown(() => fds.forEach((fd) => os.close(fd)));
  return fds;
}

/** How many mappings of this process come from files whose name contains needle. */
const mappings = (needle: string): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(needle)).length;
/** Whether fd is (still) an eventfd of this process. */
const isEventfd = (fd: number): boolean => { try { return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventfd]'; } catch { return false; } };

/** SET_IRQS DATA_EVENTFD | TRIGGER of vectors 0..fds.length-1, as the server calls it. */
function assign(dev: EmuDevice, fds: number[]): void {
  dev.setIrqs({ argsz: 0, flags: U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, index: MSIX, start: 0, count: fds.length, bools: new Uint8Array(0) }, fds);
}

/** A listener that throws for the first region it sees, as a buggy device might. */
function throwOnFirstUnmap(dev: EmuDevice): DmaRegion[] {
  const seen: DmaRegion[] = [];
  dev.events.on('dma-unmap', (r: DmaRegion) => {
    seen.push(r);
    if (seen.length === 1) throw new Error('device bug in a dma-unmap listener');
  });
  return seen;
}

t.test('a failing step does not stop the teardown: every region unmapped, every eventfd closed, the device reset', async (t) => {
  const { dev, resets } = device(t, `${NAME}-api`);
  const fds = memfds(t, 'api', 3);
  fds.forEach((fd, i) => dev.dmaMap(0x1000_0000n + BigInt(i) * 0x10_0000n, BigInt(SIZE), RW, fd, 0n));
  const efds = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)];
  const held = [...efds];
  assign(dev, efds); // the device owns them now
  t.equal(mappings(`${NAME}-api`), 3, 'three client regions mapped');
  const seen = throwOnFirstUnmap(dev);
  let disconnects = 0;
  dev.events.on('disconnect', () => { disconnects++; });
  const before = resets();
  // what VfioUserServer.dropClient does: disconnected(), then reset() (both inside one try)
  let thrown: unknown = null;
  try {
    dev.disconnected();
    dev.reset();
  } catch (e) {
    thrown = e;
  }
  t.equal(thrown, null, 'disconnected() does not throw (the listener\'s error is logged)');
  t.equal(seen.length, 3, 'every region was announced to the listener, also after its error');
  t.equal(dev.dmaRegions().length, 0, 'the DMA table is empty');
  t.equal(mappings(`${NAME}-api`), 0, 'no client memory is left mapped');
  t.same(held.map(isEventfd), [false, false], 'both IRQ eventfds are closed');
  t.same([dev.irqAssigned(MSIX, 0), dev.irqAssigned(MSIX, 1)], [false, false], 'no vector has an eventfd');
  t.equal(resets() - before, 1, 'the device was reset');
  t.equal(disconnects, 1, '\'disconnect\' was emitted');

  // disconnected({ reset: true }) resets by itself (for a server that wants one call)
  fds.forEach((fd, i) => dev.dmaMap(0x1000_0000n + BigInt(i) * 0x10_0000n, BigInt(SIZE), RW, fd, 0n));
  const errors = dev.disconnected({ reset: true });
  t.same(errors, [], 'no errors this time (the listener only throws once)');
  t.equal(resets() - before, 2, 'reset once more');
  t.equal(mappings(`${NAME}-api`), 0);
});

t.test('a wedged lcore: the tables are emptied and the device reset anyway; memory and fds go once it pauses', async (t) => {
  const { dev, resets } = device(t, `${NAME}-wedged`);
  dev.plane.pauseTimeoutMs = 200;
  const fds = memfds(t, 'wedged', 2);
  fds.forEach((fd, i) => dev.dmaMap(0x2000_0000n + BigInt(i) * 0x10_0000n, BigInt(SIZE), RW, fd, 0n));
  const efd = os.eventfd(0, os.EFD_NONBLOCK);
  assign(dev, [efd]);
  // An lcore that attached and then never calls service() again (a blocked poll loop).
  const plane = DataPlane.attach(dev.plane.desc());
  t.equal(plane.regions, 2, 'the lcore sees both regions');
  const before = resets();
  const t0 = Date.now();
  const errors = dev.disconnected({ reset: true });
  t.ok(Date.now() - t0 < 5000, `returned after the pause timeouts (${Date.now() - t0} ms)`);
  t.match(errors.join('\n'), /did not pause within 200 ms.*released once it pauses/, 'the missing pause is reported');
  t.equal(dev.dmaRegions().length, 0, 'the DMA table is empty');
  t.equal(resets() - before, 1, 'the device was reset without the pause');
  t.equal(dev.plane.irqFd(MSIX, 0), -1, 'no vector has an eventfd');
  t.equal(mappings(`${NAME}-wedged`), 2, 'the memory the lcore may still read stays mapped for now');
  t.ok(isEventfd(efd), 'and the eventfd it may still write stays open');
  t.ok(plane.service(), 'when the lcore comes back, its next service() picks up the empty table');
  t.equal(plane.regions, 0, 'it sees no region');
  plane.detach();
  dev.reset(); // the next change after the lcore left releases what was held back
  t.equal(mappings(`${NAME}-wedged`), 0, 'then the memory is unmapped');
  t.notOk(isEventfd(efd), 'and the eventfd closed');
});

t.test('over a real socket: a client that leaves while a listener fails does not leave its state to the next one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), `${NAME}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { dev, resets } = device(t, `${NAME}-srv`);
  throwOnFirstUnmap(dev);
  const server = new VfioUserServer(dev, join(dir, 's.sock'));
  server.start();
  t.teardown(() => server.close());
  const ch = new Channel(connectUnix(join(dir, 's.sock')), { maxMsgSize: 1 << 22, maxMsgFds: 16, name: 'tsp test client' });
  let closed = false;
  t.teardown(() => { if (!closed) ch.close(); });
  let id = 0;
  /** Send a command and wait for its reply; fds that come back are closed. */
  const call = async (cmd: number, payload: Uint8Array, fds: number[] = []): Promise<P.Message> => {
    const msgId = ++id;
    ch.send({ msgId, command: cmd, flags: 0, error: 0 }, payload, fds);
    const deadline = Date.now() + 5000;
    for (;;) {
      let m: P.Message | null = null;
      try { m = ch.receive(); } catch (e) { if (e instanceof PeerClosedError) throw new Error('the server closed the connection'); throw e; }
      if (m) {
        m.fds.forEach((fd) => os.close(fd));
        if (m.msgId === msgId && (m.flags & P.FLAG_TYPE_MASK) === P.TYPE_REPLY) return m;
        continue;
      }
      if (Date.now() > deadline) throw new Error(`no reply to ${P.cmdName(cmd)}`);
      await sleep(2);
    }
  };
  await call(P.Cmd.VERSION, P.encodeVersion({ major: 0, minor: 2, caps: { max_msg_fds: 16, max_data_xfer_size: 1 << 20, other: {} } }));
  const fds = memfds(t, 'srv', 3);
  for (const [i, fd] of fds.entries()) {
    const r = await call(P.Cmd.DMA_MAP, P.encodeDmaMap({ flags: RW, offset: 0n, address: 0x3000_0000n + BigInt(i) * 0x10_0000n, size: BigInt(SIZE) }), [fd]);
    t.equal(r.flags & P.FLAG_ERROR, 0, `DMA_MAP ${i} by fd`);
  }
  const efd = os.eventfd(0, os.EFD_NONBLOCK);
  t.teardown(() => os.close(efd));
  const r = await call(P.Cmd.DEVICE_SET_IRQS, P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, MSIX, 0, 1), [efd]);
  t.equal(r.flags & P.FLAG_ERROR, 0, 'SET_IRQS');
  const deviceFd = dev.plane.irqFd(MSIX, 0);
  t.ok(isEventfd(deviceFd), 'the device holds its copy of the eventfd');
  t.equal(mappings(`${NAME}-srv`), 3);
  const before = resets();
  ch.close(); // abruptly
  closed = true;
  const deadline = Date.now() + 10_000;
  while (server.connected && Date.now() < deadline) await sleep(10);
  t.notOk(server.connected, 'the server dropped the client');
  t.equal(dev.dmaRegions().length, 0, 'no region is left in the table');
  t.equal(mappings(`${NAME}-srv`), 0, 'none is left mapped');
  t.notOk(dev.irqAssigned(MSIX, 0), 'no vector has an eventfd');
  t.notOk(isEventfd(deviceFd), 'the device\'s copy of the eventfd is closed');
  t.equal(resets() - before, 1, 'the server reset the device');
});
