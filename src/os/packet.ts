/**
 * linux/if_packet.h, for promiscuous mode: a membership of an AF_PACKET socket (the kernel counts
 * it and drops it with the socket). Every driver that opens such a socket (net_af_packet for its
 * rings, net_af_xdp for promiscuous mode, net_pcap for iface=) asks for it the same way; the uapi.ts
 * of net_af_packet and net_af_xdp re-export these.
 */
export const SOL_PACKET = 263, PACKET_ADD_MEMBERSHIP = 1, PACKET_MR_PROMISC = 1;
/** struct packet_mreq: ifindex i32, type u16, alen u16, address[8] */
export const SIZEOF_PACKET_MREQ = 16;

/** Encode a packet_mreq asking for promiscuous mode on ifindex. */
export function packetMreqPromisc(ifindex: number): Uint8Array {
  const b = new Uint8Array(SIZEOF_PACKET_MREQ);
  const dv = new DataView(b.buffer);
  dv.setInt32(0, ifindex, true);
  dv.setUint16(4, PACKET_MR_PROMISC, true);
  return b;
}
