/**
 * vfio-user server: serves one device (a VfioUserDevice, device.ts: lib/emudev's EmuDevice or any
 * other provider) on a unix socket path, one client at a time. The socket file is created with
 * mode 0600 and removed at close().
 *
 * Flow: wait (without spinning: poll on a libuv pool thread) for a connection; the first message
 * must be VERSION; then every command is validated field by field and answered, errors as an
 * error reply (flag 0x20 + errno, header only), never a crash. Framing errors (a header size below
 * 16 or above the limit, a bad type, more pending fds than allowed) get an error reply when the
 * header could be read, and close the connection. When the client goes away, its DMA regions are
 * unmapped, its IRQ eventfds closed, the device is reset (resetOnDisconnect, default on) and the
 * server waits for the next client. DMA_READ/WRITE to client memory mapped without fd are sent as
 * server-to-client commands on the same socket (no twin socket) and their replies awaited.
 *
 * The main thread never waits for the client: replies and commands go out with Channel.post();
 * what the socket does not take is queued, no further request is read until the queue is sent, and
 * a client whose socket stays full for sendStallMs is dropped.
 *
 * fd ownership: drain() owns every fd a message brings and closes it after handling, except those
 * the device took (setIrqs replaces them by -1 in the message's array). Reply fds are never handed on.
 * The ioeventfds made for GET_REGION_IO_FDS (FD doorbells) are the device's from the moment they
 * are handed to it (setIoeventfds); it closes them when the client goes away.
 *
 * The socket path: start() refuses a path where a server accepts connections, removes (and logs)
 * a stale socket file only when connecting to it is refused, and close() removes the file only if it
 * is still the socket this server created.
 */
import { lstatSync, unlinkSync, type Stats } from 'node:fs';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { log } from '../../src/log.js';
import type { VfioUserDevice } from './device.js';
import * as P from './protocol.js';
import { Channel, PeerClosedError, listenUnix, safeClose } from './transport.js';

/** Server options. */
export interface ServerOptions {
  /** largest REGION/DMA READ/WRITE count accepted (max_data_xfer_size), default 1 MiB */
  maxDataXferSize?: number;
  /** fds accepted with one message (max_msg_fds), default 16 */
  maxMsgFds?: number;
  /** DMA regions at once (max_dma_maps), default 1024 */
  maxDmaMaps?: number;
  /** reset the device when a client disconnects (default true) */
  resetOnDisconnect?: boolean;
  /** how long a DMA_READ/WRITE waits for the client's reply (ms), default 5000 */
  dmaTimeoutMs?: number;
  /** drop a client whose socket takes no byte of a queued message for this long (ms), default 2000 */
  sendStallMs?: number;
  /** offer the device's ioeventfd doorbells in GET_REGION_IO_FDS (default true; false: no sub-regions) */
  ioeventfds?: boolean;
}

/** The largest message the server accepts for a max_data_xfer_size (a REGION_WRITE of that many bytes, plus slack). */
export function serverMaxMsgSize(maxDataXferSize: number = P.DEFAULT_MAX_DATA_XFER_SIZE): number {
  return P.HEADER_SIZE + P.REGION_ACCESS_SIZE + maxDataXferSize + 4096;
}

/** Messages handled in one go before the server lets the event loop run. */
const DRAIN_BATCH = 128;

/** Counters of one server. */
export interface ServerStats {
  connections: number;
  messages: number;
  errorReplies: number;
  /** connections closed because of broken framing or a bad first message */
  dropped: number;
}

interface Pending {
  resolve: (m: P.Message) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** A vfio-user server for one device on one socket path. */
export class VfioUserServer {
  readonly path: string;
  readonly device: VfioUserDevice;
  readonly stats: ServerStats = { connections: 0, messages: 0, errorReplies: 0, dropped: 0 };
  private readonly maxDataXferSize: number;
  private readonly maxMsgFds: number;
  private readonly resetOnDisconnect: boolean;
  private readonly dmaTimeoutMs: number;
  private readonly sendStallMs: number;
  private readonly offerIoeventfds: boolean;
  /** the ioeventfds made for this client, by region (the device owns and closes them; kept to answer a repeated request) */
  private readonly ioFds = new Map<number, { subs: P.IoFdSubregion[]; fds: number[] }>();
  private listenFd = -1;
  /** device and inode of the socket file this server bound (close() removes only that file) */
  private sockId: { dev: number; ino: number } | null = null;
  private wakeFd = -1;
  private conn: Channel | null = null;
  private peer: P.Negotiated | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closing = false;
  private loopDone: Promise<void> = Promise.resolve();

