/**
 * Probing every device bus for an application: vfio-pci mdevs and vfio-user devices are handed to
 * the PCI bus, then the PCI bus matches drivers and probes. The bus closes with the EAL.
 */
import type { Eal } from '../../src/eal.js';
import { PciBus, pciBusConfig } from './pci/pci.js';
import { handOverMdevs, type MdevStatus } from './mdev/mdev.js';
import { handOverVfioUser, type VfioUserStatus } from './vfio-user/vfio-user.js';

/** Scan and probe the PCI bus with mdevs and vfio-user devices handed over to it. */
export async function probeDeviceBuses(eal: Eal): Promise<{ bus: PciBus; mdevs: MdevStatus[]; vfioUser: VfioUserStatus[] }> {
  const bus = new PciBus(pciBusConfig(eal));
  eal.onClose(() => bus.close());
  const mdevs = handOverMdevs(bus);
  const vfioUser = handOverVfioUser(bus);
  await bus.probe(eal);
  return { bus, mdevs, vfioUser };
}
