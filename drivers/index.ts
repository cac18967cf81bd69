/** The built-in drivers: importing this module registers them with their buses. */
import './net/null/null.js';
import './net/ring/ring.js';
import './net/af_packet/af_packet.js';
import './net/af_xdp/af_xdp.js';
import './net/af_xdp/af_xdp.js';
import './net/tap/tap.js';
import './net/pcap/pcap.js';
import './net/virtio_emu/virtio_emu.js';
import './net/virtio/virtio.js';
import './net/igb/igb.js';
import './raw/dmatest/pci.js';
import { vdevDrivers } from './bus/vdev/vdev.js';
import { pciDrivers } from './bus/pci/pci.js';

/** A registered driver as help texts and docs list it. */
export interface DriverListing {
  name: string;
  bus: 'vdev' | 'pci';
  description: string;
  /** its RX queues can give an Rx interrupt (on PCI: when the device has MSI-X) */
  rxInterrupt: boolean;
}

/** Every registered driver, vdev first, each bus in registration order: lists are made from this, not by hand. */
export function driverListing(): DriverListing[] {
  return [
    ...vdevDrivers().map((d) => ({ name: d.name, bus: 'vdev' as const, description: d.description, rxInterrupt: d.rxInterrupt === true })),
    ...pciDrivers().map((d) => ({ name: d.name, bus: 'pci' as const, description: d.description, rxInterrupt: d.rxInterrupt === true })),
  ];
}

/** The names of the drivers with Rx interrupts, as "a, b and c". */
export function rxInterruptDriverNames(): string {
  const n = driverListing().filter((d) => d.rxInterrupt).map((d) => d.name);
  return n.length < 2 ? n.join('') : `${n.slice(0, -1).join(', ')} and ${n[n.length - 1]}`;
}
