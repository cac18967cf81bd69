/**
 * net_virtio: a poll-mode driver for modern virtio-net PCI devices (virtio 1.x, 1af4:1041) on the
 * VfioDevice interface, so the same code drives QEMU's virtio-net-pci through kernel VFIO and an
 * emulated device served over vfio-user (`-a vfio-user:SOCKET`).
 *
 * Control half (this file, main thread): probe (capabilities, BARs, feature negotiation, MAC and
 * link from the device configuration), start (reset, renegotiate, one IOVA-contiguous memzone per
 * virtqueue, RX rings filled, DRIVER_OK, control-queue commands: queue pairs, promiscuous), stop
 * (reset: the device stops DMA, then every mbuf the rings hold goes back to its pool), close.
 * Data half: virtio_data.ts. Transport: virtio_pci.ts. Ring geometry: virtqueue.ts.
 *
 * Interrupts (PortConf.intr): MSI-X through VfioDevice.setIrqs, one eventfd per RX queue (vector
 * 1 + q with lsc, q without), the configuration-change vector 0 with lsc, watched from the main
 * thread (a 20 ms timer, non-blocking read) and turned into onLinkChange events when the link
 * status changed.
 *
 * `-a ADDR[,queue_size=N][,mrg_rxbuf=0|1][,ctrl_vq=0|1][,bar_mmap=0|1]`
 */
import { checkDevargs, type DevargsSchema } from '../../../lib/kvargs/kvargs.js';
import type { VfioDevice } from '../../../src/iommu/device.js';
import type { EalMemory, Memzone } from '../../../src/memory/memory.js';
import { viewOf, eventfd, close as closeFd, readNoThrow, EFD_NONBLOCK } from '../../../src/os/libc.js';
import { VFIO_PCI_MSIX_IRQ_INDEX } from '../../../src/iommu/vfio-uapi.js';
import { log } from '../../../src/log.js';
import { UsageError } from '../../../src/options.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { sleepMs } from '../../../src/os/sleep.js';
import { EthDev, MAX_QUEUES, xstatIndex, type DevInfo, type LinkStatus, type PortConf } from '../../../lib/ethdev/ethdev.js';
import type { Mempool } from '../../../lib/mempool/mempool.js';
import { pktmbufAllocInit, pktmbufFreeRecorded, pktmbufHeadroom, pktmbufDataRoom, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufView } from '../../../lib/mempool/mbuf_view.js';
import { registerPciDriver } from '../../bus/pci/pci.js';
import * as V from '../../../lib/virtio/virtio.js';
import { VirtioPci, chooseQueueSize, type FeatureChoice } from './virtio_pci.js';
import { type VirtqLayout, virtqLayout, availIdxWord, availRingWord, usedIdxWord, usedRingWord, iovaHalves } from './virtqueue.js';
import { type VirtioQueueData, VirtqBook, RX_START_EPOCH, BK_AVAIL_IDX } from './virtio_data.js';

const DATA = siblingModule(import.meta.url, 'virtio_data');
const HDR = V.NET_HDR_SIZE;
/** Control-queue size: commands go one at a time. */
const CTRL_QUEUE_SIZE = 64;
/** How long a control-queue command may take (an emulated device answers from its own poll loop). */
const CTRL_TIMEOUT_MS = 5000;
/**
 * xstats: [0] control commands, then per queue pair q < 31, from 1 + 6q: RX and TX doorbells, of
 * them those rung through an ioeventfd, and those sent as messages (vfio-user REGION_WRITE); the
 * rest went as stores on the mapping or pwrite on the VFIO fd.
 */
const XSTAT_CTRL = 0;
const XSTAT_QUEUES = 31;
const XSTAT_PER_PAIR = 6;
/** The xstat slot of queue pair q's counter: k 0 doorbells, 2 via eventfd, 4 via message; +1 for TX. */
const xstatOf = (q: number, tx: boolean, k: 0 | 2 | 4): number => 1 + XSTAT_PER_PAIR * q + k + (tx ? 1 : 0);
/** How often the main thread looks at the configuration-change eventfd (intr.lsc). */
const LSC_POLL_MS = 20;

