/**
 * --vfio-mode auto|group|iommufd: which kernel path opens a device.
 *
 * - iommufd: /dev/iommu exists and the device has a VFIO cdev: sysfs <dev>/vfio-dev/vfioN and
 *   /dev/vfio/devices/vfioN.
 * - group: the device's IOMMU group has a VFIO group node, /dev/vfio/N (or /dev/vfio/noiommu-N
 *   when VFIO runs without an IOMMU).
 * - auto: iommufd when it is available for the device, else group.
 *
 * A no-IOMMU device (group node /dev/vfio/noiommu-N) always takes the group path: Linux 6.6+
 * registers it without a cdev (drivers/vfio/vfio.h vfio_device_add(): its sysfs vfio-dev/vfioN has
 * no dev file, /dev/vfio/devices/ no node), and a kernel that does show one has a bind protocol
 * (iommufd -1, or a real iommufd) tspmd does not guess; --vfio-mode iommufd is refused for it.
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
  /**
   * no-IOMMU only: a cdev the kernel shows for the device anyway (sysfs vfio-dev/vfioN/dev,
   * /dev/vfio/devices/vfioN or the 2023 RFC's /dev/vfio/devices/noiommu-vfioN), else null
   */
  noIommuCdev: string | null;
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
  const seen = noIommu && cdevName
    ? [join(target.sysfsDir, 'vfio-dev', cdevName, 'dev'), cdevPath!, join(devRoot, 'vfio', 'devices', `noiommu-${cdevName}`)].find(exists)
    : undefined;
  return { iommufd, cdev, cdevName, group, noIommu, noIommuCdev: seen ?? null };
}

/** Why a no-IOMMU device is not opened through a cdev, from what the machine shows ("no-IOMMU device: " goes before it). */
function noIommuWhyNoCdev(target: VfioTarget, nodes: VfioNodes): string {
  if (nodes.noIommuCdev !== null) {
    return `the kernel shows a VFIO cdev for it (${nodes.noIommuCdev}), but tspmd opens no-IOMMU devices through the group path only`;
  }
  return nodes.cdevName === null
    ? `it has no VFIO cdev (${target.sysfsDir}/vfio-dev/ has no vfioN; no-IOMMU devices use the group path)`
    : `this kernel gives it no VFIO cdev (${target.sysfsDir}/vfio-dev/${nodes.cdevName} has no dev; Linux 6.6+ keeps no-IOMMU devices on the group path)`;
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
  if (nodes.noIommu && requested !== 'group') {
    const why = noIommuWhyNoCdev(target, nodes);
    return requested === 'iommufd'
      ? { mode: null, reason: `--vfio-mode iommufd: no-IOMMU device (group node ${nodes.group}): ${why}; use --vfio-mode group or auto`, nodes }
      : { mode: 'group', reason: `auto: group node ${nodes.group} (no-IOMMU); no-IOMMU device: ${why}`, nodes };
  }
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
  if (nodes.group !== null) return { mode: 'group', reason: `auto: group node ${nodes.group}; no IOMMUFD because ${whyNoIommufd}`, nodes };
  return { mode: null, reason: `no VFIO access: ${whyNoGroup}`, nodes };
}
