/**
 * Fuzz-style robustness of the vfio-user server (a `tspmd emu dmatest` process): many malformed
 * and mutated messages, with and without fds, before and after negotiation. For each, the server
 * answers (error or not), waits for the rest of a message that claims more bytes, or closes the
 * connection; it never crashes, leaks no fds or mappings across connections, and serves the next
 * client properly. Bounded: a fixed number of messages (seeded PRNG) and a time budget.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { Channel, PeerClosedError, connectUnix } from '../../lib/vfio-user/transport.js';
import { VfioUserClient } from '../../lib/vfio-user/client.js';
import * as R from '../../lib/dmatest/regs.js';
import { tempDir, startEmu, type EmuProcess } from './helpers.js';

const SEED = Number(process.env.TSPMD_FUZZ_SEED ?? 0x5eed1234);
const MESSAGES = Number(process.env.TSPMD_FUZZ_MESSAGES ?? 600);
const BUDGET_MS = 15000;

/** mulberry32: a small seeded PRNG, so a failure can be replayed with TSPMD_FUZZ_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const dir = tempDir(t);
const sock = join(dir, 'fuzz.sock');
let emu: EmuProcess;
t.before(async () => { emu = await startEmu(sock); });
t.teardown(async () => { await emu.stop(); });

const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
/** mappings of the fuzzer's memfds (DMA regions) in the server */
const dmaMappings = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('memfd:tsp-fuzz')).length;

function open(): Channel {
  return new Channel(connectUnix(sock), { maxMsgSize: 1 << 22, maxMsgFds: 16, name: 'fuzz client' });
}

/** Wait up to ms for the reply to msgId; 'reply', 'closed' or 'silent'. Server commands are ignored. */
async function awaitReply(ch: Channel, msgId: number, command: number, ms: number): Promise<{ kind: 'reply' | 'closed' | 'silent'; m?: P.Message }> {
  const deadline = Date.now() + ms;
  for (;;) {
    let m: P.Message | null;
    try {
      m = ch.receive();
    } catch (e) {
      if (e instanceof PeerClosedError) return { kind: 'closed' };
      throw e;
    }
    if (m) {
      for (const fd of m.fds) os.close(fd);
      if ((m.flags & P.FLAG_TYPE_MASK) === P.TYPE_REPLY && m.msgId === msgId && m.command === command) return { kind: 'reply', m };
      continue;
    }
    const left = deadline - Date.now();
    if (left <= 0) return { kind: 'silent' };
    os.pollOne(ch.fd, os.POLLIN, Math.min(left, 20));
  }
}

function versionMsg(id: number): Uint8Array {
  return P.encodeMessage({ msgId: id, command: P.Cmd.VERSION, flags: 0, error: 0 }, P.encodeVersion({ major: 0, minor: 2, caps: { max_msg_fds: 8, max_data_xfer_size: 65536, other: {} } }));
}

