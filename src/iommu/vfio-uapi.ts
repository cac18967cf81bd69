/**
 * Kernel UAPI for VFIO (linux/vfio.h) and IOMMUFD (linux/iommufd.h): ioctl request codes, flags
 * and struct layouts, as tspmd uses them.
 *
 * Request codes are computed with the kernel's _IOC encoding (asm-generic/ioctl.h), struct offsets
 * with C's natural-alignment rules (x86_64/aarch64 LP64), never typed in as bare numbers. Every name
 * here is the kernel's own spelling, and test/pci/uapi.test.ts compiles a C program against the
 * kernel's headers that prints each request code, constant, struct size and field offset listed in
 * UAPI_IOCTLS, UAPI_CONSTANTS and UAPI_STRUCTS and compares them with these values.
 */

// ---- ioctl encoding (asm-generic/ioctl.h) ----

const IOC_NRBITS = 8, IOC_TYPEBITS = 8, IOC_SIZEBITS = 14;
const IOC_NRSHIFT = 0;
const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS;
/** _IOC_NONE, _IOC_WRITE, _IOC_READ */
export const IOC_NONE = 0, IOC_WRITE = 1, IOC_READ = 2;

/** _IOC(dir, type, nr, size): the kernel's ioctl request encoding, as an unsigned 32-bit number. */
export function ioc(dir: number, type: number | string, nr: number, size: number): number {
  const t = typeof type === 'string' ? type.charCodeAt(0) : type;
  if (nr < 0 || nr > 0xff || t < 0 || t > 0xff || size < 0 || size >= 1 << IOC_SIZEBITS || dir < 0 || dir > 3) {
    throw new RangeError(`_IOC(${dir}, ${t}, ${nr}, ${size}): a field is out of range`);
  }
  return ((dir << IOC_DIRSHIFT) | (size << IOC_SIZESHIFT) | (t << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)) >>> 0;
}

/** _IO(type, nr): a request without an argument size. */
export function io(type: number | string, nr: number): number {
  return ioc(IOC_NONE, type, nr, 0);
}

/** _IOR(type, nr, size): the kernel writes size bytes to user space. */
export function ior(type: number | string, nr: number, size: number): number {
  return ioc(IOC_READ, type, nr, size);
}

/** _IOW(type, nr, size): the kernel reads size bytes from user space. */
export function iow(type: number | string, nr: number, size: number): number {
  return ioc(IOC_WRITE, type, nr, size);
}

/** _IOWR(type, nr, size): both directions. */
export function iowr(type: number | string, nr: number, size: number): number {
  return ioc(IOC_READ | IOC_WRITE, type, nr, size);
}

/** A request code split into its fields (_IOC_DIR, _IOC_TYPE, _IOC_NR, _IOC_SIZE). */
export function iocDecode(req: number): { dir: number; type: number; nr: number; size: number } {
  return {
    dir: (req >>> IOC_DIRSHIFT) & 3,
    type: (req >>> IOC_TYPESHIFT) & 0xff,
    nr: (req >>> IOC_NRSHIFT) & 0xff,
    size: (req >>> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1),
  };
}

// ---- struct layouts ----

/** A C scalar type as it appears in the UAPI structs. */
export type FieldType = 'u8' | 'u16' | 'u32' | 's32' | 'u64';
const WIDTH: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

/** One field: its C member path (e.g. "header.id") and type; a flexible array member has count 0. */
export type FieldSpec<F extends string> = readonly [name: F, type: FieldType] | readonly [name: F, type: FieldType, flexible: 'flex'];

/**
 * A C struct layout with offsets computed like the C compiler does on LP64 Linux (each member at
 * its natural alignment, the size rounded up to the largest alignment; a flexible array member
 * adds alignment but no size). Fields are read and written through a DataView, little endian.
 */
export class Struct<F extends string> {
  /** the C struct name, e.g. "vfio_region_info" */
  readonly name: string;
  /** sizeof(struct) */
  readonly size: number;
  /** _Alignof(struct) */
  readonly align: number;
  private readonly offsets = new Map<F, { off: number; type: FieldType; flex: boolean }>();

