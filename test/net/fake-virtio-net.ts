/**
 * What the in-process virtio-net devices of the net_virtio tests share: synthetic PCI config spaces
 * with virtio capabilities, and FakeVirtioNetBase, a VfioDevice whose common configuration is the
 * product's register machine (lib/virtio/common_cfg.ts, the one the emulated virtio-net device
 * runs), whose device configuration is a trapped register handler, whose first notify page is real
 * shared memory (a memfd) that the driver maps into the BAR, and which reaches the rings in EAL
 * memory directly (iova = va). What is test code is the narrow seam: the VfioDevice plumbing, the
 * ring access, and the hooks the loopback device of test/net/virtio.test.ts and the lying device of
 * test/hardening/virtio-pmd.test.ts fill in.
 */
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import type { BarIo, DeviceInfo, IrqInfo, MmapOptions, RegionInfo, VfioDevice } from '../../src/iommu/device.js';
import * as V from '../../lib/virtio/virtio.js';
import { VirtioCommonCfg, Q_SIZE, Q_ENABLE, Q_DESC_LO, Q_AVAIL_LO, Q_USED_LO, Q_COMMON_WORDS } from '../../lib/virtio/common_cfg.js';

// ---- synthetic config spaces ----

/** A PCI capability: its id and the bytes after id/next. */
export interface PciCap {
  id: number;
  bytes: number[];
}

/** A 256-byte config space (virtio vendor, modern net device) with the given capabilities chained from 0x40 in order. */
export function configSpace(caps: PciCap[], capList = true): Uint8Array {
  const c = new Uint8Array(256);
  const dv = new DataView(c.buffer);
  dv.setUint16(0, V.VIRTIO_PCI_VENDOR, true);
  dv.setUint16(2, V.VIRTIO_PCI_MODERN_NET, true);
  if (capList) dv.setUint16(6, 0x10, true);
  let at = 0x40;
  c[0x34] = caps.length ? at : 0;
  caps.forEach((cap, i) => {
    const len = 2 + cap.bytes.length;
    c[at] = cap.id;
    c[at + 1] = i + 1 < caps.length ? at + Math.ceil(len / 4) * 4 : 0;
    c.set(cap.bytes, at + 2);
    at += Math.ceil(len / 4) * 4;
  });
  return c;
}

/** A vendor capability: struct virtio_pci_cap after id/next (cap_len, cfg_type, bar, id, pad, offset, length[, multiplier]). */
export function vcap(cfgType: number, bar: number, offset: number, length: number, multiplier?: number): PciCap {
  const n = multiplier === undefined ? V.CAP_SIZE : V.CAP_NOTIFY_SIZE;
  const b = new Uint8Array(n);
  const dv = new DataView(b.buffer);
  b[V.CAP_LEN] = n;
  b[V.CAP_CFG_TYPE] = cfgType;
  b[V.CAP_BAR] = bar;
  dv.setUint32(V.CAP_OFFSET, offset, true);
  dv.setUint32(V.CAP_LENGTH, length, true);
  if (multiplier !== undefined) dv.setUint32(V.CAP_NOTIFY_OFF_MULTIPLIER, multiplier, true);
  return { id: V.PCI_CAP_ID_VNDR, bytes: [...b.subarray(2)] };
}

/** A frame of len bytes: broadcast, source mac, an experimental ethertype, then a pattern from seq. */
export function patternFrame(mac: readonly number[], len: number, seq: number): Uint8Array {
  const f = new Uint8Array(len);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  f.set([0x88, 0xb5], 12);
  for (let i = 14; i < len; i++) f[i] = (seq + i) & 0xff;
  return f;
}

// ---- the device ----

/** The BAR that holds every virtio structure: common at 0, ISR at 0x1000, device at 0x2000, notify at NOTIFY. */
export const BAR = 4;
/** The BAR's size. */
export const BAR_SIZE = 0x5000;
/** The notify structure's offset in the BAR; its first page is the shared page the driver may map. */
export const NOTIFY = 0x3000;
/** The device configuration's offset in the BAR. */
const DEVICE_CFG = 0x2000;
/** The common configuration's capability length (at BAR offset 0); bytes past the structure read 0. */
const COMMON_SIZE = 0x1000;

/** EAL memory as the device reaches it (iova = va). */
export interface DmaMemory {
  segments: Array<{ va: bigint; iova: bigint; len: number }>;
}

