/**
 * The dmatest engine's poll loop, run on the device's lcore (DmatestDevice.start launches it): the
 * data half of the device, like a PMD's rx/tx loop, and a back-end written against the emudev
 * back-end API alone (lib/emudev/backend.ts): it attaches with the device's EmuBackendDesc and
 * reads queue 0 of the queue table, the attributes it writes (completed, errors, status's error
 * bit) and MEM doorbell 0; besides, it imports only the register map's descriptor layout and libc.
 *
 * Each iteration: service() the data plane (honour a pause, pick up a new DMA table), pick up the
 * queue the main thread changed (the generation word moved: enable, ring address and size, reset),
 * then compare the doorbell (producer index, a word in BAR0's shared page that the driver stores to)
 * with the consumer index and execute up to BURST descriptors: translate the descriptor, source and
 * destination IOVAs with plane.at() (bounds and permissions checked; memory sent without fd goes
 * through the mailbox, a range across two 4 GiB views of a large region is copied piece by piece:
 * both plane.messageRead/messageWrite), copy and compute the Adler-32 of the source,
 * write checksum and status back into the descriptor, advance the consumer index; then raise MSI-X
 * vector 0 once for the batch. Idle: a few empty polls back to back, then plane.sleep() growing to
 * IDLE_MAX_MS, so an idle or disabled engine costs nearly nothing (a pause request, wake() or the
 * stop word end the sleep early).
 */
import { EmuBackend, QUEUE_DESC_HI, QUEUE_DESC_LO, QUEUE_ENABLE, QUEUE_SIZE, type EmuBackendDesc } from '../../../lib/emudev/backend.js';
import { viewOf } from '../../../src/os/libc.js';
import type { LcoreContext } from '../../../src/lcore/types.js';
import * as R from '../../../lib/dmatest/regs.js';

/** The lcore function's argument (structured-cloneable). */
export interface DmatestLcoreArg {
  /** the device as a back-end sees it (DmatestDevice.backendDesc) */
  backend: EmuBackendDesc;
  /** one Int32 word, set by the main thread: the loop returns */
  stop: SharedArrayBuffer;
}

/** What the loop reports when it returns. */
export interface DmatestLcoreResult {
  completed: number;
  errors: number;
}

/** Descriptors executed back to back before the interrupt and the next service(). */
const BURST = 64;
/** Empty polls back to back before the first sleep. */
const SPIN = 256;
/** First and longest idle sleep (ms). */
const IDLE_MIN_MS = 0.05, IDLE_MAX_MS = 5;
const MSIX = 2; // VFIO_PCI_MSIX_IRQ_INDEX
const TWO32 = 0x1_0000_0000;
/** the high word of an IOVA that a number cannot hold exactly (2^53 and up) */
const HI_LIMIT = 0x20_0000;
/** the consumer index's word from the doorbell's (both in BAR0's shared page) */
const CONSUMER_W = (R.REG_CONSUMER - R.REG_DOORBELL) >> 2;

/** Copy len bytes from src[so] to dst[d] (different buffers) and return the source's Adler-32, in one pass. */
function copyAdler(src: Uint8Array, so: number, dst: Uint8Array, d: number, len: number): number {
  let a = 1, s = 0;
  const delta = d - so;
  const end = so + len;
  for (let i = so; i < end; ) {
    const stop = Math.min(end, i + 3800);
    for (; i < stop; i++) { const x = src[i]; dst[i + delta] = x; a += x; s += a; }
    a %= 65521;
    s %= 65521;
  }
  return ((s << 16) | a) >>> 0;
}

