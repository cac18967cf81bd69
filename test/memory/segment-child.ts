/**
 * Second process for test/memory/memory.test.ts: receives a DMA segment's fd over the unix
 * socket on fd 3 (SCM_RIGHTS), maps it with mapSegmentFd, checks the parent's bytes, writes its
 * own, and answers what it sees after the parent writes again. Every message is one JSON datagram.
 */
import * as os from '../../src/os/libc.js';
import { mapSegmentFd } from '../../src/memory/segment.js';

const SOCK = 3;

function recv(): { msg: Record<string, number>; fds: number[] } {
  const r = os.recvmsg(SOCK, 4096);
  if (r === null || r.data.length === 0) process.exit(3);
  return { msg: JSON.parse(Buffer.from(r.data).toString()) as Record<string, number>, fds: r.fds };
}

function send(o: unknown): void {
  os.sendmsg(SOCK, Buffer.from(JSON.stringify(o)));
}

const { msg, fds } = recv();
const { len, offset, n } = msg;
const va = mapSegmentFd(fds[0], len);
const u8 = new Uint8Array(os.viewOf(va, len));
let parentPattern = true;
for (let i = 0; i < n; i++) if (u8[offset + i] !== ((i * 7 + 1) & 0xff)) parentPattern = false;
for (let i = 0; i < n; i++) u8[offset + n + i] = (i * 13 + 5) & 0xff;
send({ parentPattern, fds: fds.length, pid: process.pid });

// The parent writes a marker after our mapping exists: we must see it live.
const second = recv().msg;
send({ marker: u8[offset + second.at], fresh: u8[offset + second.at + 1] });
os.munmap(va, len);
os.close(fds[0]);
process.exit(0);
