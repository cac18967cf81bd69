/**
 * The virtio 1.x modern PCI transport (OASIS virtio 1.2, 4.1) on the VfioDevice interface: the
 * vendor capabilities found by walking config space through the config region, the BARs they
 * name opened with Bar (mmap where VFIO allows it, REGION_READ/WRITE or pread/pwrite elsewhere),
 * device status, 64-bit feature negotiation, virtqueue registration and notify addresses, and
 * device-specific configuration reads under config_generation.
 *
 * Control plane only (main thread): the data path reaches a queue's notify register through the
 * BAR's mapping (Bar.data() -> MappedBar in the worker).
 */
import { Bar } from '../../../src/iommu/bar.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import { pciRegionName } from '../../../src/iommu/device.js';
import * as U from '../../../src/iommu/vfio-uapi.js';
import { sleepMs } from '../../../src/os/sleep.js';
import * as V from '../../../lib/virtio/virtio.js';
import {
  enableBusMaster, pciCapabilities, readConfigSpace, PCI_COMMAND_INTX_DISABLE, PCI_STATUS, PCI_STATUS_CAP_LIST,
} from '../../bus/pci/config.js';

/** One virtio structure a vendor capability points at: BAR, offset and length. */
export interface VirtioCapRef {
  /** config-space offset of the capability (for messages) */
  at: number;
  bar: number;
  offset: number;
  length: number;
}

/** The virtio structures of a modern device, from its vendor capabilities. */
export interface VirtioPciCaps {
  common: VirtioCapRef;
  notify: VirtioCapRef & { multiplier: number };
  isr: VirtioCapRef | null;
  device: VirtioCapRef | null;
  /** every vendor capability seen, in list order (for messages) */
  all: Array<{ at: number; cfgType: number; bar: number; offset: number; length: number }>;
}

/**
 * Walk the capability list of a config-space image and pick the first usable virtio structure of
 * each type (4.1.4: the driver uses the first it can). Throws naming the device (what) and the
 * missing or malformed capability.
 */
export function parseVirtioCaps(cfg: Uint8Array, what: string): VirtioPciCaps {
  if (cfg.length < 0x40) throw new Error(`${what}: config space image of ${cfg.length} bytes is too short (needs the 64-byte header)`);
  const dv = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  if ((dv.getUint16(PCI_STATUS, true) & PCI_STATUS_CAP_LIST) === 0) {
    throw new Error(`${what}: the PCI status register says there is no capability list, so there are no virtio capabilities: not a modern (virtio 1.x) device`);
  }
  const all: VirtioPciCaps['all'] = [];
  let common: VirtioCapRef | null = null, isr: VirtioCapRef | null = null, device: VirtioCapRef | null = null;
  let notify: (VirtioCapRef & { multiplier: number }) | null = null;
  for (const { id, at: p } of pciCapabilities(cfg, what)) {
    if (id !== V.PCI_CAP_ID_VNDR) continue;
    const len = cfg[p + V.CAP_LEN];
    if (len < V.CAP_SIZE || p + V.CAP_SIZE > cfg.length) continue; // too short to be a virtio_pci_cap
    const cfgType = cfg[p + V.CAP_CFG_TYPE], bar = cfg[p + V.CAP_BAR];
    const ref: VirtioCapRef = { at: p, bar, offset: dv.getUint32(p + V.CAP_OFFSET, true), length: dv.getUint32(p + V.CAP_LENGTH, true) };
    all.push({ at: p, cfgType, bar, offset: ref.offset, length: ref.length });
    if (bar > 5) continue; // reserved BAR values: 4.1.4 says ignore the capability
    if (cfgType === V.VIRTIO_PCI_CAP_COMMON_CFG && !common) common = ref;
    else if (cfgType === V.VIRTIO_PCI_CAP_NOTIFY_CFG && !notify && len >= V.CAP_NOTIFY_SIZE && p + V.CAP_NOTIFY_SIZE <= cfg.length) {
      notify = { ...ref, multiplier: dv.getUint32(p + V.CAP_NOTIFY_OFF_MULTIPLIER, true) };
    } else if (cfgType === V.VIRTIO_PCI_CAP_ISR_CFG && !isr) isr = ref;
    else if (cfgType === V.VIRTIO_PCI_CAP_DEVICE_CFG && !device) device = ref;
  }
  const list = all.map((c) => `type ${c.cfgType} at 0x${c.at.toString(16)} (BAR${c.bar}+0x${c.offset.toString(16)})`).join(', ') || 'none';
  if (!common) throw new Error(`${what}: no virtio common configuration capability (cfg_type 1) in config space (vendor capabilities: ${list})`);
  if (common.length < V.COMMON_CFG_SIZE) throw new Error(`${what}: the common configuration capability at 0x${common.at.toString(16)} is ${common.length} bytes; virtio 1.x needs ${V.COMMON_CFG_SIZE}`);
  if (!notify) throw new Error(`${what}: no virtio notification capability (cfg_type 2) in config space (vendor capabilities: ${list})`);
  return { common, notify, isr, device, all };
}

