/**
 * `tspmd emu <device>[,key=value...] --socket PATH`: serve an emulated device over vfio-user on a
 * unix socket (mode 0600) until SIGINT/SIGTERM, then remove the socket. One client at a time; when
 * a client leaves, the device is reset and the next one is served. The device's poll loop runs on
 * the first worker lcore (-l; by default the second CPU), like a PMD's. Devices: see EMU_DEVICES.
 *
 * Prints one line "serving <device> on <path>" when ready (scripts wait for it).
 */
import { eachOption, type App } from '../../lib/app/app.js';
import { UsageError } from '../../src/options.js';
import type { Eal } from '../../src/eal.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import type { EmuDevice, UnsealedDmaPolicy } from '../../lib/emudev/emudev.js';
import { DmatestDevice } from '../../drivers/emu/dmatest/dmatest.js';
import { createVirtioNetEmu, VIRTIO_NET_SUMMARY } from './virtio-net.js';
import { VIRTIO_NET_ARGS } from '../../drivers/emu/virtio-net/layout.js';
import { splitDevargs, checkDevargs, devargsHelp, type DevargsSchema } from '../../lib/kvargs/kvargs.js';
import { appArgv, ownFlagsWithPositionals } from '../vfio-user/positional.js';
import { probePorts } from '../../drivers/bus/probe.js';
import type { EthDev } from '../../lib/ethdev/ethdev.js';

/** An emulated device the emu app can serve. */
export interface EmuProvider {
  emu: EmuDevice;
  /** Start the device's poll loop on worker lcore `lcore` of eal (resolves once it runs). */
  start(eal: Eal, lcore: number): Promise<void>;
  /** Stop the poll loop and release the device. */
  close(): Promise<void>;
}

/** A device kind `tspmd emu` can serve. */
export interface EmuDeviceKind {
  summary: string;
  /** its key=value arguments: checked when the command line is parsed, listed by --help */
  schema: DevargsSchema;
  /** Create the device from its key=value arguments (unknown keys: UsageError) and the app's ports (backends). */
  create: (eal: Eal, args: Record<string, string>, ports: readonly EthDev[]) => Promise<EmuProvider> | EmuProvider;
}

/** The devices `tspmd emu` knows, by name. */
export const EMU_DEVICES: Record<string, EmuDeviceKind> = {
  dmatest: { summary: 'copy + Adler-32 DMA engine: doorbell in a sparse-mmapped BAR page, ring in client memory, MSI-X', schema: {}, create: () => new DmatestDevice() },
  'virtio-net': { summary: VIRTIO_NET_SUMMARY, schema: VIRTIO_NET_ARGS, create: createVirtioNetEmu },
};

/** The app's options. */
export interface EmuOptions {
  device: string;
  /** the device's key=value arguments */
  args: Record<string, string>;
  socket: string;
  /** keep the device state when a client leaves (default: reset it) */
  noReset: boolean;
  /** client memory that cannot be sealed against shrinking: map it, reach it by message, or refuse it */
  unsealedDma: UnsealedDmaPolicy;
}

const UNSEALED_DMA: readonly UnsealedDmaPolicy[] = ['map', 'message', 'refuse'];

const NAMED = { '--socket': true, '--no-reset': false, '--unsealed-dma': true };

/** The emu app. */
export const emu: App<EmuOptions> = {
  name: 'emu',
  summary: 'serve an emulated device over vfio-user: tspmd emu <device> --socket PATH',
  help: `  <device>[,k=v...]   ${Object.entries(EMU_DEVICES).map(([n, d]) => `${n}: ${d.summary}${Object.keys(d.schema).length > 0 ? '\n' + devargsHelp(d.schema, '                       ') : ''}`).join('\n                     ')}
  --socket PATH      unix socket to serve on (created mode 0600, removed at exit)
  --no-reset         keep device state when a client disconnects (default: reset)
  --unsealed-dma map|message|refuse
                     client memory that cannot be sealed against shrinking (hugetlbfs or tmpfs
                     files, memfds without MFD_ALLOW_SEALING): reach it with DMA_READ/WRITE
                     messages (default: a client that truncates mapped memory kills this process
                     with SIGBUS, which Node cannot survive), map it anyway (faster, trusts the
                     client; warned), or refuse the DMA_MAP. Sealed memfds are always mapped`,
  /** Named flags plus the positionals of this command line, so runApp moves them after "--". */
  get ownFlags(): Record<string, boolean> {
    return ownFlagsWithPositionals(appArgv(), NAMED);
  },
  ealDefaults: { noHuge: true },
  /** <device> --socket PATH [--no-reset] [--unsealed-dma POLICY]. */
  parse(argv: string[]): EmuOptions {
    let device: string | null = null, socket: string | null = null, noReset = false, unsealedDma: UnsealedDmaPolicy = 'message';
    eachOption(argv, (flag, value) => {
      if (flag === '--socket') socket = value();
      else if (flag === '--no-reset') noReset = true;
      else if (flag === '--unsealed-dma') {
        const v = value();
        if (!(UNSEALED_DMA as readonly string[]).includes(v)) throw new UsageError(`--unsealed-dma "${v}": use ${UNSEALED_DMA.join(', ')}`);
        unsealedDma = v as UnsealedDmaPolicy;
      }
      else if (!flag.startsWith('-') && device === null) device = flag;
      else throw new UsageError(`unknown emu option "${flag}" (see --help)`);
    });
    if (device === null) throw new UsageError(`name a device to emulate: ${Object.keys(EMU_DEVICES).join(', ')}`);
    const { name, raw: args } = splitDevargs(device as string, 'device');
    if (!(name in EMU_DEVICES)) throw new UsageError(`unknown device "${name}"; known: ${Object.keys(EMU_DEVICES).join(', ')}`);
    checkDevargs(args, EMU_DEVICES[name].schema, { where: `device "${device as string}"`, driver: name }); // mistakes show before the EAL starts
    if (socket === null) throw new UsageError('--socket PATH is required');
    return { device: name, args, socket, noReset, unsealedDma };
  },
  /** Serve until SIGINT/SIGTERM. */
  async main(eal, opts): Promise<number> {
    const lcore = eal.lcores.workers[0];
    if (lcore === undefined) throw new UsageError(`the device's poll loop needs a worker lcore: give two with -l, e.g. -l 0-1 (this process may use CPUs ${eal.lcores.cpuOf(eal.lcores.main)} only)`);
    const dev = await EMU_DEVICES[opts.device].create(eal, opts.args, await probePorts(eal));
    dev.emu.unsealedDma = opts.unsealedDma;
    let server: VfioUserServer;
    try {
      server = new VfioUserServer(dev.emu, opts.socket, { resetOnDisconnect: !opts.noReset });
      await dev.start(eal, lcore);
      server.start();
    } catch (e) {
      await dev.close();
      console.error(`tspmd emu: ${(e as Error).message}`);
      return 1;
    }
    console.log(`serving ${opts.device} on ${opts.socket}`);
    const sig = await new Promise<NodeJS.Signals>((resolve) => eal.handleSignals(resolve));
    eal.handleSignals();
    await server.close();
    await dev.close();
    console.error(`tspmd emu: ${sig}: stopped after ${server.stats.connections} connection(s), ${server.stats.messages} message(s)`);
    return 0;
  },
};
