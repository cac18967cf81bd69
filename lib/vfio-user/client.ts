/**
 * vfio-user client: a VfioDevice (and DmaSpace) over a unix socket, so drivers use a vfio-user
 * device exactly like a kernel VFIO one (Bar, DmaMemoryMap, eventfd IRQs).
 *
 * The control path is synchronous, because VfioDevice is: each request is one sendmsg, then this
 * thread waits in poll(2) (with a timeout, default 5 s) for the reply with the same message id.
 * Server-to-client commands (DMA_READ/WRITE for any mapped memory) that arrive meanwhile are
 * answered on the spot; between requests, startService() answers them from the event loop (a poll
 * on a libuv pool thread, no spinning).
 *
 * DMA: dmaMap(va, iova, len) sends the fd of the memory that holds va (registered with
 * addFdMemory or attachMemory: EAL segments are memfd or hugetlbfs files) so the server maps it;
 * memory without a known fd is announced without fd and served through DMA_READ/WRITE. Memory sent
 * by fd is served through DMA_READ/WRITE too: a server may choose not to map a file it cannot seal
 * against shrinking (tspmd's emudev does so by default) and reach it by message instead.
 * BARs: regionInfo keeps the fd that comes with a mappable region's info; mmapRegion maps it at
 * the region's offset (sparse areas included), readRegion/writeRegion use REGION_READ/WRITE.
 * For each BAR, regionInfo also asks GET_REGION_IO_FDS once and keeps the ioeventfd doorbells the
 * server offers (a server that answers with an error or none: nothing changes); workerIo hands
 * them to other threads, whose writes to those registers signal the eventfd instead of sending a
 * message (reg.ts).
 */
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { parseDeviceInfo, parseIrqInfo, parseRegionInfo, pciRegionName, type DeviceInfo, type IrqInfo, type MmapOptions, type RegionInfo, type VfioDevice } from '../../src/iommu/device.js';
import { DmaMemoryMap } from '../../src/iommu/dma.js';
import type { BarIo } from '../../src/iommu/bar.js';
import type { EalMemory } from '../../src/memory/memory.js';
import * as P from './protocol.js';
import { SendLock, regionWriteIo, type IoDoorbell } from './reg.js';
import { log } from '../../src/log.js';
import { Channel, connectUnix, safeClose } from './transport.js';

/** Client options. */
export interface ClientOptions {
  /** how long a request waits for its reply (ms), default 5000 */
  timeoutMs?: number;
  /** max_data_xfer_size proposed (largest DMA_READ/WRITE this client accepts), default 1 MiB */
  maxDataXferSize?: number;
  /** max_msg_fds proposed, default 16 */
  maxMsgFds?: number;
  /** the device's name in messages, default "vfio-user:<path>" */
  name?: string;
}

/** An error reply from the server: the command and the errno it carried. */
export class VfioUserError extends Error {
  readonly errno: number;
  readonly command: number;
  constructor(what: string, command: number, errno: number) {
    super(`${what}: the server answered ${P.cmdName(command)} with ${os.errnoName(errno)} (errno ${errno}): ${os.strerror(errno)}`);
    this.name = 'VfioUserError';
    this.errno = errno;
    this.command = command;
  }
}

interface FdMemory {
  va: bigint;
  len: number;
  fd: number;
  fileOffset: bigint;
}

/** A DMA region this client announced (by fd or not): what DMA_READ/WRITE may reach. */
interface MsgRegion {
  iova: bigint;
  len: number;
  va: bigint;
  flags: number;
}

/**
 * Message ids: the client's own requests use 1..0x7fff; register writes from other threads
 * (reg.ts, no reply) carry ids from WORKER_MSG_ID, so an error reply a server might
 * still send for one of them can never be taken for the answer to a request.
 */
const MAX_REQUEST_ID = 0x7fff;
const WORKER_MSG_ID = 0x8000;

