/**
 * The PCI bus's config-space helpers on a fake VFIO device (a memfd as the device fd, so reads and
 * writes of the config region are real pread/pwrite): the command register, bus mastering on and
 * off (and the error when it does not stick), 16-bit access, and the capability list walk.
 */
import t from 'tap';
import * as U from '../../src/iommu/vfio-uapi.js';
import type { VfioDevice } from '../../src/iommu/device.js';
import {
  enableBusMaster, disableBusMaster, pciCapabilities, readConfig16, readConfigSpace, updatePciCommand, writeConfig16,
  PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_STATUS, PCI_STATUS_CAP_LIST, PCI_CAPABILITY_LIST,
} from '../../drivers/bus/pci/config.js';
import { MemfdVfioDevice, RW } from './fake-vfio.js';
import { configSpace } from './fixture.js';

/** A fake device with a 256-byte config space holding cfg. */
function device(t: { teardown(fn: () => void): void }, cfg: Uint8Array): MemfdVfioDevice {
  const dev = new MemfdVfioDevice(`tspcfg${process.pid}`, [{ index: U.VFIO_PCI_CONFIG_REGION_INDEX, size: 256, flags: RW, data: cfg }]);
  t.teardown(() => dev.close());
  return dev;
}

/** Capabilities chained from 0x40 in order: [id, length] each. */
function withCaps(caps: Array<[number, number]>): Uint8Array {
  const c = configSpace({ vendor: 0x8086, device: 0x10c9, classCode: 0x020000 });
  c[PCI_STATUS] = PCI_STATUS_CAP_LIST;
  let at = 0x40;
  c[PCI_CAPABILITY_LIST] = caps.length ? at : 0;
  caps.forEach(([id, len], i) => {
    c[at] = id;
    c[at + 1] = i + 1 < caps.length ? at + len : 0;
    at += len;
  });
  return c;
}

t.test('command register: read-modify-write, bus mastering on (with extra bits) and off', async (t) => {
  const cfg = configSpace({ vendor: 0x8086, device: 0x10c9, classCode: 0x020000 });
  cfg[PCI_COMMAND] = 0x10; // a bit nobody here touches
  const dev = device(t, cfg);
  enableBusMaster(dev, PCI_COMMAND_INTX_DISABLE);
  t.equal(readConfig16(dev, PCI_COMMAND), 0x10 | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE, 'memory, master and INTx-disable set, the other bit kept');
  disableBusMaster(dev);
  t.equal(readConfig16(dev, PCI_COMMAND), 0x10 | PCI_COMMAND_MEMORY | PCI_COMMAND_INTX_DISABLE, 'bus mastering off, the rest kept');
  t.equal(updatePciCommand(dev, 0, 0x10), PCI_COMMAND_MEMORY | PCI_COMMAND_INTX_DISABLE, 'updatePciCommand returns the register as read back');
  writeConfig16(dev, 0x3c, 0xa5b6);
  t.same([...readConfigSpace(dev).subarray(0x3c, 0x3e)], [0xb6, 0xa5], 'writeConfig16 is little endian');
  t.equal(readConfigSpace(dev, 64).length, 64, 'readConfigSpace reads the length asked for');
});

t.test('enableBusMaster names the device when bus mastering does not stick', async (t) => {
  const dev = device(t, configSpace({ vendor: 0x8086, device: 0x10c9, classCode: 0x020000 }));
  // A device whose command register ignores writes (as a function that is gone would).
  const deaf = {
    name: dev.name,
    readRegion: (index: number, off: number, buf: Uint8Array) => dev.readRegion(index, off, buf),
    writeRegion: () => 2,
  } as Partial<VfioDevice> as VfioDevice;
  t.throws(() => enableBusMaster(deaf), new RegExp(`${dev.name}: the PCI command register reads 0x0 after memory decoding and bus mastering were set \\(0x6\\); the device cannot DMA`));
});

t.test('pciCapabilities: the list in order, none without the status bit, clear errors', async (t) => {
  t.same(pciCapabilities(withCaps([[0x01, 8], [0x11, 12], [0x09, 16]]), 'd'), [{ id: 1, at: 0x40 }, { id: 0x11, at: 0x48 }, { id: 9, at: 0x54 }]);
  const noList = withCaps([[0x01, 8]]);
  noList[PCI_STATUS] = 0;
  t.same(pciCapabilities(noList, 'd'), [], 'no capability list bit: none');
  const loop = withCaps([[0x01, 8], [0x05, 8]]);
  loop[0x49] = 0x40;
  t.throws(() => pciCapabilities(loop, 'dev0'), /dev0: the capability list loops back to 0x40/);
  const wild = withCaps([[0x01, 8]]);
  wild[0x41] = 0x20;
  t.throws(() => pciCapabilities(wild, 'dev0'), /dev0: capability pointer 0x20 is outside config space \(0x40\.\.0xff\)/);
  t.throws(() => pciCapabilities(new Uint8Array(16), 'dev0'), /dev0: config space image of 16 bytes is too short/);
});
