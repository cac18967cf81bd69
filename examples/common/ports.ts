/**
 * Finding an application's ports: every --vdev, then the device buses (PCI functions bound to
 * vfio-pci, vfio-pci mdevs, `-a vfio-user:SOCKET` servers) whose drivers are ports, e.g. net_virtio.
 */
import type { Eal } from '../../src/eal.js';
import { listPorts, type EthDev } from '../../lib/ethdev/ethdev.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { probeDeviceBuses } from '../../drivers/bus/probe.js';

/** How probePorts looks for devices. */
export interface ProbePortsOptions {
  /**
   * Scan the PCI bus even without -a (every vfio-pci device with a driver). By default the device
   * buses are probed only when -a names devices, so an app run on --vdev ports alone never touches
   * the machine's PCI devices or VFIO.
   */
  scanPci?: boolean;
}

/** Probe --vdev ports, then (with -a, or scanPci) the device buses; returns every open port by id. */
export async function probePorts(eal: Eal, opts: ProbePortsOptions = {}): Promise<EthDev[]> {
  await probeVdevs(eal);
  // --no-pci still probes -a vfio-user:SOCKET devices: the bus then skips only the sysfs scan
  if (eal.options.allow.length > 0 || opts.scanPci === true) await probeDeviceBuses(eal);
  return listPorts();
}
