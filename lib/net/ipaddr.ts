/**
 * IP addresses and prefixes as text, for route tables and command lines (DPDK parses them in
 * cmdline_parse_ipaddr and its examples' rule-file readers): 'a.b.c.d', 'a.b.c.d/len', IPv6 in
 * RFC 4291 text form (with '::' and a trailing dotted quad) and '.../len', and back, IPv6 in
 * RFC 5952's canonical form. An IPv4 address is a number in host order (a.b.c.d = a << 24 | ...,
 * 0 to 2^32 - 1); an IPv6 address is 16 bytes in network order. Control-path helpers: they
 * allocate, per-packet code reads addresses from the packet.
 */
import { parseIpv4 } from './packet.js';

export { parseIpv4 };

/** An IPv4 prefix: the address (host order, host bits as written) and the prefix length. */
export interface Ipv4Prefix {
  ip: number;
  depth: number;
}

/** An IPv6 prefix: the 16 address bytes (host bits as written) and the prefix length. */
export interface Ipv6Prefix {
  ip: Uint8Array;
  depth: number;
}

/** The prefix length after '/', whole digits from 0 to max; throws naming the text. */
function parseLen(s: string, len: string, max: number): number {
  if (!/^\d{1,3}$/.test(len) || Number(len) > max) throw new Error(`"${s}": prefix length "${len}" must be a whole number from 0 to ${max}`);
  return Number(len);
}

/** Parse 'a.b.c.d/len' (len 0-32) into an address and a length; throws naming the text when it is not one. */
export function parseIpv4Prefix(s: string): Ipv4Prefix {
  const slash = s.indexOf('/');
  if (slash < 0) throw new Error(`"${s}" is not an IPv4 prefix (expected a.b.c.d/len, e.g. 10.0.0.0/8)`);
  const depth = parseLen(s, s.slice(slash + 1), 32);
  let ip: number;
  try {
    ip = parseIpv4(s.slice(0, slash));
  } catch {
    throw new Error(`"${s}" is not an IPv4 prefix: "${s.slice(0, slash)}" is not an IPv4 address (expected a.b.c.d/len, e.g. 10.0.0.0/8)`);
  }
  return { ip, depth };
}

/** Format an IPv4 address (a number, host order; int32 values are taken as their u32 bits) as a.b.c.d. */
export function formatIpv4(ip: number): string {
  const u = ip >>> 0;
  return `${u >>> 24}.${(u >>> 16) & 255}.${(u >>> 8) & 255}.${u & 255}`;
}

/** Format an IPv4 prefix as a.b.c.d/len. */
export function formatIpv4Prefix(ip: number, depth: number): string {
  return `${formatIpv4(ip)}/${depth}`;
}

/** The address with the bits after the first depth cleared (depth 0-32), as a u32 number. */
export function maskIpv4(ip: number, depth: number): number {
  return depth === 0 ? 0 : (ip & (-1 << (32 - depth))) >>> 0;
}

/**
 * Parse an IPv6 address (RFC 4291 section 2.2: eight groups of 1-4 hex digits, one '::' for a run
 * of zero groups, optionally ending in a dotted IPv4 address) into 16 bytes; throws naming the text.
 */
export function parseIpv6(s: string): Uint8Array {
  const bad = (why: string): Error => new Error(`"${s}" is not an IPv6 address: ${why} (e.g. 2001:db8::1)`);
  let text = s;
  const lastColon = text.lastIndexOf(':');
  if (lastColon >= 0 && text.indexOf('.', lastColon) >= 0) {
    // a dotted IPv4 tail (::ffff:192.0.2.1) stands for the last two groups
    let v4: number;
    try {
      v4 = parseIpv4(text.slice(lastColon + 1));
    } catch {
      throw bad(`"${text.slice(lastColon + 1)}" is not a dotted IPv4 tail`);
    }
    text = `${text.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const dbl = text.indexOf('::');
  if (dbl >= 0 && text.indexOf('::', dbl + 1) >= 0) throw bad('more than one "::"');
  const parseGroups = (part: string): number[] => {
    if (part === '') return [];
    return part.split(':').map((g) => {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw bad(g === '' ? 'an empty group' : `"${g}" is not a group of 1-4 hex digits`);
      return parseInt(g, 16);
    });
  };
  let head: number[], tail: number[];
  if (dbl >= 0) {
    head = parseGroups(text.slice(0, dbl));
    tail = parseGroups(text.slice(dbl + 2));
  } else {
    head = parseGroups(text);
    tail = [];
  }
  const given = head.length + tail.length;
  if (dbl >= 0 ? given > 7 : given !== 8) throw bad(dbl >= 0 ? `${given} groups and "::" make more than 8` : `${given} groups, not 8`);
  const words = [...head, ...new Array<number>(8 - given).fill(0), ...tail];
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    out[2 * i] = words[i] >>> 8;
    out[2 * i + 1] = words[i] & 0xff;
  }
  return out;
}

/** Parse 'addr/len' (len 0-128) into 16 bytes and a length; throws naming the text when it is not one. */
export function parseIpv6Prefix(s: string): Ipv6Prefix {
  const slash = s.indexOf('/');
  if (slash < 0) throw new Error(`"${s}" is not an IPv6 prefix (expected addr/len, e.g. 2001:db8::/32)`);
  const depth = parseLen(s, s.slice(slash + 1), 128);
  return { ip: parseIpv6(s.slice(0, slash)), depth };
}

/** Format 16 bytes at off as an IPv6 address in RFC 5952's canonical form (lower case, the longest run of two or more zero groups as '::'). */
export function formatIpv6(b: ArrayLike<number>, off = 0): string {
  const w: number[] = [];
  for (let i = 0; i < 8; i++) w.push((b[off + 2 * i] << 8) | b[off + 2 * i + 1]);
  let bestAt = -1, bestLen = 1; // a single zero group is not shortened (RFC 5952 4.2.2)
  for (let i = 0; i < 8;) {
    if (w[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) { bestAt = i; bestLen = j - i; }
    i = j;
  }
  const hex = (ws: number[]): string => ws.map((x) => x.toString(16)).join(':');
  if (bestAt < 0) return hex(w);
  return `${hex(w.slice(0, bestAt))}::${hex(w.slice(bestAt + bestLen))}`;
}

/** Format an IPv6 prefix as addr/len. */
export function formatIpv6Prefix(b: ArrayLike<number>, depth: number, off = 0): string {
  return `${formatIpv6(b, off)}/${depth}`;
}

/** Clear the bits after the first depth (0-128) of the 16 bytes at off, in place. */
export function maskIpv6(b: Uint8Array, depth: number, off = 0): Uint8Array {
  for (let i = 0; i < 16; i++) {
    const keep = depth - 8 * i;
    if (keep >= 8) continue;
    b[off + i] = keep <= 0 ? 0 : b[off + i] & (0xff << (8 - keep));
  }
  return b;
}
