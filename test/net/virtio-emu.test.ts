/**
 * net_virtio against tspmd's own emulated virtio-net device (drivers/emu/virtio-net), without root.
 * The device is real in everything but its process: its control half and the vfio-user server
 * (lib/vfio-user/server.ts) run in a host worker thread of this process, its poll loop on lcore 1
 * of a device EAL, its backend a net_ring port whose peer (the "wire") this test reads and writes
 * (VnetWorld, test/emu/virtio-net-helpers.ts). The PMD is probed from a second EAL with
 * `-a vfio-user:SOCKET` and --no-huge memfd memory, DMA-mapped by fd, as an application probes it
 * (virtio-client.ts). Both EALs in one process: the device's mbuf pool can be audited as well as
 * the PMD's.
 *
 *   PMD (its EAL, this thread) --vfio-user--> [host thread: device, server | lcore 1: poll loop] -- net_ring <==> wire (this thread)
 *
 * Checked, with queues=1 and 2, mrg=1 and 0, 2048- and 64-byte RX buffers: frames the PMD sends
 * come out of the backend byte for byte, frames put into the backend arrive at the PMD byte for
 * byte; probe facts (MAC, link, features, capabilities, device status); no doorbell from the data
 * path (the device polls); stop with frames in flight and restart; MRG_RXBUF chains, scatter TX,
 * shared mbufs; MQ through the control queue; the port's counters against the device's; 70000
 * frames through a loopback backend from a worker lcore (both rings' 16-bit indices wrap) with no
 * garbage collection once warm; afterwards every mbuf back in its pool on both sides. Last, the
 * same PMD against `tspmd emu virtio-net --vdev net_ring0` in its own process.
 *
 * Busy-polling threads: the device's lcore; in the loopback test also the PMD's worker lcore.
 * The device in its own process on a TAP, with the kernel's counters: virtio-vfio-user.test.ts
 * (root). Device behaviour this device never shows (link down, doorbells wanted, not consuming,
 * legacy only, notify not mappable): the FakeVirtioNet cases in virtio.test.ts.
 */
