/**
 * Packet headers and checksums (Ethernet, IPv4, UDP): building test and generator frames and
 * checking them. Control-path helpers: they allocate; per-packet code copies prebuilt frames.
 */

export const ETH_HLEN = 14, IPV4_HLEN = 20, UDP_HLEN = 8;
export const ETHERTYPE_IPV4 = 0x0800, IPPROTO_UDP = 17;
/** Smallest frame (without FCS) an Ethernet link carries. */
export const ETH_MIN_FRAME = 60;

/** One's-complement sum of 16-bit big-endian words (RFC 1071), not yet inverted. */
export function onesSum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  let sum = initial;
  let i = 0;
  for (; i + 1 < len; i += 2) sum += (buf[off + i] << 8) | buf[off + i + 1];
  if (i < len) sum += buf[off + i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The IPv4 header checksum of the header at off (with its checksum field as is). */
export function ipv4Checksum(buf: Uint8Array, off: number): number {
  const ihl = (buf[off] & 0x0f) * 4;
  return ~onesSum(buf, off, ihl) & 0xffff;
}

/** The UDP checksum of the datagram at udpOff, with the IPv4 pseudo-header from ipOff. */
export function udpChecksum(buf: Uint8Array, ipOff: number, udpOff: number): number {
  const udpLen = (buf[udpOff + 4] << 8) | buf[udpOff + 5];
  let sum = onesSum(buf, ipOff + 12, 8); // source and destination address
  sum += IPPROTO_UDP + udpLen;
  sum = onesSum(buf, udpOff, udpLen, sum);
  const c = ~sum & 0xffff;
  return c === 0 ? 0xffff : c;
}

/** Parse a dotted IPv4 address into a u32; throws naming the text when it is not one. */
export function parseIpv4(s: string): number {
  const parts = s.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw new Error(`"${s}" is not an IPv4 address`);
  return parts.reduce((a, p) => a * 256 + Number(p), 0);
}

/** What buildUdpFrame needs. */
export interface UdpFrameSpec {
  dstMac: number[];
  srcMac: number[];
  srcIp: number;
  dstIp: number;
  srcPort: number;
  dstPort: number;
  /** frame length without FCS (>= 42; padded frames keep the UDP length of their payload) */
  size: number;
  ttl?: number;
}

/** Build an Ethernet/IPv4/UDP frame of spec.size bytes with valid checksums and a counting payload. */
export function buildUdpFrame(spec: UdpFrameSpec): Uint8Array {
  const size = spec.size;
  if (size < ETH_HLEN + IPV4_HLEN + UDP_HLEN || size > 9018) throw new RangeError(`frame size ${size} must be ${ETH_HLEN + IPV4_HLEN + UDP_HLEN}..9018`);
  const f = new Uint8Array(size);
  const dv = new DataView(f.buffer);
  f.set(spec.dstMac, 0);
  f.set(spec.srcMac, 6);
  dv.setUint16(12, ETHERTYPE_IPV4);
  const ip = ETH_HLEN, udp = ip + IPV4_HLEN;
  const ipLen = size - ETH_HLEN;
  f[ip] = 0x45;
  dv.setUint16(ip + 2, ipLen);
  dv.setUint16(ip + 6, 0x4000); // don't fragment
  f[ip + 8] = spec.ttl ?? 64;
  f[ip + 9] = IPPROTO_UDP;
  dv.setUint32(ip + 12, spec.srcIp);
  dv.setUint32(ip + 16, spec.dstIp);
  dv.setUint16(ip + 10, ipv4Checksum(f, ip));
  dv.setUint16(udp, spec.srcPort);
  dv.setUint16(udp + 2, spec.dstPort);
  dv.setUint16(udp + 4, ipLen - IPV4_HLEN);
  for (let i = udp + UDP_HLEN; i < size; i++) f[i] = (i - udp - UDP_HLEN) & 0xff;
  dv.setUint16(udp + 6, udpChecksum(f, ip, udp));
  return f;
}

/** What checkUdpFrame found in a frame. */
export interface UdpFrameInfo {
  srcIp: number;
  dstIp: number;
  srcPort: number;
  dstPort: number;
  ipChecksumOk: boolean;
  udpChecksumOk: boolean;
}

/** Parse and verify an Ethernet/IPv4/UDP frame; null when it is not one. */
export function checkUdpFrame(f: Uint8Array, len = f.length): UdpFrameInfo | null {
  if (len < ETH_HLEN + IPV4_HLEN + UDP_HLEN) return null;
  const dv = new DataView(f.buffer, f.byteOffset, len);
  if (dv.getUint16(12) !== ETHERTYPE_IPV4 || (f[ETH_HLEN] >> 4) !== 4 || f[ETH_HLEN + 9] !== IPPROTO_UDP) return null;
  const ip = ETH_HLEN, udp = ip + (f[ip] & 0x0f) * 4;
  const ipOk = onesSum(f, ip, (f[ip] & 0x0f) * 4) === 0xffff;
  const stored = dv.getUint16(udp + 6);
  const copy = f.slice(0, len);
  copy[udp + 6] = 0;
  copy[udp + 7] = 0;
  const udpOk = stored === 0 || stored === udpChecksum(copy, ip, udp);
  return { srcIp: dv.getUint32(ip + 12), dstIp: dv.getUint32(ip + 16), srcPort: dv.getUint16(udp), dstPort: dv.getUint16(udp + 2), ipChecksumOk: ipOk, udpChecksumOk: udpOk };
}
