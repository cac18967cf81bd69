/**
 * src/os/libc.ts against the real kernel: errors, memfd/mmap views, SCM_RIGHTS, poll, eventfd,
 * thread identity and affinity, and every exported constant checked against the system headers.
 */
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import * as os from '../../src/os/libc.js';
import { OsError } from '../../src/os/libc.js';
import { siblingModule } from '../../src/lcore/module.js';

const uniq = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

/** Close fds that are still open; ignore the ones a test already closed. */
function closeAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      os.close(fd);
    } catch {
      /* already closed */
    }
  }
}

function u64(n: number | bigint): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

t.test('OsError names the call, the errno and the path', async (t) => {
  const path = `/tmp/tsp-missing-${uniq}/nothing-here`;
  let err: unknown;
  try {
    os.open(path, os.O_RDONLY);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof OsError, 'throws OsError');
  const e = err as OsError;
  t.equal(e.name, 'OsError');
  t.equal(e.call, 'open');
  t.equal(e.code, 'ENOENT');
  t.equal(e.errno, 2);
  t.equal(e.errno, os.E.ENOENT);
  t.match(e.detail, path);
  t.match(e.message, /^open\(/, 'message starts with the call');
  t.ok(e.message.includes(`"${path}"`), 'message quotes the path');
  t.match(e.message, /ENOENT \(errno 2\)/);
  t.match(e.message, /No such file or directory/, 'message carries strerror text');

  // another call, another errno: close of a descriptor that is not open
  t.throws(() => os.close(987654), { name: 'OsError', call: 'close', code: 'EBADF', errno: os.E.EBADF, message: /close\(987654\) failed: EBADF/ });
  // mmap failure names its arguments
  t.throws(() => os.mmap(0n, 4096, os.PROT_READ, os.MAP_SHARED, 987654, 0), { call: 'mmap', code: 'EBADF', message: /fd 987654/ });
  t.equal(os.errnoName(os.E.EAGAIN), 'EAGAIN');
  t.equal(os.errnoName(99999), 'E99999', 'unknown errno gets a synthetic name');
  t.match(os.strerror(os.E.ENOSPC), /No space left on device/);
});

t.test('memfd + mmap + viewOf round trip', async (t) => {
  const len = 3 * 4096;
  const fd = os.memfdCreate(`tsp-libc-${uniq}`, 0);
  t.teardown(() => closeAll([fd]));
  t.match(readlinkSync(`/proc/self/fd/${fd}`), `/memfd:tsp-libc-${uniq}`, 'memfd carries its name');
  os.ftruncate(fd, len);
  const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  t.teardown(() => os.munmap(va, len));
  t.equal(va % 4096n, 0n, 'page aligned');
  const ab = os.viewOf(va, len);
  t.equal(ab.byteLength, len);
  const u8 = new Uint8Array(ab);
  t.equal(u8[0], 0, 'fresh memfd reads as zero');
  for (let i = 0; i < len; i++) u8[i] = (i * 7 + 3) & 0xff;
  // the file sees what the view wrote
  const back = new Uint8Array(len);
  t.equal(os.pread(fd, back, len, 0), len);
  t.same(back, u8, 'pread sees the writes made through the view');
  // the view sees what the file got
  const msg = Buffer.from('hello from pwrite');
  t.equal(os.pwrite(fd, msg, msg.length, 4096 + 10), msg.length);
  t.equal(Buffer.from(u8.subarray(4096 + 10, 4096 + 10 + msg.length)).toString(), 'hello from pwrite');
  // a second mapping of the same fd shares the pages; a second view at the same address too
  const va2 = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  t.teardown(() => os.munmap(va2, len));
  t.not(va2, va);
  const u8b = new Uint8Array(os.viewOf(va2, len));
  u8b[len - 1] = 0xab;
  t.equal(u8[len - 1], 0xab, 'two mappings of one memfd share memory');
  t.equal(new Uint8Array(os.viewOf(va, 16))[3], u8[3]);
  // readAddr/writeAddr move bytes between a file and raw memory
  const p = os.socketpair(os.AF_UNIX, os.SOCK_STREAM);
  t.teardown(() => closeAll(p));
  t.equal(os.writeAddr(p[0], va + 100n, 32), 32);
  t.equal(os.readAddr(p[1], va2 + 2000n, 32), 32);
  t.same(u8.subarray(2000, 2032), u8.subarray(100, 132), 'writeAddr/readAddr copy raw memory');
  // views are bounded
  t.throws(() => os.viewOf(va, 0), RangeError);
  t.throws(() => os.viewOf(va, 0x1_0000_0001), { name: 'RangeError', message: /1\.\.4 GiB/ });
});

t.test('sendmsg/recvmsg carry data and SCM_RIGHTS fds', async (t) => {
  const [a, b] = os.socketpair(os.AF_UNIX, os.SOCK_SEQPACKET);
  const mfd = os.memfdCreate(`tsp-scm-${uniq}`, 0);
  const efd = os.eventfd(0, os.EFD_NONBLOCK);
  const opened = [a, b, mfd, efd];
  t.teardown(() => closeAll(opened));
  os.ftruncate(mfd, 4096);
  const content = Buffer.from(`memfd content ${uniq}`);
  os.pwrite(mfd, content, content.length, 0);

  const payload = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
  t.equal(os.sendmsg(a, payload, [mfd, efd]), payload.length);
  t.equal(os.pollOne(b, os.POLLIN, 1000) & os.POLLIN, os.POLLIN, 'receiver is readable');
  const r = os.recvmsg(b, 4096);
  t.ok(r);
  const got = r!;
  opened.push(...got.fds);
  t.same(Buffer.from(got.data), payload, 'payload arrives intact');
  t.equal(got.truncated, false);
  t.equal(got.fds.length, 2, 'both descriptors arrive');
  t.not(got.fds[0], mfd, 'received fds are new descriptors');
  t.not(got.fds[1], efd);
  t.match(readlinkSync(`/proc/self/fd/${got.fds[0]}`), `/memfd:tsp-scm-${uniq}`, 'first fd is the memfd');
  t.match(readlinkSync(`/proc/self/fd/${got.fds[1]}`), /eventfd/, 'second fd is the eventfd');
  // received fds are close-on-exec (MSG_CMSG_CLOEXEC)
  const fdFlags = (fd: number) => parseInt(/flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1], 8);
  for (const fd of got.fds) t.equal(fdFlags(fd) & os.O_CLOEXEC, os.O_CLOEXEC, `received fd ${fd} is close-on-exec`);
  // and usable: the memfd holds the content, the eventfd is the same counter
  const back = Buffer.alloc(content.length);
  os.pread(got.fds[0], back, back.length, 0);
  t.equal(back.toString(), content.toString(), 'received memfd reads the sender\'s content');
  os.write(got.fds[1], u64(42));
  const cnt = Buffer.alloc(8);
  t.equal(os.read(efd, cnt), 8);
  t.equal(cnt.readBigUInt64LE(), 42n, 'write on the received eventfd is seen on the original');

  // a message without fds, and an empty receive queue with MSG_DONTWAIT
  t.equal(os.sendmsg(b, Buffer.from('pong')), 4);
  const r2 = os.recvmsg(a, 64, os.MSG_DONTWAIT)!;
  t.equal(Buffer.from(r2.data).toString(), 'pong');
  t.same(r2.fds, []);
  t.equal(os.recvmsg(a, 64, os.MSG_DONTWAIT), null, 'EAGAIN gives null');

  // a datagram longer than the buffer is reported truncated
  os.sendmsg(a, Buffer.alloc(100, 1));
  const r3 = os.recvmsg(b, 10)!;
  t.equal(r3.data.length, 10);
  t.equal(r3.truncated, true, 'MSG_TRUNC is reported');

  // many fds in one message
  const many = Array.from({ length: 20 }, () => os.eventfd(0, 0));
  opened.push(...many);
  os.sendmsg(a, Buffer.from('x'), many);
  const r4 = os.recvmsg(b, 16)!;
  opened.push(...r4.fds);
  t.equal(r4.fds.length, 20, '20 fds in one message');
  t.equal(new Set(r4.fds).size, 20);
  t.throws(() => os.sendmsg(a, Buffer.from('x'), new Array(254).fill(efd)), { name: 'RangeError', message: /254 fds exceed the limit of 253/ });

  // peer closed: recvmsg gives empty data
  os.close(a);
  const r5 = os.recvmsg(b, 16)!;
  t.equal(r5.data.length, 0, 'EOF is an empty message');
  // sendmsg on a closed peer fails with EPIPE (no SIGPIPE thanks to MSG_NOSIGNAL)
  t.throws(() => os.sendmsg(b, Buffer.from('x')), { name: 'OsError', call: 'sendmsg', code: 'EPIPE' });
});

