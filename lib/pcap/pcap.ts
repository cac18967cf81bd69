/**
 * Capture files: reading classic pcap and pcapng, writing classic pcap. Written from the libpcap
 * file format description (pcap-savefile(5)) and the pcapng specification (IETF draft
 * draft-ietf-opsawg-pcapng): block layouts, magic numbers, option codes.
 *
 * One parser walks both formats, checking every length against what holds it before reading it; a
 * fault is a PcapFormatError of one line naming the file and the byte offset. It reads through a
 * Source: a capture held in memory (parseCapture(), which returns an index: struct of arrays of
 * offset, captured length, original length, timestamp, link type) or a file read through a bounded
 * window (CaptureFile: walk() as often as needed, copy() a packet where it belongs; net_pcap counts
 * in one walk, allocates once and copies in a second, never holding the file whole).
 *
 * Files are opened one way each: openCaptureRead (regular files only, never blocking on a FIFO) and
 * openCaptureWrite (O_NOFOLLOW, O_EXCL, mode 0600; an existing file replaced only when it is a
 * regular file of this user with one link). Writing goes through PcapWriter, which fills a
 * preallocated buffer and writes it out in large pieces, or net_pcap's TX on the same fd.
 *
 * Classic pcap: a 24-byte file header (magic, version 2.4, thiszone, sigfigs, snaplen, linktype)
 * then records of a 16-byte header (seconds, micro- or nanoseconds, captured length, original
 * length) and the bytes. The magic 0xa1b2c3d4 says microseconds, 0xa1b23c4d nanoseconds; read in
 * the other byte order it says the file was written on a machine of the other endianness.
 *
 * pcapng: blocks of (type, total length, body, total length again), 4-byte aligned. A Section
 * Header Block (0x0a0d0d0a) starts each section and fixes its byte order (0x1a2b3c4d); Interface
 * Description Blocks (1) give each interface's linktype and timestamp resolution (option
 * if_tsresol, 9; default microseconds) and offset (if_tsoffset, 14); packets come in Enhanced
 * (6), Simple (3) or the obsolete Packet (2) blocks. Other blocks are skipped.
 */
import { closeSync, constants, fchmodSync, fstatSync, ftruncateSync, lstatSync, openSync, readSync, statSync, writeSync, type Stats } from 'node:fs';
import { UsageError } from '../../src/options.js';

/** Classic pcap magic, microsecond timestamps. */
export const PCAP_MAGIC_US = 0xa1b2c3d4;
/** Classic pcap magic, nanosecond timestamps. */
export const PCAP_MAGIC_NS = 0xa1b23c4d;
/** pcapng Section Header Block type (also the file's first four bytes). */
export const PCAPNG_SHB = 0x0a0d0d0a;
/** pcapng byte-order magic inside the SHB. */
export const PCAPNG_BOM = 0x1a2b3c4d;
/** LINKTYPE_ETHERNET. */
export const LINKTYPE_ETHERNET = 1;
/** Size of the classic pcap file header and of a record header. */
export const PCAP_FILE_HEADER = 24, PCAP_RECORD_HEADER = 16;
/** Interface description blocks one pcapng section may hold (real captures have a handful). */
export const PCAPNG_MAX_INTERFACES = 65536;

const IDB = 1, OPB = 2, SPB = 3, EPB = 6;
const OPT_END = 0, IF_TSRESOL = 9, IF_TSOFFSET = 14;
/** Bytes a pcapng block of each type needs at least: header, fixed fields, trailer. */
const MIN_BLOCK: Record<number, [number, string]> = {
  [PCAPNG_SHB]: [28, 'section header block'],
  [IDB]: [20, 'interface description block'],
  [EPB]: [32, 'enhanced packet block'],
  [OPB]: [32, 'packet block'],
  [SPB]: [16, 'simple packet block'],
};
/** Bytes of a file read at a time when it is streamed (the window the parser reads headers through). */
const WINDOW = 256 * 1024;

