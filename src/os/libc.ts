/**
 * libc through koffi: the one place where tspmd talks to the kernel.
 *
 * Every wrapper checks the return value and throws OsError (call name, errno name and number,
 * and the path or arguments involved), so callers never look at -1 or errno themselves.
 * Pointers cross this boundary as bigint addresses or as Uint8Array/Buffer arguments, which koffi
 * passes by address for the duration of the call.
 */
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');

/** Error thrown by every failed libc call: names the call, the errno and what it acted on. */
export class OsError extends Error {
  /** errno number (e.g. 2) */
  readonly errno: number;
  /** errno name (e.g. "ENOENT") */
  readonly code: string;
  /** libc function that failed */
  readonly call: string;
  /** the path or arguments involved */
  readonly detail: string;
  constructor(call: string, errno: number, detail: string) {
    super(`${call}(${detail}) failed: ${errnoName(errno)} (errno ${errno}): ${strerror(errno)}`);
    this.name = 'OsError';
    this.call = call;
    this.errno = errno;
    this.code = errnoName(errno);
    this.detail = detail;
  }
}

const errnoNames = new Map<number, string>();
for (const [name, num] of Object.entries(koffi.os.errno)) if (!errnoNames.has(num)) errnoNames.set(num, name);

/** The symbolic name of an errno value ("ENOENT"). */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** Numeric errno values by name, as the running platform defines them. */
export const E = koffi.os.errno;

const strerrorFn = libc.func('const char *strerror(int errnum)');
/** The C library's message for an errno value. */
export function strerror(errno: number): string {
  return strerrorFn(errno) as string;
}

/** Throw OsError for call when ret is negative; return ret otherwise. */
function check(ret: number, call: string, detail: () => string): number {
  if (ret < 0) throw new OsError(call, koffi.errno(), detail());
  return ret;
}

/** Like check() for functions returning ssize_t/off_t as number or bigint. */
function checkSize(ret: number | bigint, call: string, detail: () => string): number {
  const n = Number(ret);
  if (n < 0) throw new OsError(call, koffi.errno(), detail());
  return n;
}

// ---- constants (x86_64 Linux; verified against the kernel headers in test/os) ----
export const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0o100, O_EXCL = 0o200, O_TRUNC = 0o1000;
export const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
export const PROT_NONE = 0, PROT_READ = 1, PROT_WRITE = 2;
export const MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000, MAP_POPULATE = 0x8000, MAP_HUGETLB = 0x40000;
export const MAP_FAILED = 0xffffffffffffffffn;
export const MFD_CLOEXEC = 1, MFD_ALLOW_SEALING = 2, MFD_HUGETLB = 4, MFD_HUGE_SHIFT = 26;
export const MADV_DONTFORK = 10, MADV_HUGEPAGE = 14, MADV_DONTDUMP = 16;
export const EFD_CLOEXEC = 0o2000000, EFD_NONBLOCK = 0o4000, EFD_SEMAPHORE = 1;
export const AF_UNIX = 1, AF_INET = 2, AF_PACKET = 17;
export const SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_RAW = 3, SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1, SCM_RIGHTS = 1, SO_RCVBUF = 8, SO_SNDBUF = 7;
export const MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000, MSG_TRUNC = 0x20, MSG_CTRUNC = 0x8;
export const POLLIN = 1, POLLOUT = 4, POLLERR = 8, POLLHUP = 16, POLLNVAL = 32;
export const LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4, LOCK_UN = 8;
export const FALLOC_FL_KEEP_SIZE = 1;
export const PR_SET_NAME = 15;
export const SYS_gettid = 186;
/** fcntl commands: file status flags and memfd seals */
export const F_GETFL = 3, F_SETFL = 4, F_ADD_SEALS = 1033, F_GET_SEALS = 1034;
/** memfd seals (F_ADD_SEALS / F_GET_SEALS) */
export const F_SEAL_SEAL = 1, F_SEAL_SHRINK = 2, F_SEAL_GROW = 4, F_SEAL_WRITE = 8;

