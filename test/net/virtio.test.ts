/**
 * net_virtio without a real device: capability parsing on synthetic config spaces, feature
 * negotiation, queue sizes, ring geometry and index arithmetic, devargs; then the whole PMD against
 * a small in-process loopback device (FakeVirtioNet below, on FakeVirtioNetBase of
 * ./fake-virtio-net.ts: a VfioDevice whose common and device configuration are trapped register
 * handlers, whose notify page is real shared memory mapped into the BAR, and whose "device" step
 * moves TX frames back into the RX queue through the rings in EAL memory, iova = va). The
 * real-device proof is the lab (test/lab, checks virtio-*).
 */
import type { Test } from 'tap';
import { isMainThread } from 'node:worker_threads';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import * as V from '../../lib/virtio/virtio.js';
import { parseVirtioCaps, negotiateFeatures, chooseQueueSize, DRIVER_FEATURES } from '../../drivers/net/virtio/virtio_pci.js';
import { virtqLayout, usedPending, iovaHalves } from '../../drivers/net/virtio/virtqueue.js';
import { VirtioNetPort, parseVirtioArgs } from '../../drivers/net/virtio/virtio.js';
import { openRxQueue, openTxQueue, type RxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAlloc, pktmbufFree, writePacket, readPacket, chain, refcntUpdate, pktmbufAllocInit, pktmbufFreeBulk, MBUF_HDR } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import { MbufW16 } from '../../lib/mempool/mbuf_layout.js';
import { Mempool } from '../../lib/mempool/mempool.js';
import type { PortData } from '../../lib/ethdev/ethdev.js';
import type { LcoreContext } from '../../src/lcore/types.js';
import { ALLOC_RULE, AllocMeter, assertNoAlloc, type AllocResult, type AllocRule } from '../alloc.js';
import { FakeVirtioNetBase, NOTIFY, configSpace, vcap, patternFrame, type DmaMemory } from './fake-virtio-net.js';

// This file is also the worker lcore's module (virtioWorkerLoop below): there, tap is not loaded
// and the t.test calls are no-ops.
type Tap = typeof import('tap').default;
const t: Tap = isMainThread ? (await import('tap')).default : ({ test: () => undefined } as unknown as Tap);

const fb = V.featureBit;

// ---- synthetic config spaces (configSpace, vcap: ./fake-virtio-net.ts) ----

const QEMU_LIKE = [
  vcap(V.VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0),
  { id: V.PCI_CAP_ID_MSIX, bytes: [3, 0, 1, 0, 0, 0, 0x01, 0x08, 0, 0] },
  vcap(V.VIRTIO_PCI_CAP_NOTIFY_CFG, 4, 0x3000, 0x1000, 4),
  vcap(V.VIRTIO_PCI_CAP_DEVICE_CFG, 4, 0x2000, 0x1000),
  vcap(V.VIRTIO_PCI_CAP_ISR_CFG, 4, 0x1000, 0x1000),
  vcap(V.VIRTIO_PCI_CAP_COMMON_CFG, 4, 0, 0x1000),
];

t.test('parseVirtioCaps: the structures of a QEMU-like device', async (t) => {
  const caps = parseVirtioCaps(configSpace(QEMU_LIKE), 'dev');
  t.same({ bar: caps.common.bar, offset: caps.common.offset, length: caps.common.length }, { bar: 4, offset: 0, length: 0x1000 });
  t.same({ bar: caps.notify.bar, offset: caps.notify.offset, multiplier: caps.notify.multiplier }, { bar: 4, offset: 0x3000, multiplier: 4 });
  t.equal(caps.isr?.offset, 0x1000);
  t.equal(caps.device?.offset, 0x2000);
  t.equal(caps.all.length, 5, 'five vendor capabilities seen; the MSI-X one skipped');
});

t.test('parseVirtioCaps: the first of each type wins, reserved BARs and short capabilities are ignored', async (t) => {
  const caps = parseVirtioCaps(configSpace([
    vcap(V.VIRTIO_PCI_CAP_COMMON_CFG, 7, 0x100, 0x100), // BAR 7: reserved, ignored
    vcap(V.VIRTIO_PCI_CAP_COMMON_CFG, 2, 0x200, 0x100),
    vcap(V.VIRTIO_PCI_CAP_COMMON_CFG, 4, 0x300, 0x100),
    vcap(V.VIRTIO_PCI_CAP_NOTIFY_CFG, 2, 0x1000, 0x100), // no multiplier: too short for a notify capability
    vcap(V.VIRTIO_PCI_CAP_NOTIFY_CFG, 2, 0x2000, 0x100, 0),
  ]), 'dev');
  t.equal(caps.common.bar, 2);
  t.equal(caps.common.offset, 0x200);
  t.equal(caps.notify.offset, 0x2000);
  t.equal(caps.notify.multiplier, 0);
  t.equal(caps.device, null);
});

