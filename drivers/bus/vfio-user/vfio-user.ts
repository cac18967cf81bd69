/**
 * vfio-user devices on the PCI bus: each `-a vfio-user:SOCKET` names a vfio-user server (a device
 * emulated in another process, e.g. `tspmd emu`). The client connects, registers the EAL's memory
 * with the server (DMA_MAP by fd), reads the PCI ids from the config-space region, and hands the
 * device to the PCI bus, which matches and probes it like any PCI function: a driver sees the same
 * VfioDevice interface as over kernel VFIO.
 */
import { log } from '../../../src/log.js';
import { VfioUserClient } from '../../../lib/vfio-user/client.js';
import { VFIO_USER_PREFIX } from '../pci/address.js';
import { readPciIdsThroughVfio } from '../pci/config.js';
import type { PciBus } from '../pci/pci.js';
import type { PciDevice } from '../pci/scan.js';

/** What happened to one -a vfio-user:SOCKET entry. */
export interface VfioUserStatus {
  addr: string;
  /** the device handed to the PCI bus, or null */
  pci: PciDevice | null;
  /** why it was not handed over, or null */
  skipReason: string | null;
}

/** Connect every -a vfio-user:SOCKET device and hand it to the PCI bus. */
export function handOverVfioUser(bus: PciBus): VfioUserStatus[] {
  const out: VfioUserStatus[] = [];
  for (const addr of bus.filter.allow.keys()) {
    if (!addr.startsWith(VFIO_USER_PREFIX)) continue;
    const st: VfioUserStatus = { addr, pci: null, skipReason: null };
    out.push(st);
    let client: VfioUserClient | null = null;
    try {
      client = VfioUserClient.connect(addr.slice(VFIO_USER_PREFIX.length), { name: addr });
      if (bus.config.memory) client.attachMemory(bus.config.memory);
      const ids = readPciIdsThroughVfio(client);
      st.pci = {
        bus: 'vfio-user', addr, id: ids.id, revision: ids.revision, numaNode: -1,
        iommuGroup: null, kernelDriver: null, resources: [], sysfsDir: '',
      };
      bus.handOver(st.pci, client);
      log('info', 'vfio-user', `${addr}: ${ids.id.vendor.toString(16)}:${ids.id.device.toString(16)} handed to the PCI bus`);
    } catch (e) {
      client?.close();
      st.pci = null;
      st.skipReason = (e as Error).message;
    }
  }
  return out;
}
