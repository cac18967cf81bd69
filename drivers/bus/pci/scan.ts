/**
 * The PCI sysfs scan: <root>/bus/pci/devices/<address> (links into <root>/devices/...) read into
 * plain PciDevice records: ids, class, NUMA node, IOMMU group, bound kernel driver, resources.
 */
import { join } from 'node:path';
import { canonicalDeviceName } from './address.js';
import {
  SysfsError, exists, listDir, readHex, readLinkName, readOptionalInt, readString, resolvePath,
} from '../../../src/sysfs.js';

/** The ids a PCI driver matches on. */
export interface PciId {
  vendor: number;
  device: number;
  subVendor: number;
  subDevice: number;
  /** 24-bit class code: base class, subclass, programming interface (0x020000 = Ethernet) */
  classCode: number;
}

/** One resource line of sysfs `resource` (BARs 0-5, then the ROM). */
export interface PciResource {
  /** 0-5 for BARs, 6 for the expansion ROM */
  index: number;
  start: bigint;
  end: bigint;
  /** the kernel's IORESOURCE_* flags */
  flags: number;
  size: number;
  kind: 'mem' | 'io';
}

/** IORESOURCE_IO (include/linux/ioport.h; the sysfs resource file's flags column): an I/O port range. */
const IORESOURCE_IO = 0x100;

/** A device found on a bus that the PCI bus can drive: a PCI function, or an mdev handed over. */
export interface PciDevice {
  /** which bus found it */
  bus: 'pci' | 'mdev' | 'vfio-user';
  /** canonical PCI address (0000:01:00.0), mdev UUID, or vfio-user:SOCKET */
  addr: string;
  id: PciId;
  revision: number;
  /** NUMA node, -1 when unknown */
  numaNode: number;
  /** IOMMU group number, null without an iommu_group link */
  iommuGroup: number | null;
  /** the bound kernel driver (driver link), null when unbound */
  kernelDriver: string | null;
  /** resources with a non-zero size */
  resources: PciResource[];
  /** the device's resolved sysfs directory */
  sysfsDir: string;
}

/** Parse a sysfs `resource` file's text (three hex columns per line); path names it in errors. */
export function parseResources(text: string, path: string): PciResource[] {
  const out: PciResource[] = [];
  text.split('\n').forEach((line, i) => {
    if (i > 6 || line.trim() === '') return;
    const cols = line.trim().split(/\s+/);
    if (cols.length !== 3 || !cols.every((c) => /^0x[0-9a-fA-F]+$/.test(c))) {
      throw new SysfsError(path, `line ${i + 1} "${line}" is not three hex numbers`);
    }
    const [start, end, flags] = cols.map((c) => BigInt(c));
    if (start === 0n && end === 0n) return;
    const f = Number(flags & 0xffffffffn);
    out.push({ index: i, start, end, flags: f, size: Number(end - start + 1n), kind: f & IORESOURCE_IO ? 'io' : 'mem' });
  });
  return out;
}

/** The IOMMU group number behind a device's iommu_group link, or null. */
export function iommuGroupOf(devDir: string): number | null {
  const name = readLinkName(join(devDir, 'iommu_group'));
  if (name === null) return null;
  if (!/^\d+$/.test(name)) throw new SysfsError(join(devDir, 'iommu_group'), `link points to "${name}", not to kernel/iommu_groups/<number>`);
  return Number(name);
}

/** Read one PCI device's directory; the address is the directory's name. */
export function readPciDevice(devDir: string, name: string): PciDevice {
  const addr = canonicalDeviceName(name);
  if (addr === null || addr.includes('-')) throw new SysfsError(devDir, `"${name}" is not a PCI address`);
  const classCode = readHex(join(devDir, 'class'));
  const resPath = join(devDir, 'resource');
  return {
    bus: 'pci',
    addr,
    id: {
      vendor: readHex(join(devDir, 'vendor')), device: readHex(join(devDir, 'device')),
      subVendor: readHex(join(devDir, 'subsystem_vendor')), subDevice: readHex(join(devDir, 'subsystem_device')),
      classCode,
    },
    revision: exists(join(devDir, 'revision')) ? readHex(join(devDir, 'revision')) : 0,
    numaNode: readOptionalInt(join(devDir, 'numa_node')) ?? -1,
    iommuGroup: iommuGroupOf(devDir),
    kernelDriver: readLinkName(join(devDir, 'driver')),
    resources: exists(resPath) ? parseResources(readString(resPath), resPath) : [],
    sysfsDir: devDir,
  };
}

/** Scan <root>/bus/pci/devices; throws SysfsError naming the path when the tree is unreadable. */
export function scanPci(sysfsRoot: string): PciDevice[] {
  const dir = join(sysfsRoot, 'bus', 'pci', 'devices');
  if (!exists(sysfsRoot)) throw new SysfsError(sysfsRoot, 'the sysfs root does not exist (check --sysfs-root)');
  if (!exists(dir)) return []; // a machine (or fixture) without PCI
  const out: PciDevice[] = [];
  for (const name of listDir(dir)) {
    const link = join(dir, name);
    const devDir = resolvePath(link);
    if (devDir === null) throw new SysfsError(link, 'dangling link: the device directory it points to does not exist');
    out.push(readPciDevice(devDir, name));
  }
  return out.sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
}

/** "8086:10fb" */
export function formatId(id: PciId): string {
  const h = (n: number) => n.toString(16).padStart(4, '0');
  return `${h(id.vendor)}:${h(id.device)}`;
}