  /** Lay out fields in declaration order, as the C compiler does. */
  constructor(name: string, fields: ReadonlyArray<FieldSpec<F>>) {
    this.name = name;
    let off = 0, align = 1;
    for (const f of fields) {
      const [fname, type] = f;
      const w = WIDTH[type];
      off = Math.ceil(off / w) * w;
      align = Math.max(align, w);
      const flex = f.length === 3;
      this.offsets.set(fname, { off, type, flex });
      if (!flex) off += w;
    }
    this.align = align;
    this.size = Math.ceil(off / align) * align;
  }

  /** offsetof(struct, field). */
  offsetOf(field: F): number {
    return this.field(field).off;
  }

  /** sizeof(field) in bytes (the element size for a flexible array member). */
  sizeOf(field: F): number {
    return WIDTH[this.field(field).type];
  }

  /** Field names in declaration order (flexible array members included). */
  fieldNames(): F[] {
    return [...this.offsets.keys()];
  }

  /** Whether field is a flexible array member (its offset is checked, it has no fixed value). */
  isFlexible(field: F): boolean {
    return this.field(field).flex;
  }

  /** A zeroed buffer of sizeof(struct) + extra bytes. */
  alloc(extra = 0): Uint8Array {
    return new Uint8Array(this.size + extra);
  }

  /** Write field at base + offsetof(field). */
  set(dv: DataView, field: F, value: number | bigint, base = 0): void {
    const { off, type } = this.field(field);
    const at = base + off;
    switch (type) {
      case 'u8': dv.setUint8(at, Number(value)); break;
      case 'u16': dv.setUint16(at, Number(value), true); break;
      case 'u32': dv.setUint32(at, Number(value) >>> 0, true); break;
      case 's32': dv.setInt32(at, Number(value), true); break;
      case 'u64': dv.setBigUint64(at, BigInt(value), true); break;
    }
  }

  /** Read field as a number (a u64 must be a safe integer, else RangeError). */
  get(dv: DataView, field: F, base = 0): number {
    const { off, type } = this.field(field);
    const at = base + off;
    switch (type) {
      case 'u8': return dv.getUint8(at);
      case 'u16': return dv.getUint16(at, true);
      case 'u32': return dv.getUint32(at, true);
      case 's32': return dv.getInt32(at, true);
      case 'u64': {
        const v = dv.getBigUint64(at, true);
        if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`${this.name}.${field} = 0x${v.toString(16)} does not fit a number; read it with get64`);
        return Number(v);
      }
    }
  }

  /** Read field as a bigint (any type). */
  get64(dv: DataView, field: F, base = 0): bigint {
    const { off, type } = this.field(field);
    return type === 'u64' ? dv.getBigUint64(base + off, true) : BigInt(this.get(dv, field, base));
  }

  /** A new buffer holding the struct with the given field values (the rest zero), plus extra bytes. */
  encode(values: Partial<Record<F, number | bigint>>, extra = 0): Uint8Array {
    const buf = this.alloc(extra);
    const dv = view(buf);
    for (const [k, v] of Object.entries(values) as Array<[F, number | bigint | undefined]>) if (v !== undefined) this.set(dv, k, v);
    return buf;
  }

  /** Every fixed field of the struct at base, u64 fields as bigint and the others as number. */
  decode(buf: Uint8Array, base = 0): Record<F, number | bigint> {
    if (base + this.size > buf.byteLength) throw new RangeError(`${this.name}: ${buf.byteLength - base} bytes left, ${this.size} needed`);
    const dv = view(buf);
    const out = {} as Record<F, number | bigint>;
    for (const [k, f] of this.offsets) if (!f.flex) out[k] = f.type === 'u64' ? this.get64(dv, k, base) : this.get(dv, k, base);
    return out;
  }

  private field(field: F): { off: number; type: FieldType; flex: boolean } {
    const f = this.offsets.get(field);
    if (!f) throw new Error(`struct ${this.name} has no field "${field}"`);
    return f;
  }
}

/** A DataView over exactly buf's bytes. */
export function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

