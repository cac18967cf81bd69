/**
 * Helpers for the vfio-user server hardening tests: a small emulated device served by a
 * VfioUserServer in this process (so a test sees the server's fds, event-loop stalls and stats),
 * raw clients that send exactly the bytes and fds a test wants, and waiting that yields to the
 * event loop (the in-process server runs on it).
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { EmuDevice } from '../../lib/emudev/emudev.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { VfioUserServer, type ServerOptions } from '../../lib/vfio-user/server.js';
import { Channel, PeerClosedError, connectUnix } from '../../lib/vfio-user/transport.js';

/** What tap's test object offers that the helpers use. */
export interface Teardown {
  teardown(fn: () => unknown): void;
}

/** Sleep without spinning (the in-process server runs meanwhile). */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A directory tsp-hard-<pid>-* removed at teardown, even on failure. */
export function tempDir(t: Teardown): string {
  const d = mkdtempSync(join(tmpdir(), `tsp-hard-${process.pid}-`));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Open fds of this process. */
export const ownFdCount = (): number => readdirSync('/proc/self/fd').length;

/** Size of BAR0 of the test device (shared memory, mappable as a whole). */
export const BAR0_SIZE = 0x10000;

/** An emulated device with BAR0 (64 KiB of shared memory) and one MSI-X vector, released at teardown. */
export function testDevice(t: Teardown, name = 'tsp-hard'): EmuDevice {
  const dev = new EmuDevice({
    name,
    pci: { vendorId: 0x1234, deviceId: 0x11e8, classCode: 0xff0000 },
    bars: [{ index: 0, size: BAR0_SIZE, shared: [{ offset: 0, size: BAR0_SIZE }] }],
    irqs: [{ index: U.VFIO_PCI_MSIX_IRQ_INDEX, count: 1 }],
  });
  t.teardown(() => dev.close());
  return dev;
}

/** A server for dev at path, started; closed at teardown. */
export function serve(t: Teardown, dev: EmuDevice, path: string, opts: ServerOptions = {}): VfioUserServer {
  const s = new VfioUserServer(dev, path, opts);
  s.start();
  t.teardown(() => s.close());
  return s;
}

/** A raw client connection (closed at teardown). */
export function rawClient(t: Teardown, path: string): Channel {
  const ch = new Channel(connectUnix(path), { maxMsgSize: 1 << 22, maxMsgFds: 16, name: 'test client' });
  t.teardown(() => ch.close());
  return ch;
}

/** The next message from the server, 'closed' when it closed the connection, 'timeout' after ms. Fds that come along are closed. */
export async function nextMessage(ch: Channel, ms: number): Promise<P.Message | 'closed' | 'timeout'> {
  const deadline = Date.now() + ms;
  for (;;) {
    let m: P.Message | null;
    try {
      m = ch.receive();
    } catch (e) {
      if (e instanceof PeerClosedError) return 'closed';
      throw e;
    }
    if (m) {
      for (const fd of m.fds) os.close(fd);
      return m;
    }
    const left = deadline - Date.now();
    if (left <= 0) return 'timeout';
    await os.pollAsync([ch.fd], os.POLLIN, Math.min(left, 100)); // on a pool thread: the event loop runs meanwhile
  }
}

/** Wait for the reply to msgId (other messages are skipped); 'closed' or 'timeout' otherwise. */
export async function awaitReply(ch: Channel, msgId: number, ms: number): Promise<P.Message | 'closed' | 'timeout'> {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = await nextMessage(ch, Math.max(0, deadline - Date.now()));
    if (typeof m === 'string') return m;
    if ((m.flags & P.FLAG_TYPE_MASK) === P.TYPE_REPLY && m.msgId === msgId) return m;
  }
}

/** Send VERSION 0.2 with caps and return the reply (or 'closed'/'timeout'). */
export async function negotiate(ch: Channel, msgId: number, caps: P.Capabilities = { max_msg_fds: 16, max_data_xfer_size: 1 << 20, other: {} }): Promise<P.Message | 'closed' | 'timeout'> {
  ch.sendRaw(P.encodeMessage({ msgId, command: P.Cmd.VERSION, flags: 0, error: 0 }, P.encodeVersion({ major: 0, minor: 2, caps })));
  return awaitReply(ch, msgId, 5000);
}

/** Wait until cond() holds, checking every few ms; false after ms. */
export async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() >= deadline) return false;
    await sleep(5);
  }
  return true;
}

/** Describe a result for assertion messages. */
export function kind(r: P.Message | 'closed' | 'timeout'): string {
  if (typeof r === 'string') return r;
  return (r.flags & P.FLAG_ERROR) !== 0 ? `error reply ${os.errnoName(r.error)}` : 'reply';
}
