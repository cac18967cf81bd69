/**
 * vfio-user client and server in two processes: `tspmd emu dmatest` serves, this process is the
 * client (the VfioDevice the drivers use). Version and capabilities, region info with sparse areas
 * and fds, the mmap and message paths agreeing (also Bar.read/write of any length across both), DMA by fd (EAL memfd segments) and by message
 * (DMA_READ/WRITE), IRQ delivery and masking, reset, disconnect and reconnect, server restart,
 * and the vfio-user-info / emu commands.
 */
import t from 'tap';
import { existsSync, fstatSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { Bar } from '../../src/iommu/bar.js';
import { Eal } from '../../src/eal.js';
import { VfioUserClient, VfioUserError } from '../../lib/vfio-user/client.js';
import * as P from '../../lib/vfio-user/protocol.js';
import { DmatestDriver } from '../../drivers/raw/dmatest/dmatest.js';
import { DmatestDevice } from '../../drivers/emu/dmatest/dmatest.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import * as R from '../../lib/dmatest/regs.js';
import { tempDir, startEmu, type EmuProcess } from './helpers.js';
import { runCli } from '../cli.js';
import { emu as emuApp } from '../../app/emu/emu.js';
import { ownFlagsWithPositionals } from '../../app/vfio-user/positional.js';
import { moveOwnFlags } from '../../lib/app/app.js';
import { dmatestDemo } from '../../app/emu/dmatest-demo.js';

const dir = tempDir(t);
const sock = join(dir, 'dmatest.sock');
let emu: EmuProcess;
t.before(async () => { emu = await startEmu(sock); });
t.teardown(async () => { await emu.stop(); });

function client(t: { teardown(fn: () => unknown): void }): VfioUserClient {
  const c = VfioUserClient.connect(sock, { timeoutMs: 5000 });
  t.teardown(() => c.close());
  return c;
}

t.test('socket 0600, version and capabilities', async (t) => {
  t.equal(statSync(sock).mode & 0o777, 0o600, 'socket created mode 0600');
  const c = client(t);
  t.same([c.serverVersion.major, c.serverVersion.minor], [0, 2]);
  t.equal(c.negotiated.maxDataXferSize, 1048576);
  t.equal(c.negotiated.maxMsgFds, 16);
  t.equal(c.negotiated.pgsizes, 4096);
  t.equal(c.negotiated.writeMultiple, true);
  t.equal(c.serverVersion.caps.twin_socket, undefined, 'twin_socket not proposed, not answered');
});

t.test('device info, region info with sparse areas and fds, IRQ info, unsupported commands', async (t) => {
  const c = client(t);
  const d = c.info();
  t.same([d.numRegions, d.numIrqs, d.isPci, d.canReset], [9, 5, true, true]);
  const b0 = c.regionInfo(0);
  t.same([b0.size, b0.readable, b0.writable, b0.mappable], [0x2000, true, true, true]);
  t.same(b0.sparse, [{ offset: 0x1000, size: 0x1000 }], 'BAR0: one sparse area, the doorbell page');
  t.same(b0.capIds, [U.VFIO_REGION_INFO_CAP_SPARSE_MMAP]);
  const b2 = c.regionInfo(2);
  t.same([b2.size, b2.mappable, b2.sparse], [0x10000, true, null], 'BAR2: mappable as a whole');
  t.same([c.regionInfo(7).size, c.regionInfo(7).mappable], [256, false], 'config space: message path only');
  t.equal(c.regionInfo(1).size, 0, 'absent BAR: size 0');
  const cfg = new Uint8Array(4);
  c.readRegion(U.VFIO_PCI_CONFIG_REGION_INDEX, 0, cfg);
  t.same([cfg[0] | (cfg[1] << 8), cfg[2] | (cfg[3] << 8)], [R.DMATEST_VENDOR, R.DMATEST_DEVICE], 'PCI ids from config space');
  const msix = c.irqInfo(U.VFIO_PCI_MSIX_IRQ_INDEX);
  t.same([msix.count, msix.eventfd, msix.maskable], [1, true, true]);
  t.equal(c.irqInfo(U.VFIO_PCI_MSI_IRQ_INDEX).count, 0);
  t.same(c.regionIoFds(0), { subs: [], fds: [] }, 'no ioeventfd sub-regions, no fds');
  t.same(c.ioDoorbells(0), [], 'so the client keeps no doorbells for BAR0');
  t.throws(() => c.regionInfo(9), /EINVAL/, 'region index out of range: error reply');
  t.throws(() => c.irqInfo(5), /EINVAL/);
  t.throws(() => c.readRegion(0, 0x2000, new Uint8Array(4)), /EINVAL/, 'read past the BAR: error reply');
  t.throws(() => c.readRegion(1, 0, new Uint8Array(4)), /EINVAL/, 'read of an absent region');
  try {
    c.deviceFeature(0x10000 | 1);
    t.fail('DEVICE_FEATURE should fail');
  } catch (e) {
    t.ok(e instanceof VfioUserError && e.errno === os.E.ENOTSUP, `migration feature: ENOTSUP (${(e as Error).message})`);
  }
  t.throws(() => c.request(18, new Uint8Array(8), [], 'mig data write'), /ENOTSUP/, 'MIG_DATA_WRITE: ENOTSUP');
  t.throws(() => c.request(14, new Uint8Array(0), [], 'unused number'), /EINVAL/, 'unknown command: EINVAL');
  t.throws(() => c.mmapRegion(0, 0, 4096), /not inside a sparse mmap area/, 'mmap of a trapped page refused client-side');
  t.equal(c.info().numRegions, 9, 'still serving after the errors');
});

t.test('region info retry with a small argsz; client fds all closed at close()', async (t) => {
  await new Promise((res) => setTimeout(res, 100)); // earlier clients' wake eventfds close 50 ms after close()
  const before = readdirSync('/proc/self/fd').length;
  const c = VfioUserClient.connect(sock);
  const r = c.request(5, P.encodeRegionInfoRequest(0, 32), [], 'small argsz');
  t.equal(r.payload.byteLength, 32, 'argsz 32: only the fixed struct');
  t.equal(new DataView(r.payload.buffer, r.payload.byteOffset).getUint32(0, true), 32 + 16 + 16, 'argsz in the reply: the full size with the sparse capability');
  t.equal(r.fds.length, 1, 'the region fd comes with it');
  for (const fd of r.fds) os.close(fd);
  for (let i = 0; i < 9; i++) c.regionInfo(i);
  const b = Bar.open(c, 2);
  b.close();
  c.close();
  await new Promise((res) => setTimeout(res, 100));
  const after = readdirSync('/proc/self/fd').length;
  t.equal(after, before, `no fd left behind by a client session (${before} before, ${after} after)`);
});

t.test('mmap path and message path agree (BAR2 whole, BAR0 sparse)', async (t) => {
  const c = client(t);
  const mapped = Bar.open(c, 2), msg = Bar.open(c, 2, { mmap: false });
  t.teardown(() => { mapped.close(); msg.close(); });
  t.ok(mapped.isMapped(0, 0x10000) && !msg.isMapped(0, 4), 'one Bar mapped, one by messages');
  for (let off = 0; off < 0x10000; off += 0x1ff8) {
    mapped.write32(off, 0xa5000000 + off);
    t.equal(msg.read32(off), 0xa5000000 + off, `mmap write, REGION_READ at 0x${off.toString(16)}`);
    msg.write64(off + 8, 0x1122334455667788n + BigInt(off));
    t.equal(mapped.read64(off + 8), 0x1122334455667788n + BigInt(off), `REGION_WRITE, mmap read at 0x${(off + 8).toString(16)}`);
  }
  const pattern = randomBytes(0x10000);
  new Uint8Array(os.viewOf(mapped.va, 0x10000)).set(pattern);
  const back = new Uint8Array(0x10000);
  c.readRegion(2, 0, back);
  t.ok(Buffer.from(back).equals(pattern), '64 KiB read by message equals the mapped memory');
  t.equal(c.writeMulti([{ offset: 0x100n, region: 2, count: 4, data: new Uint8Array([1, 2, 3, 4]) }, { offset: 0x200n, region: 2, count: 2, data: new Uint8Array([9, 8]) }]), 2, 'REGION_WRITE_MULTI: 2 writes done');
  t.same([mapped.read32(0x100), mapped.read16(0x200)], [0x04030201, 0x0809]);
  const b0 = Bar.open(c, 0);
  t.teardown(() => b0.close());
  t.same(b0.mapped, [{ offset: 0x1000, size: 0x1000 }], 'BAR0: only the doorbell page mapped');
  t.equal(b0.read32(R.REG_ID), R.DMATEST_ID, 'trapped register read through REGION_READ');
  b0.write32(R.REG_RING_ENTRIES, 16);
  t.equal(b0.read32(R.REG_RING_ENTRIES), 16, 'trapped register write/read');
  b0.write32(R.SHARED_PAGE + 8, 0xdeadbeef);
  const viaMsg = new Uint8Array(4);
  c.readRegion(0, R.SHARED_PAGE + 8, viaMsg);
  t.equal(new DataView(viaMsg.buffer).getUint32(0, true), 0xdeadbeef, 'sparse area: mapped store seen by REGION_READ');
  // any length at any offset across the trapped page and the mapped one: REGION_READ for the part
  // in page 0, the mapping for the rest; the same bytes as one REGION_READ of the whole span
  const whole = new Uint8Array(0x100b);
  c.readRegion(0, 1, whole);
  t.same(Buffer.from(b0.read(1, 0x100b)), Buffer.from(whole), 'Bar.read across a trapped and a mapped page equals REGION_READ');
  t.equal(new DataView(b0.read(R.REG_ID, 4).buffer).getUint32(0, true), R.DMATEST_ID, 'and a trapped register read with it');
  b0.write(R.SHARED_PAGE + 0xffd, Uint8Array.of(7, 8, 9));
  c.readRegion(0, R.SHARED_PAGE + 0xffc, viaMsg);
  t.same(viaMsg, Uint8Array.of(0, 7, 8, 9), 'Bar.write at an odd offset in the mapped page seen by REGION_READ');
});

t.test('DMA map by fd: EAL memfd segments, copy + checksum by the device, MSI-X', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tspvfc${process.pid}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const c = client(t);
  const ring = eal.memory.reserve('vfu_ring', 64 * R.DESC_SIZE, 4096);
  const src = eal.memory.reserve('vfu_src', 1 << 16, 4096), dst = eal.memory.reserve('vfu_dst', 1 << 16, 4096);
  const map = c.attachMemory(eal.memory);
  t.equal(map.mappings().length, eal.memory.segments.length, 'every segment DMA-mapped');
  const srcV = new Uint8Array(os.viewOf(src.va, src.len)), dstV = new Uint8Array(os.viewOf(dst.va, dst.len));
  srcV.set(randomBytes(src.len));
  const drv = DmatestDriver.open(c, { va: ring.va, iova: ring.iova, len: ring.len });
  t.teardown(() => drv.close());
  t.ok(drv.bar.isMapped(R.REG_DOORBELL, 4), 'doorbell is a mapped store');
  const jobs = Array.from({ length: 20 }, (_, i) => ({ off: i * 3000, len: 1 + ((i * 977) % 3000) }));
  for (const j of jobs) drv.submit(src.iova + BigInt(j.off), dst.iova + BigInt(j.off), j.len);
  const { completions, interrupts } = await drv.wait(jobs.length, 5000);
  t.equal(completions.length, jobs.length);
  t.ok(completions.every((x) => x.status === R.DESC_STATUS_DONE), 'every descriptor done');
  t.same(completions.map((x) => x.checksum), jobs.map((j) => R.adler32(srcV.subarray(j.off, j.off + j.len))), 'Adler-32 of each source');
  t.ok(jobs.every((j) => Buffer.from(dstV.subarray(j.off, j.off + j.len)).equals(srcV.subarray(j.off, j.off + j.len))), 'destinations hold the copies');
  t.ok(interrupts >= 1, `MSI-X eventfd signalled (${interrupts})`);
  drv.submit(src.iova, 0x10n, 64); // destination outside every mapping
  const bad = await drv.wait(1, 5000);
  t.equal(bad.completions[0].status, R.DESC_STATUS_ERROR, 'a descriptor pointing outside client memory fails, the device goes on');
  drv.submit(src.iova, dst.iova, 8);
  t.equal((await drv.wait(1, 5000)).completions[0].status, R.DESC_STATUS_DONE, 'and the next one works');
  drv.close();
  // detach(true) only logs a refused unmap: unmap each mapping here, where a refusal throws
  const maps = [...map.mappings()];
  t.doesNotThrow(() => { for (const m of maps) c.dmaUnmap(m.iova, m.len); }, `the server accepted DMA_UNMAP of all ${maps.length} mappings`);
  map.detach(false);
});

