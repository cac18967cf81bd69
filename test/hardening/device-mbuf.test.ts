/**
 * A device writing mbuf headers (issue 22, finding 1). An mbuf is DMA memory, its header included:
 * while a PMD has handed an mbuf to a device (a TX descriptor in flight, an RX descriptor posted)
 * the device may rewrite the header. Each test here plays a lying device that does exactly that to
 * every mbuf it holds, with one lie:
 *   next -> an mbuf the application still holds, nb_segs 2 (the free must not follow it);
 *   refcnt 2 (the free must not believe it: the mbuf would never come back);
 *   next -> 0x7f000001, a handle of no pool, nb_segs 2 (the free must not throw on the lcore).
 * on three occasions: TX completion (a two-segment chain and a lone mbuf), a TX mbuf still in flight
 * when the port stops, an RX buffer still posted when the port stops. Checked each time: no
 * exception, the pool never hands out an mbuf the application holds nor any mbuf twice, and after
 * stop every mbuf is back exactly once (nothing lost).
 *
 * PMDs whose device can write the mbuf: net_igb (on FakeIgb, test/net/fake-igb.ts: BAR0 in memory,
 * the rings in EAL memory) and net_virtio (on an in-process virtio-net device,
 * test/net/fake-virtio-net.ts). net_af_packet, net_tap and net_pcap copy packets or make system
 * calls on the data room only: nothing outside this process writes their mbufs' headers.
 *
 * No root needed (--no-huge memory).
 */
import type { Test } from 'tap';
import t from 'tap';
import { Eal } from '../../src/eal.js';
import { IgbPort } from '../../drivers/net/igb/igb.js';
import * as R from '../../drivers/net/igb/igb_regs.js';
import { VirtioNetPort } from '../../drivers/net/virtio/virtio.js';
import * as V from '../../lib/virtio/virtio.js';
import { openTxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import type { EthDev } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAlloc, pktmbufFree, pktmbufFreeRecorded, writePacket, chain, refcntUpdate, isMbuf, MBUF_NONE } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import { MbufOff } from '../../lib/mempool/mbuf_layout.js';
import type { Mempool } from '../../lib/mempool/mempool.js';
import { FakeIgb } from '../net/fake-igb.js';
import { FakeVirtioNetBase, patternFrame, type DmaAccess, type DmaMemory } from '../net/fake-virtio-net.js';

const MAC = [0x02, 0x74, 0x73, 0x70, 0x6d, 0x01];
let seq = 0;

/** What a lying device needs of a started port: its TX queue, its pool, and the device's side. */
interface Rig {
  port: EthDev;
  pool: Mempool;
  tx: TxQueue;
  /** DMA memory as the device writes it */
  dma: Pick<DmaAccess, 'setU16' | 'setU32'>;
  /** the headers (IOVAs) of the mbufs the driver put on the TX ring since the last call; complete() reports them sent */
  takeTx(): { hdrs: number[]; complete(): void };
  /** the header (IOVA) of an mbuf the driver posted for RX */
  rxHdr(): number;
}

/** The header of the pool's mbuf that holds the buffer address iova (the device knows the layout), or -1 outside the pool. */
function hdrOf(pool: Mempool, iova: number): number {
  const base = Number(pool.zone.iova) + pool.objOffset;
  if (iova < base || iova >= base + pool.size * pool.objSize) return -1;
  return base + Math.floor((iova - base) / pool.objSize) * pool.objSize;
}

