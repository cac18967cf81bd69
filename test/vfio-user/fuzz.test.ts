/**
 * Robustness of the vfio-user server (a `tspmd emu dmatest` process) at the edges of a connection:
 * the rules before and during negotiation, a DMA_MAP larger than its file, a header claiming more
 * than the limit (error reply, then close), and an idle server that does not spin. The mutated-
 * message fuzzing (10,000 messages against virtio-net and dmatest, with the contract's checks)
 * is test/hardening/fuzz.test.ts.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { Channel, connectUnix } from '../../lib/vfio-user/transport.js';
import { tempDir, startEmu, type EmuProcess } from './helpers.js';
import { awaitReply as awaitReplyOrEnd } from '../hardening/server-helpers.js';

const dir = tempDir(t);
const sock = join(dir, 'fuzz.sock');
let emu: EmuProcess;
t.before(async () => { emu = await startEmu(sock); });
t.teardown(async () => { await emu.stop(); });

/** mappings of the test's memfds (DMA regions) in the server */
const dmaMappings = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('memfd:tsp-fuzz')).length;

function open(): Channel {
  return new Channel(connectUnix(sock), { maxMsgSize: 1 << 22, maxMsgFds: 16, name: 'fuzz client' });
}

/** Wait up to ms for the reply to msgId (its command must match too); 'reply', 'closed' or 'silent'. Server commands are ignored. */
async function awaitReply(ch: Channel, msgId: number, command: number, ms: number): Promise<{ kind: 'reply' | 'closed' | 'silent'; m?: P.Message }> {
  const r = await awaitReplyOrEnd(ch, msgId, ms);
  if (r === 'closed') return { kind: 'closed' };
  return r === 'timeout' || r.command !== command ? { kind: 'silent' } : { kind: 'reply', m: r };
}

function versionMsg(id: number): Uint8Array {
  return P.encodeMessage({ msgId: id, command: P.Cmd.VERSION, flags: 0, error: 0 }, P.encodeVersion({ major: 0, minor: 2, caps: { max_msg_fds: 8, max_data_xfer_size: 65536, other: {} } }));
}

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
  const mfd = os.memfdCreate('tsp-fuzz', os.MFD_ALLOW_SEALING);
  os.ftruncate(mfd, 0x2000);
  ch2.sendRaw(P.encodeMessage({ msgId: 8, command: P.Cmd.DMA_MAP, flags: 0, error: 0 }, P.encodeDmaMap({ flags: 3, offset: 0n, address: 0x10000n, size: 0x2000n })), [mfd]);
  t.same((await awaitReply(ch2, 8, P.Cmd.DMA_MAP, 2000)).m?.flags, P.TYPE_REPLY, 'DMA_MAP by fd accepted');
  ch2.sendRaw(P.encodeMessage({ msgId: 9, command: P.Cmd.DMA_MAP, flags: 0, error: 0 }, P.encodeDmaMap({ flags: 3, offset: 0n, address: 0x20000n, size: 0x3000n })), [mfd]);
  t.same((await awaitReply(ch2, 9, P.Cmd.DMA_MAP, 2000)).m?.error, os.E.EINVAL, 'DMA_MAP larger than the file behind the fd: EINVAL (no SIGBUS later)');
  os.close(mfd);
  t.equal(dmaMappings(emu.proc.pid!), 1, 'the server maps the region');
  const big = new Uint8Array(16);
  new DataView(big.buffer).setUint16(0, 10, true);
  new DataView(big.buffer).setUint16(2, P.Cmd.REGION_WRITE, true);
  new DataView(big.buffer).setUint32(4, 64 << 20, true);
  ch2.sendRaw(big);
  const r4 = await awaitReply(ch2, 10, P.Cmd.REGION_WRITE, 2000);
  t.same([r4.kind, r4.m?.flags, r4.m?.error], ['reply', P.TYPE_REPLY | P.FLAG_ERROR, os.E.E2BIG], 'a header claiming 64 MiB: error reply E2BIG at once');
  t.equal((await awaitReply(ch2, 0, 0, 2000)).kind, 'closed', 'and the connection closed');
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
