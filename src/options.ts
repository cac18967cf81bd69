/**
 * EAL command-line options in DPDK's spelling. `tspmd <app> [EAL options] -- [app options]`:
 * everything before "--" is parsed here, everything after it belongs to the application.
 */
import { isIP } from 'node:net';
import { parseSize } from './memory/hugepages.js';

/** A command-line mistake: the message says what is wrong and how to fix it; apps exit with code 2. */
export class UsageError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'UsageError';
  }
}

/** Parsed EAL options. */
export interface EalOptions {
  /** lcores to use and the CPU each runs on (-l / --lcores); default: one per CPU this process may use */
  lcores: LcoreMap[] | null;
  /** the main (control) lcore; default: the first of lcores */
  mainLcore: number | null;
  /** -m / --socket-mem: MB to preallocate (0: grow on demand) */
  memoryMb: number;
  hugeDir: string | null;
  noHuge: boolean;
  inMemory: boolean;
  filePrefix: string;
  iovaMode: 'va' | 'pa';
  /** --vdev name,key=value,... (repeatable) */
  vdevs: string[];
  /** -a / --allow: device addresses to allow */
  allow: string[];
  /** -b / --block: device addresses to block */
  block: string[];
  noPci: boolean;
  sysfsRoot: string;
  /** where device nodes are (/dev/vfio, /dev/iommu); tests point it at a fixture */
  devRoot: string;
  vfioMode: 'auto' | 'group' | 'iommufd';
  logLevel: string | null;
  /** --no-telemetry: no DPDK telemetry v2 socket (runApp starts one by default) */
  noTelemetry: boolean;
  /** --metrics-port: serve Prometheus metrics over HTTP on this port (null: no metrics server) */
  metricsPort: number | null;
  /** --metrics-host: the address the metrics server listens on (default 127.0.0.1) */
  metricsHost: string;
  help: boolean;
}

/** One lcore and the CPU it is pinned to. */
export interface LcoreMap {
  id: number;
  cpu: number;
}

/** Option defaults: what you get with no EAL options. */
export function defaultEalOptions(): EalOptions {
  return {
    lcores: null, mainLcore: null, memoryMb: 0, hugeDir: null, noHuge: false, inMemory: false,
    filePrefix: 'tsp', iovaMode: 'va', vdevs: [], allow: [], block: [], noPci: false,
    sysfsRoot: '/sys', devRoot: '/dev', vfioMode: 'auto', logLevel: null,
    noTelemetry: false, metricsPort: null, metricsHost: '127.0.0.1', help: false,
  };
}

/** One EAL option: its spellings, the EalOptions field it sets, its value and its help line. */
export interface EalOptionSpec {
  /** spellings, short first: ['-l', '--lcores'] */
  names: readonly string[];
  /** the field of EalOptions it sets */
  key: keyof EalOptions;
  /** the value's placeholder in --help (e.g. LIST), or null for a flag */
  value: string | null;
  help: string;
  /** store the value (or the flag) into o; throws UsageError naming the option */
  apply(o: EalOptions, v: string, name: string): void;
}

const choice = <T extends string>(name: string, v: string, allowed: readonly T[]): T => {
  if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`${name} "${v}": use ${allowed.slice(0, -1).join(', ')} or ${allowed[allowed.length - 1]}`);
  return v as T;
};

