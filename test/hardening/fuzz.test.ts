/**
 * The vfio-user server's fuzz contract (issue 14): mutated vfio-user messages against
 * `tspmd emu virtio-net` and `tspmd emu dmatest`, half of TSPMD_FUZZ_MESSAGES (10,000) each (plus the
 * unmodified messages mixed in, about 1 in 9, which keep the device doing real work), seeds
 * varied per run (printed; replay with TSPMD_FUZZ_SEED). At the end the process is alive; every
 * message was answered or its connection closed within 1 s, except a message whose header claims
 * bytes that never arrive (the server rightly waits for them); a header whose size is below 16 or
 * above the server's maximum message size is refused at once: an error reply (to a command that
 * wants one) and the connection closed. A fresh client still gets VERSION and DEVICE_GET_INFO, and
 * the server's fd count and the client memory it maps return to their idle values after the last
 * disconnect.
 *
 * "Answered" for a message that wants no reply (a reply-type message, or a command with NO_REPLY):
 * a DEVICE_GET_INFO sent right behind it is answered, so the server read past it.
 */
import t, { type Test } from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { serverMaxMsgSize } from '../../lib/vfio-user/server.js';
import { Channel, PeerClosedError, connectUnix } from '../../lib/vfio-user/transport.js';
import { VfioUserClient } from '../../lib/vfio-user/client.js';
import { startEmu, type EmuProcess } from '../vfio-user/helpers.js';
import { tempDir, awaitReply as awaitReplyOrEnd } from './server-helpers.js';
import { prng } from '../prng.js';

const TOTAL = Number(process.env.TSPMD_FUZZ_MESSAGES ?? 10000);
const SEED = process.env.TSPMD_FUZZ_SEED !== undefined ? Number(process.env.TSPMD_FUZZ_SEED) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
/** The contract's answer time. */
const ANSWER_MS = 1000;
/** A header claiming more than this is over-long (the server's default max_data_xfer_size). */
const MAX_MSG = serverMaxMsgSize();


const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
/** Mappings of the fuzzer's memfds (client memory sent by fd) in the server. */
const dmaMappings = (pid: number): number => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('memfd:tsp-fuzz')).length;

/** What the server did with a message within the time given. */
type Outcome = { kind: 'reply'; m: P.Message } | { kind: 'closed' } | { kind: 'silent' };

/**
 * Wait up to ms for the reply to msgId, or for the close. Server-to-client commands (DMA_READ/WRITE
 * the device sends to memory mapped without fd) are not answered. Waits on a pool thread, so this
 * process's event loop keeps reading the server's output.
 */
async function awaitReply(ch: Channel, msgId: number, ms: number): Promise<Outcome> {
  const r = await awaitReplyOrEnd(ch, msgId, ms);
  return r === 'closed' ? { kind: 'closed' } : r === 'timeout' ? { kind: 'silent' } : { kind: 'reply', m: r };
}

/** Wait up to ms for the server to close the connection (replies meanwhile are skipped). */
async function awaitClose(ch: Channel, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await awaitReply(ch, -1, Math.max(0, deadline - Date.now()));
    if (r.kind === 'closed') return true;
    if (r.kind === 'silent') return false;
  }
}

/** What the fuzzer knows of the device: its regions' sizes and IRQ counts. */
interface Layout {
  regions: number[];
  irqs: number[];
}

function versionMsg(id: number): Uint8Array {
  return P.encodeMessage({ msgId: id, command: P.Cmd.VERSION, flags: 0, error: 0 }, P.encodeVersion({ major: 0, minor: 2, caps: { max_msg_fds: 8, max_data_xfer_size: 65536, other: {} } }));
}

