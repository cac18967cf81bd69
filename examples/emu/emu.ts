/**
 * `tspmd emu <device> --socket PATH`: serve an emulated device over vfio-user on a unix socket
 * (mode 0600) until SIGINT/SIGTERM, then remove the socket. One client at a time; when a client
 * leaves, the device is reset and the next one is served. Devices: dmatest.
 *
 * Prints one line "serving <device> on <path>" when ready (scripts wait for it).
 */
import { eachOption, type App } from '../common/app.js';
import { UsageError } from '../../src/options.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import type { EmuDevice } from '../../lib/emudev/emudev.js';
import { DmatestDevice } from '../../drivers/emu/dmatest/dmatest.js';
import { appArgv, ownFlagsWithPositionals } from '../vfio-user/positional.js';

/** An emulated device the emu app can serve. */
export interface EmuProvider {
  emu: EmuDevice;
  close(): void;
}

/** The devices `tspmd emu` knows, by name. */
export const EMU_DEVICES: Record<string, { summary: string; create: () => EmuProvider }> = {
  dmatest: { summary: 'copy + Adler-32 DMA engine: doorbell in a sparse-mmapped BAR page, ring in client memory, MSI-X', create: () => new DmatestDevice() },
};

/** The app's options. */
export interface EmuOptions {
  device: string;
  socket: string;
  /** keep the device state when a client leaves (default: reset it) */
  noReset: boolean;
}

const NAMED = { '--socket': true, '--no-reset': false };

/** The emu app. */
export const emu: App<EmuOptions> = {
  name: 'emu',
  summary: 'serve an emulated device over vfio-user: tspmd emu <device> --socket PATH',
  help: `  <device>           ${Object.entries(EMU_DEVICES).map(([n, d]) => `${n}: ${d.summary}`).join('\n                     ')}
  --socket PATH      unix socket to serve on (created mode 0600, removed at exit)
  --no-reset         keep device state when a client disconnects (default: reset)`,
  /** Named flags plus the positionals of this command line, so runApp moves them after "--". */
  get ownFlags(): Record<string, boolean> {
    return ownFlagsWithPositionals(appArgv(), NAMED);
  },
  ealDefaults: { noHuge: true },
  /** <device> --socket PATH [--no-reset]. */
  parse(args: string[]): EmuOptions {
    let device: string | null = null, socket: string | null = null, noReset = false;
    eachOption(args, (flag, value) => {
      if (flag === '--socket') socket = value();
      else if (flag === '--no-reset') noReset = true;
      else if (!flag.startsWith('-') && device === null) device = flag;
      else throw new UsageError(`unknown emu option "${flag}" (see --help)`);
    });
    if (device === null) throw new UsageError(`name a device to emulate: ${Object.keys(EMU_DEVICES).join(', ')}`);
    if (!(device in EMU_DEVICES)) throw new UsageError(`unknown device "${device}"; known: ${Object.keys(EMU_DEVICES).join(', ')}`);
    if (socket === null) throw new UsageError('--socket PATH is required');
    return { device, socket, noReset };
  },
  /** Serve until SIGINT/SIGTERM. */
  async main(eal, opts): Promise<number> {
    const dev = EMU_DEVICES[opts.device].create();
    const server = new VfioUserServer(dev.emu, opts.socket, { resetOnDisconnect: !opts.noReset });
    try {
      server.start();
    } catch (e) {
      dev.close();
      console.error(`tspmd emu: ${(e as Error).message}`);
      return 1;
    }
    console.log(`serving ${opts.device} on ${opts.socket}`);
    const sig = await new Promise<NodeJS.Signals>((resolve) => eal.handleSignals(resolve));
    eal.handleSignals();
    await server.close();
    dev.close();
    console.error(`tspmd emu: ${sig}: stopped after ${server.stats.connections} connection(s), ${server.stats.messages} message(s)`);
    return 0;
  },
};