t.test('parseVirtioCaps: clear errors', async (t) => {
  t.throws(() => parseVirtioCaps(configSpace(QEMU_LIKE, false), 'dev0'), /dev0: .*no capability list.*not a modern/);
  t.throws(() => parseVirtioCaps(configSpace([vcap(V.VIRTIO_PCI_CAP_NOTIFY_CFG, 4, 0, 0x100, 4)]), 'dev0'), /no virtio common configuration capability \(cfg_type 1\).*type 2 at 0x40/);
  t.throws(() => parseVirtioCaps(configSpace([vcap(V.VIRTIO_PCI_CAP_COMMON_CFG, 4, 0, 0x100)]), 'dev0'), /no virtio notification capability/);
  t.throws(() => parseVirtioCaps(configSpace([vcap(V.VIRTIO_PCI_CAP_COMMON_CFG, 4, 0, 0x20), vcap(2, 4, 0, 0x100, 4)]), 'dev0'), /is 32 bytes; virtio 1.x needs 56/);
  const loop = configSpace(QEMU_LIKE);
  loop[0x41] = 0x40;
  t.throws(() => parseVirtioCaps(loop, 'dev0'), /loops back to 0x40/);
  const wild = configSpace(QEMU_LIKE);
  wild[0x41] = 0x20;
  t.throws(() => parseVirtioCaps(wild, 'dev0'), /capability pointer 0x20 is outside/);
  t.throws(() => parseVirtioCaps(new Uint8Array(16), 'dev0'), /too short/);
});

t.test('negotiateFeatures', async (t) => {
  const all = (bits: number[]): bigint => bits.reduce((m, b) => m | fb(b), 0n);
  const qemu = all([V.VIRTIO_NET_F_CSUM, V.VIRTIO_NET_F_MAC, V.VIRTIO_NET_F_MRG_RXBUF, V.VIRTIO_NET_F_STATUS, V.VIRTIO_NET_F_CTRL_VQ, V.VIRTIO_NET_F_CTRL_RX,
    V.VIRTIO_F_RING_INDIRECT_DESC, V.VIRTIO_F_RING_EVENT_IDX, V.VIRTIO_F_VERSION_1, V.VIRTIO_F_ACCESS_PLATFORM, V.VIRTIO_F_RING_PACKED, 40]);
  const f = negotiateFeatures(qemu, {}, 'dev');
  t.equal(f, all([V.VIRTIO_NET_F_MAC, V.VIRTIO_NET_F_MRG_RXBUF, V.VIRTIO_NET_F_STATUS, V.VIRTIO_NET_F_CTRL_VQ, V.VIRTIO_NET_F_CTRL_RX, V.VIRTIO_F_VERSION_1, V.VIRTIO_F_ACCESS_PLATFORM]),
    'what the driver uses; no offloads, no indirect/event-idx/packed, no unknown bits; ACCESS_PLATFORM accepted');
  t.equal(f & ~DRIVER_FEATURES, 0n);
  t.throws(() => negotiateFeatures(qemu & ~fb(V.VIRTIO_F_VERSION_1), {}, 'dev0'), /dev0: the device does not offer VIRTIO_F_VERSION_1.*modern/);
  t.equal(negotiateFeatures(qemu, { mrgRxbuf: false }, 'dev') & fb(V.VIRTIO_NET_F_MRG_RXBUF), 0n, 'mrg_rxbuf=0');
  const noCtrl = negotiateFeatures(qemu | fb(V.VIRTIO_NET_F_MQ), { ctrlVq: false }, 'dev');
  t.equal(noCtrl & (fb(V.VIRTIO_NET_F_CTRL_VQ) | fb(V.VIRTIO_NET_F_MQ) | fb(V.VIRTIO_NET_F_CTRL_RX)), 0n, 'ctrl_vq=0 drops MQ and CTRL_RX too');
  const mqOnly = negotiateFeatures(all([V.VIRTIO_F_VERSION_1, V.VIRTIO_NET_F_MQ]), {}, 'dev');
  t.equal(mqOnly, fb(V.VIRTIO_F_VERSION_1), 'MQ without CTRL_VQ is not accepted');
});

