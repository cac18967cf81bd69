/**
 * net_virtio against a lying device (issue 14, item 8). A vfio-user device maps all EAL memory, so
 * it may write anything there: the rings, the descriptor table, the mbufs and whatever else sits in
 * the queue's memzone. LyingVirtioNet below is an in-process VfioDevice (FakeVirtioNetBase of
 * test/net/fake-virtio-net.ts, as FakeVirtioNet in test/net/virtio.test.ts: trapped common
 * configuration, a real shared notify page, iova = va) whose data side is driven by hand, so each
 * test can publish exactly the lie it is about. Checked each time: the lie costs at most the packets involved (counted as errors), the
 * queue keeps working, and when the port stops every mbuf is back in its pool exactly once
 * (inUseCount 0: a lost mbuf leaves it above 0, a double free below).
 *
 * The mempool is attached where it matters too, in another thread (this file is also that
 * worker's module: there, tap is not loaded and the t.test calls are no-ops).
 *
 * No root needed (--no-huge memory). Nothing here runs a busy thread.
 */
import type { Test } from 'tap';
import { isMainThread, parentPort, workerData, Worker } from 'node:worker_threads';
import '../../drivers/index.js';
import * as os from '../../src/os/libc.js';
import { Eal } from '../../src/eal.js';
import * as V from '../../lib/virtio/virtio.js';
import { virtqLayout } from '../../drivers/net/virtio/virtqueue.js';
import { VirtioNetPort } from '../../drivers/net/virtio/virtio.js';
import { openRxQueue, openTxQueue, type RxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAlloc, pktmbufAllocInit, pktmbufFree, pktmbufFreeBulk, writePacket, readPacket, chain, MBUF_NONE } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import { Mempool, type MempoolDesc } from '../../lib/mempool/mempool.js';
import { Ring, ringBytes } from '../../lib/ring/ring.js';
import { FakeVirtioNetBase, patternFrame, type DmaMemory } from '../net/fake-virtio-net.js';

type Tap = typeof import('tap').default;
const t: Tap = isMainThread ? (await import('tap')).default : ({ test: () => undefined } as unknown as Tap);

// In the worker: attach the pool from its descriptor, answer 'attached' or the error.
if (!isMainThread) {
  try {
    Mempool.attach((workerData as { desc: MempoolDesc }).desc);
    parentPort!.postMessage('attached');
  } catch (e) {
    parentPort!.postMessage((e as Error).message);
  }
}

/** Mempool.attach(desc) in a new worker thread (where the pool is not known yet); its answer. */
function attachInWorker(desc: MempoolDesc): Promise<string> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL(import.meta.url), { workerData: { desc } });
    w.once('message', (m: string) => { resolve(m); void w.terminate(); });
    w.once('error', reject);
  });
}

const fb = V.featureBit;
const MAC = [0x02, 0x74, 0x73, 0x70, 0x6c, 0x01];

/**
 * A virtio-net device (receiveq 0, transmitq 1, no control queue) whose data side the test drives:
 * take avail entries, write frames, publish used entries, and lie (any DMA memory is its to write).
 * Its configuration side is FakeVirtioNetBase's, honest.
 */
class LyingVirtioNet extends FakeVirtioNetBase {
  constructor(name: string, memory: DmaMemory, mrg = true) {
    super(name, memory, {
      backend: 'lying',
      mac: MAC,
      features: [V.VIRTIO_F_VERSION_1, V.VIRTIO_F_ACCESS_PLATFORM, V.VIRTIO_NET_F_MAC, ...(mrg ? [V.VIRTIO_NET_F_MRG_RXBUF] : [])].reduce((m, b) => m | fb(b), 0n),
      queueSizes: [256, 256],
    });
  }

  /** The used index of vq. */
  usedIdx(vq: number): number {
    return this.u16(this.queues[vq].used + 2);
  }

  /** Set the used index of vq (without writing entries). */
  setUsedIdx(vq: number, idx: number): void {
    this.setU16(this.queues[vq].used + 2, idx & 0xffff);
  }

  /** Write a virtio_net_hdr with num_buffers nb, then frame, into RX descriptor id; returns the used length. */
  fillRx(id: number, f: Uint8Array, nb = 1): number {
    const b = this.bytes(this.desc(0, id).addr, V.NET_HDR_SIZE + f.length);
    b.fill(0, 0, V.NET_HDR_SIZE);
    b[V.NET_HDR_NUM_BUFFERS] = nb & 0xff;
    b[V.NET_HDR_NUM_BUFFERS + 1] = nb >> 8;
    b.set(f, V.NET_HDR_SIZE);
    return V.NET_HDR_SIZE + f.length;
  }

