/**
 * The mdev bus: mediated devices in <root>/bus/mdev/devices/<uuid> (links into the parent device's
 * directory), with their type (mdev_type link and the type's name), device_api and IOMMU group.
 *
 * Devices whose device_api is "vfio-pci" are PCI devices behind VFIO: they are opened through VFIO
 * (by UUID), their ids are read from the config-space region, and they are handed to the PCI bus,
 * which matches and probes them like any PCI function; -a/-b address them by UUID. Devices with
 * other device APIs (vfio-ccw, vfio-ap, ...) are listed and never probed.
 */
import { basename, dirname, join } from 'node:path';
import { readPciIdsThroughVfio } from '../pci/config.js';
import {
  SysfsError, exists, listDir, readLinkName, readOptionalInt, readOptionalString, readString, resolvePath,
} from '../../../src/sysfs.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import type { VfioMode } from '../../../src/iommu/mode.js';
import * as U from '../../../src/iommu/vfio-uapi.js';
import { log } from '../../../src/log.js';
import { isUuid } from '../pci/address.js';
import { iommuGroupOf, type PciDevice, type PciId } from '../pci/scan.js';
import { PciBus, pciBusConfig } from '../pci/pci.js';
import type { Eal } from '../../../src/eal.js';

/** One mediated device. */
export interface MdevDevice {
  /** the UUID (lower case) */
  uuid: string;
  /** resolved sysfs directory (inside the parent device's directory) */
  sysfsDir: string;
  /** the type id, the mdev_type link's last component (e.g. "mtty-2") */
  type: string;
  /** the type's human-readable name (mdev_supported_types/<type>/name), or null */
  typeName: string | null;
  /** device_api of the type, e.g. "vfio-pci" */
  deviceApi: string;
  /** the parent device's name (e.g. "mtty" or "0000:00:02.0") */
  parent: string;
  iommuGroup: number | null;
  /** the mdev's bound driver (e.g. "vfio_mdev", "mtty"), or null */
  kernelDriver: string | null;
}

/** Read one mdev's directory. */
export function readMdevDevice(devDir: string, uuid: string): MdevDevice {
  if (!isUuid(uuid)) throw new SysfsError(devDir, `"${uuid}" is not an mdev UUID`);
  const typeLink = join(devDir, 'mdev_type');
  const type = readLinkName(typeLink);
  if (type === null) throw new SysfsError(typeLink, 'missing: an mdev device has an mdev_type link');
  const typeDir = resolvePath(typeLink);
  if (typeDir === null) throw new SysfsError(typeLink, 'dangling link: the mdev type directory does not exist');
  return {
    uuid: uuid.toLowerCase(),
    sysfsDir: devDir,
    type,
    typeName: readOptionalString(join(typeDir, 'name')),
    deviceApi: readString(join(typeDir, 'device_api')),
    parent: basename(dirname(devDir)),
    iommuGroup: iommuGroupOf(devDir),
    kernelDriver: readLinkName(join(devDir, 'driver')),
  };
}

/** Scan <root>/bus/mdev/devices (none when the mdev bus is absent). */
export function scanMdev(sysfsRoot: string): MdevDevice[] {
  if (!exists(sysfsRoot)) throw new SysfsError(sysfsRoot, 'the sysfs root does not exist (check --sysfs-root)');
  const dir = join(sysfsRoot, 'bus', 'mdev', 'devices');
  if (!exists(dir)) return [];
  return listDir(dir).map((name) => {
    const link = join(dir, name);
    const devDir = resolvePath(link);
    if (devDir === null) throw new SysfsError(link, 'dangling link: the mdev directory it points to does not exist');
    return readMdevDevice(devDir, name);
  });
}

export { parseConfigIds, readPciIdsThroughVfio } from '../pci/config.js';

/** The PciDevice record of a vfio-pci mdev, with ids read through VFIO. */
export function mdevAsPciDevice(m: MdevDevice, ids: { id: PciId; revision: number }): PciDevice {
  return {
    bus: 'mdev', addr: m.uuid, id: ids.id, revision: ids.revision,
    numaNode: readOptionalInt(join(dirname(m.sysfsDir), 'numa_node')) ?? -1,
    iommuGroup: m.iommuGroup, kernelDriver: m.kernelDriver, resources: [], sysfsDir: m.sysfsDir,
  };
}

/** One mdev as the mdev bus sees it. */
export interface MdevStatus {
  dev: MdevDevice;
  /** the VFIO mode it would be (or was) opened with */
  vfioMode: VfioMode | null;
  /** set when the device was handed to the PCI bus (ids read through VFIO) */
  pci: PciDevice | null;
  /** why it was not handed over, or null */
  skipReason: string | null;
}

/**
 * Scan the mdev bus and hand every usable vfio-pci mdev to the PCI bus: open it through the PCI
 * bus's VFIO layer (by UUID), read its ids from config space, handOver(). Devices the allow/block
 * lists exclude are not opened.
 */
export function handOverMdevs(bus: PciBus): MdevStatus[] {
  const out: MdevStatus[] = [];
  for (const m of scanMdev(bus.config.sysfsRoot)) {
    const target = { name: m.uuid, sysfsDir: m.sysfsDir, iommuGroup: m.iommuGroup };
    const choice = bus.vfio.choose(target);
    const st: MdevStatus = { dev: m, vfioMode: m.deviceApi === U.VFIO_DEVICE_API_PCI_STRING ? choice.mode : null, pci: null, skipReason: null };
    out.push(st);
    st.skipReason = bus.filter.skipReason(m.uuid);
    if (st.skipReason === null && m.deviceApi !== U.VFIO_DEVICE_API_PCI_STRING) {
      st.skipReason = `device_api ${m.deviceApi}: only ${U.VFIO_DEVICE_API_PCI_STRING} mdevs are driven (listed, not probed)`;
    }
    if (st.skipReason === null && bus.config.noPci) st.skipReason = '--no-pci: vfio-pci mdevs are PCI devices';
    if (st.skipReason === null && choice.mode === null) st.skipReason = choice.reason;
    if (st.skipReason !== null) continue;
    let vfio: VfioDevice | null = null;
    try {
      vfio = bus.openDevice(target);
      st.pci = mdevAsPciDevice(m, readPciIdsThroughVfio(vfio));
      bus.handOver(st.pci, vfio);
      log('info', 'mdev', `${m.uuid} (${m.type}): vfio-pci ${st.pci.id.vendor.toString(16)}:${st.pci.id.device.toString(16)} handed to the PCI bus`);
    } catch (e) {
      vfio?.close();
      st.pci = null;
      st.skipReason = `cannot read its PCI ids through VFIO: ${(e as Error).message}`;
    }
  }
  return out;
}

/**
 * Scan both buses for an EAL and probe: vfio-pci mdevs are handed to the PCI bus first, then
 * every PCI device is matched and probed. The bus closes with the EAL.
 */
export async function probePciAndMdev(eal: Eal): Promise<{ bus: PciBus; mdevs: MdevStatus[] }> {
  const bus = new PciBus(pciBusConfig(eal));
  eal.onClose(() => bus.close());
  const mdevs = handOverMdevs(bus);
  await bus.probe(eal);
  return { bus, mdevs };
}