  /** Prepare to serve device at path (nothing is created until start()). */
  constructor(device: VfioUserDevice, path: string, opts: ServerOptions = {}) {
    this.device = device;
    this.path = path;
    this.maxDataXferSize = opts.maxDataXferSize ?? P.DEFAULT_MAX_DATA_XFER_SIZE;
    if (!Number.isSafeInteger(this.maxDataXferSize) || this.maxDataXferSize < P.MIN_DATA_XFER_SIZE) {
      throw new RangeError(`vfio-user server ${path}: maxDataXferSize ${this.maxDataXferSize} is below the minimum of ${P.MIN_DATA_XFER_SIZE} bytes`);
    }
    this.maxMsgFds = opts.maxMsgFds ?? 16;
    this.resetOnDisconnect = opts.resetOnDisconnect ?? true;
    this.dmaTimeoutMs = opts.dmaTimeoutMs ?? 5000;
    this.sendStallMs = opts.sendStallMs ?? 2000;
    this.offerIoeventfds = opts.ioeventfds ?? true;
    device.maxDmaMaps = opts.maxDmaMaps ?? 1024;
  }

  /** Whether a client is connected now. */
  get connected(): boolean {
    return this.conn !== null;
  }

  /**
   * Create the socket (mode 0600) and start serving in the background. A stale socket file (a
   * connect() to it is refused) is removed with a log line; a live one (the connect succeeds or
   * its backlog is full) or one whose state cannot be told is an error naming the path.
   */
  start(): void {
    if (this.listenFd >= 0) throw new Error(`vfio-user server ${this.path}: already started`);
    removeStaleSocket(this.path);
    this.listenFd = listenUnix(this.path);
    try {
      const st = lstatSync(this.path);
      this.sockId = { dev: st.dev, ino: st.ino };
      this.wakeFd = os.eventfd(0, os.EFD_NONBLOCK);
    } catch (e) {
      safeClose(this.listenFd);
      this.listenFd = -1;
      this.unlinkOwnSocket();
      throw e;
    }
    log('info', 'vfio-user', `serving ${this.device.name} on ${this.path}`);
    this.loopDone = this.loop().catch((e: unknown) => {
      log('error', 'vfio-user', `server ${this.path} stopped: ${(e as Error).stack ?? String(e)}`);
    });
  }

  /** Stop serving: disconnect the client, close the socket and remove the socket file. */
  async close(): Promise<void> {
    if (this.closing) return this.loopDone;
    this.closing = true;
    if (this.wakeFd >= 0) {
      const one = new Uint8Array(8);
      one[0] = 1;
      try { os.write(this.wakeFd, one); } catch { /* already woken */ }
    }
    this.conn?.wake();
    await this.loopDone;
    if (this.conn) this.dropClient('server closing');
    safeClose(this.listenFd);
    this.listenFd = -1;
    safeClose(this.wakeFd);
    this.wakeFd = -1;
    this.unlinkOwnSocket();
    log('info', 'vfio-user', `server ${this.path} closed`);
  }

  /** Remove the socket file if it is still the one this server bound (another server may own the path now). */
  private unlinkOwnSocket(): void {
    const id = this.sockId;
    this.sockId = null;
    if (!id) return;
    try {
      const st = lstatSync(this.path);
      if (st.dev !== id.dev || st.ino !== id.ino) {
        log('warn', 'vfio-user', `${this.path} is no longer this server's socket (replaced by another); leaving it in place`);
        return;
      }
      unlinkSync(this.path);
    } catch { /* gone */ }
  }

