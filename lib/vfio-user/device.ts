/**
 * The device a vfio-user server serves, as the server sees it: regions by index, IRQs by index,
 * the client's DMA table, reset and the client's coming and going. lib/vfio-user defines it and
 * a provider implements it (lib/emudev's EmuDevice is one); the server knows nothing else of the
 * provider.
 *
 * Regions are whatever the provider describes: the PCI ones (BAR0-5, ROM, config, VGA: indexes
 * 0-8) and device-specific ones from index 9 on, each of those with a type/subtype capability
 * (VFIO_REGION_INFO_CAP_TYPE) in its description. Every access to a region, the config space
 * included, reaches the provider raw through regionRead/regionWrite: a provider with its own
 * config-space model answers region 7 itself.
 *
 * Errors a provider throws become the command's error reply: a ProtocolError (or an OsError)
 * carries its errno, anything else answers EINVAL.
 */
import type { IrqSet, RegionDescription } from './protocol.js';

/**
 * A doorbell the device offers as an ioeventfd (VFIO_USER_DEVICE_GET_REGION_IO_FDS): a write of
 * size bytes at offset of its region (of the value datamatch, when given) may reach the device as a
 * signal on an eventfd instead of a REGION_WRITE, and must have the same effect.
 */
export interface IoEventfdSpec {
  /** offset in the region */
  offset: number;
  /** the write's width in bytes */
  size: 1 | 2 | 4 | 8;
  /** only writes of this value signal the eventfd (others come as REGION_WRITE); absent: any value */
  datamatch?: number;
}

/** How a device reaches client memory that was mapped without fd (DMA_READ/WRITE messages the server sends). */
export interface DmaMessagePath {
  /** Read len bytes of client memory at iova. */
  read(iova: bigint, len: number): Promise<Uint8Array>;
  /** Write data to client memory at iova. */
  write(iova: bigint, data: Uint8Array): Promise<void>;
}

/** A device a VfioUserServer serves (see the module comment). */
export interface VfioUserDevice {
  /** the device's name, for messages */
  readonly name: string;
  /** the most DMA regions the device takes at once; the server sets it from its max_dma_maps option */
  maxDmaMaps: number;
  /** number of regions reported in DEVICE_GET_INFO (9 for a PCI device without device-specific regions) */
  readonly numRegions: number;
  /** number of IRQ indexes reported in DEVICE_GET_INFO */
  readonly numIrqs: number;
  /** How region index is described to clients (size 0: it does not exist); throw for an index out of range. */
  describeRegion(index: number): RegionDescription;
  /** The fd a client mmaps for a region whose description has FLAG_MMAP (owned by the device), -1 otherwise. */
  regionFd(index: number): number;
  /** Read count bytes of region index at off (config space included). */
  regionRead(index: number, off: bigint, count: number): Uint8Array;
  /** Write data to region index at off (config space included). */
  regionWrite(index: number, off: bigint, data: Uint8Array): void;
  /** Add a region of client memory: by fd (>= 0; the device maps it, the server closes fd afterwards) or by message (fd -1). */
  dmaMap(iova: bigint, size: bigint, flags: number, fd: number, fileOffset: bigint): void;
  /** Remove the client memory at [iova, iova+size). */
  dmaUnmap(iova: bigint, size: bigint): void;
  /** IRQ info of an index (VFIO_IRQ_INFO_* flags, number of vectors). */
  irqInfo(index: number): { flags: number; count: number };
  /** A SET_IRQS request; the device takes the eventfds it keeps by replacing them with -1 in fds. */
  setIrqs(s: IrqSet, fds: number[]): void;
  /** The ioeventfd doorbells of region index (absent, or [] for a region: GET_REGION_IO_FDS answers no sub-regions). */
  ioeventfds?(index: number): readonly IoEventfdSpec[];
  /**
   * The server made one non-blocking eventfd per doorbell of region index (same order) for the
   * connected client. The device owns them from here: a signal on fds[i] must have the effect of
   * the write doorbell i stands for (the device reads them without blocking in its poll loop, or
   * sleeps on them), and it closes them at disconnected(). When this throws, the server closes them.
   */
  setIoeventfds?(index: number, fds: readonly number[]): void;
  /** Device reset (VFIO_USER_DEVICE_RESET). */
  reset(): void;
  /** A client negotiated its version: path reaches its memory mapped without fd. */
  connected(path: DmaMessagePath): void;
  /** The client went away: drop its memory and eventfds (the ioeventfds too), and reset when asked. Must not throw. */
  disconnected(opts: { reset?: boolean }): void;
}
