#!/usr/bin/env node
/**
 * The `tspmd` command: `tspmd <app> [EAL options] -- [app options]`. Its tools live beside it in
 * app/ (devices, emu, vfio-user-info, netns, demo); l2fwd, l3fwd and pktgen are the one-file examples of
 * examples/, which also run on their own. This file only dispatches.
 */
import '../drivers/index.js';
import { runApp, type App } from '../lib/app/app.js';
import { l2fwd } from '../examples/l2fwd/l2fwd.js';
import { l3fwd } from '../examples/l3fwd/l3fwd.js';
import { pktgen } from '../examples/pktgen/pktgen.js';
import { devices } from './devices/devices.js';
import { netnsMain } from './netns/netns.js';
import { vfioUserInfo } from './vfio-user/info.js';
import { emu } from './emu/emu.js';
import { demo } from './demo/demo.js';
import { pdump } from './pdump/pdump.js';
import { UsageError } from '../src/options.js';

const APPS: Record<string, App<never>> = {
  demo: demo as App<never>,
  l2fwd: l2fwd as App<never>,
  l3fwd: l3fwd as App<never>,
  pktgen: pktgen as App<never>,
  devices: devices as App<never>,
  'vfio-user-info': vfioUserInfo as App<never>,
  emu: emu as App<never>,
  pdump: pdump as App<never>,
};

function usage(): string {
  return `usage: tspmd <app> [EAL options] -- [app options]\n\napps:\n${Object.values(APPS).map((a) => `  ${a.name.padEnd(10)} ${a.summary}`).join('\n')}\n  ${'netns'.padEnd(10)} up|down [--prefix P]: two network namespaces joined by veths, to forward between (root)\n\n"tspmd <app> --help" shows an app's options and the EAL options.`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h') {
    console.log(usage());
    return name ? 0 : 2;
  }
  if (name === 'netns') {
    try {
      return netnsMain(rest);
    } catch (e) {
      console.error(`tspmd netns: ${(e as Error).message}`);
      return e instanceof UsageError ? 2 : 1;
    }
  }
  const app = APPS[name];
  if (!app) {
    console.error(`tspmd: unknown app "${name}"\n${usage()}`);
    return 2;
  }
  return runApp(app, rest, `tspmd ${name}`);
}

main(process.argv.slice(2)).then((code) => process.exit(code), (e: unknown) => {
  console.error(`tspmd: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  process.exit(1);
});
