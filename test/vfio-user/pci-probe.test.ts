/**
 * A vfio-user device probed like any PCI device: `-a vfio-user:SOCKET` on the EAL, the PCI bus
 * matches the dmatest driver by the ids read from config space, the driver's ring lives in EAL
 * memory registered with the server by fd, and copies done by the device in the other process
 * arrive with the right checksums. `tspmd devices` lists the device.
 */
import t from 'tap';
import { join } from 'node:path';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probeDeviceBuses } from '../../drivers/bus/probe.js';
import type { ProbedDmatest } from '../../drivers/raw/dmatest/pci.js';
import { DESC_STATUS_DONE } from '../../lib/dmatest/regs.js';
import { viewOf } from '../../src/os/libc.js';
import { tempDir, startEmu } from './helpers.js';
import { runCli } from '../cli.js';

t.test('-a vfio-user:SOCKET: probed by the dmatest PCI driver, DMA copies verified', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'dmatest.sock');
  const emu = await startEmu(sock);
  t.teardown(() => emu.stop());
  const eal = new Eal({ noHuge: true, filePrefix: `tspvfp${process.pid}`, allow: [`vfio-user:${sock}`], noPci: true, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const { bus, vfioUser } = await probeDeviceBuses(eal);
  t.equal(vfioUser.length, 1);
  t.equal(vfioUser[0].skipReason, null, 'connected and handed over');
  const probed = bus.probed();
  t.equal(probed.length, 1, 'one device probed');
  t.equal(probed[0].driver.name, 'dmatest');
  t.equal(probed[0].dev.bus, 'vfio-user');
  t.equal(probed[0].vfio.backend, 'vfio-user');
  const drv = (probed[0].probed as ProbedDmatest).driver;

  // Source and destination buffers in EAL memory (registered with the server by fd).
  const zone = eal.memory.reserve('vfp_bufs', 64 * 1024, 4096, true);
  const mem = new Uint8Array(viewOf(zone.va, zone.len));
  const n = 8, len = 4096;
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < len; k++) mem[i * len + k] = (i * 31 + k * 7) & 0xff;
    drv.submit(zone.iova + BigInt(i * len), zone.iova + BigInt(32768 + i * len), len);
  }
  const { completions } = await drv.wait(n, 10000);
  t.equal(completions.length, n, `${n} descriptors completed`);
  t.ok(completions.every((c) => c.status === DESC_STATUS_DONE), 'every descriptor succeeded');
  let same = 0;
  for (let i = 0; i < n; i++) if (Buffer.compare(mem.subarray(i * len, (i + 1) * len), mem.subarray(32768 + i * len, 32768 + (i + 1) * len)) === 0) same++;
  t.equal(same, n, 'the device copied every buffer in the other process, by DMA');
  eal.memory.free('vfp_bufs');
});

t.test('tspmd devices -a vfio-user:SOCKET lists it with its ids and driver', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'dev.sock');
  const emu = await startEmu(sock);
  t.teardown(() => emu.stop());
  const r = await runCli(['devices', '--no-pci', '-a', `vfio-user:${sock}`, '--json']);
  t.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout.trim().split('\n').pop()!) as Array<Record<string, unknown>>;
  const row = rows.find((x) => x.bus === 'vfio-user');
  t.ok(row, 'listed');
  t.equal(row?.addr, `vfio-user:${sock}`);
  t.equal(row?.vendor, '0x1b36');
  t.equal(row?.device, '0x10f0');
  t.equal(row?.skip_reason, null, 'would be probed (the dmatest driver matches)');
  const bad = await runCli(['devices', '--no-pci', '-a', `vfio-user:${join(dir, 'nothing.sock')}`, '--json']);
  t.equal(bad.code, 0);
  t.match(bad.stdout, /cannot connect to/);
});
