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
 * FD doorbells: a BAR may declare ioeventfd doorbells (EmuBarSpec.ioeventfds); the transport makes
 * an eventfd for each when its client asks (vfio-user GET_REGION_IO_FDS) and hands them here; they
 * go into the data plane's doorbell table (ids in declaration order: the BARs as declared, each
 * BAR's doorbells in order), where the device's lcore reads them (DataPlane.doorbell(id)), and are
 * closed when the client goes away.
 *
 * Events (device.events): 'dma-map' (DmaRegion), 'dma-unmap' (DmaRegion), 'irqs' (index),
 * 'reset', 'connect', 'disconnect', 'region-write' (index, offset, length). For back-ends on
 * lcores (subscribe): EVENT_MEM_TABLE_CHANGED (arg: regions now) is posted inside the pause of
 * every DMA map, unmap and client teardown, EVENT_DEVICE_RESET inside reset's, after the change:
 * a back-end reads it when it resumes, with the new tables in place; the provider posts the rest.
 */
import { EventEmitter } from 'node:events';
import { fstatSync, readlinkSync } from 'node:fs';
import * as os from '../../src/os/libc.js';
import { PiecedView } from '../../src/os/pieces.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { log } from '../../src/log.js';
import type { SparseArea } from '../../src/iommu/device.js';
import { ProtocolError, DMA_FLAG_READ, DMA_FLAG_WRITE, type IrqSet, type RegionDescription } from '../vfio-user/protocol.js';
import type { DmaMessagePath, IoEventfdSpec, VfioUserDevice } from '../vfio-user/device.js';
import { DataPlaneControl, MASK_VECTOR, MASK_FUNCTION } from './dataplane.js';
import { EmuEventChannel, EVENT_DEVICE_RESET, EVENT_MEM_TABLE_CHANGED } from './events.js';

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
  /**
   * false: the shared areas stay device memory (polled by the device, written by REGION_WRITE) but
   * are not offered for mmap (no MMAP flag, no sparse areas, no fd): a client must reach them by
   * messages (default true)
   */
  mmap?: boolean;
  /** read len bytes at off (outside shared areas) into buf */
  read?: (off: number, buf: Uint8Array) => void;
  /** write data at off (outside shared areas) */
  write?: (off: number, data: Uint8Array) => void;
  /**
   * doorbells a client may ring through an eventfd instead of a write (vfio-user ioeventfds): the
   * device's lcore must read them (DataPlane.doorbell) and act as on the write they stand for
   */
  ioeventfds?: IoEventfdSpec[];
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

/**
 * An MSI-X table and PBA that emudev emulates in a BAR (trapped, outside shared areas): the
 * per-vector mask bits and the function mask (from the MSI-X capability in config space, when
 * the device declares one) hold interrupts pending, the PBA shows them, unmasking delivers them.
 * Vectors: the MSI-X IRQ index's count. At reset every vector is masked, as PCI says. A client
 * that emulates the table itself (QEMU's vfio-pci does, and never writes the device's) would keep
 * every vector masked: declare this only for clients that program the device's table.
 */
export interface EmuMsixSpec {
  /** the BAR index (0..5) holding table and PBA */
  bar: number;
  /** offset of the table (16 bytes per vector, 8-byte aligned) */
  tableOffset: number;
  /** offset of the PBA (a bit per vector, in 64-bit words, 8-byte aligned) */
  pbaOffset: number;
}

/**
 * What dmaMap does with client memory (sent by fd) whose size cannot be sealed: hugetlbfs and other
 * files (F_GET_SEALS: EINVAL), memfds without F_SEAL_SHRINK made without MFD_ALLOW_SEALING or
 * carrying F_SEAL_SEAL. The client could shrink such a file under the mapping, and the next device
 * access would kill this process with SIGBUS.
 *   - 'message' (the default): do not map it: reach it through DMA_READ/WRITE messages, slower
 *     but safe (Node cannot survive a SIGBUS on a mapped view: no handler can resume JavaScript)
 *   - 'map': map it anyway (trust the client; a warning is logged once per device)
 *   - 'refuse': fail DMA_MAP with EPERM, naming the fix
 */
export type UnsealedDmaPolicy = 'map' | 'message' | 'refuse';

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
  /** an MSI-X table and PBA emudev emulates (mask bits honoured); absent: none */
  msix?: EmuMsixSpec;
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

