/**
 * A small virtio 1.x split-ring test driver for tests of the emulated virtio-net device (not the
 * PMD): the PMD's own transport (drivers/net/virtio/virtio_pci.ts: capability parsing, reset and
 * feature negotiation) over a vfio-user client, then what a test needs and the PMD would never do:
 * queues in a memfd DMA-mapped by fd at a fixed IOVA, raw register access, and any descriptor a
 * malicious driver would write.
 */
import * as os from '../../src/os/libc.js';
import type { Bar } from '../../src/iommu/bar.js';
import type { VfioUserClient } from '../../lib/vfio-user/client.js';
import * as V from '../../lib/virtio/virtio.js';
import { pciCapabilities, readConfigSpace } from '../../drivers/bus/pci/config.js';
import { VirtioPci, FeaturesRefused, type VirtioPciCaps } from '../../drivers/net/virtio/virtio_pci.js';

/** The MSI-X capability as the driver found it. */
export interface MsixCap {
  at: number;
  tableSize: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

/** What the test driver found in config space: the PMD's virtio capabilities, MSI-X, and every capability id in list order. */
export interface TestCaps {
  /** every virtio vendor capability, as the PMD's parser lists them */
  virtio: VirtioPciCaps['all'];
  msix: MsixCap | null;
  ids: number[];
}

/** The MSI-X capability at at (PCI 3.0, 6.8.2): table size, table and PBA BIR and offset. */
function msixCap(cfg: Uint8Array, at: number): MsixCap {
  const dv = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  const t = dv.getUint32(at + 4, true), p = dv.getUint32(at + 8, true);
  return { at, tableSize: (dv.getUint16(at + 2, true) & 0x7ff) + 1, tableBar: t & 7, tableOffset: t & ~7, pbaBar: p & 7, pbaOffset: p & ~7 };
}

/** A queue as the test driver keeps it. */
export interface TestQueue {
  index: number;
  size: number;
  /** byte offsets in the driver's memory */
  desc: number;
  avail: number;
  used: number;
  /** per descriptor: a buffer of bufSize bytes at buf + i * bufSize */
  buf: number;
  bufSize: number;
  availIdx: number;
  lastUsed: number;
  nextDesc: number;
}

/** Where setupQueue puts a queue's rings and buffers instead of allocating them (byte offsets in driver memory). */
export interface QueuePlace {
  desc: number;
  avail: number;
  used: number;
  buf: number;
}

/** A received packet: header, data, and the used entries it took. */
export interface RxPacket {
  numBuffers: number;
  hdr: Uint8Array;
  data: Uint8Array;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The test driver. */
export class TestVirtioNet {
  readonly client: VfioUserClient;
  /** the PMD's transport on the device */
  readonly pci: VirtioPci;
  /** BAR4: every virtio structure */
  readonly bar: Bar;
  readonly caps: TestCaps;
  readonly common: number;
  readonly isr: number;
  readonly devcfg: number;
  readonly notifyOff: number;
  readonly multiplier: number;
  /** driver memory (memfd, DMA-mapped by fd) */
  readonly va: bigint;
  readonly iova: number;
  readonly len: number;
  readonly u8: Uint8Array;
  readonly dv: DataView;
  readonly fd: number;
  readonly queues = new Map<number, TestQueue>();
  private brk = 0;
  private mapped = false;
  private closed = false;

