/**
 * Counting garbage collections in the calling thread, to prove a poll loop allocates nothing.
 * GC entries are recorded when a collection happens but delivered through the event loop, which a
 * busy loop never yields to: call settle() after the loop before reading count().
 */
import { PerformanceObserver, constants } from 'node:perf_hooks';

/** One garbage collection: when it began (epoch ms, comparable across threads) and its kind. */
export interface GcEntry {
  /** performance.timeOrigin + startTime: a time any thread of the process can compare with its own */
  at: number;
  /** 'minor' (scavenge), 'major' (mark-compact), 'incremental' (a marking step) or 'weakcb' */
  kind: string;
}

/** A running count of this thread's garbage collections. */
export interface GcCounter {
  /** collections seen so far (after settle()) */
  count(): number;
  /** collections that started in [from, to) (performance.now() times), e.g. after warm-up until the loop ended */
  countBetween(from: number, to: number): number;
  /** scavenges (young-generation collections, where garbage made per operation shows first) and other collections that started in [from, to) */
  kindsBetween(from: number, to: number): { scavenges: number; others: number };
  /** the last collections seen (at most the last 4096), oldest first */
  entries(): GcEntry[];
  /** let pending GC entries be delivered */
  settle(): Promise<void>;
  /** stop observing */
  stop(): void;
}

const KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};
/** entries() keeps this many: a long-lived thread's log stays bounded */
const KEEP = 4096;

/** Start counting this thread's garbage collections. */
export function countGc(): GcCounter {
  const starts: number[] = [];
  const minor: boolean[] = [];
  const log: GcEntry[] = [];
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      starts.push(e.startTime);
      const kind = ((e as { detail?: { kind?: number } }).detail)?.kind ?? -1;
      minor.push(kind === constants.NODE_PERFORMANCE_GC_MINOR);
      log.push({ at: performance.timeOrigin + e.startTime, kind: KINDS[kind] ?? `kind ${kind}` });
      if (log.length > KEEP) log.splice(0, log.length - KEEP);
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  return {
    count: () => starts.length,
    countBetween: (from, to) => starts.filter((s) => s >= from && s < to).length,
    kindsBetween: (from, to) => {
      let scavenges = 0, others = 0;
      for (let i = 0; i < starts.length; i++) {
        if (starts[i] < from || starts[i] >= to) continue;
        if (minor[i]) scavenges++;
        else others++;
      }
      return { scavenges, others };
    },
    entries: () => log.slice(),
    settle: () => new Promise((r) => setTimeout(r, 20)),
    stop: () => obs.disconnect(),
  };
}
