/**
 * The bpf(2) system call through koffi, without libbpf, clang or a compiled object: the XSKMAP
 * that AF_XDP sockets are entered in, tspmd's own XDP program (six instructions assembled here)
 * and its attachment through a BPF link, so the kernel detaches the program when the last holder
 * of the link's fd goes, the process dying by SIGKILL included. Control path only.
 *
 * What the calls need: CAP_BPF (CAP_SYS_ADMIN before 5.8) to load the program and create maps,
 * CAP_NET_ADMIN to create an XSKMAP and to attach to an interface. Memory: since 5.11 the kernel
 * charges BPF maps and programs to the memory cgroup, not to RLIMIT_MEMLOCK, so there is nothing
 * to raise here (the UMEM is another matter); on older kernels a low RLIMIT_MEMLOCK shows up as
 * EPERM, which BpfError says.
 *
 * The program (license "MIT": bpf_redirect_map is not a GPL-only helper, so no GPL declaration is
 * needed, and "MIT" is this package's license):
 *
 *   r2 = *(u32 *)(r1 + offsetof(struct xdp_md, rx_queue_index))
 *   r1 = xskmap ll                       ; ld_imm64 with BPF_PSEUDO_MAP_FD
 *   r3 = XDP_PASS                        ; bpf_redirect_map's default when the entry is empty
 *   call bpf_redirect_map                ; a bound queue: XDP_REDIRECT into its socket
 *   exit                                 ; r0 is the helper's answer
 *
 * The low bits of bpf_redirect_map's flags are the return value for a missing entry (kernel 5.6+),
 * so frames of queues no socket is bound to go up the kernel stack untouched.
 */
import koffi from 'koffi';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as os from './libc.js';
import { linkXdp } from './netlink.js';

const libc = koffi.load('libc.so.6');
const fnSyscall = libc.func('long syscall(long nr, ...)');

/** __NR_bpf of the running architecture (x86_64 321, aarch64/riscv64/loongarch64 280, i386 357, arm 386, ppc64 361, s390x 351); -1 when unknown. */
export const SYS_bpf = ({ x64: 321, arm64: 280, riscv64: 280, loong64: 280, ia32: 357, arm: 386, ppc64: 361, s390x: 351 } as Record<string, number>)[process.arch] ?? -1;

// ---- linux/bpf.h (checked against the headers by test/os/bpf.test.ts) ----
/** bpf(2) commands used here */
export const BPF_MAP_CREATE = 0, BPF_MAP_LOOKUP_ELEM = 1, BPF_MAP_UPDATE_ELEM = 2, BPF_MAP_DELETE_ELEM = 3, BPF_PROG_LOAD = 5;
export const BPF_PROG_GET_FD_BY_ID = 13, BPF_OBJ_GET_INFO_BY_FD = 15, BPF_LINK_CREATE = 28, BPF_LINK_GET_FD_BY_ID = 30, BPF_LINK_GET_NEXT_ID = 31;
export const BPF_MAP_TYPE_XSKMAP = 17, BPF_PROG_TYPE_XDP = 6, BPF_XDP = 37, BPF_LINK_TYPE_XDP = 6;
export const BPF_FUNC_redirect_map = 51, BPF_PSEUDO_MAP_FD = 1, BPF_OBJ_NAME_LEN = 16;
export const BPF_ANY = 0;
/** linux/if_link.h XDP_FLAGS_* (BPF_LINK_CREATE flags for BPF_XDP) */
export const XDP_FLAGS_SKB_MODE = 1 << 1, XDP_FLAGS_DRV_MODE = 1 << 2;
/** enum xdp_action */
export const XDP_ABORTED = 0, XDP_DROP = 1, XDP_PASS = 2, XDP_TX = 3, XDP_REDIRECT = 4;
/** offsetof(struct xdp_md, rx_queue_index) */
export const XDP_MD_RX_QUEUE_INDEX = 16;
/** opcodes (linux/bpf_common.h, linux/bpf.h) */
export const BPF_LDX_MEM_W = 0x61, BPF_LD_IMM_DW = 0x18, BPF_ALU64_MOV_K = 0xb7, BPF_JMP_CALL = 0x85, BPF_JMP_EXIT = 0x95;
export const SIZEOF_BPF_INSN = 8;

