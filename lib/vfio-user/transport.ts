/**
 * vfio-user framing over a unix stream socket.
 *
 * Sending: a message (header + payload) goes out with ONE sendmsg together with its fds; should the
 * kernel take only part of a large message, the rest follows without fds (the fds are attached to
 * the first byte, as the receiver expects).
 *
 * Receiving: the socket is non-blocking; bytes are appended to a buffer until a whole message
 * (its header's size) is there, so a message split across reads, or several messages in one read,
 * both work. Descriptors: the kernel attaches them to the first bytes of the sendmsg that carried
 * them, and one recvmsg may glue fd-less messages in front of them but stops after the piece
 * carrying fds. So fds that came with a read belong to the LAST message that starts inside that
 * read's byte range; each read's fds are recorded with its range and claimed by that message.
 * A header whose size is below 16 or above the channel's limit is a fatal ProtocolError: the stream
 * cannot be resynchronised and the connection must be closed. Received fds waiting for their message
 * are capped (maxPendingFds, default 2 x maxMsgFds: the fds of an incomplete message plus those of
 * the next one, which may arrive in the same read): a peer that sends more is a fatal ProtocolError,
 * so a stream of fd-carrying pieces of a never-completed message cannot exhaust the process's fds.
 *
 * Two ways to send: send()/sendRaw() wait (poll, bounded by sendTimeoutMs) for room in the socket
 * buffer, for a synchronous client; post() never waits: what the socket does not take now is queued
 * (outbox, at most maxOutBytes) and flush() sends it when the socket is writable again, for a
 * server whose main thread must not stall on a client that stopped reading.
 *
 * Waiting without spinning: waitReadable() polls on a libuv pool thread (os.pollAsync) together
 * with a wake eventfd, so an idle peer costs nothing and close() ends the wait at once.
 */
import { chmodSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import * as os from '../../src/os/libc.js';
import { HEADER_SIZE, ProtocolError, readHeader, writeHeader, cmdName, type Header, type Message } from './protocol.js';

/** The peer closed the connection (EOF or ECONNRESET). */
export class PeerClosedError extends Error {
  constructor(what: string) {
    super(`${what}: the peer closed the connection`);
    this.name = 'PeerClosedError';
  }
}

/** Channel options. */
export interface ChannelOptions {
  /** largest message accepted, header included */
  maxMsgSize: number;
  /** most fds accepted with one message; extra fds are closed and the message refused */
  maxMsgFds: number;
  /** for messages: "vfio-user server /tmp/x.sock" */
  name: string;
  /** how long send() waits for room in the socket buffer (ms) */
  sendTimeoutMs?: number;
  /** most received fds held for messages not complete yet (default 2 x maxMsgFds, at least 2) */
  maxPendingFds?: number;
  /** most bytes post() queues while the peer does not read (default 4 x maxMsgSize) */
  maxOutBytes?: number;
}

/** post() could not queue a message: the peer has not read maxOutBytes of earlier messages. */
export class SendBacklogError extends Error {
  constructor(what: string, queued: number, size: number, max: number) {
    super(`${what}: the peer does not read: ${queued} bytes are queued and a ${size}-byte message would exceed the limit of ${max}`);
    this.name = 'SendBacklogError';
  }
}

/** A message post() could not send at once: its bytes from off on, and its fds if none went out yet. */
interface Outgoing {
  data: Uint8Array;
  off: number;
  fds: readonly number[];
}

const READ_CHUNK = 256 * 1024;

/** One end of a vfio-user connection (owns the socket fd and every fd not yet handed out). */
export class Channel {
  readonly fd: number;
  readonly name: string;
  readonly maxMsgSize: number;
  readonly maxMsgFds: number;
  readonly maxPendingFds: number;
  readonly maxOutBytes: number;
  private readonly sendTimeoutMs: number;
  private buf = new Uint8Array(64 * 1024);
  /** unconsumed bytes are buf[head, head + len): taking a message moves head, no copy per message */
  private head = 0;
  private len = 0;
  /** absolute stream position of buf[head] */
  private base = 0;
  private fds: Array<{ start: number; end: number; fd: number }> = [];
  private out: Outgoing[] = [];
  private outQueued = 0;
  private outProgress = 0;
  private wakeFd: number;
  private closedFlag = false;

  /** Wrap a connected unix stream socket (made non-blocking by the caller). */
  constructor(fd: number, opts: ChannelOptions) {
    this.fd = fd;
    this.name = opts.name;
    this.maxMsgSize = opts.maxMsgSize;
    this.maxMsgFds = opts.maxMsgFds;
    this.sendTimeoutMs = opts.sendTimeoutMs ?? 5000;
    this.maxPendingFds = opts.maxPendingFds ?? Math.max(2, 2 * opts.maxMsgFds);
    this.maxOutBytes = opts.maxOutBytes ?? 4 * opts.maxMsgSize;
    this.wakeFd = os.eventfd(0, os.EFD_NONBLOCK);
  }

  /** Whether close() was called. */
  get closed(): boolean {
    return this.closedFlag;
  }

  /** Send one message with its fds in one sendmsg (the remainder of a partial send follows without fds). */
  send(h: Omit<Header, 'size'>, payload: Uint8Array = new Uint8Array(0), fds: readonly number[] = []): void {
    if (this.closedFlag) throw new Error(`${this.name}: the connection is closed`);
    const msg = new Uint8Array(HEADER_SIZE + payload.byteLength);
    writeHeader(msg, { ...h, size: msg.byteLength });
    msg.set(payload, HEADER_SIZE);
    this.sendRaw(msg, fds);
  }

  /** Send bytes as they are (one sendmsg; for tests that need malformed messages too). */
  sendRaw(msg: Uint8Array, fds: readonly number[] = []): void {
    let off = 0, first = true;
    const deadline = Date.now() + this.sendTimeoutMs;
    while (off < msg.byteLength) {
      let n: number;
      try {
        n = os.sendmsg(this.fd, off === 0 ? msg : msg.subarray(off), first ? fds : [], os.MSG_NOSIGNAL | os.MSG_DONTWAIT);
      } catch (e) {
        if (e instanceof os.OsError && (e.code === 'EAGAIN' || e.code === 'EWOULDBLOCK')) {
          const left = deadline - Date.now();
          if (left <= 0) throw new Error(`${this.name}: sending a ${msg.byteLength}-byte message timed out after ${this.sendTimeoutMs} ms (the peer does not read)`);
          os.pollOne(this.fd, os.POLLOUT, Math.min(left, 100));
          continue;
        }
        if (e instanceof os.OsError && (e.code === 'EPIPE' || e.code === 'ECONNRESET')) throw new PeerClosedError(this.name);
        throw e;
      }
      first = false;
      off += n;
    }
  }

  /**
   * Send one message without ever waiting: what the socket does not take now is queued behind
   * earlier queued messages and goes out with flush(). The fds must stay open until then (a
   * server sends only fds its device owns). Throws PeerClosedError when the peer is gone and
   * SendBacklogError when the queue would exceed maxOutBytes.
   */
  post(h: Omit<Header, 'size'>, payload: Uint8Array = new Uint8Array(0), fds: readonly number[] = []): void {
    if (this.closedFlag) throw new Error(`${this.name}: the connection is closed`);
    const msg = new Uint8Array(HEADER_SIZE + payload.byteLength);
    writeHeader(msg, { ...h, size: msg.byteLength });
    msg.set(payload, HEADER_SIZE);
    if (this.out.length > 0) {
      this.queue(msg, 0, fds);
      return;
    }
    const n = this.trySend(msg, 0, fds);
    if (n < msg.byteLength) this.queue(msg, n, n > 0 ? [] : fds);
  }

  /** Bytes post() queued that the socket has not taken yet. */
  get outBytes(): number {
    return this.outQueued;
  }

  /** Date.now() when the socket last took queued bytes (or when the queue started). */
  get outProgressAt(): number {
    return this.outProgress;
  }

  /**
   * Send queued messages until the socket is full (never waits); true when the queue is empty.
   * Throws PeerClosedError when the peer is gone.
   */
  flush(): boolean {
    while (this.out.length > 0) {
      const o = this.out[0];
      const n = this.trySend(o.data, o.off, o.fds);
      if (n === 0) return false;
      this.outProgress = Date.now();
      this.outQueued -= n;
      o.off += n;
      o.fds = [];
      if (o.off < o.data.byteLength) return false;
      this.out.shift();
    }
    return true;
  }

  private queue(msg: Uint8Array, off: number, fds: readonly number[]): void {
    const size = msg.byteLength - off;
    if (this.outQueued + size > this.maxOutBytes) throw new SendBacklogError(this.name, this.outQueued, size, this.maxOutBytes);
    if (this.out.length === 0) this.outProgress = Date.now();
    this.out.push({ data: msg, off, fds });
    this.outQueued += size;
  }

  /** One non-blocking sendmsg of msg from off (fds only with the first byte); bytes taken, 0 when full. */
  private trySend(msg: Uint8Array, off: number, fds: readonly number[]): number {
    try {
      return os.sendmsg(this.fd, off === 0 ? msg : msg.subarray(off), fds, os.MSG_NOSIGNAL | os.MSG_DONTWAIT);
    } catch (e) {
      if (e instanceof os.OsError && (e.code === 'EAGAIN' || e.code === 'EWOULDBLOCK')) return 0;
      if (e instanceof os.OsError && (e.code === 'EPIPE' || e.code === 'ECONNRESET')) throw new PeerClosedError(this.name);
      throw e;
    }
  }

  /** Resolve when the socket has room for more bytes, or after timeoutMs (pool-thread poll, no spin). */
  async waitWritable(timeoutMs: number): Promise<void> {
    if (this.closedFlag) return;
    await os.pollAsync([this.fd], os.POLLOUT, Math.max(0, timeoutMs));
  }

  /**
   * The next whole message if one is buffered or can be read without blocking; null otherwise.
   * Throws PeerClosedError at EOF or after close() and a fatal ProtocolError for broken framing.
   */
  receive(): Message | null {
    // After close() the fd number may already belong to another socket: never read it again.
    if (this.closedFlag) throw new PeerClosedError(`${this.name} (closed by this side)`);
    for (;;) {
      const m = this.extract();
      if (m) return m;
      if (!this.fill()) return null;
    }
  }

  /** Wait up to timeoutMs (blocking this thread in poll) for the next whole message. */
  receiveBlocking(timeoutMs: number, what: string): Message {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.receive();
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no reply to ${what} within ${timeoutMs} ms (is the server alive and serving this socket?)`);
      const ev = os.pollOne(this.fd, os.POLLIN, left);
      if ((ev & (os.POLLERR | os.POLLNVAL)) !== 0 && (ev & os.POLLIN) === 0) throw new PeerClosedError(this.name);
    }
  }

  /** Resolve when the socket is readable (or hung up), or false when close() or wake() ended the wait. */
  async waitReadable(): Promise<boolean> {
    if (this.closedFlag) return false;
    if (this.hasWholeMessage()) return true; // a partial message waits for more bytes like an empty buffer
    const [ev, wake] = await os.pollAsync([this.fd, this.wakeFd], os.POLLIN, -1);
    if (this.closedFlag) return false;
    if (wake !== 0) {
      const b = new Uint8Array(8);
      try { os.read(this.wakeFd, b); } catch { /* drained */ }
      return false;
    }
    return ev !== 0;
  }

  /** Whether a whole message is buffered (or the buffered header is bad, which receive() reports). */
  private hasWholeMessage(): boolean {
    if (this.len < HEADER_SIZE) return false;
    const size = new DataView(this.buf.buffer, this.buf.byteOffset + this.head, 8).getUint32(4, true);
    return size < HEADER_SIZE || size > this.maxMsgSize || this.len >= size;
  }

  /** End a pending waitReadable(). */
  wake(): void {
    if (this.closedFlag) return;
    const one = new Uint8Array(8);
    one[0] = 1;
    try { os.write(this.wakeFd, one); } catch { /* counter full: already woken */ }
  }

  /** Close the socket, the wake eventfd, and every received fd not handed out yet. */
  close(): void {
    if (this.closedFlag) return;
    this.wake();
    this.closedFlag = true;
    for (const f of this.fds) safeClose(f.fd);
    this.fds = [];
    this.out = [];
    this.outQueued = 0;
    safeClose(this.fd);
    // The wake eventfd may still be polled by a pool thread: close it after that poll returned.
    const w = this.wakeFd;
    setTimeout(() => safeClose(w), 50).unref();
  }

  /** Read once (non-blocking); false when nothing was there. */
  private fill(): boolean {
    let r: os.RecvResult | null;
    try {
      r = os.recvmsg(this.fd, READ_CHUNK, os.MSG_DONTWAIT);
    } catch (e) {
      if (e instanceof os.OsError && (e.code === 'ECONNRESET' || e.code === 'EPIPE')) throw new PeerClosedError(this.name);
      throw e;
    }
    if (r === null) return false;
    if (r.data.byteLength === 0 && r.fds.length === 0) throw new PeerClosedError(this.name);
    const start = this.base + this.len, end = start + r.data.byteLength;
    for (const fd of r.fds) this.fds.push({ start, end, fd });
    if (r.truncated) throw new ProtocolError(`${this.name}: a message's data or descriptors were truncated by the kernel (more than 253 fds?)`, os.E.EINVAL, true);
    // Every fd received is in this.fds now, so close() releases them all after this fatal error.
    if (this.fds.length > this.maxPendingFds) {
      throw new ProtocolError(`${this.name}: ${this.fds.length} received fds wait for messages that are not complete; the limit is ${this.maxPendingFds} (at most ${this.maxMsgFds} per message, sent with its first byte)`, os.E.EINVAL, true, this.headerInBuffer(r.data));
    }
    if (this.head + this.len + r.data.byteLength > this.buf.byteLength) {
      // move the unconsumed bytes to the front (once per read, not once per message), grow if needed
      if (this.len + r.data.byteLength > this.buf.byteLength) {
        const nb = new Uint8Array(Math.max(this.buf.byteLength * 2, this.len + r.data.byteLength));
        nb.set(this.buf.subarray(this.head, this.head + this.len));
        this.buf = nb;
      } else this.buf.copyWithin(0, this.head, this.head + this.len);
      this.head = 0;
    }
    this.buf.set(r.data, this.head + this.len);
    this.len += r.data.byteLength;
    return true;
  }

  /** The header at the start of the buffer (after data is appended), unvalidated, or null if not 16 bytes yet. */
  private headerInBuffer(data: Uint8Array): Header | null {
    const have = this.len + data.byteLength;
    if (have < HEADER_SIZE) return null;
    const h = new Uint8Array(HEADER_SIZE);
    h.set(this.buf.subarray(this.head, this.head + Math.min(this.len, HEADER_SIZE)));
    if (this.len < HEADER_SIZE) h.set(data.subarray(0, HEADER_SIZE - this.len), this.len);
    const dv = new DataView(h.buffer);
    return { msgId: dv.getUint16(0, true), command: dv.getUint16(2, true), size: dv.getUint32(4, true), flags: dv.getUint32(8, true), error: dv.getUint32(12, true) };
  }

  /** Take one whole message from the buffer, with the fds that arrived inside its bytes. */
  private extract(): Message | null {
    if (this.len < HEADER_SIZE) return null;
    const h = readHeader(this.buf.subarray(this.head, this.head + HEADER_SIZE), this.maxMsgSize);
    if (this.len < h.size) return null;
    const start = this.base, end = this.base + h.size;
    let mine: number[] = [];
    if (this.fds.length > 0) {
      // fds of a read belong to the last message starting inside it: this one if the next starts after the read
      mine = this.fds.filter((f) => f.start <= start && start < f.end && end >= f.end).map((f) => f.fd);
      const rest = this.fds.filter((f) => !(f.start <= start && start < f.end && end >= f.end));
      for (const f of rest) if (f.end <= end) safeClose(f.fd); // a read no message starts in: cannot happen with one sendmsg per message
      this.fds = rest.filter((f) => f.end > end);
    }
    const payload = this.buf.slice(this.head + HEADER_SIZE, this.head + h.size);
    this.head += h.size;
    this.len -= h.size;
    if (this.len === 0) this.head = 0;
    this.base = end;
    if (mine.length > this.maxMsgFds) {
      for (const fd of mine) safeClose(fd);
      throw new ProtocolError(`${this.name}: ${cmdName(h.command)} message ${h.msgId} carries ${mine.length} fds, the limit is ${this.maxMsgFds}`, os.E.EINVAL, false, h);
    }
    return { ...h, payload, fds: mine };
  }
}

/** Close an fd, ignoring errors (teardown paths). */
export function safeClose(fd: number): void {
  if (fd < 0) return;
  try { os.close(fd); } catch { /* already closed */ }
}

/** Create, bind and listen on a unix socket at path with mode 0600 (non-blocking, close-on-exec). */
export function listenUnix(path: string, backlog = 4): number {
  const fd = os.socket(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK, 0);
  // bind() creates the file with the umask's mode. Worker threads may not change the umask: there
  // the file is chmod'ed right after bind, before listen() lets anyone connect.
  const old = isMainThread ? process.umask(0o177) : -1;
  try {
    os.bind(fd, os.sockaddrUn(path), `"${path}"`);
    if (!isMainThread) chmodSync(path, 0o600);
    os.listen(fd, backlog);
  } catch (e) {
    safeClose(fd);
    throw e;
  } finally {
    if (old >= 0) process.umask(old);
  }
  return fd;
}

/**
 * Connect to a unix socket at path. The socket stays in blocking mode: every Channel read and send
 * passes MSG_DONTWAIT, so no fcntl is needed.
 */
export function connectUnix(path: string): number {
  const fd = os.socket(os.AF_UNIX, os.SOCK_STREAM, 0);
  try {
    os.connect(fd, os.sockaddrUn(path), `"${path}"`);
  } catch (e) {
    safeClose(fd);
    throw e;
  }
  return fd;
}