  /** Open the device with the PMD's transport (its BAR mapped), create and DMA-map len bytes at iova. */
  constructor(client: VfioUserClient, len = 4 << 20, iova = 0x4000_0000) {
    this.client = client;
    this.pci = VirtioPci.open(client);
    const cfg = readConfigSpace(client);
    const list = pciCapabilities(cfg, client.name);
    const m = list.find((c) => c.id === V.PCI_CAP_ID_MSIX);
    this.caps = { virtio: this.pci.caps.all, msix: m ? msixCap(cfg, m.at) : null, ids: list.map((c) => c.id) };
    const { common, notify, isr, device } = this.pci.caps;
    if (!isr || !device) throw new Error(`${client.name}: no ISR or device configuration capability`);
    this.common = common.offset;
    this.isr = isr.offset;
    this.devcfg = device.offset;
    this.notifyOff = notify.offset;
    this.multiplier = notify.multiplier;
    this.bar = this.pci.bar(notify);
    this.len = len;
    this.iova = iova;
    this.fd = os.memfdCreate('tsp-vnet-drv', os.MFD_ALLOW_SEALING);
    os.ftruncate(this.fd, len);
    this.va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, this.fd, 0);
    this.u8 = new Uint8Array(os.viewOf(this.va, len));
    this.dv = new DataView(this.u8.buffer);
    client.addFdMemory(this.va, len, this.fd);
    this.map();
  }

  /** DMA-map the driver memory (by fd). */
  map(): void {
    this.client.dmaMap(this.va, BigInt(this.iova), this.len);
    this.mapped = true;
  }

  /** DMA-unmap the driver memory. */
  unmap(): void {
    this.client.dmaUnmap(BigInt(this.iova), this.len);
    this.mapped = false;
  }

