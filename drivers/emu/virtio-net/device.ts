/**
 * virtio-net, emulated: the control half. A virtio 1.x modern PCI network device on emudev (the
 * layout is in layout.ts). This half runs on the vfio-user server's thread: it builds config space
 * (the virtio vendor capabilities and MSI-X), answers trapped BAR accesses (common configuration,
 * through lib/virtio/common_cfg.ts's register machine; ISR, device configuration, MSI-X table),
 * negotiates features and resets. Everything the engine (backend.ts, on an lcore) reads is
 * published in shared state words inside plane.quiesce(), so the lcore never sees a half-written
 * queue. As an emudev provider (lib/emudev/registry.ts) it describes those words to a back-end
 * (backendDesc: the queue table, named attributes, the statistics region, the doorbells) and posts
 * queue enable/disable and status events to its subscribers.
 */
import * as U from '../../../src/iommu/vfio-uapi.js';
import { EmuDevice, type EmuCapability } from '../../../lib/emudev/emudev.js';
import { QUEUE_DOORBELL, type EmuAttrSpec, type EmuBackendDesc, type EmuDoorbellInfo } from '../../../lib/emudev/backend.js';
import { EVENT_QUEUE_DISABLED, EVENT_QUEUE_ENABLED, EVENT_STATUS_CHANGED } from '../../../lib/emudev/events.js';
import type { EmuProvider, EmuProviderInfo } from '../../../lib/emudev/registry.js';
import * as V from '../../../lib/virtio/virtio.js';
import { VirtioCommonCfg } from '../../../lib/virtio/common_cfg.js';
import * as L from './layout.js';
import { A } from './defs.js';
import type { VirtioNetBackendArg } from './backend.js';


const F = V.featureBit;

/** The virtio structures in BAR4 as their capabilities announce them: cfg_type, offset, length. */
const STRUCTURES: ReadonlyArray<readonly [number, number, number]> = [
  [V.VIRTIO_PCI_CAP_COMMON_CFG, L.COMMON_OFF, V.COMMON_CFG_SIZE],
  [V.VIRTIO_PCI_CAP_NOTIFY_CFG, L.NOTIFY_OFF, L.NOTIFY_SIZE],
  [V.VIRTIO_PCI_CAP_ISR_CFG, L.ISR_OFF, 1],
  [V.VIRTIO_PCI_CAP_DEVICE_CFG, L.DEVICE_OFF, V.NET_CFG_SIZE],
];

/**
 * The BAR access pci_cfg_data stands for, from the live bytes of the PCI_CFG capability, or null
 * when cap.bar/offset/length select none. The spec (4.1.4.9) only defines naturally aligned
 * accesses of 1, 2 or 4 bytes inside a structure another virtio capability names; anything else
 * does nothing, so config space cannot reach the MSI-X table or bytes no structure covers.
 */
function pciCfgWindow(cap: Uint8Array): { bar: number; off: number; len: number } | null {
  const dv = new DataView(cap.buffer, cap.byteOffset, cap.byteLength);
  const bar = cap[V.CAP_BAR], off = dv.getUint32(V.CAP_OFFSET, true), len = dv.getUint32(V.CAP_LENGTH, true);
  if ((len !== 1 && len !== 2 && len !== 4) || off % len !== 0 || bar !== L.BAR_CFG) return null;
  return STRUCTURES.some(([, o, n]) => off >= o && off + len <= o + n) ? { bar, off, len } : null;
}

/** A virtio_pci_cap (vendor capability 0x09) body: everything after the id and next bytes. */
function virtioCap(cfgType: number, offset: number, length: number, notifyMultiplier?: number): EmuCapability {
  const len = notifyMultiplier === undefined ? V.CAP_SIZE : V.CAP_NOTIFY_SIZE;
  const body = new Uint8Array(len - 2);
  const dv = new DataView(body.buffer);
  dv.setUint8(V.CAP_LEN - 2, len);
  dv.setUint8(V.CAP_CFG_TYPE - 2, cfgType);
  dv.setUint8(V.CAP_BAR - 2, L.BAR_CFG);
  dv.setUint8(V.CAP_ID - 2, 0);
  dv.setUint32(V.CAP_OFFSET - 2, offset, true);
  dv.setUint32(V.CAP_LENGTH - 2, length, true);
  if (notifyMultiplier !== undefined) dv.setUint32(V.CAP_NOTIFY_OFF_MULTIPLIER - 2, notifyMultiplier, true);
  return { id: V.PCI_CAP_ID_VNDR, body };
}

