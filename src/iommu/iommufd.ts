/**
 * The IOMMUFD back end: /dev/iommu with one IOAS (I/O address space) for all of this process's
 * devices, each device opened through its VFIO cdev (/dev/vfio/devices/vfioN, found through sysfs
 * <dev>/vfio-dev/vfioN), bound to the iommufd (VFIO_DEVICE_BIND_IOMMUFD) and attached to the IOAS
 * (VFIO_DEVICE_ATTACH_IOMMUFD_PT). DMA maps at a fixed IOVA (IOMMU_IOAS_MAP_FIXED_IOVA).
 *
 * As the kernel's IOMMUFD series for DPDK does: the cdev node's major:minor is checked against the
 * device's sysfs vfio-dev/vfioN/dev before it is opened (a stale or foreign node in a container's
 * /dev is refused, not used); a device is detached from the IOAS (VFIO_DEVICE_DETACH_IOMMUFD_PT)
 * before its fd is closed; and a map of a range that this IOAS already maps to the same memory
 * (EEXIST) is not an error, while one that would map it elsewhere is.
 */
import { fstatSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as os from '../os/libc.js';
import { OsError } from '../os/libc.js';
import * as U from './vfio-uapi.js';
import type { DmaSpace } from './device.js';
import { KernelVfioDevice } from './kernel-device.js';
import { log } from '../log.js';

function cause(e: unknown): string {
  return e instanceof OsError ? `${e.code}: ${os.strerror(e.errno)}` : (e as Error).message;
}

/** An iommufd with one IOAS; a DmaSpace. */
export class Iommufd implements DmaSpace {
  readonly fd: number;
  readonly path: string;
  /** the IOAS every device attaches to */
  readonly ioasId: number;
  private devices = 0;
  private closed = false;
  /** what this IOAS maps: iova -> [va, length], to tell a repeated map from a conflicting one */
  private readonly maps = new Map<bigint, [bigint, number]>();

  private constructor(fd: number, path: string, ioasId: number) {
    this.fd = fd;
    this.path = path;
    this.ioasId = ioasId;
  }

  /** Open devRoot/iommu and allocate an IOAS; throws naming the node and the fix. */
  static open(devRoot: string): Iommufd {
    const path = join(devRoot, 'iommu');
    let fd: number;
    try {
      fd = os.open(path, os.O_RDWR);
    } catch (e) {
      throw new Error(`IOMMUFD ${path} cannot be opened: ${cause(e)}; it needs a kernel with CONFIG_IOMMUFD (or use --vfio-mode group)`);
    }
    try {
      const s = U.iommu_ioas_alloc;
      const buf = s.encode({ size: s.size });
      try {
        os.ioctl(fd, U.IOMMU_IOAS_ALLOC, buf);
      } catch (e) {
        throw new Error(`${path}: IOMMU_IOAS_ALLOC failed: ${cause(e)} (is it the iommufd device?)`);
      }
      const id = s.get(U.view(buf), 'out_ioas_id');
      log('info', 'vfio', `${path}: IOAS ${id} allocated`);
      return new Iommufd(fd, path, id);
    } catch (e) {
      os.close(fd);
      throw e;
    }
  }

  /**
   * Open the device `name` through its cdev, bind it to this iommufd and attach it to the IOAS.
   * sysfsDev: the device's sysfs vfio-dev/vfioN/dev ("MAJOR:MINOR"), checked against the node.
   */
  openDevice(name: string, cdevPath: string, sysfsDev: string | null = null): KernelVfioDevice {
    if (this.closed) throw new Error(`${this.path}: the iommufd is closed`);
    let fd: number;
    try {
      fd = os.open(cdevPath, os.O_RDWR);
    } catch (e) {
      const busy = e instanceof OsError && e.code === 'EBUSY';
      throw new Error(`${name}: VFIO cdev ${cdevPath} cannot be opened: ${cause(e)}${busy ? ' (the device is in use elsewhere)' : '; run as root'}`);
    }
    try {
      if (sysfsDev !== null) checkCdevNode(name, cdevPath, fd, sysfsDev);
      const b = U.vfio_device_bind_iommufd;
      const bind = b.encode({ argsz: b.size, flags: 0, iommufd: this.fd });
      try {
        os.ioctl(fd, U.VFIO_DEVICE_BIND_IOMMUFD, bind);
      } catch (e) {
        throw new Error(`${name}: VFIO_DEVICE_BIND_IOMMUFD of ${cdevPath} to ${this.path} failed: ${cause(e)}`);
      }
      const devId = b.get(U.view(bind), 'out_devid');
      const a = U.vfio_device_attach_iommufd_pt;
      const att = a.encode({ argsz: a.size, flags: 0, pt_id: this.ioasId });
      try {
        os.ioctl(fd, U.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att);
      } catch (e) {
        throw new Error(`${name}: VFIO_DEVICE_ATTACH_IOMMUFD_PT to IOAS ${this.ioasId} failed: ${cause(e)}`);
      }
      log('info', 'vfio', `${name}: opened through ${cdevPath}, iommufd device ${devId}, attached to IOAS ${this.ioasId} (hwpt ${a.get(U.view(att), 'pt_id')})`);
    } catch (e) {
      os.close(fd);
      throw e;
    }
    this.devices++;
    return new KernelVfioDevice(name, 'iommufd', fd, this, () => { this.devices--; }, () => detachDevice(name, fd, this.ioasId));
  }

  /** IOMMU_IOAS_MAP at a fixed IOVA, readable and writeable. */
  dmaMap(va: bigint, iova: bigint, len: number): void {
    if (this.closed) throw new Error(`${this.path}: the iommufd is closed`);
    const s = U.iommu_ioas_map;
    const buf = s.encode({
      size: s.size, flags: U.IOMMU_IOAS_MAP_FIXED_IOVA | U.IOMMU_IOAS_MAP_READABLE | U.IOMMU_IOAS_MAP_WRITEABLE,
      ioas_id: this.ioasId, user_va: va, length: BigInt(len), iova,
    });
    try {
      os.ioctl(this.fd, U.IOMMU_IOAS_MAP, buf);
      this.maps.set(iova, [va, len]);
    } catch (e) {
      if (e instanceof OsError && e.code === 'EEXIST') {
        const had = this.maps.get(iova);
        if (had !== undefined && had[0] === va && had[1] === len) {
          log('debug', 'vfio', `IOMMU_IOAS_MAP of va 0x${va.toString(16)} at iova 0x${iova.toString(16)} (${len} bytes): already mapped so (EEXIST), kept`);
          return;
        }
        throw new Error(`IOMMU_IOAS_MAP of va 0x${va.toString(16)} at iova 0x${iova.toString(16)} (${len} bytes) into IOAS ${this.ioasId}: ` +
          (had !== undefined ? `that IOVA already maps va 0x${had[0].toString(16)} (${had[1]} bytes)` : 'the range overlaps one already mapped') +
          '; each IOVA may map one memory range: unmap it first or choose another IOVA');
      }
      throw new Error(`IOMMU_IOAS_MAP of va 0x${va.toString(16)} at iova 0x${iova.toString(16)} (${len} bytes) into IOAS ${this.ioasId} failed: ${cause(e)}` +
        (e instanceof OsError && (e.code === 'ENOENT' || e.code === 'EINVAL' || e.code === 'EEXIST')
          ? ' (the IOVA may be outside the IOMMU\'s aperture or already mapped: use --iova-mode pa, or give the IOMMU a wider address width)' : ''));
    }
  }

  /** IOMMU_IOAS_UNMAP of exactly [iova, iova+len). */
  dmaUnmap(iova: bigint, len: number): void {
    if (this.closed) return;
    const s = U.iommu_ioas_unmap;
    const buf = s.encode({ size: s.size, ioas_id: this.ioasId, iova, length: BigInt(len) });
    try {
      os.ioctl(this.fd, U.IOMMU_IOAS_UNMAP, buf);
    } catch (e) {
      throw new Error(`IOMMU_IOAS_UNMAP at iova 0x${iova.toString(16)} (${len} bytes) from IOAS ${this.ioasId} failed: ${cause(e)}`);
    }
    this.maps.delete(iova);
    const done = s.get64(U.view(buf), 'length');
    if (done !== BigInt(len)) throw new Error(`IOMMU_IOAS_UNMAP at iova 0x${iova.toString(16)}: unmapped ${done} of ${len} bytes`);
  }

  /** Destroy the IOAS and close the iommufd (devices must be closed first). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.devices > 0) log('warn', 'vfio', `${this.path}: ${this.devices} device(s) still open while the iommufd closes`);
    try {
      const s = U.iommu_destroy;
      os.ioctl(this.fd, U.IOMMU_DESTROY, s.encode({ size: s.size, id: this.ioasId }));
    } catch (e) {
      log('warn', 'vfio', `${this.path}: IOMMU_DESTROY of IOAS ${this.ioasId} failed: ${cause(e)}`);
    } finally {
      os.close(this.fd);
    }
  }
}

/** VFIO_DEVICE_DETACH_IOMMUFD_PT: the device leaves its IOAS before its fd closes (a failure is logged: close detaches too). */
function detachDevice(name: string, fd: number, ioasId: number): void {
  const d = U.vfio_device_detach_iommufd_pt;
  try {
    os.ioctl(fd, U.VFIO_DEVICE_DETACH_IOMMUFD_PT, d.encode({ argsz: d.size, flags: 0 }));
    log('debug', 'vfio', `${name}: detached from IOAS ${ioasId}`);
  } catch (e) {
    log('warn', 'vfio', `${name}: VFIO_DEVICE_DETACH_IOMMUFD_PT from IOAS ${ioasId} failed: ${cause(e)}`);
  }
}

/** The major:minor of a char device number (Linux's dev_t encoding). */
function majorMinor(rdev: number): string {
  const r = BigInt(rdev);
  const major = ((r >> 8n) & 0xfffn) | ((r >> 32n) & ~0xfffn);
  const minor = (r & 0xffn) | ((r >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/**
 * Check that the opened node `fd` (path cdevPath) is the character device sysfs names for the
 * device (sysfsDev holds "MAJOR:MINOR"): a stale /dev/vfio/devices entry, or one a container maps
 * from another device, is refused with the numbers of both. Throws a one-line Error.
 */
export function checkCdevNode(name: string, cdevPath: string, fd: number, sysfsDev: string): void {
  let want: string;
  try {
    want = readFileSync(sysfsDev, 'utf8').trim();
  } catch (e) {
    throw new Error(`${name}: ${sysfsDev} cannot be read (${(e as Error).message}); is the device bound to vfio-pci?`);
  }
  const st = fstatSync(fd);
  if (!st.isCharacterDevice()) throw new Error(`${name}: ${cdevPath} is not a character device; recreate it (mknod ${cdevPath} c ${want.replace(':', ' ')})`);
  const got = majorMinor(st.rdev);
  if (got !== want) {
    throw new Error(`${name}: ${cdevPath} is char device ${got} but ${sysfsDev} says ${want}: the node is stale or another device's; recreate it (mknod ${cdevPath} c ${want.replace(':', ' ')}) or fix the container's device list`);
  }
}
