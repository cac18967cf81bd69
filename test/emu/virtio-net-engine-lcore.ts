/**
 * An lcore function for test/emu/virtio-net-backend.test.ts: the virtio-net engine
 * (VirtioNetBackend) driven step by step from the test thread instead of the device's poll loop.
 * It services the device between steps (so the server thread's register writes complete) and
 * runs one command at a time from the control words:
 *   CMD_DELIVER: n frames of len bytes (byte j of frame i: (i + j) & 0xff) -> deliver(); TOOK = how
 *     many it took; it frees the rest (the caller's).
 *   CMD_RECEIVE: receive() -> COUNT, and each packet's length and first byte at LENS + 2 * i.
 * Stops at the device's stop word (VnetWorld.close).
 */
import type { LcoreContext } from '../../src/lcore/types.js';
import { Mempool } from '../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, readPacket, writePacket } from '../../lib/mempool/mbuf.js';
import { VirtioNetBackend } from '../../drivers/emu/virtio-net/backend.js';
import type { VirtioNetLoopArg } from '../../drivers/emu/virtio-net/datapath.js';
import * as L from '../../drivers/emu/virtio-net/layout.js';

/** Control words: the command (0 when done), its argument and length, results. */
export const CMD = 0, ARG = 1, LEN = 2, TOOK = 3, COUNT = 4, LENS = 8, CTL_WORDS = 8 + 2 * 64;
export const CMD_DELIVER = 1, CMD_RECEIVE = 2;

/** What the lcore is launched with. */
export interface EngineLcoreArg {
  loop: VirtioNetLoopArg;
  ctl: SharedArrayBuffer;
}

/** Serve commands until the device's stop word is set; returns how many it ran. */
export function engineSteps(arg: EngineLcoreArg, ctx: LcoreContext): number {
  const st = new Int32Array(arg.loop.engine.desc.attrs.words);
  const ctl = new Int32Array(arg.ctl);
  const pool = Mempool.attach(arg.loop.backend.rxPools[0]);
  const be = VirtioNetBackend.open(arg.loop.engine, pool);
  const pkts = new Uint32Array(64), buf = new Uint8Array(16384);
  let ran = 0;
  Atomics.store(st, L.G_RUNNING, 1);
  try {
    while (!ctx.stopRequested() && Atomics.load(st, L.G_STOP) === 0) {
      be.service();
      const cmd = Atomics.load(ctl, CMD);
      if (cmd === CMD_DELIVER) {
        const n = ctl[ARG], len = ctl[LEN];
        if (!pktmbufAllocInit(pool, pkts, n, 0, 0, 0)) throw new Error('engine lcore: pool empty');
        for (let i = 0; i < n; i++) {
          for (let j = 0; j < len; j++) buf[j] = (i + j) & 0xff;
          writePacket(pkts[i], buf.subarray(0, len));
        }
        const took = be.deliver(pkts, n);
        if (took < n) pktmbufFreeBulk(pkts, n - took, took);
        ctl[TOOK] = took;
      } else if (cmd === CMD_RECEIVE) {
        const n = be.receive(pkts, 64);
        for (let i = 0; i < n; i++) {
          const len = readPacket(pkts[i], buf);
          ctl[LENS + 2 * i] = len;
          ctl[LENS + 2 * i + 1] = buf[0];
        }
        pktmbufFreeBulk(pkts, n, 0);
        ctl[COUNT] = n;
      } else {
        be.idle(1);
        continue;
      }
      ran++;
      Atomics.store(ctl, CMD, 0);
    }
  } finally {
    be.close();
    Atomics.store(st, L.G_RUNNING, 0);
  }
  return ran;
}