// ---- prototypes ----
const fnOpen = libc.func('int open(const char *path, int flags, uint32_t mode)');
const fnClose = libc.func('int close(int fd)');
const fnRead = libc.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)');
const fnWrite = libc.func('intptr_t write(int fd, const uint8_t *buf, size_t count)');
const fnPread = libc.func('intptr_t pread(int fd, _Out_ uint8_t *buf, size_t count, int64_t off)');
const fnPwrite = libc.func('intptr_t pwrite(int fd, const uint8_t *buf, size_t count, int64_t off)');
const fnReadAddr = libc.func('read', 'intptr_t', ['int', 'uint64_t', 'size_t']);
const fnWriteAddr = libc.func('write', 'intptr_t', ['int', 'uint64_t', 'size_t']);
const fnIoctlBuf = libc.func('ioctl', 'int', ['int', 'unsigned long', '_Inout_ uint8_t *']);
const fnIoctlInt = libc.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']);
const fnMmap = libc.func('mmap', 'uint64_t', ['uint64_t', 'size_t', 'int', 'int', 'int', 'int64_t']);
const fnMunmap = libc.func('munmap', 'int', ['uint64_t', 'size_t']);
const fnMadvise = libc.func('madvise', 'int', ['uint64_t', 'size_t', 'int']);
// memmove(p, p, 0) returns p: the address koffi passes for a typed array, as a number.
const fnAddressOf = libc.func('memmove', 'uint64_t', ['void *', 'void *', 'size_t']);
const fnMlock = libc.func('mlock', 'int', ['uint64_t', 'size_t']);
const fnFtruncate = libc.func('int ftruncate(int fd, int64_t len)');
const fnFallocate = libc.func('int fallocate(int fd, int mode, int64_t off, int64_t len)');
const fnMemfdCreate = libc.func('int memfd_create(const char *name, unsigned int flags)');
const fnEventfd = libc.func('int eventfd(unsigned int initval, int flags)');
const fnSocket = libc.func('int socket(int domain, int type, int protocol)');
const fnSocketpair = libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)');
const fnBind = libc.func('int bind(int fd, const uint8_t *addr, uint32_t len)');
const fnConnect = libc.func('int connect(int fd, const uint8_t *addr, uint32_t len)');
const fnListen = libc.func('int listen(int fd, int backlog)');
const fnAccept4 = libc.func('int accept4(int fd, void *addr, void *len, int flags)');
const fnSendmsg = libc.func('sendmsg', 'intptr_t', ['int', 'uint64_t', 'int']);
const fnRecvmsg = libc.func('recvmsg', 'intptr_t', ['int', 'uint64_t', 'int']);
const fnSend = libc.func('intptr_t send(int fd, const uint8_t *buf, size_t len, int flags)');
const fnSetsockopt = libc.func('int setsockopt(int fd, int level, int name, const uint8_t *val, uint32_t len)');
const fnGetsockopt = libc.func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *val, _Inout_ uint32_t *len)');
const fnPoll = libc.func('int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)');
// The same call with the pollfd array passed in place (koffi hands a TypedArray's memory over as is).
const fnPollInPlace = libc.func('poll', 'int', ['uint8_t *', 'unsigned long', 'int']);
const fnGetsockoptInPlace = libc.func('getsockopt', 'int', ['int', 'int', 'int', 'uint8_t *', 'uint8_t *']);
const fnClockGettime = libc.func('clock_gettime', 'int', ['int', 'uint8_t *']);
const fnSchedSetaffinity = libc.func('int sched_setaffinity(int pid, size_t size, const uint8_t *mask)');
const fnSchedGetaffinity = libc.func('int sched_getaffinity(int pid, size_t size, _Out_ uint8_t *mask)');
const fnSyscall0 = libc.func('long syscall(long nr)');
const fnPrctlName = libc.func('prctl', 'int', ['int', 'const char *', 'unsigned long', 'unsigned long', 'unsigned long']);
const fnFlock = libc.func('int flock(int fd, int op)');
const fnGetpid = libc.func('int getpid()');
const fnIfNametoindex = libc.func('unsigned int if_nametoindex(const char *name)');
const fnKill = libc.func('int kill(int pid, int sig)');
const fnReadRaw = libc.func('read', 'intptr_t', ['int', 'uintptr_t', 'size_t']);
const fnWriteRaw = libc.func('write', 'intptr_t', ['int', 'uintptr_t', 'size_t']);
const fnSendKick = libc.func('send', 'intptr_t', ['int', 'uintptr_t', 'size_t', 'int']);
const fnRecvKick = libc.func('recv', 'intptr_t', ['int', 'uintptr_t', 'size_t', 'int']);
const fnGetrlimit = libc.func('int getrlimit(int resource, _Out_ uint8_t *rlim)');
const fnSetrlimit = libc.func('int setrlimit(int resource, const uint8_t *rlim)');
const fnFcntl = libc.func('int fcntl(int fd, int cmd, ...)');
const fnPipe2 = libc.func('int pipe2(_Out_ int *fds, int flags)');

