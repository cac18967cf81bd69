/**
 * --vfio-mode auto|group|iommufd: which kernel path opens a device.
 *
 * - iommufd: /dev/iommu exists and the device has a VFIO cdev: sysfs <dev>/vfio-dev/vfioN and
 *   /dev/vfio/devices/vfioN.
 * - group: the device's IOMMU group has a VFIO group node, /dev/vfio/N (or /dev/vfio/noiommu-N
 *   when VFIO runs without an IOMMU).
 * - auto: iommufd when it is available for the device, else group.
 *
 * Both roots (sysfs and /dev) are parameters so that the choice is tested on fixture trees.
 */
import { join } from 'node:path';
import { exists, listOptionalDir } from '../sysfs.js';

/** The --vfio-mode option. */
export type VfioModeOption = 'auto' | 'group' | 'iommufd';
/** A resolved mode. */
export type VfioMode = 'group' | 'iommufd';

/** A device as the mode choice sees it. */
export interface VfioTarget {
  /** PCI address or mdev UUID */
  name: string;
  /** the device's sysfs directory (resolved, e.g. <root>/devices/pci0000:00/0000:00:03.0) */
  sysfsDir: string;
  /** IOMMU group number from the iommu_group link, or null */
  iommuGroup: number | null;
}

/** The VFIO nodes a device has under a /dev root. */
export interface VfioNodes {
  /** /dev/iommu, when it exists */
  iommufd: string | null;
  /** /dev/vfio/devices/vfioN for the device's cdev, when sysfs and /dev both have it */
  cdev: string | null;
  /** the cdev's name in sysfs (vfioN), even when /dev lacks the node */
  cdevName: string | null;
  /** /dev/vfio/N or /dev/vfio/noiommu-N, when it exists */
  group: string | null;
  /** the group node is a no-IOMMU group */
  noIommu: boolean;
}

/** What was chosen and why (mode null: the device cannot be opened; reason says what is missing). */
export interface ModeChoice {
  mode: VfioMode | null;
  reason: string;
  nodes: VfioNodes;
}

/** Find the device's VFIO nodes: iommufd, cdev (through sysfs vfio-dev/) and group node. */
export function vfioNodes(target: VfioTarget, devRoot: string): VfioNodes {
  const iommufd = exists(join(devRoot, 'iommu')) ? join(devRoot, 'iommu') : null;
  const cdevName = listOptionalDir(join(target.sysfsDir, 'vfio-dev')).find((n) => /^vfio\d+$/.test(n)) ?? null;
  const cdevPath = cdevName ? join(devRoot, 'vfio', 'devices', cdevName) : null;
  const cdev = cdevPath && exists(cdevPath) ? cdevPath : null;
  let group: string | null = null, noIommu = false;
  if (target.iommuGroup !== null) {
    const g = join(devRoot, 'vfio', String(target.iommuGroup));
    const n = join(devRoot, 'vfio', `noiommu-${target.iommuGroup}`);
    if (exists(g)) group = g;
    else if (exists(n)) { group = n; noIommu = true; }
  }
  return { iommufd, cdev, cdevName, group, noIommu };
}

/** Choose the VFIO mode for a device (see the module comment); never throws for a missing node. */
export function chooseVfioMode(requested: VfioModeOption, target: VfioTarget, devRoot: string): ModeChoice {
  const nodes = vfioNodes(target, devRoot);
  const iommufdOk = nodes.iommufd !== null && nodes.cdev !== null;
  const whyNoIommufd = nodes.iommufd === null
    ? `${join(devRoot, 'iommu')} does not exist (kernel without CONFIG_IOMMUFD)`
    : nodes.cdevName === null
      ? `${target.sysfsDir}/vfio-dev/ has no vfioN cdev (kernel without CONFIG_VFIO_DEVICE_CDEV, or the device is not bound to vfio-pci)`
      : `${join(devRoot, 'vfio', 'devices', nodes.cdevName)} does not exist`;
  const whyNoGroup = target.iommuGroup === null
    ? 'the device has no IOMMU group (no iommu_group link): enable the IOMMU (intel_iommu=on / amd_iommu=on) or VFIO no-IOMMU mode (modprobe vfio enable_unsafe_noiommu_mode=1)'
    : `neither ${join(devRoot, 'vfio', String(target.iommuGroup))} nor ${join(devRoot, 'vfio', `noiommu-${target.iommuGroup}`)} exists (is the device bound to vfio-pci and the vfio module loaded?)`;
  if (requested === 'iommufd') {
    return iommufdOk
      ? { mode: 'iommufd', reason: `--vfio-mode iommufd: ${nodes.iommufd} and ${nodes.cdev}`, nodes }
      : { mode: null, reason: `--vfio-mode iommufd: ${whyNoIommufd}; use --vfio-mode group or auto`, nodes };
  }
  if (requested === 'group') {
    return nodes.group !== null
      ? { mode: 'group', reason: `--vfio-mode group: ${nodes.group}${nodes.noIommu ? ' (no-IOMMU)' : ''}`, nodes }
      : { mode: null, reason: `--vfio-mode group: ${whyNoGroup}`, nodes };
  }
  if (iommufdOk) return { mode: 'iommufd', reason: `auto: ${nodes.iommufd} and ${nodes.cdev} exist`, nodes };
  if (nodes.group !== null) return { mode: 'group', reason: `auto: group node ${nodes.group}${nodes.noIommu ? ' (no-IOMMU)' : ''}; no IOMMUFD because ${whyNoIommufd}`, nodes };
  return { mode: null, reason: `no VFIO access: ${whyNoGroup}`, nodes };
}