/** The EAL options (DPDK's spelling): the one table that makes the parser, --help, and the value-taking set. */
export const EAL_OPTIONS: readonly EalOptionSpec[] = [
  { names: ['-l', '--lcores'], key: 'lcores', value: 'LIST', help: 'lcores to use, e.g. 0-1 or 0,2; ID@CPU runs lcore ID on CPU (default: one per CPU)', apply: (o, v) => { o.lcores = parseCoreList(v); } },
  { names: ['--main-lcore'], key: 'mainLcore', value: 'ID', help: 'the control core (default: the first of -l)', apply: (o, v, n) => { o.mainLcore = intOption(n, v, 0, 1023); } },
  { names: ['-m', '--socket-mem'], key: 'memoryMb', value: 'MB', help: 'DMA memory to map at start-up, also the limit (default: grow on demand)', apply: (o, v, n) => { o.memoryMb = memOption(n, v); } },
  { names: ['--huge-dir'], key: 'hugeDir', value: 'DIR', help: 'hugetlbfs mount to use (default: the first mount of the default page size)', apply: (o, v) => { o.hugeDir = v; } },
  { names: ['--no-huge'], key: 'noHuge', value: null, help: '4 KiB pages from a memfd: no hugepages, no root needed', apply: (o) => { o.noHuge = true; } },
  { names: ['--in-memory'], key: 'inMemory', value: null, help: 'hugepages from a memfd (MFD_HUGETLB): no files on disk', apply: (o) => { o.inMemory = true; } },
  {
    names: ['--file-prefix'], key: 'filePrefix', value: 'NAME', help: 'prefix of hugepage files (default: tsp)',
    apply: (o, v, n) => {
      if (!/^[A-Za-z0-9_-]{1,32}$/.test(v)) throw new UsageError(`${n} "${v}": use 1-32 characters from A-Z a-z 0-9 _ -`);
      o.filePrefix = v;
    },
  },
  { names: ['--iova-mode'], key: 'iovaMode', value: 'va|pa', help: 'IOVA = virtual address, or physical address (root) (default: va)', apply: (o, v, n) => { o.iovaMode = choice(n, v, ['va', 'pa']); } },
  { names: ['--vdev'], key: 'vdevs', value: 'NAME[,k=v,...]', help: 'add a virtual device, e.g. net_null0,size=64 (repeatable)', apply: (o, v) => { o.vdevs.push(v); } },
  { names: ['-a', '--allow'], key: 'allow', value: 'ADDR', help: 'use only these devices (repeatable)', apply: (o, v) => { o.allow.push(v); } },
  { names: ['-b', '--block'], key: 'block', value: 'ADDR', help: 'never use these devices (repeatable)', apply: (o, v) => { o.block.push(v); } },
  { names: ['--no-pci'], key: 'noPci', value: null, help: 'do not scan the PCI bus', apply: (o) => { o.noPci = true; } },
  { names: ['--sysfs-root'], key: 'sysfsRoot', value: 'DIR', help: 'read sysfs from DIR (default: /sys)', apply: (o, v) => { o.sysfsRoot = v; } },
  { names: ['--dev-root'], key: 'devRoot', value: 'DIR', help: 'find device nodes (vfio, iommu) in DIR (default: /dev)', apply: (o, v) => { o.devRoot = v; } },
  { names: ['--vfio-mode'], key: 'vfioMode', value: 'MODE', help: 'auto|group|iommufd (default: auto)', apply: (o, v, n) => { o.vfioMode = choice(n, v, ['auto', 'group', 'iommufd']); } },
  { names: ['--log-level'], key: 'logLevel', value: 'LEVEL', help: 'error|warn|info|debug (default: warn)', apply: (o, v, n) => { o.logLevel = choice(n, v, ['error', 'warn', 'info', 'debug']); } },
  { names: ['--no-telemetry'], key: 'noTelemetry', value: null, help: 'no DPDK telemetry socket (default: <run dir>/dpdk/PREFIX/dpdk_telemetry.v2)', apply: (o) => { o.noTelemetry = true; } },
  { names: ['--telemetry'], key: 'noTelemetry', value: null, help: 'serve the telemetry socket (the default; undoes --no-telemetry)', apply: (o) => { o.noTelemetry = false; } },
  { names: ['--metrics-port'], key: 'metricsPort', value: 'PORT', help: 'serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)', apply: (o, v, n) => { o.metricsPort = intOption(n, v, 0, 65535); } },
  {
    names: ['--metrics-host'], key: 'metricsHost', value: 'ADDR', help: 'address of the metrics server (default: 127.0.0.1)',
    apply: (o, v, n) => {
      if (isIP(v) === 0 && v !== 'localhost') throw new UsageError(`${n} "${v}": expected an IP address such as 127.0.0.1 or ::1`);
      o.metricsHost = v;
    },
  },
  { names: ['-h', '--help'], key: 'help', value: null, help: 'this help', apply: (o) => { o.help = true; } },
];

const BY_NAME = new Map<string, EalOptionSpec>(EAL_OPTIONS.flatMap((s) => s.names.map((n) => [n, s] as const)));

/** EAL options that take a value, by every spelling: their value is never a positional argument. */
export const EAL_VALUE_OPTIONS: ReadonlySet<string> = new Set(EAL_OPTIONS.filter((s) => s.value !== null).flatMap((s) => s.names));

/** The EalOptions field an EAL option (any spelling) sets, or undefined for a word that is no EAL option. */
export function ealOptionKey(name: string): keyof EalOptions | undefined {
  return BY_NAME.get(name)?.key;
}

/** The EAL options' help text. */
export const EAL_HELP = `EAL options (before "--"):\n${EAL_OPTIONS.map((s) => {
  const left = `${s.names.join(', ')}${s.value ? ` ${s.value}` : ''}`;
  return `  ${left.padEnd(21)}  ${s.help}`;
}).join('\n')}`;

