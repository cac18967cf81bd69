/**
 * What every tspmd application shares: `<app> [EAL options] -- [app options]` parsing, --help,
 * exit codes (2 for bad arguments, 1 for failures), EAL set-up and teardown, the EAL's telemetry
 * (the DPDK telemetry v2 socket unless --no-telemetry, Prometheus metrics with --metrics-port;
 * docs/telemetry.md), and live capture by `tspmd pdump` (lib/pdump; off with TSPMD_PDUMP=0 in the
 * environment, docs/pcap.md). An app is one module:
 * it exports its App object and its lcore functions, and ends with appMain(import.meta.url, app),
 * which runs it when the module is the program (`node l2fwd.js ...`) and does nothing when the
 * module is imported: by the tspmd command, or by an lcore worker loading its poll function.
 */
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { Eal } from '../../src/eal.js';
import { parseEalArgs, splitArgs, ealOptionKey, UsageError, EAL_HELP, intOption, wholeNumber, type EalOptions } from '../../src/options.js';
import { startTelemetry } from '../telemetry/start.js';
import { pdumpInit } from '../pdump/pdump.js';

/** One application: its name, help text, option parser (required when it has options) and body. */
export type App<O = void> = AppBody<O> & (void extends O ? { parse?(args: string[]): O } : { parse(args: string[]): O });

/** The parts of an App every app has. */
export interface AppBody<O> {
  name: string;
  /** one line for `--help` and `tspmd --help` */
  summary?: string;
  /** application options' help (after "--") */
  help?: string;
  /** the app's own flags (value-taking: true) that may also stand before "--", e.g. --json */
  ownFlags?: Record<string, boolean>;
  /** EAL defaults this app prefers (the user's options win) */
  ealDefaults?: Partial<EalOptions>;
  /** run; the returned number is the exit code */
  main(eal: Eal, opts: O): Promise<number>;
}

/** Run an app with argv (without the app name); resolves to the process exit code. prog names it in messages (e.g. "tspmd l2fwd"). */
export async function runApp<O>(app: App<O>, argvIn: string[], prog: string = app.name): Promise<number> {
  let opts: O;
  let ealOpts: EalOptions;
  const argv = app.ownFlags ? moveOwnFlags(argvIn, app.ownFlags) : argvIn;
  const [ealArgs, appArgs] = splitArgs(argv);
  try {
    ealOpts = parseEalArgs(ealArgs);
    if (ealOpts.help || appArgs.includes('--help') || appArgs.includes('-h')) {
      const own = app.help ? `\n\n${app.name} options (after "--"):\n${app.help}` : '';
      console.log(`usage: ${prog} [EAL options] -- [${app.name} options]${app.summary ? `\n\n${app.summary}` : ''}${own}\n\n${EAL_HELP}`);
      return 0;
    }
    opts = parseAppArgs(app, appArgs);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`${prog}: ${e.message}`);
      return 2;
    }
    throw e;
  }
  let eal: Eal;
  try {
    const explicit = explicitOptions(ealOpts, argv);
    const defaults = { ...app.ealDefaults };
    // An app's --no-huge default yields to memory the user asked for (--huge-dir, --in-memory).
    if (explicit.hugeDir !== undefined || explicit.inMemory) delete defaults.noHuge;
    eal = new Eal({ ...defaults, ...explicit });
  } catch (e) {
    console.error(`${prog}: ${(e as Error).message}`);
    return e instanceof UsageError ? 2 : 1;
  }
  // Every app can be captured (run through tspmd or on its own): the capture queue callback is
  // registered before main() hands its ports' data() to lcores. TSPMD_PDUMP=0: no callback at all,
  // the queues run unwrapped.
  if (process.env.TSPMD_PDUMP !== '0') pdumpInit();
  try {
    // DPDK's rte_eal_init starts telemetry too; a failure here names the fix (--no-telemetry, another prefix or port).
    await startTelemetry(eal, { prog, ealArgs, appArgs });
  } catch (e) {
    console.error(`${prog}: ${(e as Error).message}`);
    await eal.close().catch((e2: unknown) => console.error(`${prog}: while closing: ${(e2 as Error).message}`));
    return 1;
  }
  try {
    return await app.main(eal, opts);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`${prog}: ${e.message}`);
      return 2;
    }
    console.error(`${prog}: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    return 1;
  } finally {
    await eal.close().catch((e: unknown) => console.error(`${prog}: while closing: ${(e as Error).message}`));
  }
}

/** parse: the options after "--"; UsageError for bad ones (default: the app takes none). */
function parseAppArgs<O>(app: App<O>, args: string[]): O {
  const parse = (app as { parse?(args: string[]): O }).parse;
  if (parse) return parse.call(app, args);
  if (args.length > 0) throw new UsageError(`${app.name} takes no options after "--" (got "${args[0]}")`);
  return undefined as O;
}

/**
 * Run app as the program when moduleUrl (the caller's import.meta.url) is the process's entry
 * point, on the main thread: parse process.argv, run, exit with the app's code. Anywhere else (the
 * module imported by another program, or by an lcore worker for its poll function) it does nothing.
 */
export function appMain<O>(moduleUrl: string, app: App<O>): void {
  if (!isMainThread || !isEntryModule(moduleUrl)) return;
  runApp(app, process.argv.slice(2)).then((code) => process.exit(code), (e: unknown) => {
    console.error(`${app.name}: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    process.exit(1);
  });
}

/** Whether moduleUrl is the script node was started with (process.argv[1]). */
function isEntryModule(moduleUrl: string): boolean {
  const entry = process.argv[1];
  if (!entry || !moduleUrl.startsWith('file:')) return false;
  const real = (p: string): string => { try { return realpathSync(p); } catch { return p; } };
  const self = real(fileURLToPath(moduleUrl));
  const argv1 = resolve(entry);
  return real(argv1) === self || real(`${argv1}.js`) === self || real(`${argv1}.ts`) === self;
}

