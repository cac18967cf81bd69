/**
 * net_igb: a poll-mode driver for the Intel 82576 (8086:10c9; QEMU >= 8.0 emulates it as
 * `-device igb`) on the VfioDevice interface: kernel VFIO (group or IOMMUFD) or vfio-user.
 *
 * Control half (this file, main thread):
 *   probe  bus mastering on, BAR0 opened, global reset (CTRL.RST), MAC address from the EEPROM
 *          (EERD words 0..2, checked against RAL0/RAH0), PHY identified and autonegotiation
 *          restarted through MDIC, link up forced (CTRL.SLU);
 *   start  per queue a descriptor ring in one IOVA-contiguous memzone, RX rings filled (SRRCTL
 *          buffer size from the pool's data room, drop when out of descriptors), RSS (RETA spread
 *          over the RX queues, a Toeplitz key, IPv4/IPv6 TCP/UDP hashing) when there is more than
 *          one RX queue, unicast/multicast promiscuous, MTU (RLPML, LPE), then RCTL/TCTL enable;
 *          with intr.rxq or intr.lsc: MSI-X vectors through VFIO SET_IRQS (one per RX queue, one
 *          for link-state changes), IVAR routing, auto-clear, no throttling;
 *   stop   receive and transmit off, global reset (the NIC stops all DMA), every mbuf the rings
 *          hold back to its pool (from the driver's record, never from DMA memory), rings freed,
 *          interrupts released;
 *   stats  the NIC's counters (read-clear) accumulated as xstats, per-queue drops as imissed.
 * Data half: igb_data.ts. Registers: igb_regs.ts.
 *
 * The steps follow the Intel 82576EB GbE Controller Datasheet, section 4.5 (software
 * initialization), cited at each step so a reviewer can check the order: 4.5.4 Interrupts During
 * Initialization, 4.5.5 Global Reset and General Configuration, 4.5.7 Link Setup Mechanisms and
 * Control/Status Bit Summary, 4.5.9 Receive Initialization, then Transmit Initialization; for RSS,
 * 7.1.1.7.3 (its verification key) and 8.10.9 (MRQC). Where a step names a section or a register
 * without a number, the number could not be checked against the datasheet and is left out.
 *
 * Not supported (yet): the VF driver (SR-IOV virtual functions, 8086:10ca), scattered RX (a frame
 * must fit one mbuf: the MTU is bounded by the pool's data room), checksum/TSO offloads, VLAN
 * filtering and stripping, IEEE 1588 timestamps, flow control settings, legacy interrupts.
 *
 * BAR0 need not be mapped: registers VFIO does not let us mmap (or that bar_mmap=0 / bar_unmap=
 * leave unmapped) are read and written with pread/pwrite on the device fd (vfio-user: region
 * messages) on the main thread, and the lcores write their tail and interrupt registers through
 * MappedBar.reg, which picks a mapped store or that fallback once per register at queue set-up.
 *
 * `-a ADDR[,rss_key=HEX40][,bar_mmap=0|1][,bar_unmap=0xSTART-0xEND[:0xSTART-0xEND...]]`
 */
