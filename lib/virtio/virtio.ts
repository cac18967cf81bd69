/**
 * virtio 1.x facts shared by the emulated virtio-net device (drivers/emu/virtio-net) and the
 * virtio-net PMD (drivers/net/virtio): the modern PCI transport's capabilities and common
 * configuration layout, device status and feature bits, split virtqueue layout, and the net
 * device's header and configuration. Everything is little endian. Source: the OASIS virtio
 * specification 1.2, sections 2 (basic facilities), 4.1 (PCI transport), 5.1 (network device).
 */

/** PCI vendor id of virtio devices; a modern device's id is 0x1040 + the virtio device id. */
export const VIRTIO_PCI_VENDOR = 0x1af4;
/** virtio device id of a network card (so the modern PCI device id is 0x1041). */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_PCI_MODERN_NET = 0x1040 + VIRTIO_ID_NET;
/** The legacy/transitional network device id (not driven: modern only). */
export const VIRTIO_PCI_TRANSITIONAL_NET = 0x1000;

// ---- PCI capabilities (struct virtio_pci_cap: vendor-specific capability 0x09) ----

export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_MSIX = 0x11;
/** cfg_type values */
export const VIRTIO_PCI_CAP_COMMON_CFG = 1;
export const VIRTIO_PCI_CAP_NOTIFY_CFG = 2;
export const VIRTIO_PCI_CAP_ISR_CFG = 3;
export const VIRTIO_PCI_CAP_DEVICE_CFG = 4;
export const VIRTIO_PCI_CAP_PCI_CFG = 5;
/** Offsets inside struct virtio_pci_cap (from the capability's first byte, the id). */
export const CAP_VNDR = 0, CAP_NEXT = 1, CAP_LEN = 2, CAP_CFG_TYPE = 3, CAP_BAR = 4, CAP_ID = 5, CAP_OFFSET = 8, CAP_LENGTH = 12;
/** struct virtio_pci_cap is 16 bytes; the notify capability adds u32 notify_off_multiplier at 16. */
export const CAP_SIZE = 16;
export const CAP_NOTIFY_OFF_MULTIPLIER = 16;
export const CAP_NOTIFY_SIZE = 20;

// ---- common configuration (struct virtio_pci_common_cfg), byte offsets ----

export const COMMON_DFSELECT = 0x00; // u32 device_feature_select
export const COMMON_DF = 0x04; // u32 device_feature (read-only)
export const COMMON_GFSELECT = 0x08; // u32 driver_feature_select
export const COMMON_GF = 0x0c; // u32 driver_feature
export const COMMON_MSIX = 0x10; // u16 config_msix_vector
export const COMMON_NUMQ = 0x12; // u16 num_queues (read-only)
export const COMMON_STATUS = 0x14; // u8 device_status
export const COMMON_CFGGENERATION = 0x15; // u8 config_generation (read-only)
export const COMMON_Q_SELECT = 0x16; // u16 queue_select
export const COMMON_Q_SIZE = 0x18; // u16 queue_size
export const COMMON_Q_MSIX = 0x1a; // u16 queue_msix_vector
export const COMMON_Q_ENABLE = 0x1c; // u16 queue_enable
export const COMMON_Q_NOFF = 0x1e; // u16 queue_notify_off (read-only)
export const COMMON_Q_DESCLO = 0x20; // u64 queue_desc
export const COMMON_Q_DESCHI = 0x24;
export const COMMON_Q_AVAILLO = 0x28; // u64 queue_driver (avail ring)
export const COMMON_Q_AVAILHI = 0x2c;
export const COMMON_Q_USEDLO = 0x30; // u64 queue_device (used ring)
export const COMMON_Q_USEDHI = 0x34;
/** size of struct virtio_pci_common_cfg without the 1.2 additions (queue_notify_data, queue_reset) */
export const COMMON_CFG_SIZE = 0x38;
/** "no MSI-X vector" for config_msix_vector / queue_msix_vector */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** ISR status bits (read clears) */
export const ISR_QUEUE = 0x1, ISR_CONFIG = 0x2;

// ---- device status bits ----

export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;

// ---- feature bits (bit numbers; features are 64 bits, selected in 32-bit halves) ----

export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_F_CTRL_VQ = 17;
export const VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_MQ = 22;
export const VIRTIO_F_RING_INDIRECT_DESC = 28;
export const VIRTIO_F_RING_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;

