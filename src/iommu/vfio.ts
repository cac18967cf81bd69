/**
 * The VFIO layer of the EAL: opens devices through the mode --vfio-mode chooses (IOMMUFD + cdev,
 * or group + container), and keeps every EAL memory segment DMA-mapped into every container and
 * IOAS it created, including segments added later. Without an IOMMU (no-IOMMU groups) nothing is
 * mapped and devices DMA to physical addresses, so the EAL must run with --iova-mode pa.
 */
import { join } from 'node:path';
import type { EalMemory } from '../memory/memory.js';
import type { VfioDevice } from './device.js';
import { DmaMemoryMap } from './dma.js';
import { Iommufd } from './iommufd.js';
import { chooseVfioMode, type ModeChoice, type VfioModeOption, type VfioTarget } from './mode.js';
import { VfioContainer } from './vfio-group.js';
import { log } from '../log.js';

/** Where VFIO lives and what it maps. */
export interface VfioConfig {
  mode: VfioModeOption;
  sysfsRoot: string;
  /** the /dev root (default /dev): /dev/vfio/..., /dev/iommu */
  devRoot: string;
  /** EAL memory to DMA-map into every container/IOAS (null: map nothing, e.g. for listing) */
  memory: EalMemory | null;
}

/** Opens VFIO devices and owns the containers/IOAS they share; close() after the devices. */
export class Vfio {
  readonly config: VfioConfig;
  private container: VfioContainer | null = null;
  private iommufd: Iommufd | null = null;
  private readonly maps: DmaMemoryMap[] = [];
  private readonly open = new Set<VfioDevice>();
  private closed = false;

  /** A VFIO layer; nothing is opened until the first device. */
  constructor(config: VfioConfig) {
    this.config = config;
  }

  /** The mode a device would be opened with, and why (mode null: it cannot be). */
  choose(target: VfioTarget): ModeChoice {
    return chooseVfioMode(this.config.mode, target, this.config.devRoot);
  }

  /** Open a device (PCI address or mdev UUID) through the chosen mode; logs the choice. */
  openDevice(target: VfioTarget): VfioDevice {
    if (this.closed) throw new Error('VFIO layer is closed');
    const c = this.choose(target);
    if (c.mode === null) throw new Error(`${target.name}: ${c.reason}`);
    log('info', 'vfio', `${target.name}: VFIO mode ${c.mode} (${c.reason})`);
    let dev: VfioDevice;
    if (c.mode === 'iommufd') {
      const fd = this.iommufd ?? this.openIommufd();
      dev = fd.openDevice(target.name, c.nodes.cdev!, join(target.sysfsDir, 'vfio-dev', c.nodes.cdevName!, 'dev'));
    } else {
      if (c.nodes.noIommu && this.config.memory && this.config.memory.config.iovaMode !== 'pa') {
        throw new Error(`${target.name}: IOMMU group ${target.iommuGroup} is a no-IOMMU group (${c.nodes.group}): ` +
          'the device DMAs to physical addresses, so run with --iova-mode pa (as root)');
      }
      const ctr = this.container ?? this.openContainer();
      dev = ctr.openDevice(target.name, target.iommuGroup!, c.nodes.group!);
    }
    this.open.add(dev);
    const close = dev.close.bind(dev);
    dev.close = () => { this.open.delete(dev); close(); };
    return dev;
  }

  /** Devices opened and not yet closed. */
  openDevices(): VfioDevice[] {
    return [...this.open];
  }

  /** Close any device still open, stop mapping, then close the IOAS and the container. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    let first: unknown = null;
    for (const d of [...this.open]) {
      try { d.close(); } catch (e) { first ??= e; }
    }
    for (const m of this.maps) m.detach(false); // closing the container/IOAS drops the mappings
    try { this.iommufd?.close(); } catch (e) { first ??= e; }
    try { this.container?.close(); } catch (e) { first ??= e; }
    if (first) throw first;
  }

  private openIommufd(): Iommufd {
    const fd = Iommufd.open(this.config.devRoot);
    this.iommufd = fd;
    if (this.config.memory) this.maps.push(new DmaMemoryMap(this.config.memory, fd, `IOAS ${fd.ioasId} (${fd.path})`));
    return fd;
  }

  private openContainer(): VfioContainer {
    const ctr = VfioContainer.open(this.config.devRoot, this.config.sysfsRoot);
    this.container = ctr;
    const mem = this.config.memory;
    if (mem) ctr.onReady(() => { if (!ctr.noIommu) this.maps.push(new DmaMemoryMap(mem, ctr, `container ${ctr.path}`)); });
    return ctr;
  }
}
