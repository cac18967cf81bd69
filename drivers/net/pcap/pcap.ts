/**
 * net_pcap: a port whose RX reads packets from a capture file or a kernel interface and whose TX
 * writes them to a capture file or a kernel interface, like DPDK's net_pcap (without libpcap: the
 * file formats are lib/pcap's, the interfaces are plain AF_PACKET sockets).
 *
 * `--vdev net_pcapN[,rx_pcap=FILE][,tx_pcap=FILE][,rx_iface=IF][,tx_iface=IF][,iface=IF][,infinite_rx=0|1]`
 *
 * - rx_pcap: a pcap (either byte order, micro- or nanosecond) or pcapng file (a regular file:
 *   a FIFO or device is refused), loaded at probe into shared memory: one streamed walk counts and
 *   sizes its packets, both shared buffers are allocated once, a second walk copies the packets in
 *   (memory: the packets, 8-byte aligned, plus 8 bytes a packet; the file is never held whole).
 *   RX hands them out in file order, once (at the end of the file RX returns 0 for ever, as
 *   DPDK's does), or round and round with infinite_rx=1.
 * - tx_pcap: opened at probe with lib/pcap's openCaptureWrite (created 0600, never through a
 *   symlink; an existing regular file of this user with one link is replaced, as DPDK's tx_pcap
 *   truncates; anything else refused); classic pcap, nanosecond timestamps (magic a1b23c4d),
 *   snaplen 65535, LINKTYPE_ETHERNET; written through a 1 MiB buffer, flushed at stop and closed
 *   at close. A restarted port appends to the same file.
 * - iface / rx_iface / tx_iface: an AF_PACKET socket on the interface (one syscall per packet, as
 *   libpcap's live capture); RX sees the frames the interface receives (not the ones it sends).
 * - Without an RX source the port receives nothing; without a TX sink it drops what it is given
 *   (counted as sent), like DPDK's net_pcap with rx_pcap only.
 */
import { closeSync, writeSync } from 'node:fs';
import * as os from '../../../src/os/libc.js';
import { OsError } from '../../../src/os/libc.js';
import { SOL_PACKET, PACKET_ADD_MEMBERSHIP, packetMreqPromisc } from '../../../src/os/packet.js';
import { UsageError } from '../../../src/options.js';
import { log } from '../../../src/log.js';
import { EthDev, type DevInfo, type LinkStatus } from '../../../lib/ethdev/ethdev.js';
import { netAttr } from '../../../lib/ethdev/netdev.js';
import { parseMac } from '../../../lib/net/mac.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { devargsError } from '../../../lib/kvargs/kvargs.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { CaptureFile, CaptureFileError, LINKTYPE_ETHERNET, openCaptureWrite, pcapFileHeader } from '../../../lib/pcap/pcap.js';
import { TX_FILL, TX_CTL_WORDS, type PcapRxData, type PcapTxData } from './pcap_data.js';

const DATA = siblingModule(import.meta.url, 'pcap_data');
const PACKET_IGNORE_OUTGOING = 23; // linux/if_packet.h
const ETH_P_ALL_BE = 0x0300; // htons(ETH_P_ALL)
/** TX snap length: frames longer are cut in the file (their original length is kept). */
export const PCAP_TX_SNAPLEN = 65535;
const TX_BUFFER = 1 << 20;

/** Where a port's packets come from and go to. */
export interface PcapOptions {
  rxPcap?: string;
  txPcap?: string;
  rxIface?: string;
  txIface?: string;
  infiniteRx: boolean;
}

/** A capture file's packets laid out for the data path: bytes, and (offset, length) pairs. */
interface RxFile {
  bytes: SharedArrayBuffer;
  index: SharedArrayBuffer;
  count: number;
  pos: SharedArrayBuffer;
}

/** Largest total of packet bytes an rx_pcap file may load (offsets in the index are u32). */
const RX_FILE_MAX_BYTES = 2 ** 32 - 8;

/** A lib/pcap refusal as the usage error of this port's key (one line: the devarg, the file, what is wrong). */
function keyError(name: string, key: string, e: unknown): unknown {
  return e instanceof CaptureFileError ? new UsageError(`--vdev ${name}: ${key}=${e.message}`) : e;
}

