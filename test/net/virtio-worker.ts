/**
 * The worker lcore of virtio-emu.test.ts's loopback test: net_virtio's data path on its own thread
 * with a device whose backend returns every frame. It sends numbered frames, at most `inFlight`
 * ahead of what came back (fewer than the RX ring's buffers, so the device never lacks one and
 * drops), and checks every byte of every frame that comes back against its number, in order.
 * Nothing is allocated per burst or packet: the loop measures itself by the allocation rule of
 * test/alloc.ts (its operations are frames received), and sends on past `count` until the window is over.
 */
import { AllocMeter, type AllocResult, type AllocRule } from '../alloc.js';
import type { LcoreContext } from '../../src/lcore/types.js';
import { openRxQueue, openTxQueue, type PortData } from '../../lib/ethdev/ethdev.js';
import { Mempool, poolOf } from '../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, MBUF_HDR } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';

const mv = new MbufView();
import { MbufW16, MbufW32 } from '../../lib/mempool/mbuf_layout.js';

/** What the loop gets. */
export interface LoopbackArg {
  port: PortData;
  /** frames to send at least (more until the allocation window is over) */
  count: number;
  /** warm-up and window of the allocation measurement, in frames received */
  rule: AllocRule;
  /** most frames sent and not yet back */
  inFlight: number;
  /** give up after this long without a frame coming back (ms) */
  quietMs: number;
  /** Float64Array: [0] sent, [1] received, [2] refused by a full TX ring (retried) */
  counters: SharedArrayBuffer;
}

/** What it reports. */
export interface LoopbackResult {
  sent: number;
  received: number;
  /** frames that came back with a wrong length, a wrong number (order) or wrong bytes, or in several segments */
  bad: number;
  /** the first bad one's index, or -1 */
  firstBad: number;
  /** the allocation window (test/alloc.ts) */
  alloc: AllocResult;
}

/** Length of frame seq: 60..123 bytes. */
export const frameLen = (seq: number): number => 60 + (seq & 63);

const SRC_MAC = [0x02, 0x74, 0x73, 0x70, 0x65, 0x01];

/** Byte i of frame seq: broadcast destination, a source MAC, ethertype 0x88b5, seq (u32 LE), then a pattern. */
export function frameByte(seq: number, i: number): number {
  if (i < 6) return 0xff;
  if (i < 12) return SRC_MAC[i - 6];
  if (i === 12) return 0x88;
  if (i === 13) return 0xb5;
  if (i < 18) return (seq >>> (8 * (i - 14))) & 0xff;
  return (seq * 7 + i) & 0xff;
}

/** Send numbered frames through the port's queue pair 0 (count, or more until the window is over) and take them back; see the file comment. */
export async function virtioLoopbackLoop(a: LoopbackArg, ctx: LcoreContext): Promise<LoopbackResult> {
  const rx = await openRxQueue(a.port, 0), tx = await openTxQueue(a.port, 0);
  const pool = Mempool.attach(a.port.rxPools[0]);
  const c = new Float64Array(a.counters);
  // the first 18 bytes of every frame but for its number, and the pattern, precomputed as tables
  const head = new Uint8Array(18);
  for (let i = 0; i < 14; i++) head[i] = frameByte(0, i);
  const tb = new Uint32Array(32), rb = new Uint32Array(32), u8 = pool.u8, u16 = pool.u16, u32 = pool.u32;
  const meter = new AllocMeter(a.rule);
  // frames to send in all: open (a large small integer, not Infinity: a double) until the window
  // is over, then count or what is already sent
  const OPEN = 0x3fff_ffff;
  let total = OPEN;
  let sent = 0, received = 0, bad = 0, firstBad = -1, turns = 0, lastBack = performance.now(), seenAt = 0;
  while (!ctx.stopRequested() && received < total) {
    const room = Math.min(32, total - sent, a.inFlight - (sent - received));
    if (room > 0 && pktmbufAllocInit(pool, tb, room, 0, 0, a.port.port)) {
      for (let k = 0; k < room; k++) {
        const seq = sent + k, len = frameLen(seq), o = pool.offsetOf(tb[k]), d = o + MBUF_HDR + u16[(o >> 1) + MbufW16.DataOff];
        for (let i = 0; i < 14; i++) u8[d + i] = head[i];
        u8[d + 14] = seq & 0xff; u8[d + 15] = (seq >>> 8) & 0xff; u8[d + 16] = (seq >>> 16) & 0xff; u8[d + 17] = seq >>> 24;
        for (let i = 18; i < len; i++) u8[d + i] = (seq * 7 + i) & 0xff;
        u16[(o >> 1) + MbufW16.DataLen] = len;
        u32[(o >> 2) + MbufW32.PktLen] = len;
      }
      const k = tx.txBurst(tb, room, 0);
      if (k < room) {
        pktmbufFreeBulk(tb, room - k, k); // their numbers are sent again in the next burst
        c[2] += room - k;
      }
      sent += k;
      c[0] = sent;
    } else tx.txBurst(tb, 0, 0); // reclaim only
    const r = rx.rxBurst(rb, 32);
    for (let k = 0; k < r; k++) {
      const m = rb[k], p = poolOf(m), o = p.offsetOf(m), seq = received + k, len = frameLen(seq), d = mv.at(m).data;
      let ok = p.u32[(o >> 2) + MbufW32.PktLen] === len && p.u16[(o >> 1) + MbufW16.NbSegs] === 1;
      const pu8 = p.u8;
      for (let i = 0; ok && i < len; i++) {
        const want = i < 14 ? head[i] : i < 18 ? (seq >>> (8 * (i - 14))) & 0xff : (seq * 7 + i) & 0xff;
        if (pu8[d + i] !== want) ok = false;
      }
      if (!ok) {
        if (firstBad < 0) firstBad = seq;
        bad++;
      }
    }
    if (r > 0) {
      pktmbufFreeBulk(rb, r, 0);
      received += r;
      c[1] = received;
    }
    if (total === OPEN && meter.at(received) && (await meter.settled())) total = Math.max(a.count, sent);
    if ((++turns & 1023) === 0) { // the clock is read once per 1024 turns
      const now = performance.now();
      if (received !== seenAt) { seenAt = received; lastBack = now; } else if (now - lastBack > a.quietMs) break;
    }
  }
  return { sent, received, bad, firstBad, alloc: await meter.result() };
}
