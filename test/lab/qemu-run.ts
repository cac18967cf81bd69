/**
 * Booting one lab guest: run QEMU to completion (or a hard timeout), collect the `TSPLAB {json}`
 * result lines the guest prints on its serial console, and keep the console for failure reports.
 */
import { spawn } from 'node:child_process';

/** One result line from the guest. */
export interface Result {
  check: string;
  ok: boolean;
  [k: string]: unknown;
}

/** How a guest run ended, with its results and console. */
export interface GuestRun {
  code: number | null;
  signal: string | null;
  timedOut: boolean;
  error?: Error;
  /** seconds from spawn to exit */
  secs: string;
  results: Result[];
  /** the whole console (stdout and stderr) */
  log: string;
  /** the last `bytes` of the console without terminal escapes */
  tail(bytes: number): string;
}

/**
 * Run QEMU (file, args) until it exits or timeoutMs passes; teardown registers a kill for early
 * test ends; onLine (optional) sees every console line as it arrives (a guest asking the host to act).
 */
export async function runGuest(file: string, args: string[], timeoutMs: number, teardown: (fn: () => void) => void, onLine?: (line: string) => void): Promise<GuestRun> {
  const started = Date.now();
  const q = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  teardown(() => { if (q.exitCode === null && q.signalCode === null) q.kill('SIGKILL'); });
  let log = '', pending = '';
  const results: Result[] = [];
  q.stdout.on('data', (chunk: Buffer) => {
    const s = chunk.toString('utf8');
    log += s;
    pending += s;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      onLine?.(line);
      const i = line.indexOf('TSPLAB {');
      if (i < 0) continue;
      try {
        results.push(JSON.parse(line.slice(i + 7).trim()) as Result);
      } catch {
        results.push({ check: 'parse', ok: false, line });
      }
    }
  });
  q.stderr.on('data', (c: Buffer) => { log += c.toString('utf8'); });
  const outcome = await new Promise<{ code: number | null; signal: string | null; timedOut: boolean; error?: Error }>((resolve) => {
    const timer = setTimeout(() => { q.kill('SIGKILL'); resolve({ code: null, signal: 'SIGKILL', timedOut: true }); }, timeoutMs);
    q.on('error', (error) => { clearTimeout(timer); resolve({ code: null, signal: null, timedOut: false, error }); });
    q.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, timedOut: false }); });
  });
  return {
    ...outcome, secs: ((Date.now() - started) / 1000).toFixed(1), results, log,
    tail: (bytes) => log.replace(/\x1b\[[0-9;?]*[a-zA-Z]|\x1bc/g, '').slice(-bytes),
  };
}
