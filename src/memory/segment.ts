/**
 * DMA memory segments: file-backed (a hugetlbfs file or a memfd), MAP_SHARED, populated and locked.
 *
 * A segment is plain data so that a worker thread can rebuild views from it (viewOf(va, len)) and
 * another process can map the same pages through its fd (vfio-user DMA_MAP, emulated devices).
 */
import { unlinkSync } from 'node:fs';
import * as os from '../os/libc.js';
import { OsError } from '../os/libc.js';
import { log } from '../log.js';
import { hugePool, shortageMessage, formatPageSize } from './hugepages.js';

/** Where a segment's pages come from. */
export type Backing =
  | { kind: 'hugetlbfs'; dir: string; prefix: string }
  | { kind: 'memfd'; huge: boolean; prefix: string };

/** IOVA mode: va (iova = va, for an IOMMU) or pa (physical addresses from /proc/self/pagemap). */
export type IovaMode = 'va' | 'pa';

/** One mapped, file-backed piece of DMA memory. Plain data: postable to workers as is. */
export interface Segment {
  id: number;
  /** the backing file's descriptor (hugetlbfs file or memfd) */
  fd: number;
  /** where it is mapped in this process */
  va: bigint;
  /** IOVA of the first byte (pa mode: of the first page; see pageIovas) */
  iova: bigint;
  len: number;
  pageSize: number;
  /** hugetlbfs file path, null for a memfd */
  path: string | null;
  iovaMode: IovaMode;
  /** pa mode only: the IOVA of each page; pages need not be physically adjacent */
  pageIovas: bigint[] | null;
}

/** Map and populate a new segment of len bytes (a multiple of pageSize). */
export function createSegment(id: number, len: number, pageSize: number, backing: Backing, iovaMode: IovaMode): Segment {
  if (!Number.isSafeInteger(len) || len <= 0 || len % pageSize !== 0) {
    throw new RangeError(`segment size ${len} must be a positive multiple of the page size ${pageSize}`);
  }
  let fd: number;
  let path: string | null = null;
  if (backing.kind === 'hugetlbfs') {
    path = `${backing.dir}/${backing.prefix}map_${id}`;
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600);
    // A shared lock says "alive": a later start-up with the same prefix reclaims only unlocked files.
    os.flock(fd, os.LOCK_SH);
  } else {
    const hugeFlags = backing.huge ? os.MFD_HUGETLB | (Math.log2(pageSize) << os.MFD_HUGE_SHIFT) : 0;
    fd = os.memfdCreate(`${backing.prefix}seg_${id}`, hugeFlags | os.MFD_ALLOW_SEALING);
  }
  let va = 0n;
  try {
    os.ftruncate(fd, len);
    if (backing.kind === 'hugetlbfs' || backing.huge) reserveHugePages(fd, len, pageSize, backing.kind === 'hugetlbfs' ? backing.dir : null);
    if (backing.kind === 'memfd') sealSize(fd, id);
    va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED | os.MAP_POPULATE, fd, 0);
    try {
      os.mlock(va, len);
    } catch (e) {
      // Without CAP_IPC_LOCK a large mlock fails; the pages are populated and shared, so go on.
      log('debug', 'memory', `segment ${id}: mlock skipped (${(e as Error).message})`);
    }
    const pageIovas = iovaMode === 'pa' ? physicalPages(va, len, pageSize) : null;
    return { id, fd, va, iova: pageIovas ? pageIovas[0] : va, len, pageSize, path, iovaMode, pageIovas };
  } catch (e) {
    if (va !== 0n) os.munmap(va, len);
    os.close(fd);
    if (path) unlinkSync(path);
    throw e;
  }
}

/**
 * Seal a memfd segment's size (F_SEAL_SHRINK | F_SEAL_GROW) before its fd can reach a device: a
 * device process that maps it (vfio-user DMA_MAP) can then rely on it never shrinking under its
 * mapping (SIGBUS), and no holder of the fd can grow it. Segments never change size once created
 * (the EAL grows by adding segments), so this costs nothing. Not F_SEAL_SEAL: more seals may follow.
 * hugetlbfs files (the other backing) cannot be sealed at all.
 */
