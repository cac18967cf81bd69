/**
 * BAR access for drivers: one contiguous BAR whatever VFIO allows to be mapped.
 *
 * The whole BAR range is reserved in the address space (an anonymous PROT_NONE mapping), and only
 * the areas VFIO allows (the whole region, or the VFIO_REGION_INFO_CAP_SPARSE_MMAP areas) are
 * mapped over the reservation with MAP_FIXED. MMIO reads and writes at an offset use the mapping
 * where it exists (one load or store of exactly the access width, through Atomics so it is never
 * merged, split or elided) and pread/pwrite on the device at the region offset elsewhere.
 * isMapped(off, len) lets a driver keep a fast path on mapped doorbells.
 */
import * as os from '../os/libc.js';
import { pciRegionName, type SparseArea, type VfioDevice } from './device.js';
import { log } from '../log.js';

const PAGE = 4096;

/** How to open a BAR. */
export interface BarOptions {
  /** false: never mmap, every access goes through readRegion/writeRegion (default true) */
  mmap?: boolean;
}

/** One BAR of a VFIO device with an MMIO API (read/write 8/16/32/64 at a byte offset). */
export class Bar {
  /** the region index (VFIO_PCI_BARn_REGION_INDEX) */
  readonly index: number;
  /** BAR size in bytes */
  readonly size: number;
  /** base address of the reserved range (0n when nothing is mapped) */
  readonly va: bigint;
  /** the areas that are mapped (merged when adjacent), sorted by offset */
  readonly mapped: readonly SparseArea[];
  private readonly dev: VfioDevice;
  private readonly reserved: number;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly u64: BigUint64Array;
  /** flat [start0, end0, start1, end1, ...] for the hot lookup */
  private readonly ranges: Float64Array;
  private readonly allMapped: boolean;
  private readonly scratch = new Uint8Array(8);
  private readonly scratchDv = new DataView(this.scratch.buffer);
  private closed = false;

  private constructor(dev: VfioDevice, index: number, size: number, va: bigint, reserved: number, mapped: SparseArea[]) {
    this.dev = dev;
    this.index = index;
    this.size = size;
    this.va = va;
    this.reserved = reserved;
    this.mapped = mapped;
    const buf = reserved > 0 ? os.viewOf(va, reserved) : new ArrayBuffer(8);
    this.u8 = new Uint8Array(buf);
    this.u16 = new Uint16Array(buf, 0, buf.byteLength >> 1);
    this.u32 = new Uint32Array(buf, 0, buf.byteLength >> 2);
    this.u64 = new BigUint64Array(buf, 0, buf.byteLength >> 3);
    this.ranges = new Float64Array(mapped.flatMap((a) => [a.offset, a.offset + a.size]));
    this.allMapped = mapped.length === 1 && mapped[0].offset === 0 && mapped[0].size >= size;
  }

  /**
   * Open BAR index of dev: reserve its range and map what may be mapped. Areas that are not
   * page-aligned are left to pread/pwrite. Throws when the BAR does not exist (size 0).
   */
  static open(dev: VfioDevice, index: number, opts: BarOptions = {}): Bar {
    const r = dev.regionInfo(index);
    const what = `${dev.name} ${pciRegionName(index)}`;
    if (r.size === 0) throw new Error(`${what} does not exist (region size 0)`);
    const wanted: SparseArea[] = opts.mmap === false || !r.mappable ? [] : (r.sparse ?? [{ offset: 0, size: r.size }]);
    const areas = mergeAreas(wanted.filter((a) => {
      const ok = a.offset % PAGE === 0 && a.size % PAGE === 0;
      if (!ok) log('debug', 'vfio', `${what}: area [0x${a.offset.toString(16)}, +0x${a.size.toString(16)}) is not page-aligned; accessed with pread/pwrite`);
      return ok;
    }));
    if (areas.length === 0) return new Bar(dev, index, r.size, 0n, 0, []);
    const reserved = Math.ceil(r.size / PAGE) * PAGE;
    if (reserved > 0x1_0000_0000) throw new Error(`${what}: ${r.size} bytes is more than the 4 GiB one view can cover; open it with { mmap: false }`);
    const va = os.mmap(0n, reserved, os.PROT_NONE, os.MAP_PRIVATE | os.MAP_ANONYMOUS | os.MAP_NORESERVE, -1, 0);
    try {
      for (const a of areas) dev.mmapRegion(index, a.offset, a.size, { fixedAt: va + BigInt(a.offset) });
    } catch (e) {
      os.munmap(va, reserved);
      throw e;
    }
    log('debug', 'vfio', `${what}: ${r.size} bytes at 0x${va.toString(16)}, mapped ${areas.map((a) => `[0x${a.offset.toString(16)}, +0x${a.size.toString(16)})`).join(' ')}`);
    return new Bar(dev, index, r.size, va, reserved, areas);
  }

