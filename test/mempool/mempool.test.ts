/**
 * lib/mempool: pools with and without per-lcore caches, exact audits, exhaustion without loss,
 * argument errors, every mbuf operation with exact values, and a worker lcore's hot path
 * (mbuf alloc/free and ring bursts) that runs millions of bursts without a single GC.
 */
import t from 'tap';
import { Eal } from '../../src/eal.js';
import { getAffinity } from '../../src/os/libc.js';
import { lcoreId, setLcoreId, LCORE_ID_ANY } from '../../src/lcore/id.js';
import { siblingModule } from '../../src/lcore/module.js';
import { ALLOC_RULE, assertNoAlloc } from '../alloc.js';
import { Mempool, poolOf, HANDLE_INDEX_MASK, MEMPOOL_MAX_OBJECTS } from '../../lib/mempool/mempool.js';
import * as mb from '../../lib/mempool/mbuf.js';
import { Ring } from '../../lib/ring/ring.js';
import { MbufView, macWords } from '../../lib/mempool/mbuf_view.js';
import { MbufOff } from '../../lib/mempool/mbuf_layout.js';

const mv = new MbufView();
import type { HotPathArg, HotPathResult } from './mempool-workers.js';

const WORKERS = siblingModule(import.meta.url, 'mempool-workers');
const cpus = getAffinity();
// main lcore 0 on the first CPU, worker lcore 1 on the last (the other one on this 2-vCPU machine)
const eal = new Eal({ noHuge: true, filePrefix: `tsp${process.pid}m`, lcores: [{ id: 0, cpu: cpus[0] }, { id: 1, cpu: cpus[cpus.length - 1] }], mainLcore: 0 });
t.teardown(() => eal.close());
const mem = eal.memory;
let seq = 0;
const pname = (s: string) => `tsp_${s}_${process.pid}_${seq++}`;

/** tap's test object, as a test callback receives it. */
type TT = Parameters<Parameters<typeof t.test>[0]>[0];

/**
 * A test whose pools must each end with every object back (checked after flushing this lcore's
 * cache); their memzones are freed in teardown, also when the test fails.
 */
function poolTest(name: string, fn: (t: TT, track: (p: Mempool) => Mempool) => Promise<void>): void {
  t.test(name, async (t) => {
    const pools: Mempool[] = [];
    t.teardown(() => {
      for (const p of pools) try { mem.free(p.zone.name); } catch { /* already freed */ }
    });
    await fn(t, (p) => { pools.push(p); return p; });
    for (const p of pools) {
      p.flushCache();
      t.same(p.audit(), { size: p.size, available: p.size, inUse: 0 }, `${p.name}: every object is back, inUse 0`);
    }
  });
}

/** Take every object the ring holds with no lcore cache involved; returns how many. */
function drainCount(pool: Mempool): number {
  const was = lcoreId();
  setLcoreId(LCORE_ID_ANY);
  try {
    const all = new Uint32Array(pool.size);
    let n = pool.size;
    while (n > 0 && !pool.allocBulk(all, n)) n--;
    pool.freeBulk(all, n);
    return n;
  } finally {
    setLcoreId(was);
  }
}

