/**
 * The emulated virtio-net device (drivers/emu/virtio-net) driven by a hand-written split-ring
 * driver (virtio-net-driver.ts) over a real vfio-user connection: PCI capabilities, feature
 * negotiation, packets both ways with their bytes checked on the backend's wire (net_ring ports
 * linked back to back), MRG_RXBUF on and off, interrupts and their suppression, the control
 * queue, every class of malicious descriptor (DEVICE_NEEDS_RESET, never a crash, then reset and
 * reinit), DMA_UNMAP under the polling lcore, disconnect and reconnect, the idle back-off, and
 * `tspmd emu virtio-net` as a process.
 *
 * Threads: the test (driver) thread, the device's host thread (vfio-user server, idle in poll) and
 * the device's lcore: one busy poller besides this thread. Worlds are built one after another.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { UsageError } from '../../src/options.js';
import * as V from '../../lib/virtio/virtio.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';
import { createVirtioNetEmu } from '../../drivers/emu/virtio-net/emu.js';
import { VfioUserClient } from '../../lib/vfio-user/client.js';
import { parseVirtioCaps } from '../../drivers/net/virtio/virtio_pci.js';
import { TestVirtioNet } from './virtio-net-driver.js';
import { VnetWorld, testEal, frame, until, sleep, startEmuArgs } from './virtio-net-helpers.js';
import { ALLOC_RULE, assertNoGcIn, driveWindow, type DrivenWindow } from '../alloc.js';

const dir = mkdtempSync(join(tmpdir(), 'tsp-vnet-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const eal = testEal('tspvn');
/** the allocation window of the traffic test, in frames (both ways) */
const TRAFFIC_RULE = { ...ALLOC_RULE, warmOps: 20_000, windowOps: 50_000 };
t.teardown(() => eal.close());

const F = V.featureBit;
const BASE = F(V.VIRTIO_F_VERSION_1) | F(V.VIRTIO_NET_F_MAC) | F(V.VIRTIO_NET_F_STATUS);
const MSIX = U.VFIO_PCI_MSIX_IRQ_INDEX;

/** An eventfd per vector, assigned on the client; closed at teardown. */
function eventfds(t: { teardown(fn: () => unknown): void }, c: VfioUserClient, n: number): number[] {
  const fds = Array.from({ length: n }, () => os.eventfd(0, os.EFD_NONBLOCK));
  c.setIrqs(MSIX, 0, fds);
  t.teardown(() => fds.forEach((fd) => os.close(fd)));
  return fds;
}

/** Whether the eventfd fired within ms (and clear it). */
function fired(fd: number, ms: number): boolean {
  if ((os.pollOne(fd, os.POLLIN, ms) & os.POLLIN) === 0) return false;
  os.read(fd, new Uint8Array(8));
  return true;
}

/** Reset, negotiate, set up pairs (vectors: queue q -> q, config -> 2*pairs+1), DRIVER_OK. */
function bringUp(d: TestVirtioNet, features: bigint, pairs = 1, size = 64, opts: { ctrl?: boolean; rxBuf?: number } = {}): void {
  d.reset();
  if (!d.negotiate(features)) throw new Error('FEATURES_OK refused');
  d.wr(V.COMMON_MSIX, 2, 2 * pairs + 1);
  for (let p = 0; p < pairs; p++) {
    d.setupQueue(V.rxQueueIndex(p), size, V.rxQueueIndex(p), opts.rxBuf ?? 2048);
    d.setupQueue(V.txQueueIndex(p), size, V.txQueueIndex(p));
  }
  const nq = d.rd(V.COMMON_NUMQ, 2);
  if (opts.ctrl) d.setupQueue(nq - 1, size, nq - 1, 256);
  d.driverOk();
}

