/**
 * What the emulated virtio-net device's provider (device.ts) and its engine on an lcore (vq.ts and
 * the files it serves) agree on beyond the emudev back-end API: the statistics region's layout, the
 * NEEDS_RESET reasons the engine writes to the needs_reset attribute, the attribute names, and the
 * value a polled notify word holds while no doorbell rang.
 */

/** What the device stores in a notify word after reading it: a driver's write shows as a change. */
export const NOTIFY_IDLE = 0xffffffff;

// ---- statistics (the region 'stats': Float64Array indexes, written by the engine only) ----

export const S_TX_PACKETS = 0, S_TX_BYTES = 1, S_TX_DROPPED = 2, S_TX_ERRORS = 3, S_TX_NOMBUF = 4;
export const S_RX_PACKETS = 5, S_RX_BYTES = 6, S_RX_NOBUF = 7, S_RX_TOO_BIG = 8;
export const S_NEEDS_RESET = 9, S_IRQS = 10, S_KICKS = 11, S_CTRL = 12, S_IRQS_SUPPRESSED = 13;
/** of S_KICKS, the doorbells that came as ioeventfd signals */
export const S_KICKS_EVENTFD = 14;
/** Statistics names, by index. */
export const STAT_NAMES = [
  'tx_packets', 'tx_bytes', 'tx_dropped', 'tx_errors', 'tx_nombuf',
  'rx_packets', 'rx_bytes', 'rx_nobuf_drops', 'rx_too_big_drops',
  'needs_reset_events', 'interrupts', 'kicks', 'ctrl_commands', 'interrupts_suppressed', 'kicks_eventfd',
] as const;
/** Float64 words of the statistics region. */
export const STAT_COUNT = 16;

/** Why the device set DEVICE_NEEDS_RESET (the needs_reset attribute). */
export const NeedsReset = {
  LOOP: 1, NEXT_RANGE: 2, HEAD_RANGE: 3, DIRECTION: 4, INDIRECT: 5, AVAIL_JUMP: 6, BAD_ADDRESS: 7,
  RING_UNMAPPED: 8, RING_ALIGN: 9, CHAIN_CHANGED: 10, INTERNAL: 11, WALK: 12, RX_SHORT: 13,
} as const;
/** Names of the NeedsReset reasons, by value. */
export const NEEDS_RESET_NAMES: Record<number, string> = {
  1: 'descriptor chain loops or is longer than the queue', 2: 'descriptor next index outside the queue',
  3: 'avail ring head outside the queue', 4: 'descriptor of the wrong direction', 5: 'indirect descriptor (not negotiated)',
  6: 'avail idx moved more than the queue size', 7: 'buffer outside the mapped DMA memory',
  8: 'ring outside the DMA memory mapped by fd (memory sent without fd, or that cannot be sealed: seal it, or tspmd emu --unsealed-dma map; or a ring across a 4 GiB line of a region)', 9: 'misaligned ring', 10: 'descriptor chain changed while in use',
  11: 'internal error', 12: 'descriptor chains share descriptors (a burst walked more than the queue holds)',
  13: 'receive buffer smaller than the virtio_net_hdr (MRG_RXBUF)',
};

/** The device's attribute names (EmuAttrSpec.name) the engine reads or writes. */
export const A = {
  STATUS: 'status', FEAT_LO: 'features_lo', FEAT_HI: 'features_hi', CONFIG_VECTOR: 'config_vector',
  NEEDS_RESET: 'needs_reset', ERR_QUEUE: 'err_queue', ISR: 'isr', ACTIVE_PAIRS: 'active_pairs',
  LINK_DOWN: 'link_down', RESETS: 'resets', MAC: 'mac', MAX_PAIRS: 'max_pairs', GENERATION: 'generation',
} as const;