t.test('pollOne', async (t) => {
  const [a, b] = os.socketpair(os.AF_UNIX, os.SOCK_STREAM);
  t.teardown(() => closeAll([a, b]));
  const t0 = performance.now();
  t.equal(os.pollOne(b, os.POLLIN, 50), 0, 'nothing to read: timeout gives 0');
  t.ok(performance.now() - t0 >= 40, 'poll waited for its timeout');
  t.equal(os.pollOne(b, os.POLLIN, 0), 0);
  t.equal(os.pollOne(a, os.POLLOUT, 0), os.POLLOUT, 'empty socket is writable');
  t.equal(os.send(a, Buffer.from('hi'), 2, 0), 2);
  t.equal(os.pollOne(b, os.POLLIN, 0), os.POLLIN, 'readable after a send');
  const buf = Buffer.alloc(8);
  t.equal(os.read(b, buf), 2);
  t.equal(os.pollOne(b, os.POLLIN, 0), 0, 'not readable once drained');
  os.close(a);
  t.ok(os.pollOne(b, os.POLLIN, 0) & os.POLLHUP, 'POLLHUP when the peer closes');
  t.equal(os.pollOne(999999, os.POLLIN, 0), os.POLLNVAL, 'an fd that is not open gives POLLNVAL');
});