/**
 * DMA memory as an in-process device of the tests reaches it: views by IOVA through the EAL's
 * segments (iova = va), little-endian words. FakeVirtioNetBase and FakeIgb (fake-igb.ts) use it.
 */
export class DmaAccess {
  private readonly views = new Map<bigint, DataView>();

  /** who: the device's back end, for messages. */
  constructor(private readonly memory: DmaMemory, private readonly who: string) {}

  /** A DataView and offset at an IOVA, through the EAL segment that holds it. */
  mem(iova: number): { dv: DataView; off: number } {
    for (const s of this.memory.segments) {
      const base = Number(s.iova);
      if (iova >= base && iova < base + s.len) {
        let dv = this.views.get(s.va);
        if (!dv) this.views.set(s.va, dv = new DataView(os.viewOf(s.va, s.len)));
        return { dv, off: iova - base };
      }
    }
    throw new Error(`${this.who} device: DMA to iova 0x${iova.toString(16)} outside EAL memory`);
  }

  /** len bytes of DMA memory at addr. */
  bytes(addr: number, len: number): Uint8Array {
    const m = this.mem(addr);
    return new Uint8Array(m.dv.buffer, m.off, len);
  }

  /** The 16-bit word at a. */
  u16(a: number): number { const m = this.mem(a); return m.dv.getUint16(m.off, true); }
  /** Write the 16-bit word at a. */
  setU16(a: number, v: number): void { const m = this.mem(a); m.dv.setUint16(m.off, v, true); }
  /** The 32-bit word at a. */
  u32(a: number): number { const m = this.mem(a); return m.dv.getUint32(m.off, true); }
  /** Write the 32-bit word at a. */
  setU32(a: number, v: number): void { const m = this.mem(a); m.dv.setUint32(m.off, v, true); }
}

/** One virtqueue as the device sees it: the common configuration's words, and how far the device has read the avail ring. */
export class FakeQueue {
  /** the next avail entry the device reads (back to 0 at every device reset) */
  lastAvail = 0;

  constructor(private readonly common: VirtioCommonCfg, readonly index: number, readonly max: number) {}

  /** queue_size as the driver set it */
  get size(): number { return this.common.queueWord(this.index, Q_SIZE); }
  /** queue_enable */
  get enable(): number { return this.common.queueWord(this.index, Q_ENABLE); }
  /** the descriptor table's IOVA */
  get desc(): number { return this.common.queueAddress(this.index, Q_DESC_LO); }
  /** the avail ring's IOVA */
  get avail(): number { return this.common.queueAddress(this.index, Q_AVAIL_LO); }
  /** the used ring's IOVA */
  get used(): number { return this.common.queueAddress(this.index, Q_USED_LO); }
}

/** State words of the register machine: status, features, config vector, then each queue's. */
const G_STATUS = 0, G_FEAT_LO = 1, G_FEAT_HI = 2, G_CONFIG_VEC = 3, G_QUEUES = 4;

/** A descriptor of a split virtqueue. */
export interface VirtqDesc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** What a FakeVirtioNetBase is made of. */
export interface FakeVirtioNetOptions {
  /** VfioDevice.backend, also the prefix of its error messages */
  backend: string;
  /** the device configuration's MAC */
  mac: readonly number[];
  /** the features offered */
  features: bigint;
  /** the maximum size of each virtqueue, in virtqueue order */
  queueSizes: number[];
  /** the notify structure's length (default one page; more when a queue notifies past the mapped page) */
  notifyLength?: number;
  /** whether the notify page may be mmap'd (default true) */
  mapNotify?: boolean;
}

/**
 * A virtio-net device in this process: the product's common configuration machine, a register
 * handler for the device configuration, a shared notify page, ring access in EAL memory; the data
 * side is the subclass's.
 * Hooks: netConfig (the device configuration), queueNotifyOff, writeOther (registers it does not
 * know, e.g. a trapped notify register).
 */
export abstract class FakeVirtioNetBase implements VfioDevice {
  /** the device's name */
  readonly name: string;
  /** the back end's name (for messages) */
  readonly backend: string;
  /** the PCI config space */
  readonly cfg: Uint8Array;
  /** the notify page, as the device sees it */
  readonly notifyPage: bigint;
  /** the notify page's words (one per queue, multiplier 4) */
  readonly notifyWords: Uint32Array;
  /** the features offered */
  readonly features: bigint;
  /** the device's virtqueues, in order */
  readonly queues: FakeQueue[];
  /** the MAC in the device configuration */
  protected readonly mac: readonly number[];
  /** the common configuration (the product's register machine) */
  private readonly common: VirtioCommonCfg;
  private readonly fd: number;
  private readonly mapNotify: boolean;
  /** EAL memory as the device reaches it */
  private readonly dma: DmaAccess;

