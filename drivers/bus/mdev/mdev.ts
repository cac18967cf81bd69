/**
 * The mdev bus: mediated devices in <root>/bus/mdev/devices/<uuid> (links into the parent device's
 * directory), with their type (mdev_type link and the type's name), device_api and IOMMU group.
 *
 * Which code drives an mdev is chosen by its type's device_api, from a registry of mdev drivers
 * (registerMdevDriver), one per device_api. The first registered is the PCI hand-over: a "vfio-pci"
 * mdev is opened through VFIO (by UUID), its ids are read from the config-space region, and it is
 * handed to the PCI bus, which matches and probes it like any PCI function. A driver for another
 * device_api (vfio-ccw, vfio-ap, vfio-platform, ...) registers itself and gets its mdevs opened
 * through VFIO and probed, without a change here. An mdev whose device_api has no driver is listed
 * with that reason. -a/-b address mdevs by UUID.
 */
import { basename, dirname, join } from 'node:path';
import { readPciIdsThroughVfio } from '../pci/config.js';
import {
  SysfsError, exists, listDir, readLinkName, readOptionalInt, readOptionalString, readString, resolvePath,
} from '../../../src/sysfs.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import type { VfioMode, VfioTarget } from '../../../src/iommu/mode.js';
import * as U from '../../../src/iommu/vfio-uapi.js';
import { log } from '../../../src/log.js';
import { isUuid } from '../pci/address.js';
import { iommuGroupOf, type PciDevice, type PciId } from '../pci/scan.js';
import { PciBus, pciBusConfig, type PciProbed, type VfioProbeContext } from '../pci/pci.js';
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

/**
 * What an mdev driver's claim may report: the PCI device record when it handed the mdev to the PCI
 * bus (which then probes it), nothing otherwise.
 */
export interface MdevClaim {
  pci?: PciDevice;
}

/** What claim() gets: the mdev, the bus (its VFIO layer, config, filter) and how to open the device. */
export interface MdevClaimContext {
  dev: MdevDevice;
  bus: PciBus;
  /** the mdev as a VFIO target (name: its UUID) */
  target: VfioTarget;
}

/** What an mdev driver's probe returns: something the bus can close (as a PCI driver's). */
export type MdevProbed = PciProbed;

/** What an mdev driver's probe gets: the mdev, opened through VFIO by UUID (closed by the bus after the probed object). */
export interface MdevProbeContext extends VfioProbeContext {
  dev: MdevDevice;
}

/**
 * A driver for the mdevs of one device_api. Both hooks are optional: claim runs at scan time (also
 * for `tspmd devices`, which probes nothing) and throws an Error saying why it cannot take the mdev;
 * probe runs when an application probes, with the mdev opened through VFIO. A driver that hands its
 * mdevs to another bus (the PCI hand-over) claims and does not probe.
 */
export interface MdevDriver<T extends MdevProbed = MdevProbed> {
  /** e.g. "pci" or "ccw_io" */
  name: string;
  /** the device_api it drives, as the mdev type's device_api file spells it ("vfio-ccw") */
  deviceApi: string;
  /** one line for listings */
  description: string;
  /** Take the mdev at scan time, or throw saying why not. */
  claim?(ctx: MdevClaimContext): MdevClaim | void;
  /** Take the opened device when an application probes; return what the bus closes. */
  probe?(ctx: MdevProbeContext): T | Promise<T>;
}

const mdevDriverRegistry = new Map<string, MdevDriver>();

/** Make an mdev driver available for its device_api; one driver per device_api. */
export function registerMdevDriver<T extends MdevProbed>(d: MdevDriver<T>): void {
  const other = mdevDriverRegistry.get(d.deviceApi);
  if (other) throw new Error(`mdev driver "${d.name}": device_api ${d.deviceApi} is already driven by "${other.name}"; unregister it first`);
  mdevDriverRegistry.set(d.deviceApi, d as unknown as MdevDriver);
}

/** Remove the driver registered for deviceApi (tests, hot-unload); mdevs already probed stay probed. */
export function unregisterMdevDriver(deviceApi: string): void {
  mdevDriverRegistry.delete(deviceApi);
}

/** Registered mdev drivers, in registration order. */
export function mdevDrivers(): MdevDriver[] {
  return [...mdevDriverRegistry.values()];
}

/** The driver registered for deviceApi, or null. */
export function findMdevDriver(deviceApi: string): MdevDriver | null {
  return mdevDriverRegistry.get(deviceApi) ?? null;
}

/**
 * The PCI hand-over, the first mdev driver: open the mdev through the PCI bus's VFIO layer, read
 * its ids from config space, handOver(). The PCI bus matches and probes it.
 */
