/**
 * The driver side of the virtio PMD tests against tspmd's emulated virtio-net device
 * (virtio-vfio-user.test.ts: the device in a child process on a TAP; virtio-emu.test.ts: the device
 * in this process on net_ring ports): an EAL with `-a vfio-user:SOCKET` (--no-huge), the device
 * probed as a net_virtio port, its queues opened in the calling thread; sending and receiving
 * without drops, test frames, and the checks every one of those tests makes (frames byte-exact,
 * every mbuf back in its pool).
 */
import type { Test as Tap } from 'tap';
import { randomBytes } from 'node:crypto';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import * as os from '../../src/os/libc.js';
import { openRxQueue, openTxQueue, type RxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, writePacket, readPacket, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import type { Mempool } from '../../lib/mempool/mempool.js';
import { buildUdpFrame, parseIpv4 } from '../../lib/net/packet.js';
import { VirtioNetPort } from '../../drivers/net/virtio/virtio.js';
import { probePorts } from '../../drivers/bus/probe.js';

const CPUS = os.getAffinity();
const mv = new MbufView();
/** RX descriptors per queue the clients set up. */
export const RX_DESC = 256;

/** Sleep without spinning. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** An EAL client of the device with its port, pools and queues (opened in this thread). */
export interface Client {
  eal: Eal;
  /** frames received as chains of more than one mbuf (MRG_RXBUF with small buffers) */
  chained: number;
  port: VirtioNetPort;
  /** the RX queues' pool (its data room decides whether frames span buffers) */
  pool: Mempool;
  /** the pool frames to send are built in (2048-byte data room: every test frame fits one mbuf) */
  txPool: Mempool;
  rx: RxQueue[];
  tx: TxQueue[];
}

/** How openClient sets the port up. */
export interface ClientOptions {
  /** data room of the RX pool's mbufs (default 2048) */
  dataRoom?: number;
  /** worker lcore ids of the EAL (on the first CPU of this process; default none) */
  workers?: number[];
  /** devargs after the address ("mrg_rxbuf=0") */
  devargs?: string;
}

let clientSeq = 0;

/** An EAL with `-a vfio-user:SOCKET`, the device probed as a net_virtio port, started with `queues` pairs. */
export async function openClient(t: { teardown(fn: () => unknown): void }, socket: string, queues: number, opts: ClientOptions = {}): Promise<Client> {
  const eal = new Eal({
    noHuge: true, noPci: true, filePrefix: `tspvvu${process.pid}_${clientSeq++}`, allow: [`vfio-user:${socket}${opts.devargs ? `,${opts.devargs}` : ''}`],
    lcores: [{ id: 0, cpu: CPUS[0] }, ...(opts.workers ?? []).map((id) => ({ id, cpu: CPUS[0] }))], mainLcore: 0,
  });
  t.teardown(() => eal.close());
  const ports = await probePorts(eal);
  const port = ports.find((p) => p.name === `vfio-user:${socket}`);
  if (!(port instanceof VirtioNetPort)) throw new Error(`no net_virtio port for vfio-user:${socket} (ports: ${ports.map((p) => p.name).join(', ')})`);
  const pool = pktmbufPoolCreate(eal.memory, 'tspvvu_pool', 4095, { cacheSize: 0, dataRoom: opts.dataRoom });
  const txPool = pktmbufPoolCreate(eal.memory, 'tspvvu_txpool', 1023, { cacheSize: 0 });
  port.configure({ rxQueues: queues, txQueues: queues });
  for (let q = 0; q < queues; q++) {
    port.rxQueueSetup(q, RX_DESC, pool);
    port.txQueueSetup(q, 256);
  }
  const c: Client = { eal, port, pool, txPool, rx: [], tx: [], chained: 0 };
  await startClient(c);
  return c;
}

/** Start the port and open its queues' data halves in this thread. */
export async function startClient(c: Client): Promise<void> {
  c.port.start();
  const n = c.port.configuration!.rxQueues;
  c.rx = [];
  c.tx = [];
  for (let q = 0; q < n; q++) {
    c.rx.push(await openRxQueue(c.port.data(), q));
    c.tx.push(await openTxQueue(c.port.data(), q));
  }
}

/** Send frames out of the PMD, frame i on TX queue queueOf(i); waits for ring room, never drops. */
export async function pmdSend(c: Client, frames: Uint8Array[], queueOf: (i: number) => number = () => 0): Promise<void> {
  const m = new Uint32Array(1);
  const deadline = Date.now() + 30_000;
  for (let i = 0; i < frames.length; i++) {
    if (!pktmbufAllocBulk(c.txPool, m, 1)) throw new Error(`TX pool empty at frame ${i} (in use ${c.txPool.inUseCount()})`);
    if (!writePacket(m[0], frames[i])) throw new Error(`frame ${i} (${frames[i].length} bytes) does not fit an mbuf`);
    while (c.tx[queueOf(i)].txBurst(m, 1, 0) !== 1) {
      if (Date.now() > deadline) { pktmbufFreeBulk(m, 1, 0); throw new Error(`TX queue ${queueOf(i)} stayed full (frame ${i})`); }
      await sleep(1);
    }
  }
}

/** Receive from every RX queue until n frames arrived (or timeout); frames by queue. */
export async function pmdReceive(c: Client, n: number, timeoutMs = 30_000): Promise<Uint8Array[][]> {
  const out: Uint8Array[][] = c.rx.map(() => []);
  const burst = new Uint32Array(32), buf = new Uint8Array(16384);
  let got = 0;
  const deadline = Date.now() + timeoutMs;
  while (got < n && Date.now() < deadline) {
    let k = 0;
    for (let q = 0; q < c.rx.length; q++) {
      const r = c.rx[q].rxBurst(burst, 32);
      for (let i = 0; i < r; i++) {
        if (mv.at(burst[i]).nbSegs > 1) c.chained++;
        out[q].push(buf.slice(0, readPacket(burst[i], buf)));
      }
      pktmbufFreeBulk(burst, r, 0);
      k += r;
    }
    got += k;
    if (k === 0) await sleep(1);
  }
  return out;
}

/**
 * Frame i of a round: an IPv4/UDP frame from src to dst (flows vary, for steering), 60..1514 bytes,
 * with a unique random payload; `tag` marks the direction; size overrides the length.
 */
export function udpFrame(src: number[], dst: number[], tag: number, round: number, i: number, size = 60 + ((i * 97 + round * 31) % 1455)): Uint8Array {
  const f = buildUdpFrame({
    dstMac: dst, srcMac: src,
    srcIp: parseIpv4('10.77.0.1') + i, dstIp: parseIpv4('10.77.1.1') + (i % 7), srcPort: 1024 + i, dstPort: 4789, size,
  });
  f[40] = f[41] = 0; // UDP checksum 0: none (the payload below is not what it summed)
  f[42] = tag;
  f[43] = round;
  f[44] = i >> 8;
  f[45] = i & 0xff;
  f.set(randomBytes(size - 46), 46);
  return f;
}

const hex = (f: Uint8Array): string => Buffer.from(f).toString('hex');

/** got == want byte for byte (in order, or as multisets); one assertion, a short message on failure. */
export function sameFrames(t: Tap, got: Uint8Array[], want: Uint8Array[], ordered: boolean, what: string): void {
  const g = got.map(hex), w = want.map(hex);
  if (!ordered) { g.sort(); w.sort(); }
  let bad = -1;
  for (let i = 0; i < Math.max(g.length, w.length) && bad < 0; i++) if (g[i] !== w[i]) bad = i;
  t.ok(bad < 0 && g.length === w.length,
    `${what}: ${w.length} frames byte-exact${ordered ? ', in order' : ''}` + (bad >= 0 ? ` (got ${g.length}; first difference at #${bad}: got ${g[bad]?.slice(0, 96) ?? 'nothing'}..., want ${w[bad]?.slice(0, 96) ?? 'nothing'}...)` : ''));
}

/** Stop the port: every mbuf (RX ring, TX in flight, ours) must be back in the pool. */
export function stopAndCheckPool(t: Tap, c: Client, what: string): void {
  c.port.stop();
  t.same([c.pool.audit().inUse, c.txPool.audit().inUse], [0, 0], `${what}: every mbuf back in its pool after stop (RX pool, TX pool)`);
}