/**
 * Load a capture file for RX: every packet must be an Ethernet frame. Streamed twice through a
 * bounded window: the first walk checks the file, counts its packets and sums their 8-byte aligned
 * sizes, then the two shared buffers are allocated once at their final size, and the second walk
 * copies each packet into place. Peak memory: the buffers plus the window.
 */
function loadRxFile(name: string, path: string): RxFile {
  let f: CaptureFile | null = null;
  try {
    f = new CaptureFile(path);
    let total = 0;
    const n = f.walk((i, _pos, cap, _orig, _sec, _nsec, lt) => {
      if (lt !== LINKTYPE_ETHERNET) {
        throw new UsageError(`--vdev ${name}: rx_pcap=${path}: packet ${i + 1} has link type ${lt}; net_pcap receives Ethernet frames only (link type 1): capture on an Ethernet interface, not "any"`);
      }
      total += Math.ceil(cap / 8) * 8;
    }).count;
    if (total > RX_FILE_MAX_BYTES) throw new UsageError(`--vdev ${name}: rx_pcap=${path}: its ${n} packets hold ${total} bytes; net_pcap loads at most 4 GiB (cut the file, e.g. editcap -r)`);
    // Each packet starts 8-byte aligned, as mbuf data does: copies then move u32 words.
    let bytes: SharedArrayBuffer, index: SharedArrayBuffer;
    try {
      bytes = new SharedArrayBuffer(Math.max(total, 8));
      index = new SharedArrayBuffer(Math.max(n, 1) * 8);
    } catch (e) {
      throw new UsageError(`--vdev ${name}: rx_pcap=${path}: cannot allocate ${Math.ceil((total + n * 8) / 1048576)} MiB for its ${n} packets (${(e as Error).message})`);
    }
    const u8 = new Uint8Array(bytes);
    const idx = new Uint32Array(index);
    let at = 0;
    const file = f;
    const again = f.walk((i, pos, cap) => {
      if (i >= n || at + cap > total) throw new CaptureFileError(path, 'changed while being loaded (load a file no process is writing)');
      file.copy(pos, cap, u8, at);
      idx[2 * i] = at;
      idx[2 * i + 1] = cap;
      at += Math.ceil(cap / 8) * 8;
    }).count;
    if (again !== n) throw new CaptureFileError(path, 'changed while being loaded (load a file no process is writing)');
    return { bytes, index, count: n, pos: new SharedArrayBuffer(8) };
  } catch (e) {
    throw keyError(name, 'rx_pcap', e);
  } finally {
    f?.close();
  }
}

/** A non-blocking AF_PACKET raw socket bound to ifindex (protocol 0: a TX-only socket receives nothing). */
function packetSocket(ifindex: number, protocol: number): number {
  let fd: number;
  try {
    fd = os.socket(os.AF_PACKET, os.SOCK_RAW | os.SOCK_NONBLOCK, protocol);
  } catch (e) {
    if (e instanceof OsError && (e.code === 'EPERM' || e.code === 'EACCES')) {
      throw new Error('net_pcap iface= needs CAP_NET_RAW to open AF_PACKET sockets: run as root, or use rx_pcap=/tx_pcap= files');
    }
    throw e;
  }
  try {
    const sll = new Uint8Array(20);
    const dv = new DataView(sll.buffer);
    dv.setUint16(0, os.AF_PACKET, true);
    dv.setUint16(2, protocol, true); // already in network order
    dv.setInt32(4, ifindex, true);
    os.bind(fd, sll, `ifindex ${ifindex}`);
    return fd;
  } catch (e) {
    os.close(fd);
    throw e;
  }
}

/** Control half of a net_pcap port. */
export class PcapPort extends EthDev {
  readonly opts: PcapOptions;
  private readonly rxFile: RxFile | null;
  private readonly rxIfindex: number;
  private readonly txIfindex: number;
  private rxFd = -1;
  private txFd = -1;
  /** the TX file: its fd (open from the first start to close), buffer and fill word */
  private txFileFd = -1;
  private readonly txBuf: SharedArrayBuffer | null;
  private readonly txCtl: SharedArrayBuffer | null;

