/**
 * Counting garbage collections in the calling thread, to prove a poll loop allocates nothing.
 * GC entries are recorded when a collection happens but delivered through the event loop, which a
 * busy loop never yields to: call settle() after the loop before reading count().
 */
import { PerformanceObserver } from 'node:perf_hooks';

/** A running count of this thread's garbage collections. */
export interface GcCounter {
  /** collections seen so far (after settle()) */
  count(): number;
  /** collections that started in [from, to) (performance.now() times), e.g. after warm-up until the loop ended */
  countBetween(from: number, to: number): number;
  /** let pending GC entries be delivered */
  settle(): Promise<void>;
  /** stop observing */
  stop(): void;
}

/** Start counting this thread's garbage collections. */
export function countGc(): GcCounter {
  const starts: number[] = [];
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) starts.push(e.startTime);
  });
  obs.observe({ entryTypes: ['gc'] });
  return {
    count: () => starts.length,
    countBetween: (from, to) => starts.filter((s) => s >= from && s < to).length,
    settle: () => new Promise((r) => setTimeout(r, 20)),
    stop: () => obs.disconnect(),
  };
}