poolTest('pool without cache: alloc, free, audit, exhaustion', async (t, track) => {
  t.equal(lcoreId(), 0, 'the main thread is lcore 0');
  const pool = track(Mempool.create(mem, pname('nc'), 100, 100));
  t.equal(pool.size, 100);
  t.equal(pool.objSize, 128, 'object size rounded up to the 64-byte alignment');
  t.equal(pool.cacheSize, 0);
  t.equal(pool.zone.name, `mp_${pool.name}`, 'lives in a memzone named after it');
  t.same(mem.lookup(`mp_${pool.name}`), pool.zone);
  t.same(pool.audit(), { size: 100, available: 100, inUse: 0 });

  const handles: number[] = [];
  for (let i = 0; i < 100; i++) handles.push(pool.alloc());
  t.equal(new Set(handles).size, 100, '100 distinct handles');
  t.ok(handles.every((h) => h >>> 24 === pool.id), 'the top 8 bits name the pool');
  t.same(handles.map((h) => h & HANDLE_INDEX_MASK).sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => i), 'indices 0..99');
  t.ok(handles.every((h) => poolOf(h) === pool), 'poolOf finds the pool');
  t.ok(handles.every((h) => (pool.zone.va + BigInt(pool.offsetOf(h))) % 64n === 0n), 'objects are 64-byte aligned in memory');
  t.same(pool.audit(), { size: 100, available: 0, inUse: 100 });
  // objects do not overlap: fill each with its index, read back
  for (const h of handles) pool.u8.fill(h & 0xff, pool.offsetOf(h), pool.offsetOf(h) + pool.objSize);
  t.ok(handles.every((h) => pool.u8.subarray(pool.offsetOf(h), pool.offsetOf(h) + pool.objSize).every((b) => b === (h & 0xff))), 'objects are disjoint');

  t.equal(pool.alloc(), -1, 'empty pool: alloc -1');
  const out = new Uint32Array(4).fill(7);
  t.equal(pool.allocBulk(out, 1), false, 'empty pool: allocBulk false');
  t.same([...out], [7, 7, 7, 7], 'output untouched');
  t.same(pool.audit(), { size: 100, available: 0, inUse: 100 }, 'nothing lost by the failures');
  for (const h of handles) pool.free(h);
  t.same(pool.audit(), { size: 100, available: 100, inUse: 0 });

  const a = new Uint32Array(60), b = new Uint32Array(60);
  t.ok(pool.allocBulk(a, 50));
  t.notOk(pool.allocBulk(b, 51), 'bulk of 51 with 50 left: none');
  t.same(pool.audit(), { size: 100, available: 50, inUse: 50 }, 'the failed bulk took nothing');
  t.ok(pool.allocBulk(b, 50, 10), 'exactly the rest, at an offset');
  t.same(pool.audit(), { size: 100, available: 0, inUse: 100 });
  t.equal(new Set([...a.subarray(0, 50), ...b.subarray(10, 60)]).size, 100, 'all distinct');
  pool.freeBulk(a, 50);
  pool.freeBulk(b, 50, 10);
  t.equal(drainCount(pool), 100, 'all 100 back in the ring');
});

poolTest('pool with a per-lcore cache: audits stay exact', async (t, track) => {
  const pool = track(Mempool.create(mem, pname('c'), 1000, 64, { cacheSize: 32 }));
  t.equal(pool.cacheSize, 32);
  const h = pool.alloc();
  t.same(pool.audit(), { size: 1000, available: 999, inUse: 1 }, 'cached objects count as available');
  pool.free(h);
  t.equal(pool.alloc(), h, 'the cache is a stack: the object just freed comes back first');
  pool.free(h);
  t.same(pool.audit(), { size: 1000, available: 1000, inUse: 0 });

  const big = new Uint32Array(200);
  t.ok(pool.allocBulk(big, 40), 'bulk larger than the cache (straight from the ring)');
  t.same(pool.audit(), { size: 1000, available: 960, inUse: 40 });
  pool.freeBulk(big, 40); // into the cache, which overflows its flush threshold and spills
  t.same(pool.audit(), { size: 1000, available: 1000, inUse: 0 });
  t.ok(pool.allocBulk(big, 200));
  t.same(pool.audit(), { size: 1000, available: 800, inUse: 200 });
  pool.freeBulk(big, 200); // more than the flush threshold: straight to the ring
  t.same(pool.audit(), { size: 1000, available: 1000, inUse: 0 });
  // many single frees cross the flush threshold repeatedly
  const singles: number[] = [];
  for (let i = 0; i < 300; i++) singles.push(pool.alloc());
  t.equal(new Set(singles).size, 300);
  t.same(pool.audit(), { size: 1000, available: 700, inUse: 300 });
  for (const x of singles) pool.free(x);
  t.same(pool.audit(), { size: 1000, available: 1000, inUse: 0 });

  // another lcore has its own cache; both are counted
  t.teardown(() => setLcoreId(0));
  setLcoreId(5);
  const o5 = new Uint32Array(10);
  t.ok(pool.allocBulk(o5, 10));
  setLcoreId(0);
  const o0 = new Uint32Array(10);
  t.ok(pool.allocBulk(o0, 10));
  t.same(pool.audit(), { size: 1000, available: 980, inUse: 20 });
  t.equal(new Set([...o5, ...o0]).size, 20, 'two lcores never get the same object');
  pool.freeBulk(o0, 10);
  setLcoreId(5);
  pool.freeBulk(o5, 10);
  t.ok(drainCount(pool) < 1000, 'before flushing, lcore caches hold objects the ring does not');
  pool.flushCache();
  setLcoreId(0);
  pool.flushCache();
  t.equal(drainCount(pool), 1000, 'after flushing both lcores, the ring holds all 1000');
  t.same(pool.audit(), { size: 1000, available: 1000, inUse: 0 });
});

