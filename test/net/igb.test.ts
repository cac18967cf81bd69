/**
 * net_igb on the host (no NIC here: the driver itself runs in the lab, test/lab/igb.test.ts):
 * an 82576 bound to vfio-pci in a sysfs fixture is listed by `tspmd devices` as probe-able by
 * net_igb (no skip reason); an 82576 still on the kernel's igb driver is listed with how to bind
 * it; the driver's devargs are checked; the register layout matches the 82576 datasheet's
 * (spot checks of the queue register strides the data path depends on); the TX data path, on a
 * memory-backed stand-in for BAR0, gives no descriptor a buffer that crosses a page of DMA memory;
 * on FakeIgb (test/net/fake-igb.ts) with a sparse BAR0 (bar_unmap=) and with BAR0 unmapped
 * (bar_mmap=0) the port probes and starts through pread/pwrite and its queues move their tails
 * through pwrite on the device's fd.
 */
import t from 'tap';
import { buildFixture } from '../pci/fixture.js';
import { runCli } from '../cli.js';
import type { DeviceRow } from '../../app/devices/devices.js';
import { IgbPort, parseIgbArgs } from '../../drivers/net/igb/igb.js';
import * as R from '../../drivers/net/igb/igb_regs.js';
import { openTxQueue, ST_WORDS, type IgbQueueData } from '../../drivers/net/igb/igb_data.js';
import { Eal } from '../../src/eal.js';
import { mmap, munmap, viewOf, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS } from '../../src/os/libc.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, MBUF_NONE } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import { txqStatsBase, TXQ_PACKETS, openRxQueue, openTxQueue as openPortTxQueue, type PortData } from '../../lib/ethdev/ethdev.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { FakeIgb } from './fake-igb.js';

const fx = buildFixture(
  [
    { addr: '0000:02:00.0', vendor: 0x8086, device: 0x10c9, subVendor: 0x8086, subDevice: 0xa03c, classCode: 0x020000, group: 7, driver: 'vfio-pci', cdev: 'vfio3',
      resources: [[0xfc000000n, 0xfc01ffffn, 0x40200n], [0n, 0n, 0n], [0xd000n, 0xd01fn, 0x40101n], [0xfc020000n, 0xfc023fffn, 0x40200n]] },
    { addr: '0000:02:00.1', vendor: 0x8086, device: 0x10c9, subVendor: 0x8086, subDevice: 0xa03c, classCode: 0x020000, group: 8, driver: 'igb' },
  ],
  [],
  { container: true, groups: [7], cdevs: ['vfio3'], iommufd: true },
);
t.teardown(fx.remove);

t.test('tspmd devices: an 82576 on vfio-pci is probe-able by net_igb', async (t) => {
  const r = await runCli(['devices', '--sysfs-root', fx.sysfs, '--dev-root', fx.dev, '--json']);
  t.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout.trim().split('\n').pop() ?? '[]') as DeviceRow[];
  const a = rows.find((x) => x.addr === '0000:02:00.0');
  t.equal(a?.driver, 'net_igb', 'net_igb matches 8086:10c9');
  t.equal(a?.skip_reason, null, 'no skip reason: it will be probed');
  t.equal(a?.vfio_mode, 'iommufd');
  const b = rows.find((x) => x.addr === '0000:02:00.1');
  t.equal(b?.driver, 'net_igb');
  t.match(b?.skip_reason, /^bound to igb; bind it to vfio-pci: /, 'the one on the kernel driver says how to bind it');
  const table = await runCli(['devices', '--sysfs-root', fx.sysfs, '--dev-root', fx.dev]);
  t.match(table.stdout, /pci\s+0000:02:00\.0\s+8086:10c9\s+0x020000\s+7\s+vfio-pci\s+iommufd\s+will be probed by net_igb/);
});

t.test('devargs', async (t) => {
  t.same(parseIgbArgs('0000:02:00.0', {}), {});
  const key = '6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa';
  t.same(parseIgbArgs('0000:02:00.0', { rss_key: key }).rssKey?.slice(0, 4), [0x6d, 0x5a, 0x56, 0xda]);
  t.throws(() => parseIgbArgs('0000:02:00.0', { rss_key: 'abc' }), /rss_key=abc must be 80 hex digits/);
  t.throws(() => parseIgbArgs('0000:02:00.0', { rss_kye: key }), /rss_kye/);
  t.same(parseIgbArgs('0000:02:00.0', { bar_mmap: '0' }), { barMmap: false });
  t.same(parseIgbArgs('0000:02:00.0', { bar_unmap: '0x0-0xfff:0xc000-0xdfff' }).barUnmap, [{ offset: 0, size: 0x1000 }, { offset: 0xc000, size: 0x2000 }]);
  t.throws(() => parseIgbArgs('0000:02:00.0', { bar_unmap: '0xc000-0xc0ff' }), /bar_unmap range 0xc000-0xc0ff must cover whole 4 KiB pages/);
  t.throws(() => parseIgbArgs('0000:02:00.0', { bar_unmap: 'c000' }), /bar_unmap/);
});