// ---- files ----

/** open(2); mode applies with O_CREAT. */
export function open(path: string, flags: number, mode = 0o600): number {
  return check(fnOpen(path, flags | O_CLOEXEC, mode) as number, 'open', () => `"${path}", 0x${flags.toString(16)}`);
}

/** close(2). */
export function close(fd: number): void {
  check(fnClose(fd) as number, 'close', () => `${fd}`);
}

/** read(2) into buf (up to len bytes, default all of buf); returns bytes read. */
export function read(fd: number, buf: Uint8Array, len = buf.byteLength): number {
  return checkSize(fnRead(fd, buf, len), 'read', () => `fd ${fd}, ${len}`);
}

/** write(2) from buf; returns bytes written. */
export function write(fd: number, buf: Uint8Array, len = buf.byteLength): number {
  return checkSize(fnWrite(fd, buf, len), 'write', () => `fd ${fd}, ${len}`);
}

/** read(2) into raw memory at address va. */
export function readAddr(fd: number, va: bigint, len: number): number {
  return checkSize(fnReadAddr(fd, va, len), 'read', () => `fd ${fd}, 0x${va.toString(16)}, ${len}`);
}

/** write(2) from raw memory at address va. */
export function writeAddr(fd: number, va: bigint, len: number): number {
  return checkSize(fnWriteAddr(fd, va, len), 'write', () => `fd ${fd}, 0x${va.toString(16)}, ${len}`);
}

/** pread(2) at a file offset; returns bytes read. */
export function pread(fd: number, buf: Uint8Array, len: number, off: number | bigint): number {
  return checkSize(fnPread(fd, buf, len, off), 'pread', () => `fd ${fd}, ${len}, off 0x${off.toString(16)}`);
}

/** pwrite(2) at a file offset; returns bytes written. */
export function pwrite(fd: number, buf: Uint8Array, len: number, off: number | bigint): number {
  return checkSize(fnPwrite(fd, buf, len, off), 'pwrite', () => `fd ${fd}, ${len}, off 0x${off.toString(16)}`);
}

/** ftruncate(2). */
export function ftruncate(fd: number, len: number | bigint): void {
  check(fnFtruncate(fd, len) as number, 'ftruncate', () => `fd ${fd}, ${len}`);
}

/** fallocate(2): reserves backing store (hugetlbfs pages) up front so shortage is an error, not SIGBUS. */
export function fallocate(fd: number, mode: number, off: number, len: number): void {
  check(fnFallocate(fd, mode, off, len) as number, 'fallocate', () => `fd ${fd}, off ${off}, len ${len}`);
}

/** fcntl(2) with an int argument (F_GETFL, F_SETFL, F_GET_SEALS, F_ADD_SEALS, ...); returns its result. */
export function fcntl(fd: number, cmd: number, arg = 0): number {
  return check(fnFcntl(fd, cmd, 'int', arg) as number, 'fcntl', () => `fd ${fd}, cmd ${cmd}, ${arg}`);
}

/** The seals of a memfd (F_GET_SEALS); throws OsError EINVAL for a file that has no seals (not a memfd). */
export function getSeals(fd: number): number {
  return fcntl(fd, F_GET_SEALS);
}

/** Add seals to a memfd (F_ADD_SEALS); EPERM when it carries F_SEAL_SEAL or was made without MFD_ALLOW_SEALING. */
export function addSeals(fd: number, seals: number): void {
  fcntl(fd, F_ADD_SEALS, seals);
}

/** pipe2(2); returns [read end, write end], always close-on-exec. */
export function pipe(flags = 0): [number, number] {
  const fds = [0, 0];
  check(fnPipe2(fds, flags | O_CLOEXEC) as number, 'pipe2', () => `0x${flags.toString(16)}`);
  return [fds[0], fds[1]];
}

