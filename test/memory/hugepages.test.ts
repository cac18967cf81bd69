/**
 * EAL memory on real hugepages (root only): a private hugetlbfs mount, hugepage files and their
 * life cycle (close, exit hook, SIGTERM, SIGKILL + reclaim, locks), shortage and mount errors,
 * --in-memory (memfd MFD_HUGETLB) and iova-mode pa (physical addresses from /proc/self/pagemap).
 *
 * The kernel's hugepage pool is shared with everything else on the machine: this test adds the
 * pages it needs to nr_hugepages and takes exactly those back afterwards, never exhausts the pool,
 * and only ever uses its own mounts.
 */
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import * as os from '../../src/os/libc.js';
import { Eal } from '../../src/eal.js';
import { reclaimStaleFiles } from '../../src/memory/memory.js';
import { hugePool, hugeMounts } from '../../src/memory/hugepages.js';
import { iovaAt } from '../../src/memory/segment.js';
import { siblingModule } from '../../src/lcore/module.js';
import { NR_HUGEPAGES_2M, readNrHugepages, unmountAndRemove } from '../hugetlbfs.js';
import { killChildren } from '../cli.js';

const MB = 2 ** 20;
const PAGE = 2 * MB;
const rand = () => Math.random().toString(36).slice(2, 8);
const uniq = () => `tsp${process.pid}x${rand()}`;

let skip: string | false =
  process.getuid?.() !== 0 ? 'needs root (mount, nr_hugepages, pagemap)'
    : !existsSync(NR_HUGEPAGES_2M) ? 'kernel has no 2 MB hugepages'
      : false;

const DIR = `/tmp/tsp-huge-${process.pid}-${rand()}`;
/** A second mount with size=4M: it fills up long before the kernel's pool does. */
const SMALL = `${DIR}-small`;
const children = new Set<ChildProcess>();
let added = 0;

if (!skip) {
  // Everything below is undone in this teardown, whatever fails in between.
  t.teardown(async () => {
    await killChildren(children);
    unmountAndRemove(DIR);
    unmountAndRemove(SMALL);
    if (added > 0) writeFileSync(NR_HUGEPAGES_2M, String(Math.max(0, readNrHugepages() - added)));
  });
  try {
    mkdirSync(DIR);
    execFileSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M', 'nodev', DIR], { stdio: 'pipe' });
    mkdirSync(SMALL);
    execFileSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M,size=4M', 'nodev', SMALL], { stdio: 'pipe' });
  } catch (e) {
    skip = `cannot mount hugetlbfs here: ${(e as Error).message.split('\n')[0]}`;
  }
  if (!skip) {
    try {
      const before = readNrHugepages();
      writeFileSync(NR_HUGEPAGES_2M, String(before + 16));
      added = readNrHugepages() - before;
    } catch {
      /* cannot raise the pool (read-only sysfs): tests needing pages skip on their own */
    }
  }
}

/** Pages of 2 MB the kernel could give a new mapping right now. */
const available = (): number => hugePool(PAGE)?.available ?? 0;

/** Skip a test unless the pool has at least `pages` free (the kernel may not have found 16). */
function needPages(t: { plan(n: number, comment?: string): void }, pages: number): boolean {
  if (available() >= pages) return true;
  t.plan(0, `skip: only ${available()} hugepages free, this test needs ${pages}`);
  return false;
}

function eal(opts: ConstructorParameters<typeof Eal>[0]): Eal {
  return new Eal({ lcores: [{ id: 0, cpu: 0 }], mainLcore: 0, ...opts });
}

/** The smaps block of the mapping that starts at va. */
function smapsOf(va: bigint): string {
  const text = readFileSync('/proc/self/smaps', 'utf8');
  const start = text.search(new RegExp(`^${va.toString(16)}-`, 'm'));
  if (start < 0) return '';
  const body = text.indexOf('\n', start) + 1;
  const next = text.slice(body).search(/^[0-9a-f]+-[0-9a-f]+ /m);
  return next < 0 ? text.slice(start) : text.slice(start, body + next);
}

