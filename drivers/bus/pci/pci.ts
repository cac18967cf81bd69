/**
 * The PCI bus: finds PCI functions in sysfs (and vfio-pci mdevs the mdev bus hands over), applies
 * the allow/block lists, matches drivers by their id tables, and probes matched devices through
 * VFIO; remove() and close() undo it.
 *
 * A device bound to a kernel driver other than vfio-pci is never touched: its status says which
 * driver holds it and how to bind it to vfio-pci. A listing (status()) only reads sysfs and /dev.
 */
import type { Eal } from '../../../src/eal.js';
import type { EalMemory } from '../../../src/memory/memory.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import { Vfio } from '../../../src/iommu/vfio.js';
import type { VfioMode, VfioModeOption, VfioTarget } from '../../../src/iommu/mode.js';
import { log } from '../../../src/log.js';
import { DeviceFilter } from './address.js';
import { formatId, scanPci, type PciDevice, type PciId } from './scan.js';

export { parsePciAddress, formatPciAddress, canonicalDeviceName, isUuid, parseDeviceSpec, DeviceFilter, type PciAddress, type DeviceSpec } from './address.js';
export { scanPci, readPciDevice, parseResources, iommuGroupOf, formatId, type PciDevice, type PciId, type PciResource } from './scan.js';

/** The kernel driver a device must be bound to for tspmd to use it. */
export const VFIO_PCI_DRIVER = 'vfio-pci';

/**
 * One id-table entry; an omitted field is a wildcard (PCI_ANY_ID). classCode is compared under
 * classMask (default 0xffffff), e.g. { classCode: 0x020000, classMask: 0xff0000 } for any network
 * controller.
 */
export interface PciIdMatch {
  vendor?: number;
  device?: number;
  subVendor?: number;
  subDevice?: number;
  classCode?: number;
  classMask?: number;
}

/** What a driver's probe returns: something the bus can close on remove. */
export interface PciProbed {
  close(): void | Promise<void>;
}

/** What a probe of a VFIO device gets, on the PCI bus and the mdev bus alike. */
export interface VfioProbeContext {
  /** the open VFIO device (regions, IRQs, DMA); the bus closes it after remove */
  vfio: VfioDevice;
  /** driver arguments given with -a ADDR,key=value (-a UUID,key=value for an mdev) */
  args: Record<string, string>;
  /** the EAL, when probing for an application */
  eal: Eal | null;
}

/** What a driver's probe gets. */
export interface PciProbeContext extends VfioProbeContext {
  dev: PciDevice;
}

/** A PCI driver: its id table and probe/remove. */
export interface PciDriver<T extends PciProbed = PciProbed> {
  /** e.g. "net_e1000e" */
  name: string;
  /** one line for listings */
  description: string;
  idTable: readonly PciIdMatch[];
  /** its RX queues can give an Rx interrupt (with MSI-X): help texts and docs list it from here */
  rxInterrupt?: boolean;
  /** Take the device: map BARs, set up queues; return the port or device object. */
  probe(ctx: PciProbeContext): T | Promise<T>;
  /** Release the device (default: probed.close()). */
  remove?(probed: T, ctx: PciProbeContext): void | Promise<void>;
}

const drivers = new Map<string, PciDriver>();

/** Make a PCI driver available to the bus; names are unique. */
export function registerPciDriver<T extends PciProbed>(d: PciDriver<T>): void {
  if (drivers.has(d.name)) throw new Error(`PCI driver "${d.name}" is registered twice`);
  drivers.set(d.name, d as unknown as PciDriver);
}

/** Remove a registered driver (tests, hot-unload). */
export function unregisterPciDriver(name: string): void {
  drivers.delete(name);
}

/** Registered PCI drivers, in registration order. */
export function pciDrivers(): PciDriver[] {
  return [...drivers.values()];
}

/** Whether an id-table entry matches a device's ids. */
export function pciIdMatches(m: PciIdMatch, id: PciId): boolean {
  if (m.vendor !== undefined && m.vendor !== id.vendor) return false;
  if (m.device !== undefined && m.device !== id.device) return false;
  if (m.subVendor !== undefined && m.subVendor !== id.subVendor) return false;
  if (m.subDevice !== undefined && m.subDevice !== id.subDevice) return false;
  if (m.classCode !== undefined) {
    const mask = m.classMask ?? 0xffffff;
    if ((m.classCode & mask) !== (id.classCode & mask)) return false;
  }
  return true;
}

/** The first registered driver whose id table matches, or null. */
export function findPciDriver(id: PciId, from: readonly PciDriver[] = pciDrivers()): PciDriver | null {
  return from.find((d) => d.idTable.some((m) => pciIdMatches(m, id))) ?? null;
}

