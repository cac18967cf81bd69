/**
 * `tspmd emu <device>[,key=value...] --socket PATH`, or several devices in one process with
 * `--device <device>,socket=PATH[,lcore=N][,key=value...]` repeated: serve emulated devices over
 * vfio-user, each on its own unix socket (mode 0600) with its own server and client, until
 * SIGINT/SIGTERM, then remove the sockets. One client at a time per device; when a client leaves,
 * its device is reset and the next one is served; the other devices never notice. Each device's
 * poll loop runs on a worker lcore (lcore=N, or the next worker no device asked for), like a PMD's.
 * virtio-net devices given the same lcore=N share one forwarding loop there, which forwards for
 * each in turn (EmuDeviceKind.startShared); dmatest runs its own engine loop and shares its lcore
 * with no device. Devices: see EMU_DEVICES. This file only parses the command
 * line and prints; each device's lifecycle lives next to the device (drivers/emu).
 *
 * Prints one line "serving <device> on <path>" per device once all serve (scripts wait for it).
 */
import { eachOption, type App } from '../../lib/app/app.js';
import { UsageError } from '../../src/options.js';
import type { Eal } from '../../src/eal.js';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import type { EmuDevice, UnsealedDmaPolicy } from '../../lib/emudev/emudev.js';
import { DmatestDevice } from '../../drivers/emu/dmatest/dmatest.js';
import { createVirtioNetEmu, VirtioNetEmu, VIRTIO_NET_SUMMARY } from '../../drivers/emu/virtio-net/emu.js';
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
  /** Create the device named name from its key=value arguments (unknown keys: UsageError) and the app's ports (backends). */
  create: (eal: Eal, args: Record<string, string>, ports: readonly EthDev[], name: string) => Promise<EmuProvider> | EmuProvider;
  /** Start devices of this kind (made by create) in one poll loop on worker lcore `lcore`; absent: each device needs an lcore of its own */
  startShared?: (eal: Eal, lcore: number, devs: readonly EmuProvider[]) => Promise<void>;
  /** why a device of this kind cannot share its lcore (without startShared) */
  ownLcore?: string;
}

/** The devices `tspmd emu` knows, by name. */
export const EMU_DEVICES: Record<string, EmuDeviceKind> = {
  dmatest: {
    summary: 'copy + Adler-32 DMA engine: doorbell in a sparse-mmapped BAR page, ring in client memory, MSI-X', schema: {},
    create: (_eal, _args, _ports, name) => new DmatestDevice(name), ownLcore: 'dmatest runs its own engine loop on its lcore',
  },
  'virtio-net': {
    summary: VIRTIO_NET_SUMMARY, schema: VIRTIO_NET_ARGS, create: createVirtioNetEmu,
    startShared: (eal, lcore, devs) => VirtioNetEmu.startShared(eal, lcore, devs.map((d) => {
      if (!(d instanceof VirtioNetEmu)) throw new Error(`${d.emu.name} is not a virtio-net device: it cannot share a virtio-net forwarding loop`);
      return d;
    })),
  },
};


/** The keys --device takes besides the device's own: where the device is served. */
const PLACEMENT = {
  socket: { kind: 'string', required: true, placeholder: 'PATH', help: 'the unix socket to serve the device on (created mode 0600, removed at exit)' },
  lcore: { kind: 'int', min: 0, max: 1023, placeholder: 'N', help: 'the worker lcore of its poll loop (default: the next worker no device asked for); virtio-net devices with the same lcore=N share one loop' },
} as const satisfies DevargsSchema;

/** One device of the command line. */
export interface EmuDeviceSpec {
  /** the device kind, a key of EMU_DEVICES */
  kind: string;
  /** its name in logs and statistics: the kind, numbered when the run has several of that kind */
  name: string;
  /** the device's own key=value arguments */
  args: Record<string, string>;
  socket: string;
  /** the worker lcore of its poll loop (unset: the next free worker) */
  lcore?: number;
}

