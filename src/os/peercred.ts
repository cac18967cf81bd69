/**
 * Who is at the other end of a connected unix socket: SO_PEERCRED (socket(7)), the pid, uid and
 * gid of the process that connected (or, on a client's socket, that called listen()), as the
 * kernel recorded them, not as the peer says.
 */
import { getsockopt, SOL_SOCKET } from './libc.js';

/** getsockopt(2) option for the peer's struct ucred. */
export const SO_PEERCRED = 17;

/** A socket peer's credentials (struct ucred). */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** The credentials of the peer of unix socket fd (SO_PEERCRED); throws OsError when fd is no connected unix socket. */
export function peerCred(fd: number): PeerCred {
  const b = Buffer.alloc(12);
  const n = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, b);
  if (n < 12) throw new Error(`getsockopt(fd ${fd}, SO_PEERCRED) gave ${n} bytes, not a struct ucred of 12`);
  return { pid: b.readInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8) };
}
