/**
 * The worker lcore of virtio-intr.test.ts's fallback test: net_virtio's TX data half on its own
 * thread, against a device whose notify page is not mapped and which wants doorbells, so every
 * burst's doorbell is a no-reply REGION_WRITE sent from this thread on the vfio-user socket the
 * main thread uses for its own requests at the same time.
 */
import type { LcoreContext } from '../../src/lcore/types.js';
import { openTxQueue, type PortData } from '../../lib/ethdev/ethdev.js';
import { Mempool, type MempoolDesc } from '../../lib/mempool/mempool.js';
import { pktmbufAllocInit, MBUF_HDR, F_DATA_OFF, F_DATA_LEN, F_PKT_LEN } from '../../lib/mempool/mbuf.js';

/** What the loop gets. */
export interface FallbackKickArg {
  port: PortData;
  txPool: MempoolDesc;
  frames: number;
}

/** Send `frames` 60-byte broadcast frames in bursts of up to 16; returns how many were sent. */
export async function fallbackKickLoop(a: FallbackKickArg, ctx: LcoreContext): Promise<number> {
  const tx = await openTxQueue(a.port, 0);
  const pool = Mempool.attach(a.txPool);
  const b = new Uint32Array(16), u8 = pool.u8, u16 = pool.u16, u32 = pool.u32;
  let sent = 0;
  const deadline = performance.now() + 30_000;
  while (sent < a.frames && !ctx.stopRequested() && performance.now() < deadline) {
    const n = Math.min(16, a.frames - sent);
    if (!pktmbufAllocInit(pool, b, n, 0, 0, a.port.port)) continue;
    for (let k = 0; k < n; k++) {
      const o = pool.offsetOf(b[k]), d = o + MBUF_HDR + u16[(o + F_DATA_OFF) >> 1];
      for (let i = 0; i < 60; i++) u8[d + i] = i < 6 ? 0xff : (sent + k + i) & 0xff;
      u8[d + 12] = 0x88; u8[d + 13] = 0xb5;
      u16[(o + F_DATA_LEN) >> 1] = 60;
      u32[(o + F_PKT_LEN) >> 2] = 60;
    }
    let k = 0;
    while (k < n && performance.now() < deadline) k += tx.txBurst(b, n - k, k);
    sent += k;
    // Not faster than the test's thread drains the wire (a 1024-frame ring): 32 frames per 2 ms.
    if ((sent & 31) === 0) await new Promise((r) => setTimeout(r, 2));
  }
  return sent;
}