/** Parse a core list like "0-3,6", "1" or "0@0,1@0,2@1" (lcore@cpu). */
export function parseCoreList(s: string): LcoreMap[] {
  const out = new Map<number, number>();
  for (const part of s.split(',')) {
    const m = /^(\d+)(?:-(\d+))?(?:@(\d+))?$/.exec(part.trim());
    if (!m) throw new UsageError(`-l: bad core list "${s}": use numbers, ranges and lcore@cpu, e.g. 0-1, 0,2 or 0@0,1@1`);
    const a = Number(m[1]), b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new UsageError(`-l: bad range "${part}" in "${s}": the end is below the start`);
    if (b > 1023) throw new UsageError(`-l: core ${b} in "${s}" is above 1023`);
    for (let c = a; c <= b; c++) out.set(c, m[3] === undefined ? c : Number(m[3]));
  }
  return [...out].sort((x, y) => x[0] - y[0]).map(([id, cpu]) => ({ id, cpu }));
}

/** Split argv at the first "--": [EAL part, application part]. */
export function splitArgs(argv: readonly string[]): [string[], string[]] {
  const i = argv.indexOf('--');
  return i < 0 ? [[...argv], []] : [argv.slice(0, i), argv.slice(i + 1)];
}

/** Parse EAL options; throws UsageError naming the option that is wrong. */
export function parseEalArgs(argv: readonly string[]): EalOptions {
  const o = defaultEalOptions();
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let inline: string | undefined;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    if (eq > 0) {
      inline = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const spec = BY_NAME.get(arg);
    if (!spec) throw new UsageError(`unknown EAL option "${argv[i]}" (application options go after "--"; see --help)`);
    let v = '';
    if (spec.value !== null) {
      if (inline !== undefined) v = inline;
      else {
        const next = argv[++i];
        if (next === undefined || next === '--') throw new UsageError(`${arg} needs a value (see --help)`);
        v = next;
      }
    } else if (inline !== undefined) throw new UsageError(`${arg} takes no value (got "${argv[i]}")`);
    spec.apply(o, v, arg);
  }
  if (o.noHuge && o.inMemory) throw new UsageError('--no-huge and --in-memory exclude each other: --in-memory uses hugepages without files');
  if (o.noHuge && o.hugeDir) throw new UsageError('--no-huge and --huge-dir exclude each other');
  if (o.metricsHost !== '127.0.0.1' && o.metricsPort === null) throw new UsageError('--metrics-host needs --metrics-port PORT (the metrics server is off without a port)');
  if (o.mainLcore !== null && o.lcores !== null && !o.lcores.some((l) => l.id === o.mainLcore)) {
    throw new UsageError(`--main-lcore ${o.mainLcore} is not in the -l list ${o.lcores.map((l) => l.id).join(',')}`);
  }
  return o;
}

/**
 * The one parser of whole numbers on the command line (EAL and app options, device arguments):
 * decimal digits only (radix 10), or hexadecimal digits after an optional 0x (radix 16), making a
 * safe integer from min to max; null for anything else (sign, fraction, exponent, blank, junk).
 */
export function wholeNumber(text: string, min: number, max: number, radix: 10 | 16 = 10): number | null {
  const m = (radix === 16 ? /^(?:0[xX])?([0-9a-fA-F]+)$/ : /^([0-9]+)$/).exec(text);
  if (m === null) return null;
  const n = parseInt(m[1], radix);
  return Number.isSafeInteger(n) && n >= min && n <= max ? n : null;
}

/** A whole-number option's value (wholeNumber, decimal); a UsageError naming the option, the value and the range otherwise. */
export function intOption(name: string, v: string | undefined, min: number, max: number): number {
  const n = v === undefined ? null : wholeNumber(v, min, max);
  if (n === null) throw new UsageError(`${name} ${v === undefined ? '(missing)' : `"${v}"`}: expected a whole number from ${min} to ${max}`);
  return n;
}

/** -m takes MB ("512") or a size with a unit ("1G"); --socket-mem's per-socket list is summed. */
function memOption(name: string, v: string): number {
  let total = 0;
  for (const part of v.split(',')) {
    let mb: number;
    if (/^\d+$/.test(part)) mb = Number(part);
    else {
      try {
        mb = parseSize(part) / 2 ** 20;
      } catch {
        throw new UsageError(`${name} "${v}": expected megabytes (e.g. 256) or a size like 1G`);
      }
    }
    total += mb;
  }
  if (total <= 0 || total > 1024 * 1024) throw new UsageError(`${name} "${v}": expected 1 MB to 1 TB`);
  return total;
}