t.test('chooseQueueSize, ring layout, index arithmetic', async (t) => {
  t.equal(chooseQueueSize(1024, 256), 256, 'capped at the device maximum');
  t.equal(chooseQueueSize(100, 256), 128, 'rounded up to a power of two');
  t.equal(chooseQueueSize(256, 1024, 64), 64, 'queue_size cap');
  t.equal(chooseQueueSize(512, 300), 256, 'a device maximum that is no power of two is rounded down');
  t.equal(chooseQueueSize(1, 256), 2);
  for (const size of [2, 64, 256, 1024, 32768]) {
    const l = virtqLayout(size);
    const parts = [[l.desc, 16 * size], [l.avail, 6 + 2 * size], [l.used, 6 + 8 * size], [l.hdrs, 16 * size]];
    let ok = l.desc % 16 === 0 && l.avail % 2 === 0 && l.used % 4096 === 0 && l.total % 4096 === 0;
    for (let i = 1; i < parts.length; i++) ok &&= parts[i][0] >= parts[i - 1][0] + parts[i - 1][1];
    ok &&= l.hdrs + 16 * size <= l.total;
    t.ok(ok, `size ${size}: parts aligned (desc 16, avail 2, used page), in order, not overlapping, within ${l.total} bytes`);
  }
  t.throws(() => virtqLayout(100), /power of two/);
  t.equal(usedPending(5, 5), 0);
  t.equal(usedPending(2, 65534), 4, 'the 16-bit index wraps');
  t.same(iovaHalves(0xffff_fff0, 7, 0x20), [0x10, 8], 'a carry into the high half');
  t.same(iovaHalves(0x1000, 7, 0x20), [0x1020, 7]);
});

t.test('devargs', async (t) => {
  t.same(parseVirtioArgs('d', {}), { mrgRxbuf: undefined, ctrlVq: undefined });
  t.same(parseVirtioArgs('d', { queue_size: '128', mrg_rxbuf: '0', ctrl_vq: '1' }), { queueSize: 128, mrgRxbuf: false, ctrlVq: true });
  t.throws(() => parseVirtioArgs('0000:00:03.0', { queue: '1' }), /-a 0000:00:03.0: net_virtio has no key "queue"; valid keys: queue_size/);
  t.throws(() => parseVirtioArgs('d', { queue_size: '100' }), /queue_size=100 must be a power of two/);
  t.throws(() => parseVirtioArgs('d', { mrg_rxbuf: 'yes' }), /mrg_rxbuf=yes must be 0 or 1/);
});

// ---- a loopback virtio-net device in this process ----

const MAC = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

/**
 * A virtio-net device: common configuration and device configuration by register handlers
 * (REGION_READ/WRITE style), the first notify page shared memory that the driver maps (queues
 * 0..1023 notify there, multiplier 4), the control queue's notify register beyond it (trapped, so
 * commands are answered synchronously). step() loops TX frames back into RX queue 0.
 */
class FakeVirtioNet extends FakeVirtioNetBase {
  linkUp = true;
  usedFlags = V.VRING_USED_F_NO_NOTIFY;
  ctrlLog: number[][] = [];
  /** frames the device could not deliver (no RX buffers) */
  dropped = 0;
  /** frames looped back */
  moved = 0;

  /** queue pairs (max_virtqueue_pairs; MQ is offered when more than one) */
  readonly pairs: number;

  constructor(name: string, memory: DmaMemory, opts: { features?: bigint; mapNotify?: boolean; pairs?: number } = {}) {
    const pairs = opts.pairs ?? 1;
    super(name, memory, {
      backend: 'fake',
      mac: MAC,
      features: opts.features ?? [V.VIRTIO_F_VERSION_1, V.VIRTIO_F_ACCESS_PLATFORM, V.VIRTIO_NET_F_MAC, V.VIRTIO_NET_F_STATUS, V.VIRTIO_NET_F_MRG_RXBUF,
        V.VIRTIO_NET_F_CTRL_VQ, V.VIRTIO_NET_F_CTRL_RX, V.VIRTIO_F_RING_EVENT_IDX].reduce((m, b) => m | fb(b), 0n) | (pairs > 1 ? fb(V.VIRTIO_NET_F_MQ) : 0n),
      queueSizes: [...Array.from({ length: 2 * pairs }, () => 256), 64], // receiveq/transmitq pairs, then controlq
      notifyLength: 0x2000,
      mapNotify: opts.mapNotify ?? true,
    });
    this.pairs = pairs;
    this.notifyWords.fill(0xffffffff);
  }

  /** The MAC, the link status and max_virtqueue_pairs. */
  protected override netConfig(): Uint8Array {
    const d = super.netConfig();
    d[V.NET_CFG_STATUS] = this.linkUp ? V.VIRTIO_NET_S_LINK_UP : 0;
    d[V.NET_CFG_MAX_VQ_PAIRS] = this.pairs;
    return d;
  }

