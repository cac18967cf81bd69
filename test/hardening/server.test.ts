/**
 * Hardening of the vfio-user server against a hostile client (issue 14: items 6, 7, 9a and the
 * server part of 11). Each test sends the bad input over a real unix socket, with real eventfds and
 * memfds, to a VfioUserServer in this process (so its fds, stats and event-loop stalls are visible
 * here), or runs `tspmd emu` where a second process is the point.
 */
import t from 'tap';
import { existsSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { logLevel, setLogLevel } from '../../src/log.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import { PeerClosedError, connectUnix, safeClose } from '../../lib/vfio-user/transport.js';
import { runCli } from '../cli.js';
import { tempDir, testDevice, serve, rawClient, nextMessage, awaitReply, negotiate, until, sleep, kind, ownFdCount, BAR0_SIZE } from './server-helpers.js';

const MSIX = U.VFIO_PCI_MSIX_IRQ_INDEX;

/** A command message with payload. */
const cmd = (msgId: number, command: number, payload: Uint8Array = new Uint8Array(0), flags = 0): Uint8Array => P.encodeMessage({ msgId, command, flags, error: 0 }, payload);

/** Lines this process writes to stderr (the log) while fn runs. */
async function captureLog(fn: () => Promise<void> | void): Promise<string> {
  const write = process.stderr.write.bind(process.stderr);
  const level = logLevel();
  if (level === 'error') setLogLevel('warn');
  let text = '';
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]): boolean => {
    text += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  try {
    await fn();
  } finally {
    process.stderr.write = write;
    setLogLevel(level);
  }
  return text;
}

/** A socket file that nobody listens on (what a killed server leaves behind). */
function staleSocket(path: string): void {
  const fd = os.socket(os.AF_UNIX, os.SOCK_STREAM, 0);
  os.bind(fd, os.sockaddrUn(path));
  os.close(fd);
}

t.test('item 6: a DMA reply carrying an fd and SET_IRQS with an eventfd in one burst: the stored eventfd stays open', async (t) => {
  const path = join(tempDir(t), 'irq.sock');
  const dev = testDevice(t);
  const server = serve(t, dev, path);
  const fds0 = ownFdCount();
  const ch = rawClient(t, path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'VERSION');
  ch.sendRaw(cmd(2, P.Cmd.DMA_MAP, P.encodeDmaMap({ flags: 3, offset: 0n, address: 0x100000n, size: 0x1000n })));
  t.equal(kind(await awaitReply(ch, 2, 5000)), 'reply', 'DMA_MAP without fd: memory reached by message');
  const read = dev.dmaRead(0x100000n, 16);
  const req = await nextMessage(ch, 5000);
  if (typeof req === 'string' || req.command !== P.Cmd.DMA_READ) { t.fail(`expected a DMA_READ command, got ${typeof req === 'string' ? req : P.cmdName(req.command)}`); return; }
  const a = P.decodeDmaAccess(req.payload, false, 1 << 20, 'DMA_READ');
  const data = new Uint8Array(16).map((_, i) => 0xa0 + i);
  const stray = os.eventfd(0, os.EFD_NONBLOCK); // an fd the reply has no business carrying
  const irq = os.eventfd(0, os.EFD_NONBLOCK);
  t.teardown(() => { safeClose(stray); safeClose(irq); });
  // Back to back, before the server runs: it reads both in one burst. The reply's fd is closed by
  // the server and its number is free again when SET_IRQS's eventfd arrives.
  ch.sendRaw(P.encodeMessage({ msgId: req.msgId, command: P.Cmd.DMA_READ, flags: P.TYPE_REPLY, error: 0 }, P.encodeDmaAccess(a.address, a.count, data)), [stray]);
  ch.sendRaw(cmd(3, P.Cmd.DEVICE_SET_IRQS, P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, MSIX, 0, 1)), [irq]);
  t.same(await read, data, 'DMA_READ answered with the client\'s bytes');
  t.equal(kind(await awaitReply(ch, 3, 5000)), 'reply', 'SET_IRQS accepted');
  await sleep(20); // whatever the server schedules after the burst has run
  t.ok(dev.triggerIrq(MSIX, 0), 'the device signals MSI-X vector 0 (its eventfd is open)');
  const count = new Uint8Array(8);
  let n = -1;
  try { n = os.read(irq, count); } catch { /* EAGAIN: the signal went elsewhere */ }
  t.equal(n, 8, 'the client\'s eventfd received the interrupt, not whatever reused the fd number');
  ch.close();
  t.ok(await until(() => !server.connected, 5000), 'disconnect seen');
  await sleep(100); // the channels' wake eventfds close 50 ms after close()
  safeClose(stray);
  safeClose(irq);
  t.equal(ownFdCount(), fds0, 'every fd the server received is closed after the disconnect');
});