t.test('queue register layout (82576 datasheet 8.10/8.12: 0xC000/0xE000 + 0x40 per queue)', async (t) => {
  t.equal(R.rdbal(0), 0xc000);
  t.equal(R.rdt(1), 0xc058);
  t.equal(R.srrctl(3), 0xc0cc);
  t.equal(R.tdt(0), 0xe018);
  t.equal(R.txdctl(2), 0xe0a8);
  t.equal(R.ivar(7), 0x171c);
  t.equal(R.eitr(9), 0x16a4);
});

t.test('TX: a segment that crosses a page of DMA memory takes one descriptor per page (4 KiB pages)', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tspigbtx${process.pid}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const size = 64, page = 4096;
  t.equal(eal.memory.config.pageSize, page, '--no-huge: 4 KiB pages');
  const zone = eal.memory.reserve('tsp_igbtx_ring', size * R.DESC_BYTES, 128, true);
  const barLen = 0x20000;
  const barVa = mmap(0n, barLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  t.teardown(() => munmap(barVa, barLen));
  const pool = pktmbufPoolCreate(eal.memory, 'tsp_igbtx_pool', 63, { cacheSize: 0 });
  const d: IgbQueueData = {
    q: 0, va: zone.va, size, bar: { name: 'stand-in BAR0', va: barVa, size: barLen, mapped: [{ offset: 0, size: barLen }] },
    mbufs: new SharedArrayBuffer(4 * size), shared: new SharedArrayBuffer(size), state: new SharedArrayBuffer(4 * ST_WORDS), bufLen: 0, intr: null, faultStat: -1, pageSize: page,
  };
  new Uint32Array(d.mbufs).fill(MBUF_NONE);
  const stats = new Float64Array(txqStatsBase(1));
  const tx = openTxQueue({ txq: [d] } as unknown as PortData, 0, stats);
  // eight frames of 1514 bytes at data offsets that put them before, across and after page edges
  const pkts = new Uint32Array(8), v = new MbufView();
  t.ok(pktmbufAllocBulk(pool, pkts, 8));
  const shifts = [0, 500, 1000, 1500, 2000, 2500, 3000, 3500];
  for (let k = 0; k < 8; k++) {
    v.at(pkts[k]);
    v.dataOff = 128 + (shifts[k] % 512);
    v.setLen(1514);
  }
  t.equal(tx.txBurst(pkts, 8), 8, 'all eight queued');
  const ring = new Uint32Array(viewOf(zone.va, size * R.DESC_BYTES)), bar = new Uint32Array(viewOf(barVa, barLen));
  const tail = bar[R.tdt(0) >> 2];
  let pk = 0, sum = 0, crossed = 0, first = true, desc = 0;
  const lens: number[] = [];
  for (let i = 0; i < tail; i++) {
    const lo = ring[4 * i], cmd = ring[4 * i + 2], len = cmd & 0xffff;
    desc++;
    if (((lo & (page - 1)) + len) > page) crossed++;
    if (first) { t.equal(ring[4 * i + 3] >>> R.TXD_PAYLEN_SHIFT, 1514, `packet ${pk}: PAYLEN on its first descriptor`); first = false; }
    else t.equal(ring[4 * i + 3], 0, 'no PAYLEN past the first descriptor');
    sum += len;
    if ((cmd & R.TXD_CMD_EOP) !== 0) {
      lens.push(sum);
      t.equal(new Uint32Array(d.mbufs)[i], pkts[pk], `packet ${pk}: its mbuf on its last descriptor`);
      pk++; sum = 0; first = true;
    }
  }
  t.equal(crossed, 0, 'no descriptor crosses a page');
  t.same(lens, Array(8).fill(1514), 'each packet\'s descriptors add up to its length');
  t.ok(desc > 8, `frames across a page edge took two descriptors (${desc} for 8 frames)`);
  t.equal(stats[txqStatsBase(0) + TXQ_PACKETS], 8, 'the queue counted 8 packets');
  // the NIC writes DD back on every descriptor: the next burst frees all eight
  for (let i = 0; i < tail; i++) ring[4 * i + 3] |= R.TXD_STAT_DD;
  t.equal(tx.txBurst(pkts, 0), 0);
  t.equal(pool.inUseCount(), 0, 'every mbuf back once the descriptors are done');
});

