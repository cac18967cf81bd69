/**
 * net_af_xdp: a port on any Linux interface through AF_XDP sockets. tspmd's own XDP program
 * (src/os/bpf.ts, attached through a BPF link so the kernel removes it when the process dies)
 * redirects each frame arriving on a bound queue into an XSKMAP and passes everything else to the
 * kernel's stack. One socket per queue, each bound to start_queue+q, each with its own UMEM
 * registered over the memory of that queue's RX mempool in unaligned-chunk mode, so the kernel
 * writes received frames into mbufs and sends mbufs from where they lie (af_xdp_data.ts). When the
 * kernel refuses that memory, a private UMEM with one copy each way takes its place, said in the
 * log and in the port's info.
 *
 * `--vdev net_af_xdpN,iface=IF[,start_queue=0][,queue_count=1][,busy_budget=0][,force_copy=0][,mode=native|generic]`
 * (DPDK's net_af_xdp names, and mode for the XDP attach mode).
 */
import { readFileSync, readdirSync } from 'node:fs';
import * as os from '../../../src/os/libc.js';
import { OsError } from '../../../src/os/libc.js';
import { UsageError } from '../../../src/options.js';
import { log } from '../../../src/log.js';
import { sleepMs } from '../../../src/os/sleep.js';
import {
  EthDev, type DevInfo, type LinkStatus, type PortConf, rxqStatsBase, RXQ_MISSED, xstatIndex,
} from '../../../lib/ethdev/ethdev.js';
import { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufFreeRecorded, MBUF_HEADROOM, MBUF_DATAROOM } from '../../../lib/mempool/mbuf.js';
import { MbufOff } from '../../../lib/mempool/mbuf_layout.js';
import { netAttr, netdevLink, netdevMac } from '../../../lib/ethdev/netdev.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { createXskMap, xskMapSet, xskMapDelete, attachXskRedirect, XdpBusyError, type XdpAttachment } from '../../../src/os/bpf.js';
import { claimInterface, InterfaceClaimedError } from '../../../src/os/ifclaim.js';
import * as X from './uapi.js';
import { type AfXdpQueueData, type XskRing, XS_PER_QUEUE } from './af_xdp_data.js';

const DATA = siblingModule(import.meta.url, 'af_xdp_data');
/** Most queues a port binds (sockets, each with its UMEM and four rings). */
const MAX_QUEUES = 16;
/** The kernel's page size on x86_64; the UMEM must start on a page. */
const PAGE = 4096;
/** Frames of a private UMEM: one page each (the largest chunk the kernel takes). */
const PRIVATE_FRAME = 4096;
/** How long a bind that finds the queue busy is retried, and how often. */
const BIND_WAIT_MS = 2000, BIND_RETRY_MS = 20;
/** Capability bits (linux/capability.h). */
const CAP_NET_ADMIN = 12, CAP_NET_RAW = 13, CAP_IPC_LOCK = 14, CAP_SYS_ADMIN = 21, CAP_BPF = 39;

/** A port's devargs, checked. */
export interface AfXdpOptions {
  iface: string;
  startQueue: number;
  queueCount: number;
  /** SO_BUSY_POLL_BUDGET; 0: no busy polling */
  busyBudget: number;
  forceCopy: boolean;
  mode: 'native' | 'generic';
}

/** How a started port moves packets, for logs, info() and tests. */
export interface AfXdpStatus {
  /** 'mempool': the UMEM is the RX mempool's memory (no copy between UMEM and mbufs); 'private': one copy each way */
  umem: 'mempool' | 'private';
  /** why the kernel refused the mempool's memory (private UMEM only) */
  umemRefused?: string;
  /** what bind() got: zero copy between the NIC and the UMEM, or the kernel copying (veth, generic XDP) */
  bind: 'zero-copy' | 'copy';
  /** the XDP program: its id and attach mode */
  programId: number;
  xdpMode: 'native' | 'generic';
  /** kernel queue ids bound, in port queue order */
  queues: number[];
}

