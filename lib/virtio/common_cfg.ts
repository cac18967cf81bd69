/**
 * The device side of the virtio 1.x common configuration (struct virtio_pci_common_cfg, OASIS
 * virtio 1.2, 4.1.4.3): the register machine a device runs behind its trapped BAR accesses. Feature
 * and queue selects, feature negotiation (FEATURES_OK refused for features not offered or without
 * VERSION_1), device status and reset, queue size, vector, enable and ring addresses.
 *
 * What a data path reads (status, accepted features, vectors, each queue's words) lives in an
 * Int32Array of state words at indexes the device chooses, so a device whose data path runs on
 * another thread shares them; every change goes through the device's publish hook (the emulated
 * virtio-net device pauses its lcore there). The selects stay private: only the register reads
 * depend on them. Used by drivers/emu/virtio-net and by the tests' in-process virtio devices.
 */
import * as V from './virtio.js';
import * as Q from '../emudev/backend.js';

/**
 * A queue's words, from its base index (CommonCfgLayout.queueBase): emudev's queue table
 * (lib/emudev/backend.ts QUEUE_*: size, enable, vector, the three ring addresses as lo/hi halves, an
 * epoch bumped at every enable and reset), so a back-end reads a virtio device's queues there.
 */
export const Q_SIZE = Q.QUEUE_SIZE, Q_ENABLE = Q.QUEUE_ENABLE, Q_VECTOR = Q.QUEUE_VECTOR, Q_DESC_LO = Q.QUEUE_DESC_LO, Q_DESC_HI = Q.QUEUE_DESC_HI;
export const Q_AVAIL_LO = Q.QUEUE_AVAIL_LO, Q_AVAIL_HI = Q.QUEUE_AVAIL_HI, Q_USED_LO = Q.QUEUE_USED_LO, Q_USED_HI = Q.QUEUE_USED_HI, Q_EPOCH = Q.QUEUE_EPOCH;
/** Words each queue needs (the queue table's, QUEUE_DOORBELL included: the device sets that one). */
export const Q_COMMON_WORDS = Q.QUEUE_WORDS;

/** Where the machine's device-wide words are and where each queue's words start. */
export interface CommonCfgLayout {
  /** device_status as the driver wrote it (without DEVICE_NEEDS_RESET) */
  status: number;
  /** the accepted features, low and high 32 bits (valid once FEATURES_OK was accepted) */
  featLo: number;
  featHi: number;
  /** config_msix_vector */
  configVector: number;
  /** index of queue q's Q_SIZE word */
  queueBase(q: number): number;
}

/** What a device tells the register machine. */
export interface CommonCfgSpec {
  /** the state words (written here, read by the device's data path) */
  state: Int32Array;
  layout: CommonCfgLayout;
  /** the feature bits offered */
  offered: bigint;
  /** each queue's largest size (a power of two), in virtqueue order: their count is num_queues */
  queueMax: readonly number[];
  /** MSI-X vectors: a vector at or beyond this reads back NO_VECTOR (mapping failed) */
  msixVectors: number;
  /** device-specific refusal of a feature set the generic checks let through (e.g. MQ without CTRL_VQ) */
  acceptable?(features: bigint): boolean;
  /** Make a change the data path reads (default: run fn); the emulated device pauses its lcore around it. */
  publish?(fn: () => void): void;
  /** The rest of a device reset, run inside the same publish after the registers are back to their defaults. */
  onReset?(): void;
  /** Status bits the device adds when device_status is read (DEVICE_NEEDS_RESET). */
  extraStatus?(): number;
  /** Queue q was enabled by the driver (true) or disabled by a reset (false); called after the change is published. */
  queueEnabled?(q: number, enabled: boolean): void;
  /** The driver wrote device_status (0: a reset); called after the change is published, with the status kept. */
  statusChanged?(status: number): void;
  /** queue_notify_off of queue q (default q) */
  notifyOff?(q: number): number;
}

/** [offset, width] of each field of struct virtio_pci_common_cfg (64-bit fields as two 32-bit halves). */
const FIELDS: ReadonlyArray<readonly [number, number]> = [
  [V.COMMON_DFSELECT, 4], [V.COMMON_DF, 4], [V.COMMON_GFSELECT, 4], [V.COMMON_GF, 4], [V.COMMON_MSIX, 2], [V.COMMON_NUMQ, 2],
  [V.COMMON_STATUS, 1], [V.COMMON_CFGGENERATION, 1], [V.COMMON_Q_SELECT, 2], [V.COMMON_Q_SIZE, 2], [V.COMMON_Q_MSIX, 2],
  [V.COMMON_Q_ENABLE, 2], [V.COMMON_Q_NOFF, 2], [V.COMMON_Q_DESCLO, 4], [V.COMMON_Q_DESCHI, 4], [V.COMMON_Q_AVAILLO, 4],
  [V.COMMON_Q_AVAILHI, 4], [V.COMMON_Q_USEDLO, 4], [V.COMMON_Q_USEDHI, 4],
];

