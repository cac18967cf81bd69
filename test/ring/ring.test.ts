/**
 * lib/ring: rte_ring semantics in one thread (bulk/burst, counts, out values, counter wrap),
 * placement in DMA memory, and real concurrency between pinned worker lcores: SP/SC in order,
 * MP/MC with every value delivered exactly once.
 */
import t from 'tap';
import { Ring, ringBytes, nextPow2, type RingFlags } from '../../lib/ring/ring.js';
import { Lcores } from '../../src/lcore/lcores.js';
import { siblingModule } from '../../src/lcore/module.js';
import { Eal } from '../../src/eal.js';
import { viewOf } from '../../src/os/libc.js';
import type { RingBulkArg, RingPipeArg, RingPipeResult } from '../../bench/ring-lcores.js';
import type { MpmcConsumerArg, MpmcConsumerResult } from './ring-workers.js';

const PIPE = new URL('../../bench/ring-lcores' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url).href;
const WORKERS = siblingModule(import.meta.url, 'ring-workers');
const name = (s: string) => `tsp_${s}_${process.pid}`;
const KINDS: Array<[string, RingFlags]> = [['sp/sc', { sp: true, sc: true }], ['mp/mc', {}], ['sp/mc', { sp: true }], ['mp/sc', { sc: true }]];

const seq = (from: number, n: number) => Uint32Array.from({ length: n }, (_, i) => from + i);

for (const [kind, flags] of KINDS) {
  t.test(`single thread, ${kind}: bulk all-or-nothing, burst partial, counts`, async (t) => {
    const r = Ring.create(name('st'), 8, flags);
    t.equal(r.size, 8);
    t.equal(r.sp, !!flags.sp);
    t.equal(r.sc, !!flags.sc);
    t.equal(r.count(), 0);
    t.equal(r.freeCount(), 8);
    t.equal(r.enqueueBulk(seq(100, 5), 5), 5);
    t.equal(r.lastFree, 3, 'lastFree after a bulk enqueue');
    t.equal(r.count(), 5);
    t.equal(r.enqueueBulk(seq(200, 4), 4), 0, 'bulk of 4 into 3 free: nothing');
    t.equal(r.lastFree, 3, 'lastFree says how much room there was');
    t.equal(r.count(), 5, 'nothing was added');
    t.equal(r.enqueueBurst(seq(105, 4), 4), 3, 'burst of 4 into 3 free: 3');
    t.equal(r.lastFree, 0);
    t.equal(r.count(), 8);
    t.equal(r.freeCount(), 0, 'every slot is usable');
    t.equal(r.enqueueBurst(seq(300, 1), 1), 0, 'full: burst takes nothing');
    t.notOk(r.enqueueOne(999), 'full: enqueueOne false');

    const out = new Uint32Array(16).fill(0xdead);
    t.equal(r.dequeueBulk(out, 9), 0, 'bulk of 9 from 8: nothing');
    t.equal(r.lastAvailable, 8);
    t.equal(out[0], 0xdead, 'output untouched on failure');
    t.equal(r.dequeueBulk(out, 3), 3);
    t.same([...out.subarray(0, 3)], [100, 101, 102], 'FIFO order');
    t.equal(r.lastAvailable, 5);
    t.equal(r.dequeueBurst(out, 16, 4), 5, 'burst gives what there is, at the offset');
    t.same([...out.subarray(4, 9)], [103, 104, 105, 106, 107]);
    t.equal(out[3], 0xdead, 'nothing written before the offset');
    t.equal(r.lastAvailable, 0);
    t.equal(r.dequeueBurst(out, 4), 0, 'empty: burst gives nothing');
    t.equal(r.dequeueOne(), -1, 'empty: dequeueOne -1');
    t.ok(r.enqueueOne(0xffffffff), 'full u32 range');
    t.equal(r.dequeueOne(), 0xffffffff);
    t.equal(r.enqueueBurst(seq(0, 4), 0), 0, 'zero entries is a no-op');
    t.equal(r.dequeueBulk(out, 0), 0);
    t.equal(r.count(), 0);
    // enqueue from an offset of the source
    const src = seq(500, 10);
    t.equal(r.enqueueBulk(src, 4, 6), 4);
    t.equal(r.dequeueBulk(out, 4), 4);
    t.same([...out.subarray(0, 4)], [506, 507, 508, 509]);
  });
}