/** The app's options. */
export interface EmuOptions {
  devices: EmuDeviceSpec[];
  /** keep a device's state when its client leaves (default: reset it) */
  noReset: boolean;
  /** client memory that cannot be sealed against shrinking: map it, reach it by message, or refuse it */
  unsealedDma: UnsealedDmaPolicy;
}

const UNSEALED_DMA: readonly UnsealedDmaPolicy[] = ['map', 'message', 'refuse'];

const NAMED = { '--socket': true, '--device': true, '--no-reset': false, '--unsealed-dma': true };

/** A device kind by name, or a UsageError listing the known ones. */
function kindOf(name: string): EmuDeviceKind {
  if (!Object.hasOwn(EMU_DEVICES, name)) throw new UsageError(`unknown device "${name}"; known: ${Object.keys(EMU_DEVICES).join(', ')}`);
  return EMU_DEVICES[name];
}

/** A --device value: the kind, its socket and lcore, and the device's own arguments (checked). */
function parseDeviceOption(spec: string): Omit<EmuDeviceSpec, 'name'> {
  const { name, raw } = splitDevargs(spec, '--device');
  const kind = kindOf(name);
  const checked = checkDevargs(raw, { ...PLACEMENT, ...kind.schema }, { where: `--device "${spec}"`, driver: name });
  const args = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(raw)) if (!Object.hasOwn(PLACEMENT, k)) args[k] = v;
  const out: Omit<EmuDeviceSpec, 'name'> = { kind: name, args, socket: checked.socket };
  if (checked.lcore !== undefined) out.lcore = checked.lcore;
  return out;
}

const EXAMPLE = 'tspmd emu --vdev net_ring0 -l 0-2 -- --device virtio-net,socket=/tmp/vn.sock --device dmatest,socket=/tmp/dma.sock';

