/**
 * `tspmd devices` on sysfs and /dev fixtures: the JSON line's shape and values, skip reasons,
 * mdevs with their device_api and the mdev driver that takes them (the PCI hand-over, a test driver
 * registered in-process, none for vfio-ccw and vfio-ap in the real command),
 * --json before or after "--", --vfio-mode, -a/-b, the readable table, and bad input (missing
 * sysfs root, unreadable or malformed files named by path, bad -a, -a with -b). Three runs go
 * through the real command in child processes (in parallel: each costs seconds of TypeScript
 * loading); the rest call runApp in this process, which is what the command does after dispatch.
 */
import t from 'tap';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { devices, type DeviceRow } from '../../app/devices/devices.js';
import { registerMdevDriver, unregisterMdevDriver } from '../../drivers/bus/mdev/mdev.js';
import { moveOwnFlags as moveFlags } from '../../lib/app/app.js';
import { runApp } from '../../lib/app/app.js';
import { standardFixture } from './fixture.js';
import { runCli } from '../cli.js';

const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const CCW = '0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9';
const AP = '5d3e8c7a-1b2f-4c6d-9e0a-b1c2d3e4f5a6';

/** runApp in this process, as the dispatcher calls it, with stdout/stderr captured. */
async function inProcess(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [], err: string[] = [];
  const log = console.log, error = console.error;
  console.log = (...a: unknown[]) => { out.push(a.join(' ') + '\n'); };
  console.error = (...a: unknown[]) => { err.push(a.join(' ') + '\n'); };
  try {
    const code = await runApp(devices, args, 'tspmd devices');
    return { code, stdout: out.join(''), stderr: err.join('') };
  } finally {
    console.log = log;
    console.error = error;
  }
}

const fx = standardFixture();
t.teardown(fx.remove);
const base = ['--sysfs-root', fx.sysfs, '--dev-root', fx.dev];

// the three child processes, started together
const cli = Promise.all([
  runCli(['devices', ...base, '--json']),
  runCli(['devices', ...base]),
  runCli(['devices', '--sysfs-root', join(fx.dir, 'nope'), '--json']),
]);

t.test('--json: one JSON array line of the contract\'s shape', async (t) => {
  const [r] = await cli;
  t.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 1, 'one line');
  const rows = JSON.parse(lines[0]) as DeviceRow[];
  t.ok(Array.isArray(rows));
  const keys = ['bus', 'addr', 'vendor', 'device', 'class', 'iommu_group', 'kernel_driver', 'vfio_mode', 'driver', 'skip_reason'];
  for (const row of rows) t.same(Object.keys(row).sort(), (row.bus === 'mdev' ? [...keys, 'device_api', 'mdev_driver'] : keys).sort(), `${row.addr}: keys`);
  const by = new Map(rows.map((x) => [x.addr, x]));
  t.same(by.get('0000:01:00.0'), {
    bus: 'pci', addr: '0000:01:00.0', vendor: '0x8086', device: '0x10fb', class: '0x020000', iommu_group: 12,
    kernel_driver: 'vfio-pci', vfio_mode: 'iommufd', driver: null, skip_reason: 'no tspmd driver for 8086:10fb (class 0x020000)',
  });
  t.same(by.get('0000:01:00.1'), {
    bus: 'pci', addr: '0000:01:00.1', vendor: '0x8086', device: '0x10fb', class: '0x020000', iommu_group: 13,
    kernel_driver: 'ixgbe', vfio_mode: null, driver: null,
    skip_reason: `bound to ixgbe; bind it to vfio-pci: modprobe vfio-pci; echo vfio-pci > ${fx.sysfs}/bus/pci/devices/0000:01:00.1/driver_override; ` +
      `echo 0000:01:00.1 > ${fx.sysfs}/bus/pci/drivers/ixgbe/unbind; echo 0000:01:00.1 > ${fx.sysfs}/bus/pci/drivers_probe`,
  });
  t.equal(by.get('0000:00:03.0')?.vfio_mode, 'group');
  t.match(by.get('0000:00:04.0')?.skip_reason, /^not bound to a driver; bind it to vfio-pci: /);
  t.equal(by.get('0000:00:04.0')?.kernel_driver, null);
  t.equal(by.get('0000:00:1f.2')?.iommu_group, null);
  t.equal(by.get('0000:00:1f.2')?.class, '0x010601');
  const m = by.get(MTTY)!;
  t.equal(m.bus, 'mdev');
  t.equal(m.device_api, 'vfio-pci');
  t.equal(m.iommu_group, 20);
  t.equal(m.kernel_driver, 'mtty');
  t.equal(m.vfio_mode, 'group');
  t.equal(m.vendor, null, 'ids unknown: config space could not be read');
  t.equal(m.mdev_driver, 'pci', 'the PCI hand-over takes vfio-pci mdevs');
  t.equal(m.driver, null);
  // the fixture's /dev/vfio/vfio is a plain file: the real container code says so
  t.match(m.skip_reason, /^cannot read its PCI ids through VFIO: .*\/dev\/vfio\/vfio: VFIO_GET_API_VERSION failed: ENOTTY/);
  const c = by.get(CCW)!;
  t.equal(c.device_api, 'vfio-ccw');
  t.equal(c.vfio_mode, null);
  t.equal(c.mdev_driver, null);
  t.equal(c.driver, null);
  t.equal(c.skip_reason, 'no driver registered for device_api vfio-ccw');
  const ap = by.get(AP)!;
  t.equal(ap.device_api, 'vfio-ap');
  t.equal(ap.iommu_group, 22);
  t.equal(ap.kernel_driver, 'vfio_ap_mdev');
  t.equal(ap.mdev_driver, null);
  t.equal(ap.skip_reason, 'no driver registered for device_api vfio-ap');
  t.same(rows.map((x) => x.bus), ['pci', 'pci', 'pci', 'pci', 'pci', 'mdev', 'mdev', 'mdev'], 'PCI first, then mdev');
});

