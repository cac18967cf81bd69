/**
 * FD doorbells over vfio-user (no root): the emulated virtio-net device with its notify page not
 * mmap-able declares each queue's notify register as an ioeventfd doorbell; the server answers
 * VFIO_USER_DEVICE_GET_REGION_IO_FDS with an eventfd per register (datamatch = the queue index);
 * tspmd's vfio-user client keeps them and the lcore's MmioReg rings them with an 8-byte eventfd
 * write instead of a REGION_WRITE message; the device's poll loop reads them without blocking.
 *
 * - the server's answer on the wire (a raw client): sub-regions and fds, argsz too small (count,
 *   no sub-regions, no fds), a repeated request (the same eventfds), the server option off (none),
 *   and every eventfd closed when the client goes away (the process's fd count);
 * - reg.ts's register: a write of the datamatch value signals the eventfd and sends nothing, any
 *   other value goes as one REGION_WRITE; a doorbell without datamatch covers any write inside it;
 * - the emudev data plane's doorbell table: doorbell(id) reads and empties one eventfd, and
 *   sleepOnDoorbells (an idle device loop's back-off) returns as soon as one is signalled;
 * - net_virtio over the client against the device (kicks=1, so every burst rings): frames both
 *   ways byte-exact, the PMD's xstats count its doorbells as rx/tx_q0_kicks_eventfd when the
 *   server offers them and as _kicks_message when it does not (notify_fds=0), the device counts
 *   the kicks it read from the eventfds (kicks_eventfd), and the eventfds are gone after close.
 */
import t from 'tap';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../drivers/index.js';
import * as os from '../../src/os/libc.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import { DataPlane, DataPlaneControl } from '../../lib/emudev/dataplane.js';
import { SendLock, messageReg, type RegionWriteArg } from '../../lib/vfio-user/reg.js';
import { VirtioNetDevice } from '../../drivers/emu/virtio-net/device.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import { VnetWorld, testEal, until } from '../emu/virtio-net-helpers.js';
import { kind, negotiate, rawClient } from '../hardening/server-helpers.js';
import { openClient, pmdSend, pmdReceive, udpFrame, sameFrames, stopAndCheckPool } from './virtio-client.js';

const PEER_MAC = [0x02, 0x74, 0x73, 0x70, 0x77, 0x0b];
const dir = mkdtempSync(join(tmpdir(), `tsp-fdbell-${process.pid}-`));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The eventfds this process has open (numbers). */
function eventfds(): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc/self/fd')) {
    try { if (readlinkSync(`/proc/self/fd/${n}`) === 'anon_inode:[eventfd]') out.push(Number(n)); } catch { /* the directory's own fd */ }
  }
  return out;
}

/** One 8-byte read of an eventfd's counter (0 when empty). */
function drain(fd: number): number {
  const b = new Uint8Array(8);
  return os.readNoThrow(fd, b, 8) === 8 ? Number(new DataView(b.buffer).getBigUint64(0, true)) : 0;
}

let nextId = 100;
/** GET_REGION_IO_FDS on a raw client: the decoded reply and its fds (closed at teardown). */
async function ioFds(tt: { teardown(fn: () => unknown): void }, ch: ReturnType<typeof rawClient>, index: number, argsz = 4096): Promise<{ d: ReturnType<typeof P.decodeRegionIoFds>; fds: number[] }> {
  const msgId = nextId++;
  ch.sendRaw(P.encodeMessage({ msgId, command: P.Cmd.DEVICE_GET_REGION_IO_FDS, flags: 0, error: 0 }, P.encodeRegionIoFdsRequest(index, argsz)));
  // The reply's fds are kept (nextMessage/awaitReply close them): the test owns and closes them.
  const deadline = Date.now() + 5000;
  for (;;) {
    const r = ch.receive();
    if (r && r.msgId === msgId && (r.flags & P.FLAG_TYPE_MASK) === P.TYPE_REPLY) {
      tt.teardown(() => { for (const fd of r.fds) { try { os.close(fd); } catch { /* closed by the test */ } } });
      if (r.flags & P.FLAG_ERROR) throw new Error(`GET_REGION_IO_FDS ${index}: ${kind(r)}`);
      return { d: P.decodeRegionIoFds(r.payload), fds: r.fds };
    }
    if (r) { for (const fd of r.fds) os.close(fd); continue; }
    if (Date.now() > deadline) throw new Error(`GET_REGION_IO_FDS ${index}: no reply in 5 s`);
    await os.pollAsync([ch.fd], os.POLLIN, 100);
  }
}