t.test('DMA map by message: memory without fd reached through DMA_READ/WRITE, doorbell by REGION_WRITE', async (t) => {
  const c = client(t);
  const len = 0x10000;
  const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS, -1, 0);
  t.teardown(() => os.munmap(va, len));
  const iova = 0x4000_0000n; // any IOVA: the client translates it back to va
  c.dmaMapMessage(va, iova, len);
  c.startService();
  const mem = new Uint8Array(os.viewOf(va, len));
  mem.set(randomBytes(0x4000), 0x1000);
  const drv = DmatestDriver.open(c, { va, iova, len: 0x1000 }, { entries: 16, mmap: false });
  t.notOk(drv.bar.isMapped(R.REG_DOORBELL, 4), 'all by messages: the doorbell too is a REGION_WRITE');
  for (let i = 0; i < 4; i++) drv.submit(iova + 0x1000n + BigInt(i * 0x1000), iova + 0x8000n + BigInt(i * 0x1000), 0x1000);
  const { completions } = await drv.wait(4, 5000);
  t.ok(completions.every((x) => x.status === R.DESC_STATUS_DONE), 'done through messages');
  for (let i = 0; i < 4; i++) {
    const s = mem.subarray(0x1000 + i * 0x1000, 0x2000 + i * 0x1000);
    t.equal(completions[i].checksum, R.adler32(s), `checksum ${i}`);
    t.ok(Buffer.from(mem.subarray(0x8000 + i * 0x1000, 0x9000 + i * 0x1000)).equals(s), `copy ${i} written by DMA_WRITE`);
  }
  drv.close();
  c.dmaUnmap(iova, len);
  t.throws(() => c.dmaUnmap(iova, len), /ENOENT/, 'unmapping twice: ENOENT');
  c.dmaMapMessage(va, iova, len);
  t.throws(() => c.dmaMapMessage(va, iova + 0x1000n, 0x1000), /EEXIST/, 'overlapping map: EEXIST');
  c.dmaUnmap(iova, len);
});