/**
 * The PCI configuration access capability (struct virtio_pci_cfg_cap, 4.1.4.9), the spec's
 * mandatory backdoor for drivers that cannot map BARs: cap.bar, cap.offset, cap.length and
 * pci_cfg_data are writable; reading pci_cfg_data reads cap.length bytes of the BAR into it first,
 * writing it writes its first cap.length bytes to the BAR, both through emudev's own BAR paths
 * (trapped callbacks or shared memory) so the access has every effect a direct one has (an ISR
 * read clears it, a notify write wakes the queue). An invalid window reads as zero. emu is a thunk:
 * the capability is declared before the EmuDevice that will serve it exists.
 */
function pciCfgCap(emu: () => EmuDevice): EmuCapability {
  const body = new Uint8Array(L.PCI_CFG_CAP_SIZE - 2);
  body[V.CAP_LEN - 2] = L.PCI_CFG_CAP_SIZE;
  body[V.CAP_CFG_TYPE - 2] = V.VIRTIO_PCI_CAP_PCI_CFG;
  // bar 0, offset 0, length 0 (as QEMU starts it): no valid window until the driver sets one.
  const writeMask = new Uint8Array(body.byteLength);
  writeMask[V.CAP_BAR - 2] = 0xff;
  writeMask.fill(0xff, V.CAP_OFFSET - 2, V.CAP_LENGTH + 4 - 2);
  writeMask.fill(0xff, L.PCI_CFG_DATA - 2, L.PCI_CFG_CAP_SIZE - 2);
  const touchesData = (off: number, len: number): boolean => off < L.PCI_CFG_CAP_SIZE && off + len > L.PCI_CFG_DATA;
  return {
    id: V.PCI_CAP_ID_VNDR, body, writeMask,
    onRead: (off, len, cap) => {
      if (!touchesData(off, len)) return;
      cap.fill(0, L.PCI_CFG_DATA, L.PCI_CFG_CAP_SIZE);
      const w = pciCfgWindow(cap);
      if (w) cap.set(emu().regionRead(U.VFIO_PCI_BAR0_REGION_INDEX + w.bar, BigInt(w.off), w.len), L.PCI_CFG_DATA);
    },
    onWrite: (off, data, cap) => {
      if (!touchesData(off, data.byteLength)) return;
      const w = pciCfgWindow(cap);
      if (w) emu().regionWrite(U.VFIO_PCI_BAR0_REGION_INDEX + w.bar, BigInt(w.off), cap.slice(L.PCI_CFG_DATA, L.PCI_CFG_DATA + w.len));
    },
  };
}

/** The MSI-X capability: table size, table and PBA in BAR1; enable and function mask writable. */
function msixCap(vectors: number): EmuCapability {
  const body = new Uint8Array(10);
  const dv = new DataView(body.buffer);
  dv.setUint16(0, vectors - 1, true);
  dv.setUint32(2, L.MSIX_TABLE_OFF | L.BAR_MSIX, true);
  dv.setUint32(6, L.MSIX_PBA_OFF | L.BAR_MSIX, true);
  const writeMask = new Uint8Array(10);
  writeMask[1] = 0xc0;
  return { id: V.PCI_CAP_ID_MSIX, body, writeMask };
}

