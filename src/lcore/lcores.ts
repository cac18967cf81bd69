/**
 * lcores: one piscina worker thread per worker lcore, pinned to its CPU, each running one
 * long-lived function at a time (rte_eal_remote_launch / rte_eal_wait_lcore). The main thread is
 * the main lcore: the control plane. Stopping is cooperative: a shared stop word that poll loops
 * read every burst.
 */
import { Piscina } from 'piscina';
import { getAffinity, setAffinity } from '../os/libc.js';
import { log } from '../log.js';
import { setLcoreId, MAX_LCORE } from './id.js';
import { UsageError, type LcoreMap } from '../options.js';
import { siblingModule } from './module.js';
import type { GcEntry } from './gc.js';
import type { LaunchTask, LcoreFunction } from './types.js';

export type { LcoreContext, LcoreFunction } from './types.js';

const WORKER = siblingModule(import.meta.url, 'worker');

/** A worker finds fn by its export name in module: check that module exports exactly this function. */
async function checkExport(module: string, name: string, fn: unknown): Promise<void> {
  const mod = (await import(module)) as Record<string, unknown>;
  if (mod[name] !== fn) {
    throw new Error(`cannot launch ${name}: module ${module} does not export it (an lcore imports the module and calls the export by name: write "export function ${name}" there, or pass the module that exports it)`);
  }
}

interface Slot {
  id: number;
  cpu: number;
  pool: Piscina | null;
  control: Int32Array;
  running: Promise<unknown> | null;
}

/** The lcores of one EAL. */
export class Lcores {
  /** the main lcore (this thread) */
  readonly main: number;
  /** the CPU the main lcore runs on */
  readonly mainCpu: number;
  /** worker lcore ids, ascending */
  readonly workers: number[];
  private readonly slots = new Map<number, Slot>();

  /** Set up lcores from -l/--main-lcore; workers start lazily on first launch. */
  constructor(list: LcoreMap[] | null, mainLcore: number | null) {
    const allowed = getAffinity();
    const map = list ?? allowed.map((c) => ({ id: c, cpu: c }));
    for (const { id, cpu } of map) {
      if (id >= MAX_LCORE) throw new UsageError(`-l: lcore ${id} is above the limit ${MAX_LCORE - 1}`);
      if (!allowed.includes(cpu)) {
        throw new UsageError(`-l: CPU ${cpu} (for lcore ${id}) is not available to this process (allowed: ${allowed.join(',')})`);
      }
    }
    this.main = mainLcore ?? map[0].id;
    this.mainCpu = map.find((l) => l.id === this.main)?.cpu ?? allowed[0];
    this.workers = map.filter((l) => l.id !== this.main).map((l) => l.id);
    setLcoreId(this.main);
    for (const { id, cpu } of map) {
      if (id === this.main) continue;
      this.slots.set(id, { id, cpu, pool: null, control: new Int32Array(new SharedArrayBuffer(64)), running: null });
    }
  }

  /** The CPU lcore id runs on. */
  cpuOf(id: number): number {
    return id === this.main ? this.mainCpu : this.slot(id).cpu;
  }

  /** Pin the calling (main) thread to the main lcore's CPU, as DPDK does. */
  pinMain(): void {
    setAffinity([this.mainCpu]);
  }

  private slot(id: number): Slot {
    const s = this.slots.get(id);
    if (!s) {
      throw new UsageError(`lcore ${id} is not a worker lcore (workers: ${this.workers.join(',') || 'none'}; give more cores with -l, e.g. -l 0-1)`);
    }
    return s;
  }