t.test('item 7: fd-carrying pieces of a message that never completes: capped, error and close, every fd released', async (t) => {
  const path = join(tempDir(t), 'fds.sock');
  const dev = testDevice(t);
  const server = serve(t, dev, path);
  const fds0 = ownFdCount();
  const ch = rawClient(t, path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'VERSION');
  const efd = os.eventfd(0, os.EFD_NONBLOCK);
  t.teardown(() => safeClose(efd));
  const sixteen = new Array<number>(16).fill(efd); // the kernel gives the server 16 new fds per piece
  const head = new Uint8Array(16);
  const dv = new DataView(head.buffer);
  dv.setUint16(0, 7, true);
  dv.setUint16(2, P.Cmd.REGION_WRITE, true);
  dv.setUint32(4, 0x10000, true); // 64 KiB claimed (within the limit), 16 bytes sent
  const mine = 3; // this test's own: the client socket, its wake eventfd, efd
  let peak = 0, pieces = 0, closed = false, errorReply: string | null = null;
  const droppedBefore = server.stats.dropped;
  try {
    ch.sendRaw(head, sixteen);
    for (; pieces < 100 && !closed; pieces++) {
      await sleep(3);
      peak = Math.max(peak, ownFdCount() - fds0 - mine);
      const r = await nextMessage(ch, 0);
      if (r === 'closed') { closed = true; break; }
      if (r !== 'timeout') errorReply = kind(r);
      ch.sendRaw(new Uint8Array(1), sixteen);
    }
  } catch (e) {
    if (!(e instanceof PeerClosedError)) throw e;
    closed = true;
  }
  if (!closed) closed = (await awaitReply(ch, 0xffff, 2000)) === 'closed';
  t.comment(`pieces sent after the header: ${pieces}; most fds held by the server meanwhile: ${peak}; error reply: ${errorReply ?? 'none seen before the close'}`);
  t.ok(closed, 'the server closed the connection');
  t.ok(pieces < 20, `it did so after a few pieces of 16 fds, not after all 100 (${pieces})`);
  t.ok(peak <= 2 * 16 + 2, `the server never held more than 2 x max_msg_fds received fds (+ its socket and wake fd): ${peak}`);
  t.equal(server.stats.dropped, droppedBefore + 1, 'counted as a dropped connection');
  ch.close();
  safeClose(efd);
  await sleep(100);
  t.equal(ownFdCount(), fds0, 'every received fd is closed');
  const next = rawClient(t, path);
  t.equal(kind(await negotiate(next, 1)), 'reply', 'the next client is served');
});