  private async loop(): Promise<void> {
    while (!this.closing) {
      if (!this.conn) {
        const [ev] = await os.pollAsync([this.listenFd, this.wakeFd], os.POLLIN, -1);
        if (this.closing) break;
        if (ev === 0) continue;
        const fd = os.accept(this.listenFd, os.SOCK_NONBLOCK);
        if (fd < 0) continue;
        this.stats.connections++;
        this.conn = new Channel(fd, { maxMsgSize: serverMaxMsgSize(this.maxDataXferSize), maxMsgFds: this.maxMsgFds, name: `vfio-user server ${this.path}` });
        this.peer = null;
        log('info', 'vfio-user', `${this.path}: client connected`);
        continue;
      }
      const conn = this.conn;
      if (conn.outBytes > 0) {
        await this.sendQueued(conn);
        continue;
      }
      const readable = await conn.waitReadable();
      if (this.closing) break;
      if (!readable || this.conn !== conn) continue;
      // A batch at a time, then a turn of the event loop: a client that never stops sending (with
      // or without reading the replies) cannot hold the main thread (timers, signals, the mailbox).
      if (this.drain(conn)) await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** Send what the client's socket did not take, waiting (in bounded slices) while it stays full; drop a client that stalls. */
  private async sendQueued(conn: Channel): Promise<void> {
    for (;;) {
      try {
        if (conn.flush()) return;
      } catch (e) {
        this.dropClient(e instanceof PeerClosedError ? 'client disconnected' : `dropped: ${(e as Error).message}`);
        return;
      }
      const stalled = Date.now() - conn.outProgressAt;
      if (stalled >= this.sendStallMs) {
        this.stats.dropped++;
        this.dropClient(`dropped: the client has read nothing for ${stalled} ms while ${conn.outBytes} bytes of replies wait (limit ${this.sendStallMs} ms)`);
        return;
      }
      // A slice, so that close() is never held up for long (the wake eventfd cannot share a POLLOUT poll).
      await conn.waitWritable(Math.min(50, this.sendStallMs - stalled));
      if (this.closing || this.conn !== conn) return;
    }
  }

  /** Send an error reply to a command that wants one (best effort: the connection may be failing). */
  private errorReply(conn: Channel, h: P.Header, errno: number): void {
    this.stats.errorReplies++;
    if ((h.flags & P.FLAG_TYPE_MASK) !== P.TYPE_COMMAND || (h.flags & P.FLAG_NO_REPLY) !== 0) return;
    try { conn.post({ msgId: h.msgId, command: h.command, flags: P.TYPE_REPLY | P.FLAG_ERROR, error: errno }); } catch { /* closing */ }
  }

  /**
   * Handle the whole messages that can be read now, at most DRAIN_BATCH of them (stopping early
   * while replies wait to be sent); true when the batch was full (more may be waiting).
   */
  private drain(conn: Channel): boolean {
    for (let n = 0; n < DRAIN_BATCH; n++) {
      let m: P.Message | null;
      try {
        m = conn.receive();
      } catch (e) {
        if (e instanceof P.ProtocolError && e.header) {
          this.errorReply(conn, e.header, e.errno);
          if (!e.fatal) {
            if (conn.outBytes > 0) return false;
            continue;
          }
        }
        this.dropClient(e instanceof PeerClosedError ? 'client disconnected' : `dropped: ${(e as Error).message}`);
        if (!(e instanceof PeerClosedError)) this.stats.dropped++;
        return false;
      }
      if (!m) return false;
      this.stats.messages++;
      try {
        this.handle(conn, m);
      } catch (e) {
        if (e instanceof PeerClosedError) this.dropClient('client disconnected');
        else {
          this.stats.dropped++;
          this.dropClient(`dropped: ${(e as Error).message}`);
        }
        return false;
      } finally {
        // the one owner of received fds: whatever the device did not take (-1) is closed here
        for (const fd of m.fds) safeClose(fd);
      }
      if (this.conn !== conn || conn.outBytes > 0) return false;
    }
    return true;
  }

  private dropClient(why: string): void {
    const conn = this.conn;
    if (!conn) return;
    this.conn = null;
    this.peer = null;
    log('info', 'vfio-user', `${this.path}: ${why}`);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error(`${this.path}: client went away before answering DMA message ${id}`));
    }
    this.pending.clear();
    conn.close();
    this.ioFds.clear(); // the device closes them in disconnected()
    // Never throws, never stops half way, and resets even when a step failed (errors are logged).
    this.device.disconnected({ reset: this.resetOnDisconnect });
  }

