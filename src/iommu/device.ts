/**
 * The one VFIO device interface drivers use, whatever carries it: the kernel's VFIO through a
 * group and container, the kernel's VFIO through IOMMUFD and a device cdev, or (later) a vfio-user
 * client over a socket. Nothing here names a transport: regions are addressed by index and offset,
 * interrupts by eventfd, DMA by (va, iova, length).
 *
 * The info structs parsed here are the kernel's (struct vfio_device_info, vfio_region_info with its
 * capability chain, vfio_irq_info); vfio-user replies carry the same layouts, so the parsers serve
 * both.
 */
import * as U from './vfio-uapi.js';

/** struct vfio_device_info, decoded. */
export interface DeviceInfo {
  flags: number;
  numRegions: number;
  numIrqs: number;
  /** VFIO_DEVICE_FLAGS_PCI */
  isPci: boolean;
  /** VFIO_DEVICE_FLAGS_RESET: reset() is supported */
  canReset: boolean;
}

/** One area of a region that may be mmap'd (VFIO_REGION_INFO_CAP_SPARSE_MMAP). */
export interface SparseArea {
  /** offset inside the region */
  offset: number;
  size: number;
}

/** struct vfio_region_info with its capability chain, decoded. */
export interface RegionInfo {
  index: number;
  flags: number;
  /** region size in bytes (0: the region does not exist, e.g. an unused BAR) */
  size: number;
  /** where the region starts in the device fd's offset space (kernel VFIO: index << 40) */
  offset: bigint;
  readable: boolean;
  writable: boolean;
  /** VFIO_REGION_INFO_FLAG_MMAP: (some of) the region may be mmap'd */
  mappable: boolean;
  /** the sparse mmap capability's areas, or null when the whole region is mappable (if mappable) */
  sparse: SparseArea[] | null;
  /** VFIO_REGION_INFO_CAP_TYPE, or null */
  type: { type: number; subtype: number } | null;
  /** VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: the MSI-X table may be mapped too */
  msixMappable: boolean;
  /** ids of every capability in the chain, in chain order */
  capIds: number[];
}

/** struct vfio_irq_info, decoded. */
export interface IrqInfo {
  index: number;
  flags: number;
  /** number of vectors at this index (0: not supported) */
  count: number;
  eventfd: boolean;
  maskable: boolean;
  automasked: boolean;
  noresize: boolean;
}

/** Where DMA-able memory lives for the device: a container (type1), an IOAS, or a vfio-user peer. */
export interface DmaSpace {
  /** Make [va, va+len) reachable by the device at iova, readable and writable. */
  dmaMap(va: bigint, iova: bigint, len: number): void;
  /** Remove the mapping at [iova, iova+len). */
  dmaUnmap(iova: bigint, len: number): void;
}

/** How mmapRegion places the mapping. */
export interface MmapOptions {
  /** PROT_READ | PROT_WRITE by default */
  prot?: number;
  /** map exactly at this address (MAP_FIXED), replacing what is there (a reservation) */
  fixedAt?: bigint;
}

/**
 * A VFIO device, as drivers see it. Region offsets (`off`) are relative to the region's start;
 * every method throws an Error that names the device, the region or IRQ index, and the cause.
 */
export interface VfioDevice extends DmaSpace {
  /** the device's name: a PCI address (0000:01:00.0) or an mdev UUID */
  readonly name: string;
  /** which back end carries it ("group", "iommufd", "vfio-user", ...), for messages */
  readonly backend: string;
  /** Device info (regions, IRQs, flags). */
  info(): DeviceInfo;
  /** Region info with its parsed capability chain (cached after the first call). */
  regionInfo(index: number): RegionInfo;
  /** mmap len bytes of region index at off; returns the address. */
  mmapRegion(index: number, off: number, len: number, opts?: MmapOptions): bigint;
  /** Read len bytes (default: all of buf) of region index at off into buf; returns bytes read. */
  readRegion(index: number, off: number, buf: Uint8Array, len?: number): number;
  /** Write buf (or its first len bytes) to region index at off; returns bytes written. */
  writeRegion(index: number, off: number, buf: Uint8Array, len?: number): number;
  /** IRQ info for an index (VFIO_PCI_INTX/MSI/MSIX/ERR/REQ_IRQ_INDEX). */
  irqInfo(index: number): IrqInfo;
  /** Signal vectors start.. of index through these eventfds (-1 leaves a vector unassigned). */
  setIrqs(index: number, start: number, eventfds: readonly number[]): void;
  /** Disable every vector of an index (DATA_NONE | ACTION_TRIGGER, count 0). */
  disableIrqs(index: number): void;
  /** Unmask one vector (INTx is automasked after it fires). */
  unmaskIrq(index: number, vector: number): void;
  /** Function-level reset (when info().canReset). */
  reset(): void;
  /**
   * How other threads (a PMD's data half on an lcore) reach region index where it is not mapped:
   * plain data MappedBar.open rebuilds there (null: they cannot, only this thread can).
   */
  workerIo(index: number): BarIo | null;
  /** Release the device (and its transport resources); further calls throw. */
  close(): void;
}

