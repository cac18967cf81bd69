/**
 * Sysfs and /dev fixture trees shaped like the kernel's: PCI functions under devices/pci0000:00/
 * linked from bus/pci/devices/, iommu_group links into kernel/iommu_groups/N, driver links into
 * bus/pci/drivers/<name>/, vfio-dev/vfioN cdev directories, mdev parents with
 * mdev_supported_types/<type>/{name,device_api,...} and mdev devices linked from bus/mdev/devices/.
 * The /dev side holds plain files standing for vfio/vfio, vfio/N, vfio/devices/vfioN and iommu.
 * Everything lives under one mkdtemp directory with a "tsp" prefix; remove() deletes it.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';

/** A PCI function in the fixture. */
export interface FixturePci {
  addr: string;
  vendor: number;
  device: number;
  subVendor?: number;
  subDevice?: number;
  classCode: number;
  revision?: number;
  numaNode?: number;
  /** IOMMU group (null: no iommu_group link) */
  group?: number | null;
  /** bound kernel driver (null: unbound) */
  driver?: string | null;
  /** [start, end, flags] per BAR line; missing lines are zero */
  resources?: Array<[bigint, bigint, bigint]>;
  /** the vfio-dev/vfioN cdev name, when bound to vfio-pci with cdev support */
  cdev?: string;
  /** false: vfio-dev/vfioN has no dev file (Linux 6.6+ registers a no-IOMMU device without a cdev) */
  cdevDevFile?: boolean;
}

/** An mdev in the fixture. */
export interface FixtureMdev {
  uuid: string;
  /** parent device directory under devices/ (e.g. "virtual/mtty/mtty") */
  parent: string;
  /** type id, e.g. "mtty-2" */
  type: string;
  typeName?: string;
  deviceApi: string;
  group: number | null;
  driver?: string;
  cdev?: string;
}

/** The /dev side. */
export interface FixtureDevNodes {
  /** create vfio/vfio */
  container?: boolean;
  /** groups with a vfio/N node */
  groups?: number[];
  /** groups with a vfio/noiommu-N node */
  noIommuGroups?: number[];
  /** cdevs with a vfio/devices/vfioN node */
  cdevs?: string[];
  /** create iommu */
  iommufd?: boolean;
}

/** A built fixture. */
export interface Fixture {
  /** the temporary directory holding both trees */
  dir: string;
  sysfs: string;
  dev: string;
  remove(): void;
}

function link(target: string, at: string): void {
  mkdirSync(dirname(at), { recursive: true });
  symlinkSync(relative(dirname(at), target), at);
}

function file(path: string, text: string | Uint8Array): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

const hex = (n: number, w: number) => '0x' + n.toString(16).padStart(w, '0');

/** A PCI config-space header (256 bytes) with the given ids. */
export function configSpace(p: { vendor: number; device: number; subVendor?: number; subDevice?: number; classCode: number; revision?: number }): Uint8Array {
  const b = new Uint8Array(256);
  const dv = new DataView(b.buffer);
  dv.setUint16(0x00, p.vendor, true);
  dv.setUint16(0x02, p.device, true);
  dv.setUint32(0x08, ((p.classCode << 8) | (p.revision ?? 0)) >>> 0, true);
  dv.setUint16(0x2c, p.subVendor ?? p.vendor, true);
  dv.setUint16(0x2e, p.subDevice ?? 0, true);
  return b;
}