t.test('lastFree/lastAvailable: exact for multi sides, never more than the truth for single sides', async (t) => {
  for (const [kind, flags] of KINDS) {
    const r = Ring.create(name('last'), 16, flags);
    const buf = new Uint32Array(16);
    let model = 0, wrong = 0, under = 0;
    // a fixed but irregular pattern of enqueues and dequeues
    for (let i = 0; i < 300; i++) {
      const n = (i * 7) % 11;
      if (i % 3 !== 2) {
        model += r.enqueueBurst(buf, n);
        const truth = 16 - model;
        // a single producer keeps a private copy of the consumer tail: its figure may lag (be low)
        if (flags.sp ? r.lastFree > truth || r.lastFree < 0 : r.lastFree !== truth) wrong++;
        if (r.lastFree < truth) under++;
      } else {
        model -= r.dequeueBurst(buf, n);
        if (flags.sc ? r.lastAvailable > model || r.lastAvailable < 0 : r.lastAvailable !== model) wrong++;
        if (r.lastAvailable < model) under++;
      }
      if (r.count() !== model) wrong++;
    }
    t.equal(wrong, 0, `${kind}: out values ${flags.sp || flags.sc ? 'within bounds' : 'exact'}, counts exact (${under} conservative)`);
  }
  // the single-side figure is a snapshot from the cached opposite tail
  const r = Ring.create(name('lag'), 8, { sp: true, sc: true });
  const buf = new Uint32Array(8);
  r.enqueueBulk(buf, 4);
  r.dequeueBulk(buf, 4);
  r.enqueueBulk(buf, 1);
  t.ok(r.lastFree >= 3 && r.lastFree <= 7, `sp: lastFree ${r.lastFree} is between the cached view (3) and the truth (7)`);
  t.equal(r.freeCount(), 7, 'freeCount() reads the real tails');
});

t.test('random operations agree with a model queue, on tiny rings, over many wraps', async (t) => {
  let rng = 12345;
  const rand = (n: number) => {
    rng = (Math.imul(rng, 1103515245) + 12345) >>> 0;
    return (rng >>> 8) % n;
  };
  for (const size of [1, 2, 4]) {
    for (const [kind, flags] of KINDS) {
      const r = Ring.create(name('rand'), size, flags);
      const model: number[] = [];
      let next = 0, bad = 0, ops = 0;
      const buf = new Uint32Array(size + 2);
      for (let i = 0; i < 20_000; i++) {
        const n = rand(size + 2);
        const op = rand(5);
        if (op < 2) {
          const bulk = op === 0;
          for (let k = 0; k < n; k++) buf[k] = next + k;
          const room = size - model.length;
          const want = bulk ? (n <= room ? n : 0) : Math.min(n, room);
          const got = bulk ? r.enqueueBulk(buf, n) : r.enqueueBurst(buf, n);
          if (got !== want) bad++;
          for (let k = 0; k < got; k++) model.push(next + k);
          next += got;
        } else if (op < 4) {
          const bulk = op === 2;
          const want = bulk ? (n <= model.length ? n : 0) : Math.min(n, model.length);
          const got = bulk ? r.dequeueBulk(buf, n) : r.dequeueBurst(buf, n);
          if (got !== want) bad++;
          for (let k = 0; k < got; k++) if (buf[k] !== model.shift()) bad++;
        } else {
          const v = r.dequeueOne();
          const m = model.length ? model.shift()! : -1;
          if (v !== m) bad++;
        }
        if (r.count() !== model.length) bad++;
        ops++;
      }
      t.equal(bad, 0, `size ${size}, ${kind}: ${ops} operations, ${next} entries through, no disagreement`);
    }
  }
});

