/**
 * Who is at the other end of a unix socket: getsockopt(SO_PEERCRED), the pid, uid and gid the
 * kernel recorded when the peer called connect(2) or listen(2) (or socketpair(2)). A client uses it
 * to check that the server it reached is the process it meant, a server to see who connected.
 */
import * as os from './libc.js';

/** SO_PEERCRED's option number: 17 in the generic Linux ABI (x86, arm, riscv), 21 on powerpc, 18 on mips. */
export const SO_PEERCRED = process.arch === 'ppc64' || process.arch === 'ppc' ? 21 : process.arch.startsWith('mips') ? 18 : 17;
/** sizeof(struct ucred): pid_t pid, uid_t uid, gid_t gid, 32 bits each. */
export const SIZEOF_UCRED = 12;

/** A peer's credentials (struct ucred). */
export interface PeerCred {
  /** the peer process's pid, as seen from this process's pid namespace (0 if it is outside it) */
  pid: number;
  /** its effective uid when it connected */
  uid: number;
  /** its effective gid when it connected */
  gid: number;
}

/**
 * The credentials of the process at the other end of the connected (or listening) unix socket fd.
 * Throws OsError for an fd that is not a unix socket (ENOTSOCK, EBADF, ENOPROTOOPT).
 */
export function peerCred(fd: number): PeerCred {
  const buf = new Uint8Array(SIZEOF_UCRED);
  const len = os.getsockopt(fd, os.SOL_SOCKET, SO_PEERCRED, buf);
  if (len !== SIZEOF_UCRED) throw new Error(`getsockopt(fd ${fd}, SO_PEERCRED) returned ${len} bytes, expected ${SIZEOF_UCRED}`);
  // struct ucred { pid_t pid; uid_t uid; gid_t gid; } in host byte order.
  const i32 = new Int32Array(buf.buffer, 0, 3);
  const u32 = new Uint32Array(buf.buffer, 0, 3);
  return { pid: i32[0], uid: u32[1], gid: u32[2] };
}