/** A capture file the user named that cannot be used: refused (a symlink, FIFO, device, another user's file), missing or unreadable; one line that names it. */
export class CaptureFileError extends UsageError {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'CaptureFileError';
  }
}

/** A file that is not a capture file, or a capture file that is damaged (one line naming the file and the byte offset). */
export class PcapFormatError extends CaptureFileError {
  constructor(file: string, message: string) {
    super(file, message);
    this.name = 'PcapFormatError';
  }
}

/** What kind of file st is, in words ("a FIFO", "a directory" ...). */
function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

/** The refusal of a file that is not a regular one. */
function notRegular(path: string, st: Stats): CaptureFileError {
  return new CaptureFileError(path, `is ${kindOf(st)}, not a regular file: capture files are regular files (give the path of one)`);
}

const SYMLINK = 'is a symbolic link: capture files are never written through one (give the path of the file itself, or remove the link)';

/**
 * Open a capture file for reading, the one way every reader opens one: symlinks are followed
 * (reading a linked file of one's own is ordinary), anything but a regular file (a FIFO, a device,
 * a directory) is refused before it is opened, and the open is non-blocking, so a FIFO swapped in
 * meanwhile cannot block it (fstat refuses it then). Returns the fd (close it) and the file's size.
 */
export function openCaptureRead(path: string): { fd: number; size: number } {
  let fd: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw notRegular(path, st);
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    if (e instanceof CaptureFileError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CaptureFileError(path, 'no such file (give the path of an existing pcap or pcapng file)');
    if (code === 'EACCES') throw new CaptureFileError(path, 'permission denied: this user may not read it');
    throw new CaptureFileError(path, `cannot open it: ${code ?? (e as Error).message}`);
  }
  const st = fstatSync(fd);
  if (!st.isFile()) {
    closeSync(fd);
    throw notRegular(path, st);
  }
  return { fd, size: st.size };
}

/**
 * Open a capture file for writing, the one way every writer opens one (net_pcap's tx_pcap=, the
 * PcapWriter of `tspmd pdump --out`): a new file is created with O_EXCL, mode 0600; the final path
 * component is never followed when it is a symlink (O_NOFOLLOW); an existing file is replaced
 * (truncated and made 0600, as DPDK's tx_pcap truncates) only when it is a regular file of this
 * user with no other hard link; a FIFO, device, directory, another user's file or a hard-linked
 * one is refused with one line naming it. Returns the fd, positioned at 0 of an empty file.
 */