t.test('item 9a: a client that stops reading: no main-thread stall, dropped once its socket stays full', async (t) => {
  const path = join(tempDir(t), 'stall.sock');
  const dev = testDevice(t);
  const server = serve(t, dev, path); // sendStallMs: the default (2000 ms)
  const ch = rawClient(t, path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'VERSION');
  // 64 reads of 64 KiB each (4 MiB of replies) and never a byte read back
  const burst = new Uint8Array(64 * 32);
  for (let i = 0; i < 64; i++) burst.set(cmd(100 + i, P.Cmd.REGION_READ, P.encodeRegionAccess(0, 0, BAR0_SIZE)), i * 32);
  let maxGap = 0, last = Date.now();
  const tick = setInterval(() => { const now = Date.now(); maxGap = Math.max(maxGap, now - last); last = now; }, 10);
  t.teardown(() => clearInterval(tick));
  const t0 = Date.now();
  ch.sendRaw(burst);
  const dropped = await until(() => server.stats.dropped > 0, 15000);
  const took = Date.now() - t0;
  maxGap = Math.max(maxGap, Date.now() - last); // a stall just before the drop shows here, as no tick ran after it
  clearInterval(tick);
  t.comment(`dropped after ${took} ms; longest event-loop gap meanwhile ${maxGap} ms; messages handled ${server.stats.messages}`);
  t.ok(dropped, 'the client that does not read is dropped');
  t.ok(took >= 1500 && took < 10000, `after the stall limit, not at once and not never (${took} ms)`);
  t.ok(maxGap < 2500, `the main thread never stalled for long (longest gap ${maxGap} ms; a blocking send stalls it for 5000 ms per reply)`);
  t.ok(server.stats.messages < 64, `requests stopped being read while replies waited (${server.stats.messages} handled)`);
  let replies = 0;
  for (;;) {
    const m = await nextMessage(ch, 3000);
    if (typeof m === 'string') { t.equal(m, 'closed', 'the client then sees the connection closed'); break; }
    replies++;
  }
  t.comment(`replies the client could still read: ${replies}`);
  const next = rawClient(t, path);
  t.equal(kind(await negotiate(next, 1)), 'reply', 'the next client is served');
  next.sendRaw(cmd(2, P.Cmd.DEVICE_GET_INFO, P.encodeDeviceInfoRequest()));
  t.equal(kind(await awaitReply(next, 2, 5000)), 'reply', 'and gets DEVICE_GET_INFO');
});

/** A child node process that connects to path and writes the given bytes (hex) once, then block (hex) count times, as fast as the socket takes them. */
function flooder(path: string, first: Uint8Array, block: Uint8Array, count: number): ChildProcess {
  const script = `
    const s = require('net').connect(process.argv[1]);
    const first = Buffer.from(process.argv[2], 'hex'), block = Buffer.from(process.argv[3], 'hex');
    let left = Number(process.argv[4]);
    s.on('error', () => process.exit(0));
    s.on('data', () => {});
    s.once('connect', () => {
      s.write(first);
      const go = () => { while (left > 0) { left--; if (!s.write(block)) { s.once('drain', go); return; } } s.end(); };
      go();
    });`;
  return spawn(process.execPath, ['-e', script, path, Buffer.from(first).toString('hex'), Buffer.from(block).toString('hex'), String(count)], { stdio: 'ignore' });
}

t.test('item 9a: a client that sends without pause: the event loop still runs (the server handles a batch, then yields)', async (t) => {
  const path = join(tempDir(t), 'flood.sock');
  const dev = testDevice(t);
  const server = serve(t, dev, path);
  // DEVICE_GET_INFO with NO_REPLY: cheap, valid, nothing to send back, so only reading limits the server
  const perBlock = 256; // 8 KiB (an argument of the child: at most 128 KiB)
  const block = new Uint8Array(perBlock * 32);
  for (let i = 0; i < perBlock; i++) block.set(cmd(i, P.Cmd.DEVICE_GET_INFO, P.encodeDeviceInfoRequest(), P.FLAG_NO_REPLY), i * 32);
  const blocks = 1024; // 8 MiB, 262144 messages
  const version = P.encodeMessage({ msgId: 1, command: P.Cmd.VERSION, flags: P.FLAG_NO_REPLY, error: 0 }, P.encodeVersion({ major: 0, minor: 2, caps: { other: {} } }));
  let maxGap = 0, last = Date.now();
  const tick = setInterval(() => { const now = Date.now(); maxGap = Math.max(maxGap, now - last); last = now; }, 10);
  t.teardown(() => clearInterval(tick));
  const t0 = Date.now();
  const child = flooder(path, version, block, blocks);
  t.teardown(() => { child.kill('SIGKILL'); });
  const total = 1 + blocks * perBlock;
  const done = await until(() => server.stats.messages >= total, 120000);
  const took = Date.now() - t0;
  maxGap = Math.max(maxGap, Date.now() - last);
  clearInterval(tick);
  t.comment(`${server.stats.messages} messages handled in ${took} ms; longest event-loop gap meanwhile ${maxGap} ms`);
  t.ok(done, `every message was handled (${server.stats.messages} of ${total})`);
  t.ok(maxGap < 1000, `timers kept running while the client flooded the server (longest gap ${maxGap} ms)`);
  t.equal(server.stats.errorReplies, 0, 'no errors');
});

