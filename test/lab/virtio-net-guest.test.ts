/**
 * Linux's own virtio_net driver on tspmd's emulated virtio-net device: QEMU 11.1's vfio-user client
 * attaches the device to a guest, the guest kernel's virtio-pci and virtio_net bind to it, the
 * interface comes up with the device's MAC, and the guest pings an address on the far side of the
 * device: a net_tap interface in a network namespace on this host, then moves TCP_MIB MiB of random
 * bytes over TCP each way with busybox httpd/wget, the SHA-256 compared on the far side: the guest
 * fetches the namespace's blob from httpd on the tap's address, then serves its own, which busybox
 * wget in the namespace fetches (the namespace sends its SHA-256 back to the guest's nc on :8081 to
 * let it power off). The same check runs twice, with the device served two ways:
 *
 *   guest virtio_net (10.99.0.2) -> vfio-user -> tspmd emu virtio-net -> net_tap tspvtN (10.99.0.1, netns tspvgN)
 *   guest virtio_net (10.99.0.2) -> vfio-user -> tspmd l2fwd: net_virtio_emu0 <-> net_tap0 tspvtN (10.99.0.1, netns tspvgN)
 *
 * The namespace, the tap, and the directory of the socket and the blobs (tsp-vfu-*) carry this
 * process's id or a random part and are removed at the end, also on failure. Skips (saying why)
 * only when it cannot run here: not root / not x86-64 Linux, TSPMD_LAB=0, or no network to the
 * Debian mirror on a cold cache.
 */
import type { Test } from 'tap';
import { spawn, execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { runGuest } from './qemu-run.js';
import { withQemu11, qemuCommand, CACHE, type QemuEnv } from './qemu11.js';
import { tempDir } from '../vfio-user/helpers.js';
import { CLI, CHILD_ENV } from '../cli.js';

const BOOT_TIMEOUT_MS = Number(process.env.TSPMD_LAB_BOOT_TIMEOUT ?? 180) * 1000;
const MAC = '02:74:73:70:76:01';
const HOST_IP = '10.99.0.1', GUEST_IP = '10.99.0.2';
/** MiB moved over TCP each way */
const TCP_MIB = 4;
/** the lab's busybox (qemu-vfio-user.sh has it built): httpd, wget and nc in the namespace */
const BUSYBOX = join(CACHE, 'busybox');

/** A process serving the device inside the namespace. */
interface DeviceProcess { stderr(): string; alive(): boolean; stop(): Promise<number | null> }

/** Start the process serving the device on sock in namespace ns, its far side the TAP tap (created by it). */
type StartDevice = (t: Test, ns: string, tap: string, sock: string) => Promise<DeviceProcess>;

withQemu11('QEMU 11.1 guest with Linux virtio_net pings and moves TCP both ways through tspmd emu virtio-net', (t, env) => guestNet(t, env, startEmu));
withQemu11('QEMU 11.1 guest with Linux virtio_net pings and moves TCP both ways through tspmd l2fwd between net_virtio_emu and net_tap', (t, env) => guestNet(t, env, startL2fwd));

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * Run the lab's busybox applet with args in namespace ns (stdin: input) until it exits 0, at most
 * 5 times 1 s apart (the guest's server may not listen yet); resolves with the last exit code, its
 * stderr and the number of tries (never rejects).
 */
async function busyboxInNs(ns: string, args: string[], timeoutMs: number, input = ''): Promise<{ code: number; err: string; tries: number }> {
  let r = { code: -1, err: '' }, tries = 0;
  while (tries < 5 && r.code !== 0) {
    if (tries++ > 0) await sleep(1000);
    r = await new Promise((resolve) => {
      const p = execFile('ip', ['netns', 'exec', ns, BUSYBOX, ...args], { encoding: 'utf8', timeout: timeoutMs }, (e, _out, err) =>
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, err: err.trim() || (e?.message ?? '') }));
      p.stdin?.on('error', () => { /* it exited without reading (refused): its exit code says so */ });
      p.stdin?.end(input);
    });
  }
  return { ...r, tries };
}

/** What the namespace got from the guest's httpd: bytes, SHA-256, seconds, and how it went. */
interface Fetched { code: number; bytes: number; sha256: string; secs: number; tries: number; err: string; reply: number }

/**
 * Fetch the guest's blob with busybox wget in namespace ns into file, then send its SHA-256 to
 * the guest's nc on :8081, which lets the guest go on.
 */
