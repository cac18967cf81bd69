/**
 * emudev: the provider side of a PCI device emulated in user space. A device declares its PCI
 * identity, its BARs (read/write callbacks for trapped registers, and/or shared-memory areas backed
 * by a memfd that the client may mmap, e.g. doorbells that the device polls), and its IRQs. A
 * transport (lib/vfio-user/server.ts) exposes it to one client at a time and feeds it the client's
 * DMA memory table; the device translates IOVAs to local views with bounds checks (memory the
 * client sent by fd) or reads and writes client memory through the transport's messages (memory
 * sent without fd).
 *
 * Everything here runs on the server process's main thread; the transport calls it synchronously,
 * so a DMA_UNMAP can never interleave with a synchronous use of a view. Views returned by
 * translate() must not be kept across an await (the client may unmap in between). A device's poll
 * loop runs on an lcore through the data plane (dataplane.ts, `device.plane`): the DMA and IRQ
 * tables are shared with it, and every change to them pauses it first.
 *
 * Events (device.events): 'dma-map' (DmaRegion), 'dma-unmap' (DmaRegion), 'irqs' (index),
 * 'reset', 'connect', 'disconnect', 'region-write' (index, offset, length).
 */
import { EventEmitter } from 'node:events';
import { fstatSync } from 'node:fs';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import type { SparseArea } from '../../src/iommu/device.js';
import { ProtocolError, DMA_FLAG_READ, DMA_FLAG_WRITE, type IrqSet, type RegionDescription } from '../vfio-user/protocol.js';
import { DataPlaneControl } from './dataplane.js';

const PAGE = 4096;
const E = os.E;

/** PCI identity written into config space. */
export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** 24-bit class code (base class, sub class, prog-if) */
  classCode: number;
  revision?: number;
}

/** One BAR of an emulated device. */
export interface EmuBarSpec {
  /** 0..5 */
  index: number;
  /** bytes: a power of two, at least 4096 */
  size: number;
  /** page-aligned areas backed by shared memory that the client may mmap (whole BAR: one area) */
  shared?: SparseArea[];
  /** read len bytes at off (outside shared areas) into buf */
  read?: (off: number, buf: Uint8Array) => void;
  /** write data at off (outside shared areas) */
  write?: (off: number, data: Uint8Array) => void;
}

/** One IRQ index of an emulated device (VFIO_PCI_*_IRQ_INDEX). */
export interface EmuIrqSpec {
  index: number;
  count: number;
}

/** A PCI capability in config space (the list is built from 0x40 upwards, in this order). */
export interface EmuCapability {
  /** capability id (0x09 vendor specific, 0x11 MSI-X, ...) */
  id: number;
  /** the bytes after the id and next-pointer bytes */
  body: Uint8Array;
  /** bits of body the driver may write (default: none) */
  writeMask?: Uint8Array;
  /**
   * Called before a config-space read of bytes of this capability returns them, so a capability
   * whose bytes are a window onto device state (virtio's PCI_CFG) can refresh them first. off and
   * len: the part read, relative to the capability's first byte (its id); cap: the capability's
   * live bytes in config space (id first), which the hook may change. body is only the value the
   * list starts with (and gets back at every device reset).
   */
  onRead?: (off: number, len: number, cap: Uint8Array) => void;
  /**
   * Called after a config-space write touching this capability has landed (through writeMask).
   * off: where the written part starts, relative to the capability's id; data: what the driver
   * wrote there (before masking); cap: the capability's live bytes, as in onRead.
   */
  onWrite?: (off: number, data: Uint8Array, cap: Uint8Array) => void;
}

/** What a device provider declares. */
export interface EmuDeviceSpec {
  name: string;
  pci: PciIdentity;
  bars: EmuBarSpec[];
  irqs: EmuIrqSpec[];
  /** PCI capabilities (the status register's capability-list bit is set when there are any) */
  capabilities?: EmuCapability[];
  /** called by reset() (device-level reset: registers back to their defaults) */
  onReset?: () => void;
}

/** One entry of the client's DMA memory table. */
export interface DmaRegion {
  iova: bigint;
  len: number;
  /** DMA_FLAG_READ | DMA_FLAG_WRITE */
  flags: number;
  /** local mapping of the client's memory (fd path), 0n when the client sent no fd */
  va: bigint;
}

