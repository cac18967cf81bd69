/**
 * lcore functions for test/emu/dataplane.test.ts: a worker that attaches to a data plane and runs
 * commands the test posts in a shared command block (translate, raise an IRQ, mailbox read/write,
 * block without servicing, count, hammer the mapped regions, check mailbox reads of patterned
 * memory), calling service() between them. Several may attach to one data plane at once.
 */
import { DataPlane, type DataPlaneDesc } from '../../lib/emudev/dataplane.js';
import type { LcoreContext } from '../../src/lcore/types.js';

// Command block words (Int32Array).
/** request sequence number (the test bumps it after writing op and args) */
export const C_REQ = 0;
/** last sequence number done */
export const C_DONE = 1;
export const C_OP = 2;
/** args from here */
export const C_ARG = 4;
/** results from here */
export const C_RES = 16;
/** ends COUNT and HAMMER */
export const C_HALT = 32;
/** COUNT: iterations so far; HAMMER: passes so far */
export const C_COUNTER = 33;
/** 0 before attach, 1 attaching, 2 attached */
export const C_ATTACH = 34;
/** set: attach only after the test sets C_GO (the attach-during-quiesce test) */
export const C_GO = 35;
/** 1 while BLOCK spins */
export const C_BLOCKING = 36;
export const C_WORDS = 64;

export const OP_AT = 1, OP_IRQ = 2, OP_MREAD = 3, OP_MWRITE = 4, OP_BLOCK = 5, OP_COUNT = 6, OP_HAMMER = 7, OP_EXIT = 8, OP_INFO = 9, OP_MCHECK = 10;

/** The byte at offset i of the patterned client memory OP_MCHECK reads (not periodic below 16 MiB). */
export function patternByte(i: number): number {
  return (i ^ (i >>> 8) ^ (i >>> 16) ^ 0x5a) & 0xff;
}

/** Argument of planeWorker. */
export interface PlaneWorkerArg {
  plane: DataPlaneDesc;
  /** the command block (C_WORDS Int32 words) */
  cmd: SharedArrayBuffer;
  /** data for the mailbox commands */
  data: SharedArrayBuffer;
  /** wait for C_GO before attaching */
  gated: boolean;
}

/** Attach, then run commands until OP_EXIT or stop; returns how many table reloads it saw. */
export function planeWorker(a: PlaneWorkerArg, ctx: LcoreContext): { reloads: number } {
  const c = new Int32Array(a.cmd);
  const data = new Uint8Array(a.data);
  if (a.gated) while (Atomics.load(c, C_GO) === 0 && !ctx.stopRequested()) Atomics.wait(c, C_GO, 0, 5);
  Atomics.store(c, C_ATTACH, 1);
  const plane = DataPlane.attach(a.plane);
  Atomics.store(c, C_ATTACH, 2);
  let done = 0;
  try {
    for (;;) {
      plane.service();
      if (ctx.stopRequested()) break;
      const seq = Atomics.load(c, C_REQ);
      if (seq === done) { plane.sleep(0.2); continue; }
      const op = Atomics.load(c, C_OP);
      const arg = (i: number): number => Atomics.load(c, C_ARG + i);
      const res = (i: number, v: number): void => { Atomics.store(c, C_RES + i, v); };
      const iova = (arg(1) >>> 0) * 0x1_0000_0000 + (arg(0) >>> 0);
      if (op === OP_EXIT) { done = seq; Atomics.store(c, C_DONE, seq); break; }
      switch (op) {
        case OP_AT: {
          const o = plane.at(iova, arg(2), arg(3) !== 0);
          res(0, o);
          res(1, plane.hit);
          res(4, o >= 0 ? plane.u8[plane.hit][o] : -1);
          break;
        }
        case OP_INFO: break;
        case OP_IRQ: res(0, plane.irq(arg(0), arg(1)) ? 1 : 0); break;
        case OP_MREAD: res(0, plane.messageRead(iova, data, 0, arg(2)) ? 1 : 0); break;
        case OP_MWRITE: res(0, plane.messageWrite(iova, data, 0, arg(2)) ? 1 : 0); break;
        case OP_BLOCK: { // spin without servicing: a blocked poll loop
          Atomics.store(c, C_BLOCKING, 1);
          const end = Date.now() + arg(0);
          while (Date.now() < end) { /* spin */ }
          Atomics.store(c, C_BLOCKING, 0);
          break;
        }
        case OP_COUNT: // count iterations, servicing each time
          while (Atomics.load(c, C_HALT) === 0) {
            plane.service();
            Atomics.add(c, C_COUNTER, 1);
          }
          break;
        case OP_HAMMER: { // read every byte of every mapped region again and again (and translate [iova, +arg 2) when arg 2 > 0)
          let sum = 0, passes = 0, hits = 0, misses = 0;
          const before = plane.generation, len = arg(2);
          while (Atomics.load(c, C_HALT) === 0) {
            plane.service();
            if (len > 0) {
              const o = plane.at(iova, len, false);
              if (o >= 0) { hits++; sum = (sum + plane.u8[plane.hit][o + len - 1]) | 0; } else misses++;
            }
            for (let k = 0; k < plane.regions; k++) {
              const m = plane.u8[k];
              for (let i = 0; i < m.byteLength; i += 64) sum = (sum + m[i]) | 0;
            }
            passes++;
            Atomics.add(c, C_COUNTER, 1);
          }
          res(0, passes);
          res(1, plane.generation - before);
          res(2, sum);
          res(4, hits);
          res(5, misses);
          break;
        }
        case OP_MCHECK: { // arg 2 mailbox reads of arg 3 bytes at spread offsets of [iova, +arg 4), each byte checked against patternByte
          const n = arg(2), len = arg(3), span = arg(4);
          let ok = 0, failed = 0, wrong = 0;
          for (let r = 0; r < n; r++) {
            const off = (r * 7919 + arg(5) * 104_729) % (span - len);
            if (!plane.messageRead(iova + off, data, 0, len)) { failed++; continue; }
            let bad = 0;
            for (let i = 0; i < len; i++) if (data[i] !== patternByte(off + i)) bad++;
            if (bad === 0) ok++;
            else wrong++;
          }
          res(0, ok);
          res(1, failed);
          res(4, wrong);
          break;
        }
        default: break;
      }
      res(2 + (op === OP_HAMMER ? 8 : 0), plane.regions);
      res(3 + (op === OP_HAMMER ? 8 : 0), plane.generation);
      done = seq;
      Atomics.store(c, C_DONE, seq);
      Atomics.notify(c, C_DONE);
    }
  } finally {
    plane.detach();
  }
  return { reloads: plane.generation };
}
