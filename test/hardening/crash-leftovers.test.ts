/**
 * Crash leftovers (issue 14, item 11): `tspmd l2fwd` on hugepages is SIGKILLed while it forwards
 * (its hugepage files stay behind, no exit hook runs), then started again with the same
 * --file-prefix: that start reclaims the files and says so (one warning naming how many files and
 * bytes), runs, and leaves no file of the prefix behind when it ends. The same for `tspmd emu
 * virtio-net` (its second start serves on a new socket path: stale sockets are another test's).
 * tspmd emu defaults to --no-huge, and today an explicit --huge-dir does not override an app's
 * default (lib/app/app.ts merges the two): it then runs on memfds, which die with the process, so
 * a SIGKILL leaves nothing; the test checks exactly that, and the full reclaim once it runs on files.
 *
 * Root only (it mounts its own hugetlbfs at /tmp/tsp-crash-PID-*, adds 48 pages to the kernel's
 * 2 MB pool and takes exactly those back, unmounts at the end, even on failure). Busy threads:
 * l2fwd's forwarding lcore on null ports, one at a time.
 */
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, CHILD_ENV, runCli, killChildren } from '../cli.js';
import { hugePool } from '../../src/memory/hugepages.js';
import { spawnEmu, type EmuChild } from '../../lib/emudev/spawn.js';
import { NR_HUGEPAGES_2M, readNrHugepages, unmountAndRemove } from '../hugetlbfs.js';

const PAGE = 2 * 2 ** 20;
const PAGES = 48;
const DIR = `/tmp/tsp-crash-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const PREFIX = `tsp${process.pid}crash`;

let skip: string | false = process.getuid?.() !== 0 ? 'needs root (mounts hugetlbfs, raises nr_hugepages)'
  : !existsSync(NR_HUGEPAGES_2M) ? 'the kernel has no 2 MB hugepages' : false;
const children = new Set<ChildProcess>();
let added = 0;

if (!skip) {
  t.teardown(async () => {
    await killChildren(children);
    unmountAndRemove(DIR); // removes whatever files are left with the mount
    if (added > 0) writeFileSync(NR_HUGEPAGES_2M, String(Math.max(0, readNrHugepages() - added)));
  });
  try {
    mkdirSync(DIR, { mode: 0o700 });
    execFileSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M', 'nodev', DIR], { stdio: 'pipe' });
    const before = readNrHugepages();
    writeFileSync(NR_HUGEPAGES_2M, String(before + PAGES));
    added = readNrHugepages() - before;
  } catch (e) {
    skip = `cannot mount hugetlbfs or raise the pool here: ${(e as Error).message.split('\n')[0]}`;
  }
  if (!skip && (hugePool(PAGE)?.available ?? 0) < 32) skip = `only ${hugePool(PAGE)?.available ?? 0} free 2 MB hugepages (needs 32)`;
}

const files = (prefix = PREFIX): string[] => readdirSync(DIR).filter((n) => n.startsWith(prefix)).sort();
const L2FWD = ['l2fwd', '--huge-dir', DIR, '--file-prefix', PREFIX, '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '-T', '0', '--json'];

/** Start l2fwd; resolves once both ports are polled (its lcore runs), rejects if it exits first. */
function startL2fwd(): Promise<ChildProcess> {
  const child = spawn(process.execPath, [...process.execArgv, CLI, ...L2FWD], { stdio: ['ignore', 'ignore', 'pipe'], env: CHILD_ENV });
  children.add(child);
  let stderr = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`l2fwd did not start forwarding within 90 s: ${stderr}`)), 90_000);
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if ((stderr.match(/^lcore \d+: RX port/gm) ?? []).length >= 2) { clearTimeout(timer); resolve(child); }
    });
    child.once('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`l2fwd exited early (${code ?? signal}): ${stderr}`)); });
  });
}

t.test('SIGKILLed l2fwd leaves hugepage files; the next start with its prefix reclaims them, says so, and leaves none', { skip, timeout: 240_000 }, async (t) => {
  const child = await startL2fwd();
  const left = files();
  t.ok(left.length >= 1, `l2fwd runs on hugepage files of its prefix (${left.join(', ')})`);
  const bytes = left.reduce((n, f) => n + statSync(join(DIR, f)).size, 0);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  t.same(files(), left, 'after SIGKILL its files are still there (no exit hook ran)');

  const r = await runCli([...L2FWD, '--duration', '1'], { timeoutMs: 120_000 });
  t.equal(r.code, 0, `the second start runs and exits 0${r.code === 0 ? '' : `: ${r.stderr}`}`);
  const n = left.length;
  t.match(r.stderr, new RegExp(`reclaimed ${n} stale hugepage files? \\(${bytes} bytes\\) of file prefix "${PREFIX}" in ${DIR}`),
    `it says it reclaimed ${n} file(s), ${bytes} bytes`);
  t.same(files(), [], 'no file of the prefix remains after the second run');
});

t.test('SIGKILLed tspmd emu: the next start with its prefix reclaims its files and says so', { skip, timeout: 240_000 }, async (t) => {
  const prefix = `${PREFIX}emu`;
  const sockDir = mkdtempSync(join(tmpdir(), `tsp-crash-sock-${process.pid}-`));
  const emus: EmuChild[] = [];
  t.teardown(async () => {
    for (const e of emus) await e.stop(2000);
    rmSync(sockDir, { recursive: true, force: true });
  });
  const args = (sock: string): string[] => ['virtio-net', '--socket', join(sockDir, sock), '--huge-dir', DIR, '--file-prefix', prefix, '-l', '0-1', '--vdev', 'net_null0'];
  const first = await spawnEmu(CLI, args('a.sock'), { timeoutMs: 90_000, env: CHILD_ENV });
  emus.push(first);
  const left = files(prefix);
  const bytes = left.reduce((n, f) => n + statSync(join(DIR, f)).size, 0);
  first.proc.kill('SIGKILL');
  await first.stop(0);
  t.same(files(prefix), left, `after SIGKILL what it had on disk is still there (${left.join(', ') || 'nothing: it ran on memfds'})`);

  const second = await spawnEmu(CLI, args('b.sock'), { timeoutMs: 90_000, env: CHILD_ENV });
  emus.push(second);
  if (left.length > 0) {
    t.match(second.stderr(), new RegExp(`reclaimed ${left.length} stale hugepage files? \\(${bytes} bytes\\) of file prefix "${prefix}"`),
      `the second start says it reclaimed ${left.length} file(s), ${bytes} bytes`);
  } else {
    t.notMatch(second.stderr(), /reclaimed/, 'on memfds nothing was left and nothing is claimed to be reclaimed');
  }
  const code = await second.stop();
  t.equal(code, 0, 'it stops cleanly on SIGTERM');
  t.same(files(prefix), [], 'no file of the prefix remains after it ends');
});