/** How to bind a device to vfio-pci (the sysfs commands), for messages. */
export function bindHint(addr: string, kernelDriver: string | null, sysfsRoot = '/sys'): string {
  const dev = `${sysfsRoot}/bus/pci/devices/${addr}`;
  const steps = [`modprobe vfio-pci`, `echo vfio-pci > ${dev}/driver_override`];
  if (kernelDriver) steps.push(`echo ${addr} > ${sysfsRoot}/bus/pci/drivers/${kernelDriver}/unbind`);
  steps.push(`echo ${addr} > ${sysfsRoot}/bus/pci/drivers_probe`);
  return `bind it to vfio-pci: ${steps.join('; ')}`;
}

/** The PCI bus's configuration (from the EAL options). */
export interface PciBusConfig {
  sysfsRoot: string;
  /** /dev root for VFIO nodes (default /dev) */
  devRoot: string;
  vfioMode: VfioModeOption;
  allow: readonly string[];
  block: readonly string[];
  noPci: boolean;
  /** EAL memory to DMA-map for probed devices (null: none) */
  memory: EalMemory | null;
  /** Open a device; default: through the kernel's VFIO (Vfio.openDevice). */
  openDevice?: (target: VfioTarget) => VfioDevice;
}

/** The bus configuration an EAL's options give. */
export function pciBusConfig(eal: Eal): PciBusConfig {
  const o = eal.options;
  return { sysfsRoot: o.sysfsRoot, devRoot: o.devRoot, vfioMode: o.vfioMode, allow: o.allow, block: o.block, noPci: o.noPci, memory: eal.memory };
}

/** One device as the bus sees it: the driver that would take it, the VFIO mode, or why it is skipped. */
export interface PciDeviceStatus {
  dev: PciDevice;
  driver: PciDriver | null;
  /** the VFIO mode it would be opened with (null: not bound to vfio-pci, or no VFIO access) */
  vfioMode: VfioMode | null;
  /** why the mode was chosen or is null */
  modeReason: string;
  /** why probe() would leave it alone, or null when it would be probed */
  skipReason: string | null;
}

/** A device the bus probed. */
export interface ProbedPciDevice {
  dev: PciDevice;
  driver: PciDriver;
  probed: PciProbed;
  vfio: VfioDevice;
}

interface HandedOver {
  dev: PciDevice;
  vfio: VfioDevice;
}

/** The PCI bus of one EAL instance. */
export class PciBus {
  readonly config: PciBusConfig;
  readonly vfio: Vfio;
  readonly filter: DeviceFilter;
  private readonly handed = new Map<string, HandedOver>();
  private readonly probedDevs = new Map<string, ProbedPciDevice & { ctx: PciProbeContext }>();
  private scanned: PciDevice[] | null = null;
  private closed = false;

  /** A bus over the configured sysfs root; nothing is scanned or opened yet. */
  constructor(config: PciBusConfig) {
    this.config = config;
    this.filter = new DeviceFilter(config.allow, config.block);
    this.vfio = new Vfio({ mode: config.vfioMode, sysfsRoot: config.sysfsRoot, devRoot: config.devRoot, memory: config.memory });
  }

  /** PCI functions in sysfs (none with --no-pci); scanned once. */
  scan(): PciDevice[] {
    if (this.config.noPci) return [];
    this.scanned ??= scanPci(this.config.sysfsRoot);
    return this.scanned;
  }

  /** Take a device another bus found and opened (an mdev with device_api vfio-pci); the bus owns vfio from now on. */
  handOver(dev: PciDevice, vfio: VfioDevice): void {
    if (this.handed.has(dev.addr)) throw new Error(`PCI bus: device ${dev.addr} was handed over twice`);
    this.handed.set(dev.addr, { dev, vfio });
  }

  /** Open a device through VFIO (or the configured opener). */
  openDevice(target: VfioTarget): VfioDevice {
    return this.config.openDevice ? this.config.openDevice(target) : this.vfio.openDevice(target);
  }

  /** Every device with its driver, VFIO mode and skip reason; reads sysfs and /dev only. */
  status(): PciDeviceStatus[] {
    const out: PciDeviceStatus[] = [];
    for (const dev of this.scan()) out.push(this.statusOf(dev));
    for (const h of this.handed.values()) out.push(this.statusOf(h.dev));
    return out;
  }