t.test('item 9a: max_data_xfer_size below 4 KiB is refused with an error reply; 4 KiB makes 4 KiB DMA messages', async (t) => {
  const path = join(tempDir(t), 'xfer.sock');
  const dev = testDevice(t);
  t.throws(() => new VfioUserServer(dev, path, { maxDataXferSize: 1 }), /maxDataXferSize 1 is below the minimum of 4096 bytes/, 'the server\'s own limit has the floor too');
  serve(t, dev, path);
  for (const tiny of [1, 4095]) {
    const ch = rawClient(t, path);
    const r = await negotiate(ch, 1, { max_data_xfer_size: tiny, other: {} });
    t.equal(kind(r), 'error reply EINVAL', `VERSION with max_data_xfer_size ${tiny}: error reply`);
    t.equal(await awaitReply(ch, 0xffff, 5000), 'closed', 'and the connection is closed');
    ch.close();
  }
  const ch = rawClient(t, path);
  const r = await negotiate(ch, 1, { max_data_xfer_size: 4096, other: {} });
  t.equal(kind(r), 'reply', 'max_data_xfer_size 4096 is accepted');
  ch.sendRaw(cmd(2, P.Cmd.DMA_MAP, P.encodeDmaMap({ flags: 3, offset: 0n, address: 0x200000n, size: 0x10000n })));
  t.equal(kind(await awaitReply(ch, 2, 5000)), 'reply', 'DMA_MAP without fd');
  const read = dev.dmaRead(0x200000n, 0x10000);
  let done = false;
  read.then(() => { done = true; }, () => { done = true; }); // a failure surfaces at await read below
  let requests = 0;
  const deadline = Date.now() + 5000;
  for (;;) {
    // Short waits instead of a race: no reader of this channel may outlive the loop.
    const m = await nextMessage(ch, 20);
    if (m === 'timeout' && !done && Date.now() < deadline) continue;
    if (done && m === 'timeout') break;
    if (typeof m === 'string') { t.fail(`DMA_READ expected, got ${m}`); break; }
    const a = P.decodeDmaAccess(m.payload, false, 1 << 20, 'DMA_READ');
    t.ok(a.count <= 4096, `DMA_READ of ${a.count} bytes`);
    requests++;
    ch.sendRaw(P.encodeMessage({ msgId: m.msgId, command: P.Cmd.DMA_READ, flags: P.TYPE_REPLY, error: 0 }, P.encodeDmaAccess(a.address, a.count, new Uint8Array(a.count).fill(requests))));
  }
  const got = await read;
  t.equal(requests, 16, 'a 64 KiB read takes 16 DMA_READ messages of 4 KiB');
  t.same([got[0], got[4096], got[0xffff]], [1, 2, 16], 'in order');
});

t.test('item 11: a stale socket file is removed and the log says so', async (t) => {
  const path = join(tempDir(t), 'stale.sock');
  staleSocket(path);
  const dev = testDevice(t);
  const text = await captureLog(() => { serve(t, dev, path); });
  t.match(text, new RegExp(`removed stale socket ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: connecting to it was refused \\(ECONNREFUSED\\)`), 'one log line names the path and why');
  const ch = rawClient(t, path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'the new server serves on the path');
});

