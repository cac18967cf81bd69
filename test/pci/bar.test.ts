/**
 * BAR access on memfd-backed regions at VFIO's offsets (index << 40): the region info and its
 * sparse-mmap capability are parsed from kernel-layout bytes, the whole BAR is reserved and only
 * the allowed areas are mapped inside it (checked in /proc/self/maps), MMIO goes through the
 * mapping where mapped and pread/pwrite elsewhere, and both paths agree in every width. Reads and
 * writes of any length at any offset, split between the mapping and pread/pwrite per part (compared
 * with the memfd's bytes); BARs seen through several view pieces (a lowered piece size, and a 6 GiB
 * sparse BAR whose only mapped pages straddle 4 GiB). Also the rest of the device interface over
 * the same fd: info, IRQ info/set with eventfds, reset, close.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { Bar, MappedBar, mergeAreas } from '../../src/iommu/bar.js';
import { parseRegionInfo } from '../../src/iommu/device.js';
import { MemfdVfioDevice, RecordingDma, REGION_SHIFT, RW, RWM } from './fake-vfio.js';
import { prng } from '../prng.js';

const KB = 1024;
/** BAR0: 64 KiB, mmap allowed except the MSI-X table at [0x1000, 0x3000) and the tail above 0x8000. */
const SPARSE = [{ offset: 0x3000, size: 0x5000 }, { offset: 0, size: 0x1000 }];

function device(t: { teardown(fn: () => unknown): void }, dma = new RecordingDma()): MemfdVfioDevice {
  const dev = new MemfdVfioDevice('0000:01:00.0', [
    { index: U.VFIO_PCI_BAR0_REGION_INDEX, size: 64 * KB, flags: RWM, sparse: SPARSE, type: { type: 0x80000000 | 0x8086, subtype: 7 } },
    { index: U.VFIO_PCI_BAR2_REGION_INDEX, size: 16 * KB, flags: RW },
    { index: U.VFIO_PCI_BAR4_REGION_INDEX, size: 16 * KB, flags: RWM },
    { index: U.VFIO_PCI_BAR5_REGION_INDEX, size: 256, flags: RWM },
    { index: U.VFIO_PCI_CONFIG_REGION_INDEX, size: 256, flags: RW },
  ], [1, 1, 8, 1, 1], dma);
  t.teardown(() => dev.close());
  return dev;
}

/** The memfd's bytes at the region offset, read independently of the Bar. */
function peek(dev: MemfdVfioDevice, index: number, off: number, len: number): DataView {
  const b = new Uint8Array(len);
  os.pread(dev.fd, b, len, (BigInt(index) << REGION_SHIFT) + BigInt(off));
  return new DataView(b.buffer);
}

function poke(dev: MemfdVfioDevice, index: number, off: number, bytes: Uint8Array): void {
  os.pwrite(dev.fd, bytes, bytes.byteLength, (BigInt(index) << REGION_SHIFT) + BigInt(off));
}

/** /proc/self/maps lines inside [va, va+len): [start offset, end offset, perms]. */
function mapsWithin(va: bigint, len: number): Array<[number, number, string]> {
  const out: Array<[number, number, string]> = [];
  for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+)/.exec(line);
    if (!m) continue;
    const a = BigInt('0x' + m[1]), b = BigInt('0x' + m[2]);
    if (b <= va || a >= va + BigInt(len)) continue;
    out.push([Number((a > va ? a : va) - va), Number((b < va + BigInt(len) ? b : va + BigInt(len)) - va), m[3]]);
  }
  return out;
}