/** union bpf_attr offsets, per command */
export const ATTR = {
  map_type: 0, key_size: 4, value_size: 8, max_entries: 12, map_flags: 16, map_name: 28, map_create_end: 48,
  elem_map_fd: 0, elem_key: 8, elem_value: 16, elem_flags: 24, elem_end: 32,
  prog_type: 0, insn_cnt: 4, insns: 8, license: 16, log_level: 24, log_size: 28, log_buf: 32, prog_flags: 44, prog_name: 48, expected_attach_type: 68, prog_load_end: 72,
  id: 0, next_id: 4, id_end: 12,
  info_bpf_fd: 0, info_len: 4, info: 8, info_end: 16,
  link_prog_fd: 0, link_target_ifindex: 4, link_attach_type: 8, link_flags: 12, link_create_end: 16,
} as const;
/** struct bpf_prog_info, bpf_map_info and bpf_link_info offsets */
export const INFO = { prog_id: 4, prog_name: 64, prog_end: 80, map_id: 4, map_name: 24, map_end: 40, link_type: 0, link_id: 4, link_prog_id: 8, link_xdp_ifindex: 16, link_end: 20 } as const;

/** A failed bpf(2) call: the message names the operation, the errno and what to do about it. */
export class BpfError extends Error {
  /** errno number */
  readonly errno: number;
  /** errno name ("EPERM") */
  readonly code: string;
  /** the operation ("BPF_LINK_CREATE on tspa1 (native)") */
  readonly op: string;
  constructor(op: string, errno: number, hint = '', message?: string) {
    super(message ?? `bpf(${op}) failed: ${os.errnoName(errno)} (errno ${errno}): ${os.strerror(errno)}${hint ? `; ${hint}` : ''}`);
    this.name = 'BpfError';
    this.op = op;
    this.errno = errno;
    this.code = os.errnoName(errno);
  }
}

/** The interface already carries an XDP program: the message names it (id, name, mode) and how to remove it. */
export class XdpBusyError extends BpfError {
  /** the interface */
  readonly ifname: string;
  /** the program attached there now (null when it went away while we looked) */
  readonly program: { id: number; name: string; mode: string } | null;
  constructor(op: string, errno: number, ifname: string, program: { id: number; name: string; mode: string } | null, message: string) {
    super(op, errno, '', message);
    this.name = 'XdpBusyError';
    this.ifname = ifname;
    this.program = program;
  }
}

const CAPS = 'needs CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels before 5.8): run as root or grant them ' +
  '(sudo setcap cap_bpf,cap_net_admin,cap_net_raw,cap_ipc_lock+ep "$(command -v node)"); on kernels before 5.11 EPERM can also mean ' +
  'RLIMIT_MEMLOCK is too low for BPF memory (ulimit -l unlimited)';

/** What an errno most likely means for a bpf(2) command, and the fix. */
function hintFor(cmd: number, errno: number): string {
  const E = os.E;
  if (errno === E.ENOSYS) return 'the kernel has no bpf(2) (CONFIG_BPF_SYSCALL), or a seccomp profile blocks it (containers: allow bpf, e.g. --security-opt seccomp=unconfined)';
  if (errno === E.EPERM || (errno === E.EACCES && cmd !== BPF_PROG_LOAD)) return CAPS;
  if (errno === E.ENOMEM) return 'out of memory for BPF objects (memory cgroup limit; RLIMIT_MEMLOCK on kernels before 5.11: ulimit -l unlimited)';
  if (cmd === BPF_MAP_CREATE && errno === E.EINVAL) return 'the kernel has no AF_XDP support (CONFIG_XDP_SOCKETS) or refuses the map parameters';
  if ((cmd === BPF_MAP_UPDATE_ELEM || cmd === BPF_MAP_DELETE_ELEM) && (errno === E.E2BIG || errno === E.EINVAL)) return 'the queue is past the map\'s max_entries';
  if (cmd === BPF_MAP_UPDATE_ELEM && errno === E.EOPNOTSUPP) return 'the value is not an AF_XDP socket (kernels before 5.10 also want its UMEM, fill ring and RX ring set up first: enter it after bind)';
  if (cmd === BPF_MAP_UPDATE_ELEM && (errno === E.EBADF || errno === E.ENOTSOCK)) return 'the value is not an open socket descriptor';
  if (cmd === BPF_PROG_LOAD && errno === E.EINVAL) return 'the kernel refuses the program (XDP needs kernel 4.18+ with CONFIG_BPF_SYSCALL and CONFIG_XDP_SOCKETS)';
  return '';
}

