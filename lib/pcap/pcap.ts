/**
 * Capture files: reading classic pcap and pcapng, writing classic pcap. Written from the libpcap
 * file format description (pcap-savefile(5)) and the pcapng specification (IETF draft
 * draft-ietf-opsawg-pcapng): block layouts, magic numbers, option codes.
 *
 * Reading is done on a whole file held in memory: parseCapture() walks it once and returns an
 * index (struct of arrays: offset, captured length, original length, timestamp, interface) so a
 * data path can copy packets out without parsing or allocating. Writing goes through PcapWriter,
 * which fills a preallocated buffer and writes it out in large pieces.
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
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';

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

const IDB = 1, OPB = 2, SPB = 3, EPB = 6;
const OPT_END = 0, IF_TSRESOL = 9, IF_TSOFFSET = 14;

/** A file that is not a capture file, or a capture file that is damaged. */
export class PcapFormatError extends Error {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'PcapFormatError';
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

/** Read and index a pcap or pcapng file; errors name the file and what is wrong with it. */
export function readCaptureFile(path: string): CaptureIndex {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new PcapFormatError(path, 'no such file (give the path of an existing pcap or pcapng file)');
    throw new PcapFormatError(path, `cannot read it: ${(e as Error).message}`);
  }
  return parseCapture(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), path);
}

/** Growable struct-of-arrays the parsers fill. */
class IndexBuilder {
  count = 0;
  offset = new Float64Array(1024);
  capLen = new Uint32Array(1024);
  origLen = new Uint32Array(1024);
  tsSec = new Float64Array(1024);
  tsNsec = new Uint32Array(1024);
  linktype = new Uint16Array(1024);

  add(off: number, cap: number, orig: number, sec: number, nsec: number, lt: number): void {
    if (this.count === this.offset.length) {
      const n = this.count * 2;
      const grow = <T extends Float64Array | Uint32Array | Uint16Array>(a: T, make: (n: number) => T): T => { const b = make(n); b.set(a); return b; };
      this.offset = grow(this.offset, (k) => new Float64Array(k));
      this.capLen = grow(this.capLen, (k) => new Uint32Array(k));
      this.origLen = grow(this.origLen, (k) => new Uint32Array(k));
      this.tsSec = grow(this.tsSec, (k) => new Float64Array(k));
      this.tsNsec = grow(this.tsNsec, (k) => new Uint32Array(k));
      this.linktype = grow(this.linktype, (k) => new Uint16Array(k));
    }
    const i = this.count++;
    this.offset[i] = off;
    this.capLen[i] = cap;
    this.origLen[i] = orig;
    this.tsSec[i] = sec;
    this.tsNsec[i] = nsec;
    this.linktype[i] = lt;
  }

  done(format: 'pcap' | 'pcapng', bytes: Uint8Array, le: boolean, ns: boolean, snaplen: number): CaptureIndex {
    const n = this.count;
    return {
      format, littleEndian: le, nanosecond: ns, snaplen, count: n, bytes,
      offset: this.offset.slice(0, n), capLen: this.capLen.slice(0, n), origLen: this.origLen.slice(0, n),
      tsSec: this.tsSec.slice(0, n), tsNsec: this.tsNsec.slice(0, n), linktype: this.linktype.slice(0, n),
    };
  }
}