/** Set O_NONBLOCK on fd's open file description (shared with every process holding it). */
export function setNonblock(fd: number): void {
  const fl = fcntl(fd, F_GETFL);
  if ((fl & O_NONBLOCK) === 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/** flock(2); with LOCK_NB returns false when the lock is held elsewhere. */
export function flock(fd: number, op: number): boolean {
  const r = fnFlock(fd, op) as number;
  if (r < 0) {
    const e = koffi.errno();
    if ((op & LOCK_NB) !== 0 && e === E.EWOULDBLOCK) return false;
    throw new OsError('flock', e, `fd ${fd}, op ${op}`);
  }
  return true;
}

/** ioctl(2) whose argument is a buffer (in/out); returns the ioctl's non-negative result. */
export function ioctl(fd: number, req: number, arg: Uint8Array | null): number {
  return check(fnIoctlBuf(fd, req, arg) as number, 'ioctl', () => `fd ${fd}, 0x${req.toString(16)}`);
}

/** ioctl(2) whose argument is an integer passed by value. */
export function ioctlInt(fd: number, req: number, arg: number | bigint): number {
  return check(fnIoctlInt(fd, req, arg) as number, 'ioctl', () => `fd ${fd}, 0x${req.toString(16)}, ${arg}`);
}

// ---- memory ----

/** mmap(2); returns the mapped address. */
export function mmap(addr: bigint, len: number, prot: number, flags: number, fd: number, off: number | bigint): bigint {
  const r = BigInt(fnMmap(addr, len, prot, flags, fd, off) as number | bigint);
  if (r === MAP_FAILED) {
    throw new OsError('mmap', koffi.errno(), `0x${addr.toString(16)}, ${len}, prot ${prot}, flags 0x${flags.toString(16)}, fd ${fd}, off ${off}`);
  }
  return r;
}

/** munmap(2). */
export function munmap(va: bigint, len: number): void {
  check(fnMunmap(va, len) as number, 'munmap', () => `0x${va.toString(16)}, ${len}`);
}

/**
 * Ask for transparent huge pages under a large buffer (madvise MADV_HUGEPAGE over its whole 2 MiB
 * pages), before its pages are first touched: a table read at random addresses (LPM's 64 MiB
 * tbl24, a hash table) then costs one TLB entry per 2 MiB instead of per 4 KiB. Best effort:
 * returns the bytes advised, 0 where the kernel has THP off or the buffer spans no whole huge page.
 */
export function adviseHugePages(buf: SharedArrayBuffer | ArrayBuffer): number {
  const HUGE = 2n * 1024n * 1024n;
  if (buf.byteLength < 2 * 1024 * 1024) return 0;
  const u8 = new Uint8Array(buf);
  const a = BigInt(fnAddressOf(u8, u8, 0) as number | bigint);
  const start = (a + HUGE - 1n) & ~(HUGE - 1n), end = (a + BigInt(buf.byteLength)) & ~(HUGE - 1n);
  if (end <= start) return 0;
  return (fnMadvise(start, Number(end - start), MADV_HUGEPAGE) as number) === 0 ? Number(end - start) : 0;
}

/** madvise(2). */
export function madvise(va: bigint, len: number, advice: number): void {
  check(fnMadvise(va, len, advice) as number, 'madvise', () => `0x${va.toString(16)}, ${len}, ${advice}`);
}

/** mlock(2). */
export function mlock(va: bigint, len: number): void {
  check(fnMlock(va, len) as number, 'mlock', () => `0x${va.toString(16)}, ${len}`);
}

/** memfd_create(2); always close-on-exec. */
export function memfdCreate(name: string, flags: number): number {
  return check(fnMemfdCreate(name, flags | MFD_CLOEXEC) as number, 'memfd_create', () => `"${name}", 0x${flags.toString(16)}`);
}

/** An ArrayBuffer over native memory at va (any thread; the memory must outlive every view). */
export function viewOf(va: bigint, len: number): ArrayBuffer {
  if (len <= 0 || len > 0x1_0000_0000) throw new RangeError(`viewOf: length ${len} must be 1..4 GiB`);
  return koffi.view(va, len);
}

// ---- events and sockets ----

/** eventfd(2). */
export function eventfd(initval: number, flags: number): number {
  return check(fnEventfd(initval, flags | EFD_CLOEXEC) as number, 'eventfd', () => `${initval}, ${flags}`);
}

/** socket(2); always close-on-exec. */
export function socket(domain: number, type: number, protocol: number): number {
  return check(fnSocket(domain, type | SOCK_CLOEXEC, protocol) as number, 'socket', () => `${domain}, ${type}, ${protocol}`);
}

/** socketpair(2); returns both ends. */
export function socketpair(domain: number, type: number, protocol = 0): [number, number] {
  const sv = [0, 0];
  check(fnSocketpair(domain, type | SOCK_CLOEXEC, protocol, sv) as number, 'socketpair', () => `${domain}, ${type}`);
  return [sv[0], sv[1]];
}

/** A struct sockaddr_un for path (Linux abstract names start with "\0"). */
export function sockaddrUn(path: string): Uint8Array {
  const p = Buffer.from(path);
  if (p.length > 107) throw new RangeError(`unix socket path "${path}" is ${p.length} bytes; the limit is 107`);
  const sa = Buffer.alloc(110);
  sa.writeUInt16LE(AF_UNIX, 0);
  p.copy(sa, 2);
  return sa;
}

/** bind(2) with a raw sockaddr. */
export function bind(fd: number, addr: Uint8Array, what = ''): void {
  check(fnBind(fd, addr, addr.byteLength) as number, 'bind', () => `fd ${fd}${what ? ', ' + what : ''}`);
}

/** connect(2) with a raw sockaddr. */
export function connect(fd: number, addr: Uint8Array, what = ''): void {
  check(fnConnect(fd, addr, addr.byteLength) as number, 'connect', () => `fd ${fd}${what ? ', ' + what : ''}`);
}

/** listen(2). */
export function listen(fd: number, backlog: number): void {
  check(fnListen(fd, backlog) as number, 'listen', () => `fd ${fd}`);
}

/** accept4(2); returns the connection fd, or -1 for EAGAIN on a non-blocking socket. */
export function accept(fd: number, flags = 0): number {
  const r = fnAccept4(fd, null, null, flags | SOCK_CLOEXEC) as number;
  if (r < 0) {
    const e = koffi.errno();
    if (e === E.EAGAIN) return -1;
    throw new OsError('accept4', e, `fd ${fd}`);
  }
  return r;
}

/** send(2) from buf; returns bytes sent, or -1 for EAGAIN/ENOBUFS on a non-blocking socket. */
export function send(fd: number, buf: Uint8Array | null, len: number, flags: number): number {
  const r = Number(fnSend(fd, buf, len, flags));
  if (r < 0) {
    const e = koffi.errno();
    if (e === E.EAGAIN || e === E.ENOBUFS) return -1;
    throw new OsError('send', e, `fd ${fd}, ${len}`);
  }
  return r;
}

/** setsockopt(2) with a raw option value. */
export function setsockopt(fd: number, level: number, name: number, val: Uint8Array): void {
  check(fnSetsockopt(fd, level, name, val, val.byteLength) as number, 'setsockopt', () => `fd ${fd}, level ${level}, opt ${name}`);
}

/** setsockopt(2) with an int value. */
export function setsockoptInt(fd: number, level: number, name: number, val: number): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(val);
  setsockopt(fd, level, name, b);
}

/** getsockopt(2) into val; returns the option length the kernel wrote. */
export function getsockopt(fd: number, level: number, name: number, val: Uint8Array): number {
  const len = [val.byteLength];
  check(fnGetsockopt(fd, level, name, val, len) as number, 'getsockopt', () => `fd ${fd}, level ${level}, opt ${name}`);
  return len[0];
}

/** poll(2) on one fd; returns revents (0 on timeout). */
export function pollOne(fd: number, events: number, timeoutMs: number): number {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(events, 4);
  const r = fnPoll(pfd, 1, timeoutMs) as number;
  if (r < 0) {
    const e = koffi.errno();
    if (e === E.EINTR) return 0;
    throw new OsError('poll', e, `fd ${fd}`);
  }
  return r === 0 ? 0 : pfd.readUInt16LE(6);
}

/** Size of one struct pollfd (int fd, short events, short revents) in a pollFds array. */
export const SIZEOF_POLLFD = 8;

/**
 * poll(2) on nfds struct pollfd entries that the caller laid out in pfds (fd at 8i, events at 8i+4;
 * the kernel writes revents at 8i+6): blocks the calling thread up to timeoutMs. Returns how many
 * fds are ready (0 on timeout) or -errno (-EINTR included); allocates nothing: for lcore loops.
 */
export function pollFds(pfds: Uint8Array, nfds: number, timeoutMs: number): number {
  const r = fnPollInPlace(pfds, nfds, timeoutMs) as number;
  return r < 0 ? -koffi.errno() : r;
}

export const CLOCK_MONOTONIC = 1;

/**
 * clock_gettime(2) of clockId into ts (struct timespec: i64 seconds at 0, i64 nanoseconds at 8),
 * in place: read it through an Int32Array (words 0 and 2) and nothing is allocated, unlike
 * performance.now(), whose every result is a new heap number. Returns 0 or -errno.
 */
export function clockGettime(clockId: number, ts: Uint8Array): number {
  const r = fnClockGettime(clockId, ts) as number;
  return r < 0 ? -koffi.errno() : 0;
}

export const SO_ERROR = 4;
const soErr = new Uint8Array(4), soErrLen = new Uint8Array(4);
const soErr32 = new Int32Array(soErr.buffer), soErrLen32 = new Uint32Array(soErrLen.buffer);

/**
 * Take a socket's pending error (getsockopt SO_ERROR, which clears it: a socket that polls POLLERR
 * stops doing so). Returns the error number (0: none) or -errno (e.g. -ENOTSOCK for a TAP fd);
 * never throws, allocates nothing.
 */
export function takeSocketError(fd: number): number {
  soErr32[0] = 0;
  soErrLen32[0] = 4;
  const r = fnGetsockoptInPlace(fd, SOL_SOCKET, SO_ERROR, soErr, soErrLen) as number;
  return r < 0 ? -koffi.errno() : soErr32[0];
}

/**
 * poll(2) on several fds without blocking the event loop: the call runs on a libuv pool thread
 * (koffi async), so an idle server waits in the kernel, not in a spin. Resolves to each fd's revents
 * (all 0 on timeout or EINTR). Keep timeouts finite or add a wake eventfd: a pending call holds a
 * pool thread until it returns.
 */
export function pollAsync(fds: readonly number[], events: number, timeoutMs: number): Promise<number[]> {
  const pfd = Buffer.alloc(8 * fds.length);
  fds.forEach((fd, i) => { pfd.writeInt32LE(fd, 8 * i); pfd.writeInt16LE(events, 8 * i + 4); });
  return new Promise((resolve, reject) => {
    fnPoll.async(pfd, fds.length, timeoutMs, (err: unknown, r: number) => {
      if (err) { reject(err instanceof Error ? err : new Error(String(err))); return; }
      if (r < 0) { resolve(fds.map(() => 0)); return; }
      resolve(fds.map((_, i) => pfd.readUInt16LE(8 * i + 6)));
    });
  });
}

// ---- sendmsg/recvmsg with SCM_RIGHTS, through a per-thread native scratch area ----

const MSGHDR = 56, IOVEC = 16, CMSG_HDR = 16, MAX_FDS = 253;
const CMSG_SPACE_MAX = CMSG_HDR + ((MAX_FDS * 4 + 7) & ~7);
let scratchVa = 0n, scratchLen = 0, scratch: Uint8Array = new Uint8Array(0), scratchDv = new DataView(new ArrayBuffer(8));

/** Native memory for message headers and payload; grows, never shrinks (one per thread). */
function scratchFor(payload: number): number {
  const need = MSGHDR + IOVEC + CMSG_SPACE_MAX + payload;
  if (need > scratchLen) {
    if (scratchLen > 0) munmap(scratchVa, scratchLen);
    scratchLen = (need + 0xffff) & ~0xffff;
    scratchVa = mmap(0n, scratchLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const ab = viewOf(scratchVa, scratchLen);
    scratch = new Uint8Array(ab);
    scratchDv = new DataView(ab);
  }
  return MSGHDR + IOVEC + CMSG_SPACE_MAX;
}

/**
 * sendmsg(2) of one whole message with its file descriptors (SCM_RIGHTS), as vfio-user requires.
 * Returns bytes sent; throws on error (EAGAIN included: the caller decides how to wait).
 */
export function sendmsg(fd: number, data: Uint8Array, fds: readonly number[] = [], flags = MSG_NOSIGNAL): number {
  if (fds.length > MAX_FDS) throw new RangeError(`sendmsg: ${fds.length} fds exceed the limit of ${MAX_FDS}`);
  const dataOff = scratchFor(data.byteLength);
  const dv = scratchDv;
  scratch.fill(0, 0, dataOff);
  scratch.set(data, dataOff);
  const iov = MSGHDR, cmsg = MSGHDR + IOVEC;
  dv.setBigUint64(iov, scratchVa + BigInt(dataOff), true);
  dv.setBigUint64(iov + 8, BigInt(data.byteLength), true);
  dv.setBigUint64(16, scratchVa + BigInt(iov), true); // msg_iov
  dv.setBigUint64(24, 1n, true); // msg_iovlen
  if (fds.length > 0) {
    const cmsgLen = CMSG_HDR + fds.length * 4;
    dv.setBigUint64(cmsg, BigInt(cmsgLen), true);
    dv.setInt32(cmsg + 8, SOL_SOCKET, true);
    dv.setInt32(cmsg + 12, SCM_RIGHTS, true);
    for (let i = 0; i < fds.length; i++) dv.setInt32(cmsg + CMSG_HDR + i * 4, fds[i], true);
    dv.setBigUint64(32, scratchVa + BigInt(cmsg), true); // msg_control
    dv.setBigUint64(40, BigInt((cmsgLen + 7) & ~7), true); // msg_controllen
  }
  return checkSize(fnSendmsg(fd, scratchVa, flags), 'sendmsg', () => `fd ${fd}, ${data.byteLength} bytes, ${fds.length} fds`);
}

/** What recvmsg returned: the bytes, any descriptors that came with them, and truncation flags. */
export interface RecvResult {
  /** bytes received (0 with an empty data means the peer closed) */
  data: Uint8Array;
  /** file descriptors received with SCM_RIGHTS (owned by the caller, close-on-exec) */
  fds: number[];
  /** MSG_TRUNC or MSG_CTRUNC was set: data or descriptors were lost */
  truncated: boolean;
}

/** recvmsg(2) of up to maxLen bytes with descriptors; returns null on EAGAIN (non-blocking). */
export function recvmsg(fd: number, maxLen: number, flags = 0): RecvResult | null {
  const dataOff = scratchFor(maxLen);
  const dv = scratchDv;
  scratch.fill(0, 0, dataOff);
  const iov = MSGHDR, cmsg = MSGHDR + IOVEC;
  dv.setBigUint64(iov, scratchVa + BigInt(dataOff), true);
  dv.setBigUint64(iov + 8, BigInt(maxLen), true);
  dv.setBigUint64(16, scratchVa + BigInt(iov), true);
  dv.setBigUint64(24, 1n, true);
  dv.setBigUint64(32, scratchVa + BigInt(cmsg), true);
  dv.setBigUint64(40, BigInt(CMSG_SPACE_MAX), true);
  const r = Number(fnRecvmsg(fd, scratchVa, flags | MSG_CMSG_CLOEXEC));
  if (r < 0) {
    const e = koffi.errno();
    if (e === E.EAGAIN) return null;
    throw new OsError('recvmsg', e, `fd ${fd}, ${maxLen}`);
  }
  const fds: number[] = [];
  const controlLen = Number(dv.getBigUint64(40, true));
  let off = 0;
  while (off + CMSG_HDR <= controlLen) {
    const len = Number(dv.getBigUint64(cmsg + off, true));
    if (len < CMSG_HDR) break;
    if (dv.getInt32(cmsg + off + 8, true) === SOL_SOCKET && dv.getInt32(cmsg + off + 12, true) === SCM_RIGHTS) {
      for (let p = CMSG_HDR; p + 4 <= len; p += 4) fds.push(dv.getInt32(cmsg + off + p, true));
    }
    off += (len + 7) & ~7;
  }
  const msgFlags = dv.getInt32(48, true);
  return { data: scratch.slice(dataOff, dataOff + r), fds, truncated: (msgFlags & (MSG_TRUNC | MSG_CTRUNC)) !== 0 };
}

// ---- data-path calls: no exceptions, no allocation; addresses as numbers (user VAs < 2^53) ----

/** read(2) into memory at address va; returns bytes read or -errno (e.g. -EAGAIN). */
export function readRaw(fd: number, va: number, len: number): number {
  const r = fnReadRaw(fd, va, len) as number;
  return r < 0 ? -koffi.errno() : r;
}

/** write(2) from memory at address va; returns bytes written or -errno. */
export function writeRaw(fd: number, va: number, len: number): number {
  const r = fnWriteRaw(fd, va, len) as number;
  return r < 0 ? -koffi.errno() : r;
}

/** send(fd, NULL, 0, flags): the PACKET_MMAP TX kick; returns bytes queued or -errno. */
export function sendKick(fd: number, flags: number): number {
  const r = fnSendKick(fd, 0, 0, flags) as number;
  return r < 0 ? -koffi.errno() : r;
}

/** recv(fd, NULL, 0, flags): an AF_XDP socket's RX wake-up (fill ring, busy poll); returns 0 or -errno. */
export function recvKick(fd: number, flags: number): number {
  const r = fnRecvKick(fd, 0, 0, flags) as number;
  return r < 0 ? -koffi.errno() : r;
}

// ---- resource limits ----

export const RLIMIT_MEMLOCK = 8;

/** A resource limit: soft (cur) and hard (max), 2^64-1 (RLIM_INFINITY) for none. */
export interface Rlimit {
  cur: bigint;
  max: bigint;
}

/** getrlimit(2). */
export function getrlimit(resource: number): Rlimit {
  const b = new Uint8Array(16);
  check(fnGetrlimit(resource, b) as number, 'getrlimit', () => `${resource}`);
  const dv = new DataView(b.buffer);
  return { cur: dv.getBigUint64(0, true), max: dv.getBigUint64(8, true) };
}

/** setrlimit(2). */
export function setrlimit(resource: number, lim: Rlimit): void {
  const b = new Uint8Array(16);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(0, lim.cur, true);
  dv.setBigUint64(8, lim.max, true);
  check(fnSetrlimit(resource, b) as number, 'setrlimit', () => `${resource}, ${lim.cur}, ${lim.max}`);
}

// ---- threads and processes ----

/** The kernel thread id of the calling thread. */
export function gettid(): number {
  return Number(fnSyscall0(SYS_gettid));
}

/** The process id. */
export function getpid(): number {
  return fnGetpid() as number;
}

/** Pin the calling thread to the given CPUs. */
export function setAffinity(cpus: readonly number[]): void {
  const mask = new Uint8Array(128);
  for (const c of cpus) mask[c >> 3] |= 1 << (c & 7);
  check(fnSchedSetaffinity(0, mask.byteLength, mask) as number, 'sched_setaffinity', () => `cpus ${cpus.join(',')}`);
}

/** The CPUs the calling thread may run on. */
export function getAffinity(): number[] {
  const mask = new Uint8Array(128);
  check(fnSchedGetaffinity(0, mask.byteLength, mask) as number, 'sched_getaffinity', () => '');
  const cpus: number[] = [];
  for (let c = 0; c < mask.length * 8; c++) if (mask[c >> 3] & (1 << (c & 7))) cpus.push(c);
  return cpus;
}

/** Name the calling thread (prctl PR_SET_NAME; 15 characters kept). */
export function setThreadName(name: string): void {
  check(fnPrctlName(PR_SET_NAME, name.slice(0, 15), 0, 0, 0) as number, 'prctl', () => `PR_SET_NAME "${name}"`);
}

/** if_nametoindex(3); throws naming the interface when it does not exist. */
export function ifNameToIndex(name: string): number {
  const r = fnIfNametoindex(name) as number;
  if (r === 0) throw new OsError('if_nametoindex', koffi.errno(), `"${name}"`);
  return r;
}

/** Whether a process with this pid exists (kill(pid, 0)). */
export function processAlive(pid: number): boolean {
  if ((fnKill(pid, 0) as number) === 0) return true;
  return koffi.errno() === E.EPERM;
}

// ---- calls that report errors as -errno instead of throwing (allocation-free, for lcore loops) ----

/** send(2) of buf's first len bytes with flags: bytes sent, or -errno; never throws or allocates. */
export function sendNoThrow(fd: number, buf: Uint8Array, len: number, flags: number): number {
  const r = Number(fnSend(fd, buf, len, flags));
  return r < 0 ? -koffi.errno() : r;
}

/** pwrite(2) of buf's first len bytes at file offset off: bytes written, or -errno; never throws. */
export function pwriteNoThrow(fd: number, buf: Uint8Array, len: number, off: bigint): number {
  const r = Number(fnPwrite(fd, buf, len, off));
  return r < 0 ? -koffi.errno() : r;
}

/** pread(2) of len bytes into buf at file offset off: bytes read, or -errno; never throws. */
export function preadNoThrow(fd: number, buf: Uint8Array, len: number, off: bigint): number {
  const r = Number(fnPread(fd, buf, len, off));
  return r < 0 ? -koffi.errno() : r;
}

/** write(2) of buf's first len bytes: bytes written, or -errno; never throws, allocates nothing. */
export function writeNoThrow(fd: number, buf: Uint8Array, len: number): number {
  const r = Number(fnWrite(fd, buf, len));
  return r < 0 ? -koffi.errno() : r;
}

/** read(2) of up to len bytes into buf: bytes read, or -errno (EAGAIN on an empty non-blocking eventfd); never throws. */
export function readNoThrow(fd: number, buf: Uint8Array, len: number): number {
  const r = Number(fnRead(fd, buf, len));
  return r < 0 ? -koffi.errno() : r;
}
