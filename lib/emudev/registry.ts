/**
 * The emudev registry (the seed's rte_emudev_allocate / get_dev_by_name / release and the provider
 * ops table): every emulated device of this process, by name and by id, and the main thread's
 * handle on each. A provider (a device model: drivers/emu) implements EmuProvider and is allocated
 * here; a back-end finds it by name or id and asks it for what it needs (backend.ts on an lcore).
 */
import type { EmuDevice } from './emudev.js';
import { attrSpec, queueInfoOf, type EmuAttrSpec, type EmuBackendDesc, type EmuDoorbellInfo, type EmuIrqInfo, type EmuQueueInfo } from './backend.js';
import { EVENT_ATTR_CHANGED, type EmuEventChannel } from './events.js';

/** What a provider says of its device (the seed's rte_emudev_info). */
export interface EmuProviderInfo {
  /** device type, e.g. 'virtio-net', 'dmatest' */
  type: string;
  /** queue pairs the device may have (0: not a queue-pair device) */
  maxQueuePairs: number;
  /** queues in its queue table */
  maxQueues: number;
  /** event records a subscription's ring holds by default */
  maxEvents: number;
}

/** A device model as the registry holds it: the seed's rte_emudev_ops, in TypeScript style. */
export interface EmuProvider {
  /** the PCI device model a vfio-user server serves */
  readonly emu: EmuDevice;
  /** device facts */
  info(): EmuProviderInfo;
  /** what a back-end lcore attaches with (EmuBackend.attach); id is filled in by the registry */
  backendDesc(): Omit<EmuBackendDesc, 'id'>;
  /** apply a device-specific configuration (key=value, checked by the provider); only while stopped */
  configure?(config: Record<string, string>): void;
  /** the device may run (a back-end may attach) */
  start?(): Promise<void> | void;
  /** stop: back-ends detach first */
  stop?(): Promise<void> | void;
  /** a back-end changed an attribute the provider acts on (e.g. link status: a config interrupt) */
  attrChanged?(name: string): void;
  /** release the device (after stop) */
  close(): Promise<void> | void;
}

/** A device's facts as the registry reports them (the seed's emu_dev_info, and more). */
export interface EmuDeviceInfo extends EmuProviderInfo {
  id: number;
  name: string;
  /** PCI regions the device reports to its client (9) */
  numRegions: number;
  /** PCI IRQ indexes (5) */
  numIrqs: number;
  /** regions in the client's memory table now, and the most it accepts */
  memRegions: number;
  maxMemRegions: number;
  /** whether start() ran (and stop() did not since) */
  started: boolean;
}

/** One region of the client's memory table (the seed's rte_emudev_mem_table entry). */
export interface EmuMemRegion {
  iova: bigint;
  length: number;
  /** DMA_FLAG_READ | DMA_FLAG_WRITE */
  flags: number;
  /** where it is mapped in this process (0n: reached through messages only) */
  va: bigint;
}

/** An attribute's value: u32 a number, bool a boolean, mac 'aa:bb:cc:dd:ee:ff'. */
export type EmuAttrValue = number | boolean | string;

/**
 * The main thread's handle on an allocated device (the seed's device id and every query on it).
 * Attributes: getAttr reads any; setAttr writes those whose writer is 'backend' (the back-end's
 * side of the device: link status, a MAC the application chooses...), runs the provider's
 * attrChanged hook and posts EVENT_ATTR_CHANGED; attributes the provider writes are read-only
 * here (the device model owns them and would overwrite a change). A back-end lcore may store its
 * own attributes' words directly; the provider then sees the value but is not told.
 */
export class EmuDeviceHandle {
  private startedFlag = false;
  private released = false;

  /** Made by emudevAllocate only. */
  constructor(readonly id: number, readonly name: string, readonly provider: EmuProvider) {}

  /** The PCI device model (for the vfio-user server). */
  get emu(): EmuDevice {
    return this.provider.emu;
  }

  /** Whether start() ran and stop() did not since. */
  get started(): boolean {
    return this.startedFlag;
  }

  /** Device facts: the provider's, the PCI region and IRQ counts, the memory table's size. */
  info(): EmuDeviceInfo {
    this.live();
    const e = this.provider.emu;
    return { ...this.provider.info(), id: this.id, name: this.name, numRegions: e.numRegions, numIrqs: e.numIrqs, memRegions: e.dmaRegions().length, maxMemRegions: e.maxDmaMaps, started: this.startedFlag };
  }