t.test('u32 counters wrap: a ring whose counters are near 2^32 keeps working', async (t) => {
  for (const [kind, flags] of KINDS) {
    const r0 = Ring.create(name('wrap'), 64, flags);
    // Set all four counters just below 2^32 (words 32/33 prod head/tail, 64/65 cons head/tail),
    // as after ~4 billion entries, then attach a fresh Ring object over the same memory.
    const words = new Int32Array(r0.desc.memory as SharedArrayBuffer);
    for (const w of [32, 33, 64, 65]) words[w] = -40; // 2^32 - 40 as u32
    const r = Ring.attach(r0.desc);
    t.equal(r.count(), 0);
    t.equal(r.freeCount(), 64);
    const out = new Uint32Array(64);
    let next = 0, ok = true;
    for (let i = 0; i < 200; i++) {
      const n = 1 + (i % 37);
      if (r.enqueueBulk(seq(next, n), n) !== n) ok = false;
      if (r.count() !== n || r.freeCount() !== 64 - n) ok = false; // counts across the wrap
      if (r.enqueueBulk(seq(0, 64), 64) !== 0) ok = false; // never more room than there is
      if (r.dequeueBulk(out, n) !== n) ok = false;
      for (let k = 0; k < n; k++) if (out[k] !== next + k) ok = false;
      next += n;
    }
    t.ok(ok, `${kind}: counts right and entries in order across the wrap`);
    t.ok(words[33] > 0 && words[33] < 10_000, `${kind}: producer tail wrapped past 2^32 to ${words[33]}`);
    t.equal(words[33], words[65], 'tails equal: empty');
    // fill completely across the wrap
    for (const w of [32, 33, 64, 65]) words[w] = -3;
    const r2 = Ring.attach(r0.desc);
    t.equal(r2.enqueueBurst(seq(1000, 70), 70), 64, `${kind}: full ring across the wrap takes exactly size`);
    t.equal(r2.count(), 64);
    t.equal(r2.dequeueBurst(out, 64), 64);
    t.same([...out.subarray(0, 3)], [1000, 1001, 1002]);
    t.equal(out[63], 1063);
  }
});

t.test('bad sizes and bad memory give errors naming the ring', async (t) => {
  for (const size of [0, -4, 3, 6, 1000, 1.5, NaN, 2 ** 31, 2 ** 30 * 2]) {
    t.throws(() => Ring.create('tsp_bad', size), { name: 'RangeError', message: new RegExp(`^ring "tsp_bad": size ${size} must be a power of two from 1 to 2\\^30`) }, `size ${size}`);
  }
  t.throws(() => Ring.create('tsp_bad', 1000), { message: /\(e\.g\. 1024\)/ }, 'suggests the next power of two');
  t.equal(nextPow2(1000), 1024);
  t.equal(nextPow2(1), 1);
  t.equal(ringBytes(1024), 384 + 4096);
  const sab = new SharedArrayBuffer(ringBytes(64) + 128);
  t.throws(() => Ring.createAt('tsp_off', 0n, sab, 32, 64), { name: 'RangeError', message: 'ring "tsp_off": offset 32 must be 64-byte aligned' });
  t.throws(() => Ring.attach({ name: 'tsp_none', memory: sab, offset: 0 }), { message: 'ring "tsp_none": no ring at this memory (bad magic); was it created?' });
});

