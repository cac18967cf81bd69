/** Poll functions for the lcore error test: one that fails, one that runs until stopped. */
import type { LcoreContext } from '../../src/lcore/types.js';

/** Spin for ms milliseconds, then throw. */
export function throwAfter(ms: number, ctx: LcoreContext): never {
  const end = Date.now() + ms;
  while (Date.now() < end && !ctx.stopRequested()) { /* spin */ }
  throw new Error(`deliberate failure in lcore ${ctx.id}`);
}

/** Spin until asked to stop. */
export function spinUntilStopped(_arg: null, ctx: LcoreContext): number {
  let n = 0;
  while (!ctx.stopRequested()) n++;
  return n;
}
