/**
 * The client-side driver of the dmatest device, on the transport-neutral VfioDevice interface
 * (a vfio-user client here; a kernel VFIO device would do as well). BAR0 is opened with Bar, so the
 * doorbell is a plain store into the mmapped sparse area (or REGION_WRITE with { mmap: false });
 * descriptors live in a ring in DMA memory; completions are signalled through an MSI-X eventfd.
 */
import * as os from '../../../src/os/libc.js';
import * as U from '../../../src/iommu/vfio-uapi.js';
import { Bar } from '../../../src/iommu/bar.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import * as R from '../../../lib/dmatest/regs.js';
import { enableBusMaster, readPciIdsThroughVfio } from '../../bus/pci/config.js';

/** DMA memory the driver's ring lives in: its address here and its IOVA for the device. */
export interface DmaBuffer {
  va: bigint;
  iova: bigint;
  len: number;
}

/** Driver options. */
export interface DmatestOptions {
  /** ring entries (a power of two), default 64 */
  entries?: number;
  /** false: every register access, doorbell included, goes through REGION_READ/WRITE */
  mmap?: boolean;
}

/** One finished descriptor. */
export interface Completion {
  slot: number;
  status: number;
  checksum: number;
}

/** A bound dmatest device. */
export class DmatestDriver {
  readonly dev: VfioDevice;
  readonly bar: Bar;
  readonly entries: number;
  /** the MSI-X eventfd */
  readonly irqFd: number;
  private readonly ring: Uint8Array;
  private readonly ringDv: DataView;
  private producer = 0;
  private reaped = 0;
  private closed = false;

  private constructor(dev: VfioDevice, bar: Bar, ring: DmaBuffer, entries: number, irqFd: number) {
    this.dev = dev;
    this.bar = bar;
    this.entries = entries;
    this.irqFd = irqFd;
    const ab = os.viewOf(ring.va, entries * R.DESC_SIZE);
    this.ring = new Uint8Array(ab);
    this.ringDv = new DataView(ab);
  }

  /** Probe and start: check the ids, program the ring, assign the MSI-X eventfd, enable the engine. */
  static open(dev: VfioDevice, ring: DmaBuffer, opts: DmatestOptions = {}): DmatestDriver {
    const entries = opts.entries ?? 64;
    if (entries < 1 || entries > 4096 || (entries & (entries - 1)) !== 0) throw new RangeError(`dmatest: ring entries ${entries} must be a power of two from 1 to 4096`);
    if (ring.len < entries * R.DESC_SIZE) throw new RangeError(`dmatest: the ring buffer holds ${ring.len} bytes; ${entries} entries need ${entries * R.DESC_SIZE}`);
    const { vendor, device } = readPciIdsThroughVfio(dev).id;
    if (vendor !== R.DMATEST_VENDOR || device !== R.DMATEST_DEVICE) {
      throw new Error(`${dev.name}: PCI id ${vendor.toString(16)}:${device.toString(16)} is not a dmatest device (${R.DMATEST_VENDOR.toString(16)}:${R.DMATEST_DEVICE.toString(16)})`);
    }
    enableBusMaster(dev); // the engine reads descriptors and copies buffers by DMA
    const bar = Bar.open(dev, 0, { mmap: opts.mmap });
    let efd = -1;
    try {
      const id = bar.read32(R.REG_ID);
      if (id !== R.DMATEST_ID) throw new Error(`${dev.name}: BAR0 id register reads 0x${id.toString(16)}, expected 0x${R.DMATEST_ID.toString(16)}`);
      efd = os.eventfd(0, os.EFD_NONBLOCK);
      dev.setIrqs(U.VFIO_PCI_MSIX_IRQ_INDEX, 0, [efd]);
      const d = new DmatestDriver(dev, bar, ring, entries, efd);
      d.ring.fill(0);
      d.producer = d.reaped = bar.read32(R.REG_CONSUMER);
      bar.write32(R.REG_DOORBELL, d.producer);
      bar.write32(R.REG_RING_LO, Number(ring.iova & 0xffffffffn));
      bar.write32(R.REG_RING_HI, Number(ring.iova >> 32n));
      bar.write32(R.REG_RING_ENTRIES, entries);
      bar.write32(R.REG_CTRL, R.CTRL_ENABLE);
      if ((bar.read32(R.REG_STATUS) & R.STATUS_RUNNING) === 0) throw new Error(`${dev.name}: the engine did not start (status 0x${bar.read32(R.REG_STATUS).toString(16)})`);
      return d;
    } catch (e) {
      if (efd >= 0) os.close(efd);
      bar.close();
      throw e;
    }
  }