function hugetlbKb(block: string): number {
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(block)?.[1] ?? 0);
  return kb('Shared_Hugetlb') + kb('Private_Hugetlb');
}

/** Start test/memory/eal-child.ts; resolves with its first line once its EAL is up. */
function startChild(prefix: string, mb: number, mode: 'hold' | 'signals' | 'exit') {
  const script = new URL(siblingModule(import.meta.url, 'eal-child')).pathname;
  const child = spawn(process.execPath, [...process.execArgv, script, DIR, prefix, String(mb), mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const ready = new Promise<{ pid: number; files: string[] }>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', (l) => resolve(JSON.parse(l) as { pid: number; files: string[] }));
    void exited.then((x) => reject(new Error(`child exited (${x.code ?? x.signal}) before it was ready: ${stderr}`)));
  });
  return { child, ready, exited, stderr: () => stderr };
}

const prefixFiles = (dir: string, prefix: string) => readdirSync(dir).filter((n) => n.startsWith(prefix));

t.test('hugepage files exist while the EAL runs and go with close()', { skip }, async (t) => {
  if (!needPages(t, 4)) return;
  t.ok(hugeMounts().some((m) => m.dir === DIR && m.pageSize === PAGE), 'our mount is listed with its page size');
  const prefix = uniq();
  const e = eal({ hugeDir: DIR, filePrefix: prefix, memoryMb: 8 });
  t.teardown(() => e.close());
  t.equal(e.memory.config.backing.kind, 'hugetlbfs');
  t.equal(e.memory.config.pageSize, PAGE);
  t.same(prefixFiles(DIR, prefix), [`${prefix}map_0`], 'one file, named <prefix>map_0');
  const seg = e.memory.segments[0];
  t.equal(seg.path, `${DIR}/${prefix}map_0`);
  t.same(e.memory.files(), [seg.path]);
  t.equal(statSync(seg.path!).size, 8 * MB);
  t.equal(seg.pageSize, PAGE);
  t.equal(seg.va % BigInt(PAGE), 0n, 'mapped at a hugepage boundary');
  const smaps = smapsOf(seg.va);
  t.match(smaps, /KernelPageSize:\s+2048 kB/, 'the kernel maps it with 2 MB pages');
  t.equal(hugetlbKb(smaps), 8192, 'all 4 hugepages are populated');
  t.match(e.memory.dump(), `hugetlbfs`);
  t.match(e.memory.dump(), seg.path!);

  const z = e.memory.reserve('tsp_hz', 3 * MB, PAGE);
  t.equal(z.va % BigInt(PAGE), 0n);
  const u8 = new Uint8Array(os.viewOf(z.va, z.len));
  u8[0] = 1;
  u8[z.len - 1] = 2;
  // the file holds what the mapping wrote (hugetlbfs has no write(2), but it has mmap)
  const fd = os.open(seg.path!, os.O_RDWR);
  const va2 = os.mmap(0n, seg.len, os.PROT_READ, os.MAP_SHARED, fd, 0);
  const again = new Uint8Array(os.viewOf(va2, seg.len));
  t.equal(again[z.offset], 1);
  t.equal(again[z.offset + z.len - 1], 2, 'a second mapping of the file sees the data');
  os.munmap(va2, seg.len);
  os.close(fd);

  await e.close();
  t.same(prefixFiles(DIR, prefix), [], 'close() removed the file');
  t.equal(smapsOf(seg.va), '', 'close() unmapped it');
});

