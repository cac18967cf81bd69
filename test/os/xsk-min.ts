/**
 * The least AF_XDP socket the kernel binds, for test/os/bpf.test.ts and its child: a UMEM, fill
 * and completion ring sizes, an RX ring size; nothing is mmapped and the fill ring stays empty, so
 * every frame redirected to it is dropped and counted (rx_dropped, rx_fill_ring_empty_descs).
 * (drivers/net/af_xdp has the real thing.)
 */
import * as os from '../../src/os/libc.js';

// linux/if_xdp.h (checked against the headers by bpf.test.ts)
export const AF_XDP = 44, SOL_XDP = 283;
export const XDP_RX_RING = 2, XDP_UMEM_REG = 4, XDP_UMEM_FILL_RING = 5, XDP_UMEM_COMPLETION_RING = 6, XDP_STATISTICS = 7, XDP_COPY = 1 << 1;
/** struct xdp_umem_reg (addr, len, chunk_size, headroom, flags, tx_metadata_len), struct sockaddr_xdp, struct xdp_statistics */
export const SIZEOF_XDP_UMEM_REG = 32, SIZEOF_SOCKADDR_XDP = 16, SIZEOF_XDP_STATISTICS = 48;

/** An AF_XDP socket bound to (ifindex, queue) in copy mode, with an empty fill ring. */
export function boundXsk(ifindex: number, queue: number): { fd: number; close(): void } {
  const fd = os.socket(AF_XDP, os.SOCK_RAW, 0);
  const len = 16 * 4096;
  const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS, -1, 0);
  const close = (): void => { os.close(fd); os.munmap(va, len); };
  try {
    const reg = Buffer.alloc(SIZEOF_XDP_UMEM_REG);
    reg.writeBigUInt64LE(va, 0);
    reg.writeBigUInt64LE(BigInt(len), 8);
    reg.writeUInt32LE(4096, 16);
    os.setsockopt(fd, SOL_XDP, XDP_UMEM_REG, reg);
    os.setsockoptInt(fd, SOL_XDP, XDP_UMEM_FILL_RING, 64);
    os.setsockoptInt(fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, 64);
    os.setsockoptInt(fd, SOL_XDP, XDP_RX_RING, 64);
    const sa = Buffer.alloc(SIZEOF_SOCKADDR_XDP);
    sa.writeUInt16LE(AF_XDP, 0);
    sa.writeUInt16LE(XDP_COPY, 2);
    sa.writeUInt32LE(ifindex, 4);
    sa.writeUInt32LE(queue, 8);
    os.bind(fd, sa, `AF_XDP ifindex ${ifindex} queue ${queue}`);
    return { fd, close };
  } catch (e) {
    close();
    throw e;
  }
}

/** rx_dropped + rx_fill_ring_empty_descs of an AF_XDP socket (XDP_STATISTICS). */
export function xskDropped(fd: number): number {
  const st = Buffer.alloc(SIZEOF_XDP_STATISTICS);
  os.getsockopt(fd, SOL_XDP, XDP_STATISTICS, st);
  return Number(st.readBigUInt64LE(0) + st.readBigUInt64LE(32));
}