/** The device's attributes: named words of its state (EmuBackendDesc.attrs). */
const ATTRS: EmuAttrSpec[] = [
  { name: A.STATUS, kind: 'u32', word: L.G_STATUS, writer: 'provider', help: 'device_status as the driver wrote it (without DEVICE_NEEDS_RESET)' },
  { name: A.FEAT_LO, kind: 'u32', word: L.G_FEAT_LO, writer: 'provider', help: 'negotiated features, bits 0-31 (valid once FEATURES_OK was accepted)' },
  { name: A.FEAT_HI, kind: 'u32', word: L.G_FEAT_HI, writer: 'provider', help: 'negotiated features, bits 32-63' },
  { name: A.CONFIG_VECTOR, kind: 'u32', word: L.G_CONFIG_VEC, writer: 'provider', help: 'config_msix_vector (0xffff: none)' },
  { name: A.NEEDS_RESET, kind: 'u32', word: L.G_NEEDS_RESET, writer: 'backend', help: '0, or why the back-end set DEVICE_NEEDS_RESET (NeedsReset; cleared at reset)' },
  { name: A.ERR_QUEUE, kind: 'u32', word: L.G_ERR_QUEUE, writer: 'backend', help: 'the queue the NEEDS_RESET reason was found on' },
  { name: A.ISR, kind: 'u32', word: L.G_ISR, writer: 'backend', help: 'ISR status bits the back-end raised (a driver\'s ISR read clears them)' },
  { name: A.ACTIVE_PAIRS, kind: 'u32', word: L.G_ACTIVE_PAIRS, writer: 'backend', help: 'queue pairs in use (the control queue\'s MQ command; 1 after reset)' },
  { name: A.LINK_DOWN, kind: 'bool', word: L.G_LINK_DOWN, writer: 'provider', help: '1 while the link is down; the back-end raises the config interrupt on a change' },
  { name: A.RESETS, kind: 'u32', word: L.G_RESETS, writer: 'provider', help: 'device resets so far' },
  { name: A.MAC, kind: 'mac', word: L.G_MAC, writer: 'provider', help: 'the MAC address' },
  { name: A.MAX_PAIRS, kind: 'u32', word: L.G_MAX_PAIRS, writer: 'provider', help: 'max_virtqueue_pairs' },
  { name: A.GENERATION, kind: 'u32', word: L.G_GEN, writer: 'provider', help: 'bumped after every published change' },
];

/** The emulated virtio-net device's control half. */
export class VirtioNetDevice implements EmuProvider {
  readonly emu: EmuDevice;
  readonly config: L.VirtioNetConfig;
  /** shared state words (see layout.ts) */
  readonly state: Int32Array;
  /** shared statistics (see layout.ts STAT_NAMES) */
  readonly stats: Float64Array;
  /** the feature bits offered */
  readonly offered: bigint;
  /** queues: 2 per pair plus the control queue */
  readonly numQueues: number;
  /** MSI-X vectors */
  readonly msixVectors: number;
  /** the common configuration's register machine (BAR4 at COMMON_OFF) */
  private readonly common: VirtioCommonCfg;
  private readonly deviceCfg = new Uint8Array(V.NET_CFG_SIZE);
  private readonly msixTable = new Uint8Array(L.BAR_MSIX_SIZE);
  private readonly notify: Uint32Array;