t.test('--json after "--", --vfio-mode, -a and -b', async (t) => {
  const a = await inProcess(['--sysfs-root', fx.sysfs, '--vfio-mode', 'group', '--dev-root', fx.dev, '--', '--json']);
  t.equal(a.code, 0, a.stderr);
  const rows = JSON.parse(a.stdout) as DeviceRow[];
  t.equal(rows.find((x) => x.addr === '0000:01:00.0')?.vfio_mode, 'group', '--vfio-mode group');
  const b = await inProcess([...base, '--vfio-mode', 'iommufd', '--json']);
  const rb = JSON.parse(b.stdout) as DeviceRow[];
  t.equal(rb.find((x) => x.addr === '0000:00:03.0')?.vfio_mode, null);
  t.match(rb.find((x) => x.addr === '0000:00:03.0')?.skip_reason, /--vfio-mode iommufd: .*0000:00:03.0\/vfio-dev\/ has no vfioN cdev/);
  const c = await inProcess([...base, '-b', '01:00.0', '--json']);
  t.equal((JSON.parse(c.stdout) as DeviceRow[]).find((x) => x.addr === '0000:01:00.0')?.skip_reason, 'blocked by -b');
  const d = await inProcess([...base, '-a', '0000:00:03.0', '-a', CCW.toUpperCase(), '--json']);
  const rd = JSON.parse(d.stdout) as DeviceRow[];
  t.same(rd.filter((x) => x.skip_reason === 'not in -a').map((x) => x.addr), ['0000:00:04.0', '0000:00:1f.2', '0000:01:00.0', '0000:01:00.1', AP, MTTY]);
  t.equal(rd.find((x) => x.addr === CCW)?.skip_reason, 'no driver registered for device_api vfio-ccw', 'a UUID in -a addresses the mdev');
});

t.test('the readable table', async (t) => {
  const [, r] = await cli;
  t.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.match(lines[0], /^BUS\s+ADDRESS\s+ID\s+CLASS\s+GROUP\s+KERNEL DRIVER\s+VFIO\s+STATUS$/);
  t.equal(lines.length, 9, 'a header and eight devices');
  t.match(r.stdout, /pci\s+0000:01:00\.0\s+8086:10fb\s+0x020000\s+12\s+vfio-pci\s+iommufd\s+skipped: no tspmd driver for 8086:10fb/);
  t.match(r.stdout, /mdev\s+0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9 \(vfio-ccw\)\s+-\s+-\s+21\s+vfio_ccw_mdev\s+-\s+skipped: no driver registered for device_api vfio-ccw\n/);
  t.match(r.stdout, /mdev\s+5d3e8c7a-1b2f-4c6d-9e0a-b1c2d3e4f5a6 \(vfio-ap\)\s+-\s+-\s+22\s+vfio_ap_mdev\s+-\s+skipped: no driver registered for device_api vfio-ap\n/);
  t.match(r.stdout, /mdev\s+83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 \(vfio-pci\)\s+-\s+-\s+20\s+mtty\s+group\s+mdev driver pci; skipped: cannot read its PCI ids through VFIO/);
});