t.test('region info: capability chain parsed from the kernel layout, argsz grown on the second call', async (t) => {
  const dev = device(t);
  const r = dev.regionInfo(U.VFIO_PCI_BAR0_REGION_INDEX);
  t.equal(r.size, 64 * KB);
  t.equal(r.offset, 0n);
  t.ok(r.readable && r.writable && r.mappable);
  t.same(r.sparse, [{ offset: 0, size: 0x1000 }, { offset: 0x3000, size: 0x5000 }], 'sparse areas, sorted');
  t.same(r.type, { type: 0x80008086, subtype: 7 }, 'region type capability');
  t.same(r.capIds, [U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, U.VFIO_REGION_INFO_CAP_TYPE]);
  t.equal(dev.calls.filter((c) => c === U.VFIO_DEVICE_GET_REGION_INFO).length, 2, 'asked twice: first argsz too small for the caps');
  dev.regionInfo(U.VFIO_PCI_BAR0_REGION_INDEX);
  t.equal(dev.calls.filter((c) => c === U.VFIO_DEVICE_GET_REGION_INFO).length, 2, 'cached');
  const b2 = dev.regionInfo(U.VFIO_PCI_BAR2_REGION_INDEX);
  t.equal(b2.offset, 2n << 40n, 'BAR2 at 2 << 40');
  t.equal(b2.mappable, false);
  t.equal(b2.sparse, null);
  t.equal(dev.regionInfo(U.VFIO_PCI_BAR1_REGION_INDEX).size, 0, 'absent BAR: size 0');
  t.same(dev.info(), { flags: U.VFIO_DEVICE_FLAGS_PCI | U.VFIO_DEVICE_FLAGS_RESET, numRegions: 9, numIrqs: 5, isPci: true, canReset: true });

  // malformed chains name the region
  const bad = U.vfio_region_info.encode({ argsz: 48, flags: U.VFIO_REGION_INFO_FLAG_CAPS | RWM, size: 0x1000, cap_offset: 32 }, 16);
  U.vfio_region_info_cap_sparse_mmap.set(U.view(bad), 'header.id', 1, 32);
  U.vfio_region_info_cap_sparse_mmap.set(U.view(bad), 'nr_areas', 3, 32);
  t.throws(() => parseRegionInfo(bad, 'dev BAR0'), /dev BAR0: sparse mmap capability claims 3 areas but the info buffer holds 0/);
  const big = U.vfio_region_info.encode({ argsz: 64, flags: U.VFIO_REGION_INFO_FLAG_CAPS | RWM, size: 0x1000, cap_offset: 32 }, 32);
  U.vfio_region_info_cap_sparse_mmap.set(U.view(big), 'header.id', 1, 32);
  U.vfio_region_info_cap_sparse_mmap.set(U.view(big), 'nr_areas', 1, 32);
  U.vfio_region_sparse_mmap_area.set(U.view(big), 'offset', 0x1000, 48);
  U.vfio_region_sparse_mmap_area.set(U.view(big), 'size', 0x1000, 48);
  t.throws(() => parseRegionInfo(big, 'dev BAR0'), /exceeds the region size 0x1000/);
});

t.test('sparse BAR: one reserved range, only the allowed areas mapped inside it', async (t) => {
  const dev = device(t);
  const bar = Bar.open(dev, U.VFIO_PCI_BAR0_REGION_INDEX);
  t.teardown(() => bar.close());
  t.equal(bar.size, 64 * KB);
  t.not(bar.va, 0n);
  t.same(bar.mapped, [{ offset: 0, size: 0x1000 }, { offset: 0x3000, size: 0x5000 }]);
  const maps = mapsWithin(bar.va, 64 * KB);
  t.same(maps.map(([a, b, p]) => [a, b, p.slice(0, 3) + p[3]]), [
    [0, 0x1000, 'rw-s'], [0x1000, 0x3000, '---p'], [0x3000, 0x8000, 'rw-s'], [0x8000, 0x10000, '---p'],
  ], 'maps: shared device pages where allowed, PROT_NONE reservation elsewhere');

  t.ok(bar.isMapped(0, 4));
  t.ok(bar.isMapped(0xffc, 4));
  t.notOk(bar.isMapped(0xffc, 8), 'a range crossing into the hole is not mapped');
  t.notOk(bar.isMapped(0x1000, 4), 'MSI-X table hole');
  t.ok(bar.isMapped(0x3000, 0x5000));
  t.notOk(bar.isMapped(0x7ffc, 8));
  t.notOk(bar.isMapped(0x8000, 4));
  t.notOk(bar.isMapped(-4, 4));

  // the mapping sits at va + area offset and is the device's memory: a store through a raw view
  // at va+0x3004 is read back by pread at region offset 0x3004
  new DataView(os.viewOf(bar.va + 0x3004n, 4)).setUint32(0, 0xcafef00d, true);
  t.equal(peek(dev, 0, 0x3004, 4).getUint32(0, true), 0xcafef00d, 'fixed mapping at the right place');
});

