/**
 * FakeIgb: an Intel 82576 in this process, for net_igb tests that need the control half (probe,
 * start, stop) without a NIC. A VfioDevice whose BAR0 is shared memory (a memfd) that the driver
 * maps whole, so every register is plain memory; a register thread (fake-igb-regs.mjs, a worker)
 * answers the handshakes the driver polls for, once a millisecond: CTRL.RST clears, EERD reads
 * return the MAC's EEPROM words, MDIC accesses complete (PHY identifiers on read). STATUS reads
 * link up, 1000 Mb/s, full duplex. No interrupts, no function reset, iova = va. Where the driver
 * leaves BAR0 unmapped, its pread/pwrite reach the same registers: readRegion/writeRegion on the
 * main thread, and from other threads pread/pwrite on the memfd (workerIo, as kernel VFIO's device fd).
 *
 * The data side is the test's: it plays the NIC by hand through the descriptor rings it finds in
 * the queue registers (txDesc, rxDesc, txDone) and may write any DMA memory (dma), as a lying
 * device would.
 */
import { Worker } from 'node:worker_threads';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import type { BarIo, DeviceInfo, IrqInfo, MmapOptions, RegionInfo, VfioDevice } from '../../src/iommu/device.js';
import * as R from '../../drivers/net/igb/igb_regs.js';
import { DmaAccess, type DmaMemory } from './fake-virtio-net.js';

/** BAR0's size (the 82576's is 128 KiB). */
const BAR0_SIZE = 0x20000;
/** The PHY identifier FakeIgb reports (MDIC reads of PHY_ID1/PHY_ID2). */
export const FAKE_PHY_ID = 0x01410ca0;

/** An 82576 whose registers are memory and whose data side the test drives (see the file comment). */
export class FakeIgb implements VfioDevice {
  readonly name: string;
  readonly backend = 'fake-igb';
  /** DMA memory as the device reaches it */
  readonly dma: DmaAccess;
  /** BAR0 as the device sees it */
  readonly regs: Uint32Array;
  private readonly fd: number;
  private readonly va: bigint;
  private readonly cfg = new Uint8Array(256);
  private readonly ctl = new Int32Array(new SharedArrayBuffer(12));
  private worker: Worker | null = null;
  private closed = false;

  private constructor(name: string, memory: DmaMemory, readonly mac: readonly number[]) {
    this.name = name;
    this.dma = new DmaAccess(memory, this.backend);
    this.fd = os.memfdCreate(`tsp-fake-igb-bar0-${process.pid}`, 0);
    os.ftruncate(this.fd, BigInt(BAR0_SIZE));
    this.va = os.mmap(0n, BAR0_SIZE, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, this.fd, 0);
    this.regs = new Uint32Array(os.viewOf(this.va, BAR0_SIZE));
    this.regs[R.STATUS >> 2] = R.STATUS_LU | R.STATUS_FD | (2 << R.STATUS_SPEED_SHIFT);
    const dv = new DataView(this.cfg.buffer);
    dv.setUint16(0, 0x8086, true);
    dv.setUint16(2, 0x10c9, true);
    dv.setUint32(8, 0x02000001, true); // class: Ethernet controller, revision 1
  }

