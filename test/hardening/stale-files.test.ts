/**
 * reclaimStaleFiles with names planted under the stale-file pattern (issue 14, item 10b). The
 * function trusts a name only as a name: a symlink is never followed (so a link to a file another
 * process holds locked neither makes start-up fail nor is counted as ours), a FIFO is never
 * opened for locking and never blocks, and neither is reported as a reclaimed hugepage file; both
 * names are removed, their targets left alone. A real stale file is still reclaimed, counted in
 * the warning, and a file of a live process (locked) still refuses the prefix.
 *
 * Runs in a private temporary directory (the function reads any directory), no root needed.
 *
 * Also `tspmd demo` (item 10a) against a directory planted at the predictable name it used to
 * take, /tmp/tsp-demo-PID: a shell plants it for its own pid, then execs the demo (same pid). The
 * demo must serve from a directory of its own and leave the planted one as it was. Busy threads
 * while it runs: the device's lcore and the demo's forwarding lcore (2).
 */
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as os from '../../src/os/libc.js';
import { reclaimStaleFiles } from '../../src/memory/memory.js';
import { CLI, CHILD_ENV } from '../cli.js';

const DIR = mkdtempSync(join(tmpdir(), `tsp-stale-${process.pid}-`));
t.teardown(() => rmSync(DIR, { recursive: true, force: true }));
const prefix = `tsp${process.pid}st`;

/** Run fn with the log lines it writes to stderr collected (and not printed). */
function capture<T>(fn: () => T): { value: T; lines: string } {
  const write = process.stderr.write;
  let lines = '';
  process.stderr.write = ((chunk: string | Uint8Array): boolean => { lines += String(chunk); return true; }) as typeof process.stderr.write;
  try {
    return { value: fn(), lines };
  } finally {
    process.stderr.write = write;
  }
}

/** Call reclaimStaleFiles(DIR, p) and collect its result, error, log lines and time. */
function reclaim(p: string): { value: string[] | null; error: string | null; lines: string; ms: number } {
  const t0 = Date.now();
  try {
    const r = capture(() => reclaimStaleFiles(DIR, p));
    return { value: r.value, error: null, lines: r.lines, ms: Date.now() - t0 };
  } catch (e) {
    return { value: null, error: (e as Error).message, lines: '', ms: Date.now() - t0 };
  }
}

t.test('a planted symlink to a locked file is not followed: neither "in use" nor reclaimed', { timeout: 30_000 }, async (t) => {
  const p = `${prefix}a`;
  const locked = join(DIR, 'tsp-locked-target');
  writeFileSync(locked, 'precious');
  const holder = os.open(locked, os.O_RDWR);
  t.teardown(() => os.close(holder));
  t.ok(os.flock(holder, os.LOCK_EX | os.LOCK_NB), 'the target is locked (like a live process\'s hugepage file)');
  symlinkSync(locked, join(DIR, `${p}map_0`));
  symlinkSync(join(DIR, 'tsp-nowhere'), join(DIR, `${p}map_4`)); // dangling
  writeFileSync(join(DIR, `${p}map_3`), Buffer.alloc(8192)); // a dead process's file
  const r = reclaim(p);
  t.equal(r.error, null, 'no error: a symlink to a locked file does not make the prefix "in use"');
  t.same(r.value, [join(DIR, `${p}map_3`)], 'only the real stale file is reported reclaimed');
  t.match(r.lines, /reclaimed 1 stale hugepage file \(8192 bytes\) of file prefix "tsp\d+sta"/, 'the warning names how many files and bytes');
  t.match(r.lines, /removed .*map_0: a symbolic link/, 'the symlink is reported as planted');
  t.same(readdirSync(DIR).filter((n) => n.startsWith(p)), [], 'every name under the pattern is gone');
  t.equal(readFileSync(locked, 'utf8'), 'precious', 'the symlink\'s target is untouched');
  t.notOk(existsSync(join(DIR, 'tsp-nowhere')), 'nothing was created at a dangling link\'s target');
});