t.test('MMIO: mapped and pread/pwrite paths agree in every width, both directions', async (t) => {
  const dev = device(t);
  const bar = Bar.open(dev, U.VFIO_PCI_BAR0_REGION_INDEX);
  t.teardown(() => bar.close());
  const offsets = [0, 0x8, 0xff8, 0x1000, 0x1ff8, 0x2ff8, 0x3000, 0x4abc & ~7, 0x7ff8, 0x8000, 0xfff8];
  let i = 0;
  for (const off of offsets) {
    const mapped = bar.isMapped(off, 8);
    const tag = `${mapped ? 'mapped' : 'pwrite'} 0x${off.toString(16)}`;
    // writes through the Bar are visible to pread on the device fd
    const v8 = (0x11 + i) & 0xff, v16 = (0x2200 + i) & 0xffff, v32 = (0x33000000 + i * 0x01010101) >>> 0, v64 = 0x4400000000000000n + BigInt(i) * 0x0101010101n;
    bar.write8(off, v8);
    t.equal(peek(dev, 0, off, 1).getUint8(0), v8, `${tag}: write8`);
    bar.write16(off, v16);
    t.equal(peek(dev, 0, off, 2).getUint16(0, true), v16, `${tag}: write16`);
    bar.write32(off, v32);
    t.equal(peek(dev, 0, off, 4).getUint32(0, true), v32, `${tag}: write32`);
    bar.write64(off, v64);
    t.equal(peek(dev, 0, off, 8).getBigUint64(0, true), v64, `${tag}: write64`);
    // pwrite on the device fd is visible through the Bar
    const pat = Uint8Array.from({ length: 8 }, (_, k) => (off + k * 37 + i) & 0xff);
    poke(dev, 0, off, pat);
    const dv = new DataView(pat.buffer);
    t.equal(bar.read8(off), dv.getUint8(0), `${tag}: read8`);
    t.equal(bar.read16(off), dv.getUint16(0, true), `${tag}: read16`);
    t.equal(bar.read32(off), dv.getUint32(0, true), `${tag}: read32`);
    t.equal(bar.read64(off), dv.getBigUint64(0, true), `${tag}: read64`);
    t.equal(bar.read32(off + 4), dv.getUint32(4, true), `${tag}: read32 of the upper half`);
    i++;
  }
  t.ok(offsets.some((o) => bar.isMapped(o, 8)) && offsets.some((o) => !bar.isMapped(o, 8)), 'both paths exercised');
  bar.write32(0x10, 0xffffffff);
  t.equal(bar.read32(0x10), 0xffffffff, 'unsigned 32-bit values stay unsigned');
  bar.write64(0x1008, -1n);
  t.equal(bar.read64(0x1008), 0xffffffffffffffffn, 'write64 of -1 stores all ones (pwrite path)');

  // a worker-side view of the mapped parts, rebuilt from plain data
  const mb = new MappedBar(structuredClone(bar.data()));
  mb.check(0x3000, 4);
  t.throws(() => mb.check(0x1000, 4), /0000:01:00.0 BAR0: \[0x1000, \+4\) is not mapped/);
  mb.write32(0x3000, 0xa5a5a5a5);
  t.equal(peek(dev, 0, 0x3000, 4).getUint32(0, true), 0xa5a5a5a5, 'MappedBar stores reach the device');
  t.equal(mb.read32(0x3000), bar.read32(0x3000));
  t.throws(() => new MappedBar({ name: 'x BAR2', va: 0n, size: 4096, mapped: [] }), /x BAR2: nothing of the BAR is mapped/);

  t.throws(() => bar.read32(2), /32-bit access at 0x2 is misaligned/);
  t.throws(() => bar.write16(64 * KB, 0), /16-bit access at 0x10000 is outside the BAR \(size 0x10000\)/);
  t.throws(() => bar.read8(-1), /outside the BAR/);
});

