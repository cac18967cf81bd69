/**
 * reclaimStaleFiles with names planted under the stale-file pattern (issue 14, item 10b). The
 * function trusts a name only as a name: a symlink is never followed (so a link to a file another
 * process holds locked neither makes start-up fail nor is counted as ours), a FIFO is never
 * opened for locking and never blocks, and neither is reported as a reclaimed hugepage file; both
 * names are removed, their targets left alone. A real stale file is still reclaimed, counted in
 * the warning, and a file of a live process (locked) still refuses the prefix.
 *
 * Runs in a private temporary directory (the function reads any directory), no root needed.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import { reclaimStaleFiles } from '../../src/memory/memory.js';

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
