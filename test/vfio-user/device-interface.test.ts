/**
 * The device interface lib/vfio-user's server serves (VfioUserDevice), implemented here by a raw
 * provider that is not lib/emudev: a device-specific region (index 9) described with a
 * type/subtype capability, and config-space accesses that reach the provider raw through
 * regionRead/regionWrite. The server runs in this process; the client is a raw channel.
 */
import t from 'tap';
import { join } from 'node:path';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { parseDeviceInfo, parseRegionInfo } from '../../src/iommu/device.js';
import * as P from '../../lib/vfio-user/protocol.js';
import type { DmaMessagePath, VfioUserDevice } from '../../lib/vfio-user/device.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import { awaitReply, kind, negotiate, rawClient, tempDir, until } from '../hardening/server-helpers.js';

/** A vendor-specific region type (VFIO_REGION_TYPE_PCI_VENDOR_TYPE | vendor id) and a subtype. */
const VENDOR_TYPE = (0x80000000 | 0x1234) >>> 0, SUBTYPE = 7;
const SPECIFIC = 9, SPECIFIC_SIZE = 0x1000;

/** A provider with its own config-space model: every access is recorded and answered from its own bytes. */
class RawDevice implements VfioUserDevice {
  readonly name = 'tsp-raw';
  maxDmaMaps = 0;
  readonly numRegions = 10;
  readonly numIrqs = U.VFIO_PCI_NUM_IRQS;
  readonly log: string[] = [];
  readonly config = Uint8Array.from({ length: 256 }, (_, i) => i ^ 0x5a);
  readonly specific = new Uint8Array(SPECIFIC_SIZE);

  describeRegion(index: number): P.RegionDescription {
    const rw = U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE;
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) return { index, flags: rw, size: 256, offset: 0n, sparse: null };
    if (index === SPECIFIC) return { index, flags: rw, size: SPECIFIC_SIZE, offset: 0n, sparse: null, type: { type: VENDOR_TYPE, subtype: SUBTYPE } };
    if (index < 0 || index >= this.numRegions) throw new P.ProtocolError(`region ${index} is out of range`, os.E.EINVAL);
    return { index, flags: 0, size: 0, offset: 0n, sparse: null };
  }
  regionFd(): number { return -1; }
  regionRead(index: number, off: bigint, count: number): Uint8Array {
    this.log.push(`read ${index} 0x${off.toString(16)} ${count}`);
    return this.bytes(index).slice(Number(off), Number(off) + count);
  }
  regionWrite(index: number, off: bigint, data: Uint8Array): void {
    this.log.push(`write ${index} 0x${off.toString(16)} ${[...data].join(',')}`);
    this.bytes(index).set(data, Number(off));
  }
  dmaMap(): void { throw new P.ProtocolError('no DMA', os.E.ENOTSUP); }
  dmaUnmap(): void {}
  irqInfo(): { flags: number; count: number } { return { flags: 0, count: 0 }; }
  setIrqs(): void {}
  reset(): void { this.log.push('reset'); }
  connected(path: DmaMessagePath): void { this.log.push(`connected ${typeof path.read}`); }
  disconnected(opts: { reset?: boolean }): void { this.log.push(`disconnected reset=${opts.reset}`); }

  private bytes(index: number): Uint8Array {
    if (index === U.VFIO_PCI_CONFIG_REGION_INDEX) return this.config;
    if (index === SPECIFIC) return this.specific;
    throw new P.ProtocolError(`region ${index} has no bytes`, os.E.EINVAL);
  }
}

let nextId = 10;
/** Send a command and wait for its reply. */
async function ask(ch: ReturnType<typeof rawClient>, cmd: number, payload: Uint8Array): Promise<P.Message> {
  const msgId = nextId++;
  ch.sendRaw(P.encodeMessage({ msgId, command: cmd, flags: 0, error: 0 }, payload));
  const r = await awaitReply(ch, msgId, 5000);
  if (typeof r === 'string') throw new Error(`${P.cmdName(cmd)}: ${r}`);
  return r;
}

