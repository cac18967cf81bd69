/**
 * The emulated virtio-net device's layout and the words its two halves share.
 *
 * PCI: 1af4:1041 rev 1, class 0x020000, subsystem 1af4:1100.
 * BAR4 (16 KiB, memory): 0x0000 common cfg (trapped), 0x1000 ISR (trapped, read clears),
 *   0x2000 device cfg (trapped: mac, status, max_virtqueue_pairs), 0x3000 notify (one shared page,
 *   sparse mmap, polled by the device: notify_off_multiplier 4, queue_notify_off = queue index;
 *   not offered for mmap, each queue's notify register is an ioeventfd doorbell with datamatch =
 *   the queue index, doorbell id = queue index).
 * BAR1 (4 KiB): MSI-X table at 0, PBA at 0x800 (trapped plain storage).
 * Config space: the four virtio capabilities (common, notify, ISR, device: all BAR4), the PCI
 *   configuration access capability (cfg_type 5: a window onto those four), then MSI-X.
 * IRQs: INTx (1) and MSI-X (2 * pairs + 2: one per queue, the config vector, one spare).
 *
 * The control half (device.ts, the server's thread) and the engine on an lcore (backend.ts) share
 * one Int32Array of state words (written by the control half inside plane.quiesce, except the few
 * marked "worker") and one Float64Array of statistics (written by the worker only). The engine
 * reads them only through the emudev back-end API (device.ts backendDesc: the queue table and named
 * attributes over these words, the region 'stats'), never by these indexes.
 */
import { checkDevargs, type Devargs, type DevargsSchema } from '../../../lib/kvargs/kvargs.js';
import { VIRTQ_MAX_SIZE } from '../../../lib/virtio/virtio.js';
import * as CC from '../../../lib/virtio/common_cfg.js';
import type { CommonCfgLayout } from '../../../lib/virtio/common_cfg.js';

export const PCI_SUBSYSTEM_ID = 0x1100;
export const PCI_REVISION = 1;
export const PCI_CLASS_ETHERNET = 0x020000;

export const BAR_CFG = 4;
export const BAR_CFG_SIZE = 0x4000;
export const COMMON_OFF = 0x0000;
export const ISR_OFF = 0x1000;
export const DEVICE_OFF = 0x2000;
export const NOTIFY_OFF = 0x3000;
export const NOTIFY_SIZE = 0x1000;
export const NOTIFY_MULTIPLIER = 4;
export { NOTIFY_IDLE } from './defs.js';
export const BAR_MSIX = 1;
export const BAR_MSIX_SIZE = 0x1000;
export const MSIX_TABLE_OFF = 0;
export const MSIX_PBA_OFF = 0x800;
/** struct virtio_pci_cfg_cap: a virtio_pci_cap, then u8 pci_cfg_data[4] at 16 (20 bytes). */
export const PCI_CFG_DATA = 16;
export const PCI_CFG_CAP_SIZE = 20;

/** Most queue pairs (MSI-X vectors: 2 * pairs + 2, notify words: 2 * pairs + 1). */
export const MAX_PAIRS = 64;

// ---- shared state words (Int32Array indexes) ----

/** bumped by the control half after every change the worker must re-read */
export const G_GEN = 0;
/** device_status as the driver wrote it (without DEVICE_NEEDS_RESET) */
export const G_STATUS = 1;
/** negotiated features, low and high 32 bits (valid once FEATURES_OK is accepted) */
export const G_FEAT_LO = 2, G_FEAT_HI = 3;
/** config_msix_vector */
export const G_CONFIG_VEC = 4;
/** worker: 0, or the NeedsReset reason that set DEVICE_NEEDS_RESET (the control half clears it at reset) */
export const G_NEEDS_RESET = 5;
/** worker: the queue the reason was found on */
export const G_ERR_QUEUE = 6;
/** worker sets, the ISR read clears */
export const G_ISR = 7;
/** worker (control command) and control half (reset): queue pairs in use */
export const G_ACTIVE_PAIRS = 8;
// words 9-11: unused (the forwarding loop's stop, running and idle words are its own: emu.ts FWD_*)
/** control half: bumped at every device reset; the worker's crash budget starts again from it */
export const G_RESETS = 12;
/** anyone (setLinkState): 1 while the link is down (status without VIRTIO_NET_S_LINK_UP); the worker raises the config interrupt on a change */
export const G_LINK_DOWN = 13;
/** the MAC address: bytes 0-3, then 4-5 (the mac attribute) */
export const G_MAC = 14;
/** max_virtqueue_pairs */
export const G_MAX_PAIRS = 16;
export const Q_BASE = 20;
/** Words per queue: the common configuration's (lib/virtio/common_cfg.ts) and room to spare. */
export const Q_WORDS = 12;
// A queue's words are the common configuration machine's (size, enable, vector, the ring address
// halves, and Q_EPOCH, bumped at every enable and reset: the worker restarts the queue's indices
// from 0), copied into this module's constants for the data half.
export const Q_SIZE = CC.Q_SIZE, Q_ENABLE = CC.Q_ENABLE, Q_VECTOR = CC.Q_VECTOR, Q_DESC_LO = CC.Q_DESC_LO, Q_DESC_HI = CC.Q_DESC_HI;
export const Q_AVAIL_LO = CC.Q_AVAIL_LO, Q_AVAIL_HI = CC.Q_AVAIL_HI, Q_USED_LO = CC.Q_USED_LO, Q_USED_HI = CC.Q_USED_HI, Q_EPOCH = CC.Q_EPOCH;
if (CC.Q_COMMON_WORDS > Q_WORDS) throw new Error(`virtio-net layout: ${Q_WORDS} words per queue hold fewer than the common configuration's ${CC.Q_COMMON_WORDS}`);

