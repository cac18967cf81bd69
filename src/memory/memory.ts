/**
 * EAL memory: the segments of one process and the named memzones carved out of them.
 *
 * Segments are added on demand (or all at once with -m); a memzone never spans two segments, so
 * every memzone is one contiguous range of virtual memory that a single typed-array view covers.
 * Listeners hear about every new segment (the IOMMU layer DMA-maps it; vfio-user clients send it).
 */
import { constants as fsConstants, fstatSync, lstatSync, readdirSync, unlinkSync, type Stats } from 'node:fs';
import * as os from '../os/libc.js';
import { log } from '../log.js';
import { createSegment, freeSegment, iovaAt, iovaContiguous, type Backing, type IovaMode, type Segment } from './segment.js';
import { hugePool, shortageMessage, formatPageSize } from './hugepages.js';

/** How this process gets its DMA memory (resolved from the EAL options). */
export interface MemoryConfig {
  backing: Backing;
  pageSize: number;
  iovaMode: IovaMode;
  /** bytes to map at start-up (-m); 0 to grow on demand */
  preallocate: number;
  /** bytes this process may map at most (-m sets it; Infinity otherwise) */
  limit: number;
  /** smallest segment added on demand */
  chunk: number;
}

/** A named, aligned reservation inside one segment. Plain data: postable to workers. */
export interface Memzone {
  name: string;
  segment: number;
  /** offset inside the segment */
  offset: number;
  len: number;
  va: bigint;
  iova: bigint;
  align: number;
  /** page size of the backing memory */
  pageSize: number;
}

interface Hole {
  off: number;
  len: number;
}

const NAME_RE = /^[A-Za-z0-9_.:-]{1,63}$/;

/** Round n up to a multiple of a (a power of two). */
export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** The memory of one EAL instance: segments and memzones. */
export class EalMemory {
  readonly config: MemoryConfig;
  readonly segments: Segment[] = [];
  private readonly zones = new Map<string, Memzone>();
  private readonly holes = new Map<number, Hole[]>();
  private readonly listeners: Array<(seg: Segment) => void> = [];
  private mapped = 0;
  private closed = false;

  /** Set up memory: reclaim stale files of this prefix, then preallocate what -m asks for. */
  constructor(config: MemoryConfig) {
    this.config = config;
    if (config.backing.kind === 'hugetlbfs') reclaimStaleFiles(config.backing.dir, config.backing.prefix);
    if (config.preallocate > 0) this.addSegment(alignUp(config.preallocate, config.pageSize));
    else this.checkHugePages(config.chunk); // fail at start-up, not at the first reservation
  }

  /** Total bytes mapped. */
  get totalBytes(): number {
    return this.mapped;
  }

  /** Call fn for every existing and every future segment (e.g. to DMA-map it). */
  onSegment(fn: (seg: Segment) => void): void {
    this.listeners.push(fn);
    for (const s of this.segments) fn(s);
  }

  /**
   * Reserve a named memzone of len bytes aligned to align (a power of two). With iovaContig the
   * zone is also contiguous in IOVA space (matters only in pa mode, e.g. for descriptor rings).
   */
  reserve(name: string, len: number, align = 64, iovaContig = false): Memzone {
    if (this.closed) throw new Error(`memzone "${name}": EAL memory is already released`);
    if (!NAME_RE.test(name)) {
      throw new Error(`memzone name "${name}" is invalid: use 1-63 characters from A-Z a-z 0-9 _ . : -`);
    }
    if (this.zones.has(name)) throw new Error(`memzone "${name}" already exists; names must be unique (look it up instead)`);
    if (!Number.isSafeInteger(len) || len <= 0) throw new RangeError(`memzone "${name}": size ${len} must be a positive integer`);
    if (len > 0x1_0000_0000) throw new RangeError(`memzone "${name}": size ${len} exceeds the 4 GiB a typed-array view can cover`);
    if (!Number.isInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new RangeError(`memzone "${name}": alignment ${align} must be a power of two`);
    }
    let place = this.findPlace(len, align, iovaContig);
    if (!place) {
      this.addSegment(alignUp(Math.max(len + align, this.config.chunk), this.config.pageSize), name);
      place = this.findPlace(len, align, iovaContig);
      if (!place) throw new Error(`memzone "${name}": internal error: no room after adding a segment`);
    }
    const seg = this.segments[place.seg];
    this.carve(place.seg, place.off, len);
    const z: Memzone = {
      name, segment: seg.id, offset: place.off, len, align, pageSize: seg.pageSize,
      va: seg.va + BigInt(place.off), iova: iovaAt(seg, place.off),
    };
    this.zones.set(name, z);
    return z;
  }