/** How the transport reaches client memory that was mapped without fd (DMA_READ/WRITE messages). */
export interface DmaMessagePath {
  read(iova: bigint, len: number): Promise<Uint8Array>;
  write(iova: bigint, data: Uint8Array): Promise<void>;
}

interface BarState {
  spec: EmuBarSpec;
  memfd: number;
  va: bigint;
  mem: Uint8Array | null;
  whole: boolean;
}

/** BAR register type bits: 32-bit memory, not prefetchable */
const BAR_MEM32 = 0;

/** An emulated PCI device: config space, BARs, IRQs, DMA table. */
export class EmuDevice {
  readonly name: string;
  readonly spec: EmuDeviceSpec;
  /** events: see the module comment */
  readonly events = new EventEmitter();
  /** the 256-byte type-0 config space */
  readonly config = new Uint8Array(256);
  private maxMaps = 1024;
  /** set by the transport while a client is connected */
  messagePath: DmaMessagePath | null = null;
  /** the DMA and IRQ tables shared with the device's lcore (see dataplane.ts) */
  readonly plane: DataPlaneControl;
  private readonly bars = new Map<number, BarState>();
  private readonly irqCounts: number[] = new Array<number>(U.VFIO_PCI_NUM_IRQS).fill(0);
  /** config-space bytes (from 0x40) the driver may write, per bit */
  private readonly configWriteMask = new Uint8Array(256);
  /** capabilities with an onRead or onWrite hook and the config-space bytes [at, end) they occupy */
  private capHooks: Array<{ cap: EmuCapability; at: number; end: number }> = [];
  private dma: DmaRegion[] = [];
  private readonly dmaViews = new Map<DmaRegion, Uint8Array>();
  private closed = false;

  /** The largest number of DMA regions accepted at once (at most 1024, the data plane's table). */
  get maxDmaMaps(): number {
    return this.maxMaps;
  }

  set maxDmaMaps(n: number) {
    this.maxMaps = Math.max(1, Math.min(n, this.plane.maxRegions));
  }

  /** Validate the spec, create the shared memory of each BAR and the config space. */
  constructor(spec: EmuDeviceSpec) {
    this.name = spec.name;
    this.spec = spec;
    for (const b of spec.bars) {
      if (!Number.isInteger(b.index) || b.index < 0 || b.index > 5) throw new RangeError(`${spec.name}: BAR index ${b.index} must be 0..5`);
      if (this.bars.has(b.index)) throw new Error(`${spec.name}: BAR${b.index} is declared twice`);
      if (b.size < PAGE || (b.size & (b.size - 1)) !== 0 || b.size > 0x4000_0000) throw new RangeError(`${spec.name}: BAR${b.index} size ${b.size} must be a power of two from 4096 to 1 GiB`);
      for (const a of b.shared ?? []) {
        if (a.offset % PAGE !== 0 || a.size % PAGE !== 0 || a.size === 0 || a.offset + a.size > b.size) {
          throw new RangeError(`${spec.name}: BAR${b.index} shared area [0x${a.offset.toString(16)}, +0x${a.size.toString(16)}) must be page-aligned and inside the BAR`);
        }
      }
      this.bars.set(b.index, { spec: b, memfd: -1, va: 0n, mem: null, whole: false });
    }
    for (const i of spec.irqs) {
      if (i.index < 0 || i.index >= U.VFIO_PCI_NUM_IRQS || i.count < 0 || i.count > 2048) throw new RangeError(`${spec.name}: IRQ index ${i.index} count ${i.count} is out of range`);
      this.irqCounts[i.index] = i.count;
    }
    this.plane = new DataPlaneControl(spec.name, this.irqCounts, this.maxMaps, { read: (iova, len) => this.dmaRead(iova, len), write: (iova, data) => this.dmaWrite(iova, data) });
    try {
      for (const st of this.bars.values()) {
        const shared = st.spec.shared ?? [];
        if (shared.length === 0) continue;
        st.memfd = os.memfdCreate(`tspmd-emu-${spec.name}-bar${st.spec.index}`, 0);
        os.ftruncate(st.memfd, st.spec.size);
        st.va = os.mmap(0n, st.spec.size, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, st.memfd, 0);
        st.mem = new Uint8Array(os.viewOf(st.va, st.spec.size));
        st.whole = shared.length === 1 && shared[0].offset === 0 && shared[0].size === st.spec.size;
      }
    } catch (e) {
      this.releaseBars();
      throw e;
    }
    this.initConfig();
  }