t.test('the server answers GET_REGION_IO_FDS with the device\'s doorbells and their eventfds, and closes them with the client', async (t) => {
  const dev = new VirtioNetDevice({ ...L.parseVirtioNetArgs({}), mapNotify: false }, 'tsp-fdbell');
  t.teardown(() => dev.close());
  const plane = dev.emu.plane;
  const before = eventfds().length;
  const server = new VfioUserServer(dev.emu, join(dir, 'srv.sock'));
  server.start();
  t.teardown(() => server.close());
  const serverOwn = eventfds().length - before; // the server's wake eventfd
  const ch = rawClient(t, server.path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'version negotiated');
  const connected = eventfds().length; // and the two ends' wake eventfds

  const short = await ioFds(t, ch, L.BAR_CFG, P.REGION_IO_FDS_SIZE);
  t.same([short.d.argsz, short.d.count, short.d.subs.length, short.fds.length], [P.REGION_IO_FDS_SIZE + 3 * P.IO_FD_SUBREGION_SIZE, 3, 0, 0], 'argsz 16: the size needed and the count, no sub-regions, no fds');
  const { d, fds } = await ioFds(t, ch, L.BAR_CFG);
  t.same(d.subs.map((s) => [Number(s.offset), Number(s.size), s.fdIndex, s.type, s.flags, Number(s.data)]),
    [0, 1, 2].map((q) => [L.NOTIFY_OFF + 4 * q, 2, q, P.IO_FD_TYPE_IOEVENTFD, P.IO_FD_FLAG_DATAMATCH, q]), 'one ioeventfd per queue notify register, datamatch = the queue index');
  t.equal(fds.length, 3, 'three fds came with the reply');
  t.same(fds.map((fd) => readlinkSync(`/proc/self/fd/${fd}`)), Array(3).fill('anon_inode:[eventfd]'), 'each an eventfd');
  t.same([0, 1, 2].map((q) => plane.doorbellFd(q) >= 0), [true, true, true], 'the device holds them in its doorbell table');
  os.write(fds[1], new Uint8Array(new BigUint64Array([1n]).buffer));
  t.same([drain(plane.doorbellFd(0)), drain(plane.doorbellFd(1)), drain(plane.doorbellFd(2))], [0, 1, 0], 'a signal on the client\'s fd 1 is doorbell 1 of the device');
  const again = await ioFds(t, ch, L.BAR_CFG);
  os.write(again.fds[2], new Uint8Array(new BigUint64Array([2n]).buffer));
  t.equal(drain(plane.doorbellFd(2)), 2, 'a repeated request hands out the same eventfds');
  t.same([(await ioFds(t, ch, L.BAR_MSIX)).d.count, (await ioFds(t, ch, L.BAR_MSIX)).fds.length], [0, 0], 'the MSI-X BAR: no doorbells');
  t.equal(eventfds().length - connected, 3 + 3 + 3, 'the device\'s three and the two replies\' three');

  ch.close();
  t.ok(await until(() => plane.doorbellFd(0) < 0, 5000), 'the client went away: the doorbell table is empty');
  for (const fd of [...fds, ...again.fds]) os.close(fd);
  t.ok(await until(() => eventfds().length - before - serverOwn === 0, 2000), 'and every eventfd the server made is closed (the connection\'s too)');

  const off = new VfioUserServer(dev.emu, join(dir, 'off.sock'), { ioeventfds: false });
  off.start();
  t.teardown(() => off.close());
  const ch2 = rawClient(t, off.path);
  t.equal(kind(await negotiate(ch2, 1)), 'reply', 'version negotiated with a server told not to offer them');
  const none = await ioFds(t, ch2, L.BAR_CFG);
  t.same([none.d.count, none.fds.length, plane.doorbellFd(0)], [0, 0, -1], 'ioeventfds: false: no sub-regions, no eventfds');
});