t.test('stale files of a dead process are reclaimed, others are left alone', { skip }, async (t) => {
  if (!needPages(t, 1)) return;
  const prefix = uniq();
  // hugetlbfs files cannot be written, only created: an empty file stands for a dead process's
  for (const n of [`${prefix}map_3`, `${prefix}map_12`, `${prefix}map_x`, `${prefix}map_1.bak`, `x${prefix}map_0`]) closeSync(openSync(`${DIR}/${n}`, 'w'));
  const e = eal({ hugeDir: DIR, filePrefix: prefix, memoryMb: 2 });
  t.teardown(() => e.close());
  const left = readdirSync(DIR).filter((n) => n.includes(prefix)).sort();
  t.same(left, [`${prefix}map_0`, `${prefix}map_1.bak`, `${prefix}map_x`, `x${prefix}map_0`].sort(), 'map_3 and map_12 reclaimed; names not of the pattern kept');
  await e.close();
  // direct use reports what it removed
  closeSync(openSync(`${DIR}/${prefix}map_5`, 'w'));
  t.same(reclaimStaleFiles(DIR, prefix), [`${DIR}/${prefix}map_5`]);
  t.same(reclaimStaleFiles(DIR, prefix), [], 'nothing left to reclaim');
  for (const n of [`${prefix}map_x`, `${prefix}map_1.bak`, `x${prefix}map_0`]) rmSync(`${DIR}/${n}`);
  // a prefix with regex characters is taken literally
  closeSync(openSync(`${DIR}/${prefix}Amap_0`, 'w'));
  t.same(reclaimStaleFiles(DIR, `${prefix}.`), [], '"." in a prefix matches only a dot');
  rmSync(`${DIR}/${prefix}Amap_0`);
});

t.test('a running process locks its files; after SIGKILL the next EAL reclaims them', { skip }, async (t) => {
  if (!needPages(t, 3)) return;
  const prefix = uniq();
  const c = startChild(prefix, 2, 'hold');
  const info = await c.ready;
  const file = `${DIR}/${prefix}map_0`;
  t.same(info.files, [file], 'the child created its hugepage file');
  t.ok(existsSync(file));
  const ino = statSync(file).ino;

  t.throws(() => eal({ hugeDir: DIR, filePrefix: prefix, memoryMb: 2 }), {
    message: `file prefix "${prefix}" is in use by another running process (its hugepage file ${file} is locked); choose another --file-prefix`,
  });
  t.ok(existsSync(file), 'the live process keeps its file');
  t.equal(statSync(file).ino, ino);

  c.child.kill('SIGKILL');
  t.same(await c.exited, { code: null, signal: 'SIGKILL' });
  t.ok(existsSync(file), 'SIGKILL leaves the file behind');

  const e = eal({ hugeDir: DIR, filePrefix: prefix, memoryMb: 4 });
  t.teardown(() => e.close());
  t.same(prefixFiles(DIR, prefix), [`${prefix}map_0`]);
  t.not(statSync(file).ino, ino, 'the stale file was removed and a new one made');
  t.equal(statSync(file).size, 4 * MB, 'the new file is this EAL\'s (4 MB, the child\'s was 2 MB)');
  await e.close();
  t.same(prefixFiles(DIR, prefix), []);
});

t.test('SIGTERM to a process with eal.handleSignals() removes its files', { skip }, async (t) => {
  if (!needPages(t, 1)) return;
  const prefix = uniq();
  const c = startChild(prefix, 2, 'signals');
  const info = await c.ready;
  t.same(prefixFiles(DIR, prefix), [`${prefix}map_0`]);
  t.ok(os.processAlive(info.pid));
  c.child.kill('SIGTERM');
  t.same(await c.exited, { code: 143, signal: null }, 'exits with 128+15');
  t.same(prefixFiles(DIR, prefix), [], 'its hugepage file is gone');
  t.notMatch(c.stderr(), /error/i, 'no error on the way out');
});

t.test('process.exit without close(): the exit hook removes the files', { skip }, async (t) => {
  if (!needPages(t, 1)) return;
  const prefix = uniq();
  const c = startChild(prefix, 2, 'exit');
  const info = await c.ready;
  t.same(info.files, [`${DIR}/${prefix}map_0`]);
  t.same(await c.exited, { code: 7, signal: null });
  t.same(prefixFiles(DIR, prefix), [], 'removed on exit');
});