  /** Whether [off, off+len) lies entirely inside one mapped area (loads and stores go to memory). */
  isMapped(off: number, len: number): boolean {
    if (this.allMapped) return off >= 0 && off + len <= this.size;
    const r = this.ranges;
    for (let i = 0; i < r.length; i += 2) if (off >= r[i] && off + len <= r[i + 1]) return true;
    return false;
  }

  /** Read 8 bits at off. */
  read8(off: number): number {
    this.check(off, 1);
    if (this.isMapped(off, 1)) return Atomics.load(this.u8, off);
    this.dev.readRegion(this.index, off, this.scratch, 1);
    return this.scratch[0];
  }

  /** Read 16 bits (little endian) at off (2-byte aligned). */
  read16(off: number): number {
    this.check(off, 2);
    if (this.isMapped(off, 2)) return Atomics.load(this.u16, off >> 1);
    this.dev.readRegion(this.index, off, this.scratch, 2);
    return this.scratchDv.getUint16(0, true);
  }

  /** Read 32 bits (little endian) at off (4-byte aligned). */
  read32(off: number): number {
    this.check(off, 4);
    if (this.isMapped(off, 4)) return Atomics.load(this.u32, off >> 2);
    this.dev.readRegion(this.index, off, this.scratch, 4);
    return this.scratchDv.getUint32(0, true);
  }

  /** Read 64 bits (little endian) at off (8-byte aligned). */
  read64(off: number): bigint {
    this.check(off, 8);
    if (this.isMapped(off, 8)) return Atomics.load(this.u64, off >> 3);
    this.dev.readRegion(this.index, off, this.scratch, 8);
    return this.scratchDv.getBigUint64(0, true);
  }

  /** Write 8 bits at off. */
  write8(off: number, v: number): void {
    this.check(off, 1);
    if (this.isMapped(off, 1)) { Atomics.store(this.u8, off, v); return; }
    this.scratch[0] = v;
    this.dev.writeRegion(this.index, off, this.scratch, 1);
  }

  /** Write 16 bits (little endian) at off (2-byte aligned). */
  write16(off: number, v: number): void {
    this.check(off, 2);
    if (this.isMapped(off, 2)) { Atomics.store(this.u16, off >> 1, v); return; }
    this.scratchDv.setUint16(0, v, true);
    this.dev.writeRegion(this.index, off, this.scratch, 2);
  }

  /** Write 32 bits (little endian) at off (4-byte aligned). */
  write32(off: number, v: number): void {
    this.check(off, 4);
    if (this.isMapped(off, 4)) { Atomics.store(this.u32, off >> 2, v); return; }
    this.scratchDv.setUint32(0, v >>> 0, true);
    this.dev.writeRegion(this.index, off, this.scratch, 4);
  }

  /** Write 64 bits (little endian) at off (8-byte aligned). */
  write64(off: number, v: bigint): void {
    this.check(off, 8);
    if (this.isMapped(off, 8)) { Atomics.store(this.u64, off >> 3, BigInt.asUintN(64, v)); return; }
    this.scratchDv.setBigUint64(0, BigInt.asUintN(64, v), true);
    this.dev.writeRegion(this.index, off, this.scratch, 8);
  }