  /** Complete every pending TX chain honestly (used id = head); returns the heads. */
  completeTx(): number[] {
    const heads: number[] = [];
    for (let h = this.takeAvail(1); h >= 0; h = this.takeAvail(1)) heads.push(h);
    if (heads.length) this.pushUsed(1, heads.map((h) => [h, 0]));
    return heads;
  }
}

let seq = 0;

/** An EAL in 4 KiB memfd pages, closed at the end of the test. */
function eal(t: Test): Eal {
  const e = new Eal({ noHuge: true, filePrefix: `tsplie${process.pid}_${seq++}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => e.close());
  return e;
}

/** A 64-byte-plus frame with a pattern. */
function frame(len: number, tag: number): Uint8Array {
  return patternFrame(MAC, len, tag);
}

interface Rig {
  e: Eal;
  dev: LyingVirtioNet;
  port: VirtioNetPort;
  pool: Mempool;
  rx: RxQueue;
  tx: TxQueue;
}

/** A started port on a lying device: RX ring rxSize, TX ring txSize, one pool for both. */
async function rig(t: Test, name: string, opts: { mrg?: boolean; rxSize?: number; txSize?: number; dataRoom?: number } = {}): Promise<Rig> {
  const e = eal(t);
  const dev = new LyingVirtioNet(name, e.memory, opts.mrg ?? true);
  t.teardown(() => dev.close());
  const port = VirtioNetPort.open(dev, e.memory, { name: `tsp_${name}` });
  const pool = pktmbufPoolCreate(e.memory, `tsp_${name}`, 1023, { cacheSize: 0, ...(opts.dataRoom ? { dataRoom: opts.dataRoom } : {}) });
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, opts.rxSize ?? 64, pool);
  port.txQueueSetup(0, opts.txSize ?? 64);
  port.start();
  t.teardown(() => { if (port.status !== 'closed') port.close(); });
  const data = port.data();
  return { e, dev, port, pool, rx: await openRxQueue(data, 0), tx: await openTxQueue(data, 0) };
}

/** Receive what is there (up to n), check nothing else, free it; returns the frames' lengths. */
function drain(rx: RxQueue, n = 64): number[] {
  const got = new Uint32Array(n), buf = new Uint8Array(16384), lens: number[] = [];
  const k = rx.rxBurst(got, n);
  for (let i = 0; i < k; i++) {
    lens.push(readPacket(got[i], buf));
    pktmbufFree(got[i]);
  }
  return lens;
}

/** Deliver one honest frame into the next avail RX buffer; the queue still works if it arrives. */
function stillReceives(t: Test, r: Rig, what: string): void {
  const id = r.dev.takeAvail(0);
  t.ok(id >= 0, `${what}: the driver still offers RX buffers`);
  if (id < 0) return;
  r.dev.pushUsed(0, [[id, r.dev.fillRx(id, frame(100, 7))]]);
  t.same(drain(r.rx), [100], `${what}: an honest frame afterwards arrives`);
}

/**
 * Stop and close the port; every mbuf must be back in the pool exactly once: the audit counts
 * match, and taking everything out of the pool yields each of its handles once (a double free
 * shows as a duplicate or one too many, a handle of another pool as foreign).
 */
function closeAndAudit(t: Test, r: Rig, what: string): void {
  r.port.close();
  const a = r.pool.audit();
  t.equal(a.inUse, 0, `${what}: after close the pool counts no mbuf in use (${a.inUse}: > 0 lost, < 0 freed twice)`);
  const all = new Uint32Array(a.size + 16);
  let n = 0;
  for (let h = r.pool.alloc(); h >= 0 && n < all.length; h = r.pool.alloc()) all[n++] = h;
  const handles = [...all.subarray(0, n)];
  const foreign = handles.filter((h) => h >>> 24 !== r.pool.id).length;
  t.same({ taken: n, distinct: new Set(handles).size, foreign }, { taken: a.size, distinct: a.size, foreign: 0 },
    `${what}: the pool gives each of its ${a.size} mbufs exactly once`);
  r.pool.freeBulk(all, n);
}

t.test('RX: a used id beyond the queue is dropped and counted, nothing lost', async (t) => {
  const r = await rig(t, 'rxrange');
  const id = r.dev.takeAvail(0);
  r.dev.pushUsed(0, [[64 + 5, 100], [0xffffffff, 100], [id, r.dev.fillRx(id, frame(80, 1))]]);
  t.same(drain(r.rx), [80], 'only the entry naming a real descriptor is a packet');
  t.equal(r.port.stats().ierrors, 2, 'two errors counted');
  stillReceives(t, r, 'after ids out of range');
  closeAndAudit(t, r, 'ids out of range');
});

t.test('RX: a descriptor used twice gives one packet, not the replacement mbuf', async (t) => {
  const r = await rig(t, 'rxtwice');
  const id = r.dev.takeAvail(0);
  const len = r.dev.fillRx(id, frame(90, 2));
  r.dev.pushUsed(0, [[id, len], [id, len]]);
  t.same(drain(r.rx), [90], 'one packet: the second entry names a descriptor the driver took back in this burst');
  t.equal(r.port.stats().ierrors, 1, 'the second entry is counted as an error');
  // and once more in a later burst, for a descriptor the device never took from the avail ring again
  // (the driver reposted it: it is in flight, so that one is a packet, whatever its content)
  stillReceives(t, r, 'after a duplicate used id');
  closeAndAudit(t, r, 'a used id twice');
});

t.test('RX: a used index running far ahead neither loses mbufs nor hands out more than the ring holds', async (t) => {
  const r = await rig(t, 'rxahead', { rxSize: 64 });
  // 1000 entries "published": the used ring holds garbage ids (all 0) and lengths 0
  r.dev.setUsedIdx(0, r.dev.usedIdx(0) + 1000);
  const got = new Uint32Array(512);
  let total = 0, rounds = 0;
  for (; rounds < 40; rounds++) {
    const k = r.rx.rxBurst(got, 512);
    for (let i = 0; i < k; i++) pktmbufFree(got[i]);
    total += k;
  }
  t.equal(total, 0, 'no packet out of 1000 lying entries with length 0');
  t.ok(r.port.stats().ierrors >= 1000, `all counted as errors (${r.port.stats().ierrors})`);
  // the device then takes its buffers honestly: the queue still works
  stillReceives(t, r, 'after a used index 1000 ahead');
  closeAndAudit(t, r, 'a used index far ahead');
});

t.test('RX: bogus lengths drop the packet, never read or count past the buffer', async (t) => {
  const r = await rig(t, 'rxlen', { mrg: false });
  const ids = [r.dev.takeAvail(0), r.dev.takeAvail(0), r.dev.takeAvail(0), r.dev.takeAvail(0)];
  const room = r.dev.desc(0, ids[0]).len; // header + data room, as posted
  r.dev.fillRx(ids[0], frame(60, 3));
  r.dev.pushUsed(0, [[ids[0], room + 1], [ids[1], 0xffffffff], [ids[2], V.NET_HDR_SIZE - 1], [ids[3], r.dev.fillRx(ids[3], frame(70, 4))]]);
  t.same(drain(r.rx), [70], 'longer than the buffer, 2^32-1, shorter than the header: dropped; the good one arrives');
  t.equal(r.port.stats().ierrors, 3);
  t.equal(r.port.stats().ibytes, 70, 'no bogus length in the byte counter');
  stillReceives(t, r, 'after bogus lengths');
  closeAndAudit(t, r, 'bogus lengths');
});

t.test('RX (MRG_RXBUF): num_buffers is distrusted (commit 383e7ec)', async (t) => {
  const r = await rig(t, 'rxnb', { dataRoom: 128 });
  // beyond the ring: the packet is dropped and counted, the queue does not stall (the buffer is
  // full, 12 + 128 bytes: only then may a packet go on in another buffer, so only then is
  // num_buffers read)
  const a = r.dev.takeAvail(0);
  r.dev.pushUsed(0, [[a, r.dev.fillRx(a, frame(128, 5), 1000)]]);
  t.same(drain(r.rx), [], 'num_buffers 1000 in a ring of 64: no packet');
  t.equal(r.port.stats().ierrors, 1, 'counted');
  stillReceives(t, r, 'after num_buffers beyond the ring');
  // a buffer the device did not fill ends its packet, whatever num_buffers says (virtio 1.2,
  // 5.1.6.4.2: all buffers of a packet but the last are used in full)
  const b = r.dev.takeAvail(0), c = r.dev.takeAvail(0);
  r.dev.pushUsed(0, [[b, r.dev.fillRx(b, frame(100, 7), 2)], [c, r.dev.fillRx(c, frame(90, 8))]]);
  t.same(drain(r.rx), [100, 90], 'num_buffers 2 in a buffer of 112 of 140 bytes: a packet of one buffer, and the next one its own');
  t.equal(r.port.stats().ierrors, 1, 'no error for either');
  // a merged packet whose buffers are not all published yet waits, then arrives whole
  const f = frame(300, 6); // 12 + 300 bytes over 140-byte buffers: three buffers
  const ids = [r.dev.takeAvail(0), r.dev.takeAvail(0), r.dev.takeAvail(0)];
  const stream = new Uint8Array(V.NET_HDR_SIZE + f.length);
  stream[V.NET_HDR_NUM_BUFFERS] = 3;
  stream.set(f, V.NET_HDR_SIZE);
  const lens: number[] = [];
  let o = 0;
  for (const id of ids) {
    const d = r.dev.desc(0, id);
    const n = Math.min(d.len, stream.length - o);
    const m = r.dev.mem(d.addr);
    new Uint8Array(m.dv.buffer, m.off, n).set(stream.subarray(o, o + n));
    lens.push(n);
    o += n;
  }
  r.dev.pushUsed(0, [[ids[0], lens[0]], [ids[1], lens[1]]]);
  t.same(drain(r.rx), [], 'two of three buffers published: nothing yet, no error');
  t.equal(r.port.stats().ierrors, 1, 'still one error');
  r.dev.pushUsed(0, [[ids[2], lens[2]]]);
  const got = new Uint32Array(4), buf = new Uint8Array(1024);
  t.equal(r.rx.rxBurst(got, 4), 1, 'the third buffer completes the packet');
  t.equal(new MbufView().at(got[0]).nbSegs, 3, 'three segments');
  t.equal(readPacket(got[0], buf), 300);
  t.same(buf.subarray(0, 300), f, 'intact');
  pktmbufFree(got[0]);
  closeAndAudit(t, r, 'num_buffers');
});

t.test('RX: a header the device scribbled on (next, refcnt, nb_segs, data_off) is rewritten before the mbuf is handed out', async (t) => {
  const r = await rig(t, 'rxhdr', { mrg: false });
  const victim = pktmbufAlloc(r.pool); // an mbuf the application holds
  const id = r.dev.takeAvail(0);
  const len = r.dev.fillRx(id, frame(64, 8));
  // the mbuf header sits 64 + headroom - 12 bytes before the descriptor's address
  const hdr = r.dev.desc(0, id).addr - (128 - V.NET_HDR_SIZE) - 64;
  r.dev.setU32(hdr + 32, victim); // next: the application's mbuf
  r.dev.setU32(hdr + 16, 0x20001); // refcnt 1, nb_segs 2
  r.dev.setU16(hdr + 14, 60000); // data_off
  r.dev.pushUsed(0, [[id, len]]);
  const got = new Uint32Array(4), buf = new Uint8Array(4096);
  t.equal(r.rx.rxBurst(got, 4), 1);
  t.equal(new MbufView().at(got[0]).nbSegs, 1, 'one segment');
  t.equal(readPacket(got[0], buf), 64, 'its length from the used entry');
  t.same(buf.subarray(0, 64), frame(64, 8), 'its bytes from the headroom on, not from the data_off the device wrote');
  pktmbufFree(got[0]);
  t.equal(r.pool.audit().inUse, 1 + 64, 'freeing it freed only it, not the application\'s mbuf it was made to point to');
  pktmbufFree(victim);
  closeAndAudit(t, r, 'a scribbled header');
});

t.test('TX: a lone mbuf whose header the device rewrote in flight is freed alone; a free mbuf\'s next is reset at allocation', async (t) => {
  const r = await rig(t, 'txhdr', { txSize: 8 });
  const victim = pktmbufAlloc(r.pool); // an mbuf the application holds
  const m = pktmbufAlloc(r.pool);
  writePacket(m, frame(64, 11));
  t.equal(r.tx.txBurst(new Uint32Array([m]), 1), 1);
  const head = r.dev.takeAvail(1);
  // one descriptor from 12 bytes before the data (headroom 128): the header is 116 + 64 bytes before it
  const hdr = r.dev.desc(1, head).addr - (128 - V.NET_HDR_SIZE) - 64;
  r.dev.setU32(hdr + 32, victim); // next: the application's mbuf
  r.dev.setU32(hdr + 16, 0x20001); // refcnt 1, nb_segs 2
  r.dev.pushUsed(1, [[head, 0]]);
  r.tx.txBurst(new Uint32Array(0), 0); // reclaim
  t.equal(r.pool.audit().inUse, 64 + 1, 'the sent mbuf went back alone; the application\'s mbuf is still held');
  pktmbufFree(victim);
  // a free mbuf (DMA memory) whose next the device set: allocation resets it
  const v = new MbufView();
  const raw = r.pool.alloc();
  v.at(raw).next = victim;
  r.pool.free(raw);
  const n = r.pool.availableCount(), all = new Uint32Array(n);
  t.ok(pktmbufAllocInit(r.pool, all, n, 0, 0, 0));
  t.equal([...all].filter((x) => v.at(x).next !== MBUF_NONE).length, 0, 'every allocated mbuf has no next segment');
  pktmbufFreeBulk(all, n);
  closeAndAudit(t, r, 'a TX header rewritten in flight');
});

t.test('RX and TX: bookkeeping the device rewrites in the queue memzone is not the driver\'s', async (t) => {
  const r = await rig(t, 'book', { rxSize: 64, txSize: 64 });
  const burst = new Uint32Array(4);
  for (let i = 0; i < 4; i++) { burst[i] = pktmbufAlloc(r.pool); writePacket(burst[i], frame(64, i)); }
  t.equal(r.tx.txBurst(burst, 4), 4);
  // everything in the queue memzone past the used ring (where bookkeeping used to be, now the
  // header slots) rewritten: handles of one mbuf, chain lengths of 3, a bogus index
  for (const vq of [0, 1]) {
    const l = virtqLayout(64), base = r.dev.queues[vq].desc;
    for (let o = l.hdrs; o < l.total; o += 8) { r.dev.setU32(base + o, burst[0]); r.dev.setU16(base + o + 4, 3); r.dev.setU16(base + o + 6, 40); }
  }
  r.dev.completeTx();
  r.tx.txBurst(burst, 0); // reclaim
  t.equal(r.port.stats().oerrors, 0, 'the four chains came back as they went out');
  stillReceives(t, r, 'after the bookkeeping area was rewritten');
  closeAndAudit(t, r, 'rewritten bookkeeping');
});

t.test('TX: used ids out of range, not in flight and twice are counted, nothing freed for them', async (t) => {
  const r = await rig(t, 'txids', { txSize: 64 });
  const burst = new Uint32Array(2);
  for (let i = 0; i < 2; i++) { burst[i] = pktmbufAlloc(r.pool); writePacket(burst[i], frame(64, i)); }
  t.equal(r.tx.txBurst(burst, 2), 2);
  const heads = [r.dev.takeAvail(1), r.dev.takeAvail(1)];
  const idle = [...Array(64).keys()].find((i) => !heads.includes(i))!;
  r.dev.pushUsed(1, [[64, 0], [0xffffffff, 0], [idle, 0], [heads[0], 0], [heads[0], 0]]);
  r.tx.txBurst(burst, 0);
  t.equal(r.port.stats().oerrors, 4, 'out of range twice, an idle descriptor, a head used twice');
  t.equal(r.pool.audit().inUse, 64 + 1, 'one chain freed, the other still in flight');
  // the ring still takes exactly what is free: 63 (one chain in flight)
  const many = new Uint32Array(80);
  for (let i = 0; i < 80; i++) { many[i] = pktmbufAlloc(r.pool); writePacket(many[i], frame(64, i)); }
  const k = r.tx.txBurst(many, 80);
  t.equal(k, 63, 'a ring of 64 with one chain in flight takes 63');
  for (let i = k; i < 80; i++) pktmbufFree(many[i]);
  closeAndAudit(t, r, 'bad TX used ids');
});

t.test('TX: desc.next of an in-flight chain rewritten by the device does not reach the free list', async (t) => {
  const r = await rig(t, 'txnext', { txSize: 8 });
  // chain A: three segments (header slot + 3 descriptors); B: one simple packet
  const segs = [pktmbufAlloc(r.pool), pktmbufAlloc(r.pool), pktmbufAlloc(r.pool)];
  const f = frame(300, 9);
  writePacket(segs[0], f.subarray(0, 100));
  writePacket(segs[1], f.subarray(100, 200));
  writePacket(segs[2], f.subarray(200));
  chain(segs[1], segs[2]);
  chain(segs[0], segs[1]);
  const b = pktmbufAlloc(r.pool);
  writePacket(b, frame(64, 10));
  t.equal(r.tx.txBurst(new Uint32Array([segs[0], b]), 2), 2);
  const headA = r.dev.takeAvail(1), headB = r.dev.takeAvail(1);
  // the lie: A's head now links to B's descriptor (and B's to A's head: a loop)
  const q = r.dev.queues[1];
  r.dev.setU16(q.desc + 16 * headA + 14, headB);
  r.dev.setU16(q.desc + 16 * headB + 14, headA);
  r.dev.setU16(q.desc + 16 * headB + 12, V.VRING_DESC_F_NEXT);
  r.dev.pushUsed(1, [[headA, 0]]);
  r.tx.txBurst(new Uint32Array(0), 0); // reclaim A only
  t.equal(r.pool.audit().inUse, 64 + 1, 'A freed (3 segments), B still in flight');
  // with B in flight the ring takes exactly 7 more single packets, each in a descriptor of its own
  const many = new Uint32Array(10);
  for (let i = 0; i < 10; i++) { many[i] = pktmbufAlloc(r.pool); writePacket(many[i], frame(64, i)); }
  const k = r.tx.txBurst(many, 10);
  t.equal(k, 7, 'a ring of 8 with one descriptor in flight takes 7');
  for (let i = k; i < 10; i++) pktmbufFree(many[i]);
  const heads = [headB];
  for (let h = r.dev.takeAvail(1); h >= 0; h = r.dev.takeAvail(1)) heads.push(h);
  t.equal(new Set(heads).size, 8, `eight distinct descriptors in flight (${heads.join(',')})`);
  r.dev.pushUsed(1, heads.map((h) => [h, 0]));
  r.tx.txBurst(new Uint32Array(0), 0);
  t.equal(r.port.stats().oerrors, 0, 'every completion matched a chain in flight');
  closeAndAudit(t, r, 'a rewritten desc.next');
});

t.test('Ring.attach in DMA memory: a rewritten size word is refused, the mapping never follows it', async (t) => {
  const e = eal(t);
  const zone = e.memory.reserve(`tsp_ring_${process.pid}`, ringBytes(64) + 4096, 64);
  const ab = os.viewOf(zone.va, zone.len);
  const ring = Ring.createAt('tsp_lie', zone.va, ab, 0, 64);
  ring.enqueueOne(7);
  const words = new Int32Array(ab, 0, 4);
  const asked: number[] = [];
  const view = (va: bigint, len: number): ArrayBuffer => { asked.push(len); return os.viewOf(va, len); };
  t.equal(Ring.attach(ring.desc, view).dequeueOne(), 7, 'an honest ring attaches');
  asked.length = 0;
  words[1] = 1 << 24; // the device's lie: 16 M entries
  t.throws(() => Ring.attach(ring.desc, view), /size word reads 16777216, its descriptor says 64/, 'refused');
  t.ok(asked.every((n) => n <= ringBytes(64)), `no view beyond the ring was made (asked ${asked.join(', ')} bytes)`);
  words[1] = 64;
  e.memory.free(zone.name);
});

t.test('mempool: a device writing all over a pool\'s DMA memory changes no free list; another thread still attaches it', { timeout: 60_000 }, async (t) => {
  const e = eal(t);
  const pool = pktmbufPoolCreate(e.memory, `tsp_scrib${process.pid}`, 255, { cacheSize: 0 });
  const held = new Uint32Array(10);
  t.ok(pool.allocBulk(held, 10));
  const before = pool.audit();
  // the device's scribble: every byte of the pool's memzone (objects, and whatever else is there)
  new Uint8Array(os.viewOf(pool.zone.va, pool.zone.len)).fill(0xa5);
  t.same(pool.audit(), before, `free and in-use counts unchanged (${before.available} free, ${before.inUse} in use)`);
  t.equal(await attachInWorker(pool.desc), 'attached', 'a worker thread attaches the pool from its descriptor');
  pool.freeBulk(held, 10);
  const all = new Uint32Array(pool.size + 8);
  let n = 0;
  for (let h = pool.alloc(); h >= 0 && n < all.length; h = pool.alloc()) all[n++] = h;
  const handles = [...all.subarray(0, n)];
  t.same({ taken: n, distinct: new Set(handles).size, foreign: handles.filter((h) => h >>> 24 !== pool.id).length },
    { taken: pool.size, distinct: pool.size, foreign: 0 }, 'the pool still gives each of its objects exactly once');
  pool.freeBulk(all, n);
});