/** An EAL in 4 KiB memfd pages, a pool of 255 mbufs, and the port's teardown, in order: port, device, EAL. */
function world(t: Test, close: () => Promise<void> | void): { e: Eal; pool: (name: string) => Mempool } {
  const e = new Eal({ noHuge: true, filePrefix: `tspdm${process.pid}_${seq++}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(async () => {
    try { await close(); } finally { e.close(); }
  });
  return { e, pool: (name) => pktmbufPoolCreate(e.memory, name, 255, { cacheSize: 0 }) };
}

/** net_igb on FakeIgb, started with one RX and one TX ring of 32 descriptors. */
async function igbRig(t: Test, tag: string): Promise<Rig> {
  let dev: FakeIgb | null = null, port: IgbPort | null = null;
  const w = world(t, async () => {
    try { if (port && port.status !== 'closed') port.close(); } finally { await dev?.close(); }
  });
  dev = await FakeIgb.create(`tsp_igb${process.pid}_${tag}`, w.e.memory, MAC);
  port = IgbPort.open(dev, w.e.memory);
  const pool = w.pool(`tsp_dmi_${tag}`);
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 32, pool);
  port.txQueueSetup(0, 32);
  port.start();
  const tx = await openTxQueue(port.data(), 0);
  const d = dev, size = d.reg(R.tdlen(0)) / R.DESC_BYTES;
  let seen = 0;
  return {
    port, pool, tx, dma: d.dma,
    takeTx() {
      const tail = d.reg(R.tdt(0)), hdrs: number[] = [], descs: number[] = [];
      for (let i = seen; i !== tail; i = (i + 1) % size) {
        descs.push(i);
        const h = hdrOf(pool, d.txDesc(0, i).addr);
        if (h >= 0 && !hdrs.includes(h)) hdrs.push(h);
      }
      seen = tail;
      return { hdrs, complete: () => descs.forEach((i) => d.txDone(0, i)) };
    },
    rxHdr: () => hdrOf(pool, d.rxDesc(0, 0).addr),
  };
}

/** A virtio-net device (receiveq 0, transmitq 1) whose data side the test drives (FakeVirtioNetBase). */
class HandDrivenVirtioNet extends FakeVirtioNetBase {
  constructor(name: string, memory: DmaMemory) {
    super(name, memory, {
      backend: 'tsp-hand-driven',
      mac: MAC,
      features: [V.VIRTIO_F_VERSION_1, V.VIRTIO_F_ACCESS_PLATFORM, V.VIRTIO_NET_F_MAC].reduce((m, b) => m | V.featureBit(b), 0n),
      queueSizes: [64, 64],
    });
  }
}

/** net_virtio on HandDrivenVirtioNet, started with one RX and one TX queue of 64. */
async function virtioRig(t: Test, tag: string): Promise<Rig> {
  let dev: HandDrivenVirtioNet | null = null, port: VirtioNetPort | null = null;
  const w = world(t, () => {
    try { if (port && port.status !== 'closed') port.close(); } finally { dev?.close(); }
  });
  dev = new HandDrivenVirtioNet(`tsp_vio${process.pid}_${tag}`, w.e.memory);
  port = VirtioNetPort.open(dev, w.e.memory, { name: `tsp_vio${process.pid}_${tag}` });
  const pool = w.pool(`tsp_dmv_${tag}`);
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 64, pool);
  port.txQueueSetup(0, 64);
  port.start();
  const tx = await openTxQueue(port.data(), 0);
  const d = dev;
  return {
    port, pool, tx, dma: d,
    takeTx() {
      const heads: number[] = [], hdrs: number[] = [];
      for (let h = d.takeAvail(1); h >= 0; h = d.takeAvail(1)) {
        heads.push(h);
        for (let id = h, k = 0; k < 64; k++) {
          const desc = d.desc(1, id), m = hdrOf(pool, desc.addr);
          if (m >= 0 && !hdrs.includes(m)) hdrs.push(m);
          if ((desc.flags & V.VRING_DESC_F_NEXT) === 0) break;
          id = desc.next;
        }
      }
      return { hdrs, complete: () => d.pushUsed(1, heads.map((h) => [h, 0])) };
    },
    rxHdr: () => hdrOf(pool, d.desc(0, d.takeAvail(0)).addr),
  };
}

/** A lie the device writes into the header at hdr (victim: an mbuf the application holds). */
type Lie = (dma: Rig['dma'], hdr: number, victim: number) => void;

const LIES: Array<{ title: string; lie: Lie }> = [
  {
    title: 'next -> an mbuf the application holds, nb_segs 2: the free never follows it (no mbuf handed out twice)',
    lie: (dma, hdr, victim) => { dma.setU32(hdr + MbufOff.Next, victim); dma.setU16(hdr + MbufOff.NbSegs, 2); },
  },
  {
    title: 'refcnt 2: the mbuf still goes back to its pool (no leak)',
    lie: (dma, hdr) => { dma.setU16(hdr + MbufOff.Refcnt, 2); },
  },
  {
    title: 'next -> 0x7f000001 (no pool), nb_segs 2: no exception on the lcore',
    lie: (dma, hdr) => { dma.setU32(hdr + MbufOff.Next, 0x7f000001); dma.setU16(hdr + MbufOff.NbSegs, 2); },
  },
];

/** An mbuf of pool holding a pattern frame of len bytes. */
function frameMbuf(pool: Mempool, len: number, tag: number): number {
  const m = pktmbufAlloc(pool);
  writePacket(m, patternFrame(MAC, len, tag));
  return m;
}

/**
 * Take everything the pool has, check that none of it is an mbuf the application holds and that
 * nothing comes twice, and put it back.
 */
function neverTwice(t: Test, pool: Mempool, held: number[], what: string): void {
  const taken: number[] = [];
  for (let h = pool.alloc(); h >= 0 && taken.length <= pool.size; h = pool.alloc()) taken.push(h);
  const set = new Set(taken);
  t.same({ held: held.filter((m) => set.has(m)).length, twice: taken.length - set.size }, { held: 0, twice: 0 },
    `${what}: the pool hands out none of the application's mbufs, and no mbuf twice`);
  pool.freeBulk(Uint32Array.from(taken), taken.length);
}

/** The lie on every mbuf the device holds at TX completion, at stop (TX in flight, RX posted); see the file comment. */
function attack(t: Test, r: Rig, lie: Lie): void {
  const pool = r.pool, base = pool.inUseCount(); // the RX ring's mbufs
  const victims = [pktmbufAlloc(pool), pktmbufAlloc(pool), pktmbufAlloc(pool)]; // the application's
  const thrown: string[] = [];
  const guard = (what: string, fn: () => void): void => {
    try { fn(); } catch (e) { thrown.push(`${what}: ${(e as Error).name}: ${(e as Error).message}`); }
  };
  // 1. TX completion: a two-segment chain and a lone mbuf, lied about, then reported sent
  const a0 = frameMbuf(pool, 100, 1), a1 = frameMbuf(pool, 60, 2), lone = frameMbuf(pool, 64, 3);
  chain(a0, a1);
  t.equal(r.tx.txBurst(Uint32Array.of(a0, lone), 2), 2, 'a chain and a lone mbuf sent');
  const sent = r.takeTx();
  t.equal(sent.hdrs.length, 3, 'the device holds three mbufs');
  for (const h of sent.hdrs) lie(r.dma, h, victims[0]);
  sent.complete();
  guard('TX completion', () => r.tx.txBurst(new Uint32Array(0), 0));
  t.same(thrown, [], 'no exception on the lcore at TX completion');
  t.equal(pool.inUseCount(), base + 3, 'after TX completion exactly the three sent mbufs are back (the application\'s three and the RX ring\'s still out)');
  neverTwice(t, pool, victims, 'after TX completion');
  // 2. a lone mbuf still in flight, 3. an RX buffer still posted, both lied about, then stop
  t.equal(r.tx.txBurst(Uint32Array.of(frameMbuf(pool, 64, 4)), 1), 1);
  for (const h of r.takeTx().hdrs) lie(r.dma, h, victims[1]);
  lie(r.dma, r.rxHdr(), victims[2]);
  guard('stop', () => r.port.stop());
  t.same(thrown, [], 'no exception at stop');
  t.equal(pool.inUseCount(), 3, 'after stop only the application\'s three mbufs are out');
  neverTwice(t, pool, victims, 'after stop');
  for (const v of victims) pktmbufFree(v);
  const a = pool.audit();
  t.equal(a.inUse, 0, `every mbuf back (${a.inUse} in use: > 0 lost, < 0 freed twice)`);
}

for (const [pmd, rig] of [['net_igb', igbRig], ['net_virtio', virtioRig]] as const) {
  LIES.forEach(({ title, lie }, i) => {
    t.test(`finding 1: ${pmd}, a device writing mbuf headers: ${title}`, async (t) => {
      attack(t, await rig(t, `${i}`), lie);
    });
  });
}

for (const [pmd, rig] of [['net_igb', igbRig], ['net_virtio', virtioRig]] as const) {
  t.test(`finding 1: ${pmd}, a shared mbuf (refcnt 2 when sent) loses only the driver's reference, at completion and at stop; a next the device wrote is not followed`, async (t) => {
    const r = await rig(t, 'shared');
    const pool = r.pool, base = pool.inUseCount(), v = new MbufView();
    const victim = pktmbufAlloc(pool);
    // a chain whose second segment the application also holds, and a lone mbuf it also holds
    const a0 = frameMbuf(pool, 100, 1), a1 = frameMbuf(pool, 60, 2), lone = frameMbuf(pool, 64, 3);
    chain(a0, a1);
    refcntUpdate(a1, 1);
    refcntUpdate(lone, 1);
    t.equal(r.tx.txBurst(Uint32Array.of(a0, lone), 2), 2);
    const sent = r.takeTx();
    for (const h of sent.hdrs) { r.dma.setU32(h + MbufOff.Next, victim); r.dma.setU16(h + MbufOff.NbSegs, 2); }
    sent.complete();
    r.tx.txBurst(new Uint32Array(0), 0);
    t.same([v.at(a1).refcnt, v.at(lone).refcnt], [1, 1], 'the shared segments lost the driver\'s reference and are still held');
    t.equal(pool.inUseCount(), base + 3, 'a0 freed; a1, the lone mbuf and the victim still held');
    // the application's own free reads the header the device wrote: out of the driver's hands, so
    // the test puts it right first (docs/security.md)
    for (const m of [a1, lone]) { v.at(m).next = MBUF_NONE; v.nbSegs = 1; }
    refcntUpdate(lone, 1);
    t.equal(r.tx.txBurst(Uint32Array.of(lone), 1), 1, 'sent again, shared');
    pktmbufFree(a1);
    r.port.stop();
    t.equal(v.at(lone).refcnt, 1, 'stop dropped the driver\'s reference of an mbuf in flight, not the application\'s');
    pktmbufFree(lone);
    pktmbufFree(victim);
    t.equal(pool.audit().inUse, 0, 'every mbuf back');
  });
}

t.test('finding 1: net_igb drops a chain whose link names no mbuf (counted), freeing the segments it names, with no exception', async (t) => {
  const r = await igbRig(t, 'badchain');
  const pool = r.pool, base = pool.inUseCount(), v = new MbufView();
  const a0 = frameMbuf(pool, 100, 1), a1 = frameMbuf(pool, 60, 2);
  chain(a0, a1);
  v.at(a1).next = 0x7f000001; // the application's header says a third segment, of no pool
  v.at(a0).nbSegs = 3;
  const ok = frameMbuf(pool, 64, 3);
  t.equal(r.tx.txBurst(Uint32Array.of(a0, ok), 2), 2, 'both taken');
  t.equal(r.port.stats().oerrors, 1, 'the broken chain counted as an error');
  t.equal(r.port.stats().opackets, 1, 'the good packet sent');
  t.same(r.takeTx().hdrs.length, 1, 'only the good packet is on the ring');
  t.equal(pool.inUseCount(), base + 1, 'the two segments the chain names are back');
  r.port.stop();
  t.equal(pool.audit().inUse, 0, 'every mbuf back');
});

t.test('finding 1: pktmbufFreeRecorded frees what the record says, whatever the headers say', async (t) => {
  const w = world(t, () => undefined);
  const p1 = w.pool('tsp_dmr1'), p2 = w.pool('tsp_dmr2'), v = new MbufView();
  const held = pktmbufAlloc(p1); // the application's
  const ms = [pktmbufAlloc(p1), pktmbufAlloc(p2), pktmbufAlloc(p2), pktmbufAlloc(p1), pktmbufAlloc(p1)];
  const shared = Uint8Array.of(0, 0, 1, 0, 1);
  refcntUpdate(ms[2], 1);
  refcntUpdate(ms[4], 2);
  // every header lies: next to the application's mbuf, 7 segments, refcnt 9 on the sole ones
  ms.forEach((m, i) => { v.at(m).next = held; v.nbSegs = 7; if (!shared[i]) v.refcnt = 9; });
  const rec = Uint32Array.of(0xdead, ...ms);
  const sh = Uint8Array.of(1, ...shared);
  pktmbufFreeRecorded(rec, ms.length, 1, sh);
  t.same([p1.inUseCount(), p2.inUseCount()], [2, 1], 'sole ones back; the shared ones lost one reference (ms[2] 2 -> 1, ms[4] 3 -> 2); the application\'s untouched');
  t.same([v.at(ms[2]).refcnt, v.at(ms[4]).refcnt], [1, 2]);
  t.same([v.at(ms[0]).refSegs, v.at(ms[0]).next], [0x10001, MBUF_NONE], 'a freed one is a lone segment with one reference again');
  pktmbufFreeRecorded(Uint32Array.of(ms[2], ms[4], ms[4]), 3, 0, Uint8Array.of(1, 1, 1));
  pktmbufFree(held);
  t.same([p1.audit().inUse, p2.audit().inUse], [0, 0], 'the last references free them');
  t.notOk(isMbuf(0x7f000001), 'a handle of no pool is no mbuf');
  t.notOk(isMbuf((p1.id << 24) | 0xffffff), 'an index past the pool\'s memory is no mbuf');
  t.ok(isMbuf(held), 'a handle of the pool is one');
});