  /** The memzone with this name, or undefined. */
  lookup(name: string): Memzone | undefined {
    return this.zones.get(name);
  }

  /** Release a memzone; its space can be reserved again. */
  free(name: string): void {
    const z = this.zones.get(name);
    if (!z) throw new Error(`memzone "${name}" does not exist`);
    this.zones.delete(name);
    const holes = this.holes.get(z.segment)!;
    holes.push({ off: z.offset, len: z.len });
    holes.sort((a, b) => a.off - b.off);
    for (let i = 0; i + 1 < holes.length; ) {
      if (holes[i].off + holes[i].len === holes[i + 1].off) {
        holes[i].len += holes[i + 1].len;
        holes.splice(i + 1, 1);
      } else i++;
    }
  }

  /** All memzones, in reservation order. */
  memzones(): Memzone[] {
    return [...this.zones.values()];
  }

  /** The segment with this id. */
  segment(id: number): Segment {
    const s = this.segments.find((x) => x.id === id);
    if (!s) throw new Error(`no memory segment ${id}`);
    return s;
  }

  /** A listing like DPDK's memzone dump. */
  dump(): string {
    const lines = [`memory: ${this.segments.length} segment(s), ${this.mapped / 2 ** 20} MB, pages ${formatPageSize(this.config.pageSize)}, ${this.config.backing.kind}, iova ${this.config.iovaMode}`];
    for (const s of this.segments) {
      lines.push(`  segment ${s.id}: va 0x${s.va.toString(16)} iova 0x${s.iova.toString(16)} len ${s.len} fd ${s.fd}${s.path ? ' ' + s.path : ''}`);
    }
    for (const z of this.zones.values()) {
      lines.push(`  memzone "${z.name}": segment ${z.segment} va 0x${z.va.toString(16)} iova 0x${z.iova.toString(16)} len ${z.len} align ${z.align}`);
    }
    return lines.join('\n');
  }

  /** Unmap everything and remove hugepage files. Only after every lcore has stopped. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.segments) freeSegment(s);
    this.segments.length = 0;
    this.zones.clear();
    this.mapped = 0;
  }

  /** Hugepage files this process owns (for exit handlers that must not allocate much). */
  files(): string[] {
    return this.segments.flatMap((s) => (s.path ? [s.path] : []));
  }

  private addSegment(len: number, forWhat?: string): Segment {
    const c = this.config;
    if (this.mapped + len > c.limit) {
      const what = forWhat ? `memzone "${forWhat}" needs` : 'need';
      throw new Error(
        `out of EAL memory: ${what} ${len / 2 ** 20} MB more, ${this.mapped / 2 ** 20} MB of the -m ${c.limit / 2 ** 20} MB are in use; raise -m`,
      );
    }
    this.checkHugePages(len);
    const id = this.segments.length === 0 ? 0 : this.segments[this.segments.length - 1].id + 1;
    const seg = createSegment(id, len, c.pageSize, c.backing, c.iovaMode);
    this.segments.push(seg);
    this.holes.set(seg.id, [{ off: 0, len }]);
    this.mapped += len;
    log('info', 'memory', `segment ${id}: ${len / 2 ** 20} MB at 0x${seg.va.toString(16)} (${c.backing.kind})`);
    for (const fn of this.listeners) fn(seg);
    return seg;
  }

  /** Throw the shortage message when hugepage-backed memory of len bytes cannot be had. */
  private checkHugePages(len: number): void {
    const c = this.config;
    if (c.backing.kind === 'memfd' && !c.backing.huge) return;
    const pool = hugePool(c.pageSize);
    const need = Math.ceil(len / c.pageSize);
    if (!pool || pool.available < need) throw new Error(shortageMessage(need, pool, c.pageSize));
  }

