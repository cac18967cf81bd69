/**
 * DMA mapping of real EAL memory (memfd segments): every segment is mapped into every attached DMA
 * space, segments added later included; va mode maps each segment once at iova = va, pa mode maps
 * physically contiguous page runs at their physical addresses (root: /proc/self/pagemap);
 * detach stops the mapping and can unmap what was mapped.
 */
import t from 'tap';
import { Eal } from '../../src/eal.js';
import { DmaMemoryMap, segmentRuns } from '../../src/iommu/dma.js';
import type { DmaSpace } from '../../src/iommu/device.js';
import { RecordingDma } from './fake-vfio.js';

const MB = 2 ** 20;
const uniq = () => `tsp${process.pid}x${Math.random().toString(36).slice(2, 8)}`;

function eal(t: { teardown(fn: () => unknown): void }, iovaMode: 'va' | 'pa' = 'va'): Eal {
  const e = new Eal({ noHuge: true, filePrefix: uniq(), iovaMode, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => e.close());
  return e;
}

t.test('va mode: existing and later segments mapped into every space, once each', async (t) => {
  const e = eal(t);
  e.memory.reserve('tsp_first', 4096);
  t.equal(e.memory.segments.length, 1);
  const a = new RecordingDma(), b = new RecordingDma();
  const ma = new DmaMemoryMap(e.memory, a, 'space a');
  t.same(a.maps, [{ va: e.memory.segments[0].va, iova: e.memory.segments[0].va, len: e.memory.segments[0].len }], 'the existing segment, iova = va');
  const mb = new DmaMemoryMap(e.memory, b, 'space b');
  e.memory.reserve('tsp_big', 80 * MB); // does not fit the first 64 MB segment: a new one
  t.equal(e.memory.segments.length, 2, 'a second segment appeared');
  const s1 = e.memory.segments[1];
  for (const [name, sp] of [['a', a], ['b', b]] as const) {
    t.same(sp.maps.map((m) => m.va), e.memory.segments.map((s) => s.va), `space ${name}: both segments`);
    t.same(sp.maps[1], { va: s1.va, iova: s1.iova, len: s1.len });
  }
  t.same(ma.mappings().map((m) => m.len), e.memory.segments.map((s) => s.len));
  ma.detach(true);
  t.same(a.unmaps, a.maps.map((m) => ({ iova: m.iova, len: m.len })), 'detach(true) unmaps everything it mapped');
  e.memory.reserve('tsp_more', 100 * MB);
  t.equal(a.maps.length, 2, 'a detached space hears of no new segment');
  t.equal(b.maps.length, 3, 'the attached one does');
  mb.detach(false);
  t.same(b.unmaps, [], 'detach(false) leaves mappings to the container/IOAS close');
});

t.test('a failing map names the segment and the space', async (t) => {
  const e = eal(t);
  e.memory.reserve('tsp_x', 4096);
  const bad: DmaSpace = { dmaMap() { throw new Error('ENOMEM: locked memory'); }, dmaUnmap() {} };
  t.throws(() => new DmaMemoryMap(e.memory, bad, 'IOAS 2 (/dev/iommu)'),
    /DMA mapping of memory segment 0 \(va 0x[0-9a-f]+, iova 0x[0-9a-f]+, 67108864 bytes\) into IOAS 2 \(\/dev\/iommu\) failed: ENOMEM: locked memory/);
});

t.test('pa mode: physically contiguous page runs at their physical addresses', { skip: process.getuid?.() !== 0 ? 'pa mode needs root (/proc/self/pagemap)' : false }, async (t) => {
  const e = eal(t, 'pa');
  e.memory.reserve('tsp_pa', 4096);
  const seg = e.memory.segments[0];
  t.ok(seg.pageIovas && seg.pageIovas.length === seg.len / 4096, 'a physical address per page');
  const runs = segmentRuns(seg);
  t.equal(runs.reduce((n, r) => n + r.len, 0), seg.len, 'runs cover the segment');
  let page = 0, bad = 0, broken = 0;
  for (const r of runs) {
    if (r.va !== seg.va + BigInt(page * 4096)) bad++;
    for (let k = 0; k < r.len / 4096; k++) if (seg.pageIovas![page + k] !== r.iova + BigInt(k * 4096)) bad++;
    page += r.len / 4096;
  }
  for (let i = 0; i + 1 < runs.length; i++) if (runs[i].iova + BigInt(runs[i].len) === runs[i + 1].iova) broken++;
  t.equal(bad, 0, 'every page is at va/iova where its run says');
  t.equal(broken, 0, 'runs are maximal: no two neighbours could have been one');
  const sp = new RecordingDma();
  new DmaMemoryMap(e.memory, sp, 'pa space').detach(false);
  t.same(sp.maps, runs, 'mapped run by run');
  t.comment(`${seg.len / 4096} pages in ${runs.length} physically contiguous runs`);
});
