/** Shapes shared by the lcore launcher (main thread) and the lcore worker. */

/** What a launched poll function receives besides its argument. */
export interface LcoreContext {
  /** this lcore's id */
  id: number;
  /** kernel thread id (for diagnostics) */
  tid: number;
  /** shared control words: [0] is the stop flag, [1] is set once the function starts (Lcores.waitStarted) */
  control: Int32Array;
  /** true once stop was requested: check it every burst, return soon after */
  stopRequested: () => boolean;
}

/** A poll function: runs on an lcore until ctx.stopRequested(), returns a structured-cloneable result. */
export type LcoreFunction<A = unknown, R = unknown> = (arg: A, ctx: LcoreContext) => R | Promise<R>;

/** Message to the worker: what to run where. */
export interface LaunchTask {
  lcore: number;
  cpu: number;
  /** module URL (file:) exporting fn */
  module: string;
  fn: string;
  arg: unknown;
  control: SharedArrayBuffer;
  /** instead of running a function, answer with the thread's GC log (Lcores.gcLog) */
  gcLog?: true;
}
