/**
 * vswitch benchmark: a virtual switch between a guest's virtio-net and a wire port, both
 * directions, one core per side, beside DPDK's vhost switch, in the same run.
 *
 *   (a) guest to wire
 *     tspmd: net_virtio over vfio-user (this process, txonly lcore)  ->  `tspmd l2fwd --vdev
 *            net_virtio_emu0,socket=S --vdev net_null0,no-rx=1` (back-end PMD + l2fwd)  ->  net_null
 *     DPDK:  testpmd net_virtio_user txonly  ->  testpmd --vdev net_vhost0,iface=S --vdev
 *            net_null0,no-rx=1, mac fwd  ->  net_null
 *   (b) wire to guest
 *     tspmd: net_null0 (generating 64 B)  ->  l2fwd + net_virtio_emu0  ->  net_virtio rxonly lcore
 *     DPDK:  net_null0 (generating 64 B)  ->  testpmd mac fwd + net_vhost0  ->  virtio_user rxonly
 *
 * The figure: the rate the switch delivers, the same counter on both sides: its delivering port's
 * opackets (net_null0 in (a), the guest-facing port in (b)), read from the switch process's
 * telemetry socket (/ethdev/stats, DPDK's protocol on both) once a second, median of the periods
 * after the counter first moved and a 2 s warm-up (bench/virtio-guest.ts sampleRate).
 *
 * One direction at a time: l2fwd and testpmd's mac fwd both forward both ways, so the other
 * direction is kept silent at its source, alike on both sides: in (a) the wire is net_null with
 * no-rx=1 (DPDK's devarg; tspmd's net_null has the same), and the guest only sends (testpmd's
 * txonly and tspmd's txOnly loop never poll RX; nothing is forwarded to it anyway); in (b) the
 * guest only receives (rxonly: it never transmits, so the guest-facing port's RX stays empty).
 * Both switches still poll both ports on their one forwarding core, as they would in service.
 *
 * CPU placement (2 vCPUs): the switch's forwarding core on CPU 0, the guest's on CPU 1, on both
 * sides; the main threads (statistics, telemetry, vfio-user control) on the other CPU, where they
 * are idle but for a sample a second: tspmd's switch `-l 0@1,1@0 --main-lcore 0`, its guest `-l 0-1
 * --main-lcore 0`; DPDK's switch `-l 0,1 --main-lcore 1`, its guest `-l 0,1 --main-lcore 0`.
 * Defaults elsewhere on both sides: burst 32, the guest's rings of 256, features as negotiated (the
 * back-end's and net_vhost's defaults), MAC rewriting on (l2fwd's default, testpmd's mac mode).
 *
 * Rounds alternate which side goes first; each direction's ratio is the median of the rounds'
 * ratios. Options: --rounds N (default 3), --quick (1 round, 4 s periods), --no-dpdk / --no-tspmd
 * (one side only, no ratios). The tspmd side needs the back-end PMD net_virtio_emu.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runtimeDir, TelemetryClient, TELEMETRY_SOCKET } from '../index.js';
import { ensureDpdk, ensureHugepages, median, runTestpmd, TESTPMD_HUGEPAGES } from './dpdk.js';
import { loadAvg, roundsOptions } from './options.js';
import { sampleRate, withGuest } from './virtio-guest.js';

const WARMUP_S = 2;
const EXT = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
const CLI = fileURLToPath(new URL(`../app/tspmd${EXT}`, import.meta.url));
const HELP = `usage: npm run bench -- vswitch [--json] [--quick] [--rounds N] [--no-dpdk | --no-tspmd]
  (a) guest to wire and (b) wire to guest through a switch on one core, tspmd (net_virtio_emu +
  l2fwd, net_virtio guest over vfio-user) beside DPDK (net_vhost + testpmd mac, virtio_user guest)`;

type Direction = 'a' | 'b';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Wait until path exists; throws after timeoutS, or at once when ended() says the process serving it is gone. */
async function waitFor(path: string, what: string, ended: () => string | null, timeoutS = 60): Promise<void> {
  const end = Date.now() + timeoutS * 1000;
  while (!existsSync(path)) {
    const gone = ended();
    if (gone !== null) throw new Error(`${what} ended before creating ${path}: ${gone}`);
    if (Date.now() > end) throw new Error(`${what} did not create ${path} within ${timeoutS} s`);
    await sleep(100);
  }
}

/**
 * The opackets counter of the switch's port whose name starts with `portName`, read over the
 * switch's telemetry socket (one connection); close() when done.
 */
