/**
 * A VFIO device opened through the kernel (a device fd from VFIO_GROUP_GET_DEVICE_FD, or a cdev
 * /dev/vfio/devices/vfioN bound to an iommufd): the VfioDevice interface over ioctl, mmap, pread
 * and pwrite on that fd. The group and IOMMUFD back ends differ only in how the fd is obtained and
 * where DMA mappings go (the DmaSpace), so both use this class unchanged.
 */
import * as os from '../os/libc.js';
import { OsError } from '../os/libc.js';
import * as U from './vfio-uapi.js';
import {
  type DeviceInfo, type DmaSpace, type IrqInfo, type MmapOptions, type RegionInfo, type VfioDevice,
  encodeIrqSetEventfds, encodeIrqSetNone, parseDeviceInfo, parseIrqInfo, parseRegionInfo, pciIrqName, pciRegionName,
} from './device.js';
import type { BarIo } from './bar.js';

const PAGE = 4096;

/** The kernel VFIO device: one fd, region offsets from VFIO_DEVICE_GET_REGION_INFO. */
export class KernelVfioDevice implements VfioDevice {
  readonly name: string;
  readonly backend: string;
  /** the device fd (for a vfio-user server or a debugger; drivers use the methods) */
  readonly fd: number;
  private readonly dma: DmaSpace;
  private readonly onClose: (() => void) | null;
  private readonly release: (() => void) | null;
  private readonly regions = new Map<number, RegionInfo>();
  private devInfo: DeviceInfo | null = null;
  private closed = false;

  /**
   * Wrap an open device fd; the object owns it from now on: close() runs release (e.g. detach the
   * device from its IOAS), closes the fd, then calls onClose.
   */
  constructor(name: string, backend: string, fd: number, dma: DmaSpace, onClose: (() => void) | null = null, release: (() => void) | null = null) {
    this.release = release;
    this.name = name;
    this.backend = backend;
    this.fd = fd;
    this.dma = dma;
    this.onClose = onClose;
  }

  /** ioctl on the device fd; the one place a test may stand in for the kernel's replies. */
  protected ioctl(req: number, arg: Uint8Array | null): number {
    return os.ioctl(this.fd, req, arg);
  }

  /** Device info (VFIO_DEVICE_GET_INFO). */
  info(): DeviceInfo {
    this.open();
    if (this.devInfo) return this.devInfo;
    const s = U.vfio_device_info;
    const buf = s.encode({ argsz: s.size });
    this.call('VFIO_DEVICE_GET_INFO', U.VFIO_DEVICE_GET_INFO, buf);
    this.devInfo = parseDeviceInfo(buf);
    return this.devInfo;
  }

  /** Region info (VFIO_DEVICE_GET_REGION_INFO, asked again with a larger argsz when it has capabilities). */
  regionInfo(index: number): RegionInfo {
    this.open();
    const cached = this.regions.get(index);
    if (cached) return cached;
    const s = U.vfio_region_info;
    const what = `${this.name} ${pciRegionName(index)}`;
    let buf = s.encode({ argsz: s.size, index });
    this.call(`VFIO_DEVICE_GET_REGION_INFO(${pciRegionName(index)})`, U.VFIO_DEVICE_GET_REGION_INFO, buf);
    const need = s.get(U.view(buf), 'argsz');
    if (need > buf.byteLength) {
      if (need > 1 << 20) throw new Error(`${what}: the kernel asks for a ${need}-byte region info buffer; refusing`);
      buf = s.encode({ argsz: need, index }, need - s.size);
      this.call(`VFIO_DEVICE_GET_REGION_INFO(${pciRegionName(index)})`, U.VFIO_DEVICE_GET_REGION_INFO, buf);
    }
    const info = parseRegionInfo(buf, what);
    this.regions.set(index, info);
    return info;
  }

  /** mmap part of a region (page-aligned offset and length inside the region). */
  mmapRegion(index: number, off: number, len: number, opts: MmapOptions = {}): bigint {
    const r = this.regionInfo(index);
    const what = `${this.name} ${pciRegionName(index)}`;
    if (!r.mappable) throw new Error(`${what} cannot be mmap'd (no VFIO_REGION_INFO_FLAG_MMAP): use readRegion/writeRegion`);
    if (off % PAGE !== 0 || len % PAGE !== 0 || len <= 0) throw new Error(`${what}: mmap of [0x${off.toString(16)}, +0x${len.toString(16)}) is not page-aligned`);
    if (off + len > r.size) throw new Error(`${what}: mmap of [0x${off.toString(16)}, +0x${len.toString(16)}) exceeds the region size 0x${r.size.toString(16)}`);
    const prot = opts.prot ?? ((r.readable ? os.PROT_READ : 0) | (r.writable ? os.PROT_WRITE : 0));
    const flags = os.MAP_SHARED | (opts.fixedAt !== undefined ? os.MAP_FIXED : 0);
    try {
      return os.mmap(opts.fixedAt ?? 0n, len, prot, flags, this.fd, r.offset + BigInt(off));
    } catch (e) {
      throw this.wrap(`mmap of ${pciRegionName(index)} [0x${off.toString(16)}, +0x${len.toString(16)})`, e);
    }
  }