t.test('a planted FIFO (and a symlink to one) is neither locked, counted nor waited for', { timeout: 30_000 }, async (t) => {
  const p = `${prefix}b`;
  execFileSync('mkfifo', [join(DIR, `${p}map_1`)]);
  const fifoTarget = join(DIR, 'tsp-fifo-target');
  execFileSync('mkfifo', [fifoTarget]);
  symlinkSync(fifoTarget, join(DIR, `${p}map_2`));
  writeFileSync(join(DIR, `${p}map_3`), Buffer.alloc(4096));
  const r = reclaim(p);
  t.equal(r.error, null, 'no error');
  t.ok(r.ms < 10_000, `returned without blocking (${r.ms} ms)`);
  t.same(r.value, [join(DIR, `${p}map_3`)], 'only the real stale file is reported reclaimed');
  t.match(r.lines, /reclaimed 1 stale hugepage file \(4096 bytes\)/, 'the FIFO is not counted');
  t.match(r.lines, /removed .*map_1: a FIFO/, 'the FIFO is reported as planted');
  t.same(readdirSync(DIR).filter((n) => n.startsWith(p)), [], 'every name under the pattern is gone');
  t.ok(lstatSync(fifoTarget).isFIFO(), 'the FIFO a symlink pointed to is still there');
});

t.test('a locked regular file still means the prefix is in use', async (t) => {
  const path = join(DIR, `${prefix}xmap_0`);
  writeFileSync(path, '');
  const fd = os.open(path, os.O_RDWR);
  t.teardown(() => { os.close(fd); rmSync(path, { force: true }); });
  t.ok(os.flock(fd, os.LOCK_SH | os.LOCK_NB));
  t.throws(() => reclaimStaleFiles(DIR, `${prefix}x`), /file prefix "tsp\d+stx" is in use by another running process/);
  t.ok(existsSync(path), 'the live file is kept');
});

t.test('tspmd demo does not use a planted /tmp/tsp-demo-PID directory', { timeout: 180_000 }, async (t) => {
  // the demo as a user runs it: no test-runner instrumentation (see test/app/demo.test.ts)
  const execArgv = process.execArgv.filter((a) => !/@tapjs[\\/](mock|processinfo)/.test(a));
  const env = Object.fromEntries(Object.entries(CHILD_ENV).filter(([k]) => k !== 'NODE_OPTIONS' && !k.startsWith('_TAPJS_') && !k.startsWith('TAP')));
  const quote = (a: string): string => `'${a.replace(/'/g, "'\\''")}'`;
  const demo = [process.execPath, ...execArgv, CLI, 'demo', '--duration', '1', '-T', '0', '--json'].map(quote).join(' ');
  // $$ is the shell's pid, which exec hands to the demo
  const script = `d=${quote(tmpdir())}/tsp-demo-$$; mkdir -m 0777 "$d" && echo planted > "$d/tsp-planted" && echo "$d" && exec ${demo}`;
  const child = spawn('/bin/sh', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '', err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  const planted = out.split('\n')[0];
  t.teardown(() => { if (planted.startsWith(join(tmpdir(), 'tsp-demo-'))) rmSync(planted, { recursive: true, force: true }); });
  t.equal(code, 0, `the demo ran${code === 0 ? '' : `: ${err}`}`);
  t.match(planted, /\/tsp-demo-\d+$/, `the shell planted ${planted}`);
  const sock = /starting the emulated virtio-net device .* on (\S+)/.exec(err)?.[1] ?? '';
  t.ok(sock !== '' && !sock.startsWith(`${planted}/`), `the device served from its own directory (${sock || 'not found in: ' + err.slice(0, 300)})`);
  t.same(existsSync(planted) ? readdirSync(planted) : null, ['tsp-planted'], 'the planted directory is left as it was');
  const own = dirname(dirname(sock)); // <mkdtemp dir>/tsp-demo-PID/virtio-net.sock
  t.notOk(sock !== '' && existsSync(own), `the demo's own directory (${own}) is removed at the end`);
});