export function openCaptureWrite(path: string): number {
  const base = constants.O_WRONLY | constants.O_NOFOLLOW | constants.O_NOCTTY;
  for (let attempt = 0; ; attempt++) {
    try {
      return openSync(path, base | constants.O_CREAT | constants.O_EXCL, 0o600);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new CaptureFileError(path, 'cannot create it: its directory does not exist');
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') throw new CaptureFileError(path, `cannot create it (${code}): this user may not write in its directory`);
      if (code !== 'EEXIST') throw new CaptureFileError(path, `cannot create it: ${code ?? (e as Error).message}`);
    }
    // It exists: look at it first (a symlink or a FIFO is refused without opening it) ...
    let st: Stats;
    try {
      st = lstatSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && attempt < 3) continue; // removed meanwhile: create it
      throw new CaptureFileError(path, `cannot look at it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (st.isSymbolicLink()) throw new CaptureFileError(path, SYMLINK);
    if (!st.isFile()) throw notRegular(path, st);
    // ... then open it without following or blocking, and judge what was opened, not the name.
    let fd: number;
    try {
      fd = openSync(path, base | constants.O_NONBLOCK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw new CaptureFileError(path, SYMLINK);
      if (code === 'ENOENT' && attempt < 3) continue;
      if (code === 'ENXIO') throw new CaptureFileError(path, 'is a FIFO, not a regular file: capture files are regular files (give the path of one)');
      if (code === 'EACCES' || code === 'EPERM') throw new CaptureFileError(path, `exists and this user may not write it (${code}): remove it or choose another path`);
      throw new CaptureFileError(path, `cannot open it: ${code ?? (e as Error).message}`);
    }
    try {
      const f = fstatSync(fd);
      const me = process.geteuid?.() ?? f.uid;
      if (!f.isFile()) throw notRegular(path, f);
      if (f.uid !== me) throw new CaptureFileError(path, `exists and belongs to uid ${f.uid}, not to this user (uid ${me}): another user's file is never replaced (remove it or choose another path)`);
      if (f.nlink !== 1) throw new CaptureFileError(path, `exists and has ${f.nlink} hard links: a file linked elsewhere is never replaced (remove it or choose another path)`);
      ftruncateSync(fd, 0);
      fchmodSync(fd, 0o600);
      return fd;
    } catch (e) {
      closeSync(fd);
      if (e instanceof CaptureFileError) throw e;
      throw new CaptureFileError(path, `cannot replace it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
}

/** What parseCapture found: the format, and every packet as offsets into the file's bytes. */
export interface CaptureIndex {
  format: 'pcap' | 'pcapng';
  /** classic pcap: byte order of the file; pcapng: of its first section */
  littleEndian: boolean;
  /** classic pcap: nanosecond magic; pcapng: false (resolution is per interface) */
  nanosecond: boolean;
  /** classic pcap: the file's snaplen; pcapng: the first interface's (0: none) */
  snaplen: number;
  /** number of packets */
  count: number;
  /** the bytes the offsets refer to */
  bytes: Uint8Array;
  /** byte offset of packet i's data in bytes */
  offset: Float64Array;
  /** bytes captured of packet i */
  capLen: Uint32Array;
  /** length of packet i on the wire */
  origLen: Uint32Array;
  /** timestamp of packet i: seconds since 1970 and nanoseconds in that second */
  tsSec: Float64Array;
  tsNsec: Uint32Array;
  /** link type of packet i (classic pcap: the file's; pcapng: its interface's) */
  linktype: Uint16Array;
}

/** The bytes of packet i of an index (a view, not a copy). */
export function capturedPacket(ix: CaptureIndex, i: number): Uint8Array {
  return ix.bytes.subarray(ix.offset[i], ix.offset[i] + ix.capLen[i]);
}

/**
 * Called by walkCapture for packet i: its data is at byte pos of the file, cap bytes of a frame orig
 * long, link type lt; sec/nsec are its timestamp when the walk was asked for timestamps (else 0).
 */
export type PacketVisitor = (i: number, pos: number, cap: number, orig: number, sec: number, nsec: number, lt: number) => void;

/** What a walk of a capture found besides its packets. */
export interface CaptureSummary {
  format: 'pcap' | 'pcapng';
  littleEndian: boolean;
  nanosecond: boolean;
  snaplen: number;
  /** packets visited */
  count: number;
}

/**
 * The bytes a walk reads: a file's size, and views through which at(pos, len) makes bytes
 * [pos, pos+len) readable (len at most WINDOW), returning where pos is in them. The walk checks every
 * range against size before it asks for it.
 */
interface Source {
  readonly size: number;
  dv: DataView;
  u8: Uint8Array;
  at(pos: number, len: number): number;
  /** Copy bytes [pos, pos+len) of the file into dst at off. */
  copy(pos: number, len: number, dst: Uint8Array, off: number): void;
}

/** A capture held in memory. */
class MemorySource implements Source {
  readonly size: number;
  dv: DataView;
  constructor(public u8: Uint8Array) {
    this.size = u8.byteLength;
    this.dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  }
  at(pos: number): number {
    return pos;
  }
  copy(pos: number, len: number, dst: Uint8Array, off: number): void {
    dst.set(this.u8.subarray(pos, pos + len), off);
  }
}

/** A capture file read through one window of WINDOW bytes (pread at the position asked), never whole. */
class FileSource implements Source {
  u8 = new Uint8Array(WINDOW);
  dv = new DataView(this.u8.buffer);
  private start = 0;
  private end = 0;
  constructor(private readonly fd: number, readonly size: number, private readonly name: string) {}

  /** pread len bytes at pos into dst at off; the file must still hold them. */
  private read(dst: Uint8Array, off: number, len: number, pos: number): void {
    for (let done = 0; done < len;) {
      const n = readSync(this.fd, dst, off + done, len - done, pos + done);
      if (n <= 0) throw new PcapFormatError(this.name, `the file ended at byte ${pos + done} while being read: it changed meanwhile (read a file no process is writing)`);
      done += n;
    }
  }

  at(pos: number, len: number): number {
    if (pos >= this.start && pos + len <= this.end) return pos - this.start;
    const n = Math.min(WINDOW, this.size - pos);
    this.read(this.u8, 0, n, pos);
    this.start = pos;
    this.end = pos + n;
    return 0;
  }

  copy(pos: number, len: number, dst: Uint8Array, off: number): void {
    if (len <= WINDOW / 4) {
      const p = this.at(pos, len);
      dst.set(this.u8.subarray(p, p + len), off);
    } else {
      this.read(dst, off, len, pos);
    }
  }
}

/**
 * A capture file opened for reading (openCaptureRead: regular files only, never blocking) and read
 * through a bounded window: walk() visits its packets as many times as needed (e.g. once to count
 * and size, once to copy), copy() moves a packet's bytes where the caller wants them. Memory: the
 * window, whatever the file's size.
 */
export class CaptureFile {
  readonly path: string;
  readonly size: number;
  private fd: number;
  private readonly src: FileSource;

  constructor(path: string) {
    this.path = path;
    const { fd, size } = openCaptureRead(path);
    this.fd = fd;
    this.size = size;
    this.src = new FileSource(fd, size, path);
  }

  /** Visit every packet in file order (timestamps computed only when times is true); throws PcapFormatError at the first fault. */
  walk(visit: PacketVisitor | null, times = false): CaptureSummary {
    return walkCapture(this.src, this.path, visit, times);
  }

  /** Copy len bytes at file position pos (a packet's pos and cap from walk) into dst at off. */
  copy(pos: number, len: number, dst: Uint8Array, off: number): void {
    this.src.copy(pos, len, dst, off);
  }

  /** Close the file (idempotent). */
  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Read and index a pcap or pcapng file held whole in memory (tools and tests; net_pcap streams with CaptureFile). */
export function readCaptureFile(path: string): CaptureIndex {
  const { fd, size } = openCaptureRead(path);
  const bytes = new Uint8Array(size);
  try {
    new FileSource(fd, size, path).copy(0, size, bytes, 0);
  } finally {
    closeSync(fd);
  }
  return parseCapture(bytes, path);
}

/** Index a capture held in memory (classic pcap in either byte order and resolution, or pcapng): one pass counts, one fills arrays of that size. */
export function parseCapture(bytes: Uint8Array, name = 'capture'): CaptureIndex {
  const src = new MemorySource(bytes);
  const n = walkCapture(src, name, null, false).count;
  const offset = new Float64Array(n), capLen = new Uint32Array(n), origLen = new Uint32Array(n);
  const tsSec = new Float64Array(n), tsNsec = new Uint32Array(n), linktype = new Uint16Array(n);
  const s = walkCapture(src, name, (i, pos, cap, orig, sec, nsec, lt) => {
    offset[i] = pos;
    capLen[i] = cap;
    origLen[i] = orig;
    tsSec[i] = sec;
    tsNsec[i] = nsec;
    linktype[i] = lt;
  }, true);
  return { format: s.format, littleEndian: s.littleEndian, nanosecond: s.nanosecond, snaplen: s.snaplen, count: n, bytes, offset, capLen, origLen, tsSec, tsNsec, linktype };
}

/** Walk a capture's packets (the one parser: every length is checked against what holds it before it is read). */
function walkCapture(src: Source, name: string, visit: PacketVisitor | null, times: boolean): CaptureSummary {
  if (src.size < 4) throw new PcapFormatError(name, `is ${src.size} bytes long: not a pcap or pcapng file`);
  const p = src.at(0, 4);
  const m = src.dv.getUint32(p, true);
  if (m === PCAPNG_SHB) return walkPcapng(src, name, visit, times);
  for (const le of [true, false]) {
    const v = src.dv.getUint32(p, le);
    if (v === PCAP_MAGIC_US || v === PCAP_MAGIC_NS) return walkPcap(src, name, visit, times, le, v === PCAP_MAGIC_NS);
  }
  const hex = Array.from(src.u8.subarray(p, p + 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
  throw new PcapFormatError(name, `starts with ${hex}: not a pcap or pcapng file (expected the magic a1b2c3d4 or a1b23c4d in either byte order, or the pcapng block 0a0d0d0a)`);
}

function walkPcap(src: Source, name: string, visit: PacketVisitor | null, times: boolean, le: boolean, ns: boolean): CaptureSummary {
  const size = src.size;
  if (size < PCAP_FILE_HEADER) throw new PcapFormatError(name, `truncated file header (${size} of ${PCAP_FILE_HEADER} bytes)`);
  let h = src.at(0, PCAP_FILE_HEADER);
  const major = src.dv.getUint16(h + 4, le);
  if (major !== 2) throw new PcapFormatError(name, `pcap version ${major}.${src.dv.getUint16(h + 6, le)}: only version 2.x is known`);
  const snaplen = src.dv.getUint32(h + 16, le);
  const linktype = src.dv.getUint32(h + 20, le) & 0xffff; // the upper bits carry FCS information
  const scale = ns ? 1 : 1000;
  let count = 0;
  for (let off = PCAP_FILE_HEADER; off < size;) {
    if (off + PCAP_RECORD_HEADER > size) throw new PcapFormatError(name, `truncated record header at byte ${off} (after ${count} packets)`);
    h = src.at(off, PCAP_RECORD_HEADER);
    const dv = src.dv;
    const cap = dv.getUint32(h + 8, le);
    if (off + PCAP_RECORD_HEADER + cap > size) throw new PcapFormatError(name, `packet ${count + 1} at byte ${off} claims ${cap} bytes; the file ends before`);
    if (visit) {
      const sec = times ? dv.getUint32(h, le) : 0, nsec = times ? dv.getUint32(h + 4, le) * scale : 0;
      visit(count, off + PCAP_RECORD_HEADER, cap, dv.getUint32(h + 12, le), sec, nsec, linktype);
    }
    count++;
    off += PCAP_RECORD_HEADER + cap;
  }
  return { format: 'pcap', littleEndian: le, nanosecond: ns, snaplen, count };
}

interface Iface {
  linktype: number;
  snaplen: number;
  /** timestamp units per second */
  unitsPerSec: bigint;
  offsetSec: bigint;
}

const OPTION_NAMES: Record<number, string> = { [IF_TSRESOL]: ' (if_tsresol)', [IF_TSOFFSET]: ' (if_tsoffset)' };

function walkPcapng(src: Source, name: string, visit: PacketVisitor | null, times: boolean): CaptureSummary {
  const size = src.size;
  let le = true, first: boolean | null = null, firstSnap = -1, count = 0;
  let ifaces: Iface[] = [];
  let off = 0;
  const bad = (what: string): PcapFormatError => new PcapFormatError(name, `block at byte ${off}: ${what}`);
  for (; off < size;) {
    if (off + 12 > size) throw bad(`truncated: ${size - off} bytes left, a block has at least 12`);
    let h = src.at(off, 12);
    let type = src.dv.getUint32(h, le);
    if (type === PCAPNG_SHB) {
      const bom = src.dv.getUint32(h + 8, true);
      if (bom === PCAPNG_BOM) le = true;
      else if (bom === 0x4d3c2b1a) le = false;
      else throw bad(`section header block with byte-order magic ${bom.toString(16).padStart(8, '0')}: not a pcapng file`);
      first ??= le;
      ifaces = [];
    } else if (first === null) {
      throw bad('not a pcapng file: it does not start with a section header block');
    }
    type = src.dv.getUint32(h, le);
    const total = src.dv.getUint32(h + 4, le);
    const [min, what] = MIN_BLOCK[type] ?? [12, `block of type 0x${type.toString(16)}`];
    if (total < min) throw bad(`${what} of length ${total}; it needs at least ${min} bytes`);
    if (total % 4 !== 0) throw bad(`${what} of length ${total}, not a multiple of 4`);
    if (off + total > size) throw bad(`${what} of length ${total} runs past the end of the file (${size - off} bytes left)`);
    const trailer = src.dv.getUint32(src.at(off + total - 4, 4), le);
    if (trailer !== total) throw bad(`${what} of length ${total} ends with length ${trailer} (the two must agree)`);
    const body = off + 8, end = off + total - 4;
    switch (type) {
      case PCAPNG_SHB: {
        h = src.at(off, 16);
        const major = src.dv.getUint16(h + 12, le);
        if (major !== 1) throw bad(`pcapng section version ${major}: only version 1 is known`);
        break;
      }
      case IDB: {
        if (ifaces.length >= PCAPNG_MAX_INTERFACES) throw bad(`interface description block number ${ifaces.length + 1} of its section; at most ${PCAPNG_MAX_INTERFACES} are read`);
        h = src.at(body, 8);
        const iface: Iface = { linktype: src.dv.getUint16(h, le), snaplen: src.dv.getUint32(h + 4, le), unitsPerSec: 1000000n, offsetSec: 0n };
        for (let o = body + 8; o + 4 <= end;) {
          h = src.at(o, 4);
          const code = src.dv.getUint16(h, le), olen = src.dv.getUint16(h + 2, le);
          if (code === OPT_END) break;
          const opt = `option ${code}${OPTION_NAMES[code] ?? ''} at byte ${o}`;
          if (o + 4 + olen > end) throw bad(`${opt} claims ${olen} bytes, past the end of the block (${end - o - 4} left)`);
          if (code === IF_TSRESOL) {
            if (olen !== 1) throw bad(`${opt} has ${olen} bytes; it must have 1`);
            const r = src.u8[src.at(o + 4, 1)];
            iface.unitsPerSec = r & 0x80 ? 1n << BigInt(r & 0x7f) : 10n ** BigInt(r);
          } else if (code === IF_TSOFFSET) {
            if (olen !== 8) throw bad(`${opt} has ${olen} bytes; it must have 8`);
            iface.offsetSec = src.dv.getBigInt64(src.at(o + 4, 8), le);
          }
          o += 4 + ((olen + 3) & ~3);
        }
        if (firstSnap < 0) firstSnap = iface.snaplen;
        ifaces.push(iface);
        break;
      }
      case EPB:
      case OPB: {
        h = src.at(body, 20);
        const dv = src.dv;
        const id = type === EPB ? dv.getUint32(h, le) : dv.getUint16(h, le);
        const iface = ifaces[id];
        if (!iface) throw bad(`${what} names interface ${id}; its section declares ${ifaces.length}`);
        const cap = dv.getUint32(h + 12, le), orig = dv.getUint32(h + 16, le);
        const data = body + 20;
        if (data + cap > end) throw bad(`${what} claims ${cap} bytes of packet; it holds ${end - data}`);
        if (visit) {
          let sec = 0, nsec = 0;
          if (times) {
            const ts = (BigInt(dv.getUint32(h + 4, le)) << 32n) | BigInt(dv.getUint32(h + 8, le));
            sec = Number(ts / iface.unitsPerSec + iface.offsetSec);
            nsec = Number(((ts % iface.unitsPerSec) * 1000000000n) / iface.unitsPerSec);
          }
          visit(count, data, cap, orig, sec, nsec, iface.linktype);
        }
        count++;
        break;
      }
      case SPB: {
        const iface = ifaces[0];
        if (!iface) throw bad(`${what} before any interface description block of its section`);
        const orig = src.dv.getUint32(src.at(body, 4), le);
        let cap = Math.min(orig, end - (body + 4));
        if (iface.snaplen > 0) cap = Math.min(cap, iface.snaplen);
        if (visit) visit(count, body + 4, cap, orig, 0, 0, iface.linktype);
        count++;
        break;
      }
      default: break; // statistics, name resolution, custom and unknown blocks: skipped
    }
    off += total;
  }
  return { format: 'pcapng', littleEndian: first ?? true, nanosecond: false, snaplen: Math.max(firstSnap, 0), count };
}

/** The classic pcap file header: version 2.4, nanosecond magic unless ns is false, little endian. */
export function pcapFileHeader(snaplen = 65535, linktype = LINKTYPE_ETHERNET, ns = true): Uint8Array {
  const h = new Uint8Array(PCAP_FILE_HEADER);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, ns ? PCAP_MAGIC_NS : PCAP_MAGIC_US, true);
  dv.setUint16(4, 2, true);
  dv.setUint16(6, 4, true);
  dv.setUint32(16, snaplen, true);
  dv.setUint32(20, linktype, true);
  return h;
}

/** Write a record header (little endian) at off: seconds, nanoseconds, captured and original length. */
export function putRecordHeader(dv: DataView, off: number, sec: number, nsec: number, capLen: number, origLen: number): void {
  dv.setUint32(off, sec, true);
  dv.setUint32(off + 4, nsec, true);
  dv.setUint32(off + 8, capLen, true);
  dv.setUint32(off + 12, origLen, true);
}

/** The wall clock now as [seconds, nanoseconds] into out (no allocation; microsecond precision). */
export function wallClock(out: Float64Array): void {
  const ms = performance.timeOrigin + performance.now();
  const sec = Math.floor(ms / 1000);
  out[0] = sec;
  out[1] = Math.floor((ms - sec * 1000) * 1e6);
}

/**
 * A classic pcap file (nanosecond magic, little endian) written through one preallocated buffer:
 * write() copies a packet and its record header into it and writes the buffer out when full; close()
 * flushes and closes the file.
 */
export class PcapWriter {
  readonly path: string;
  readonly snaplen: number;
  private fd: number;
  private readonly buf: Uint8Array;
  private readonly dv: DataView;
  private fill = 0;
  /** packets written */
  packets = 0;

  constructor(path: string, opts: { snaplen?: number; linktype?: number; bufferSize?: number } = {}) {
    this.path = path;
    this.snaplen = opts.snaplen ?? 65535;
    this.buf = new Uint8Array(Math.max(opts.bufferSize ?? 1 << 20, this.snaplen + PCAP_RECORD_HEADER));
    this.dv = new DataView(this.buf.buffer);
    this.fd = openCaptureWrite(path);
    this.buf.set(pcapFileHeader(this.snaplen, opts.linktype ?? LINKTYPE_ETHERNET, true), 0);
    this.fill = PCAP_FILE_HEADER;
  }

  /** Append one packet: bytes[off, off+len) of a frame origLen long, stamped sec.nsec. */
  write(bytes: Uint8Array, off: number, len: number, sec: number, nsec: number, origLen = len): void {
    if (this.fd < 0) throw new Error(`${this.path}: write() after close()`);
    const cap = Math.min(len, this.snaplen);
    if (this.fill + PCAP_RECORD_HEADER + cap > this.buf.byteLength) this.flush();
    putRecordHeader(this.dv, this.fill, sec, nsec, cap, origLen);
    const buf = this.buf;
    for (let i = 0, d = this.fill + PCAP_RECORD_HEADER; i < cap; i++) buf[d + i] = bytes[off + i];
    this.fill += PCAP_RECORD_HEADER + cap;
    this.packets++;
  }

  /** Write the buffered bytes to the file. */
  flush(): void {
    if (this.fd < 0 || this.fill === 0) return;
    for (let done = 0; done < this.fill;) done += writeSync(this.fd, this.buf, done, this.fill - done);
    this.fill = 0;
  }

  /** Flush and close the file (idempotent). */
  close(): void {
    if (this.fd < 0) return;
    try {
      this.flush();
    } finally {
      closeSync(this.fd);
      this.fd = -1;
    }
  }
}