/** Driver options (devargs, or given directly to VirtioNetPort.open). */
export interface VirtioNetOptions extends FeatureChoice {
  /** largest virtqueue size to use (a power of two is used; default: the device's maximum) */
  queueSize?: number;
  /** the port's name (default: the device's name) */
  name?: string;
  /** false: never mmap the BARs; every register access, doorbells included, goes through pread/pwrite or REGION_READ/WRITE */
  barMmap?: boolean;
}

/** A virtqueue as the control half keeps it. */
interface Queue {
  vq: number;
  layout: VirtqLayout;
  zone: Memzone;
  u8: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
  notifyOff: number;
  /** the mbufs the descriptors hold and the rest the driver trusts: never in DMA memory */
  book: VirtqBook;
}

/** What the device configuration says (read once at probe; link status is read live). */
interface NetConfig {
  mac: number[] | null;
  maxPairs: number;
  mtu: number;
  /** num_queues from the common configuration */
  numQueues: number;
}

const has = (f: bigint, bit: number): boolean => (f & V.featureBit(bit)) !== 0n;

/** Control half of a virtio-net port. */
export class VirtioNetPort extends EthDev {
  readonly vfio: VfioDevice;
  readonly pci: VirtioPci;
  readonly memory: EalMemory;
  readonly opts: VirtioNetOptions;
  /** features the device offers */
  readonly offered: bigint;
  /** features negotiated */
  readonly features: bigint;
  private readonly mac: number[];
  private readonly mtu: number;
  private readonly maxPairs: number;
  private readonly ctrlVq: number;
  private rxq: Queue[] = [];
  private txq: Queue[] = [];
  private ctrl: Queue | null = null;
  private ctrlUsed = 0;
  private live = false;
  /** MSI-X vectors the device offers through VFIO (0: no MSI-X, no interrupts) */
  private readonly msixVectors: number;
  /** RX queue q's interrupt eventfd (intr.rxq), and the configuration-change one (intr.lsc) */
  private rxIntrFds: number[] = [];
  private lscFd = -1;
  private lscTimer: NodeJS.Timeout | null = null;
  private lastLinkUp = false;