/** One socket of a started port and what it holds. */
interface Xsk {
  fd: number;
  queue: number;
  maps: Array<{ va: bigint; len: number }>;
  data: AfXdpQueueData;
  pool: Mempool;
  /** private UMEM mapping (0n with the mempool's) */
  umemVa: bigint;
  umemLen: number;
  zc: boolean;
  /** XDP_STATISTICS as last read (the kernel's counters are totals for the socket) */
  last: number[];
}

/** Ports of this process by interface: one port per interface (its queues are one port's). */
const ifaceOwners = new Map<string, string>();

/** The interface's RX and TX queue counts (real_num_rx/tx_queues), from /sys/class/net/IF/queues. */
function queueCounts(iface: string): { rx: number; tx: number } {
  try {
    const q = readdirSync(`/sys/class/net/${iface}/queues`);
    return { rx: q.filter((n) => n.startsWith('rx-')).length, tx: q.filter((n) => n.startsWith('tx-')).length };
  } catch {
    return { rx: 1, tx: 1 };
  }
}

/** The calling process's effective capabilities (CapEff of /proc/self/status). */
function effectiveCaps(): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

const hasCap = (caps: bigint, cap: number): boolean => (caps & (1n << BigInt(cap))) !== 0n;

/**
 * The capabilities net_af_xdp needs, or a clear error naming the missing ones: CAP_NET_RAW (the
 * sockets), CAP_NET_ADMIN and CAP_BPF (the XDP program and its link; CAP_SYS_ADMIN stands in for
 * CAP_BPF, as on kernels before 5.8). CAP_IPC_LOCK is checked with the UMEM (RLIMIT_MEMLOCK may do).
 */
function checkCapabilities(): void {
  const caps = effectiveCaps();
  const missing: string[] = [];
  if (!hasCap(caps, CAP_NET_RAW)) missing.push('CAP_NET_RAW (AF_XDP sockets)');
  if (!hasCap(caps, CAP_NET_ADMIN)) missing.push('CAP_NET_ADMIN (attaching the XDP program)');
  if (!hasCap(caps, CAP_BPF) && !hasCap(caps, CAP_SYS_ADMIN)) missing.push('CAP_BPF (loading the XDP program and its map; CAP_SYS_ADMIN before Linux 5.8)');
  if (missing.length > 0) {
    throw new Error(`net_af_xdp needs ${missing.join(', ')}: run as root, or grant them: sudo setcap cap_net_raw,cap_net_admin,cap_bpf,cap_ipc_lock+ep "$(command -v node)"`);
  }
}

/** Round up to a power of two. */
function pow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Control half of a net_af_xdp port. */
export class AfXdpPort extends EthDev {
  readonly opts: AfXdpOptions;
  readonly ifindex: number;
  private socks: Xsk[] = [];
  private mapFd = -1;
  private attachment: XdpAttachment | null = null;
  private claim: { close(): void } | null = null;
  private promiscFd = -1;
  private st: AfXdpStatus | null = null;