t.test('a provider that is not emudev: region 9 with a type capability, raw config-space accesses', async (t) => {
  const dev = new RawDevice();
  const path = join(tempDir(t), 'raw.sock');
  const server = new VfioUserServer(dev, path, { maxDmaMaps: 8 });
  server.start();
  t.teardown(() => server.close());
  t.equal(dev.maxDmaMaps, 8, 'the server set the provider\'s max_dma_maps');
  const ch = rawClient(t, path);
  t.equal(kind(await negotiate(ch, 1)), 'reply', 'version negotiated');
  t.same(dev.log.splice(0), ['connected function'], 'the provider got the DMA message path at VERSION');

  const info = parseDeviceInfo((await ask(ch, P.Cmd.DEVICE_GET_INFO, P.encodeDeviceInfoRequest())).payload);
  t.equal(info.numRegions, 10, 'DEVICE_GET_INFO reports the provider\'s 10 regions');

  const full = parseRegionInfo((await ask(ch, P.Cmd.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest(SPECIFIC, 256))).payload, 'region 9');
  t.same([full.index, full.size, full.type, full.capIds], [SPECIFIC, SPECIFIC_SIZE, { type: VENDOR_TYPE, subtype: SUBTYPE }, [U.VFIO_REGION_INFO_CAP_TYPE]], 'region 9: its size and the type/subtype capability');
  const short = (await ask(ch, P.Cmd.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest(SPECIFIC, P.REGION_INFO_SIZE))).payload;
  const sdv = U.view(short);
  t.same([U.vfio_region_info.get(sdv, 'argsz'), U.vfio_region_info.get(sdv, 'flags') & U.VFIO_REGION_INFO_FLAG_CAPS, short.byteLength],
    [P.REGION_INFO_SIZE + U.vfio_region_info_cap_type.size, 0, P.REGION_INFO_SIZE], 'a small argsz: the fixed struct, no FLAG_CAPS, argsz asks for room for the capability');

  await ask(ch, P.Cmd.REGION_WRITE, P.encodeRegionAccess(0x40, U.VFIO_PCI_CONFIG_REGION_INDEX, 4, Uint8Array.of(1, 2, 3, 4)));
  const rd = P.decodeRegionAccess((await ask(ch, P.Cmd.REGION_READ, P.encodeRegionAccess(0x3e, U.VFIO_PCI_CONFIG_REGION_INDEX, 4))).payload, true, 1 << 20, 'reply');
  t.same([...rd.data], [0x3e ^ 0x5a, 0x3f ^ 0x5a, 1, 2], 'config reads come from the provider\'s own bytes, with what was written');
  await ask(ch, P.Cmd.REGION_WRITE, P.encodeRegionAccess(0x800, SPECIFIC, 2, Uint8Array.of(0xab, 0xcd)));
  t.same([...dev.specific.subarray(0x800, 0x802)], [0xab, 0xcd], 'a write to region 9 reached the provider');
  t.same(dev.log.splice(0), ['write 7 0x40 1,2,3,4', 'read 7 0x3e 4', 'write 9 0x800 171,205'], 'each access reached the provider raw, once, in order');

  const refused = await ask(ch, P.Cmd.DMA_MAP, P.encodeDmaMap({ flags: P.DMA_FLAG_READ, offset: 0n, address: 0x1000n, size: 0x1000n }));
  t.equal(kind(refused), 'error reply ENOTSUP', 'the provider\'s ProtocolError is the error reply, with its errno');
  ch.close();
  t.ok(await until(() => dev.log.includes('disconnected reset=true'), 5000), 'the provider heard of the disconnect, reset asked');
});

t.test('encodeRegionInfo chains the sparse mmap areas and the type capability', async (t) => {
  const b = P.encodeRegionInfo({ index: 9, flags: U.VFIO_REGION_INFO_FLAG_MMAP, size: 0x4000, offset: 0n, sparse: [{ offset: 0x1000, size: 0x1000 }], type: { type: 3, subtype: 1 } }, 4096);
  const r = parseRegionInfo(b, 'chained');
  t.same([r.sparse, r.type, r.capIds], [[{ offset: 0x1000, size: 0x1000 }], { type: 3, subtype: 1 }, [U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, U.VFIO_REGION_INFO_CAP_TYPE]], 'both capabilities, in chain order');
  const none = parseRegionInfo(P.encodeRegionInfo({ index: 0, flags: 0, size: 0x1000, offset: 0n, sparse: null }, 4096), 'plain');
  t.same([none.type, none.capIds, none.flags & U.VFIO_REGION_INFO_FLAG_CAPS], [null, [], 0], 'no capability: no FLAG_CAPS');
});
