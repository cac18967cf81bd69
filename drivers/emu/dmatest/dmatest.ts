/**
 * dmatest: a small emulated DMA device on emudev, to prove the vfio-user path end to end.
 *
 * The driver puts descriptors in a ring in its DMA memory and writes the producer index to the
 * doorbell (a word in BAR0's shared page, mmapped by the driver). The device polls the doorbell
 * (it is not trapped), copies each descriptor's source to its destination, computes the source's
 * Adler-32, writes checksum and status back into the descriptor by DMA, advances the consumer
 * index, and raises MSI-X vector 0 through the client's eventfd.
 *
 * The poll loop runs on the server's event loop while the engine is enabled: back to back while
 * there is work, then backing off to a 5 ms timer when idle, and not at all when disabled; so an
 * idle device costs nothing and never competes with forwarding lcores. Client memory mapped by fd
 * is used in place (translate); memory mapped without fd goes through DMA_READ/WRITE messages.
 */
import * as U from '../../../src/iommu/vfio-uapi.js';
import { EmuDevice } from '../../../lib/emudev/emudev.js';
import { log } from '../../../src/log.js';
import * as R from './regs.js';

/** The dmatest device: an EmuDevice plus its engine. */
export class DmatestDevice {
  readonly emu: EmuDevice;
  private ctrl = 0;
  private status = 0;
  private ringLo = 0;
  private ringHi = 0;
  private entries = 0;
  private completed = 0;
  private errors = 0;
  private consumer = 0;
  private timer: NodeJS.Timeout | NodeJS.Immediate | null = null;
  private busy = false;
  private idle = 0;
  private shared32: Uint32Array;

  /** Create the device (BAR memory, config space). */
  constructor(name = 'dmatest') {
    this.emu = new EmuDevice({
      name,
      pci: { vendorId: R.DMATEST_VENDOR, deviceId: R.DMATEST_DEVICE, classCode: 0xff0000, revision: 1, subsystemVendorId: R.DMATEST_VENDOR, subsystemId: 1 },
      bars: [
        { index: 0, size: R.BAR0_SIZE, shared: [{ offset: R.SHARED_PAGE, size: 0x1000 }], read: (off, buf) => this.readRegs(off, buf), write: (off, data) => this.writeRegs(off, data) },
        { index: 2, size: R.BAR2_SIZE, shared: [{ offset: 0, size: R.BAR2_SIZE }] },
      ],
      irqs: [{ index: U.VFIO_PCI_INTX_IRQ_INDEX, count: 0 }, { index: U.VFIO_PCI_MSIX_IRQ_INDEX, count: 1 }],
      onReset: () => this.resetState(),
    });
    const mem = this.emu.barMemory(0);
    this.shared32 = new Uint32Array(mem.buffer, mem.byteOffset, mem.byteLength >> 2);
    this.emu.events.on('region-write', (index: number, off: number) => {
      if (index === 0 && off <= R.REG_DOORBELL && off + 4 > R.REG_DOORBELL) this.kick(); // doorbell via REGION_WRITE
    });
    this.emu.events.on('disconnect', () => this.stopEngine());
  }

  /** Descriptors completed since the last reset. */
  get completedCount(): number {
    return this.completed;
  }

  /** Stop the engine and release the device. */
  close(): void {
    this.stopEngine();
    this.emu.close();
  }

  private resetState(): void {
    this.stopEngine();
    this.ctrl = this.status = this.ringLo = this.ringHi = this.entries = this.completed = this.errors = this.consumer = 0;
    this.emu.barMemory(0).fill(0, R.SHARED_PAGE, R.SHARED_PAGE + 0x1000);
  }

  private readRegs(off: number, buf: Uint8Array): void {
    // registers are 32-bit; any access inside page 0 reads the containing words
    for (let i = 0; i < buf.byteLength; i++) {
      const a = off + i;
      const word = this.reg(a & ~3);
      buf[i] = (word >>> (8 * (a & 3))) & 0xff;
    }
  }

  private reg(off: number): number {
    switch (off) {
      case R.REG_ID: return R.DMATEST_ID;
      case R.REG_VERSION: return R.DMATEST_VERSION;
      case R.REG_CTRL: return this.ctrl;
      case R.REG_STATUS: return this.status;
      case R.REG_RING_LO: return this.ringLo;
      case R.REG_RING_HI: return this.ringHi;
      case R.REG_RING_ENTRIES: return this.entries;
      case R.REG_COMPLETED: return this.completed >>> 0;
      case R.REG_ERRORS: return this.errors >>> 0;
      default: return 0;
    }
  }