  /** First fit; with iovaContig, in pa mode, only ranges that are physically contiguous. */
  private findPlace(len: number, align: number, iovaContig: boolean): { seg: number; off: number } | null {
    for (let i = 0; i < this.segments.length; i++) {
      const seg = this.segments[i];
      // Align the address, not the offset: a segment's va is only page-aligned.
      const base = Number(seg.va % BigInt(align));
      const step = Math.max(align, seg.pageSize);
      const stepBase = Number(seg.va % BigInt(step));
      for (const h of this.holes.get(seg.id)!) {
        let off = alignUp(h.off + base, align) - base;
        while (off + len <= h.off + h.len) {
          if (!iovaContig || iovaContiguous(seg, off, len)) return { seg: i, off };
          off = alignUp(off + stepBase + 1, step) - stepBase; // try the next page boundary
        }
      }
    }
    return null;
  }

  private carve(segIndex: number, off: number, len: number): void {
    const holes = this.holes.get(this.segments[segIndex].id)!;
    const i = holes.findIndex((h) => off >= h.off && off + len <= h.off + h.len);
    const h = holes[i];
    const parts: Hole[] = [];
    if (off > h.off) parts.push({ off: h.off, len: off - h.off });
    if (off + len < h.off + h.len) parts.push({ off: off + len, len: h.off + h.len - off - len });
    holes.splice(i, 1, ...parts);
  }
}

/**
 * Remove hugepage files of this prefix whose process is gone (its lock is free), and say so: one
 * warning naming how many files and bytes were reclaimed (a crash or SIGKILL leaves them behind).
 * A file still locked belongs to a running process: that prefix is taken.
 *
 * Names are only trusted as names: each is opened with O_NOFOLLOW | O_NONBLOCK (a planted symlink
 * is never followed, a FIFO never blocks) and must be a regular file to be locked and counted;
 * anything else under the pattern (symlink, FIFO, socket, device) is unlinked, which removes only
 * the name, with a warning. Returns the paths of the files reclaimed.
 */
export function reclaimStaleFiles(dir: string, prefix: string): string[] {
  const reclaimed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    throw new Error(`--huge-dir ${dir} cannot be read: ${(e as Error).message}`);
  }
  const re = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}map_\\d+$`);
  let bytes = 0;
  for (const n of names) {
    if (!re.test(n)) continue;
    const path = `${dir}/${n}`;
    let fd: number;
    try {
      fd = os.open(path, os.O_RDWR | fsConstants.O_NOFOLLOW | os.O_NONBLOCK);
    } catch (e) {
      const st = lstatQuiet(path);
      if (st === null) continue; // raced with another reclaimer
      if (st.isFile()) throw e; // a regular file we cannot open: say why
      planted(path, st.isSymbolicLink() ? 'a symbolic link' : 'not a regular file');
      continue;
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) {
        planted(path, st.isFIFO() ? 'a FIFO' : 'not a regular file');
        continue;
      }
      if (!os.flock(fd, os.LOCK_EX | os.LOCK_NB)) {
        throw new Error(
          `file prefix "${prefix}" is in use by another running process (its hugepage file ${path} is locked); choose another --file-prefix`,
        );
      }
      os.flock(fd, os.LOCK_UN);
      bytes += st.size;
    } finally {
      os.close(fd);
    }
    unlinkQuiet(path);
    reclaimed.push(path);
    log('info', 'memory', `reclaimed stale hugepage file ${path} (its process is gone)`);
  }
  if (reclaimed.length > 0) {
    log('warn', 'memory', `reclaimed ${reclaimed.length} stale hugepage file${reclaimed.length === 1 ? '' : 's'} (${bytes} bytes) ` +
      `of file prefix "${prefix}" in ${dir}: left by a process that is gone (crashed or killed)`);
  }
  return reclaimed;
}

/** A name under the stale-file pattern that is no hugepage file: remove the name (never what it points to). */
function planted(path: string, what: string): void {
  unlinkQuiet(path);
  log('warn', 'memory', `removed ${path}: ${what} where a stale hugepage file would be (not followed, not opened)`);
}

function lstatQuiet(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

function unlinkQuiet(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    /* raced with another reclaimer */
  }
}