/** A feature bit as a bigint mask. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Names of the feature bits above, for messages and `info` output. */
export const FEATURE_NAMES: Record<number, string> = {
  0: 'CSUM', 1: 'GUEST_CSUM', 3: 'MTU', 5: 'MAC', 15: 'MRG_RXBUF', 16: 'STATUS', 17: 'CTRL_VQ', 18: 'CTRL_RX', 22: 'MQ',
  28: 'RING_INDIRECT_DESC', 29: 'RING_EVENT_IDX', 32: 'VERSION_1', 33: 'ACCESS_PLATFORM', 34: 'RING_PACKED',
};

/** The names of the bits set in a feature mask ("VERSION_1|MAC|bit40"). */
export function featureNames(f: bigint): string {
  const out: string[] = [];
  for (let b = 0; b < 64; b++) if (f & (1n << BigInt(b))) out.push(FEATURE_NAMES[b] ?? `bit${b}`);
  return out.join('|') || 'none';
}

// ---- split virtqueue layout (2.7) ----

/** struct virtq_desc: u64 addr, u32 len, u16 flags, u16 next (16 bytes) */
export const DESC_SIZE = 16;
export const DESC_ADDR = 0, DESC_LEN = 8, DESC_FLAGS = 12, DESC_NEXT = 14;
export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
/** struct virtq_avail: u16 flags, u16 idx, u16 ring[size], u16 used_event (EVENT_IDX) */
export const AVAIL_FLAGS = 0, AVAIL_IDX = 2, AVAIL_RING = 4;
/** driver -> device: do not interrupt me */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** struct virtq_used: u16 flags, u16 idx, struct { u32 id; u32 len } ring[size], u16 avail_event */
export const USED_FLAGS = 0, USED_IDX = 2, USED_RING = 4, USED_ELEM_SIZE = 8;
/** device -> driver: do not notify me */
export const VRING_USED_F_NO_NOTIFY = 1;
/** Largest queue size of a split virtqueue. */
export const VIRTQ_MAX_SIZE = 32768;

/** Bytes of the descriptor table of a queue of size n. */
export function descTableSize(n: number): number {
  return DESC_SIZE * n;
}

/** Bytes of the avail ring of a queue of size n (with used_event). */
export function availRingSize(n: number): number {
  return AVAIL_RING + 2 * n + 2;
}

/** Bytes of the used ring of a queue of size n (with avail_event). */
export function usedRingSize(n: number): number {
  return USED_RING + USED_ELEM_SIZE * n + 2;
}

// ---- network device (5.1) ----

/** struct virtio_net_hdr with num_buffers: 12 bytes when VERSION_1 (or MRG_RXBUF) is negotiated. */
export const NET_HDR_SIZE = 12;
export const NET_HDR_FLAGS = 0, NET_HDR_GSO_TYPE = 1, NET_HDR_LEN = 2, NET_HDR_GSO_SIZE = 4, NET_HDR_CSUM_START = 6, NET_HDR_CSUM_OFFSET = 8, NET_HDR_NUM_BUFFERS = 10;
export const VIRTIO_NET_HDR_GSO_NONE = 0;

/** struct virtio_net_config: u8 mac[6], u16 status, u16 max_virtqueue_pairs, u16 mtu */
export const NET_CFG_MAC = 0, NET_CFG_STATUS = 6, NET_CFG_MAX_VQ_PAIRS = 8, NET_CFG_MTU = 10;
export const NET_CFG_SIZE = 12;
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

/** Queue numbering: receiveq(k) = 2k, transmitq(k) = 2k+1, controlq = 2 * max_virtqueue_pairs. */
export function rxQueueIndex(pair: number): number {
  return 2 * pair;
}
/** The virtqueue index of transmitq(pair): 2 * pair + 1. */
export function txQueueIndex(pair: number): number {
  return 2 * pair + 1;
}

/** Control virtqueue (5.1.6.5): struct virtio_net_ctrl { u8 class; u8 command; data; u8 ack } */
export const VIRTIO_NET_CTRL_RX = 0;
/** VIRTIO_NET_CTRL_RX commands: promiscuous on (1) or off (0) */
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
export const VIRTIO_NET_OK = 0, VIRTIO_NET_ERR = 1;