  /** pread from a region. */
  readRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    const r = this.regions.get(index) ?? this.regionInfo(index);
    if (!r.readable || off < 0 || off + len > r.size) this.badAccess(r, 'read', off, len);
    let n: number;
    try {
      n = os.pread(this.fd, buf, len, r.offset + BigInt(off));
    } catch (e) {
      throw this.wrap(`read of ${len} bytes at ${pciRegionName(index)}+0x${off.toString(16)}`, e);
    }
    if (n !== len) throw new Error(`${this.name}: short read of ${pciRegionName(index)}+0x${off.toString(16)}: ${n} of ${len} bytes`);
    return n;
  }

  /** pwrite to a region. */
  writeRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    const r = this.regions.get(index) ?? this.regionInfo(index);
    if (!r.writable || off < 0 || off + len > r.size) this.badAccess(r, 'write', off, len);
    let n: number;
    try {
      n = os.pwrite(this.fd, buf, len, r.offset + BigInt(off));
    } catch (e) {
      throw this.wrap(`write of ${len} bytes at ${pciRegionName(index)}+0x${off.toString(16)}`, e);
    }
    if (n !== len) throw new Error(`${this.name}: short write to ${pciRegionName(index)}+0x${off.toString(16)}: ${n} of ${len} bytes`);
    return n;
  }

  /** Other threads reach a region with pread/pwrite on this fd at the region's offset (the fd is process-wide). */
  workerIo(index: number): BarIo | null {
    const r = this.regionInfo(index);
    if (!r.readable && !r.writable) return null;
    return { kind: 'file', fd: this.fd, offset: r.offset, readable: r.readable, writable: r.writable };
  }

  /** IRQ info (VFIO_DEVICE_GET_IRQ_INFO). */
  irqInfo(index: number): IrqInfo {
    this.open();
    const s = U.vfio_irq_info;
    const buf = s.encode({ argsz: s.size, index });
    this.call(`VFIO_DEVICE_GET_IRQ_INFO(${pciIrqName(index)})`, U.VFIO_DEVICE_GET_IRQ_INFO, buf);
    return parseIrqInfo(buf);
  }

  /** Route vectors to eventfds (VFIO_DEVICE_SET_IRQS, DATA_EVENTFD | ACTION_TRIGGER). */
  setIrqs(index: number, start: number, eventfds: readonly number[]): void {
    this.open();
    const info = this.irqInfo(index);
    if (!info.eventfd || start + eventfds.length > info.count) {
      throw new Error(`${this.name}: ${pciIrqName(index)} has ${info.count} vector(s)${info.eventfd ? '' : ' without eventfd signalling'}; cannot set ${eventfds.length} from ${start}`);
    }
    this.call(`VFIO_DEVICE_SET_IRQS(${pciIrqName(index)})`, U.VFIO_DEVICE_SET_IRQS, encodeIrqSetEventfds(index, start, eventfds));
  }

  /** Disable an IRQ index (DATA_NONE | ACTION_TRIGGER, count 0). */
  disableIrqs(index: number): void {
    this.open();
    this.call(`VFIO_DEVICE_SET_IRQS(${pciIrqName(index)} off)`, U.VFIO_DEVICE_SET_IRQS, encodeIrqSetNone(index, 0, 0, U.VFIO_IRQ_SET_ACTION_TRIGGER));
  }

  /** Unmask one vector (DATA_NONE | ACTION_UNMASK). */
  unmaskIrq(index: number, vector: number): void {
    this.open();
    this.call(`VFIO_DEVICE_SET_IRQS(${pciIrqName(index)} unmask)`, U.VFIO_DEVICE_SET_IRQS, encodeIrqSetNone(index, vector, 1, U.VFIO_IRQ_SET_ACTION_UNMASK));
  }

  /** VFIO_DEVICE_RESET. */
  reset(): void {
    if (!this.info().canReset) throw new Error(`${this.name}: the device does not support reset (no VFIO_DEVICE_FLAGS_RESET)`);
    this.call('VFIO_DEVICE_RESET', U.VFIO_DEVICE_RESET, null);
  }

  /** DMA-map through the container or IOAS this device is attached to. */
  dmaMap(va: bigint, iova: bigint, len: number): void {
    this.open();
    this.dma.dmaMap(va, iova, len);
  }

  /** DMA-unmap through the container or IOAS. */
  dmaUnmap(iova: bigint, len: number): void {
    this.open();
    this.dma.dmaUnmap(iova, len);
  }

  /** Close the device fd (mappings of its regions stay valid until munmap'd) and release the back end's hold. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.release?.();
    } finally {
      try {
        os.close(this.fd);
      } finally {
        this.onClose?.();
      }
    }
  }

  private open(): void {
    if (this.closed) throw new Error(`${this.name}: the VFIO device is closed`);
  }

  private call(what: string, req: number, arg: Uint8Array | null): number {
    try {
      return this.ioctl(req, arg);
    } catch (e) {
      throw this.wrap(what, e);
    }
  }

  private wrap(what: string, e: unknown): Error {
    const msg = e instanceof OsError ? `${e.code}: ${os.strerror(e.errno)}` : (e as Error).message;
    const err = new Error(`${this.name} (${this.backend}): ${what} failed: ${msg}`);
    (err as Error & { cause?: unknown }).cause = e;
    return err;
  }

  private badAccess(r: RegionInfo, op: 'read' | 'write', off: number, len: number): never {
    const what = `${this.name} ${pciRegionName(r.index)}`;
    if (op === 'read' && !r.readable) throw new Error(`${what} is not readable`);
    if (op === 'write' && !r.writable) throw new Error(`${what} is not writable`);
    throw new RangeError(`${what}: ${op} of ${len} bytes at 0x${off.toString(16)} is outside the region (size 0x${r.size.toString(16)})`);
  }
}
