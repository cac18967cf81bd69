/**
 * Capture files built byte by byte for the capture-file hardening tests and the pcap fuzzer:
 * classic pcap in either byte order and resolution with any link type, and pcapng with any number
 * of sections (each in its own byte order), interfaces (link type, if_tsresol, if_tsoffset, snap
 * length) and Enhanced, Simple and obsolete Packet blocks, plus blocks a reader must skip. Also the
 * seed corpus the fuzzer mutates.
 */



/** A frame of size bytes: broadcast destination, a source MAC naming n, IPv4 ethertype, then a counting pattern. */
export function frame(size: number, n: number): Uint8Array {
  const f = new Uint8Array(size);
  for (let i = 0; i < size; i++) f[i] = (i * 7 + n) & 0xff;
  if (size >= 14) {
    f.fill(0xff, 0, 6);
    f.set([0x02, 0x74, 0x73, 0x70, (n >>> 8) & 0xff, n & 0xff], 6);
    f[12] = 0x08;
    f[13] = 0x00;
  }
  return f;
}

/** Bytes written field by field in one byte order. */
class Bytes {
  readonly out: number[] = [];
  constructor(readonly le: boolean) {}
  u8(v: number): this { this.out.push(v & 0xff); return this; }
  u16(v: number): this {
    const b = [v & 0xff, (v >>> 8) & 0xff];
    this.out.push(...(this.le ? b : b.reverse()));
    return this;
  }
  u32(v: number): this {
    const b = [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
    this.out.push(...(this.le ? b : b.reverse()));
    return this;
  }
  u64(v: bigint): this {
    const lo = Number(BigInt.asUintN(32, v)), hi = Number(BigInt.asUintN(32, v >> 32n));
    return this.le ? this.u32(lo).u32(hi) : this.u32(hi).u32(lo);
  }
  bytes(b: ArrayLike<number>): this { for (let i = 0; i < b.length; i++) this.out.push(b[i]); return this; }
  pad4(): this { while (this.out.length % 4) this.out.push(0); return this; }
}

/** One classic pcap record. */
export interface PcapRecord {
  data: Uint8Array;
  sec?: number;
  frac?: number;
  /** original length (default data.length) */
  orig?: number;
}

/** A classic pcap file. */
export function pcapFile(o: { le?: boolean; ns?: boolean; linktype?: number; snaplen?: number; records: PcapRecord[] }): Uint8Array {
  const b = new Bytes(o.le ?? true);
  b.u32(o.ns ? 0xa1b23c4d : 0xa1b2c3d4).u16(2).u16(4).u32(0).u32(0).u32(o.snaplen ?? 65535).u32(o.linktype ?? 1);
  for (const r of o.records) b.u32(r.sec ?? 1700000000).u32(r.frac ?? 0).u32(r.data.length).u32(r.orig ?? r.data.length).bytes(r.data);
  return Uint8Array.from(b.out);
}

/** An interface of a pcapng section. */
export interface NgIface {
  linktype?: number;
  snaplen?: number;
  /** if_tsresol's byte (default: none, microseconds) */
  tsresol?: number;
  /** if_tsoffset in seconds */
  tsoffset?: bigint;
}

/** A block of a pcapng section. */
export type NgBlock =
  | { kind: 'epb'; iface: number; data: Uint8Array; ts?: bigint; orig?: number }
  | { kind: 'opb'; iface: number; data: Uint8Array; ts?: bigint }
  | { kind: 'spb'; data: Uint8Array; orig?: number }
  | { kind: 'raw'; type: number; body: ArrayLike<number> };

/** A pcapng section: byte order, interfaces (their IDBs come first), then blocks. */
export interface NgSection {
  le?: boolean;
  ifaces: NgIface[];
  blocks: NgBlock[];
}

/** One pcapng block of type with body (padded), in the byte order of b. */
function block(b: Bytes, type: number, body: Bytes): void {
  body.pad4();
  const len = body.out.length + 12;
  b.u32(type).u32(len).bytes(body.out).u32(len);
}

/** A pcapng file of the sections given. */
export function pcapngFile(sections: NgSection[]): Uint8Array {
  const all: number[] = [];
  for (const s of sections) {
    const le = s.le ?? true;
    const b = new Bytes(le);
    const nb = (): Bytes => new Bytes(le);
    // SHB: byte-order magic, version 1.0, section length unknown, shb_userappl option, end.
    const app = Array.from('tspmd test', (c) => c.charCodeAt(0));
    block(b, 0x0a0d0d0a, nb().u32(0x1a2b3c4d).u16(1).u16(0).u64(-1n).u16(4).u16(app.length).bytes(app).pad4().u16(0).u16(0));
    for (const i of s.ifaces) {
      const body = nb().u16(i.linktype ?? 1).u16(0).u32(i.snaplen ?? 0);
      const name = Array.from('tsp0', (c) => c.charCodeAt(0));
      body.u16(2).u16(name.length).bytes(name).pad4();
      if (i.tsresol !== undefined) body.u16(9).u16(1).u8(i.tsresol).pad4();
      if (i.tsoffset !== undefined) body.u16(14).u16(8).u64(i.tsoffset);
      body.u16(0).u16(0);
      block(b, 1, body);
    }
    for (const k of s.blocks) {
      if (k.kind === 'epb') {
        const ts = k.ts ?? 1700000000000000n;
        block(b, 6, nb().u32(k.iface).u32(Number(ts >> 32n)).u32(Number(ts & 0xffffffffn)).u32(k.data.length).u32(k.orig ?? k.data.length).bytes(k.data).pad4().u16(1).u16(4).u32(0).u16(0).u16(0));
      } else if (k.kind === 'opb') {
        const ts = k.ts ?? 1700000000000000n;
        block(b, 2, nb().u16(k.iface).u16(0).u32(Number(ts >> 32n)).u32(Number(ts & 0xffffffffn)).u32(k.data.length).u32(k.data.length).bytes(k.data));
      } else if (k.kind === 'spb') {
        block(b, 3, nb().u32(k.orig ?? k.data.length).bytes(k.data));
      } else {
        block(b, k.type, nb().bytes(k.body));
      }
    }
    all.push(...b.out);
  }
  return Uint8Array.from(all);
}

/** Link types of the corpus: Ethernet, Linux cooked (SLL), raw IP. */
export const LT_ETHERNET = 1, LT_SLL = 113, LT_RAW = 101;

/** The valid files the fuzzer mutates: every format variant the reader knows, small (under 16 KiB each). */
export function seedCorpus(): Array<{ name: string; bytes: Uint8Array }> {
  const sizes = [60, 64, 42, 1514, 128, 3000, 14, 0, 333, 61];
  const recs = (n: number, from = 0): PcapRecord[] => Array.from({ length: n }, (_, i) => ({ data: frame(sizes[(i + from) % sizes.length], i + from), sec: 1700000000 + i, frac: i * 1000 + 7 }));
  const nrb = [1, 0, 4, 0, 10, 0, 0, 1, 0x61, 0x00, 0, 0, 0, 0, 0, 0]; // name resolution: one IPv4 record, end
  const isb = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // interface statistics: iface 0, timestamp 0, no options
  const seeds = [
    { name: 'le-us-eth.pcap', bytes: pcapFile({ records: recs(12) }) },
    { name: 'be-ns-eth.pcap', bytes: pcapFile({ le: false, ns: true, records: recs(12, 3) }) },
    { name: 'le-ns-sll.pcap', bytes: pcapFile({ ns: true, linktype: LT_SLL, records: recs(5) }) },
    { name: 'be-us-raw.pcap', bytes: pcapFile({ le: false, linktype: LT_RAW, snaplen: 128, records: recs(5, 2) }) },
    {
      name: 'le-2if.pcapng', bytes: pcapngFile([{
        ifaces: [{ tsresol: 9 }, { tsresol: 0x8a, snaplen: 1600, tsoffset: 3n }],
        blocks: [
          { kind: 'epb', iface: 0, data: frame(60, 1), ts: 1700000000123456789n },
          { kind: 'epb', iface: 1, data: frame(1514, 2), ts: 5632n },
          { kind: 'raw', type: 4, body: nrb },
          { kind: 'spb', data: frame(64, 3) },
          { kind: 'opb', iface: 1, data: frame(42, 4) },
          { kind: 'raw', type: 5, body: isb },
          { kind: 'raw', type: 0x00000bad, body: [1, 2, 3, 4, 5] },
          { kind: 'epb', iface: 0, data: frame(3000, 5) },
          { kind: 'epb', iface: 0, data: frame(0, 6) },
        ],
      }]),
    },
    {
      name: 'be-1if.pcapng', bytes: pcapngFile([{
        le: false, ifaces: [{ snaplen: 96 }],
        blocks: [{ kind: 'epb', iface: 0, data: frame(96, 1) }, { kind: 'spb', data: frame(96, 2), orig: 200 }, { kind: 'epb', iface: 0, data: frame(61, 3) }],
      }]),
    },
    {
      name: 'le-be-2sections.pcapng', bytes: pcapngFile([
        { ifaces: [{}, { linktype: LT_ETHERNET, tsresol: 3 }], blocks: [{ kind: 'epb', iface: 1, data: frame(128, 1) }, { kind: 'epb', iface: 0, data: frame(60, 2) }] },
        { le: false, ifaces: [{ tsresol: 0x80 | 20 }], blocks: [{ kind: 'epb', iface: 0, data: frame(333, 3) }, { kind: 'spb', data: frame(70, 4) }] },
      ]),
    },
    {
      name: 'le-mixed-links.pcapng', bytes: pcapngFile([
        { ifaces: [{ linktype: LT_SLL }, {}], blocks: [{ kind: 'epb', iface: 1, data: frame(60, 1) }, { kind: 'epb', iface: 0, data: frame(44, 2) }] },
      ]),
    },
    {
      name: 'be-3sections.pcapng', bytes: pcapngFile([
        { le: false, ifaces: [{ tsresol: 6 }], blocks: [{ kind: 'epb', iface: 0, data: frame(60, 1) }] },
        { ifaces: [], blocks: [{ kind: 'raw', type: 0x42, body: [9, 9, 9, 9] }] },
        { le: false, ifaces: [{}, {}, { tsresol: 9, tsoffset: -5n }], blocks: [{ kind: 'epb', iface: 2, data: frame(1514, 2) }, { kind: 'opb', iface: 1, data: frame(90, 3) }] },
      ]),
    },
  ];
  return seeds;
}