t.test('DMA map by fd of a file that cannot be sealed (a tmpfile): by message by default (tspmd\'s client answers), mapped and warned with --unsealed-dma map', async (t) => {
  const len = 0x10000;
  const file = join(dir, `tsp-unsealed-${process.pid}`);
  const fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o600);
  t.teardown(() => os.close(fd));
  os.ftruncate(fd, len);
  const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  t.teardown(() => os.munmap(va, len));
  const mem = new Uint8Array(os.viewOf(va, len));
  /** Map the file into the device behind path, copy 4 jobs: whether it mapped the file, whether every checksum and copy is right. */
  const copies = async (path: string, pid: number): Promise<{ mapped: boolean; ok: boolean }> => {
    const c = VfioUserClient.connect(path, { timeoutMs: 5000 });
    try {
      const iova = 0x4000_0000n;
      c.addFdMemory(va, len, fd);
      c.dmaMap(va, iova, len);
      const mapped = readFileSync(`/proc/${pid}/maps`, 'utf8').includes(file);
      c.startService(); // the device may reach fd memory by message
      mem.fill(0);
      mem.set(randomBytes(0x4000), 0x1000);
      const drv = DmatestDriver.open(c, { va, iova, len: 0x1000 }, { entries: 16, mmap: false });
      try {
        for (let i = 0; i < 4; i++) drv.submit(iova + 0x1000n + BigInt(i * 0x1000), iova + 0x8000n + BigInt(i * 0x1000), 0x1000);
        const { completions } = await drv.wait(4, 5000);
        const ok = completions.length === 4 && completions.every((x, i) => {
          const s = mem.subarray(0x1000 + i * 0x1000, 0x2000 + i * 0x1000);
          return x.status === R.DESC_STATUS_DONE && x.checksum === R.adler32(s) && Buffer.from(mem.subarray(0x8000 + i * 0x1000, 0x9000 + i * 0x1000)).equals(s);
        });
        return { mapped, ok };
      } finally {
        drv.close();
        c.dmaUnmap(iova, len);
      }
    } finally {
      c.close();
    }
  };
  const byMsg = await copies(sock, emu.proc.pid!);
  t.ok(byMsg.ok, 'default: the copies and checksums are right');
  t.notOk(byMsg.mapped, 'default: the device did not map the file (reached by DMA_READ/WRITE)');
  t.notMatch(emu.stderr(), /cannot be sealed/, 'no warning');

  const sock2 = join(dir, 'map.sock');
  const emu2 = await startEmu(sock2, 'dmatest', ['--unsealed-dma', 'map']);
  t.teardown(() => emu2.stop());
  const byMap = await copies(sock2, emu2.proc.pid!);
  t.ok(byMap.ok, '--unsealed-dma map: the copies and checksums are right');
  t.ok(byMap.mapped, '--unsealed-dma map: the device mapped the file');
  const warning = /cannot be sealed against shrinking.*mapped anyway \(unsealedDma 'map'\).*SIGBUS/;
  for (let i = 0; i < 250 && !warning.test(emu2.stderr()); i++) await new Promise((r) => setTimeout(r, 20)); // the child's stderr arrives through the event loop
  t.match(emu2.stderr(), warning, 'and warned');
});

