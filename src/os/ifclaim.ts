/**
 * One tspmd process per interface, with nothing left on disk when a process dies: the claim is an
 * abstract unix socket (no file) bound at a name derived from the interface's name. Abstract
 * names belong to a network namespace, as interface names do, so the same name in two namespaces
 * is two claims. The kernel frees the name when the socket's last fd closes, SIGKILL included.
 *
 * A second claim's bind fails with EADDRINUSE; it then connects to the holder and asks the kernel
 * who that is (SO_PEERCRED on the connecting side gives the credentials the listener had when it
 * called listen(2)), reads the line the holder writes (what it holds the interface for) and
 * throws InterfaceClaimedError naming the holder's pid and command line. The holder accepts on
 * its event loop (a net.Server over the listening fd), writes that line and closes; should its
 * loop be busy, the backlog takes the connection and the peer credentials still answer.
 */
import net from 'node:net';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as os from './libc.js';
import { peerCred } from './peercred.js';
import { sleepMs } from './sleep.js';
import { processCmdline } from './bpf.js';

/** The abstract socket name (without its leading NUL) that claims interface ifname. */
export function claimName(ifname: string): string {
  return `tspmd-iface-${ifname}`;
}

/** The interface is claimed by another tspmd process (or by this one, for another port). */
export class InterfaceClaimedError extends Error {
  readonly ifname: string;
  /** the holder's pid (0: unknown, e.g. in another PID namespace) */
  readonly pid: number;
  /** the holder's command line ('' when unreadable) */
  readonly cmdline: string;
  /** what the holder said it holds the interface for ('' when it did not answer) */
  readonly what: string;
  constructor(ifname: string, pid: number, cmdline: string, what: string) {
    const who = pid === 0 ? 'a process tspmd cannot identify (in another PID namespace?)'
      : pid === process.pid ? `this process (pid ${pid})` : `tspmd process ${pid}${cmdline ? ` (${cmdline})` : ''}`;
    super(`interface ${ifname} is already in use by ${who}${what ? ` for ${what}` : ''}: one tspmd process per interface; stop it, or use another interface`);
    this.name = 'InterfaceClaimedError';
    this.ifname = ifname;
    this.pid = pid;
    this.cmdline = cmdline;
    this.what = what;
  }
}

/** A held claim: close() gives the interface back. */
export interface InterfaceClaim {
  /** Release the claim (closes the socket); idempotent. */
  close(): void;
}

/** This thread's claims: interface name -> what it is held for. */
const held = new Map<string, { what: string }>();

/** sockaddr_un of the abstract name, exactly as long as the name (no padding NULs in it). */
function claimAddr(ifname: string): Uint8Array {
  const name = `\0${claimName(ifname)}`;
  return os.sockaddrUn(name).subarray(0, 2 + Buffer.byteLength(name));
}

/**
 * Claim interface ifname for this process; `what` says for what (e.g. "net_af_xdp0"), shown to a
 * second claimant. Throws InterfaceClaimedError when another process (or this one) holds it.
 */
export function claimInterface(ifname: string, what: string): InterfaceClaim {
  if (!ifname || ifname.length > 15 || /[\s/]/.test(ifname)) throw new RangeError(`claimInterface: "${ifname}" is not an interface name`);
  // This process's own claims answer at once (its event loop cannot answer while we wait here).
  const mine = held.get(ifname);
  if (mine) throw new InterfaceClaimedError(ifname, process.pid, processCmdline(process.pid), mine.what);
  const addr = claimAddr(ifname);
  for (let attempt = 0; ; attempt++) {
    const fd = os.socket(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK, 0);
    try {
      os.bind(fd, addr, `@${claimName(ifname)}`);
    } catch (e) {
      os.close(fd);
      if (!(e instanceof os.OsError) || e.code !== 'EADDRINUSE') throw e;
      const holder = whoHolds(ifname, addr);
      // The holder went away between our bind and connect: claim again.
      if (holder === null && attempt < 5) continue;
      throw new InterfaceClaimedError(ifname, holder?.pid ?? 0, holder ? processCmdline(holder.pid) : '', holder?.what ?? '');
    }
    try {
      os.listen(fd, 64);
    } catch (e) {
      os.close(fd);
      throw e;
    }
    const claim = serve(fd, what);
    const entry = { what };
    held.set(ifname, entry);
    return {
      close() {
        if (held.get(ifname) === entry) held.delete(ifname);
        claim.close();
      },
    };
  }
}

/** Hold the listening fd: accept on the event loop, tell each caller what the interface is held for, close. */
function serve(fd: number, what: string): InterfaceClaim {
  const line = `${what.replace(/[\r\n]/g, ' ')}\n`;
  const server = net.createServer((c) => {
    c.on('error', () => { /* the asker left first */ });
    c.end(line);
  });
  let closed = false;
  server.on('error', () => {
    // Node could not take the fd over: keep the claim (the bound fd) without accepting.
    server.removeAllListeners('error');
  });
  server.listen({ fd });
  server.unref();
  return {
    close() {
      if (closed) return;
      closed = true;
      if (server.listening) server.close();
      else try { os.close(fd); } catch { /* closed by the server */ }
    },
  };
}

/** Who holds the claim: pid (SO_PEERCRED) and the line it answers; null when nobody listens any more. */
function whoHolds(ifname: string, addr: Uint8Array): { pid: number; what: string } | null {
  for (let tries = 0; tries < 20; tries++) {
    const c = os.socket(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK, 0);
    try {
      try {
        os.connect(c, addr, `@${claimName(ifname)}`);
      } catch (e) {
        if (!(e instanceof os.OsError)) throw e;
        // Bound but not listening yet (the holder is between bind and listen), or just gone.
        if (e.code === 'ECONNREFUSED') { sleepMs(10); continue; }
        // Its backlog is full (its event loop does not accept): find it through /proc.
        if (e.code === 'EAGAIN') return { pid: holderByInode(claimName(ifname)), what: '' };
        throw e;
      }
      const { pid } = peerCred(c);
      // The holder answers with a line when its event loop runs; wait for it a little.
      let what = '';
      const buf = new Uint8Array(256);
      for (let n = 0; n < 10 && !what.endsWith('\n'); n++) {
        if ((os.pollOne(c, os.POLLIN, 100) & (os.POLLIN | os.POLLHUP)) === 0) continue;
        const r = os.readNoThrow(c, buf, buf.byteLength);
        if (r <= 0) break;
        what += Buffer.from(buf.subarray(0, r)).toString('utf8');
      }
      return { pid, what: what.trim() };
    } finally {
      os.close(c);
    }
  }
  // Nobody has listened for 200 ms: whoever bound it is gone, or the name is not tspmd's.
  const pid = holderByInode(claimName(ifname));
  return pid ? { pid, what: '' } : null;
}

/** The pid of a process holding the abstract unix socket @name (from /proc/net/unix and /proc/<pid>/fd); 0 when not found. */
function holderByInode(name: string): number {
  let inode = '';
  try {
    for (const l of readFileSync('/proc/net/unix', 'utf8').split('\n')) {
      const f = l.trim().split(/\s+/);
      if (f.length >= 8 && f[7] === `@${name}`) { inode = f[6]; break; }
    }
  } catch { return 0; }
  if (!inode) return 0;
  const target = `socket:[${inode}]`;
  let pids: string[];
  try { pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p)); } catch { return 0; }
  for (const pid of pids) {
    let fds: string[];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try { if (readlinkSync(`/proc/${pid}/fd/${fd}`) === target) return Number(pid); } catch { /* gone */ }
    }
  }
  return 0;
}