/** Build the trees; the caller removes them (t.teardown(fx.remove)). */
export function buildFixture(pci: FixturePci[], mdevs: FixtureMdev[] = [], devNodes: FixtureDevNodes = {}): Fixture {
  const dir = mkdtempSync(join(tmpdir(), 'tsppci-'));
  const sysfs = join(dir, 'sys'), dev = join(dir, 'dev');
  mkdirSync(join(sysfs, 'bus', 'pci', 'devices'), { recursive: true });
  mkdirSync(join(sysfs, 'kernel', 'iommu_groups'), { recursive: true });
  mkdirSync(dev, { recursive: true });
  const group = (g: number, devDir: string, name: string) => {
    const gd = join(sysfs, 'kernel', 'iommu_groups', String(g));
    file(join(gd, 'type'), 'DMA\n');
    link(devDir, join(gd, 'devices', name));
    link(gd, join(devDir, 'iommu_group'));
  };
  for (const p of pci) {
    const d = join(sysfs, 'devices', 'pci0000:00', p.addr);
    file(join(d, 'vendor'), hex(p.vendor, 4) + '\n');
    file(join(d, 'device'), hex(p.device, 4) + '\n');
    file(join(d, 'subsystem_vendor'), hex(p.subVendor ?? p.vendor, 4) + '\n');
    file(join(d, 'subsystem_device'), hex(p.subDevice ?? 0, 4) + '\n');
    file(join(d, 'class'), hex(p.classCode, 6) + '\n');
    file(join(d, 'revision'), hex(p.revision ?? 1, 2) + '\n');
    file(join(d, 'numa_node'), `${p.numaNode ?? -1}\n`);
    file(join(d, 'driver_override'), '(null)\n');
    file(join(d, 'config'), configSpace(p));
    const lines: string[] = [];
    for (let i = 0; i < 13; i++) {
      const r = p.resources?.[i] ?? [0n, 0n, 0n];
      lines.push(r.map((x) => '0x' + x.toString(16).padStart(16, '0')).join(' '));
    }
    file(join(d, 'resource'), lines.join('\n') + '\n');
    link(join(sysfs, 'bus', 'pci'), join(d, 'subsystem'));
    link(d, join(sysfs, 'bus', 'pci', 'devices', p.addr));
    if (p.group !== null && p.group !== undefined) group(p.group, d, p.addr);
    if (p.driver) {
      const drv = join(sysfs, 'bus', 'pci', 'drivers', p.driver);
      file(join(drv, 'bind'), '');
      file(join(drv, 'unbind'), '');
      link(d, join(drv, p.addr));
      link(drv, join(d, 'driver'));
    }
    if (p.cdev && p.cdevDevFile === false) mkdirSync(join(d, 'vfio-dev', p.cdev), { recursive: true });
    else if (p.cdev) file(join(d, 'vfio-dev', p.cdev, 'dev'), '511:0\n');
  }
  for (const m of mdevs) {
    const parent = join(sysfs, 'devices', m.parent);
    const td = join(parent, 'mdev_supported_types', m.type);
    file(join(td, 'name'), (m.typeName ?? m.type) + '\n');
    file(join(td, 'device_api'), m.deviceApi + '\n');
    file(join(td, 'available_instances'), '1\n');
    file(join(td, 'description'), `fixture type ${m.type}\n`);
    file(join(td, 'create'), '');
    const d = join(parent, m.uuid);
    file(join(d, 'remove'), '');
    link(td, join(d, 'mdev_type'));
    link(d, join(td, 'devices', m.uuid));
    link(d, join(sysfs, 'bus', 'mdev', 'devices', m.uuid));
    if (m.group !== null) group(m.group, d, m.uuid);
    if (m.driver) {
      const drv = join(sysfs, 'bus', 'mdev', 'drivers', m.driver);
      mkdirSync(drv, { recursive: true });
      link(drv, join(d, 'driver'));
    }
    if (m.cdev) file(join(d, 'vfio-dev', m.cdev, 'dev'), '511:1\n');
  }
  if (devNodes.container) file(join(dev, 'vfio', 'vfio'), '');
  for (const g of devNodes.groups ?? []) file(join(dev, 'vfio', String(g)), '');
  for (const g of devNodes.noIommuGroups ?? []) file(join(dev, 'vfio', `noiommu-${g}`), '');
  for (const c of devNodes.cdevs ?? []) file(join(dev, 'vfio', 'devices', c), '');
  if (devNodes.iommufd) file(join(dev, 'iommu'), '');
  return { dir, sysfs, dev, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A fixture of typical machines' devices, used by several tests. */
export function standardFixture(): Fixture {
  return buildFixture(
    [
      // an 82599 bound to vfio-pci, with a cdev (IOMMUFD-capable kernel)
      { addr: '0000:01:00.0', vendor: 0x8086, device: 0x10fb, subVendor: 0x8086, subDevice: 0x000c, classCode: 0x020000, numaNode: 0, group: 12, driver: 'vfio-pci', cdev: 'vfio0',
        resources: [[0xfe000000n, 0xfe07ffffn, 0x40200n], [0n, 0n, 0n], [0xe000n, 0xe01fn, 0x40101n]] },
      // its sibling, still on the kernel's ixgbe driver
      { addr: '0000:01:00.1', vendor: 0x8086, device: 0x10fb, subVendor: 0x8086, subDevice: 0x000c, classCode: 0x020000, numaNode: 0, group: 13, driver: 'ixgbe' },
      // an e1000e on vfio-pci, group only (no cdev)
      { addr: '0000:00:03.0', vendor: 0x8086, device: 0x10d3, subVendor: 0x8086, subDevice: 0x0000, classCode: 0x020000, group: 3, driver: 'vfio-pci' },
      // a virtio-net modern device, unbound
      { addr: '0000:00:04.0', vendor: 0x1af4, device: 0x1041, subVendor: 0x1af4, subDevice: 0x1100, classCode: 0x020000, group: 4, driver: null },
      // a SATA controller without an IOMMU group, on ahci
      { addr: '0000:00:1f.2', vendor: 0x8086, device: 0x2922, classCode: 0x010601, group: null, driver: 'ahci' },
    ],
    [
      { uuid: '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001', parent: 'virtual/mtty/mtty', type: 'mtty-2', typeName: 'Dual-port-serial', deviceApi: 'vfio-pci', group: 20, driver: 'mtty' },
      { uuid: '0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9', parent: 'css/0.0.0010', type: 'vfio_ccw-io', typeName: 'I/O subchannel (Non-QDIO)', deviceApi: 'vfio-ccw', group: 21, driver: 'vfio_ccw_mdev' },
      // an s390 crypto (AP) passthrough device: a device_api no tspmd mdev driver takes
      { uuid: '5d3e8c7a-1b2f-4c6d-9e0a-b1c2d3e4f5a6', parent: 'vfio_ap/matrix', type: 'vfio_ap-passthrough', typeName: 'VFIO AP Passthrough Device', deviceApi: 'vfio-ap', group: 22, driver: 'vfio_ap_mdev' },
    ],
    { container: true, groups: [3, 12, 20, 21, 22], cdevs: ['vfio0'], iommufd: true },
  );
}