t.test('device arguments: defaults, and a UsageError naming the key', async (t) => {
  t.same(L.parseVirtioNetArgs({}), { mac: [2, 0x76, 0x6e, 0x65, 0x74, 1], pairs: 1, backend: 0, mrg: true, queueSize: 256 });
  t.same(L.parseVirtioNetArgs({ mac: '02:00:00:00:00:09', queues: '4', backend: '1', mrg: '0', size: '1024' }), { mac: [2, 0, 0, 0, 0, 9], pairs: 4, backend: 1, mrg: false, queueSize: 1024 });
  t.throws(() => L.parseVirtioNetArgs({ colour: 'red' }), /virtio-net has no key "colour"; valid keys: mac \(.*\), queues \(/);
  t.throws(() => L.parseVirtioNetArgs({ queues: '0' }), /virtio-net: queues=0 must be a whole number from 1 to 64/);
  t.throws(() => L.parseVirtioNetArgs({ size: '300' }), /size=300 must be a power of two/);
  t.throws(() => L.parseVirtioNetArgs({ mrg: 'yes' }), /mrg=yes must be 0 or 1/);
  t.throws(() => L.parseVirtioNetArgs({ mac: '01:00:00:00:00:01' }), /mac=01:00:00:00:00:01 must be a unicast MAC address/);
  t.throws(() => L.parseVirtioNetArgs({ mac: 'zz' }), /mac=zz must be a unicast MAC address like 02:00:00:00:00:01/);
  const noPorts = testEal('tspvna');
  t.teardown(() => noPorts.close());
  let err: Error | null = null;
  try { createVirtioNetEmu(noPorts, {}, []); } catch (e) { err = e as Error; }
  t.ok(err instanceof UsageError && /--vdev net_tap0,iface=tsp0/.test(err.message), `no backend port: a UsageError telling how to add one (${err?.message})`);
});

t.test('one world: mrg=1, 2 queue pairs', async (t) => {
  const w = await VnetWorld.create(eal, dir, { pairs: 2, queueSize: 256 });
  t.teardown(() => w.close());
  const c = w.connect();
  const d = new TestVirtioNet(c);
  t.teardown(() => d.close());

  t.test('PCI identity and capabilities as the spec lays them out', async (t) => {
    const cfg = new Uint8Array(256);
    c.readRegion(U.VFIO_PCI_CONFIG_REGION_INDEX, 0, cfg);
    const dv = new DataView(cfg.buffer);
    t.same([dv.getUint16(0, true), dv.getUint16(2, true), cfg[8], dv.getUint32(8, true) >>> 8, dv.getUint16(0x2c, true), dv.getUint16(0x2e, true)], [0x1af4, 0x1041, 1, 0x020000, 0x1af4, 0x1100], 'ids, revision, class, subsystem');
    t.ok(dv.getUint16(6, true) & 0x10, 'capability list bit');
    t.same(d.caps.ids, [0x09, 0x09, 0x09, 0x09, 0x09, 0x11], 'five virtio vendor capabilities, then MSI-X');
    t.same(d.caps.virtio.map((x) => [x.cfgType, x.bar, x.offset, x.length]), [[1, 4, 0, 0x38], [2, 4, 0x3000, 0x1000], [3, 4, 0x1000, 1], [4, 4, 0x2000, 12], [5, 0, 0, 0]], 'common, notify, ISR, device: BAR4 offsets and lengths; PCI_CFG with no window set');
    t.same(d.caps.virtio.map((x) => cfg[x.at + 2]), [16, 20, 16, 16, 20], 'cap_len (the notify cap carries notify_off_multiplier, the PCI_CFG cap pci_cfg_data)');
    t.equal(d.multiplier, 4, 'notify_off_multiplier 4');
    t.same(d.caps.msix, { at: d.caps.msix!.at, tableSize: 6, tableBar: 1, tableOffset: 0, pbaBar: 1, pbaOffset: 0x800 }, 'MSI-X: 2*pairs+2 vectors, table and PBA in BAR1');
    const b4 = c.regionInfo(4);
    t.same([b4.size, b4.mappable, b4.sparse], [0x4000, true, [{ offset: 0x3000, size: 0x1000 }]], 'BAR4: only the notify page is mmappable');
    t.ok(d.bar.isMapped(0x3000, 4) && !d.bar.isMapped(0, 4), 'notify page mapped, common cfg trapped');
    t.equal(c.irqInfo(MSIX).count, 6);
    t.equal(c.irqInfo(U.VFIO_PCI_INTX_IRQ_INDEX).count, 1);
    t.same(Array.from(d.deviceConfig()), [2, 0x76, 0x6e, 0x65, 0x74, 1, 1, 0, 2, 0, 0, 0], 'device cfg: mac, status LINK_UP, max_virtqueue_pairs 2');
    t.equal(d.rd(V.COMMON_NUMQ, 2), 5, 'num_queues: 2 pairs + control queue');
    d.wr(V.COMMON_Q_SELECT, 2, 3);
    t.same([d.rd(V.COMMON_Q_SIZE, 2), d.rd(V.COMMON_Q_NOFF, 2), d.rd(V.COMMON_Q_MSIX, 2), d.rd(V.COMMON_Q_ENABLE, 2)], [256, 3, 0xffff, 0], 'queue 3: max size, notify off = index, no vector, disabled');
    d.wr(V.COMMON_Q_SELECT, 2, 5);
    t.equal(d.rd(V.COMMON_Q_SIZE, 2), 0, 'a queue that does not exist has size 0');
  });

  t.test('PCI configuration access capability: BAR4 through config space', async (t) => {
    const CFG = U.VFIO_PCI_CONFIG_REGION_INDEX;
    // Walk the list as a driver without BAR access would: one config read per hop, over the client.
    const byte = (off: number): number => { const b = new Uint8Array(1); c.readRegion(CFG, off, b); return b[0]; };
    let at = byte(0x34) & 0xfc;
    for (let hops = 0; at !== 0 && hops < 48; hops++, at = byte(at + 1) & 0xfc) {
      if (byte(at) === V.PCI_CAP_ID_VNDR && byte(at + V.CAP_CFG_TYPE) === V.VIRTIO_PCI_CAP_PCI_CFG) break;
    }
    if (!t.ok(at, `found at 0x${at.toString(16)}`)) return;
    t.equal(byte(at + V.CAP_LEN), L.PCI_CFG_CAP_SIZE, 'cap_len 20: virtio_pci_cap + pci_cfg_data[4]');
    const le = (v: number, n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (v >>> (8 * i)) & 0xff);
    /** Point the window: cap.bar, cap.offset, cap.length (each its own config write, as a driver does). */
    const win = (bar: number, off: number, len: number): void => {
      c.writeRegion(CFG, at + V.CAP_BAR, Uint8Array.of(bar));
      c.writeRegion(CFG, at + V.CAP_OFFSET, le(off, 4));
      c.writeRegion(CFG, at + V.CAP_LENGTH, le(len, 4));
    };
    const get = (n = 4): number => { const b = new Uint8Array(n); c.readRegion(CFG, at + L.PCI_CFG_DATA, b); return b.reduce((v, x, i) => v + x * 2 ** (8 * i), 0); };
    const put = (v: number, n = 4): void => { c.writeRegion(CFG, at + L.PCI_CFG_DATA, le(v, n)); };
    t.equal(get(), 0, 'no window yet (length 0): pci_cfg_data reads 0');

    d.reset();
    for (const sel of [0, 1]) {
      d.wr(V.COMMON_DFSELECT, 4, sel);
      win(4, V.COMMON_DF, 4);
      t.equal(get() >>> 0, d.rd(V.COMMON_DF, 4) >>> 0, `device_feature (select ${sel}) through pci_cfg_data = the direct BAR read`);
    }
    t.equal(get(), Number(d.deviceFeatures() >> 32n), 'a read of pci_cfg_data reads the BAR anew (select 1: the high half)');
    win(4, V.COMMON_Q_SELECT, 2);
    put(3, 2);
    t.equal(d.rd(V.COMMON_Q_SELECT, 2), 3, 'queue_select written through pci_cfg_data reads back directly');
    d.wr(V.COMMON_Q_SELECT, 2, 2);
    t.equal(get(2), 2, 'and a direct write shows through it');
    win(4, V.COMMON_Q_SIZE, 2);
    t.equal(get(2), 256, 'queue_size of the selected queue, 2 bytes');
    win(4, V.COMMON_NUMQ, 2);
    t.equal(get(), 5, 'num_queues (the two bytes after it read as 0)');
    const mac: number[] = [];
    for (let i = 0; i < 6; i++) { win(4, L.DEVICE_OFF + i, 1); mac.push(get(1)); }
    t.same(mac, [2, 0x76, 0x6e, 0x65, 0x74, 1], 'the MAC, byte by byte from the device configuration');

    // The notify page is shared memory: the same window reaches it, and the poll loop sees the write.
    win(4, L.NOTIFY_OFF, 4);
    t.equal(get() >>> 0, L.NOTIFY_IDLE, 'queue 0 notify word (shared memory) reads what the device left there');
    const kicks = w.stat('kicks');
    put(0);
    t.ok(await until(() => w.stat('kicks') > kicks, 5000), 'a notify written through pci_cfg_data is a kick the poll loop counts');
    const spare = L.NOTIFY_OFF + 4 * 6; // beyond the 5 queues: the loop never resets it
    win(4, spare, 4);
    put(0x12345678);
    t.equal(d.bar.read32(spare), 0x12345678, 'a write lands in the shared page (read through the client\'s mmap)');
    d.bar.write32(spare, 0xcafe);
    t.equal(get(), 0xcafe, 'and a store to the mmap reads back through the window');
    d.bar.write32(spare, 0);

    d.wr(V.COMMON_Q_SELECT, 2, 1);
    const invalid: Array<[string, number, number, number]> = [
      ['length 3', 4, V.COMMON_Q_SELECT, 3], ['length 8', 4, V.COMMON_Q_SELECT, 8], ['misaligned (offset 0x17, length 2)', 4, V.COMMON_Q_SELECT + 1, 2],
      ['past the common configuration', 4, V.COMMON_CFG_SIZE, 4], ['in no structure (BAR4 0x2100)', 4, L.DEVICE_OFF + 0x100, 4],
      ['beyond the BAR', 4, 0x10000, 4], ['the MSI-X BAR', 1, 0, 4], ['BAR0 (absent)', 0, 0, 4], ['BAR 7 (reserved)', 7, 0, 4],
    ];
    for (const [what, bar, off, len] of invalid) {
      win(bar, off, len);
      t.equal(get(), 0, `${what}: reads 0`);
      put(0xffff, 4);
    }
    t.equal(d.rd(V.COMMON_Q_SELECT, 2), 1, 'and none of those writes reached the device');
    const v0 = new Uint8Array(16);
    c.readRegion(L.BAR_MSIX, L.MSIX_TABLE_OFF, v0);
    t.same(Array.from(v0), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 'MSI-X table untouched (vector 0 as reset left it: masked)');

    // A driver that only reads config space (Linux, our PMD) is unaffected: ours still parses it.
    const cfg = new Uint8Array(256);
    c.readRegion(CFG, 0, cfg);
    const caps = parseVirtioCaps(cfg, 'emu');
    t.same([caps.common.offset, caps.notify.offset, caps.isr?.offset, caps.device?.offset], [0, 0x3000, 0x1000, 0x2000], 'the PMD\'s parser finds the four structures');
    t.same(caps.all.map((x) => x.cfgType), [1, 2, 3, 4, 5], 'and lists cfg_type 5 without using it');
    win(0, 0, 0);
    d.reset();
  });

  t.test('feature negotiation: only what is offered; FEATURES_OK refused otherwise', async (t) => {
    const want = BASE | F(V.VIRTIO_NET_F_MRG_RXBUF) | F(V.VIRTIO_NET_F_CTRL_VQ) | F(V.VIRTIO_NET_F_MQ);
    t.equal(V.featureNames(d.deviceFeatures()), V.featureNames(want), 'offered: VERSION_1 MAC STATUS MRG_RXBUF CTRL_VQ MQ');
    d.reset();
    t.notOk(d.negotiate(BASE | F(V.VIRTIO_NET_F_CSUM)), 'CSUM (not offered): refused');
    d.reset();
    t.notOk(d.negotiate(BASE | F(V.VIRTIO_F_RING_EVENT_IDX)), 'EVENT_IDX (not offered): refused');
    d.reset();
    t.notOk(d.negotiate(F(V.VIRTIO_NET_F_MAC)), 'without VERSION_1: refused');
    d.reset();
    t.notOk(d.negotiate(BASE | F(V.VIRTIO_NET_F_MQ)), 'MQ without CTRL_VQ: refused');
    d.reset();
    t.ok(d.negotiate(BASE | F(V.VIRTIO_NET_F_MRG_RXBUF)), 'a subset of the offer: accepted');
    d.wr(V.COMMON_GFSELECT, 4, 0);
    d.wr(V.COMMON_GF, 4, 1);
    t.equal(d.rd(V.COMMON_GF, 4), Number(BASE & 0xffffffffn) | (1 << V.VIRTIO_NET_F_MRG_RXBUF), 'features are frozen after FEATURES_OK');
    d.wr(V.COMMON_MSIX, 2, 77);
    t.equal(d.rd(V.COMMON_MSIX, 2), 0xffff, 'a vector beyond the table reads back NO_VECTOR');
    d.reset();
    t.equal(d.status(), 0, 'reset');
  });

  t.test('transmit: frames reach the backend with the same bytes; interrupts unless suppressed', async (t) => {
    bringUp(d, BASE | F(V.VIRTIO_NET_F_MRG_RXBUF), 1, 64);
    const fds = eventfds(t, c, 6);
    const frames = [frame(60, 1), frame(1514, 2), frame(64, 3), frame(999, 4), frame(1500, 5)];
    frames.forEach((f, i) => d.send(1, f, 1 + (i % 3)));
    t.ok(await d.waitUsed(1, frames.length), 'all transmit buffers came back');
    t.same(d.used(1).map((e) => e.len), frames.map(() => 0), 'used len 0 for transmit buffers');
    const got: Uint8Array[] = [];
    await until(() => { got.push(...w.receiveFromDevice()); return got.length >= frames.length; });
    t.equal(got.length, frames.length, 'every frame on the wire');
    t.ok(frames.every((f, i) => Buffer.from(f).equals(got[i])), 'byte for byte, in order (header stripped, chains of 1-3 descriptors)');
    t.ok(fired(fds[1], 2000), 'transmitq vector (1) fired');
    t.equal(d.usedFlags(1), V.VRING_USED_F_NO_NOTIFY, 'the device asks not to be notified (it polls)');
    d.setAvailFlags(1, V.VRING_AVAIL_F_NO_INTERRUPT);
    d.send(1, frame(100, 6));
    t.ok(await d.waitUsed(1, 1), 'sent');
    d.used(1);
    t.notOk(fired(fds[1], 200), 'VRING_AVAIL_F_NO_INTERRUPT: no interrupt');
    t.ok(w.stat('interrupts_suppressed') >= 1, 'counted as suppressed');
    t.ok(await until(() => w.receiveFromDevice().length === 1), 'that frame went out too');
    d.setAvailFlags(1, 0);
    t.ok(w.stat('tx_packets') >= 6 && w.stat('tx_bytes') >= 1514, `stats: ${w.stat('tx_packets')} packets, ${w.stat('tx_bytes')} bytes`);
    t.ok(w.stat('kicks') >= 1, `kicks seen in the polled notify page (${w.stat('kicks')})`);
  });

  t.test('receive with MRG_RXBUF: packets span buffers, num_buffers set, bytes intact', async (t) => {
    bringUp(d, BASE | F(V.VIRTIO_NET_F_MRG_RXBUF), 1, 64, { rxBuf: 256 });
    const fds = eventfds(t, c, 6);
    d.postRx(0, 32);
    const frames = [frame(60, 7), frame(1000, 8), frame(1514, 9), frame(244, 10), frame(245, 11)];
    t.equal(w.sendToDevice(frames), frames.length);
    // 12+60 -> 1 buffer, 12+1000 -> 4, 12+1514 -> 6, 12+244 -> 1, 12+245 -> 2
    t.ok(await d.waitUsed(0, 14), 'used entries for 14 buffers');
    const pkts = d.receive(0, d.used(0));
    t.same(pkts.map((p) => p.numBuffers), [1, 4, 6, 1, 2], 'num_buffers per packet');
    t.ok(pkts.every((p, i) => Buffer.from(p.data).equals(frames[i])), 'data intact across buffers');
    t.ok(pkts.every((p) => p.hdr.subarray(0, 10).every((b) => b === 0)), 'header: no offload flags, GSO_NONE');
    t.ok(fired(fds[0], 2000), 'receiveq vector (0) fired');
    d.setAvailFlags(0, V.VRING_AVAIL_F_NO_INTERRUPT);
    w.sendToDevice([frame(80, 12)]);
    t.ok(await d.waitUsed(0, 1));
    d.used(0);
    t.notOk(fired(fds[0], 200), 'suppressed: no interrupt');
    // 32 - 15 buffers left: a burst that needs more is dropped, not split
    const before = w.stat('rx_nobuf_drops');
    w.sendToDevice([frame(1514, 13), frame(1514, 14), frame(1514, 15)]);
    t.ok(await d.waitUsed(0, 12), 'two packets delivered (12 buffers)');
    t.ok(await until(() => w.stat('rx_nobuf_drops') === before + 1), 'the third found too few buffers: dropped and counted');
    t.same(d.receive(0, d.used(0)).map((p) => p.numBuffers), [6, 6]);
  });

  t.test('receive with no buffers posted: drops counted, device fine', async (t) => {
    bringUp(d, BASE, 1, 64);
    const before = w.stat('rx_nobuf_drops');
    w.sendToDevice([frame(60, 1), frame(60, 2), frame(60, 3)]);
    t.ok(await until(() => w.stat('rx_nobuf_drops') === before + 3), 'three drops');
    t.equal(d.status() & V.STATUS_DEVICE_NEEDS_RESET, 0, 'no error');
  });

  t.test('control queue: MQ_VQ_PAIRS_SET, unknown commands answer ERR, steering over 2 pairs', async (t) => {
    bringUp(d, BASE | F(V.VIRTIO_NET_F_CTRL_VQ) | F(V.VIRTIO_NET_F_MQ), 2, 64, { ctrl: true });
    const cq = d.queues.get(4)!;
    const cmd = (bytes: number[]): number => {
      const b = cq.buf + cq.nextDesc * cq.bufSize;
      d.u8.set(bytes, b);
      d.u8[b + 128] = 0xee;
      const h = cq.nextDesc;
      d.writeDesc(4, h, d.iovaOf(b), bytes.length, V.VRING_DESC_F_NEXT, h + 1);
      d.writeDesc(4, h + 1, d.iovaOf(b + 128), 1, V.VRING_DESC_F_WRITE, 0);
      cq.nextDesc += 2;
      d.pushAvail(4, h);
      return b + 128;
    };
    const ack1 = cmd([V.VIRTIO_NET_CTRL_MQ, V.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0]);
    const ack2 = cmd([V.VIRTIO_NET_CTRL_RX, 0, 1]);
    const ack3 = cmd([V.VIRTIO_NET_CTRL_MQ, V.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 3, 0]);
    t.ok(await d.waitUsed(4, 3), 'three commands answered');
    t.same(d.used(4).map((e) => e.len), [1, 1, 1], 'each wrote its ack byte');
    t.same([d.u8[ack1], d.u8[ack2], d.u8[ack3]], [V.VIRTIO_NET_OK, V.VIRTIO_NET_ERR, V.VIRTIO_NET_ERR], 'pairs=2 OK; CTRL_RX (not offered) ERR; pairs=3 (> max) ERR');
    t.equal(Atomics.load(w.state, L.G_ACTIVE_PAIRS), 2, 'two pairs in use');
    d.postRx(0, 32);
    d.postRx(2, 32);
    // UDP flows with different addresses: steered to both receive queues, each flow to one queue
    const flows = Array.from({ length: 16 }, (_, i) => {
      const f = frame(60, i);
      f[23] = 17;
      f[29] = i; f[33] = 255 - i;
      return f;
    });
    w.sendToDevice(flows);
    t.ok(await until(() => ((d.usedIdx(0) + d.usedIdx(2)) & 0xffff) === 16), '16 packets delivered');
    const q0 = d.receive(0, d.used(0)), q2 = d.receive(2, d.used(2));
    t.ok(q0.length > 0 && q2.length > 0, `spread over both receive queues (${q0.length} + ${q2.length})`);
    w.sendToDevice(flows);
    t.ok(await until(() => ((d.usedIdx(0) + d.usedIdx(2)) & 0xffff) === 32));
    t.same([d.used(0).length, d.used(2).length], [q0.length, q2.length], 'the same flows land on the same queues again');
  });

  t.test('malicious descriptors: DEVICE_NEEDS_RESET, config interrupt, no crash; reset and reinit work', async (t) => {
    const fds = eventfds(t, c, 6);
    const feat = BASE | F(V.VIRTIO_NET_F_MRG_RXBUF);
    const size = 64;
    const outside = 0x7000_0000; // no region there
    type Attack = { name: string; reason: number; run: () => void };
    const tx = (i: number, addr: number, len: number, flags: number, next: number): void => d.writeDesc(1, i, addr, len, flags, next);
    const good = (): number => d.iovaOf(d.queues.get(1)!.buf);
    const attacks: Attack[] = [
      { name: 'chain that loops (next points back)', reason: L.NeedsReset.LOOP, run: () => { tx(0, good(), 64, V.VRING_DESC_F_NEXT, 1); tx(1, good(), 64, V.VRING_DESC_F_NEXT, 0); d.pushAvail(1, 0); } },
      { name: 'self-loop longer than the queue', reason: L.NeedsReset.LOOP, run: () => { tx(5, good(), 16, V.VRING_DESC_F_NEXT, 5); d.pushAvail(1, 5); } },
      { name: 'next >= queue size', reason: L.NeedsReset.NEXT_RANGE, run: () => { tx(0, good(), 64, V.VRING_DESC_F_NEXT, size); d.pushAvail(1, 0); } },
      { name: 'avail head >= queue size', reason: L.NeedsReset.HEAD_RANGE, run: () => d.pushAvail(1, 0xffff) },
      { name: 'device-writable descriptor on a transmitq', reason: L.NeedsReset.DIRECTION, run: () => { tx(0, good(), 64, V.VRING_DESC_F_WRITE, 0); d.pushAvail(1, 0); } },
      { name: 'device-readable descriptor on a receiveq', reason: L.NeedsReset.DIRECTION, run: () => { d.writeDesc(0, 0, good(), 2048, 0, 0); d.pushAvail(0, 0); w.sendToDevice([frame(60, 1)]); } },
      { name: 'indirect descriptor (not negotiated)', reason: L.NeedsReset.INDIRECT, run: () => { tx(0, good(), 64, V.VRING_DESC_F_INDIRECT, 0); d.pushAvail(1, 0); } },
      { name: 'avail idx beyond the queue size', reason: L.NeedsReset.AVAIL_JUMP, run: () => d.pushAvail(1, 0, size + 1) },
      { name: 'transmit buffer outside mapped memory', reason: L.NeedsReset.BAD_ADDRESS, run: () => { tx(0, outside, 64, 0, 0); d.pushAvail(1, 0); } },
      { name: 'transmit buffer running past the mapping', reason: L.NeedsReset.BAD_ADDRESS, run: () => { tx(0, d.iovaOf(d.len - 16), 64, 0, 0); d.pushAvail(1, 0); } },
      { name: 'receive buffer outside mapped memory', reason: L.NeedsReset.BAD_ADDRESS, run: () => { d.writeDesc(0, 0, outside, 2048, V.VRING_DESC_F_WRITE, 0); d.pushAvail(0, 0); w.sendToDevice([frame(60, 1)]); } },
      { name: 'address beyond 2^53', reason: L.NeedsReset.BAD_ADDRESS, run: () => { tx(0, 2 ** 60, 64, 0, 0); d.pushAvail(1, 0); } },
    ];
    for (const a of attacks) {
      bringUp(d, feat, 1, size);
      for (const fd of fds) fired(fd, 0);
      d.readIsr();
      a.run();
      const hit = await until(() => (d.status() & V.STATUS_DEVICE_NEEDS_RESET) !== 0, 5000);
      t.ok(hit, `${a.name}: DEVICE_NEEDS_RESET`);
      t.equal(Atomics.load(w.state, L.G_NEEDS_RESET), a.reason, `${a.name}: reason "${L.NEEDS_RESET_NAMES[a.reason]}"`);
      t.ok(fired(fds[3], 2000), `${a.name}: config vector fired`);
      t.equal(d.readIsr() & V.ISR_CONFIG, V.ISR_CONFIG, `${a.name}: ISR config bit (read clears)`);
      t.ok(w.running, `${a.name}: the device lcore lives`);
    }
    t.equal(w.stat('needs_reset_events'), attacks.length, 'one needs-reset event per attack');
    // After all of that: reset, reinit, traffic both ways.
    bringUp(d, feat, 1, size);
    t.equal(d.status() & V.STATUS_DEVICE_NEEDS_RESET, 0, 'reset cleared DEVICE_NEEDS_RESET');
    t.same(w.receiveFromDevice(), [], 'nothing of the attacks went out');
    d.postRx(0, 8);
    d.send(1, frame(200, 42));
    let got: Uint8Array[] = [];
    t.ok(await until(() => { got = got.concat(w.receiveFromDevice()); return got.length === 1; }), 'a frame goes out after reinit');
    t.ok(Buffer.from(got[0]).equals(frame(200, 42)), `the frame's bytes (${got[0].byteLength}: ${Buffer.from(got[0].subarray(0, 16)).toString('hex')})`);
    w.sendToDevice([frame(300, 43)]);
    t.ok(await d.waitUsed(0, 1), 'and one comes in');
    t.ok(Buffer.from(d.receive(0, d.used(0))[0].data).equals(frame(300, 43)));
  });

  t.test('rings outside mapped memory, and DMA_UNMAP of the rings while the lcore polls', async (t) => {
    const feat = BASE;
    d.reset();
    d.negotiate(feat);
    d.setupQueue(0, 64);
    d.wr(V.COMMON_Q_SELECT, 2, 1);
    d.wr(V.COMMON_Q_SIZE, 2, 64);
    d.wr(V.COMMON_Q_DESCLO, 4, 0x7000_0000);
    d.wr(V.COMMON_Q_ENABLE, 2, 1);
    d.driverOk();
    t.ok(await until(() => (d.status() & V.STATUS_DEVICE_NEEDS_RESET) !== 0), 'a ring outside the mapping: DEVICE_NEEDS_RESET at DRIVER_OK');
    t.equal(Atomics.load(w.state, L.G_NEEDS_RESET), L.NeedsReset.RING_UNMAPPED);
    bringUp(d, feat, 1, 64);
    // traffic in flight, then the memory holding rings and buffers goes away
    for (let round = 0; round < 3; round++) {
      d.postRx(0, 16);
      for (let i = 0; i < 16; i++) d.send(1, frame(500, i));
      w.sendToDevice(Array.from({ length: 16 }, (_, i) => frame(400, i)));
      d.unmap();
      t.ok(await until(() => (d.status() & V.STATUS_DEVICE_NEEDS_RESET) !== 0), `round ${round}: unmapped while polling: DEVICE_NEEDS_RESET`);
      t.ok(w.running, `round ${round}: the lcore lives`);
      d.map();
      bringUp(d, feat, 1, 64);
    }
    w.receiveFromDevice();
    d.postRx(0, 4);
    w.sendToDevice([frame(128, 99)]);
    t.ok(await d.waitUsed(0, 1), 'after remap + reset + reinit: receive works');
    t.ok(Buffer.from(d.receive(0, d.used(0))[0].data).equals(frame(128, 99)));
  });

  t.test('idle: the loop backs off when there is no work', async (t) => {
    t.ok(await until(() => w.idle, 5000), 'idle flag set after ~100 ms without work');
    d.postRx(0, 4);
    w.sendToDevice([frame(64, 1)]);
    t.ok(await d.waitUsed(0, 1, 5000), 'an idle device still delivers');
    d.used(0);
  });

  t.test('disconnect and reconnect: the next client finds a reset device', async (t) => {
    d.reset();
    bringUp(d, BASE, 1, 64);
    c.close(); // abrupt
    await sleep(100);
    t.ok(w.running, 'the lcore lives after the client left');
    const c2 = w.connect();
    const d2 = new TestVirtioNet(c2);
    t.teardown(() => { d2.close(); c2.close(); }); // one client at a time: the next test connects anew
    t.equal(d2.status(), 0, 'device_status 0 for the new client');
    d2.wr(V.COMMON_Q_SELECT, 2, 0);
    t.same([d2.rd(V.COMMON_Q_ENABLE, 2), d2.rd(V.COMMON_Q_SIZE, 2)], [0, 256], 'queues back to their defaults');
    bringUp(d2, BASE | F(V.VIRTIO_NET_F_MRG_RXBUF), 1, 64);
    d2.postRx(0, 8);
    w.sendToDevice([frame(777, 5)]);
    t.ok(await d2.waitUsed(0, 1), 'the new client receives');
    t.ok(Buffer.from(d2.receive(0, d2.used(0))[0].data).equals(frame(777, 5)));
    d2.send(1, frame(333, 6));
    let got: Uint8Array[] = [];
    t.ok(await until(() => { got = got.concat(w.receiveFromDevice()); return got.length === 1; }), 'and transmits');
    t.ok(Buffer.from(got[0]).equals(frame(333, 6)));
  });

  // The allocation window (test/alloc.ts): traffic both ways only, after a warm-up in packets and
  // time; the lcore's collections are read after the loop stopped and counted inside it.
  let window: DrivenWindow | null = null;
  t.test('sustained traffic both ways: every byte checked, rates measured, no allocation', async (t) => {
    const c3 = w.connect();
    const d3 = new TestVirtioNet(c3);
    t.teardown(() => { d3.close(); c3.close(); });
    bringUp(d3, BASE | F(V.VIRTIO_NET_F_MRG_RXBUF), 1, 256);
    w.receiveFromDevice();
    const fr = Array.from({ length: 8 }, (_, i) => frame(64 + 200 * i, i));
    let sent = 0, recv = 0, txBad = 0, rxBad = 0, why = '';
    const base = w.stat('tx_packets');
    d3.postRx(0, 128);
    // one step: 128 frames out through the device (checked on the wire), 32 in (checked in the driver)
    const step = async (): Promise<number> => {
      for (let i = 0; i < 128; i++) d3.send(1, fr[i & 7]);
      if (!(await d3.waitUsed(1, 128, 5000))) throw new Error(`transmit stalled after ${sent} frames`);
      d3.used(1);
      sent += 128;
      await until(() => w.stat('tx_packets') >= base + sent, 5000);
      const got = w.receiveFromDevice();
      if (got.length !== 128 && !why) why = `batch at ${sent}: ${got.length} frames on the wire`;
      got.forEach((g, i) => {
        if (Buffer.from(g).equals(fr[i & 7])) return;
        if (!why) why = `batch at ${sent}, frame ${i}: ${g.byteLength} bytes, expected ${fr[i & 7].byteLength}`;
        txBad++;
      });
      w.sendToDevice(fr.concat(fr, fr, fr));
      if (!(await d3.waitUsed(0, 32, 5000))) throw new Error(`receive stalled after ${recv} frames`);
      const pk = d3.receive(0, d3.used(0));
      pk.forEach((p, i) => { if (!Buffer.from(p.data).equals(fr[i & 7]) || p.numBuffers !== 1) rxBad++; });
      recv += pk.length;
      d3.postRx(0, 32);
      return 128 + pk.length;
    };
    const t0 = performance.now();
    window = await driveWindow(step, TRAFFIC_RULE);
    const ms = performance.now() - t0;
    t.equal(txBad, 0, `transmit: ${sent} frames, ${Math.round(sent / ms)} kpps through driver + device + wire (with receive), all bytes equal ${why} (tx dropped ${w.stat('tx_dropped')}, errors ${w.stat('tx_errors')})`);
    t.equal(rxBad, 0, `receive: ${recv} frames, all bytes and headers right`);
  });

  t.test('stop: the loop returns its counts; the device keeps its statistics', async (t) => {
    const r = await w.close();
    t.ok(r !== null && r.iterations > 0, `the loop returned (${r?.iterations} iterations, ${r?.gcCount} GCs, ${r?.gcCountAfterWarmup} after its own warm-up: control work on the lcore since)`);
    if (window) assertNoGcIn(t, await eal.lcores.gcLog(1), window, 'the poll loop under traffic (no allocation per packet)');
    else t.fail('the traffic window did not run');
    t.notOk(w.running, 'not running');
    t.ok(w.stat('rx_packets') > 0 && w.stat('tx_packets') > 0, `rx ${w.stat('rx_packets')} / tx ${w.stat('tx_packets')} packets`);
  });

});

t.test('mrg=0: one chain per packet, num_buffers 1, too-small chains keep their buffers', async (t) => {
  const w = await VnetWorld.create(eal, dir, { mrg: false, queueSize: 128 });
  t.teardown(() => w.close());
  const c = w.connect();
  const d = new TestVirtioNet(c);
  t.teardown(() => d.close());
  t.equal(d.deviceFeatures() & F(V.VIRTIO_NET_F_MRG_RXBUF), 0n, 'MRG_RXBUF not offered');
  t.notOk(d.negotiate(BASE | F(V.VIRTIO_NET_F_MRG_RXBUF)), 'and refused when asked for');
  d.reset();
  t.equal(d.deviceFeatures() & F(V.VIRTIO_NET_F_MQ), 0n, 'MQ not offered with one pair');
  bringUp(d, BASE, 1, 128);
  d.postRx(0, 1, 600);
  const big = frame(1000, 1), small = frame(500, 2);
  w.sendToDevice([big]);
  t.ok(await until(() => w.stat('rx_too_big_drops') === 1), 'a packet larger than the chain is dropped');
  t.equal(d.usedIdx(0), 0, 'the buffer stays with the device');
  w.sendToDevice([small]);
  t.ok(await d.waitUsed(0, 1), 'the next packet that fits takes it');
  const [p] = d.receive(0, d.used(0));
  t.same([p.numBuffers, p.data.byteLength], [1, 500], 'num_buffers 1');
  t.ok(Buffer.from(p.data).equals(small));
  // a receive chain of several descriptors (header apart from the data)
  const rq = d.queues.get(0)!;
  const b = rq.buf + 10 * rq.bufSize;
  d.writeDesc(0, 10, d.iovaOf(b), 12, V.VRING_DESC_F_WRITE | V.VRING_DESC_F_NEXT, 11);
  d.writeDesc(0, 11, d.iovaOf(b + 12), 100, V.VRING_DESC_F_WRITE | V.VRING_DESC_F_NEXT, 12);
  d.writeDesc(0, 12, d.iovaOf(b + 112), 1900, V.VRING_DESC_F_WRITE, 0);
  d.pushAvail(0, 10);
  const f = frame(1514, 3);
  w.sendToDevice([f]);
  t.ok(await d.waitUsed(0, 1));
  const [e] = d.used(0);
  t.same([e.id, e.len], [10, 12 + 1514], 'one used entry: the head, header + frame bytes');
  t.ok(Buffer.from(d.u8.subarray(b + 12, b + 12 + 1514)).equals(f), 'the frame spans the chain\'s descriptors');
  t.equal(d.u8[b + 10] | (d.u8[b + 11] << 8), 1, 'num_buffers 1');
});

t.test('tspmd emu virtio-net --vdev net_ring0: a loopback backend in its own process', async (t) => {
  const sock = join(dir, 'cli.sock');
  const emu = await startEmuArgs(['--vdev', 'net_ring0', '-l', '0-1'], ['virtio-net,mac=02:00:00:00:00:42', '--socket', sock]);
  t.teardown(() => emu.stop());
  const c = VfioUserClient.connect(sock, { timeoutMs: 10_000 });
  t.teardown(() => c.close());
  const d = new TestVirtioNet(c);
  t.teardown(() => d.close());
  t.same(Array.from(d.deviceConfig(6)), [2, 0, 0, 0, 0, 0x42], 'mac= from the device arguments');
  bringUp(d, BASE | F(V.VIRTIO_NET_F_MRG_RXBUF), 1, 64, { rxBuf: 512 });
  d.postRx(0, 16);
  const f = frame(1400, 9);
  d.send(1, f);
  t.ok(await d.waitUsed(0, 3), 'the frame came back through the loopback port (3 buffers of 512)');
  const [p] = d.receive(0, d.used(0));
  t.same(p.numBuffers, 3);
  t.ok(Buffer.from(p.data).equals(f), 'same bytes');
  d.close();
  c.close();
  t.equal(await emu.stop(), 0, 'SIGTERM: clean exit');
  t.match(emu.stderr(), /virtio-net: tx_packets 1, tx_bytes 1400, .*rx_packets 1, rx_bytes 1400/, 'statistics printed at exit');
});

t.test('tspmd emu virtio-net without a backend port: a usage error that says how to add one', async (t) => {
  await t.rejects(startEmuArgs(['-l', '0-1'], ['virtio-net', '--socket', join(dir, 'none.sock')]), /--vdev net_tap0,iface=tsp0/);
});
