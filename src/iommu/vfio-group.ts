/**
 * The VFIO container/group back end: /dev/vfio/vfio (one container for all of this process's
 * groups, as DPDK's default container), /dev/vfio/N per IOMMU group (or /dev/vfio/noiommu-N),
 * device fds by name (a PCI address or an mdev UUID), and type1 DMA mapping on the container.
 *
 * Order, as the kernel requires it: check the API version and extensions; open the group, check
 * that it is viable, attach it to the container; set the IOMMU type once the first group is in;
 * only then map DMA and get device fds.
 */
import { join } from 'node:path';
import * as os from '../os/libc.js';
import { OsError } from '../os/libc.js';
import * as U from './vfio-uapi.js';
import type { DmaSpace } from './device.js';
import { KernelVfioDevice } from './kernel-device.js';
import { listOptionalDir } from '../sysfs.js';
import { log } from '../log.js';

/** An IOVA range the IOMMU accepts (inclusive end). */
export interface IovaRange {
  start: bigint;
  end: bigint;
}

interface Group {
  fd: number;
  path: string;
  refs: number;
  noIommu: boolean;
}

/** Render an OsError as "ENOENT: No such file or directory", anything else as its message. */
function cause(e: unknown): string {
  return e instanceof OsError ? `${e.code}: ${os.strerror(e.errno)}` : (e as Error).message;
}

/** A VFIO container with its groups; a DmaSpace once its IOMMU type is set. */
export class VfioContainer implements DmaSpace {
  readonly fd: number;
  readonly path: string;
  /** VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU or VFIO_NOIOMMU_IOMMU once set, else null */
  iommuType: number | null = null;
  /** page sizes the IOMMU supports (bitmap), from VFIO_IOMMU_GET_INFO */
  pageSizes = 0n;
  /** IOVA ranges the IOMMU accepts, from VFIO_IOMMU_GET_INFO's capability (empty: unknown) */
  iovaRanges: IovaRange[] = [];
  private readonly groups = new Map<number, Group>();
  private readonly sysfsRoot: string;
  private readonly ready: Array<() => void> = [];
  private closed = false;

  private constructor(fd: number, path: string, sysfsRoot: string) {
    this.fd = fd;
    this.path = path;
    this.sysfsRoot = sysfsRoot;
  }

  /** Open devRoot/vfio/vfio and check the API version; throws naming the node and the fix. */
  static open(devRoot: string, sysfsRoot: string): VfioContainer {
    const path = join(devRoot, 'vfio', 'vfio');
    let fd: number;
    try {
      fd = os.open(path, os.O_RDWR);
    } catch (e) {
      throw new Error(`VFIO container ${path} cannot be opened: ${cause(e)}; load the vfio-pci module (modprobe vfio-pci) and run as root`);
    }
    try {
      let v: number;
      try {
        v = os.ioctl(fd, U.VFIO_GET_API_VERSION, null);
      } catch (e) {
        throw new Error(`${path}: VFIO_GET_API_VERSION failed: ${cause(e)} (is it the VFIO container device?)`);
      }
      if (v !== U.VFIO_API_VERSION) throw new Error(`${path}: VFIO API version ${v}, tspmd speaks version ${U.VFIO_API_VERSION}`);
      return new VfioContainer(fd, path, sysfsRoot);
    } catch (e) {
      os.close(fd);
      throw e;
    }
  }

  /** VFIO_CHECK_EXTENSION: whether the kernel supports an IOMMU type or extension. */
  hasExtension(ext: number): boolean {
    try {
      return os.ioctlInt(this.fd, U.VFIO_CHECK_EXTENSION, ext) > 0;
    } catch (e) {
      throw new Error(`${this.path}: VFIO_CHECK_EXTENSION(${ext}) failed: ${cause(e)}`);
    }
  }

  /** Run fn once the IOMMU type is set (DMA mapping is possible), or now if it already is. */
  onReady(fn: () => void): void {
    if (this.iommuType !== null) fn();
    else this.ready.push(fn);
  }

  /**
   * Open the device `name` (PCI address or mdev UUID) of IOMMU group `group` through the group node
   * groupPath (/dev/vfio/N or /dev/vfio/noiommu-N).
   */
  openDevice(name: string, group: number, groupPath: string): KernelVfioDevice {
    if (this.closed) throw new Error(`${this.path}: the container is closed`);
    const g = this.attachGroup(group, groupPath);
    let fd: number;
    try {
      fd = os.ioctl(g.fd, U.VFIO_GROUP_GET_DEVICE_FD, Buffer.from(name + '\0'));
    } catch (e) {
      this.releaseGroup(group);
      throw new Error(`${name}: VFIO_GROUP_GET_DEVICE_FD on ${groupPath} failed: ${cause(e)}` +
        (e instanceof OsError && e.code === 'EBUSY' ? ' (the device is already open, in this or another process)' : ''));
    }
    // attachGroup's reference now belongs to the device; its close() releases it
    log('info', 'vfio', `${name}: opened through group ${group} (${groupPath})${g.noIommu ? ', no-IOMMU' : ''}`);
    return new KernelVfioDevice(name, g.noIommu ? 'group (no-IOMMU)' : 'group', fd, this, () => this.releaseGroup(group));
  }

