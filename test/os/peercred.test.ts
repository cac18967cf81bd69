/**
 * src/os/peercred.ts: peerCred(fd) (getsockopt SO_PEERCRED) against the real kernel: both ends of
 * a socketpair name this process; a connection from a child running as another user (root only:
 * setpriv to nobody) names the child's pid, uid and gid on the accepting side, and a listening
 * socket names the process that made it; a descriptor that is not a socket is an OsError; the
 * option number and struct ucred's layout match the system headers.
 */
import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import { peerCred, SO_PEERCRED, SIZEOF_UCRED } from '../../src/os/peercred.js';

const root = process.getuid?.() === 0;

t.test('peerCred: a socketpair names this process at both ends', async (t) => {
  for (const type of [os.SOCK_STREAM, os.SOCK_SEQPACKET, os.SOCK_DGRAM]) {
    const [a, b] = os.socketpair(os.AF_UNIX, type);
    t.teardown(() => { os.close(a); os.close(b); });
    const want = { pid: process.pid, uid: process.geteuid!(), gid: process.getegid!() };
    t.same(peerCred(a), want, `type ${type}: end a`);
    t.same(peerCred(b), want, `type ${type}: end b`);
  }
});

t.test('peerCred: a descriptor that is not a socket is an OsError (ENOTSOCK, EBADF)', async (t) => {
  const [r, w] = os.pipe();
  t.teardown(() => { os.close(r); os.close(w); });
  t.throws(() => peerCred(r), { name: 'OsError', code: 'ENOTSOCK' });
  t.throws(() => peerCred(1 << 20), { name: 'OsError', code: 'EBADF' });
});

t.test('peerCred: a connection from another user names its pid, uid and gid', { skip: root ? false : 'needs root (setpriv to nobody)' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), `tsp-peercred-${process.pid}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o711);
  const path = join(dir, 's');
  const lfd = os.socket(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK, 0);
  t.teardown(() => os.close(lfd));
  os.bind(lfd, os.sockaddrUn(path));
  os.listen(lfd, 4);
  chmodSync(path, 0o777);
  // The child connects, prints what peerCred says about the listener, and waits for stdin to close.
  const script = `const net = require('net'); const c = net.connect(${JSON.stringify(path)}); c.on('connect', () => console.log('connected')); process.stdin.on('end', () => process.exit(0)); process.stdin.resume();`;
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '', err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  let conn = -1;
  for (let i = 0; i < 200 && conn < 0; i++) {
    await os.pollAsync([lfd], os.POLLIN, 100);
    conn = os.accept(lfd, os.SOCK_NONBLOCK);
  }
  t.ok(conn >= 0, `the child connected${conn >= 0 ? '' : `: ${out}${err}`}`);
  if (conn < 0) return;
  t.teardown(() => os.close(conn));
  // setpriv execs node: the connecting process has setpriv's pid.
  t.same(peerCred(conn), { pid: child.pid, uid: 65534, gid: 65534 }, 'the accepted connection names the child (nobody) and its pid');
  t.same(peerCred(lfd), { pid: process.pid, uid: 0, gid: process.getegid!() }, 'the listening socket names its own creator');
  child.stdin.end();
  await new Promise((r) => child.once('exit', r));
});

const hasCc = spawnSync('cc', ['--version']).status === 0;

t.test('SO_PEERCRED and struct ucred match the system headers', { skip: hasCc ? false : 'no C compiler (cc) installed' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), `tsp-peercred-${process.pid}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'c.c'), `#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
int main(void) {
  printf("%d %d %d %d %d %d %d %d\\n", SO_PEERCRED, (int)sizeof(struct ucred), (int)offsetof(struct ucred, pid), (int)offsetof(struct ucred, uid),
    (int)offsetof(struct ucred, gid), (int)sizeof(pid_t), (int)sizeof(uid_t), (int)sizeof(gid_t));
  return 0;
}
`);
  execFileSync('cc', ['-Wall', '-Werror', '-o', join(dir, 'c'), join(dir, 'c.c')], { stdio: 'pipe' });
  const v = execFileSync(join(dir, 'c'), { encoding: 'utf8' }).trim().split(' ').map(Number);
  t.same(v, [SO_PEERCRED, SIZEOF_UCRED, 0, 4, 8, 4, 4, 4], 'SO_PEERCRED, sizeof(struct ucred), offsets of pid/uid/gid, sizes of pid_t/uid_t/gid_t');
});