  /** The client's memory table now (copies; empty while no client mapped memory). */
  memTable(): EmuMemRegion[] {
    this.live();
    return this.provider.emu.dmaRegions().map((r) => ({ iova: r.iova, length: r.len, flags: r.flags, va: r.va }));
  }

  /** Queue q as the provider publishes it. */
  queueInfo(q: number): EmuQueueInfo {
    const d = this.backendDesc();
    if (!Number.isInteger(q) || q < 0 || q >= d.queues.count) throw new RangeError(`${this.name}: queue ${q} does not exist (the device has ${d.queues.count})`);
    return queueInfoOf(new Int32Array(d.queues.words), d.queues.base + q * d.queues.stride, q);
  }

  /** Where vector of IRQ index goes: the client's eventfd (-1: none) and whether it is masked. */
  irqInfo(index: number, vector: number): EmuIrqInfo {
    this.live();
    const e = this.provider.emu;
    const count = e.irqInfo(index).count;
    if (!Number.isInteger(vector) || vector < 0 || vector >= count) throw new RangeError(`${this.name}: IRQ index ${index} has no vector ${vector} (it has ${count})`);
    return { index, vector, fd: e.plane.irqFd(index, vector), masked: e.plane.irqMasked(index, vector) };
  }

  /** Every doorbell, FD doorbells with their eventfd now (-1 until the client took it). */
  doorbells(): EmuDoorbellInfo[] {
    return this.backendDesc().doorbells.map((d) => (d.kind === 'fd' ? { ...d, fd: this.provider.emu.plane.doorbellFd(d.id) } : { ...d }));
  }

  /** Doorbell id (a clear error naming the ids there are). */
  doorbellInfo(id: number): EmuDoorbellInfo {
    const all = this.doorbells();
    const d = all.find((b) => b.id === id);
    if (!d) throw new RangeError(`${this.name}: no doorbell ${id} (ids: ${all.map((b) => b.id).join(', ') || 'none'})`);
    return d;
  }

  /** Subscribe to the event types in mask (EVENT_ALL, or bits 1 << EVENT_*): hand channel.desc() to the back-end's lcore. */
  subscribe(mask: number, capacity?: number): EmuEventChannel {
    this.live();
    return this.provider.emu.subscribe(mask, capacity ?? this.provider.info().maxEvents);
  }

  /** End a subscription (its lcore must have stopped reading it). */
  unsubscribe(ch: EmuEventChannel): void {
    this.provider.emu.unsubscribe(ch);
  }

  /** The attributes the device declares. */
  attrs(): EmuAttrSpec[] {
    return this.backendDesc().attrs.specs.map((s) => ({ ...s }));
  }

  /** Attribute name's value (u32: number, bool: boolean, mac: 'aa:bb:cc:dd:ee:ff'). */
  getAttr(name: string): EmuAttrValue {
    const d = this.backendDesc();
    const a = attrSpec(d.attrs.specs, name, this.name);
    const w = new Int32Array(d.attrs.words);
    const v = Atomics.load(w, a.word);
    if (a.kind === 'u32') return v >>> 0;
    if (a.kind === 'bool') return v !== 0;
    const hi = Atomics.load(w, a.word + 1);
    const b = [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff, hi & 0xff, (hi >>> 8) & 0xff];
    return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
  }