  /** The shared memory of a BAR (the whole BAR's bytes; only the shared areas are visible to the client's mmap). */
  barMemory(index: number): Uint8Array {
    const st = this.bars.get(index);
    if (!st || !st.mem) throw new Error(`${this.name}: BAR${index} has no shared memory`);
    return st.mem;
  }

  /** The local address of a BAR's shared memory (for a poll loop in another thread: viewOf(va, size)). */
  barAddress(index: number): bigint {
    const st = this.bars.get(index);
    if (!st || st.va === 0n) throw new Error(`${this.name}: BAR${index} has no shared memory`);
    return st.va;
  }

  /** Number of regions reported (the PCI ones: 9). */
  get numRegions(): number {
    return U.VFIO_PCI_NUM_REGIONS;
  }

  /** Number of IRQ indexes reported (the PCI ones: 5). */
  get numIrqs(): number {
    return U.VFIO_PCI_NUM_IRQS;
  }

  /** How a region is described to clients (region info + sparse areas). */
  describeRegion(index: number): RegionDescription {
    this.checkRegionIndex(index);
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) {
      return { index, flags: U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE, size: this.config.byteLength, offset: 0n, sparse: null };
    }
    const st = this.bars.get(index);
    if (!st) return { index, flags: 0, size: 0, offset: 0n, sparse: null };
    const rw = U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE;
    if (!st.mem) return { index, flags: rw, size: st.spec.size, offset: 0n, sparse: null };
    return { index, flags: rw | U.VFIO_REGION_INFO_FLAG_MMAP, size: st.spec.size, offset: 0n, sparse: st.whole ? null : (st.spec.shared ?? []).map((a) => ({ ...a })) };
  }

  /** The fd a client mmaps for a region (-1: not mappable). Owned by the device. */
  regionFd(index: number): number {
    return this.bars.get(index)?.memfd ?? -1;
  }

  /** Read count bytes of a region at off (config space, shared BAR memory or the read callback). */
  regionRead(index: number, off: bigint, count: number): Uint8Array {
    const o = this.checkAccess(index, off, count);
    const out = new Uint8Array(count);
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) {
      for (const h of this.capHooks) {
        const lo = Math.max(o, h.at), hi = Math.min(o + count, h.end);
        if (lo < hi && h.cap.onRead) h.cap.onRead(lo - h.at, hi - lo, this.config.subarray(h.at, h.end));
      }
      out.set(this.config.subarray(o, o + count));
      return out;
    }
    const st = this.bars.get(index)!;
    this.pieces(st, o, count, (start, len, shared) => {
      if (shared) out.set(st.mem!.subarray(start, start + len), start - o);
      else if (st.spec.read) st.spec.read(start, out.subarray(start - o, start - o + len));
      // no callback: reads as zero
    });
    return out;
  }

  /** Write data to a region at off. */
  regionWrite(index: number, off: bigint, data: Uint8Array): void {
    const o = this.checkAccess(index, off, data.byteLength);
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) {
      this.configWrite(o, data);
      return;
    }
    const st = this.bars.get(index)!;
    this.pieces(st, o, data.byteLength, (start, len, shared) => {
      const part = data.subarray(start - o, start - o + len);
      if (shared) st.mem!.set(part, start);
      else if (st.spec.write) st.spec.write(start, part);
    });
    this.events.emit('region-write', index, o, data.byteLength);
  }

  // ---- DMA ----

  /**
   * Add a region of client memory. With fd (>= 0) it is mapped here (the fd is closed afterwards,
   * the mapping stays until unmap); without, it is reached through the message path. Overlaps
   * fail with EEXIST, as the spec says.
   */
  dmaMap(iova: bigint, size: bigint, flags: number, fd: number, fileOffset: bigint): DmaRegion {
    const what = `${this.name}: DMA_MAP [0x${iova.toString(16)}, +0x${size.toString(16)})`;
    if (size > 0x1_0000_0000n) throw new ProtocolError(`${what}: regions larger than 4 GiB are not supported`, E.EINVAL);
    const len = Number(size);
    for (const r of this.dma) {
      if (iova < r.iova + BigInt(r.len) && r.iova < iova + size) throw new ProtocolError(`${what} overlaps the mapped [0x${r.iova.toString(16)}, +0x${r.len.toString(16)})`, E.EEXIST);
    }
    if (this.dma.length >= this.maxDmaMaps) throw new ProtocolError(`${what}: ${this.maxDmaMaps} regions are mapped already (max_dma_maps)`, E.ENOSPC);
    let va = 0n;
    if (fd >= 0) {
      if (fileOffset % BigInt(PAGE) !== 0n) throw new ProtocolError(`${what}: file offset 0x${fileOffset.toString(16)} is not page-aligned`, E.EINVAL);
      // A file shorter than the mapping would turn device accesses past its end into SIGBUS.
      let fileSize: bigint;
      try {
        const st = fstatSync(fd, { bigint: true });
        if (!st.isFile()) throw new ProtocolError(`${what}: the fd is not a memory file (memfd or hugetlbfs)`, E.EINVAL);
        fileSize = st.size;
      } catch (e) {
        if (e instanceof ProtocolError) throw e;
        throw new ProtocolError(`${what}: fstat of the client's fd failed: ${(e as Error).message}`, E.EBADF);
      }
      if (fileOffset + size > fileSize) throw new ProtocolError(`${what}: file offset 0x${fileOffset.toString(16)} + size exceeds the ${fileSize}-byte file`, E.EINVAL);
      const prot = ((flags & DMA_FLAG_READ) ? os.PROT_READ : 0) | ((flags & DMA_FLAG_WRITE) ? os.PROT_WRITE : 0);
      try {
        va = os.mmap(0n, len, prot === 0 ? os.PROT_NONE : prot, os.MAP_SHARED, fd, fileOffset);
      } catch (e) {
        throw new ProtocolError(`${what}: mmap of the client's fd failed: ${(e as Error).message}`, e instanceof os.OsError ? e.errno : E.EINVAL);
      }
    }
    const r: DmaRegion = { iova, len, flags, va };
    try {
      this.plane.quiesce(() => {
        this.dma.push(r);
        this.dma.sort((a, b) => (a.iova < b.iova ? -1 : 1));
        this.plane.publishDma(this.dma);
      });
    } catch (e) {
      // the lcore did not pause: the table is unchanged, so the new mapping is unused and can go
      if (this.dma.includes(r)) this.dma.splice(this.dma.indexOf(r), 1);
      if (va !== 0n) os.munmap(va, len);
      throw new ProtocolError(`${what}: ${(e as Error).message}`, E.EBUSY);
    }
    this.events.emit('dma-map', r);
    return r;
  }

  /** Remove the region that exactly matches [iova, +size); ENOENT when there is none. */
  dmaUnmap(iova: bigint, size: bigint): void {
    const i = this.dma.findIndex((r) => r.iova === iova && BigInt(r.len) === size);
    if (i < 0) throw new ProtocolError(`${this.name}: DMA_UNMAP [0x${iova.toString(16)}, +0x${size.toString(16)}) matches no mapped region`, E.ENOENT);
    const r = this.dma[i];
    // The lcore stops using the region before it is unmapped.
    this.plane.quiesce(() => {
      this.dma.splice(i, 1);
      this.plane.publishDma(this.dma);
      this.events.emit('dma-unmap', r);
      this.dmaViews.delete(r);
      if (r.va !== 0n) os.munmap(r.va, r.len);
    });
  }

  /** The client's DMA memory table (copies). */
  dmaRegions(): DmaRegion[] {
    return this.dma.map((r) => ({ ...r }));
  }

  /**
   * A local view of [iova, iova+len) of client memory, or null when that memory came without fd
   * (use dmaRead/dmaWrite). Throws when the range is not inside one mapped region or lacks the
   * permission. Do not keep the view across an await.
   */
  translate(iova: bigint, len: number, write: boolean): Uint8Array | null {
    const r = this.regionOf(iova, len, write);
    if (r.va === 0n) return null;
    let v = this.dmaViews.get(r);
    if (!v) {
      v = new Uint8Array(os.viewOf(r.va, r.len));
      this.dmaViews.set(r, v);
    }
    const off = Number(iova - r.iova);
    return v.subarray(off, off + len);
  }

  /** Read client memory (a copy): locally when mapped by fd, else through DMA_READ messages. */
  async dmaRead(iova: bigint, len: number): Promise<Uint8Array> {
    const v = this.translate(iova, len, false);
    if (v) return v.slice();
    if (!this.messagePath) throw new Error(`${this.name}: no client connected to read DMA memory from`);
    return this.messagePath.read(iova, len);
  }

  /** Write client memory: locally when mapped by fd, else through DMA_WRITE messages. */
  async dmaWrite(iova: bigint, data: Uint8Array): Promise<void> {
    const v = this.translate(iova, data.byteLength, true);
    if (v) { v.set(data); return; }
    if (!this.messagePath) throw new Error(`${this.name}: no client connected to write DMA memory to`);
    await this.messagePath.write(iova, data);
  }

  private regionOf(iova: bigint, len: number, write: boolean): DmaRegion {
    const end = iova + BigInt(len);
    for (const r of this.dma) {
      if (iova >= r.iova && end <= r.iova + BigInt(r.len)) {
        if (write && (r.flags & DMA_FLAG_WRITE) === 0) throw new ProtocolError(`${this.name}: DMA write to read-only client memory at 0x${iova.toString(16)}`, E.EPERM);
        if (!write && (r.flags & DMA_FLAG_READ) === 0) throw new ProtocolError(`${this.name}: DMA read of write-only client memory at 0x${iova.toString(16)}`, E.EPERM);
        return r;
      }
    }
    throw new ProtocolError(`${this.name}: DMA address [0x${iova.toString(16)}, +${len}) is not inside one region the client mapped`, E.EFAULT);
  }

  // ---- IRQs ----

  /** IRQ info flags and count of an index. */
  irqInfo(index: number): { flags: number; count: number } {
    if (!Number.isInteger(index) || index < 0 || index >= this.numIrqs) throw new ProtocolError(`${this.name}: IRQ index ${index} is out of range (0..${this.numIrqs - 1})`, E.EINVAL);
    const count = this.irqCounts[index];
    let flags = U.VFIO_IRQ_INFO_EVENTFD;
    if (index === U.VFIO_PCI_INTX_IRQ_INDEX) flags |= U.VFIO_IRQ_INFO_MASKABLE | U.VFIO_IRQ_INFO_AUTOMASKED;
    else if (index === U.VFIO_PCI_MSI_IRQ_INDEX) flags |= U.VFIO_IRQ_INFO_NORESIZE;
    else if (index === U.VFIO_PCI_MSIX_IRQ_INDEX) flags |= U.VFIO_IRQ_INFO_MASKABLE;
    return { flags, count };
  }

  /**
   * Apply a SET_IRQS request. fds are the eventfds that came with it; those taken are replaced by
   * -1 in the array (the caller closes the rest).
   */
  setIrqs(s: IrqSet, fds: number[]): void {
    const what = `${this.name}: SET_IRQS index ${s.index}`;
    const count = this.irqInfo(s.index).count;
    const data = s.flags & (U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_DATA_BOOL | U.VFIO_IRQ_SET_DATA_EVENTFD);
    const action = s.flags & (U.VFIO_IRQ_SET_ACTION_MASK | U.VFIO_IRQ_SET_ACTION_UNMASK | U.VFIO_IRQ_SET_ACTION_TRIGGER);
    if (data === U.VFIO_IRQ_SET_DATA_EVENTFD && fds.length !== 0 && fds.length !== s.count) throw new ProtocolError(`${what}: ${fds.length} eventfds for count ${s.count}`, E.EINVAL);
    if (data !== U.VFIO_IRQ_SET_DATA_EVENTFD && fds.length !== 0) throw new ProtocolError(`${what}: fds sent without DATA_EVENTFD`, E.EINVAL);
    // count 0 (and start 0) with DATA_NONE + TRIGGER disables every vector of the index
    if (s.count === 0) {
      if (data === U.VFIO_IRQ_SET_DATA_NONE && action === U.VFIO_IRQ_SET_ACTION_TRIGGER && s.start === 0) {
        this.plane.quiesce(() => { for (let v = 0; v < count; v++) this.setVectorFd(s.index, v, -1); });
        this.events.emit('irqs', s.index);
        return;
      }
      throw new ProtocolError(`${what}: count 0 is only valid to disable (DATA_NONE, ACTION_TRIGGER, start 0)`, E.EINVAL);
    }
    if (s.start + s.count > count) throw new ProtocolError(`${what}: vectors ${s.start}..${s.start + s.count - 1} exceed the ${count} the index has`, E.EINVAL);
    if (data === U.VFIO_IRQ_SET_DATA_EVENTFD && action !== U.VFIO_IRQ_SET_ACTION_TRIGGER) throw new ProtocolError(`${what}: eventfds for MASK/UNMASK notification are not supported`, E.ENOTSUP);
    this.plane.quiesce(() => {
      for (let i = 0; i < s.count; i++) {
        const v = s.start + i;
        const on = data !== U.VFIO_IRQ_SET_DATA_BOOL || s.bools[i] !== 0;
        if (data === U.VFIO_IRQ_SET_DATA_EVENTFD) {
          this.setVectorFd(s.index, v, fds.length ? fds[i] : -1);
          if (fds.length) fds[i] = -1;
          continue;
        }
        if (!on) continue;
        if (action === U.VFIO_IRQ_SET_ACTION_MASK) this.plane.setIrqMasked(s.index, v, true);
        else if (action === U.VFIO_IRQ_SET_ACTION_UNMASK) {
          if (this.plane.setIrqMasked(s.index, v, false)) this.plane.triggerIrq(s.index, v);
        } else this.plane.triggerIrq(s.index, v);
      }
    });
    this.events.emit('irqs', s.index);
  }

  /** Raise vector of an IRQ index: signal its eventfd (held pending while masked). Returns whether it was signalled. */
  triggerIrq(index: number, vector: number): boolean {
    const ok = this.plane.triggerIrq(index, vector);
    if (index === U.VFIO_PCI_INTX_IRQ_INDEX && ok) this.plane.setIrqMasked(index, vector, true); // automasked
    return ok;
  }

  /** Whether a vector has an eventfd assigned. */
  irqAssigned(index: number, vector: number): boolean {
    return index >= 0 && index < this.irqCounts.length && vector >= 0 && vector < this.irqCounts[index] && this.plane.irqFd(index, vector) >= 0;
  }

  /** Replace a vector's eventfd, closing the old one (inside quiesce: the lcore may write to it). */
  private setVectorFd(index: number, v: number, fd: number): void {
    const old = this.plane.irqFd(index, v);
    this.plane.setIrqFd(index, v, fd);
    if (old >= 0) { try { os.close(old); } catch { /* gone */ } }
  }

  // ---- lifecycle ----

  /** Device reset: the provider's onReset, then config command register and IRQ masks. */
  reset(): void {
    this.plane.quiesce(() => {
      this.spec.onReset?.();
      this.config[4] = 0;
      this.config[5] = 0;
      this.resetCapabilities();
      this.plane.clearIrqMasks();
    });
    this.events.emit('reset');
  }

  /** A client connected (the transport calls this). */
  connected(path: DmaMessagePath): void {
    this.messagePath = path;
    this.events.emit('connect');
  }

  /** The client went away: unmap its memory and close its IRQ eventfds (device state is kept). */
  disconnected(): void {
    this.messagePath = null;
    this.plane.quiesce(() => {
      for (const r of [...this.dma]) this.dmaUnmap(r.iova, BigInt(r.len));
      this.irqCounts.forEach((n, index) => { for (let v = 0; v < n; v++) this.setVectorFd(index, v, -1); });
    });
    this.events.emit('disconnect');
  }

  /** Release everything: client state, BAR memory and memfds. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.disconnected();
    this.plane.close();
    this.releaseBars();
    this.events.removeAllListeners();
  }

  private releaseBars(): void {
    for (const st of this.bars.values()) {
      st.mem = null;
      if (st.va !== 0n) { os.munmap(st.va, st.spec.size); st.va = 0n; }
      if (st.memfd >= 0) { os.close(st.memfd); st.memfd = -1; }
    }
  }

  // ---- config space ----

  private initConfig(): void {
    const dv = U.view(this.config);
    const p = this.spec.pci;
    dv.setUint16(0x00, p.vendorId, true);
    dv.setUint16(0x02, p.deviceId, true);
    dv.setUint16(0x06, 0, true); // status; the capability-list bit is set below when there are any
    dv.setUint8(0x08, p.revision ?? 0);
    dv.setUint8(0x09, p.classCode & 0xff);
    dv.setUint16(0x0a, (p.classCode >> 8) & 0xffff, true);
    dv.setUint8(0x0e, 0); // header type 0
    for (const st of this.bars.values()) dv.setUint32(0x10 + 4 * st.spec.index, BAR_MEM32, true);
    dv.setUint16(0x2c, p.subsystemVendorId ?? p.vendorId, true);
    dv.setUint16(0x2e, p.subsystemId ?? 0, true);
    dv.setUint8(0x3d, this.irqCounts[U.VFIO_PCI_INTX_IRQ_INDEX] ? 1 : 0); // interrupt pin
    this.resetCapabilities();
  }

  /** Write the capability list (from 0x40, dword-aligned) and its write masks. */
  private resetCapabilities(): void {
    const caps = this.spec.capabilities ?? [];
    this.config.fill(0, 0x40);
    this.configWriteMask.fill(0);
    this.capHooks = [];
    this.config[0x34] = 0;
    this.config[0x06] &= ~0x10;
    let at = 0x40, prev = 0x34;
    for (const c of caps) {
      const len = 2 + c.body.byteLength;
      if (at + len > 256) throw new RangeError(`${this.name}: PCI capabilities do not fit in the 256-byte config space (capability 0x${c.id.toString(16)} at 0x${at.toString(16)})`);
      this.config[prev] = at;
      this.config[at] = c.id;
      this.config[at + 1] = 0;
      this.config.set(c.body, at + 2);
      if (c.writeMask) this.configWriteMask.set(c.writeMask.subarray(0, c.body.byteLength), at + 2);
      if (c.onRead || c.onWrite) this.capHooks.push({ cap: c, at, end: at + len });
      prev = at + 1;
      at = (at + len + 3) & ~3;
    }
    if (caps.length) this.config[0x06] |= 0x10;
  }

  /**
   * Config writes: command register, BAR registers (sizing), interrupt line, capability bits their
   * writeMask allows; the rest is read-only. Then the onWrite hooks of the capabilities it touched.
   */
  private configWrite(off: number, data: Uint8Array): void {
    for (let i = 0; i < data.byteLength; i++) {
      const a = off + i;
      if (a === 0x04 || a === 0x05 || a === 0x3c) this.config[a] = data[i];
      else if (a >= 0x40) this.config[a] = (this.config[a] & ~this.configWriteMask[a]) | (data[i] & this.configWriteMask[a]);
      else if (a >= 0x10 && a < 0x28) {
        const bar = (a - 0x10) >> 2;
        const st = this.bars.get(bar);
        if (!st) continue;
        const byte = (a - 0x10) & 3;
        const sizeMask = ~(st.spec.size - 1) >>> 0; // address bits that are writable
        const maskByte = (sizeMask >>> (8 * byte)) & 0xff & (byte === 0 ? 0xf0 : 0xff);
        this.config[a] = data[i] & maskByte;
      }
    }
    // After the whole write landed: a multi-byte write that sets a register and touches a data
    // window in one go is seen by the hook with both in place.
    for (const h of this.capHooks) {
      const lo = Math.max(off, h.at), hi = Math.min(off + data.byteLength, h.end);
      if (lo < hi && h.cap.onWrite) h.cap.onWrite(lo - h.at, data.subarray(lo - off, hi - off), this.config.subarray(h.at, h.end));
    }
  }

  // ---- helpers ----

  private checkRegionIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.numRegions) throw new ProtocolError(`${this.name}: region index ${index} is out of range (0..${this.numRegions - 1})`, E.EINVAL);
  }

  /** Validate an access; returns the offset as a number. */
  private checkAccess(index: number, off: bigint, count: number): number {
    this.checkRegionIndex(index);
    const d = this.describeRegion(index);
    if (d.size === 0) throw new ProtocolError(`${this.name}: region ${index} does not exist`, E.EINVAL);
    if (count === 0) throw new ProtocolError(`${this.name}: region ${index}: access of 0 bytes`, E.EINVAL);
    if (off + BigInt(count) > BigInt(d.size)) throw new ProtocolError(`${this.name}: region ${index}: access [0x${off.toString(16)}, +${count}) is outside the region (size 0x${d.size.toString(16)})`, E.EINVAL);
    return Number(off);
  }

  /** Split [off, off+len) into pieces inside and outside the BAR's shared areas. */
  private pieces(st: BarState, off: number, len: number, fn: (start: number, len: number, shared: boolean) => void): void {
    const areas = st.mem ? (st.spec.shared ?? []) : [];
    let p = off;
    const end = off + len;
    while (p < end) {
      const inside = areas.find((a) => p >= a.offset && p < a.offset + a.size);
      if (inside) {
        const e = Math.min(end, inside.offset + inside.size);
        fn(p, e - p, true);
        p = e;
      } else {
        const next = areas.filter((a) => a.offset > p).reduce((m, a) => Math.min(m, a.offset), end);
        const e = Math.min(end, next);
        fn(p, e - p, false);
        p = e;
      }
    }
  }
}