  /** Unmap (if still connected), close the BAR and free the memory. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try { if (this.mapped) this.unmap(); } catch { /* the connection is gone */ }
    this.pci.close();
    os.munmap(this.va, this.len);
    os.close(this.fd);
  }

  // ---- registers ----

  /** Read a common configuration field (1, 2 or 4 bytes). */
  rd(off: number, width: 1 | 2 | 4): number {
    const a = this.common + off;
    return width === 1 ? this.bar.read8(a) : width === 2 ? this.bar.read16(a) : this.bar.read32(a);
  }

  /** Write a common configuration field. */
  wr(off: number, width: 1 | 2 | 4, v: number): void {
    const a = this.common + off;
    if (width === 1) this.bar.write8(a, v);
    else if (width === 2) this.bar.write16(a, v);
    else this.bar.write32(a, v);
  }

  /** device_status. */
  status(): number {
    return this.pci.status();
  }

  /** The 64 device feature bits. */
  deviceFeatures(): bigint {
    return this.pci.deviceFeatures();
  }

  /**
   * Write 0 to device_status and forget the queues. Unlike the PMD's reset this does not insist on
   * reading 0 back: a device whose backend keeps failing shows DEVICE_NEEDS_RESET in reset state,
   * and the hardening tests look at exactly that (negotiate() then runs the PMD's reset, which waits).
   */
  reset(): void {
    this.pci.setStatus(0);
    for (let i = 0; i < 1000 && this.status() !== 0; i++) { /* give a slow reset a moment */ }
    this.queues.clear();
    this.brk = 0;
  }

  /**
   * The PMD's negotiation (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK) with exactly these
   * features, even ones the PMD would never ask for; whether the device kept FEATURES_OK.
   */
  negotiate(features: bigint): boolean {
    try {
      this.pci.negotiateWith(() => features);
      return true;
    } catch (e) {
      if (e instanceof FeaturesRefused) return false;
      throw e;
    }
  }

  /** Set DRIVER_OK. */
  driverOk(): void {
    this.pci.addStatus(V.STATUS_DRIVER_OK);
  }

  /** Bytes of driver memory, 4 KiB aligned. */
  alloc(n: number): number {
    const at = this.brk;
    this.brk = (this.brk + n + 4095) & ~4095;
    if (this.brk > this.len) throw new Error('test driver memory exhausted');
    return at;
  }

  /**
   * Set up and enable queue q: rings and size buffers of bufSize bytes in driver memory, allocated
   * from its bottom or put at the offsets given (anywhere, e.g. beyond 2 GiB into it).
   */
  setupQueue(q: number, size: number, vector = V.VIRTIO_MSI_NO_VECTOR, bufSize = 2048, at?: QueuePlace): TestQueue {
    this.wr(V.COMMON_Q_SELECT, 2, q);
    this.wr(V.COMMON_Q_SIZE, 2, size);
    const p: QueuePlace = at ?? { desc: this.alloc(V.descTableSize(size)), avail: this.alloc(V.availRingSize(size)), used: this.alloc(V.usedRingSize(size)), buf: this.alloc(size * bufSize) };
    const tq: TestQueue = { index: q, size, desc: p.desc, avail: p.avail, used: p.used, buf: p.buf, bufSize, availIdx: 0, lastUsed: 0, nextDesc: 0 };
    this.u8.fill(0, tq.desc, tq.desc + V.descTableSize(size));
    this.u8.fill(0, tq.avail, tq.avail + V.availRingSize(size));
    this.u8.fill(0, tq.used, tq.used + V.usedRingSize(size));
    const w64 = (lo: number, a: number): void => { this.wr(lo, 4, (this.iova + a) % 2 ** 32); this.wr(lo + 4, 4, Math.floor((this.iova + a) / 2 ** 32)); };
    w64(V.COMMON_Q_DESCLO, tq.desc);
    w64(V.COMMON_Q_AVAILLO, tq.avail);
    w64(V.COMMON_Q_USEDLO, tq.used);
    this.wr(V.COMMON_Q_MSIX, 2, vector);
    this.wr(V.COMMON_Q_ENABLE, 2, 1);
    this.queues.set(q, tq);
    return tq;
  }

  /** IOVA of a byte offset of driver memory. */
  iovaOf(off: number): number {
    return this.iova + off;
  }

  private q(q: number): TestQueue {
    const tq = this.queues.get(q);
    if (!tq) throw new Error(`queue ${q} is not set up`);
    return tq;
  }

  /** Write descriptor i of queue q as given (any value: the malicious driver's tool). */
  writeDesc(q: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const o = this.q(q).desc + V.DESC_SIZE * i;
    this.dv.setUint32(o, addr % 2 ** 32, true);
    this.dv.setUint32(o + 4, Math.floor(addr / 2 ** 32), true);
    this.dv.setUint32(o + 8, len, true);
    this.dv.setUint16(o + 12, flags, true);
    this.dv.setUint16(o + 14, next, true);
  }

  /** Put head in the avail ring and publish idx (optionally an arbitrary idx), then kick. */
  pushAvail(q: number, head: number, idx?: number): void {
    const tq = this.q(q);
    this.dv.setUint16(tq.avail + V.AVAIL_RING + 2 * (tq.availIdx % tq.size), head, true);
    tq.availIdx = idx ?? (tq.availIdx + 1) & 0xffff;
    Atomics.store(new Uint16Array(this.u8.buffer, tq.avail, 2), 1, tq.availIdx);
    this.kick(q);
  }

  /** avail.flags (VRING_AVAIL_F_NO_INTERRUPT). */
  setAvailFlags(q: number, flags: number): void {
    this.dv.setUint16(this.q(q).avail + V.AVAIL_FLAGS, flags, true);
  }

  /** used.flags as the device wrote them. */
  usedFlags(q: number): number {
    return this.dv.getUint16(this.q(q).used + V.USED_FLAGS, true);
  }

  /** Write the queue index to its notify address (a store into the mmapped page). */
  kick(q: number): void {
    this.bar.write16(this.notifyOff + q * this.multiplier, q);
  }

  private takeDescs(tq: TestQueue, n: number): number {
    const first = tq.nextDesc;
    tq.nextDesc = (tq.nextDesc + n) % tq.size;
    return first;
  }

  /**
   * Send a frame on transmitq q behind a zero header, split over segs descriptors (the header in
   * the first); returns the head.
   */
  send(q: number, frame: Uint8Array, segs = 1): number {
    const tq = this.q(q);
    const total = V.NET_HDR_SIZE + frame.byteLength;
    const head = this.takeDescs(tq, segs);
    const b = tq.buf + head * tq.bufSize;
    if (segs > 1 && head + segs > tq.size) throw new Error('test driver: chain would wrap');
    this.u8.fill(0, b, b + V.NET_HDR_SIZE);
    this.u8.set(frame, b + V.NET_HDR_SIZE);
    const per = Math.ceil(total / segs);
    for (let s = 0; s < segs; s++) {
      const off = s * per, len = Math.min(per, total - off);
      this.writeDesc(q, head + s, this.iovaOf(b + off), len, s < segs - 1 ? V.VRING_DESC_F_NEXT : 0, head + s + 1);
    }
    this.pushAvail(q, head);
    return head;
  }

  /** Post count receive buffers of len bytes (one writable descriptor each) on receiveq q. */
  postRx(q: number, count: number, len = 0): void {
    const tq = this.q(q);
    for (let i = 0; i < count; i++) {
      const d = this.takeDescs(tq, 1);
      this.writeDesc(q, d, this.iovaOf(tq.buf + d * tq.bufSize), len || tq.bufSize, V.VRING_DESC_F_WRITE, 0);
      this.pushAvail(q, d);
    }
  }

  /** used.idx as the device published it. */
  usedIdx(q: number): number {
    return Atomics.load(new Uint16Array(this.u8.buffer, this.q(q).used, 2), 1);
  }

  /** New used entries since the last call. */
  used(q: number): Array<{ id: number; len: number }> {
    const tq = this.q(q);
    const out: Array<{ id: number; len: number }> = [];
    const idx = this.usedIdx(q);
    while (tq.lastUsed !== idx) {
      const e = tq.used + V.USED_RING + V.USED_ELEM_SIZE * (tq.lastUsed % tq.size);
      out.push({ id: this.dv.getUint32(e, true), len: this.dv.getUint32(e + 4, true) });
      tq.lastUsed = (tq.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  /** Wait (without spinning) until used.idx of q reaches at least n entries beyond lastUsed. */
  async waitUsed(q: number, n: number, ms = 10_000): Promise<boolean> {
    const tq = this.q(q);
    const deadline = Date.now() + ms;
    while (((this.usedIdx(q) - tq.lastUsed) & 0xffff) < n) {
      if (Date.now() > deadline) return false;
      await sleep(1);
    }
    return true;
  }

  /** Receive packets from used entries of receiveq q (one buffer per descriptor, MRG-aware). */
  receive(q: number, entries: Array<{ id: number; len: number }>): RxPacket[] {
    const tq = this.q(q);
    const out: RxPacket[] = [];
    for (let i = 0; i < entries.length; ) {
      const first = tq.buf + entries[i].id * tq.bufSize;
      const hdr = this.u8.slice(first, first + V.NET_HDR_SIZE);
      const numBuffers = hdr[10] | (hdr[11] << 8);
      const parts: Uint8Array[] = [this.u8.slice(first + V.NET_HDR_SIZE, first + entries[i].len)];
      for (let k = 1; k < numBuffers && i + k < entries.length; k++) {
        const b = tq.buf + entries[i + k].id * tq.bufSize;
        parts.push(this.u8.slice(b, b + entries[i + k].len));
      }
      out.push({ numBuffers, hdr, data: new Uint8Array(Buffer.concat(parts)) });
      i += Math.max(1, numBuffers);
    }
    return out;
  }

  /** Read (and so clear) the ISR byte. */
  readIsr(): number {
    return this.bar.read8(this.isr);
  }

  /** The device configuration bytes. */
  deviceConfig(len = V.NET_CFG_SIZE): Uint8Array {
    const out = new Uint8Array(len);
    for (let i = 0; i < len; i++) out[i] = this.bar.read8(this.devcfg + i);
    return out;
  }
}