t.test('BARs without mmap, small BARs, whole-BAR mappings, mmap: false, close', async (t) => {
  const dev = device(t);
  const b2 = Bar.open(dev, U.VFIO_PCI_BAR2_REGION_INDEX);
  t.equal(b2.va, 0n, 'no MMAP flag: nothing reserved');
  t.notOk(b2.isMapped(0, 4));
  b2.write32(0x100, 0x12345678);
  t.equal(peek(dev, 2, 0x100, 4).getUint32(0, true), 0x12345678, 'BAR2 writes land at 2 << 40 + off');
  t.equal(peek(dev, 0, 0x100, 4).getUint32(0, true), 0, 'and not in BAR0');
  t.equal(b2.read32(0x100), 0x12345678);
  b2.close();

  const b4 = Bar.open(dev, U.VFIO_PCI_BAR4_REGION_INDEX);
  t.same(b4.mapped, [{ offset: 0, size: 16 * KB }], 'no sparse capability: the whole BAR is mapped');
  t.ok(b4.isMapped(0, 16 * KB));
  b4.write64(0x3ff8, 0x0102030405060708n);
  t.equal(peek(dev, 4, 0x3ff8, 8).getBigUint64(0, true), 0x0102030405060708n);
  b4.close();
  t.same(mapsWithin(b4.va, 16 * KB).filter(([, , p]) => p !== '---p' && p.startsWith('rw')), [], 'close unmapped the BAR');
  t.throws(() => b4.read32(0), /BAR4: the BAR is closed/);

  // pages left unmapped by choice (a driver's devarg): pread/pwrite there, here and from a MappedBar
  const b4u = Bar.open(dev, U.VFIO_PCI_BAR4_REGION_INDEX, { unmap: [{ offset: 0x1000, size: 0x1000 }] });
  t.same(b4u.mapped, [{ offset: 0, size: 0x1000 }, { offset: 0x2000, size: 0x2000 }], 'unmap: the page is cut out of the mapped area');
  b4u.write32(0x1004, 0xfeedf00d);
  t.equal(peek(dev, 4, 0x1004, 4).getUint32(0, true), 0xfeedf00d, 'a write to the unmapped page lands through pwrite');
  const mr = new MappedBar(structuredClone(b4u.data()));
  t.equal(mr.reg(0x1008, 4).mapped, false, 'a MappedBar register in the unmapped page takes the fd path');
  t.equal(mr.reg(0x2008, 4).mapped, true, 'and one in a mapped page a store');
  mr.reg(0x1008, 4).write(0x5a5a0001);
  t.equal(peek(dev, 4, 0x1008, 4).getUint32(0, true), 0x5a5a0001, 'the worker-side pwrite reaches the device');
  b4u.close();
  t.throws(() => Bar.open(dev, U.VFIO_PCI_BAR4_REGION_INDEX, { unmap: [{ offset: 0x1000, size: 0x100 }] }), /BAR4: the area to leave unmapped \[0x1000, \+0x100\) is not whole 4 KiB pages/);
  t.throws(() => Bar.open(dev, U.VFIO_PCI_BAR4_REGION_INDEX, { unmap: [{ offset: 0x4000, size: 0x1000 }] }), /BAR4: the area to leave unmapped \[0x4000, \+0x1000\) lies outside the BAR \(size 0x4000\)/);

  const b5 = Bar.open(dev, U.VFIO_PCI_BAR5_REGION_INDEX);
  t.equal(b5.va, 0n, 'a 256-byte BAR cannot be mmap\'d page-wise: pread/pwrite');
  b5.write16(0xfe, 0xbeef);
  t.equal(b5.read16(0xfe), 0xbeef);
  b5.close();

  const b0 = Bar.open(dev, U.VFIO_PCI_BAR0_REGION_INDEX, { mmap: false });
  t.equal(b0.va, 0n);
  t.notOk(b0.isMapped(0, 4));
  b0.write32(0, 7);
  t.equal(peek(dev, 0, 0, 4).getUint32(0, true), 7);
  b0.close();

  t.throws(() => Bar.open(dev, U.VFIO_PCI_BAR1_REGION_INDEX), /0000:01:00.0 BAR1 does not exist \(region size 0\)/);
  t.throws(() => dev.mmapRegion(U.VFIO_PCI_BAR2_REGION_INDEX, 0, 4096), /BAR2 cannot be mmap'd/);
  t.throws(() => dev.mmapRegion(U.VFIO_PCI_BAR4_REGION_INDEX, 0x100, 4096), /not page-aligned/);
  t.throws(() => dev.mmapRegion(U.VFIO_PCI_BAR4_REGION_INDEX, 0, 32 * KB), /exceeds the region size 0x4000/);
  t.throws(() => dev.readRegion(U.VFIO_PCI_CONFIG_REGION_INDEX, 250, new Uint8Array(8)), /config: read of 8 bytes at 0xfa is outside the region \(size 0x100\)/);
  t.same(mergeAreas([{ offset: 0x2000, size: 0x1000 }, { offset: 0, size: 0x1000 }, { offset: 0x1000, size: 0x1000 }]), [{ offset: 0, size: 0x3000 }], 'adjacent areas merge');
});

/** Record the (offset, length) of every readRegion/writeRegion call on region index. */
function spyRegionIo(dev: MemfdVfioDevice, index: number): { reads: Array<[number, number]>; writes: Array<[number, number]> } {
  const calls = { reads: [] as Array<[number, number]>, writes: [] as Array<[number, number]> };
  const read = dev.readRegion.bind(dev), write = dev.writeRegion.bind(dev);
  dev.readRegion = (i, off, buf, len = buf.byteLength) => { if (i === index) calls.reads.push([off, len]); return read(i, off, buf, len); };
  dev.writeRegion = (i, off, buf, len = buf.byteLength) => { if (i === index) calls.writes.push([off, len]); return write(i, off, buf, len); };
  return calls;
}

/** The parts of [off, off+len) outside the mapped areas, as [offset, length]. */
function holes(mapped: ReadonlyArray<{ offset: number; size: number }>, off: number, len: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let cur = off;
  for (const a of mapped) {
    if (a.offset + a.size <= cur || a.offset >= off + len) continue;
    if (a.offset > cur) out.push([cur, a.offset - cur]);
    cur = Math.max(cur, a.offset + a.size);
  }
  if (cur < off + len) out.push([cur, off + len - cur]);
  return out;
}

t.test('any length and offset: mapped parts through the mapping, the rest by pread/pwrite, bytes match the backing', async (t) => {
  for (const pieceSize of [undefined, 0x2000]) {
    const dev = device(t);
    const bar = Bar.open(dev, U.VFIO_PCI_BAR0_REGION_INDEX, { pieceSize });
    t.teardown(() => bar.close());
    const tag = pieceSize ? `pieces of 0x${pieceSize.toString(16)}` : 'one view';
    const rnd = prng(0x26 + (pieceSize ?? 0));
    const backing = Uint8Array.from({ length: 64 * KB }, () => Math.floor(rnd() * 256));
    poke(dev, 0, 0, backing);
    const io = spyRegionIo(dev, U.VFIO_PCI_BAR0_REGION_INDEX);
    // [mapped 0, 0x1000) [hole 0x1000, 0x3000) [mapped 0x3000, 0x8000) [hole 0x8000, 0x10000)
    const spans: Array<[number, number]> = [
      [0xffd, 7], [0x2ffe, 0x1005], [0x7fff, 3], [0, 64 * KB], [0x1001, 1], [0x3, 0], [0x1fff, 0x2003], [0xfff7, 9], [0x3001, 0x4ffd], [0xabc, 0x9876],
    ];
    for (let i = 0; i < 20; i++) { const off = Math.floor(rnd() * 64 * KB); spans.push([off, Math.floor(rnd() * (64 * KB - off + 1))]); }
    for (const [off, len] of spans) {
      io.reads.length = 0;
      const got = bar.read(off, len);
      t.same(Buffer.from(got), Buffer.from(backing.subarray(off, off + len)), `${tag}: read(0x${off.toString(16)}, ${len}) returns the backing's bytes`);
      t.same(io.reads, holes(bar.mapped, off, len), `${tag}: read(0x${off.toString(16)}, ${len}): pread exactly for the unmapped parts`);
    }
    for (const [off, len] of spans.slice(0, 12)) {
      const src = Uint8Array.from({ length: len }, () => Math.floor(rnd() * 256));
      io.writes.length = 0;
      bar.write(off, src);
      backing.set(src, off);
      t.same(io.writes, holes(bar.mapped, off, len), `${tag}: write(0x${off.toString(16)}, ${len}): pwrite exactly for the unmapped parts`);
    }
    t.same(Buffer.from(new Uint8Array(peek(dev, 0, 0, 64 * KB).buffer)), Buffer.from(backing), `${tag}: after the writes the backing holds what was written, nothing else changed`);
    const into = new Uint8Array(11);
    bar.readInto(0x2ffb, into);
    t.same(Buffer.from(into), Buffer.from(backing.subarray(0x2ffb, 0x3006)), `${tag}: readInto a caller's buffer`);

    // past the end and bad offsets name the BAR and the offset
    t.throws(() => bar.read(0xfffe, 4), { name: 'RangeError', message: /^0000:01:00.0 BAR0: 4-byte read at 0xfffe is outside the BAR \(size 0x10000\); it ends at 0x10002$/ });
    t.throws(() => bar.write(0x10000, new Uint8Array(1)), /0000:01:00.0 BAR0: 1-byte write at 0x10000 is outside the BAR/);
    t.throws(() => bar.read(-1, 2), /0000:01:00.0 BAR0: 2-byte read at 0x-1 is outside the BAR/);
    t.throws(() => bar.read(0.5, 2), /2-byte read at 0x0.8 is outside the BAR/);
    t.same(bar.read(64 * KB, 0), new Uint8Array(0), 'an empty read at the end is allowed');
    bar.close();
    t.throws(() => bar.read(0, 1), /0000:01:00.0 BAR0: the BAR is closed/);
  }
  // a BAR with nothing mapped: one pread for the whole span
  const dev = device(t);
  const b2 = Bar.open(dev, U.VFIO_PCI_BAR2_REGION_INDEX);
  t.teardown(() => b2.close());
  const io = spyRegionIo(dev, U.VFIO_PCI_BAR2_REGION_INDEX);
  b2.write(0x101, Uint8Array.of(1, 2, 3, 4, 5));
  t.same(b2.read(0xff, 9), Uint8Array.of(0, 0, 1, 2, 3, 4, 5, 0, 0));
  t.same(io, { reads: [[0xff, 9]], writes: [[0x101, 5]] }, 'unmapped BAR: one syscall per access, whatever its length');
});

t.test('view pieces: fixed-width accessors and worker registers at piece boundaries', async (t) => {
  const dev = device(t);
  const bar = Bar.open(dev, U.VFIO_PCI_BAR4_REGION_INDEX, { pieceSize: 0x1000 });
  t.teardown(() => bar.close());
  t.same(bar.mapped, [{ offset: 0, size: 16 * KB }]);
  for (const off of [0xff8, 0x1000, 0x1ff8, 0x2000, 0x3ff8]) {
    bar.write64(off, 0x1122334455667788n + BigInt(off));
    t.equal(peek(dev, 4, off, 8).getBigUint64(0, true), 0x1122334455667788n + BigInt(off), `write64 at 0x${off.toString(16)} lands in the right piece`);
    t.equal(bar.read32(off + 4), Number((0x1122334455667788n + BigInt(off)) >> 32n), `read32 at 0x${(off + 4).toString(16)}`);
    t.equal(bar.read8(off), (0x88 + off) & 0xff, `read8 at 0x${off.toString(16)}`);
    t.equal(bar.read16(off + 2), 0x5566, `read16 at 0x${(off + 2).toString(16)}`);
  }
  const d = bar.data();
  t.equal(d.pieceSize, 0x1000, 'the piece size travels to workers');
  const mb = new MappedBar(structuredClone(d));
  mb.write32(0x2ffc, 0xdeadbeef);
  t.equal(peek(dev, 4, 0x2ffc, 4).getUint32(0, true), 0xdeadbeef, 'MappedBar.write32 at the end of a piece');
  const reg = mb.reg(0x3000, 2, true);
  reg.write(0xabcd);
  t.equal(peek(dev, 4, 0x3000, 2).getUint16(0, true), 0xabcd, 'a mapped register in the fourth piece');
  t.equal(reg.read(), 0xabcd);
  t.throws(() => Bar.open(dev, U.VFIO_PCI_BAR0_REGION_INDEX, { pieceSize: 100 }), /piece size 100 must be a multiple of 4096/);
  t.same(mapsWithin(bar.va, 16 * KB).map(([a, b]) => [a, b]), [[0, 16 * KB]], 'still one mapping: only the views are in pieces');
});

t.test('a 6 GiB sparse BAR: mapped in 4 GiB view pieces, pages straddling 4 GiB reached through both', async (t) => {
  const GiB = 2 ** 30, FOUR = 4 * GiB;
  // the memfd is sparse: only the pages the test touches take memory
  const dev = new MemfdVfioDevice('0000:02:00.0', [
    { index: U.VFIO_PCI_BAR0_REGION_INDEX, size: 6 * GiB, flags: RWM, sparse: [{ offset: 0, size: 0x1000 }, { offset: FOUR - 0x1000, size: 0x2000 }] },
  ]);
  t.teardown(() => dev.close());
  const bar = Bar.open(dev, U.VFIO_PCI_BAR0_REGION_INDEX);
  t.teardown(() => bar.close());
  t.equal(bar.size, 6 * GiB, 'opened, not refused');
  t.same(mapsWithin(bar.va, 6 * GiB).filter(([, , p]) => p.startsWith('rw')).map(([a, b]) => [a, b]), [[0, 0x1000], [FOUR - 0x1000, FOUR + 0x1000]], 'only the sparse areas are mapped');
  bar.write64(FOUR - 8, 0x0102030405060708n);
  bar.write64(FOUR, 0x1112131415161718n);
  t.equal(peek(dev, 0, FOUR - 8, 8).getBigUint64(0, true), 0x0102030405060708n, 'last word of the first piece');
  t.equal(peek(dev, 0, FOUR, 8).getBigUint64(0, true), 0x1112131415161718n, 'first word of the second piece');
  t.same(bar.read(FOUR - 4, 8), Uint8Array.of(4, 3, 2, 1, 0x18, 0x17, 0x16, 0x15), 'a read across the piece boundary');
  const mb = new MappedBar(structuredClone(bar.data()));
  t.equal(mb.reg(FOUR + 4, 4, true).read(), 0x11121314, 'a worker register past 4 GiB, through the second piece');
  poke(dev, 0, 5 * GiB + 3, Uint8Array.of(9, 8, 7));
  t.same(bar.read(5 * GiB + 2, 5), Uint8Array.of(0, 9, 8, 7, 0), 'past 4 GiB outside the mapping: pread');
  const io = spyRegionIo(dev, U.VFIO_PCI_BAR0_REGION_INDEX);
  const span = Uint8Array.from({ length: 0x2010 }, (_, i) => (i * 7) & 0xff);
  bar.write(FOUR - 0x1008, span);
  t.same(io.writes, [[FOUR - 0x1008, 8], [FOUR + 0x1000, 8]], 'pwrite for the 8 bytes either side of the mapped pages only');
  t.same(Buffer.from(new Uint8Array(peek(dev, 0, FOUR - 0x1008, 0x2010).buffer)), Buffer.from(span), 'the backing holds the span');
  t.same(Buffer.from(bar.read(FOUR - 0x1008, 0x2010)), Buffer.from(span), 'and reads back through both paths');
  t.throws(() => bar.read(6 * GiB - 2, 4), /0000:02:00.0 BAR0: 4-byte read at 0x17ffffffe is outside the BAR \(size 0x180000000\)/);
});

t.test('IRQs with real eventfds, reset, DMA through the DmaSpace, close', async (t) => {
  const dma = new RecordingDma();
  const dev = device(t, dma);
  const msix = dev.irqInfo(U.VFIO_PCI_MSIX_IRQ_INDEX);
  t.same(msix, { index: 2, flags: U.VFIO_IRQ_INFO_EVENTFD | U.VFIO_IRQ_INFO_NORESIZE, count: 8, eventfd: true, maskable: false, automasked: false, noresize: true });
  const intx = dev.irqInfo(U.VFIO_PCI_INTX_IRQ_INDEX);
  t.ok(intx.maskable && intx.automasked);
  const efds = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)];
  t.teardown(() => efds.forEach((fd) => os.close(fd)));
  dev.setIrqs(U.VFIO_PCI_MSIX_IRQ_INDEX, 0, [efds[0], -1, efds[1]]);
  dev.unmaskIrq(U.VFIO_PCI_INTX_IRQ_INDEX, 0);
  dev.disableIrqs(U.VFIO_PCI_MSIX_IRQ_INDEX);
  t.same(dev.irqSets, [
    { index: 2, start: 0, count: 3, flags: U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, fds: [efds[0], -1, efds[1]] },
    { index: 0, start: 0, count: 1, flags: U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_UNMASK, fds: [] },
    { index: 2, start: 0, count: 0, flags: U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER, fds: [] },
  ], 'SET_IRQS payloads in the kernel layout');
  t.throws(() => dev.setIrqs(U.VFIO_PCI_MSI_IRQ_INDEX, 0, efds), /MSI has 1 vector\(s\); cannot set 2 from 0/);
  t.throws(() => dev.irqInfo(7), /0000:01:00.0 \(fake\): VFIO_DEVICE_GET_IRQ_INFO\(IRQ index 7\) failed: EINVAL/);
  dev.reset();
  t.equal(dev.resets, 1);
  dev.dmaMap(0x7f0000000000n, 0x7f0000000000n, 2 * 2 ** 20);
  dev.dmaUnmap(0x7f0000000000n, 2 * 2 ** 20);
  t.same(dma.maps, [{ va: 0x7f0000000000n, iova: 0x7f0000000000n, len: 2 * 2 ** 20 }]);
  t.same(dma.unmaps, [{ iova: 0x7f0000000000n, len: 2 * 2 ** 20 }]);
  const fd = dev.fd;
  dev.close();
  t.throws(() => os.pread(fd, new Uint8Array(1), 1, 0), /EBADF/, 'close() closed the device fd');
  t.throws(() => dev.info(), /0000:01:00.0: the VFIO device is closed/);
  dev.close();
});
