/**
 * virtio benchmark: a device in one process generating 64-byte packets into a virtio-net RX queue
 * on one lcore, a driver in another process receiving them on one lcore, over shared memory.
 *
 *   tspmd: `tspmd emu virtio-net` (device lcore on CPU 0, backend net_null generating 64-byte frames)
 *          <- vfio-user socket, guest memory by fd ->  virtio PMD rx-only loop (lcore on CPU 1)
 *   DPDK:  testpmd --vdev net_vhost0 txonly (core 1)  <- vhost-user ->  testpmd virtio_user rxonly (core 0)
 *
 * Both figures are what the receiving driver counts per second, median over the periods after a
 * warm-up. The two setups run one after the other in the same invocation.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Eal, parseEalArgs, probeDeviceBuses, listPorts, openRxQueue, pktmbufPoolCreate, pktmbufFreeBulk, spawnEmu,
  type EmuChild, type LcoreContext, type PortData,
} from '../index.js';
import { ensureDpdk, ensureHugepages, median, runTestpmd, TESTPMD_HUGEPAGES } from './dpdk.js';

const WARMUP_S = 2;
const CLI = fileURLToPath(new URL('../app/tspmd' + (import.meta.url.endsWith('.ts') ? '.ts' : '.js'), import.meta.url));

/** The receive loop on the PMD's lcore: take bursts and free them, until stopped. */
export async function rxOnly(arg: { port: PortData; burst: number }, ctx: LcoreContext): Promise<number> {
  const rx = await openRxQueue(arg.port, 0);
  const pkts = new Uint32Array(arg.burst);
  let total = 0;
  while (!ctx.stopRequested()) {
    const n = rx.rxBurst(pkts, arg.burst);
    if (n > 0) {
      pktmbufFreeBulk(pkts, n);
      total += n;
    }
  }
  return total;
}

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
  let eal: Eal | null = null;
  try {
    eal = new Eal(parseEalArgs(['--no-huge', '-l', '0-1', '--main-lcore', '0', '--file-prefix', `tspbvp${process.pid}`, '-a', `vfio-user:${sock}`]));
    await probeDeviceBuses(eal);
    const port = listPorts().find((p) => p.info().driverName.includes('virtio'));
    if (!port) throw new Error(`the virtio PMD did not probe vfio-user:${sock} (ports: ${listPorts().map((p) => p.name).join(', ') || 'none'})`);
    const pool = pktmbufPoolCreate(eal.memory, 'bench_virtio', 8191, { cacheSize: 256 });
    port.configure({ rxQueues: 1, txQueues: 1 });
    port.rxQueueSetup(0, 256, pool);
    port.txQueueSetup(0, 256);
    port.start();
    const lcore = eal.lcores.workers[0];
    const done = eal.lcores.launch(lcore, import.meta.url, rxOnly, { port: port.data(), burst: 32 });
    const periods: number[] = [];
    let last = port.stats().ipackets, t0 = performance.now();
    for (let s = 0; s < WARMUP_S + seconds; s++) {
      await new Promise((r) => setTimeout(r, 1000));
      const now = port.stats().ipackets, t1 = performance.now();
      if (s >= WARMUP_S) periods.push((now - last) / ((t1 - t0) / 1000) / 1e6);
      last = now;
      t0 = t1;
    }
    eal.lcores.requestStop();
    await done;
    port.close();
    return { mpps: median(periods), periods };
  } finally {
    if (eal) await eal.close();
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
