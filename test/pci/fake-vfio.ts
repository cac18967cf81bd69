/**
 * A stand-in for a kernel VFIO device fd, at the narrowest seam: a memfd is the device fd (regions
 * at VFIO's offsets, index << 40, so mmap/pread/pwrite are the real code path), and only the ioctl
 * replies (GET_INFO, GET_REGION_INFO with its capability chain, GET_IRQ_INFO, SET_IRQS, RESET) are
 * produced here, byte for byte in the kernel's layout and with its argsz protocol.
 */
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import type { DmaSpace, SparseArea } from '../../src/iommu/device.js';
import { KernelVfioDevice } from '../../src/iommu/kernel-device.js';

/** A region of the fake device. */
export interface FakeRegion {
  index: number;
  size: number;
  /** VFIO_REGION_INFO_FLAG_READ/WRITE/MMAP (CAPS is added when caps are present) */
  flags: number;
  /** sparse mmap areas (adds VFIO_REGION_INFO_CAP_SPARSE_MMAP) */
  sparse?: SparseArea[];
  /** region type capability (adds VFIO_REGION_INFO_CAP_TYPE) */
  type?: { type: number; subtype: number };
  /** initial contents */
  data?: Uint8Array;
}

/** A DmaSpace that records calls. */
export class RecordingDma implements DmaSpace {
  readonly maps: Array<{ va: bigint; iova: bigint; len: number }> = [];
  readonly unmaps: Array<{ iova: bigint; len: number }> = [];
  /** Record a map. */
  dmaMap(va: bigint, iova: bigint, len: number): void {
    this.maps.push({ va, iova, len });
  }
  /** Record an unmap. */
  dmaUnmap(iova: bigint, len: number): void {
    this.unmaps.push({ iova, len });
  }
}

export const REGION_SHIFT = 40n;
export const RW = U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE;
export const RWM = RW | U.VFIO_REGION_INFO_FLAG_MMAP;

/** A VFIO device whose fd is a memfd; ioctl replies are computed here. */
export class MemfdVfioDevice extends KernelVfioDevice {
  readonly regionsSpec: ReadonlyMap<number, FakeRegion>;
  readonly irqCounts: readonly number[];
  /** SET_IRQS calls as decoded: index, start, count, flags, eventfds */
  readonly irqSets: Array<{ index: number; start: number; count: number; flags: number; fds: number[] }> = [];
  resets = 0;
  /** ioctl requests seen, by code */
  readonly calls: number[] = [];

  /** A device named name with these regions and IRQ counts per index; the memfd is closed by close(). */
  constructor(name: string, regions: FakeRegion[], irqCounts: number[] = [1, 1, 8, 1, 1], dma: DmaSpace = new RecordingDma(), onClose: (() => void) | null = null) {
    const fd = os.memfdCreate(`tspfake-${name}`, 0);
    let end = 0n;
    for (const r of regions) {
      const at = BigInt(r.index) << REGION_SHIFT;
      if (at + BigInt(r.size) > end) end = at + BigInt(r.size);
    }
    os.ftruncate(fd, end);
    for (const r of regions) if (r.data) os.pwrite(fd, r.data, r.data.byteLength, BigInt(r.index) << REGION_SHIFT);
    super(name, 'fake', fd, dma, onClose);
    this.regionsSpec = new Map(regions.map((r) => [r.index, r]));
    this.irqCounts = irqCounts;
  }