/** The engine: poll the doorbell and execute descriptors until the stop word (or the lcore's stop). */
export function dmatestLcore(arg: DmatestLcoreArg, ctx: LcoreContext): DmatestLcoreResult {
  const stop = new Int32Array(arg.stop);
  const be = EmuBackend.attach(arg.backend);
  const plane = be.memory, st = be.attrs, q = be.queues, qb = be.queueBase(0);
  let W_STATUS: number, W_COMPLETED: number, W_ERRORS: number, bell: Int32Array;
  try { // a device that is not dmatest: leave the data plane before saying so
    W_STATUS = be.attrWord('status'); W_COMPLETED = be.attrWord('completed'); W_ERRORS = be.attrWord('errors');
    const db = be.doorbell(0);
    if (db.kind !== 'mem') throw new Error(`${be.name}: doorbell 0 must be a MEM doorbell (it is ${db.kind})`);
    bell = new Int32Array(viewOf(db.va, 4 * (CONSUMER_W + 1)));
  } catch (e) {
    be.detach();
    throw e;
  }
  const scratch = new Uint8Array(R.DESC_MAX_LEN);
  const desc = new Uint8Array(R.DESC_SIZE), descDv = new DataView(desc.buffer);
  const wb = new Uint8Array(8), wbDv = new DataView(wb.buffer);

  /** Execute the descriptor at IOVA d: true when handled (done or error), false when the ring itself is unreachable. */
  const execute = (d: number): boolean => {
    let srcLo: number, srcHi: number, dstLo: number, dstHi: number, len: number;
    const o = plane.at(d, R.DESC_SIZE, false);
    if (o >= 0) {
      const dv = plane.dv[plane.hit];
      srcLo = dv.getUint32(o + R.DESC_SRC, true); srcHi = dv.getUint32(o + R.DESC_SRC + 4, true);
      dstLo = dv.getUint32(o + R.DESC_DST, true); dstHi = dv.getUint32(o + R.DESC_DST + 4, true);
      len = dv.getUint32(o + R.DESC_LEN, true);
    } else if (o === -2 && plane.messageRead(d, desc, 0, R.DESC_SIZE)) {
      srcLo = descDv.getUint32(R.DESC_SRC, true); srcHi = descDv.getUint32(R.DESC_SRC + 4, true);
      dstLo = descDv.getUint32(R.DESC_DST, true); dstHi = descDv.getUint32(R.DESC_DST + 4, true);
      len = descDv.getUint32(R.DESC_LEN, true);
    } else {
      return false;
    }
    let status = R.DESC_STATUS_ERROR, sum = 0;
    if (len !== 0 && len <= R.DESC_MAX_LEN && srcHi < HI_LIMIT && dstHi < HI_LIMIT) {
      const src = srcHi * TWO32 + srcLo, dst = dstHi * TWO32 + dstLo;
      const so = plane.at(src, len, false), sk = plane.hit;
      const dof = plane.at(dst, len, true), dk = plane.hit;
      if (so >= 0 && dof >= 0) {
        if (sk === dk) { // one region: checksum first, then a memmove (the ranges may overlap)
          const m = plane.u8[sk];
          sum = R.adler32(m, so, len);
          m.copyWithin(dof, so, so + len);
        } else {
          sum = copyAdler(plane.u8[sk], so, plane.u8[dk], dof, len);
        }
        status = R.DESC_STATUS_DONE;
      } else if (so !== -1 && dof !== -1) {
        // Memory without fd on one side or both: through the scratch buffer and the mailbox. The
        // table may change while a message is waited for: translate again after each.
        let ok = true;
        if (so >= 0) scratch.set(plane.u8[sk].subarray(so, so + len));
        else ok = plane.messageRead(src, scratch, 0, len);
        if (ok) {
          sum = R.adler32(scratch, 0, len);
          const again = plane.at(dst, len, true);
          if (again >= 0) plane.u8[plane.hit].set(scratch.subarray(0, len), again);
          else ok = again === -2 && plane.messageWrite(dst, scratch, 0, len);
        }
        if (ok) status = R.DESC_STATUS_DONE;
      }
    }
    Atomics.add(st, status === R.DESC_STATUS_DONE ? W_COMPLETED : W_ERRORS, 1);
    // Write checksum and status back (translated again: message I/O may have changed the table).
    const w = plane.at(d + R.DESC_CHECKSUM, 8, true);
    if (w >= 0) {
      const dv = plane.dv[plane.hit];
      dv.setUint32(w, sum, true);
      dv.setUint32(w + 4, status, true);
      return true;
    }
    if (w === -1) return false;
    wbDv.setUint32(0, sum, true);
    wbDv.setUint32(4, status, true);
    return plane.messageWrite(d + R.DESC_CHECKSUM, wb, 0, 8);
  };

  let gen = -1, running = false, ring = 0, mask = 0, consumer = 0, idle = 0, nap = 0;
  try {
    while (Atomics.load(stop, 0) === 0 && !ctx.stopRequested()) {
      plane.service();
      const g = be.generation;
      if (g !== gen) {
        gen = g;
        const hi = Atomics.load(q, qb + QUEUE_DESC_HI) >>> 0, entries = Atomics.load(q, qb + QUEUE_SIZE);
        running = Atomics.load(q, qb + QUEUE_ENABLE) !== 0 && entries > 0 && hi < HI_LIMIT;
        ring = hi * TWO32 + (Atomics.load(q, qb + QUEUE_DESC_LO) >>> 0);
        mask = entries - 1;
        consumer = Atomics.load(bell, CONSUMER_W) >>> 0;
        idle = nap = 0;
      }
      if (!running) { plane.sleep(IDLE_MAX_MS); continue; }
      let done = 0;
      while (done < BURST) {
        if ((Atomics.load(bell, 0) >>> 0) === consumer) break;
        if (!execute(ring + (consumer & mask) * R.DESC_SIZE)) {
          Atomics.store(st, W_STATUS, R.STATUS_ERROR); // the ring is unreachable: stop until re-enabled
          running = false;
          break;
        }
        consumer = (consumer + 1) >>> 0;
        Atomics.store(bell, CONSUMER_W, consumer | 0);
        done++;
      }
      if (done > 0) {
        plane.irq(MSIX, 0);
        idle = nap = 0;
        continue;
      }
      if (!running || ++idle < SPIN) continue;
      nap = nap === 0 ? IDLE_MIN_MS : Math.min(IDLE_MAX_MS, nap * 2);
      plane.sleep(nap);
    }
  } finally {
    be.detach();
  }
  return { completed: Atomics.load(st, W_COMPLETED) >>> 0, errors: Atomics.load(st, W_ERRORS) >>> 0 };
}
