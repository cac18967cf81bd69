/**
 * A kernel network interface as a port sees it, for the drivers whose ports sit on one
 * (net_af_packet, net_af_xdp, net_pcap's iface=): its sysfs attributes, MAC address and link
 * state. An interface that is gone reads as no attributes, a zero MAC and a link that is down,
 * not as an error.
 */
import { readFileSync } from 'node:fs';
import { parseMac } from '../net/mac.js';
import type { LinkStatus } from './ethdev.js';

/** Read one sysfs attribute of a network interface, or null when it (or the interface) is gone. */
export function netAttr(iface: string, attr: string): string | null {
  try {
    return readFileSync(`/sys/class/net/${iface}/${attr}`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** The interface's MAC address (00:00:00:00:00:00 once the interface is gone). */
export function netdevMac(iface: string): number[] {
  const a = netAttr(iface, 'address');
  return a ? parseMac(a) : [0, 0, 0, 0, 0, 0];
}

/** Link state from the interface: up when it is up with a carrier; down when it is gone. */
export function netdevLink(iface: string): LinkStatus {
  const oper = netAttr(iface, 'operstate');
  const carrier = netAttr(iface, 'carrier');
  const speed = Number(netAttr(iface, 'speed') ?? -1);
  const up = oper !== null && (oper === 'up' || (oper === 'unknown' && carrier === '1'));
  return { up, speedMbps: speed > 0 ? speed : up ? 10000 : 0, fullDuplex: true };
}