t.test('eventfd read/write', async (t) => {
  const fd = os.eventfd(3, os.EFD_NONBLOCK);
  const sem = os.eventfd(2, os.EFD_NONBLOCK | os.EFD_SEMAPHORE);
  t.teardown(() => closeAll([fd, sem]));
  const buf = Buffer.alloc(8);
  os.write(fd, u64(5));
  os.write(fd, u64(7));
  t.equal(os.read(fd, buf), 8);
  t.equal(buf.readBigUInt64LE(), 15n, 'counter sums the initial value and both writes');
  t.throws(() => os.read(fd, buf), { name: 'OsError', call: 'read', code: 'EAGAIN' }, 'empty non-blocking eventfd: EAGAIN');
  t.throws(() => os.write(fd, Buffer.alloc(4)), { code: 'EINVAL' }, 'eventfd writes must be 8 bytes');
  t.equal(os.pollOne(fd, os.POLLIN, 0), 0);
  os.write(fd, u64(1));
  t.equal(os.pollOne(fd, os.POLLIN, 0), os.POLLIN, 'readable after a write');
  // semaphore mode hands out 1 per read
  os.read(sem, buf);
  t.equal(buf.readBigUInt64LE(), 1n);
  os.read(sem, buf);
  t.equal(buf.readBigUInt64LE(), 1n);
  t.throws(() => os.read(sem, buf), { code: 'EAGAIN' });
});

t.test('gettid, affinity and thread names', async (t) => {
  const tid = os.gettid();
  t.equal(tid, process.pid, 'main thread: tid = pid');
  t.equal(os.getpid(), process.pid);
  t.ok(os.processAlive(process.pid));
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  t.notOk(os.processAlive(pidMax + 1), 'a pid beyond pid_max is not alive');

  const orig = os.getAffinity();
  t.ok(orig.length >= 1, 'at least one CPU allowed');
  const statusCpus = () => /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'))![1];
  t.teardown(() => os.setAffinity(orig));
  const cpu = orig[orig.length - 1];
  os.setAffinity([cpu]);
  t.same(os.getAffinity(), [cpu], 'pinned to one CPU');
  t.equal(statusCpus(), String(cpu), 'the kernel agrees');
  os.setAffinity(orig);
  t.same(os.getAffinity(), orig, 'restored');
  t.throws(() => os.setAffinity([1000]), { name: 'OsError', call: 'sched_setaffinity', code: 'EINVAL', message: /cpus 1000/ });

  // thread name of the main thread (restored afterwards)
  const comm = (id: number) => readFileSync(`/proc/self/task/${id}/comm`, 'utf8').trim();
  const origName = comm(tid);
  t.teardown(() => os.setThreadName(origName));
  os.setThreadName(`tsp-n${process.pid % 1000}`);
  t.equal(comm(tid), `tsp-n${process.pid % 1000}`, '/proc/self/task/<tid>/comm shows the name');
  os.setThreadName('tsp-0123456789abcdefghij');
  t.equal(comm(tid), 'tsp-0123456789a', 'names are cut to 15 characters');
  os.setThreadName(origName);
  t.equal(comm(tid), origName);
});