t.test('hugepage shortage says what is needed, what is free and how to fix it', { skip }, async (t) => {
  const prefix = uniq();
  const need = 100_000; // 200 GB: far beyond this machine; nothing is allocated by the check
  const check = (err: unknown, what: string) => {
    const msg = (err as Error).message;
    const m = /^not enough hugepages: need (\d+) pages of 2048 kB \((\d+) MB\), (\d+) free of (\d+)\. Reserve more as root with: echo (\d+) > (\S+)\/nr_hugepages \(or run without hugepages: --no-huge\)$/.exec(msg);
    t.ok(m, `${what}: message has the expected shape: ${msg}`);
    if (!m) return;
    t.equal(Number(m[1]), need, 'the number of pages needed');
    t.equal(Number(m[2]), need * 2, 'and in MB');
    const free = Number(m[3]), total = Number(m[4]);
    t.ok(free <= total && total >= added, `free ${free} of total ${total} are the kernel's counters`);
    t.equal(Number(m[5]), total - free + need, 'the nr_hugepages value that would do');
    t.equal(m[6], '/sys/kernel/mm/hugepages/hugepages-2048kB');
  };
  let err: unknown;
  try { eal({ hugeDir: DIR, filePrefix: prefix, memoryMb: need * 2 }); } catch (e) { err = e; }
  check(err, 'hugetlbfs');
  t.same(prefixFiles(DIR, prefix), [], 'no file left behind');
  err = undefined;
  try { eal({ inMemory: true, filePrefix: prefix, memoryMb: need * 2 }); } catch (e) { err = e; }
  check(err, '--in-memory');
});

t.test('a full hugetlbfs mount (size= limit) is reported as such', { skip }, async (t) => {
  if (!needPages(t, 8)) return;
  const prefix = uniq();
  // 4 MB mount, 8 MB asked: the kernel's pool has the pages, the mount does not
  t.throws(() => eal({ hugeDir: SMALL, filePrefix: prefix, memoryMb: 8 }), {
    message: new RegExp(`^hugetlbfs at ${SMALL} cannot hold 4 pages of 2048 kB .*size=.*--huge-dir`),
  });
  t.same(prefixFiles(SMALL, prefix), [], 'the partial file is removed');
  // what fits, works
  const e = eal({ hugeDir: SMALL, filePrefix: prefix, memoryMb: 4 });
  t.teardown(() => e.close());
  t.equal(e.memory.totalBytes, 4 * MB);
  await e.close();
  t.same(prefixFiles(SMALL, prefix), []);
});

t.test('--huge-dir that is not a hugetlbfs mount', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.throws(() => eal({ hugeDir: dir, filePrefix: uniq() }), {
    message: `--huge-dir ${dir} is not a hugetlbfs mount; mount one as root with: mkdir -p ${dir} && mount -t hugetlbfs nodev ${dir} (or run with --no-huge)`,
  });
  t.throws(() => eal({ hugeDir: `${dir}/missing`, filePrefix: uniq() }), {
    message: `--huge-dir ${dir}/missing is not a hugetlbfs mount (it does not exist); mount one as root with: mkdir -p ${dir}/missing && mount -t hugetlbfs nodev ${dir}/missing (or run with --no-huge)`,
  });
  t.same(readdirSync(dir), [], 'nothing created there');
  if (available() >= 1) {
    const e = eal({ hugeDir: `${DIR}/`, filePrefix: uniq(), memoryMb: 2 });
    t.equal(e.memory.segments[0].path!.startsWith(`${DIR}/`), true, 'a trailing slash is fine');
    await e.close();
  }
});

