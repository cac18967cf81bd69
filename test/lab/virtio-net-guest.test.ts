/**
 * Linux's own virtio_net driver on tspmd's emulated virtio-net device: QEMU 11.1's vfio-user client
 * attaches the device to a guest, the guest kernel's virtio-pci and virtio_net bind to it, the
 * interface comes up with the device's MAC, and the guest pings an address on the far side of the
 * device: a net_tap interface in a network namespace on this host. The same check runs twice, with
 * the device served two ways:
 *
 *   guest virtio_net (10.99.0.2) -> vfio-user -> tspmd emu virtio-net -> net_tap tspvtN (10.99.0.1, netns tspvgN)
 *   guest virtio_net (10.99.0.2) -> vfio-user -> tspmd l2fwd: net_virtio_emu0 <-> net_tap0 tspvtN (10.99.0.1, netns tspvgN)
 *
 * The namespace, the tap and the socket directory carry this process's id and are removed at the
 * end, also on failure. Skips (saying why) only when it cannot run here: not root / not x86-64
 * Linux, TSPMD_LAB=0, or no network to the Debian mirror on a cold cache.
 */
import type { Test } from 'tap';
import { spawn, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { runGuest } from './qemu-run.js';
import { withQemu11, qemuCommand, type QemuEnv } from './qemu11.js';
import { tempDir } from '../vfio-user/helpers.js';
import { CLI, CHILD_ENV } from '../cli.js';

const BOOT_TIMEOUT_MS = Number(process.env.TSPMD_LAB_BOOT_TIMEOUT ?? 180) * 1000;
const MAC = '02:74:73:70:76:01';
const HOST_IP = '10.99.0.1', GUEST_IP = '10.99.0.2';

/** A process serving the device inside the namespace. */
interface DeviceProcess { stderr(): string; alive(): boolean; stop(): Promise<number | null> }

/** Start the process serving the device on sock in namespace ns, its far side the TAP tap (created by it). */
type StartDevice = (t: Test, ns: string, tap: string, sock: string) => Promise<DeviceProcess>;

withQemu11('QEMU 11.1 guest with Linux virtio_net pings through tspmd emu virtio-net', (t, env) => guestPing(t, env, startEmu));
withQemu11('QEMU 11.1 guest with Linux virtio_net pings through tspmd l2fwd between net_virtio_emu and net_tap', (t, env) => guestPing(t, env, startL2fwd));

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** `tspmd emu virtio-net` inside namespace ns with a net_tap backend; resolves once it serves. */
function startEmu(t: Test, ns: string, tap: string, sock: string): Promise<DeviceProcess> {
  return spawnInNs(t, ns, ['emu', `virtio-net,mac=${MAC}`, '--socket', sock, '--file-prefix', `tspvg${process.pid}`, '--vdev', `net_tap0,iface=${tap}`, '--log-level', 'info'],
    /serving /, 'tspmd emu virtio-net');
}

/** `tspmd l2fwd` inside namespace ns between the device's port and a net_tap; resolves once it forwards. */
function startL2fwd(t: Test, ns: string, tap: string, sock: string): Promise<DeviceProcess> {
  return spawnInNs(t, ns, ['l2fwd', '--no-huge', '-l', '0-1', '--file-prefix', `tspvgl${process.pid}`, '--no-telemetry', '--vdev', `net_virtio_emu0,socket=${sock},mac=${MAC}`,
    '--vdev', `net_tap0,iface=${tap}`, '--log-level', 'info', '--', '-p', '0x3', '--no-mac-updating', '-T', '0'], /lcore \d+: RX port 1/, 'tspmd l2fwd');
}

/** Run tspmd with argv in namespace ns; resolves once its stdout matches ready. */
function spawnInNs(t: Test, ns: string, argv: string[], ready: RegExp, what: string): Promise<DeviceProcess> {
  const proc = spawn('ip', ['netns', 'exec', ns, process.execPath, ...process.execArgv, CLI, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  let out = '', err = '', exited = false;
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => { exited = true; resolve(code); }));
  proc.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const dev = {
    stderr: () => err,
    alive: () => !exited,
    stop: async (): Promise<number | null> => {
      if (!exited) proc.kill('SIGTERM');
      const kill = setTimeout(() => proc.kill('SIGKILL'), 8000);
      const code = await exit;
      clearTimeout(kill);
      return code;
    },
  };
  t.teardown(() => { if (!exited) proc.kill('SIGKILL'); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`${what} did not start within 30 s: ${err}`)); }, 30_000);
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (ready.test(out)) { clearTimeout(timer); resolve(dev); }
    });
    void exit.then((code) => { clearTimeout(timer); reject(new Error(`${what} exited with ${code}: ${err}`)); });
  });
}