export const mdevPciHandOver: MdevDriver = {
  name: 'pci',
  deviceApi: U.VFIO_DEVICE_API_PCI_STRING,
  description: 'hands vfio-pci mdevs to the PCI bus, which probes them like PCI functions',
  claim({ dev, bus, target }): MdevClaim {
    if (bus.config.noPci) throw new Error('--no-pci: vfio-pci mdevs are PCI devices');
    let vfio: VfioDevice | null = null;
    try {
      vfio = bus.openDevice(target);
      const pci = mdevAsPciDevice(dev, readPciIdsThroughVfio(vfio));
      bus.handOver(pci, vfio);
      log('info', 'mdev', `${dev.uuid} (${dev.type}): vfio-pci ${pci.id.vendor.toString(16)}:${pci.id.device.toString(16)} handed to the PCI bus`);
      return { pci };
    } catch (e) {
      vfio?.close();
      throw new Error(`cannot read its PCI ids through VFIO: ${(e as Error).message}`);
    }
  },
};
registerMdevDriver(mdevPciHandOver);

/** One mdev as the mdev bus sees it. */
export interface MdevStatus {
  dev: MdevDevice;
  /** the driver registered for its device_api (null: none) */
  driver: MdevDriver | null;
  /** the VFIO mode it would be (or was) opened with (null: no driver, or no VFIO path) */
  vfioMode: VfioMode | null;
  /** set when the device was handed to the PCI bus (ids read through VFIO) */
  pci: PciDevice | null;
  /** why no driver takes it, or null */
  skipReason: string | null;
  /** set once the driver probed it (probeMdevs) */
  probed: { probed: MdevProbed; vfio: VfioDevice } | null;
}

/**
 * Scan the mdev bus and let the driver registered for each mdev's device_api claim it (the PCI
 * hand-over opens vfio-pci mdevs and hands them to the PCI bus). Devices the allow/block lists
 * exclude, or without a driver or a VFIO path, are listed with the reason and not opened.
 */
export function handOverMdevs(bus: PciBus): MdevStatus[] {
  const out: MdevStatus[] = [];
  for (const m of scanMdev(bus.config.sysfsRoot)) {
    const target = { name: m.uuid, sysfsDir: m.sysfsDir, iommuGroup: m.iommuGroup };
    const driver = findMdevDriver(m.deviceApi);
    const st: MdevStatus = { dev: m, driver, vfioMode: null, pci: null, skipReason: bus.filter.skipReason(m.uuid), probed: null };
    out.push(st);
    if (driver === null) {
      st.skipReason ??= `no driver registered for device_api ${m.deviceApi}`;
      continue;
    }
    const choice = bus.vfio.choose(target);
    st.vfioMode = choice.mode;
    if (st.skipReason === null && choice.mode === null) st.skipReason = choice.reason;
    if (st.skipReason !== null || !driver.claim) continue;
    try {
      st.pci = driver.claim({ dev: m, bus, target })?.pci ?? null;
    } catch (e) {
      st.skipReason = (e as Error).message;
    }
  }
  return out;
}

/**
 * Probe every claimed mdev whose driver has a probe (the PCI hand-over has none: the PCI bus
 * probes those): open it through the bus's VFIO layer and call the driver. Throws naming the mdev
 * and driver when a probe fails (that device is closed again). Undo with closeMdevs.
 */
export async function probeMdevs(bus: PciBus, mdevs: MdevStatus[], eal: Eal | null = null): Promise<MdevStatus[]> {
  const done: MdevStatus[] = [];
  for (const st of mdevs) {
    if (st.skipReason !== null || st.probed !== null || !st.driver?.probe) continue;
    const vfio = bus.openDevice({ name: st.dev.uuid, sysfsDir: st.dev.sysfsDir, iommuGroup: st.dev.iommuGroup });
    let probed: MdevProbed;
    try {
      probed = await st.driver.probe({ dev: st.dev, vfio, args: bus.filter.args(st.dev.uuid), eal });
    } catch (e) {
      vfio.close();
      throw new Error(`${st.dev.uuid}: mdev driver ${st.driver.name} failed to probe the ${st.dev.deviceApi} mdev: ${(e as Error).message}`);
    }
    st.probed = { probed, vfio };
    log('info', 'mdev', `${st.dev.uuid} (${st.dev.type}): probed by ${st.driver.name} (${st.dev.deviceApi}, VFIO ${vfio.backend})`);
    done.push(st);
  }
  return done;
}

/** Close what probeMdevs probed (the driver's object, then its VFIO device), last first; throws the first error after trying all. */
export async function closeMdevs(mdevs: MdevStatus[]): Promise<void> {
  let first: unknown = null;
  for (const st of [...mdevs].reverse()) {
    const p = st.probed;
    if (!p) continue;
    st.probed = null;
    try { await p.probed.close(); } catch (e) { first ??= e; }
    try { p.vfio.close(); } catch (e) { first ??= e; }
  }
  if (first) throw first;
}

/**
 * Scan both buses for an EAL and probe: mdevs are claimed by their device_api's driver (vfio-pci
 * ones handed to the PCI bus), the other claimed mdevs are probed, then every PCI device is matched
 * and probed. Both close with the EAL.
 */
export async function probePciAndMdev(eal: Eal): Promise<{ bus: PciBus; mdevs: MdevStatus[] }> {
  const bus = new PciBus(pciBusConfig(eal));
  eal.onClose(() => bus.close());
  const mdevs = handOverMdevs(bus);
  eal.onClose(() => closeMdevs(mdevs));
  await probeMdevs(bus, mdevs, eal);
  await bus.probe(eal);
  return { bus, mdevs };
}