import { Bar } from '../../../src/iommu/bar.js';
import type { SparseArea, VfioDevice } from '../../../src/iommu/device.js';
import * as U from '../../../src/iommu/vfio-uapi.js';
import type { EalMemory, Memzone } from '../../../src/memory/memory.js';
import * as os from '../../../src/os/libc.js';
import { sleepMs } from '../../../src/os/sleep.js';
import { log } from '../../../src/log.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { checkDevargs, type DevargsSchema } from '../../../lib/kvargs/kvargs.js';
import {
  EthDev, rxqStatsBase, xstatIndex, RXQ_MISSED, type DevInfo, type LinkStatus, type PortConf,
} from '../../../lib/ethdev/ethdev.js';
import type { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeRecorded, pktmbufHeadroom, pktmbufDataRoom, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { registerPciDriver } from '../../bus/pci/pci.js';
import { enableBusMaster, disableBusMaster } from '../../bus/pci/config.js';
import * as R from './igb_regs.js';
import { type IgbQueueData, ST_BROKEN, ST_WORDS } from './igb_data.js';

const DATA = siblingModule(import.meta.url, 'igb_data');
export const IGB_VENDOR = 0x8086, IGB_DEVICE_82576 = 0x10c9;
/** Queues this driver uses (the 82576 has 16; RSS spreads over at most 8 here). */
const MAX_QUEUES = 8;
/** How long register handshakes (reset, EEPROM, MDIC, queue enable) may take. */
const HANDSHAKE_MS = 1000;
/** The well-known default Toeplitz key (Microsoft's RSS verification key; 82576 datasheet, 7.1.1.7.3). */
const DEFAULT_RSS_KEY = [
  0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
  0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
  0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/** The NIC's read-clear counters kept as xstats: [xstat name, register, low half of a 64-bit pair]. */
const HW_COUNTERS: Array<[string, number, number]> = [
  ['hw_rx_good_packets', R.GPRC, -1], ['hw_tx_good_packets', R.GPTC, -1],
  ['hw_rx_good_bytes', R.GORCH, R.GORCL], ['hw_tx_good_bytes', R.GOTCH, R.GOTCL],
  ['hw_rx_total_packets', R.TPR, -1], ['hw_tx_total_packets', R.TPT, -1],
  ['hw_rx_broadcast_packets', R.BPRC, -1], ['hw_rx_multicast_packets', R.MPRC, -1],
  ['hw_tx_broadcast_packets', R.BPTC, -1], ['hw_tx_multicast_packets', R.MPTC, -1],
  ['hw_rx_missed_packets', R.MPC, -1], ['hw_rx_no_buffer_count', R.RNBC, -1],
  ['hw_rx_crc_errors', R.CRCERRS, -1], ['hw_rx_undersize_packets', R.RUC, -1], ['hw_rx_oversize_packets', R.ROC, -1],
];
/** Driver counters after the hardware ones. */
const XS_DMA_FAULTS = HW_COUNTERS.length, XS_LSC = XS_DMA_FAULTS + 1;

/** Driver options (devargs). */
export interface IgbOptions {
  /** 40-byte RSS key (default: the well-known Toeplitz key) */
  rssKey?: number[];
  /** false: never mmap BAR0, every register through pread/pwrite (or vfio-user messages), lcores included */
  barMmap?: boolean;
  /** page-aligned areas of BAR0 left unmapped even where VFIO allows mmap (reached as above) */
  barUnmap?: SparseArea[];
}

interface Ring {
  zone: Memzone;
  size: number;
  /** the driver's record of what each descriptor holds (see igb_data.ts) */
  mbufs: Uint32Array;
  /** TX: 1 where that mbuf was given with more than one reference */
  shared: Uint8Array;
  state: Int32Array;
  eventfd: number;
  /** RX: bytes one buffer holds (SRRCTL) */
  bufLen: number;
}

/** Control half of an 82576 port. */
export class IgbPort extends EthDev {
  readonly vfio: VfioDevice;
  readonly memory: EalMemory;
  /** BAR0: the registers */
  readonly bar: Bar;
  /** the PHY's identifier (MDIC PHY_ID1 << 16 | PHY_ID2) */
  readonly phyId: number;
  private readonly mac: number[];
  private readonly opts: IgbOptions;
  private rx: Ring[] = [];
  private tx: Ring[] = [];
  private msix = false;
  private lscFd = -1;
  private lscTimer: NodeJS.Timeout | null = null;
  private lastLink = false;
  private closed = false;

  private constructor(vfio: VfioDevice, memory: EalMemory, bar: Bar, mac: number[], phyId: number, opts: IgbOptions) {
    super(vfio.name);
    this.vfio = vfio;
    this.memory = memory;
    this.bar = bar;
    this.mac = mac;
    this.phyId = phyId;
    this.opts = opts;
  }

  /** Probe an 82576: bus mastering, BAR0, reset, MAC from the EEPROM, PHY and link bring-up. */
  static open(vfio: VfioDevice, memory: EalMemory, opts: IgbOptions = {}): IgbPort {
    // PCI: memory decoding and bus mastering, or the NIC can neither answer BAR0 nor DMA
    enableBusMaster(vfio);
    // where BAR0 (or part of it) is not mapped, Bar reaches it with pread/pwrite here and the lcores
    // through MappedBar.reg (igb_data.ts)
    const bar = Bar.open(vfio, U.VFIO_PCI_BAR0_REGION_INDEX, { mmap: opts.barMmap, unmap: opts.barUnmap });
    try {
      // 82576 datasheet, 4.5.4 Interrupts During Initialization and 4.5.5 Global Reset and General Configuration
      globalReset(bar, vfio.name);
      // the MAC address: EEPROM words 0..2 through EERD (the EEPROM Read register's description in section 8)
      const mac = readMac(bar, vfio.name);
      // 82576 datasheet, 4.5.7 Link Setup Mechanisms and Control/Status Bit Summary: the internal
      // copper PHY through MDIC, identified, autonegotiation restarted (the link comes up when it
      // completes; an LSC interrupt says when), and CTRL.SLU set so the MAC follows the PHY's link
      const phyId = (mdicRead(bar, R.PHY_ID1, vfio.name) << 16 | mdicRead(bar, R.PHY_ID2, vfio.name)) >>> 0;
      mdicWrite(bar, R.PHY_BMCR, R.BMCR_AUTOEN | R.BMCR_ANRESTART | R.BMCR_FULL_DUPLEX | R.BMCR_SPEED1000, vfio.name);
      bar.write32(R.CTRL, bar.read32(R.CTRL) | R.CTRL_SLU);
      const port = new IgbPort(vfio, memory, bar, mac, phyId, opts);
      log('info', 'net_igb', `${port.name}: port ${port.port}, MAC ${port.macString()}, PHY 0x${phyId.toString(16)}, VFIO ${vfio.backend}`);
      return port;
    } catch (e) {
      bar.close();
      throw e;
    }
  }

  /** Driver facts: up to 8 queues each way, MTU up to what one mbuf holds (checked at start). */
  info(): DevInfo {
    const caps = ['promiscuous', 'multi-queue', 'rss', 'link-state', 'hw-counters', 'jumbo'];
    if (this.vfio.irqInfo(U.VFIO_PCI_MSIX_IRQ_INDEX).count > 0) caps.push('rx-interrupt', 'lsc-interrupt');
    return {
      driverName: 'net_igb', maxRxQueues: MAX_QUEUES, maxTxQueues: MAX_QUEUES, minMtu: 68, maxMtu: 9216,
      minDesc: R.RING_ALIGN_DESC, maxDesc: R.MAX_DESC, capabilities: caps,
    };
  }

  /** The MAC address read from the EEPROM at probe. */
  macAddr(): number[] {
    return [...this.mac];
  }

  /** Link from STATUS.LU and its speed bits. */
  link(): LinkStatus {
    if (this.closed) return { up: false, speedMbps: 0, fullDuplex: false };
    const s = this.bar.read32(R.STATUS);
    const up = (s & R.STATUS_LU) !== 0;
    const speed = [10, 100, 1000, 1000][(s & R.STATUS_SPEED_MASK) >>> R.STATUS_SPEED_SHIFT];
    return { up, speedMbps: up ? speed : 0, fullDuplex: (s & R.STATUS_FD) !== 0 };
  }

  /** Why the port stopped working (a queue whose DMA failed), or null. */
  fault(): string | null {
    const broken = this.tx.map((r, q) => (Atomics.load(r.state, ST_BROKEN) !== 0 ? q : -1)).filter((q) => q >= 0);
    if (broken.length === 0) return null;
    return `${this.name}: TX queue(s) ${broken.join(', ')} broken: the NIC consumed descriptors whose write-back never arrived (a DMA fault, e.g. an IOVA the IOMMU does not map); stop and restart the port`;
  }

  protected override xstatNames(): string[] {
    return [...HW_COUNTERS.map(([n]) => n), 'tx_dma_faults', 'lsc_interrupts'];
  }

  protected override onConfigure(conf: PortConf): void {
    if ((conf.intr?.rxq || conf.intr?.lsc) && this.vfio.irqInfo(U.VFIO_PCI_MSIX_IRQ_INDEX).count < conf.rxQueues + 1) {
      throw new RangeError(`port ${this.port} (${this.name}): interrupts need ${conf.rxQueues + 1} MSI-X vectors, VFIO offers ${this.vfio.irqInfo(U.VFIO_PCI_MSIX_IRQ_INDEX).count}`);
    }
  }

  protected override refreshStats(): void {
    if (this.closed) return;
    const b = this.bar, c = this.counters;
    HW_COUNTERS.forEach(([, reg, low], i) => {
      // a 64-bit pair clears when its high half is read: low half first
      const v = low >= 0 ? b.read32(low) + b.read32(reg) * 0x1_0000_0000 : b.read32(reg);
      c[xstatIndex(i)] += v;
    });
    for (let q = 0; q < this.rx.length; q++) c[rxqStatsBase(q) + RXQ_MISSED] += b.read32(R.rqdpc(q));
  }

  protected override onPromiscuous(on: boolean): void {
    if (this.closed) return;
    const r = this.bar.read32(R.RCTL);
    this.bar.write32(R.RCTL, on ? r | R.RCTL_UPE | R.RCTL_MPE : r & ~(R.RCTL_UPE | R.RCTL_MPE));
  }

  protected override onStart(): void {
    const conf = this.configuration!;
    try {
      const b = this.bar;
      // 82576 datasheet, 4.5.9 Receive Initialization: receive off while it is set up, the
      // multicast table array cleared
      b.write32(R.RCTL, 0);
      for (let i = 0; i < R.MTA_WORDS; i++) b.write32(R.MTA + 4 * i, 0);
      // Transmit Initialization (82576 datasheet, section 4.5, after Receive Initialization)
      for (let q = 0; q < conf.txQueues; q++) this.tx.push(this.setupTx(q, this.txDesc[q]));
      const frame = (conf.mtu ?? 1500) + 14 + 4; // Ethernet header and one VLAN tag
      for (let q = 0; q < conf.rxQueues; q++) this.rx.push(this.setupRx(q, this.rxDesc[q], this.rxPools[q]!, frame));
      this.setupRss(conf.rxQueues);
      if (conf.intr?.rxq || conf.intr?.lsc) this.setupInterrupts(conf);
      // 4.5.9 again: the long-packet limit, then RCTL (and TCTL) enable once every queue is ready
      b.write32(R.RLPML, frame);
      let rctl = R.RCTL_EN | R.RCTL_BAM | R.RCTL_SECRC;
      if (this.isPromiscuous) rctl |= R.RCTL_UPE | R.RCTL_MPE;
      if (frame > 1518) rctl |= R.RCTL_LPE;
      b.write32(R.TCTL, R.TCTL_EN | R.TCTL_PSP | R.TCTL_CT | R.TCTL_COLD);
      b.write32(R.RCTL, rctl);
      // the rings are full: hand the NIC all but one descriptor per RX queue
      this.rx.forEach((r, q) => b.write32(R.rdt(q), r.size - 1));
    } catch (e) {
      this.teardown();
      throw e;
    }
    log('info', 'net_igb', `${this.name}: started ${conf.rxQueues} RX / ${conf.txQueues} TX queue(s)${conf.rxQueues > 1 ? ', RSS' : ''}${this.msix ? ', MSI-X interrupts' : ''}, link ${this.link().up ? 'up' : 'down (autonegotiating)'}`);
  }

  /**
   * One RX ring: memzone, every descriptor given an mbuf, the queue's registers, enabled (82576
   * datasheet, 4.5.9 Receive Initialization: base, length, SRRCTL, head and tail, then
   * RXDCTL.ENABLE polled until it reads back set; the tail is bumped only after that, in onStart).
   */
  private setupRx(q: number, n: number, pool: Mempool, frame: number): Ring {
    const what = `${this.name}: RX queue ${q}`;
    const size = ringSize(n);
    const headroom = pktmbufHeadroom(pool), room = pktmbufDataRoom(pool);
    const kib = Math.min(127, Math.floor(room / 1024));
    if (kib < 1) throw new Error(`${what}: mbuf pool "${pool.name}" has a ${room}-byte data room; the 82576 needs buffers of at least 1 KiB (1024-byte units)`);
    if (kib * 1024 < frame) throw new Error(`${what}: frames of ${frame} bytes (MTU ${frame - 18}) do not fit the ${kib * 1024}-byte buffers of pool "${pool.name}" and this driver does not scatter frames: use a larger data room or a smaller MTU`);
    const ring = this.newRing(`igb${this.port}_rx${q}`, size);
    const ms = new Uint32Array(size);
    if (!pktmbufAllocInit(pool, ms, size, 0, 0, this.port)) {
      this.releaseRing(ring);
      throw new Error(`${what}: mbuf pool "${pool.name}" has ${pool.availableCount()} free mbufs; the ring's ${size} descriptors need ${size} (make the pool larger or the ring smaller)`);
    }
    const words = new Uint32Array(os.viewOf(ring.zone.va, size * R.DESC_BYTES)), v = new MbufView();
    for (let i = 0; i < size; i++) {
      ring.mbufs[i] = ms[i];
      v.at(ms[i]).storeIova(words, 4 * i, headroom);
      words[4 * i + 2] = 0;
      words[4 * i + 3] = 0;
    }
    const b = this.bar;
    b.write32(R.rxdctl(q), 0);
    b.write32(R.rdbal(q), Number(ring.zone.iova & 0xffffffffn));
    b.write32(R.rdbah(q), Number(ring.zone.iova >> 32n));
    b.write32(R.rdlen(q), size * R.DESC_BYTES);
    b.write32(R.srrctl(q), (kib | R.SRRCTL_DESCTYPE_ADV_ONEBUF | R.SRRCTL_DROP_EN) >>> 0);
    b.write32(R.rdh(q), 0);
    b.write32(R.rdt(q), 0);
    b.write32(R.rxdctl(q), R.RXDCTL_ENABLE);
    waitFor(() => (b.read32(R.rxdctl(q)) & R.RXDCTL_ENABLE) !== 0, `${what}: RXDCTL.ENABLE did not stick`);
    ring.bufLen = kib * 1024;
    return ring;
  }

  /**
   * One TX ring: memzone, the queue's registers, enabled (82576 datasheet, Transmit
   * Initialization: base, length, head and tail, then TXDCTL.ENABLE polled until it reads back set).
   */
  private setupTx(q: number, n: number): Ring {
    const size = ringSize(n);
    const ring = this.newRing(`igb${this.port}_tx${q}`, size);
    const b = this.bar;
    b.write32(R.txdctl(q), 0);
    b.write32(R.tdbal(q), Number(ring.zone.iova & 0xffffffffn));
    b.write32(R.tdbah(q), Number(ring.zone.iova >> 32n));
    b.write32(R.tdlen(q), size * R.DESC_BYTES);
    b.write32(R.tdh(q), 0);
    b.write32(R.tdt(q), 0);
    b.write32(R.txdctl(q), R.TXDCTL_ENABLE);
    waitFor(() => (b.read32(R.txdctl(q)) & R.TXDCTL_ENABLE) !== 0, `${this.name}: TX queue ${q}: TXDCTL.ENABLE did not stick`);
    return ring;
  }

  private newRing(name: string, size: number): Ring {
    const zone = this.memory.reserve(name, size * R.DESC_BYTES, 128, true);
    new Uint8Array(os.viewOf(zone.va, zone.len)).fill(0);
    const mbufs = new Uint32Array(new SharedArrayBuffer(4 * size)).fill(MBUF_NONE);
    const shared = new Uint8Array(new SharedArrayBuffer(size));
    return { zone, size, mbufs, shared, state: new Int32Array(new SharedArrayBuffer(4 * ST_WORDS)), eventfd: -1, bufLen: 0 };
  }

  /**
   * RSS over n queues: RETA entries round-robin, the key, and the hashed fields (82576 datasheet,
   * 7.1.1.7.3: the verification key, this driver's default; 8.10.9 Multiple Queues Command
   * Register - MRQC).
   */
  private setupRss(n: number): void {
    const b = this.bar;
    if (n <= 1) {
      b.write32(R.MRQC, 0);
      return;
    }
    for (let i = 0; i < R.RETA_ENTRIES; i += 4) {
      b.write32(R.RETA + i, (i % n) | ((i + 1) % n) << 8 | ((i + 2) % n) << 16 | ((i + 3) % n) << 24);
    }
    const key = this.opts.rssKey ?? DEFAULT_RSS_KEY;
    for (let i = 0; i < 40; i += 4) b.write32(R.RSSRK + i, (key[i] | key[i + 1] << 8 | key[i + 2] << 16 | key[i + 3] << 24) >>> 0);
    b.write32(R.RXCSUM, b.read32(R.RXCSUM) | R.RXCSUM_PCSD);
    b.write32(R.MRQC, (R.MRQC_RSS | R.MRQC_IPV4 | R.MRQC_TCPIPV4 | R.MRQC_UDPIPV4 | R.MRQC_IPV6 | R.MRQC_TCPIPV6EX | R.MRQC_UDPIPV6) >>> 0);
  }

  /**
   * MSI-X: vector q for RX queue q (armed by the lcore through EIMS), vector n for the "other"
   * causes (link status change, watched here). Causes auto-clear when their message is sent. The
   * datasheet's interrupt chapter (MSI-X mode: GPIE, IVAR, EIAC, EITR) is cited by title only.
   */
  private setupInterrupts(conf: PortConf): void {
    const n = conf.rxQueues, b = this.bar;
    const fds: number[] = [];
    for (let v = 0; v <= n; v++) fds.push(os.eventfd(0, os.EFD_NONBLOCK));
    this.rx.forEach((r, q) => { r.eventfd = fds[q]; });
    this.lscFd = fds[n];
    this.vfio.setIrqs(U.VFIO_PCI_MSIX_IRQ_INDEX, 0, fds);
    this.msix = true;
    b.write32(R.GPIE, (R.GPIE_MSIX_MODE | R.GPIE_EIAME | R.GPIE_PBA | R.GPIE_NSICR) >>> 0);
    for (let q = 0; q < n; q++) {
      const ivar = b.read32(R.ivar(q)) & ~0xff;
      b.write32(R.ivar(q), (ivar | R.IVAR_VALID | q) >>> 0);
      b.write32(R.eitr(q), 0);
    }
    b.write32(R.IVAR_MISC, (R.IVAR_VALID | n) << 8);
    b.write32(R.eitr(n), 0);
    b.write32(R.EIAC, (1 << (n + 1)) - 1);
    if (conf.intr?.lsc) {
      b.read32(R.ICR);
      b.write32(R.IMS, R.ICR_LSC);
      b.write32(R.EIMS, 1 << n);
      this.lastLink = this.link().up;
      this.lscTimer = setInterval(() => this.serviceLsc(), 50);
      this.lscTimer.unref();
    }
  }

  /** The link-state vector fired: read (and clear) the cause, tell the listeners. */
  private serviceLsc(): void {
    const buf = new Uint8Array(8);
    let fired = false;
    try {
      fired = os.read(this.lscFd, buf) === 8;
    } catch { /* EAGAIN: nothing yet */ }
    if (!fired) return;
    const icr = this.bar.read32(R.ICR);
    this.counters[xstatIndex(XS_LSC)]++;
    const up = this.link().up;
    if ((icr & R.ICR_LSC) !== 0 || up !== this.lastLink) {
      this.lastLink = up;
      this.linkChanged();
    }
  }

  protected override onStop(): void {
    this.teardown();
  }

  /** Receive and transmit off, a global reset (no DMA after it), then the rings' mbufs and memory back. */
  private teardown(): void {
    if (this.lscTimer) clearInterval(this.lscTimer);
    this.lscTimer = null;
    const b = this.bar;
    b.write32(R.RCTL, 0);
    b.write32(R.TCTL, R.TCTL_PSP);
    globalReset(b, this.name);
    if (this.msix) {
      try { this.vfio.disableIrqs(U.VFIO_PCI_MSIX_IRQ_INDEX); } catch (e) { log('warn', 'net_igb', `${this.name}: ${(e as Error).message}`); }
      this.msix = false;
    }
    for (const r of [...this.rx, ...this.tx]) this.releaseRing(r);
    if (this.lscFd >= 0) os.close(this.lscFd);
    this.lscFd = -1;
    this.rx = [];
    this.tx = [];
    // the reset dropped the link: bring it back for the next start
    mdicWrite(b, R.PHY_BMCR, R.BMCR_AUTOEN | R.BMCR_ANRESTART | R.BMCR_FULL_DUPLEX | R.BMCR_SPEED1000, this.name);
    b.write32(R.CTRL, b.read32(R.CTRL) | R.CTRL_SLU);
  }

  /**
   * Free what a ring's descriptors hold, then the ring: from the bookkeeping, never from DMA memory
   * (not the descriptors, nor the headers of the mbufs the NIC held: pktmbufFreeRecorded).
   */
  private releaseRing(r: Ring): void {
    const held = new Uint32Array(r.size), shared = new Uint8Array(r.size);
    let n = 0;
    for (let i = 0; i < r.size; i++) {
      if (r.mbufs[i] === MBUF_NONE) continue;
      held[n] = r.mbufs[i];
      shared[n++] = r.shared[i];
    }
    r.mbufs.fill(MBUF_NONE);
    r.shared.fill(0);
    if (n > 0) pktmbufFreeRecorded(held, n, 0, shared);
    if (r.eventfd >= 0) os.close(r.eventfd);
    r.eventfd = -1;
    this.memory.free(r.zone.name);
  }

  protected override onClose(): void {
    if (this.rx.length || this.tx.length) this.teardown();
  }

  /** Stop, reset the NIC, turn bus mastering off and unmap BAR0 (rte_eth_dev_close). */
  override close(): void {
    try {
      super.close();
    } finally {
      if (!this.closed) {
        this.closed = true;
        try { globalReset(this.bar, this.name); } catch { /* already quiet */ }
        this.bar.close();
        try { disableBusMaster(this.vfio); } catch { /* the device may be gone */ }
      }
    }
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(q: number): IgbQueueData {
    return this.queueData(this.rx[q], q, -1);
  }

  protected txqData(q: number): IgbQueueData {
    return this.queueData(this.tx[q], q, xstatIndex(XS_DMA_FAULTS));
  }

  private queueData(r: Ring, q: number, faultStat: number): IgbQueueData {
    return {
      q, va: r.zone.va, size: r.size, bar: this.bar.data(), mbufs: r.mbufs.buffer as SharedArrayBuffer, shared: r.shared.buffer as SharedArrayBuffer, state: r.state.buffer as SharedArrayBuffer,
      bufLen: r.bufLen, intr: r.eventfd >= 0 ? { fd: r.eventfd, bit: 1 << q } : null, faultStat, pageSize: this.memory.config.pageSize,
    };
  }
}

/** Descriptor count: a multiple of 8 (128-byte ring lengths) and a power of two (index masks). */
function ringSize(n: number): number {
  return Math.max(R.RING_ALIGN_DESC, 2 ** Math.ceil(Math.log2(Math.min(n, R.MAX_DESC))));
}

/** Poll cond for up to HANDSHAKE_MS; throw msg when it never holds. */
function waitFor(cond: () => boolean, msg: string): void {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > HANDSHAKE_MS) throw new Error(`${msg} within ${HANDSHAKE_MS} ms`);
    sleepMs(1);
  }
}

/**
 * Mask every interrupt, then CTRL.RST: the NIC stops DMA and returns to its power-on state; mask
 * again after the reset and clear what is pending (82576 datasheet, 4.5.4 Interrupts During
 * Initialization and 4.5.5 Global Reset and General Configuration).
 */
function globalReset(b: Bar, name: string): void {
  b.write32(R.IMC, 0xffffffff);
  b.write32(R.EIMC, 0xffffffff);
  b.write32(R.CTRL, b.read32(R.CTRL) | R.CTRL_RST);
  sleepMs(1);
  waitFor(() => (b.read32(R.CTRL) & R.CTRL_RST) === 0, `${name}: CTRL.RST did not clear after a global reset`);
  b.write32(R.IMC, 0xffffffff);
  b.write32(R.EIMC, 0xffffffff);
  b.read32(R.ICR);
  b.read32(R.EICR);
}

/** EEPROM word at addr through EERD. */
function eepromRead(b: Bar, addr: number, name: string): number {
  b.write32(R.EERD, (addr << R.EERD_ADDR_SHIFT) | R.EERD_START);
  let v = 0;
  waitFor(() => ((v = b.read32(R.EERD)) & R.EERD_DONE) !== 0, `${name}: EEPROM read of word ${addr} (EERD) did not complete`);
  return v >>> R.EERD_DATA_SHIFT;
}

/** The MAC address: EEPROM words 0..2 (little-endian), checked against the receive address register 0. */
function readMac(b: Bar, name: string): number[] {
  const words = [0, 1, 2].map((a) => eepromRead(b, a, name));
  const fromEeprom = words.flatMap((w) => [w & 0xff, w >> 8]);
  const ral = b.read32(R.RAL0), rah = b.read32(R.RAH0);
  const fromRal = [ral & 0xff, (ral >>> 8) & 0xff, (ral >>> 16) & 0xff, ral >>> 24, rah & 0xff, (rah >>> 8) & 0xff];
  const valid = (m: number[]): boolean => m.some((x) => x !== 0) && m.some((x) => x !== 0xff) && (m[0] & 1) === 0;
  if (valid(fromEeprom)) {
    if ((rah & R.RAH_AV) === 0 || fromRal.some((x, i) => x !== fromEeprom[i])) {
      // the filter must match what we report: program RAR0 from the EEPROM
      b.write32(R.RAL0, (fromEeprom[0] | fromEeprom[1] << 8 | fromEeprom[2] << 16 | fromEeprom[3] << 24) >>> 0);
      b.write32(R.RAH0, (fromEeprom[4] | fromEeprom[5] << 8 | R.RAH_AV) >>> 0);
    }
    return fromEeprom;
  }
  if ((rah & R.RAH_AV) !== 0 && valid(fromRal)) return fromRal;
  throw new Error(`${name}: no valid MAC address: EEPROM words 0..2 read ${words.map((w) => w.toString(16)).join(' ')} and RAL0/RAH0 hold none`);
}

function mdic(b: Bar, cmd: number, what: string): number {
  b.write32(R.MDIC, cmd >>> 0);
  let v = 0;
  waitFor(() => ((v = b.read32(R.MDIC)) & (R.MDIC_READY | R.MDIC_ERROR)) !== 0, `${what} (MDIC) did not complete`);
  if (v & R.MDIC_ERROR) throw new Error(`${what}: the NIC reports an MDIC error (MDIC 0x${(v >>> 0).toString(16)})`);
  return v & 0xffff;
}

function mdicRead(b: Bar, reg: number, name: string): number {
  return mdic(b, (reg << R.MDIC_REG_SHIFT) | (R.PHY_ADDR << R.MDIC_PHY_SHIFT) | R.MDIC_OP_READ, `${name}: PHY register ${reg} read`);
}

function mdicWrite(b: Bar, reg: number, value: number, name: string): void {
  mdic(b, value | (reg << R.MDIC_REG_SHIFT) | (R.PHY_ADDR << R.MDIC_PHY_SHIFT) | R.MDIC_OP_WRITE, `${name}: PHY register ${reg} write`);
}

/** Devargs this driver takes (-a ADDR,key=value). */
export const IGB_ARGS = {
  rss_key: { kind: 'string', help: '40-byte RSS key as 80 hex digits (default: the well-known Toeplitz key)' },
  bar_mmap: { kind: 'bool', help: '1 (default) or 0: never mmap BAR0, reach every register (tail writes from the lcores too) with pread/pwrite or vfio-user messages' },
  bar_unmap: {
    kind: 'string', placeholder: '0xSTART-0xEND[:...]', pattern: /^0x[0-9a-fA-F]+-0x[0-9a-fA-F]+(:0x[0-9a-fA-F]+-0x[0-9a-fA-F]+)*$/,
    allowed: 'inclusive hex byte ranges of whole 4 KiB pages joined by ":", e.g. 0xc000-0xcfff:0xe000-0xefff',
    help: 'pages of BAR0 left unmapped (reached like bar_mmap=0) while the rest is mapped',
  },
} as const satisfies DevargsSchema;

/** Parse -a ADDR,key=value arguments; throws a UsageError naming the device and the key. */
export function parseIgbArgs(dev: string, raw: Record<string, string>): IgbOptions {
  const a = checkDevargs(raw, IGB_ARGS, { where: `-a ${dev}`, driver: 'net_igb' });
  const o: IgbOptions = {};
  if (a.rss_key !== undefined) {
    if (!/^[0-9a-fA-F]{80}$/.test(a.rss_key)) throw new Error(`-a ${dev}: rss_key=${a.rss_key} must be 80 hex digits (40 bytes)`);
    o.rssKey = Array.from({ length: 40 }, (_, i) => parseInt(a.rss_key!.slice(2 * i, 2 * i + 2), 16));
  }
  if (a.bar_mmap !== undefined) o.barMmap = a.bar_mmap;
  if (a.bar_unmap !== undefined) {
    o.barUnmap = a.bar_unmap.split(':').map((r) => {
      const [start, end] = r.split('-').map((x) => parseInt(x, 16));
      if (start % 4096 !== 0 || (end + 1) % 4096 !== 0 || end < start) throw new Error(`-a ${dev}: bar_unmap range ${r} must cover whole 4 KiB pages (0xSTART-0xEND with START a multiple of 0x1000 and END one below a multiple)`);
      return { offset: start, size: end + 1 - start };
    });
  }
  return o;
}

registerPciDriver<IgbPort>({
  name: 'net_igb',
  rxInterrupt: true,
  description: 'Intel 82576 (igb) poll-mode driver',
  idTable: [{ vendor: IGB_VENDOR, device: IGB_DEVICE_82576 }],
  probe: (ctx) => {
    if (!ctx.eal) throw new Error('net_igb needs EAL memory for its descriptor rings (probe with an EAL)');
    return IgbPort.open(ctx.vfio, ctx.eal.memory, parseIgbArgs(ctx.dev.addr, ctx.args));
  },
});