  /** Whether the container runs without an IOMMU (devices DMA to physical addresses). */
  get noIommu(): boolean {
    return this.iommuType === U.VFIO_NOIOMMU_IOMMU;
  }

  /** VFIO_IOMMU_MAP_DMA (read and write); a no-op without an IOMMU. */
  dmaMap(va: bigint, iova: bigint, len: number): void {
    if (this.iommuType === null) throw new Error(`${this.path}: DMA mapping before any group is attached (no IOMMU type set yet)`);
    if (this.noIommu) return;
    this.checkIova(iova, len);
    const s = U.vfio_iommu_type1_dma_map;
    const buf = s.encode({ argsz: s.size, flags: U.VFIO_DMA_MAP_FLAG_READ | U.VFIO_DMA_MAP_FLAG_WRITE, vaddr: va, iova, size: BigInt(len) });
    try {
      os.ioctl(this.fd, U.VFIO_IOMMU_MAP_DMA, buf);
    } catch (e) {
      throw new Error(`VFIO_IOMMU_MAP_DMA of va 0x${va.toString(16)} at iova 0x${iova.toString(16)} (${len} bytes) failed: ${cause(e)}` +
        (e instanceof OsError && e.code === 'ENOSPC' ? ' (too many mappings: raise the vfio_iommu_type1 dma_entry_limit module parameter)' : '') +
        (e instanceof OsError && e.code === 'ENOMEM' ? ' (locked memory limit: raise ulimit -l, or run as root)' : ''));
    }
  }

  /** VFIO_IOMMU_UNMAP_DMA; a no-op without an IOMMU. */
  dmaUnmap(iova: bigint, len: number): void {
    if (this.iommuType === null || this.noIommu) return;
    const s = U.vfio_iommu_type1_dma_unmap;
    const buf = s.encode({ argsz: s.size, iova, size: BigInt(len) });
    try {
      os.ioctl(this.fd, U.VFIO_IOMMU_UNMAP_DMA, buf);
    } catch (e) {
      throw new Error(`VFIO_IOMMU_UNMAP_DMA at iova 0x${iova.toString(16)} (${len} bytes) failed: ${cause(e)}`);
    }
    const done = s.get64(U.view(buf), 'size');
    if (done !== BigInt(len)) throw new Error(`VFIO_IOMMU_UNMAP_DMA at iova 0x${iova.toString(16)}: unmapped ${done} of ${len} bytes`);
  }

  /** Close every group and the container (devices must be closed first; mappings go with it). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [n, g] of this.groups) {
      if (g.refs > 0) log('warn', 'vfio', `group ${n} still has ${g.refs} open device(s) while the container closes`);
      os.close(g.fd);
    }
    this.groups.clear();
    os.close(this.fd);
  }

  /** Open (or reuse) a group, check viability, attach it, set the IOMMU type; holds one reference. */
  private attachGroup(group: number, path: string): Group {
    const have = this.groups.get(group);
    if (have) {
      have.refs++;
      return have;
    }
    const noIommu = /noiommu-\d+$/.test(path);
    let fd: number;
    try {
      fd = os.open(path, os.O_RDWR);
    } catch (e) {
      const busy = e instanceof OsError && e.code === 'EBUSY';
      throw new Error(`VFIO group ${path} cannot be opened: ${cause(e)}` + (busy ? ' (another process, e.g. QEMU or another tspmd, holds the group)' : '; run as root'));
    }
    const g: Group = { fd, path, refs: 1, noIommu };
    try {
      const s = U.vfio_group_status;
      const st = s.encode({ argsz: s.size });
      try {
        os.ioctl(fd, U.VFIO_GROUP_GET_STATUS, st);
      } catch (e) {
        throw new Error(`${path}: VFIO_GROUP_GET_STATUS failed: ${cause(e)} (is it a VFIO group device?)`);
      }
      const flags = s.get(U.view(st), 'flags');
      if ((flags & U.VFIO_GROUP_FLAGS_VIABLE) === 0) {
        const devs = listOptionalDir(join(this.sysfsRoot, 'kernel', 'iommu_groups', String(group), 'devices'));
        throw new Error(`VFIO group ${group} is not viable: every device in it must be bound to vfio-pci (or to no driver); ` +
          `its devices: ${devs.join(', ') || 'see ' + join(this.sysfsRoot, 'kernel', 'iommu_groups', String(group), 'devices')}`);
      }
      if ((flags & U.VFIO_GROUP_FLAGS_CONTAINER_SET) === 0) {
        const arg = new Uint8Array(4);
        new DataView(arg.buffer).setInt32(0, this.fd, true);
        try {
          os.ioctl(fd, U.VFIO_GROUP_SET_CONTAINER, arg);
        } catch (e) {
          throw new Error(`${path}: VFIO_GROUP_SET_CONTAINER failed: ${cause(e)}` +
            (this.iommuType !== null && noIommu !== this.noIommu ? ' (no-IOMMU and IOMMU groups cannot share a container)' : ''));
        }
      }
      if (this.iommuType === null) this.setIommu(noIommu);
      else if (noIommu !== this.noIommu) throw new Error(`VFIO group ${path}: no-IOMMU and IOMMU groups cannot be used together`);
    } catch (e) {
      os.close(fd);
      throw e;
    }
    this.groups.set(group, g);
    return g;
  }