// ---- linux/vfio.h ----

export const VFIO_TYPE = ';';
export const VFIO_BASE = 100;
export const VFIO_API_VERSION = 0;

// extensions / IOMMU types (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU)
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_NOIOMMU_IOMMU = 8;

export const VFIO_GET_API_VERSION = io(VFIO_TYPE, VFIO_BASE + 0);
export const VFIO_CHECK_EXTENSION = io(VFIO_TYPE, VFIO_BASE + 1);
export const VFIO_SET_IOMMU = io(VFIO_TYPE, VFIO_BASE + 2);
export const VFIO_GROUP_GET_STATUS = io(VFIO_TYPE, VFIO_BASE + 3);
export const VFIO_GROUP_SET_CONTAINER = io(VFIO_TYPE, VFIO_BASE + 4);
export const VFIO_GROUP_UNSET_CONTAINER = io(VFIO_TYPE, VFIO_BASE + 5);
export const VFIO_GROUP_GET_DEVICE_FD = io(VFIO_TYPE, VFIO_BASE + 6);
export const VFIO_DEVICE_GET_INFO = io(VFIO_TYPE, VFIO_BASE + 7);
export const VFIO_DEVICE_GET_REGION_INFO = io(VFIO_TYPE, VFIO_BASE + 8);
export const VFIO_DEVICE_GET_IRQ_INFO = io(VFIO_TYPE, VFIO_BASE + 9);
export const VFIO_DEVICE_SET_IRQS = io(VFIO_TYPE, VFIO_BASE + 10);
export const VFIO_DEVICE_RESET = io(VFIO_TYPE, VFIO_BASE + 11);
export const VFIO_IOMMU_GET_INFO = io(VFIO_TYPE, VFIO_BASE + 12);
export const VFIO_IOMMU_MAP_DMA = io(VFIO_TYPE, VFIO_BASE + 13);
export const VFIO_IOMMU_UNMAP_DMA = io(VFIO_TYPE, VFIO_BASE + 14);
export const VFIO_DEVICE_BIND_IOMMUFD = io(VFIO_TYPE, VFIO_BASE + 18);
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT = io(VFIO_TYPE, VFIO_BASE + 19);
export const VFIO_DEVICE_DETACH_IOMMUFD_PT = io(VFIO_TYPE, VFIO_BASE + 20);

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;

export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const VFIO_REGION_INFO_CAP_TYPE = 2;
export const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;

export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;

export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;

export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;

/** VFIO_DEVICE_API_PCI_STRING: an mdev type's device_api for PCI devices. */
export const VFIO_DEVICE_API_PCI_STRING = 'vfio-pci';

// PCI region and IRQ indexes (enums in vfio.h)
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_BAR1_REGION_INDEX = 1;
export const VFIO_PCI_BAR2_REGION_INDEX = 2;
export const VFIO_PCI_BAR3_REGION_INDEX = 3;
export const VFIO_PCI_BAR4_REGION_INDEX = 4;
export const VFIO_PCI_BAR5_REGION_INDEX = 5;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;

export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
export const VFIO_PCI_NUM_IRQS = 5;

export const vfio_info_cap_header = new Struct('vfio_info_cap_header', [
  ['id', 'u16'], ['version', 'u16'], ['next', 'u32'],
]);

export const vfio_group_status = new Struct('vfio_group_status', [['argsz', 'u32'], ['flags', 'u32']]);

export const vfio_device_info = new Struct('vfio_device_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['num_regions', 'u32'], ['num_irqs', 'u32'], ['cap_offset', 'u32'], ['pad', 'u32'],
]);

export const vfio_region_info = new Struct('vfio_region_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['index', 'u32'], ['cap_offset', 'u32'], ['size', 'u64'], ['offset', 'u64'],
]);

export const vfio_region_sparse_mmap_area = new Struct('vfio_region_sparse_mmap_area', [['offset', 'u64'], ['size', 'u64']]);

