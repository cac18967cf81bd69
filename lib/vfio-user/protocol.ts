/**
 * vfio-user message codec (QEMU docs/interop/vfio-user.rst): the 16-byte header, command numbers,
 * and an encoder and a validating decoder for the payload of every command. All data is little
 * endian (the host's, x86_64/aarch64). Payloads that reuse linux/vfio.h structs (region info with
 * its capability chain, irq info, irq set) are built with the Struct layouts of
 * src/iommu/vfio-uapi.ts and parsed with src/iommu/device.ts, so one definition serves kernel VFIO
 * and vfio-user.
 *
 * Decoders never trust a field: every length, count and offset is checked against the bytes
 * actually received, and a violation throws ProtocolError carrying the errno that the error reply
 * should carry (EINVAL for malformed messages).
 */
import * as U from '../../src/iommu/vfio-uapi.js';
import { E } from '../../src/os/libc.js';

// ---- header ----

/** Size of the header that starts every message. */
export const HEADER_SIZE = 16;
/** Flags: type bits 0-3 */
export const FLAG_TYPE_MASK = 0xf;
/** Type: command message. */
export const TYPE_COMMAND = 0;
/** Type: reply message. */
export const TYPE_REPLY = 1;
/** Flag: the command wants no reply. */
export const FLAG_NO_REPLY = 0x10;
/** Flag: the reply reports an error; the errno field is valid (may be 0). */
export const FLAG_ERROR = 0x20;

/** Command numbers (the spec's "Commands" table). */
export const Cmd = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;

/** A command number. */
export type CmdNumber = (typeof Cmd)[keyof typeof Cmd];

const CMD_NAMES = new Map<number, string>(Object.entries(Cmd).map(([k, v]) => [v, `VFIO_USER_${k}`]));

/** The spec's name of a command number ("VFIO_USER_DMA_MAP"), or "command N". */
export function cmdName(cmd: number): string {
  return CMD_NAMES.get(cmd) ?? `command ${cmd}`;
}

/** A decoded message header. */
export interface Header {
  msgId: number;
  command: number;
  /** whole message size, header included */
  size: number;
  flags: number;
  /** errno of an error reply (reserved, 0, in commands) */
  error: number;
}

/** A malformed or refused message; errno is what the error reply carries. */
export class ProtocolError extends Error {
  /** errno for the error reply (EINVAL, ENOTSUP, ...) */
  readonly errno: number;
  /** the framing itself is broken: the connection cannot continue and must be closed */
  readonly fatal: boolean;
  /** the refused message's header, when it was read whole but cannot be handled (e.g. too many fds) */
  readonly header: Header | null;
  constructor(message: string, errno: number = E.EINVAL, fatal = false, header: Header | null = null) {
    super(message);
    this.name = 'ProtocolError';
    this.errno = errno;
    this.fatal = fatal;
    this.header = header;
  }
}

/** Encode a header into the first 16 bytes of buf. */
export function writeHeader(buf: Uint8Array, h: Header): void {
  const dv = U.view(buf);
  dv.setUint16(0, h.msgId, true);
  dv.setUint16(2, h.command, true);
  dv.setUint32(4, h.size, true);
  dv.setUint32(8, h.flags, true);
  dv.setUint32(12, h.error >>> 0, true);
}

/**
 * Decode and validate the header at the start of buf: size at least 16 and at most maxSize, type
 * command or reply. A violation is fatal: the byte stream cannot be resynchronised.
 */
export function readHeader(buf: Uint8Array, maxSize: number): Header {
  if (buf.byteLength < HEADER_SIZE) throw new ProtocolError(`message header: ${buf.byteLength} bytes, 16 needed`, E.EINVAL, true);
  const dv = U.view(buf);
  const h: Header = { msgId: dv.getUint16(0, true), command: dv.getUint16(2, true), size: dv.getUint32(4, true), flags: dv.getUint32(8, true), error: dv.getUint32(12, true) };
  // The header rides on these fatal errors so that the receiver can send an error reply before closing.
  if (h.size < HEADER_SIZE) throw new ProtocolError(`${cmdName(h.command)} message ${h.msgId}: size ${h.size} is smaller than the 16-byte header`, E.EINVAL, true, h);
  if (h.size > maxSize) throw new ProtocolError(`${cmdName(h.command)} message ${h.msgId}: size ${h.size} exceeds the limit of ${maxSize} bytes`, E.E2BIG, true, h);
  const type = h.flags & FLAG_TYPE_MASK;
  if (type !== TYPE_COMMAND && type !== TYPE_REPLY) throw new ProtocolError(`${cmdName(h.command)} message ${h.msgId}: message type ${type} is neither command (0) nor reply (1)`, E.EINVAL, true, h);
  return h;
}

/** One whole message: header fields plus payload bytes (after the header) and its fds. */
export interface Message extends Header {
  payload: Uint8Array;
  fds: number[];
}

/** A whole message (header + payload) ready for one sendmsg. */
export function encodeMessage(h: Omit<Header, 'size'>, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const buf = new Uint8Array(HEADER_SIZE + payload.byteLength);
  writeHeader(buf, { ...h, size: buf.byteLength });
  buf.set(payload, HEADER_SIZE);
  return buf;
}

// ---- field helpers ----

function dvOf(b: Uint8Array): DataView {
  return U.view(b);
}