t.test('gettid and setThreadName in a worker thread', async (t) => {
  const w = new Worker(new URL(siblingModule(import.meta.url, 'thread-worker')), { workerData: { name: 'tsp-worker-x' } });
  t.teardown(() => w.terminate());
  const msg = await new Promise<{ tid: number; cpus: number[] }>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  t.not(msg.tid, process.pid, 'a worker has its own tid');
  t.equal(readFileSync(`/proc/self/task/${msg.tid}/comm`, 'utf8').trim(), 'tsp-worker-x', 'the worker thread got its name');
  t.not(readFileSync(`/proc/self/task/${process.pid}/comm`, 'utf8').trim(), 'tsp-worker-x', 'the main thread did not');
  w.postMessage('bye');
});

// ---- constants and struct layout against the system headers ----

/**
 * Every exported numeric constant (an upper-case name) is checked against C. The brief's families
 * must all be among them; a constant whose header the program does not include shows up as
 * "missing" (add its header below) rather than passing unchecked.
 */
const FAMILIES = ['O_', 'PROT_', 'MAP_', 'MFD_', 'MADV_', 'EFD_', 'AF_', 'SOCK_', 'SOL_', 'SCM_', 'SO_', 'MSG_', 'POLL', 'LOCK_', 'FALLOC_', 'PR_', 'SYS_'];
const constants = Object.entries(os).filter(
  // SIZEOF_* are struct sizes, checked with the layouts below
  ([k, v]) => (typeof v === 'number' || typeof v === 'bigint') && /^[A-Z][A-Z0-9]*_[A-Za-z0-9_]+$|^POLL[A-Z]+$/.test(k) && !k.startsWith('SIZEOF_'),
) as Array<[string, number | bigint]>;

const hasCc = spawnSync('cc', ['--version']).status === 0;