export const vfio_region_info_cap_sparse_mmap = new Struct('vfio_region_info_cap_sparse_mmap', [
  ['header.id', 'u16'], ['header.version', 'u16'], ['header.next', 'u32'],
  ['nr_areas', 'u32'], ['reserved', 'u32'], ['areas', 'u64', 'flex'],
]);

export const vfio_region_info_cap_type = new Struct('vfio_region_info_cap_type', [
  ['header.id', 'u16'], ['header.version', 'u16'], ['header.next', 'u32'], ['type', 'u32'], ['subtype', 'u32'],
]);

export const vfio_irq_info = new Struct('vfio_irq_info', [['argsz', 'u32'], ['flags', 'u32'], ['index', 'u32'], ['count', 'u32']]);

export const vfio_irq_set = new Struct('vfio_irq_set', [
  ['argsz', 'u32'], ['flags', 'u32'], ['index', 'u32'], ['start', 'u32'], ['count', 'u32'], ['data', 'u8', 'flex'],
]);

export const vfio_iommu_type1_info = new Struct('vfio_iommu_type1_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['iova_pgsizes', 'u64'], ['cap_offset', 'u32'], ['pad', 'u32'],
]);

export const vfio_iova_range = new Struct('vfio_iova_range', [['start', 'u64'], ['end', 'u64']]);

export const vfio_iommu_type1_info_cap_iova_range = new Struct('vfio_iommu_type1_info_cap_iova_range', [
  ['header.id', 'u16'], ['header.version', 'u16'], ['header.next', 'u32'],
  ['nr_iovas', 'u32'], ['reserved', 'u32'], ['iova_ranges', 'u64', 'flex'],
]);

export const vfio_iommu_type1_dma_map = new Struct('vfio_iommu_type1_dma_map', [
  ['argsz', 'u32'], ['flags', 'u32'], ['vaddr', 'u64'], ['iova', 'u64'], ['size', 'u64'],
]);

export const vfio_iommu_type1_dma_unmap = new Struct('vfio_iommu_type1_dma_unmap', [
  ['argsz', 'u32'], ['flags', 'u32'], ['iova', 'u64'], ['size', 'u64'], ['data', 'u8', 'flex'],
]);

export const vfio_device_bind_iommufd = new Struct('vfio_device_bind_iommufd', [
  ['argsz', 'u32'], ['flags', 'u32'], ['iommufd', 's32'], ['out_devid', 'u32'],
]);

export const vfio_device_attach_iommufd_pt = new Struct('vfio_device_attach_iommufd_pt', [
  ['argsz', 'u32'], ['flags', 'u32'], ['pt_id', 'u32'],
]);

export const vfio_device_detach_iommufd_pt = new Struct('vfio_device_detach_iommufd_pt', [
  ['argsz', 'u32'], ['flags', 'u32'],
]);

// ---- linux/iommufd.h ----

export const IOMMUFD_TYPE = ';';
export const IOMMUFD_CMD_DESTROY = 0x80;
export const IOMMUFD_CMD_IOAS_ALLOC = 0x81;
export const IOMMUFD_CMD_IOAS_MAP = 0x85;
export const IOMMUFD_CMD_IOAS_UNMAP = 0x86;

export const IOMMU_DESTROY = io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
export const IOMMU_IOAS_ALLOC = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
export const IOMMU_IOAS_MAP = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
export const IOMMU_IOAS_UNMAP = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);

export const IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0;
export const IOMMU_IOAS_MAP_WRITEABLE = 1 << 1;
export const IOMMU_IOAS_MAP_READABLE = 1 << 2;

export const iommu_destroy = new Struct('iommu_destroy', [['size', 'u32'], ['id', 'u32']]);
export const iommu_ioas_alloc = new Struct('iommu_ioas_alloc', [['size', 'u32'], ['flags', 'u32'], ['out_ioas_id', 'u32']]);
export const iommu_ioas_map = new Struct('iommu_ioas_map', [
  ['size', 'u32'], ['flags', 'u32'], ['ioas_id', 'u32'], ['__reserved', 'u32'], ['user_va', 'u64'], ['length', 'u64'], ['iova', 'u64'],
]);
export const iommu_ioas_unmap = new Struct('iommu_ioas_unmap', [['size', 'u32'], ['ioas_id', 'u32'], ['iova', 'u64'], ['length', 'u64']]);