poolTest('exhausted cached pool: failures take nothing', async (t, track) => {
  const pool = track(Mempool.create(mem, pname('ex'), 64, 64, { cacheSize: 32 }));
  const got: number[] = [];
  for (let h = pool.alloc(); h !== -1; h = pool.alloc()) got.push(h);
  t.equal(got.length, 64, 'single allocs get every object, cached ones included');
  t.equal(new Set(got).size, 64);
  const out = new Uint32Array(8).fill(0xabcdef);
  t.notOk(pool.allocBulk(out, 4), 'allocBulk false');
  t.notOk(pool.allocBulk(out, 1));
  t.ok(out.every((v) => v === 0xabcdef), 'output untouched');
  t.same(pool.audit(), { size: 64, available: 0, inUse: 64 });
  for (const h of got) pool.free(h);
  t.same(pool.audit(), { size: 64, available: 64, inUse: 0 });
  pool.flushCache();
  t.equal(drainCount(pool), 64);

  const mp = track(mb.pktmbufPoolCreate(mem, pname('mbex'), 16, { cacheSize: 0 }));
  const ms: number[] = [];
  for (let m = mb.pktmbufAlloc(mp); m !== -1; m = mb.pktmbufAlloc(mp)) ms.push(m);
  t.equal(ms.length, 16);
  t.equal(mb.pktmbufAlloc(mp), -1, 'pktmbufAlloc -1 when empty');
  const burst = new Uint32Array(4);
  t.notOk(mb.pktmbufAllocBulk(mp, burst, 4), 'pktmbufAllocBulk false when empty');
  t.same(mp.audit(), { size: 16, available: 0, inUse: 16 });
  for (const m of ms) mb.pktmbufFree(m);
  t.same(mp.audit(), { size: 16, available: 16, inUse: 0 });
});

poolTest('MbufView.setMacWordsBurst writes what setMacWords writes, across pools and off alignment', async (t, track) => {
  const a = track(mb.pktmbufPoolCreate(mem, pname('maca'), 16, { cacheSize: 0 }));
  const b = track(mb.pktmbufPoolCreate(mem, pname('macb'), 16, { cacheSize: 0 }));
  const dst = [2, 0, 0, 0, 0, 1], src = [2, 0, 0, 0, 0, 2];
  const [w0, w1, w2] = macWords(dst, src);
  // a, a, b, a (pools change twice); the third of a's has its data moved off 4-byte alignment
  const ms = Uint32Array.of(0xffffffff, mb.pktmbufAlloc(a), mb.pktmbufAlloc(a), mb.pktmbufAlloc(b), mb.pktmbufAlloc(a));
  const frame = new Uint8Array(60).fill(0xee);
  for (let i = 1; i < ms.length; i++) t.ok(mb.writePacket(ms[i], frame));
  t.ok(mv.at(ms[4]).prepend(1) >= 0, 'one byte prepended: data at an odd offset');
  const v = new MbufView();
  v.setMacWordsBurst(ms, 1, 4, w0, w1, w2);
  t.equal(v.m, ms[4], 'the view is left at the last packet');
  const out = new Uint8Array(61);
  for (let i = 1; i < ms.length; i++) {
    const n = mb.readPacket(ms[i], out);
    t.same([...out.subarray(0, 12)], [...dst, ...src], `packet ${i}: destination then source`);
    t.equal(out[12], 0xee, `packet ${i}: the byte after the addresses untouched`);
    t.equal(n, i === 4 ? 61 : 60);
  }
  t.equal(ms[0], 0xffffffff, 'nothing before off read or written');
  v.setMacWordsBurst(ms, 1, 0, 0, 0, 0);
  for (let i = 1; i < ms.length; i++) mb.pktmbufFree(ms[i]);
});