/** Hints for BPF_LINK_CREATE on an interface (the kernel's reasons reach only a tracepoint, not the caller). */
function linkHint(errno: number, ifname: string, mode: XdpMode): string {
  const E = os.E;
  if (errno === E.EINVAL) return 'the kernel has no BPF links for XDP (needs Linux 5.9 or later)';
  if (errno === E.EOPNOTSUPP) return mode === 'native' ? `the driver of ${ifname} has no native XDP: use mode=generic` : `${ifname} does not support XDP`;
  if (errno === E.ENODEV) return `interface ${ifname} no longer exists`;
  if (errno === E.ENOSPC) return `${ifname} has fewer RX queues than its veth peer has TX queues (create both ends with the same numrxqueues/numtxqueues), or the driver lacks the resources for XDP`;
  if (errno === E.ERANGE) return `the MTU of ${ifname} (or of its veth peer) is too large for single-buffer XDP: lower it, or use mode=generic`;
  if (errno === E.ENOTCONN) return `${ifname} is a veth whose peer is gone`;
  if (errno === E.EPERM) return CAPS;
  return '';
}

// ---- the call, through a per-thread native scratch area (bpf_attr holds raw pointers) ----

const SCRATCH_LEN = 0x20000;
/** scratch layout: attr, key, value, instructions, license, info, names, verifier log */
const S_ATTR = 0, S_KEY = 256, S_VALUE = 264, S_INSNS = 512, S_LICENSE = 1024, S_INFO = 2048, S_LOG = 4096;
const LOG_LEN = SCRATCH_LEN - S_LOG;
let scratchVa = 0n;
let scratch = new Uint8Array(0);
let sdv = new DataView(new ArrayBuffer(8));

/** The scratch area, its attr part zeroed. */
function attr(): DataView {
  if (scratchVa === 0n) {
    scratchVa = os.mmap(0n, SCRATCH_LEN, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS, -1, 0);
    const ab = os.viewOf(scratchVa, SCRATCH_LEN);
    scratch = new Uint8Array(ab);
    sdv = new DataView(ab);
  }
  scratch.fill(0, 0, S_LOG);
  return sdv;
}

/** bpf(cmd, scratch attr, size): the result, or -errno. */
function sysBpf(cmd: number, size: number): number {
  if (SYS_bpf < 0) return -os.E.ENOSYS;
  const r = Number(fnSyscall(SYS_bpf, 'int', cmd, 'uint64_t', scratchVa + BigInt(S_ATTR), 'unsigned int', size));
  return r < 0 ? -koffi.errno() : r;
}

/** bpf(cmd) that throws BpfError naming op. */
function bpf(cmd: number, size: number, op: string): number {
  const r = sysBpf(cmd, size);
  if (r < 0) throw new BpfError(op, -r, hintFor(cmd, -r));
  return r;
}

/** Write a BPF object name (at most 15 of [A-Za-z0-9_.], the kernel's rule) at off. */
function putName(off: number, name: string): void {
  const clean = name.replace(/[^A-Za-z0-9_.]/g, '_').slice(0, BPF_OBJ_NAME_LEN - 1);
  for (let i = 0; i < clean.length; i++) scratch[off + i] = clean.charCodeAt(i);
}

/** A NUL-terminated string at off, up to max bytes. */
function getString(off: number, max: number): string {
  let end = off;
  while (end < off + max && scratch[end] !== 0) end++;
  return Buffer.from(scratch.subarray(off, end)).toString('utf8');
}

function closeQuiet(fd: number): void {
  try { os.close(fd); } catch { /* already closed */ }
}

// ---- maps ----

/** Create a BPF_MAP_TYPE_XSKMAP (key u32 queue index, value u32 AF_XDP socket fd) of maxEntries queues; returns its fd (close-on-exec). */
export function createXskMap(maxEntries: number, name = 'tspmd_xsks'): number {
  if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError(`createXskMap: maxEntries ${maxEntries} must be a positive integer`);
  const a = attr();
  a.setUint32(ATTR.map_type, BPF_MAP_TYPE_XSKMAP, true);
  a.setUint32(ATTR.key_size, 4, true);
  a.setUint32(ATTR.value_size, 4, true);
  a.setUint32(ATTR.max_entries, maxEntries, true);
  putName(ATTR.map_name, name);
  return bpf(BPF_MAP_CREATE, ATTR.map_create_end, `BPF_MAP_CREATE xskmap "${name}", ${maxEntries} entries`);
}

