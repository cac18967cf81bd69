/**
 * emudev event channels: how a device's provider (main thread) tells a back-end on an lcore what
 * happened, in order. The seed's rte_emudev_subscribe_event / unsubscribe_event.
 *
 * A channel is a single-producer single-consumer ring of fixed-size records in a SharedArrayBuffer
 * plus an eventfd: the provider writes a record, publishes it by storing the new head (Atomics, so
 * the record's words are visible before the head that covers them), then adds 1 to the eventfd so
 * a back-end sleeping in poll(2) wakes. The back-end reads records in order and stores its tail;
 * a busy-polling back-end never touches the eventfd except to drain it when the ring is empty.
 *
 * A full ring does not block the provider: the record is dropped and counted (lost), and the next
 * record that fits carries EVENT_OVERFLOW first, so a back-end knows it must re-read the device's
 * state instead of trusting the events it saw. Records: type, arg (a queue index, a status value,
 * an attribute index), and the provider's sequence number (every event posted, lost ones included).
 */
import * as os from '../../src/os/libc.js';

/** A queue was enabled (arg: queue index). */
export const EVENT_QUEUE_ENABLED = 1;
/** A queue was disabled (arg: queue index). */
export const EVENT_QUEUE_DISABLED = 2;
/** The device was reset (arg: 0); every queue is disabled. */
export const EVENT_DEVICE_RESET = 3;
/** The client's memory table changed (arg: the number of regions now). */
export const EVENT_MEM_TABLE_CHANGED = 4;
/** The driver wrote the device status (arg: the new status). */
export const EVENT_STATUS_CHANGED = 5;
/** An attribute changed (arg: its index in the device's attribute table). */
export const EVENT_ATTR_CHANGED = 6;
/** Events were lost before this one (arg: how many): re-read the device's state. */
export const EVENT_OVERFLOW = 7;

/** Event names by type, for logs and docs. */
export const EVENT_NAMES: Record<number, string> = {
  [EVENT_QUEUE_ENABLED]: 'queue-enabled', [EVENT_QUEUE_DISABLED]: 'queue-disabled', [EVENT_DEVICE_RESET]: 'device-reset',
  [EVENT_MEM_TABLE_CHANGED]: 'mem-table-changed', [EVENT_STATUS_CHANGED]: 'status-changed', [EVENT_ATTR_CHANGED]: 'attr-changed',
  [EVENT_OVERFLOW]: 'overflow',
};

/** Every event type a subscriber may ask for (EVENT_OVERFLOW always comes). */
export const EVENT_ALL = (1 << EVENT_QUEUE_ENABLED) | (1 << EVENT_QUEUE_DISABLED) | (1 << EVENT_DEVICE_RESET) | (1 << EVENT_MEM_TABLE_CHANGED) | (1 << EVENT_STATUS_CHANGED) | (1 << EVENT_ATTR_CHANGED);

// Header words: producer head (records written), consumer tail (records read), records lost.
const HEAD = 0, TAIL = 1, LOST = 2, HEADER = 4;
// Record words: type, arg, sequence number, spare.
const R_TYPE = 0, R_ARG = 1, R_SEQ = 2, RECORD = 4;

/** Plain data from which an lcore builds its EmuEventReader (structured-cloneable). */
export interface EmuEventChannelDesc {
  ring: SharedArrayBuffer;
  /** records the ring holds (a power of two) */
  capacity: number;
  /** the eventfd the provider signals after each record (the same fd number in every thread) */
  fd: number;
  /** the event types this channel receives, as a bit mask of 1 << type */
  mask: number;
}

/** The provider's end of one subscription (main thread). */
export class EmuEventChannel {
  readonly mask: number;
  private readonly ring: Int32Array;
  private readonly capacity: number;
  private readonly fd: number;
  private readonly one = new Uint8Array(8);
  private seq = 0;
  private pendingLost = 0;
  private closed = false;

  /** A channel of capacity records (rounded up to a power of two) receiving the types in mask. */
  constructor(mask: number, capacity = 256) {
    let c = 16;
    while (c < capacity) c *= 2;
    this.capacity = c;
    this.mask = mask;
    this.ring = new Int32Array(new SharedArrayBuffer(4 * (HEADER + c * RECORD)));
    this.fd = os.eventfd(0, os.EFD_NONBLOCK);
    this.one[0] = 1;
  }