  private writeRegs(off: number, data: Uint8Array): void {
    if (off % 4 !== 0 || data.byteLength !== 4) return; // registers take aligned 32-bit writes only
    const v = (data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24)) >>> 0;
    switch (off) {
      case R.REG_CTRL: {
        this.ctrl = v & R.CTRL_ENABLE;
        if (this.ctrl & R.CTRL_ENABLE) this.startEngine();
        else this.stopEngine();
        break;
      }
      case R.REG_RING_LO: this.ringLo = v; break;
      case R.REG_RING_HI: this.ringHi = v; break;
      case R.REG_RING_ENTRIES: this.entries = v >= 1 && v <= 4096 && (v & (v - 1)) === 0 ? v : 0; break;
      default: break;
    }
  }

  private startEngine(): void {
    if (this.entries === 0) { this.status = R.STATUS_ERROR; this.ctrl = 0; return; }
    this.consumer = Atomics.load(this.shared32, (R.REG_CONSUMER) >> 2);
    this.status = R.STATUS_RUNNING;
    this.idle = 0;
    this.kick();
  }

  private stopEngine(): void {
    this.status &= ~R.STATUS_RUNNING;
    if (this.timer) { clearTimeout(this.timer as NodeJS.Timeout); clearImmediate(this.timer as NodeJS.Immediate); this.timer = null; }
  }

  /** Schedule a poll now. */
  private kick(): void {
    if (!(this.status & R.STATUS_RUNNING) || this.busy) return;
    this.idle = 0;
    if (this.timer) { clearTimeout(this.timer as NodeJS.Timeout); clearImmediate(this.timer as NodeJS.Immediate); }
    this.timer = setImmediate(() => void this.poll());
  }

  private schedule(): void {
    if (!(this.status & R.STATUS_RUNNING)) { this.timer = null; return; }
    this.idle++;
    this.timer = this.idle < 64 ? setImmediate(() => void this.poll()) : setTimeout(() => void this.poll(), Math.min(5, this.idle >> 6));
  }

  /** One poll: process every descriptor between the consumer index and the doorbell. */
  private async poll(): Promise<void> {
    this.timer = null;
    if (!(this.status & R.STATUS_RUNNING) || this.busy) return;
    this.busy = true;
    let done = 0;
    try {
      const ring = (BigInt(this.ringHi) << 32n) | BigInt(this.ringLo);
      while (this.status & R.STATUS_RUNNING) {
        const producer = Atomics.load(this.shared32, R.REG_DOORBELL >> 2);
        if (producer === this.consumer) break;
        const slot = this.consumer & (this.entries - 1);
        const ok = await this.process(ring + BigInt(slot * R.DESC_SIZE));
        if (!ok) break;
        this.consumer = (this.consumer + 1) >>> 0;
        Atomics.store(this.shared32, R.REG_CONSUMER >> 2, this.consumer);
        done++;
        if (done % 64 === 0) this.raise();
      }
    } finally {
      this.busy = false;
    }
    if (done > 0) { this.raise(); this.idle = 0; }
    this.schedule();
  }

  private raise(): void {
    if (this.emu.irqAssigned(U.VFIO_PCI_MSIX_IRQ_INDEX, 0)) this.emu.triggerIrq(U.VFIO_PCI_MSIX_IRQ_INDEX, 0);
  }

  /** Execute one descriptor; false when the ring itself is unreachable (engine stops with STATUS_ERROR). */
  private async process(descIova: bigint): Promise<boolean> {
    let desc: Uint8Array;
    try {
      desc = await this.emu.dmaRead(descIova, R.DESC_SIZE);
    } catch (e) {
      log('warn', 'dmatest', `${this.emu.name}: descriptor at 0x${descIova.toString(16)} unreadable: ${(e as Error).message}`);
      this.status = R.STATUS_ERROR;
      return false;
    }
    const dv = new DataView(desc.buffer, desc.byteOffset, desc.byteLength);
    const src = dv.getBigUint64(R.DESC_SRC, true), dst = dv.getBigUint64(R.DESC_DST, true), len = dv.getUint32(R.DESC_LEN, true);
    const wb = new Uint8Array(8);
    const wdv = new DataView(wb.buffer);
    try {
      if (len === 0 || len > R.DESC_MAX_LEN) throw new Error(`length ${len} must be 1..${R.DESC_MAX_LEN}`);
      let sum: number;
      const s = this.emu.translate(src, len, false), d = this.emu.translate(dst, len, true);
      if (s && d) {
        d.set(s);
        sum = R.adler32(s);
      } else {
        const data = await this.emu.dmaRead(src, len);
        await this.emu.dmaWrite(dst, data);
        sum = R.adler32(data);
      }
      wdv.setUint32(0, sum, true);
      wdv.setUint32(4, R.DESC_STATUS_DONE, true);
      this.completed++;
    } catch (e) {
      log('debug', 'dmatest', `${this.emu.name}: descriptor at 0x${descIova.toString(16)} failed: ${(e as Error).message}`);
      wdv.setUint32(4, R.DESC_STATUS_ERROR, true);
      this.errors++;
    }
    try {
      await this.emu.dmaWrite(descIova + BigInt(R.DESC_CHECKSUM), wb);
    } catch {
      this.status = R.STATUS_ERROR;
      return false;
    }
    return true;
  }
}