  constructor(name: string, memory: DmaMemory, opts: FakeVirtioNetOptions) {
    this.name = name;
    this.dma = new DmaAccess(memory, opts.backend);
    this.backend = opts.backend;
    this.mac = opts.mac;
    this.features = opts.features;
    this.mapNotify = opts.mapNotify ?? true;
    this.cfg = configSpace([
      vcap(V.VIRTIO_PCI_CAP_COMMON_CFG, BAR, 0, COMMON_SIZE), vcap(V.VIRTIO_PCI_CAP_ISR_CFG, BAR, 0x1000, 0x1000),
      vcap(V.VIRTIO_PCI_CAP_DEVICE_CFG, BAR, DEVICE_CFG, 0x1000), vcap(V.VIRTIO_PCI_CAP_NOTIFY_CFG, BAR, NOTIFY, opts.notifyLength ?? 0x1000, 4),
    ]);
    // No MSI-X here (irqInfo offers no vectors): every vector reads back NO_VECTOR.
    this.common = new VirtioCommonCfg({
      state: new Int32Array(G_QUEUES + Q_COMMON_WORDS * opts.queueSizes.length),
      layout: { status: G_STATUS, featLo: G_FEAT_LO, featHi: G_FEAT_HI, configVector: G_CONFIG_VEC, queueBase: (q) => G_QUEUES + Q_COMMON_WORDS * q },
      offered: opts.features, queueMax: opts.queueSizes, msixVectors: 0,
      onReset: () => { for (const q of this.queues) q.lastAvail = 0; },
      notifyOff: (q) => this.queueNotifyOff(q),
    });
    this.queues = opts.queueSizes.map((max, i) => new FakeQueue(this.common, i, max));
    this.common.reset();
    // the notify page is a memfd: the device's view here, the driver's mapping inside its BAR
    this.fd = os.memfdCreate(`tsp${opts.backend}-virtio-notify`, 0);
    os.ftruncate(this.fd, 4096n);
    this.notifyPage = os.mmap(0n, 4096, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, this.fd, 0);
    this.notifyWords = new Uint32Array(os.viewOf(this.notifyPage, 4096));
  }

  /** A PCI device with 9 regions and 5 IRQ indexes, no reset. */
  info(): DeviceInfo {
    return { flags: U.VFIO_DEVICE_FLAGS_PCI, numRegions: 9, numIrqs: 5, isPci: true, canReset: false };
  }

