/**
 * vfio-user codec and framing, in one process: layouts as the spec gives them (offsets and sizes),
 * round trips, strict validation, and the Channel's handling of split messages, several messages
 * per read, fds travelling with the first bytes of their message, and oversize headers.
 */
import t from 'tap';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { parseRegionInfo } from '../../src/iommu/device.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { Channel, PeerClosedError } from '../../lib/vfio-user/transport.js';

const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

t.test('header layout and validation', async (t) => {
  const m = P.encodeMessage({ msgId: 0x1234, command: P.Cmd.REGION_READ, flags: P.TYPE_REPLY | P.FLAG_ERROR, error: 22 }, new Uint8Array(3));
  t.equal(m.byteLength, 19);
  t.same([dv(m).getUint16(0, true), dv(m).getUint16(2, true), dv(m).getUint32(4, true), dv(m).getUint32(8, true), dv(m).getUint32(12, true)], [0x1234, 9, 19, 0x21, 22]);
  t.same(P.readHeader(m, 100), { msgId: 0x1234, command: 9, size: 19, flags: 0x21, error: 22 });
  const bad = m.slice();
  dv(bad).setUint32(4, 15, true);
  t.throws(() => P.readHeader(bad, 100), /smaller than the 16-byte header/);
  dv(bad).setUint32(4, 101, true);
  t.throws(() => P.readHeader(bad, 100), /exceeds the limit of 100/);
  dv(bad).setUint32(4, 19, true);
  dv(bad).setUint32(8, 2, true);
  t.throws(() => P.readHeader(bad, 100), /message type 2/);
  t.equal(P.cmdName(P.Cmd.DMA_MAP), 'VFIO_USER_DMA_MAP');
  t.same(Object.values(P.Cmd), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18], 'command numbers of the spec table');
});

t.test('VERSION: JSON capabilities, NUL-terminated, validated', async (t) => {
  const b = P.encodeVersion({ major: 0, minor: 2, caps: { max_msg_fds: 8, max_data_xfer_size: 65536, pgsizes: 4096, max_dma_maps: 10, twin_socket: { supported: true }, write_multiple: true, other: { migration: { pgsize: 4096 } } } });
  t.same([dv(b).getUint16(0, true), dv(b).getUint16(2, true)], [0, 2]);
  t.equal(b[b.byteLength - 1], 0, 'NUL-terminated');
  const json = JSON.parse(Buffer.from(b.subarray(4, b.byteLength - 1)).toString());
  t.same(Object.keys(json), ['capabilities']);
  t.same(json.capabilities.max_msg_fds, 8);
  const v = P.decodeVersion(b);
  t.same(v.caps.twin_socket, { supported: true, fd_index: undefined });
  t.same(v.caps.other, { migration: { pgsize: 4096 } }, 'unknown capabilities are kept, not interpreted');
  t.same(P.effective(P.decodeVersion(b.subarray(0, 4))), { major: 0, minor: 2, maxMsgFds: 1, maxDataXferSize: 1048576, maxDmaMaps: 65535, pgsizes: 4096, writeMultiple: false }, 'spec defaults without JSON');
  const withJson = (s: string) => { const j = Buffer.from(s + '\0'); const o = new Uint8Array(4 + j.length); o.set(j, 4); return o; };
  t.throws(() => P.decodeVersion(withJson('{"capabilities":{"max_msg_fds":-1}}')), /max_msg_fds must be an integer/);
  t.throws(() => P.decodeVersion(withJson('{"capabilities":{"max_data_xfer_size":"big"}}')), /max_data_xfer_size/);
  t.throws(() => P.decodeVersion(withJson('{"capabilities":[]}')), /must be a JSON object/);
  t.throws(() => P.decodeVersion(withJson('{nope')), /not valid JSON/);
  t.throws(() => P.decodeVersion(withJson('{"capabilities":{"twin_socket":{"supported":1}}}')), /twin_socket.supported/);
  t.throws(() => P.decodeVersion(new Uint8Array(3)), /at least 4/);
});