/** A valid command of a random kind (payload and fds), the raw material for mutation. */
function validCommand(rnd: () => number, id: number): { bytes: Uint8Array; fds: number[]; command: number } {
  const pick = Math.floor(rnd() * 14);
  const fds: number[] = [];
  let cmd: number, payload: Uint8Array;
  const ri = () => Math.floor(rnd() * 10);
  switch (pick) {
    case 0: cmd = P.Cmd.DEVICE_GET_INFO; payload = P.encodeDeviceInfoRequest(); break;
    case 1: cmd = P.Cmd.DEVICE_GET_REGION_INFO; payload = P.encodeRegionInfoRequest(ri(), 32 + Math.floor(rnd() * 100)); break;
    case 2: cmd = P.Cmd.DEVICE_GET_IRQ_INFO; payload = P.encodeIrqInfoRequest(Math.floor(rnd() * 6)); break;
    case 3: cmd = P.Cmd.REGION_READ; payload = P.encodeRegionAccess(Math.floor(rnd() * 0x3000), [0, 2, 7][Math.floor(rnd() * 3)], 1 + Math.floor(rnd() * 64)); break;
    case 4: {
      cmd = P.Cmd.REGION_WRITE;
      const n = [1, 2, 4, 8][Math.floor(rnd() * 4)];
      const data = new Uint8Array(n).map(() => Math.floor(rnd() * 256));
      payload = P.encodeRegionAccess(Math.floor(rnd() * 0x40) * 4, [0, 2, 7][Math.floor(rnd() * 3)], n, data);
      break;
    }
    case 5: {
      cmd = P.Cmd.DEVICE_SET_IRQS;
      const n = 1 + Math.floor(rnd() * 2);
      if (rnd() < 0.5) for (let i = 0; i < n; i++) fds.push(os.eventfd(0, os.EFD_NONBLOCK));
      payload = P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, Math.floor(rnd() * 5), Math.floor(rnd() * 2), n);
      break;
    }
    case 6: {
      cmd = P.Cmd.DMA_MAP;
      const withFd = rnd() < 0.6;
      const size = BigInt(4096 * (1 + Math.floor(rnd() * 4)));
      if (withFd) {
        const fd = os.memfdCreate('tsp-fuzz', 0);
        os.ftruncate(fd, 4096 * (1 + Math.floor(rnd() * 4)));
        fds.push(fd);
      }
      payload = P.encodeDmaMap({ flags: 3, offset: 0n, address: BigInt(Math.floor(rnd() * 16)) * 0x1000n, size });
      break;
    }
    case 7: cmd = P.Cmd.DMA_UNMAP; payload = P.encodeDmaUnmap({ flags: 0, address: BigInt(Math.floor(rnd() * 16)) * 0x1000n, size: 0x1000n }); break;
    case 8: cmd = P.Cmd.DEVICE_RESET; payload = new Uint8Array(0); break;
    case 9: cmd = P.Cmd.REGION_WRITE_MULTI; payload = P.encodeWriteMulti([{ offset: 0x1000n, region: 0, count: 4, data: new Uint8Array(4) }]); break;
    case 10: cmd = P.Cmd.DEVICE_FEATURE; payload = P.encodeDeviceFeature(64, P.DEVICE_FEATURE_GET | 1); break;
    case 11: cmd = P.Cmd.DEVICE_GET_REGION_IO_FDS; payload = P.encodeRegionIoFdsRequest(ri(), 4096); break;
    case 12: cmd = [P.Cmd.MIG_DATA_READ, P.Cmd.DMA_READ, P.Cmd.VERSION, 14, 0, 19, 0xffff][Math.floor(rnd() * 7)]; payload = new Uint8Array(Math.floor(rnd() * 40)); break;
    default: cmd = P.Cmd.REGION_READ; payload = P.encodeRegionAccess(0, 0, 4); break;
  }
  return { bytes: P.encodeMessage({ msgId: id, command: cmd, flags: 0, error: 0 }, payload), fds, command: cmd };
}

/** Mutate a message: header fields, payload bytes, length, or junk. */
function mutate(rnd: () => number, b: Uint8Array): Uint8Array {
  const out = b.slice();
  const dv = new DataView(out.buffer);
  switch (Math.floor(rnd() * 9)) {
    case 0: return out; // unmodified: must be handled normally
    case 1: if (out.byteLength > 16) out[16 + Math.floor(rnd() * (out.byteLength - 16))] ^= 1 << Math.floor(rnd() * 8); return out;
    case 2: for (let i = 16; i < out.byteLength; i++) if (rnd() < 0.3) out[i] = Math.floor(rnd() * 256); return out;
    case 3: { // truncate payload, header size consistent
      const n = 16 + Math.floor(rnd() * Math.max(1, out.byteLength - 16));
      const c = out.slice(0, n);
      new DataView(c.buffer).setUint32(4, n, true);
      return c;
    }
    case 4: { // extend with junk, size consistent
      const c = new Uint8Array(out.byteLength + 1 + Math.floor(rnd() * 64));
      c.set(out);
      for (let i = out.byteLength; i < c.byteLength; i++) c[i] = Math.floor(rnd() * 256);
      new DataView(c.buffer).setUint32(4, c.byteLength, true);
      return c;
    }
    case 5: dv.setUint32(8, [2, 3, 0xf, 0x11, 0x21, 0x10, 0xffffffff][Math.floor(rnd() * 7)], true); return out; // flags
    case 6: dv.setUint16(2, Math.floor(rnd() * 24), true); return out; // command
    case 7: dv.setUint32(4, [0, 1, 15, out.byteLength - 1, out.byteLength + 8, 0x7fffffff, 0xffffffff][Math.floor(rnd() * 7)] >>> 0, true); return out; // size lies
    default: { // payload counts/argsz set to extremes
      if (out.byteLength >= 20) dv.setUint32(16 + 4 * Math.floor(rnd() * Math.min(4, (out.byteLength - 16) >> 2)), [0, 0xffffffff, 0x80000000, 1][Math.floor(rnd() * 4)], true);
      return out;
    }
  }
}

