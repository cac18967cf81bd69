/**
 * lcore function for test/emu/backend-api.test.ts: a back-end written against the emudev back-end
 * API alone. It attaches with a device's EmuBackendDesc and reads an event subscription:
 *   - phase RUN: a busy poll loop that reads every mapped byte of client memory (1 per 256) each
 *     round, counting rounds, and logs each event with a snapshot of what it sees right then;
 *   - phase SLEEP (once the test sets HALT): one poll(2) on the channel's eventfd with a long
 *     timeout, then the event that woke it and when.
 */
import { EmuBackend, QUEUE_ENABLE, QUEUE_SIZE, type EmuBackendDesc } from '../../lib/emudev/backend.js';
import { EVENT_DEVICE_RESET, EVENT_MEM_TABLE_CHANGED, EVENT_QUEUE_DISABLED, EVENT_QUEUE_ENABLED, EVENT_STATUS_CHANGED, type EmuEventChannelDesc } from '../../lib/emudev/events.js';
import * as os from '../../src/os/libc.js';
import type { LcoreContext } from '../../src/lcore/types.js';

// Control words (Int32).
/** 1 once attached */
export const K_ATTACHED = 0;
/** RUN rounds so far */
export const K_ROUNDS = 1;
/** set by the test: leave RUN for SLEEP */
export const K_HALT = 2;
/** 1 while SLEEP is about to enter or is inside poll(2) */
export const K_SLEEPING = 3;
/** SLEEP: what poll returned, Date.now() when it returned (low 31 bits), the event type and arg read then */
export const K_POLL_RET = 4, K_WOKE_AT = 5, K_WOKE_TYPE = 6, K_WOKE_ARG = 7;
/** events logged */
export const K_EVENTS = 8;
/** the log: LOG_WORDS per event from here */
export const K_LOG = 16;
/** per event: type, arg, seq, then two snapshot words (see snapshot()) */
export const LOG_WORDS = 5;
export const K_WORDS = K_LOG + 64 * LOG_WORDS;

/** Argument of backendWorker. */
export interface BackendWorkerArg {
  backend: EmuBackendDesc;
  channel: EmuEventChannelDesc;
  /** K_WORDS Int32 words */
  control: SharedArrayBuffer;
  /** an IOVA the test unmaps: MEM_TABLE_CHANGED's snapshot translates it */
  probeIova: number;
  /** SLEEP's poll timeout (ms) */
  sleepMs: number;
}

/** Run RUN then SLEEP; returns the bytes summed (so the reads are not optimised away). */
export function backendWorker(a: BackendWorkerArg, ctx: LcoreContext): { sum: number } {
  const k = new Int32Array(a.control);
  const be = EmuBackend.attach(a.backend);
  const events = be.events(a.channel);
  const plane = be.memory, qb = be.queueBase(0), statusWord = be.attrWord('status');
  Atomics.store(k, K_ATTACHED, 1);
  let sum = 0, n = 0;
  /** What the back-end sees when an event arrives: two words per event type. */
  const snapshot = (type: number): [number, number] => {
    switch (type) {
      case EVENT_MEM_TABLE_CHANGED: return [plane.regions, plane.at(a.probeIova, 1, false)];
      case EVENT_QUEUE_ENABLED: case EVENT_QUEUE_DISABLED: return [be.queues[qb + QUEUE_ENABLE], be.queues[qb + QUEUE_SIZE]];
      case EVENT_STATUS_CHANGED: return [Atomics.load(be.attrs, statusWord), 0];
      case EVENT_DEVICE_RESET: return [be.queues[qb + QUEUE_ENABLE], be.queues[qb + QUEUE_SIZE]];
      default: return [0, 0];
    }
  };
  try {
    while (Atomics.load(k, K_HALT) === 0 && !ctx.stopRequested()) {
      plane.service();
      for (let t = events.next(); t !== 0; t = events.next()) {
        const o = K_LOG + (n % 64) * LOG_WORDS;
        const [s0, s1] = snapshot(t);
        k[o] = t; k[o + 1] = events.arg; k[o + 2] = events.seq; k[o + 3] = s0; k[o + 4] = s1;
        Atomics.store(k, K_EVENTS, ++n);
      }
      // every mapped byte (1 per 256) of every region: a view used after its unmap would crash here
      for (let r = 0; r < plane.regions; r++) {
        const m = plane.u8[r];
        for (let i = 0; i < m.byteLength; i += 256) sum += m[i];
      }
      Atomics.add(k, K_ROUNDS, 1);
    }
    // SLEEP: drain, then sleep in poll(2) on the eventfd until a post
    while (events.next() !== 0) { /* drain */ }
    const pfd = new Uint8Array(os.SIZEOF_POLLFD);
    new Int32Array(pfd.buffer)[0] = events.fd;
    new Int16Array(pfd.buffer)[2] = os.POLLIN;
    Atomics.store(k, K_SLEEPING, 1);
    const ret = os.pollFds(pfd, 1, a.sleepMs);
    Atomics.store(k, K_WOKE_AT, Date.now() % 0x7fff_ffff);
    Atomics.store(k, K_WOKE_TYPE, events.next());
    Atomics.store(k, K_WOKE_ARG, events.arg);
    Atomics.store(k, K_POLL_RET, ret);
    Atomics.store(k, K_SLEEPING, 0);
  } finally {
    be.detach();
  }
  return { sum };
}