t.test('DMA map by fd of a sparse 6 GiB memfd: one region over 4 GiB; the device copies below, above and across 4 GiB', async (t) => {
  const GiB = 0x4000_0000, BIG = 6 * GiB, FOUR = 4 * GiB, LEN = 0x3000;
  const fd = os.memfdCreate(`tsp-big-${process.pid}`, os.MFD_ALLOW_SEALING);
  t.teardown(() => os.close(fd));
  os.ftruncate(fd, BIG); // sparse: only what the test and the device write takes memory
  const va = os.mmap(0n, BIG, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, 0);
  t.teardown(() => os.munmap(va, BIG));
  const c = client(t);
  const iova = 0x1_0000_0000n;
  c.addFdMemory(va, BIG, fd);
  c.dmaMap(va, iova, BIG); // a failing test leaves it to the disconnect at the client's close
  const emuMaps = readFileSync(`/proc/${emu.proc.pid!}/maps`, 'utf8').split('\n').filter((l) => l.includes(`tsp-big-${process.pid}`));
  t.equal(emuMaps.length, 1, 'the device maps the 6 GiB region once');
  const drv = DmatestDriver.open(c, { va, iova, len: 0x1000 }, { entries: 16 });
  const jobs = [
    { what: 'below to above', src: 0x10_0000, dst: 5 * GiB },
    { what: 'above to below', src: FOUR + 0x20_0000, dst: 0x20_0000 },
    { what: 'across to above', src: FOUR - 0x1000, dst: BIG - LEN },
    { what: 'above to across', src: 5 * GiB + 0x10_0000, dst: FOUR - 0x2000 },
  ];
  const get = (off: number): Uint8Array => { const b = new Uint8Array(LEN); os.pread(fd, b, LEN, off); return b; };
  for (const j of jobs) {
    const src = randomBytes(LEN);
    os.pwrite(fd, src, LEN, j.src);
    drv.submit(iova + BigInt(j.src), iova + BigInt(j.dst), LEN);
    const { completions } = await drv.wait(1, 5000);
    t.same([completions[0]?.status, completions[0]?.checksum], [R.DESC_STATUS_DONE, R.adler32(src)], `${j.what}: done, Adler-32 of the source`);
    t.ok(Buffer.from(get(j.dst)).equals(src), `${j.what}: the copy is in client memory`);
  }
  drv.close();
  t.doesNotThrow(() => c.dmaUnmap(iova, BIG), 'DMA_UNMAP of the 6 GiB region');
  t.ok(fstatSync(fd).blocks * 512 < 1 << 20, `the 6 GiB file holds ${fstatSync(fd).blocks * 512} bytes`);
});