function sealSize(fd: number, id: number): void {
  try {
    os.addSeals(fd, os.F_SEAL_SHRINK | os.F_SEAL_GROW);
  } catch (e) {
    throw new Error(`segment ${id}: sealing its memfd against resizing failed (${(e as Error).message}); a device given this memory could be made to fault`);
  }
}

/** fallocate the hugepages so a shortage is a clear error now rather than SIGBUS later. */
function reserveHugePages(fd: number, len: number, pageSize: number, dir: string | null): void {
  try {
    os.fallocate(fd, 0, 0, len);
  } catch (e) {
    if (e instanceof OsError && (e.code === 'ENOSPC' || e.code === 'ENOMEM')) {
      const need = len / pageSize;
      const pool = hugePool(pageSize);
      // The kernel has the pages but this mount will not take them: raising nr_hugepages won't help.
      if (dir !== null && pool !== undefined && pool.available >= need) {
        throw new Error(
          `hugetlbfs at ${dir} cannot hold ${need} pages of ${formatPageSize(pageSize)} (${(need * pageSize) / 2 ** 20} MB) although ${pool.available} are free: ` +
            'its size= mount option (see /proc/mounts) or a hugetlb cgroup limit is reached; remount it larger or pass another --huge-dir',
        );
      }
      throw new Error(shortageMessage(need, pool, pageSize));
    }
    throw e;
  }
}

/** Unmap a segment, close its fd and remove its file. Views over it must no longer be used. */
export function freeSegment(seg: Segment): void {
  os.munmap(seg.va, seg.len);
  os.close(seg.fd);
  if (seg.path) {
    try {
      unlinkSync(seg.path);
    } catch {
      /* already gone */
    }
  }
}

/** Map another process's (or thread's) segment by its fd; returns the local address. */
export function mapSegmentFd(fd: number, len: number, offset = 0): bigint {
  return os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED, fd, offset);
}

/** The IOVA of byte off of a segment. */
export function iovaAt(seg: Segment, off: number): bigint {
  if (seg.pageIovas === null) return seg.iova + BigInt(off);
  const page = Math.floor(off / seg.pageSize);
  return seg.pageIovas[page] + BigInt(off - page * seg.pageSize);
}

/** Whether [off, off+len) of a segment is contiguous in IOVA space (always so in va mode). */
export function iovaContiguous(seg: Segment, off: number, len: number): boolean {
  if (seg.pageIovas === null) return true;
  const first = Math.floor(off / seg.pageSize), last = Math.floor((off + len - 1) / seg.pageSize);
  for (let p = first; p < last; p++) {
    if (seg.pageIovas[p + 1] !== seg.pageIovas[p] + BigInt(seg.pageSize)) return false;
  }
  return true;
}

const PAGEMAP_PFN_MASK = (1n << 55n) - 1n;
const PAGEMAP_PRESENT = 1n << 63n;

/** Physical address of each page of [va, va+len) from /proc/self/pagemap (root only). */
export function physicalPages(va: bigint, len: number, pageSize: number): bigint[] {
  const fd = os.open('/proc/self/pagemap', os.O_RDONLY);
  try {
    const entry = new Uint8Array(8);
    const dv = new DataView(entry.buffer);
    const out: bigint[] = [];
    for (let off = 0; off < len; off += pageSize) {
      const addr = va + BigInt(off);
      os.pread(fd, entry, 8, (addr / 4096n) * 8n);
      const e = dv.getBigUint64(0, true);
      const pfn = e & PAGEMAP_PFN_MASK;
      if ((e & PAGEMAP_PRESENT) === 0n) throw new Error(`iova-mode pa: page at 0x${addr.toString(16)} is not present`);
      if (pfn === 0n) {
        throw new Error('iova-mode pa needs root (CAP_SYS_ADMIN) to read physical addresses from /proc/self/pagemap; run as root or use --iova-mode va');
      }
      out.push(pfn * 4096n + (addr % 4096n));
    }
    return out;
  } finally {
    os.close(fd);
  }
}