  /** Probe every device that is not skipped; throws naming the device and driver when a probe fails. */
  async probe(eal: Eal | null = null): Promise<ProbedPciDevice[]> {
    if (this.closed) throw new Error('PCI bus is closed');
    const done: ProbedPciDevice[] = [];
    for (const st of this.status()) {
      const handed = this.handed.get(st.dev.addr);
      if (this.probedDevs.has(st.dev.addr)) continue;
      if (st.skipReason !== null || st.driver === null) {
        log(this.filter.allow.has(st.dev.addr) ? 'warn' : 'info', 'pci', `${st.dev.addr}: skipped: ${st.skipReason}`);
        if (handed) { handed.vfio.close(); this.handed.delete(st.dev.addr); }
        continue;
      }
      const vfio = handed?.vfio ?? this.openDevice({ name: st.dev.addr, sysfsDir: st.dev.sysfsDir, iommuGroup: st.dev.iommuGroup });
      this.handed.delete(st.dev.addr);
      const ctx: PciProbeContext = { dev: st.dev, vfio, args: this.filter.args(st.dev.addr), eal };
      let probed: PciProbed;
      try {
        probed = await st.driver.probe(ctx);
      } catch (e) {
        vfio.close();
        throw new Error(`${st.dev.addr}: driver ${st.driver.name} failed to probe ${formatId(st.dev.id)}: ${(e as Error).message}`);
      }
      const p = { dev: st.dev, driver: st.driver, probed, vfio, ctx };
      this.probedDevs.set(st.dev.addr, p);
      log('info', 'pci', `${st.dev.addr}: probed by ${st.driver.name} (${formatId(st.dev.id)}, VFIO ${vfio.backend})`);
      done.push({ dev: p.dev, driver: p.driver, probed: p.probed, vfio: p.vfio });
    }
    return done;
  }

  /** Devices probed and not removed. */
  probed(): ProbedPciDevice[] {
    return [...this.probedDevs.values()].map((p) => ({ dev: p.dev, driver: p.driver, probed: p.probed, vfio: p.vfio }));
  }

  /** Remove one probed device: the driver's remove (or close), then its VFIO device. */
  async remove(addr: string): Promise<void> {
    const p = this.probedDevs.get(addr);
    if (!p) throw new Error(`PCI bus: ${addr} is not probed (probed: ${[...this.probedDevs.keys()].join(', ') || 'none'})`);
    this.probedDevs.delete(addr);
    try {
      if (p.driver.remove) await p.driver.remove(p.probed, p.ctx);
      else await p.probed.close();
    } finally {
      p.vfio.close();
    }
    log('info', 'pci', `${addr}: removed from ${p.driver.name}`);
  }

  /** Remove every probed device, close handed-over devices, then the VFIO layer. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    let first: unknown = null;
    for (const addr of [...this.probedDevs.keys()].reverse()) {
      try { await this.remove(addr); } catch (e) { first ??= e; }
    }
    for (const h of this.handed.values()) {
      try { h.vfio.close(); } catch (e) { first ??= e; }
    }
    this.handed.clear();
    try { this.vfio.close(); } catch (e) { first ??= e; }
    if (first) throw first;
  }

  private statusOf(dev: PciDevice): PciDeviceStatus {
    const target = { name: dev.addr, sysfsDir: dev.sysfsDir, iommuGroup: dev.iommuGroup };
    const driver = findPciDriver(dev.id);
    const bound = dev.bus === 'mdev' || dev.bus === 'vfio-user' || dev.kernelDriver === VFIO_PCI_DRIVER;
    let vfioMode: VfioMode | null = null, modeReason: string;
    if (dev.bus === 'vfio-user') {
      modeReason = 'a vfio-user server (socket), no kernel VFIO';
    } else if (bound) {
      const c = this.vfio.choose(target);
      vfioMode = c.mode;
      modeReason = c.reason;
    } else {
      modeReason = dev.kernelDriver ? `bound to ${dev.kernelDriver}` : 'not bound to a driver';
    }
    let skip = this.filter.skipReason(dev.addr);
    if (skip === null && !bound) {
      skip = dev.kernelDriver
        ? `bound to ${dev.kernelDriver}; ${bindHint(dev.addr, dev.kernelDriver, this.config.sysfsRoot)}`
        : `not bound to a driver; ${bindHint(dev.addr, null, this.config.sysfsRoot)}`;
    }
    if (skip === null && vfioMode === null && !this.handed.has(dev.addr)) skip = modeReason;
    if (skip === null && driver === null) skip = `no tspmd driver for ${formatId(dev.id)} (class 0x${dev.id.classCode.toString(16).padStart(6, '0')})`;
    return { dev, driver, vfioMode, modeReason, skipReason: skip };
  }
}

/** Scan and probe the PCI bus for an EAL; the bus is closed when the EAL closes. */
export async function probePci(eal: Eal): Promise<PciBus> {
  const bus = new PciBus(pciBusConfig(eal));
  eal.onClose(() => bus.close());
  await bus.probe(eal);
  return bus;
}