t.test('IRQ masking holds the interrupt; unmask delivers it; reset clears the device', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tspvfi${process.pid}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const c = client(t);
  const buf = eal.memory.reserve('vfu_irq', 0x4000, 4096);
  const map = c.attachMemory(eal.memory);
  t.teardown(() => map.detach(false));
  const drv = DmatestDriver.open(c, { va: buf.va, iova: buf.iova, len: 0x1000 }, { entries: 8 });
  t.teardown(() => drv.close());
  c.maskIrq(U.VFIO_PCI_MSIX_IRQ_INDEX, 0);
  drv.submit(buf.iova + 0x1000n, buf.iova + 0x2000n, 256);
  const deadline = Date.now() + 3000;
  while (drv.bar.read32(R.REG_CONSUMER) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  t.equal(drv.bar.read32(R.REG_CONSUMER), 1, 'completed (consumer index in the shared page)');
  t.equal(os.pollOne(drv.irqFd, os.POLLIN, 100), 0, 'masked: no interrupt');
  c.unmaskIrq(U.VFIO_PCI_MSIX_IRQ_INDEX, 0);
  t.equal(os.pollOne(drv.irqFd, os.POLLIN, 1000) & os.POLLIN, os.POLLIN, 'unmask delivers the pending interrupt');
  t.equal(drv.reap()[0].status, R.DESC_STATUS_DONE);
  t.equal(drv.bar.read32(R.REG_COMPLETED), 1);
  c.reset();
  t.same([drv.bar.read32(R.REG_COMPLETED), drv.bar.read32(R.REG_CTRL), drv.bar.read32(R.REG_STATUS), drv.bar.read32(R.REG_CONSUMER)], [0, 0, 0, 0], 'reset: counters, control, status and the shared page cleared');
});