t.test('malformed and mutated messages: answered or closed, never a crash, no leaks', async (t) => {
  const pid = emu.proc.pid!;
  const probe = VfioUserClient.connect(sock);
  probe.info();
  probe.close();
  await new Promise((r) => setTimeout(r, 200));
  const fds0 = fdCount(pid);
  const rnd = prng(SEED);
  const stats = { reply: 0, error: 0, closed: 0, silent: 0, connections: 0, fdsSent: 0 };
  const t0 = Date.now();
  let ch: Channel | null = null;
  let id = 1;
  let peakDma = 0;
  for (let i = 0; i < MESSAGES && Date.now() - t0 < BUDGET_MS; i++) {
    if (!ch) {
      ch = open();
      stats.connections++;
      if (rnd() < 0.9) { // usually negotiate first; sometimes fuzz the pre-negotiation state
        ch.sendRaw(versionMsg(id));
        const v = await awaitReply(ch, id, P.Cmd.VERSION, 2000);
        id = (id + 1) & 0xffff;
        if (v.kind !== 'reply') { t.fail(`VERSION not answered (${v.kind})`); break; }
      }
    }
    const msgId = id;
    id = (id + 1) & 0xffff;
    const raw = rnd() < 0.08;
    const base = raw ? { bytes: new Uint8Array(16 + Math.floor(rnd() * 48)).map(() => Math.floor(rnd() * 256)), fds: [] as number[], command: -1 } : validCommand(rnd, msgId);
    const bytes = raw ? base.bytes : mutate(rnd, base.bytes);
    const command = new DataView(bytes.buffer, bytes.byteOffset).getUint16(2, true);
    stats.fdsSent += base.fds.length;
    try {
      ch.sendRaw(bytes, base.fds);
    } catch (e) {
      if (!(e instanceof PeerClosedError)) throw e;
    }
    for (const fd of base.fds) os.close(fd); // the server has its own copies now
    const r = await awaitReply(ch, msgId, command, 60);
    if (r.kind === 'reply') { stats.reply++; if (r.m!.flags & P.FLAG_ERROR) stats.error++; }
    else stats[r.kind]++;
    if (r.kind !== 'reply' || rnd() < 0.05) { ch.close(); ch = null; } // silent: an incomplete message; start afresh
    if (!emu.alive()) break;
    if (i === 300 && ch) peakDma = Math.max(peakDma, dmaMappings(pid));
  }
  ch?.close();
  t.ok(emu.alive(), `server alive after ${stats.reply + stats.closed + stats.silent} messages in ${Date.now() - t0} ms`);
  t.comment(`seed 0x${SEED.toString(16)}: ${JSON.stringify(stats)}`);
  t.ok(stats.error > 50, 'many error replies');
  t.ok(stats.reply - stats.error > 20, 'valid messages among them were answered normally');
  t.ok(stats.connections > 5, 'several connections');
  t.comment(`DMA regions mapped by fd at message 300: ${peakDma}`);
  // the next client gets a clean, working device
  await new Promise((r) => setTimeout(r, 300));
  const c = VfioUserClient.connect(sock);
  t.teardown(() => c.close());
  t.equal(c.info().numRegions, 9, 'the next client is served');
  const id32 = new Uint8Array(4);
  c.readRegion(0, R.REG_ID, id32);
  t.equal(new DataView(id32.buffer).getUint32(0, true), R.DMATEST_ID, 'registers read correctly');
  t.same(c.regionInfo(0).sparse, [{ offset: 0x1000, size: 0x1000 }]);
  c.close();
  await new Promise((r) => setTimeout(r, 300));
  t.equal(fdCount(pid), fds0, `server fds back to ${fds0} (every received fd closed)`);
  t.equal(dmaMappings(pid), 0, 'no DMA region of a fuzz connection stays mapped in the server');
});

