/**
 * BAR access for drivers: one contiguous BAR whatever VFIO allows to be mapped.
 *
 * The whole BAR range is reserved in the address space (an anonymous PROT_NONE mapping), and only
 * the areas VFIO allows (the whole region, or the VFIO_REGION_INFO_CAP_SPARSE_MMAP areas) are
 * mapped over the reservation with MAP_FIXED. The reservation is seen through views of at most
 * 4 GiB each (src/os/pieces.ts), so a BAR over 4 GiB is mapped like any other. MMIO reads and writes
 * at an offset use the mapping where it exists (one load or store of exactly the access width,
 * through Atomics so it is never merged, split or elided) and pread/pwrite on the device at the
 * region offset elsewhere. read/readInto/write take any length at any offset: the mapped parts are
 * copied through the mapping and each unmapped part goes through the device's readRegion/writeRegion
 * (pread/pwrite, or vfio-user REGION_READ/WRITE), so a driver never chooses. isMapped(off, len) lets
 * a driver keep a fast path on mapped doorbells.
 *
 * Other threads (a PMD's data half on an lcore) rebuild a MappedBar from Bar.data(): plain data
 * with the address of the mapping and the BarIo the device hands out (VfioDevice.workerIo) saying
 * how to reach what is not mapped: pwrite/pread on the kernel VFIO device fd, or messages written
 * by a module the device names (vfio-user: a no-reply REGION_WRITE, lib/vfio-user/reg.ts), which
 * MappedBar.open loads in that thread. A driver asks it for one MmioReg per register at set-up
 * (reg(off, width)): a load/store on the mapping where the register is mapped, the fallback
 * elsewhere, decided once, so no access looks anything up.
 */
import * as os from '../os/libc.js';
import { pciRegionName, type BarIo, type MessageRegModule, type MmioReg, type MmioVia, type SparseArea, type VfioDevice } from './device.js';

export type { BarIo, MessageRegModule, MmioReg, MmioVia };
import { log } from '../log.js';
import { MAX_VIEW_BYTES, PiecedView } from '../os/pieces.js';

const PAGE = 4096;

/** How to open a BAR. */
export interface BarOptions {
  /** false: never mmap, every access goes through readRegion/writeRegion (default true) */
  mmap?: boolean;
  /**
   * Areas left unmapped even where VFIO allows mmap (page-aligned): reached with
   * readRegion/writeRegion, and from workers through BarData.io, as if VFIO had not offered them
   * (a driver's devarg, to run on a sparse BAR where the device's BAR is mappable whole).
   */
  unmap?: readonly SparseArea[];
  /**
   * Internal: bytes per view piece (default 4 GiB, the most one view covers; a multiple of 4096).
   * Tests lower it to exercise BARs seen through several pieces without mapping 4 GiB.
   */
  pieceSize?: number;
}