const F = V.featureBit;
const NO_VECTOR = V.VIRTIO_MSI_NO_VECTOR;

/** The common configuration's register machine of one device. */
export class VirtioCommonCfg {
  private readonly spec: CommonCfgSpec;
  private readonly st: Int32Array;
  private readonly l: CommonCfgLayout;
  private dfSelect = 0;
  private gfSelect = 0;
  private qSelect = 0;
  private driverFeatures = [0, 0];

  /** A machine over spec.state; call reset() before a driver sees the device. */
  constructor(spec: CommonCfgSpec) {
    this.spec = spec;
    this.st = spec.state;
    this.l = spec.layout;
  }

  /** num_queues. */
  get numQueues(): number {
    return this.spec.queueMax.length;
  }

  /** device_status as a driver reads it. */
  get status(): number {
    return (this.st[this.l.status] | (this.spec.extraStatus?.() ?? 0)) & 0xff;
  }

  /** The features accepted at FEATURES_OK (0 before). */
  get features(): bigint {
    return (BigInt(this.st[this.l.featHi] >>> 0) << 32n) | BigInt(this.st[this.l.featLo] >>> 0);
  }

  /** Queue q's word w (Q_SIZE ... Q_EPOCH). */
  queueWord(q: number, w: number): number {
    return this.st[this.l.queueBase(q) + w];
  }

  /** One of queue q's ring addresses (Q_DESC_LO, Q_AVAIL_LO or Q_USED_LO) as a number. */
  queueAddress(q: number, lo: number): number {
    return (this.queueWord(q, lo) >>> 0) + (this.queueWord(q, lo + 1) >>> 0) * 2 ** 32;
  }

  /** Device reset (device_status 0 written, or a function-level reset): every field back to its default. */
  reset(): void {
    const was: number[] = [];
    for (let q = 0; q < this.numQueues; q++) if (this.st[this.l.queueBase(q) + Q_ENABLE] !== 0) was.push(q);
    this.publish(() => {
      const st = this.st, l = this.l;
      this.dfSelect = this.gfSelect = this.qSelect = 0;
      this.driverFeatures = [0, 0];
      st[l.status] = 0;
      st[l.featLo] = st[l.featHi] = 0;
      st[l.configVector] = NO_VECTOR;
      for (let q = 0; q < this.numQueues; q++) {
        const b = l.queueBase(q);
        st[b + Q_SIZE] = this.spec.queueMax[q];
        st[b + Q_ENABLE] = 0;
        st[b + Q_VECTOR] = NO_VECTOR;
        for (let w = Q_DESC_LO; w <= Q_USED_HI; w++) st[b + w] = 0;
        st[b + Q_EPOCH]++;
      }
      this.spec.onReset?.();
    });
    for (const q of was) this.spec.queueEnabled?.(q, false);
  }

  /** A driver's read of buf.byteLength bytes at off in the structure (bytes no field covers read 0). */
  read(off: number, buf: Uint8Array): void {
    buf.fill(0);
    for (let i = 0; i < buf.byteLength; i++) {
      const a = off + i;
      const f = FIELDS.find(([o, n]) => a >= o && a < o + n);
      if (f) buf[i] = (this.readField(f[0]) >>> (8 * (a - f[0]))) & 0xff;
    }
  }

  /** A driver's write at off: byte-exact, each field it touches is read, patched and written whole. */
  write(off: number, data: Uint8Array): void {
    for (const [o, n] of FIELDS) {
      const lo = Math.max(o, off), hi = Math.min(o + n, off + data.byteLength);
      if (lo >= hi) continue;
      let v = this.readField(o);
      for (let a = lo; a < hi; a++) {
        const sh = 8 * (a - o);
        v = ((v & ~(0xff << sh)) | (data[a - off] << sh)) >>> 0;
      }
      this.writeField(o, v);
    }
  }

  private publish(fn: () => void): void {
    if (this.spec.publish) this.spec.publish(fn);
    else fn();
  }

  private queueExists(): boolean {
    return this.qSelect < this.numQueues;
  }

  private q(w: number): number {
    return this.l.queueBase(this.qSelect) + w;
  }