/** Throw unless the payload has at least min bytes. */
export function needBytes(p: Uint8Array, min: number, what: string): void {
  if (p.byteLength < min) throw new ProtocolError(`${what}: payload is ${p.byteLength} bytes, at least ${min} needed`);
}

/** Throw unless the payload has exactly n bytes. */
export function exactBytes(p: Uint8Array, n: number, what: string): void {
  if (p.byteLength !== n) throw new ProtocolError(`${what}: payload is ${p.byteLength} bytes, ${n} expected`);
}

/** Throw unless v is zero (fields the spec says must be zero). */
export function mustBeZero(v: number | bigint, field: string, what: string): void {
  if (v !== 0 && v !== 0n) throw new ProtocolError(`${what}: ${field} must be 0, got ${v}`);
}

// ---- VERSION ----

/** The protocol version this implementation speaks (libvfio-user's 0.2; QEMU's client proposes 0.0). */
export const VERSION_MAJOR = 0;
/** Highest minor version spoken. */
export const VERSION_MINOR = 2;
/** Spec defaults when a capability is absent. */
export const DEFAULT_MAX_MSG_FDS = 1;
export const DEFAULT_MAX_DATA_XFER_SIZE = 1048576;
export const DEFAULT_MAX_DMA_MAPS = 65535;
export const DEFAULT_PGSIZES = 4096;
/** The smallest max_data_xfer_size a server accepts (libvfio-user's floor): below it a 64 KiB transfer needs thousands of round trips. */
export const MIN_DATA_XFER_SIZE = 4096;

/** The capabilities object of the VERSION JSON, as the spec defines it (absent: undefined). */
export interface Capabilities {
  max_msg_fds?: number;
  max_data_xfer_size?: number;
  max_dma_maps?: number;
  pgsizes?: number;
  twin_socket?: { supported?: boolean; fd_index?: number };
  write_multiple?: boolean;
  /** members this implementation does not know (e.g. libvfio-user's "migration"), kept as sent */
  other: Record<string, unknown>;
}

/** A VERSION payload, decoded. */
export interface Version {
  major: number;
  minor: number;
  caps: Capabilities;
}

/** Encode a VERSION payload: u16 major, u16 minor, NUL-terminated JSON {"capabilities": {...}}. */
export function encodeVersion(v: Version): Uint8Array {
  const caps: Record<string, unknown> = { ...v.caps.other };
  for (const k of ['max_msg_fds', 'max_data_xfer_size', 'max_dma_maps', 'pgsizes', 'twin_socket', 'write_multiple'] as const) {
    if (v.caps[k] !== undefined) caps[k] = v.caps[k];
  }
  const json = Buffer.from(JSON.stringify({ capabilities: caps }) + '\0', 'utf8');
  const out = new Uint8Array(4 + json.length);
  const dv = dvOf(out);
  dv.setUint16(0, v.major, true);
  dv.setUint16(2, v.minor, true);
  out.set(json, 4);
  return out;
}