  /** Plain data for a worker thread's MappedBar (the mapping is process-wide; only its address travels). */
  data(): BarData {
    return { name: `${this.dev.name} ${pciRegionName(this.index)}`, va: this.va, size: this.size, mapped: this.mapped.map((a) => ({ ...a })) };
  }

  /** Unmap the BAR (the whole reservation, mapped areas included). Views over it must be gone. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.reserved > 0) os.munmap(this.va, this.reserved);
  }

  private check(off: number, width: number): void {
    if (this.closed) throw new Error(`${this.dev.name} ${pciRegionName(this.index)}: the BAR is closed`);
    if (!(off >= 0 && off + width <= this.size) || off % width !== 0) {
      throw new RangeError(`${this.dev.name} ${pciRegionName(this.index)}: ${width * 8}-bit access at 0x${off.toString(16)} is ${off % width !== 0 ? 'misaligned' : `outside the BAR (size 0x${this.size.toString(16)})`}`);
    }
  }
}

/** Sort areas and merge the ones that touch or overlap. */
export function mergeAreas(areas: readonly SparseArea[]): SparseArea[] {
  const sorted = [...areas].sort((a, b) => a.offset - b.offset);
  const out: SparseArea[] = [];
  for (const a of sorted) {
    const last = out[out.length - 1];
    if (last && a.offset <= last.offset + last.size) last.size = Math.max(last.size, a.offset + a.size - last.offset);
    else out.push({ ...a });
  }
  return out;
}

/** What a worker needs to reach the mapped parts of a BAR (see Bar.data()). */
export interface BarData {
  /** for messages, e.g. "0000:01:00.0 BAR0" */
  name: string;
  va: bigint;
  size: number;
  mapped: SparseArea[];
}

/**
 * The mapped parts of a BAR, rebuilt from BarData in any thread (a PMD's data half ringing
 * doorbells). Only mapped offsets are accessible: the constructor checks each offset the driver
 * names with `check`, so the accessors themselves do no lookup.
 */
export class MappedBar {
  readonly name: string;
  private readonly u32: Uint32Array;
  private readonly u16: Uint16Array;
  private readonly u8: Uint8Array;
  private readonly mapped: readonly SparseArea[];

  /** Views over the BAR's reservation (nothing is mapped here: the BAR must stay open). */
  constructor(d: BarData) {
    if (d.va === 0n || d.mapped.length === 0) throw new Error(`${d.name}: nothing of the BAR is mapped; use the Bar's read/write methods on the main thread`);
    const buf = os.viewOf(d.va, Math.ceil(d.size / PAGE) * PAGE);
    this.name = d.name;
    this.u8 = new Uint8Array(buf);
    this.u16 = new Uint16Array(buf, 0, buf.byteLength >> 1);
    this.u32 = new Uint32Array(buf, 0, buf.byteLength >> 2);
    this.mapped = d.mapped;
  }

  /** Throw unless [off, off+len) is mapped: call once per register at set-up, not per access. */
  check(off: number, len: number): void {
    if (!this.mapped.some((a) => off >= a.offset && off + len <= a.offset + a.size)) {
      throw new RangeError(`${this.name}: [0x${off.toString(16)}, +${len}) is not mapped; it needs the pread/pwrite path (Bar on the main thread)`);
    }
  }

  /** 32-bit load at a checked, 4-byte aligned offset. */
  read32(off: number): number {
    return Atomics.load(this.u32, off >> 2);
  }

  /** 32-bit store at a checked, 4-byte aligned offset (a doorbell). */
  write32(off: number, v: number): void {
    Atomics.store(this.u32, off >> 2, v);
  }

  /** 16-bit load at a checked, 2-byte aligned offset. */
  read16(off: number): number {
    return Atomics.load(this.u16, off >> 1);
  }

  /** 16-bit store at a checked, 2-byte aligned offset. */
  write16(off: number, v: number): void {
    Atomics.store(this.u16, off >> 1, v);
  }

  /** 8-bit store at a checked offset. */
  write8(off: number, v: number): void {
    Atomics.store(this.u8, off, v);
  }
}