/** One BAR of a VFIO device with an MMIO API: 8/16/32/64-bit accessors, and reads/writes of any length at any offset. */
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
  /** views over the reservation (null when nothing is mapped) */
  private readonly view: PiecedView | null;
  /** flat [start0, end0, start1, end1, ...] for the hot lookup */
  private readonly ranges: Float64Array;
  private readonly allMapped: boolean;
  private readonly scratch = new Uint8Array(8);
  private readonly scratchDv = new DataView(this.scratch.buffer);
  private closed = false;

  private constructor(dev: VfioDevice, index: number, size: number, va: bigint, reserved: number, mapped: SparseArea[], pieceSize: number) {
    this.dev = dev;
    this.index = index;
    this.size = size;
    this.va = va;
    this.reserved = reserved;
    this.mapped = mapped;
    this.view = reserved > 0 ? new PiecedView(va, reserved, pieceSize) : null;
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
    for (const u of opts.unmap ?? []) {
      const area = `${what}: the area to leave unmapped [0x${u.offset.toString(16)}, +0x${u.size.toString(16)})`;
      if (u.offset % PAGE !== 0 || u.size % PAGE !== 0 || u.size <= 0) throw new RangeError(`${area} is not whole 4 KiB pages`);
      if (u.offset + u.size > Math.ceil(r.size / PAGE) * PAGE) throw new RangeError(`${area} lies outside the BAR (size 0x${r.size.toString(16)})`);
    }
    const offered: SparseArea[] = opts.mmap === false || !r.mappable ? [] : (r.sparse ?? [{ offset: 0, size: r.size }]);
    const wanted = opts.unmap ? subtractAreas(offered, opts.unmap) : offered;
    const areas = mergeAreas(wanted.filter((a) => {
      const ok = a.offset % PAGE === 0 && a.size % PAGE === 0;
      if (!ok) log('debug', 'vfio', `${what}: area [0x${a.offset.toString(16)}, +0x${a.size.toString(16)}) is not page-aligned; accessed with pread/pwrite`);
      return ok;
    }));
    const pieceSize = opts.pieceSize ?? MAX_VIEW_BYTES;
    if (areas.length === 0) return new Bar(dev, index, r.size, 0n, 0, [], pieceSize);
    const reserved = Math.ceil(r.size / PAGE) * PAGE;
    const va = os.mmap(0n, reserved, os.PROT_NONE, os.MAP_PRIVATE | os.MAP_ANONYMOUS | os.MAP_NORESERVE, -1, 0);
    try {
      for (const a of areas) dev.mmapRegion(index, a.offset, a.size, { fixedAt: va + BigInt(a.offset) });
      const bar = new Bar(dev, index, r.size, va, reserved, areas, pieceSize);
      log('debug', 'vfio', `${what}: ${r.size} bytes at 0x${va.toString(16)} (${bar.view!.pieces.length} view piece(s)), mapped ${areas.map((a) => `[0x${a.offset.toString(16)}, +0x${a.size.toString(16)})`).join(' ')}`);
      return bar;
    } catch (e) {
      os.munmap(va, reserved);
      throw e;
    }
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
    if (this.isMapped(off, 1)) { const p = this.view!.piece(off); return Atomics.load(p.u8, off - p.start); }
    this.dev.readRegion(this.index, off, this.scratch, 1);
    return this.scratch[0];
  }

  /** Read 16 bits (little endian) at off (2-byte aligned). */
  read16(off: number): number {
    this.check(off, 2);
    if (this.isMapped(off, 2)) { const p = this.view!.piece(off); return Atomics.load(p.u16, (off - p.start) >>> 1); }
    this.dev.readRegion(this.index, off, this.scratch, 2);
    return this.scratchDv.getUint16(0, true);
  }

  /** Read 32 bits (little endian) at off (4-byte aligned). */
  read32(off: number): number {
    this.check(off, 4);
    if (this.isMapped(off, 4)) { const p = this.view!.piece(off); return Atomics.load(p.u32, (off - p.start) >>> 2); }
    this.dev.readRegion(this.index, off, this.scratch, 4);
    return this.scratchDv.getUint32(0, true);
  }

  /** Read 64 bits (little endian) at off (8-byte aligned). */
  read64(off: number): bigint {
    this.check(off, 8);
    if (this.isMapped(off, 8)) { const p = this.view!.piece(off); return Atomics.load(p.u64, (off - p.start) >>> 3); }
    this.dev.readRegion(this.index, off, this.scratch, 8);
    return this.scratchDv.getBigUint64(0, true);
  }

  /** Write 8 bits at off. */
  write8(off: number, v: number): void {
    this.check(off, 1);
    if (this.isMapped(off, 1)) { const p = this.view!.piece(off); Atomics.store(p.u8, off - p.start, v); return; }
    this.scratch[0] = v;
    this.dev.writeRegion(this.index, off, this.scratch, 1);
  }

  /** Write 16 bits (little endian) at off (2-byte aligned). */
  write16(off: number, v: number): void {
    this.check(off, 2);
    if (this.isMapped(off, 2)) { const p = this.view!.piece(off); Atomics.store(p.u16, (off - p.start) >>> 1, v); return; }
    this.scratchDv.setUint16(0, v, true);
    this.dev.writeRegion(this.index, off, this.scratch, 2);
  }

  /** Write 32 bits (little endian) at off (4-byte aligned). */
  write32(off: number, v: number): void {
    this.check(off, 4);
    if (this.isMapped(off, 4)) { const p = this.view!.piece(off); Atomics.store(p.u32, (off - p.start) >>> 2, v); return; }
    this.scratchDv.setUint32(0, v >>> 0, true);
    this.dev.writeRegion(this.index, off, this.scratch, 4);
  }

  /** Write 64 bits (little endian) at off (8-byte aligned). */
  write64(off: number, v: bigint): void {
    this.check(off, 8);
    if (this.isMapped(off, 8)) { const p = this.view!.piece(off); Atomics.store(p.u64, (off - p.start) >>> 3, BigInt.asUintN(64, v)); return; }
    this.scratchDv.setBigUint64(0, BigInt.asUintN(64, v), true);
    this.dev.writeRegion(this.index, off, this.scratch, 8);
  }

  /** Read len bytes at off (any length, any offset): see readInto. */
  read(off: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.readInto(off, out);
    return out;
  }

  /**
   * Fill dst with the BAR's bytes from off (any length, any offset): the mapped parts are copied
   * from the mapping, each unmapped part is read with the device's readRegion (pread, or vfio-user
   * REGION_READ). Throws a RangeError naming the BAR and offset when the range leaves the BAR.
   */
  readInto(off: number, dst: Uint8Array): void {
    const len = dst.byteLength;
    this.checkRange(off, len, 'read');
    this.eachPart(off, len, (o, at, n, mapped) => {
      if (mapped) this.view!.copyOut(o, dst, at, n);
      else this.dev.readRegion(this.index, o, dst.subarray(at, at + n), n);
    });
  }

  /**
   * Write src at off (any length, any offset): the mapped parts are copied into the mapping, each
   * unmapped part is written with the device's writeRegion (pwrite, or vfio-user REGION_WRITE), in
   * address order. Throws a RangeError naming the BAR and offset when the range leaves the BAR.
   */
  write(off: number, src: Uint8Array): void {
    const len = src.byteLength;
    this.checkRange(off, len, 'write');
    this.eachPart(off, len, (o, at, n, mapped) => {
      if (mapped) this.view!.copyIn(o, src, at, n);
      else this.dev.writeRegion(this.index, o, src.subarray(at, at + n), n);
    });
  }

  /**
   * Plain data for a worker thread's MappedBar: the mapping is process-wide, so only its address
   * travels, with how the device reaches the unmapped parts from any thread (null when its back end
   * offers no such path).
   */
  data(): BarData {
    const io = this.dev.workerIo(this.index);
    return {
      name: `${this.dev.name} ${pciRegionName(this.index)}`, va: this.va, size: this.size, mapped: this.mapped.map((a) => ({ ...a })), io,
      pieceSize: this.view?.pieceSize ?? MAX_VIEW_BYTES,
    };
  }

  /** Unmap the BAR (the whole reservation, mapped areas included). Views over it must be gone. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.reserved > 0) os.munmap(this.va, this.reserved);
  }

  /** Call fn for the parts of [off, off+len) in address order: (offset, index in the caller's buffer, length, mapped). */
  private eachPart(off: number, len: number, fn: (o: number, at: number, n: number, mapped: boolean) => void): void {
    const end = off + len;
    let cur = off;
    for (const a of this.mapped) {
      if (cur >= end) break;
      const aEnd = a.offset + a.size;
      if (aEnd <= cur) continue;
      if (a.offset >= end) break;
      if (a.offset > cur) { fn(cur, cur - off, a.offset - cur, false); cur = a.offset; }
      const n = Math.min(end, aEnd) - cur;
      fn(cur, cur - off, n, true);
      cur += n;
    }
    if (cur < end) fn(cur, cur - off, end - cur, false);
  }

  private checkRange(off: number, len: number, what: 'read' | 'write'): void {
    const name = `${this.dev.name} ${pciRegionName(this.index)}`;
    if (this.closed) throw new Error(`${name}: the BAR is closed`);
    if (!(Number.isSafeInteger(off) && Number.isSafeInteger(len) && off >= 0 && len >= 0 && off + len <= this.size)) {
      throw new RangeError(`${name}: ${len}-byte ${what} at 0x${off.toString(16)} is outside the BAR (size 0x${this.size.toString(16)}); it ends at 0x${(off + len).toString(16)}`);
    }
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

/** The parts of areas (each kept apart) outside every area of holes. */
export function subtractAreas(areas: readonly SparseArea[], holes: readonly SparseArea[]): SparseArea[] {
  let out = areas.map((a) => ({ ...a }));
  for (const h of mergeAreas(holes)) {
    const hEnd = h.offset + h.size;
    out = out.flatMap((a) => {
      const aEnd = a.offset + a.size;
      if (hEnd <= a.offset || h.offset >= aEnd) return [a];
      const parts: SparseArea[] = [];
      if (a.offset < h.offset) parts.push({ offset: a.offset, size: h.offset - a.offset });
      if (hEnd < aEnd) parts.push({ offset: hEnd, size: aEnd - hEnd });
      return parts;
    });
  }
  return out;
}

/** What a worker needs to reach a BAR (see Bar.data()). */
export interface BarData {
  /** for messages, e.g. "0000:01:00.0 BAR0" */
  name: string;
  va: bigint;
  size: number;
  mapped: SparseArea[];
  /** how the unmapped parts are reached (absent or null: not from a worker) */
  io?: BarIo | null;
  /** bytes per view piece (absent: 4 GiB) */
  pieceSize?: number;
}

class MemReg8 implements MmioReg {
  readonly mapped = true;
  readonly via = 'mmio';
  constructor(private readonly u8: Uint8Array, private readonly i: number) {}
  read(): number { return Atomics.load(this.u8, this.i); }
  write(v: number): void { Atomics.store(this.u8, this.i, v); }
}

class MemReg16 implements MmioReg {
  readonly mapped = true;
  readonly via = 'mmio';
  constructor(private readonly u16: Uint16Array, private readonly i: number) {}
  read(): number { return Atomics.load(this.u16, this.i); }
  write(v: number): void { Atomics.store(this.u16, this.i, v); }
}

class MemReg32 implements MmioReg {
  readonly mapped = true;
  readonly via = 'mmio';
  constructor(private readonly u32: Uint32Array, private readonly i: number) {}
  read(): number { return Atomics.load(this.u32, this.i); }
  write(v: number): void { Atomics.store(this.u32, this.i, v); }
}

/** Little-endian put/get of width bytes at at (no DataView per access). */
function putLe(b: Uint8Array, at: number, width: number, v: number): void {
  b[at] = v;
  if (width > 1) b[at + 1] = v >>> 8;
  if (width > 2) { b[at + 2] = v >>> 16; b[at + 3] = v >>> 24; }
}
function getLe(b: Uint8Array, width: number): number {
  return width === 1 ? b[0] : width === 2 ? b[0] | (b[1] << 8) : (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
}

/** A register reached with pwrite/pread on the kernel VFIO device fd (offset precomputed). */
class FileReg implements MmioReg {
  readonly mapped = false;
  readonly via = 'pwrite';
  private readonly buf: Uint8Array;
  constructor(private readonly what: string, private readonly fd: number, private readonly at: bigint, private readonly width: number) {
    this.buf = new Uint8Array(width);
  }
  read(): number {
    const n = os.preadNoThrow(this.fd, this.buf, this.width, this.at);
    if (n !== this.width) throw new Error(`${this.what}: pread of the register failed (${n < 0 ? os.errnoName(-n) : `${n} of ${this.width} bytes`}); is the device still open?`);
    return getLe(this.buf, this.width);
  }
  write(v: number): void {
    putLe(this.buf, 0, this.width, v);
    const n = os.pwriteNoThrow(this.fd, this.buf, this.width, this.at);
    if (n !== this.width) throw new Error(`${this.what}: pwrite of the register failed (${n < 0 ? os.errnoName(-n) : `${n} of ${this.width} bytes`}); is the device still open?`);
  }
}

/**
 * A BAR rebuilt from BarData in any thread (a PMD's data half ringing doorbells): MappedBar.open,
 * which loads what BarData.io names. reg(off, width) gives one register, mapped or through
 * BarData.io, decided once at set-up. The older check()/readN()/writeN() reach mapped offsets only
 * (check them once, then access without lookup).
 */
export class MappedBar {
  readonly name: string;
  private readonly view: PiecedView | null;
  private readonly mapped: readonly SparseArea[];
  private readonly size: number;
  private readonly io: BarIo | null;
  private readonly messages: MessageRegModule | null;

  /**
   * Views over the BAR's reservation (nothing is mapped here: the BAR must stay open). messages:
   * the module a BarIo of kind 'message' names, loaded (MappedBar.open does it).
   */
  constructor(d: BarData, messages?: MessageRegModule) {
    this.io = d.io ?? null;
    this.messages = messages ?? null;
    if ((d.va === 0n || d.mapped.length === 0) && !this.io) throw new Error(`${d.name}: nothing of the BAR is mapped and its VFIO back end gives no other path from a worker; use the Bar's read/write methods on the main thread`);
    this.view = d.va !== 0n && d.mapped.length > 0 ? new PiecedView(d.va, Math.ceil(d.size / PAGE) * PAGE, d.pieceSize ?? MAX_VIEW_BYTES) : null;
    this.name = d.name;
    this.size = d.size;
    this.mapped = d.va !== 0n ? d.mapped : [];
  }

  /** Rebuild a BAR from d in this thread, loading the module its BarIo names (kind 'message'). */
  static async open(d: BarData): Promise<MappedBar> {
    const io = d.io;
    if (io?.kind !== 'message') return new MappedBar(d);
    let mod: Partial<MessageRegModule>;
    try {
      mod = (await import(io.module)) as Partial<MessageRegModule>;
    } catch (e) {
      throw new Error(`${d.name}: cannot load ${io.module}, which writes its ${io.transport} registers: ${(e as Error).message}`);
    }
    if (typeof mod.messageReg !== 'function') throw new Error(`${d.name}: ${io.module} exports no messageReg(); it cannot write ${io.transport} registers`);
    return new MappedBar(d, mod as MessageRegModule);
  }

  /** Whether [off, off+len) is inside one mapped area. */
  isMapped(off: number, len: number): boolean {
    return this.mapped.some((a) => off >= a.offset && off + len <= a.offset + a.size);
  }

  /**
   * The register of width bytes (1, 2 or 4) at off: a load/store on the mapping when mapped, else
   * the BarIo fallback. Throws naming the register when neither can reach it (or, with needRead,
   * when it cannot be read from here: vfio-user registers that are not mapped are write-only).
   */
  reg(off: number, width: 1 | 2 | 4, needRead = false): MmioReg {
    const what = `${this.name}+0x${off.toString(16)}`;
    if (!(off >= 0 && off + width <= this.size) || off % width !== 0) {
      throw new RangeError(`${what}: a ${width * 8}-bit register ${off % width !== 0 ? 'must be aligned' : `lies outside the BAR (size 0x${this.size.toString(16)})`}`);
    }
    if (this.isMapped(off, width)) {
      const p = this.view!.piece(off), o = off - p.start;
      return width === 1 ? new MemReg8(p.u8, o) : width === 2 ? new MemReg16(p.u16, o >>> 1) : new MemReg32(p.u32, o >>> 2);
    }
    const io = this.io;
    if (!io) throw new Error(`${what} is not mapped and the VFIO back end offers no path from a worker; map it, or access it on the main thread`);
    if (io.kind === 'file') {
      if (!io.writable || (needRead && !io.readable)) throw new Error(`${what}: the region is not ${io.writable ? 'readable' : 'writable'}`);
      return new FileReg(what, io.fd, io.offset + BigInt(off), width);
    }
    if (!this.messages) throw new Error(`${what} is written by ${io.transport} messages from ${io.module}, which is not loaded here: rebuild the BAR with await MappedBar.open(data)`);
    return this.messages.messageReg(what, io.arg, off, width, needRead);
  }

  /** Throw unless [off, off+len) is mapped: call once per register at set-up, not per access. */
  check(off: number, len: number): void {
    if (!this.isMapped(off, len)) {
      throw new RangeError(`${this.name}: [0x${off.toString(16)}, +${len}) is not mapped; reach it through reg(off, width), which falls back to pread/pwrite or messages`);
    }
  }

  /** 32-bit load at a checked, 4-byte aligned offset. */
  read32(off: number): number {
    const p = this.view!.piece(off);
    return Atomics.load(p.u32, (off - p.start) >>> 2);
  }

  /** 32-bit store at a checked, 4-byte aligned offset (a doorbell). */
  write32(off: number, v: number): void {
    const p = this.view!.piece(off);
    Atomics.store(p.u32, (off - p.start) >>> 2, v);
  }

  /** 16-bit load at a checked, 2-byte aligned offset. */
  read16(off: number): number {
    const p = this.view!.piece(off);
    return Atomics.load(p.u16, (off - p.start) >>> 1);
  }

  /** 16-bit store at a checked, 2-byte aligned offset. */
  write16(off: number, v: number): void {
    const p = this.view!.piece(off);
    Atomics.store(p.u16, (off - p.start) >>> 1, v);
  }

  /** 8-bit store at a checked offset. */
  write8(off: number, v: number): void {
    const p = this.view!.piece(off);
    Atomics.store(p.u8, off - p.start, v);
  }
}