/** Enter AF_XDP socket xskFd as the target of queue in the XSKMAP mapFd (replaces what was there). */
export function xskMapSet(mapFd: number, queue: number, xskFd: number): void {
  const a = attr();
  a.setUint32(S_KEY, queue, true);
  a.setUint32(S_VALUE, xskFd, true);
  a.setUint32(ATTR.elem_map_fd, mapFd, true);
  a.setBigUint64(ATTR.elem_key, scratchVa + BigInt(S_KEY), true);
  a.setBigUint64(ATTR.elem_value, scratchVa + BigInt(S_VALUE), true);
  a.setBigUint64(ATTR.elem_flags, BigInt(BPF_ANY), true);
  bpf(BPF_MAP_UPDATE_ELEM, ATTR.elem_end, `BPF_MAP_UPDATE_ELEM xskmap fd ${mapFd}, queue ${queue} -> socket fd ${xskFd}`);
}

/** Remove queue's socket from the XSKMAP mapFd (its frames go to the kernel stack again); an empty entry is no error. */
export function xskMapDelete(mapFd: number, queue: number): void {
  const a = attr();
  a.setUint32(S_KEY, queue, true);
  a.setUint32(ATTR.elem_map_fd, mapFd, true);
  a.setBigUint64(ATTR.elem_key, scratchVa + BigInt(S_KEY), true);
  const r = sysBpf(BPF_MAP_DELETE_ELEM, ATTR.elem_end);
  // XSKMAP deletes of empty entries succeed; ENOENT is tolerated for other kernels' behaviour.
  if (r < 0 && -r !== os.E.ENOENT) throw new BpfError(`BPF_MAP_DELETE_ELEM xskmap fd ${mapFd}, queue ${queue}`, -r, hintFor(BPF_MAP_DELETE_ELEM, -r));
}

/** The kernel's id and name of the BPF map behind mapFd (BPF_OBJ_GET_INFO_BY_FD). */
export function mapInfo(mapFd: number): { id: number; name: string } {
  const a = objInfo(mapFd, INFO.map_end, 'map');
  return { id: a.getUint32(S_INFO + INFO.map_id, true), name: getString(S_INFO + INFO.map_name, BPF_OBJ_NAME_LEN) };
}

/** BPF_OBJ_GET_INFO_BY_FD into the scratch's info area; returns the scratch view. */
function objInfo(fd: number, infoLen: number, what: string): DataView {
  const a = attr();
  a.setUint32(ATTR.info_bpf_fd, fd, true);
  a.setUint32(ATTR.info_len, infoLen, true);
  a.setBigUint64(ATTR.info, scratchVa + BigInt(S_INFO), true);
  bpf(BPF_OBJ_GET_INFO_BY_FD, ATTR.info_end, `BPF_OBJ_GET_INFO_BY_FD ${what} fd ${fd}`);
  return a;
}

// ---- the program ----

/** Encode one struct bpf_insn (code, dst_reg in the low nibble, src_reg in the high one, off, imm) at off. */
function putInsn(dv: DataView, off: number, code: number, dst: number, src: number, o: number, imm: number): void {
  dv.setUint8(off, code);
  dv.setUint8(off + 1, (src << 4) | dst);
  dv.setInt16(off + 2, o, true);
  dv.setInt32(off + 4, imm, true);
}

/** tspmd's XDP program for XSKMAP mapFd, as the bytes of its struct bpf_insn array (6 instructions). */
export function xskRedirectProgram(mapFd: number): Uint8Array {
  const b = new Uint8Array(6 * SIZEOF_BPF_INSN);
  const dv = new DataView(b.buffer);
  putInsn(dv, 0, BPF_LDX_MEM_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0); // r2 = ctx->rx_queue_index
  putInsn(dv, 8, BPF_LD_IMM_DW, 1, BPF_PSEUDO_MAP_FD, 0, mapFd); // r1 = map (the loader swaps the fd for the map)
  putInsn(dv, 16, 0, 0, 0, 0, 0); //                                 (ld_imm64's upper half)
  putInsn(dv, 24, BPF_ALU64_MOV_K, 3, 0, 0, XDP_PASS); //          r3 = XDP_PASS (action for an empty entry)
  putInsn(dv, 32, BPF_JMP_CALL, 0, 0, 0, BPF_FUNC_redirect_map); //  r0 = bpf_redirect_map(r1, r2, r3)
  putInsn(dv, 40, BPF_JMP_EXIT, 0, 0, 0, 0); //                      return r0
  return b;
}