  /** The control queue's register is past the mapped page. */
  protected override queueNotifyOff(qsel: number): number {
    return qsel === this.queues.length - 1 ? 1024 : qsel;
  }

  /** The control queue's notify register: answer its commands at once. */
  protected override writeOther(off: number): void {
    if (off === NOTIFY + 1024 * 4) this.serveCtrl();
  }

  private serveCtrl(): void {
    const cq = this.queues.length - 1;
    for (let head = this.takeAvail(cq); head >= 0; head = this.takeAvail(cq)) {
      const parts: number[] = [];
      let d = this.desc(cq, head), ackAddr = 0;
      for (;;) {
        if (d.flags & V.VRING_DESC_F_WRITE) ackAddr = d.addr;
        else parts.push(...this.bytes(d.addr, d.len));
        if (!(d.flags & V.VRING_DESC_F_NEXT)) break;
        d = this.desc(cq, d.next);
      }
      this.ctrlLog.push(parts);
      this.bytes(ackAddr, 1)[0] = V.VIRTIO_NET_OK;
      this.pushUsed(cq, [[head, 1]]);
    }
  }

  /** Writes to the notify words since the last call, per queue (the device resets them to idle). */
  notifications(): number[] {
    const out = [0, 0];
    for (let vq = 0; vq < 2; vq++) {
      if ((this.notifyWords[vq] & 0xffff) === vq) out[vq]++;
      this.notifyWords[vq] = 0xffffffff;
    }
    return out;
  }

  /** Move every pending TX frame back to the RX queue of its pair (merging over buffers when MRG_RXBUF); returns frames moved. */
  step(): number {
    if (!(this.status & V.STATUS_DRIVER_OK)) return 0;
    let moved = 0;
    for (let p = 0; p < this.pairs; p++) if (this.queues[2 * p].enable && this.queues[2 * p + 1].enable) moved += this.stepPair(2 * p, 2 * p + 1);
    return moved;
  }

  private stepPair(rxq: number, txq: number): number {
    const rx = this.queues[rxq];
    for (const vq of [rxq, txq]) this.setU16(this.queues[vq].used, this.usedFlags);
    const mrg = (this.driverFeatures & fb(V.VIRTIO_NET_F_MRG_RXBUF)) !== 0n;
    let moved = 0;
    for (let head = this.takeAvail(txq); head >= 0; head = this.takeAvail(txq)) {
      const chunks: Uint8Array[] = [];
      for (let d = this.desc(txq, head); ; d = this.desc(txq, d.next)) {
        chunks.push(this.bytes(d.addr, d.len));
        if (!(d.flags & V.VRING_DESC_F_NEXT)) break;
      }
      const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      chunks.reduce((o, c) => (all.set(c, o), o + c.length), 0);
      const frame = all.subarray(V.NET_HDR_SIZE);
      this.pushUsed(txq, [[head, 0]]);
      // deliver: header + frame over as many RX buffers as it takes
      const bufs: Array<{ id: number; addr: number; len: number }> = [];
      let need = V.NET_HDR_SIZE + frame.length, avail = (this.u16(rx.avail + 2) - rx.lastAvail) & 0xffff, la = rx.lastAvail;
      while (need > 0 && avail > 0) {
        const id = this.u16(rx.avail + 4 + 2 * (la % rx.size));
        const d = this.desc(rxq, id);
        bufs.push({ id, addr: d.addr, len: d.len });
        need -= d.len;
        la = (la + 1) & 0xffff;
        avail--;
        if (!mrg) break;
      }
      if (need > 0) { this.dropped++; continue; }
      rx.lastAvail = la;
      const hdr = new Uint8Array(V.NET_HDR_SIZE);
      hdr[V.NET_HDR_NUM_BUFFERS] = bufs.length;
      const stream = new Uint8Array(V.NET_HDR_SIZE + frame.length);
      stream.set(hdr);
      stream.set(frame, V.NET_HDR_SIZE);
      let o = 0;
      const lens: number[] = [];
      for (const b of bufs) {
        const n = Math.min(b.len, stream.length - o);
        this.bytes(b.addr, n).set(stream.subarray(o, o + n));
        lens.push(n);
        o += n;
      }
      // publish all buffers of the frame at once, as a device does (one used.idx update)
      this.pushUsed(rxq, bufs.map((b, i) => [b.id, lens[i]]));
      moved++;
      this.moved++;
    }
    return moved;
  }
}