/** A valid-looking command of a random kind for this device (payload and fds): the material for mutation. */
function validCommand(rnd: () => number, id: number, lay: Layout): { bytes: Uint8Array; fds: number[] } {
  const fds: number[] = [];
  const int = (n: number) => Math.floor(rnd() * n);
  const region = () => (rnd() < 0.9 ? int(lay.regions.length) : int(12));
  const offsetIn = (r: number, n: number) => { const size = lay.regions[r] ?? 0; return size > n && rnd() < 0.9 ? int(Math.floor((size - n) / n) + 1) * n : int(0x4000); };
  let cmd: number, payload: Uint8Array;
  switch (int(15)) {
    case 0: cmd = P.Cmd.DEVICE_GET_INFO; payload = P.encodeDeviceInfoRequest(); break;
    case 1: cmd = P.Cmd.DEVICE_GET_REGION_INFO; payload = P.encodeRegionInfoRequest(region(), 32 + int(100)); break;
    case 2: cmd = P.Cmd.DEVICE_GET_IRQ_INFO; payload = P.encodeIrqInfoRequest(int(6)); break;
    case 3: {
      cmd = P.Cmd.REGION_READ;
      const r = region(), n = [1, 2, 4, 8, 64][int(5)];
      payload = P.encodeRegionAccess(offsetIn(r, n), r, n);
      break;
    }
    case 4: {
      cmd = P.Cmd.REGION_WRITE;
      const r = region(), n = [1, 2, 4, 8][int(4)];
      payload = P.encodeRegionAccess(offsetIn(r, n), r, n, new Uint8Array(n).map(() => int(256)));
      break;
    }
    case 5: {
      cmd = P.Cmd.DEVICE_SET_IRQS;
      const index = int(5), count = Math.max(1, Math.min(lay.irqs[index] ?? 1, 1 + int(3)));
      if (rnd() < 0.6) for (let i = 0; i < count; i++) fds.push(os.eventfd(0, os.EFD_NONBLOCK));
      const data = fds.length ? U.VFIO_IRQ_SET_DATA_EVENTFD : [U.VFIO_IRQ_SET_DATA_NONE, U.VFIO_IRQ_SET_DATA_BOOL, U.VFIO_IRQ_SET_DATA_EVENTFD][int(3)];
      const action = [U.VFIO_IRQ_SET_ACTION_TRIGGER, U.VFIO_IRQ_SET_ACTION_MASK, U.VFIO_IRQ_SET_ACTION_UNMASK][int(3)];
      payload = P.encodeIrqSet(data | action, index, int(2), count, data === U.VFIO_IRQ_SET_DATA_BOOL ? new Uint8Array(count).fill(1) : undefined);
      break;
    }
    case 6: {
      cmd = P.Cmd.DMA_MAP;
      const pages = 1 + int(4);
      if (rnd() < 0.6) {
        const fd = os.memfdCreate('tsp-fuzz', 0);
        os.ftruncate(fd, 4096 * (rnd() < 0.9 ? pages : pages - 1));
        fds.push(fd);
      }
      payload = P.encodeDmaMap({ flags: 1 + int(3), offset: 0n, address: BigInt(int(16)) * 0x1000n, size: BigInt(4096 * pages) });
      break;
    }
    case 7: cmd = P.Cmd.DMA_UNMAP; payload = P.encodeDmaUnmap({ flags: 0, address: BigInt(int(16)) * 0x1000n, size: BigInt(0x1000 * (1 + int(4))) }); break;
    case 8: cmd = P.Cmd.DEVICE_RESET; payload = new Uint8Array(0); break;
    case 9: {
      cmd = P.Cmd.REGION_WRITE_MULTI;
      const r = region();
      payload = P.encodeWriteMulti([{ offset: BigInt(offsetIn(r, 4)), region: r, count: 4, data: new Uint8Array(4) }]);
      break;
    }
    case 10: cmd = P.Cmd.DEVICE_FEATURE; payload = P.encodeDeviceFeature(64, P.DEVICE_FEATURE_GET | (1 + int(8))); break;
    case 11: cmd = P.Cmd.DEVICE_GET_REGION_IO_FDS; payload = P.encodeRegionIoFdsRequest(region(), 4096); break;
    case 12: cmd = [P.Cmd.MIG_DATA_READ, P.Cmd.MIG_DATA_WRITE, P.Cmd.DMA_READ, P.Cmd.DMA_WRITE, P.Cmd.VERSION, 14, 0, 19, 0xffff][int(9)]; payload = new Uint8Array(int(40)); break;
    default: cmd = P.Cmd.REGION_READ; payload = P.encodeRegionAccess(0, U.VFIO_PCI_CONFIG_REGION_INDEX, 4); break;
  }
  return { bytes: P.encodeMessage({ msgId: id, command: cmd, flags: 0, error: 0 }, payload), fds };
}