t.test('protocol rules at the start of a connection', async (t) => {
  const ch = open();
  t.teardown(() => ch.close());
  ch.sendRaw(P.encodeMessage({ msgId: 1, command: P.Cmd.DEVICE_GET_INFO, flags: 0, error: 0 }, P.encodeDeviceInfoRequest()));
  const r1 = await awaitReply(ch, 1, P.Cmd.DEVICE_GET_INFO, 2000);
  t.equal(r1.kind, 'reply');
  t.same([r1.m!.flags, r1.m!.error, r1.m!.payload.byteLength], [P.TYPE_REPLY | P.FLAG_ERROR, os.E.EINVAL, 0], 'command before VERSION: error reply, header only');
  ch.sendRaw(P.encodeMessage({ msgId: 2, command: P.Cmd.VERSION, flags: 0, error: 0 }, P.encodeVersion({ major: 1, minor: 0, caps: { other: {} } })));
  const r2 = await awaitReply(ch, 2, P.Cmd.VERSION, 2000);
  t.same([r2.kind, r2.m?.error], ['reply', os.E.ENOTSUP], 'unsupported major: error reply');
  t.equal((await awaitReply(ch, 99, 0, 2000)).kind, 'closed', 'then the server closes the connection');
  const ch2 = open();
  t.teardown(() => ch2.close());
  ch2.sendRaw(P.encodeMessage({ msgId: 7, command: P.Cmd.VERSION, flags: 0, error: 0 }, P.encodeVersion({ major: 0, minor: 9, caps: { other: {} } })));
  const r3 = await awaitReply(ch2, 7, P.Cmd.VERSION, 2000);
  const v = P.decodeVersion(r3.m!.payload);
  t.same([v.major, v.minor, Object.keys(v.caps.other)], [0, 2, []], 'minor capped at 2; no capabilities proposed, none answered');
  const mfd = os.memfdCreate('tsp-fuzz', 0);
  os.ftruncate(mfd, 0x2000);
  ch2.sendRaw(P.encodeMessage({ msgId: 8, command: P.Cmd.DMA_MAP, flags: 0, error: 0 }, P.encodeDmaMap({ flags: 3, offset: 0n, address: 0x10000n, size: 0x2000n })), [mfd]);
  t.same((await awaitReply(ch2, 8, P.Cmd.DMA_MAP, 2000)).m?.flags, P.TYPE_REPLY, 'DMA_MAP by fd accepted');
  ch2.sendRaw(P.encodeMessage({ msgId: 9, command: P.Cmd.DMA_MAP, flags: 0, error: 0 }, P.encodeDmaMap({ flags: 3, offset: 0n, address: 0x20000n, size: 0x3000n })), [mfd]);
  t.same((await awaitReply(ch2, 9, P.Cmd.DMA_MAP, 2000)).m?.error, os.E.EINVAL, 'DMA_MAP larger than the file behind the fd: EINVAL (no SIGBUS later)');
  os.close(mfd);
  t.equal(dmaMappings(emu.proc.pid!), 1, 'the server maps the region');
  const big = new Uint8Array(16);
  new DataView(big.buffer).setUint32(4, 64 << 20, true);
  ch2.sendRaw(big);
  t.equal((await awaitReply(ch2, 0, 0, 2000)).kind, 'closed', 'a header claiming 64 MiB: connection closed');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(dmaMappings(emu.proc.pid!), 0, 'the dropped client\'s DMA region is unmapped');
  t.ok(emu.alive());
});

/** CPU time (user + system, in clock ticks of 10 ms) the process has used. */
function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

t.test('an idle server does not spin: no client, an idle client, a client stuck mid-message', async (t) => {
  const pid = emu.proc.pid!;
  const measure = async () => { const a = cpuTicks(pid); await new Promise((r) => setTimeout(r, 1000)); return cpuTicks(pid) - a; };
  await new Promise((r) => setTimeout(r, 500)); // let the previous test's aftermath (GC, timers) settle
  const none = await measure();
  const ch = open();
  t.teardown(() => ch.close());
  ch.sendRaw(versionMsg(1));
  t.equal((await awaitReply(ch, 1, P.Cmd.VERSION, 2000)).kind, 'reply');
  const idle = await measure();
  const half = P.encodeMessage({ msgId: 2, command: P.Cmd.REGION_READ, flags: 0, error: 0 }, P.encodeRegionAccess(0, 0, 4));
  ch.sendRaw(half.subarray(0, 20));
  const partial = await measure();
  ch.sendRaw(half.subarray(20));
  t.equal((await awaitReply(ch, 2, P.Cmd.REGION_READ, 2000)).kind, 'reply', 'the rest of the message completes it');
  t.comment(`server CPU over 1 s (10 ms ticks): no client ${none}, idle client ${idle}, partial message ${partial}`);
  t.ok(none <= 10 && idle <= 10 && partial <= 10, `at most 100 ms of CPU per second in each state (${none}, ${idle}, ${partial} ticks)`);
});