function eal(t: Test): Eal {
  const e = new Eal({ noHuge: true, filePrefix: `tspvirt${process.pid}_${Math.floor(Math.random() * 1e6)}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => e.close());
  return e;
}

/** A frame of len bytes: broadcast, source MAC, an experimental ethertype, then the sequence number pattern. */
function frame(len: number, seq: number): Uint8Array {
  return patternFrame(MAC, len, seq);
}

t.test('net_virtio on a loopback device: probe, start, bursts across the 16-bit index wrap, stop, restart, close', async (t) => {
  const e = eal(t);
  const dev = new FakeVirtioNet('fake0', e.memory);
  t.teardown(() => dev.close());
  const port = VirtioNetPort.open(dev, e.memory, { name: 'virtio_fake0' });
  t.equal(port.macString(), '02:11:22:33:44:55', 'MAC from the device configuration');
  t.same(port.link(), { up: true, speedMbps: 10000, fullDuplex: true });
  dev.linkUp = false;
  t.equal(port.link().up, false, 'link read live from the status field');
  dev.linkUp = true;
  t.equal(port.features & fb(V.VIRTIO_F_RING_EVENT_IDX), 0n, 'EVENT_IDX offered, not accepted');
  t.equal(dev.status & V.STATUS_FEATURES_OK, V.STATUS_FEATURES_OK, 'probe leaves the device at FEATURES_OK');

  const pool = pktmbufPoolCreate(e.memory, 'vt_pool', 2047, { cacheSize: 0 });
  t.throws(() => port.configure({ rxQueues: 2, txQueues: 2 }), /supports 1\.\.1/, 'one queue pair without MQ');
  port.configure({ rxQueues: 1, txQueues: 1, promiscuous: true });
  port.rxQueueSetup(0, 1024, pool); // more than the device's 256: clamped
  port.txQueueSetup(0, 128);
  port.start();
  t.equal(dev.status & V.STATUS_DRIVER_OK, V.STATUS_DRIVER_OK, 'DRIVER_OK');
  t.same(dev.ctrlLog, [[V.VIRTIO_NET_CTRL_RX, 0, 1]], 'RX_PROMISC on, through the control queue (its notify register trapped)');
  t.equal(pool.inUseCount(), 256, 'the RX ring holds 256 mbufs');
  dev.step(); // the device announces that it polls (used flags), as it does once it runs
  t.same(dev.notifications(), [1, 0], 'start kicked the RX queue once (from the main thread)');

  const data = port.data();
  const rx: RxQueue = await openRxQueue(data, 0);
  const tx: TxQueue = await openTxQueue(data, 0);
  const burst = new Uint32Array(32), got = new Uint32Array(64), buf = new Uint8Array(2048);
  let sent = 0, received = 0, badContent = 0, sentBytes = 0;
  const total = 70000; // more than 65536: both rings' 16-bit indices wrap
  while (received < total) {
    let n = 0;
    for (; n < burst.length && sent + n < total; n++) {
      const m = pktmbufAlloc(pool);
      const len = 60 + ((sent + n) % 1455);
      writePacket(m, frame(len, sent + n));
      burst[n] = m;
      sentBytes += len;
    }
    const k = tx.txBurst(burst, n);
    for (let i = k; i < n; i++) pktmbufFree(burst[i]);
    for (let i = k; i < n; i++) sentBytes -= 60 + ((sent + i) % 1455);
    sent += k;
    dev.step();
    const r = rx.rxBurst(got, got.length);
    for (let i = 0; i < r; i++) {
      const len = readPacket(got[i], buf);
      const want = frame(60 + (received % 1455), received);
      if (len !== want.length || buf.subarray(0, len).some((b, j) => b !== want[j])) badContent++;
      pktmbufFree(got[i]);
      received++;
    }
    if (k === 0 && r === 0 && sent < total) throw new Error(`stalled at ${sent} sent, ${received} received`);
  }
  t.equal(received, total, `${total} frames looped back`);
  t.equal(badContent, 0, 'every frame arrived in order with its bytes');
  t.equal(dev.dropped, 0);
  const st = port.stats();
  t.same([st.opackets, st.ipackets, st.obytes, st.ibytes, st.ierrors, st.oerrors], [total, total, sentBytes, sentBytes, 0, 0], 'port counters');
  t.same(dev.notifications(), [0, 0], 'the device polls (VRING_USED_F_NO_NOTIFY): no doorbell written');
  t.equal(port.xstats().tx_q0_kicks, 0);

  // without NO_NOTIFY the data path rings the doorbell once per burst, through the mapped page
  dev.usedFlags = 0;
  dev.step();
  const m = pktmbufAlloc(pool);
  writePacket(m, frame(100, 0));
  burst[0] = m;
  t.equal(tx.txBurst(burst, 1), 1);
  t.same(dev.notifications(), [0, 1], 'TX doorbell written (queue index 1)');
  dev.step();
  t.equal(rx.rxBurst(got, 32), 1);
  pktmbufFree(got[0]);
  t.same(dev.notifications(), [1, 0], 'RX reposted buffers: doorbell written (queue index 0)');
  t.equal(port.xstats().tx_q0_kicks, 1);
  t.equal(port.xstats().rx_q0_kicks, 1);
  dev.usedFlags = V.VRING_USED_F_NO_NOTIFY;

  // ring full: with the device not consuming, TX takes at most the ring's size, the rest stays the caller's
  const many = new Uint32Array(200);
  for (let i = 0; i < 200; i++) { many[i] = pktmbufAlloc(pool); writePacket(many[i], frame(64, i)); }
  const taken = tx.txBurst(many, 200);
  t.equal(taken, 128, 'a full TX ring takes 128 (its size)');
  for (let i = taken; i < 200; i++) pktmbufFree(many[i]);

  // stop with packets in flight: the device is reset, every mbuf returns
  port.stop();
  t.equal(dev.status, 0, 'stop resets the device');
  t.equal(pool.inUseCount(), 0, 'a stopped port holds no mbufs (RX ring and in-flight TX freed)');

  // restart: a fresh ring, the data half reopened
  port.start();
  const d2 = port.data();
  const rx2 = await openRxQueue(d2, 0), tx2 = await openTxQueue(d2, 0);
  const m2 = pktmbufAlloc(pool);
  writePacket(m2, frame(200, 7));
  burst[0] = m2;
  t.equal(tx2.txBurst(burst, 1), 1);
  dev.step();
  t.equal(rx2.rxBurst(got, 32), 1, 'traffic after restart');
  pktmbufFree(got[0]);
  port.close();
  t.equal(dev.status, 0, 'close leaves the device reset');
  t.equal(pool.inUseCount(), 0);
  t.equal(port.link().up, false, 'closed: link down');
});

t.test('net_virtio: MRG_RXBUF chains, scatter TX, shared mbufs', async (t) => {
  const e = eal(t);
  const dev = new FakeVirtioNet('fake1', e.memory);
  t.teardown(() => dev.close());
  const port = VirtioNetPort.open(dev, e.memory, { name: 'virtio_fake1' });
  const small = pktmbufPoolCreate(e.memory, 'vt_small', 1023, { cacheSize: 0, dataRoom: 64 });
  const big = pktmbufPoolCreate(e.memory, 'vt_big', 255, { cacheSize: 0 });
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 256, small);
  port.txQueueSetup(0, 256);
  port.start();
  const rx = await openRxQueue(port.data(), 0), tx = await openTxQueue(port.data(), 0);
  const f = frame(1000, 3);
  // a three-segment chain: header slot descriptor + one per segment
  const segs = [pktmbufAlloc(big), pktmbufAlloc(big), pktmbufAlloc(big)];
  writePacket(segs[0], f.subarray(0, 14));
  writePacket(segs[1], f.subarray(14, 100));
  writePacket(segs[2], f.subarray(100));
  chain(segs[1], segs[2]);
  chain(segs[0], segs[1]);
  const one = new Uint32Array([segs[0]]), got = new Uint32Array(8), buf = new Uint8Array(4096);
  t.equal(tx.txBurst(one, 1), 1);
  dev.step();
  t.equal(rx.rxBurst(got, 8), 1);
  const segsIn = new MbufView().at(got[0]).nbSegs;
  t.equal(segsIn, Math.ceil((1000 + 12) / 76), 'received over 76-byte buffers: a chain of 14 mbufs');
  t.equal(readPacket(got[0], buf), 1000);
  t.same(buf.subarray(0, 1000), f, 'the merged frame is intact');
  pktmbufFree(got[0]);

  // a shared mbuf (refcnt 2) is not written to: the header comes from the queue's slot
  const sh = pktmbufAlloc(big);
  writePacket(sh, frame(80, 9));
  refcntUpdate(sh, 1);
  one[0] = sh;
  t.equal(tx.txBurst(one, 1), 1);
  dev.step();
  t.equal(rx.rxBurst(got, 8), 1);
  t.equal(readPacket(got[0], buf), 80);
  t.same(buf.subarray(0, 80), frame(80, 9));
  pktmbufFree(got[0]);
  tx.txBurst(one, 0); // reclaim: drops the driver's reference
  t.equal(big.inUseCount(), 1, 'our reference is still held');
  pktmbufFree(sh);
  t.equal(port.stats().ierrors, 0);
  port.close();
  t.equal(small.inUseCount(), 0);
  t.equal(big.inUseCount(), 0);
});

t.test('net_virtio refuses to start when the notify register is not mappable', async (t) => {
  const e = eal(t);
  const dev = new FakeVirtioNet('fake2', e.memory, { mapNotify: false });
  t.teardown(() => dev.close());
  const port = VirtioNetPort.open(dev, e.memory, { name: 'virtio_fake2' });
  const pool = pktmbufPoolCreate(e.memory, 'vt_pool2', 511, { cacheSize: 0 });
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 128, pool);
  port.txQueueSetup(0, 128);
  t.throws(() => port.start(), /virtio_fake2: RX queue 0 \(virtqueue 0\): its notify register \(BAR4\+0x3000\) is not mmap'd/);
  t.equal(pool.inUseCount(), 0, 'the failed start gave its mbufs back');
  t.equal(dev.status, 0, 'and reset the device');
  port.close();
});

t.test('net_virtio refuses a legacy-only device and a device that rejects the features', async (t) => {
  const e = eal(t);
  const legacy = new FakeVirtioNet('fake3', e.memory, { features: fb(V.VIRTIO_NET_F_MAC) });
  t.teardown(() => legacy.close());
  t.throws(() => VirtioNetPort.open(legacy, e.memory), /fake3: the device does not offer VIRTIO_F_VERSION_1/);
  t.equal(legacy.status & V.STATUS_FAILED, 0, 'reset after the failed probe');
});


t.test('net_virtio with MQ: two queue pairs through VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET', async (t) => {
  const e = eal(t);
  const dev = new FakeVirtioNet('fake5', e.memory, { pairs: 2 });
  t.teardown(() => dev.close());
  const port = VirtioNetPort.open(dev, e.memory, { name: 'virtio_fake5' });
  t.equal(port.info().maxRxQueues, 2, 'two queue pairs from max_virtqueue_pairs');
  t.ok(port.info().capabilities.includes('multi-queue'));
  t.throws(() => port.configure({ rxQueues: 2, txQueues: 1 }), /virtio queues come in pairs/);
  const pool = pktmbufPoolCreate(e.memory, 'vt_mq', 2047, { cacheSize: 0 });
  port.configure({ rxQueues: 2, txQueues: 2, promiscuous: false });
  for (let q = 0; q < 2; q++) {
    port.rxQueueSetup(q, 128, pool);
    port.txQueueSetup(q, 128);
  }
  port.start();
  t.same(dev.ctrlLog, [[V.VIRTIO_NET_CTRL_MQ, V.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0], [V.VIRTIO_NET_CTRL_RX, 0, 0]],
    'VQ_PAIRS_SET 2 on the control queue (virtqueue 4, after both pairs), then promiscuous off');
  t.equal(port.xstats().ctrl_commands, 2);
  const d = port.data();
  const rxs = [await openRxQueue(d, 0), await openRxQueue(d, 1)], txs = [await openTxQueue(d, 0), await openTxQueue(d, 1)];
  const one = new Uint32Array(1), got = new Uint32Array(8), buf = new Uint8Array(2048);
  for (let q = 0; q < 2; q++) {
    one[0] = pktmbufAlloc(pool);
    writePacket(one[0], frame(90 + q, q));
    t.equal(txs[q].txBurst(one, 1), 1, `TX queue ${q} (virtqueue ${2 * q + 1})`);
  }
  dev.step();
  for (let q = 0; q < 2; q++) {
    t.equal(rxs[q].rxBurst(got, 8), 1, `RX queue ${q} (virtqueue ${2 * q}) got its pair's frame`);
    t.equal(readPacket(got[0], buf), 90 + q);
    pktmbufFree(got[0]);
  }
  const st = port.stats();
  t.same([st.q_opackets, st.q_ipackets], [[1, 1], [1, 1]], 'per-queue counters');
  port.close();
  t.equal(pool.inUseCount(), 0);
});