  /** One message: route a reply, or execute a command and reply (errors as error replies). */
  private handle(conn: Channel, m: P.Message): void {
    if ((m.flags & P.FLAG_TYPE_MASK) === P.TYPE_REPLY) {
      const p = this.pending.get(m.msgId);
      if (!p) { log('debug', 'vfio-user', `${this.path}: unexpected reply ${m.msgId} (${P.cmdName(m.command)}) ignored`); return; }
      this.pending.delete(m.msgId);
      clearTimeout(p.timer);
      // No DMA reply carries fds; any that came stay with drain(), which closes them. The waiter
      // gets none, so nothing can close a number that a later message's fd has reused.
      if (m.fds.length) log('debug', 'vfio-user', `${this.path}: reply ${m.msgId} (${P.cmdName(m.command)}) carried ${m.fds.length} fds; closed`);
      p.resolve({ ...m, fds: [] });
      return;
    }
    const noReply = (m.flags & P.FLAG_NO_REPLY) !== 0;
    if (!this.peer && m.command !== P.Cmd.VERSION) {
      this.errorReply(conn, m, os.E.EINVAL);
      return;
    }
    let reply: { payload: Uint8Array; fds: number[] };
    try {
      reply = this.execute(conn, m);
    } catch (e) {
      if (e instanceof P.ProtocolError && e.fatal) throw e;
      const errno = e instanceof P.ProtocolError || e instanceof os.OsError ? e.errno : os.E.EINVAL;
      log('debug', 'vfio-user', `${this.path}: ${P.cmdName(m.command)} message ${m.msgId}: ${(e as Error).message}`);
      this.errorReply(conn, m, errno);
      if (m.command === P.Cmd.VERSION) throw new Error(`version negotiation failed: ${(e as Error).message}`);
      return;
    }
    if (!noReply) conn.post({ msgId: m.msgId, command: m.command, flags: P.TYPE_REPLY, error: 0 }, reply.payload, reply.fds);
  }