/** Decode struct vfio_device_info. */
export function parseDeviceInfo(buf: Uint8Array): DeviceInfo {
  const dv = U.view(buf);
  const s = U.vfio_device_info;
  const flags = s.get(dv, 'flags');
  return {
    flags, numRegions: s.get(dv, 'num_regions'), numIrqs: s.get(dv, 'num_irqs'),
    isPci: (flags & U.VFIO_DEVICE_FLAGS_PCI) !== 0, canReset: (flags & U.VFIO_DEVICE_FLAGS_RESET) !== 0,
  };
}

/**
 * Decode struct vfio_region_info and its capability chain (sparse mmap areas, region type,
 * MSI-X mappable). buf holds the whole info as returned (argsz bytes); what names it in errors.
 */
export function parseRegionInfo(buf: Uint8Array, what: string): RegionInfo {
  const dv = U.view(buf);
  const s = U.vfio_region_info;
  const flags = s.get(dv, 'flags');
  const sizeBig = s.get64(dv, 'size');
  if (sizeBig > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what}: region size 0x${sizeBig.toString(16)} is too large`);
  const info: RegionInfo = {
    index: s.get(dv, 'index'), flags, size: Number(sizeBig), offset: s.get64(dv, 'offset'),
    readable: (flags & U.VFIO_REGION_INFO_FLAG_READ) !== 0,
    writable: (flags & U.VFIO_REGION_INFO_FLAG_WRITE) !== 0,
    mappable: (flags & U.VFIO_REGION_INFO_FLAG_MMAP) !== 0,
    sparse: null, type: null, msixMappable: false, capIds: [],
  };
  if ((flags & U.VFIO_REGION_INFO_FLAG_CAPS) === 0) return info;
  for (const cap of U.walkCaps(buf, s.get(dv, 'cap_offset'), what)) {
    info.capIds.push(cap.id);
    if (cap.id === U.VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
      const sp = U.vfio_region_info_cap_sparse_mmap;
      const area = U.vfio_region_sparse_mmap_area;
      if (cap.offset + sp.size > buf.byteLength) throw new Error(`${what}: sparse mmap capability is truncated`);
      const n = sp.get(dv, 'nr_areas', cap.offset);
      const first = cap.offset + sp.offsetOf('areas');
      if (first + n * area.size > buf.byteLength) {
        throw new Error(`${what}: sparse mmap capability claims ${n} areas but the info buffer holds ${Math.floor((buf.byteLength - first) / area.size)}`);
      }
      const areas: SparseArea[] = [];
      for (let i = 0; i < n; i++) {
        const o = first + i * area.size;
        const a = { offset: area.get(dv, 'offset', o), size: area.get(dv, 'size', o) };
        if (a.size === 0) continue;
        if (a.offset + a.size > info.size) throw new Error(`${what}: sparse mmap area [0x${a.offset.toString(16)}, +0x${a.size.toString(16)}) exceeds the region size 0x${info.size.toString(16)}`);
        areas.push(a);
      }
      info.sparse = areas.sort((x, y) => x.offset - y.offset);
    } else if (cap.id === U.VFIO_REGION_INFO_CAP_TYPE) {
      const ct = U.vfio_region_info_cap_type;
      if (cap.offset + ct.size > buf.byteLength) throw new Error(`${what}: region type capability is truncated`);
      info.type = { type: ct.get(dv, 'type', cap.offset), subtype: ct.get(dv, 'subtype', cap.offset) };
    } else if (cap.id === U.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) {
      info.msixMappable = true;
    }
  }
  return info;
}

/** Decode struct vfio_irq_info. */
export function parseIrqInfo(buf: Uint8Array): IrqInfo {
  const dv = U.view(buf);
  const s = U.vfio_irq_info;
  const flags = s.get(dv, 'flags');
  return {
    index: s.get(dv, 'index'), flags, count: s.get(dv, 'count'),
    eventfd: (flags & U.VFIO_IRQ_INFO_EVENTFD) !== 0,
    maskable: (flags & U.VFIO_IRQ_INFO_MASKABLE) !== 0,
    automasked: (flags & U.VFIO_IRQ_INFO_AUTOMASKED) !== 0,
    noresize: (flags & U.VFIO_IRQ_INFO_NORESIZE) !== 0,
  };
}

/** Encode struct vfio_irq_set for eventfds (-1 unassigns), ACTION_TRIGGER. */
export function encodeIrqSetEventfds(index: number, start: number, eventfds: readonly number[]): Uint8Array {
  const s = U.vfio_irq_set;
  const buf = s.encode({
    argsz: s.size + 4 * eventfds.length, flags: U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER,
    index, start, count: eventfds.length,
  }, 4 * eventfds.length);
  const dv = U.view(buf);
  eventfds.forEach((fd, i) => dv.setInt32(s.offsetOf('data') + 4 * i, fd, true));
  return buf;
}

/** Encode struct vfio_irq_set without data (DATA_NONE) for an action over count vectors. */
export function encodeIrqSetNone(index: number, start: number, count: number, action: number): Uint8Array {
  const s = U.vfio_irq_set;
  return s.encode({ argsz: s.size, flags: U.VFIO_IRQ_SET_DATA_NONE | action, index, start, count });
}

/** A readable name of a PCI region index ("BAR2", "config"), for messages. */
export function pciRegionName(index: number): string {
  if (index >= U.VFIO_PCI_BAR0_REGION_INDEX && index <= U.VFIO_PCI_BAR5_REGION_INDEX) return `BAR${index}`;
  if (index === U.VFIO_PCI_ROM_REGION_INDEX) return 'ROM';
  if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) return 'config';
  if (index === U.VFIO_PCI_VGA_REGION_INDEX) return 'VGA';
  return `region ${index}`;
}

/** A readable name of a PCI IRQ index ("MSI-X"), for messages. */
export function pciIrqName(index: number): string {
  return ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'][index] ?? `IRQ index ${index}`;
}

/** How an MmioReg's writes reach the device (see MmioReg.via). */
export type MmioVia = 'mmio' | 'pwrite' | 'message' | 'eventfd';

/** One device register as the data path uses it: read() and write() of its width, nothing looked up per access. */
export interface MmioReg {
  /** whether accesses are loads/stores on the mapping (false: the pread/pwrite or message fallback) */
  readonly mapped: boolean;
  /**
   * How writes reach the device: a store on the mapping, pwrite on the device fd, a message on the
   * device's transport, or a signal on an ioeventfd the device offered (a doorbell with a datamatch
   * sends the values it does not match as messages)
   */
  readonly via: MmioVia;
  /** Read the register (little endian). */
  read(): number;
  /** Write the register (little endian; v is truncated to the width). */
  write(v: number): void;
}

/**
 * How any thread of this process reaches the parts of a region that are not mapped: plain data,
 * structured-cloneable. fd numbers are process-wide, so a worker uses the same fd as the main thread.
 *
 * - `file`: kernel VFIO. pread/pwrite on the device fd at `offset` (the region's offset in the fd's
 *   offset space) + the register's offset; thread-safe by construction (no file position).
 * - `message`: registers written by messages on the device's transport (`transport` names it for
 *   messages, e.g. "vfio-user"). `module` (a module URL) exports a MessageRegModule; `arg` is that
 *   module's own plain data. MappedBar.open loads the module in the thread that writes.
 */
export type BarIo =
  | { kind: 'file'; fd: number; offset: bigint; readable: boolean; writable: boolean }
  | { kind: 'message'; transport: string; module: string; arg: unknown };

/** What a BarIo of kind 'message' names: the module that builds its registers in any thread. */
export interface MessageRegModule {
  /**
   * The register of width bytes at off, from the BarIo's arg; what names it in errors. Throws when
   * it cannot be reached from this thread (with needRead: when it cannot be read here).
   */
  messageReg(what: string, arg: unknown, off: number, width: 1 | 2 | 4, needRead: boolean): MmioReg;
}