t.test('an mdev driver registered for vfio-ccw: the row names it, in JSON and in the table', async (t) => {
  registerMdevDriver({ name: 'tsp_ccw', deviceApi: 'vfio-ccw', description: 'test driver', probe: () => ({ close() {} }) });
  t.teardown(() => unregisterMdevDriver('vfio-ccw'));
  const j = await inProcess([...base, '--json']);
  t.equal(j.code, 0, j.stderr);
  const c = (JSON.parse(j.stdout) as DeviceRow[]).find((x) => x.addr === CCW)!;
  t.same({ mdev_driver: c.mdev_driver, driver: c.driver, vfio_mode: c.vfio_mode, skip_reason: c.skip_reason },
    { mdev_driver: 'tsp_ccw', driver: 'tsp_ccw', vfio_mode: 'group', skip_reason: null });
  const tab = await inProcess(base);
  t.match(tab.stdout, /mdev\s+0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9 \(vfio-ccw\)\s+-\s+-\s+21\s+vfio_ccw_mdev\s+group\s+mdev driver tsp_ccw; will be probed by tsp_ccw\n/);
  t.match(tab.stdout, /\(vfio-ap\).*skipped: no driver registered for device_api vfio-ap/, 'vfio-ap still has none');
});

t.test('bad input: missing root, bad files, bad options', async (t) => {
  const [, , a] = await cli;
  t.equal(a.code, 1);
  t.equal(a.stdout, '');
  t.match(a.stderr, new RegExp(`tspmd devices: sysfs ${fx.dir}/nope: the sysfs root does not exist \\(check --sysfs-root\\)`));
  const f = standardFixture();
  t.teardown(f.remove);
  const vendor = join(f.sysfs, 'devices/pci0000:00/0000:00:04.0/vendor');
  rmSync(vendor);
  const b = await inProcess(['--sysfs-root', f.sysfs, '--dev-root', f.dev, '--json']);
  t.equal(b.code, 1);
  t.match(b.stderr, new RegExp(`tspmd devices: sysfs ${vendor}: cannot be read: ENOENT: no such file or directory`), 'names the missing file');
  writeFileSync(vendor, 'intel\n');
  const c = await inProcess(['--sysfs-root', f.sysfs, '--dev-root', f.dev]);
  t.match(c.stderr, new RegExp(`sysfs ${vendor}: expected a hex number, found "intel"`));
  const d = await inProcess([...base, '-a', 'eth0']);
  t.equal(d.code, 2);
  t.match(d.stderr, /tspmd devices: -a "eth0": "eth0" is neither a PCI address/);
  const e = await inProcess([...base, '-a', '01:00.0', '-b', '01:00.1']);
  t.equal(e.code, 2);
  t.match(e.stderr, /-a\/--allow and -b\/--block exclude each other/);
  const g = await inProcess([...base, '--', '--jsn']);
  t.equal(g.code, 2);
  t.match(g.stderr, /unknown devices option "--jsn"/);
});

t.test('own flags move behind "--"', async (t) => {
  const own = { '--json': false, '--out': true };
  t.same(moveFlags(['--sysfs-root', 'd', '--json'], own), ['--sysfs-root', 'd', '--', '--json']);
  t.same(moveFlags(['--json', '-a', 'x', '--', '--out', 'z'], own), ['-a', 'x', '--', '--json', '--out', 'z']);
  t.same(moveFlags(['--out', 'a', '--out=b'], own), ['--', '--out', 'a', '--out=b']);
  t.same(moveFlags(['-a', 'x'], own), ['-a', 'x'], 'nothing to move');
});
