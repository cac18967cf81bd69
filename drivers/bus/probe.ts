/**
 * Probing for an application: every --vdev, then the device buses. vfio-pci mdevs and vfio-user
 * devices are handed to the PCI bus, which matches drivers and probes; mdevs of other device_apis
 * are probed by the mdev driver registered for theirs. The buses close with the EAL.
 */
import type { Eal } from '../../src/eal.js';
import { listPorts, type EthDev } from '../../lib/ethdev/ethdev.js';
import { probeVdevs } from './vdev/vdev.js';
import { PciBus, pciBusConfig } from './pci/pci.js';
import { closeMdevs, handOverMdevs, probeMdevs, type MdevStatus } from './mdev/mdev.js';
import { handOverVfioUser, type VfioUserStatus } from './vfio-user/vfio-user.js';

/** Scan and probe the PCI bus with mdevs and vfio-user devices handed over to it, and the mdevs other mdev drivers take. */
export async function probeDeviceBuses(eal: Eal): Promise<{ bus: PciBus; mdevs: MdevStatus[]; vfioUser: VfioUserStatus[] }> {
  const bus = new PciBus(pciBusConfig(eal));
  eal.onClose(() => bus.close());
  const mdevs = handOverMdevs(bus);
  eal.onClose(() => closeMdevs(mdevs));
  const vfioUser = handOverVfioUser(bus);
  await probeMdevs(bus, mdevs, eal);
  await bus.probe(eal);
  return { bus, mdevs, vfioUser };
}

/** How probePorts looks for devices. */
export interface ProbePortsOptions {
  /**
   * Scan the PCI bus even without -a (every vfio-pci device with a driver). By default the device
   * buses are probed only when -a names devices, so an app run on --vdev ports alone never touches
   * the machine's PCI devices or VFIO.
   */
  scanPci?: boolean;
}

/** Probe --vdev ports, then (with -a, or scanPci) the device buses; returns every open port by id (rte_eal_init's probe step). */
export async function probePorts(eal: Eal, opts: ProbePortsOptions = {}): Promise<EthDev[]> {
  await probeVdevs(eal);
  // --no-pci still probes -a vfio-user:SOCKET devices: the bus then skips only the sysfs scan
  if (eal.options.allow.length > 0 || opts.scanPci === true) await probeDeviceBuses(eal);
  return listPorts();
}