poolTest('MbufView reads and writes the header fields at the offsets mbuf_layout.ts defines', async (t, track) => {
  const pool = track(mb.pktmbufPoolCreate(mem, pname('view'), 16, { cacheSize: 0 }));
  const m = mb.pktmbufAlloc(pool);
  const v = new MbufView().at(m);
  const o = v.off, u16 = v.u16, u32 = v.u32;
  t.equal(o, pool.offsetOf(m), 'off is the pool offset of the handle');
  // raw writes at mbuf.ts offsets, read back through the view
  u32[(o + MbufOff.PktLen) >> 2] = 1111;
  u16[(o + MbufOff.DataLen) >> 1] = 222;
  u16[(o + MbufOff.DataOff) >> 1] = 100;
  u16[(o + MbufOff.NbSegs) >> 1] = 3;
  u16[(o + MbufOff.Refcnt) >> 1] = 2;
  u16[(o + MbufOff.Port) >> 1] = 7;
  u32[(o + MbufOff.Next) >> 2] = 0x01000005;
  u32[(o + MbufOff.Hash) >> 2] = 0xdeadbeef;
  t.same([v.pktLen, v.dataLen, v.dataOff, v.nbSegs, v.refcnt, v.port, v.next, v.hash], [1111, 222, 100, 3, 2, 7, 0x01000005, 0xdeadbeef]);
  t.equal(v.data, o + mb.MBUF_HDR + 100, 'data = header + data offset');
  t.equal(v.bufLen, u16[(o + MbufOff.BufLen) >> 1], 'bufLen');
  t.equal(v.bufIovaLo, u32[(o + MbufOff.BufIova) >> 2], 'IOVA low word');
  // writes through the view land at mbuf.ts offsets
  v.setLen(60);
  v.dataOff = 128;
  v.port = 9;
  v.next = mb.MBUF_NONE;
  v.nbSegs = 1;
  v.hash = 42;
  t.same([u32[(o + MbufOff.PktLen) >> 2], u16[(o + MbufOff.DataLen) >> 1], u16[(o + MbufOff.DataOff) >> 1], u16[(o + MbufOff.Port) >> 1], u32[(o + MbufOff.Next) >> 2], u16[(o + MbufOff.NbSegs) >> 1], u32[(o + MbufOff.Hash) >> 2]],
    [60, 60, 128, 9, mb.MBUF_NONE, 1, 42]);
  u16[(o + MbufOff.Refcnt) >> 1] = 1;
  mb.pktmbufFree(m);
});