/** The name tspmd's program gets (bpftool and `ip -d link show` show it). */
export const XSK_PROG_NAME = 'tspmd_xsk';
const LICENSE = 'MIT';

/** Load tspmd's XDP program for mapFd; the verifier's log is in the error when it refuses. */
export function loadXskRedirect(mapFd: number): number {
  const prog = xskRedirectProgram(mapFd);
  const op = `BPF_PROG_LOAD xdp "${XSK_PROG_NAME}" (xskmap fd ${mapFd})`;
  const fill = (logLevel: number): void => {
    const a = attr();
    scratch.set(prog, S_INSNS);
    for (let i = 0; i < LICENSE.length; i++) scratch[S_LICENSE + i] = LICENSE.charCodeAt(i);
    a.setUint32(ATTR.prog_type, BPF_PROG_TYPE_XDP, true);
    a.setUint32(ATTR.insn_cnt, prog.byteLength / SIZEOF_BPF_INSN, true);
    a.setBigUint64(ATTR.insns, scratchVa + BigInt(S_INSNS), true);
    a.setBigUint64(ATTR.license, scratchVa + BigInt(S_LICENSE), true);
    if (logLevel > 0) {
      scratch[S_LOG] = 0;
      a.setUint32(ATTR.log_level, logLevel, true);
      a.setUint32(ATTR.log_size, LOG_LEN, true);
      a.setBigUint64(ATTR.log_buf, scratchVa + BigInt(S_LOG), true);
    }
    putName(ATTR.prog_name, XSK_PROG_NAME);
    // BPF_XDP, as libbpf sets it for SEC("xdp"): the attach type BPF_LINK_CREATE will ask for
    a.setUint32(ATTR.expected_attach_type, BPF_XDP, true);
  };
  fill(0);
  const r = sysBpf(BPF_PROG_LOAD, ATTR.prog_load_end);
  if (r >= 0) return r;
  const errno = -r;
  if (errno === os.E.EPERM || errno === os.E.ENOSYS || errno === os.E.ENOMEM) throw new BpfError(op, errno, hintFor(BPF_PROG_LOAD, errno));
  // Load again with the verifier's log on, to say why it refused.
  fill(1);
  const r2 = sysBpf(BPF_PROG_LOAD, ATTR.prog_load_end);
  if (r2 >= 0) return r2;
  const log = getString(S_LOG, LOG_LEN).trim();
  const tail = log.length > 2000 ? `...${log.slice(-2000)}` : log;
  throw new BpfError(op, -r2, `${hintFor(BPF_PROG_LOAD, -r2)}${tail ? `${hintFor(BPF_PROG_LOAD, -r2) ? '; ' : ''}verifier log:\n${tail}` : ''}`);
}

/** The kernel's id and name of the program behind progFd. */
export function progInfo(progFd: number): { id: number; name: string } {
  const a = objInfo(progFd, INFO.prog_end, 'prog');
  return { id: a.getUint32(S_INFO + INFO.prog_id, true), name: getString(S_INFO + INFO.prog_name, BPF_OBJ_NAME_LEN) };
}

/** The kernel's id of the link behind linkFd, its program and (for an XDP link) its interface. */
export function linkInfo(linkFd: number): { id: number; type: number; progId: number; ifindex: number } {
  const a = objInfo(linkFd, INFO.link_end, 'link');
  const type = a.getUint32(S_INFO + INFO.link_type, true);
  return { id: a.getUint32(S_INFO + INFO.link_id, true), type, progId: a.getUint32(S_INFO + INFO.link_prog_id, true), ifindex: type === BPF_LINK_TYPE_XDP ? a.getUint32(S_INFO + INFO.link_xdp_ifindex, true) : 0 };
}

// ---- attachment ----

