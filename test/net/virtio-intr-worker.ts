/**
 * The worker lcores of virtio-intr.test.ts: (1) net_virtio's TX data half on its own thread,
 * against a device whose notify page is not mapped and which wants doorbells, so every burst's
 * doorbell is a no-reply REGION_WRITE sent from this thread on the vfio-user socket the main thread
 * uses for its own requests at the same time; (2) an RX loop in Rx interrupt mode (RxIdleSleeper
 * on the queue's MSI-X eventfd); (3) the allocation probe of the fallback register writes
 * (test/alloc.ts measureInWorker).
 */
import type { LcoreContext } from '../../src/lcore/types.js';
import { openRxQueue, openTxQueue, type PortData } from '../../lib/ethdev/ethdev.js';
import { RxIdleSleeper } from '../../lib/ethdev/rx_intr.js';
import { Mempool, type MempoolDesc } from '../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, MBUF_HDR } from '../../lib/mempool/mbuf.js';
import { MbufW16, MbufW32 } from '../../lib/mempool/mbuf_layout.js';
import { MappedBar } from '../../src/iommu/bar.js';
import { messageReg, regionWriteIo } from '../../lib/vfio-user/reg.js';
import * as os from '../../src/os/libc.js';
import type { AllocOp } from '../alloc.js';

/** What the loop gets. */
export interface FallbackKickArg {
  port: PortData;
  txPool: MempoolDesc;
  frames: number;
  /** Int32Array [frames the test has drained from the wire, spare]: the loop stays at most 512 ahead */
  drained: SharedArrayBuffer;
}

/** Send `frames` 60-byte broadcast frames in bursts of up to 16; returns how many were sent. */
export async function fallbackKickLoop(a: FallbackKickArg, ctx: LcoreContext): Promise<number> {
  const tx = await openTxQueue(a.port, 0);
  const pool = Mempool.attach(a.txPool);
  const b = new Uint32Array(16), u8 = pool.u8, u16 = pool.u16, u32 = pool.u32, drained = new Int32Array(a.drained);
  let sent = 0;
  const deadline = performance.now() + 30_000;
  while (sent < a.frames && !ctx.stopRequested() && performance.now() < deadline) {
    const n = Math.min(16, a.frames - sent);
    if (!pktmbufAllocInit(pool, b, n, 0, 0, a.port.port)) continue;
    for (let k = 0; k < n; k++) {
      const o = pool.offsetOf(b[k]), d = o + MBUF_HDR + u16[(o >> 1) + MbufW16.DataOff];
      for (let i = 0; i < 60; i++) u8[d + i] = i < 6 ? 0xff : (sent + k + i) & 0xff;
      u8[d + 12] = 0x88; u8[d + 13] = 0xb5;
      u16[(o >> 1) + MbufW16.DataLen] = 60;
      u32[(o >> 2) + MbufW32.PktLen] = 60;
    }
    let k = 0;
    while (k < n && performance.now() < deadline) k += tx.txBurst(b, n - k, k);
    sent += k;
    // Never more than 512 frames ahead of what the test's thread drained from the wire (a
    // 1024-frame ring): a slow main thread slows this loop instead of dropping frames.
    while (sent - Atomics.load(drained, 0) >= 512 && performance.now() < deadline) Atomics.wait(drained, 1, 0, 1);
  }
  return sent;
}

/** What the interrupt-mode loop gets. */
export interface IntrLoopArg {
  port: PortData;
  /** frames to receive before returning */
  frames: number;
  /** give up after this long (ms) */
  timeoutMs: number;
  /** Float64Array [received, sleeps] the loop keeps up to date, for the test to pace itself */
  progress: SharedArrayBuffer;
}

/** What it reports: frames received and what the sleeper did. */
export interface IntrLoopResult {
  received: number;
  sleeps: number;
  wakeups: number;
  timeouts: number;
  raced: number;
  sleptMs: number;
}

/**
 * Receive in Rx interrupt mode on this lcore (RxIdleSleeper, lib/ethdev/rx_intr.ts): poll, and
 * after 64 empty rounds sleep in poll(2) on the queue's MSI-X eventfd (at most 100 ms at a time).
 */
export async function intrRxLoop(a: IntrLoopArg, ctx: LcoreContext): Promise<IntrLoopResult> {
  const rx = await openRxQueue(a.port, 0);
  const sleeper = new RxIdleSleeper([{ rxq: rx, port: a.port.port, name: a.port.name, queue: 0 }], { idlePolls: 64, maxSleepMs: 100, stopRequested: () => ctx.stopRequested() });
  const b = new Uint32Array(32), progress = new Float64Array(a.progress);
  let received = 0;
  const deadline = performance.now() + a.timeoutMs;
  while (received < a.frames && !ctx.stopRequested() && performance.now() < deadline) {
    const n = rx.rxBurst(b, 32);
    if (n > 0) pktmbufFreeBulk(b, n);
    received += n;
    progress[0] = received;
    // Counted before it sleeps: the test sends once it sees the lcore about to sleep.
    if (n === 0) progress[1] = sleeper.stats.sleeps + 1;
    sleeper.round(n);
  }
  return { received, ...sleeper.stats };
}

/**
 * One operation: a 16-bit register write through each fallback path of an unmapped BAR, pwrite on
 * a memfd, a no-reply REGION_WRITE message on a socketpair (its peer drained every 64 writes) and
 * a signal on an ioeventfd doorbell (drained every 64 writes too).
 */
export function fallbackWrites(): AllocOp {
  const fd = os.memfdCreate('tsp-vintr-gc', 0);
  const [a, b] = os.socketpair(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK);
  const efd = os.eventfd(0, os.EFD_NONBLOCK);
  os.ftruncate(fd, 4096);
  const file = new MappedBar({ name: 'memfd BAR0', va: 0n, size: 4096, mapped: [], io: { kind: 'file', fd, offset: 0n, readable: true, writable: true } }).reg(0x40, 2);
  const io = regionWriteIo({ fd: a, region: 4, lock: new SharedArrayBuffer(4), msgId: 0x8000, doorbells: [{ offset: 0x80, size: 2, fd: efd, datamatch: null }] });
  const bar = new MappedBar({ name: 'pair BAR4', va: 0n, size: 4096, mapped: [], io }, { messageReg });
  const user = bar.reg(0x40, 2), bell = bar.reg(0x80, 2);
  if (user.via !== 'message' || bell.via !== 'eventfd') throw new Error(`fallbackWrites: registers go by ${user.via} and ${bell.via}, not message and eventfd`);
  const sink = new Uint8Array(64 * 34);
  const op: AllocOp = (i) => {
    file.write(i & 0xffff);
    user.write(i & 0xffff);
    bell.write(i & 0xffff);
    if ((i & 63) === 63) {
      while (os.readNoThrow(b, sink, sink.byteLength) > 0) { /* drain the peer */ }
      os.readNoThrow(efd, sink, 8);
    }
  };
  op.close = () => { os.close(fd); os.close(a); os.close(b); os.close(efd); };
  return op;
}