  /** Create the device (config space, BAR memory, shared state) for a configuration. */
  constructor(config: L.VirtioNetConfig, name = 'virtio-net') {
    this.config = config;
    this.numQueues = 2 * config.pairs + 1;
    this.msixVectors = 2 * config.pairs + 2;
    this.state = new Int32Array(new SharedArrayBuffer(4 * L.stateWords(this.numQueues)));
    this.stats = new Float64Array(new SharedArrayBuffer(8 * L.STAT_COUNT));
    // Offer only what the engine (backend.ts) implements: no checksum or segmentation offloads, no
    // indirect descriptors, no event index, no packed ring.
    let f = F(V.VIRTIO_F_VERSION_1) | F(V.VIRTIO_NET_F_MAC) | F(V.VIRTIO_NET_F_STATUS) | F(V.VIRTIO_NET_F_CTRL_VQ);
    if (config.mrg) f |= F(V.VIRTIO_NET_F_MRG_RXBUF);
    if (config.pairs > 1) f |= F(V.VIRTIO_NET_F_MQ);
    this.offered = f;
    this.common = new VirtioCommonCfg({
      state: this.state, layout: L.COMMON_LAYOUT, offered: f, msixVectors: this.msixVectors,
      queueMax: Array.from({ length: this.numQueues }, () => config.queueSize),
      // MQ needs the control queue to choose the pairs in use.
      acceptable: (asked) => !(asked & F(V.VIRTIO_NET_F_MQ)) || (asked & F(V.VIRTIO_NET_F_CTRL_VQ)) !== 0n,
      publish: (fn) => this.publish(fn),
      onReset: () => this.netReset(),
      queueEnabled: (q, on) => this.emu.postEvent(on ? EVENT_QUEUE_ENABLED : EVENT_QUEUE_DISABLED, q),
      statusChanged: (status) => this.emu.postEvent(EVENT_STATUS_CHANGED, status),
      extraStatus: () => (Atomics.load(this.state, L.G_NEEDS_RESET) ? V.STATUS_DEVICE_NEEDS_RESET : 0),
    });
    const mac = config.mac;
    this.state[L.G_MAC] = mac[0] | (mac[1] << 8) | (mac[2] << 16) | (mac[3] << 24);
    this.state[L.G_MAC + 1] = mac[4] | (mac[5] << 8);
    this.state[L.G_MAX_PAIRS] = config.pairs;
    for (let q = 0; q < this.numQueues; q++) this.state[L.qw(q, QUEUE_DOORBELL)] = q; // doorbell id q (backendDesc)
    const cfg = new DataView(this.deviceCfg.buffer);
    this.deviceCfg.set(config.mac, V.NET_CFG_MAC);
    cfg.setUint16(V.NET_CFG_STATUS, V.VIRTIO_NET_S_LINK_UP, true);
    cfg.setUint16(V.NET_CFG_MAX_VQ_PAIRS, config.pairs, true);
    this.emu = new EmuDevice({
      name,
      pci: { vendorId: V.VIRTIO_PCI_VENDOR, deviceId: V.VIRTIO_PCI_MODERN_NET, classCode: L.PCI_CLASS_ETHERNET, revision: L.PCI_REVISION, subsystemVendorId: V.VIRTIO_PCI_VENDOR, subsystemId: L.PCI_SUBSYSTEM_ID },
      bars: [
        { index: L.BAR_MSIX, size: L.BAR_MSIX_SIZE, read: (off, buf) => buf.set(this.msixTable.subarray(off, off + buf.byteLength)), write: (off, data) => this.msixTable.set(data, off) },
        {
          index: L.BAR_CFG, size: L.BAR_CFG_SIZE, shared: [{ offset: L.NOTIFY_OFF, size: L.NOTIFY_SIZE }], mmap: config.mapNotify !== false,
          read: (off, buf) => this.barRead(off, buf), write: (off, data) => this.barWrite(off, data),
          // A notify page that is not mapped: each queue's notify register may be rung through an
          // eventfd (the lcore reads doorbell q as a write of q to queue q's register).
          ioeventfds: config.mapNotify === false && config.notifyFds !== false
            ? Array.from({ length: this.numQueues }, (_, q) => ({ offset: L.NOTIFY_OFF + q * L.NOTIFY_MULTIPLIER, size: 2 as const, datamatch: q }))
            : [],
        },
      ],
      irqs: [{ index: U.VFIO_PCI_INTX_IRQ_INDEX, count: 1 }, { index: U.VFIO_PCI_MSIX_IRQ_INDEX, count: this.msixVectors }],
      capabilities: [
        ...STRUCTURES.map(([type, off, len]) => virtioCap(type, off, len, type === V.VIRTIO_PCI_CAP_NOTIFY_CFG ? L.NOTIFY_MULTIPLIER : undefined)),
        pciCfgCap(() => this.emu),
        msixCap(this.msixVectors),
      ],
      onReset: () => this.pciReset(),
    });
    const mem = this.emu.barMemory(L.BAR_CFG);
    this.notify = new Uint32Array(mem.buffer, mem.byteOffset + L.NOTIFY_OFF, L.NOTIFY_SIZE / 4);
    // A doorbell that came as a message (REGION_WRITE, or the PCI_CFG window) wakes an idle loop at
    // once; one written through the mapping is seen at its next poll.
    this.emu.events.on('region-write', (index: number, off: number, len: number) => {
      if (index === L.BAR_CFG && off < L.NOTIFY_OFF + L.NOTIFY_SIZE && off + len > L.NOTIFY_OFF) this.emu.plane.wake();
    });
    this.pciReset();
  }

  /** Device facts (EmuProvider). */
  info(): EmuProviderInfo {
    return { type: 'virtio-net', maxQueuePairs: this.config.pairs, maxQueues: this.numQueues, maxEvents: 64 };
  }

