/**
 * net_af_packet: a port on a Linux interface through AF_PACKET sockets with PACKET_MMAP rings
 * (TPACKET_V3): a block-based RX ring the kernel fills and hands over a block at a time, and a TX
 * ring that one send() per burst kicks. One socket per queue pair; several queue pairs share the
 * interface's traffic through PACKET_FANOUT.
 *
 * `--vdev net_af_packetN,iface=IF[,qpairs=1][,blocksz=262144][,framesz=2048][,framecnt=2048]
 *  [,qdisc_bypass=1][,fanout_mode=hash|lb|cpu][,linear_tx=1]`
 */
import * as os from '../../../src/os/libc.js';
import { OsError } from '../../../src/os/libc.js';
import { UsageError } from '../../../src/options.js';
import { log } from '../../../src/log.js';
import {
  EthDev, type DevInfo, type LinkStatus, type PortConf, rxqStatsBase, RXQ_MISSED,
} from '../../../lib/ethdev/ethdev.js';
import { netAttr, netdevLink, netdevMac } from '../../../lib/ethdev/netdev.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { devargsError } from '../../../lib/kvargs/kvargs.js';
import { siblingModule } from '../../../src/lcore/module.js';
import * as P from './uapi.js';
import type { AfPacketQueueData } from './af_packet_data.js';

const DATA = siblingModule(import.meta.url, 'af_packet_data');
const FANOUT = { hash: P.PACKET_FANOUT_HASH, lb: P.PACKET_FANOUT_LB, cpu: P.PACKET_FANOUT_CPU } as const;

/** Ring geometry and socket options of a port. */
export interface AfPacketOptions {
  iface: string;
  qpairs: number;
  blockSize: number;
  frameSize: number;
  frameCount: number;
  qdiscBypass: boolean;
  fanout: keyof typeof FANOUT;
  /** PACKET_VNET_HDR: small TX frames ask the kernel to copy them into a linear skb */
  linearTx: boolean;
}

interface Sock {
  fd: number;
  va: bigint;
  len: number;
  /** drops read from PACKET_STATISTICS so far (reading resets the kernel's counter) */
  drops: number;
}

/** Control half of a net_af_packet port. */
export class AfPacketPort extends EthDev {
  readonly opts: AfPacketOptions;
  readonly ifindex: number;
  private socks: Sock[] = [];