function capNumber(o: Record<string, unknown>, k: string, min: number, max: number): number | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new ProtocolError(`VFIO_USER_VERSION: capability ${k} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Decode and validate a VERSION payload (the JSON is optional; when present it must be an object). */
export function decodeVersion(p: Uint8Array): Version {
  needBytes(p, 4, 'VFIO_USER_VERSION');
  const dv = dvOf(p);
  const major = dv.getUint16(0, true), minor = dv.getUint16(2, true);
  const caps: Capabilities = { other: {} };
  if (p.byteLength === 4) return { major, minor, caps };
  let end = p.indexOf(0, 4);
  if (end < 0) end = p.byteLength; // tolerate a missing NUL; the spec says it is included
  const text = Buffer.from(p.subarray(4, end)).toString('utf8');
  if (text.trim() === '') return { major, minor, caps };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError(`VFIO_USER_VERSION: version data is not valid JSON (${(e as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ProtocolError('VFIO_USER_VERSION: version data must be a JSON object');
  const c = (doc as Record<string, unknown>).capabilities;
  if (c === undefined) return { major, minor, caps };
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new ProtocolError('VFIO_USER_VERSION: "capabilities" must be a JSON object');
  const o = c as Record<string, unknown>;
  caps.max_msg_fds = capNumber(o, 'max_msg_fds', 0, 0xffff);
  caps.max_data_xfer_size = capNumber(o, 'max_data_xfer_size', 1, 0x7fffffff);
  caps.max_dma_maps = capNumber(o, 'max_dma_maps', 0, 0xffffffff);
  caps.pgsizes = capNumber(o, 'pgsizes', 1, Number.MAX_SAFE_INTEGER);
  if (o.write_multiple !== undefined) {
    if (typeof o.write_multiple !== 'boolean') throw new ProtocolError('VFIO_USER_VERSION: capability write_multiple must be a boolean');
    caps.write_multiple = o.write_multiple;
  }
  if (o.twin_socket !== undefined) {
    const t = o.twin_socket;
    if (typeof t !== 'object' || t === null || Array.isArray(t)) throw new ProtocolError('VFIO_USER_VERSION: capability twin_socket must be an object');
    const tt = t as Record<string, unknown>;
    if (tt.supported !== undefined && typeof tt.supported !== 'boolean') throw new ProtocolError('VFIO_USER_VERSION: twin_socket.supported must be a boolean');
    caps.twin_socket = { supported: tt.supported as boolean | undefined, fd_index: capNumber(tt, 'fd_index', 0, 252) };
  }
  for (const [k, v] of Object.entries(o)) {
    if (!['max_msg_fds', 'max_data_xfer_size', 'max_dma_maps', 'pgsizes', 'twin_socket', 'write_multiple'].includes(k)) caps.other[k] = v;
  }
  return { major, minor, caps };
}

/** The effective limits of a session after negotiation (spec defaults filled in). */
export interface Negotiated {
  major: number;
  minor: number;
  /** fds the peer accepts in one message */
  maxMsgFds: number;
  /** largest count of one REGION/DMA READ/WRITE the peer accepts */
  maxDataXferSize: number;
  maxDmaMaps: number;
  pgsizes: number;
  writeMultiple: boolean;
}

/** Fill in the spec's defaults for absent capabilities. */
export function effective(v: Version): Negotiated {
  return {
    major: v.major, minor: v.minor,
    maxMsgFds: v.caps.max_msg_fds ?? DEFAULT_MAX_MSG_FDS,
    maxDataXferSize: v.caps.max_data_xfer_size ?? DEFAULT_MAX_DATA_XFER_SIZE,
    maxDmaMaps: v.caps.max_dma_maps ?? DEFAULT_MAX_DMA_MAPS,
    pgsizes: v.caps.pgsizes ?? DEFAULT_PGSIZES,
    writeMultiple: v.caps.write_multiple ?? false,
  };
}

// ---- DMA_MAP / DMA_UNMAP ----

/** DMA_MAP flags. */
export const DMA_FLAG_READ = 1 << 0;
export const DMA_FLAG_WRITE = 1 << 1;
/** Size of the DMA_MAP payload. */
export const DMA_MAP_SIZE = 32;
/** Size of the DMA_UNMAP payload. */
export const DMA_UNMAP_SIZE = 24;

/** A DMA_MAP request. */
export interface DmaMap {
  argsz: number;
  flags: number;
  /** file offset of the region in the fd sent with the message (0 without fd) */
  offset: bigint;
  /** base DMA address (IOVA) */
  address: bigint;
  size: bigint;
}

/** Encode a DMA_MAP payload. */
export function encodeDmaMap(m: Omit<DmaMap, 'argsz'>): Uint8Array {
  const b = new Uint8Array(DMA_MAP_SIZE);
  const dv = dvOf(b);
  dv.setUint32(0, DMA_MAP_SIZE, true);
  dv.setUint32(4, m.flags, true);
  dv.setBigUint64(8, m.offset, true);
  dv.setBigUint64(16, m.address, true);
  dv.setBigUint64(24, m.size, true);
  return b;
}

/** Decode and validate a DMA_MAP payload: 32 bytes, argsz 32, known flags, size > 0, no wrap-around. */
export function decodeDmaMap(p: Uint8Array): DmaMap {
  exactBytes(p, DMA_MAP_SIZE, 'VFIO_USER_DMA_MAP');
  const dv = dvOf(p);
  const m: DmaMap = { argsz: dv.getUint32(0, true), flags: dv.getUint32(4, true), offset: dv.getBigUint64(8, true), address: dv.getBigUint64(16, true), size: dv.getBigUint64(24, true) };
  if (m.argsz !== DMA_MAP_SIZE) throw new ProtocolError(`VFIO_USER_DMA_MAP: argsz ${m.argsz}, expected ${DMA_MAP_SIZE}`);
  if ((m.flags & ~(DMA_FLAG_READ | DMA_FLAG_WRITE)) !== 0) throw new ProtocolError(`VFIO_USER_DMA_MAP: unknown flags 0x${m.flags.toString(16)}`);
  if (m.size === 0n) throw new ProtocolError('VFIO_USER_DMA_MAP: size 0');
  if (m.address + m.size > 1n << 64n) throw new ProtocolError(`VFIO_USER_DMA_MAP: [0x${m.address.toString(16)}, +0x${m.size.toString(16)}) wraps around the 64-bit address space`);
  return m;
}

/** A DMA_UNMAP request (and its reply, which echoes the entry). */
export interface DmaUnmap {
  argsz: number;
  flags: number;
  address: bigint;
  size: bigint;
}

/** Encode a DMA_UNMAP payload (argsz: the largest reply accepted, the entry's 24 bytes). */
export function encodeDmaUnmap(m: Omit<DmaUnmap, 'argsz'> & { argsz?: number }): Uint8Array {
  const b = new Uint8Array(DMA_UNMAP_SIZE);
  const dv = dvOf(b);
  dv.setUint32(0, m.argsz ?? DMA_UNMAP_SIZE, true);
  dv.setUint32(4, m.flags, true);
  dv.setBigUint64(8, m.address, true);
  dv.setBigUint64(16, m.size, true);
  return b;
}

/** Decode and validate a DMA_UNMAP payload (flags unused in this version: must be 0). */
export function decodeDmaUnmap(p: Uint8Array): DmaUnmap {
  exactBytes(p, DMA_UNMAP_SIZE, 'VFIO_USER_DMA_UNMAP');
  const dv = dvOf(p);
  const m: DmaUnmap = { argsz: dv.getUint32(0, true), flags: dv.getUint32(4, true), address: dv.getBigUint64(8, true), size: dv.getBigUint64(16, true) };
  if (m.argsz < DMA_UNMAP_SIZE) throw new ProtocolError(`VFIO_USER_DMA_UNMAP: argsz ${m.argsz} is smaller than the ${DMA_UNMAP_SIZE}-byte reply`);
  mustBeZero(m.flags, 'flags', 'VFIO_USER_DMA_UNMAP');
  if (m.size === 0n) throw new ProtocolError('VFIO_USER_DMA_UNMAP: size 0');
  return m;
}

// ---- DEVICE_GET_INFO ----

/** Size of the vfio-user device info payload (vfio_device_info without cap_offset). */
export const DEVICE_INFO_SIZE = 16;

/** Encode a DEVICE_GET_INFO request (argsz: reply room; the rest zero). */
export function encodeDeviceInfoRequest(argsz = DEVICE_INFO_SIZE): Uint8Array {
  const b = new Uint8Array(DEVICE_INFO_SIZE);
  dvOf(b).setUint32(0, argsz, true);
  return b;
}

/** Validate a DEVICE_GET_INFO request; returns argsz. */
export function decodeDeviceInfoRequest(p: Uint8Array): number {
  exactBytes(p, DEVICE_INFO_SIZE, 'VFIO_USER_DEVICE_GET_INFO');
  const dv = dvOf(p);
  const argsz = dv.getUint32(0, true);
  if (argsz < DEVICE_INFO_SIZE) throw new ProtocolError(`VFIO_USER_DEVICE_GET_INFO: argsz ${argsz} is smaller than the ${DEVICE_INFO_SIZE}-byte reply`);
  return argsz;
}

/** Encode a DEVICE_GET_INFO reply. */
export function encodeDeviceInfo(flags: number, numRegions: number, numIrqs: number): Uint8Array {
  const b = new Uint8Array(DEVICE_INFO_SIZE);
  const dv = dvOf(b);
  dv.setUint32(0, DEVICE_INFO_SIZE, true);
  dv.setUint32(4, flags, true);
  dv.setUint32(8, numRegions, true);
  dv.setUint32(12, numIrqs, true);
  return b;
}

// ---- DEVICE_GET_REGION_INFO ----

/** Size of struct vfio_region_info. */
export const REGION_INFO_SIZE = U.vfio_region_info.size;

/** Encode a region info request for index (argsz: reply room). */
export function encodeRegionInfoRequest(index: number, argsz: number): Uint8Array {
  return U.vfio_region_info.encode({ argsz, index });
}

/** Validate a region info request; returns { argsz, index } (the other fields must be zero). */
export function decodeRegionInfoRequest(p: Uint8Array): { argsz: number; index: number } {
  exactBytes(p, REGION_INFO_SIZE, 'VFIO_USER_DEVICE_GET_REGION_INFO');
  const s = U.vfio_region_info, dv = dvOf(p);
  const argsz = s.get(dv, 'argsz');
  if (argsz < REGION_INFO_SIZE) throw new ProtocolError(`VFIO_USER_DEVICE_GET_REGION_INFO: argsz ${argsz} is smaller than the ${REGION_INFO_SIZE}-byte struct`);
  return { argsz, index: s.get(dv, 'index') };
}

/** What a server says about one region. */
export interface RegionDescription {
  index: number;
  flags: number;
  size: number;
  /** mmap() offset in the region's fd */
  offset: bigint;
  /** sparse mmap areas (region-relative); null: no sparse capability */
  sparse: Array<{ offset: number; size: number }> | null;
  /** the region type capability (VFIO_REGION_INFO_CAP_TYPE), e.g. for a device-specific region (index >= 9); absent or null: none */
  type?: { type: number; subtype: number } | null;
}

/**
 * Encode the full region info reply (struct vfio_region_info + capability chain: the sparse mmap
 * areas, then the region type), argsz set to the full size. When it exceeds the client's argsz,
 * only the fixed struct is sent, without FLAG_CAPS and cap_offset (spec: the client retries with a
 * larger buffer).
 */
export function encodeRegionInfo(r: RegionDescription, clientArgsz: number): Uint8Array {
  const s = U.vfio_region_info;
  const sp = U.vfio_region_info_cap_sparse_mmap, area = U.vfio_region_sparse_mmap_area, ct = U.vfio_region_info_cap_type;
  const sparseLen = r.sparse ? sp.size + r.sparse.length * area.size : 0;
  const capLen = sparseLen + (r.type ? ct.size : 0);
  const full = s.size + capLen;
  const caps = capLen > 0 && full <= clientArgsz;
  // FLAG_CAPS only when the chain is sent (as libvfio-user does): QEMU's vfio-user client rejects a
  // reply with FLAG_CAPS and cap_offset 0 (EINVAL) instead of retrying with the larger argsz.
  const flags = r.flags | (caps ? U.VFIO_REGION_INFO_FLAG_CAPS : 0);
  const b = s.encode({ argsz: full, flags, index: r.index, cap_offset: caps ? s.size : 0, size: r.size, offset: r.offset }, caps ? capLen : 0);
  if (!caps) return b;
  const dv = dvOf(b);
  if (r.sparse) {
    sp.set(dv, 'header.id', U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, s.size);
    sp.set(dv, 'header.version', 1, s.size);
    sp.set(dv, 'header.next', r.type ? s.size + sparseLen : 0, s.size);
    sp.set(dv, 'nr_areas', r.sparse.length, s.size);
    r.sparse.forEach((a, i) => {
      const o = s.size + sp.offsetOf('areas') + i * area.size;
      area.set(dv, 'offset', a.offset, o);
      area.set(dv, 'size', a.size, o);
    });
  }
  if (r.type) {
    const at = s.size + sparseLen;
    ct.set(dv, 'header.id', U.VFIO_REGION_INFO_CAP_TYPE, at);
    ct.set(dv, 'header.version', 1, at);
    ct.set(dv, 'header.next', 0, at);
    ct.set(dv, 'type', r.type.type, at);
    ct.set(dv, 'subtype', r.type.subtype, at);
  }
  return b;
}

// ---- DEVICE_GET_REGION_IO_FDS ----

/** Size of the region io fds request/reply header. */
export const REGION_IO_FDS_SIZE = 16;
/** Size of one sub-region entry (both types, today). */
export const IO_FD_SUBREGION_SIZE = 40;
/** Sub-region types. */
export const IO_FD_TYPE_IOEVENTFD = 0;
export const IO_FD_TYPE_IOREGIONFD = 1;
/** ioeventfd sub-region flag (KVM_IOEVENTFD_FLAG_DATAMATCH): only writes of the datamatch value signal the eventfd. */
export const IO_FD_FLAG_DATAMATCH = 1;

/** One sub-region of a GET_REGION_IO_FDS reply. */
export interface IoFdSubregion {
  offset: bigint;
  size: bigint;
  fdIndex: number;
  type: number;
  flags: number;
  /** datamatch (ioeventfd) or user_data (ioregionfd) */
  data: bigint;
}

/** Encode a GET_REGION_IO_FDS request. */
export function encodeRegionIoFdsRequest(index: number, argsz: number): Uint8Array {
  const b = new Uint8Array(REGION_IO_FDS_SIZE);
  const dv = dvOf(b);
  dv.setUint32(0, argsz, true);
  dv.setUint32(8, index, true);
  return b;
}

/** Validate a GET_REGION_IO_FDS request; returns { argsz, index } (flags and count must be 0). */
export function decodeRegionIoFdsRequest(p: Uint8Array): { argsz: number; index: number } {
  exactBytes(p, REGION_IO_FDS_SIZE, 'VFIO_USER_DEVICE_GET_REGION_IO_FDS');
  const dv = dvOf(p);
  const argsz = dv.getUint32(0, true);
  mustBeZero(dv.getUint32(4, true), 'flags', 'VFIO_USER_DEVICE_GET_REGION_IO_FDS');
  mustBeZero(dv.getUint32(12, true), 'count', 'VFIO_USER_DEVICE_GET_REGION_IO_FDS');
  if (argsz < REGION_IO_FDS_SIZE) throw new ProtocolError(`VFIO_USER_DEVICE_GET_REGION_IO_FDS: argsz ${argsz} is smaller than ${REGION_IO_FDS_SIZE}`);
  return { argsz, index: dv.getUint32(8, true) };
}

/** Encode a GET_REGION_IO_FDS reply (sub-regions included only when they fit argsz). */
export function encodeRegionIoFds(index: number, subs: readonly IoFdSubregion[], clientArgsz: number): Uint8Array {
  const full = REGION_IO_FDS_SIZE + subs.length * IO_FD_SUBREGION_SIZE;
  const fits = full <= clientArgsz;
  const b = new Uint8Array(fits ? full : REGION_IO_FDS_SIZE);
  const dv = dvOf(b);
  dv.setUint32(0, full, true);
  dv.setUint32(8, index, true);
  dv.setUint32(12, subs.length, true);
  if (fits) subs.forEach((s, i) => {
    const o = REGION_IO_FDS_SIZE + i * IO_FD_SUBREGION_SIZE;
    dv.setBigUint64(o, s.offset, true);
    dv.setBigUint64(o + 8, s.size, true);
    dv.setUint32(o + 16, s.fdIndex, true);
    dv.setUint32(o + 20, s.type, true);
    dv.setUint32(o + 24, s.flags, true);
    dv.setBigUint64(o + 32, s.data, true);
  });
  return b;
}

/** Decode a GET_REGION_IO_FDS reply; entry stride is (argsz - 16) / count as the spec allows. */
export function decodeRegionIoFds(p: Uint8Array): { argsz: number; index: number; count: number; subs: IoFdSubregion[] } {
  needBytes(p, REGION_IO_FDS_SIZE, 'VFIO_USER_DEVICE_GET_REGION_IO_FDS reply');
  const dv = dvOf(p);
  const argsz = dv.getUint32(0, true), index = dv.getUint32(8, true), count = dv.getUint32(12, true);
  const subs: IoFdSubregion[] = [];
  if (count > 0 && p.byteLength > REGION_IO_FDS_SIZE) {
    const stride = Math.floor((argsz - REGION_IO_FDS_SIZE) / count);
    if (stride < IO_FD_SUBREGION_SIZE || REGION_IO_FDS_SIZE + count * stride > p.byteLength) {
      throw new ProtocolError(`VFIO_USER_DEVICE_GET_REGION_IO_FDS reply: ${count} sub-regions do not fit ${p.byteLength} bytes (argsz ${argsz})`);
    }
    for (let i = 0; i < count; i++) {
      const o = REGION_IO_FDS_SIZE + i * stride;
      subs.push({ offset: dv.getBigUint64(o, true), size: dv.getBigUint64(o + 8, true), fdIndex: dv.getUint32(o + 16, true), type: dv.getUint32(o + 20, true), flags: dv.getUint32(o + 24, true), data: dv.getBigUint64(o + 32, true) });
    }
  }
  return { argsz, index, count, subs };
}

// ---- DEVICE_GET_IRQ_INFO ----

/** Size of struct vfio_irq_info. */
export const IRQ_INFO_SIZE = U.vfio_irq_info.size;

/** Encode an IRQ info request. */
export function encodeIrqInfoRequest(index: number): Uint8Array {
  return U.vfio_irq_info.encode({ argsz: IRQ_INFO_SIZE, index });
}

/** Validate an IRQ info request; returns the index (flags and count must be 0). */
export function decodeIrqInfoRequest(p: Uint8Array): number {
  exactBytes(p, IRQ_INFO_SIZE, 'VFIO_USER_DEVICE_GET_IRQ_INFO');
  const s = U.vfio_irq_info, dv = dvOf(p);
  if (s.get(dv, 'argsz') < IRQ_INFO_SIZE) throw new ProtocolError(`VFIO_USER_DEVICE_GET_IRQ_INFO: argsz ${s.get(dv, 'argsz')} is smaller than ${IRQ_INFO_SIZE}`);
  mustBeZero(s.get(dv, 'flags'), 'flags', 'VFIO_USER_DEVICE_GET_IRQ_INFO');
  mustBeZero(s.get(dv, 'count'), 'count', 'VFIO_USER_DEVICE_GET_IRQ_INFO');
  return s.get(dv, 'index');
}

/** Encode an IRQ info reply. */
export function encodeIrqInfo(index: number, flags: number, count: number): Uint8Array {
  return U.vfio_irq_info.encode({ argsz: IRQ_INFO_SIZE, flags, index, count });
}

// ---- DEVICE_SET_IRQS ----

/** Size of struct vfio_irq_set without data. */
export const IRQ_SET_SIZE = U.vfio_irq_set.size;
const IRQ_DATA_MASK = U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_DATA_BOOL | U.VFIO_IRQ_SET_DATA_EVENTFD;
const IRQ_ACTION_MASK = U.VFIO_IRQ_SET_ACTION_MASK | U.VFIO_IRQ_SET_ACTION_UNMASK | U.VFIO_IRQ_SET_ACTION_TRIGGER;

/** A SET_IRQS request. */
export interface IrqSet {
  argsz: number;
  flags: number;
  index: number;
  start: number;
  count: number;
  /** DATA_BOOL: one byte per vector; otherwise empty */
  bools: Uint8Array;
}

/** Encode a SET_IRQS payload (eventfds travel as SCM_RIGHTS; bools only for DATA_BOOL). */
export function encodeIrqSet(flags: number, index: number, start: number, count: number, bools?: Uint8Array): Uint8Array {
  const extra = bools ? bools.byteLength : 0;
  const b = U.vfio_irq_set.encode({ argsz: IRQ_SET_SIZE + extra, flags, index, start, count }, extra);
  if (bools) b.set(bools, IRQ_SET_SIZE);
  return b;
}

/** Decode and validate a SET_IRQS payload: exactly one DATA and one ACTION flag, bools present for DATA_BOOL. */
export function decodeIrqSet(p: Uint8Array): IrqSet {
  needBytes(p, IRQ_SET_SIZE, 'VFIO_USER_DEVICE_SET_IRQS');
  const s = U.vfio_irq_set, dv = dvOf(p);
  const r: IrqSet = { argsz: s.get(dv, 'argsz'), flags: s.get(dv, 'flags'), index: s.get(dv, 'index'), start: s.get(dv, 'start'), count: s.get(dv, 'count'), bools: new Uint8Array(0) };
  const what = 'VFIO_USER_DEVICE_SET_IRQS';
  if ((r.flags & ~(IRQ_DATA_MASK | IRQ_ACTION_MASK)) !== 0) throw new ProtocolError(`${what}: unknown flags 0x${r.flags.toString(16)}`);
  const data = r.flags & IRQ_DATA_MASK, action = r.flags & IRQ_ACTION_MASK;
  if (data === 0 || (data & (data - 1)) !== 0) throw new ProtocolError(`${what}: flags 0x${r.flags.toString(16)} must have exactly one DATA_ flag`);
  if (action === 0 || (action & (action - 1)) !== 0) throw new ProtocolError(`${what}: flags 0x${r.flags.toString(16)} must have exactly one ACTION_ flag`);
  if (r.argsz < IRQ_SET_SIZE || r.argsz > p.byteLength) throw new ProtocolError(`${what}: argsz ${r.argsz} must be from ${IRQ_SET_SIZE} to the payload size ${p.byteLength}`);
  if (r.start + r.count > 0xffffffff) throw new ProtocolError(`${what}: start ${r.start} + count ${r.count} overflows`);
  if (data === U.VFIO_IRQ_SET_DATA_BOOL) {
    if (r.argsz < IRQ_SET_SIZE + r.count) throw new ProtocolError(`${what}: DATA_BOOL with count ${r.count} needs ${r.count} data bytes, argsz is ${r.argsz}`);
    r.bools = p.slice(IRQ_SET_SIZE, IRQ_SET_SIZE + r.count);
  }
  return r;
}

// ---- REGION_READ / REGION_WRITE ----

/** Size of the region access header (offset, region, count). */
export const REGION_ACCESS_SIZE = 16;

/** A region access: the request of REGION_READ/WRITE and the head of their replies. */
export interface RegionAccess {
  offset: bigint;
  region: number;
  count: number;
  /** REGION_WRITE request and REGION_READ reply: the bytes */
  data: Uint8Array;
}

/** Encode a region access (data appended when given). */
export function encodeRegionAccess(offset: bigint | number, region: number, count: number, data?: Uint8Array): Uint8Array {
  const b = new Uint8Array(REGION_ACCESS_SIZE + (data ? data.byteLength : 0));
  const dv = dvOf(b);
  dv.setBigUint64(0, BigInt(offset), true);
  dv.setUint32(8, region, true);
  dv.setUint32(12, count, true);
  if (data) b.set(data, REGION_ACCESS_SIZE);
  return b;
}

/**
 * Decode a region access. withData: the payload must carry exactly count data bytes (REGION_WRITE
 * request, REGION_READ reply); otherwise exactly the 16-byte head. maxCount bounds count.
 */
export function decodeRegionAccess(p: Uint8Array, withData: boolean, maxCount: number, what: string): RegionAccess {
  needBytes(p, REGION_ACCESS_SIZE, what);
  const dv = dvOf(p);
  const r: RegionAccess = { offset: dv.getBigUint64(0, true), region: dv.getUint32(8, true), count: dv.getUint32(12, true), data: new Uint8Array(0) };
  if (r.count > maxCount) throw new ProtocolError(`${what}: count ${r.count} exceeds max_data_xfer_size ${maxCount}`, E.E2BIG);
  if (withData) {
    exactBytes(p, REGION_ACCESS_SIZE + r.count, `${what} (count ${r.count})`);
    r.data = p.subarray(REGION_ACCESS_SIZE);
  } else exactBytes(p, REGION_ACCESS_SIZE, what);
  return r;
}

// ---- DMA_READ / DMA_WRITE (server to client) ----

/** Size of the DMA access head (address u64, count u64). */
export const DMA_ACCESS_SIZE = 16;

/** A DMA access request or reply. */
export interface DmaAccess {
  address: bigint;
  count: number;
  data: Uint8Array;
}

/** Encode a DMA access head (+ data). */
export function encodeDmaAccess(address: bigint, count: number, data?: Uint8Array): Uint8Array {
  const b = new Uint8Array(DMA_ACCESS_SIZE + (data ? data.byteLength : 0));
  const dv = dvOf(b);
  dv.setBigUint64(0, address, true);
  dv.setBigUint64(8, BigInt(count), true);
  if (data) b.set(data, DMA_ACCESS_SIZE);
  return b;
}

/**
 * Decode a DMA access. withData: exactly count bytes follow. The DMA_WRITE reply is documented with
 * a 4-byte count (12 bytes) while libvfio-user sends the 16-byte struct; both are accepted
 * (little endian: the low 4 bytes are the same).
 */
export function decodeDmaAccess(p: Uint8Array, withData: boolean, maxCount: number, what: string, allowShortCount = false): DmaAccess {
  if (allowShortCount && p.byteLength === 12) {
    const dv = dvOf(p);
    return { address: dv.getBigUint64(0, true), count: dv.getUint32(8, true), data: new Uint8Array(0) };
  }
  needBytes(p, DMA_ACCESS_SIZE, what);
  const dv = dvOf(p);
  const c = dv.getBigUint64(8, true);
  if (c > BigInt(maxCount)) throw new ProtocolError(`${what}: count ${c} exceeds max_data_xfer_size ${maxCount}`, E.E2BIG);
  const r: DmaAccess = { address: dv.getBigUint64(0, true), count: Number(c), data: new Uint8Array(0) };
  if (withData) {
    exactBytes(p, DMA_ACCESS_SIZE + r.count, `${what} (count ${r.count})`);
    r.data = p.subarray(DMA_ACCESS_SIZE);
  } else exactBytes(p, DMA_ACCESS_SIZE, what);
  return r;
}

// ---- REGION_WRITE_MULTI ----

/** Size of one coalesced write entry. */
export const WRITE_MULTI_ENTRY_SIZE = 24;
/** Most entries one message may carry (QEMU's client sends at most 200). */
export const WRITE_MULTI_MAX = 200;

/** One coalesced write (at most 8 bytes). */
export interface MultiWrite {
  offset: bigint;
  region: number;
  count: number;
  data: Uint8Array;
}

/** Encode REGION_WRITE_MULTI. */
export function encodeWriteMulti(wrs: readonly MultiWrite[]): Uint8Array {
  const b = new Uint8Array(8 + wrs.length * WRITE_MULTI_ENTRY_SIZE);
  const dv = dvOf(b);
  dv.setBigUint64(0, BigInt(wrs.length), true);
  wrs.forEach((w, i) => {
    const o = 8 + i * WRITE_MULTI_ENTRY_SIZE;
    if (w.count > 8 || w.data.byteLength < w.count) throw new RangeError(`REGION_WRITE_MULTI entry ${i}: count ${w.count} must be 1..8 with that many data bytes`);
    dv.setBigUint64(o, w.offset, true);
    dv.setUint32(o + 8, w.region, true);
    dv.setUint32(o + 12, w.count, true);
    b.set(w.data.subarray(0, w.count), o + 16);
  });
  return b;
}

/** Decode and validate REGION_WRITE_MULTI: 1..200 entries, each count 1..8, exact length. */
export function decodeWriteMulti(p: Uint8Array): MultiWrite[] {
  const what = 'VFIO_USER_REGION_WRITE_MULTI';
  needBytes(p, 8, what);
  const dv = dvOf(p);
  const n = dv.getBigUint64(0, true);
  if (n === 0n || n > BigInt(WRITE_MULTI_MAX)) throw new ProtocolError(`${what}: wr_cnt ${n} must be 1..${WRITE_MULTI_MAX}`);
  exactBytes(p, 8 + Number(n) * WRITE_MULTI_ENTRY_SIZE, `${what} (wr_cnt ${n})`);
  const out: MultiWrite[] = [];
  for (let i = 0; i < Number(n); i++) {
    const o = 8 + i * WRITE_MULTI_ENTRY_SIZE;
    const count = dv.getUint32(o + 12, true);
    if (count === 0 || count > 8) throw new ProtocolError(`${what}: entry ${i} count ${count} must be 1..8`);
    out.push({ offset: dv.getBigUint64(o, true), region: dv.getUint32(o + 8, true), count, data: p.subarray(o + 16, o + 16 + count) });
  }
  return out;
}

/** Encode the REGION_WRITE_MULTI reply (wr_cnt completed). */
export function encodeWriteMultiReply(n: number): Uint8Array {
  const b = new Uint8Array(8);
  dvOf(b).setBigUint64(0, BigInt(n), true);
  return b;
}

// ---- DEVICE_FEATURE ----

/** Feature flags (struct vfio_device_feature). */
export const DEVICE_FEATURE_MASK = 0xffff;
export const DEVICE_FEATURE_GET = 1 << 16;
export const DEVICE_FEATURE_SET = 1 << 17;
export const DEVICE_FEATURE_PROBE = 1 << 18;
/** Feature indexes defined for vfio-user (all migration related). */
export const FEATURE_MIGRATION = 1;
export const FEATURE_MIG_DEVICE_STATE = 2;
export const FEATURE_DMA_LOGGING_START = 6;
export const FEATURE_DMA_LOGGING_STOP = 7;
export const FEATURE_DMA_LOGGING_REPORT = 8;

/** A DEVICE_FEATURE request. */
export interface DeviceFeature {
  argsz: number;
  flags: number;
  feature: number;
  data: Uint8Array;
}

/** Encode a DEVICE_FEATURE payload. */
export function encodeDeviceFeature(argsz: number, flags: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(8 + data.byteLength);
  const dv = dvOf(b);
  dv.setUint32(0, argsz, true);
  dv.setUint32(4, flags, true);
  b.set(data, 8);
  return b;
}

/** Decode and validate DEVICE_FEATURE: GET and SET exclusive unless PROBE, no unknown bits. */
export function decodeDeviceFeature(p: Uint8Array): DeviceFeature {
  const what = 'VFIO_USER_DEVICE_FEATURE';
  needBytes(p, 8, what);
  const dv = dvOf(p);
  const argsz = dv.getUint32(0, true), flags = dv.getUint32(4, true);
  if ((flags & ~(DEVICE_FEATURE_MASK | DEVICE_FEATURE_GET | DEVICE_FEATURE_SET | DEVICE_FEATURE_PROBE)) !== 0) throw new ProtocolError(`${what}: unknown flags 0x${flags.toString(16)}`);
  const get = (flags & DEVICE_FEATURE_GET) !== 0, set = (flags & DEVICE_FEATURE_SET) !== 0, probe = (flags & DEVICE_FEATURE_PROBE) !== 0;
  if (get && set && !probe) throw new ProtocolError(`${what}: GET and SET are exclusive without PROBE`);
  if (!get && !set && !probe) throw new ProtocolError(`${what}: one of GET, SET or PROBE is needed`);
  if (argsz < 8) throw new ProtocolError(`${what}: argsz ${argsz} is smaller than 8`);
  return { argsz, flags, feature: flags & DEVICE_FEATURE_MASK, data: p.subarray(8) };
}

// ---- MIG_DATA_READ / MIG_DATA_WRITE ----

/** Decode a MIG_DATA_READ/WRITE head (argsz, size) with write data checked. */
export function decodeMigData(p: Uint8Array, write: boolean): { argsz: number; size: number; data: Uint8Array } {
  const what = write ? 'VFIO_USER_MIG_DATA_WRITE' : 'VFIO_USER_MIG_DATA_READ';
  needBytes(p, 8, what);
  const dv = dvOf(p);
  const r = { argsz: dv.getUint32(0, true), size: dv.getUint32(4, true), data: p.subarray(8) };
  if (write) exactBytes(p, 8 + r.size, `${what} (size ${r.size})`);
  else exactBytes(p, 8, what);
  return r;
}