  private execute(conn: Channel, m: P.Message): { payload: Uint8Array; fds: number[] } {
    const none = { payload: new Uint8Array(0), fds: [] as number[] };
    const p = m.payload;
    const dev = this.device;
    const noFds = () => { if (m.fds.length) throw new P.ProtocolError(`${P.cmdName(m.command)} carries ${m.fds.length} unexpected fds`); };
    switch (m.command) {
      case P.Cmd.VERSION: {
        noFds();
        if (this.peer) throw new P.ProtocolError('VFIO_USER_VERSION sent twice on one connection');
        const v = P.decodeVersion(p);
        if (v.major !== P.VERSION_MAJOR) throw new P.ProtocolError(`client proposes major version ${v.major}; this server speaks ${P.VERSION_MAJOR}`, os.E.ENOTSUP);
        if (v.caps.max_data_xfer_size !== undefined && v.caps.max_data_xfer_size < P.MIN_DATA_XFER_SIZE) {
          throw new P.ProtocolError(`client's max_data_xfer_size ${v.caps.max_data_xfer_size} is below the minimum of ${P.MIN_DATA_XFER_SIZE} bytes`, os.E.EINVAL);
        }
        const minor = Math.min(v.minor, P.VERSION_MINOR);
        // The reply's capabilities are a subset of the proposed ones, with this server's values.
        const mine: P.Capabilities = { other: {} };
        if (v.caps.max_msg_fds !== undefined) mine.max_msg_fds = this.maxMsgFds;
        if (v.caps.max_data_xfer_size !== undefined) mine.max_data_xfer_size = this.maxDataXferSize;
        if (v.caps.max_dma_maps !== undefined) mine.max_dma_maps = dev.maxDmaMaps;
        if (v.caps.pgsizes !== undefined) mine.pgsizes = P.DEFAULT_PGSIZES;
        if (v.caps.write_multiple !== undefined) mine.write_multiple = v.caps.write_multiple;
        if (v.caps.twin_socket !== undefined) mine.twin_socket = { supported: false };
        this.peer = P.effective(v);
        // Without the capability the spec's defaults hold for this server too.
        if (v.caps.max_data_xfer_size === undefined) this.peer.maxDataXferSize = Math.min(this.peer.maxDataXferSize, this.maxDataXferSize);
        dev.connected({ read: (iova, len) => this.remoteDmaRead(iova, len), write: (iova, data) => this.remoteDmaWrite(iova, data) });
        log('info', 'vfio-user', `${this.path}: negotiated version ${v.major}.${minor}`);
        return { payload: P.encodeVersion({ major: v.major, minor, caps: mine }), fds: [] };
      }
      case P.Cmd.DMA_MAP: {
        const d = P.decodeDmaMap(p);
        if (m.fds.length > 1) throw new P.ProtocolError(`VFIO_USER_DMA_MAP carries ${m.fds.length} fds; 0 or 1 expected`);
        const fd = m.fds.length === 1 ? m.fds[0] : -1;
        if (fd < 0 && d.offset !== 0n) throw new P.ProtocolError('VFIO_USER_DMA_MAP: offset must be 0 without an fd');
        dev.dmaMap(d.address, d.size, d.flags, fd, d.offset);
        log('info', 'vfio-user', `${this.path}: DMA_MAP iova 0x${d.address.toString(16)} size 0x${d.size.toString(16)} flags ${d.flags} ${fd >= 0 ? `by fd (offset 0x${d.offset.toString(16)})` : 'by message'}`);
        return none; // the received fd is closed by drain(); the mapping stays
      }
      case P.Cmd.DMA_UNMAP: {
        noFds();
        const d = P.decodeDmaUnmap(p);
        dev.dmaUnmap(d.address, d.size);
        return { payload: P.encodeDmaUnmap({ argsz: P.DMA_UNMAP_SIZE, flags: d.flags, address: d.address, size: d.size }), fds: [] };
      }
      case P.Cmd.DEVICE_GET_INFO: {
        noFds();
        P.decodeDeviceInfoRequest(p);
        return { payload: P.encodeDeviceInfo(U.VFIO_DEVICE_FLAGS_PCI | U.VFIO_DEVICE_FLAGS_RESET, dev.numRegions, dev.numIrqs), fds: [] };
      }
      case P.Cmd.DEVICE_GET_REGION_INFO: {
        noFds();
        const r = P.decodeRegionInfoRequest(p);
        const d = dev.describeRegion(r.index);
        const fd = (d.flags & U.VFIO_REGION_INFO_FLAG_MMAP) !== 0 ? dev.regionFd(r.index) : -1;
        return { payload: P.encodeRegionInfo(d, r.argsz), fds: fd >= 0 ? [fd] : [] };
      }
      case P.Cmd.DEVICE_GET_REGION_IO_FDS: {
        noFds();
        const r = P.decodeRegionIoFdsRequest(p);
        const d = dev.describeRegion(r.index);
        if (d.size === 0) throw new P.ProtocolError(`region ${r.index} does not exist`);
        const io = this.regionIoFds(r.index);
        const fits = P.REGION_IO_FDS_SIZE + io.subs.length * P.IO_FD_SUBREGION_SIZE <= r.argsz;
        // Too small an argsz: the size needed and the count, no sub-regions and no fds (the client asks again).
        return { payload: P.encodeRegionIoFds(r.index, io.subs, r.argsz), fds: fits ? io.fds : [] };
      }
      case P.Cmd.DEVICE_GET_IRQ_INFO: {
        noFds();
        const index = P.decodeIrqInfoRequest(p);
        const i = dev.irqInfo(index);
        return { payload: P.encodeIrqInfo(index, i.flags, i.count), fds: [] };
      }
      case P.Cmd.DEVICE_SET_IRQS: {
        const s = P.decodeIrqSet(p);
        dev.setIrqs(s, m.fds); // takes the fds it keeps (replaced by -1)
        return none;
      }
      case P.Cmd.REGION_READ: {
        noFds();
        const a = P.decodeRegionAccess(p, false, this.maxDataXferSize, 'VFIO_USER_REGION_READ');
        const data = dev.regionRead(a.region, a.offset, a.count);
        return { payload: P.encodeRegionAccess(a.offset, a.region, a.count, data), fds: [] };
      }
      case P.Cmd.REGION_WRITE: {
        noFds();
        const a = P.decodeRegionAccess(p, true, this.maxDataXferSize, 'VFIO_USER_REGION_WRITE');
        dev.regionWrite(a.region, a.offset, a.data);
        return { payload: P.encodeRegionAccess(a.offset, a.region, a.count), fds: [] };
      }
      case P.Cmd.REGION_WRITE_MULTI: {
        noFds();
        const wrs = P.decodeWriteMulti(p);
        for (const w of wrs) dev.regionWrite(w.region, w.offset, w.data);
        return { payload: P.encodeWriteMultiReply(wrs.length), fds: [] };
      }
      case P.Cmd.DEVICE_RESET: {
        noFds();
        if (p.byteLength !== 0) throw new P.ProtocolError(`VFIO_USER_DEVICE_RESET has no payload; got ${p.byteLength} bytes`);
        dev.reset();
        return none;
      }
      case P.Cmd.DEVICE_FEATURE: {
        noFds();
        const f = P.decodeDeviceFeature(p);
        throw new P.ProtocolError(`VFIO_USER_DEVICE_FEATURE: feature ${f.feature} is not supported (no migration or DMA logging)`, os.E.ENOTSUP);
      }
      case P.Cmd.MIG_DATA_READ:
      case P.Cmd.MIG_DATA_WRITE: {
        noFds();
        P.decodeMigData(p, m.command === P.Cmd.MIG_DATA_WRITE);
        throw new P.ProtocolError(`${P.cmdName(m.command)}: migration is not supported`, os.E.ENOTSUP);
      }
      case P.Cmd.DMA_READ:
      case P.Cmd.DMA_WRITE:
        throw new P.ProtocolError(`${P.cmdName(m.command)} goes from server to client, not to the server`);
      default:
        throw new P.ProtocolError(`unknown command ${m.command}`);
    }
  }

