/**
 * EAL command-line options in DPDK's spelling. `tspmd <app> [EAL options] -- [app options]`:
 * everything before "--" is parsed here, everything after it belongs to the application.
 */
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
    sysfsRoot: '/sys', devRoot: '/dev', vfioMode: 'auto', logLevel: null, help: false,
  };
}

/** The EAL options' help text. */
export const EAL_HELP = `EAL options (before "--"):
  -l, --lcores LIST      lcores to use, e.g. 0-1 or 0,2; ID@CPU runs lcore ID on CPU (default: one per CPU)
  --main-lcore ID        the control core (default: the first of -l)
  -m, --socket-mem MB    DMA memory to map at start-up, also the limit (default: grow on demand)
  --huge-dir DIR         hugetlbfs mount to use (default: the first mount of the default page size)
  --no-huge              4 KiB pages from a memfd: no hugepages, no root needed
  --in-memory            hugepages from a memfd (MFD_HUGETLB): no files on disk
  --file-prefix NAME     prefix of hugepage files (default: tsp)
  --iova-mode va|pa      IOVA = virtual address, or physical address (root) (default: va)
  --vdev NAME[,k=v,...]  add a virtual device, e.g. net_null0,size=64 (repeatable)
  -a, --allow ADDR       use only these devices (repeatable)
  -b, --block ADDR       never use these devices (repeatable)
  --no-pci               do not scan the PCI bus
  --sysfs-root DIR       read sysfs from DIR (default: /sys)
  --dev-root DIR         find device nodes (vfio, iommu) in DIR (default: /dev)
  --vfio-mode MODE       auto|group|iommufd (default: auto)
  --log-level LEVEL      error|warn|info|debug (default: warn)
  -h, --help             this help`;

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
    const value = (): string => {
      if (inline !== undefined) return inline;
      const v = argv[++i];
      if (v === undefined || v === '--') throw new UsageError(`${arg} needs a value (see --help)`);
      return v;
    };
    switch (arg) {
      case '-l': case '--lcores': o.lcores = parseCoreList(value()); break;
      case '--main-lcore': o.mainLcore = intOption(arg, value(), 0, 1023); break;
      case '-m': case '--socket-mem': o.memoryMb = memOption(arg, value()); break;
      case '--huge-dir': o.hugeDir = value(); break;
      case '--no-huge': o.noHuge = true; break;
      case '--in-memory': o.inMemory = true; break;
      case '--file-prefix': {
        const v = value();
        if (!/^[A-Za-z0-9_-]{1,32}$/.test(v)) throw new UsageError(`--file-prefix "${v}": use 1-32 characters from A-Z a-z 0-9 _ -`);
        o.filePrefix = v;
        break;
      }
      case '--iova-mode': {
        const v = value();
        if (v !== 'va' && v !== 'pa') throw new UsageError(`--iova-mode "${v}": use va or pa`);
        o.iovaMode = v;
        break;
      }
      case '--vdev': o.vdevs.push(value()); break;
      case '-a': case '--allow': o.allow.push(value()); break;
      case '-b': case '--block': o.block.push(value()); break;
      case '--no-pci': o.noPci = true; break;
      case '--sysfs-root': o.sysfsRoot = value(); break;
      case '--dev-root': o.devRoot = value(); break;
      case '--vfio-mode': {
        const v = value();
        if (v !== 'auto' && v !== 'group' && v !== 'iommufd') throw new UsageError(`--vfio-mode "${v}": use auto, group or iommufd`);
        o.vfioMode = v;
        break;
      }
      case '--log-level': {
        const v = value();
        if (!['error', 'warn', 'info', 'debug'].includes(v)) throw new UsageError(`--log-level "${v}": use error, warn, info or debug`);
        o.logLevel = v;
        break;
      }
      case '-h': case '--help': o.help = true; break;
      default:
        throw new UsageError(`unknown EAL option "${argv[i]}" (application options go after "--"; see --help)`);
    }
  }
  if (o.noHuge && o.inMemory) throw new UsageError('--no-huge and --in-memory exclude each other: --in-memory uses hugepages without files');
  if (o.noHuge && o.hugeDir) throw new UsageError('--no-huge and --huge-dir exclude each other');
  if (o.mainLcore !== null && o.lcores !== null && !o.lcores.some((l) => l.id === o.mainLcore)) {
    throw new UsageError(`--main-lcore ${o.mainLcore} is not in the -l list ${o.lcores.map((l) => l.id).join(',')}`);
  }
  return o;
}

function intOption(name: string, v: string, min: number, max: number): number {
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`${name} "${v}": expected a whole number from ${min} to ${max}`);
  return Number(v);
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