/** The emu app. */
export const emu: App<EmuOptions> = {
  name: 'emu',
  summary: `serve emulated devices over vfio-user: tspmd emu <device> --socket PATH, or several with --device, e.g.\n  ${EXAMPLE}`,
  help: `  <device>[,k=v...]   ${Object.entries(EMU_DEVICES).map(([n, d]) => `${n}: ${d.summary}${Object.keys(d.schema).length > 0 ? '\n' + devargsHelp(d.schema, '                       ') : ''}`).join('\n                     ')}
  --socket PATH      unix socket to serve <device> on (created mode 0600, removed at exit)
  --device <device>,socket=PATH[,lcore=N][,k=v...]
                     one more device in this process (repeat for each), on its own socket with its
                     own client; the k=v are the device's own (above). Each device's poll loop takes
                     a worker lcore (lcore=N, or the next one no device asked for: give -l enough,
                     e.g. -l 0-2 for two devices). virtio-net devices given the same lcore=N share
                     one forwarding loop (each device forwarded in turn, e.g. --vdev net_ring0
                     --vdev net_ring1 -l 0-1 -- --device virtio-net,socket=A,lcore=1 --device
                     virtio-net,socket=B,lcore=1,backend=1); dmatest runs its own engine loop and
                     needs an lcore of its own. A client that leaves resets only its own device.
                     Each virtio-net needs its own backend=PORT.
                     More than 3 devices: set UV_THREADPOOL_SIZE to their number + 4 (each
                     device's server holds a thread of libuv's pool).
${devargsHelp(PLACEMENT, '                       ')}
                     e.g. ${EXAMPLE}
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
  /** [<device> --socket PATH] [--device <device>,socket=PATH[,lcore=N]...]... [--no-reset] [--unsealed-dma POLICY]. */
  parse(argv: string[]): EmuOptions {
    let device: string | null = null, socket: string | null = null, noReset = false, unsealedDma: UnsealedDmaPolicy = 'message';
    const more: Omit<EmuDeviceSpec, 'name'>[] = [];
    eachOption(argv, (flag, value) => {
      if (flag === '--socket') socket = value();
      else if (flag === '--device') more.push(parseDeviceOption(value()));
      else if (flag === '--no-reset') noReset = true;
      else if (flag === '--unsealed-dma') {
        const v = value();
        if (!(UNSEALED_DMA as readonly string[]).includes(v)) throw new UsageError(`--unsealed-dma "${v}": use ${UNSEALED_DMA.join(', ')}`);
        unsealedDma = v as UnsealedDmaPolicy;
      }
      else if (!flag.startsWith('-') && device === null) device = flag;
      else throw new UsageError(`unknown emu option "${flag}" (see --help)`);
    });
    const specs: Omit<EmuDeviceSpec, 'name'>[] = [];
    if (device !== null) {
      const { name, raw: args } = splitDevargs(device as string, 'device');
      checkDevargs(args, kindOf(name).schema, { where: `device "${device as string}"`, driver: name }); // mistakes show before the EAL starts
      if (socket === null) throw new UsageError(`--socket PATH is required (the socket to serve ${name} on)`);
      specs.push({ kind: name, args, socket });
    } else if (socket !== null) {
      throw new UsageError('--socket PATH goes with a device named before it (tspmd emu dmatest --socket PATH); with --device give socket=PATH in its arguments');
    }
    specs.push(...more);
    if (specs.length === 0) throw new UsageError(`name a device to emulate (${Object.keys(EMU_DEVICES).join(', ')}): tspmd emu <device> --socket PATH, or --device <device>,socket=PATH (see --help)`);
    const seen = new Map<string, number>(), lcores = new Map<number, number>();
    specs.forEach((s, i) => {
      const other = seen.get(s.socket);
      if (other !== undefined) throw new UsageError(`devices ${other + 1} and ${i + 1} both serve on ${s.socket}: give each device its own socket`);
      seen.set(s.socket, i);
      if (s.lcore === undefined) return;
      const first = lcores.get(s.lcore);
      if (first !== undefined) {
        const [a, b] = [specs[first].kind, s.kind];
        const own = [a, b].find((k) => a !== b || EMU_DEVICES[k].startShared === undefined);
        if (own !== undefined) {
          const why = a !== b ? `a ${a} and a ${b} device share no poll loop` : (EMU_DEVICES[own].ownLcore ?? `${own} does not share its poll loop`);
          throw new UsageError(`devices ${first + 1} (${a}) and ${i + 1} (${b}) both ask for lcore=${s.lcore}: ${why}; give each its own worker lcore (-l) or leave lcore= out`);
        }
      }
      else lcores.set(s.lcore, i);
    });
    const count = (k: string): number => specs.filter((s) => s.kind === k).length;
    const nth = new Map<string, number>();
    const devices = specs.map((s) => {
      const n = nth.get(s.kind) ?? 0;
      nth.set(s.kind, n + 1);
      return { ...s, name: count(s.kind) > 1 ? `${s.kind}${n}` : s.kind };
    });
    checkThreadPool(devices.length);
    return { devices, noReset, unsealedDma };
  },
  /** Serve every device until SIGINT/SIGTERM. */
  async main(eal, opts): Promise<number> {
    const lcores = assignLcores(eal, opts.devices);
    const ports = await probePorts(eal);
    const served: { spec: EmuDeviceSpec; dev: EmuProvider; server: VfioUserServer }[] = [];
    const closeAll = async (): Promise<void> => {
      for (const s of served) await s.server.close();
      for (const s of served) await s.dev.close();
    };
    // every device made before any starts: a mistake in the last one (a backend already taken)
    // shows before a poll loop runs or a socket exists
    for (const spec of opts.devices) {
      let dev: EmuProvider;
      try {
        dev = await EMU_DEVICES[spec.kind].create(eal, spec.args, ports, spec.name);
      } catch (e) {
        await closeAll();
        throw e;
      }
      dev.emu.unsealedDma = opts.unsealedDma;
      served.push({ spec, dev, server: new VfioUserServer(dev.emu, spec.socket, { resetOnDisconnect: !opts.noReset }) });
    }
    // every poll loop first, then the servers: a worker's start-up (its module loading) must not
    // wait for a pool thread that a serving socket holds
    let step = '';
    try {
      for (const group of byLcore(served, lcores)) {
        const { spec, dev } = group[0], lcore = lcores[served.indexOf(group[0])], share = EMU_DEVICES[spec.kind].startShared;
        step = group.map((g) => `${g.spec.name} on ${g.spec.socket}`).join(', ');
        if (group.length === 1) await dev.start(eal, lcore);
        else if (share) await share(eal, lcore, group.map((g) => g.dev));
        else throw new Error(`${spec.kind} devices cannot share lcore ${lcore}; give each its own`);
      }
      for (const { spec, server } of served) {
        step = `${spec.name} on ${spec.socket}`;
        server.start();
      }
    } catch (e) {
      await closeAll();
      console.error(`tspmd emu: ${step}: ${(e as Error).message}`);
      return 1;
    }
    for (const s of served) console.log(`serving ${s.spec.kind} on ${s.spec.socket}`);
    const sig = await new Promise<NodeJS.Signals>((resolve) => eal.handleSignals(resolve));
    eal.handleSignals();
    await closeAll();
    for (const { spec, server } of served) {
      const who = served.length > 1 ? ` ${spec.name} on ${spec.socket}` : '';
      console.error(`tspmd emu: ${sig}:${who} stopped after ${server.stats.connections} connection(s), ${server.stats.messages} message(s)`);
    }
    return 0;
  },
};

/**
 * Each server waits on its socket in poll(2) on a thread of libuv's pool (os.pollAsync) for as long
 * as it serves, and the pool is sized once, when the process starts (4 threads unless
 * UV_THREADPOOL_SIZE says otherwise): a thread per device and one for everything else, or a
 * device's client would get no reply. Too many devices: a usage error that says what to set.
 */
function checkThreadPool(devices: number): void {
  const env = process.env.UV_THREADPOOL_SIZE;
  const pool = env !== undefined && /^[1-9]\d*$/.test(env) ? Math.min(Number(env), 1024) : 4;
  if (devices + 1 <= pool) return;
  throw new UsageError(`${devices} devices need ${devices + 1} threads in libuv's pool (one per device's server, one for the rest) and it has ${pool}${env === undefined ? ' (the default)' : ''}: run with UV_THREADPOOL_SIZE=${devices + 4} in the environment`);
}

/** The items grouped by their lcore (lcores[i] is item i's), in order of first appearance. */
function byLcore<T>(items: readonly T[], lcores: readonly number[]): T[][] {
  const groups = new Map<number, T[]>();
  items.forEach((it, i) => {
    const g = groups.get(lcores[i]);
    if (g) g.push(it);
    else groups.set(lcores[i], [it]);
  });
  return [...groups.values()];
}

/** The worker lcore of each device: lcore= where given (it must be a worker), else the next worker no device took. */
function assignLcores(eal: Eal, devices: readonly EmuDeviceSpec[]): number[] {
  const workers = eal.lcores.workers;
  const main = eal.lcores.main;
  for (const d of devices) {
    if (d.lcore !== undefined && !workers.includes(d.lcore)) {
      throw new UsageError(`${d.name}: lcore=${d.lcore} is not a worker lcore of this process (workers: ${workers.join(',') || 'none'}; the main lcore ${main} serves the sockets); give more with -l, e.g. -l 0-${devices.length}`);
    }
  }
  const taken = new Set(devices.flatMap((d) => (d.lcore === undefined ? [] : [d.lcore])));
  const free = workers.filter((w) => !taken.has(w));
  const need = taken.size + devices.filter((d) => d.lcore === undefined).length;
  return devices.map((d) => {
    if (d.lcore !== undefined) return d.lcore;
    const w = free.shift();
    if (w === undefined) {
      throw new UsageError(devices.length === 1
        ? `the device's poll loop needs a worker lcore: give two with -l, e.g. -l 0-1 (this process may use CPUs ${eal.lcores.cpuOf(main)} only)`
        : `${devices.length} devices need ${need} worker lcores (one each, unless virtio-net devices share one with the same lcore=N), and this process has ${workers.length} (${workers.join(',') || 'none'}): give them with -l, e.g. -l 0-${need} or ID@CPU to put several on one CPU`);
    }
    return w;
  });
}
