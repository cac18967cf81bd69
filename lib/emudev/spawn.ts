/**
 * `tspmd emu` as a child process, for programs that drive the device they serve (the demo, the
 * virtio benchmark): spawn it, wait for its "serving" line, stop it with SIGTERM (SIGKILL after a
 * grace period), and never leave it running when this process exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';

/** A running `tspmd emu`. */
export interface EmuChild {
  proc: ChildProcess;
  /** its standard error so far (device statistics arrive there at exit) */
  stderr(): string;
  /** SIGTERM, SIGKILL after graceMs; resolves with the exit code once it is gone. */
  stop(graceMs?: number): Promise<number | null>;
}

/** Run `node <cli> emu <args...>` and resolve once it prints "serving"; reject with its stderr otherwise. */
export function spawnEmu(cli: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<EmuChild> {
  const proc = spawn(process.execPath, [...process.execArgv, cli, 'emu', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
  let out = '', err = '';
  const gone = (): boolean => proc.exitCode !== null || proc.signalCode !== null;
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const kill = (): void => { if (!gone()) proc.kill('SIGKILL'); };
  process.once('exit', kill);
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const child: EmuChild = {
    proc,
    stderr: () => err,
    stop: async (graceMs = 5000) => {
      if (!gone()) proc.kill('SIGTERM');
      const t = setTimeout(kill, graceMs);
      const code = await exit;
      clearTimeout(t);
      process.removeListener('exit', kill);
      return code;
    },
  };
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { kill(); reject(new Error(`tspmd emu ${args[0]} did not start within ${timeoutMs / 1000} s:\n${err}`)); }, timeoutMs);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('serving ')) { clearTimeout(timer); resolve(child); }
    });
    void exit.then((code) => { clearTimeout(timer); reject(new Error(`tspmd emu ${args[0]} exited (${proc.signalCode ?? `code ${code}`}) before serving:\n${err}`)); });
  });
}