/** Where the common configuration machine keeps its words in the shared state. */
export const COMMON_LAYOUT: CommonCfgLayout = { status: G_STATUS, featLo: G_FEAT_LO, featHi: G_FEAT_HI, configVector: G_CONFIG_VEC, queueBase: (q) => Q_BASE + q * Q_WORDS };

/**
 * Take the device's link down or up, from any thread that holds its state (VirtioNetDevice.state,
 * or the SharedArrayBuffer a test got): the status field follows at once, and the device's lcore
 * raises the configuration-change interrupt when it sees the change.
 */
export function setLinkState(state: Int32Array, up: boolean): void {
  Atomics.store(state, G_LINK_DOWN, up ? 0 : 1);
}

/** State words for n queues. */
export function stateWords(queues: number): number {
  return Q_BASE + queues * Q_WORDS;
}

/** Index of queue q's word w. */
export function qw(q: number, w: number): number {
  return Q_BASE + q * Q_WORDS + w;
}

// Statistics and NEEDS_RESET reasons: defs.ts (the engine's side of the device).
export { S_TX_PACKETS, S_TX_BYTES, S_TX_DROPPED, S_TX_ERRORS, S_TX_NOMBUF, S_RX_PACKETS, S_RX_BYTES, S_RX_NOBUF, S_RX_TOO_BIG, S_NEEDS_RESET, S_IRQS, S_KICKS, S_CTRL, S_IRQS_SUPPRESSED, S_KICKS_EVENTFD, STAT_NAMES, STAT_COUNT, NeedsReset, NEEDS_RESET_NAMES } from './defs.js';

// ---- device arguments ----

/** The device's configuration, from `virtio-net,key=value,...`. */
export interface VirtioNetConfig {
  mac: number[];
  /** queue pairs (max_virtqueue_pairs) */
  pairs: number;
  /** EAL port id of the backend */
  backend: number;
  /** offer VIRTIO_NET_F_MRG_RXBUF */
  mrg: boolean;
  /** largest queue size (power of two) */
  queueSize: number;
  /** offer the notify page as a sparse mmap area (false: doorbells come as REGION_WRITE messages; default true) */
  mapNotify?: boolean;
  /** ask the driver for doorbells (VRING_USED_F_NO_NOTIFY left clear; default false: the device only polls) */
  wantKicks?: boolean;
  /** with mapNotify false, offer each queue's notify register as an ioeventfd doorbell (vfio-user GET_REGION_IO_FDS; default true) */
  notifyFds?: boolean;
}

/** The device's arguments (`tspmd emu virtio-net,key=value,...`); `tspmd emu --help` lists them from here. */
export const VIRTIO_NET_ARGS = {
  mac: { kind: 'mac', unicast: true, default: [0x02, 0x76, 0x6e, 0x65, 0x74, 0x01], help: 'the device\'s MAC address' },
  queues: { kind: 'int', min: 1, max: MAX_PAIRS, default: 1, placeholder: 'PAIRS', help: 'queue pairs' },
  backend: { kind: 'int', min: 0, max: 1023, default: 0, placeholder: 'PORT', help: 'the EAL port the device sends and receives through' },
  mrg: { kind: 'bool', default: true, help: 'offer MRG_RXBUF (VIRTIO_NET_F_MRG_RXBUF)' },
  size: { kind: 'pow2', min: 1, max: VIRTQ_MAX_SIZE, default: 256, placeholder: 'MAX_QUEUE_SIZE', help: 'largest queue size' },
  notify_mmap: { kind: 'bool', default: true, help: '1 (default): offer the notify page for mmap; 0: the driver must ring doorbells with REGION_WRITE' },
  notify_fds: { kind: 'bool', default: true, help: 'with notify_mmap=0: 1 (default) offers each queue\'s notify register as an eventfd (vfio-user ioeventfd), so a driver kicks with an eventfd write; 0: REGION_WRITE only' },
  kicks: { kind: 'bool', default: false, help: '1: ask the driver for a doorbell per burst (VRING_USED_F_NO_NOTIFY clear); 0 (default): the device only polls' },
} as const satisfies DevargsSchema;

/** Check the device arguments; a UsageError names the key, the value and what is allowed. */
export function parseVirtioNetArgs(raw: Record<string, string>): VirtioNetConfig {
  const a = checkDevargs(raw, VIRTIO_NET_ARGS, { where: 'virtio-net', driver: 'virtio-net' });
  return virtioNetConfig(a, a.backend);
}

/**
 * The device's configuration from its checked arguments (without backend=: net_virtio_emu takes
 * the rest of VIRTIO_NET_ARGS) and the EAL port it forwards through (-1: none, the device's own
 * back-end port is the app's).
 */
export function virtioNetConfig(a: Omit<Devargs<typeof VIRTIO_NET_ARGS>, 'backend'>, backend: number): VirtioNetConfig {
  const c: VirtioNetConfig = { mac: a.mac, pairs: a.queues, backend, mrg: a.mrg, queueSize: a.size };
  // Only the non-default choices appear (a default configuration keeps its plain shape).
  if (!a.notify_mmap) c.mapNotify = false;
  if (a.kicks) c.wantKicks = true;
  if (!a.notify_fds) c.notifyFds = false;
  return c;
}