/** A vfio-user device seen from the client side. */
export class VfioUserClient implements VfioDevice {
  readonly name: string;
  readonly backend = 'vfio-user';
  readonly path: string;
  /** the server's VERSION reply */
  readonly serverVersion: P.Version;
  /** effective session limits (the server's values, spec defaults where absent) */
  readonly negotiated: P.Negotiated;
  private readonly ch: Channel;
  private readonly timeoutMs: number;
  private readonly maxDataXferSize: number;
  private nextId = 1;
  private readonly regionCache = new Map<number, RegionInfo>();
  private readonly regionFds = new Map<number, number>();
  /** the ioeventfd doorbells each BAR's server offered (their fds are this client's) */
  private readonly doorbells = new Map<number, IoDoorbell[]>();
  private readonly fdMemory: FdMemory[] = [];
  /** every region mapped, by fd or by message (DMA_READ/WRITE may come for either) */
  private readonly dmaRegions: MsgRegion[] = [];
  private serving = false;
  private closed = false;
  /** taken around every send on the socket, here and in workers writing registers (BarIo) */
  private readonly sendLock = SendLock.create();

  private constructor(path: string, fd: number, opts: ClientOptions) {
    this.path = path;
    this.name = opts.name ?? `vfio-user:${path}`;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.maxDataXferSize = opts.maxDataXferSize ?? P.DEFAULT_MAX_DATA_XFER_SIZE;
    const maxMsgFds = opts.maxMsgFds ?? 16;
    this.ch = new Channel(fd, { maxMsgSize: P.HEADER_SIZE + P.DMA_ACCESS_SIZE + Math.max(this.maxDataXferSize, P.DEFAULT_MAX_DATA_XFER_SIZE) + 4096, maxMsgFds, name: this.name });
    try {
      const caps: P.Capabilities = { max_msg_fds: maxMsgFds, max_data_xfer_size: this.maxDataXferSize, pgsizes: P.DEFAULT_PGSIZES, max_dma_maps: P.DEFAULT_MAX_DMA_MAPS, write_multiple: true, other: {} };
      const r = this.request(P.Cmd.VERSION, P.encodeVersion({ major: P.VERSION_MAJOR, minor: P.VERSION_MINOR, caps }), [], 'version negotiation');
      const v = P.decodeVersion(r.payload);
      if (v.major !== P.VERSION_MAJOR) throw new Error(`${this.name}: the server answered major version ${v.major}; ${P.VERSION_MAJOR} was proposed`);
      if (v.minor > P.VERSION_MINOR) throw new Error(`${this.name}: the server answered minor version ${v.minor}, above the proposed ${P.VERSION_MINOR}`);
      this.serverVersion = v;
      this.negotiated = P.effective(v);
    } catch (e) {
      this.ch.close();
      throw e;
    }
  }

  /** Connect to a vfio-user server at path and negotiate the version and capabilities. */
  static connect(path: string, opts: ClientOptions = {}): VfioUserClient {
    let fd: number;
    try {
      fd = connectUnix(path);
    } catch (e) {
      throw new Error(`vfio-user: cannot connect to ${path}: ${(e as Error).message} (is "tspmd emu ... --socket ${path}" running?)`);
    }
    return new VfioUserClient(path, fd, opts);
  }