t.test('a ring in DMA memory (memzone), attached by address', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tsp${process.pid}r`, memoryMb: 1, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const zone = eal.memory.reserve(name('ringzone'), 4096 + ringBytes(256), 4096);
  const ab = viewOf(zone.va, zone.len);
  t.throws(() => Ring.attach({ name: 'tsp_blank', memory: zone.va + 4096n, offset: 0 }), { message: 'ring "tsp_blank": no ring at this memory (bad magic); was it created?' }, 'DMA memory without a ring: bad magic');
  // place it 4096 bytes into the zone: the address in the descriptor is the ring's own
  const r = Ring.createAt(name('dma'), zone.va + 4096n, ab, 4096, 256, { sp: true, sc: true });
  t.equal(r.desc.memory, zone.va + 4096n);
  t.equal(r.desc.offset, 0);
  t.equal(typeof structuredClone(r.desc).memory, 'bigint', 'the descriptor is plain, postable data');
  const other = Ring.attach(r.desc); // DMA memory is mapped with viewOf by default
  t.equal(other.size, 256);
  t.ok(other.sp && other.sc, 'flags travel with the memory');
  t.equal(r.enqueueBulk(seq(7, 100), 100), 100);
  t.equal(other.count(), 100, 'the attached ring sees the entries');
  const out = new Uint32Array(100);
  t.equal(other.dequeueBulk(out, 100), 100);
  t.same(out, seq(7, 100));
  t.equal(r.count(), 0);
  // the entries really live in the memzone: first entry slot is at ring start + 384
  r.enqueueOne(0xabcdef01);
  const u32 = new Uint32Array(ab, 4096 + 384, 256);
  t.ok(u32.includes(0xabcdef01), 'entry stored in DMA memory');
  t.equal(new Uint32Array(ab, 0, 1024).every((v) => v === 0), true, 'bytes before the ring untouched');
  other.dequeueOne();
});

/** Run promises, but request a stop of every lcore if they take longer than ms (so a bug fails, not hangs). */
async function within<T>(lcores: Lcores, ms: number, p: Promise<T>): Promise<T> {
  const timer = setTimeout(() => lcores.requestStop(), ms);
  try {
    return await p;
  } finally {
    clearTimeout(timer);
  }
}

t.test('SP/SC between two pinned worker lcores', async (t) => {
  const lcores = new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 0 }, { id: 2, cpu: 1 }], 0);
  t.teardown(() => lcores.close());
  const eal = new Eal({ noHuge: true, filePrefix: `tsp${process.pid}s`, memoryMb: 1, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const total = 1_000_000;
  const expectSum = Number(BigInt.asIntN(32, (BigInt(total) * BigInt(total - 1)) / 2n));
  const zone = eal.memory.reserve(name('spsc'), ringBytes(512), 64);
  const dma = Ring.createAt(name('spsc_dma'), zone.va, viewOf(zone.va, zone.len), 0, 512, { sp: true, sc: true });
  const cases: Array<[string, Ring, boolean]> = [
    ['SharedArrayBuffer ring, burst', Ring.create(name('spsc_sab'), 1024, { sp: true, sc: true }), false],
    ['SharedArrayBuffer ring, bulk', Ring.create(name('spsc_sab2'), 1024, { sp: true, sc: true }), true],
    ['DMA-memory ring, burst', dma, false],
  ];
  for (const [what, ring, bulk] of cases) {
    const arg: RingPipeArg = { ring: ring.desc, total, burst: 32, bulk };
    const [p, c] = await within(lcores, 60_000, Promise.all([
      lcores.launch<RingPipeResult>(1, PIPE, 'ringProducer', arg),
      lcores.launch<RingPipeResult>(2, PIPE, 'ringConsumer', arg),
    ]));
    t.equal(p.entries, total, `${what}: producer sent all`);
    t.equal(c.entries, total, `${what}: consumer got all`);
    t.equal(c.inOrder, true, `${what}: in order`);
    t.equal(c.missing, 0, `${what}: nothing lost`);
    t.equal(c.duplicated, 0, `${what}: nothing twice`);
    t.equal(c.sum, expectSum, `${what}: checksum of the values`);
    t.equal(ring.count(), 0, `${what}: ring empty afterwards`);
    t.comment(`${what}: ${(total / (Math.max(p.endMs, c.endMs) - Math.min(p.startMs, c.startMs)) / 1e3).toFixed(1)} M entries/s, worker GCs ${p.gcCount + c.gcCount}`);
  }
});

t.test('the benchmark\'s bulk pipe (DPDK\'s test loop) moves every bulk in order and refuses a partial last bulk', async (t) => {
  const lcores = new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 0 }, { id: 2, cpu: 1 }], 0);
  t.teardown(() => lcores.close());
  const ring = Ring.create(name('bulkpipe'), 1024, { sp: true, sc: true });
  const arg: RingBulkArg = { ring: ring.desc, total: 32 * 20_000, burst: 32 };
  const [p, c] = await within(lcores, 60_000, Promise.all([
    lcores.launch<RingPipeResult>(1, PIPE, 'ringBulkProducer', arg),
    lcores.launch<RingPipeResult>(2, PIPE, 'ringBulkConsumer', arg),
  ]));
  t.equal(p.entries, arg.total, 'producer sent all');
  t.equal(c.entries, arg.total, 'consumer got all');
  t.equal(c.inOrder, true, 'bulks in order');
  t.equal(ring.count(), 0, 'ring empty afterwards');
  await t.rejects(lcores.launch(1, PIPE, 'ringBulkProducer', { ...arg, total: 33 }), /total 33 must be a multiple of the burst 32/);
});

t.test('MP/MC: two producers, two consumers, every value exactly once', async (t) => {
  // lcore 0 main; producers 1 (CPU 0) and 3 (CPU 1); consumers 2 (CPU 0) and 4 (CPU 1)
  const lcores = new Lcores([{ id: 0, cpu: 0 }, { id: 1, cpu: 0 }, { id: 2, cpu: 0 }, { id: 3, cpu: 1 }, { id: 4, cpu: 1 }], 0);
  t.teardown(() => lcores.close());
  const each = 200_000, producers = 2, total = each * producers;
  const ring = Ring.create(name('mpmc'), 256);
  t.notOk(ring.sp || ring.sc, 'a multi-producer, multi-consumer ring');
  const taken = new SharedArrayBuffer(4);
  const seen = [new SharedArrayBuffer(total), new SharedArrayBuffer(total)];
  const carg = (i: number): MpmcConsumerArg => ({ ring: ring.desc, total, burst: 32, producers, taken, seen: seen[i] });
  const parg = (i: number): RingPipeArg => ({ ring: ring.desc, total: each, burst: 32, producers, index: i });
  const t0 = performance.now();
  const [p0, p1, c0, c1] = await within(lcores, 90_000, Promise.all([
    lcores.launch<RingPipeResult>(1, PIPE, 'ringProducer', parg(0)),
    lcores.launch<RingPipeResult>(3, PIPE, 'ringProducer', parg(1)),
    lcores.launch<MpmcConsumerResult>(2, WORKERS, 'mpmcConsumer', carg(0)),
    lcores.launch<MpmcConsumerResult>(4, WORKERS, 'mpmcConsumer', carg(1)),
  ]));
  t.comment(`MP/MC: ${total} entries in ${(performance.now() - t0).toFixed(0)} ms (launch included); consumers took ${c0.entries} and ${c1.entries}`);
  t.equal(p0.entries + p1.entries, total, 'producers sent everything');
  t.equal(c0.entries + c1.entries, total, 'consumers took everything');
  t.equal(c0.outOfRange + c1.outOfRange, 0, 'no value that was never sent');
  t.ok(c0.inOrder && c1.inOrder, 'each producer\'s values reach each consumer in ascending order');
  const a = new Uint8Array(seen[0]), b = new Uint8Array(seen[1]);
  let missing = 0, duplicated = 0;
  for (let v = 0; v < total; v++) {
    const n = a[v] + b[v];
    if (n === 0) missing++;
    else duplicated += n - 1;
  }
  t.equal(missing, 0, 'missing === 0');
  t.equal(duplicated, 0, 'duplicated === 0');
  t.equal(ring.count(), 0, 'ring empty afterwards');
});