  /**
   * Run module's exported fn(arg, ctx) on worker lcore id (rte_eal_remote_launch). fn is the
   * export's name, or the exported function itself (then checked here, before the worker starts:
   * `launch(1, import.meta.url, myLoop, arg)` in a one-file app). The promise settles when it
   * returns; a throw rejects it with the worker's error and stack.
   */
  launch<R = unknown>(id: number, module: string, fn: string, arg?: unknown, transfer?: Transferable[]): Promise<R>;
  /** Run the exported function fn of module on worker lcore id (see above); its result type is fn's. */
  launch<A, R>(id: number, module: string, fn: LcoreFunction<A, R>, arg: A, transfer?: Transferable[]): Promise<Awaited<R>>;
  launch(id: number, module: string, fn: string | LcoreFunction<never, unknown>, arg?: unknown, transfer: Transferable[] = []): Promise<unknown> {
    const s = this.slot(id);
    if (s.running) throw new Error(`lcore ${id} is busy: wait for it before launching again`);
    const name = typeof fn === 'string' ? fn : fn.name;
    if (!name) throw new TypeError(`lcore ${id}: the function to launch has no name: pass a named, exported function of ${module}`);
    s.pool ??= new Piscina({
      filename: WORKER, minThreads: 1, maxThreads: 1, idleTimeout: Infinity, maxQueue: 0,
      concurrentTasksPerWorker: 1, atomics: 'disabled',
      env: process.env,
    });
    const pool = s.pool;
    Atomics.store(s.control, 0, 0);
    Atomics.store(s.control, 1, 0);
    const task: LaunchTask = { lcore: id, cpu: s.cpu, module, fn: name, arg: arg ?? null, control: s.control.buffer as SharedArrayBuffer };
    log('debug', 'lcore', `launch ${name} on lcore ${id}`);
    const checked = typeof fn === 'string' ? Promise.resolve() : checkExport(module, name, fn);
    const p = checked.then(() => pool.run(task, { transferList: transfer as never }) as Promise<unknown>);
    const tracked = p.finally(() => { s.running = null; });
    s.running = tracked;
    tracked.catch(() => { /* surfaced through wait()/the caller's promise */ });
    return tracked;
  }

  /**
   * Resolve once every launched function has begun running (its worker started and its module
   * loaded) or ended, or after timeoutMs: a run's duration should count from here, not from launch.
   */
  async waitStarted(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const pending = (): boolean => [...this.slots.values()].some((s) => s.running !== null && Atomics.load(s.control, 1) === 0);
    while (pending() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  }

  /** Whether lcore id is running a function. */
  busy(id: number): boolean {
    return this.slot(id).running !== null;
  }

  /** Ask every running function to return (sets each stop word). */
  requestStop(): void {
    for (const s of this.slots.values()) Atomics.store(s.control, 0, 1);
  }

  /** Wait for lcore id's function (rte_eal_wait_lcore); resolves at once when idle. */
  async wait(id: number): Promise<unknown> {
    return await this.slot(id).running;
  }

  /**
   * The garbage collections of worker lcore id's thread since it started (the last 4096), for
   * allocation tests that choose their own window: a poll loop never yields to its event loop, so
   * they are read when the lcore is idle, by a small task of their own.
   */
  async gcLog(id: number): Promise<GcEntry[]> {
    const s = this.slot(id);
    if (s.running) throw new Error(`lcore ${id} is busy: read its GC log after it returned (wait(${id}))`);
    if (!s.pool) return [];
    const task: LaunchTask = { lcore: id, cpu: s.cpu, module: '', fn: '', arg: null, control: s.control.buffer as SharedArrayBuffer, gcLog: true };
    return await (s.pool.run(task) as Promise<GcEntry[]>);
  }

  /** Request stop and wait for all; rejects with the first error after all have ended. */
  async stopAll(): Promise<void> {
    this.requestStop();
    const rs = await Promise.allSettled([...this.slots.values()].map((s) => s.running));
    const bad = rs.find((r) => r.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
  }

  /** Stop everything and end the worker threads. */
  async close(): Promise<void> {
    try {
      await this.stopAll();
    } finally {
      await Promise.all([...this.slots.values()].map(async (s) => {
        const p = s.pool;
        s.pool = null;
        if (p) await p.destroy();
      }));
    }
  }
}
