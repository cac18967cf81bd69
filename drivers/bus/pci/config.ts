/**
 * PCI ids from config space, read through a VFIO device: how devices that sysfs does not describe
 * (vfio-pci mdevs, vfio-user devices) get their vendor/device/class for driver matching.
 */
import * as U from '../../../src/iommu/vfio-uapi.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import type { PciId } from './scan.js';

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

