/**
 * The emudev back-end API (the seed's rte_emudev.h, back-end side): what the code that moves a
 * device's data (a poll loop, a back-end PMD) may know of the device, without reaching into the
 * provider's own state. docs/emudev.md maps every seed function to its counterpart here.
 *
 * The provider (the device model on the main thread: config space, BARs, features, reset) publishes
 * everything a back-end reads in shared memory, so a back-end on an lcore reads it directly:
 *   - the memory table and translation, interrupts and FD doorbells: the data plane (dataplane.ts);
 *   - the queue table: per queue, the words at QUEUE_* from queueBase(q) (ring addresses, size,
 *     enable, interrupt vector, doorbell id, and an epoch bumped at every enable and reset);
 *   - attributes: named 32-bit words (a MAC is two: bytes 0-3, then 4-5) the provider declares,
 *     each read by the back-end and written by one side only (EmuAttrSpec.writer);
 *   - named regions (region_map): SharedArrayBuffers provider and back-end agree on by name;
 *   - MEM doorbells: the local address of a polled BAR area; FD doorbells: the data plane's eventfds;
 *   - events: a subscription (events.ts) delivers queue enable/disable, reset, memory table and
 *     status changes in order, to an eventfd an idle back-end sleeps on.
 * Changes a back-end must not see half-done happen inside the data plane's quiesce(): the provider
 * pauses every attached back-end, changes the words, bumps the generation word and releases them.
 *
 * The main thread's view of a device (registry, queries by name or id) is registry.ts; this file
 * holds what both sides share and the lcore side, EmuBackend, built from plain data.
 */
import { DataPlane, type DataPlaneDesc } from './dataplane.js';
import { EmuEventReader, type EmuEventChannelDesc } from './events.js';

// ---- the queue table: words per queue, from queueBase(q) ----

/** Queue size (entries; 0: not set). */
export const QUEUE_SIZE = 0;
/** 1 while the queue is enabled. */
export const QUEUE_ENABLE = 1;
/** Its interrupt vector (0xffff: none). */
export const QUEUE_VECTOR = 2;
/** Ring addresses (IOVAs in the client's memory), low and high 32 bits: descriptor area, driver area, device area. */
export const QUEUE_DESC_LO = 3, QUEUE_DESC_HI = 4, QUEUE_AVAIL_LO = 5, QUEUE_AVAIL_HI = 6, QUEUE_USED_LO = 7, QUEUE_USED_HI = 8;
/** Bumped at every enable and reset: a back-end restarts the queue's indices when it changes. */
export const QUEUE_EPOCH = 9;
/** The doorbell id the driver rings for this queue (-1: none). */
export const QUEUE_DOORBELL = 10;
/** Words the queue table needs per queue (a provider's stride may be larger). */
export const QUEUE_WORDS = 11;

/** One queue as a back-end sees it (the seed's rte_emudev_q_info). */
export interface EmuQueueInfo {
  index: number;
  size: number;
  enabled: boolean;
  /** descriptor, driver (avail) and device (used) areas */
  desc: bigint;
  avail: bigint;
  used: bigint;
  vector: number;
  doorbell: number;
  epoch: number;
}

/** A named attribute of a device (the seed's rte_emudev_get_attr/set_attr). */
export interface EmuAttrSpec {
  name: string;
  /** u32: one word; bool: one word, 0 or 1; mac: two words (bytes 0-3, 4-5) */
  kind: 'u32' | 'bool' | 'mac';
  /** its first word in the attribute words */
  word: number;
  /** who writes it: the provider (the back-end only reads) or the back-end */
  writer: 'provider' | 'backend';
  help: string;
}

/** A doorbell (the seed's rte_emudev_db_info): polled memory or an eventfd. */
export type EmuDoorbellInfo =
  | { id: number; kind: 'mem'; bar: number; offset: number; size: number; /** local address of the polled area */ va: bigint }
  | { id: number; kind: 'fd'; bar: number; offset: number; size: number; /** the ioeventfd, -1 until the client took it */ fd: number };

/** Where a device's interrupt vector goes (the seed's rte_emudev_irq_info). */
export interface EmuIrqInfo {
  index: number;
  vector: number;
  /** the client's eventfd, -1 when none is set */
  fd: number;
  masked: boolean;
}

/** Plain data from which an lcore builds its EmuBackend (structured-cloneable). */
export interface EmuBackendDesc {
  id: number;
  name: string;
  /** device type, e.g. 'virtio-net' */
  type: string;
  plane: DataPlaneDesc;
  /** the queue table: queue q's words start at base + q * stride in words */
  queues: { words: SharedArrayBuffer; base: number; stride: number; count: number };
  /** the attribute words and their names */
  attrs: { words: SharedArrayBuffer; specs: EmuAttrSpec[] };
  /** word index (in the attribute words) the provider bumps after every published change */
  generation: number;
  /** named shared areas (region_map) */
  regions: Record<string, SharedArrayBuffer>;
  doorbells: EmuDoorbellInfo[];
}