  /** Config space (256 bytes) and the BAR (its notify page mappable unless mapNotify is false); other regions empty. */
  regionInfo(index: number): RegionInfo {
    const base = { index, flags: 0, offset: 0n, sparse: null, type: null, msixMappable: false, capIds: [] };
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) return { ...base, size: 256, readable: true, writable: true, mappable: false };
    if (index === BAR) return { ...base, size: BAR_SIZE, readable: true, writable: true, mappable: this.mapNotify, sparse: this.mapNotify ? [{ offset: NOTIFY, size: 0x1000 }] : null };
    return { ...base, size: 0, readable: false, writable: false, mappable: false };
  }

  /** Map the notify page (the only mappable part of the BAR). */
  mmapRegion(index: number, off: number, len: number, opts: MmapOptions = {}): bigint {
    if (index !== BAR || off !== NOTIFY || len !== 0x1000) throw new Error(`${this.backend} device: mmap of region ${index} [${off}, +${len}) is not allowed`);
    return os.mmap(opts.fixedAt ?? 0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED | (opts.fixedAt !== undefined ? os.MAP_FIXED : 0), this.fd, 0);
  }

  /** device_status as the driver reads it. */
  get status(): number {
    return this.common.status;
  }

  /** The features the driver accepted (FEATURES_OK). */
  get driverFeatures(): bigint {
    return this.common.features;
  }

  /** Read config space, the common configuration, or the device configuration (little endian, len bytes). */
  readRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    const b = buf.subarray(0, len);
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) b.set(this.cfg.subarray(off, off + len));
    else if (off < COMMON_SIZE) this.common.read(off, b);
    else if (off >= DEVICE_CFG && off < NOTIFY) {
      b.fill(0);
      const d = this.netConfig().subarray(off - DEVICE_CFG);
      b.set(d.subarray(0, Math.min(len, d.length)));
    } else b.fill(0);
    return len;
  }

  /** Write config space or the common configuration; other BAR writes go to writeOther. */
  writeRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    const b = buf.subarray(0, len);
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) this.cfg.set(b, off);
    else if (off < COMMON_SIZE) this.common.write(off, b);
    else {
      let v = 0;
      for (let i = len - 1; i >= 0; i--) v = v * 256 + b[i];
      this.writeOther(off, v);
    }
    return len;
  }

  /** The device configuration (struct virtio_net_config): the MAC, the rest 0. */
  protected netConfig(): Uint8Array {
    const d = new Uint8Array(V.NET_CFG_SIZE);
    d.set(this.mac, 0);
    return d;
  }

  /** queue_notify_off of virtqueue qsel. */
  protected queueNotifyOff(qsel: number): number {
    return qsel;
  }

  /** A write to a BAR register the common configuration does not know (ignored). */
  protected writeOther(_off: number, _v: number): void {}

  // ---- DMA: the rings and buffers in EAL memory ----

  /** A DataView and offset at an IOVA (iova = va), through the EAL segment that holds it. */
  mem(iova: number): { dv: DataView; off: number } { return this.dma.mem(iova); }

  /** len bytes of DMA memory at addr. */
  bytes(addr: number, len: number): Uint8Array { return this.dma.bytes(addr, len); }

  /** The 16-bit word at a. */
  u16(a: number): number { return this.dma.u16(a); }
  /** Write the 16-bit word at a. */
  setU16(a: number, v: number): void { this.dma.setU16(a, v); }
  /** The 32-bit word at a. */
  u32(a: number): number { return this.dma.u32(a); }
  /** Write the 32-bit word at a. */
  setU32(a: number, v: number): void { this.dma.setU32(a, v); }

  /** Descriptor id of virtqueue vq. */
  desc(vq: number, id: number): VirtqDesc {
    const d = this.queues[vq].desc + 16 * id;
    return { addr: this.u32(d) + this.u32(d + 4) * 2 ** 32, len: this.u32(d + 8), flags: this.u16(d + 12), next: this.u16(d + 14) };
  }

  /** The next avail entry of vq (consumed), or -1. */
  takeAvail(vq: number): number {
    const q = this.queues[vq];
    if (q.lastAvail === this.u16(q.avail + 2)) return -1;
    const id = this.u16(q.avail + 4 + 2 * (q.lastAvail % q.size));
    q.lastAvail = (q.lastAvail + 1) & 0xffff;
    return id;
  }

  /** Write used entries [id, len] of vq and publish them with one index update. */
  pushUsed(vq: number, entries: Array<[number, number]>): void {
    const q = this.queues[vq];
    const idx = this.u16(q.used + 2);
    entries.forEach(([id, len], i) => {
      this.setU32(q.used + 4 + 8 * ((idx + i) % q.size), id >>> 0);
      this.setU32(q.used + 8 + 8 * ((idx + i) % q.size), len >>> 0);
    });
    this.setU16(q.used + 2, (idx + entries.length) & 0xffff);
  }

  // ---- the rest of VfioDevice: no interrupts, no reset, DMA is iova = va ----

  /** No vectors on any index. */
  irqInfo(index: number): IrqInfo {
    return { index, flags: 0, count: 0, eventfd: false, maskable: false, automasked: false, noresize: false };
  }
  /** Interrupts are not emulated. */
  setIrqs(): void { throw new Error(`${this.backend} device: no interrupts`); }
  /** Nothing to disable. */
  disableIrqs(): void {}
  /** Nothing to unmask. */
  unmaskIrq(): void {}
  /** No function-level reset (a status write of 0 resets). */
  reset(): void {}
  /** No path from other threads: what is not mapped is reached on this thread only. */
  workerIo(): BarIo | null { return null; }
  /** iova = va: nothing to map. */
  dmaMap(): void {}
  /** iova = va: nothing to unmap. */
  dmaUnmap(): void {}
  /** Unmap the notify page and close its memfd. */
  close(): void {
    os.munmap(this.notifyPage, 4096);
    os.close(this.fd);
  }
}
