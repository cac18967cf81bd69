/**
 * vfio-user interoperability with an independent implementation: QEMU 11.1's vfio-user client
 * (device vfio-user-pci, Debian trixie-backports) against tspmd's server (`tspmd emu dmatest`).
 *
 * test/lab/qemu-vfio-user.sh fetches QEMU 11.1 and its libraries into a private tree (cached in
 * /var/cache/tspmd/lab/qemu-11; the host's QEMU and apt sources are untouched) and builds a 1 MB
 * initramfs whose init prints every PCI device as "TSPLAB {json}" and powers off. This test starts
 * `tspmd emu dmatest --socket <tmp>/dmatest.sock --log-level info`, boots trixie's 6.12 kernel under
 * QEMU 11.1 (TCG, q35, guest RAM in a shared memfd) with
 * `-device {"driver":"vfio-user-pci","socket":{...}}`, and asserts:
 *   - the guest kernel enumerated a PCI device 1b36:10f0 (dmatest), its config space read through
 *     the server (vendor/device at offset 0) and its two BARs assigned;
 *   - the server negotiated a version with QEMU and received DMA_MAP of guest RAM by fd;
 *   - the server survived the client (still running, stops cleanly on SIGTERM).
 *
 * Skips (saying why) only when it cannot run here: not root / not x86-64 Linux, TSPMD_LAB=0, or
 * no network to the Debian mirror on a cold cache (qemu-vfio-user.sh exit 3).
 */
import type { Test } from 'tap';
import { join } from 'node:path';
import { runGuest } from './qemu-run.js';
import { withQemu11, qemuCommand, type QemuEnv } from './qemu11.js';
import { tempDir, startEmu, type EmuProcess } from '../vfio-user/helpers.js';

const BOOT_TIMEOUT_MS = Number(process.env.TSPMD_LAB_BOOT_TIMEOUT ?? 120) * 1000;
const DMATEST = { vendor: '0x1b36', device: '0x10f0' };
const GUEST_RAM = 512 * 1024 * 1024;

withQemu11('QEMU 11.1 vfio-user-pci against tspmd emu dmatest', interop);

async function interop(t: Test, env: QemuEnv): Promise<void> {
  const dir = tempDir(t);
  const sock = join(dir, 'dmatest.sock');
  const emu: EmuProcess = await startEmu(sock, 'dmatest', ['--log-level', 'info']);
  t.teardown(async () => {
    if (!emu.alive()) return;
    const kill = setTimeout(() => emu.proc.kill('SIGKILL'), 5000);
    await emu.stop();
    clearTimeout(kill);
  });

  const { file, args } = qemuCommand(env, sock, { ramMb: GUEST_RAM >> 20, initrd: env.INITRD });
  const run = await runGuest(file, args, BOOT_TIMEOUT_MS, (fn) => t.teardown(fn));
  const { results, secs } = run;
  const outcome = run;
  const console_ = (): string => run.tail(8000);
  let failed = false;
  const check = (ok: boolean, name: string, extra: object = {}): void => {
    if (!ok) failed = true;
    t.ok(ok, name, extra);
  };

  check(!outcome.error && !outcome.timedOut && outcome.code === 0, `QEMU 11.1 boots the guest with vfio-user-pci and powers it off (${secs} s)`,
    { command: `${file} ${args.map((a) => (a.startsWith('{') ? `'${a}'` : a)).join(' ')}`, exit: outcome.code, signal: outcome.signal, timedOut: outcome.timedOut, error: outcome.error?.message });
  for (const r of results) t.comment(`guest: TSPLAB ${JSON.stringify(r)}`);
  const done = results.find((r) => r.check === 'done');
  check(done?.ok === true, 'the guest init reported "done"', { results });
  const dev = results.find((r) => r.check === 'pci' && r.vendor === DMATEST.vendor && r.device === DMATEST.device);
  check(dev !== undefined, `the guest kernel enumerated a PCI device ${DMATEST.vendor.slice(2)}:${DMATEST.device.slice(2)} (dmatest)`,
    { devices: results.filter((r) => r.check === 'pci').map((r) => `${String(r.bdf)} ${String(r.vendor)}:${String(r.device)}`) });
  if (dev) {
    // sysfs config reads go through QEMU's vfio config emulation to REGION_READ on the server
    check(typeof dev.config64 === 'string' && dev.config64.startsWith('361bf010'), `${String(dev.bdf)}: config space read through the server starts with 361b f010`, { config64: dev.config64 });
    check(typeof dev.bars === 'string' && dev.bars.trim().split(' ').length >= 2, `${String(dev.bdf)}: the guest assigned its BARs`, { bars: dev.bars });
  }

  const serverLog = emu.stderr();
  const lines = serverLog.split('\n').filter((l) => l.includes('vfio-user:'));
  check(/negotiated version 0\.\d+/.test(serverLog), 'the server negotiated a version with QEMU', { serverLog: lines.slice(0, 5) });
  // guest RAM (the memfd backend) mapped by fd: together the by-fd maps cover [0, 512 MiB)
  const byFd = [...serverLog.matchAll(/DMA_MAP iova 0x([0-9a-f]+) size 0x([0-9a-f]+) flags (\d+) by fd/g)]
    .map((m) => ({ iova: BigInt(`0x${m[1]}`), size: BigInt(`0x${m[2]}`) }));
  const coversRam = byFd.some((m) => m.iova === 0n && m.size === BigInt(GUEST_RAM))
    || (byFd.some((m) => m.iova === 0n) && byFd.some((m) => m.iova + m.size === BigInt(GUEST_RAM)));
  check(coversRam, `the server received DMA_MAP of guest RAM by fd (${byFd.length} by-fd maps)`, { dmaMaps: lines.filter((l) => l.includes('DMA_MAP')).slice(0, 12) });
  check(emu.alive(), 'the server is still running after QEMU left');
  const code = await emu.stop();
  check(code === 0, 'the server stops cleanly on SIGTERM', { code, stderr: emu.stderr().slice(-2000) });
  for (const l of lines.slice(0, 8)) t.comment(`server: ${l}`);
  t.comment(`server: ... ${lines.length} vfio-user log lines in all; ${lines.filter((l) => l.includes('DMA_MAP')).length} DMA_MAP`);
  if (failed) {
    t.comment(`guest console (last 8 KB):\n${console_()}`);
    t.comment(`server log (last 4 KB):\n${serverLog.slice(-4000)}`);
  }
}