export type { DmaMessagePath };

interface BarState {
  spec: EmuBarSpec;
  /** the data plane's doorbell id of this BAR's first ioeventfd */
  firstDoorbell: number;
  memfd: number;
  va: bigint;
  mem: Uint8Array | null;
  whole: boolean;
}

/** BAR register type bits: 32-bit memory, not prefetchable */
const BAR_MEM32 = 0;
/** PCI capability id of MSI-X */
const PCI_CAP_ID_MSIX = 0x11;

/**
 * Accept fd as an interrupt eventfd: it must be one (a pipe or socket could be full and block the
 * thread that signals it; /proc/self/fd/N names an eventfd 'anon_inode:[eventfd]'), and it is made
 * O_NONBLOCK, so an eventfd whose counter is at its maximum answers EAGAIN instead of blocking.
 */
function checkEventfd(fd: number, what: string): void {
  let link: string;
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch (e) {
    throw new ProtocolError(`${what} (fd ${fd}) cannot be inspected: ${(e as Error).message}`, E.EBADF);
  }
  if (link !== 'anon_inode:[eventfd]') throw new ProtocolError(`${what} is not an eventfd (it is ${link}): interrupts are delivered through eventfds only; send one made with eventfd(2)`, E.EINVAL);
  try {
    os.setNonblock(fd);
  } catch (e) {
    throw new ProtocolError(`${what}: making the eventfd non-blocking failed: ${(e as Error).message}`, E.EINVAL);
  }
}