for (const [label, args] of [
  ['a sparse BAR0 (bar_unmap: the general, interrupt, RX and TX queue pages)', { bar_unmap: '0x0-0x1fff:0xc000-0xcfff:0xe000-0xefff' }],
  ['BAR0 unmapped (bar_mmap=0)', { bar_mmap: '0' }],
] as const) {
  t.test(`FakeIgb on ${label}: probe and start through pread/pwrite, queue tails through pwrite`, async (t) => {
    const eal = new Eal({ noHuge: true, filePrefix: `tspigbsp${process.pid}_${args.bar_mmap ?? 's'}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
    let dev: FakeIgb | null = null, port: IgbPort | null = null;
    t.teardown(async () => {
      try { if (port && port.status !== 'closed') port.close(); } finally { try { await dev?.close(); } finally { eal.close(); } }
    });
    dev = await FakeIgb.create(`tsp_igbsp${process.pid}_${args.bar_mmap ?? 's'}`, eal.memory, [0x02, 0x74, 0x73, 0x70, 0x6d, 0x02]);
    const ios = { reads: 0, writes: 0 };
    const read = dev.readRegion.bind(dev), write = dev.writeRegion.bind(dev);
    dev.readRegion = (i, off, buf, len = buf.byteLength) => { if (i === U.VFIO_PCI_BAR0_REGION_INDEX) ios.reads++; return read(i, off, buf, len); };
    dev.writeRegion = (i, off, buf, len = buf.byteLength) => { if (i === U.VFIO_PCI_BAR0_REGION_INDEX) ios.writes++; return write(i, off, buf, len); };
    port = IgbPort.open(dev, eal.memory, parseIgbArgs(dev.name, args));
    t.notOk(port.bar.isMapped(R.tdt(0), 4), 'TDT is not mapped');
    t.notOk(port.bar.isMapped(R.rdt(0), 4), 'RDT is not mapped');
    t.notOk(port.bar.isMapped(R.CTRL, 4), 'CTRL is not mapped');
    t.equal(port.bar.isMapped(R.RAL0, 4), args.bar_mmap === undefined, args.bar_mmap === undefined ? 'the pages left alone are mapped' : 'nothing is mapped');
    t.equal(port.macString(), '02:74:73:70:6d:02', 'the MAC read from the EEPROM through EERD by pread/pwrite');
    t.ok(ios.reads > 0 && ios.writes > 0, `the control half used pread/pwrite (${ios.reads} reads, ${ios.writes} writes)`);
    const pool = pktmbufPoolCreate(eal.memory, `tsp_igbsp_pool${args.bar_mmap ?? 's'}`, 127, { cacheSize: 0 });
    port.configure({ rxQueues: 1, txQueues: 1 });
    port.rxQueueSetup(0, 32, pool);
    port.txQueueSetup(0, 32);
    port.start();
    const size = dev.reg(R.rdlen(0)) / R.DESC_BYTES;
    t.equal(size, 32, 'RDLEN: a ring of 32 descriptors');
    t.equal(dev.reg(R.rdt(0)), size - 1, 'RX ring handed to the NIC (RDT written by the control half)');
    const rx = await openRxQueue(port.data(), 0), tx = await openPortTxQueue(port.data(), 0);
    // the NIC writes two frames back into RX descriptors 0 and 1 (DD | EOP, 60 bytes)
    const rdba = dev.reg(R.rdbal(0)) + dev.reg(R.rdbah(0)) * 2 ** 32;
    for (const i of [0, 1]) {
      dev.dma.setU32(rdba + i * R.DESC_BYTES + 12, 60);
      dev.dma.setU32(rdba + i * R.DESC_BYTES + 8, R.RXD_STAT_DD | R.RXD_STAT_EOP);
    }
    const got = new Uint32Array(8);
    t.equal(rx.rxBurst(got, 8), 2, 'two frames received');
    t.equal(dev.reg(R.rdt(0)), 1, 'RDT moved to one behind the next descriptor, written by pwrite (its page is not mapped)');
    t.equal(tx.txBurst(got, 2), 2, 'both sent back');
    t.equal(dev.reg(R.tdt(0)), 2, 'TDT moved by two, written by pwrite');
    dev.txDone(0, 0);
    dev.txDone(0, 1);
    t.equal(tx.txBurst(got, 0), 0, 'an empty burst cleans the done descriptors');
    t.equal(pool.inUseCount(), size, 'the sent frames are back in the pool (only the RX ring holds mbufs)');
    port.stop();
    t.equal(pool.inUseCount(), 0, 'stop returned the RX ring\'s mbufs');
    port.close();
  });
}