  constructor(name: string, opts: AfXdpOptions) {
    super(name);
    this.opts = opts;
    try {
      try {
        this.ifindex = os.ifNameToIndex(opts.iface);
      } catch {
        throw new UsageError(`--vdev ${name}: interface "${opts.iface}" does not exist (ip link show lists the interfaces)`);
      }
      const qc = queueCounts(opts.iface), last = opts.startQueue + opts.queueCount - 1;
      if (last >= qc.rx || last >= qc.tx) {
        throw new UsageError(`--vdev ${name}: queue ${last} (start_queue=${opts.startQueue}, queue_count=${opts.queueCount}) is past what interface ${opts.iface} has: ${qc.rx} RX and ${qc.tx} TX queue(s) (ethtool -L ${opts.iface} combined N sets them on a NIC; a veth gets them at creation: numrxqueues N numtxqueues N on both ends)`);
      }
      const other = ifaceOwners.get(opts.iface);
      if (other !== undefined) {
        throw new UsageError(`--vdev ${name}: interface ${opts.iface} is already port ${other}'s in this process: give that port several queues (queue_count=N) instead of a second port`);
      }
      checkCapabilities();
      this.claimIface();
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Claim the interface for this process (one tspmd process per interface; ifclaim.ts). */
  private claimIface(): void {
    try {
      this.claim = claimInterface(this.opts.iface, `port ${this.name}`);
    } catch (e) {
      // Another process on the interface: the user picks another interface or stops that one.
      throw e instanceof InterfaceClaimedError ? new UsageError(`--vdev ${this.name}: ${e.message}`) : e;
    }
    ifaceOwners.set(this.opts.iface, this.name);
  }

  /** Driver facts: queues up to queue_count, MTU from the default mbuf's data room less the kernel's XDP headroom. */
  info(): DevInfo {
    const mtu = Number(netAttr(this.opts.iface, 'mtu') ?? 1500);
    const room = MBUF_HEADROOM + MBUF_DATAROOM - X.XDP_PACKET_HEADROOM - 14;
    const caps = ['promiscuous', 'multi-queue', 'link-state', 'rx-interrupt'];
    const s = this.st;
    if (s) caps.push(s.umem === 'mempool' ? 'umem-mempool' : 'umem-private', s.bind === 'zero-copy' ? 'xdp-zerocopy' : 'xdp-copy', `xdp-${s.xdpMode}`);
    return {
      driverName: 'net_af_xdp', maxRxQueues: this.opts.queueCount, maxTxQueues: this.opts.queueCount, minMtu: 68, maxMtu: Math.max(Math.min(mtu, room), 68),
      minDesc: 64, maxDesc: 1 << 15, capabilities: caps,
    };
  }

  /** How the started port moves packets (null before start). */
  xdpStatus(): AfXdpStatus | null {
    return this.st ? { ...this.st, queues: [...this.st.queues] } : null;
  }

  /** The interface's MAC address (00:00:00:00:00:00 once the interface is gone). */
  macAddr(): number[] {
    return netdevMac(this.opts.iface);
  }

  /** Link state from the interface: up when it is up with a carrier; down when it is gone. */
  link(): LinkStatus {
    return netdevLink(this.opts.iface);
  }

  protected override xstatNames(): string[] {
    const names: string[] = [...X.XDP_STATISTICS_NAMES];
    const n = this.conf?.rxQueues ?? 0;
    for (let q = 0; q < n; q++) names.push(`q${q}_tx_copies`, `q${q}_tx_wakeups`, `q${q}_rx_wakeups`);
    return names;
  }

  protected override onConfigure(conf: PortConf): void {
    if (conf.rxQueues !== conf.txQueues) {
      throw new RangeError(`port ${this.port} (${this.name}): an AF_XDP socket is one RX and one TX queue: ${conf.rxQueues} RX and ${conf.txQueues} TX queues requested`);
    }
  }

  protected override onStart(): void {
    const n = this.conf!.rxQueues, o = this.opts;
    if (this.claim === null) this.claimIface(); // released by a reset()
    try {
      this.mapFd = createXskMap(o.startQueue + o.queueCount);
      for (let q = 0; q < n; q++) {
        const s = this.openQueue(q, n);
        this.socks.push(s);
        xskMapSet(this.mapFd, s.queue, s.fd);
      }
      this.attachment = attachXskRedirect({ ifname: o.iface, ifindex: this.ifindex, mapFd: this.mapFd, mode: o.mode });
      if (this.isPromiscuous) this.setPromisc(true);
    } catch (e) {
      this.teardown();
      // Another XDP program on the interface: its message names it and how to remove it.
      throw e instanceof XdpBusyError ? new UsageError(`port ${this.port} (${this.name}): ${e.message}`) : e;
    }
    const s0 = this.socks[0];
    // Queues with different pools could differ: 'private' when any queue had to fall back.
    const umem = this.socks.every((s) => s.data.umem === 'mempool') ? 'mempool' : 'private';
    const refused = this.refusedWhy;
    this.st = {
      umem, ...(refused !== null ? { umemRefused: refused } : {}), bind: this.socks.every((s) => s.zc) ? 'zero-copy' : 'copy',
      programId: this.attachment!.progId, xdpMode: this.attachment!.mode === 'generic' ? 'generic' : 'native', queues: this.socks.map((s) => s.queue),
    };
    const st = this.st;
    log('info', this.name, `${n} queue(s) on ${o.iface} (ifindex ${this.ifindex}, queue ${st.queues.join(', ')}), XDP program ${st.programId} (${st.xdpMode}), `
      + `bind ${st.bind}, UMEM ${umem === 'mempool' ? `over mempool "${s0.pool.name}" (frames land in mbufs, no copy)` : 'private (one copy each way)'}`
      + `${o.busyBudget > 0 ? `, busy polling budget ${o.busyBudget}` : ''}`);
  }

  /** Why the kernel refused the mempool's memory as UMEM at the last start (null: it took it). */
  private refusedWhy: string | null = null;

  /** One socket: UMEM, four rings mapped, bound to queue start_queue+q, its fill ring stocked. */
  private openQueue(q: number, n: number): Xsk {
    const o = this.opts, queue = o.startQueue + q;
    const pool = this.rxPools[q]!;
    const rxSize = pow2(this.rxDesc[q]), txSize = pow2(this.txDesc[q]);
    const fd = openXdpSocket();
    const x: Xsk = { fd, queue, maps: [], data: null as unknown as AfXdpQueueData, pool, umemVa: 0n, umemLen: 0, zc: false, last: X.XDP_STATISTICS_NAMES.map(() => 0) };
    try {
      const umem = this.registerUmem(fd, pool, rxSize, txSize);
      if (umem.private) {
        x.umemVa = umem.va;
        x.umemLen = umem.len;
      }
      const int = (opt: number, v: number): void => os.setsockoptInt(fd, X.SOL_XDP, opt, v);
      int(X.XDP_UMEM_FILL_RING, rxSize);
      int(X.XDP_UMEM_COMPLETION_RING, txSize);
      int(X.XDP_RX_RING, rxSize);
      int(X.XDP_TX_RING, txSize);
      const offBuf = new Uint8Array(X.SIZEOF_XDP_MMAP_OFFSETS);
      os.getsockopt(fd, X.SOL_XDP, X.XDP_MMAP_OFFSETS, offBuf);
      const off = X.decodeMmapOffsets(offBuf);
      const map = (r: X.RingOffsets, size: number, entry: number, pgoff: number): XskRing => {
        const len = r.desc + size * entry;
        const va = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_SHARED | os.MAP_POPULATE, fd, pgoff);
        x.maps.push({ va, len });
        return { va, len, producer: r.producer, consumer: r.consumer, desc: r.desc, flags: r.flags, size };
      };
      const rx = map(off.rx, rxSize, X.SIZEOF_XDP_DESC, X.XDP_PGOFF_RX_RING);
      const tx = map(off.tx, txSize, X.SIZEOF_XDP_DESC, X.XDP_PGOFF_TX_RING);
      const fill = map(off.fr, rxSize, X.SIZEOF_UMEM_ADDR, X.XDP_UMEM_PGOFF_FILL_RING);
      const comp = map(off.cr, txSize, X.SIZEOF_UMEM_ADDR, X.XDP_UMEM_PGOFF_COMPLETION_RING);
      // Zero copy when the driver can (the kernel falls back to copy by itself when no flag
      // forces either); copy when asked, and with generic XDP, which only copies.
      const copy = o.forceCopy || o.mode === 'generic';
      const addr = X.sockaddrXdp(this.ifindex, queue, X.XDP_USE_NEED_WAKEUP | (copy ? X.XDP_COPY : 0));
      // EBUSY: the queue has a socket's buffer pool. The kernel releases a closed socket's pool in
      // a work item after close(2) returns (a process killed a moment ago, a stop and start): wait
      // for it a little before naming the other user.
      for (let waited = 0; ; waited += BIND_RETRY_MS) {
        try {
          os.bind(fd, addr, `${o.iface} queue ${queue}`);
          break;
        } catch (e) {
          if (!(e instanceof OsError) || e.code !== 'EBUSY') throw e;
          if (waited >= BIND_WAIT_MS) {
            throw new Error(`port ${this.port} (${this.name}): queue ${queue} of ${o.iface} already has an AF_XDP socket, for ${BIND_WAIT_MS} ms now: another program uses it (ss -xp or bpftool net show may tell which)`);
          }
          sleepMs(BIND_RETRY_MS);
        }
      }
      const optBuf = new Uint8Array(X.SIZEOF_XDP_OPTIONS);
      os.getsockopt(fd, X.SOL_XDP, X.XDP_OPTIONS, optBuf);
      x.zc = (optBuf[0] & X.XDP_OPTIONS_ZEROCOPY) !== 0;
      if (o.busyBudget > 0) this.busyPoll(fd, o.busyBudget, q);
      const nObj = Math.floor((pool.zone.len - pool.objOffset) / pool.objSize);
      const data: AfXdpQueueData = {
        fd, rx, tx, fill, comp, umem: umem.private ? 'private' : 'mempool', zoneAddr: umem.zoneAddr,
        umemVa: umem.va, umemLen: umem.len, frameSize: PRIVATE_FRAME, rxFrames: rxSize, txFrames: txSize, txMax: umem.chunk,
        rxLent: new SharedArrayBuffer(umem.private ? 1 : nObj), txLent: new SharedArrayBuffer(umem.private ? 1 : nObj),
        fillTarget: rxSize, filled: 0, busyPoll: o.busyBudget > 0, intr: this.conf?.intr?.rxq === true,
        xstat: X.XDP_STATISTICS_NAMES.length + q * XS_PER_QUEUE,
      };
      x.data = data;
      data.filled = umem.private ? this.stockPrivate(data) : this.stockFill(data, pool);
      if (data.filled === 0) throw new Error(`port ${this.port} (${this.name}): mempool "${pool.name}" has no free mbuf for RX queue ${q}'s fill ring (make it larger)`);
      return x;
    } catch (e) {
      this.closeSock(x);
      throw e instanceof OsError ? new Error(`port ${this.port} (${this.name}): queue ${queue} of ${o.iface} (${q + 1} of ${n}): ${e.message}`) : e;
    }
  }

  /**
   * Register the UMEM: the RX pool's memory in unaligned-chunk mode (from the page that holds the
   * zone's first byte; each fill address is an mbuf's buffer start, a chunk its headroom and data
   * room), or, when the kernel refuses it, a private area of page-sized frames.
   */
  private registerUmem(fd: number, pool: Mempool, rxSize: number, txSize: number): { private: boolean; va: bigint; len: number; zoneAddr: number; chunk: number } {
    const headroom = pool.userWord(0), bufLen = headroom + pool.userWord(1);
    const base = pool.zone.va & ~BigInt(PAGE - 1);
    const zoneAddr = Number(pool.zone.va - base), len = zoneAddr + pool.zone.len;
    // Received data starts XDP_PACKET_HEADROOM (+ this) after the buffer start: at least the pool's headroom.
    const umemHeadroom = Math.max(0, headroom - X.XDP_PACKET_HEADROOM);
    let why: string;
    if (pool.objSize - MbufOff.Buf < bufLen || pool.objOffset < 0) {
      why = `mempool "${pool.name}" holds no mbufs`;
    } else {
      this.memlock(len);
      try {
        os.setsockopt(fd, X.SOL_XDP, X.XDP_UMEM_REG, X.xdpUmemReg(base, len, bufLen, umemHeadroom, X.XDP_UMEM_UNALIGNED_CHUNK_FLAG));
        this.refusedWhy = null;
        return { private: false, va: base, len, zoneAddr, chunk: bufLen };
      } catch (e) {
        if (!(e instanceof OsError)) throw e;
        if (e.code === 'ENOBUFS') throw memlockError(len);
        if (e.code === 'ENOMEM') throw e;
        why = `${e.code}${bufLen > PAGE ? `: its mbuf buffers are ${bufLen} bytes, more than the ${PAGE}-byte page a chunk may span` : bufLen < X.XDP_UMEM_MIN_CHUNK_SIZE ? `: its mbuf buffers are ${bufLen} bytes, less than the kernel's smallest chunk (${X.XDP_UMEM_MIN_CHUNK_SIZE})` : ''}`;
      }
    }
    // The fallback: RX frames then TX frames, page-sized, aligned chunks.
    const plen = (rxSize + txSize) * PRIVATE_FRAME;
    const va = os.mmap(0n, plen, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS | os.MAP_POPULATE, -1, 0);
    try {
      this.memlock(plen);
      try {
        os.setsockopt(fd, X.SOL_XDP, X.XDP_UMEM_REG, X.xdpUmemReg(va, plen, PRIVATE_FRAME, 0, 0));
      } catch (e) {
        if (e instanceof OsError && e.code === 'ENOBUFS') throw memlockError(plen);
        throw e;
      }
    } catch (e) {
      os.munmap(va, plen);
      throw e;
    }
    if (this.refusedWhy === null) {
      log('warn', this.name, `the kernel refused mempool "${pool.name}" as UMEM (${why}): a private UMEM is used instead, with one copy per packet each way`);
    }
    this.refusedWhy = why;
    return { private: true, va, len: plen, zoneAddr: 0, chunk: PRIVATE_FRAME - X.XDP_PACKET_HEADROOM };
  }

  /**
   * Without CAP_IPC_LOCK the UMEM's pages count against RLIMIT_MEMLOCK: raise the soft limit to
   * the hard one when it is lower than what this UMEM needs (the kernel then says ENOBUFS if even
   * that is too little, and memlockError explains).
   */
  private memlock(bytes: number): void {
    if (hasCap(effectiveCaps(), CAP_IPC_LOCK)) return;
    const lim = os.getrlimit(os.RLIMIT_MEMLOCK);
    if (lim.cur >= BigInt(bytes) || lim.cur === lim.max) return;
    try {
      os.setrlimit(os.RLIMIT_MEMLOCK, { cur: lim.max, max: lim.max });
    } catch {
      // the kernel's ENOBUFS on registration names the limit
    }
  }

  /** SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET; refused (EPERM, ENOPROTOOPT): a warning, the port works without. */
  private busyPoll(fd: number, budget: number, q: number): void {
    try {
      os.setsockoptInt(fd, os.SOL_SOCKET, X.SO_PREFER_BUSY_POLL, 1);
      os.setsockoptInt(fd, os.SOL_SOCKET, X.SO_BUSY_POLL, 20);
      os.setsockoptInt(fd, os.SOL_SOCKET, X.SO_BUSY_POLL_BUDGET, budget);
    } catch (e) {
      if (!(e instanceof OsError) || (e.code !== 'EPERM' && e.code !== 'ENOPROTOOPT' && e.code !== 'EINVAL')) throw e;
      if (q === 0) log('warn', this.name, `busy polling refused (${e.code}): the port runs without it (busy_budget=0 silences this)`);
    }
  }

  /** Lend mbufs of the pool to the fill ring, up to its size or what the pool has; returns how many. */
  private stockFill(d: AfXdpQueueData, pool: Mempool): number {
    const w = new Uint32Array(os.viewOf(d.fill.va, d.fill.len));
    const lent = new Uint8Array(d.rxLent);
    const buf = new Uint32Array(64);
    const prodW = d.fill.producer >> 2, descW = d.fill.desc >> 2, mask = d.fill.size - 1;
    let prod = w[prodW], filled = 0;
    while (filled < d.fillTarget) {
      const k = Math.min(64, d.fillTarget - filled);
      if (!pool.allocBulk(buf, k)) break;
      for (let i = 0; i < k; i++) {
        const idx = buf[i] & 0xffffff;
        lent[idx] = 1;
        const e = descW + (((prod + i) & mask) << 1);
        w[e] = d.zoneAddr + pool.objOffset + idx * pool.objSize + MbufOff.Buf;
        w[e + 1] = 0;
      }
      prod = (prod + k) >>> 0;
      filled += k;
    }
    Atomics.store(w, prodW, prod);
    return filled;
  }

  /** Give every RX frame of a private UMEM to the fill ring; returns how many. */
  private stockPrivate(d: AfXdpQueueData): number {
    const w = new Uint32Array(os.viewOf(d.fill.va, d.fill.len));
    const prodW = d.fill.producer >> 2, descW = d.fill.desc >> 2, mask = d.fill.size - 1;
    const prod = w[prodW];
    for (let i = 0; i < d.rxFrames; i++) {
      const e = descW + (((prod + i) & mask) << 1);
      w[e] = i * d.frameSize;
      w[e + 1] = 0;
    }
    Atomics.store(w, prodW, (prod + d.rxFrames) >>> 0);
    return d.rxFrames;
  }

  protected override onPromiscuous(on: boolean): void {
    if (this.status === 'started') this.setPromisc(on);
  }

  /**
   * Promiscuous mode through a membership of an AF_PACKET socket that receives nothing (protocol
   * 0): the kernel counts it with every other user's, and takes it back when the socket closes,
   * whoever closes it (a SIGKILL included).
   */
  private setPromisc(on: boolean): void {
    if (!on) {
      if (this.promiscFd >= 0) os.close(this.promiscFd);
      this.promiscFd = -1;
      return;
    }
    if (this.promiscFd >= 0) return;
    const fd = os.socket(os.AF_PACKET, os.SOCK_RAW, 0);
    try {
      os.setsockopt(fd, X.SOL_PACKET, X.PACKET_ADD_MEMBERSHIP, X.packetMreqPromisc(this.ifindex));
    } catch (e) {
      os.close(fd);
      throw e;
    }
    this.promiscFd = fd;
  }

  /** XDP_STATISTICS of each socket: the totals as xstats, drops (rx_dropped + rx_ring_full) as each queue's imissed. */
  protected override refreshStats(): void {
    const b = new Uint8Array(X.SIZEOF_XDP_STATISTICS);
    const dv = new DataView(b.buffer);
    this.socks.forEach((s, q) => {
      try {
        os.getsockopt(s.fd, X.SOL_XDP, X.XDP_STATISTICS, b);
      } catch {
        return;
      }
      for (let i = 0; i < X.XDP_STATISTICS_NAMES.length; i++) {
        const v = Number(dv.getBigUint64(i * 8, true));
        const d = v - s.last[i];
        s.last[i] = v;
        this.counters[xstatIndex(i)] += d;
        if (i === 0 || i === 3) this.counters[rxqStatsBase(q) + RXQ_MISSED] += d; // rx_dropped, rx_ring_full
      }
    });
  }

  protected override onStop(): void {
    this.refreshStats();
    this.teardown();
  }

  protected override onClose(): void {
    this.teardown();
    if (ifaceOwners.get(this.opts?.iface) === this.name) ifaceOwners.delete(this.opts.iface);
    this.claim?.close();
    this.claim = null;
  }

  /**
   * Detach the program first (frames go to the stack again, not into sockets on their way out),
   * then close the sockets (the kernel writes no UMEM after that), then give back every mbuf the
   * rings held: the ones marked lent, wherever the kernel left them.
   */
  private teardown(): void {
    this.setPromisc(false);
    if (this.attachment) {
      this.attachment.close();
      this.attachment = null;
    }
    if (this.mapFd >= 0) {
      for (const s of this.socks) try { xskMapDelete(this.mapFd, s.queue); } catch { /* the map goes with its fd */ }
      os.close(this.mapFd);
      this.mapFd = -1;
    }
    for (const s of this.socks) this.closeSock(s);
    this.socks = [];
    this.st = null;
  }

  /** Close one socket, unmap its rings, return its lent mbufs, unmap a private UMEM. */
  private closeSock(s: Xsk): void {
    for (const m of s.maps) os.munmap(m.va, m.len);
    s.maps = [];
    if (s.fd >= 0) os.close(s.fd);
    s.fd = -1;
    const d = s.data;
    if (d !== null && d.umem === 'mempool') {
      const hi = s.pool.id << 24, out = new Uint32Array(256);
      for (const sab of [d.rxLent, d.txLent]) {
        const lent = new Uint8Array(sab);
        let j = 0;
        for (let i = 0; i < lent.length; i++) {
          if (lent[i] === 0) continue;
          lent[i] = 0;
          out[j++] = (hi | i) >>> 0;
          if (j === out.length) { pktmbufFreeRecorded(out, j); j = 0; }
        }
        if (j > 0) pktmbufFreeRecorded(out, j);
      }
    }
    if (s.umemVa !== 0n) os.munmap(s.umemVa, s.umemLen);
    s.umemVa = 0n;
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(q: number): AfXdpQueueData {
    return this.socks[q].data;
  }

  protected txqData(q: number): AfXdpQueueData {
    return this.socks[q].data;
  }
}

/** The error for a UMEM the memlock limit does not cover. */
function memlockError(bytes: number): Error {
  const lim = os.getrlimit(os.RLIMIT_MEMLOCK);
  const kib = (v: bigint): string => (v === 0xffffffffffffffffn ? 'unlimited' : `${v / 1024n} KiB`);
  return new Error(`net_af_xdp: the kernel refused to lock ${Math.ceil(bytes / 1024)} KiB of UMEM (ENOBUFS): it needs CAP_IPC_LOCK, or an RLIMIT_MEMLOCK that covers every UMEM (now ${kib(lim.cur)}, hard limit ${kib(lim.max)}): run as root, raise it (ulimit -l, LimitMEMLOCK= in a systemd unit), or grant cap_ipc_lock`);
}

/** An AF_XDP socket, or a clear error when CAP_NET_RAW is missing or the kernel has no AF_XDP. */
function openXdpSocket(): number {
  try {
    return os.socket(X.AF_XDP, os.SOCK_RAW, 0);
  } catch (e) {
    if (e instanceof OsError && (e.code === 'EPERM' || e.code === 'EACCES')) {
      throw new Error('net_af_xdp needs CAP_NET_RAW to open AF_XDP sockets: run as root, or grant it: sudo setcap cap_net_raw,cap_net_admin,cap_bpf,cap_ipc_lock+ep "$(command -v node)"');
    }
    if (e instanceof OsError && e.code === 'EAFNOSUPPORT') throw new Error('net_af_xdp: this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)');
    throw e;
  }
}

registerVdevDriver({
  name: 'net_af_xdp',
  rxInterrupt: true,
  description: 'a Linux interface through AF_XDP sockets and tspmd\'s own XDP program, the UMEM over the RX mempool',
  schema: {
    iface: { kind: 'string', required: true, placeholder: 'IFNAME', help: 'interface name' },
    start_queue: { kind: 'int', min: 0, max: 4095, default: 0, help: 'first interface queue to bind' },
    queue_count: { kind: 'int', min: 1, max: MAX_QUEUES, default: 1, help: 'queues to bind (one AF_XDP socket each)' },
    busy_budget: { kind: 'int', min: 0, max: 65535, default: 0, help: 'busy-polling budget (SO_BUSY_POLL_BUDGET); 0 (default) leaves the driver to the kernel\'s softirq' },
    force_copy: { kind: 'bool', default: false, help: 'bind in copy mode (XDP_COPY) even where the driver has zero copy' },
    mode: { kind: 'enum', values: ['native', 'generic'], default: 'native', help: 'XDP attach mode: native (the driver\'s hook) or generic (SKB mode, any interface)' },
  },
  probe: (name, args) => new AfXdpPort(name, {
    iface: args.iface, startQueue: args.start_queue, queueCount: args.queue_count, busyBudget: args.busy_budget, forceCopy: args.force_copy, mode: args.mode,
  }),
});