t.test('constants and struct layouts match the system headers', { skip: hasCc ? false : 'no C compiler (cc) installed' }, async (t) => {
  const names = constants.map(([k]) => k);
  for (const f of FAMILIES) t.ok(names.some((n) => n.startsWith(f)), `the ${f}* family is checked`);
  // the list is what the brief promises, not an empty filter
  for (const must of ['O_RDWR', 'O_CLOEXEC', 'PROT_WRITE', 'MAP_SHARED', 'MAP_HUGETLB', 'MAP_FAILED', 'MFD_HUGETLB', 'MFD_HUGE_SHIFT', 'EFD_NONBLOCK',
    'AF_UNIX', 'AF_PACKET', 'SOCK_SEQPACKET', 'SOCK_CLOEXEC', 'SOL_SOCKET', 'SCM_RIGHTS', 'MSG_NOSIGNAL', 'MSG_CMSG_CLOEXEC', 'POLLIN', 'POLLNVAL',
    'LOCK_NB', 'PR_SET_NAME', 'SYS_gettid', 'FALLOC_FL_KEEP_SIZE', 'MADV_DONTFORK']) {
    t.ok(names.includes(must), `${must} is exported and checked`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'tsp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines = constants.map(([k]) =>
    k === 'MAP_FAILED'
      ? `  printf("MAP_FAILED %llu\\n", (unsigned long long)(uintptr_t)MAP_FAILED);`
      : `#ifdef ${k}\n  printf("%s %lld\\n", "${k}", (long long)(${k}));\n#else\n  printf("%s missing\\n", "${k}");\n#endif`,
  );
  const layout = [
    ['sizeof_msghdr', 'sizeof(struct msghdr)', 56],
    ['sizeof_cmsghdr', 'sizeof(struct cmsghdr)', 16],
    ['sizeof_iovec', 'sizeof(struct iovec)', 16],
    ['off_msg_iov', 'offsetof(struct msghdr, msg_iov)', 16],
    ['off_msg_iovlen', 'offsetof(struct msghdr, msg_iovlen)', 24],
    ['off_msg_control', 'offsetof(struct msghdr, msg_control)', 32],
    ['off_msg_controllen', 'offsetof(struct msghdr, msg_controllen)', 40],
    ['off_msg_flags', 'offsetof(struct msghdr, msg_flags)', 48],
    ['off_cmsg_level', 'offsetof(struct cmsghdr, cmsg_level)', 8],
    ['off_cmsg_type', 'offsetof(struct cmsghdr, cmsg_type)', 12],
    ['cmsg_data_off', '(long long)((char *)CMSG_DATA(&cm.h) - (char *)&cm.h)', 16],
    ['cmsg_space_1fd', 'CMSG_SPACE(sizeof(int))', 24],
    ['cmsg_len_1fd', 'CMSG_LEN(sizeof(int))', 20],
    ['sizeof_pollfd', 'sizeof(struct pollfd)', 8],
    ['SIZEOF_POLLFD', 'sizeof(struct pollfd)', os.SIZEOF_POLLFD],
    ['off_pollfd_events', 'offsetof(struct pollfd, events)', 4],
    ['off_pollfd_revents', 'offsetof(struct pollfd, revents)', 6],
    ['sizeof_sockaddr_un', 'sizeof(struct sockaddr_un)', 110],
    ['off_sun_path', 'offsetof(struct sockaddr_un, sun_path)', 2],
    ['sizeof_cpu_set', 'sizeof(cpu_set_t)', 128],
    ['EWOULDBLOCK', 'EWOULDBLOCK', os.E.EWOULDBLOCK],
  ] as const;
  const src = `#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <time.h>
#include <linux/falloc.h>
#include <linux/memfd.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
int main(void) {
  union { struct cmsghdr h; char buf[64]; } cm;
${lines.join('\n')}
${layout.map(([k, expr]) => `  printf("%s %lld\\n", "${k}", (long long)(${expr}));`).join('\n')}
  return 0;
}
`;
  writeFileSync(join(dir, 'consts.c'), src);
  execFileSync('cc', ['-Wall', '-Werror', '-o', join(dir, 'consts'), join(dir, 'consts.c')], { stdio: 'pipe' });
  const out = execFileSync(join(dir, 'consts'), { encoding: 'utf8' });
  const lines2 = out.trim().split('\n').map((l) => l.split(' ') as [string, string]);
  const missing = lines2.filter(([, v]) => v === 'missing').map(([k]) => k);
  t.same(missing, [], 'every constant is defined by the included headers (add the header of any that is not)');
  const c = new Map(lines2.filter(([, v]) => v !== 'missing').map(([k, v]) => [k, BigInt(v)] as const));
  t.equal(c.size + missing.length, constants.length + layout.length, 'the program printed every value');
  for (const [k, v] of constants) if (!missing.includes(k)) t.equal(c.get(k), BigInt(v), `${k} = ${v}`);
  for (const [k, , want] of layout) t.equal(c.get(k), BigInt(want), `${k} = ${want}`);

  // errno numbers that the code compares against (koffi's table) agree with errno.h
  const errnos = ['ENOENT', 'EAGAIN', 'EWOULDBLOCK', 'EINTR', 'EPERM', 'ENOBUFS', 'ENOSPC', 'ENOMEM', 'EBADF', 'EINVAL', 'EPIPE', 'EEXIST'];
  const esrc = `#include <errno.h>\n#include <stdio.h>\nint main(void) {\n${errnos.map((e) => `  printf("%d\\n", ${e});`).join('\n')}\n  return 0;\n}\n`;
  writeFileSync(join(dir, 'errno.c'), esrc);
  execFileSync('cc', ['-o', join(dir, 'errno'), join(dir, 'errno.c')], { stdio: 'pipe' });
  const ev = execFileSync(join(dir, 'errno'), { encoding: 'utf8' }).trim().split('\n').map(Number);
  errnos.forEach((e, i) => t.equal((os.E as Record<string, number>)[e], ev[i], `errno ${e} = ${ev[i]}`));
});

t.test('adviseHugePages: a large shared buffer gets transparent huge pages where the kernel offers them', async (t) => {
  const mode = (() => {
    try { return /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? 'never'; } catch { return 'never'; }
  })();
  const anonHuge = (): number => Number(/AnonHugePages:\s+(\d+) kB/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))?.[1] ?? 0);
  t.equal(os.adviseHugePages(new SharedArrayBuffer(1 << 20)), 0, 'a buffer smaller than one huge page: nothing advised');
  const before = anonHuge();
  const sab = new SharedArrayBuffer(32 << 20);
  const advised = os.adviseHugePages(sab);
  if (mode === 'never') {
    t.equal(advised, 0, 'THP off in this kernel: nothing advised');
    return;
  }
  t.ok(advised >= 30 << 20 && advised % (2 << 20) === 0, `the whole 2 MiB pages inside the buffer were advised (${advised} bytes)`);
  new Int32Array(sab).fill(1); // first touch: the faults come after the advice
  const grew = anonHuge() - before;
  t.ok(grew >= 2048, `the process's AnonHugePages grew by ${grew} kB after the first touch (THP "${mode}")`);
});