poolTest('bad counts, sizes and cache sizes', async (t, track) => {
  const n = 'tsp_bad';
  for (const count of [0, -1, 1.5, NaN, MEMPOOL_MAX_OBJECTS]) {
    t.throws(() => Mempool.create(mem, n, count, 64), { name: 'RangeError', message: `mempool "${n}": object count ${count} must be 1..16777215` }, `count ${count}`);
  }
  for (const size of [0, 3, 1.5, 2 ** 20 + 1]) {
    t.throws(() => Mempool.create(mem, n, 10, size), { name: 'RangeError', message: `mempool "${n}": object size ${size} must be 4..1048576 bytes` }, `size ${size}`);
  }
  for (const cacheSize of [-1, 513, 1.5]) {
    t.throws(() => Mempool.create(mem, n, 1000, 64, { cacheSize }), { name: 'RangeError', message: `mempool "${n}": cache size ${cacheSize} must be 0..512 and at most count/1.5 (666)` }, `cache ${cacheSize}`);
  }
  t.throws(() => Mempool.create(mem, n, 10, 64, { cacheSize: 7 }), { message: /cache size 7 must be 0\.\.512 and at most count\/1\.5 \(6\)/ });
  t.equal(mem.lookup(`mp_${n}`), undefined, 'failed creates leave no memzone');

  for (const headroom of [-1, 1025, 0.5]) {
    t.throws(() => mb.pktmbufPoolCreate(mem, n, 16, { headroom }), { name: 'RangeError', message: `mbuf pool "${n}": headroom ${headroom} must be 0..1024` });
  }
  for (const dataRoom of [63, 0xffff - 128 + 1, 100.5]) {
    t.throws(() => mb.pktmbufPoolCreate(mem, n, 16, { dataRoom }), { name: 'RangeError', message: `mbuf pool "${n}": data room ${dataRoom} must be 64..65407` });
  }
  t.throws(() => mb.pktmbufPoolCreate(mem, n, 16, { headroom: 1024, dataRoom: 0xffff - 1000 }), { message: `mbuf pool "${n}": data room ${0xffff - 1000} must be 64..64511` });

  const name = pname('dup');
  const p = track(Mempool.create(mem, name, 10, 64));
  t.throws(() => Mempool.create(mem, name, 10, 64), { message: `memzone "mp_${name}" already exists; names must be unique (look it up instead)` });
  t.same(p.audit(), { size: 10, available: 10, inUse: 0 }, 'the first pool is unharmed');
  const z = mem.reserve(pname('notpool'), 4096);
  t.teardown(() => mem.free(z.name));
  t.throws(() => Mempool.attach({ name: 'tsp_np', zone: z }), { message: `mempool "tsp_np": memzone "${z.name}" holds no mempool (bad magic)` });
  t.equal(Mempool.attach(p.desc), p, 'attach in the creating thread returns the same pool');
  t.same(structuredClone(p.desc), p.desc, 'the descriptor is plain data');
});

