/**
 * The RxIdleSleeper allocation probe (test/alloc.ts measureInWorker): three fake queues sharing one
 * FdRxInterrupt over an eventfd of this worker, every eighth round busy; poll(2) with timeout 0.
 */
import * as os from '../../src/os/libc.js';
import { rxqStatsBase, RXQ_INTERRUPTS } from '../../lib/ethdev/ethdev.js';
import { RxIdleSleeper, FdRxInterrupt } from '../../lib/ethdev/rx_intr.js';
import type { AllocOp } from '../alloc.js';

/** One operation: one round of the sleeper (a sleep every few rounds), its live counters read. */
export function sleeperRounds(): AllocOp {
  const fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC);
  // FdRxInterrupt (the af_packet/tap one): its enable() and disable() are measured too.
  const intr = new FdRxInterrupt(fd, new Float64Array(16), rxqStatsBase(0) + RXQ_INTERRUPTS, () => false);
  const qs = [0, 1, 2].map((queue) => ({ rxq: { rxBurst: () => 0, intr }, port: 0, name: 'fake', queue }));
  const s = new RxIdleSleeper(qs, { idlePolls: 2, maxSleepMs: 0 });
  const seen = new Float64Array(1);
  // Reading the live counters in the loop (as a worker publishing progress does) allocates nothing either.
  return (i) => {
    s.round((i & 7) === 0 ? 1 : 0);
    seen[0] = s.stats.sleeps;
  };
}