  private constructor(vfio: VfioDevice, pci: VirtioPci, memory: EalMemory, opts: VirtioNetOptions, neg: { offered: bigint; accepted: bigint }, cfg: NetConfig) {
    super(opts.name ?? vfio.name);
    this.vfio = vfio;
    this.pci = pci;
    this.memory = memory;
    this.opts = opts;
    this.offered = neg.offered;
    this.features = neg.accepted;
    this.mtu = cfg.mtu;
    this.mac = cfg.mac ?? randomMac();
    const mq = has(this.features, V.VIRTIO_NET_F_MQ);
    this.maxPairs = mq ? Math.max(1, Math.min(cfg.maxPairs, MAX_QUEUES, Math.floor((cfg.numQueues - 1) / 2))) : 1;
    // controlq follows the device's N queue pairs (5.1.2), whatever number of them we use
    this.ctrlVq = has(this.features, V.VIRTIO_NET_F_CTRL_VQ) ? 2 * (mq ? cfg.maxPairs : 1) : -1;
    let vectors = 0;
    try {
      const irq = vfio.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX);
      if (irq.eventfd) vectors = irq.count;
    } catch (e) {
      log('debug', 'net_virtio', `${vfio.name}: no MSI-X (${(e as Error).message}): poll mode only`);
    }
    this.msixVectors = vectors;
  }

  /**
   * Probe a modern virtio-net device: find its structures, open its BARs, negotiate features up to
   * FEATURES_OK and read MAC, queue pairs and MTU from the device configuration. The port is
   * registered (it has a port id) once this returns.
   */
  static open(vfio: VfioDevice, memory: EalMemory, opts: VirtioNetOptions = {}): VirtioNetPort {
    const pci = VirtioPci.open(vfio, { mmap: opts.barMmap });
    try {
      const neg = pci.negotiate(opts);
      const f = neg.accepted;
      if (pci.deviceConfigLength() === 0 && (has(f, V.VIRTIO_NET_F_MAC) || has(f, V.VIRTIO_NET_F_STATUS) || has(f, V.VIRTIO_NET_F_MQ))) {
        throw new Error(`${vfio.name}: features ${V.featureNames(f)} need the device configuration, but the device has no device configuration capability`);
      }
      const numQueues = pci.numQueues();
      const cfg = pci.deviceConfigLength() === 0 ? { mac: null, maxPairs: 1, mtu: 1500, numQueues } : pci.readDeviceConfig((r): NetConfig => ({
        mac: has(f, V.VIRTIO_NET_F_MAC) ? [0, 1, 2, 3, 4, 5].map((i) => r.u8(V.NET_CFG_MAC + i)) : null,
        maxPairs: has(f, V.VIRTIO_NET_F_MQ) ? r.u16(V.NET_CFG_MAX_VQ_PAIRS) : 1,
        mtu: has(f, V.VIRTIO_NET_F_MTU) ? r.u16(V.NET_CFG_MTU) : 1500,
        numQueues,
      }));
      if (has(f, V.VIRTIO_NET_F_MQ) && cfg.maxPairs < 1) throw new Error(`${vfio.name}: max_virtqueue_pairs reads ${cfg.maxPairs} with VIRTIO_NET_F_MQ offered`);
      const port = new VirtioNetPort(vfio, pci, memory, opts, neg, cfg);
      log('info', 'net_virtio', `${port.name}: port ${port.port}, MAC ${port.macString()}, features ${V.featureNames(f)}, ` +
        `${port.maxPairs} queue pair(s)${port.ctrlVq >= 0 ? `, control queue ${port.ctrlVq}` : ''}, VFIO ${vfio.backend}`);
      return port;
    } catch (e) {
      try { pci.reset(); } catch { /* the first error says more */ }
      pci.close();
      throw e;
    }
  }

  /** Driver facts: queue pairs from MQ, MTU from VIRTIO_NET_F_MTU (or what the buffers allow). */
  info(): DevInfo {
    const caps = ['link-state'];
    if (this.maxPairs > 1) caps.push('multi-queue');
    if (has(this.features, V.VIRTIO_NET_F_CTRL_RX)) caps.push('promiscuous');
    if (has(this.features, V.VIRTIO_NET_F_MRG_RXBUF)) caps.push('mergeable-rx', 'scatter-tx');
    if (this.msixVectors >= 1) caps.push('rx-interrupt');
    if (this.msixVectors >= 2 && has(this.features, V.VIRTIO_NET_F_STATUS)) caps.push('lsc-interrupt');
    const maxMtu = has(this.features, V.VIRTIO_NET_F_MTU) ? this.mtu : has(this.features, V.VIRTIO_NET_F_MRG_RXBUF) ? 9000 : 1500;
    return {
      driverName: 'net_virtio', maxRxQueues: this.maxPairs, maxTxQueues: this.maxPairs, minMtu: 68, maxMtu,
      minDesc: 1, maxDesc: V.VIRTQ_MAX_SIZE, capabilities: caps,
    };
  }

  /** The MAC from the device configuration (VIRTIO_NET_F_MAC), else a random local one. */
  macAddr(): number[] {
    return [...this.mac];
  }

  /** Link from the device configuration's status (VIRTIO_NET_F_STATUS); up without the feature. */
  link(): LinkStatus {
    if (this.pci.isClosed) return { up: false, speedMbps: 0, fullDuplex: true };
    let up = true;
    if (has(this.features, V.VIRTIO_NET_F_STATUS)) up = (this.pci.readDeviceConfig((r) => r.u16(V.NET_CFG_STATUS)) & V.VIRTIO_NET_S_LINK_UP) !== 0;
    // virtio reports no speed without VIRTIO_NET_F_SPEED_DUPLEX (not negotiated): 10G, like DPDK
    return { up, speedMbps: up ? 10000 : 0, fullDuplex: true };
  }

  /** Commands the control queue has completed since probe. */
  get ctrlCommands(): number {
    return this.counters[xstatIndex(XSTAT_CTRL)];
  }

  protected override xstatNames(): string[] {
    const names = ['ctrl_commands'];
    const n = Math.min(this.configuration?.rxQueues ?? 0, XSTAT_QUEUES);
    for (let q = 0; q < n; q++) {
      for (const tx of [false, true]) {
        const d = tx ? 'tx' : 'rx';
        names[xstatOf(q, tx, 0)] = `${d}_q${q}_kicks`;
        names[xstatOf(q, tx, 2)] = `${d}_q${q}_kicks_eventfd`;
        names[xstatOf(q, tx, 4)] = `${d}_q${q}_kicks_message`;
      }
    }
    return names;
  }

  protected override onConfigure(conf: PortConf): void {
    if (conf.rxQueues !== conf.txQueues) {
      throw new RangeError(`port ${this.port} (${this.name}): virtio queues come in pairs: ${conf.rxQueues} RX and ${conf.txQueues} TX queues requested`);
    }
    const want = (conf.intr?.rxq ? conf.rxQueues : 0) + (conf.intr?.lsc ? 1 : 0);
    if (want > 0 && want > this.msixVectors) {
      throw new RangeError(`port ${this.port} (${this.name}): intr ${JSON.stringify(conf.intr)} needs ${want} MSI-X vector(s) (one per RX queue, one for link changes); ` +
        `the device offers ${this.msixVectors} through VFIO ${this.vfio.backend}: configure fewer queues or no interrupts`);
    }
    if (conf.intr?.lsc && !has(this.features, V.VIRTIO_NET_F_STATUS)) {
      throw new RangeError(`port ${this.port} (${this.name}): intr.lsc needs VIRTIO_NET_F_STATUS (link status in the device configuration), which the device did not offer`);
    }
  }

  protected override onStart(): void {
    const pairs = this.configuration!.rxQueues;
    try {
      const neg = this.pci.negotiate(this.opts);
      if (neg.accepted !== this.features) throw new Error(`${this.name}: the device now negotiates ${V.featureNames(neg.accepted)}, at probe it was ${V.featureNames(this.features)}`);
      const rxBase = this.setupInterrupts();
      for (let q = 0; q < pairs; q++) {
        this.rxq.push(this.setupQueue(V.rxQueueIndex(q), this.rxDesc[q], this.rxPools[q]!, q, rxBase < 0 ? V.VIRTIO_MSI_NO_VECTOR : rxBase + q));
        this.txq.push(this.setupQueue(V.txQueueIndex(q), this.txDesc[q], null, q));
      }
      if (this.ctrlVq >= 0) this.ctrl = this.setupQueue(this.ctrlVq, CTRL_QUEUE_SIZE, null, -1);
      this.pci.addStatus(V.STATUS_DRIVER_OK);
      const st = this.pci.status();
      if (st & (V.STATUS_DEVICE_NEEDS_RESET | V.STATUS_FAILED) || !(st & V.STATUS_DRIVER_OK)) {
        throw new Error(`${this.name}: device_status reads 0x${st.toString(16)} after DRIVER_OK (needs reset or failed)`);
      }
      this.live = true;
      if (pairs > 1) this.ctrlCommand(V.VIRTIO_NET_CTRL_MQ, V.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [pairs & 0xff, pairs >> 8], 'MQ_VQ_PAIRS_SET');
      if (has(this.features, V.VIRTIO_NET_F_CTRL_RX)) this.ctrlCommand(V.VIRTIO_NET_CTRL_RX, V.VIRTIO_NET_CTRL_RX_PROMISC, [this.isPromiscuous ? 1 : 0], 'RX_PROMISC');
      // A device that ran out of RX buffers waits for a kick; ours were posted before DRIVER_OK.
      for (const q of this.rxq) this.pci.notify(q.notifyOff, q.vq);
      if (this.lscFd >= 0) this.watchLink();
    } catch (e) {
      this.teardown();
      throw e;
    }
    log('info', 'net_virtio', `${this.name}: started ${pairs} queue pair(s), sizes RX ${this.rxq.map((q) => q.layout.size).join('/')} TX ${this.txq.map((q) => q.layout.size).join('/')}`);
  }

  /**
   * With PortConf.intr: eventfds routed to MSI-X vectors (SET_IRQS), the configuration vector set
   * for lsc. Returns the first RX queue's vector, or -1 without Rx interrupts.
   */
  private setupInterrupts(): number {
    const intr = this.configuration!.intr;
    if (!intr?.rxq && !intr?.lsc) return -1;
    const fds: number[] = [];
    if (intr.lsc) {
      this.lscFd = eventfd(0, EFD_NONBLOCK);
      fds.push(this.lscFd);
    }
    if (intr.rxq) {
      for (let q = 0; q < this.configuration!.rxQueues; q++) {
        const fd = eventfd(0, EFD_NONBLOCK);
        this.rxIntrFds.push(fd);
        fds.push(fd);
      }
    }
    this.vfio.setIrqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, fds);
    if (intr.lsc) this.pci.setConfigVector(0);
    log('debug', 'net_virtio', `${this.name}: MSI-X: ${intr.lsc ? 'vector 0 link changes, ' : ''}${intr.rxq ? `RX queues from vector ${intr.lsc ? 1 : 0}` : ''}`);
    return intr.rxq ? (intr.lsc ? 1 : 0) : -1;
  }

  /** Watch the configuration-change eventfd from the main thread; a changed link status calls linkChanged(). */
  private watchLink(): void {
    this.lastLinkUp = this.link().up;
    const buf = new Uint8Array(8);
    this.lscTimer = setInterval(() => {
      if (this.lscFd < 0 || readNoThrow(this.lscFd, buf, 8) !== 8) return;
      let up: boolean;
      try {
        up = this.link().up;
      } catch (e) {
        log('warn', 'net_virtio', `${this.name}: reading the link status after a configuration interrupt failed: ${(e as Error).message}`);
        return;
      }
      if (up === this.lastLinkUp) return;
      this.lastLinkUp = up;
      log('info', 'net_virtio', `${this.name}: link ${up ? 'up' : 'down'}`);
      this.linkChanged();
    }, LSC_POLL_MS);
    this.lscTimer.unref();
  }

  /** Undo setupInterrupts (the device is reset: it signals nothing any more). */
  private releaseInterrupts(): void {
    if (this.lscTimer) clearInterval(this.lscTimer);
    this.lscTimer = null;
    if (this.rxIntrFds.length === 0 && this.lscFd < 0) return;
    try {
      this.vfio.disableIrqs(VFIO_PCI_MSIX_IRQ_INDEX);
    } catch (e) {
      log('warn', 'net_virtio', `${this.name}: disabling MSI-X failed: ${(e as Error).message}`);
    }
    for (const fd of this.rxIntrFds) closeFd(fd);
    if (this.lscFd >= 0) closeFd(this.lscFd);
    this.rxIntrFds = [];
    this.lscFd = -1;
  }

  /**
   * One virtqueue: memzone, rings initialised (no interrupts wanted), RX descriptors filled from
   * pool, registered with the device. q is the queue pair (for messages and the RX port id);
   * vector the MSI-X vector of its interrupt (NO_VECTOR: none).
   */
  private setupQueue(vq: number, requested: number, pool: Mempool | null, q: number, vector = V.VIRTIO_MSI_NO_VECTOR): Queue {
    const what = q < 0 ? `${this.name}: control queue (virtqueue ${vq})` : `${this.name}: ${pool ? 'RX' : 'TX'} queue ${q} (virtqueue ${vq})`;
    const max = this.pci.queueMaxSize(vq);
    if (max === 0) throw new Error(`${what}: the device has no such virtqueue (num_queues ${this.pci.numQueues()})`);
    const size = chooseQueueSize(requested, max, this.opts.queueSize);
    if (size < 1) throw new Error(`${what}: no usable queue size (device maximum ${max}, queue_size=${this.opts.queueSize ?? 'unset'})`);
    if (q >= 0 && size !== requested) log('debug', 'net_virtio', `${what}: ${requested} descriptors requested, using ${size} (device maximum ${max})`);
    const layout = virtqLayout(size);
    const zone = this.memory.reserve(`virtio${this.port}_vq${vq}`, layout.total, 4096, true);
    const ab = viewOf(zone.va, zone.len);
    const queue: Queue = { vq, layout, zone, u8: new Uint8Array(ab), u16: new Uint16Array(ab), u32: new Uint32Array(ab), notifyOff: -1, book: VirtqBook.create(size) };
    try {
      queue.u8.fill(0);
      queue.u16[layout.avail >> 1] = V.VRING_AVAIL_F_NO_INTERRUPT; // poll mode
      if (pool) this.fillRx(queue, pool, q, what);
      // The lcore rings doorbells through the mapping, or through the BAR's fallback (pwrite on the
      // VFIO fd, a no-reply REGION_WRITE over vfio-user) when the notify area is not mmap'd.
      const noteFallback = (off: number): void => {
        if (q >= 0 && !this.pci.notifyMapped(off)) {
          if (!this.pci.bar(this.pci.caps.notify).data().io) {
            throw new Error(`${what}: its notify register (${this.pci.notifyBarName()}+0x${off.toString(16)}) is not mmap'd, and VFIO ${this.vfio.backend} ` +
              'offers no other way to write it from an lcore (no pread/pwrite or message path): this device cannot be started. Serve the notification area as a (sparse) mmap area.');
          }
          log('info', 'net_virtio', `${what}: notify register ${this.pci.notifyBarName()}+0x${off.toString(16)} is not mmap'd: doorbells go through ${this.vfio.backend === 'vfio-user' ? 'its ioeventfd when the server offered one, else REGION_WRITE messages' : 'pwrite on the device fd'}`);
        }
      };
      queue.notifyOff = this.pci.setupQueue(vq, size, zone.iova + BigInt(layout.desc), zone.iova + BigInt(layout.avail), zone.iova + BigInt(layout.used), noteFallback, vector);
      return queue;
    } catch (e) {
      this.releaseQueue(queue);
      throw e;
    }
  }

  /** Give every RX descriptor an mbuf, writable from 12 bytes before its data (the header goes to the headroom). */
  private fillRx(queue: Queue, pool: Mempool, q: number, what: string): void {
    const headroom = pktmbufHeadroom(pool), room = pktmbufDataRoom(pool), size = queue.layout.size;
    if (headroom < HDR) throw new Error(`${what}: mbuf pool "${pool.name}" has ${headroom} bytes of headroom; the ${HDR}-byte virtio_net_hdr is received there (use headroom >= ${HDR})`);
    if (room < 1514 && !has(this.features, V.VIRTIO_NET_F_MRG_RXBUF)) {
      log('warn', 'net_virtio', `${what}: mbuf data room ${room} < 1514 without MRG_RXBUF: the device drops frames that do not fit one buffer`);
    }
    const ms = new Uint32Array(size);
    if (!pktmbufAllocInit(pool, ms, size, 0, 0, this.port)) {
      throw new Error(`${what}: mbuf pool "${pool.name}" has ${pool.availableCount()} free mbufs; the ring's ${size} descriptors need ${size} (make the pool larger or the ring smaller: queue_size=N)`);
    }
    const l = queue.layout, u16 = queue.u16, u32 = queue.u32, v = new MbufView();
    for (let id = 0; id < size; id++) {
      const m = ms[id];
      const [lo, hi] = iovaHalves(v.at(m).bufIovaLo, v.bufIovaHi, headroom - HDR);
      const d = (l.desc >> 2) + 4 * id;
      u32[d] = lo;
      u32[d + 1] = hi;
      u32[d + 2] = HDR + room;
      u32[d + 3] = V.VRING_DESC_F_WRITE;
      queue.book.mbufs[id] = m;
      queue.book.posted[id] = RX_START_EPOCH;
      u16[availRingWord(l) + id] = id;
    }
    u16[availIdxWord(l)] = size & 0xffff;
    queue.book.state[BK_AVAIL_IDX] = size & 0xffff;
  }

  /** Send one control-queue command and wait for the device's ack; throws naming it when refused. */
  private ctrlCommand(cls: number, cmd: number, data: number[], name: string): void {
    const c = this.ctrl;
    if (!c || !this.live) throw new Error(`${this.name}: ${name} needs the control queue (VIRTIO_NET_F_CTRL_VQ) and a started port`);
    const l = c.layout, h = l.hdrs, u8 = c.u8, u16 = c.u16, u32 = c.u32;
    u8[h] = cls;
    u8[h + 1] = cmd;
    u8.set(data, h + 16);
    u8[h + 32] = 0xff;
    const desc = (id: number, off: number, len: number, flags: number, next: number): void => {
      const [lo, hi] = iovaHalves(Number(c.zone.iova & 0xffffffffn), Number(c.zone.iova >> 32n), off);
      const d = (l.desc >> 2) + 4 * id;
      u32[d] = lo;
      u32[d + 1] = hi;
      u32[d + 2] = len;
      u32[d + 3] = flags | (next << 16);
    };
    desc(0, h, 2, V.VRING_DESC_F_NEXT, 1);
    desc(1, h + 16, data.length, V.VRING_DESC_F_NEXT, 2);
    desc(2, h + 32, 1, V.VRING_DESC_F_WRITE, 0);
    const ai = u16[availIdxWord(l)];
    u16[availRingWord(l) + (ai & (l.size - 1))] = 0;
    Atomics.store(u16, availIdxWord(l), (ai + 1) & 0xffff);
    this.pci.notify(c.notifyOff, c.vq);
    const t0 = Date.now();
    while (((Atomics.load(u16, usedIdxWord(l)) - this.ctrlUsed) & 0xffff) === 0) {
      if (Date.now() - t0 > CTRL_TIMEOUT_MS) throw new Error(`${this.name}: control queue command ${name} got no answer within ${CTRL_TIMEOUT_MS} ms`);
      sleepMs(1);
    }
    const id = u32[usedRingWord(l) + 2 * (this.ctrlUsed & (l.size - 1))];
    this.ctrlUsed = (this.ctrlUsed + 1) & 0xffff;
    const ack = Atomics.load(u8, h + 32);
    if (id !== 0 || ack !== V.VIRTIO_NET_OK) throw new Error(`${this.name}: the device refused control command ${name} (${data.join(',')}): ack ${ack}${id !== 0 ? `, used id ${id}` : ''}`);
    this.counters[xstatIndex(XSTAT_CTRL)]++;
  }

  protected override onPromiscuous(on: boolean): void {
    if (this.live && has(this.features, V.VIRTIO_NET_F_CTRL_RX)) this.ctrlCommand(V.VIRTIO_NET_CTRL_RX, V.VIRTIO_NET_CTRL_RX_PROMISC, [on ? 1 : 0], 'RX_PROMISC');
    // otherwise applied at start, or (without CTRL_RX) the device decides: QEMU receives everything
  }

  protected override onStop(): void {
    this.teardown();
  }

  /**
   * Reset the device (it stops touching the rings and buffers), then give back every mbuf the
   * rings hold and free the queues' memory.
   */
  private teardown(): void {
    this.live = false;
    if (this.lscTimer) clearInterval(this.lscTimer);
    this.lscTimer = null;
    try {
      this.pci.reset();
      this.releaseInterrupts();
    } catch (e) {
      // A device that did not reset may still DMA: its rings and buffers stay allocated (the EAL
      // unmaps them at exit, behind the IOMMU) rather than being handed out again.
      log('error', 'net_virtio', `${this.name}: keeping the queues' memory and mbufs: ${(e as Error).message}`);
      throw e;
    }
    let first: unknown = null;
    for (const q of [...this.rxq, ...this.txq]) {
      try { this.releaseQueue(q); } catch (e) { first ??= e; }
    }
    if (this.ctrl) this.releaseQueue(this.ctrl);
    this.rxq = [];
    this.txq = [];
    this.ctrl = null;
    this.ctrlUsed = 0;
    if (first) throw first;
  }

  /**
   * Free the mbufs a queue's descriptors hold, then its memzone (the device must be reset). What
   * they hold comes from the bookkeeping, never from memory the device could have rewritten.
   */
  private releaseQueue(q: Queue): void {
    const l = q.layout, held = new Uint32Array(l.size), heldShared = new Uint8Array(l.size), { mbufs, shared } = q.book;
    let n = 0;
    for (let id = 0; id < l.size; id++) {
      const m = mbufs[id];
      if (m === MBUF_NONE) continue;
      held[n] = m;
      heldShared[n++] = shared[id];
    }
    mbufs.fill(MBUF_NONE);
    shared.fill(0);
    // nor from the headers of the mbufs the device held (pktmbufFreeRecorded)
    if (n > 0) pktmbufFreeRecorded(held, n, 0, heldShared);
    this.memory.free(q.zone.name);
  }

  protected override onClose(): void {
    if (this.rxq.length || this.txq.length || this.ctrl) this.teardown();
    else this.pci.reset(); // quiesce a device that was only probed
  }

  /** Stop, reset the device, free the queues and unmap the BARs (rte_eth_dev_close). */
  override close(): void {
    try {
      super.close();
    } finally {
      this.pci.close();
    }
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(q: number): VirtioQueueData {
    return { ...this.queueData(this.rxq[q], q, false), intrFd: this.rxIntrFds[q] ?? -1 };
  }

  protected txqData(q: number): VirtioQueueData {
    return this.queueData(this.txq[q], q, true);
  }

  private queueData(q: Queue, pair: number, tx: boolean): VirtioQueueData {
    const stat = (k: 0 | 2 | 4): number => (pair < XSTAT_QUEUES ? xstatIndex(xstatOf(pair, tx, k)) : -1);
    return {
      vq: q.vq, layout: { ...q.layout }, va: q.zone.va, len: q.zone.len,
      iovaLo: Number(q.zone.iova & 0xffffffffn), iovaHi: Number(q.zone.iova >> 32n),
      notify: this.pci.bar(this.pci.caps.notify).data(), notifyOff: q.notifyOff,
      intrFd: -1,
      mergeable: has(this.features, V.VIRTIO_NET_F_MRG_RXBUF),
      kickStat: stat(0), kickEventfdStat: stat(2), kickMessageStat: stat(4),
      book: q.book.sab,
    };
  }
}