/** Mutate a message: header fields, payload bytes, length, or none (an unmodified message, 1 in 9, keeps the device busy). */
function mutate(rnd: () => number, b: Uint8Array): Uint8Array {
  const out = b.slice();
  const dv = new DataView(out.buffer);
  const int = (n: number) => Math.floor(rnd() * n);
  switch (int(9)) {
    case 0: return out; // unmodified: handled normally
    case 1: if (out.byteLength > 16) out[16 + int(out.byteLength - 16)] ^= 1 << int(8); return out;
    case 2: for (let i = 16; i < out.byteLength; i++) if (rnd() < 0.3) out[i] = int(256); return out;
    case 3: { // truncated payload, size consistent
      const n = 16 + int(Math.max(1, out.byteLength - 16));
      const c = out.slice(0, n);
      new DataView(c.buffer).setUint32(4, n, true);
      return c;
    }
    case 4: { // junk appended, size consistent
      const c = new Uint8Array(out.byteLength + 1 + int(64));
      c.set(out);
      for (let i = out.byteLength; i < c.byteLength; i++) c[i] = int(256);
      new DataView(c.buffer).setUint32(4, c.byteLength, true);
      return c;
    }
    case 5: dv.setUint32(8, [2, 3, 0xf, 0x11, 0x21, 0x10, 0x30, 0x1, 0xffffffff][int(9)], true); return out; // flags
    case 6: dv.setUint16(2, int(24), true); return out; // command
    case 7: dv.setUint32(4, [0, 1, 15, out.byteLength - 1, out.byteLength + 8, MAX_MSG, MAX_MSG + 1, 0x7fffffff, 0xffffffff][int(9)] >>> 0, true); return out; // size lies
    default: { // counts, argsz, offsets set to extremes
      if (out.byteLength >= 20) dv.setUint32(16 + 4 * int(Math.min(6, (out.byteLength - 16) >> 2)), [0, 0xffffffff, 0x80000000, 1, 0x1000][int(5)], true);
      return out;
    }
  }
}

/** Tallies of one run. */
interface Tally {
  messages: number;
  /** messages changed by mutate() or random bytes (the rest went unmodified) */
  mutated: number;
  /** answered with a reply (errors included) */
  replies: number;
  errorReplies: number;
  /** no reply wanted; the probe behind it was answered */
  probed: number;
  /** the server closed the connection (after an error reply or not) */
  closed: number;
  /** over-long or under-short header: error reply and close */
  refused: number;
  /** header claims bytes never sent: not waited for (the contract's exception) */
  incomplete: number;
  /** neither answered nor closed within 1 s */
  unanswered: number;
  /** a bad header refused without an error reply, or not closed */
  refusedWrongly: number;
  connections: number;
  slowestMs: number;
}