  /** Descriptors submitted and not yet reaped. */
  get inFlight(): number {
    return (this.producer - this.reaped) >>> 0;
  }

  /** Queue a copy of len bytes from src to dst (IOVAs) and ring the doorbell; returns the slot. */
  submit(src: bigint, dst: bigint, len: number): number {
    if (this.inFlight >= this.entries) throw new Error(`${this.dev.name}: the ring is full (${this.entries} in flight); reap completions first`);
    const slot = this.producer & (this.entries - 1);
    const o = slot * R.DESC_SIZE;
    this.ringDv.setBigUint64(o + R.DESC_SRC, src, true);
    this.ringDv.setBigUint64(o + R.DESC_DST, dst, true);
    this.ringDv.setUint32(o + R.DESC_LEN, len, true);
    this.ringDv.setUint32(o + R.DESC_FLAGS, 0, true);
    this.ringDv.setUint32(o + R.DESC_CHECKSUM, 0, true);
    this.ringDv.setUint32(o + R.DESC_STATUS, 0, true);
    this.producer = (this.producer + 1) >>> 0;
    this.bar.write32(R.REG_DOORBELL, this.producer);
    return slot;
  }

  /** Completions available now (consumer index from the shared page), in order. */
  reap(): Completion[] {
    const consumer = this.bar.read32(R.REG_CONSUMER);
    const out: Completion[] = [];
    while (this.reaped !== consumer) {
      const slot = this.reaped & (this.entries - 1);
      const o = slot * R.DESC_SIZE;
      out.push({ slot, status: this.ringDv.getUint32(o + R.DESC_STATUS, true), checksum: this.ringDv.getUint32(o + R.DESC_CHECKSUM, true) });
      this.reaped = (this.reaped + 1) >>> 0;
    }
    return out;
  }

  /**
   * Wait (on the event loop: the eventfd is polled on a pool thread) until n completions are
   * reaped or timeoutMs passes; returns the completions and how many interrupts were counted
   * (those already signalled when the completions were there before any wait included).
   */
  async wait(n: number, timeoutMs: number): Promise<{ completions: Completion[]; interrupts: number }> {
    const deadline = Date.now() + timeoutMs;
    const completions: Completion[] = [];
    let interrupts = 0;
    const cnt = new Uint8Array(8);
    for (;;) {
      completions.push(...this.reap());
      if (completions.length >= n) {
        // Interrupts the device raised for completions reaped before any poll (a fast device
        // finishes a burst before we wait): the eventfd is non-blocking, so this never waits.
        if (os.readNoThrow(this.irqFd, cnt, 8) === 8) interrupts += Number(new DataView(cnt.buffer).getBigUint64(0, true));
        return { completions, interrupts };
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.dev.name}: ${completions.length} of ${n} descriptors completed within ${timeoutMs} ms`);
      const [ev] = await os.pollAsync([this.irqFd], os.POLLIN, Math.min(left, 200));
      if (ev & os.POLLIN) {
        os.read(this.irqFd, cnt);
        interrupts += Number(new DataView(cnt.buffer).getBigUint64(0, true));
      }
    }
  }

  /** Disable the engine and the interrupt, close the eventfd and unmap the BAR. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.bar.write32(R.REG_CTRL, 0);
      this.dev.disableIrqs(U.VFIO_PCI_MSIX_IRQ_INDEX);
    } finally {
      os.close(this.irqFd);
      this.bar.close();
    }
  }
}
