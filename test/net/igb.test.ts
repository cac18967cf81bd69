/**
 * net_igb on the host (no NIC here: the driver itself runs in the lab, test/lab/igb.test.ts):
 * an 82576 bound to vfio-pci in a sysfs fixture is listed by `tspmd devices` as probe-able by
 * net_igb (no skip reason); an 82576 still on the kernel's igb driver is listed with how to bind
 * it; the driver's devargs are checked; the register layout matches the 82576 datasheet's
 * (spot checks of the queue register strides the data path depends on); the TX data path, on a
 * memory-backed stand-in for BAR0, gives no descriptor a buffer that crosses a page of DMA memory.
 */
import t from 'tap';
import { buildFixture } from '../pci/fixture.js';
import { runCli } from '../cli.js';
import type { DeviceRow } from '../../app/devices/devices.js';
import { parseIgbArgs } from '../../drivers/net/igb/igb.js';
import * as R from '../../drivers/net/igb/igb_regs.js';
import { openTxQueue, ST_WORDS, type IgbQueueData } from '../../drivers/net/igb/igb_data.js';
import { Eal } from '../../src/eal.js';
import { mmap, munmap, viewOf, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS } from '../../src/os/libc.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, MBUF_NONE } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import { txqStatsBase, TXQ_PACKETS, type PortData } from '../../lib/ethdev/ethdev.js';

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