  constructor(name: string, opts: PcapOptions) {
    super(name);
    this.opts = opts;
    try {
      const ifindex = (iface: string | undefined, key: string): number => {
        if (iface === undefined) return -1;
        try {
          return os.ifNameToIndex(iface);
        } catch {
          throw new UsageError(`--vdev ${name}: ${key}=${iface}: no such interface (ip link show lists the interfaces)`);
        }
      };
      this.rxIfindex = ifindex(opts.rxIface, 'rx_iface');
      this.txIfindex = ifindex(opts.txIface, 'tx_iface');
      this.rxFile = opts.rxPcap !== undefined ? loadRxFile(name, opts.rxPcap) : null;
      this.txBuf = opts.txPcap !== undefined ? new SharedArrayBuffer(TX_BUFFER) : null;
      this.txCtl = opts.txPcap !== undefined ? new SharedArrayBuffer(TX_CTL_WORDS * 4) : null;
      // Opened at probe, as DPDK's net_pcap opens its dumper: a refused path fails before the port exists.
      this.openTxFile();
    } catch (e) {
      this.close();
      throw e;
    }
    if (this.rxFile) log('info', name, `rx_pcap ${opts.rxPcap}: ${this.rxFile.count} packets${opts.infiniteRx ? ', replayed for ever (infinite_rx)' : ''}`);
  }

  /** Open (create or replace) the tx_pcap file and write its header; nothing without tx_pcap or when it is open. */
  private openTxFile(): void {
    if (this.opts.txPcap === undefined || this.txFileFd >= 0) return;
    try {
      this.txFileFd = openCaptureWrite(this.opts.txPcap);
    } catch (e) {
      throw keyError(this.name, 'tx_pcap', e);
    }
    writeSync(this.txFileFd, pcapFileHeader(PCAP_TX_SNAPLEN, LINKTYPE_ETHERNET, true));
    Atomics.store(new Int32Array(this.txCtl!), TX_FILL, 0);
  }

  /** Driver facts: one queue pair (one file or interface per direction). */
  info(): DevInfo {
    return {
      driverName: 'net_pcap', maxRxQueues: 1, maxTxQueues: 1, minMtu: 68, maxMtu: 9000,
      minDesc: 1, maxDesc: 65536, capabilities: ['promiscuous'],
    };
  }

  /** The RX interface's MAC with an interface, else a locally administered one ending in the port id. */
  macAddr(): number[] {
    const iface = this.opts.rxIface ?? this.opts.txIface;
    const a = iface !== undefined ? netAttr(iface, 'address') : null;
    return a ? parseMac(a) : [0x02, 0x70, 0x63, 0x61, 0x70, this.port & 0xff];
  }

  /** Up while started. */
  link(): LinkStatus {
    return { up: this.status === 'started', speedMbps: 10000, fullDuplex: true };
  }

  protected override onStart(): void {
    try {
      this.openTxFile(); // after a reset (which closes it) the file is opened again
      if (this.rxIfindex >= 0) {
        this.rxFd = packetSocket(this.rxIfindex, ETH_P_ALL_BE);
        os.setsockoptInt(this.rxFd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        if (this.isPromiscuous) this.joinPromisc(this.rxFd, this.rxIfindex);
      }
      if (this.txIfindex >= 0) this.txFd = packetSocket(this.txIfindex, 0);
    } catch (e) {
      this.closeSockets();
      throw e;
    }
  }

  private joinPromisc(fd: number, ifindex: number): void {
    os.setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, packetMreqPromisc(ifindex));
  }

  protected override onPromiscuous(on: boolean): void {
    if (on && this.rxFd >= 0) this.joinPromisc(this.rxFd, this.rxIfindex);
  }