/** Counters the worker loop shares: [0] sent, [1] received, [2] refused by a full TX ring. */
export interface LoopArg {
  port: PortData;
  /** packets to send at least (sending goes on past count until the allocation window is over) */
  count: number;
  /** warm-up and window of the allocation measurement (test/alloc.ts), in packets sent */
  rule: AllocRule;
  counters: SharedArrayBuffer;
}

/**
 * The worker lcore: 64-byte bursts out through TX, whatever comes back in through RX, freed; no
 * allocation per burst, measured by the allocation rule (an AllocMeter over packets sent). Once
 * count are sent and the window is over it drains RX until it has been quiet for ~100 ms (the clock
 * is read every 4096 turns, not per burst).
 */
export async function virtioWorkerLoop(a: LoopArg, ctx: LcoreContext): Promise<AllocResult> {
  const rx = await openRxQueue(a.port, 0), tx = await openTxQueue(a.port, 0);
  const pool = Mempool.attach(a.port.rxPools[0]);
  const c = new Float64Array(a.counters);
  const tmpl = frame(64, 5), buf = new Uint32Array(32), rbuf = new Uint32Array(32), u8 = pool.u8, u16 = pool.u16;
  const meter = new AllocMeter(a.rule);
  let sent = 0, received = 0, quietTurns = 0, lastReceived = 0, turns = 0, lastCheck = 0, windowDone = false;
  while (!ctx.stopRequested()) {
    const sending = sent < a.count || !windowDone;
    if (sending && pktmbufAllocInit(pool, buf, 32, 0, 64, a.port.port)) {
      for (let i = 0; i < 32; i++) {
        const o = pool.offsetOf(buf[i]);
        u8.set(tmpl, o + MBUF_HDR + u16[(o >> 1) + MbufW16.DataOff]);
      }
      const k = tx.txBurst(buf, 32, 0);
      if (k < 32) {
        pktmbufFreeBulk(buf, 32 - k, k);
        c[2] += 32 - k;
      }
      sent += k;
      c[0] = sent;
    } else tx.txBurst(buf, 0, 0); // reclaim only
    const r = rx.rxBurst(rbuf, 32);
    if (r > 0) {
      pktmbufFreeBulk(rbuf, r, 0);
      received += r;
      c[1] = received;
    }
    if (!windowDone && meter.at(sent)) windowDone = await meter.settled();
    if (!sending && (++turns & 4095) === 0) {
      const now = performance.now();
      if (received === lastReceived) quietTurns += now - lastCheck;
      else quietTurns = 0;
      lastReceived = received;
      lastCheck = now;
      if (quietTurns > 100) break;
    }
  }
  pool.flushCache();
  return await meter.result();
}