/** The features this driver can use, as a mask. */
export const DRIVER_FEATURES = [
  V.VIRTIO_F_VERSION_1, V.VIRTIO_F_ACCESS_PLATFORM, V.VIRTIO_NET_F_MAC, V.VIRTIO_NET_F_STATUS, V.VIRTIO_NET_F_MTU,
  V.VIRTIO_NET_F_MRG_RXBUF, V.VIRTIO_NET_F_CTRL_VQ, V.VIRTIO_NET_F_MQ, V.VIRTIO_NET_F_CTRL_RX,
].reduce((m, b) => m | V.featureBit(b), 0n);

/** What a user may turn off (devargs). */
export interface FeatureChoice {
  /** accept VIRTIO_NET_F_MRG_RXBUF (default true) */
  mrgRxbuf?: boolean;
  /** accept the control queue and what needs it: CTRL_VQ, MQ, CTRL_RX (default true) */
  ctrlVq?: boolean;
}

/**
 * The features to accept from what a device offers: the offered ones this driver can use, minus
 * what the user turned off, minus what depends on a feature that is missing (MQ and CTRL_RX need
 * CTRL_VQ). Throws when the device lacks VERSION_1 (a legacy-only device).
 */
export function negotiateFeatures(offered: bigint, choice: FeatureChoice, what: string): bigint {
  const has = (f: bigint, bit: number): boolean => (f & V.featureBit(bit)) !== 0n;
  if (!has(offered, V.VIRTIO_F_VERSION_1)) {
    throw new Error(`${what}: the device does not offer VIRTIO_F_VERSION_1 (offers ${V.featureNames(offered)}); this driver drives modern virtio 1.x devices only (QEMU: disable-legacy=on)`);
  }
  let f = offered & DRIVER_FEATURES;
  if (choice.mrgRxbuf === false) f &= ~V.featureBit(V.VIRTIO_NET_F_MRG_RXBUF);
  if (choice.ctrlVq === false) f &= ~V.featureBit(V.VIRTIO_NET_F_CTRL_VQ);
  if (!has(f, V.VIRTIO_NET_F_CTRL_VQ)) f &= ~(V.featureBit(V.VIRTIO_NET_F_MQ) | V.featureBit(V.VIRTIO_NET_F_CTRL_RX));
  return f;
}

/** The queue size to use: the request rounded up to a power of two, within the device's maximum and a cap. */
export function chooseQueueSize(requested: number, deviceMax: number, cap = V.VIRTQ_MAX_SIZE): number {
  const floorPow2 = (n: number): number => (n < 1 ? 0 : 2 ** Math.floor(Math.log2(n)));
  const limit = floorPow2(Math.min(deviceMax, cap, V.VIRTQ_MAX_SIZE));
  const want = 2 ** Math.ceil(Math.log2(Math.max(2, requested)));
  return Math.min(want, limit);
}