/**
 * A device's back-end side in an lcore: attach once, then read queues and attributes from the
 * shared words (plain loads in a poll loop; QUEUE_* offsets from queueBase), reach client memory and
 * raise interrupts through memory (the data plane), read events. Allocates nothing after attach.
 */
export class EmuBackend {
  readonly id: number;
  readonly name: string;
  readonly type: string;
  /** the memory table, translation, interrupts and FD doorbells */
  readonly memory: DataPlane;
  /** the queue table's words (index with queueBase(q) + QUEUE_*) */
  readonly queues: Int32Array;
  /** the attribute words (index with attrWord(name)) */
  readonly attrs: Int32Array;
  /** queues in the table */
  readonly queueCount: number;
  /** the attribute word bumped after every published change */
  readonly generationWord: number;
  private readonly desc: EmuBackendDesc;

  private constructor(desc: EmuBackendDesc, memory: DataPlane) {
    this.desc = desc;
    this.id = desc.id;
    this.name = desc.name;
    this.type = desc.type;
    this.memory = memory;
    this.queues = new Int32Array(desc.queues.words);
    this.attrs = new Int32Array(desc.attrs.words);
    this.queueCount = desc.queues.count;
    this.generationWord = desc.generation;
  }

  /** Attach this lcore as a back-end of the device (its data plane; parks while a change is under way). */
  static attach(desc: EmuBackendDesc): EmuBackend {
    return new EmuBackend(desc, DataPlane.attach(desc.plane));
  }

  /** Leave: views of client memory must not be used afterwards. */
  detach(): void {
    this.memory.detach();
  }

  /** Index of queue q's first word in this.queues. */
  queueBase(q: number): number {
    return this.desc.queues.base + q * this.desc.queues.stride;
  }

  /** Queue q as a record (control and tests; a poll loop reads the words). */
  queueInfo(q: number): EmuQueueInfo {
    if (!Number.isInteger(q) || q < 0 || q >= this.queueCount) throw new RangeError(`${this.name}: queue ${q} does not exist (the device has ${this.queueCount})`);
    return queueInfoOf(this.queues, this.queueBase(q), q);
  }

  /** The word index of attribute name (throws naming the known ones). */
  attrWord(name: string): number {
    return attrSpec(this.desc.attrs.specs, name, this.name).word;
  }

  /** The device's attributes (an EVENT_ATTR_CHANGED arg indexes them). */
  get attrSpecs(): readonly EmuAttrSpec[] {
    return this.desc.attrs.specs;
  }

  /** The device's provider-published generation: changes after every published change. */
  get generation(): number {
    return Atomics.load(this.attrs, this.generationWord);
  }

  /** The named shared area (region_map), or a clear error naming those the device has. */
  region(name: string): SharedArrayBuffer {
    const r = this.desc.regions[name];
    if (!r) throw new Error(`${this.name}: no region "${name}" (the device maps: ${Object.keys(this.desc.regions).join(', ') || 'none'})`);
    return r;
  }

  /** Doorbell id's description. */
  doorbell(id: number): EmuDoorbellInfo {
    const d = this.desc.doorbells.find((b) => b.id === id);
    if (!d) throw new RangeError(`${this.name}: no doorbell ${id} (ids: ${this.desc.doorbells.map((b) => b.id).join(', ') || 'none'})`);
    return d;
  }

  /** The reader of an event subscription (EmuDeviceHandle.subscribe on the main thread made it). */
  events(channel: EmuEventChannelDesc): EmuEventReader {
    return EmuEventReader.attach(channel);
  }
}

/** Queue info from the queue words at base (both sides use it). */
export function queueInfoOf(w: Int32Array, base: number, q: number): EmuQueueInfo {
  const addr = (lo: number): bigint => (BigInt(w[base + lo + 1] >>> 0) << 32n) | BigInt(w[base + lo] >>> 0);
  return {
    index: q, size: w[base + QUEUE_SIZE], enabled: w[base + QUEUE_ENABLE] !== 0,
    desc: addr(QUEUE_DESC_LO), avail: addr(QUEUE_AVAIL_LO), used: addr(QUEUE_USED_LO),
    vector: w[base + QUEUE_VECTOR], doorbell: w[base + QUEUE_DOORBELL], epoch: w[base + QUEUE_EPOCH],
  };
}

/** The spec of attribute name in specs, or an error naming the device's attributes. */
export function attrSpec(specs: readonly EmuAttrSpec[], name: string, device: string): EmuAttrSpec {
  const a = specs.find((s) => s.name === name);
  if (!a) throw new Error(`${device}: no attribute "${name}" (attributes: ${specs.map((s) => s.name).join(', ') || 'none'})`);
  return a;
}
