/**
 * vfio-user registers written from any thread (a PMD's data half ringing a doorbell on an lcore):
 * a VFIO_USER_REGION_WRITE command with the No_reply flag, encoded once with protocol.ts and sent on
 * the client's socket under a send lock in shared memory that every sender of that socket takes
 * (the client's own requests too), so one message's bytes are never interleaved with another's.
 *
 * The client hands the plain data out through VfioDevice.workerIo (a BarIo of kind 'message' that
 * names this module); MappedBar.open in the other thread loads this module and calls messageReg.
 * No reply comes (the spec: a command with No_reply is not answered; the server executes commands
 * in order), so no thread other than the client's ever reads the socket. Reads need a reply and
 * are refused.
 *
 * A register inside one of the region's ioeventfd doorbells (the server offered them in
 * GET_REGION_IO_FDS) is written as an 8-byte write(2) of 1 to the doorbell's eventfd instead: no
 * message, no lock. With a datamatch, only writes of that value go there; others go as messages.
 */
import * as os from '../../src/os/libc.js';
import type { BarIo, MmioReg } from '../../src/iommu/bar.js';
import { siblingModule } from '../../src/lcore/module.js';
import * as P from './protocol.js';

/** This module, as BarIo names it for other threads. */
const MODULE = siblingModule(import.meta.url, 'reg');

/** How long a register write may wait for room in the socket before it fails. */
const SEND_TIMEOUT_MS = 5000;

/**
 * A lock in shared memory around the sends of one socket, taken by the vfio-user client and by
 * every thread that writes registers through it.
 */
export class SendLock {
  private readonly w: Int32Array;

  /** The lock over sab (from SendLock.create, or RegionWriteArg.lock). */
  constructor(readonly sab: SharedArrayBuffer) {
    this.w = new Int32Array(sab, 0, 1);
  }

  /** A fresh, free lock. */
  static create(): SendLock {
    return new SendLock(new SharedArrayBuffer(4));
  }

  /** Take the lock, waiting (Atomics.wait, 1 ms slices) while another thread holds it. */
  acquire(): void {
    const w = this.w;
    while (Atomics.compareExchange(w, 0, 0, 1) !== 0) Atomics.wait(w, 0, 1, 1);
  }

  /** Release the lock and wake one waiter. */
  release(): void {
    Atomics.store(this.w, 0, 0);
    Atomics.notify(this.w, 0, 1);
  }
}

/** What another thread needs to write registers of one region: plain, structured-cloneable data. */
export interface RegionWriteArg {
  /** the client's socket (fd numbers are process-wide) */
  fd: number;
  /** the region index */
  region: number;
  /** the socket's send lock (SendLock.sab) */
  lock: SharedArrayBuffer;
  /** the message id the writes carry (a range the client's own requests never use) */
  msgId: number;
  /** the region's ioeventfd doorbells (absent: none) */
  doorbells?: IoDoorbell[];
}

/** One ioeventfd doorbell of a region, as the client got it from GET_REGION_IO_FDS. */
export interface IoDoorbell {
  /** offset in the region and width in bytes of the writes it stands for */
  offset: number;
  size: number;
  /** the eventfd (owned by the client; process-wide) */
  fd: number;
  /** only writes of this value signal it (null: any value) */
  datamatch: number | null;
}

/** The BarIo by which other threads write region arg.region with no-reply REGION_WRITE messages. */
export function regionWriteIo(arg: RegionWriteArg): BarIo {
  return { kind: 'message', transport: 'vfio-user', module: MODULE, arg };
}

/** The register of width bytes at off, from a BarIo's arg (what MappedBar.open calls in the thread that writes it). */
export function messageReg(what: string, arg: unknown, off: number, width: 1 | 2 | 4, needRead: boolean): MmioReg {
  const a = arg as Partial<RegionWriteArg> | null;
  if (!a || !Number.isInteger(a.fd) || !Number.isInteger(a.region) || !Number.isInteger(a.msgId) || !(a.lock instanceof SharedArrayBuffer)) {
    throw new TypeError(`${what}: the vfio-user register data is not { fd, region, lock, msgId }; take it from Bar.data()`);
  }
  if (needRead) throw new Error(`${what} is not mapped, and vfio-user registers are reached from a worker by no-reply REGION_WRITE only: it cannot be read here (serve it as a sparse mmap area, or read it on the main thread)`);
  const msg = new UserReg(what, a as RegionWriteArg, off, width);
  const bell = doorbellOf(a.doorbells, off, width);
  return bell ? new EventfdReg(bell, width, msg) : msg;
}