/** XDP attach mode: native (the driver's hook, XDP_FLAGS_DRV_MODE) or generic (after skb allocation, XDP_FLAGS_SKB_MODE). */
export type XdpMode = 'native' | 'generic';

/** tspmd's program on an interface, held by a BPF link; close() detaches it (so does the process's death). */
export interface XdpAttachment {
  /** the program's fd */
  progFd: number;
  /** the BPF link's fd: the attachment lives as long as this fd */
  linkFd: number;
  /** the program's kernel id (`ip -d link show` prints it as "prog/xdp id N") */
  progId: number;
  /** the link's kernel id (bpftool link show) */
  linkId: number;
  ifname: string;
  ifindex: number;
  mode: XdpMode;
  /** Detach (close the link) and release the program; idempotent. */
  close(): void;
}

/**
 * Load tspmd's program for XSKMAP mapFd and attach it to the interface through a BPF link in the
 * given mode. An interface that already carries an XDP program gets XdpBusyError naming it.
 */
export function attachXskRedirect(opts: { ifname: string; ifindex: number; mapFd: number; mode: XdpMode }): XdpAttachment {
  const { ifname, ifindex, mapFd, mode } = opts;
  if (mode !== 'native' && mode !== 'generic') throw new RangeError(`attachXskRedirect: mode "${String(mode)}" must be native or generic`);
  const progFd = loadXskRedirect(mapFd);
  let linkFd = -1;
  try {
    const a = attr();
    a.setUint32(ATTR.link_prog_fd, progFd, true);
    a.setUint32(ATTR.link_target_ifindex, ifindex, true);
    a.setUint32(ATTR.link_attach_type, BPF_XDP, true);
    a.setUint32(ATTR.link_flags, mode === 'native' ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE, true);
    const r = sysBpf(BPF_LINK_CREATE, ATTR.link_create_end);
    const op = `BPF_LINK_CREATE xdp on ${ifname} (ifindex ${ifindex}, ${mode})`;
    if (r < 0) {
      const errno = -r;
      // EBUSY: a program or link is there already; EEXIST: one in the other mode (native and generic exclude each other)
      if (errno === os.E.EBUSY || errno === os.E.EEXIST) throw busyError(op, errno, ifname, ifindex);
      // EINVAL is also the kernel's answer for an ifindex it does not know
      if (errno === os.E.EINVAL && !interfaceExists(ifindex)) throw new BpfError(op, errno, `no interface with index ${ifindex} (${ifname}) in this network namespace`);
      throw new BpfError(op, errno, linkHint(errno, ifname, mode));
    }
    linkFd = r;
    const prog = progInfo(progFd);
    const link = linkInfo(linkFd);
    let closed = false;
    return {
      progFd, linkFd, progId: prog.id, linkId: link.id, ifname, ifindex, mode,
      close() {
        if (closed) return;
        closed = true;
        closeQuiet(linkFd);
        closeQuiet(progFd);
      },
    };
  } catch (e) {
    if (linkFd >= 0) closeQuiet(linkFd);
    closeQuiet(progFd);
    throw e;
  }
}

/** Whether interface ifindex exists in this network namespace (asks rtnetlink). */
function interfaceExists(ifindex: number): boolean {
  try {
    linkXdp(ifindex);
    return true;
  } catch (e) {
    return !(e instanceof os.OsError && e.errno === os.E.ENODEV);
  }
}

/** The XDP program attached to interface ifindex now (netlink), with its name when this process may look it up; null when none. */
export function xdpProgramOn(ifindex: number): { id: number; name: string; mode: string } | null {
  const { progs } = linkXdp(ifindex);
  if (progs.length === 0) return null;
  const p = progs[0];
  return { id: p.id, name: progName(p.id), mode: progs.map((x) => x.mode).join('+') };
}

/** A program's name by id (BPF_PROG_GET_FD_BY_ID needs CAP_SYS_ADMIN); '' when it cannot be read. */
function progName(id: number): string {
  const a = attr();
  a.setUint32(ATTR.id, id, true);
  const fd = sysBpf(BPF_PROG_GET_FD_BY_ID, ATTR.id_end);
  if (fd < 0) return '';
  try {
    return progInfo(fd).name;
  } catch {
    return '';
  } finally {
    closeQuiet(fd);
  }
}