  constructor(name: string, opts: AfPacketOptions) {
    super(name);
    this.opts = opts;
    try {
      this.ifindex = os.ifNameToIndex(opts.iface);
    } catch {
      this.close();
      throw new UsageError(`--vdev ${name}: interface "${opts.iface}" does not exist (ip link show lists the interfaces)`);
    }
    try {
      os.close(openPacketSocket());
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Driver facts: queues up to qpairs, MTU from the interface. */
  info(): DevInfo {
    const mtu = Number(netAttr(this.opts.iface, 'mtu') ?? 1500);
    const room = this.opts.frameSize - P.SIZEOF_TPACKET3_HDR - 32;
    return {
      driverName: 'net_af_packet', maxRxQueues: this.opts.qpairs, maxTxQueues: this.opts.qpairs, minMtu: 68, maxMtu: Math.max(mtu, room - 14),
      minDesc: 1, maxDesc: 1 << 20, capabilities: ['promiscuous', 'multi-queue', 'qdisc-bypass', 'link-state', 'rx-interrupt'],
    };
  }

  /** The interface's MAC address (00:00:00:00:00:00 once the interface is gone). */
  macAddr(): number[] {
    return netdevMac(this.opts.iface);
  }

  /** Link state from the interface: up when it is up with a carrier; down when it is gone. */
  link(): LinkStatus {
    return netdevLink(this.opts.iface);
  }

  protected override onConfigure(conf: PortConf): void {
    if (conf.rxQueues !== conf.txQueues) {
      throw new RangeError(`port ${this.port} (${this.name}): af_packet queues come in pairs: ${conf.rxQueues} RX and ${conf.txQueues} TX queues requested`);
    }
  }

  protected override onStart(): void {
    const n = this.configuration!.rxQueues;
    try {
      for (let q = 0; q < n; q++) this.socks.push(this.openQueue(q, n));
    } catch (e) {
      this.closeSockets();
      throw e;
    }
    log('info', this.name, `${n} queue pair(s) on ${this.opts.iface} (ifindex ${this.ifindex}), TPACKET_V3, qdisc bypass ${this.opts.qdiscBypass ? 'on' : 'off'}`);
  }

  /** One socket with its RX and TX rings mapped, bound to the interface. */
  private openQueue(q: number, n: number): Sock {
    const o = this.opts;
    const fd = openPacketSocket();
    try {
      const int = (opt: number, v: number): void => os.setsockoptInt(fd, P.SOL_PACKET, opt, v);
      int(P.PACKET_VERSION, P.TPACKET_V3);
      // With 2 bytes reserved the Ethernet header starts 4-byte aligned: word copies to mbufs.
      int(P.PACKET_RESERVE, 2);
      int(P.PACKET_TX_HAS_OFF, 1);
      int(P.PACKET_LOSS, 1);
      if (o.qdiscBypass) int(P.PACKET_QDISC_BYPASS, 1);
      if (o.linearTx) int(P.PACKET_VNET_HDR, 1);
      int(P.PACKET_IGNORE_OUTGOING, 1);
      const blocks = (o.frameSize * o.frameCount) / o.blockSize;
      os.setsockopt(fd, P.SOL_PACKET, P.PACKET_RX_RING, P.tpacketReq3(o.blockSize, blocks, o.frameSize, o.frameCount, 1));
      os.setsockopt(fd, P.SOL_PACKET, P.PACKET_TX_RING, P.tpacketReq3(o.blockSize, blocks, o.frameSize, o.frameCount, 0));
      const len = 2 * blocks * o.blockSize;
      const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED | os.MAP_POPULATE, fd, 0);
      os.bind(fd, P.sockaddrLl(this.ifindex), `interface ${o.iface}`);
      if (this.isPromiscuous) os.setsockopt(fd, P.SOL_PACKET, P.PACKET_ADD_MEMBERSHIP, P.packetMreqPromisc(this.ifindex));
      if (n > 1) int(P.PACKET_FANOUT, ((process.pid ^ (this.port << 8)) & 0xffff) | (FANOUT[o.fanout] << 16));
      return { fd, va, len, drops: 0 };
    } catch (e) {
      os.close(fd);
      throw e instanceof OsError ? new Error(`port ${this.port} (${this.name}): queue ${q} on ${o.iface}: ${e.message}`) : e;
    }
  }

  protected override onPromiscuous(on: boolean): void {
    if (!on) return; // memberships end with the sockets
    for (const s of this.socks) os.setsockopt(s.fd, P.SOL_PACKET, P.PACKET_ADD_MEMBERSHIP, P.packetMreqPromisc(this.ifindex));
  }

  /** Kernel drops (PACKET_STATISTICS, which resets on read) are added to each queue's imissed. */
  protected override refreshStats(): void {
    const st = new Uint8Array(P.SIZEOF_TPACKET_STATS_V3);
    const dv = new DataView(st.buffer);
    this.socks.forEach((s, q) => {
      try {
        os.getsockopt(s.fd, P.SOL_PACKET, P.PACKET_STATISTICS, st);
      } catch {
        return;
      }
      const drops = dv.getUint32(4, true);
      s.drops += drops;
      this.counters[rxqStatsBase(q) + RXQ_MISSED] += drops;
    });
  }

  protected override onStop(): void {
    this.refreshStats();
    this.closeSockets();
  }

  private closeSockets(): void {
    for (const s of this.socks) {
      if (s.va !== 0n) os.munmap(s.va, s.len);
      os.close(s.fd);
    }
    this.socks = [];
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(q: number): AfPacketQueueData {
    const o = this.opts, s = this.socks[q];
    const blocks = (o.frameSize * o.frameCount) / o.blockSize;
    return {
      fd: s.fd, va: s.va, len: s.len, blockSize: o.blockSize, blockCount: blocks, frameSize: o.frameSize, frameCount: o.frameCount, txOffset: blocks * o.blockSize,
      intr: this.configuration?.intr?.rxq === true, vnetHdr: o.linearTx,
    };
  }

  protected txqData(q: number): AfPacketQueueData {
    return this.rxqData(q);
  }
}

/** An AF_PACKET raw socket, or a clear error when CAP_NET_RAW is missing. */
function openPacketSocket(): number {
  try {
    return os.socket(os.AF_PACKET, os.SOCK_RAW, ((P.ETH_P_ALL & 0xff) << 8) | (P.ETH_P_ALL >> 8));
  } catch (e) {
    if (e instanceof OsError && (e.code === 'EPERM' || e.code === 'EACCES')) {
      throw new Error('net_af_packet needs CAP_NET_RAW to open AF_PACKET sockets: run as root, or grant it: sudo setcap cap_net_raw+ep "$(command -v node)"');
    }
    throw e;
  }
}

registerVdevDriver({
  name: 'net_af_packet',
  rxInterrupt: true,
  description: 'a Linux interface through AF_PACKET PACKET_MMAP (TPACKET_V3) rings',
  schema: {
    iface: { kind: 'string', required: true, placeholder: 'IFNAME', help: 'interface name' },
    qpairs: { kind: 'int', min: 1, max: 16, default: 1, help: 'queue pairs' },
    blocksz: { kind: 'int', min: 4096, max: 1 << 28, default: 1 << 18, help: 'ring block size in bytes, a multiple of the page size' },
    framesz: { kind: 'int', min: 128, max: 1 << 16, default: 2048, help: 'frame size in bytes, a multiple of 16 that divides blocksz' },
    framecnt: { kind: 'int', min: 8, max: 1 << 20, default: 2048, help: 'frames per ring' },
    qdisc_bypass: { kind: 'bool', default: true, help: 'send past the qdisc layer (PACKET_QDISC_BYPASS)' },
    fanout_mode: { kind: 'enum', values: ['hash', 'lb', 'cpu'], default: 'hash', help: 'how PACKET_FANOUT spreads RX over the queues' },
    linear_tx: { kind: 'bool', default: true, help: 'the kernel copies TX frames under 256 bytes into one linear skb (PACKET_VNET_HDR) instead of mapping ring pages that a local receiver copies again' },
  },
  probe: (name, args) => {
    const page = 4096;
    const blockSize = args.blocksz, frameSize = args.framesz, frameCount = args.framecnt;
    if (blockSize % page !== 0) throw devargsError(args, 'blocksz', `must be a multiple of the page size ${page}`);
    if (frameSize % 16 !== 0 || blockSize % frameSize !== 0) throw devargsError(args, 'framesz', `must be a multiple of 16 that divides blocksz=${blockSize}`);
    if ((frameSize * frameCount) % blockSize !== 0) throw devargsError(args, 'framecnt', `must make framesz*framecnt (${frameSize * frameCount}) a multiple of blocksz=${blockSize}`);
    return new AfPacketPort(name, {
      iface: args.iface, qpairs: args.qpairs, blockSize, frameSize, frameCount, qdiscBypass: args.qdisc_bypass, fanout: args.fanout_mode, linearTx: args.linear_tx,
    });
  },
});