t.test('an lcore register in an ioeventfd doorbell: the datamatch value signals it, other values go as REGION_WRITE', async (t) => {
  const [a, b] = os.socketpair(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK, 0);
  const bell = os.eventfd(0, os.EFD_NONBLOCK), wide = os.eventfd(0, os.EFD_NONBLOCK);
  t.teardown(() => { for (const fd of [a, b, bell, wide]) os.close(fd); });
  const arg: RegionWriteArg = {
    fd: a, region: 4, lock: SendLock.create().sab, msgId: 0x8000,
    doorbells: [{ offset: 0x3004, size: 2, fd: bell, datamatch: 1 }, { offset: 0x10, size: 4, fd: wide, datamatch: null }],
  };
  const sink = new Uint8Array(256);
  const sent = (): number => Math.max(0, os.readNoThrow(b, sink, sink.byteLength));
  const r = messageReg('tsp BAR4+0x3004', arg, 0x3004, 2, false);
  t.equal(r.via, 'eventfd', 'the register inside the doorbell is rung through its eventfd');
  r.write(1);
  r.write(1);
  t.same([drain(bell), sent()], [2, 0], 'two writes of the datamatch value: the counter says 2, nothing on the socket');
  r.write(5);
  t.same([drain(bell), sent()], [0, P.HEADER_SIZE + P.REGION_ACCESS_SIZE + 2], 'another value: no signal, one 34-byte REGION_WRITE');
  t.equal(messageReg('tsp BAR4+0x3008', arg, 0x3008, 2, false).via, 'message', 'a register outside every doorbell: messages');
  t.equal(messageReg('tsp BAR4+0x3004', arg, 0x3004, 1, false).via, 'message', 'a datamatch doorbell stands for writes of its size only');
  const w = messageReg('tsp BAR4+0x12', arg, 0x12, 2, false);
  w.write(0xbeef);
  t.same([w.via, drain(wide), sent()], ['eventfd', 1, 0], 'a doorbell without datamatch: any write inside it signals');
  t.throws(() => messageReg('tsp BAR4+0x3004', arg, 0x3004, 2, true), /cannot be read/, 'still write-only from an lcore');
});

t.test('the data plane\'s doorbell table: a non-blocking read per doorbell, and an idle sleep a doorbell ends at once', async (t) => {
  const none = { read: async (): Promise<Uint8Array> => { throw new Error('no memory'); }, write: async (): Promise<void> => { throw new Error('no memory'); } };
  const ctl = new DataPlaneControl('tsp-bells', [0, 0, 0, 0, 0], 4, none, 2);
  const efd = os.eventfd(0, os.EFD_NONBLOCK);
  t.teardown(() => { ctl.close(); os.close(efd); });
  ctl.quiesce(() => ctl.setDoorbellFd(1, efd));
  const plane = DataPlane.attach(ctl.desc());
  t.teardown(() => plane.detach());
  t.same([plane.doorbellCount, plane.doorbell(0), plane.doorbell(1)], [2, 0, 0], 'two doorbells, one with an eventfd, nothing signalled');
  let t0 = performance.now();
  plane.sleepOnDoorbells(60);
  const slept = performance.now() - t0;
  t.ok(slept >= 40, `no signal: it sleeps the time asked (${slept.toFixed(1)} ms of 60)`);
  os.write(efd, new Uint8Array(new BigUint64Array([3n]).buffer));
  t0 = performance.now();
  plane.sleepOnDoorbells(5000);
  const woke = performance.now() - t0;
  t.ok(woke < 1000, `a signal ends it at once (${woke.toFixed(1)} ms of 5000)`);
  t.same([plane.doorbell(1), plane.doorbell(1), plane.doorbell(0)], [3, 0, 0], 'the read returns the signals since the last one and empties the eventfd');
});