t.test('--in-memory: hugepages from a memfd, no files', { skip }, async (t) => {
  if (!needPages(t, 2)) return;
  const prefix = uniq();
  const e = eal({ inMemory: true, filePrefix: prefix, memoryMb: 4 });
  t.teardown(() => e.close());
  const seg = e.memory.segments[0];
  t.equal(e.memory.config.backing.kind, 'memfd');
  t.equal(seg.path, null, 'no file');
  t.same(e.memory.files(), []);
  t.equal(seg.pageSize, PAGE);
  t.match(readFileSync(`/proc/self/fdinfo/${seg.fd}`, 'utf8'), /pos:/);
  t.match(execFileSync('readlink', [`/proc/${process.pid}/fd/${seg.fd}`], { encoding: 'utf8' }), `/memfd:${prefix}seg_0`);
  const smaps = smapsOf(seg.va);
  t.match(smaps, /KernelPageSize:\s+2048 kB/, 'backed by 2 MB pages');
  t.equal(hugetlbKb(smaps), 4096, 'both hugepages populated');
  const z = e.memory.reserve('tsp_im', MB);
  new Uint8Array(os.viewOf(z.va, z.len)).fill(0x77);
  t.equal(new Uint8Array(os.viewOf(z.va + BigInt(z.len - 1), 1))[0], 0x77);
  t.same(prefixFiles(DIR, prefix), [], 'nothing in the hugetlbfs mount');
  await e.close();
  t.equal(smapsOf(seg.va), '', 'unmapped on close');
});

/** The physical address of va, read independently of the code under test (0 when not present). */
function physAddr(va: bigint): bigint {
  const b = Buffer.alloc(8);
  const fd = openSync('/proc/self/pagemap', 'r');
  try {
    readSync(fd, b, 0, 8, Number((va / 4096n) * 8n));
  } finally {
    closeSync(fd);
  }
  const e = b.readBigUInt64LE();
  if (e >> 63n === 0n) return 0n;
  return (e & ((1n << 55n) - 1n)) * 4096n + (va % 4096n);
}

t.test('iova-mode pa: physical addresses from /proc/self/pagemap', { skip }, async (t) => {
  if (!needPages(t, 2)) return;
  const e = eal({ hugeDir: DIR, filePrefix: uniq(), memoryMb: 4, iovaMode: 'pa' });
  t.teardown(() => e.close());
  const seg = e.memory.segments[0];
  t.equal(seg.iovaMode, 'pa');
  t.ok(seg.pageIovas, 'per-page IOVAs');
  t.equal(seg.pageIovas!.length, 2);
  for (const [i, pa] of seg.pageIovas!.entries()) {
    const va = seg.va + BigInt(i * PAGE);
    t.not(pa, 0n, `page ${i}: physical address is known`);
    t.not(pa, va, `page ${i}: iova differs from va`);
    t.equal(pa % BigInt(PAGE), 0n, `page ${i}: a 2 MB page is 2 MB aligned physically`);
    t.equal(pa, physAddr(va), `page ${i}: matches pagemap read independently`);
    t.equal(physAddr(va + 12345n), pa + 12345n, `page ${i}: contiguous inside the page`);
  }
  t.equal(seg.iova, seg.pageIovas![0]);
  t.match(e.memory.dump(), 'iova pa');
  const z = e.memory.reserve('tsp_pa', 1000, 64, true);
  t.equal(z.iova, iovaAt(seg, z.offset));
  t.equal(z.iova, physAddr(z.va), 'memzone iova is its physical address');
  const z2 = e.memory.reserve('tsp_pa2', 64, 64);
  t.equal(z2.iova, physAddr(z2.va));

  // 4 KiB pages (--no-huge) in pa mode: every page has its own address
  const small = eal({ noHuge: true, filePrefix: uniq(), memoryMb: 1, iovaMode: 'pa' });
  t.teardown(() => small.close());
  const s = small.memory.segments[0];
  t.equal(s.pageIovas!.length, 256);
  t.ok(s.pageIovas!.every((p) => p !== 0n && p % 4096n === 0n), 'all pages present with page-aligned physical addresses');
  t.equal(s.pageIovas![17], physAddr(s.va + 17n * 4096n));
  await small.close();
  await e.close();
});