  /** Plain data for EmuEventReader.attach in the back-end's lcore. */
  desc(): EmuEventChannelDesc {
    return { ring: this.ring.buffer as SharedArrayBuffer, capacity: this.capacity, fd: this.fd, mask: this.mask };
  }

  /** The eventfd a back-end may poll on. */
  get eventFd(): number {
    return this.fd;
  }

  /** Events posted that the back-end has not read yet. */
  get backlog(): number {
    return this.ring[HEAD] - Atomics.load(this.ring, TAIL);
  }

  /** Events lost so far because the back-end did not keep up. */
  get lost(): number {
    return Atomics.load(this.ring, LOST);
  }

  /** Post an event of type with arg, if this channel asked for it; never blocks. */
  post(type: number, arg: number): void {
    if (this.closed || (this.mask & (1 << type)) === 0) return;
    const seq = ++this.seq;
    const room = this.pendingLost > 0 ? 2 : 1;
    const head = this.ring[HEAD];
    if (head - Atomics.load(this.ring, TAIL) + room > this.capacity) {
      this.pendingLost++;
      Atomics.add(this.ring, LOST, 1);
      return;
    }
    let h = head;
    if (this.pendingLost > 0) {
      this.write(h++, EVENT_OVERFLOW, this.pendingLost, seq);
      this.pendingLost = 0;
    }
    this.write(h++, type, arg, seq);
    Atomics.store(this.ring, HEAD, h);
    // EAGAIN: the counter is at its maximum, the reader is woken already.
    os.writeNoThrow(this.fd, this.one, 8);
  }

  /** Close the eventfd; a reader must have stopped using the channel (unsubscribe did that). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    os.close(this.fd);
  }

  private write(at: number, type: number, arg: number, seq: number): void {
    const o = HEADER + (at & (this.capacity - 1)) * RECORD;
    this.ring[o + R_TYPE] = type;
    this.ring[o + R_ARG] = arg;
    this.ring[o + R_SEQ] = seq;
  }
}

/**
 * The back-end's end of a subscription, built in the lcore from EmuEventChannelDesc. next() returns
 * the next event's type (0: none) and leaves its arg and seq in the fields; allocates nothing.
 */
export class EmuEventReader {
  /** the arg of the event next() returned */
  arg = 0;
  /** the provider's sequence number of the event next() returned */
  seq = 0;
  /** the eventfd to poll on while idle (POLLIN: events may be waiting) */
  readonly fd: number;
  private readonly ring: Int32Array;
  private readonly cmask: number;
  private readonly drain = new Uint8Array(8);

  private constructor(desc: EmuEventChannelDesc) {
    this.ring = new Int32Array(desc.ring);
    this.cmask = desc.capacity - 1;
    this.fd = desc.fd;
  }

  /** The reader of a channel (one per channel). */
  static attach(desc: EmuEventChannelDesc): EmuEventReader {
    return new EmuEventReader(desc);
  }

  /** Is an event waiting? One atomic load and a plain one: cheap enough for every poll round. */
  get pending(): boolean {
    return Atomics.load(this.ring, HEAD) !== this.ring[TAIL];
  }

  /** The next event's type (its arg and seq in this.arg, this.seq), or 0 when none is waiting. */
  next(): number {
    const tail = this.ring[TAIL];
    if (Atomics.load(this.ring, HEAD) === tail) {
      // Empty: clear the eventfd so a poll on it sleeps until the next post, then look again: a
      // post's head is stored before its signal, so a signal this read took is never lost.
      os.readNoThrow(this.fd, this.drain, 8);
      if (Atomics.load(this.ring, HEAD) === tail) return 0;
    }
    const o = HEADER + (tail & this.cmask) * RECORD;
    const type = this.ring[o + R_TYPE];
    this.arg = this.ring[o + R_ARG];
    this.seq = this.ring[o + R_SEQ];
    Atomics.store(this.ring, TAIL, tail + 1);
    return type;
  }
}