/** A random locally administered unicast MAC, for a device without VIRTIO_NET_F_MAC. */
function randomMac(): number[] {
  const b = Array.from({ length: 6 }, () => Math.floor(Math.random() * 256));
  b[0] = (b[0] & 0xfe) | 0x02;
  return b;
}

/** Devargs this driver takes (-a ADDR,key=value). */
export const VIRTIO_ARGS = {
  queue_size: { kind: 'pow2', min: 2, max: V.VIRTQ_MAX_SIZE, help: 'largest virtqueue size to use (default: the device maximum)' },
  mrg_rxbuf: { kind: 'bool', help: '1 (default) or 0: accept mergeable RX buffers (VIRTIO_NET_F_MRG_RXBUF)' },
  ctrl_vq: { kind: 'bool', help: '1 (default) or 0: use the control queue (needed for more than one queue pair and promiscuous control)' },
  bar_mmap: { kind: 'bool', help: '1 (default) or 0: never mmap the BARs, reach every register (doorbells from the lcores too) with pread/pwrite or vfio-user messages' },
} as const satisfies DevargsSchema;

/** Parse -a ADDR,key=value arguments; throws a UsageError naming the device and the key. */
export function parseVirtioArgs(dev: string, raw: Record<string, string>): VirtioNetOptions {
  const a = checkDevargs(raw, VIRTIO_ARGS, { where: `-a ${dev}`, driver: 'net_virtio' });
  const o: VirtioNetOptions = { mrgRxbuf: a.mrg_rxbuf, ctrlVq: a.ctrl_vq };
  if (a.queue_size !== undefined) o.queueSize = a.queue_size;
  if (a.bar_mmap !== undefined) o.barMmap = a.bar_mmap;
  return o;
}

registerPciDriver<VirtioNetPort>({
  name: 'net_virtio',
  rxInterrupt: true,
  description: 'virtio-net, modern PCI (virtio 1.x) poll-mode driver',
  idTable: [{ vendor: V.VIRTIO_PCI_VENDOR, device: V.VIRTIO_PCI_MODERN_NET }],
  probe: (ctx) => {
    if (!ctx.eal) throw new Error('net_virtio needs EAL memory for its virtqueues (probe with an EAL)');
    return VirtioNetPort.open(ctx.vfio, ctx.eal.memory, parseVirtioArgs(ctx.dev.addr, ctx.args));
  },
});
