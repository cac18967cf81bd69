/**
 * Test helpers: a `tspmd emu` server in its own process, and temporary socket directories. The
 * command itself (CLI, CHILD_ENV, runCli) is in test/cli.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, CHILD_ENV } from '../cli.js';

/** A temporary directory tsp-* removed at teardown. */
export function tempDir(t: { teardown(fn: () => unknown): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'tsp-vfu-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A running `tspmd emu` process. */
export interface EmuProcess {
  proc: ChildProcess;
  path: string;
  /** stderr so far */
  stderr(): string;
  /** SIGTERM and wait for exit; resolves to the exit code */
  stop(): Promise<number | null>;
  /** whether the process is still running */
  alive(): boolean;
}

/**
 * Start `tspmd emu <device> --socket path` and wait for its "serving" line. wrap, if given, is a
 * command that runs node for it (e.g. ['ip', 'netns', 'exec', NS]: the device inside a network
 * namespace); it must exec node in place, so that signals reach the device.
 */
export function startEmu(path: string, device = 'dmatest', extra: string[] = [], wrap: string[] = []): Promise<EmuProcess> {
  const argv = [process.execPath, ...process.execArgv, CLI, 'emu', device, '--socket', path, '--file-prefix', `tspvfu${process.pid}`, ...extra];
  const cmd = [...wrap, ...argv];
  const proc = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  let out = '', err = '';
  let exited = false;
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => { exited = true; resolve(code); }));
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const ep: EmuProcess = {
    proc, path,
    stderr: () => err,
    alive: () => !exited,
    stop: async () => {
      if (!exited) proc.kill('SIGTERM');
      return exit;
    },
  };
  return new Promise((resolve, reject) => {
    // Generous: a TypeScript child takes 2-5 s on an idle machine, many times that on a loaded one.
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`tspmd emu did not start within 60 s: ${err}`)); }, 60_000);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('serving ')) { clearTimeout(timer); resolve(ep); }
    });
    void exit.then((code) => { clearTimeout(timer); reject(new Error(`tspmd emu exited with ${code}: ${err}`)); });
  });
}
