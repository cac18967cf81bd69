/**
 * linux/if_packet.h for PACKET_MMAP TPACKET_V3 (checked against the kernel headers by
 * test/net/af_packet-uapi.test.ts): socket options, ring requests and frame/block layouts.
 */
export { SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC, SIZEOF_PACKET_MREQ, packetMreqPromisc } from '../../../src/os/packet.js';
export const ETH_P_ALL = 0x0003;
export const PACKET_RX_RING = 5, PACKET_STATISTICS = 6, PACKET_VERSION = 10;
export const PACKET_RESERVE = 12, PACKET_TX_RING = 13, PACKET_LOSS = 14, PACKET_FANOUT = 18, PACKET_TX_HAS_OFF = 19;
export const PACKET_VNET_HDR = 15, PACKET_QDISC_BYPASS = 20, PACKET_IGNORE_OUTGOING = 23;
/** struct virtio_net_hdr (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) */
export const SIZEOF_VIRTIO_NET_HDR = 10, VNET_HDR_LEN = 2;
export const TPACKET_V3 = 2;
export const PACKET_FANOUT_HASH = 0, PACKET_FANOUT_LB = 1, PACKET_FANOUT_CPU = 2;
export const TP_STATUS_KERNEL = 0, TP_STATUS_USER = 1, TP_STATUS_LOSING = 4;
export const TP_STATUS_AVAILABLE = 0, TP_STATUS_SEND_REQUEST = 1, TP_STATUS_SENDING = 2, TP_STATUS_WRONG_FORMAT = 4;

/** struct tpacket_req3: 7 u32 fields. */
export const SIZEOF_TPACKET_REQ3 = 28;
/** struct sockaddr_ll */
export const SIZEOF_SOCKADDR_LL = 20;
/** struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt */
export const SIZEOF_TPACKET_STATS_V3 = 12;

/** struct tpacket_block_desc (version, offset_to_priv, then tpacket_hdr_v1) field offsets. */
export const BD_BLOCK_STATUS = 8, BD_NUM_PKTS = 12, BD_OFFSET_TO_FIRST_PKT = 16;
/** struct tpacket3_hdr field offsets and size. */
export const H3_NEXT_OFFSET = 0, H3_SNAPLEN = 12, H3_LEN = 16, H3_STATUS = 20, H3_MAC = 24, H3_NET = 26;
export const SIZEOF_TPACKET3_HDR = 48;
/** Where TX frame data starts without PACKET_TX_HAS_OFF: TPACKET3_HDRLEN - sizeof(sockaddr_ll). */
export const TPACKET3_TX_DATA = 48;

/** Encode a tpacket_req3. */
export function tpacketReq3(blockSize: number, blockNr: number, frameSize: number, frameNr: number, retireTovMs: number): Uint8Array {
  const b = new Uint8Array(SIZEOF_TPACKET_REQ3);
  const dv = new DataView(b.buffer);
  [blockSize, blockNr, frameSize, frameNr, retireTovMs, 0, 0].forEach((v, i) => dv.setUint32(i * 4, v, true));
  return b;
}

/** Encode a sockaddr_ll for bind(): family AF_PACKET, protocol ETH_P_ALL (network order), ifindex. */
export function sockaddrLl(ifindex: number): Uint8Array {
  const b = new Uint8Array(SIZEOF_SOCKADDR_LL);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, 17, true); // AF_PACKET
  dv.setUint16(2, ETH_P_ALL, false);
  dv.setInt32(4, ifindex, true);
  return b;
}