const SELF = import.meta.url;

t.test('net_virtio data path on a worker lcore (doorbells through the BAR mapping): no allocation once warm', async (t) => {
  const e = new Eal({ noHuge: true, filePrefix: `tspvirtw${process.pid}`, lcores: [{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }], mainLcore: 0 });
  t.teardown(() => e.close());
  const dev = new FakeVirtioNet('fake4', e.memory);
  t.teardown(() => dev.close());
  const port = VirtioNetPort.open(dev, e.memory, { name: 'virtio_fake4' });
  const pool = pktmbufPoolCreate(e.memory, 'vt_wpool', 8191, { cacheSize: 256 });
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 256, pool);
  port.txQueueSetup(0, 256);
  port.start();
  dev.usedFlags = 0; // the device wants doorbells: the worker writes them into the mapped page
  dev.step();
  const timer = setTimeout(() => e.lcores.requestStop(), 120_000);
  t.teardown(() => clearTimeout(timer));
  const counters = new SharedArrayBuffer(32);
  const c = new Float64Array(counters);
  const count = 30_000;
  let finished = false, doorbells = 0;
  // The fake device runs here, on the main thread, between event-loop turns: two busy threads in all.
  const rule = { ...ALLOC_RULE, windowOps: 50_000 }; // in packets sent
  const done = e.lcores.launch<AllocResult>(1, SELF, 'virtioWorkerLoop', { port: port.data(), count, rule, counters })
    .finally(() => { finished = true; });
  while (!finished) {
    doorbells += dev.notifications().reduce((a, b) => a + b, 0);
    dev.step();
    await new Promise((r) => setImmediate(r));
  }
  const r = await done;
  const [sent, received] = c;
  t.ok(sent >= count, `${sent} packets sent (${c[2]} refused by a full TX ring on the way)`);
  t.equal(received, dev.moved, `every packet the device looped back was received (${received}; ${dev.dropped} dropped by the device for lack of RX buffers)`);
  t.equal(dev.moved + dev.dropped, sent, 'the device got every packet sent');
  t.ok(doorbells > 0, `the worker rang doorbells through the BAR mapping (${doorbells} seen)`);
  assertNoAlloc(t, r, 'net_virtio TX + RX on a worker lcore (packets sent)', rule);
  port.stop();
  t.equal(pool.inUseCount(), 0, 'every mbuf back after stop');
  port.close();
});
