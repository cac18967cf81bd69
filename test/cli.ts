/**
 * The tspmd command for tests: its path, the environment children get, and runCli, which runs it
 * to completion in a child process. Tests that keep a tspmd process running (a device, l2fwd
 * under traffic) spawn it themselves with CLI and CHILD_ENV.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runtimeDir } from '../lib/telemetry/server.js';

/** The tspmd command in the same language as the test: app/tspmd.ts under tap's loader, dist/app/tspmd.js when built. */
export const CLI = fileURLToPath(new URL('../app/tspmd' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url));

/** Children skip the loader's type check (tsc checks the tree): 2 s per spawn instead of 5. */
export const CHILD_ENV: NodeJS.ProcessEnv = { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' };

/** How runCli runs the command. */
export interface RunCliOptions {
  /** SIGKILL after this long (default 60 s); the result's stderr then ends with a line saying so */
  timeoutMs?: number;
  /** the child's environment (default CHILD_ENV) */
  env?: NodeJS.ProcessEnv;
  /** node's flags for the child (default: this process's, so the TypeScript loader comes along) */
  execArgv?: string[];
  /** a command that runs node for it, e.g. ['setpriv', '--reuid=65534', ...] or ['ip', 'netns', 'exec', NS] */
  wrap?: string[];
  /** called with the child once it is spawned (to watch it while it runs) */
  onSpawn?: (child: ChildProcess) => void;
}

/** What a run of the command gave. */
export interface CliResult {
  /** the exit code; 128 + signal number when a signal ended it */
  code: number;
  stdout: string;
  stderr: string;
}

/** Run `tspmd ...args` to completion; resolves with its exit code and output (never rejects). */
export function runCli(args: string[], opts: RunCliOptions = {}): Promise<CliResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const cmd = [...(opts.wrap ?? []), process.execPath, ...(opts.execArgv ?? process.execArgv), CLI, ...args];
  return new Promise((resolve) => {
    const p = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? CHILD_ENV });
    let stdout = '', stderr = '', timedOut = false;
    p.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => { timedOut = true; p.kill('SIGKILL'); }, timeoutMs);
    p.on('error', (e) => { clearTimeout(timer); resolve({ code: 127, stdout, stderr: `${stderr}runCli: ${cmd[0]}: ${e.message}\n` }); });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) stderr += `runCli: tspmd ${args.join(' ')}: killed after ${timeoutMs} ms\n`;
      if (signal) removeRunDir(args);
      resolve({ code: code ?? (signal ? 128 + constants.signals[signal] : 1), stdout, stderr });
    });
    opts.onSpawn?.(p);
  });
}

/**
 * An app killed by a signal leaves its run directory (the telemetry socket under
 * <run dir>/dpdk/PREFIX, see runtimeDir): remove it for the --file-prefix in args (tests use their own prefixes).
 */
export function removeRunDir(args: readonly string[]): void {
  const i = args.indexOf('--file-prefix');
  const prefix = i >= 0 ? args[i + 1] : undefined;
  if (prefix && /^tsp[\w.-]*$/.test(prefix)) rmSync(runtimeDir(prefix), { recursive: true, force: true });
}

/** SIGKILL every child of the set that is still running and wait for each to exit (test teardowns). */
export async function killChildren(children: Iterable<ChildProcess>): Promise<void> {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGKILL');
      await new Promise((r) => c.once('exit', r));
    }
  }
}