/** The device cleared FEATURES_OK: it cannot work with the features the driver accepted. */
export class FeaturesRefused extends Error {
  override readonly name = 'FeaturesRefused';
}

/** A modern virtio PCI device: its structures found and its BARs open. */
export class VirtioPci {
  readonly dev: VfioDevice;
  readonly caps: VirtioPciCaps;
  /** open BARs by index (the ones the capabilities name) */
  private readonly bars = new Map<number, Bar>();
  private closed = false;

  private constructor(dev: VfioDevice, caps: VirtioPciCaps) {
    this.dev = dev;
    this.caps = caps;
  }

  /**
   * Read the device's config space through the config region, find the virtio capabilities, check
   * that their structures fit their BARs, open those BARs and enable memory decoding and bus
   * mastering (the device DMAs the rings; interrupts stay off: INTx disabled, no MSI-X).
   */
  static open(dev: VfioDevice, opts: { mmap?: boolean } = {}): VirtioPci {
    const caps = parseVirtioCaps(readConfigSpace(dev), dev.name);
    const v = new VirtioPci(dev, caps);
    try {
      const refs: Array<[string, VirtioCapRef | null]> = [['common configuration', caps.common], ['notification', caps.notify], ['ISR', caps.isr], ['device configuration', caps.device]];
      for (const [name, ref] of refs) {
        if (!ref) continue;
        let bar = v.bars.get(ref.bar);
        if (!bar) {
          bar = Bar.open(dev, U.VFIO_PCI_BAR0_REGION_INDEX + ref.bar, { mmap: opts.mmap });
          v.bars.set(ref.bar, bar);
        }
        if (ref.offset + ref.length > bar.size) {
          throw new Error(`${dev.name}: the virtio ${name} capability at 0x${ref.at.toString(16)} names BAR${ref.bar}+0x${ref.offset.toString(16)} (+${ref.length}) beyond the BAR's ${bar.size} bytes`);
        }
      }
      enableBusMaster(dev, PCI_COMMAND_INTX_DISABLE);
      return v;
    } catch (e) {
      v.close();
      throw e;
    }
  }

  /** The BAR holding a structure. */
  bar(ref: VirtioCapRef): Bar {
    return this.bars.get(ref.bar)!;
  }

  private get common(): Bar {
    return this.bars.get(this.caps.common.bar)!;
  }

  private c(off: number): number {
    return this.caps.common.offset + off;
  }

  /** device_status now. */
  status(): number {
    return this.common.read8(this.c(V.COMMON_STATUS));
  }

  /** Write device_status. */
  setStatus(s: number): void {
    this.common.write8(this.c(V.COMMON_STATUS), s);
  }

  /** Add bits to device_status (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK). */
  addStatus(bits: number): void {
    this.setStatus(this.status() | bits);
  }

  /**
   * Reset the device: write 0 to device_status and wait until it reads 0 (4.1.4.3.2), after which
   * the device no longer touches the rings. Throws naming the device after timeoutMs.
   */
  reset(timeoutMs = 5000): void {
    this.setStatus(0);
    const t0 = Date.now();
    for (let s = this.status(); s !== 0; s = this.status()) {
      if (Date.now() - t0 > timeoutMs) throw new Error(`${this.dev.name}: device_status still reads 0x${s.toString(16)} ${timeoutMs} ms after a reset (writing 0); the device did not reset`);
      sleepMs(1);
    }
  }