  /** Send a command and wait (blocking, with the timeout) for its reply; error replies throw VfioUserError. */
  request(cmd: number, payload: Uint8Array, fds: readonly number[], what: string): P.Message {
    if (this.closed) throw new Error(`${this.name}: the device is closed`);
    const msgId = this.nextId;
    this.nextId = this.nextId >= MAX_REQUEST_ID ? 1 : this.nextId + 1;
    this.send({ msgId, command: cmd, flags: P.TYPE_COMMAND, error: 0 }, payload, fds);
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const m = this.ch.receiveBlocking(Math.max(1, deadline - Date.now()), `${P.cmdName(cmd)} (${what})`);
      if ((m.flags & P.FLAG_TYPE_MASK) === P.TYPE_COMMAND) { this.serveCommand(m); continue; }
      if (m.msgId !== msgId || m.command !== cmd) { for (const f of m.fds) safeClose(f); continue; }
      if (m.flags & P.FLAG_ERROR) {
        for (const f of m.fds) safeClose(f);
        throw new VfioUserError(`${this.name}: ${what}`, cmd, m.error);
      }
      return m;
    }
  }

  /** One message on the socket under the send lock (workers may be sending register writes). */
  private send(h: Omit<P.Header, 'size'>, payload?: Uint8Array, fds?: readonly number[]): void {
    this.sendLock.acquire();
    try {
      this.ch.send(h, payload, fds);
    } finally {
      this.sendLock.release();
    }
  }

  /**
   * How other threads write region index where it is not mapped: a no-reply REGION_WRITE on this
   * socket under the shared send lock (null for a region that is not writable). Reads need a reply
   * and stay on this thread.
   */
  workerIo(index: number): BarIo | null {
    if (this.closed) throw new Error(`${this.name}: the device is closed`);
    if (!this.regionInfo(index).writable) return null;
    const bells = this.doorbells.get(index);
    return regionWriteIo({ fd: this.ch.fd, region: index, lock: this.sendLock.sab, msgId: WORKER_MSG_ID, ...(bells?.length ? { doorbells: bells.map((b) => ({ ...b })) } : {}) });
  }

  /** Device info (VFIO_USER_DEVICE_GET_INFO). */
  info(): DeviceInfo {
    const r = this.request(P.Cmd.DEVICE_GET_INFO, P.encodeDeviceInfoRequest(), [], 'device info');
    this.closeFds(r);
    if (r.payload.byteLength < P.DEVICE_INFO_SIZE) throw new Error(`${this.name}: device info reply is ${r.payload.byteLength} bytes, ${P.DEVICE_INFO_SIZE} expected`);
    return parseDeviceInfo(r.payload);
  }

  /** Region info with its capability chain; the region's fd (when mappable) is kept for mmapRegion. */
  regionInfo(index: number): RegionInfo {
    const cached = this.regionCache.get(index);
    if (cached) return cached;
    const what = `${this.name} ${pciRegionName(index)} info`;
    let argsz = 256;
    for (let attempt = 0; attempt < 2; attempt++) {
      const r = this.request(P.Cmd.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest(index, argsz), [], what);
      if (r.payload.byteLength < P.REGION_INFO_SIZE) { this.closeFds(r); throw new Error(`${what}: reply is ${r.payload.byteLength} bytes, at least ${P.REGION_INFO_SIZE} expected`); }
      const full = U.vfio_region_info.get(U.view(r.payload), 'argsz');
      if (full > r.payload.byteLength && attempt === 0 && full <= 65536) { this.closeFds(r); argsz = full; continue; }
      const info = parseRegionInfo(r.payload.subarray(0, Math.min(full, r.payload.byteLength)), what);
      if (info.index !== index) { this.closeFds(r); throw new Error(`${what}: the reply describes region ${info.index}`); }
      if (info.mappable) {
        if (r.fds.length !== 1) { this.closeFds(r); throw new Error(`${what}: a mappable region's reply must carry one fd, it carried ${r.fds.length}`); }
        this.regionFds.set(index, r.fds[0]);
      } else this.closeFds(r);
      this.regionCache.set(index, info);
      if (index <= U.VFIO_PCI_BAR5_REGION_INDEX && info.size > 0 && info.writable) this.doorbells.set(index, this.offeredDoorbells(index, info.size));
      return info;
    }
    throw new Error(`${what}: the server keeps asking for a larger reply buffer`);
  }

  /** The sub-regions of VFIO_USER_DEVICE_GET_REGION_IO_FDS and the fds that came with them (the caller owns those). */
  regionIoFds(index: number): { subs: P.IoFdSubregion[]; fds: number[] } {
    const what = `${this.name} ${pciRegionName(index)} io fds`;
    let argsz = 4096;
    for (let attempt = 0; attempt < 2; attempt++) {
      const r = this.request(P.Cmd.DEVICE_GET_REGION_IO_FDS, P.encodeRegionIoFdsRequest(index, argsz), [], what);
      let d: ReturnType<typeof P.decodeRegionIoFds>;
      try {
        d = P.decodeRegionIoFds(r.payload);
      } catch (e) {
        this.closeFds(r);
        throw e;
      }
      if (d.count > 0 && d.subs.length === 0 && attempt === 0 && d.argsz > argsz && d.argsz <= 65536) { this.closeFds(r); argsz = d.argsz; continue; }
      return { subs: d.subs, fds: r.fds };
    }
    throw new Error(`${what}: the server keeps asking for a larger reply buffer`);
  }

  /**
   * The ioeventfd doorbells the server offers for BAR index (sub-regions of type ioeventfd inside
   * the region whose fd came with the reply); [] when it offers none or answers with an error. The
   * fds kept are closed at close(); the others at once.
   */
  private offeredDoorbells(index: number, size: number): IoDoorbell[] {
    let io: { subs: P.IoFdSubregion[]; fds: number[] };
    try {
      io = this.regionIoFds(index);
    } catch (e) {
      log('debug', 'vfio-user', `${this.name}: ${pciRegionName(index)}: no ioeventfds (${(e as Error).message})`);
      return [];
    }
    const bells: IoDoorbell[] = [];
    const used = new Set<number>();
    for (const s of io.subs) {
      const fd = io.fds[s.fdIndex];
      const ok = s.type === P.IO_FD_TYPE_IOEVENTFD && fd !== undefined && s.offset + s.size <= BigInt(size) && [1n, 2n, 4n, 8n].includes(s.size) &&
        (s.flags & ~P.IO_FD_FLAG_DATAMATCH) === 0 && ((s.flags & P.IO_FD_FLAG_DATAMATCH) === 0 || s.data <= 0xffffffffn);
      if (!ok) { log('debug', 'vfio-user', `${this.name}: ${pciRegionName(index)}: io fd sub-region [0x${s.offset.toString(16)}, +${s.size}) type ${s.type} flags ${s.flags} not used`); continue; }
      used.add(s.fdIndex);
      bells.push({ offset: Number(s.offset), size: Number(s.size), fd, datamatch: (s.flags & P.IO_FD_FLAG_DATAMATCH) !== 0 ? Number(s.data) : null });
    }
    io.fds.forEach((fd, i) => { if (!used.has(i)) safeClose(fd); });
    if (bells.length) log('info', 'vfio-user', `${this.name}: ${pciRegionName(index)}: the server offers ${bells.length} ioeventfd doorbell(s); lcores ring them with eventfd writes`);
    return bells;
  }

  /** The ioeventfd doorbells kept for BAR index (copies; [] when none were offered). */
  ioDoorbells(index: number): IoDoorbell[] {
    return (this.doorbells.get(index) ?? []).map((b) => ({ ...b }));
  }

  /** mmap len bytes of a mappable region at off, through the fd from its region info. */
  mmapRegion(index: number, off: number, len: number, opts: MmapOptions = {}): bigint {
    const info = this.regionInfo(index);
    const what = `${this.name} ${pciRegionName(index)}`;
    const fd = this.regionFds.get(index);
    if (!info.mappable || fd === undefined) throw new Error(`${what} is not mappable; use readRegion/writeRegion`);
    if (off < 0 || len <= 0 || off + len > info.size) throw new RangeError(`${what}: mmap [0x${off.toString(16)}, +0x${len.toString(16)}) is outside the region (size 0x${info.size.toString(16)})`);
    if (info.sparse && !info.sparse.some((a) => off >= a.offset && off + len <= a.offset + a.size)) {
      throw new RangeError(`${what}: mmap [0x${off.toString(16)}, +0x${len.toString(16)}) is not inside a sparse mmap area`);
    }
    const flags = os.MAP_SHARED | (opts.fixedAt !== undefined ? os.MAP_FIXED : 0);
    return os.mmap(opts.fixedAt ?? 0n, len, opts.prot ?? (os.PROT_READ | os.PROT_WRITE), flags, fd, info.offset + BigInt(off));
  }

  /** Read region bytes with REGION_READ (in max_data_xfer_size pieces). */
  readRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    const chunk = this.negotiated.maxDataXferSize;
    for (let done = 0; done < len; ) {
      const n = Math.min(chunk, len - done);
      const r = this.request(P.Cmd.REGION_READ, P.encodeRegionAccess(off + done, index, n), [], `read ${pciRegionName(index)} at 0x${(off + done).toString(16)}`);
      this.closeFds(r);
      const a = P.decodeRegionAccess(r.payload, true, chunk, 'VFIO_USER_REGION_READ reply');
      if (a.count !== n || a.region !== index || a.offset !== BigInt(off + done)) throw new Error(`${this.name}: REGION_READ reply does not match the request`);
      buf.set(a.data, done);
      done += n;
    }
    return len;
  }

  /** Write region bytes with REGION_WRITE (in max_data_xfer_size pieces). */
  writeRegion(index: number, off: number, buf: Uint8Array, len = buf.byteLength): number {
    const chunk = this.negotiated.maxDataXferSize;
    for (let done = 0; done < len; ) {
      const n = Math.min(chunk, len - done);
      const r = this.request(P.Cmd.REGION_WRITE, P.encodeRegionAccess(off + done, index, n, buf.subarray(done, done + n)), [], `write ${pciRegionName(index)} at 0x${(off + done).toString(16)}`);
      this.closeFds(r);
      done += n;
    }
    return len;
  }

  /** Several small writes in one REGION_WRITE_MULTI (when the server agreed to write_multiple). */
  writeMulti(wrs: readonly P.MultiWrite[]): number {
    if (!this.negotiated.writeMultiple) throw new Error(`${this.name}: the server did not agree to write_multiple`);
    const r = this.request(P.Cmd.REGION_WRITE_MULTI, P.encodeWriteMulti(wrs), [], 'write multi');
    this.closeFds(r);
    if (r.payload.byteLength !== 8) throw new Error(`${this.name}: REGION_WRITE_MULTI reply is ${r.payload.byteLength} bytes, 8 expected`);
    return Number(U.view(r.payload).getBigUint64(0, true));
  }

  /** IRQ info of an index. */
  irqInfo(index: number): IrqInfo {
    const r = this.request(P.Cmd.DEVICE_GET_IRQ_INFO, P.encodeIrqInfoRequest(index), [], `IRQ index ${index} info`);
    this.closeFds(r);
    if (r.payload.byteLength < P.IRQ_INFO_SIZE) throw new Error(`${this.name}: IRQ info reply is ${r.payload.byteLength} bytes`);
    return parseIrqInfo(r.payload);
  }

  /**
   * Assign eventfds to vectors start.. of index (-1 unassigns). Runs of assigned fds go as
   * DATA_EVENTFD messages with the fds attached (at most the server's max_msg_fds each); runs of
   * -1 as DATA_EVENTFD messages without fds, which the spec defines as de-assignment.
   */
  setIrqs(index: number, start: number, eventfds: readonly number[]): void {
    const flags = U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER;
    const maxFds = Math.max(1, this.negotiated.maxMsgFds);
    for (let i = 0; i < eventfds.length; ) {
      const assign = eventfds[i] >= 0;
      let j = i;
      while (j < eventfds.length && (eventfds[j] >= 0) === assign && (!assign || j - i < maxFds)) j++;
      const fds = assign ? eventfds.slice(i, j) : [];
      const r = this.request(P.Cmd.DEVICE_SET_IRQS, P.encodeIrqSet(flags, index, start + i, j - i), fds, `set IRQs index ${index} vectors ${start + i}..${start + j - 1}`);
      this.closeFds(r);
      i = j;
    }
  }

  /** Disable every vector of an index (DATA_NONE | ACTION_TRIGGER, start 0, count 0). */
  disableIrqs(index: number): void {
    this.closeFds(this.request(P.Cmd.DEVICE_SET_IRQS, P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0), [], `disable IRQ index ${index}`));
  }

  /** Mask one vector (DATA_NONE | ACTION_MASK). */
  maskIrq(index: number, vector: number): void {
    this.closeFds(this.request(P.Cmd.DEVICE_SET_IRQS, P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_MASK, index, vector, 1), [], `mask IRQ ${index}.${vector}`));
  }

  /** Unmask one vector (DATA_NONE | ACTION_UNMASK). */
  unmaskIrq(index: number, vector: number): void {
    this.closeFds(this.request(P.Cmd.DEVICE_SET_IRQS, P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_UNMASK, index, vector, 1), [], `unmask IRQ ${index}.${vector}`));
  }

  /** Device reset (VFIO_USER_DEVICE_RESET). */
  reset(): void {
    this.closeFds(this.request(P.Cmd.DEVICE_RESET, new Uint8Array(0), [], 'reset'));
  }

  /** DEVICE_FEATURE (migration features: servers without migration answer ENOTSUP). */
  deviceFeature(flags: number, data?: Uint8Array): Uint8Array {
    const r = this.request(P.Cmd.DEVICE_FEATURE, P.encodeDeviceFeature(8 + (data?.byteLength ?? 0) + 4096, flags, data), [], `device feature 0x${flags.toString(16)}`);
    this.closeFds(r);
    return r.payload;
  }

  // ---- DMA ----

  /** Register memory that can be shared by fd: [va, va+len) is fileOffset.. of fd (kept open by the owner). */
  addFdMemory(va: bigint, len: number, fd: number, fileOffset = 0n): void {
    this.fdMemory.push({ va, len, fd, fileOffset });
  }

  /** DMA-map every EAL segment (now and later) by its fd; detach() the result before close(). */
  attachMemory(memory: EalMemory): DmaMemoryMap {
    memory.onSegment((seg) => this.addFdMemory(seg.va, seg.len, seg.fd));
    return new DmaMemoryMap(memory, this, this.name);
  }

  /**
   * Make [va, va+len) reachable at iova: by fd when the memory is registered, else by message. A
   * server may still reach fd memory by message (a file it cannot seal): startService() answers it.
   */
  dmaMap(va: bigint, iova: bigint, len: number): void {
    const src = this.fdMemory.find((m) => va >= m.va && va + BigInt(len) <= m.va + BigInt(m.len));
    if (!src) { this.dmaMapMessage(va, iova, len); return; }
    const payload = P.encodeDmaMap({ flags: P.DMA_FLAG_READ | P.DMA_FLAG_WRITE, offset: src.fileOffset + (va - src.va), address: iova, size: BigInt(len) });
    this.closeFds(this.request(P.Cmd.DMA_MAP, payload, [src.fd], `DMA map iova 0x${iova.toString(16)} (${len} bytes, by fd)`));
    this.dmaRegions.push({ iova, len, va, flags: P.DMA_FLAG_READ | P.DMA_FLAG_WRITE });
  }

  /** Announce [va, va+len) at iova without fd: the server reaches it with DMA_READ/WRITE messages. */
  dmaMapMessage(va: bigint, iova: bigint, len: number): void {
    const payload = P.encodeDmaMap({ flags: P.DMA_FLAG_READ | P.DMA_FLAG_WRITE, offset: 0n, address: iova, size: BigInt(len) });
    this.closeFds(this.request(P.Cmd.DMA_MAP, payload, [], `DMA map iova 0x${iova.toString(16)} (${len} bytes, by message)`));
    this.dmaRegions.push({ iova, len, va, flags: P.DMA_FLAG_READ | P.DMA_FLAG_WRITE });
  }

  /** Remove the mapping at [iova, iova+len) (exactly as mapped). */
  dmaUnmap(iova: bigint, len: number): void {
    this.closeFds(this.request(P.Cmd.DMA_UNMAP, P.encodeDmaUnmap({ flags: 0, address: iova, size: BigInt(len) }), [], `DMA unmap iova 0x${iova.toString(16)}`));
    const i = this.dmaRegions.findIndex((r) => r.iova === iova && r.len === len);
    if (i >= 0) this.dmaRegions.splice(i, 1);
  }

  /**
   * Answer server-to-client commands from the event loop until close(): needed when memory is
   * mapped without fd and the device works while this thread is not inside a request.
   */
  startService(): void {
    if (this.serving) return;
    this.serving = true;
    const loop = async (): Promise<void> => {
      while (this.serving && !this.closed) {
        const ok = await this.ch.waitReadable();
        if (!this.serving || this.closed) return;
        if (!ok) continue;
        this.serviceOnce();
      }
    };
    void loop().catch(() => { /* closed underneath */ });
  }

  /** Answer what has arrived now (non-blocking); returns false when the server closed the connection. */
  serviceOnce(): boolean {
    try {
      for (let m = this.ch.receive(); m; m = this.ch.receive()) {
        if ((m.flags & P.FLAG_TYPE_MASK) === P.TYPE_COMMAND) this.serveCommand(m);
        else for (const f of m.fds) safeClose(f);
      }
      return true;
    } catch {
      this.serving = false;
      return false;
    }
  }

  /** Answer one server-to-client command (DMA_READ/WRITE of any mapped region). */
  private serveCommand(m: P.Message): void {
    for (const f of m.fds) safeClose(f);
    const noReply = (m.flags & P.FLAG_NO_REPLY) !== 0;
    const fail = (errno: number): void => { if (!noReply) this.send({ msgId: m.msgId, command: m.command, flags: P.TYPE_REPLY | P.FLAG_ERROR, error: errno }); };
    try {
      if (m.command === P.Cmd.DMA_READ || m.command === P.Cmd.DMA_WRITE) {
        const write = m.command === P.Cmd.DMA_WRITE;
        const a = P.decodeDmaAccess(m.payload, write, this.maxDataXferSize, P.cmdName(m.command));
        const r = this.dmaRegions.find((x) => a.address >= x.iova && a.address + BigInt(a.count) <= x.iova + BigInt(x.len));
        if (!r || a.count === 0) { fail(os.E.EFAULT); return; }
        const v = new Uint8Array(os.viewOf(r.va + (a.address - r.iova), a.count));
        if (write) {
          v.set(a.data);
          if (!noReply) this.send({ msgId: m.msgId, command: m.command, flags: P.TYPE_REPLY, error: 0 }, P.encodeDmaAccess(a.address, a.count));
        } else if (!noReply) this.send({ msgId: m.msgId, command: m.command, flags: P.TYPE_REPLY, error: 0 }, P.encodeDmaAccess(a.address, a.count, v));
        return;
      }
      fail(os.E.EINVAL);
    } catch (e) {
      fail(e instanceof P.ProtocolError ? e.errno : os.E.EINVAL);
    }
  }

  /** Close the connection and every region fd; mappings made with mmapRegion stay with their owners. */
  close(): void {
    if (this.closed) return;
    this.serving = false;
    this.closed = true;
    this.ch.close();
    for (const fd of this.regionFds.values()) safeClose(fd);
    this.regionFds.clear();
    for (const bells of this.doorbells.values()) for (const fd of new Set(bells.map((b) => b.fd))) safeClose(fd);
    this.doorbells.clear();
    this.regionCache.clear();
  }

  private closeFds(m: P.Message): void {
    for (const f of m.fds) safeClose(f);
  }
}