async function switchCounter(prefix: string, portName: string, what: string, ended: () => string | null): Promise<{ read: () => Promise<number>; close: () => void }> {
  const sock = join(runtimeDir(prefix), TELEMETRY_SOCKET);
  await waitFor(sock, what, ended);
  const c = new TelemetryClient(sock);
  try {
    await c.recv();
    const ask = async (req: string): Promise<unknown> => {
      const r = await c.ask(req);
      if (r === null) throw new Error(`${what}: its telemetry socket ${sock} closed (the switch ended?)`);
      return Object.values(r)[0];
    };
    const ids = (await ask('/ethdev/list')) as number[];
    let id = -1;
    const names: string[] = [];
    for (const i of ids) {
      const name = String(((await ask(`/ethdev/info,${i}`)) as { name?: unknown }).name);
      names.push(name);
      if (id < 0 && name.startsWith(portName)) id = i;
    }
    if (id < 0) throw new Error(`${what}: no port named ${portName}* (ports: ${names.join(', ') || 'none'})`);
    const read = async (): Promise<number> => Number(((await ask(`/ethdev/stats,${id}`)) as { opackets?: unknown }).opackets);
    return { read, close: () => c.close() };
  } catch (e) {
    c.close();
    throw e;
  }
}

/** tspmd: `tspmd l2fwd` with the back-end PMD as the switch, this process's net_virtio as the guest; the switch's delivery rate (Mpps). */
async function tspmdRun(dir: Direction, seconds: number): Promise<number> {
  const tmp = mkdtempSync(join(tmpdir(), 'tsp-bench-vswitch-'));
  const sock = join(tmp, 'vswitch.sock');
  const prefix = `tspbvs${process.pid}`;
  const wire = dir === 'a' ? 'net_null0,no-rx=1' : 'net_null0,size=64';
  const argv = [...process.execArgv, CLI, 'l2fwd', '-l', '0@1,1@0', '--main-lcore', '0', '--no-huge', '--file-prefix', prefix,
    '--vdev', `net_virtio_emu0,socket=${sock}`, '--vdev', wire, '--', '-T', '0'];
  const sw = spawn(process.execPath, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  sw.stderr!.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-4000); });
  const exited = new Promise<void>((r) => sw.once('close', () => r()));
  const killNow = (): void => { if (sw.exitCode === null && sw.signalCode === null) sw.kill('SIGKILL'); };
  process.on('exit', killNow);
  const ended = (): string | null => {
    if (sw.exitCode === null && sw.signalCode === null) return null;
    const hint = err.includes('unknown device "net_virtio_emu0"') ? ' (this tree has no back-end PMD net_virtio_emu: measure DPDK alone with --no-tspmd)' : '';
    return `${sw.signalCode ?? `exit code ${sw.exitCode}`}: ${err.trim().split('\n').slice(-3).join(' | ')}${hint}`;
  };
  const what = `tspmd l2fwd (${wire}, net_virtio_emu0)`;
  try {
    await waitFor(sock, what, ended);
    const counter = await switchCounter(prefix, dir === 'a' ? 'net_null0' : 'net_virtio_emu0', what, ended);
    try {
      const r = await withGuest(sock, `tspbvg${process.pid}`, dir === 'a' ? 'tx' : 'rx', () => sampleRate(counter.read, what, WARMUP_S, seconds));
      return r.mpps;
    } finally {
      counter.close();
    }
  } finally {
    sw.kill('SIGINT');
    await Promise.race([exited, sleep(15_000)]);
    killNow();
    process.removeListener('exit', killNow);
    rmSync(runtimeDir(prefix), { recursive: true, force: true });
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** DPDK: testpmd net_vhost + net_null mac fwd as the switch, testpmd virtio_user as the guest; the switch's delivery rate (Mpps). */
async function dpdkRun(dir: Direction, seconds: number): Promise<number> {
  const tmp = mkdtempSync(join(tmpdir(), 'tsp-bench-vswitch-'));
  const sock = join(tmp, 'vhost.sock');
  const prefix = `tspbvsd${process.pid}`;
  const wire = dir === 'a' ? 'net_null0,no-rx=1' : 'net_null0,size=64';
  let finish = (): void => {};
  const until = new Promise<void>((r) => { finish = r; });
  const what = `dpdk-testpmd switch (net_vhost0, ${wire})`;
  let swEnded: string | null = null;
  const sw = runTestpmd({
    vdevs: [`net_vhost0,iface=${sock},queues=1`, wire], forwardMode: 'mac', seconds: 600, until,
    lcores: '0,1', mainLcore: 1, filePrefix: prefix,
  });
  sw.then(() => { swEnded ??= 'exited'; }, (e: unknown) => { swEnded = e instanceof Error ? e.message : String(e); });
  let guest: ReturnType<typeof runTestpmd> | null = null;
  let measured = false;
  try {
    await waitFor(sock, what, () => swEnded);
    guest = runTestpmd({
      vdevs: [`net_virtio_user0,path=${sock},queues=1`], forwardMode: dir === 'a' ? 'txonly' : 'rxonly', seconds: 600, until,
      lcores: '0,1', mainLcore: 0, extraEal: ['--single-file-segments'], ...(dir === 'a' ? { extraApp: ['--txpkts=64'] } : {}),
    });
    const counter = await switchCounter(prefix, dir === 'a' ? 'net_null0' : 'net_vhost0', what, () => swEnded);
    try {
      // A guest that fails ends the measurement with its error.
      const guestFailed = guest.then(() => { throw new Error('dpdk-testpmd guest (virtio_user) ended before the measurement'); });
      guestFailed.catch(() => {}); // settles after the race too: not an unhandled rejection
      const r = await Promise.race([sampleRate(counter.read, what, WARMUP_S, seconds), guestFailed]);
      measured = true;
      return r.mpps;
    } finally {
      counter.close();
    }
  } finally {
    finish();
    const settled = await Promise.allSettled([sw, ...(guest ? [guest] : [])]);
    rmSync(tmp, { recursive: true, force: true });
    // After a measurement a testpmd that failed to stop cleanly is worth a line; before one, its
    // error is already the one thrown.
    if (measured) for (const s of settled) if (s.status === 'rejected') console.error(`vswitch: ${(s.reason as Error).message.split('\n')[0]}`);
  }
}

/** The vswitch figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | number[] | string>> {
  const o = roundsOptions('vswitch', args, HELP, { rounds: 3, quickRounds: 1, maxRounds: 20, noTspmd: true });
  if (!o) return {};
  const seconds = o.quick ? 4 : 8;
  if (o.withDpdk) ensureDpdk();
  const restore = o.withDpdk ? ensureHugepages(2 * TESTPMD_HUGEPAGES) : () => {};
  const figures: Record<Direction, { tspmd: number[]; dpdk: number[]; ratios: number[] }> = {
    a: { tspmd: [], dpdk: [], ratios: [] }, b: { tspmd: [], dpdk: [], ratios: [] },
  };
  const label = { a: '(a) guest to wire', b: '(b) wire to guest' };
  try {
    for (let r = 1; r <= o.rounds; r++) {
      for (const dir of ['a', 'b'] as const) {
        const order: Array<'dpdk' | 'tspmd'> = r % 2 === 1 ? ['dpdk', 'tspmd'] : ['tspmd', 'dpdk'];
        const got: Record<string, number> = {};
        for (const side of order) {
          if (side === 'dpdk' ? !o.withDpdk : !o.withTspmd) continue;
          console.log(`round ${r}/${o.rounds} ${label[dir]}: ${side === 'dpdk' ? 'DPDK virtio_user <-> net_vhost + testpmd mac <-> net_null' : 'tspmd net_virtio <-> net_virtio_emu + l2fwd <-> net_null'}, ${seconds} s ...`);
          got[side] = side === 'dpdk' ? await dpdkRun(dir, seconds) : await tspmdRun(dir, seconds);
          console.log(`  ${side}: ${got[side].toFixed(2)} Mpps`);
          figures[dir][side].push(Number(got[side].toFixed(3)));
        }
        if (o.withDpdk && o.withTspmd) {
          const ratio = got.tspmd / got.dpdk;
          figures[dir].ratios.push(Number(ratio.toFixed(3)));
          console.log(`  ratio tspmd/dpdk: ${ratio.toFixed(3)}`);
        }
      }
    }
  } finally {
    restore();
  }
  const out: Record<string, number | number[] | string> = {};
  for (const dir of ['a', 'b'] as const) {
    const f = figures[dir];
    if (o.withTspmd) out[`${dir}_tspmd_mpps`] = Number(median(f.tspmd).toFixed(3));
    if (o.withDpdk) out[`${dir}_dpdk_mpps`] = Number(median(f.dpdk).toFixed(3));
    if (f.ratios.length) {
      out[`${dir}_ratio`] = Number(median(f.ratios).toFixed(3));
      out[`${dir}_ratios`] = f.ratios;
      console.log(`${label[dir]}: ratios ${f.ratios.join(' ')}; median ${median(f.ratios).toFixed(3)}`);
    }
  }
  out.rounds = o.rounds;
  out.seconds = seconds;
  out.loadavg = loadAvg().join(' ');
  return out;
}