/** Index a capture held in memory (classic pcap in either byte order and resolution, or pcapng). */
export function parseCapture(bytes: Uint8Array, name = 'capture'): CaptureIndex {
  if (bytes.byteLength < 4) throw new PcapFormatError(name, `is ${bytes.byteLength} bytes long: not a pcap or pcapng file`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const m = dv.getUint32(0, true);
  if (m === PCAPNG_SHB) return parsePcapng(bytes, dv, name);
  for (const le of [true, false]) {
    const v = dv.getUint32(0, le);
    if (v === PCAP_MAGIC_US || v === PCAP_MAGIC_NS) return parsePcap(bytes, dv, name, le, v === PCAP_MAGIC_NS);
  }
  const hex = Array.from(bytes.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
  throw new PcapFormatError(name, `starts with ${hex}: not a pcap or pcapng file (expected the magic a1b2c3d4 or a1b23c4d in either byte order, or the pcapng block 0a0d0d0a)`);
}

function parsePcap(bytes: Uint8Array, dv: DataView, name: string, le: boolean, ns: boolean): CaptureIndex {
  if (bytes.byteLength < PCAP_FILE_HEADER) throw new PcapFormatError(name, `truncated file header (${bytes.byteLength} of ${PCAP_FILE_HEADER} bytes)`);
  const major = dv.getUint16(4, le);
  if (major !== 2) throw new PcapFormatError(name, `pcap version ${major}.${dv.getUint16(6, le)}: only version 2.x is known`);
  const snaplen = dv.getUint32(16, le);
  const linktype = dv.getUint32(20, le) & 0xffff; // the upper bits carry FCS information
  const b = new IndexBuilder();
  const scale = ns ? 1 : 1000;
  let off = PCAP_FILE_HEADER;
  while (off < bytes.byteLength) {
    if (off + PCAP_RECORD_HEADER > bytes.byteLength) throw new PcapFormatError(name, `truncated record header at byte ${off} (after ${b.count} packets)`);
    const sec = dv.getUint32(off, le), frac = dv.getUint32(off + 4, le);
    const cap = dv.getUint32(off + 8, le), orig = dv.getUint32(off + 12, le);
    if (off + PCAP_RECORD_HEADER + cap > bytes.byteLength) throw new PcapFormatError(name, `packet ${b.count + 1} at byte ${off} claims ${cap} bytes; the file ends before`);
    b.add(off + PCAP_RECORD_HEADER, cap, orig, sec, frac * scale, linktype);
    off += PCAP_RECORD_HEADER + cap;
  }
  return b.done('pcap', bytes, le, ns, snaplen);
}

interface Iface {
  linktype: number;
  snaplen: number;
  /** timestamp units per second, and whether it is a power of ten */
  unitsPerSec: bigint;
  offsetSec: bigint;
}

function parsePcapng(bytes: Uint8Array, dv: DataView, name: string): CaptureIndex {
  const b = new IndexBuilder();
  let le = true, first: boolean | null = null, firstSnap = -1;
  let ifaces: Iface[] = [];
  let off = 0;
  const len = bytes.byteLength;
  while (off < len) {
    if (off + 12 > len) throw new PcapFormatError(name, `truncated pcapng block at byte ${off}`);
    const type = dv.getUint32(off, le);
    if (type === PCAPNG_SHB) {
      if (off + 28 > len) throw new PcapFormatError(name, `truncated section header block at byte ${off}`);
      const bom = dv.getUint32(off + 8, true);
      if (bom === PCAPNG_BOM) le = true;
      else if (bom === 0x4d3c2b1a) le = false;
      else throw new PcapFormatError(name, `section header at byte ${off} has byte-order magic ${bom.toString(16)}: not a pcapng file`);
      first ??= le;
      const major = dv.getUint16(off + 12, le);
      if (major !== 1) throw new PcapFormatError(name, `pcapng section version ${major}: only version 1 is known`);
      ifaces = [];
    } else if (first === null) {
      throw new PcapFormatError(name, 'not a pcapng file: it does not start with a section header block');
    }
    const total = dv.getUint32(off + 4, le);
    if (total < 12 || total % 4 !== 0 || off + total > len) throw new PcapFormatError(name, `pcapng block at byte ${off} has a bad length ${total}`);
    const body = off + 8, end = off + total - 4;
    switch (type) {
      case IDB: {
        const iface: Iface = { linktype: dv.getUint16(body, le), snaplen: dv.getUint32(body + 4, le), unitsPerSec: 1000000n, offsetSec: 0n };
        for (let o = body + 8; o + 4 <= end;) {
          const code = dv.getUint16(o, le), olen = dv.getUint16(o + 2, le);
          if (code === OPT_END) break;
          if (code === IF_TSRESOL && olen >= 1) {
            const r = bytes[o + 4];
            iface.unitsPerSec = r & 0x80 ? 1n << BigInt(r & 0x7f) : 10n ** BigInt(r);
          } else if (code === IF_TSOFFSET && olen >= 8) {
            iface.offsetSec = dv.getBigInt64(o + 4, le);
          }
          o += 4 + ((olen + 3) & ~3);
        }
        if (firstSnap < 0) firstSnap = iface.snaplen;
        ifaces.push(iface);
        break;
      }
      case EPB:
      case OPB: {
        const id = type === EPB ? dv.getUint32(body, le) : dv.getUint16(body, le);
        const iface = ifaces[id];
        if (!iface) throw new PcapFormatError(name, `packet block at byte ${off} names interface ${id}, which no interface description block declared`);
        const ts = (BigInt(dv.getUint32(body + 4, le)) << 32n) | BigInt(dv.getUint32(body + 8, le));
        const cap = dv.getUint32(body + 12, le), orig = dv.getUint32(body + 16, le);
        const data = body + 20;
        if (data + cap > end) throw new PcapFormatError(name, `packet block at byte ${off} claims ${cap} bytes, more than the block holds`);
        const sec = ts / iface.unitsPerSec;
        const nsec = ((ts % iface.unitsPerSec) * 1000000000n) / iface.unitsPerSec;
        b.add(data, cap, orig, Number(sec + iface.offsetSec), Number(nsec), iface.linktype);
        break;
      }
      case SPB: {
        const iface = ifaces[0];
        if (!iface) throw new PcapFormatError(name, `simple packet block at byte ${off} before any interface description block`);
        const orig = dv.getUint32(body, le);
        let cap = Math.min(orig, end - (body + 4));
        if (iface.snaplen > 0) cap = Math.min(cap, iface.snaplen);
        b.add(body + 4, cap, orig, 0, 0, iface.linktype);
        break;
      }
      default: break; // SHB handled above; statistics, name resolution, custom and unknown blocks: skipped
    }
    off += total;
  }
  return b.done('pcapng', bytes, first ?? true, false, Math.max(firstSnap, 0));
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
    try {
      this.fd = openSync(path, 'w');
    } catch (e) {
      throw new Error(`cannot create the capture file ${path}: ${(e as Error).message} (check that its directory exists and is writable)`);
    }
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
