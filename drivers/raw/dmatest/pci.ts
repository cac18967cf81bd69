/**
 * The dmatest driver on the PCI bus: a device with dmatest's ids (over vfio-user: `-a
 * vfio-user:SOCKET`; the driver itself is transport-neutral) is probed into a DmatestDriver whose
 * descriptor ring lives in an EAL memzone. `-a ...,entries=N` sets the ring size.
 */
import { registerPciDriver, type PciProbed } from '../../bus/pci/pci.js';
import { DmatestDriver } from './dmatest.js';
import { DMATEST_VENDOR, DMATEST_DEVICE, DESC_SIZE } from '../../../lib/dmatest/regs.js';

/** What the bus keeps for a probed dmatest device. */
export interface ProbedDmatest extends PciProbed {
  driver: DmatestDriver;
}

let ringSeq = 0;

registerPciDriver<ProbedDmatest>({
  name: 'dmatest',
  description: 'the dmatest copy/checksum engine (tspmd emu dmatest)',
  idTable: [{ vendor: DMATEST_VENDOR, device: DMATEST_DEVICE }],
  probe: (ctx) => {
    if (!ctx.eal) throw new Error('dmatest needs EAL memory for its descriptor ring (probe with an EAL)');
    const entries = ctx.args.entries === undefined ? 64 : Number(ctx.args.entries);
    const memory = ctx.eal.memory;
    const zone = memory.reserve(`dmatest_ring${ringSeq++}`, Math.max(entries, 1) * DESC_SIZE, 4096, true);
    try {
      const driver = DmatestDriver.open(ctx.vfio, { va: zone.va, iova: zone.iova, len: zone.len }, { entries });
      return { driver, close: () => { try { driver.close(); } finally { memory.free(zone.name); } } };
    } catch (e) {
      memory.free(zone.name);
      throw e;
    }
  },
});
