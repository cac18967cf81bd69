/**
 * An lcore function for test/emu/virtio-net-backend.test.ts: the virtio-net engine
 * (VirtioNetBackend, as the device's net_virtio_emu port opens it on this lcore) driven step by
 * step from the test thread instead of the forwarding loop.
 * It services the device between steps (so the server thread's register writes complete) and
 * runs one command at a time from the control words:
 *   CMD_DELIVER: n frames of len bytes (byte j of frame i: (i + j) & 0xff) -> deliver(); TOOK = how
 *     many it took; it frees the rest (the caller's).
 *   CMD_RECEIVE: receive() -> COUNT, and each packet's length and first byte at LENS + 2 * i.
 * Stops at the loop's stop word (VnetWorld.close).
 */
import type { LcoreContext } from '../../src/lcore/types.js';
import { Mempool } from '../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeBulk, readPacket, writePacket } from '../../lib/mempool/mbuf.js';
import { openRxQueue, openTxQueue } from '../../lib/ethdev/ethdev.js';
import { heldBackend, releaseHeld } from '../../drivers/net/virtio_emu/virtio_emu_data.js';
import { FWD_RUNNING, FWD_STOP, type VirtioNetFwdArg } from '../../drivers/emu/virtio-net/emu.js';

/** Control words: the command (0 when done), its argument and length, results. */
export const CMD = 0, ARG = 1, LEN = 2, TOOK = 3, COUNT = 4, LENS = 8, CTL_WORDS = 8 + 2 * 64;
export const CMD_DELIVER = 1, CMD_RECEIVE = 2;

/** What the lcore is launched with. */
export interface EngineLcoreArg {
  loop: VirtioNetFwdArg;
  ctl: SharedArrayBuffer;
}

/** Serve commands until the loop's stop word is set; returns how many it ran. */
export async function engineSteps(arg: EngineLcoreArg, ctx: LcoreContext): Promise<number> {
  const st = new Int32Array(arg.loop.ctl);
  const ctl = new Int32Array(arg.ctl);
  const guest = arg.loop.pairs[0].guest;
  const pool = Mempool.attach(guest.rxPools[0]);
  await openRxQueue(guest, 0);
  await openTxQueue(guest, 0); // the port's engine in this thread
  const be = heldBackend(guest);
  if (!be) throw new Error(`${guest.name}: its queues opened no engine in this lcore`);
  const pkts = new Uint32Array(64), buf = new Uint8Array(16384);
  let ran = 0;
  Atomics.store(st, FWD_RUNNING, 1);
  try {
    while (!ctx.stopRequested() && Atomics.load(st, FWD_STOP) === 0) {
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
    releaseHeld(guest.name);
    Atomics.store(st, FWD_RUNNING, 0);
  }
  return ran;
}
