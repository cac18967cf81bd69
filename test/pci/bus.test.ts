/**
 * The PCI and mdev buses on sysfs fixture trees shaped like the kernel's: scan (ids, class, NUMA,
 * IOMMU group, kernel driver, resources), sysfs errors naming the path, id-table matching with
 * wildcards and class masks, allow/block lists, skip reasons (kernel driver with bind commands),
 * --vfio-mode selection against a fixture /dev, probe/remove through a VFIO device, the mdev scan
 * and the hand-over of vfio-pci mdevs with ids read from config space through the VFIO device
 * interface, the mdev driver registry by device_api (a test driver for vfio-ccw probed with the
 * opened device, vfio-ap without a driver), and the real back ends' errors on nodes that are not
 * VFIO devices (no fd leaks).
 */
import t from 'tap';
import { chmodSync, mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as U from '../../src/iommu/vfio-uapi.js';
import { UsageError } from '../../src/options.js';
import { readHex, readInt, readString, SysfsError } from '../../src/sysfs.js';
import { chooseVfioMode } from '../../src/iommu/mode.js';
import { Vfio } from '../../src/iommu/vfio.js';
import type { VfioDevice } from '../../src/iommu/device.js';
import {
  PciBus, DeviceFilter, canonicalDeviceName, findPciDriver, parseResources, pciIdMatches, registerPciDriver, scanPci,
  unregisterPciDriver, type PciBusConfig, type PciDriver, type PciProbeContext,
} from '../../drivers/bus/pci/pci.js';
import {
  closeMdevs, findMdevDriver, handOverMdevs, mdevDrivers, parseConfigIds, probeMdevs, registerMdevDriver, scanMdev, unregisterMdevDriver,
  type MdevDriver, type MdevProbeContext,
} from '../../drivers/bus/mdev/mdev.js';
import { buildFixture, configSpace, standardFixture, type Fixture } from './fixture.js';
import { MemfdVfioDevice, RW, RWM } from './fake-vfio.js';

const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const CCW = '0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9';
const AP = '5d3e8c7a-1b2f-4c6d-9e0a-b1c2d3e4f5a6';

function fixture(t: { teardown(fn: () => unknown): void }, fx: Fixture = standardFixture()): Fixture {
  t.teardown(fx.remove);
  return fx;
}

const openFds = () => readdirSync('/proc/self/fd').length;

/** A fake device for target, with a config space holding ids (and a BAR0), standing in for the kernel. */
function fakeOpener(opened: MemfdVfioDevice[], ids: Record<string, { vendor: number; device: number; classCode: number; subVendor?: number; subDevice?: number }>) {
  return (target: { name: string }): VfioDevice => {
    const id = ids[target.name] ?? { vendor: 0x8086, device: 0x10fb, classCode: 0x020000 };
    const dev = new MemfdVfioDevice(target.name, [
      { index: U.VFIO_PCI_BAR0_REGION_INDEX, size: 0x4000, flags: RWM },
      { index: U.VFIO_PCI_CONFIG_REGION_INDEX, size: 256, flags: RW, data: configSpace(id) },
    ]);
    opened.push(dev);
    return dev;
  };
}

function busConfig(fx: Fixture, over: Partial<PciBusConfig> = {}): PciBusConfig {
  return { sysfsRoot: fx.sysfs, devRoot: fx.dev, vfioMode: 'auto', allow: [], block: [], noPci: false, memory: null, ...over };
}

/** A test driver that records probe/remove. */
function testDriver(name: string, idTable: PciDriver['idTable'], log: string[]): PciDriver<{ close(): void; addr: string }> {
  return {
    name, description: 'test driver', idTable,
    probe(ctx: PciProbeContext) {
      log.push(`probe ${ctx.dev.addr} ${ctx.vfio.regionInfo(U.VFIO_PCI_BAR0_REGION_INDEX).size} ${JSON.stringify(ctx.args)}`);
      return { addr: ctx.dev.addr, close: () => log.push(`close ${ctx.dev.addr}`) };
    },
    remove(p) { log.push(`remove ${p.addr}`); },
  };
}

t.test('sysfs helpers: values, and errors that name the path', async (t) => {
  const fx = fixture(t);
  const d = join(fx.sysfs, 'bus/pci/devices/0000:01:00.0');
  t.equal(readHex(join(d, 'vendor')), 0x8086);
  t.equal(readInt(join(d, 'numa_node')), 0);
  t.equal(readString(join(d, 'class')), '0x020000');
  t.throws(() => readString(join(d, 'nope')), { name: 'SysfsError', message: `sysfs ${join(d, 'nope')}: cannot be read: ENOENT: no such file or directory` });
  writeFileSync(join(d, 'device'), 'zz\n');
  t.throws(() => readHex(join(d, 'device')), new RegExp(`sysfs ${d}/device: expected a hex number, found "zz"`));
  let err: unknown = null;
  try { scanPci(fx.sysfs); } catch (e) { err = e; }
  t.ok(err instanceof SysfsError && err.path.endsWith('0000:01:00.0/device'), 'the scan fails with a SysfsError naming the bad file');
  t.throws(() => scanPci(join(fx.dir, 'missing')), /sysfs .*missing: the sysfs root does not exist \(check --sysfs-root\)/);
  t.same(scanPci(fx.dev), [], 'a root without bus/pci: no devices');
  t.throws(() => parseResources('0x1 0x2\n', '/x/resource'), /sysfs \/x\/resource: line 1 "0x1 0x2" is not three hex numbers/);
});

t.test('unreadable files and dangling links name the path', async (t) => {
  const fx = fixture(t);
  const d = join(fx.sysfs, 'devices/pci0000:00/0000:00:03.0');
  if (process.getuid?.() !== 0) {
    chmodSync(join(d, 'class'), 0);
    t.throws(() => scanPci(fx.sysfs), /0000:00:03.0\/class: cannot be read: EACCES/);
    chmodSync(join(d, 'class'), 0o644);
  }
  rmSync(join(d, 'class'));
  t.throws(() => scanPci(fx.sysfs), new RegExp(`sysfs ${d}/class: cannot be read: ENOENT`));
  writeFileSync(join(d, 'class'), '0x020000\n');
  symlinkSync('../../../devices/pci0000:00/0000:09:00.0', join(fx.sysfs, 'bus/pci/devices/0000:09:00.0'));
  t.throws(() => scanPci(fx.sysfs), /bus\/pci\/devices\/0000:09:00.0: dangling link/);
});

t.test('PCI scan: what sysfs says about each device', async (t) => {
  const fx = fixture(t);
  const devs = scanPci(fx.sysfs);
  t.same(devs.map((d) => d.addr), ['0000:00:03.0', '0000:00:04.0', '0000:00:1f.2', '0000:01:00.0', '0000:01:00.1'], 'sorted by address');
  const x = devs.find((d) => d.addr === '0000:01:00.0')!;
  t.same(x.id, { vendor: 0x8086, device: 0x10fb, subVendor: 0x8086, subDevice: 0x000c, classCode: 0x020000 });
  t.equal(x.numaNode, 0);
  t.equal(x.iommuGroup, 12);
  t.equal(x.kernelDriver, 'vfio-pci');
  t.equal(x.revision, 1);
  t.equal(x.bus, 'pci');
  t.ok(x.sysfsDir.endsWith('devices/pci0000:00/0000:01:00.0'), 'resolved device directory');
  t.same(x.resources, [
    { index: 0, start: 0xfe000000n, end: 0xfe07ffffn, flags: 0x40200, size: 0x80000, kind: 'mem' },
    { index: 2, start: 0xe000n, end: 0xe01fn, flags: 0x40101, size: 0x20, kind: 'io' },
  ]);
  const sata = devs.find((d) => d.addr === '0000:00:1f.2')!;
  t.equal(sata.iommuGroup, null);
  t.equal(sata.numaNode, -1);
  t.equal(devs.find((d) => d.addr === '0000:00:04.0')!.kernelDriver, null);
});

t.test('id tables: exact ids, wildcards, subsystem ids, class with mask, first match wins', async (t) => {
  const id = { vendor: 0x8086, device: 0x10fb, subVendor: 0x8086, subDevice: 0x000c, classCode: 0x020000 };
  t.ok(pciIdMatches({ vendor: 0x8086, device: 0x10fb }, id));
  t.ok(pciIdMatches({}, id), 'all wildcards');
  t.notOk(pciIdMatches({ vendor: 0x8086, device: 0x10fc }, id));
  t.ok(pciIdMatches({ vendor: 0x8086, subVendor: 0x8086, subDevice: 0x000c }, id));
  t.notOk(pciIdMatches({ vendor: 0x8086, subDevice: 0x0001 }, id));
  t.ok(pciIdMatches({ classCode: 0x020000 }, id), 'exact class');
  t.notOk(pciIdMatches({ classCode: 0x028000 }, id));
  t.ok(pciIdMatches({ classCode: 0x02ffff, classMask: 0xff0000 }, id), 'any network controller');
  t.notOk(pciIdMatches({ classCode: 0x010000, classMask: 0xff0000 }, id));
  const a = { name: 'a', description: '', idTable: [{ vendor: 0x1af4 }], probe: () => ({ close() {} }) };
  const b = { name: 'b', description: '', idTable: [{ vendor: 0x1af4, device: 0x1000 }, { classCode: 0x020000, classMask: 0xff0000 }], probe: () => ({ close() {} }) };
  t.equal(findPciDriver(id, [a, b])?.name, 'b');
  t.equal(findPciDriver({ ...id, vendor: 0x1af4 }, [a, b])?.name, 'a', 'first registered match wins');
  t.equal(findPciDriver({ ...id, classCode: 0x010601 }, [a, b]), null);
  registerPciDriver(a);
  t.teardown(() => unregisterPciDriver('a'));
  t.throws(() => registerPciDriver(a), /PCI driver "a" is registered twice/);
});

t.test('allow/block lists: parsing, canonical names, exclusion', async (t) => {
  t.equal(canonicalDeviceName('01:00.0'), '0000:01:00.0', 'domain 0 implied');
  t.equal(canonicalDeviceName('0000:0A:1F.7'), '0000:0a:1f.7');
  t.equal(canonicalDeviceName('0000:00:20.0'), null, 'device number above 0x1f');
  t.equal(canonicalDeviceName(MTTY.toUpperCase()), MTTY);
  t.equal(canonicalDeviceName('net_null0'), null);
  const f = new DeviceFilter(['01:00.0,rxq=2,fast', MTTY], []);
  t.equal(f.skipReason('0000:01:00.0'), null);
  t.equal(f.skipReason('0000:01:00.1'), 'not in -a');
  t.equal(f.skipReason(MTTY), null);
  t.same(f.args('0000:01:00.0'), { rxq: '2', fast: '' });
  const g = new DeviceFilter([], ['0000:01:00.1']);
  t.equal(g.skipReason('0000:01:00.1'), 'blocked by -b');
  t.equal(g.skipReason('0000:01:00.0'), null);
  t.throws(() => new DeviceFilter(['01:00.0'], ['01:00.1']), UsageError);
  t.throws(() => new DeviceFilter(['01:00.0'], ['01:00.1']), /-a\/--allow and -b\/--block exclude each other/);
  t.throws(() => new DeviceFilter(['eth0'], []), /-a "eth0": "eth0" is neither a PCI address \(DDDD:BB:DD.F or BB:DD.F, e.g. 0000:01:00.0\), an mdev UUID, nor vfio-user:SOCKET/);
});

t.test('--vfio-mode: auto picks IOMMUFD when /dev/iommu and the cdev exist, else the group', async (t) => {
  const fx = fixture(t);
  const tgt = (addr: string, group: number | null) => ({ name: addr, sysfsDir: join(fx.sysfs, 'devices/pci0000:00', addr), iommuGroup: group });
  const x = tgt('0000:01:00.0', 12), e = tgt('0000:00:03.0', 3);
  const c1 = chooseVfioMode('auto', x, fx.dev);
  t.equal(c1.mode, 'iommufd');
  t.equal(c1.nodes.cdev, join(fx.dev, 'vfio/devices/vfio0'));
  t.equal(c1.nodes.cdevName, 'vfio0');
  t.match(c1.reason, /auto: .*\/dev\/iommu and .*\/dev\/vfio\/devices\/vfio0 exist/);
  const c2 = chooseVfioMode('auto', e, fx.dev);
  t.equal(c2.mode, 'group');
  t.match(c2.reason, /auto: group node .*\/dev\/vfio\/3; no IOMMUFD because .*0000:00:03.0\/vfio-dev\/ has no vfioN cdev/);
  t.equal(chooseVfioMode('group', x, fx.dev).mode, 'group', '--vfio-mode group wins over an available IOMMUFD');
  const c3 = chooseVfioMode('iommufd', e, fx.dev);
  t.equal(c3.mode, null);
  t.match(c3.reason, /--vfio-mode iommufd: .* has no vfioN cdev .*; use --vfio-mode group or auto/);
  rmSync(join(fx.dev, 'iommu'));
  t.equal(chooseVfioMode('auto', x, fx.dev).mode, 'group', 'without /dev/iommu auto falls back to the group');
  t.match(chooseVfioMode('iommufd', x, fx.dev).reason, /\/dev\/iommu does not exist \(kernel without CONFIG_IOMMUFD\)/);
  rmSync(join(fx.dev, 'vfio/12'));
  const c4 = chooseVfioMode('auto', x, fx.dev);
  t.equal(c4.mode, null);
  t.match(c4.reason, /no VFIO access: neither .*\/dev\/vfio\/12 nor .*\/dev\/vfio\/noiommu-12 exists/);
  writeFileSync(join(fx.dev, 'vfio/noiommu-12'), '');
  const c5 = chooseVfioMode('group', x, fx.dev);
  t.equal(c5.mode, 'group');
  t.equal(c5.nodes.noIommu, true);
  t.match(chooseVfioMode('auto', tgt('0000:00:1f.2', null), fx.dev).reason, /no IOMMU group .*intel_iommu=on/);
});

t.test('PCI bus status: skip reasons and VFIO modes', async (t) => {
  const fx = fixture(t);
  const log: string[] = [];
  registerPciDriver(testDriver('tsp_ixgbe', [{ vendor: 0x8086, device: 0x10fb }], log));
  t.teardown(() => unregisterPciDriver('tsp_ixgbe'));
  const bus = new PciBus(busConfig(fx));
  t.teardown(() => bus.close());
  const st = new Map(bus.status().map((s) => [s.dev.addr, s]));
  const s = (a: string) => st.get(a)!;
  t.equal(s('0000:01:00.0').skipReason, null, 'vfio-pci + driver: probed');
  t.equal(s('0000:01:00.0').vfioMode, 'iommufd');
  t.equal(s('0000:01:00.0').driver?.name, 'tsp_ixgbe');
  t.equal(s('0000:01:00.1').skipReason,
    `bound to ixgbe; bind it to vfio-pci: modprobe vfio-pci; echo vfio-pci > ${fx.sysfs}/bus/pci/devices/0000:01:00.1/driver_override; ` +
    `echo 0000:01:00.1 > ${fx.sysfs}/bus/pci/drivers/ixgbe/unbind; echo 0000:01:00.1 > ${fx.sysfs}/bus/pci/drivers_probe`);
  t.equal(s('0000:01:00.1').vfioMode, null);
  t.match(s('0000:00:04.0').skipReason, /^not bound to a driver; bind it to vfio-pci: modprobe vfio-pci; echo vfio-pci > .*driver_override; echo 0000:00:04.0 > .*drivers_probe$/);
  t.equal(s('0000:00:03.0').vfioMode, 'group');
  t.equal(s('0000:00:03.0').skipReason, 'no tspmd driver for 8086:10d3 (class 0x020000)');
  t.match(s('0000:00:1f.2').skipReason, /^bound to ahci; /);

  const blocked = new PciBus(busConfig(fx, { block: ['01:00.0'] }));
  t.teardown(() => blocked.close());
  t.equal(blocked.status().find((x) => x.dev.addr === '0000:01:00.0')!.skipReason, 'blocked by -b');
  const allowed = new PciBus(busConfig(fx, { allow: ['0000:00:03.0'] }));
  t.teardown(() => allowed.close());
  const as = allowed.status();
  t.same(as.filter((x) => x.skipReason === 'not in -a').map((x) => x.dev.addr), ['0000:00:04.0', '0000:00:1f.2', '0000:01:00.0', '0000:01:00.1']);
  const forced = new PciBus(busConfig(fx, { vfioMode: 'iommufd' }));
  t.teardown(() => forced.close());
  t.match(forced.status().find((x) => x.dev.addr === '0000:00:03.0')!.skipReason, /--vfio-mode iommufd: .*no vfioN cdev/);
  const none = new PciBus(busConfig(fx, { noPci: true }));
  t.teardown(() => none.close());
  t.same(none.status(), [], '--no-pci: nothing scanned');
  t.same(log, [], 'a listing probes nothing');
});

t.test('probe and remove through the VFIO device interface', async (t) => {
  const fx = fixture(t);
  const log: string[] = [];
  registerPciDriver(testDriver('tsp_net', [{ classCode: 0x020000, classMask: 0xff0000 }], log));
  t.teardown(() => unregisterPciDriver('tsp_net'));
  const opened: MemfdVfioDevice[] = [];
  const fds = openFds();
  const bus = new PciBus(busConfig(fx, { allow: ['0000:01:00.0,queues=4', '0000:00:03.0'], openDevice: fakeOpener(opened, {}) }));
  const probed = await bus.probe();
  t.same(probed.map((p) => p.dev.addr), ['0000:00:03.0', '0000:01:00.0']);
  t.same(log, ['probe 0000:00:03.0 16384 {}', 'probe 0000:01:00.0 16384 {"queues":"4"}'], 'driver got the VFIO device and the -a arguments');
  t.equal(opened.length, 2, 'only the probed devices were opened');
  t.same(await bus.probe(), [], 'a second probe takes nothing new');
  await bus.remove('0000:01:00.0');
  t.same(log.slice(2), ['remove 0000:01:00.0'], 'driver remove');
  t.throws(() => opened[1].info(), /the VFIO device is closed/, 'the VFIO device was closed after remove');
  await t.rejects(bus.remove('0000:01:00.0'), /PCI bus: 0000:01:00.0 is not probed \(probed: 0000:00:03.0\)/);
  await bus.close();
  t.same(log.slice(3), ['remove 0000:00:03.0']);
  t.equal(openFds(), fds, 'every fd closed');

  // a failing probe closes the device and names device and driver
  unregisterPciDriver('tsp_net');
  registerPciDriver({ name: 'tsp_net', description: '', idTable: [{ vendor: 0x8086 }], probe: () => { throw new Error('BAR0 too small'); } });
  const bad = new PciBus(busConfig(fx, { allow: ['0000:00:03.0'], openDevice: fakeOpener(opened, {}) }));
  await t.rejects(bad.probe(), /0000:00:03.0: driver tsp_net failed to probe 8086:10d3: BAR0 too small/);
  await bad.close();
  t.equal(openFds(), fds, 'nothing leaked by the failed probe');
});

t.test('mdev scan: type, name, device_api, IOMMU group', async (t) => {
  const fx = fixture(t);
  const ms = scanMdev(fx.sysfs);
  t.same(ms.map((m) => m.uuid), [CCW, AP, MTTY]);
  const m = ms.find((x) => x.uuid === MTTY)!;
  t.equal(m.type, 'mtty-2');
  t.equal(m.typeName, 'Dual-port-serial');
  t.equal(m.deviceApi, 'vfio-pci');
  t.equal(m.iommuGroup, 20);
  t.equal(m.parent, 'mtty');
  t.equal(m.kernelDriver, 'mtty');
  t.equal(ms.find((x) => x.uuid === CCW)!.deviceApi, 'vfio-ccw');
  t.equal(ms.find((x) => x.uuid === AP)!.deviceApi, 'vfio-ap');
  t.same(scanMdev(fx.dev), [], 'no bus/mdev: no devices');
  rmSync(join(fx.sysfs, 'devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/device_api'));
  t.throws(() => scanMdev(fx.sysfs), /mdev_supported_types\/mtty-2\/device_api: cannot be read: ENOENT/);
});

t.test('mdev hand-over: ids from config space through VFIO, matched and probed by the PCI bus', async (t) => {
  const fx = fixture(t);
  const log: string[] = [];
  // ids that exist nowhere in sysfs: only the config space read through VFIO can supply them
  registerPciDriver(testDriver('tsp_serial', [{ vendor: 0x4348, device: 0x3253 }], log));
  t.teardown(() => unregisterPciDriver('tsp_serial'));
  const opened: MemfdVfioDevice[] = [];
  const fds = openFds();
  const bus = new PciBus(busConfig(fx, { allow: [MTTY, CCW], openDevice: fakeOpener(opened, { [MTTY]: { vendor: 0x4348, device: 0x3253, classCode: 0x070002, subVendor: 0x4348, subDevice: 0x3253 } }) }));
  const ms = handOverMdevs(bus);
  const mt = ms.find((x) => x.dev.uuid === MTTY)!;
  t.equal(mt.skipReason, null);
  t.equal(mt.vfioMode, 'group', 'mdev group node /dev/vfio/20');
  t.same(mt.pci?.id, { vendor: 0x4348, device: 0x3253, subVendor: 0x4348, subDevice: 0x3253, classCode: 0x070002 });
  t.equal(mt.pci?.bus, 'mdev');
  t.equal(mt.pci?.addr, MTTY);
  t.ok(opened[0].calls.includes(U.VFIO_DEVICE_GET_REGION_INFO), 'config space found through region info');
  const cc = ms.find((x) => x.dev.uuid === CCW)!;
  t.equal(cc.skipReason, 'no driver registered for device_api vfio-ccw');
  t.equal(cc.driver, null);
  t.equal(mt.driver?.name, 'pci', 'the PCI hand-over took the vfio-pci mdev');
  t.equal(cc.pci, null);
  t.equal(opened.length, 1, 'the vfio-ccw device was not opened');
  const st = bus.status().find((s) => s.dev.addr === MTTY)!;
  t.equal(st.skipReason, null, 'the PCI bus takes the mdev');
  t.equal(st.driver?.name, 'tsp_serial');
  const probed = await bus.probe();
  t.same(probed.map((p) => p.dev.addr), [MTTY], 'probed by UUID');
  t.equal(probed[0].vfio, opened[0], 'with the VFIO device the mdev bus opened (not reopened)');
  t.same(log, [`probe ${MTTY} 16384 {}`]);
  await bus.close();
  t.same(log, [`probe ${MTTY} 16384 {}`, `remove ${MTTY}`]);
  t.equal(openFds(), fds, 'every fd closed');

  const blocked = new PciBus(busConfig(fx, { block: [MTTY], openDevice: fakeOpener(opened, {}) }));
  t.equal(handOverMdevs(blocked).find((x) => x.dev.uuid === MTTY)!.skipReason, 'blocked by -b');
  t.equal(opened.length, 1, 'a blocked mdev is not opened');
  await blocked.close();
  const notAllowed = new PciBus(busConfig(fx, { allow: ['0000:01:00.0'], openDevice: fakeOpener(opened, {}) }));
  t.equal(handOverMdevs(notAllowed).find((x) => x.dev.uuid === MTTY)!.skipReason, 'not in -a');
  await notAllowed.close();

  // a device whose config space reads all ones is not handed over, and is closed again
  const dead = new PciBus(busConfig(fx, { openDevice: fakeOpener(opened, { [MTTY]: { vendor: 0xffff, device: 0xffff, classCode: 0xffffff } }) }));
  t.match(handOverMdevs(dead).find((x) => x.dev.uuid === MTTY)!.skipReason, /cannot read its PCI ids through VFIO: .*config space reads vendor 0xffff/);
  await dead.close();
  t.equal(openFds(), fds, 'still no leaked fd');
  t.throws(() => parseConfigIds(new Uint8Array(16), 'x'), /x: config space read returned 16 bytes, 48 needed/);
});

t.test('mdev drivers by device_api: vfio-pci handed to PCI, vfio-ccw probed by a registered driver, vfio-ap unknown', async (t) => {
  const fx = fixture(t);
  const log: string[] = [];
  t.same(mdevDrivers().map((d) => [d.name, d.deviceApi]), [['pci', 'vfio-pci']], 'the PCI hand-over is the one driver registered by the bus');
  const ccwDriver: MdevDriver<{ close(): void }> = {
    name: 'tsp_ccw', deviceApi: 'vfio-ccw', description: 'test driver for channel I/O subchannels',
    claim({ dev, target }) { log.push(`claim ${dev.uuid} ${dev.type} ${target.iommuGroup}`); },
    probe(ctx: MdevProbeContext) {
      const r = ctx.vfio.regionInfo(U.VFIO_PCI_BAR0_REGION_INDEX);
      log.push(`probe ${ctx.dev.uuid} ${ctx.vfio.name} ${r.size} ${JSON.stringify(ctx.args)} ${ctx.eal === null}`);
      return { close: () => log.push(`close ${ctx.dev.uuid}`) };
    },
  };
  registerMdevDriver(ccwDriver);
  t.teardown(() => unregisterMdevDriver('vfio-ccw'));
  t.throws(() => registerMdevDriver({ ...ccwDriver, name: 'tsp_ccw2' }), /mdev driver "tsp_ccw2": device_api vfio-ccw is already driven by "tsp_ccw"; unregister it first/);
  t.throws(() => registerMdevDriver({ name: 'tsp_pci', deviceApi: 'vfio-pci', description: 'x' }), /device_api vfio-pci is already driven by "pci"/);
  t.equal(findMdevDriver('vfio-ccw'), ccwDriver);
  t.equal(findMdevDriver('vfio-ap'), null);

  const opened: MemfdVfioDevice[] = [];
  const fds = openFds();
  const bus = new PciBus(busConfig(fx, { allow: [MTTY, `${CCW},chpid=0x10`, AP], openDevice: fakeOpener(opened, { [MTTY]: { vendor: 0x4348, device: 0x3253, classCode: 0x070002 } }) }));
  const ms = handOverMdevs(bus);
  const by = new Map(ms.map((m) => [m.dev.uuid, m]));
  const mt = by.get(MTTY)!, cc = by.get(CCW)!, ap = by.get(AP)!;
  t.equal(mt.driver?.name, 'pci');
  t.equal(mt.pci?.addr, MTTY, 'vfio-pci: handed to the PCI bus');
  t.equal(mt.skipReason, null);
  t.equal(cc.driver?.name, 'tsp_ccw');
  t.equal(cc.skipReason, null);
  t.equal(cc.vfioMode, 'group', 'opened through the group node /dev/vfio/21');
  t.equal(cc.pci, null, 'not a PCI device');
  t.equal(ap.driver, null);
  t.equal(ap.vfioMode, null);
  t.equal(ap.skipReason, 'no driver registered for device_api vfio-ap');
  t.same(log, [`claim ${CCW} vfio_ccw-io 21`], 'claimed at scan, not probed yet');
  t.same(opened.map((d) => d.name), [MTTY], 'only the vfio-pci mdev is opened at scan');

  const probed = await probeMdevs(bus, ms);
  t.same(probed.map((m) => m.dev.uuid), [CCW], 'only the vfio-ccw mdev is probed by the mdev bus');
  t.same(opened.map((d) => d.name), [MTTY, CCW]);
  t.equal(cc.probed?.vfio, opened[1], 'the driver got the device the bus opened');
  t.same(log.slice(1), [`probe ${CCW} ${CCW} 16384 {"chpid":"0x10"} true`]);
  t.same(await probeMdevs(bus, ms), [], 'probing again takes nothing twice');
  t.same((await bus.probe()).map((p) => p.dev.addr), [], 'no PCI driver for the mtty ids: the PCI bus probes nothing');
  await closeMdevs(ms);
  t.equal(cc.probed, null);
  t.same(log.slice(2), [`close ${CCW}`]);
  await bus.close();
  t.equal(openFds(), fds, 'every fd closed');

  // a failing probe names the mdev and the driver, and the device is closed again
  const failing: MdevDriver = { name: 'tsp_ap', deviceApi: 'vfio-ap', description: 'x', probe() { throw new Error('no AP queues assigned'); } };
  registerMdevDriver(failing);
  t.teardown(() => unregisterMdevDriver('vfio-ap'));
  const bus2 = new PciBus(busConfig(fx, { allow: [AP], openDevice: fakeOpener(opened, {}) }));
  const ms2 = handOverMdevs(bus2);
  t.equal(ms2.find((m) => m.dev.uuid === AP)!.skipReason, null, 'a driver registered for vfio-ap: no reason any more');
  await t.rejects(probeMdevs(bus2, ms2), new RegExp(`${AP}: mdev driver tsp_ap failed to probe the vfio-ap mdev: no AP queues assigned`));
  await bus2.close();
  unregisterMdevDriver('vfio-ap');
  t.equal(findMdevDriver('vfio-ap'), null, 'unregistered');
  t.equal(openFds(), fds, 'nothing leaked by the failed probe');
});

t.test('kernel back ends on nodes that are not VFIO devices: clear errors, no fd leaks', async (t) => {
  const fx = fixture(t);
  const fds = openFds();
  const tgt = (addr: string, group: number) => ({ name: addr, sysfsDir: join(fx.sysfs, 'devices/pci0000:00', addr), iommuGroup: group });
  const g = new Vfio({ mode: 'group', sysfsRoot: fx.sysfs, devRoot: fx.dev, memory: null });
  t.throws(() => g.openDevice(tgt('0000:00:03.0', 3)), new RegExp(`${fx.dev}/vfio/vfio: VFIO_GET_API_VERSION failed: ENOTTY: .* \\(is it the VFIO container device\\?\\)`));
  g.close();
  const i = new Vfio({ mode: 'iommufd', sysfsRoot: fx.sysfs, devRoot: fx.dev, memory: null });
  t.throws(() => i.openDevice(tgt('0000:01:00.0', 12)), new RegExp(`${fx.dev}/iommu: IOMMU_IOAS_ALLOC failed: ENOTTY: .* \\(is it the iommufd device\\?\\)`));
  t.throws(() => i.openDevice(tgt('0000:00:03.0', 3)), /0000:00:03.0: --vfio-mode iommufd: .* has no vfioN cdev/);
  i.close();
  rmSync(join(fx.dev, 'vfio/vfio'));
  const m = new Vfio({ mode: 'group', sysfsRoot: fx.sysfs, devRoot: fx.dev, memory: null });
  t.throws(() => m.openDevice(tgt('0000:00:03.0', 3)), /VFIO container .*\/vfio\/vfio cannot be opened: ENOENT: No such file or directory; load the vfio-pci module \(modprobe vfio-pci\)/);
  m.close();
  t.equal(openFds(), fds, 'every fd the failed attempts opened was closed');
});

t.test('no-IOMMU devices: auto takes the group path and says why not the cdev; --vfio-mode iommufd is refused', async (t) => {
  // Linux 6.6+: a no-IOMMU device gets vfio-dev/vfioN in sysfs without a dev file, and no /dev node
  const addr = '0000:00:05.0';
  const fx = fixture(t, buildFixture([{ addr, vendor: 0x8086, device: 0x10d3, classCode: 0x020000, group: 0, driver: 'vfio-pci', cdev: 'vfio0', cdevDevFile: false }],
    [], { container: true, noIommuGroups: [0], iommufd: true }));
  const sysfsDir = join(fx.sysfs, 'devices/pci0000:00', addr), group = join(fx.dev, 'vfio/noiommu-0');
  const target = { name: addr, sysfsDir, iommuGroup: 0 };
  const noCdev = `this kernel gives it no VFIO cdev (${sysfsDir}/vfio-dev/vfio0 has no dev; Linux 6.6+ keeps no-IOMMU devices on the group path)`;
  const auto = chooseVfioMode('auto', target, fx.dev);
  t.equal(auto.mode, 'group');
  t.equal(auto.nodes.noIommuCdev, null);
  t.equal(auto.reason, `auto: group node ${group} (no-IOMMU); no-IOMMU device: ${noCdev}`);
  t.equal(chooseVfioMode('group', target, fx.dev).reason, `--vfio-mode group: ${group} (no-IOMMU)`);
  const refused = `${addr}: --vfio-mode iommufd: no-IOMMU device (group node ${group}): ${noCdev}; use --vfio-mode group or auto`;
  const v = new Vfio({ mode: 'iommufd', sysfsRoot: fx.sysfs, devRoot: fx.dev, memory: null });
  t.teardown(() => v.close());
  t.throws(() => v.openDevice(target), { message: refused });
  const bus = new PciBus(busConfig(fx, { vfioMode: 'iommufd', allow: [addr] }));
  t.teardown(() => bus.close());
  const st = bus.status().find((s) => s.dev.addr === addr);
  t.equal(st?.vfioMode, null);
  t.equal(`${addr}: ${st?.skipReason}`, refused, 'the PCI bus skips it with the same line');

  // a kernel that does show a cdev for it (the sysfs dev file, a /dev node, or the 2023 RFC's noiommu-vfioN): seen, not used
  for (const [made, node] of [['sysfs', join(sysfsDir, 'vfio-dev/vfio0/dev')], ['cdev', join(fx.dev, 'vfio/devices/vfio0')], ['rfc', join(fx.dev, 'vfio/devices/noiommu-vfio0')]]) {
    mkdirSync(dirname(node), { recursive: true });
    writeFileSync(node, made === 'sysfs' ? '511:0\n' : '');
    const seen = `the kernel shows a VFIO cdev for it (${node}), but tspmd opens no-IOMMU devices through the group path only`;
    const c = chooseVfioMode('auto', target, fx.dev);
    t.equal(c.mode, 'group', `${made}: auto keeps the group path`);
    t.equal(c.reason, `auto: group node ${group} (no-IOMMU); no-IOMMU device: ${seen}`);
    t.equal(chooseVfioMode('iommufd', target, fx.dev).reason, `--vfio-mode iommufd: no-IOMMU device (group node ${group}): ${seen}; use --vfio-mode group or auto`);
    rmSync(node);
  }
  rmSync(join(sysfsDir, 'vfio-dev'), { recursive: true });
  t.equal(chooseVfioMode('auto', target, fx.dev).reason,
    `auto: group node ${group} (no-IOMMU); no-IOMMU device: it has no VFIO cdev (${sysfsDir}/vfio-dev/ has no vfioN; no-IOMMU devices use the group path)`);
});

t.test('no-IOMMU groups need --iova-mode pa', async (t) => {
  const fx = fixture(t, buildFixture([{ addr: '0000:00:05.0', vendor: 0x8086, device: 0x10d3, classCode: 0x020000, group: 0, driver: 'vfio-pci' }], [], { container: true, noIommuGroups: [0] }));
  const memory = { config: { iovaMode: 'va' } } as unknown as ConstructorParameters<typeof Vfio>[0]['memory'];
  const v = new Vfio({ mode: 'auto', sysfsRoot: fx.sysfs, devRoot: fx.dev, memory });
  t.throws(() => v.openDevice({ name: '0000:00:05.0', sysfsDir: join(fx.sysfs, 'devices/pci0000:00/0000:00:05.0'), iommuGroup: 0 }),
    /0000:00:05.0: IOMMU group 0 is a no-IOMMU group \(.*noiommu-0\): the device DMAs to physical addresses, so run with --iova-mode pa/);
  v.close();
});