  /** The 64 feature bits the device offers. */
  deviceFeatures(): bigint {
    const b = this.common;
    b.write32(this.c(V.COMMON_DFSELECT), 0);
    const lo = b.read32(this.c(V.COMMON_DF));
    b.write32(this.c(V.COMMON_DFSELECT), 1);
    const hi = b.read32(this.c(V.COMMON_DF));
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** Write the driver's 64 feature bits. */
  setDriverFeatures(f: bigint): void {
    const b = this.common;
    b.write32(this.c(V.COMMON_GFSELECT), 0);
    b.write32(this.c(V.COMMON_GF), Number(f & 0xffffffffn));
    b.write32(this.c(V.COMMON_GFSELECT), 1);
    b.write32(this.c(V.COMMON_GF), Number((f >> 32n) & 0xffffffffn));
  }

  /**
   * The initialization sequence up to FEATURES_OK (3.1.1): reset, ACKNOWLEDGE, DRIVER, accept
   * features, FEATURES_OK and check that the device kept it. Returns { offered, accepted }.
   */
  negotiate(choice: FeatureChoice): { offered: bigint; accepted: bigint } {
    return this.negotiateWith((offered) => negotiateFeatures(offered, choice, this.dev.name));
  }

  /**
   * negotiate() with the features chosen by pick from the offer (pick may throw to refuse the
   * device): the one place the 3.1.1 sequence is written, also for tests that ask for features a
   * driver would not. A device that refuses the choice is marked FAILED and the error says so.
   */
  negotiateWith(pick: (offered: bigint) => bigint): { offered: bigint; accepted: bigint } {
    this.reset();
    this.addStatus(V.STATUS_ACKNOWLEDGE);
    this.addStatus(V.STATUS_DRIVER);
    const offered = this.deviceFeatures();
    let accepted: bigint;
    try {
      accepted = pick(offered);
    } catch (e) {
      this.addStatus(V.STATUS_FAILED);
      throw e;
    }
    this.setDriverFeatures(accepted);
    this.addStatus(V.STATUS_FEATURES_OK);
    if ((this.status() & V.STATUS_FEATURES_OK) === 0) {
      this.addStatus(V.STATUS_FAILED);
      throw new FeaturesRefused(`${this.dev.name}: the device refused the features ${V.featureNames(accepted)} (FEATURES_OK did not stick; offered ${V.featureNames(offered)})`);
    }
    this.common.write16(this.c(V.COMMON_MSIX), V.VIRTIO_MSI_NO_VECTOR); // poll mode: no config interrupt
    return { offered, accepted };
  }

  /** Route configuration-change interrupts to MSI-X vector v (NO_VECTOR: none); throws when the device refuses it. */
  setConfigVector(v: number): void {
    this.common.write16(this.c(V.COMMON_MSIX), v);
    const got = this.common.read16(this.c(V.COMMON_MSIX));
    if (got !== v) throw new Error(`${this.dev.name}: the device refused MSI-X vector ${v} for configuration changes (config_msix_vector reads back 0x${got.toString(16)})`);
  }

  /** num_queues: how many virtqueues the device has. */
  numQueues(): number {
    return this.common.read16(this.c(V.COMMON_NUMQ));
  }

  /** The largest size of virtqueue vq (0: the queue does not exist). */
  queueMaxSize(vq: number): number {
    this.common.write16(this.c(V.COMMON_Q_SELECT), vq);
    return this.common.read16(this.c(V.COMMON_Q_SIZE));
  }

  /**
   * Register virtqueue vq: size, the three parts' IOVAs, no MSI-X vector (poll mode), then enable
   * it, after the notify register's offset is checked (and accepted by beforeEnable, which may
   * throw): a queue that fails is never left enabled. Returns that offset in the notification BAR.
   */
  setupQueue(vq: number, size: number, desc: bigint, avail: bigint, used: bigint, beforeEnable?: (notifyOff: number) => void, vector = V.VIRTIO_MSI_NO_VECTOR): number {
    const b = this.common;
    const lohi = (off: number, a: bigint): void => {
      b.write32(this.c(off), Number(a & 0xffffffffn));
      b.write32(this.c(off + 4), Number(a >> 32n));
    };
    b.write16(this.c(V.COMMON_Q_SELECT), vq);
    const max = b.read16(this.c(V.COMMON_Q_SIZE));
    if (max === 0) throw new Error(`${this.dev.name}: virtqueue ${vq} does not exist (queue_size reads 0; num_queues ${this.numQueues()})`);
    if (size > max) throw new Error(`${this.dev.name}: virtqueue ${vq}: size ${size} is above the device's maximum ${max}`);
    if (b.read16(this.c(V.COMMON_Q_ENABLE)) !== 0) throw new Error(`${this.dev.name}: virtqueue ${vq} is already enabled (the device was not reset)`);
    b.write16(this.c(V.COMMON_Q_SIZE), size);
    b.write16(this.c(V.COMMON_Q_MSIX), vector);
    if (vector !== V.VIRTIO_MSI_NO_VECTOR && b.read16(this.c(V.COMMON_Q_MSIX)) !== vector) {
      throw new Error(`${this.dev.name}: virtqueue ${vq}: the device refused MSI-X vector ${vector} (queue_msix_vector reads back 0x${b.read16(this.c(V.COMMON_Q_MSIX)).toString(16)}); it has too few vectors for one per RX queue, or MSI-X is not enabled`);
    }
    lohi(V.COMMON_Q_DESCLO, desc);
    lohi(V.COMMON_Q_AVAILLO, avail);
    lohi(V.COMMON_Q_USEDLO, used);
    const noff = b.read16(this.c(V.COMMON_Q_NOFF));
    const n = this.caps.notify;
    const off = n.offset + noff * n.multiplier;
    if (off + 2 > n.offset + n.length) {
      throw new Error(`${this.dev.name}: virtqueue ${vq}: queue_notify_off ${noff} x multiplier ${n.multiplier} lies outside the notification structure (BAR${n.bar}+0x${n.offset.toString(16)}, ${n.length} bytes)`);
    }
    beforeEnable?.(off);
    b.write16(this.c(V.COMMON_Q_ENABLE), 1);
    return off;
  }

  /** Whether the notify register at off may be written from a worker (it is inside an mmap'd area). */
  notifyMapped(off: number): boolean {
    return this.bar(this.caps.notify).isMapped(off, 2);
  }

  /** Ring virtqueue vq's doorbell from the main thread (mapped or not). */
  notify(off: number, vq: number): void {
    this.bar(this.caps.notify).write16(off, vq);
  }

  /** Where the notification BAR is, for messages ("BAR4"). */
  notifyBarName(): string {
    return pciRegionName(U.VFIO_PCI_BAR0_REGION_INDEX + this.caps.notify.bar);
  }

  /**
   * Read the device-specific configuration consistently: fn reads fields with the accessors given,
   * and is retried while config_generation changes under it (4.1.4.3.1).
   */
  readDeviceConfig<T>(fn: (r: { u8(off: number): number; u16(off: number): number; u32(off: number): number }) => T): T {
    const d = this.caps.device;
    if (!d) throw new Error(`${this.dev.name}: the device has no device configuration capability (cfg_type 4)`);
    const bar = this.bar(d);
    const check = (off: number, w: number): number => {
      if (off + w > d.length) throw new RangeError(`${this.dev.name}: device configuration field at +${off} (${w} bytes) is beyond its ${d.length} bytes`);
      return d.offset + off;
    };
    const r = { u8: (o: number) => bar.read8(check(o, 1)), u16: (o: number) => bar.read16(check(o, 2)), u32: (o: number) => bar.read32(check(o, 4)) };
    for (let tries = 0; ; tries++) {
      const g0 = this.common.read8(this.c(V.COMMON_CFGGENERATION));
      const v = fn(r);
      if (this.common.read8(this.c(V.COMMON_CFGGENERATION)) === g0) return v;
      if (tries > 100) throw new Error(`${this.dev.name}: config_generation keeps changing; the device configuration cannot be read consistently`);
    }
  }

  /** Length of the device-specific configuration (0 when there is none). */
  deviceConfigLength(): number {
    return this.caps.device?.length ?? 0;
  }

  /** Unmap the BARs (the device should be reset first so it stops DMA). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const b of this.bars.values()) b.close();
    this.bars.clear();
  }

  /** Whether close() was called. */
  get isClosed(): boolean {
    return this.closed;
  }
}
