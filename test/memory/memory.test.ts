/**
 * EAL memory without hugepages (--no-huge: memfd segments, no root needed): memzones, alignment,
 * error messages, EAL option parsing, sharing a segment with a second process by fd, and release.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as os from '../../src/os/libc.js';
import { Eal, UsageError, memoryConfig } from '../../src/eal.js';
import { parseEalArgs, parseCoreList, splitArgs, defaultEalOptions } from '../../src/options.js';
import { siblingModule } from '../../src/lcore/module.js';
import { iovaAt, iovaContiguous, type Segment } from '../../src/memory/segment.js';
import { hugeMounts, hugePools, defaultHugePageSize, parseSize, formatPageSize, shortageMessage } from '../../src/memory/hugepages.js';

const uniq = () => `tsp${process.pid}x${Math.random().toString(36).slice(2, 8)}`;
const MB = 2 ** 20;

/** A --no-huge EAL with a unique prefix, closed in teardown. */
function noHugeEal(t: { teardown(fn: () => unknown): void }, memoryMb = 0): Eal {
  const eal = new Eal({ noHuge: true, filePrefix: uniq(), memoryMb, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  return eal;
}

t.test('memzones: reserve, lookup, free, dump', async (t) => {
  const eal = noHugeEal(t);
  const mem = eal.memory;
  t.equal(mem.config.backing.kind, 'memfd');
  t.equal(mem.config.pageSize, 4096);
  t.equal(mem.segments.length, 0, 'no -m: nothing mapped until the first reservation');
  const seen: Segment[] = [];
  mem.onSegment((s) => seen.push(s));

  const a = mem.reserve('tsp_a', 1000);
  t.equal(mem.segments.length, 1, 'first reservation maps a segment');
  t.equal(seen.length, 1, 'segment listener heard about it');
  t.equal(a.name, 'tsp_a');
  t.equal(a.len, 1000);
  t.equal(a.align, 64);
  t.equal(a.pageSize, 4096);
  t.equal(a.va % 64n, 0n);
  t.equal(a.iova, a.va, 'iova-mode va: iova = va');
  t.same(mem.lookup('tsp_a'), a, 'lookup finds it');
  t.equal(mem.lookup('tsp_nothing'), undefined);

  // memory is real: writes through one view are read through another
  const v1 = new Uint8Array(os.viewOf(a.va, a.len));
  v1.set([1, 2, 3, 4], 996);
  t.same([...new Uint8Array(os.viewOf(a.va + 996n, 4))], [1, 2, 3, 4]);

  const b = mem.reserve('tsp.b:c-d_e', 5000, 4096);
  t.equal(b.va % 4096n, 0n, 'page alignment honored');
  t.ok(b.va >= a.va + 1000n || b.va + 5000n <= a.va, 'zones do not overlap');
  t.same(mem.memzones().map((z) => z.name), ['tsp_a', 'tsp.b:c-d_e'], 'listed in reservation order');

  const dump = mem.dump();
  t.match(dump, /memory: 1 segment\(s\), 64 MB, pages 4 kB, memfd, iova va/);
  t.match(dump, /segment 0: va 0x[0-9a-f]+ iova 0x[0-9a-f]+ len 67108864 fd \d+/);
  t.match(dump, `memzone "tsp_a": segment 0 va 0x${a.va.toString(16)} iova 0x${a.iova.toString(16)} len 1000 align 64`);
  t.match(dump, `memzone "tsp.b:c-d_e": segment 0 va 0x${b.va.toString(16)}`);

  mem.free('tsp_a');
  t.equal(mem.lookup('tsp_a'), undefined, 'freed');
  t.notMatch(mem.dump(), 'tsp_a', 'dump no longer lists it');
  t.throws(() => mem.free('tsp_a'), { message: 'memzone "tsp_a" does not exist' });
  const a2 = mem.reserve('tsp_a', 1000);
  t.equal(a2.va, a.va, 'freed space is reused (first fit)');
  // freeing everything coalesces the holes: a zone of the whole segment fits again
  mem.free('tsp_a');
  mem.free('tsp.b:c-d_e');
  const whole = mem.reserve('tsp_whole', 64 * MB, 4096);
  t.equal(mem.segments.length, 1, 'coalesced holes hold a whole-segment zone');
  t.equal(whole.offset, 0);
  mem.free('tsp_whole');
  // a zone that does not fit grows memory by a new segment
  mem.reserve('tsp_fill', 60 * MB);
  const big = mem.reserve('tsp_next', 10 * MB);
  t.equal(mem.segments.length, 2, 'second segment added on demand');
  t.equal(big.segment, 1);
  t.equal(seen.length, 2, 'listener heard about the second segment');
  t.equal(mem.totalBytes, 128 * MB);
});

t.test('alignment is honored for the address, beyond the page size too', async (t) => {
  const eal = noHugeEal(t, 8);
  const mem = eal.memory;
  mem.reserve('tsp_filler', 8192 + 64, 64); // move the free space off any large boundary
  for (const align of [64, 128, 4096, 1 << 16, 1 << 20]) {
    const z = mem.reserve(`tsp_al${align}`, 100, align);
    t.equal(z.va % BigInt(align), 0n, `va aligned to ${align}`);
    t.equal(z.iova % BigInt(align), 0n, `iova aligned to ${align}`);
    t.equal(z.va, mem.segment(z.segment).va + BigInt(z.offset), 'va = segment va + offset');
  }
  // small odd sizes pack at the requested alignment
  const x = mem.reserve('tsp_x1', 1, 8);
  const y = mem.reserve('tsp_x2', 1, 8);
  t.equal(x.va % 8n, 0n);
  t.equal(y.va % 8n, 0n);
  t.not(x.va, y.va);
});

t.test('memzone errors name the zone and say what is wrong', async (t) => {
  const eal = noHugeEal(t, 2);
  const mem = eal.memory;
  for (const len of [0, -1, 1.5, NaN, Infinity]) {
    t.throws(() => mem.reserve('tsp_sz', len), { name: 'RangeError', message: `memzone "tsp_sz": size ${len} must be a positive integer` }, `size ${len}`);
  }
  t.throws(() => mem.reserve('tsp_huge', 2 ** 32 + 1), { name: 'RangeError', message: /memzone "tsp_huge": size 4294967297 exceeds the 4 GiB/ });
  t.throws(() => mem.reserve('tsp_huge2', 2 ** 40), { name: 'RangeError', message: /memzone "tsp_huge2".*4 GiB/ });
  for (const name of ['', 'has space', 'slash/name', 'ünï', 'a'.repeat(64), 'tab\t']) {
    t.throws(() => mem.reserve(name, 64), { message: `memzone name "${name}" is invalid: use 1-63 characters from A-Z a-z 0-9 _ . : -` }, `name ${JSON.stringify(name)}`);
  }
  t.ok(mem.reserve('a'.repeat(63), 64), '63 characters are fine');
  mem.reserve('tsp_dup', 64);
  t.throws(() => mem.reserve('tsp_dup', 64), { message: 'memzone "tsp_dup" already exists; names must be unique (look it up instead)' });
  for (const align of [0, -64, 3, 48, 100, 1.5]) {
    t.throws(() => mem.reserve('tsp_align', 64, align), { name: 'RangeError', message: `memzone "tsp_align": alignment ${align} must be a power of two` }, `align ${align}`);
  }
  t.equal(mem.lookup('tsp_sz'), undefined, 'failed reservations leave nothing behind');
  t.equal(mem.lookup('tsp_align'), undefined);

  // -m 2: a 2 MB segment and no more
  t.equal(mem.totalBytes, 2 * MB, '-m preallocates');
  t.equal(mem.segments.length, 1);
  const used = mem.memzones().length;
  t.throws(() => mem.reserve('tsp_toobig', 3 * MB), { message: /^out of EAL memory: memzone "tsp_toobig" needs \d+ MB more, 2 MB of the -m 2 MB are in use; raise -m$/ });
  t.equal(mem.memzones().length, used, 'the failed zone is not listed');
  t.equal(mem.segments.length, 1, 'no segment was added');
  const rest = mem.reserve('tsp_rest', MB);
  t.equal(rest.segment, 0, 'memory is still usable after the failure');

  await eal.close();
  t.throws(() => mem.reserve('tsp_after', 64), { message: 'memzone "tsp_after": EAL memory is already released' });
  t.equal(mem.segments.length, 0);
  t.equal(mem.totalBytes, 0);
});

t.test('parseEalArgs: valid options', async (t) => {
  const o = parseEalArgs(['-l', '0@0,1@1,2-3', '--main-lcore', '1', '-m', '1G', '--no-huge', '--file-prefix', 'tspx_1', '--iova-mode=pa',
    '--vdev', 'net_null0,size=64', '--vdev', 'net_null1', '-a', '0000:00:01.0', '--log-level', 'debug', '--no-pci']);
  t.same(o.lcores, [{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }, { id: 2, cpu: 2 }, { id: 3, cpu: 3 }]);
  t.equal(o.mainLcore, 1);
  t.equal(o.memoryMb, 1024);
  t.equal(o.noHuge, true);
  t.equal(o.filePrefix, 'tspx_1');
  t.equal(o.iovaMode, 'pa');
  t.same(o.vdevs, ['net_null0,size=64', 'net_null1']);
  t.same(o.allow, ['0000:00:01.0']);
  t.equal(o.logLevel, 'debug');
  t.equal(o.noPci, true);
  t.equal(parseEalArgs(['--socket-mem', '512,512']).memoryMb, 1024, '--socket-mem list is summed');
  t.same(parseEalArgs([]).lcores, null, 'defaults');
  t.same(splitArgs(['-l', '0', '--', '-p', '3']), [['-l', '0'], ['-p', '3']]);
  t.same(parseCoreList('3,1'), [{ id: 1, cpu: 1 }, { id: 3, cpu: 3 }], 'sorted by lcore id');
});

t.test('parseEalArgs: mistakes are UsageErrors that say what to do', async (t) => {
  const bad: Array<[string[], string | RegExp]> = [
    [['--bogus'], 'unknown EAL option "--bogus" (application options go after "--"; see --help)'],
    [['-x', '1'], /unknown EAL option "-x"/],
    [['--lcores=abc'], /-l: bad core list "abc": use numbers, ranges and lcore@cpu/],
    [['-l', '0-1-2'], /-l: bad core list "0-1-2"/],
    [['-l', '3-1'], '-l: bad range "3-1" in "3-1": the end is below the start'],
    [['-l', '2000'], /-l: core 2000 in "2000" is above 1023/],
    [['-l'], '-l needs a value (see --help)'],
    [['-l', '--'], '-l needs a value (see --help)'],
    [['--no-huge', '--in-memory'], /--no-huge and --in-memory exclude each other/],
    [['--no-huge', '--huge-dir', '/tmp'], '--no-huge and --huge-dir exclude each other'],
    [['--iova-mode', 'xx'], '--iova-mode "xx": use va or pa'],
    [['--iova-mode=PA'], '--iova-mode "PA": use va or pa'],
    [['-l', '0-1', '--main-lcore', '5'], '--main-lcore 5 is not in the -l list 0,1'],
    [['--main-lcore', 'one'], '--main-lcore "one": expected a whole number from 0 to 1023'],
    [['-m', 'lots'], '-m "lots": expected megabytes (e.g. 256) or a size like 1G'],
    [['-m', '0'], '-m "0": expected 1 MB to 1 TB'],
    [['--file-prefix', 'a/b'], /--file-prefix "a\/b": use 1-32 characters/],
    [['--vfio-mode', 'x'], '--vfio-mode "x": use auto, group or iommufd'],
    [['--log-level', 'loud'], '--log-level "loud": use error, warn, info or debug'],
  ];
  for (const [argv, message] of bad) {
    t.throws(() => parseEalArgs(argv), { name: 'UsageError', message }, argv.join(' '));
    try {
      parseEalArgs(argv);
    } catch (e) {
      t.ok(e instanceof UsageError, `${argv.join(' ')}: instanceof UsageError`);
    }
  }
  // lcores on CPUs this process may not use
  t.throws(() => new Eal({ noHuge: true, filePrefix: uniq(), lcores: [{ id: 0, cpu: 0 }, { id: 1, cpu: 999 }] }),
    { name: 'UsageError', message: /-l: CPU 999 \(for lcore 1\) is not available to this process \(allowed: / });
});

/** Wait for one datagram on a non-blocking check of fd, up to ms. */
async function recvWithin(fd: number, ms: number): Promise<{ msg: Record<string, unknown>; fds: number[] }> {
  const end = Date.now() + ms;
  for (;;) {
    const r = os.recvmsg(fd, 4096, os.MSG_DONTWAIT);
    if (r !== null) {
      if (r.data.length === 0) throw new Error('child closed the socket');
      return { msg: JSON.parse(Buffer.from(r.data).toString()) as Record<string, unknown>, fds: r.fds };
    }
    if (Date.now() > end) throw new Error(`no answer from the child within ${ms} ms`);
    await sleep(5);
  }
}

t.test('a segment shared with a second process by fd (SCM_RIGHTS)', async (t) => {
  const eal = noHugeEal(t, 4);
  const mem = eal.memory;
  mem.reserve('tsp_pad', 12345); // the shared zone is not at offset 0
  const z = mem.reserve('tsp_shared', 64 * 1024, 4096);
  const seg = mem.segment(z.segment);
  const u8 = new Uint8Array(os.viewOf(seg.va, seg.len));
  const n = 4096;
  for (let i = 0; i < n; i++) u8[z.offset + i] = (i * 7 + 1) & 0xff;

  const [mine, theirs] = os.socketpair(os.AF_UNIX, os.SOCK_SEQPACKET);
  t.teardown(() => {
    for (const fd of [mine, theirs]) try { os.close(fd); } catch { /* closed */ }
  });
  const script = new URL(siblingModule(import.meta.url, 'segment-child')).pathname;
  const child = spawn(process.execPath, [...process.execArgv, script], { stdio: ['ignore', 'pipe', 'pipe', theirs] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  os.close(theirs); // the child holds its own copy

  os.sendmsg(mine, Buffer.from(JSON.stringify({ len: seg.len, offset: z.offset, n })), [seg.fd]);
  const first = await recvWithin(mine, 20_000).catch((e: Error) => { throw new Error(`${e.message}; child stderr: ${stderr}`); });
  t.equal(first.msg.fds, 1, 'child received one fd');
  t.equal(first.msg.parentPattern, true, 'child reads the bytes the parent wrote');
  t.not(first.msg.pid, process.pid, 'it really is another process');
  let childPattern = true;
  for (let i = 0; i < n; i++) if (u8[z.offset + n + i] !== ((i * 13 + 5) & 0xff)) childPattern = false;
  t.ok(childPattern, 'parent sees the bytes the child wrote');

  // a write after the child mapped the segment is visible to it at once
  u8[z.offset + 100] = 0xee;
  u8[z.offset + 101] = 0x5a;
  os.sendmsg(mine, Buffer.from(JSON.stringify({ at: 100 })));
  const second = await recvWithin(mine, 20_000);
  t.same(second.msg, { marker: 0xee, fresh: 0x5a }, 'child sees the parent\'s later writes live');
  t.equal(await exited, 0, `child exits cleanly${stderr ? ': ' + stderr : ''}`);
});

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

t.test('close() unmaps every segment and closes every fd', async (t) => {
  const base = fdCount();
  const prefix = uniq();
  const eal = new Eal({ noHuge: true, filePrefix: prefix, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  eal.memory.reserve('tsp_one', 60 * MB);
  eal.memory.reserve('tsp_two', 10 * MB);
  const segs = [...eal.memory.segments];
  t.equal(segs.length, 2);
  t.equal(fdCount(), base + 2, 'one fd per segment');
  const maps = () => readFileSync('/proc/self/maps', 'utf8');
  for (const s of segs) {
    t.match(readFileSync(`/proc/self/fdinfo/${s.fd}`, 'utf8'), /pos:/, `fd ${s.fd} open`);
    t.match(maps(), new RegExp(`^${s.va.toString(16)}-.*/memfd:${prefix}seg_${s.id}`, 'm'), `segment ${s.id} mapped from its memfd`);
  }
  await eal.close();
  t.equal(fdCount(), base, 'fd count back to baseline');
  t.notMatch(maps(), `/memfd:${prefix}`, 'no mapping of the segments remains');
  for (const s of segs) t.notMatch(maps(), new RegExp(`^${s.va.toString(16)}-`, 'm'), `segment ${s.id} unmapped`);
  t.equal(eal.memory.segments.length, 0);
  t.same(eal.memory.memzones(), []);
  await eal.close();
  eal.memory.close();
  t.equal(fdCount(), base, 'closing twice is harmless');
});

t.test('hugepage discovery and memory config from fixture /proc and /sys trees', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'tsp-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const proc = join(root, 'proc'), sys = join(root, 'sys');
  mkdirSync(proc);
  writeFileSync(join(proc, 'meminfo'), 'MemTotal:       24000000 kB\nHugepagesize:       2048 kB\n');
  writeFileSync(join(proc, 'mounts'), [
    'proc /proc proc rw,nosuid 0 0',
    'nodev /mnt/huge\\040one hugetlbfs rw,relatime,pagesize=1G 0 0',
    'nodev /dev/hugepages hugetlbfs rw,relatime 0 0',
    'tmpfs /tmp tmpfs rw 0 0',
  ].join('\n') + '\n');
  for (const [kb, nr, free, resv] of [[2048, 64, 40, 8], [1048576, 2, 2, 0]]) {
    const d = join(sys, 'kernel/mm/hugepages', `hugepages-${kb}kB`);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, 'nr_hugepages'), `${nr}\n`);
    writeFileSync(join(d, 'free_hugepages'), `${free}\n`);
    writeFileSync(join(d, 'resv_hugepages'), `${resv}\n`);
  }
  t.equal(defaultHugePageSize(proc), 2 * MB);
  t.equal(defaultHugePageSize(join(root, 'nowhere')), 0, 'no meminfo: no hugepages');
  t.same(hugeMounts(proc), [{ dir: '/mnt/huge one', pageSize: 2 ** 30 }, { dir: '/dev/hugepages', pageSize: 2 * MB }], 'octal escapes undone, default page size filled in');
  const pools = hugePools(sys);
  t.same(pools.map((p) => [p.pageSize, p.total, p.free, p.reserved, p.available]), [[2 * MB, 64, 40, 8, 32], [2 ** 30, 2, 2, 0, 2]], 'available = free - reserved');
  t.same(hugePools(join(root, 'nosys')), []);
  t.equal(parseSize('2M'), 2 * MB);
  t.equal(parseSize('1G'), 2 ** 30);
  t.equal(parseSize('2048k'), 2 * MB);
  t.throws(() => parseSize('lots'), { message: 'cannot parse size "lots"' });
  t.equal(formatPageSize(2 * MB), '2048 kB');
  t.equal(formatPageSize(2 ** 30), '1 GB');
  t.equal(shortageMessage(10, pools[0], 2 * MB),
    `not enough hugepages: need 10 pages of 2048 kB (20 MB), 32 free of 64. Reserve more as root with: echo 42 > ${sys}/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (or run without hugepages: --no-huge)`);

  // memory config: the default mount is the one of the default page size
  const o = defaultEalOptions();
  const c = memoryConfig(o, proc);
  t.same(c.backing, { kind: 'hugetlbfs', dir: '/dev/hugepages', prefix: 'tsp' });
  t.equal(c.pageSize, 2 * MB);
  t.equal(c.limit, Infinity, 'no -m: no limit');
  t.equal(c.preallocate, 0);
  const c1g = memoryConfig({ ...o, hugeDir: '/mnt/huge one/', memoryMb: 2048 }, proc);
  t.equal(c1g.pageSize, 2 ** 30, '--huge-dir picks that mount and its page size');
  t.equal(c1g.limit, 2 ** 31);
  t.equal(c1g.preallocate, 2 ** 31);
  t.same(memoryConfig({ ...o, inMemory: true }, proc).backing, { kind: 'memfd', huge: true, prefix: 'tsp' });
  t.same(memoryConfig({ ...o, noHuge: true }, proc), { iovaMode: 'va', preallocate: 0, limit: Infinity, backing: { kind: 'memfd', huge: false, prefix: 'tsp' }, pageSize: 4096, chunk: 64 * MB });
  writeFileSync(join(proc, 'mounts'), 'proc /proc proc rw 0 0\n');
  t.throws(() => memoryConfig(o, proc), { message: /^no hugetlbfs is mounted: mount one as root with: mkdir -p \/dev\/hugepages && mount -t hugetlbfs nodev \/dev\/hugepages, pass its directory with --huge-dir, or run without hugepages: --no-huge/ });
  writeFileSync(join(proc, 'meminfo'), 'MemTotal: 1 kB\n');
  t.throws(() => memoryConfig({ ...o, inMemory: true }, proc), { message: '--in-memory: this kernel has no hugepages; use --no-huge' });
});

t.test('IOVA of a segment with scattered physical pages (pa mode, plain data)', async (t) => {
  const P = 2 * MB;
  // pages 0 and 1 adjacent physically, page 2 elsewhere, page 3 right after page 2
  const seg: Segment = {
    id: 0, fd: -1, va: 0x7f0000000000n, iova: 0x100000000n, len: 4 * P, pageSize: P, path: null, iovaMode: 'pa',
    pageIovas: [0x100000000n, 0x100000000n + BigInt(P), 0x300000000n, 0x300000000n + BigInt(P)],
  };
  t.equal(iovaAt(seg, 0), 0x100000000n);
  t.equal(iovaAt(seg, P + 5), 0x100000000n + BigInt(P + 5));
  t.equal(iovaAt(seg, 2 * P + 7), 0x300000007n, 'an offset in page 2 maps into page 2\'s frame');
  t.ok(iovaContiguous(seg, P - 100, 200), 'across the adjacent pages 0 and 1');
  t.notOk(iovaContiguous(seg, 2 * P - 100, 200), 'not across pages 1 and 2');
  t.ok(iovaContiguous(seg, 2 * P, 2 * P), 'pages 2 and 3');
  t.ok(iovaContiguous(seg, 2 * P - 1, 1), 'a range inside one page');
  const vaSeg: Segment = { ...seg, iova: seg.va, iovaMode: 'va', pageIovas: null };
  t.equal(iovaAt(vaSeg, 12345), seg.va + 12345n, 'va mode: iova = va');
  t.ok(iovaContiguous(vaSeg, 0, 4 * P));
});