t.test('the dmatest example: 200 verified copies by fd, 40 by message', async (t) => {
  const byFd = await dmatestDemo(sock, 200);
  t.same([byFd.ok, byFd.jobs], [200, 200], `by fd: ${byFd.ms} ms, ${byFd.interrupts} interrupts`);
  t.ok(byFd.interrupts >= 1);
  const byMsg = await dmatestDemo(sock, 40, true);
  t.same([byMsg.ok, byMsg.jobs], [40, 40], `by message: ${byMsg.ms} ms`);
});

t.test('client disconnect: the device is reset and the next client is served', async (t) => {
  const c1 = VfioUserClient.connect(sock);
  const b = Bar.open(c1, 0);
  b.write32(R.REG_RING_ENTRIES, 32);
  b.write32(R.REG_DOORBELL, 7);
  const efd = os.eventfd(0, os.EFD_NONBLOCK);
  c1.setIrqs(U.VFIO_PCI_MSIX_IRQ_INDEX, 0, [efd]);
  b.close();
  c1.close(); // no clean-up messages: an abrupt disconnect
  os.close(efd);
  await new Promise((r) => setTimeout(r, 100));
  const c2 = client(t);
  const b2 = Bar.open(c2, 0);
  t.teardown(() => b2.close());
  t.same([b2.read32(R.REG_RING_ENTRIES), b2.read32(R.REG_DOORBELL)], [0, 0], 'state of the previous client is gone');
  t.equal(c2.info().numIrqs, 5, 'the new client is served');
  t.ok(emu.alive(), 'the server lives on');
});

t.test('descriptors in flight when the client unmaps its memory or disconnects: the engine serves the next client', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tspvff${process.pid}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const JOB = 16 * 1024, N = 64;
  for (const how of ['unmap', 'disconnect', 'unmap', 'disconnect']) {
    const c = VfioUserClient.connect(sock, { timeoutMs: 5000 });
    const ring = eal.memory.reserve(`vff_ring_${how}${Date.now()}`, N * R.DESC_SIZE, 4096);
    const bufs = eal.memory.reserve(`vff_bufs_${how}${Date.now()}`, 2 * N * JOB, 4096);
    new Uint8Array(os.viewOf(bufs.va, N * JOB)).set(randomBytes(N * JOB));
    const map = c.attachMemory(eal.memory);
    const drv = DmatestDriver.open(c, { va: ring.va, iova: ring.iova, len: ring.len }, { entries: N });
    for (let i = 0; i < N; i++) drv.submit(bufs.iova + BigInt(i * JOB), bufs.iova + BigInt((N + i) * JOB), JOB);
    if (how === 'unmap') map.detach(true); // DMA_UNMAP of every segment while the engine copies
    const done = drv.bar.read32(R.REG_CONSUMER);
    c.close(); // abruptly: no disable, no clean-up messages
    try { drv.close(); } catch { /* the connection is gone: only local clean-up */ }
    t.ok(done <= N, `${how}: ${done} of ${N} descriptors done when the client left`);
    eal.memory.free(ring.name);
    eal.memory.free(bufs.name);
  }
  await new Promise((r) => setTimeout(r, 100));
  t.ok(emu.alive(), 'the server lives on');
  const next = await dmatestDemo(sock, 128);
  t.same([next.ok, next.jobs], [128, 128], 'the next client: every copy verified');
});

