/**
 * The dmatest device's register map and descriptor layout, shared by the device (dmatest.ts) and
 * the driver (driver.ts).
 *
 * BAR0 (8 KiB): page 0 holds trapped registers (REGION_READ/WRITE, the device's callbacks);
 * page 1 is a sparse mmap area in shared memory holding the doorbell (producer index, written by
 * the driver) and the consumer index (written by the device), which the device polls.
 * BAR2 (64 KiB): scratch memory, mappable as a whole (no sparse capability).
 * IRQ: MSI-X (index 2), one vector, raised after each batch of completed descriptors.
 *
 * A descriptor (32 bytes, in a ring in client DMA memory): u64 src iova, u64 dst iova, u32 len,
 * u32 flags, then written back by the device: u32 checksum (Adler-32 of the source), u32 status.
 */

/** PCI identity: Red Hat's vendor id for emulated devices with a device id local to tspmd tests. */
export const DMATEST_VENDOR = 0x1b36;
export const DMATEST_DEVICE = 0x10f0;
/** Value of REG_ID: "DMAT" little endian. */
export const DMATEST_ID = 0x54414d44;
export const DMATEST_VERSION = 1;

export const BAR0_SIZE = 0x2000;
export const BAR2_SIZE = 0x10000;
/** Offset of the shared (mmappable) page of BAR0. */
export const SHARED_PAGE = 0x1000;

export const REG_ID = 0x00;
export const REG_VERSION = 0x04;
/** bit 0: enable the engine */
export const REG_CTRL = 0x08;
/** bit 0: running, bit 1: error (ring unreadable) */
export const REG_STATUS = 0x0c;
export const REG_RING_LO = 0x10;
export const REG_RING_HI = 0x14;
/** ring entries: a power of two, 1..4096 */
export const REG_RING_ENTRIES = 0x18;
/** descriptors completed since reset */
export const REG_COMPLETED = 0x1c;
/** descriptors that failed since reset */
export const REG_ERRORS = 0x20;
/** doorbell: producer index (free running), in the shared page */
export const REG_DOORBELL = SHARED_PAGE + 0x0;
/** consumer index (free running), written by the device, in the shared page */
export const REG_CONSUMER = SHARED_PAGE + 0x4;

export const CTRL_ENABLE = 1;
export const STATUS_RUNNING = 1;
export const STATUS_ERROR = 2;

export const DESC_SIZE = 32;
export const DESC_SRC = 0;
export const DESC_DST = 8;
export const DESC_LEN = 16;
export const DESC_FLAGS = 20;
export const DESC_CHECKSUM = 24;
export const DESC_STATUS = 28;
export const DESC_STATUS_DONE = 1;
export const DESC_STATUS_ERROR = 2;
/** largest len of one descriptor */
export const DESC_MAX_LEN = 1 << 20;

/** Adler-32 (RFC 1950) of b[off, off+len), by default all of b. No allocation. */
export function adler32(b: Uint8Array, off = 0, len = b.length - off): number {
  let a = 1, s = 0;
  const end = off + len;
  // 3800 bytes keep s below 2^53 between reductions, far from needing a modulo per byte
  for (let i = off; i < end; ) {
    const stop = Math.min(end, i + 3800);
    for (; i < stop; i++) { a += b[i]; s += a; }
    a %= 65521;
    s %= 65521;
  }
  return ((s << 16) | a) >>> 0;
}