// ---- linux/pci_regs.h: the config-space offsets read through VFIO (mdev hand-over) ----

export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_CLASS_REVISION = 0x08;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;

// ---- what the header check compares ----

/** Every request code used, by its C name (checked against the kernel headers). */
export const UAPI_IOCTLS: Readonly<Record<string, number>> = {
  VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU, VFIO_GROUP_GET_STATUS, VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER, VFIO_GROUP_GET_DEVICE_FD, VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_GET_IRQ_INFO, VFIO_DEVICE_SET_IRQS, VFIO_DEVICE_RESET, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA, VFIO_DEVICE_BIND_IOMMUFD, VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  VFIO_DEVICE_DETACH_IOMMUFD_PT, IOMMU_DESTROY, IOMMU_IOAS_ALLOC, IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP,
};

/** Every flag, index and other constant used, by its C name (checked against the kernel headers). */
export const UAPI_CONSTANTS: Readonly<Record<string, number>> = {
  VFIO_API_VERSION, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, VFIO_NOIOMMU_IOMMU, VFIO_BASE,
  VFIO_GROUP_FLAGS_VIABLE, VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_DEVICE_FLAGS_RESET, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_CAPS,
  VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_NORESIZE,
  VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_BAR3_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX, VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_VGA_REGION_INDEX, VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX, VFIO_PCI_NUM_IRQS,
  IOMMUFD_CMD_DESTROY, IOMMUFD_CMD_IOAS_ALLOC, IOMMUFD_CMD_IOAS_MAP, IOMMUFD_CMD_IOAS_UNMAP,
  IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE,
  PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_CLASS_REVISION, PCI_SUBSYSTEM_VENDOR_ID, PCI_SUBSYSTEM_ID,
};

/** String constants used, by C name. */
export const UAPI_STRINGS: Readonly<Record<string, string>> = { VFIO_DEVICE_API_PCI_STRING };

/** Every struct layout used (checked: sizeof and offsetof of every field). */
export const UAPI_STRUCTS: ReadonlyArray<Struct<string>> = [
  vfio_info_cap_header, vfio_group_status, vfio_device_info, vfio_region_info, vfio_region_sparse_mmap_area,
  vfio_region_info_cap_sparse_mmap, vfio_region_info_cap_type, vfio_irq_info, vfio_irq_set, vfio_iommu_type1_info,
  vfio_iova_range, vfio_iommu_type1_info_cap_iova_range, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
  vfio_device_bind_iommufd, vfio_device_attach_iommufd_pt, vfio_device_detach_iommufd_pt,
  iommu_destroy, iommu_ioas_alloc, iommu_ioas_map, iommu_ioas_unmap,
];

// ---- capability chains ----

/** One capability of a VFIO info chain: its id, version, and where its bytes start in the buffer. */
export interface InfoCap {
  id: number;
  version: number;
  /** offset of the capability header inside the info buffer */
  offset: number;
}

/**
 * Walk a VFIO capability chain (struct vfio_info_cap_header, `next` offsets relative to the start of
 * the info struct, 0 ends it). Throws when an offset leaves the buffer or the chain loops.
 */
export function walkCaps(buf: Uint8Array, first: number, what: string): InfoCap[] {
  const dv = view(buf);
  const caps: InfoCap[] = [];
  const seen = new Set<number>();
  for (let off = first; off !== 0; ) {
    if (seen.has(off)) throw new Error(`${what}: capability chain loops at offset ${off}`);
    seen.add(off);
    if (off < 0 || off + vfio_info_cap_header.size > buf.byteLength) {
      throw new Error(`${what}: capability at offset ${off} lies outside the ${buf.byteLength}-byte info buffer`);
    }
    caps.push({ id: vfio_info_cap_header.get(dv, 'id', off), version: vfio_info_cap_header.get(dv, 'version', off), offset: off });
    off = vfio_info_cap_header.get(dv, 'next', off);
  }
  return caps;
}
