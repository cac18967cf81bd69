/**
 * `tspmd demo`: virtio-net both ways on one machine, no hardware, no root. Two processes:
 *
 *   tspmd emu virtio-net (child)           this process: l2fwd
 *   device lcore on CPU A                  forwarding lcore on CPU B
 *   backend net_null0 (generates frames) -- virtio-net over vfio-user -- virtio PMD port 0 <-> port 1 net_null1
 *
 * The device serves on a unix socket in a private temporary directory (mkdtemp: a new directory
 * of this process's own, mode 0700, never one that someone else could have made first, as a
 * predictable /tmp path could be); this process probes it with
 * `-a vfio-user:SOCKET` like any PCI device, then runs l2fwd between the virtio port and a null
 * port with its live statistics table and summary. Traffic flows both ways: the device's backend
 * generates 64-byte frames into the driver's RX queue, and the null port's frames leave through
 * the virtio TX queue into the backend. At the end the device is stopped and the directory removed.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getAffinity } from '../../src/os/libc.js';
import { UsageError } from '../../src/options.js';
import { closeAllPorts } from '../../lib/ethdev/ethdev.js';
import { type App, eachOption, numberOption } from '../../lib/app/app.js';
import { l2fwd } from '../../examples/l2fwd/l2fwd.js';
import { spawnEmu, type EmuChild } from '../../lib/emudev/spawn.js';

/** The demo's options. */
export interface DemoOptions {
  durationS: number;
  periodS: number;
  json: boolean;
}

/** The private directory (made on first use, by socketPath) and the device's socket in it. */
let privateDir: string | null = null;
let socket: string | null = null;

/**
 * The device's socket path: inside a directory made with mkdtemp (unique, 0700, ours) and a
 * tsp-demo-PID directory in it, made on first use, so that only running the demo creates it.
 * Removed by main at the end, and at process exit whatever happened before main.
 */
function socketPath(): string {
  if (socket === null) {
    const dir = mkdtempSync(join(tmpdir(), `tsp-demo-${process.pid}-`));
    privateDir = dir;
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const inner = join(dir, `tsp-demo-${process.pid}`);
    mkdirSync(inner, { mode: 0o700 }); // inside our own directory: nobody else can have made it
    socket = join(inner, 'virtio-net.sock');
  }
  return socket;
}

/** Remove the private directory (and the socket in it). */
function removePrivateDir(): void {
  if (privateDir !== null) rmSync(privateDir, { recursive: true, force: true });
}
const DEVICE_MAC = '02:74:73:70:64:01';
const START_TIMEOUT_MS = 30_000;

/** CPUs for the device's lcore and our forwarding lcore: different ones when there are two. */
function cpuPlan(): { device: number; mine: number } {
  const cpus = getAffinity();
  return { device: cpus[0], mine: cpus[cpus.length > 1 ? 1 : 0] };
}

/** Start the device process; resolves once it serves, rejects with its error output otherwise. */
function startDevice(cpus: { device: number; mine: number }): Promise<EmuChild> {
  return spawnEmu(process.argv[1], [`virtio-net,mac=${DEVICE_MAC}`, '--socket', socketPath(), '--no-huge', '-l', `0@${cpus.mine},1@${cpus.device}`,
    '--main-lcore', '0', '--file-prefix', `tsp-demo-emu-${process.pid}`, '--vdev', 'net_null0,copy=1'], { timeoutMs: START_TIMEOUT_MS });
}

const plan = cpuPlan();

/** The demo app (tspmd demo). */
export const demo: App<DemoOptions> = {
  name: 'demo',
  summary: 'virtio-net both ways, no hardware: an emulated virtio-net device (own process) and l2fwd on the virtio PMD.',
  help: `  --duration SEC      run for SEC seconds (default 5)
  -T SEC              statistics period, 0 to disable (default 1)
  --json              print l2fwd's final summary as one JSON line`,
  ownFlags: { '--duration': true, '-T': true, '--json': false },
  // Both main threads share the forwarding lcore's CPU (they are nearly idle): the device's lcore
  // has the other CPU to itself, and a worker starting up never waits behind a busy poll loop.
  ealDefaults: {
    noHuge: true, vdevs: ['net_null1'],
    // a getter: the directory is made when the demo's EAL is set up, not when the module loads
    get allow(): string[] { return [`vfio-user:${socketPath()}`]; },
    lcores: [{ id: 0, cpu: plan.mine }, { id: 1, cpu: plan.mine }], mainLcore: 0,
  },
  parse(args) {
    const o: DemoOptions = { durationS: 5, periodS: 1, json: false };
    eachOption(args, (flag, value) => {
      switch (flag) {
        case '--duration': o.durationS = numberOption('--duration', value(), 0.5, 1e7); break;
        case '-T': o.periodS = numberOption('-T', value(), 0, 86400); break;
        case '--json': o.json = true; break;
        default: throw new UsageError(`unknown demo option "${flag}" (see --help)`);
      }
    });
    return o;
  },
  async main(eal, o) {
    const info = (line: string): void => void (o.json ? process.stderr : process.stdout).write(line + '\n');
    const sock = socketPath();
    let device: EmuChild | null = null;
    try {
      info(`demo: starting the emulated virtio-net device (tspmd emu virtio-net, backend net_null0, lcore on CPU ${plan.device}) on ${sock}`);
      device = await startDevice(plan);
      info(`demo: l2fwd between the virtio PMD (vfio-user:${sock}) and net_null1, forwarding lcore on CPU ${plan.mine}`);
      info('demo: both null backends make a frame whenever they are polled, more than the other side takes: the excess is freed and counted, as "not sent" on net_null1\'s line (the JSON\'s "dropped") and as rx_nobuf_drops in the device\'s last line; expected, not a fault');
      const args = ['-T', String(o.periodS), '--duration', String(o.durationS), ...(o.json ? ['--json'] : [])];
      return await l2fwd.main(eal, l2fwd.parse(args));
    } finally {
      // The ports reset the device (it stops DMA) while it is still there to hear it.
      closeAllPorts();
      if (device) {
        const before = device.stderr().length;
        await device.stop();
        const last = device.stderr().slice(before).trim().split('\n').filter((l) => l.trim()).slice(-3);
        for (const l of last) info(`demo: device: ${l}`);
      }
      removePrivateDir();
    }
  },
};
