/**
 * linux/if_xdp.h for AF_XDP sockets (checked against the kernel headers by test/net/uapi.test.ts):
 * socket options, bind flags, struct layouts, mmap page offsets of the four rings, and the socket
 * options for busy polling from asm-generic/socket.h. x86_64 and every other Linux architecture
 * share these values (the socket option numbers of asm-generic; alpha, mips, parisc and sparc
 * differ and are not supported).
 */
export const AF_XDP = 44;
export const SOL_XDP = 283;

/** sockaddr_xdp.sxdp_flags (bind flags) */
export const XDP_SHARED_UMEM = 1 << 0, XDP_COPY = 1 << 1, XDP_ZEROCOPY = 1 << 2, XDP_USE_NEED_WAKEUP = 1 << 3;
/** xdp_umem_reg.flags */
export const XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1 << 0;
/** the flags word of a ring: the kernel wants a system call to make progress */
export const XDP_RING_NEED_WAKEUP = 1 << 0;

/** SOL_XDP socket options */
export const XDP_MMAP_OFFSETS = 1, XDP_RX_RING = 2, XDP_TX_RING = 3, XDP_UMEM_REG = 4, XDP_UMEM_FILL_RING = 5;
export const XDP_UMEM_COMPLETION_RING = 6, XDP_STATISTICS = 7, XDP_OPTIONS = 8;
/** xdp_options.flags: the socket runs in zero-copy mode */
export const XDP_OPTIONS_ZEROCOPY = 1 << 0;

/** SOL_SOCKET busy-polling options (asm-generic/socket.h) */
export const SO_BUSY_POLL = 46, SO_PREFER_BUSY_POLL = 69, SO_BUSY_POLL_BUDGET = 70;

/** mmap offsets (bytes) of the rings on the socket fd */
export const XDP_PGOFF_RX_RING = 0, XDP_PGOFF_TX_RING = 0x80000000;
export const XDP_UMEM_PGOFF_FILL_RING = 0x100000000, XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000;

/** Unaligned-chunk addresses: the low 48 bits are the chunk's address, the high 16 an offset into it. */
export const XSK_UNALIGNED_BUF_OFFSET_SHIFT = 48;

/** The kernel keeps this much room before a received frame's data (XDP_PACKET_HEADROOM, include/linux/bpf.h). */
export const XDP_PACKET_HEADROOM = 256;
/** Smallest chunk the kernel takes (XDP_UMEM_MIN_CHUNK_SIZE, net/xdp/xdp_umem.c). */
export const XDP_UMEM_MIN_CHUNK_SIZE = 2048;

/** struct sockaddr_xdp: family u16, flags u16, ifindex u32, queue_id u32, shared_umem_fd u32 */
export const SIZEOF_SOCKADDR_XDP = 16;
/** struct xdp_ring_offset: producer, consumer, desc, flags (u64 each) */
export const SIZEOF_XDP_RING_OFFSET = 32;
export const RING_OFF_PRODUCER = 0, RING_OFF_CONSUMER = 8, RING_OFF_DESC = 16, RING_OFF_FLAGS = 24;
/** struct xdp_mmap_offsets: rx, tx, fr (fill), cr (completion) */
export const SIZEOF_XDP_MMAP_OFFSETS = 128;
export const MMAP_OFF_RX = 0, MMAP_OFF_TX = 32, MMAP_OFF_FR = 64, MMAP_OFF_CR = 96;
/**
 * struct xdp_umem_reg: addr u64, len u64, chunk_size u32, headroom u32, flags u32, then (kernels
 * from 6.8) tx_metadata_len u32. The headers of this machine stop at flags, padded to 32 bytes;
 * newer ones fill the padding with tx_metadata_len. The kernel takes 24 bytes (no flags: no
 * unaligned chunks), or 32 with flags (and tx_metadata_len, left 0): 32 is what a kernel from
 * 5.4 on accepts, and the only size that carries XDP_UMEM_UNALIGNED_CHUNK_FLAG.
 */
export const SIZEOF_XDP_UMEM_REG = 32, SIZEOF_XDP_UMEM_REG_V1 = 24;
export const UMEM_REG_ADDR = 0, UMEM_REG_LEN = 8, UMEM_REG_CHUNK_SIZE = 16, UMEM_REG_HEADROOM = 20, UMEM_REG_FLAGS = 24;
/** struct xdp_desc: addr u64, len u32, options u32 (RX and TX rings) */
export const SIZEOF_XDP_DESC = 16;
export const DESC_ADDR = 0, DESC_LEN = 8, DESC_OPTIONS = 12;
/** A fill or completion ring entry: one u64 address. */
export const SIZEOF_UMEM_ADDR = 8;
/** struct xdp_statistics: six u64 counters, in this order */
export const SIZEOF_XDP_STATISTICS = 48;
export const XDP_STATISTICS_NAMES = ['rx_dropped', 'rx_invalid_descs', 'tx_invalid_descs', 'rx_ring_full', 'rx_fill_ring_empty_descs', 'tx_ring_empty_descs'] as const;
/** struct xdp_options: flags u32 */
export const SIZEOF_XDP_OPTIONS = 4;

/** Encode a sockaddr_xdp for bind(). */
export function sockaddrXdp(ifindex: number, queue: number, flags: number): Uint8Array {
  const b = new Uint8Array(SIZEOF_SOCKADDR_XDP);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, AF_XDP, true);
  dv.setUint16(2, flags, true);
  dv.setUint32(4, ifindex, true);
  dv.setUint32(8, queue, true);
  dv.setUint32(12, 0, true);
  return b;
}

/** Encode an xdp_umem_reg of `size` bytes (SIZEOF_XDP_UMEM_REG, or _V1 without flags). */
export function xdpUmemReg(addr: bigint, len: number, chunkSize: number, headroom: number, flags: number, size = SIZEOF_XDP_UMEM_REG): Uint8Array {
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(UMEM_REG_ADDR, addr, true);
  dv.setBigUint64(UMEM_REG_LEN, BigInt(len), true);
  dv.setUint32(UMEM_REG_CHUNK_SIZE, chunkSize, true);
  dv.setUint32(UMEM_REG_HEADROOM, headroom, true);
  if (size >= UMEM_REG_FLAGS + 4) dv.setUint32(UMEM_REG_FLAGS, flags, true);
  return b;
}

/** One ring's offsets in its mapping (from XDP_MMAP_OFFSETS), as numbers. */
export interface RingOffsets {
  producer: number;
  consumer: number;
  desc: number;
  flags: number;
}

/** Decode the four rings' offsets of an xdp_mmap_offsets. */
export function decodeMmapOffsets(b: Uint8Array): { rx: RingOffsets; tx: RingOffsets; fr: RingOffsets; cr: RingOffsets } {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const ring = (base: number): RingOffsets => ({
    producer: Number(dv.getBigUint64(base + RING_OFF_PRODUCER, true)),
    consumer: Number(dv.getBigUint64(base + RING_OFF_CONSUMER, true)),
    desc: Number(dv.getBigUint64(base + RING_OFF_DESC, true)),
    flags: Number(dv.getBigUint64(base + RING_OFF_FLAGS, true)),
  });
  return { rx: ring(MMAP_OFF_RX), tx: ring(MMAP_OFF_TX), fr: ring(MMAP_OFF_FR), cr: ring(MMAP_OFF_CR) };
}

/** linux/if_packet.h, for promiscuous mode (shared with net_af_packet). */
export { SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC, SIZEOF_PACKET_MREQ, packetMreqPromisc } from '../../../src/os/packet.js';
