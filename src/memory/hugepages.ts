/**
 * Hugepage discovery: hugetlbfs mounts (from /proc/mounts) and, per page size, the kernel's
 * pool counters (from sysfs). Both roots are parameters so tests can point them at fixtures.
 */
import { readFileSync, readdirSync, existsSync } from 'node:fs';

/** One hugetlbfs mount point and the page size it serves. */
export interface HugeMount {
  /** mount point, e.g. /dev/hugepages */
  dir: string;
  /** page size in bytes */
  pageSize: number;
}

/** The kernel's counters for one hugepage size. */
export interface HugePool {
  pageSize: number;
  total: number;
  free: number;
  /** reserved by existing mappings but not yet faulted in: not available to us */
  reserved: number;
  /** pages a new mapping can get: free - reserved */
  available: number;
  /** sysfs directory, for the "reserve more with" hint */
  sysfsDir: string;
}

/** Parse a size like "2M", "1G", "2048k" (hugetlbfs pagesize= option) into bytes. */
export function parseSize(s: string): number {
  const m = /^(\d+)\s*([kKmMgG]?)[bB]?$/.exec(s.trim());
  if (!m) throw new Error(`cannot parse size "${s}"`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

/** The default hugepage size (Hugepagesize in /proc/meminfo), or 0 when the kernel has none. */
export function defaultHugePageSize(procRoot = '/proc'): number {
  try {
    const m = /Hugepagesize:\s+(\d+) kB/.exec(readFileSync(`${procRoot}/meminfo`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** hugetlbfs mounts listed in /proc/mounts, with their page sizes. */
export function hugeMounts(procRoot = '/proc'): HugeMount[] {
  const def = defaultHugePageSize(procRoot);
  const out: HugeMount[] = [];
  for (const line of readFileSync(`${procRoot}/mounts`, 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[2] !== 'hugetlbfs') continue;
    const opt = /(?:^|,)pagesize=([^,]+)/.exec(f[3] ?? '');
    out.push({ dir: unescapeMount(f[1]), pageSize: opt ? parseSize(opt[1]) : def });
  }
  return out;
}

/** /proc/mounts escapes spaces and friends as octal. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Counters for every hugepage size the kernel supports. */
export function hugePools(sysRoot = '/sys'): HugePool[] {
  const base = `${sysRoot}/kernel/mm/hugepages`;
  if (!existsSync(base)) return [];
  const out: HugePool[] = [];
  for (const d of readdirSync(base)) {
    const m = /^hugepages-(\d+)kB$/.exec(d);
    if (!m) continue;
    const dir = `${base}/${d}`;
    const num = (f: string): number => Number(readFileSync(`${dir}/${f}`, 'utf8').trim());
    const free = num('free_hugepages'), reserved = num('resv_hugepages');
    out.push({ pageSize: Number(m[1]) * 1024, total: num('nr_hugepages'), free, reserved, available: Math.max(0, free - reserved), sysfsDir: dir });
  }
  return out.sort((a, b) => a.pageSize - b.pageSize);
}

/** The pool for one page size, or undefined when the kernel does not support it. */
export function hugePool(pageSize: number, sysRoot = '/sys'): HugePool | undefined {
  return hugePools(sysRoot).find((p) => p.pageSize === pageSize);
}

/** Human-readable page size: 2048 kB, 1 GB. */
export function formatPageSize(bytes: number): string {
  return bytes >= 1024 ** 3 ? `${bytes / 1024 ** 3} GB` : `${bytes / 1024} kB`;
}

/** The error text for a hugepage shortage: what is needed, what is free, and how to fix it. */
export function shortageMessage(need: number, pool: HugePool | undefined, pageSize: number): string {
  const size = formatPageSize(pageSize);
  const free = pool?.available ?? 0;
  const total = pool?.total ?? 0;
  const file = pool?.sysfsDir ?? `/sys/kernel/mm/hugepages/hugepages-${pageSize / 1024}kB`;
  return (
    `not enough hugepages: need ${need} pages of ${size} (${(need * pageSize) / 2 ** 20} MB), ${free} free of ${total}. ` +
    `Reserve more as root with: echo ${total - free + need} > ${file}/nr_hugepages ` +
    `(or run without hugepages: --no-huge)`
  );
}