async function fuzz(t: Test, device: string, extra: string[], seed: number, count: number): Promise<void> {
  const dir = tempDir(t);
  const sock = join(dir, `${device}.sock`);
  const emu: EmuProcess = await startEmu(sock, device, extra);
  t.teardown(() => emu.stop());
  const pid = emu.proc.pid!;
  const probe = VfioUserClient.connect(sock);
  const info = probe.info();
  const lay: Layout = { regions: [], irqs: [] };
  for (let i = 0; i < info.numRegions; i++) lay.regions.push(probe.regionInfo(i).size);
  for (let i = 0; i < info.numIrqs; i++) lay.irqs.push(probe.irqInfo(i).count);
  probe.close();
  await new Promise((r) => setTimeout(r, 300));
  const fds0 = fdCount(pid);
  const rnd = prng(seed);
  const st: Tally = { messages: 0, mutated: 0, replies: 0, errorReplies: 0, probed: 0, closed: 0, refused: 0, incomplete: 0, unanswered: 0, refusedWrongly: 0, connections: 0, slowestMs: 0 };
  const problems: string[] = [];
  const t0 = Date.now();
  let ch: Channel | null = null;
  let id = 1;
  const nextId = () => { const v = id; id = (id + 1) & 0xffff; return v; };
  for (let i = 0; st.mutated < count; i++) {
    if (!emu.alive()) break;
    if (!ch) {
      ch = new Channel(connectUnix(sock), { maxMsgSize: 1 << 22, maxMsgFds: 16, name: 'fuzz client' });
      st.connections++;
      if (rnd() < 0.9) { // usually negotiate first; sometimes fuzz the state before VERSION
        const vid = nextId();
        ch.sendRaw(versionMsg(vid));
        const v = await awaitReply(ch, vid, 5000);
        if (v.kind !== 'reply' || (v.m.flags & P.FLAG_ERROR) !== 0) { problems.push(`VERSION on a fresh connection: ${v.kind}`); break; }
      }
    }
    const msgId = nextId();
    const junk = rnd() < 0.05;
    const base = junk ? { bytes: new Uint8Array(16 + Math.floor(rnd() * 48)).map(() => Math.floor(rnd() * 256)), fds: [] as number[] } : validCommand(rnd, msgId, lay);
    const bytes = junk ? base.bytes : mutate(rnd, base.bytes);
    if (junk || Buffer.compare(bytes, base.bytes) !== 0) st.mutated++;
    const dv = new DataView(bytes.buffer, bytes.byteOffset);
    const hId = dv.getUint16(0, true), command = dv.getUint16(2, true), size = dv.getUint32(4, true), flags = dv.getUint32(8, true);
    const type = flags & P.FLAG_TYPE_MASK, wantsReply = type === P.TYPE_COMMAND && (flags & P.FLAG_NO_REPLY) === 0;
    const badHeader = size < P.HEADER_SIZE || size > MAX_MSG || (type !== P.TYPE_COMMAND && type !== P.TYPE_REPLY);
    st.messages++;
    let peerGone = false;
    try {
      ch.sendRaw(bytes, base.fds);
    } catch (e) {
      if (!(e instanceof PeerClosedError)) throw e;
      peerGone = true;
    }
    for (const fd of base.fds) os.close(fd); // the server has its own copies
    const sent = Date.now();
    let keep = !peerGone;
    if (peerGone) {
      st.closed++;
    } else if (badHeader) {
      const r = wantsReply ? await awaitReply(ch, hId, ANSWER_MS) : { kind: 'none' as const };
      const errorOk = !wantsReply || (r.kind === 'reply' && (r.m.flags & P.FLAG_ERROR) !== 0);
      const closed = r.kind === 'closed' || await awaitClose(ch, Math.max(1, ANSWER_MS - (Date.now() - sent)));
      if (errorOk && closed) st.refused++;
      else { st.refusedWrongly++; problems.push(`message ${i}: header size ${size} flags 0x${flags.toString(16)}: ${errorOk ? 'error reply' : `no error reply (${r.kind})`}, ${closed ? 'closed' : 'not closed'} within ${ANSWER_MS} ms`); }
      keep = false;
    } else if (size > bytes.byteLength) {
      st.incomplete++; // the server waits for the rest, which never comes
      keep = false;
    } else {
      // size <= bytes: the first size bytes are the message; trailing bytes start one that never completes
      const trailing = size < bytes.byteLength;
      let target = hId;
      if (!wantsReply) {
        if (trailing) { st.incomplete++; ch.close(); ch = null; continue; }
        target = nextId(); // a probe right behind it: answered only if the server read past the message
        try {
          ch.sendRaw(P.encodeMessage({ msgId: target, command: P.Cmd.DEVICE_GET_INFO, flags: 0, error: 0 }, P.encodeDeviceInfoRequest()));
        } catch (e) {
          if (!(e instanceof PeerClosedError)) throw e;
        }
      }
      const r = await awaitReply(ch, target, ANSWER_MS);
      if (r.kind === 'reply') {
        if (wantsReply) { st.replies++; if (r.m.flags & P.FLAG_ERROR) st.errorReplies++; } else st.probed++;
        // a refused VERSION (a second one, or bad version data) ends the connection after its error reply
        if (wantsReply && command === P.Cmd.VERSION && (r.m.flags & P.FLAG_ERROR) !== 0) {
          if (!await awaitClose(ch, ANSWER_MS)) problems.push(`message ${i}: VERSION refused but the connection was not closed`);
          keep = false;
        }
      } else if (r.kind === 'closed') {
        st.closed++;
        keep = false;
      } else {
        st.unanswered++;
        problems.push(`message ${i}: ${P.cmdName(command)} size ${size} flags 0x${flags.toString(16)}: no answer and no close within ${ANSWER_MS} ms`);
        keep = false;
      }
      if (trailing) keep = false;
    }
    st.slowestMs = Math.max(st.slowestMs, Date.now() - sent);
    if (!keep || rnd() < 0.02) { ch!.close(); ch = null; }
  }
  ch?.close();
  const took = Date.now() - t0;
  const unansweredShare = st.messages ? (st.unanswered / st.messages) : 0;
  t.comment(`emu ${device}, seed 0x${seed.toString(16)}: ${st.messages} messages in ${took} ms over ${st.connections} connections: ${JSON.stringify(st)}; unanswered share ${(unansweredShare * 100).toFixed(3)} %, waited-for share (incomplete, exempt) ${((st.incomplete / Math.max(1, st.messages)) * 100).toFixed(1)} %`);
  for (const p of problems.slice(0, 10)) t.comment(p);
  t.ok(emu.alive(), `tspmd emu ${device} is alive after ${st.messages} messages`);
  t.equal(st.mutated, count, `${count} mutated messages were sent (and ${st.messages - st.mutated} unmodified ones)`);
  t.equal(st.unanswered, 0, 'every message (but those whose bytes never arrive) was answered or its connection closed within 1 s');
  t.equal(st.refusedWrongly, 0, 'every over-long or too-short header was refused at once: error reply and close');
  t.equal(problems.length, 0, 'no rule of the contract was broken (the first ten are listed above)');
  t.ok(st.refused > 0 && st.errorReplies > 0 && st.replies - st.errorReplies > 0 && st.probed > 0, 'the mix had refused headers, error replies, normal replies and messages without a reply');
  // a fresh client is served properly
  await new Promise((r) => setTimeout(r, 200));
  const c = VfioUserClient.connect(sock, { timeoutMs: 5000 });
  t.same([c.serverVersion.major, c.serverVersion.minor], [0, 2], 'a fresh client negotiates VERSION');
  t.equal(c.info().numRegions, info.numRegions, 'and gets DEVICE_GET_INFO');
  c.close();
  // idle values after the last disconnect (the server's channel closes its wake eventfd 50 ms late)
  const deadline = Date.now() + 5000;
  while ((fdCount(pid) !== fds0 || dmaMappings(pid) !== 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.equal(fdCount(pid), fds0, `server fds back to the idle ${fds0}`);
  t.equal(dmaMappings(pid), 0, 'no client memory of a fuzz connection stays mapped');
}

const half = Math.ceil(TOTAL / 2);
t.test('mutated messages against tspmd emu virtio-net', (t) => fuzz(t, 'virtio-net', ['--vdev', 'net_ring0', '-l', '0-1'], SEED, half));
t.test('mutated messages against tspmd emu dmatest', (t) => fuzz(t, 'dmatest', [], (SEED ^ 0x9e3779b9) >>> 0, TOTAL - half));