  /**
   * The ioeventfd sub-regions of region index for this client, with their eventfds: made at the
   * first request (one non-blocking eventfd per doorbell the device declares, at most the client's
   * max_msg_fds) and handed to the device, which owns them from then on.
   */
  private regionIoFds(index: number): { subs: P.IoFdSubregion[]; fds: number[] } {
    const known = this.ioFds.get(index);
    if (known) return known;
    const dev = this.device;
    let specs = this.offerIoeventfds && dev.ioeventfds && dev.setIoeventfds ? dev.ioeventfds(index) : [];
    const most = this.peer?.maxMsgFds ?? 0;
    if (specs.length > most) {
      log('info', 'vfio-user', `${this.path}: region ${index} has ${specs.length} ioeventfd doorbells; the client takes ${most} fds per message, so ${most} are offered`);
      specs = specs.slice(0, most);
    }
    const fds: number[] = [];
    try {
      for (let i = 0; i < specs.length; i++) fds.push(os.eventfd(0, os.EFD_NONBLOCK));
      if (fds.length) dev.setIoeventfds!(index, fds);
    } catch (e) {
      for (const fd of fds) safeClose(fd);
      throw e;
    }
    const subs = specs.map((s, i): P.IoFdSubregion => ({
      offset: BigInt(s.offset), size: BigInt(s.size), fdIndex: i, type: P.IO_FD_TYPE_IOEVENTFD,
      flags: s.datamatch === undefined ? 0 : P.IO_FD_FLAG_DATAMATCH, data: BigInt(s.datamatch ?? 0),
    }));
    const io = { subs, fds };
    this.ioFds.set(index, io);
    if (fds.length) log('info', 'vfio-user', `${this.path}: region ${index}: ${fds.length} ioeventfd doorbell(s) offered`);
    return io;
  }