t.test('item 11: a live socket is never removed; other files are refused', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'live.sock');
  const dev = testDevice(t, 'tsp-hard-a');
  serve(t, dev, path);
  const dev2 = testDevice(t, 'tsp-hard-b');
  t.throws(() => new VfioUserServer(dev2, path).start(), new RegExp(`${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by a running server`), 'a second server on an accepting socket: error naming the path');
  const ch = rawClient(t, path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'the first server still serves');
  const file = join(dir, 'plain');
  writeFileSync(file, 'tsp');
  t.throws(() => new VfioUserServer(dev2, file).start(), /plain exists and is not a socket/, 'a regular file: error naming it');
  t.equal(readFileSync(file, 'utf8'), 'tsp', 'and it is left alone');
});

t.test('item 11: close() removes only its own socket file, not the one a newer server bound at the path', async (t) => {
  const path = join(tempDir(t), 'swap.sock');
  const devA = testDevice(t, 'tsp-hard-a');
  const a = new VfioUserServer(devA, path);
  a.start();
  t.teardown(() => a.close());
  os.close(connectUnix(path)); // A accepts
  (await import('node:fs')).unlinkSync(path); // someone removed A's file ...
  const devB = testDevice(t, 'tsp-hard-b');
  serve(t, devB, path); // ... and B now serves at the path
  const text = await captureLog(() => a.close());
  t.ok(existsSync(path), 'closing A left B\'s socket file in place');
  t.match(text, /is no longer this server's socket/, 'and said why');
  const ch = rawClient(t, path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'B still serves');
});

t.test('item 11: a live server whose backlog is full: `tspmd emu` refuses at once instead of hanging in connect()', async (t) => {
  const path = join(tempDir(t), 'full.sock');
  const dev = testDevice(t);
  const server = serve(t, dev, path);
  const ch = rawClient(t, path); // being served: the server accepts nobody else meanwhile
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'a client is being served');
  const waiting: number[] = [];
  t.teardown(() => { for (const fd of waiting) safeClose(fd); });
  for (let i = 0; i < 64; i++) {
    const fd = os.socket(os.AF_UNIX, os.SOCK_STREAM | os.SOCK_NONBLOCK, 0);
    try {
      os.connect(fd, os.sockaddrUn(path));
      waiting.push(fd);
    } catch (e) {
      os.close(fd);
      if (e instanceof os.OsError && e.code === 'EAGAIN') break;
      throw e;
    }
  }
  t.ok(waiting.length >= 1 && waiting.length < 64, `the backlog is full after ${waiting.length} waiting connections`);
  const t0 = Date.now();
  const r = await runCli(['emu', 'dmatest', '--socket', path, '--file-prefix', `tsphard${process.pid}`], { timeoutMs: 60000 });
  t.comment(`tspmd emu on the busy path: exit ${r.code} after ${Date.now() - t0} ms`);
  t.equal(r.code, 1, 'tspmd emu exits with 1');
  t.match(r.stderr, `${path} is in use by a running server`, 'naming the path');
  t.ok(existsSync(path), 'the live socket file is still there');
  ch.sendRaw(cmd(2, P.Cmd.DEVICE_GET_INFO, P.encodeDeviceInfoRequest()));
  t.equal(kind(await awaitReply(ch, 2, 5000)), 'reply', 'the live server still serves its client');
  const accepted = server.stats.connections + waiting.length;
  for (const fd of waiting.splice(0)) os.close(fd);
  ch.close();
  // the closed connections stay in the backlog until the server accepts (and drops) them; a
  // blocking connect before that would wait for room in the backlog with this thread
  t.ok(await until(() => server.stats.connections >= accepted && !server.connected, 10000), 'the server works through its backlog');
  const next = rawClient(t, path);
  t.equal(kind(await negotiate(next, 1)), 'reply', 'once the waiting connections are gone, the next client is served');
});