  private readField(field: number): number {
    const st = this.st;
    const qx = this.queueExists();
    switch (field) {
      case V.COMMON_DFSELECT: return this.dfSelect;
      case V.COMMON_DF: return this.dfSelect > 1 ? 0 : Number((this.spec.offered >> BigInt(32 * this.dfSelect)) & 0xffffffffn);
      case V.COMMON_GFSELECT: return this.gfSelect;
      case V.COMMON_GF: return this.gfSelect > 1 ? 0 : this.driverFeatures[this.gfSelect];
      case V.COMMON_MSIX: return st[this.l.configVector];
      case V.COMMON_NUMQ: return this.numQueues;
      case V.COMMON_STATUS: return this.status;
      case V.COMMON_CFGGENERATION: return 0; // the device configuration never changes under a driver
      case V.COMMON_Q_SELECT: return this.qSelect;
      case V.COMMON_Q_SIZE: return qx ? st[this.q(Q_SIZE)] : 0;
      case V.COMMON_Q_MSIX: return qx ? st[this.q(Q_VECTOR)] : NO_VECTOR;
      case V.COMMON_Q_ENABLE: return qx ? st[this.q(Q_ENABLE)] : 0;
      case V.COMMON_Q_NOFF: return qx ? (this.spec.notifyOff?.(this.qSelect) ?? this.qSelect) : 0;
      default: return qx ? st[this.q(Q_DESC_LO + (field - V.COMMON_Q_DESCLO) / 4)] >>> 0 : 0; // the six address halves
    }
  }

  /** A whole-field write; whatever the data path reads changes inside publish. */
  private writeField(field: number, v: number): void {
    const st = this.st;
    switch (field) {
      case V.COMMON_DFSELECT: this.dfSelect = v; return;
      case V.COMMON_GFSELECT: this.gfSelect = v; return;
      case V.COMMON_GF:
        // Features are frozen once FEATURES_OK was accepted.
        if (this.gfSelect <= 1 && !(st[this.l.status] & V.STATUS_FEATURES_OK)) this.driverFeatures[this.gfSelect] = v;
        return;
      case V.COMMON_Q_SELECT: this.qSelect = v; return;
      case V.COMMON_STATUS: this.writeStatus(v); return;
      case V.COMMON_MSIX: this.publish(() => { st[this.l.configVector] = this.vector(v); }); return;
      default: break;
    }
    if (!this.queueExists()) return;
    const enabled = st[this.q(Q_ENABLE)] !== 0;
    switch (field) {
      case V.COMMON_Q_SIZE:
        // A split queue's size is a power of two up to the maximum; other values are ignored.
        if (!enabled && v >= 1 && v <= this.spec.queueMax[this.qSelect] && (v & (v - 1)) === 0) this.publish(() => { st[this.q(Q_SIZE)] = v; });
        return;
      case V.COMMON_Q_MSIX: this.publish(() => { st[this.q(Q_VECTOR)] = this.vector(v); }); return;
      case V.COMMON_Q_ENABLE:
        // 0 is not a valid write without VIRTIO_F_RING_RESET: queues stop only at device reset.
        if (v === 1 && !enabled) {
          this.publish(() => { st[this.q(Q_ENABLE)] = 1; st[this.q(Q_EPOCH)]++; });
          this.spec.queueEnabled?.(this.qSelect, true);
        }
        return;
      case V.COMMON_Q_DESCLO: case V.COMMON_Q_DESCHI: case V.COMMON_Q_AVAILLO:
      case V.COMMON_Q_AVAILHI: case V.COMMON_Q_USEDLO: case V.COMMON_Q_USEDHI:
        if (!enabled) this.publish(() => { st[this.q(Q_DESC_LO + (field - V.COMMON_Q_DESCLO) / 4)] = v | 0; });
        return;
      default: return; // read-only fields
    }
  }

  /** An MSI-X vector the driver may assign: one that exists, else NO_VECTOR (the spec's "mapping failed"). */
  private vector(v: number): number {
    return v < this.spec.msixVectors ? v : NO_VECTOR;
  }

  private writeStatus(v: number): void {
    if (v === 0) { this.reset(); this.spec.statusChanged?.(0); return; }
    const st = this.st, l = this.l;
    const old = st[l.status];
    let s = v & ~V.STATUS_DEVICE_NEEDS_RESET & 0xff;
    if ((s & V.STATUS_FEATURES_OK) && !(old & V.STATUS_FEATURES_OK)) {
      const asked = (BigInt(this.driverFeatures[1] >>> 0) << 32n) | BigInt(this.driverFeatures[0] >>> 0);
      // Refused: bits not offered, a modern device driven without VERSION_1, or what the device refuses.
      const ok = (asked & ~this.spec.offered) === 0n && (asked & F(V.VIRTIO_F_VERSION_1)) !== 0n && (this.spec.acceptable?.(asked) ?? true);
      if (!ok) s &= ~V.STATUS_FEATURES_OK;
      else this.publish(() => { st[l.featLo] = this.driverFeatures[0] | 0; st[l.featHi] = this.driverFeatures[1] | 0; });
    }
    this.publish(() => { st[l.status] = s; });
    this.spec.statusChanged?.(s);
  }
}
