/**
 * `tspmd devices [EAL options] [--json]`: what the PCI and mdev buses find, with
 * the ids, IOMMU group, bound kernel driver, the VFIO mode that would be used and why a device
 * would be skipped; for an mdev also its device_api and the mdev driver registered for it (or why
 * none takes it). It reads sysfs and /dev, and opens only vfio-pci mdevs (their ids live in config
 * space, read through VFIO); it probes nothing.
 *
 * --json may come before or after "--": `tspmd devices --sysfs-root DIR --json` and
 * `tspmd devices --sysfs-root DIR -- --json` are the same. The sysfs and /dev roots are the EAL's
 * --sysfs-root and --dev-root.
 */
import { eachOption, type App } from '../../lib/app/app.js';
import { UsageError } from '../../src/options.js';
import { SysfsError } from '../../src/sysfs.js';
import { PciBus, pciBusConfig, type PciDeviceStatus } from '../../drivers/bus/pci/pci.js';
import { handOverMdevs, type MdevStatus } from '../../drivers/bus/mdev/mdev.js';
import { handOverVfioUser, type VfioUserStatus } from '../../drivers/bus/vfio-user/vfio-user.js';

/** The app's options. */
export interface DevicesOptions {
  json: boolean;
}

/** One listed device, in the JSON contract's shape. */
export interface DeviceRow {
  bus: 'pci' | 'mdev' | 'vfio-user';
  addr: string;
  vendor: string | null;
  device: string | null;
  class: string | null;
  iommu_group: number | null;
  kernel_driver: string | null;
  vfio_mode: 'group' | 'iommufd' | null;
  /** mdevs: the type's device_api */
  device_api?: string;
  /** mdevs: the mdev driver registered for device_api ("pci": handed to the PCI bus), or null */
  mdev_driver?: string | null;
  /** the tspmd driver whose id table matches (it probes the device unless skip_reason says why not), or null */
  driver: string | null;
  skip_reason: string | null;
}

const hex = (n: number, w: number) => '0x' + n.toString(16).padStart(w, '0');

/** Rows for PCI devices, mdevs and vfio-user devices (a device handed over to the PCI bus gets its ids and PCI status). */
export function deviceRows(pci: PciDeviceStatus[], mdevs: MdevStatus[], vfioUser: VfioUserStatus[] = []): DeviceRow[] {
  const rows: DeviceRow[] = [];
  const pciByAddr = new Map(pci.map((s) => [s.dev.addr, s]));
  for (const s of pci) {
    if (s.dev.bus !== 'pci') continue;
    rows.push({
      bus: 'pci', addr: s.dev.addr, vendor: hex(s.dev.id.vendor, 4), device: hex(s.dev.id.device, 4), class: hex(s.dev.id.classCode, 6),
      iommu_group: s.dev.iommuGroup, kernel_driver: s.dev.kernelDriver, vfio_mode: s.vfioMode, driver: s.driver?.name ?? null, skip_reason: s.skipReason,
    });
  }
  for (const v of vfioUser) {
    const p = pciByAddr.get(v.addr);
    rows.push({
      bus: 'vfio-user', addr: v.addr,
      vendor: p ? hex(p.dev.id.vendor, 4) : null, device: p ? hex(p.dev.id.device, 4) : null, class: p ? hex(p.dev.id.classCode, 6) : null,
      iommu_group: null, kernel_driver: null, vfio_mode: null, driver: p?.driver?.name ?? null, skip_reason: p ? p.skipReason : v.skipReason,
    });
  }
  for (const m of mdevs) {
    const p = pciByAddr.get(m.dev.uuid);
    rows.push({
      bus: 'mdev', addr: m.dev.uuid,
      vendor: p ? hex(p.dev.id.vendor, 4) : null, device: p ? hex(p.dev.id.device, 4) : null, class: p ? hex(p.dev.id.classCode, 6) : null,
      iommu_group: m.dev.iommuGroup, kernel_driver: m.dev.kernelDriver, vfio_mode: p ? p.vfioMode ?? m.vfioMode : m.vfioMode,
      device_api: m.dev.deviceApi, mdev_driver: m.driver?.name ?? null,
      driver: p ? p.driver?.name ?? null : m.driver?.probe ? m.driver.name : null, skip_reason: p ? p.skipReason : m.skipReason,
    });
  }
  return rows;
}

/** A readable table of rows. */
export function formatTable(rows: DeviceRow[]): string {
  if (rows.length === 0) return 'no PCI or mdev devices found';
  const head = ['BUS', 'ADDRESS', 'ID', 'CLASS', 'GROUP', 'KERNEL DRIVER', 'VFIO', 'STATUS'];
  const cells = rows.map((r) => [
    r.bus, r.addr + (r.device_api ? ` (${r.device_api})` : ''),
    r.vendor && r.device ? `${r.vendor.slice(2)}:${r.device.slice(2)}` : '-', r.class ?? '-',
    r.iommu_group === null ? '-' : String(r.iommu_group), r.kernel_driver ?? '-', r.vfio_mode ?? '-',
    (r.mdev_driver ? `mdev driver ${r.mdev_driver}; ` : '') +
      (r.skip_reason === null ? `will be probed${r.driver ? ` by ${r.driver}` : ''}` : `skipped: ${r.skip_reason}`),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (i === head.length - 1 ? 0 : c[i].length))));
  const line = (c: string[]) => c.map((x, i) => (i === c.length - 1 ? x : x.padEnd(widths[i]))).join('  ');
  return [line(head), ...cells.map(line)].join('\n');
}

/** The devices app. */
export const devices: App<DevicesOptions> = {
  name: 'devices',
  summary: 'list PCI and mdev devices: ids, IOMMU group, kernel driver, VFIO mode, why one would be skipped',
  help: `  --json           one JSON array line instead of a table (may also come before "--")`,
  ownFlags: { '--json': false },
  ealDefaults: { noHuge: true },
  /** --json (after "--", or moved there by runApp). */
  parse(args: string[]): DevicesOptions {
    const o: DevicesOptions = { json: false };
    eachOption(args, (flag) => {
      if (flag === '--json') o.json = true;
      else throw new UsageError(`unknown devices option "${flag}" (see --help)`);
    });
    return o;
  },
  /** List the devices; exit code 1 with the path when sysfs cannot be read. */
  async main(eal, opts): Promise<number> {
    // A listing maps no memory into IOMMUs: memory null.
    const bus = new PciBus({ ...pciBusConfig(eal), memory: null });
    try {
      const mdevs = handOverMdevs(bus);
      const vfioUser = handOverVfioUser(bus);
      const rows = deviceRows(bus.status(), mdevs, vfioUser);
      console.log(opts.json ? JSON.stringify(rows) : formatTable(rows));
      return 0;
    } catch (e) {
      if (e instanceof SysfsError) {
        console.error(`tspmd devices: ${e.message}`);
        return 1;
      }
      throw e;
    } finally {
      await bus.close();
    }
  },
};
