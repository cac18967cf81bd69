/**
 * Doorbell cost: one 16-bit write to a virtio notify register, as the PMD's data half makes it
 * (MmioReg from MappedBar.reg), through each path a register can take:
 *
 *   mapped           Atomics.store into the notify page mmap'd from `tspmd emu virtio-net` (the fast path)
 *   vfio-user        no-reply VFIO_USER_REGION_WRITE on the client's socket (the notify page opened
 *                    with { mmap: false }): the sender's cost (median of bursts of 64 with the
 *                    server draining between them), and the sustained rate (the server's handling included,
 *                    up to a final REGION_READ that proves every write was handled)
 *   pwrite           pwrite(2) of 2 bytes on a memfd: the system-call floor of the kernel VFIO path
 *                    (a real vfio-pci pwrite adds the ioctl layer and the MMIO write to the device)
 *
 * `npm run bench -- kick [--json] [--n N]` (N writes per path, default 200000).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnEmu, VfioUserClient } from '../index.js';
// The register primitive a PMD's data half writes doorbells with, and where the emulated device
// puts its notify page, are what this benchmark measures: internals, not API (docs/architecture.md).
import { Bar, MappedBar, type MmioReg } from '../src/iommu/bar.js';
import * as os from '../src/os/libc.js';
import { BAR_CFG, NOTIFY_OFF } from '../drivers/emu/virtio-net/layout.js';

const CLI = fileURLToPath(new URL('../app/tspmd' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url));

/**
 * ns per write through reg: n writes in 5 chunks after a warm-up of n/10, the best chunk (the
 * machine is shared: the least disturbed chunk is the closest to the path's own cost).
 */
function timeWrites(reg: MmioReg, n: number): number {
  for (let i = 0; i < n / 10; i++) reg.write(i & 0xffff);
  const chunk = Math.floor(n / 5);
  let best = Infinity;
  for (let c = 0; c < 5; c++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < chunk; i++) reg.write(i & 0xffff);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / chunk);
  }
  return best;
}

/** Run the benchmark; figures in ns per kick. */
export async function run(args: string[]): Promise<Record<string, number | string | boolean>> {
  const ni = args.indexOf('--n');
  const n = ni >= 0 ? Number(args[ni + 1]) : 200_000;
  if (!Number.isInteger(n) || n < 1000) throw new RangeError(`--n ${args[ni + 1]}: give a whole number of writes >= 1000`);
  const dir = mkdtempSync(join(tmpdir(), 'tsp-bench-kick-'));
  const sock = join(dir, 'vn.sock');
  const dev = await spawnEmu(CLI, ['virtio-net', '--socket', sock, '--no-huge', '-l', '0@1,1@0', '--main-lcore', '0', '--file-prefix', `tspbk${process.pid}`, '--vdev', 'net_null0'],
    { env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' } });
  let client: VfioUserClient | null = null;
  const bars: Bar[] = [];
  const memfd = os.memfdCreate('tspmd-bench-kick', 0);
  try {
    client = VfioUserClient.connect(sock);
    const mappedBar = Bar.open(client, BAR_CFG);
    bars.push(mappedBar);
    const plainBar = Bar.open(client, BAR_CFG, { mmap: false });
    bars.push(plainBar);
    const mapped = (await MappedBar.open(mappedBar.data())).reg(NOTIFY_OFF, 2);
    const message = (await MappedBar.open(plainBar.data())).reg(NOTIFY_OFF, 2);
    if (!mapped.mapped || message.mapped) throw new Error('kick bench: expected one mapped and one unmapped notify register');
    console.log(`kick: ${n} writes per path to ${client.name} BAR${BAR_CFG}+0x${NOTIFY_OFF.toString(16)} ...`);

    const mappedNs = timeWrites(mapped, n);
    // The same store through the older MappedBar.write16 (what the PMD did before MmioReg).
    const old = new MappedBar(mappedBar.data());
    old.check(NOTIFY_OFF, 2);
    const direct: MmioReg = { mapped: true, via: 'mmio', read: () => old.read16(NOTIFY_OFF), write: (v) => old.write16(NOTIFY_OFF, v) };
    const directNs = timeWrites(direct, n);

    // Sender's cost: bursts of 64 (what a socket buffer absorbs), a REGION_READ between bursts so
    // the server has drained them; only the writes are timed.
    const burst = 64, rounds = Math.max(10, Math.floor(n / 10 / burst));
    const sync = (): number => plainBar.read16(NOTIFY_OFF);
    const perBurst: number[] = [];
    for (let r = 0; r < rounds; r++) {
      sync();
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < burst; i++) message.write(i);
      perBurst.push(Number(process.hrtime.bigint() - t0) / burst);
    }
    sync();
    perBurst.sort((a, b) => a - b);
    const senderNs = perBurst[perBurst.length >> 1]; // median burst
    // Sustained: n writes back to back, then one round trip that the server answers only after all.
    const m = Math.floor(n / 4);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < m; i++) message.write(i & 0xffff);
    sync();
    const sustainedNs = Number(process.hrtime.bigint() - t0) / m;

    os.ftruncate(memfd, 4096);
    const file = new MappedBar({ name: 'memfd', va: 0n, size: 4096, mapped: [], io: { kind: 'file', fd: memfd, offset: 0n, readable: true, writable: true } }).reg(0x100, 2);
    const pwriteNs = timeWrites(file, n);

    const f = {
      writes: n,
      mapped_ns_per_kick: Math.round(mappedNs * 10) / 10,
      mapped_write16_ns_per_kick: Math.round(directNs * 10) / 10,
      vfio_user_sender_ns_per_kick: Math.round(senderNs),
      vfio_user_sustained_ns_per_kick: Math.round(sustainedNs),
      pwrite_memfd_ns_per_kick: Math.round(pwriteNs),
    };
    console.log(`  mapped store (MmioReg)          ${f.mapped_ns_per_kick} ns   (MappedBar.write16 before: ${f.mapped_write16_ns_per_kick} ns)`);
    console.log(`  vfio-user REGION_WRITE (sender) ${f.vfio_user_sender_ns_per_kick} ns   sustained, server included: ${f.vfio_user_sustained_ns_per_kick} ns`);
    console.log(`  pwrite on a memfd               ${f.pwrite_memfd_ns_per_kick} ns   (floor of the kernel VFIO path)`);
    return f;
  } finally {
    os.close(memfd);
    for (const b of bars) b.close();
    client?.close();
    await dev.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
