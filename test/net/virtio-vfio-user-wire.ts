/**
 * The wire end of test/net/virtio-vfio-user.test.ts, run inside the test's network namespace
 * (`ip netns exec NS node virtio-vfio-user-wire.ts IFACE`): a raw AF_PACKET socket bound to the TAP
 * interface that the emulated device's net_tap backend created there. What the device sends out of
 * its backend the kernel receives on IFACE, and this socket sees it; what this socket sends on
 * IFACE the kernel hands to the TAP's reader, the device's backend. Its own frames are not looped
 * back (PACKET_IGNORE_OUTGOING). It waits in poll(2) on a libuv pool thread: no busy loop.
 *
 * One JSON object per line on stdin, one answer per line on stdout, in order:
 *   {"op":"send","frames":["<hex>",...]}   -> {"sent":N}
 *   {"op":"take"}                          -> {"frames":["<hex>",...],"truncated":N}  (all received since the last take)
 *   {"op":"stats"}                         -> {"rx_packets":..,"tx_packets":..,"rx_bytes":..,"tx_bytes":..}  (IFACE's kernel counters)
 * Prints {"ready":IFINDEX} once bound; exits when stdin closes.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import * as os from '../../src/os/libc.js';
import { SOL_PACKET, ETH_P_ALL, PACKET_IGNORE_OUTGOING, sockaddrLl } from '../../drivers/net/af_packet/uapi.js';

const iface = process.argv[2];
if (!iface) {
  console.error('usage: virtio-vfio-user-wire.ts IFACE');
  process.exit(2);
}

const ifindex = os.ifNameToIndex(iface);
const fd = os.socket(os.AF_PACKET, os.SOCK_RAW | os.SOCK_NONBLOCK, ((ETH_P_ALL & 0xff) << 8) | (ETH_P_ALL >> 8));
os.setsockoptInt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
os.setsockoptInt(fd, os.SOL_SOCKET, os.SO_RCVBUF, 8 << 20);
os.bind(fd, sockaddrLl(ifindex), `AF_PACKET on ${iface}`);

let received: string[] = [];
let truncated = 0;
let closing = false;

/** Read everything queued on the socket. */
const buf = new Uint8Array(65536);
function drain(): void {
  // read(2), not recvmsg: packet sockets refuse MSG_CMSG_CLOEXEC (EINVAL), which libc.recvmsg adds
  while (os.pollOne(fd, os.POLLIN, 0) & os.POLLIN) {
    const n = os.read(fd, buf);
    if (n >= buf.length) truncated++;
    received.push(Buffer.from(buf.subarray(0, n)).toString('hex'));
  }
}

/** Wait for frames in the kernel (poll on a pool thread), drain, repeat until stdin closes. */
async function receiveLoop(): Promise<void> {
  while (!closing) {
    await os.pollAsync([fd], os.POLLIN, 100);
    drain();
  }
}

/** A kernel counter of IFACE (this process sees the namespace's /sys). */
function ifStat(name: string): number {
  return Number(readFileSync(`/sys/class/net/${iface}/statistics/${name}`, 'utf8').trim());
}

function answer(o: unknown): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

const loop = receiveLoop();
const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const cmd = JSON.parse(line) as { op: string; frames?: string[] };
  if (cmd.op === 'send') {
    let sent = 0;
    for (const hex of cmd.frames ?? []) {
      const f = Buffer.from(hex, 'hex');
      // ENOBUFS/EAGAIN: the TAP queue is full for a moment; try again shortly, a bounded number of times.
      for (let tries = 0; tries < 1000; tries++) {
        if (os.send(fd, f, f.length, 0) === f.length) { sent++; break; }
        os.pollOne(fd, os.POLLOUT, 5);
      }
    }
    answer({ sent });
  } else if (cmd.op === 'take') {
    drain();
    answer({ frames: received, truncated });
    received = [];
    truncated = 0;
  } else if (cmd.op === 'stats') {
    answer({ rx_packets: ifStat('rx_packets'), tx_packets: ifStat('tx_packets'), rx_bytes: ifStat('rx_bytes'), tx_bytes: ifStat('tx_bytes') });
  } else {
    answer({ error: `unknown op ${cmd.op}` });
  }
});
rl.on('close', () => {
  closing = true;
  void loop.finally(() => { os.close(fd); process.exit(0); });
});
answer({ ready: ifindex });