t.test('DMA_MAP/UNMAP layouts and checks', async (t) => {
  const b = P.encodeDmaMap({ flags: 3, offset: 0x1000n, address: 0x7f0000000000n, size: 0x200000n });
  t.equal(b.byteLength, 32, '32-byte payload');
  t.same([dv(b).getUint32(0, true), dv(b).getUint32(4, true), dv(b).getBigUint64(8, true), dv(b).getBigUint64(16, true), dv(b).getBigUint64(24, true)], [32, 3, 0x1000n, 0x7f0000000000n, 0x200000n]);
  t.same(P.decodeDmaMap(b), { argsz: 32, flags: 3, offset: 0x1000n, address: 0x7f0000000000n, size: 0x200000n });
  const m = (f: (d: DataView) => void) => { const c = b.slice(); f(dv(c)); return c; };
  t.throws(() => P.decodeDmaMap(m((d) => d.setUint32(0, 24, true))), /argsz 24/);
  t.throws(() => P.decodeDmaMap(m((d) => d.setUint32(4, 4, true))), /unknown flags/);
  t.throws(() => P.decodeDmaMap(m((d) => d.setBigUint64(24, 0n, true))), /size 0/);
  t.throws(() => P.decodeDmaMap(m((d) => { d.setBigUint64(16, 0xfffffffffffff000n, true); d.setBigUint64(24, 0x2000n, true); })), /wraps/);
  t.throws(() => P.decodeDmaMap(b.subarray(0, 31)), /31 bytes, 32 expected/);
  const u = P.encodeDmaUnmap({ flags: 0, address: 0x1000n, size: 0x2000n });
  t.equal(u.byteLength, 24);
  t.same([dv(u).getBigUint64(8, true), dv(u).getBigUint64(16, true)], [0x1000n, 0x2000n], 'address at 8, size at 16');
  t.same(P.decodeDmaUnmap(u).size, 0x2000n);
});

t.test('region info with a sparse mmap chain parses with the kernel parser; truncation by argsz', async (t) => {
  const d: P.RegionDescription = { index: 0, flags: U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE | U.VFIO_REGION_INFO_FLAG_MMAP, size: 0x4000, offset: 0x10000n, sparse: [{ offset: 0x1000, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }] };
  const full = P.encodeRegionInfo(d, 4096);
  t.equal(full.byteLength, 32 + 16 + 2 * 16, 'struct + cap header/nr_areas + 2 areas');
  const r = parseRegionInfo(full, 'test');
  t.same(r.sparse, d.sparse);
  t.equal(r.offset, 0x10000n);
  t.same(r.capIds, [U.VFIO_REGION_INFO_CAP_SPARSE_MMAP]);
  t.equal(dv(full).getUint16(32 + 2, true), 1, 'sparse cap version 1');
  const short = P.encodeRegionInfo(d, 32);
  t.equal(short.byteLength, 32, 'argsz too small: only the fixed struct');
  t.equal(dv(short).getUint32(0, true), full.byteLength, 'argsz says the full size');
  t.equal(dv(short).getUint32(12, true), 0, 'no cap_offset in the truncated reply');
  t.equal(dv(short).getUint32(4, true) & U.VFIO_REGION_INFO_FLAG_CAPS, 0, 'no FLAG_CAPS in the truncated reply (QEMU 11 rejects CAPS with cap_offset 0)');
  t.throws(() => P.decodeRegionInfoRequest(U.vfio_region_info.encode({ argsz: 16, index: 0 })), /argsz 16/);
});