  /** A fake 82576 named name (unique per test) with MAC mac, its register thread running. */
  static async create(name: string, memory: DmaMemory, mac: readonly number[]): Promise<FakeIgb> {
    const dev = new FakeIgb(name, memory, mac);
    const eeprom = [mac[0] | mac[1] << 8, mac[2] | mac[3] << 8, mac[4] | mac[5] << 8];
    const phy = [0, 0x796d, FAKE_PHY_ID >>> 16, FAKE_PHY_ID & 0xffff];
    const regs = {
      CTRL: R.CTRL, CTRL_RST: R.CTRL_RST, EERD: R.EERD, EERD_START: R.EERD_START, EERD_DONE: R.EERD_DONE, EERD_ADDR_SHIFT: R.EERD_ADDR_SHIFT,
      EERD_DATA_SHIFT: R.EERD_DATA_SHIFT, MDIC: R.MDIC, MDIC_READY: R.MDIC_READY, MDIC_ERROR: R.MDIC_ERROR, MDIC_REG_SHIFT: R.MDIC_REG_SHIFT, MDIC_OP_READ: R.MDIC_OP_READ,
    };
    // no execArgv: the thread is plain JavaScript and needs no loader
    const w = new Worker(new URL('./fake-igb-regs.mjs', import.meta.url), { execArgv: [], workerData: { va: dev.va, len: BAR0_SIZE, ctl: dev.ctl.buffer, eeprom, phy, R: regs } });
    dev.worker = w;
    await new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    });
    return dev;
  }

  /** Handshakes the register thread has answered so far (resets, EEPROM and PHY accesses). */
  get handshakes(): number {
    return Atomics.load(this.ctl, 1);
  }

  /** The 32-bit register at off. */
  reg(off: number): number {
    return Atomics.load(this.regs, off >> 2);
  }

  /** The IOVA of TX ring q (TDBAL/TDBAH). */
  private txRing(q: number): number {
    return this.reg(R.tdbal(q)) + this.reg(R.tdbah(q)) * 2 ** 32;
  }

  /** TX descriptor i of queue q as the driver wrote it: buffer address, cmd_type_len, olinfo_status. */
  txDesc(q: number, i: number): { addr: number; cmd: number; olinfo: number } {
    const a = this.txRing(q) + i * R.DESC_BYTES;
    return { addr: this.dma.u32(a) + this.dma.u32(a + 4) * 2 ** 32, cmd: this.dma.u32(a + 8), olinfo: this.dma.u32(a + 12) };
  }

  /** Write TX descriptor i of queue q back as done (DD), as the NIC does once it has sent it. */
  txDone(q: number, i: number): void {
    const a = this.txRing(q) + i * R.DESC_BYTES + 12;
    this.dma.setU32(a, this.dma.u32(a) | R.TXD_STAT_DD);
  }

  /** RX descriptor i of queue q as the driver posted it: the packet buffer's address. */
  rxDesc(q: number, i: number): { addr: number } {
    const a = this.reg(R.rdbal(q)) + this.reg(R.rdbah(q)) * 2 ** 32 + i * R.DESC_BYTES;
    return { addr: this.dma.u32(a) + this.dma.u32(a + 4) * 2 ** 32 };
  }

  /** A PCI device with 9 regions and 5 IRQ indexes, no reset. */
  info(): DeviceInfo {
    return { flags: U.VFIO_DEVICE_FLAGS_PCI, numRegions: 9, numIrqs: 5, isPci: true, canReset: false };
  }

  /** Config space (256 bytes) and BAR0 (mappable whole); other regions empty. */
  regionInfo(index: number): RegionInfo {
    const base = { index, flags: 0, offset: 0n, sparse: null, type: null, msixMappable: false, capIds: [] };
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) return { ...base, size: 256, readable: true, writable: true, mappable: false };
    if (index === U.VFIO_PCI_BAR0_REGION_INDEX) return { ...base, size: BAR0_SIZE, readable: true, writable: true, mappable: true };
    return { ...base, size: 0, readable: false, writable: false, mappable: false };
  }

  /** Map BAR0 (the registers' memfd). */
  mmapRegion(index: number, off: number, len: number, opts: MmapOptions = {}): bigint {
    if (index !== U.VFIO_PCI_BAR0_REGION_INDEX || off < 0 || off + len > BAR0_SIZE) throw new Error(`${this.backend} device: mmap of region ${index} [${off}, +${len}) is not allowed`);
    return os.mmap(opts.fixedAt ?? 0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED | (opts.fixedAt !== undefined ? os.MAP_FIXED : 0), this.fd, off);
  }

  /** BAR0's unmapped parts from any thread: pread/pwrite on its memfd at the register's offset (kernel VFIO's path). */
  workerIo(index: number): BarIo | null {
    return index === U.VFIO_PCI_BAR0_REGION_INDEX ? { kind: 'file', fd: this.fd, offset: 0n, readable: true, writable: true } : null;
  }

  /** Config space reads; BAR0 from its memory (where the driver does not map it). */
  readRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) buf.set(this.cfg.subarray(off, off + len));
    else buf.set(new Uint8Array(this.regs.buffer, off, len));
    return len;
  }

  /** Config space writes (the command register); BAR0 into its memory. */
  writeRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) this.cfg.set(buf.subarray(0, len), off);
    else new Uint8Array(this.regs.buffer, off, len).set(buf.subarray(0, len));
    return len;
  }

  /** No vectors on any index. */
  irqInfo(index: number): IrqInfo {
    return { index, flags: 0, count: 0, eventfd: false, maskable: false, automasked: false, noresize: false };
  }
  /** Interrupts are not emulated. */
  setIrqs(): void { throw new Error(`${this.backend} device: no interrupts`); }
  /** Nothing to disable. */
  disableIrqs(): void {}
  /** Nothing to unmask. */
  unmaskIrq(): void {}
  /** No function-level reset (CTRL.RST resets). */
  reset(): void {}
  /** iova = va: nothing to map. */
  dmaMap(): void {}
  /** iova = va: nothing to unmap. */
  dmaUnmap(): void {}

  /** Stop the register thread (waiting until it has left BAR0), then unmap BAR0 and close its memfd. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const w = this.worker;
    this.worker = null;
    if (w) {
      const gone = new Promise<void>((resolve) => w.once('exit', () => resolve()));
      Atomics.store(this.ctl, 0, 1);
      await gone;
    }
    os.munmap(this.va, BAR0_SIZE);
    os.close(this.fd);
  }
}