/** An emulated PCI device: config space, BARs, IRQs, DMA table; what a vfio-user server serves. */
export class EmuDevice implements VfioUserDevice {
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
  private readonly dmaViews = new Map<DmaRegion, PiecedView>();
  /** the length actually mapped per region: its size rounded up to the file's page size */
  private readonly mapLens = new Map<DmaRegion, number>();
  private closed = false;
  private warnedUnsealed = false;
  /** back-end event subscriptions (events.ts) */
  private readonly channels = new Set<EmuEventChannel>();
  /** the emulated MSI-X table (16 bytes per vector), null without spec.msix */
  private readonly msixTable: Uint8Array | null = null;
  /** config-space offset of the MSI-X capability (0: none) */
  private msixCapAt = 0;
  /**
   * Client memory whose size cannot be sealed (see UnsealedDmaPolicy). Default 'message': a client
   * that shrinks mapped memory would kill this process with SIGBUS, and Node cannot resume
   * JavaScript after a SIGBUS on a mapped view; 'map' trusts the client for speed.
   */
  unsealedDma: UnsealedDmaPolicy = 'message';

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
    let doorbells = 0;
    for (const b of spec.bars) {
      if (!Number.isInteger(b.index) || b.index < 0 || b.index > 5) throw new RangeError(`${spec.name}: BAR index ${b.index} must be 0..5`);
      if (this.bars.has(b.index)) throw new Error(`${spec.name}: BAR${b.index} is declared twice`);
      if (b.size < PAGE || (b.size & (b.size - 1)) !== 0 || b.size > 0x4000_0000) throw new RangeError(`${spec.name}: BAR${b.index} size ${b.size} must be a power of two from 4096 to 1 GiB`);
      for (const a of b.shared ?? []) {
        if (a.offset % PAGE !== 0 || a.size % PAGE !== 0 || a.size === 0 || a.offset + a.size > b.size) {
          throw new RangeError(`${spec.name}: BAR${b.index} shared area [0x${a.offset.toString(16)}, +0x${a.size.toString(16)}) must be page-aligned and inside the BAR`);
        }
      }
      for (const d of b.ioeventfds ?? []) {
        if (![1, 2, 4, 8].includes(d.size) || !Number.isInteger(d.offset) || d.offset < 0 || d.offset % d.size !== 0 || d.offset + d.size > b.size) {
          throw new RangeError(`${spec.name}: BAR${b.index} ioeventfd [0x${d.offset.toString(16)}, +${d.size}) must be 1, 2, 4 or 8 bytes, aligned and inside the BAR`);
        }
      }
      this.bars.set(b.index, { spec: b, firstDoorbell: doorbells, memfd: -1, va: 0n, mem: null, whole: false });
      doorbells += b.ioeventfds?.length ?? 0;
    }
    for (const i of spec.irqs) {
      if (i.index < 0 || i.index >= U.VFIO_PCI_NUM_IRQS || i.count < 0 || i.count > 2048) throw new RangeError(`${spec.name}: IRQ index ${i.index} count ${i.count} is out of range`);
      this.irqCounts[i.index] = i.count;
    }
    if (spec.msix) this.msixTable = this.checkMsix(spec.msix);
    this.plane = new DataPlaneControl(spec.name, this.irqCounts, this.maxMaps, { read: (iova, len) => this.dmaRead(iova, len), write: (iova, data) => this.dmaWrite(iova, data) }, doorbells);
    try {
      for (const st of this.bars.values()) {
        const shared = st.spec.shared ?? [];
        if (shared.length === 0) continue;
        st.memfd = os.memfdCreate(`tspmd-emu-${spec.name}-bar${st.spec.index}`, os.MFD_ALLOW_SEALING);
        os.ftruncate(st.memfd, st.spec.size);
        // The client gets this fd O_RDWR: sealed, it cannot shrink the file under our mapping
        // (SIGBUS at the next doorbell read), grow it, or lift the seals.
        os.addSeals(st.memfd, os.F_SEAL_SHRINK | os.F_SEAL_GROW | os.F_SEAL_SEAL);
        st.va = os.mmap(0n, st.spec.size, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, st.memfd, 0);
        st.mem = new Uint8Array(os.viewOf(st.va, st.spec.size));
        st.whole = shared.length === 1 && shared[0].offset === 0 && shared[0].size === st.spec.size;
      }
    } catch (e) {
      this.releaseBars();
      throw e;
    }
    this.initConfig();
    this.resetMsix();
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
    if (!st.mem || st.spec.mmap === false) return { index, flags: rw, size: st.spec.size, offset: 0n, sparse: null };
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
      else this.trappedRead(st, start, out.subarray(start - o, start - o + len));
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
      else this.trappedWrite(st, start, part);
    });
    this.events.emit('region-write', index, o, data.byteLength);
  }

  // ---- FD doorbells ----

  /** The ioeventfd doorbells BAR index declares ([] for other regions). */
  ioeventfds(index: number): readonly IoEventfdSpec[] {
    return this.bars.get(index)?.spec.ioeventfds ?? [];
  }

  /**
   * Take the eventfds the transport made for BAR index's doorbells (same order) into the data
   * plane's doorbell table, inside a pause; eventfds they replace are closed. They are this
   * device's from here, closed at disconnected() or close().
   */
  setIoeventfds(index: number, fds: readonly number[]): void {
    const st = this.bars.get(index);
    const n = st?.spec.ioeventfds?.length ?? 0;
    if (!st || fds.length > n) throw new ProtocolError(`${this.name}: region ${index} has ${n} ioeventfd doorbells, ${fds.length} eventfds given`, E.EINVAL);
    this.plane.quiesce(() => fds.forEach((fd, i) => {
      const old = this.plane.doorbellFd(st.firstDoorbell + i);
      this.plane.setDoorbellFd(st.firstDoorbell + i, fd);
      if (old >= 0 && old !== fd) { try { os.close(old); } catch { /* gone */ } }
    }));
  }

  // ---- DMA ----

  /**
   * Add a region of client memory. With fd (>= 0) it is mapped here (the fd is closed afterwards,
   * the mapping stays until unmap); without, it is reached through the message path. Overlaps
   * fail with EEXIST, as the spec says.
   */
  dmaMap(iova: bigint, size: bigint, flags: number, fd: number, fileOffset: bigint): DmaRegion {
    const what = `${this.name}: DMA_MAP [0x${iova.toString(16)}, +0x${size.toString(16)})`;
    // Regions over 4 GiB are one mapping seen through views of at most 4 GiB (PiecedView here and
    // in the data plane); a length must still be a safe integer.
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`${what}: regions of 2^53 bytes or more are not supported`, E.EINVAL);
    const len = Number(size);
    for (const r of this.dma) {
      if (iova < r.iova + BigInt(r.len) && r.iova < iova + size) throw new ProtocolError(`${what} overlaps the mapped [0x${r.iova.toString(16)}, +0x${r.len.toString(16)})`, E.EEXIST);
    }
    if (this.dma.length >= this.maxDmaMaps) throw new ProtocolError(`${what}: ${this.maxDmaMaps} regions are mapped already (max_dma_maps)`, E.ENOSPC);
    let va = 0n;
    let mapLen = len;
    if (fd >= 0) {
      // A file shorter than the mapping would turn device accesses past its end into SIGBUS. The
      // size is checked here, once; that it stays so is what the seal check below is about.
      let fileSize: bigint, pageSize: number;
      try {
        const st = fstatSync(fd, { bigint: true });
        if (!st.isFile()) throw new ProtocolError(`${what}: the fd is not a memory file (memfd or hugetlbfs)`, E.EINVAL);
        fileSize = st.size;
        // hugetlbfs reports its page size as the block size; the kernel maps whole pages of it
        pageSize = Math.max(PAGE, Number(st.blksize));
      } catch (e) {
        if (e instanceof ProtocolError) throw e;
        throw new ProtocolError(`${what}: fstat of the client's fd failed: ${(e as Error).message}`, E.EBADF);
      }
      if (pageSize > 0x4000_0000 || (pageSize & (pageSize - 1)) !== 0) pageSize = PAGE;
      if (fileOffset % BigInt(pageSize) !== 0n) throw new ProtocolError(`${what}: file offset 0x${fileOffset.toString(16)} is not aligned to the file's ${pageSize}-byte pages`, E.EINVAL);
      if (fileOffset + size > fileSize) throw new ProtocolError(`${what}: file offset 0x${fileOffset.toString(16)} + size exceeds the ${fileSize}-byte file`, E.EINVAL);
      // mmap and munmap of a hugetlbfs file work in whole huge pages: map (and later unmap) the
      // size rounded up to them, so the unmap covers exactly what was mapped.
      mapLen = Math.ceil(len / pageSize) * pageSize;
      if (!this.sizeSealed(fd, what)) {
        if (this.unsealedDma === 'refuse') {
          throw new ProtocolError(`${what}: the memory's size is not sealed, so it could shrink under the device (SIGBUS): send a memfd created with MFD_ALLOW_SEALING and sealed with F_SEAL_SHRINK (fcntl F_ADD_SEALS), or map it without fd`, E.EPERM);
        }
        if (this.unsealedDma === 'message') fd = -1;
        else if (!this.warnedUnsealed) {
          this.warnedUnsealed = true;
          log('warn', 'emudev', `${what}: the client's memory cannot be sealed against shrinking (not a memfd with F_SEAL_SHRINK); mapped anyway (unsealedDma 'map'): a client that shrinks it kills this process with SIGBUS`);
        }
      }
    }
    if (fd >= 0) {
      const prot = ((flags & DMA_FLAG_READ) ? os.PROT_READ : 0) | ((flags & DMA_FLAG_WRITE) ? os.PROT_WRITE : 0);
      try {
        va = os.mmap(0n, mapLen, prot === 0 ? os.PROT_NONE : prot, os.MAP_SHARED, fd, fileOffset);
      } catch (e) {
        throw new ProtocolError(`${what}: mmap of the client's fd failed: ${(e as Error).message}`, e instanceof os.OsError ? e.errno : E.EINVAL);
      }
    }
    const r: DmaRegion = { iova, len, flags, va };
    if (va !== 0n) this.mapLens.set(r, mapLen);
    try {
      this.plane.quiesce(() => {
        this.dma.push(r);
        this.dma.sort((a, b) => (a.iova < b.iova ? -1 : 1));
        this.plane.publishDma(this.dma);
        this.postEvent(EVENT_MEM_TABLE_CHANGED, this.dma.length);
      });
    } catch (e) {
      // the lcore did not pause: the table is unchanged, so the new mapping is unused and can go
      if (this.dma.includes(r)) this.dma.splice(this.dma.indexOf(r), 1);
      this.mapLens.delete(r);
      if (va !== 0n) os.munmap(va, mapLen);
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
      this.dmaViews.delete(r);
      this.safeEmit('dma-unmap', r);
      this.unmapRegion(r);
      this.postEvent(EVENT_MEM_TABLE_CHANGED, this.dma.length);
    });
  }

  /** munmap a region's local mapping (the length it was mapped with). */
  private unmapRegion(r: DmaRegion): void {
    const mapLen = this.mapLens.get(r) ?? r.len;
    this.mapLens.delete(r);
    if (r.va !== 0n) os.munmap(r.va, mapLen);
  }

  /**
   * Whether a client's DMA file can never shrink: a memfd with F_SEAL_SHRINK, or one that accepts
   * the seal now (the seal is added to the client's memfd: it only forbids shrinking, which a
   * client must not do to memory it mapped for DMA anyway). False for files that cannot be sealed.
   */
  private sizeSealed(fd: number, what: string): boolean {
    let seals: number;
    try {
      seals = os.getSeals(fd);
    } catch (e) {
      if (e instanceof os.OsError && e.errno === E.EINVAL) return false; // not a memfd: hugetlbfs or another file
      throw new ProtocolError(`${what}: F_GET_SEALS on the client's fd failed: ${(e as Error).message}`, E.EBADF);
    }
    if ((seals & os.F_SEAL_SHRINK) !== 0) return true;
    if ((seals & os.F_SEAL_SEAL) !== 0) return false; // made without MFD_ALLOW_SEALING, or sealed for good
    try {
      os.addSeals(fd, os.F_SEAL_SHRINK);
      return true;
    } catch {
      return false;
    }
  }

  /** Emit an event; a listener's error is logged, never thrown into teardown or protocol paths. */
  private safeEmit(event: string, ...args: unknown[]): void {
    try {
      this.events.emit(event, ...args);
    } catch (e) {
      log('warn', 'emudev', `${this.name}: a '${event}' listener failed: ${(e as Error).message}`);
    }
  }

  /** The client's DMA memory table (copies). */
  dmaRegions(): DmaRegion[] {
    return this.dma.map((r) => ({ ...r }));
  }

  /**
   * A local view of [iova, iova+len) of client memory, or null when that memory came without fd or
   * the range straddles two 4 GiB views of a larger region (use dmaRead/dmaWrite for both). Throws
   * when the range is not inside one mapped region or lacks the permission. Do not keep the view
   * across an await.
   */
  translate(iova: bigint, len: number, write: boolean): Uint8Array | null {
    const r = this.regionOf(iova, len, write);
    if (r.va === 0n) return null;
    const v = this.viewsOf(r), off = Number(iova - r.iova), p = v.piece(off), o = off - p.start;
    return o + len <= p.u8.length ? p.u8.subarray(o, o + len) : null;
  }

  /** Read client memory (a copy): locally when mapped by fd, else through DMA_READ messages. */
  async dmaRead(iova: bigint, len: number): Promise<Uint8Array> {
    const r = this.regionOf(iova, len, false);
    if (r.va !== 0n) {
      const out = new Uint8Array(len);
      this.viewsOf(r).copyOut(Number(iova - r.iova), out, 0, len);
      return out;
    }
    if (!this.messagePath) throw new Error(`${this.name}: no client connected to read DMA memory from`);
    return this.messagePath.read(iova, len);
  }

  /** Write client memory: locally when mapped by fd, else through DMA_WRITE messages. */
  async dmaWrite(iova: bigint, data: Uint8Array): Promise<void> {
    const r = this.regionOf(iova, data.byteLength, true);
    if (r.va !== 0n) { this.viewsOf(r).copyIn(Number(iova - r.iova), data, 0, data.byteLength); return; }
    if (!this.messagePath) throw new Error(`${this.name}: no client connected to write DMA memory to`);
    await this.messagePath.write(iova, data);
  }

  /** The views (at most 4 GiB each) of a region mapped by fd, made on first use. */
  private viewsOf(r: DmaRegion): PiecedView {
    let v = this.dmaViews.get(r);
    if (!v) {
      v = new PiecedView(r.va, r.len);
      this.dmaViews.set(r, v);
    }
    return v;
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
   * -1 in the array (the caller closes the rest). Only eventfds are accepted (anything else could
   * block the thread that signals it), and they are made O_NONBLOCK: the flag is on the open file
   * description, so the client's copy becomes non-blocking too (read it after poll(2)).
   */
  setIrqs(s: IrqSet, fds: number[]): void {
    const what = `${this.name}: SET_IRQS index ${s.index}`;
    const count = this.irqInfo(s.index).count;
    const data = s.flags & (U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_DATA_BOOL | U.VFIO_IRQ_SET_DATA_EVENTFD);
    const action = s.flags & (U.VFIO_IRQ_SET_ACTION_MASK | U.VFIO_IRQ_SET_ACTION_UNMASK | U.VFIO_IRQ_SET_ACTION_TRIGGER);
    if (data === U.VFIO_IRQ_SET_DATA_EVENTFD && fds.length !== 0 && fds.length !== s.count) throw new ProtocolError(`${what}: ${fds.length} eventfds for count ${s.count}`, E.EINVAL);
    if (data !== U.VFIO_IRQ_SET_DATA_EVENTFD && fds.length !== 0) throw new ProtocolError(`${what}: fds sent without DATA_EVENTFD`, E.EINVAL);
    for (let i = 0; i < fds.length; i++) if (fds[i] >= 0) checkEventfd(fds[i], `${what}: fd ${i + 1} of ${fds.length}`);
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

  /**
   * Raise vector of an IRQ index: signal its eventfd (held pending while masked, or while the
   * eventfd's counter is full). Returns whether it was signalled. Never blocks.
   */
  triggerIrq(index: number, vector: number): boolean {
    const ok = this.plane.triggerIrq(index, vector);
    if (index === U.VFIO_PCI_INTX_IRQ_INDEX && ok) this.plane.setIrqMasked(index, vector, true); // automasked
    return ok;
  }

  /** Whether a vector holds an interrupt not yet delivered (masked, or its eventfd was full). */
  irqPending(index: number, vector: number): boolean {
    return this.plane.irqPending(index, vector);
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

  /**
   * Device reset: the provider's onReset, then config command register, capabilities, IRQ masks
   * and the MSI-X table. Every step runs even when one fails (the first error is thrown after);
   * when the lcore does not pause, the reset is done anyway (plane.force) and that is reported.
   */
  reset(): void {
    const errors: string[] = [];
    const body = (): void => {
      try { this.spec.onReset?.(); } catch (e) { errors.push(`onReset: ${(e as Error).message}`); }
      this.config[4] = 0;
      this.config[5] = 0;
      try { this.resetCapabilities(); } catch (e) { errors.push((e as Error).message); }
      this.plane.clearIrqMasks();
      this.resetMsix();
      this.postEvent(EVENT_DEVICE_RESET, 0);
    };
    try {
      this.plane.quiesce(body);
    } catch (e) {
      errors.push(`${(e as Error).message}; reset without the pause`);
      this.plane.force(body);
    }
    this.safeEmit('reset');
    if (errors.length) throw new Error(`${this.name}: reset: ${errors.join('; ')}`);
  }

  /** A client connected (the transport calls this). */
  connected(path: DmaMessagePath): void {
    this.messagePath = path;
    this.events.emit('connect');
  }

  /**
   * The client went away: unmap its memory and close its IRQ eventfds and ioeventfds, and with reset: true reset
   * the device (the server does so unless --no-reset). Never throws and never stops half way: an
   * error on one region, fd or listener is logged and the rest goes on; the tables are emptied
   * even when the lcore does not pause (it picks them up at its next service()), and then what it
   * may still touch is unmapped and closed only after it next acknowledges a pause (or at close).
   * Returns the errors met (also logged), empty when all went well.
   */
  disconnected(opts: { reset?: boolean } = {}): string[] {
    this.messagePath = null;
    const errors: string[] = [];
    const regions = this.dma;
    const fds: number[] = [];
    // Empty the tables (nothing here throws), then release what they held.
    const clear = (): void => {
      this.dma = [];
      this.dmaViews.clear();
      this.plane.publishDma(this.dma);
      if (regions.length) this.postEvent(EVENT_MEM_TABLE_CHANGED, 0);
      this.irqCounts.forEach((n, index) => {
        for (let v = 0; v < n; v++) {
          const fd = this.plane.irqFd(index, v);
          if (fd >= 0) fds.push(fd);
          this.plane.setIrqFd(index, v, -1);
        }
      });
      for (let i = 0; i < this.plane.doorbells; i++) {
        const fd = this.plane.doorbellFd(i);
        if (fd >= 0) fds.push(fd);
        this.plane.setDoorbellFd(i, -1);
      }
    };
    const release = (): void => {
      for (const r of regions) {
        this.safeEmit('dma-unmap', r);
        try { this.unmapRegion(r); } catch (e) { errors.push(`unmapping [0x${r.iova.toString(16)}, +0x${r.len.toString(16)}): ${(e as Error).message}`); }
      }
      for (const fd of fds) {
        try { os.close(fd); } catch (e) { errors.push(`closing eventfd ${fd}: ${(e as Error).message}`); }
      }
    };
    try {
      this.plane.quiesce(() => { clear(); release(); });
    } catch (e) {
      errors.push(`${(e as Error).message}; the client's memory and eventfds are released once it pauses`);
      this.plane.force(clear);
      this.plane.deferRelease(() => {
        const from = errors.length;
        release();
        for (const m of errors.slice(from)) log('warn', 'emudev', `${this.name}: client teardown (deferred): ${m}`);
      });
    }
    if (opts.reset) {
      try { this.reset(); } catch (e) { errors.push((e as Error).message); }
    }
    this.safeEmit('disconnect');
    for (const e of errors) log('warn', 'emudev', `${this.name}: client teardown: ${e}`);
    return errors;
  }

  // ---- back-end events (events.ts) ----

  /** Subscribe a back-end to the event types in mask (bits 1 << EVENT_*): the channel to hand to its lcore. */
  subscribe(mask: number, capacity?: number): EmuEventChannel {
    const ch = new EmuEventChannel(mask, capacity);
    this.channels.add(ch);
    return ch;
  }

  /** End a subscription (its lcore must have stopped reading it) and close its eventfd. */
  unsubscribe(ch: EmuEventChannel): void {
    if (this.channels.delete(ch)) ch.close();
  }

  /** Post an event to every subscriber that asked for its type (the provider calls this; never blocks). */
  postEvent(type: number, arg: number): void {
    for (const ch of this.channels) ch.post(type, arg);
  }

  /** Release everything: client state, BAR memory and memfds. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.disconnected();
    for (const ch of this.channels) ch.close();
    this.channels.clear();
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
    this.msixCapAt = 0;
    for (const c of caps) {
      const len = 2 + c.body.byteLength;
      if (at + len > 256) throw new RangeError(`${this.name}: PCI capabilities do not fit in the 256-byte config space (capability 0x${c.id.toString(16)} at 0x${at.toString(16)})`);
      this.config[prev] = at;
      this.config[at] = c.id;
      this.config[at + 1] = 0;
      this.config.set(c.body, at + 2);
      if (c.writeMask) this.configWriteMask.set(c.writeMask.subarray(0, c.body.byteLength), at + 2);
      if (c.onRead || c.onWrite) this.capHooks.push({ cap: c, at, end: at + len });
      if (c.id === PCI_CAP_ID_MSIX && this.msixCapAt === 0) this.msixCapAt = at;
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
    // MSI-X message control's high byte holds the function mask (bit 14)
    if (this.msixTable && this.msixCapAt !== 0 && off <= this.msixCapAt + 3 && off + data.byteLength > this.msixCapAt + 3) this.applyFunctionMask();
  }

  // ---- MSI-X table (spec.msix) ----

  /** Validate spec.msix against the BARs and the MSI-X vector count; returns the table's storage. */
  private checkMsix(m: EmuMsixSpec): Uint8Array {
    const n = this.irqCounts[U.VFIO_PCI_MSIX_IRQ_INDEX];
    const what = `${this.name}: MSI-X table in BAR${m.bar}`;
    const st = this.bars.get(m.bar);
    if (!st) throw new RangeError(`${what}: the device declares no BAR${m.bar}`);
    if (n === 0) throw new RangeError(`${what}: the device declares no MSI-X vectors (irqs index ${U.VFIO_PCI_MSIX_IRQ_INDEX})`);
    const ranges: Array<[string, number, number]> = [['table', m.tableOffset, m.tableOffset + 16 * n], ['PBA', m.pbaOffset, m.pbaOffset + 8 * Math.ceil(n / 64)]];
    for (const [name, lo, hi] of ranges) {
      if (!Number.isInteger(lo) || lo < 0 || lo % 8 !== 0 || hi > st.spec.size) throw new RangeError(`${what}: the ${name} [0x${lo.toString(16)}, 0x${hi.toString(16)}) must be 8-byte aligned and inside the ${st.spec.size}-byte BAR`);
      for (const a of st.spec.shared ?? []) if (lo < a.offset + a.size && a.offset < hi) throw new RangeError(`${what}: the ${name} overlaps a shared area (it must be trapped)`);
    }
    if (ranges[0][1] < ranges[1][2] && ranges[1][1] < ranges[0][2]) throw new RangeError(`${what}: table and PBA overlap`);
    return new Uint8Array(16 * n);
  }

  /** MSI-X reset: table cleared with every vector masked, the function mask as config space says. */
  private resetMsix(): void {
    const t = this.msixTable;
    if (!t) return;
    t.fill(0);
    for (let v = 0; v < t.byteLength / 16; v++) {
      t[16 * v + 12] = 1;
      this.plane.setIrqMaskBits(U.VFIO_PCI_MSIX_IRQ_INDEX, v, MASK_VECTOR, true);
    }
    this.applyFunctionMask();
  }

  /** Fold the MSI-X function mask into every vector's mask; unmasking delivers what was held. */
  private applyFunctionMask(): void {
    const n = this.msixTable ? this.msixTable.byteLength / 16 : 0;
    const masked = this.msixCapAt !== 0 && (this.config[this.msixCapAt + 3] & 0x40) !== 0;
    for (let v = 0; v < n; v++) {
      if (this.plane.setIrqMaskBits(U.VFIO_PCI_MSIX_IRQ_INDEX, v, MASK_FUNCTION, masked)) this.plane.triggerIrq(U.VFIO_PCI_MSIX_IRQ_INDEX, v);
    }
  }

  /** Call fn for the pieces of [start, +len) of a BAR: 'table', 'pba' (emulated here) or 'device'. */
  private msixPieces(bar: number, start: number, len: number, fn: (s: number, l: number, kind: 'table' | 'pba' | 'device') => void): void {
    const m = this.spec.msix;
    if (!m || !this.msixTable || m.bar !== bar) { fn(start, len, 'device'); return; }
    const n = this.msixTable.byteLength / 16;
    const ranges: Array<[number, number, 'table' | 'pba']> = [[m.tableOffset, m.tableOffset + 16 * n, 'table'], [m.pbaOffset, m.pbaOffset + 8 * Math.ceil(n / 64), 'pba']];
    const end = start + len;
    let p = start;
    while (p < end) {
      let kind: 'table' | 'pba' | 'device' = 'device', e = end;
      for (const [lo, hi, k] of ranges) {
        if (p >= lo && p < hi) { kind = k; e = Math.min(end, hi); break; }
        if (lo > p) e = Math.min(e, lo);
      }
      fn(p, e - p, kind);
      p = e;
    }
  }

  /** A trapped BAR read: the MSI-X table and PBA here, the device's read callback elsewhere. */
  private trappedRead(st: BarState, start: number, buf: Uint8Array): void {
    this.msixPieces(st.spec.index, start, buf.byteLength, (p, l, kind) => {
      const part = buf.subarray(p - start, p - start + l);
      const m = this.spec.msix!;
      if (kind === 'table') part.set(this.msixTable!.subarray(p - m.tableOffset, p - m.tableOffset + l));
      else if (kind === 'pba') {
        const n = this.msixTable!.byteLength / 16;
        for (let i = 0; i < l; i++) {
          const first = 8 * (p + i - m.pbaOffset);
          let b = 0;
          for (let k = 0; k < 8 && first + k < n; k++) if (this.plane.irqPending(U.VFIO_PCI_MSIX_IRQ_INDEX, first + k)) b |= 1 << k;
          part[i] = b;
        }
      } else if (st.spec.read) st.spec.read(p, part);
    });
  }

  /** A trapped BAR write: MSI-X table entries here (a vector's mask bit applies at once), the PBA is read-only. */
  private trappedWrite(st: BarState, start: number, data: Uint8Array): void {
    this.msixPieces(st.spec.index, start, data.byteLength, (p, l, kind) => {
      const part = data.subarray(p - start, p - start + l);
      if (kind === 'device') { if (st.spec.write) st.spec.write(p, part); return; }
      if (kind === 'pba') return;
      const o = p - this.spec.msix!.tableOffset;
      this.msixTable!.set(part, o);
      for (let v = Math.floor(o / 16); v <= Math.floor((o + l - 1) / 16); v++) {
        const masked = (this.msixTable![16 * v + 12] & 1) !== 0;
        if (this.plane.setIrqMaskBits(U.VFIO_PCI_MSIX_IRQ_INDEX, v, MASK_VECTOR, masked)) this.plane.triggerIrq(U.VFIO_PCI_MSIX_IRQ_INDEX, v);
      }
    });
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
