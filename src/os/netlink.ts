/**
 * rtnetlink, only as far as tspmd needs it: which XDP program an interface carries now and in
 * which mode (RTM_GETLINK, the IFLA_XDP attribute nest), the same facts `ip -d link show` prints.
 * One request, one answer, on a short-lived NETLINK_ROUTE socket; control path only.
 */
import * as os from './libc.js';

// linux/netlink.h, linux/rtnetlink.h, linux/if_link.h (checked against the headers by test/os/bpf.test.ts)
export const AF_NETLINK = 16, NETLINK_ROUTE = 0;
export const NLMSG_ERROR = 2, RTM_NEWLINK = 16, RTM_GETLINK = 18;
export const NLM_F_REQUEST = 1;
export const SIZEOF_NLMSGHDR = 16, SIZEOF_IFINFOMSG = 16;
export const IFLA_XDP = 43, IFLA_EXT_MASK = 29, RTEXT_FILTER_SKIP_STATS = 1 << 3;
export const IFLA_XDP_ATTACHED = 2, IFLA_XDP_PROG_ID = 4, IFLA_XDP_DRV_PROG_ID = 5, IFLA_XDP_SKB_PROG_ID = 6, IFLA_XDP_HW_PROG_ID = 7;
export const XDP_ATTACHED_NONE = 0, XDP_ATTACHED_DRV = 1, XDP_ATTACHED_SKB = 2, XDP_ATTACHED_HW = 3, XDP_ATTACHED_MULTI = 4;
/** Attribute type bits that are flags, not the type (NLA_F_NESTED, NLA_F_NET_BYTEORDER). */
const NLA_TYPE_MASK = 0x3fff;

/** An XDP attach mode as tspmd and `ip link` name it (native: "xdp"/"xdpdrv", generic: "xdpgeneric", offload: "xdpoffload"). */
export type XdpAttachMode = 'native' | 'generic' | 'offload';

/** What IFLA_XDP says about one interface: every program attached, by mode. */
export interface LinkXdp {
  /** programs attached, one per mode (native and generic exclude each other; offload can join either) */
  progs: Array<{ id: number; mode: XdpAttachMode }>;
}

let seq = 1;

/** The XDP programs attached to interface ifindex of this network namespace (RTM_GETLINK); throws naming the index when no such interface exists. */
export function linkXdp(ifindex: number): LinkXdp {
  const fd = os.socket(AF_NETLINK, os.SOCK_RAW, NETLINK_ROUTE);
  try {
    const req = new Uint8Array(SIZEOF_NLMSGHDR + SIZEOF_IFINFOMSG + 8);
    const dv = new DataView(req.buffer);
    const mySeq = seq++;
    dv.setUint32(0, req.byteLength, true);
    dv.setUint16(4, RTM_GETLINK, true);
    dv.setUint16(6, NLM_F_REQUEST, true);
    dv.setUint32(8, mySeq, true);
    // ifinfomsg: family AF_UNSPEC, index
    dv.setInt32(SIZEOF_NLMSGHDR + 4, ifindex, true);
    // IFLA_EXT_MASK: leave the statistics out; the answer stays small
    dv.setUint16(32, 8, true);
    dv.setUint16(34, IFLA_EXT_MASK, true);
    dv.setUint32(36, RTEXT_FILTER_SKIP_STATS, true);
    if (os.send(fd, req, req.byteLength, 0) !== req.byteLength) throw new Error(`rtnetlink: could not send RTM_GETLINK for ifindex ${ifindex}`);
    for (;;) {
      // rtnetlink answers a single-link request within the send; the poll only guards against a stuck socket
      if ((os.pollOne(fd, os.POLLIN, 2000) & os.POLLIN) === 0) throw new Error(`rtnetlink: no answer to RTM_GETLINK for ifindex ${ifindex} within 2 s`);
      const r = os.recvmsg(fd, 65536, os.MSG_DONTWAIT);
      if (r === null) continue;
      if (r.truncated) throw new Error(`rtnetlink: the answer for ifindex ${ifindex} exceeds 64 KiB`);
      const m = new DataView(r.data.buffer, r.data.byteOffset, r.data.byteLength);
      for (let off = 0; off + SIZEOF_NLMSGHDR <= m.byteLength;) {
        const len = m.getUint32(off, true), type = m.getUint16(off + 4, true), s = m.getUint32(off + 8, true);
        if (len < SIZEOF_NLMSGHDR || off + len > m.byteLength) break;
        if (s === mySeq) {
          if (type === NLMSG_ERROR) {
            const err = -m.getInt32(off + SIZEOF_NLMSGHDR, true);
            if (err === os.E.ENODEV) throw new os.OsError('RTM_GETLINK', err, `no interface with index ${ifindex} in this network namespace`);
            if (err !== 0) throw new os.OsError('RTM_GETLINK', err, `ifindex ${ifindex}`);
          } else if (type === RTM_NEWLINK) {
            return parseXdp(m, off + SIZEOF_NLMSGHDR + SIZEOF_IFINFOMSG, off + len);
          }
        }
        off += (len + 3) & ~3;
      }
    }
  } finally {
    os.close(fd);
  }
}

/** Read the IFLA_XDP nest among the link attributes in m[start, end). */
function parseXdp(m: DataView, start: number, end: number): LinkXdp {
  const out: LinkXdp = { progs: [] };
  for (let off = start; off + 4 <= end;) {
    const len = m.getUint16(off, true), type = m.getUint16(off + 2, true) & NLA_TYPE_MASK;
    if (len < 4 || off + len > end) break;
    if (type === IFLA_XDP) {
      let attached = XDP_ATTACHED_NONE, progId = 0, drv = 0, skb = 0, hw = 0;
      for (let o = off + 4; o + 4 <= off + len;) {
        const l = m.getUint16(o, true), t = m.getUint16(o + 2, true) & NLA_TYPE_MASK;
        if (l < 4 || o + l > off + len) break;
        if (t === IFLA_XDP_ATTACHED && l >= 5) attached = m.getUint8(o + 4);
        else if (l >= 8) {
          const v = m.getUint32(o + 4, true);
          if (t === IFLA_XDP_PROG_ID) progId = v;
          else if (t === IFLA_XDP_DRV_PROG_ID) drv = v;
          else if (t === IFLA_XDP_SKB_PROG_ID) skb = v;
          else if (t === IFLA_XDP_HW_PROG_ID) hw = v;
        }
        o += (l + 3) & ~3;
      }
      // One mode: IFLA_XDP_PROG_ID (and the per-mode id too on recent kernels); several: per-mode ids only.
      if (attached === XDP_ATTACHED_DRV) out.progs.push({ id: drv || progId, mode: 'native' });
      else if (attached === XDP_ATTACHED_SKB) out.progs.push({ id: skb || progId, mode: 'generic' });
      else if (attached === XDP_ATTACHED_HW) out.progs.push({ id: hw || progId, mode: 'offload' });
      else if (attached === XDP_ATTACHED_MULTI) {
        if (drv) out.progs.push({ id: drv, mode: 'native' });
        if (skb) out.progs.push({ id: skb, mode: 'generic' });
        if (hw) out.progs.push({ id: hw, mode: 'offload' });
      }
    }
    off += (len + 3) & ~3;
  }
  return out;
}