async function guestPing(t: Test, env: QemuEnv, startDevice: StartDevice): Promise<void> {
  const ns = `tspvg${process.pid}`, tap = `tspvt${process.pid}`;
  ip(['netns', 'add', ns]);
  t.teardown(() => { try { ip(['netns', 'del', ns]); } catch { /* already gone */ } });
  const sock = join(tempDir(t), 'virtio-net.sock');
  const dev = await startDevice(t, ns, tap, sock);
  ip(['-n', ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', tap]);
  ip(['-n', ns, 'link', 'set', tap, 'up']);

  const { file, args } = qemuCommand(env, sock, { ramMb: 512, initrd: env.INITRD_NET, append: `tsp.mac=${MAC} tsp.ip=${GUEST_IP}/24 tsp.peer=${HOST_IP}` });
  const run = await runGuest(file, args, BOOT_TIMEOUT_MS, (fn) => t.teardown(fn));
  let failed = false;
  const check = (ok: boolean, name: string, extra: object = {}): void => {
    if (!ok) failed = true;
    t.ok(ok, name, extra);
  };
  const r = (name: string): Array<Record<string, unknown>> => run.results.filter((x) => x.check === name);
  for (const x of run.results) t.comment(`guest: TSPLAB ${JSON.stringify(x)}`);

  check(!run.error && !run.timedOut && run.code === 0, `QEMU 11.1 boots the guest with the emulated virtio-net and powers off (${run.secs} s)`, { exit: run.code, signal: run.signal, timedOut: run.timedOut });
  check(r('insmod').length === 3 && r('insmod').every((x) => x.ok === true), 'the guest loads failover, net_failover and virtio_net', { insmod: r('insmod') });
  const pci = r('pci').find((x) => x.device === '0x1041');
  check(pci?.driver === 'virtio-pci', 'Linux\'s virtio-pci binds the emulated device 1af4:1041 (modern virtio-net)', { pci: r('pci') });
  const iface = r('iface')[0];
  check(iface?.ok === true && iface.driver === 'virtio_net', `virtio_net creates an interface with the device's MAC ${MAC}`, { iface });
  const link = r('link')[0];
  check(link?.carrier === '1', 'the guest interface has carrier (VIRTIO_NET_S_LINK_UP)', { link });
  const ping = r('ping')[0];
  check(ping?.ok === true && Number(ping.received) >= 3, `the guest pings ${HOST_IP} on the backend's tap in namespace ${ns}: at least 3 of 5 replies`, { ping });
  const tapRx = Number(execFileSync('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${tap}/statistics/rx_packets`], { encoding: 'utf8' }).trim());
  check(tapRx >= 5, `the backend's tap received the guest's frames (${tapRx})`);
  check(dev.alive(), 'the device is still serving after QEMU left');
  const code = await dev.stop();
  check(code === 0, 'the device stops cleanly on SIGTERM', { code, stderr: dev.stderr().slice(-2000) });
  if (failed) {
    t.comment(`guest console (last 6 KB):\n${run.tail(6000)}`);
    t.comment(`device log (last 4 KB):\n${dev.stderr().slice(-4000)}`);
  }
}
