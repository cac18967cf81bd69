/**
 * The body of every lcore worker thread (a piscina worker): on its first task it pins itself to
 * its CPU, names itself and takes its lcore id; then it runs the launched function, which polls
 * until the stop word in shared memory is set.
 */
import { setAffinity, setThreadName, gettid } from '../os/libc.js';
import { setLcoreId, lcoreId } from './id.js';
import { countGc } from './gc.js';
import type { LcoreContext, LaunchTask } from './types.js';

let pinned = -1;
// Every collection of this thread, from its start: Lcores.gcLog() reads them between runs, so an
// allocation test can count the collections in a window it chose without the loop's help.
const gcs = countGc();

/** piscina entry point: run one launched function on this lcore. */
export default async function runTask(task: LaunchTask): Promise<unknown> {
  if (task.gcLog) {
    await gcs.settle();
    return gcs.entries();
  }
  if (pinned !== task.lcore) {
    setAffinity([task.cpu]);
    setThreadName(`lcore-${task.lcore}`);
    setLcoreId(task.lcore);
    pinned = task.lcore;
  }
  const mod = (await import(task.module)) as Record<string, unknown>;
  const fn = mod[task.fn];
  if (typeof fn !== 'function') throw new Error(`lcore ${task.lcore}: module ${task.module} has no exported function "${task.fn}"`);
  const control = new Int32Array(task.control);
  // [1]: the function is about to run (its module is loaded): a run's duration counts from here
  Atomics.store(control, 1, 1);
  const ctx: LcoreContext = {
    id: lcoreId(),
    tid: gettid(),
    control,
    stopRequested: () => Atomics.load(control, 0) !== 0,
  };
  return await (fn as (arg: unknown, ctx: LcoreContext) => unknown)(task.arg, ctx);
}
