/**
 * The EAL: turns options into an environment (DMA memory, later lcores and devices) and releases
 * it again: on close(), on normal exit, and on SIGINT/SIGTERM (hugepage files never outlive us).
 */
import { unlinkSync, statSync } from 'node:fs';
import { EalMemory, type MemoryConfig } from './memory/memory.js';
import { hugeMounts, defaultHugePageSize, formatPageSize } from './memory/hugepages.js';
import { type EalOptions, defaultEalOptions, UsageError } from './options.js';
import { setLogLevel, log } from './log.js';
import { Lcores } from './lcore/lcores.js';

const CHUNK = 64 * 2 ** 20;

/** Resolve where DMA memory comes from; throws a clear error when hugepages are not usable. */
export function memoryConfig(o: EalOptions, procRoot = '/proc'): MemoryConfig {
  const limit = o.memoryMb > 0 ? o.memoryMb * 2 ** 20 : Infinity;
  const preallocate = o.memoryMb > 0 ? o.memoryMb * 2 ** 20 : 0;
  const base = { iovaMode: o.iovaMode, preallocate, limit };
  if (o.noHuge) return { ...base, backing: { kind: 'memfd', huge: false, prefix: o.filePrefix }, pageSize: 4096, chunk: CHUNK };
  if (o.inMemory) {
    const pageSize = defaultHugePageSize(procRoot);
    if (pageSize === 0) throw new Error('--in-memory: this kernel has no hugepages; use --no-huge');
    return { ...base, backing: { kind: 'memfd', huge: true, prefix: o.filePrefix }, pageSize, chunk: Math.max(CHUNK, pageSize) };
  }
  const mounts = hugeMounts(procRoot);
  let mount;
  if (o.hugeDir !== null) {
    const dir = o.hugeDir.replace(/\/+$/, '') || '/';
    mount = mounts.find((m) => m.dir === dir);
    if (!mount) {
      const exists = (() => { try { return statSync(dir).isDirectory(); } catch { return false; } })();
      throw new Error(
        `--huge-dir ${dir} is not a hugetlbfs mount${exists ? '' : ' (it does not exist)'}; ` +
          `mount one as root with: mkdir -p ${dir} && mount -t hugetlbfs nodev ${dir} (or run with --no-huge)`,
      );
    }
  } else {
    const def = defaultHugePageSize(procRoot);
    mount = mounts.find((m) => m.pageSize === def) ?? mounts[0];
    if (!mount) {
      throw new Error(
        'no hugetlbfs is mounted: mount one as root with: mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages, ' +
          'pass its directory with --huge-dir, or run without hugepages: --no-huge (or --in-memory)',
      );
    }
  }
  return { ...base, backing: { kind: 'hugetlbfs', dir: mount.dir, prefix: o.filePrefix }, pageSize: mount.pageSize, chunk: Math.max(CHUNK, mount.pageSize) };
}

/** Files of every live EAL in this process, removed by the exit hook. */
const liveFiles = new Set<() => string[]>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' runs synchronously even after process.exit(); unlinking (not unmapping) is safe while
  // workers may still touch the memory.
  process.on('exit', () => {
    for (const files of liveFiles) for (const f of files()) {
      try { unlinkSync(f); } catch { /* gone */ }
    }
  });
}

/** An initialized environment: options, DMA memory, and the hooks to tear it down. */
export class Eal {
  readonly options: EalOptions;
  readonly memory: EalMemory;
  readonly lcores: Lcores;
  private readonly filesFn: () => string[];
  private readonly closers: Array<() => void | Promise<void>> = [];
  private signalHandler: ((sig: NodeJS.Signals) => void) | null = null;
  private closed = false;

  /** Initialize from parsed options (see parseEalArgs). */
  constructor(options: Partial<EalOptions> = {}) {
    this.options = { ...defaultEalOptions(), ...options };
    if (this.options.logLevel) setLogLevel(this.options.logLevel);
    this.lcores = new Lcores(this.options.lcores, this.options.mainLcore);
    const mc = memoryConfig(this.options);
    this.memory = new EalMemory(mc);
    this.filesFn = () => this.memory.files();
    liveFiles.add(this.filesFn);
    installExitHook();
    log('info', 'eal', `memory: ${mc.backing.kind}, pages ${formatPageSize(mc.pageSize)}, iova ${mc.iovaMode}`);
  }

  /** Run fn (in reverse order of registration) when the EAL closes: ports, lcores, devices. */
  onClose(fn: () => void | Promise<void>): void {
    this.closers.push(fn);
  }

  /**
   * Handle SIGINT/SIGTERM with fn (e.g. stop lcores, print statistics, then close). Without a
   * handler the EAL's own releases memory and exits with 128+signal.
   */
  handleSignals(fn?: (sig: NodeJS.Signals) => void): void {
    this.removeSignalHandler();
    this.signalHandler = fn ?? ((sig) => {
      void this.close().finally(() => process.exit(128 + (sig === 'SIGINT' ? 2 : 15)));
    });
    process.on('SIGINT', this.signalHandler);
    process.on('SIGTERM', this.signalHandler);
  }

  private removeSignalHandler(): void {
    if (!this.signalHandler) return;
    process.off('SIGINT', this.signalHandler);
    process.off('SIGTERM', this.signalHandler);
    this.signalHandler = null;
  }

  /**
   * Release everything, in the order that keeps memory valid: stop the lcores' loops, run the
   * closers (ports, devices) newest first, end the worker threads, then unmap memory and remove
   * hugepage files. The first error is rethrown after all of it.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.removeSignalHandler();
    let first: unknown = null;
    const step = async (fn: () => void | Promise<void>): Promise<void> => {
      try { await fn(); } catch (e) { first ??= e; }
    };
    await step(() => this.lcores.stopAll());
    for (const fn of this.closers.reverse()) await step(fn);
    await step(() => this.lcores.close());
    this.memory.close();
    liveFiles.delete(this.filesFn);
    if (first) throw first;
  }
}

export { UsageError };