t.test('server restart: socket removed at exit, stale socket replaced, clients reconnect', async (t) => {
  const path = join(dir, 'restart.sock');
  const s1 = await startEmu(path);
  const c1 = VfioUserClient.connect(path);
  t.equal(c1.info().numRegions, 9);
  t.equal(await s1.stop(), 0, 'SIGTERM: clean exit');
  t.notOk(existsSync(path), 'socket file removed at exit');
  t.throws(() => c1.info(), /closed the connection|no reply/, 'the old connection reports the server gone');
  c1.close();
  t.throws(() => VfioUserClient.connect(path), /cannot connect to .*restart.sock/, 'no server: the error names the socket');
  const stale = os.socket(os.AF_UNIX, os.SOCK_STREAM, 0); // a socket file nobody listens on: what a killed server leaves
  os.bind(stale, os.sockaddrUn(path));
  os.close(stale);
  t.ok(existsSync(path), 'a stale socket file is there');
  const s3 = await startEmu(path);
  t.teardown(() => s3.stop());
  const c3 = VfioUserClient.connect(path);
  t.equal(c3.info().numRegions, 9, 'a new server replaced the stale socket and serves');
  const dev = new DmatestDevice('second');
  t.throws(() => new VfioUserServer(dev.emu, path).start(), /in use by a running server; stop it or choose another --socket path/, 'a second server on a live socket fails');
  await dev.close();
  t.equal(c3.info().numIrqs, 5, 'the running server was not disturbed');
  c3.close();
});

t.test('tspmd vfio-user-info and emu command lines', async (t) => {
  const [r, txt] = await Promise.all([
    runCli(['vfio-user-info', '--json', sock]),
    runCli(['vfio-user-info', sock, '--log-level', 'warn']),
  ]);
  t.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  t.same(info.version, { major: 0, minor: 2 });
  t.equal(info.capabilities.max_data_xfer_size, 1048576);
  t.same(info.regions[0].sparse, [{ offset: 4096, size: 4096 }]);
  t.equal(info.regions[2].mmap, true);
  t.equal(info.irqs[2].count, 1);
  t.equal(txt.code, 0, txt.stderr);
  t.match(txt.stdout, /protocol version 0\.2/);
  t.match(txt.stdout, /BAR0\s+size 0x2000\s+RW MMAP sparse \[0x1000, \+0x1000\)/);
  t.match(txt.stdout, /MSI-X\s+count 1 EVENTFD MASKABLE/);
  t.throws(() => emuApp.parse([]), /name a device/);
  t.throws(() => emuApp.parse(['dmatest']), /--socket PATH is required/);
  t.throws(() => emuApp.parse(['nosuch', '--socket', 'x.sock']), /unknown device "nosuch"/);
  t.same(emuApp.parse(['dmatest', '--socket', 'x.sock']), { devices: [{ kind: 'dmatest', name: 'dmatest', args: {}, socket: 'x.sock' }], noReset: false, unsealedDma: 'message' });
  t.same(ownFlagsWithPositionals(['--file-prefix', 'p', 'dmatest', '--socket', '/s', '-l', '0-1'], { '--socket': true }), { '--socket': true, dmatest: false },
    'positionals become own flags; EAL option values and --socket\'s value do not');
  t.same(moveOwnFlags(['--file-prefix', 'p', 'dmatest', '--socket', '/s'], { '--socket': true, dmatest: false }), ['--file-prefix', 'p', '--', 'dmatest', '--socket', '/s']);
});