  /** Send a command to the client and wait for its reply. */
  private request(cmd: number, payload: Uint8Array): Promise<P.Message> {
    const conn = this.conn;
    if (!conn) return Promise.reject(new Error(`${this.path}: no client connected`));
    const msgId = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    return new Promise<P.Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(msgId);
        reject(new Error(`${this.path}: the client did not answer ${P.cmdName(cmd)} within ${this.dmaTimeoutMs} ms`));
      }, this.dmaTimeoutMs);
      this.pending.set(msgId, { resolve, reject, timer });
      try {
        conn.post({ msgId, command: cmd, flags: P.TYPE_COMMAND, error: 0 }, payload);
        if (conn.outBytes > 0) conn.wake(); // the loop waits for input: make it send the queue first
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(msgId);
        reject(e as Error);
      }
    }).then((m) => {
      if (m.flags & P.FLAG_ERROR) throw new Error(`${this.path}: the client refused ${P.cmdName(cmd)}: ${os.errnoName(m.error)} (errno ${m.error})`);
      return m;
    });
  }

  /** Bytes per DMA_READ/WRITE: the client's max_data_xfer_size (at least 4 KiB, refused below), at most this server's (its replies must fit). */
  private dmaChunk(): number {
    return Math.min(this.peer?.maxDataXferSize ?? P.DEFAULT_MAX_DATA_XFER_SIZE, this.maxDataXferSize);
  }

  /** DMA_READ of client memory mapped without fd, in chunks of the client's max_data_xfer_size. */
  private async remoteDmaRead(iova: bigint, len: number): Promise<Uint8Array> {
    const out = new Uint8Array(len);
    const chunk = this.dmaChunk();
    for (let off = 0; off < len; off += chunk) {
      const n = Math.min(chunk, len - off);
      const r = await this.request(P.Cmd.DMA_READ, P.encodeDmaAccess(iova + BigInt(off), n));
      const a = P.decodeDmaAccess(r.payload, true, chunk, 'VFIO_USER_DMA_READ reply');
      if (a.count !== n || a.address !== iova + BigInt(off)) throw new Error(`${this.path}: DMA_READ reply is for [0x${a.address.toString(16)}, +${a.count}), not the requested range`);
      out.set(a.data, off);
    }
    return out;
  }

  /** DMA_WRITE of client memory mapped without fd. */
  private async remoteDmaWrite(iova: bigint, data: Uint8Array): Promise<void> {
    const chunk = this.dmaChunk();
    for (let off = 0; off < data.byteLength; off += chunk) {
      const part = data.subarray(off, Math.min(off + chunk, data.byteLength));
      const r = await this.request(P.Cmd.DMA_WRITE, P.encodeDmaAccess(iova + BigInt(off), part.byteLength, part));
      P.decodeDmaAccess(r.payload, false, chunk, 'VFIO_USER_DMA_WRITE reply', true);
    }
  }
}

/**
 * Make way for a server socket at path: nothing there is fine; a socket file that refuses
 * connections (ECONNREFUSED: its server is gone) is removed, with a log line saying so. A file that
 * is not a socket, a socket that accepts (or whose backlog is full: EAGAIN), or any other connect
 * error is an error naming the path: a live server's socket is never removed.
 */
function removeStaleSocket(path: string): void {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new Error(`vfio-user server: cannot check ${path}: ${(e as Error).message}`);
  }
  if (!st.isSocket()) throw new Error(`vfio-user server: ${path} exists and is not a socket; remove it or choose another --socket path`);
  // Non-blocking: a live server whose backlog is full answers EAGAIN instead of blocking this thread.
  const fd = os.socket(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK, 0);
  let code = 'connected';
  try {
    os.connect(fd, os.sockaddrUn(path), `"${path}"`);
  } catch (e) {
    if (!(e instanceof os.OsError)) throw e;
    code = e.code;
  } finally {
    safeClose(fd);
  }
  if (code === 'connected' || code === 'EAGAIN' || code === 'EINPROGRESS') {
    throw new Error(`vfio-user server: ${path} is in use by a running server; stop it or choose another --socket path`);
  }
  if (code !== 'ECONNREFUSED') {
    throw new Error(`vfio-user server: cannot tell whether a server uses ${path} (connect failed with ${code}); remove it if none does, or choose another --socket path`);
  }
  // Only the file that was probed: one a server bound meanwhile is left alone (bind() then fails, naming the path).
  try {
    const now = lstatSync(path);
    if (now.dev !== st.dev || now.ino !== st.ino) return;
  } catch {
    return; // removed meanwhile
  }
  unlinkSync(path);
  log('warn', 'vfio-user', `removed stale socket ${path}: connecting to it was refused (ECONNREFUSED), so no server serves it`);
}
