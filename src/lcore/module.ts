/**
 * Module paths for code that runs on an lcore: a driver's control half names its data half by
 * path, and the lcore imports it. Kept apart from lcores.ts so that naming a module does not load
 * the worker-thread machinery (piscina) into every control half.
 */

/** A module file next to the caller, in the caller's own extension (.ts under a TS loader, .js built). */
export function siblingModule(callerUrl: string, basename: string): string {
  const ext = callerUrl.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`./${basename}${ext}`, callerUrl).href;
}
