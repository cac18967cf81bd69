/**
 * `tspmd vfio-user-info SOCKET [--json]`: connect to a vfio-user server as a client and print the
 * negotiated version and capabilities, the device info, every region (size, flags, mmap offset,
 * sparse mmap areas) and every IRQ index (count, flags). Like lspci for a vfio-user device. It maps
 * no DMA memory and changes nothing on the device.
 */
import { eachOption, type App } from '../../lib/app/app.js';
import { UsageError } from '../../src/options.js';
import { pciIrqName, pciRegionName } from '../../src/iommu/device.js';
import { VfioUserClient } from '../../lib/vfio-user/client.js';
import { appArgv, ownFlagsWithPositionals } from './positional.js';

/** The app's options. */
export interface InfoOptions {
  socket: string;
  json: boolean;
}

/** What vfio-user-info reports (the --json shape). */
export interface VfioUserInfo {
  socket: string;
  version: { major: number; minor: number };
  capabilities: Record<string, unknown>;
  device: { flags: number; pci: boolean; reset: boolean; num_regions: number; num_irqs: number };
  regions: Array<{ index: number; name: string; size: number; flags: number; read: boolean; write: boolean; mmap: boolean; offset: string; sparse: Array<{ offset: number; size: number }> | null; caps: number[] }>;
  irqs: Array<{ index: number; name: string; count: number; flags: number; eventfd: boolean; maskable: boolean; automasked: boolean; noresize: boolean }>;
}

/** Query everything a client can learn without side effects. */
export function collectInfo(c: VfioUserClient): VfioUserInfo {
  const d = c.info();
  const { other, ...caps } = c.serverVersion.caps;
  const out: VfioUserInfo = {
    socket: c.path,
    version: { major: c.serverVersion.major, minor: c.serverVersion.minor },
    capabilities: { ...other, ...Object.fromEntries(Object.entries(caps).filter(([, v]) => v !== undefined)) },
    device: { flags: d.flags, pci: d.isPci, reset: d.canReset, num_regions: d.numRegions, num_irqs: d.numIrqs },
    regions: [], irqs: [],
  };
  for (let i = 0; i < d.numRegions; i++) {
    const r = c.regionInfo(i);
    out.regions.push({ index: i, name: pciRegionName(i), size: r.size, flags: r.flags, read: r.readable, write: r.writable, mmap: r.mappable, offset: '0x' + r.offset.toString(16), sparse: r.sparse, caps: r.capIds });
  }
  for (let i = 0; i < d.numIrqs; i++) {
    const q = c.irqInfo(i);
    out.irqs.push({ index: i, name: pciIrqName(i), count: q.count, flags: q.flags, eventfd: q.eventfd, maskable: q.maskable, automasked: q.automasked, noresize: q.noresize });
  }
  return out;
}

const hex = (n: number) => '0x' + n.toString(16);

/** The human-readable report. */
export function formatInfo(i: VfioUserInfo): string {
  const lines = [
    `vfio-user device at ${i.socket}`,
    `  protocol version ${i.version.major}.${i.version.minor}`,
    `  capabilities: ${Object.keys(i.capabilities).length ? Object.entries(i.capabilities).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(' ') : '(none: spec defaults)'}`,
    `  device: flags ${hex(i.device.flags)}${i.device.pci ? ' PCI' : ''}${i.device.reset ? ' RESET' : ''}, ${i.device.num_regions} regions, ${i.device.num_irqs} IRQ indexes`,
    '  regions:',
  ];
  for (const r of i.regions) {
    if (r.size === 0) { lines.push(`    ${String(r.index).padStart(2)} ${r.name.padEnd(7)} -`); continue; }
    const f = [r.read ? 'R' : '', r.write ? 'W' : '', r.mmap ? ' MMAP' : ''].join('');
    const sp = r.sparse ? ` sparse ${r.sparse.map((a) => `[${hex(a.offset)}, +${hex(a.size)})`).join(' ')}` : r.mmap ? ' (whole region mappable)' : '';
    lines.push(`    ${String(r.index).padStart(2)} ${r.name.padEnd(7)} size ${hex(r.size).padEnd(9)} ${f}${sp}`);
  }
  lines.push('  irqs:');
  for (const q of i.irqs) {
    const f = [q.eventfd ? 'EVENTFD' : '', q.maskable ? 'MASKABLE' : '', q.automasked ? 'AUTOMASKED' : '', q.noresize ? 'NORESIZE' : ''].filter(Boolean).join(' ');
    lines.push(`    ${q.index} ${q.name.padEnd(6)} count ${q.count}${f ? ' ' + f : ''}`);
  }
  return lines.join('\n');
}

/** The vfio-user-info app. */
export const vfioUserInfo: App<InfoOptions> = {
  name: 'vfio-user-info',
  summary: 'show a vfio-user device: version, capabilities, regions, IRQs (tspmd vfio-user-info SOCKET)',
  help: `  SOCKET           the vfio-user server's unix socket
  --json           one JSON object instead of text (may also come before "--")`,
  /** Named flags plus the positionals of this command line, so runApp moves them after "--". */
  get ownFlags(): Record<string, boolean> {
    return ownFlagsWithPositionals(appArgv(), { '--json': false });
  },
  ealDefaults: { noHuge: true },
  /** SOCKET [--json]. */
  parse(args: string[]): InfoOptions {
    let socket: string | null = null, json = false;
    eachOption(args, (flag) => {
      if (flag === '--json') json = true;
      else if (!flag.startsWith('-') && socket === null) socket = flag;
      else throw new UsageError(`unknown vfio-user-info option "${flag}" (see --help)`);
    });
    if (socket === null) throw new UsageError('name the vfio-user socket: tspmd vfio-user-info SOCKET');
    return { socket, json };
  },
  /** Connect, query, print; exit code 1 when the server cannot be reached. */
  async main(_eal, opts): Promise<number> {
    let c: VfioUserClient;
    try {
      c = VfioUserClient.connect(opts.socket);
    } catch (e) {
      console.error(`tspmd vfio-user-info: ${(e as Error).message}`);
      return 1;
    }
    try {
      const info = collectInfo(c);
      console.log(opts.json ? JSON.stringify(info) : formatInfo(info));
      return 0;
    } finally {
      c.close();
    }
  },
};