  /** The kernel's replies, in its layouts. */
  protected override ioctl(req: number, arg: Uint8Array | null): number {
    this.calls.push(req);
    const dv = arg ? U.view(arg) : null;
    switch (req) {
      case U.VFIO_DEVICE_GET_INFO: {
        const s = U.vfio_device_info;
        if (!dv || s.get(dv, 'argsz') < s.size) throw new os.OsError('ioctl', os.E.EINVAL, 'fake GET_INFO');
        s.set(dv, 'flags', U.VFIO_DEVICE_FLAGS_PCI | U.VFIO_DEVICE_FLAGS_RESET);
        s.set(dv, 'num_regions', U.VFIO_PCI_NUM_REGIONS);
        s.set(dv, 'num_irqs', U.VFIO_PCI_NUM_IRQS);
        return 0;
      }
      case U.VFIO_DEVICE_GET_REGION_INFO: return this.regionInfoReply(arg!);
      case U.VFIO_DEVICE_GET_IRQ_INFO: {
        const s = U.vfio_irq_info;
        const index = s.get(dv!, 'index');
        if (index >= this.irqCounts.length) throw new os.OsError('ioctl', os.E.EINVAL, 'fake GET_IRQ_INFO');
        const flags = U.VFIO_IRQ_INFO_EVENTFD | (index === U.VFIO_PCI_INTX_IRQ_INDEX ? U.VFIO_IRQ_INFO_MASKABLE | U.VFIO_IRQ_INFO_AUTOMASKED : U.VFIO_IRQ_INFO_NORESIZE);
        s.set(dv!, 'flags', flags);
        s.set(dv!, 'count', this.irqCounts[index]);
        return 0;
      }
      case U.VFIO_DEVICE_SET_IRQS: {
        const s = U.vfio_irq_set;
        const count = s.get(dv!, 'count'), flags = s.get(dv!, 'flags');
        if (s.get(dv!, 'argsz') < s.size + ((flags & U.VFIO_IRQ_SET_DATA_EVENTFD) ? 4 * count : 0)) throw new os.OsError('ioctl', os.E.EINVAL, 'fake SET_IRQS');
        const fds: number[] = [];
        if (flags & U.VFIO_IRQ_SET_DATA_EVENTFD) for (let i = 0; i < count; i++) fds.push(dv!.getInt32(s.offsetOf('data') + 4 * i, true));
        this.irqSets.push({ index: s.get(dv!, 'index'), start: s.get(dv!, 'start'), count, flags, fds });
        return 0;
      }
      case U.VFIO_DEVICE_RESET: this.resets++; return 0;
      default: throw new os.OsError('ioctl', os.E.ENOTTY, `fake device, request 0x${req.toString(16)}`);
    }
  }

  /** VFIO_DEVICE_GET_REGION_INFO as vfio-pci answers it (caps after the struct, argsz grown when short). */
  private regionInfoReply(arg: Uint8Array): number {
    const s = U.vfio_region_info;
    const dv = U.view(arg);
    const argsz = s.get(dv, 'argsz');
    if (argsz < s.size) throw new os.OsError('ioctl', os.E.EINVAL, 'fake GET_REGION_INFO');
    const index = s.get(dv, 'index');
    const r = this.regionsSpec.get(index);
    const caps: Uint8Array[] = [];
    if (r?.sparse) {
      const c = U.vfio_region_info_cap_sparse_mmap, a = U.vfio_region_sparse_mmap_area;
      const b = c.encode({ 'header.id': U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 'header.version': 1, nr_areas: r.sparse.length }, a.size * r.sparse.length);
      r.sparse.forEach((x, i) => { a.set(U.view(b), 'offset', x.offset, c.size + i * a.size); a.set(U.view(b), 'size', x.size, c.size + i * a.size); });
      caps.push(b);
    }
    if (r?.type) {
      const c = U.vfio_region_info_cap_type;
      caps.push(c.encode({ 'header.id': U.VFIO_REGION_INFO_CAP_TYPE, 'header.version': 1, type: r.type.type, subtype: r.type.subtype }));
    }
    const capsLen = caps.reduce((n, c) => n + c.byteLength, 0);
    s.set(dv, 'flags', (r?.flags ?? 0) | (caps.length ? U.VFIO_REGION_INFO_FLAG_CAPS : 0));
    s.set(dv, 'size', r?.size ?? 0);
    s.set(dv, 'offset', BigInt(index) << REGION_SHIFT);
    s.set(dv, 'cap_offset', 0);
    if (caps.length === 0) return 0;
    if (argsz < s.size + capsLen) {
      s.set(dv, 'argsz', s.size + capsLen);
      return 0;
    }
    let off = s.size;
    caps.forEach((c, i) => {
      arg.set(c, off);
      const next = i + 1 < caps.length ? off + c.byteLength : 0;
      U.vfio_info_cap_header.set(dv, 'next', next, off);
      off += c.byteLength;
    });
    s.set(dv, 'cap_offset', s.size);
    return 0;
  }
}