/**
 * The doorbell a write of width bytes at off rings, or undefined: one with a datamatch stands for
 * writes of exactly its offset and size (as KVM's ioeventfds do), one without for any write inside it.
 */
export function doorbellOf(bells: readonly IoDoorbell[] | undefined, off: number, width: number): IoDoorbell | undefined {
  return bells?.find((b) => (b.datamatch !== null ? off === b.offset && width === b.size : off >= b.offset && off + width <= b.offset + b.size));
}

/** A register written as a signal on an ioeventfd (8-byte write(2) of 1); values its datamatch refuses go as messages. */
class EventfdReg implements MmioReg {
  readonly mapped = false;
  readonly via = 'eventfd';
  private readonly one = new Uint8Array(new BigUint64Array([1n]).buffer);
  private readonly fd: number;
  private readonly match: number;
  private readonly mask: number;

  constructor(bell: IoDoorbell, width: 1 | 2 | 4, private readonly msg: UserReg) {
    this.fd = bell.fd;
    this.match = bell.datamatch ?? -1;
    this.mask = width === 4 ? 0xffffffff : (1 << (8 * width)) - 1;
  }

  /** Refused, as for every vfio-user register that is not mapped. */
  read(): number {
    return this.msg.read();
  }

  /** Signal the eventfd (or, for a value the datamatch refuses, send the REGION_WRITE). */
  write(v: number): void {
    if (this.match >= 0 && ((v & this.mask) >>> 0) !== this.match) { this.msg.write(v); return; }
    // EAGAIN: the counter is at its maximum, so the device has a signal to read already.
    const n = os.writeNoThrow(this.fd, this.one, 8);
    if (n !== 8 && n !== -os.E.EAGAIN) throw new Error(`${this.msg.what}: signalling its ioeventfd (fd ${this.fd}) failed: ${n < 0 ? os.errnoName(-n) : `${n} bytes written`}; is the vfio-user connection closed?`);
  }
}

/** A register written with a no-reply VFIO_USER_REGION_WRITE on the client's socket (the message is built once). */
class UserReg implements MmioReg {
  readonly mapped = false;
  readonly via = 'message';
  private readonly msg: Uint8Array;
  private readonly dv: DataView;
  private readonly lock: SendLock;
  private readonly fd: number;
  private readonly dataAt = P.HEADER_SIZE + P.REGION_ACCESS_SIZE;

  constructor(readonly what: string, a: RegionWriteArg, off: number, private readonly width: 1 | 2 | 4) {
    this.fd = a.fd;
    this.lock = new SendLock(a.lock);
    const body = P.encodeRegionAccess(off, a.region, width, new Uint8Array(width));
    this.msg = new Uint8Array(P.HEADER_SIZE + body.byteLength);
    P.writeHeader(this.msg, { msgId: a.msgId, command: P.Cmd.REGION_WRITE, size: this.msg.byteLength, flags: P.TYPE_COMMAND | P.FLAG_NO_REPLY, error: 0 });
    this.msg.set(body, P.HEADER_SIZE);
    this.dv = new DataView(this.msg.buffer);
  }

  /** Refused: the reply would arrive on the client's thread. */
  read(): number {
    throw new Error(`${this.what}: a vfio-user register that is not mapped cannot be read from a worker (the reply would arrive on the main thread's socket); read it with Bar.readN on the main thread`);
  }

  /** Send the REGION_WRITE with v (little endian, truncated to the width). */
  write(v: number): void {
    const w = this.width;
    if (w === 1) this.dv.setUint8(this.dataAt, v);
    else if (w === 2) this.dv.setUint16(this.dataAt, v, true);
    else this.dv.setUint32(this.dataAt, v >>> 0, true);
    const msg = this.msg, len = msg.byteLength;
    this.lock.acquire();
    try {
      let off = 0, waited = 0;
      while (off < len) {
        const n = os.sendNoThrow(this.fd, off === 0 ? msg : msg.subarray(off), len - off, os.MSG_DONTWAIT | os.MSG_NOSIGNAL);
        if (n > 0) { off += n; continue; }
        if (n === -os.E.EAGAIN && waited < SEND_TIMEOUT_MS) { os.pollOne(this.fd, os.POLLOUT, 10); waited += 10; continue; }
        throw new Error(`${this.what}: sending VFIO_USER_REGION_WRITE failed (${n < 0 ? os.errnoName(-n) : 'no progress'}${off > 0 ? `, after ${off} of ${len} bytes: the connection is now unusable` : ''}); is the vfio-user server still there?`);
      }
    } finally {
      this.lock.release();
    }
  }
}
