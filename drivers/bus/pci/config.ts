/**
 * PCI config space through a VFIO device, for every driver on the PCI bus: the header's register
 * offsets and command bits (linux/pci_regs.h names, checked against the kernel headers by
 * test/pci/uapi.test.ts), reads and writes through the config region, the capability list, the
 * command register (memory decoding, bus mastering) and the ids of devices sysfs does not describe
 * (vfio-pci mdevs, vfio-user devices) for driver matching.
 */
import * as U from '../../../src/iommu/vfio-uapi.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import type { PciId } from './scan.js';

/** The command register (u16) and its bits: memory space decoding, bus mastering (DMA), INTx off. */
export const PCI_COMMAND = 0x04, PCI_COMMAND_MEMORY = 0x2, PCI_COMMAND_MASTER = 0x4, PCI_COMMAND_INTX_DISABLE = 0x400;
/** The status register (u16); bit 4 says a capability list exists. */
export const PCI_STATUS = 0x06, PCI_STATUS_CAP_LIST = 0x10;
/** The byte holding the first capability's offset. */
export const PCI_CAPABILITY_LIST = 0x34;
/** A capability's id and next-pointer bytes, from its start. */
export const PCI_CAP_LIST_ID = 0, PCI_CAP_LIST_NEXT = 1;

/** The config-space names above by their C names (test/pci/uapi.test.ts compares them with linux/pci_regs.h). */
export const PCI_CONFIG_CONSTANTS: Readonly<Record<string, number>> = {
  PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER, PCI_COMMAND_INTX_DISABLE,
  PCI_STATUS, PCI_STATUS_CAP_LIST, PCI_CAPABILITY_LIST, PCI_CAP_LIST_ID, PCI_CAP_LIST_NEXT,
};

/** The first len bytes of config space (at most the region's size; 256 covers the standard header and capabilities). */
export function readConfigSpace(dev: VfioDevice, len = 256): Uint8Array {
  const cfg = new Uint8Array(Math.min(len, dev.regionInfo(U.VFIO_PCI_CONFIG_REGION_INDEX).size));
  dev.readRegion(U.VFIO_PCI_CONFIG_REGION_INDEX, 0, cfg);
  return cfg;
}

/** The little-endian u16 at off in config space. */
export function readConfig16(dev: VfioDevice, off: number): number {
  const b = new Uint8Array(2);
  dev.readRegion(U.VFIO_PCI_CONFIG_REGION_INDEX, off, b);
  return b[0] | (b[1] << 8);
}

/** Write the little-endian u16 v at off in config space. */
export function writeConfig16(dev: VfioDevice, off: number, v: number): void {
  dev.writeRegion(U.VFIO_PCI_CONFIG_REGION_INDEX, off, Uint8Array.of(v & 0xff, (v >> 8) & 0xff));
}

/**
 * Set and clear bits of the command register (read, modify, write through the config region) and
 * return it as read back: VFIO virtualizes some bits, so the caller checks what stuck.
 */
export function updatePciCommand(dev: VfioDevice, set: number, clear = 0): number {
  writeConfig16(dev, PCI_COMMAND, (readConfig16(dev, PCI_COMMAND) | set) & ~clear);
  return readConfig16(dev, PCI_COMMAND);
}

/**
 * Turn on memory decoding and bus mastering (plus extra command bits, e.g. PCI_COMMAND_INTX_DISABLE)
 * before the device may DMA: a function without bus mastering cannot reach its rings. Throws
 * naming the device when the bits do not stick.
 */
export function enableBusMaster(dev: VfioDevice, extra = 0): void {
  const want = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | extra;
  const got = updatePciCommand(dev, want);
  if ((got & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)) !== (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)) {
    throw new Error(`${dev.name}: the PCI command register reads 0x${got.toString(16)} after memory decoding and bus mastering were set (0x${want.toString(16)}); the device cannot DMA`);
  }
}

/** Turn bus mastering off (at close): the device can no longer DMA into memory that is about to be freed. */
export function disableBusMaster(dev: VfioDevice): void {
  updatePciCommand(dev, 0, PCI_COMMAND_MASTER);
}

/** One capability in config space: its id and where it starts. */
export interface PciCapability {
  id: number;
  at: number;
}

/**
 * The capability list of a config-space image, in list order. Empty when the status register says
 * there is none; throws naming the device (what) on a pointer outside the image or a loop.
 */
export function pciCapabilities(cfg: Uint8Array, what: string): PciCapability[] {
  if (cfg.length < 0x40) throw new Error(`${what}: config space image of ${cfg.length} bytes is too short (needs the 64-byte header)`);
  const out: PciCapability[] = [];
  if (((cfg[PCI_STATUS] | (cfg[PCI_STATUS + 1] << 8)) & PCI_STATUS_CAP_LIST) === 0) return out;
  const seen = new Set<number>();
  for (let p = cfg[PCI_CAPABILITY_LIST] & 0xfc; p !== 0; p = cfg[p + PCI_CAP_LIST_NEXT] & 0xfc) {
    if (p < 0x40 || p + 2 > cfg.length) throw new Error(`${what}: capability pointer 0x${p.toString(16)} is outside config space (0x40..0x${(cfg.length - 1).toString(16)})`);
    if (seen.has(p)) throw new Error(`${what}: the capability list loops back to 0x${p.toString(16)}`);
    seen.add(p);
    out.push({ id: cfg[p + PCI_CAP_LIST_ID], at: p });
  }
  return out;
}

/** The ids in a PCI config-space header (the first 64 bytes). */
export function parseConfigIds(cfg: Uint8Array, what: string): { id: PciId; revision: number } {
  if (cfg.byteLength < 0x30) throw new Error(`${what}: config space read returned ${cfg.byteLength} bytes, 48 needed`);
  const dv = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  const vendor = dv.getUint16(U.PCI_VENDOR_ID, true);
  if (vendor === 0xffff || vendor === 0) throw new Error(`${what}: config space reads vendor 0x${vendor.toString(16)}: no device answers`);
  const classRev = dv.getUint32(U.PCI_CLASS_REVISION, true);
  return {
    id: {
      vendor, device: dv.getUint16(U.PCI_DEVICE_ID, true),
      subVendor: dv.getUint16(U.PCI_SUBSYSTEM_VENDOR_ID, true), subDevice: dv.getUint16(U.PCI_SUBSYSTEM_ID, true),
      classCode: classRev >>> 8,
    },
    revision: classRev & 0xff,
  };
}

/** Read the ids of a vfio-pci device from its config-space region, through the VFIO device interface. */
export function readPciIdsThroughVfio(dev: VfioDevice): { id: PciId; revision: number } {
  const cfg = new Uint8Array(64);
  dev.readRegion(U.VFIO_PCI_CONFIG_REGION_INDEX, 0, cfg);
  return parseConfigIds(cfg, `${dev.name} config space`);
}
