/**
 * virtio benchmark: a device in one process generating 64-byte packets into a virtio-net RX queue
 * on one lcore, a driver in another process receiving them on one lcore, over shared memory.
 *
 *   tspmd: `tspmd emu virtio-net` (device lcore on CPU 0, backend net_null generating 64-byte frames)
 *          <- vfio-user socket, guest memory by fd ->  virtio PMD rx-only loop (lcore on CPU 1)
 *   DPDK:  testpmd --vdev net_vhost0 txonly (core 1)  <- vhost-user ->  testpmd virtio_user rxonly (core 0)
 *
 * Both figures are what the receiving driver counts per second, median over the periods after a
 * warm-up (the tspmd guest: bench/virtio-guest.ts, shared with bench/vswitch.ts). The two setups
 * run one after the other in the same invocation.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnEmu, type EmuChild } from '../index.js';
import { ensureDpdk, ensureHugepages, median, runTestpmd, TESTPMD_HUGEPAGES } from './dpdk.js';
import { sampleRate, withGuest } from './virtio-guest.js';

const WARMUP_S = 2;
const CLI = fileURLToPath(new URL('../app/tspmd' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url));

/** Start `tspmd emu virtio-net` with a generating null backend; resolves once it serves. */
function startDevice(sock: string, prefix: string): Promise<EmuChild> {
  return spawnEmu(CLI, ['virtio-net', '--socket', sock, '--no-huge', '-l', '0@1,1@0', '--main-lcore', '0', '--file-prefix', prefix, '--vdev', 'net_null0,size=64'],
    { env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' } });
}

/** tspmd: the PMD's receive rate (Mpps, median of 1 s periods after the warm-up). */
async function tspmdRx(seconds: number): Promise<{ mpps: number; periods: number[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'tsp-bench-virtio-'));
  const sock = join(dir, 'virtio-net.sock');
  const dev = await startDevice(sock, `tspbvd${process.pid}`);
  try {
    return await withGuest(sock, `tspbvp${process.pid}`, 'rx', (port) => sampleRate(() => port.stats().ipackets, 'the virtio PMD receiving', WARMUP_S, seconds));
  } finally {
    await dev.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** DPDK: vhost txonly in one testpmd, virtio_user rxonly in another; virtio_user's Rx-pps (Mpps). */
async function dpdkRx(seconds: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'tsp-bench-vhost-'));
  const sock = join(dir, 'vhost.sock');
  try {
    const vhost = runTestpmd({
      vdevs: [`net_vhost0,iface=${sock},queues=1`], forwardMode: 'txonly', seconds: WARMUP_S + seconds + 8,
      lcores: '0,1', mainLcore: 0, extraApp: ['--txpkts=64'],
    });
    const deadline = Date.now() + 30_000;
    while (!existsSync(sock)) {
      if (Date.now() > deadline) throw new Error(`dpdk-testpmd vhost did not create ${sock} within 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const user = await runTestpmd({
      vdevs: [`net_virtio_user0,path=${sock},queues=1`], forwardMode: 'rxonly', seconds: WARMUP_S + seconds,
      lcores: '0,1', mainLcore: 1, extraEal: ['--single-file-segments'],
    });
    await vhost;
    // drop the warm-up periods after traffic started
    const rates = user.periods.slice(user.warmupPeriods + WARMUP_S).map((p) => p.reduce((a, s) => a + s.rxPps, 0) / 1e6);
    return rates.length ? median(rates) : user.rxMpps;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The virtio figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number>> {
  const seconds = args.includes('--quick') ? 4 : 8;
  // --only dpdk|tspmd: measure one side (the ratio is then not computed)
  const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : null;
  if (only !== null && only !== 'dpdk' && only !== 'tspmd') throw new Error(`--only takes dpdk or tspmd, not "${only}"`);
  ensureDpdk();
  const restore = ensureHugepages(2 * TESTPMD_HUGEPAGES);
  try {
    let dpdk = NaN, tspmd = NaN;
    if (only !== 'tspmd') {
      console.log(`DPDK: testpmd vhost-user txonly -> testpmd virtio_user rxonly, 64-byte packets, ${seconds} s ...`);
      dpdk = await dpdkRx(seconds);
      console.log(`  dpdk: ${dpdk.toFixed(2)} Mpps`);
    }
    if (only !== 'dpdk') {
      console.log(`tspmd: emu virtio-net (null backend, 64-byte packets) -> virtio PMD rx-only over vfio-user, ${seconds} s ...`);
      const t = await tspmdRx(seconds);
      tspmd = t.mpps;
      console.log(`  tspmd: ${t.mpps.toFixed(2)} Mpps (periods: ${t.periods.map((p) => p.toFixed(2)).join(' ')})`);
    }
    if (only !== null) return only === 'dpdk' ? { dpdk_mpps: Number(dpdk.toFixed(3)) } : { tspmd_mpps: Number(tspmd.toFixed(3)) };
    const ratio = tspmd / dpdk;
    console.log(`ratio tspmd/dpdk: ${ratio.toFixed(2)}`);
    return { tspmd_mpps: Number(tspmd.toFixed(3)), dpdk_mpps: Number(dpdk.toFixed(3)), ratio: Number(ratio.toFixed(3)) };
  } finally {
    restore();
  }
}
