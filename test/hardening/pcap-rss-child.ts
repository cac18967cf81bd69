/**
 * Child process of the "finding 7" test: loads a capture file the way `--vdev
 * net_pcap0,rx_pcap=FILE` does (the port's constructor) and prints, as one JSON line, the process's
 * resident memory before the load (VmRSS), its peak over the whole run (VmHWM), the packets
 * loaded and the load time. Run: node [loader] pcap-rss-child.ts FILE
 */
import { readFileSync } from 'node:fs';
import { PcapPort } from '../../drivers/net/pcap/pcap.js';

/** A /proc/self/status field in bytes. */
function status(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : -1;
}

const file = process.argv[2];
const rssBefore = status('VmRSS'), hwmBefore = status('VmHWM');
const t0 = Date.now();
const port = new PcapPort('net_pcap_rss', { rxPcap: file, infiniteRx: false });
const ms = Date.now() - t0;
const packets = (port as unknown as { rxFile: { count: number } | null }).rxFile?.count ?? -1;
const hwm = status('VmHWM');
port.close();
console.log(JSON.stringify({ rssBefore, hwmBefore, hwm, packets, ms }));