async function fetchFromGuest(ns: string, file: string): Promise<Fetched> {
  const t0 = Date.now();
  const r = await busyboxInNs(ns, ['wget', '-q', '-T', '30', '-O', file, `http://${GUEST_IP}:8080/blob`], 60_000);
  const secs = (Date.now() - t0) / 1000;
  let data = Buffer.alloc(0);
  try { data = readFileSync(file); } catch { /* reported as 0 bytes */ }
  const sum = sha256(data);
  const reply = await busyboxInNs(ns, ['nc', '-w', '10', GUEST_IP, '8081'], 15_000, `${sum}\n`);
  return { code: r.code, bytes: data.length, sha256: sum, secs, tries: r.tries, err: r.err.slice(0, 300), reply: reply.code };
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

/** Boot the guest on the device startDevice serves; check the driver, the link, ping and TCP both ways. */
async function guestNet(t: Test, env: QemuEnv, startDevice: StartDevice): Promise<void> {
  const ns = `tspvg${process.pid}`, tap = `tspvt${process.pid}`;
  ip(['netns', 'add', ns]);
  t.teardown(() => { try { ip(['netns', 'del', ns]); } catch { /* already gone */ } });
  const dir = tempDir(t);
  const sock = join(dir, 'virtio-net.sock');
  const dev = await startDevice(t, ns, tap, sock);
  ip(['-n', ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', tap]);
  ip(['-n', ns, 'link', 'set', tap, 'up']);

  // the namespace's blob, served by busybox httpd on the tap's address for the guest to fetch
  const www = join(dir, 'www');
  mkdirSync(www);
  const blob = randomBytes(TCP_MIB << 20), blobSum = sha256(blob);
  writeFileSync(join(www, 'blob'), blob);
  const httpd = spawn('ip', ['netns', 'exec', ns, BUSYBOX, 'httpd', '-f', '-p', `${HOST_IP}:8080`, '-h', www], { stdio: 'ignore' });
  t.teardown(() => { if (httpd.exitCode === null && httpd.signalCode === null) httpd.kill('SIGKILL'); });

  const { file, args } = qemuCommand(env, sock, { ramMb: 512, initrd: env.INITRD_NET, append: `tsp.mac=${MAC} tsp.ip=${GUEST_IP}/24 tsp.peer=${HOST_IP} tsp.tcp=${TCP_MIB}` });
  let fetched: Promise<Fetched> | undefined;
  const run = await runGuest(file, args, BOOT_TIMEOUT_MS, (fn) => t.teardown(fn), (line) => {
    if (!fetched && line.includes('TSPLAB {"check":"tcp-serve","ok":true')) fetched = fetchFromGuest(ns, join(dir, 'from-guest'));
  });
  const got = await fetched;
  httpd.kill('SIGTERM');
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
  const tcpIn: Record<string, unknown> | undefined = r('tcp-in')[0];
  t.comment(`namespace -> guest: ${TCP_MIB} MiB, SHA-256 ${blobSum} (namespace) / ${String(tcpIn?.sha256)} (guest), ${String(tcpIn?.secs)} s in the guest`);
  check(tcpIn?.ok === true && tcpIn.bytes === blob.length && tcpIn.sha256 === blobSum,
    `the guest fetches ${TCP_MIB} MiB of random bytes over TCP from busybox httpd on ${HOST_IP} in namespace ${ns}: same SHA-256 (${String(tcpIn?.secs)} s)`, { tcpIn, blobSum });
  const serve: Record<string, unknown> | undefined = r('tcp-serve')[0], out: Record<string, unknown> | undefined = r('tcp-out')[0];
  t.comment(`guest -> namespace: ${got?.bytes ?? 0} bytes, SHA-256 ${String(serve?.sha256)} (guest) / ${got?.sha256 ?? 'none'} (namespace), ${got?.secs ?? 0} s in the namespace`);
  check(serve?.ok === true && got !== undefined && got.code === 0 && got.bytes === TCP_MIB << 20 && got.sha256 === serve.sha256,
    `busybox wget in namespace ${ns} fetches the guest's ${TCP_MIB} MiB of random bytes over TCP from its httpd: same SHA-256 (${got?.secs ?? 0} s)`, { serve, got });
  check(out?.ok === true && out.host === got?.sha256, 'the guest receives the namespace\'s SHA-256 over TCP (its nc on :8081) and goes on', { out, reply: got?.reply });
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