  private releaseGroup(group: number): void {
    const g = this.groups.get(group);
    if (!g) return;
    if (--g.refs > 0) return;
    this.groups.delete(group);
    os.close(g.fd); // closing the last fd of a group detaches it from the container
  }

  /** VFIO_SET_IOMMU with the best type, then VFIO_IOMMU_GET_INFO; runs the onReady callbacks. */
  private setIommu(noIommu: boolean): void {
    let type: number;
    if (noIommu) {
      if (!this.hasExtension(U.VFIO_NOIOMMU_IOMMU)) throw new Error(`${this.path}: the kernel lacks VFIO no-IOMMU support (CONFIG_VFIO_NOIOMMU)`);
      type = U.VFIO_NOIOMMU_IOMMU;
    } else if (this.hasExtension(U.VFIO_TYPE1v2_IOMMU)) type = U.VFIO_TYPE1v2_IOMMU;
    else if (this.hasExtension(U.VFIO_TYPE1_IOMMU)) type = U.VFIO_TYPE1_IOMMU;
    else throw new Error(`${this.path}: no supported IOMMU type (type1v2, type1): load vfio_iommu_type1`);
    try {
      os.ioctlInt(this.fd, U.VFIO_SET_IOMMU, type);
    } catch (e) {
      throw new Error(`${this.path}: VFIO_SET_IOMMU(${type}) failed: ${cause(e)}`);
    }
    this.iommuType = type;
    if (!noIommu) this.readIommuInfo();
    log('info', 'vfio', `${this.path}: IOMMU type ${type === U.VFIO_TYPE1v2_IOMMU ? 'type1v2' : type === U.VFIO_TYPE1_IOMMU ? 'type1' : 'no-IOMMU'}` +
      (this.pageSizes ? `, page sizes 0x${this.pageSizes.toString(16)}` : '') +
      (this.iovaRanges.length ? `, IOVA ${this.iovaRanges.map((r) => `0x${r.start.toString(16)}-0x${r.end.toString(16)}`).join(' ')}` : ''));
    for (const fn of this.ready.splice(0)) fn();
  }

  /** VFIO_IOMMU_GET_INFO: page sizes and the IOVA range capability. */
  private readIommuInfo(): void {
    const s = U.vfio_iommu_type1_info;
    let buf = s.encode({ argsz: s.size });
    try {
      os.ioctl(this.fd, U.VFIO_IOMMU_GET_INFO, buf);
      const need = s.get(U.view(buf), 'argsz');
      if (need > buf.byteLength && need < 1 << 20) {
        buf = s.encode({ argsz: need }, need - s.size);
        os.ioctl(this.fd, U.VFIO_IOMMU_GET_INFO, buf);
      }
    } catch (e) {
      throw new Error(`${this.path}: VFIO_IOMMU_GET_INFO failed: ${cause(e)}`);
    }
    const dv = U.view(buf);
    const flags = s.get(dv, 'flags');
    if (flags & U.VFIO_IOMMU_INFO_PGSIZES) this.pageSizes = s.get64(dv, 'iova_pgsizes');
    if (flags & U.VFIO_IOMMU_INFO_CAPS) {
      for (const cap of U.walkCaps(buf, s.get(dv, 'cap_offset'), `${this.path} IOMMU info`)) {
        if (cap.id !== U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) continue;
        const c = U.vfio_iommu_type1_info_cap_iova_range, r = U.vfio_iova_range;
        const n = c.get(dv, 'nr_iovas', cap.offset);
        const first = cap.offset + c.offsetOf('iova_ranges');
        if (first + n * r.size > buf.byteLength) throw new Error(`${this.path}: IOVA range capability is truncated`);
        for (let i = 0; i < n; i++) this.iovaRanges.push({ start: r.get64(dv, 'start', first + i * r.size), end: r.get64(dv, 'end', first + i * r.size) });
      }
    }
  }

  private checkIova(iova: bigint, len: number): void {
    if (this.iovaRanges.length === 0) return;
    const last = iova + BigInt(len) - 1n;
    if (this.iovaRanges.some((r) => iova >= r.start && last <= r.end)) return;
    throw new Error(`IOVA 0x${iova.toString(16)}-0x${last.toString(16)} is outside what the IOMMU accepts (` +
      `${this.iovaRanges.map((r) => `0x${r.start.toString(16)}-0x${r.end.toString(16)}`).join(', ')}): ` +
      'use --iova-mode pa, or give the IOMMU a wider address width (QEMU: -device intel-iommu,aw-bits=48)');
  }
}