import t, { type Test as Tap } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../drivers/index.js';
import { siblingModule } from '../../src/lcore/module.js';
import { formatMac } from '../../lib/net/mac.js';
import { pktmbufAlloc, pktmbufFree, writePacket, readPacket, chain, refcntUpdate, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';

const mv = new MbufView();
import { poolOf } from '../../lib/mempool/mempool.js';
import * as V from '../../lib/virtio/virtio.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import { VnetWorld, testEal, until, startEmuArgs } from '../emu/virtio-net-helpers.js';
import { openClient, startClient, pmdSend, pmdReceive, udpFrame, sameFrames, stopAndCheckPool, sleep, type Client } from './virtio-client.js';
import { virtioLoopbackLoop, frameLen, type LoopbackArg } from './virtio-worker.js';
import { ALLOC_RULE, assertNoAlloc } from '../alloc.js';

const WORKER = siblingModule(import.meta.url, 'virtio-worker');
const PEER_MAC = [0x02, 0x74, 0x73, 0x70, 0x77, 0x02];
const F = V.featureBit;

const dir = mkdtempSync(join(tmpdir(), 'tsp-vemu-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
/** The device side's EAL: memfd memory, lcore 0 (this thread) and lcore 1 (the device's poll loop). */
const devEal = testEal('tspvemu');
t.teardown(() => devEal.close());

const sum = (fs: Uint8Array[]): number => fs.reduce((n, f) => n + f.length, 0);
const deviceStatus = (w: VnetWorld): number => Atomics.load(w.state, L.G_STATUS);

/**
 * Start (or restart) the port and wait until the device has seen the start's RX doorbell: it has
 * then taken the new queues up and marked their used rings VRING_USED_F_NO_NOTIFY.
 */
async function start(c: Client, w: VnetWorld): Promise<void> {
  const kicks = w.stat('kicks');
  await startClient(c);
  if (!(await until(() => w.stat('kicks') > kicks))) throw new Error('the device never saw the RX doorbell of start()');
}

/**
 * One round: `count` frames out of the PMD (spread over its TX queues) must come out of the
 * backend byte-exact, then `count` frames put into the backend, `batch` at a time (a batch fits
 * the RX ring's buffers), must arrive at the PMD byte-exact. Returns the frames and what each RX
 * queue got.
 */
async function round(t: Tap, c: Client, w: VnetWorld, r: number, count: number, batch = 64): Promise<{ out: Uint8Array[]; inj: Uint8Array[]; rxPerQueue: number[] }> {
  const mac = c.port.macAddr();
  const queues = c.tx.length;
  const out = Array.from({ length: count }, (_, i) => udpFrame(mac, PEER_MAC, 0xaa, r, i));
  await pmdSend(c, out, (i) => i % queues);
  sameFrames(t, await w.collectFromDevice(count), out, queues === 1, `round ${r}: PMD TX -> device -> backend`);

  const inj = Array.from({ length: count }, (_, i) => udpFrame(PEER_MAC, mac, 0x55, r, i));
  const got: Uint8Array[] = [];
  const rxPerQueue = c.rx.map(() => 0);
  const take = (per: Uint8Array[][]): void => per.forEach((fs, q) => { rxPerQueue[q] += fs.length; got.push(...fs); });
  let sent = 0;
  for (let i = 0; i < count; i += batch) {
    const b = inj.slice(i, i + batch);
    sent += w.sendToDevice(b);
    take(await pmdReceive(c, b.length));
  }
  t.equal(sent, count, `round ${r}: ${count} frames put into the backend`);
  await sleep(50); // nothing more than that arrives
  take(await pmdReceive(c, 1, 100));
  sameFrames(t, got, inj, queues === 1, `round ${r}: backend -> device -> PMD RX`);
  return { out, inj, rxPerQueue };
}

/** The device's counters against what the port sent (less `lost`) and received; no drops, errors or resets. */
function checkDeviceStats(t: Tap, w: VnetWorld, c: Client, lost = { packets: 0, bytes: 0 }): void {
  const s = c.port.stats();
  t.same([w.stat('tx_packets'), w.stat('tx_bytes')], [s.opackets - lost.packets, s.obytes - lost.bytes],
    `device tx_packets, tx_bytes = port opackets, obytes${lost.packets ? ` less the ${lost.packets} frames the stop cut off` : ''} (${s.opackets}, ${s.obytes})`);
  t.same([w.stat('rx_packets'), w.stat('rx_bytes')], [s.ipackets, s.ibytes], `device rx_packets, rx_bytes = port ipackets, ibytes (${s.ipackets}, ${s.ibytes})`);
  t.same([s.ierrors, s.oerrors, s.imissed, s.rx_nombuf], [0, 0, 0, 0], 'port: no errors, misses or mbuf shortages');
  const names = ['tx_dropped', 'tx_errors', 'tx_nombuf', 'rx_nobuf_drops', 'rx_too_big_drops', 'needs_reset_events'] as const;
  t.same(names.map((n) => w.stat(n)), names.map(() => 0), `device: no ${names.join(', ')}`);
}

/** Close the port's EAL (the client leaves, the device resets), then the device; its pool must be whole. */
async function closeBoth(t: Tap, c: Client, w: VnetWorld): Promise<void> {
  await c.eal.close();
  await w.close();
  const a = w.pool.audit();
  t.same(a, { size: a.size, available: a.size, inUse: 0 }, `device side: every mbuf of the backend's pool back (${a.size})`);
}

t.test('queues=1 mrg=1: probe facts, bytes both ways, stop with frames in flight, restart, counters on both sides, every mbuf back', async (t) => {
  const mac = [0x02, 0x74, 0x73, 0x70, 0x76, 0x10];
  const w = await VnetWorld.create(devEal, dir, { mac, pairs: 1, mrg: true });
  t.teardown(() => w.close());
  const c = await openClient(t, w.socket, 1);
  t.equal(c.port.name, `vfio-user:${w.socket}`, 'probed through -a vfio-user:SOCKET as a net_virtio port');
  t.equal(formatMac(c.port.macAddr()), formatMac(mac), 'MAC from the device configuration');
  t.same(c.port.link(), { up: true, speedMbps: 10000, fullDuplex: true }, 'link up, from the device configuration\'s status');
  const offered = F(V.VIRTIO_F_VERSION_1) | F(V.VIRTIO_NET_F_MAC) | F(V.VIRTIO_NET_F_STATUS) | F(V.VIRTIO_NET_F_CTRL_VQ) | F(V.VIRTIO_NET_F_MRG_RXBUF);
  t.equal(c.port.offered, offered, `the device offers ${V.featureNames(offered)}`);
  t.equal(c.port.features, offered, 'and the driver accepts all of it');
  const info = c.port.info();
  t.same([info.maxRxQueues, info.capabilities.includes('mergeable-rx'), info.capabilities.includes('promiscuous')], [1, true, false],
    'one queue pair (no MQ), mergeable RX, no promiscuous control (no CTRL_RX)');
  const ok = V.STATUS_ACKNOWLEDGE | V.STATUS_DRIVER | V.STATUS_FEATURES_OK | V.STATUS_DRIVER_OK;
  t.equal(deviceStatus(w), ok, 'device_status ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK after start');
  await until(() => w.stat('kicks') > 0);

  const r1 = await round(t, c, w, 1, 300);
  t.same([c.port.xstats().rx_q0_kicks, c.port.xstats().tx_q0_kicks], [0, 0], 'the device polls (VRING_USED_F_NO_NOTIFY): the data path rang no doorbell');
  t.equal(c.chained, 0, '2048-byte buffers: every frame in one mbuf');

  // stop right after a burst: whatever the device sent before its reset is a prefix of it, byte-exact
  const cut = Array.from({ length: 64 }, (_, i) => udpFrame(c.port.macAddr(), PEER_MAC, 0xcc, 9, i));
  await pmdSend(c, cut);
  stopAndCheckPool(t, c, 'stop with frames in flight');
  t.equal(deviceStatus(w), 0, 'stop resets the device (device_status 0)');
  await sleep(50);
  const through = w.receiveFromDevice();
  sameFrames(t, through, cut.slice(0, through.length), true, `stop: ${through.length} of 64 frames came out before the reset`);
  const lost = { packets: cut.length - through.length, bytes: sum(cut.slice(through.length)) };
  t.throws(() => c.port.configure({ rxQueues: 2, txQueues: 2 }), /the driver supports 1\.\.1/, 'two queue pairs refused without MQ');

  await start(c, w);
  t.equal(deviceStatus(w), ok, 'restart: DRIVER_OK again');
  t.ok(c.port.link().up, 'link up after restart');
  const r2 = await round(t, c, w, 2, 200);
  const s = c.port.stats();
  t.same([s.opackets, s.obytes], [300 + 64 + 200, sum(r1.out) + sum(cut) + sum(r2.out)], 'port opackets, obytes over both rounds and the cut-off burst');
  t.same([s.ipackets, s.ibytes], [500, sum(r1.inj) + sum(r2.inj)], 'port ipackets, ibytes');
  checkDeviceStats(t, w, c, lost);
  stopAndCheckPool(t, c, 'second stop');
  c.port.close();
  t.equal(c.port.link().up, false, 'closed: link down');
  await closeBoth(t, c, w);
});

t.test('MRG_RXBUF over 64-byte buffers: chains in, scatter TX and a shared mbuf out', async (t) => {
  const w = await VnetWorld.create(devEal, dir, { mrg: true });
  t.teardown(() => w.close());
  const c = await openClient(t, w.socket, 1, { dataRoom: 64 });
  await until(() => w.stat('kicks') > 0);
  const mac = c.port.macAddr();

  // one frame of 1000 bytes: 12 + 1000 bytes over 76-byte buffers (12 of headroom + 64)
  const f = udpFrame(PEER_MAC, mac, 0x55, 0, 0, 1000);
  t.equal(f.length, 1000);
  w.sendToDevice([f]);
  const got = new Uint32Array(8), buf = new Uint8Array(2048);
  t.ok(await until(() => c.rx[0].rxBurst(got, 8) === 1), 'the frame arrived');
  t.equal(mv.at(got[0]).nbSegs, Math.ceil((1000 + 12) / 76), 'as a chain of 14 mbufs (num_buffers 14)');
  t.equal(readPacket(got[0], buf), 1000);
  t.same(buf.subarray(0, 1000), f, 'the merged frame is intact');
  pktmbufFree(got[0]);

  const r = await round(t, c, w, 1, 120, 8); // 8 frames of up to 1514 bytes: at most 160 of the 256 buffers
  t.equal(c.chained, 120, 'every frame of the round arrived as a chain');

  // a three-segment chain goes out as one frame
  const g = udpFrame(mac, PEER_MAC, 0xaa, 2, 900);
  const segs = [pktmbufAlloc(c.txPool), pktmbufAlloc(c.txPool), pktmbufAlloc(c.txPool)];
  writePacket(segs[0], g.subarray(0, 14));
  writePacket(segs[1], g.subarray(14, 100));
  writePacket(segs[2], g.subarray(100));
  chain(segs[1], segs[2]);
  chain(segs[0], segs[1]);
  const one = new Uint32Array([segs[0]]);
  t.equal(c.tx[0].txBurst(one, 1), 1);
  sameFrames(t, await w.collectFromDevice(1), [g], true, 'scatter TX: a 3-segment chain');

  // a shared mbuf (refcnt 2) is not written to: the virtio_net_hdr comes from the queue's slot, not its headroom
  const h = udpFrame(mac, PEER_MAC, 0xaa, 3, 20);
  const sh = pktmbufAlloc(c.txPool);
  writePacket(sh, h);
  const p = poolOf(sh), d = mv.at(sh).data;
  p.u8.fill(0xa5, d - V.NET_HDR_SIZE, d);
  refcntUpdate(sh, 1);
  one[0] = sh;
  t.equal(c.tx[0].txBurst(one, 1), 1);
  sameFrames(t, await w.collectFromDevice(1), [h], true, 'a shared mbuf');
  t.ok(p.u8.subarray(d - V.NET_HDR_SIZE, d).every((b) => b === 0xa5), 'its headroom was not written');
  t.same(p.u8.subarray(d, d + h.length), h, 'nor its data');
  c.tx[0].txBurst(one, 0); // reclaim: the driver drops its reference
  t.equal(mv.at(sh).refcnt, 1, 'after reclaim ours is the only reference');
  pktmbufFree(sh);

  const s = c.port.stats();
  t.same([s.ipackets, s.ibytes], [121, 1000 + sum(r.inj)], 'port ipackets, ibytes (chains counted once, by packet length)');
  checkDeviceStats(t, w, c);
  stopAndCheckPool(t, c, '64-byte buffers');
  await closeBoth(t, c, w);
});

t.test('mrg=0: one buffer per frame, bytes both ways', async (t) => {
  const w = await VnetWorld.create(devEal, dir, { mrg: false });
  t.teardown(() => w.close());
  const c = await openClient(t, w.socket, 1);
  await until(() => w.stat('kicks') > 0);
  t.equal(c.port.features & F(V.VIRTIO_NET_F_MRG_RXBUF), 0n, 'MRG_RXBUF not negotiated (not offered)');
  t.notOk(c.port.info().capabilities.includes('mergeable-rx'), 'no mergeable-rx capability');
  await round(t, c, w, 1, 200);
  t.equal(c.chained, 0, 'no chains');
  checkDeviceStats(t, w, c);
  stopAndCheckPool(t, c, 'mrg=0');
  await closeBoth(t, c, w);
});

t.test('queues=2: MQ_VQ_PAIRS_SET through the control queue, both pairs carry traffic both ways', async (t) => {
  const w = await VnetWorld.create(devEal, dir, { pairs: 2, mrg: true });
  t.teardown(() => w.close());
  const c = await openClient(t, w.socket, 2);
  await until(() => w.stat('kicks') > 0);
  const info = c.port.info();
  t.same([info.maxRxQueues, info.capabilities.includes('multi-queue')], [2, true], 'two queue pairs from max_virtqueue_pairs (MQ)');
  t.equal(c.port.ctrlCommands, 1, 'one control command completed (VQ_PAIRS_SET; no CTRL_RX, so no RX_PROMISC)');
  t.equal(w.stat('ctrl_commands'), 1, 'the device answered one control command');
  t.equal(Atomics.load(w.state, L.G_ACTIVE_PAIRS), 2, 'and now uses 2 queue pairs');
  const { rxPerQueue } = await round(t, c, w, 1, 256);
  const s = c.port.stats();
  t.same(s.q_opackets.slice(0, 2), [128, 128], 'TX: 128 frames through each queue pair');
  t.ok(rxPerQueue[0] > 0 && rxPerQueue[1] > 0, `RX: the device steered flows to both queue pairs (${rxPerQueue.join(' + ')})`);
  t.same(s.q_ipackets.slice(0, 2), rxPerQueue, 'per-queue RX counters = what each queue delivered');
  checkDeviceStats(t, w, c);
  stopAndCheckPool(t, c, 'queues=2');
  t.throws(() => c.port.configure({ rxQueues: 2, txQueues: 1 }), /virtio queues come in pairs/, '2 RX and 1 TX queues refused');
  await closeBoth(t, c, w);
});

t.test('worker lcore, loopback backend: 70000 frames or more out and back in order, every byte checked, 16-bit indices wrap, no allocation once warm', { timeout: 180_000 }, async (t) => {
  const w = await VnetWorld.create(devEal, dir, { mrg: true }, true, true);
  t.teardown(() => w.close());
  const c = await openClient(t, w.socket, 1, { workers: [2] });
  await until(() => w.stat('kicks') > 0);
  const count = 70_000; // more than 65536: the avail and used indices of both rings wrap
  const counters = new SharedArrayBuffer(24);
  const timer = setTimeout(() => c.eal.lcores.requestStop(), 150_000);
  t.teardown(() => clearTimeout(timer));
  const rule = { ...ALLOC_RULE, warmOps: 10_000, windowOps: 50_000 }; // in frames received
  const arg: LoopbackArg = { port: c.port.data(), count, rule, inFlight: 192, quietMs: 5000, counters };
  const r = await c.eal.lcores.launch(2, WORKER, virtioLoopbackLoop, arg);
  clearTimeout(timer);
  const refused = new Float64Array(counters)[2];
  t.ok(r.received >= count && r.sent === r.received, `${r.sent} frames sent and ${r.received} back, at least ${count} (${refused} refused by a full TX ring on the way, sent again)`);
  t.equal(r.bad, 0, `every frame came back in order with its length and bytes${r.bad ? ` (first bad: #${r.firstBad})` : ''}`);
  assertNoAlloc(t, r.alloc, 'net_virtio loopback on a worker lcore (frames)', rule);
  let bytes = 0;
  for (let i = 0; i < r.received; i++) bytes += frameLen(i);
  const s = c.port.stats();
  t.same([s.opackets, s.obytes, s.ipackets, s.ibytes], [r.sent, bytes, r.received, bytes], 'port counters');
  checkDeviceStats(t, w, c);
  stopAndCheckPool(t, c, 'worker');
  await closeBoth(t, c, w);
});

t.test('tspmd emu virtio-net --vdev net_ring0 in its own process: frames out and back byte-exact, its exit statistics', async (t) => {
  const sock = join(dir, 'emu.sock');
  const mac = '02:74:73:70:76:20';
  const emu = await startEmuArgs(['--vdev', 'net_ring0', '-l', '0-1'], [`virtio-net,mac=${mac}`, '--socket', sock]);
  t.teardown(() => emu.stop());
  const c = await openClient(t, sock, 1);
  t.equal(formatMac(c.port.macAddr()), mac, 'MAC = the device\'s mac= argument');
  const mine = c.port.macAddr();
  const frames = Array.from({ length: 200 }, (_, i) => udpFrame(mine, mine, 0xee, 1, i)); // 200 < the 256 RX buffers: none dropped
  await pmdSend(c, frames);
  const got = (await pmdReceive(c, frames.length))[0];
  await sleep(50);
  got.push(...(await pmdReceive(c, 1, 100))[0]);
  sameFrames(t, got, frames, true, 'PMD TX -> device -> loopback backend -> device -> PMD RX');
  const s = c.port.stats();
  stopAndCheckPool(t, c, 'tspmd emu');
  await c.eal.close();
  t.equal(await emu.stop(), 0, 'the device exits 0 on SIGTERM');
  const line = emu.stderr().split('\n').find((l) => l.startsWith('virtio-net: tx_packets ')) ?? '';
  t.match(line, new RegExp(`^virtio-net: tx_packets ${s.opackets}, tx_bytes ${s.obytes}, tx_dropped 0, tx_errors 0, tx_nombuf 0, rx_packets ${s.ipackets}, rx_bytes ${s.ibytes}, rx_nobuf_drops 0, rx_too_big_drops 0, needs_reset_events 0,`),
    `the device's exit statistics = the port's counters (${s.opackets} packets, ${s.obytes} bytes each way), no drops`);
});