  /**
   * Set attribute name (only one the back-end writes: see the class comment), bump the device's
   * generation word, run the provider's attrChanged hook and post EVENT_ATTR_CHANGED (arg: the
   * attribute's index in attrs()).
   */
  setAttr(name: string, value: EmuAttrValue): void {
    const d = this.backendDesc();
    const a = attrSpec(d.attrs.specs, name, this.name);
    const what = `${this.name}: attribute "${name}" (${a.kind})`;
    if (a.writer !== 'backend') throw new Error(`${what} is written by the device model only; read it with getAttr`);
    const w = new Int32Array(d.attrs.words);
    if (a.kind === 'u32') {
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff) throw new RangeError(`${what}: ${String(value)} is not an integer 0..4294967295`);
      Atomics.store(w, a.word, value | 0);
    } else if (a.kind === 'bool') {
      if (typeof value !== 'boolean') throw new TypeError(`${what}: ${String(value)} is not true or false`);
      Atomics.store(w, a.word, value ? 1 : 0);
    } else {
      const m = typeof value === 'string' ? /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(value) : null;
      if (!m) throw new TypeError(`${what}: ${String(value)} is not a MAC address like 02:00:00:00:00:01`);
      const b = m.slice(1).map((x) => parseInt(x, 16));
      Atomics.store(w, a.word, b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24));
      Atomics.store(w, a.word + 1, b[4] | (b[5] << 8));
    }
    Atomics.add(w, d.generation, 1);
    this.provider.attrChanged?.(name);
    this.provider.emu.postEvent(EVENT_ATTR_CHANGED, d.attrs.specs.indexOf(a));
  }

  /** The named shared area provider and back-end agree on (a clear error naming those there are). */
  regionMap(name: string): SharedArrayBuffer {
    const regions = this.backendDesc().regions;
    const r = regions[name];
    if (!r) throw new Error(`${this.name}: no region "${name}" (the device maps: ${Object.keys(regions).join(', ') || 'none'})`);
    return r;
  }

  /** What a back-end lcore attaches with (EmuBackend.attach). */
  backendDesc(): EmuBackendDesc {
    this.live();
    return { ...this.provider.backendDesc(), id: this.id };
  }

  /** Apply a device-specific configuration through the provider; refused while started. */
  configure(config: Record<string, string>): void {
    this.live();
    if (this.startedFlag) throw new Error(`${this.name}: configure while started: stop() the device first`);
    if (!this.provider.configure) {
      const keys = Object.keys(config);
      if (keys.length) throw new Error(`${this.name}: the ${this.provider.info().type} device takes no configuration (got ${keys.join(', ')})`);
      return;
    }
    this.provider.configure(config);
  }

  /** Start the device through the provider (once; again only after stop). */
  async start(): Promise<void> {
    this.live();
    if (this.startedFlag) throw new Error(`${this.name}: started already`);
    await this.provider.start?.();
    this.startedFlag = true;
  }

  /** Stop the device through the provider (nothing when not started). */
  async stop(): Promise<void> {
    if (!this.startedFlag) return;
    this.startedFlag = false;
    await this.provider.stop?.();
  }

  /** Stop, close through the provider and leave the registry (emudevRelease). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    devices.delete(this.id);
    try {
      await this.stop();
    } finally {
      await this.provider.close();
    }
  }

  private live(): void {
    if (this.released) throw new Error(`${this.name}: device ${this.id} was released`);
  }
}

const devices = new Map<number, EmuDeviceHandle>();
let nextId = 0;

/** Register a provider's device under name (unique in this process); returns its handle with a new id. */
export function emudevAllocate(name: string, provider: EmuProvider): EmuDeviceHandle {
  if (typeof name !== 'string' || name.length === 0) throw new Error('emudev: a device needs a non-empty name');
  for (const h of devices.values()) {
    if (h.name === name) throw new Error(`emudev: the name "${name}" is taken by device ${h.id}; release it first or choose another name`);
    if (h.provider === provider) throw new Error(`emudev: this provider is allocated already, as device ${h.id} "${h.name}"`);
  }
  const id = nextId++;
  const h = new EmuDeviceHandle(id, name, provider);
  devices.set(id, h);
  return h;
}

/** The device named name, or with id (a number); undefined when there is none. */
export function emudevFind(nameOrId: string | number): EmuDeviceHandle | undefined {
  if (typeof nameOrId === 'number') return devices.get(nameOrId);
  for (const h of devices.values()) if (h.name === nameOrId) return h;
  return undefined;
}

/** Every allocated device, by id. */
export function emudevList(): EmuDeviceHandle[] {
  return [...devices.values()].sort((a, b) => a.id - b.id);
}

/** Release a device (handle or id): stop, close through its provider, remove from the registry. */
export async function emudevRelease(device: EmuDeviceHandle | number): Promise<void> {
  const h = typeof device === 'number' ? devices.get(device) : device;
  if (!h) throw new Error(`emudev: no device ${String(device)} to release (ids: ${[...devices.keys()].join(', ') || 'none'})`);
  await h.release();
}