/**
 * Move an app's own flags that stand before "--" to after it, so the EAL parser does not see
 * them: ["--sysfs-root", "d", "--json"] -> ["--sysfs-root", "d", "--", "--json"].
 */
export function moveOwnFlags(argv: readonly string[], own: Record<string, boolean>): string[] {
  const sep = argv.indexOf('--');
  const before = sep < 0 ? [...argv] : argv.slice(0, sep);
  const after = sep < 0 ? [] : argv.slice(sep + 1);
  const eal: string[] = [], mine: string[] = [];
  for (let i = 0; i < before.length; i++) {
    const name = before[i].split('=')[0];
    if (name in own) {
      mine.push(before[i]);
      if (own[name] && !before[i].includes('=') && i + 1 < before.length) mine.push(before[++i]);
    } else eal.push(before[i]);
  }
  if (mine.length === 0) return [...argv];
  return [...eal, '--', ...mine, ...after];
}

/** The EAL options the user actually gave, so an app's defaults apply to the rest. */
function explicitOptions(o: EalOptions, argv: string[]): Partial<EalOptions> {
  const given = new Set(splitArgs(argv)[0].filter((a) => a.startsWith('-')).map((a) => a.split('=')[0]));
  const out: Partial<EalOptions> = {};
  for (const flag of given) {
    const key = ealOptionKey(flag); // src/options.ts EAL_OPTIONS: every spelling of every option
    if (key !== undefined && key !== 'help') (out as Record<string, unknown>)[key] = o[key];
  }
  return out;
}

/** Whole-number options (counts, sizes, ports, queues, pids) go through intOption (src/options.ts): one parser, no fractions. */
export { intOption, wholeNumber };

/** A port mask option such as -p 0x3: hexadecimal with an optional 0x, from 0x1 to 0xffffffff (bit n is port n); UsageError naming it otherwise. */
export function portmaskOption(name: string, v: string | undefined): number {
  const mask = v === undefined ? null : wholeNumber(v, 1, 0xffffffff, 16);
  if (mask === null) throw new UsageError(`${name} ${v === undefined ? '(missing)' : `"${v}"`}: expected a hexadecimal port mask from 0x1 to 0xffffffff, e.g. 0x3`);
  return mask;
}

/** A non-negative decimal option such as seconds ("1", "0.5"): digits with an optional fraction, from min to max; UsageError naming it otherwise. */
export function numberOption(name: string, v: string | undefined, min: number, max: number): number {
  if (v === undefined || !/^\d+(\.\d+)?$/.test(v) || !(Number(v) >= min && Number(v) <= max)) {
    throw new UsageError(`${name} ${v === undefined ? '(missing)' : `"${v}"`}: expected a number from ${min} to ${max}`);
  }
  return Number(v);
}

/** A tiny getopt: calls on(flag, next) for each option; next() takes its value. */
export function eachOption(args: string[], on: (flag: string, value: () => string) => void): void {
  for (let i = 0; i < args.length; i++) {
    let flag = args[i];
    let inline: string | undefined;
    if (flag.startsWith('--') && flag.includes('=')) {
      inline = flag.slice(flag.indexOf('=') + 1);
      flag = flag.slice(0, flag.indexOf('='));
    }
    on(flag, () => {
      if (inline !== undefined) return inline;
      const v = args[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value (see --help)`);
      return v;
    });
  }
}

/** Sleep ms, or until the signal fires (at once if it already has). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    // An abort that came before the call fires no event: without this check a SIGINT/SIGTERM
    // during the lcores' start-up left runLcoresUntilDone sleeping for the whole --duration (forever with none).
    if (signal?.aborted) { resolve(); return; }
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/** How a forwarding run ended. */
export type RunEnd = 'duration' | 'signal' | 'finished';

/**
 * Wait while lcores run: until durationS passes (0: no limit), SIGINT/SIGTERM, or every launched
 * function returns. Then stop all lcores and wait for them. A function that threw rejects this
 * with its error (the worker's stack included) after the others have stopped.
 */
export async function runLcoresUntilDone<R>(eal: Eal, running: Array<Promise<R>>, durationS: number): Promise<{ end: RunEnd; results: R[] }> {
  const ctl = new AbortController();
  let end: RunEnd = 'finished';
  eal.handleSignals((sig) => {
    if (ctl.signal.aborted) {
      console.error(`tspmd: second ${sig}: exiting now`);
      process.exit(130);
    }
    end = 'signal';
    ctl.abort();
  });
  let allDone = false;
  const all = Promise.all(running.map((p) => p.catch((e: unknown) => { ctl.abort(); throw e; })));
  const settledAll = all.then(() => { allDone = true; }, () => { allDone = true; });
  // The duration counts from when the lcores run, not from launch (a worker's start-up takes a while).
  await Promise.race([settledAll, eal.lcores.waitStarted(), new Promise((r) => ctl.signal.addEventListener('abort', r, { once: true }))]);
  await Promise.race([settledAll, sleep(durationS > 0 ? durationS * 1000 : 2 ** 31 - 1, ctl.signal)]);
  if ((end as RunEnd) !== 'signal' && !allDone) end = 'duration';
  eal.lcores.requestStop();
  const settled = await Promise.allSettled(running);
  eal.handleSignals();
  const bad = settled.find((s) => s.status === 'rejected');
  if (bad) throw (bad as PromiseRejectedResult).reason;
  return { end, results: settled.map((s) => (s as PromiseFulfilledResult<R>).value) };
}