  /**
   * What a back-end attaches with (EmuProvider): the queue table and attributes over the state
   * words, the statistics region, and per queue q doorbell id q: the polled notify word (mem), or
   * with FD doorbells the queue's ioeventfd (fd, data plane doorbell q), the notify words then
   * listed after them (ids numQueues + q) for doorbells that still come as messages.
   */
  backendDesc(): Omit<EmuBackendDesc, 'id'> {
    const words = this.state.buffer as SharedArrayBuffer, nq = this.numQueues;
    const notifyVa = this.emu.barAddress(L.BAR_CFG) + BigInt(L.NOTIFY_OFF);
    const fds = this.emu.ioeventfds(U.VFIO_PCI_BAR0_REGION_INDEX + L.BAR_CFG).length > 0;
    const doorbells: EmuDoorbellInfo[] = [];
    for (let q = 0; q < nq; q++) {
      const offset = L.NOTIFY_OFF + q * L.NOTIFY_MULTIPLIER;
      if (fds) doorbells.push({ id: q, kind: 'fd', bar: L.BAR_CFG, offset, size: 2, fd: this.emu.plane.doorbellFd(q) });
      doorbells.push({ id: fds ? nq + q : q, kind: 'mem', bar: L.BAR_CFG, offset, size: 4, va: notifyVa + BigInt(q * L.NOTIFY_MULTIPLIER) });
    }
    return {
      name: this.emu.name, type: 'virtio-net', plane: this.emu.plane.desc(),
      queues: { words, base: L.Q_BASE, stride: L.Q_WORDS, count: nq },
      attrs: { words, specs: ATTRS.map((a) => ({ ...a })) },
      generation: L.G_GEN,
      regions: { stats: this.stats.buffer as SharedArrayBuffer },
      doorbells,
    };
  }

  /** What VirtioNetBackend.open needs (plain data): the back-end description (id: the registry's, -1 without), the sizes, port for the mbufs. */
  engineArg(id = -1, port = 0): VirtioNetBackendArg {
    return { desc: { id, ...this.backendDesc() }, pairs: this.config.pairs, maxQueueSize: this.config.queueSize, wantKicks: this.config.wantKicks === true, port };
  }


  /** Statistics by name. */
  statistics(): Record<string, number> {
    const out: Record<string, number> = {};
    L.STAT_NAMES.forEach((n, i) => { out[n] = this.stats[i]; });
    return out;
  }

  /** Link up or down (VIRTIO_NET_S_LINK_UP in the status field); a change raises the configuration-change interrupt. */
  setLink(up: boolean): void {
    L.setLinkState(this.state, up);
  }

  /** The device_status a driver reads (with DEVICE_NEEDS_RESET when the device found a bad descriptor). */
  get deviceStatus(): number {
    return this.common.status;
  }

  /** Release the device (the lcore loop must have returned). */
  close(): void {
    this.emu.close();
  }

  /** Function-level reset: virtio state and the MSI-X table (every vector masked). */
  private pciReset(): void {
    this.common.reset();
    this.msixTable.fill(0);
    for (let v = 0; v < this.msixVectors; v++) this.msixTable[L.MSIX_TABLE_OFF + 16 * v + 12] = 1;
  }

  /** The net device's part of a virtio reset (inside the common configuration's publish): the lcore restarts from scratch. */
  private netReset(): void {
    const st = this.state;
    st[L.G_NEEDS_RESET] = 0;
    st[L.G_ERR_QUEUE] = 0;
    st[L.G_ISR] = 0;
    st[L.G_ACTIVE_PAIRS] = 1;
    this.notify.fill(L.NOTIFY_IDLE);
    Atomics.add(st, L.G_RESETS, 1); // the lcore's crash budget starts again
  }

  // ---- BAR4: trapped registers ----

  private barRead(off: number, buf: Uint8Array): void {
    if (off < L.COMMON_OFF + V.COMMON_CFG_SIZE) {
      this.common.read(off - L.COMMON_OFF, buf);
      return;
    }
    buf.fill(0);
    if (off === L.ISR_OFF) {
      buf[0] = Atomics.exchange(this.state, L.G_ISR, 0) & 0xff; // reading clears
    } else if (off >= L.DEVICE_OFF && off < L.DEVICE_OFF + V.NET_CFG_SIZE) {
      const o = off - L.DEVICE_OFF;
      this.deviceCfg[V.NET_CFG_STATUS] = Atomics.load(this.state, L.G_LINK_DOWN) ? 0 : V.VIRTIO_NET_S_LINK_UP;
      buf.set(this.deviceCfg.subarray(o, Math.min(o + buf.byteLength, V.NET_CFG_SIZE)));
    }
  }

  private barWrite(off: number, data: Uint8Array): void {
    // ISR and device configuration are read-only
    if (off < L.COMMON_OFF + V.COMMON_CFG_SIZE) this.common.write(off - L.COMMON_OFF, data);
  }

  /** Change state the lcore reads while it is paused, then tell it to re-read. */
  private publish(fn: () => void): void {
    this.emu.plane.quiesce(() => {
      fn();
      Atomics.add(this.state, L.G_GEN, 1);
    });
  }
}