t.test('SET_IRQS, region and DMA access, write multi, feature, io fds', async (t) => {
  const s = P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_BOOL | U.VFIO_IRQ_SET_ACTION_MASK, 2, 1, 3, new Uint8Array([1, 0, 1]));
  t.equal(s.byteLength, 23);
  t.same(P.decodeIrqSet(s).bools, new Uint8Array([1, 0, 1]));
  t.throws(() => P.decodeIrqSet(P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_BOOL | U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1)), /exactly one DATA_/);
  t.throws(() => P.decodeIrqSet(P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_NONE, 0, 0, 1)), /exactly one ACTION_/);
  t.throws(() => P.decodeIrqSet(P.encodeIrqSet(U.VFIO_IRQ_SET_DATA_BOOL | U.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 4, new Uint8Array(2))), /DATA_BOOL with count 4/);
  const ra = P.encodeRegionAccess(0x10, 7, 4, new Uint8Array([1, 2, 3, 4]));
  t.same(P.decodeRegionAccess(ra, true, 1 << 20, 'w').data, new Uint8Array([1, 2, 3, 4]));
  t.throws(() => P.decodeRegionAccess(ra, false, 1 << 20, 'r'), /20 bytes, 16 expected/);
  t.throws(() => P.decodeRegionAccess(ra, true, 2, 'w'), /exceeds max_data_xfer_size 2/);
  const da = P.encodeDmaAccess(0x1000n, 8);
  t.same([dv(da).getBigUint64(0, true), dv(da).getBigUint64(8, true)], [0x1000n, 8n], 'DMA access: u64 address, u64 count');
  t.equal(P.decodeDmaAccess(da.subarray(0, 12), false, 100, 'dma write reply', true).count, 8, 'the 12-byte DMA_WRITE reply of the spec table is accepted');
  const wm = P.encodeWriteMulti([{ offset: 8n, region: 0, count: 4, data: new Uint8Array([9, 9, 9, 9]) }]);
  t.equal(wm.byteLength, 8 + 24);
  t.equal(P.decodeWriteMulti(wm)[0].count, 4);
  const bad = wm.slice();
  dv(bad).setUint32(8 + 12, 9, true);
  t.throws(() => P.decodeWriteMulti(bad), /count 9 must be 1..8/);
  t.throws(() => P.decodeDeviceFeature(P.encodeDeviceFeature(8, P.DEVICE_FEATURE_GET | P.DEVICE_FEATURE_SET | 1)), /exclusive/);
  t.equal(P.decodeDeviceFeature(P.encodeDeviceFeature(8, P.DEVICE_FEATURE_PROBE | P.DEVICE_FEATURE_GET | P.FEATURE_MIGRATION)).feature, 1);
  const io = P.encodeRegionIoFds(0, [{ offset: 0x1000n, size: 4n, fdIndex: 0, type: P.IO_FD_TYPE_IOEVENTFD, flags: 0, data: 0n }], 4096);
  t.equal(io.byteLength, 16 + 40);
  t.same(P.decodeRegionIoFds(io).subs[0].offset, 0x1000n);
});

t.test('Channel: split messages, several per read, fds with their message, oversize header', async (t) => {
  const [a, b] = os.socketpair(os.AF_UNIX, os.SOCK_STREAM);
  const tx = new Channel(a, { maxMsgSize: 4096, maxMsgFds: 4, name: 'tx' });
  const rx = new Channel(b, { maxMsgSize: 4096, maxMsgFds: 4, name: 'rx' });
  t.teardown(() => { tx.close(); rx.close(); });
  const m1 = P.encodeMessage({ msgId: 1, command: P.Cmd.DEVICE_RESET, flags: 0, error: 0 }, new Uint8Array(100).fill(7));
  tx.sendRaw(m1.subarray(0, 5));
  t.equal(rx.receive(), null, 'half a header: nothing yet');
  tx.sendRaw(m1.subarray(5, 60));
  t.equal(rx.receive(), null, 'half a message: nothing yet');
  tx.sendRaw(m1.subarray(60));
  const r1 = rx.receive()!;
  t.equal(r1.msgId, 1);
  t.same(r1.payload, new Uint8Array(100).fill(7), 'payload reassembled');
  const efd1 = os.eventfd(0, 0), efd2 = os.eventfd(0, 0);
  tx.send({ msgId: 2, command: P.Cmd.DMA_MAP, flags: 0, error: 0 }, new Uint8Array(32), [efd1]);
  tx.send({ msgId: 3, command: P.Cmd.DEVICE_GET_INFO, flags: 0, error: 0 }, new Uint8Array(16));
  tx.send({ msgId: 4, command: P.Cmd.DEVICE_SET_IRQS, flags: 0, error: 0 }, new Uint8Array(20), [efd2, efd1]);
  os.close(efd1);
  os.close(efd2);
  const got = [rx.receive()!, rx.receive()!, rx.receive()!];
  t.same(got.map((m) => [m.msgId, m.fds.length]), [[2, 1], [3, 0], [4, 2]], 'each message gets exactly its own fds');
  for (const m of got) for (const fd of m.fds) os.close(fd);
  const big = new Uint8Array(16);
  new DataView(big.buffer).setUint32(4, 5000, true);
  tx.sendRaw(big);
  let err: unknown = null;
  try { rx.receive(); } catch (e) { err = e; }
  t.ok(err instanceof P.ProtocolError && err.fatal && /exceeds the limit of 4096/.test(err.message), 'oversize header: fatal ProtocolError');
  const [c, d] = os.socketpair(os.AF_UNIX, os.SOCK_STREAM);
  const rx2 = new Channel(d, { maxMsgSize: 4096, maxMsgFds: 1, name: 'rx2' });
  os.close(c);
  let eof: unknown = null;
  try { rx2.receive(); } catch (e) { eof = e; }
  t.ok(eof instanceof PeerClosedError, 'EOF is PeerClosedError');
  rx2.close();
});