poolTest('mbuf operations, exact values', async (t, track) => {
  const pool = track(mb.pktmbufPoolCreate(mem, pname('mb'), 63));
  t.equal(pool.cacheSize, 42, 'default cache: min(256, n/1.5)');
  t.equal(mb.pktmbufHeadroom(pool), 128);
  t.equal(mb.pktmbufDataRoom(pool), 2048);
  t.equal(pool.objSize, 64 + 128 + 2048);

  const m = mb.pktmbufAlloc(pool);
  t.not(m, -1);
  const o = pool.offsetOf(m);
  t.equal(mv.at(m).dataLen, 0);
  t.equal(mv.at(m).pktLen, 0);
  t.equal(mv.at(m).dataOff, 128);
  t.equal(mv.at(m).headroom, 128);
  t.equal(mv.at(m).tailroom, 2048);
  t.equal(mv.at(m).refcnt, 1);
  t.equal(mv.at(m).nbSegs, 1);
  t.equal(mv.at(m).next, mb.MBUF_NONE);
  t.equal(mb.lastSeg(m), m);
  t.equal(mv.at(m).port, 0xffff, 'no input port yet');
  t.equal(mv.at(m).data, o + MbufOff.Buf + 128, 'data starts after header and headroom');
  t.equal(BigInt(mv.at(m).dataIova), pool.zone.iova + BigInt(o + MbufOff.Buf + 128), 'data IOVA (va mode: its address)');
  t.equal(pool.dv.getBigUint64(o + MbufOff.BufIova, true), pool.zone.va + BigInt(o + MbufOff.Buf), 'buf_iova is the buffer start');
  t.equal(pool.u16[(o + MbufOff.BufLen) >> 1], 2176);

  // append
  const at = mb.append(m, 100);
  t.equal(at, o + MbufOff.Buf + 128, 'append returns where the new bytes go');
  t.equal(mv.at(m).dataLen, 100);
  t.equal(mv.at(m).pktLen, 100);
  t.equal(mv.at(m).tailroom, 1948);
  t.equal(mb.append(m, 1949), -1, 'no room: -1');
  t.equal(mb.append(m, -1), -1);
  t.equal(mv.at(m).dataLen, 100, 'failed append changed nothing');
  for (let i = 0; i < 100; i++) pool.u8[at + i] = i;
  // prepend
  const front = mv.at(m).prepend(14);
  t.equal(front, o + MbufOff.Buf + 114);
  t.equal(mv.at(m).data, front);
  t.equal(mv.at(m).dataOff, 114);
  t.equal(mv.at(m).dataLen, 114);
  t.equal(mv.at(m).pktLen, 114);
  t.equal(mv.at(m).headroom, 114);
  t.equal(mv.at(m).tailroom, 1948, 'prepend does not touch the tail');
  t.equal(mv.at(m).prepend(115), -1, 'more than the headroom: -1');
  t.equal(mv.at(m).prepend(-1), -1);
  pool.u8.fill(0xee, front, front + 14);
  const pkt = new Uint8Array(200);
  t.equal(mb.readPacket(m, pkt), 114);
  t.same([...pkt.subarray(0, 16)], [...new Array(14).fill(0xee), 0, 1], 'readPacket: prepended bytes then the data');
  // adj and trim
  t.ok(mv.at(m).adj(14));
  t.equal(mv.at(m).dataOff, 128);
  t.equal(mv.at(m).dataLen, 100);
  t.equal(mv.at(m).pktLen, 100);
  t.equal(pool.u8[mv.at(m).data], 0, 'adj moved the start past the prepended bytes');
  t.notOk(mv.at(m).adj(101), 'adj more than the data: false');
  t.notOk(mv.at(m).adj(-1));
  t.ok(mb.trim(m, 10));
  t.equal(mv.at(m).dataLen, 90);
  t.equal(mv.at(m).pktLen, 90);
  t.equal(mv.at(m).tailroom, 1958);
  t.notOk(mb.trim(m, 91), 'trim more than the data: false');
  t.equal(mb.readPacket(m, pkt), 90);
  t.same([...pkt.subarray(0, 90)], Array.from({ length: 90 }, (_, i) => i));
  // setLen, port
  mv.at(m).setLen(60);
  t.equal(mv.at(m).dataLen, 60);
  t.equal(mv.at(m).pktLen, 60);
  mv.at(m).port = 3;
  t.equal(mv.at(m).port, 3);

  // writePacket
  const src = Uint8Array.from({ length: 300 }, (_, i) => (i * 5) & 0xff);
  t.ok(mb.writePacket(m, src));
  t.equal(mv.at(m).dataLen, 300);
  t.equal(mv.at(m).pktLen, 300);
  const back = new Uint8Array(400);
  t.equal(mb.readPacket(m, back), 300);
  t.same(back.subarray(0, 300), src);
  t.ok(mb.writePacket(m, src, 64), 'a prefix of src');
  t.equal(mv.at(m).pktLen, 64);
  t.equal(mb.readPacket(m, back), 64);
  t.same(back.subarray(0, 64), src.subarray(0, 64));
  t.notOk(mb.writePacket(m, new Uint8Array(2049)), 'longer than buf_len - data_off: false');
  t.equal(mv.at(m).pktLen, 64, 'failed write changed nothing');
  t.ok(mb.writePacket(m, new Uint8Array(2048).fill(9)), 'exactly the data room fits');
  t.equal(mv.at(m).tailroom, 0);
  t.equal(mb.append(m, 1), -1);
  t.equal(mb.readPacket(m, new Uint8Array(10)), 10, 'readPacket stops at the destination size');

  // chain
  const m2 = mb.pktmbufAlloc(pool);
  const m3 = mb.pktmbufAlloc(pool);
  mb.writePacket(m, Uint8Array.from({ length: 100 }, (_, i) => i));
  mb.writePacket(m2, Uint8Array.from({ length: 50 }, (_, i) => 100 + i));
  mb.writePacket(m3, Uint8Array.from({ length: 30 }, (_, i) => 150 + i));
  t.ok(mb.chain(m2, m3), 'm2 -> m3');
  t.equal(mv.at(m2).nbSegs, 2);
  t.equal(mv.at(m2).pktLen, 80);
  t.ok(mb.chain(m, m2), 'm -> (m2 -> m3)');
  t.equal(mv.at(m).nbSegs, 3);
  t.equal(mv.at(m).pktLen, 180);
  t.equal(mv.at(m).dataLen, 100, 'data length is per segment');
  t.equal(mv.at(m).next, m2);
  t.equal(mv.at(m2).next, m3);
  t.equal(mb.lastSeg(m), m3);
  t.equal(mb.readPacket(m, back), 180);
  t.same([...back.subarray(0, 180)], Array.from({ length: 180 }, (_, i) => i), 'readPacket walks the chain');
  t.equal(mb.readPacket(m, new Uint8Array(120)), 120, 'and stops at the destination size');
  const tailAt = mb.append(m, 10);
  t.equal(tailAt, mv.at(m3).data + 30, 'append grows the last segment');
  t.equal(mv.at(m3).dataLen, 40);
  t.equal(mv.at(m).dataLen, 100);
  t.equal(mv.at(m).pktLen, 190);
  t.ok(mb.trim(m, 15), 'trim shrinks the last segment');
  t.equal(mv.at(m3).dataLen, 25);
  t.equal(mv.at(m).pktLen, 175);
  t.notOk(mb.trim(m, 26), 'not more than the last segment holds');
  t.same(pool.audit(), { size: 63, available: 60, inUse: 3 });
  mb.pktmbufFree(m);
  t.same(pool.audit(), { size: 63, available: 63, inUse: 0 }, 'freeing the head frees the chain');

  // refcnt
  const r = mb.pktmbufAlloc(pool);
  t.equal(mb.refcntUpdate(r, 1), 2);
  t.equal(mv.at(r).refcnt, 2);
  mb.pktmbufFree(r);
  t.equal(mv.at(r).refcnt, 1, 'a free drops one reference');
  t.equal(pool.inUseCount(), 1, 'still in use while referenced');
  t.throws(() => mb.refcntUpdate(r, -1), { name: 'RangeError', message: `mbuf 0x${r.toString(16)}: refcnt 1 + -1 is out of range` });
  t.throws(() => mb.refcntUpdate(r, 0xffff), { name: 'RangeError', message: /refcnt 1 \+ 65535 is out of range/ });
  mb.pktmbufFree(r);
  t.equal(pool.inUseCount(), 0, 'the last reference frees it');

  // a freed mbuf comes back reset, whatever was done to it
  const d = mb.pktmbufAlloc(pool);
  mv.at(d).prepend(20);
  mb.append(d, 500);
  mv.at(d).port = 9;
  pool.u32[(pool.offsetOf(d) + MbufOff.OlFlags) >> 2] = 0xffff;
  mb.pktmbufFree(d);
  const d2 = mb.pktmbufAlloc(pool);
  t.equal(d2, d, 'same object (cache LIFO)');
  t.same([mv.at(d2).dataOff, mv.at(d2).dataLen, mv.at(d2).pktLen, mv.at(d2).port, mv.at(d2).nbSegs, mv.at(d2).next, mv.at(d2).refcnt],
    [128, 0, 0, 0xffff, 1, mb.MBUF_NONE, 1], 'allocated mbufs are reset');
  t.equal(pool.u32[(pool.offsetOf(d2) + MbufOff.OlFlags) >> 2], 0, 'offload flags cleared');
  mb.pktmbufFree(d2);

  // bulk alloc/free with a chain and a shared mbuf among simple ones
  const burst = new Uint32Array(8);
  t.ok(mb.pktmbufAllocBulk(pool, burst, 8));
  t.equal(new Set(burst).size, 8);
  t.ok([...burst].every((x) => mv.at(x).dataOff === 128 && mv.at(x).refcnt === 1 && mv.at(x).nbSegs === 1));
  for (let i = 0; i < 8; i++) mv.at(burst[i]).setLen(60 + i);
  // all simple: the fast path, which also sums the packet bytes
  t.equal(mb.pktmbufFreeBulk(burst, 8), 8 * 60 + 28, 'pktmbufFreeBulk returns the packets\' bytes');
  t.equal(pool.inUseCount(), 0);
  t.ok(mb.pktmbufAllocBulk(pool, burst, 8));
  for (let i = 0; i < 8; i++) mv.at(burst[i]).setLen(100);
  const extra = mb.pktmbufAlloc(pool);
  mv.at(extra).setLen(7);
  mb.chain(burst[2], extra);
  mb.refcntUpdate(burst[5], 1);
  t.equal(pool.inUseCount(), 9);
  t.equal(mb.pktmbufFreeBulk(burst, 8), 807, 'mixed burst: bytes of every packet, chains whole');
  t.equal(pool.inUseCount(), 1, 'the chain went whole, the shared mbuf kept one reference');
  t.equal(mv.at(burst[5]).refcnt, 1);
  mb.pktmbufFree(burst[5]);
  t.equal(pool.inUseCount(), 0);
  mb.pktmbufFreeBulk(burst, 0);

  // custom geometry
  const small = track(mb.pktmbufPoolCreate(mem, pname('geo'), 16, { headroom: 0, dataRoom: 64, cacheSize: 0 }));
  const s = mb.pktmbufAlloc(small);
  t.equal(mv.at(s).headroom, 0);
  t.equal(mv.at(s).tailroom, 64);
  t.equal(mv.at(s).prepend(1), -1, 'no headroom: prepend fails');
  t.equal(small.objSize, 128);
  mb.pktmbufFree(s);
});