const devEal = testEal('tspfdbell');
t.teardown(() => devEal.close());

t.test('FD doorbells: net_virtio over tspmd\'s vfio-user client kicks through eventfds when offered, messages otherwise; counters show which', async (t) => {
  for (const offered of [true, false]) {
    await t.test(offered ? 'offered (notify_mmap=0): eventfd kicks' : 'not offered (notify_mmap=0 notify_fds=0): message kicks', async (t) => {
      const w = await VnetWorld.create(devEal, dir, { mapNotify: false, wantKicks: true, notifyFds: offered });
      t.teardown(() => w.close());
      const before = eventfds();
      const c = await openClient(t, w.socket, 1);
      const bar = c.port.pci.bar(c.port.pci.caps.notify);
      const io = bar.data().io;
      const bells = io?.kind === 'message' ? ((io.arg as RegionWriteArg).doorbells ?? []) : [];
      t.same(bells.map((x) => [x.offset, x.size, x.datamatch]), offered ? [0, 1, 2].map((q) => [L.NOTIFY_OFF + 4 * q, 2, q]) : [], offered ? 'the client kept one doorbell per queue' : 'the client got no doorbells');
      const mac = c.port.macAddr();
      const kicks0 = w.stat('kicks'), fdKicks0 = w.stat('kicks_eventfd');
      const out = Array.from({ length: 300 }, (_, i) => udpFrame(mac, PEER_MAC, 0xaa, offered ? 1 : 2, i));
      await pmdSend(c, out);
      sameFrames(t, await w.collectFromDevice(out.length), out, true, 'PMD TX -> device -> backend');
      const inj = Array.from({ length: 100 }, (_, i) => udpFrame(PEER_MAC, mac, 0x55, offered ? 1 : 2, i));
      t.equal(w.sendToDevice(inj.slice(0, 50)) + w.sendToDevice(inj.slice(50)), inj.length, 'frames put into the backend');
      sameFrames(t, (await pmdReceive(c, inj.length))[0], inj, true, 'backend -> device -> PMD RX');
      const x = c.port.xstats();
      const counts = { tx: x.tx_q0_kicks, txFd: x.tx_q0_kicks_eventfd, txMsg: x.tx_q0_kicks_message, rx: x.rx_q0_kicks, rxFd: x.rx_q0_kicks_eventfd, rxMsg: x.rx_q0_kicks_message };
      t.ok(counts.tx > 0 && counts.rx > 0, `the data half rang doorbells: ${JSON.stringify(counts)}`);
      if (offered) t.same([counts.txFd, counts.txMsg, counts.rxFd, counts.rxMsg], [counts.tx, 0, counts.rx, 0], 'every one through its eventfd, none as a message');
      else t.same([counts.txFd, counts.txMsg, counts.rxFd, counts.rxMsg], [0, counts.tx, 0, counts.rx], 'every one as a message, none through an eventfd');
      if (offered) t.ok(await until(() => w.stat('kicks_eventfd') - fdKicks0 > 0, 2000), `the device read them from the eventfds (${w.stat('kicks_eventfd') - fdKicks0} of ${w.stat('kicks') - kicks0} kicks)`);
      else t.ok(await until(() => w.stat('kicks') - kicks0 > 0, 2000) && w.stat('kicks_eventfd') === fdKicks0, `the device saw ${w.stat('kicks') - kicks0} kicks, none from an eventfd`);
      t.equal(c.port.stats().oerrors + c.port.stats().ierrors, 0, 'no errors');
      stopAndCheckPool(t, c, offered ? 'eventfd kicks' : 'message kicks');
      await c.eal.close();
      // The client closed its doorbell fds; the server's go when the device hears of the disconnect.
      t.ok(await until(() => eventfds().filter((fd) => !before.includes(fd)).length === 0, 5000), `no eventfd left behind (${eventfds().filter((fd) => !before.includes(fd)).length} new)`);
    });
  }
});
