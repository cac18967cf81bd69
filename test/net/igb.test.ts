/**
 * net_igb on the host (no NIC here: the driver itself runs in the lab, test/lab/igb.test.ts):
 * an 82576 bound to vfio-pci in a sysfs fixture is listed by `tspmd devices` as probe-able by
 * net_igb (no skip reason); an 82576 still on the kernel's igb driver is listed with how to bind
 * it; the driver's devargs are checked; the register layout matches the 82576 datasheet's
 * (spot checks of the queue register strides the data path depends on).
 */
import t from 'tap';
import { buildFixture } from '../pci/fixture.js';
import { runCli } from '../cli.js';
import type { DeviceRow } from '../../app/devices/devices.js';
import { parseIgbArgs } from '../../drivers/net/igb/igb.js';
import * as R from '../../drivers/net/igb/igb_regs.js';

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