poolTest('worker lcore hot path: millions of bursts, zero GCs', async (t, track) => {
  const pool = track(mb.pktmbufPoolCreate(mem, pname('hot'), 4095, { cacheSize: 256 }));
  const ring = Ring.create(pname('hotring'), 1024, { sp: true, sc: true });
  const rule = { ...ALLOC_RULE, warmOps: 100_000, windowOps: 1_000_000 }; // in bursts of 32
  const arg: HotPathArg = { pool: pool.desc, ring: ring.desc, rule, allocate: false };
  const timer = setTimeout(() => eal.lcores.requestStop(), 120_000);
  t.teardown(() => clearTimeout(timer));
  const r = await eal.lcores.launch<HotPathResult>(1, WORKERS, 'hotPath', arg);
  t.comment(`mbuf alloc+free burst of 32: ${((r.mbuf.ms * 1e6) / (r.mbuf.ops * 32)).toFixed(1)} ns per mbuf; ring enqueue+dequeue burst of 32: ${((r.ring.ms * 1e6) / (r.ring.ops * 32)).toFixed(2)} ns per entry`);
  t.equal(r.lcore, 1, 'ran as lcore 1 (its own cache)');
  t.equal(r.failures, 0, 'every burst succeeded');
  t.not(r.checksum, 0, 'the loops did work');
  assertNoAlloc(t, r.mbuf, 'mbuf alloc + free bursts', rule);
  assertNoAlloc(t, r.ring, 'ring enqueue + dequeue bursts', rule);
  t.same(pool.audit(), { size: 4095, available: 4095, inUse: 0 }, 'nothing leaked');
  t.equal(drainCount(pool), 4095, 'the worker flushed its cache: the ring holds every object');
  t.equal(ring.count(), 0);

  // control: the same loop plus one copy per burst is caught by the same rule
  const ctl = await eal.lcores.launch<HotPathResult>(1, WORKERS, 'hotPath', { ...arg, allocate: true });
  const bound = rule.maxGrowth + ctl.mbuf.ops * rule.maxBytesPerOp;
  t.ok(ctl.mbuf.scavenges > 0 || ctl.mbuf.growth >= bound, `control: a loop that allocates per burst is caught (${ctl.mbuf.scavenges} scavenges in the window, young generation grew ${ctl.mbuf.growth} bytes)`);
  t.equal(ctl.failures, 0);
  t.equal(ctl.copied, 32, 'control: the copies were made');
  t.equal(r.copied, 0, 'the measured run made none');
  t.same(pool.audit(), { size: 4095, available: 4095, inUse: 0 });
});