  /** Write what the TX queue buffered to the file (the lcores have stopped). */
  private flushTx(): void {
    if (this.txFileFd < 0) return;
    const ctl = new Int32Array(this.txCtl!);
    const fill = Atomics.load(ctl, TX_FILL);
    const u8 = new Uint8Array(this.txBuf!);
    for (let done = 0; done < fill;) done += writeSync(this.txFileFd, u8, done, fill - done);
    Atomics.store(ctl, TX_FILL, 0);
  }

  protected override onStop(): void {
    try {
      this.flushTx();
    } finally {
      this.closeSockets();
    }
  }

  protected override onClose(): void {
    if (this.txFileFd < 0) return;
    try {
      this.flushTx();
    } finally {
      closeSync(this.txFileFd);
      this.txFileFd = -1;
    }
  }

  private closeSockets(): void {
    if (this.rxFd >= 0) os.close(this.rxFd);
    if (this.txFd >= 0) os.close(this.txFd);
    this.rxFd = this.txFd = -1;
  }

  /** Packets RX has handed out of the file so far (all passes with infinite_rx). */
  get rxFilePosition(): number {
    return this.rxFile ? Atomics.load(new Int32Array(this.rxFile.pos), 0) : 0;
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(): PcapRxData {
    const f = this.rxFile;
    if (f) return { kind: 'file', bytes: f.bytes, index: f.index, count: f.count, pos: f.pos, infinite: this.opts.infiniteRx, fd: -1 };
    return { kind: this.rxFd >= 0 ? 'iface' : 'none', count: 0, infinite: false, fd: this.rxFd };
  }

  protected txqData(): PcapTxData {
    if (this.txBuf) return { kind: 'file', fd: this.txFileFd, buf: this.txBuf, ctl: this.txCtl!, snaplen: PCAP_TX_SNAPLEN };
    return { kind: this.txFd >= 0 ? 'iface' : 'drop', fd: this.txFd, snaplen: PCAP_TX_SNAPLEN };
  }
}

registerVdevDriver({
  name: 'net_pcap',
  description: 'RX from a pcap/pcapng file or an interface, TX to a pcap file or an interface',
  schema: {
    rx_pcap: { kind: 'string', placeholder: 'FILE', help: 'pcap or pcapng file whose packets RX delivers' },
    tx_pcap: { kind: 'string', placeholder: 'FILE', help: 'pcap file TX writes (created 0600; an own regular file is replaced; never through a symlink)' },
    rx_iface: { kind: 'string', placeholder: 'IFNAME', help: 'interface RX receives from (AF_PACKET)' },
    tx_iface: { kind: 'string', placeholder: 'IFNAME', help: 'interface TX sends to (AF_PACKET)' },
    iface: { kind: 'string', placeholder: 'IFNAME', help: 'interface for both RX and TX' },
    infinite_rx: { kind: 'bool', default: false, help: '1: replay rx_pcap for ever instead of stopping at its end' },
  },
  probe: (name, args) => {
    if (args.iface !== undefined && (args.rx_iface !== undefined || args.tx_iface !== undefined)) {
      throw devargsError(args, 'iface', 'cannot be combined with rx_iface= or tx_iface= (iface= is both)');
    }
    const rxIface = args.rx_iface ?? args.iface, txIface = args.tx_iface ?? args.iface;
    if (args.rx_pcap !== undefined && rxIface !== undefined) throw devargsError(args, 'rx_pcap', `and ${args.iface !== undefined ? 'iface' : 'rx_iface'}= both give RX a source: choose one`);
    if (args.tx_pcap !== undefined && txIface !== undefined) throw devargsError(args, 'tx_pcap', `and ${args.iface !== undefined ? 'iface' : 'tx_iface'}= both give TX a sink: choose one`);
    if (args.infinite_rx && args.rx_pcap === undefined) throw devargsError(args, 'infinite_rx', 'needs rx_pcap=FILE (it replays a file)');
    if (args.rx_pcap === '' || args.tx_pcap === '') throw devargsError(args, args.rx_pcap === '' ? 'rx_pcap' : 'tx_pcap', 'needs a file name');
    return new PcapPort(name, { rxPcap: args.rx_pcap, txPcap: args.tx_pcap, rxIface, txIface, infiniteRx: args.infinite_rx });
  },
});