/** The BPF link that holds program progId on ifindex, if one does (walks the kernel's links; CAP_SYS_ADMIN). */
function xdpLinkOf(progId: number, ifindex: number): number {
  let id = 0;
  for (let n = 0; n < 100000; n++) {
    const a = attr();
    a.setUint32(ATTR.id, id, true);
    if (sysBpf(BPF_LINK_GET_NEXT_ID, ATTR.id_end) < 0) return 0;
    id = a.getUint32(ATTR.next_id, true);
    const b = attr();
    b.setUint32(ATTR.id, id, true);
    const fd = sysBpf(BPF_LINK_GET_FD_BY_ID, ATTR.id_end);
    if (fd < 0) continue;
    try {
      const l = linkInfo(fd);
      if (l.type === BPF_LINK_TYPE_XDP && l.progId === progId && l.ifindex === ifindex) return l.id;
    } catch { /* gone meanwhile */ } finally {
      closeQuiet(fd);
    }
  }
  return 0;
}

/** The processes holding BPF link linkId open (their fdinfo says "link_id: N"), with their command lines. */
export function linkHolders(linkId: number): Array<{ pid: number; cmdline: string }> {
  const out: Array<{ pid: number; cmdline: string }> = [];
  let pids: string[];
  try { pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p)); } catch { return out; }
  const want = new RegExp(`^link_id:\\s+${linkId}$`, 'm');
  for (const pid of pids) {
    let fds: string[];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== 'anon_inode:bpf_link') continue;
        if (want.test(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))) {
          out.push({ pid: Number(pid), cmdline: processCmdline(Number(pid)) });
          break;
        }
      } catch { /* fd or process gone */ }
    }
  }
  return out;
}

/**
 * /proc/<pid>/cmdline as one line, '' when unreadable: arguments joined by spaces, node's own
 * options (loaders, flags) before the script left out as "[N options]", at most 300 characters.
 */
export function processCmdline(pid: number): string {
  let args: string[];
  try {
    args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0+$/, '').split('\0');
  } catch {
    return '';
  }
  if (args.length > 1 && /(^|\/)node[0-9.]*$/.test(args[0])) {
    let n = 1;
    while (n < args.length && args[n].startsWith('-')) n++;
    if (n > 1) args = [args[0], `[${n - 1} option${n > 2 ? 's' : ''}]`, ...args.slice(n)];
  }
  const s = args.join(' ');
  return s.length > 300 ? `${s.slice(0, 297)}...` : s;
}

/** The `ip link` word that removes a program attached in mode. */
function ipXdpWord(mode: string): string {
  return mode === 'generic' ? 'xdpgeneric' : mode === 'offload' ? 'xdpoffload' : 'xdpdrv';
}

/** XdpBusyError for ifname: which program is there, who holds it and how to remove it. */
function busyError(op: string, errno: number, ifname: string, ifindex: number): XdpBusyError {
  let prog: { id: number; name: string; mode: string } | null = null;
  try { prog = xdpProgramOn(ifindex); } catch { /* the interface went away: say what we know */ }
  if (!prog) {
    return new XdpBusyError(op, errno, ifname, null, `interface ${ifname} refused tspmd's XDP program (${os.errnoName(errno)}): it carried another XDP program that is gone now; try again`);
  }
  const what = `XDP program id ${prog.id}${prog.name ? ` "${prog.name}"` : ''} (${prog.mode})`;
  const linkId = xdpLinkOf(prog.id, ifindex);
  let how: string;
  if (linkId) {
    const holders = linkHolders(linkId);
    if (holders.length > 0) {
      how = `it is held by BPF link ${linkId} of ${holders.map((h) => `process ${h.pid}${h.pid === process.pid ? ' (this process)' : ''}${h.cmdline ? ` (${h.cmdline})` : ''}`).join(', ')}: stop that process, and the kernel removes the program`;
    } else {
      how = `it is held by BPF link ${linkId}, which no process has open (pinned in a bpffs file): remove that pin (bpftool link show id ${linkId}), and the kernel removes the program`;
    }
  } else {
    how = `remove it with: ip link set dev ${ifname} ${ipXdpWord(prog.mode.split('+')[0])} off`;
  }
  return new XdpBusyError(op, errno, ifname, prog, `interface ${ifname} already carries ${what}, so tspmd cannot attach its own: ${how}`);
}
