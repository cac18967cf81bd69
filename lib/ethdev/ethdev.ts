/**
 * ethdev: the port API (rte_ethdev). A port is a driver's control half (this file's EthDev, on the
 * main thread: configure, queue setup, start/stop, statistics, link) plus a data half (RxQueue /
 * TxQueue objects) rebuilt inside the lcore that owns each queue from plain data: PortData.
 * See docs/drivers.md for the contract a driver follows.
 *
 * Statistics live in a SharedArrayBuffer of float64 counters, one block per queue, written only by
 * the queue's owner and read live by the control thread.
 *
 * Queue callbacks (the idea of rte_eth_add_rx_callback / _add_tx_callback): a module registered on
 * the main thread with addQueueCallback travels, by its URL, in every port's PortData, and the lcore
 * that opens a queue imports it and lets it wrap the queue. A tool such as pdump attaches this way;
 * ethdev knows nothing of it.
 */
import { Mempool, type MempoolDesc } from '../mempool/mempool.js';
import { formatMac } from '../net/mac.js';

/** Most queues a port may have in each direction. */
export const MAX_QUEUES = 64;

// Per-RX-queue counters (float64 index inside the queue's block).
export const RXQ_PACKETS = 0, RXQ_BYTES = 1, RXQ_ERRORS = 2, RXQ_MISSED = 3, RXQ_NOMBUF = 4;
/** Per-RX-queue: interrupts the queue delivered while armed (counted by its RxInterrupt.disable()). */
export const RXQ_INTERRUPTS = 5;
const RXQ_STRIDE = 8;
// Per-TX-queue counters.
export const TXQ_PACKETS = 0, TXQ_BYTES = 1, TXQ_ERRORS = 2;
const TXQ_STRIDE = 8;
const TX_BASE = MAX_QUEUES * RXQ_STRIDE;
/** Port-level counters a driver names itself (xstats), after the queue blocks. */
const XSTATS_BASE = TX_BASE + MAX_QUEUES * TXQ_STRIDE;
const XSTATS_MAX = 192;
const STATS_WORDS = XSTATS_BASE + XSTATS_MAX;

/** Float64 offset of RX queue q's counter block. */
export function rxqStatsBase(q: number): number {
  return q * RXQ_STRIDE;
}

/** Float64 offset of TX queue q's counter block. */
export function txqStatsBase(q: number): number {
  return TX_BASE + q * TXQ_STRIDE;
}

/** Float64 offset of the driver's i-th named counter. */
export function xstatIndex(i: number): number {
  return XSTATS_BASE + i;
}

/** What a driver and its device can do. */
export interface DevInfo {
  driverName: string;
  maxRxQueues: number;
  maxTxQueues: number;
  minMtu: number;
  maxMtu: number;
  /** smallest and largest descriptor counts per queue */
  minDesc: number;
  maxDesc: number;
  /** features, e.g. "promiscuous", "multi-queue", "zero-copy" */
  capabilities: string[];
}

/** Port configuration (rte_eth_dev_configure). */
export interface PortConf {
  rxQueues: number;
  txQueues: number;
  mtu?: number;
  promiscuous?: boolean;
  /** interrupts wanted (rte_eth_conf.intr_conf): per-RX-queue interrupts, link-state-change events */
  intr?: { rxq?: boolean; lsc?: boolean };
}

/** Link state (rte_eth_link). */
export interface LinkStatus {
  up: boolean;
  speedMbps: number;
  fullDuplex: boolean;
}

/** Basic statistics (rte_eth_stats) with per-queue counts. */
export interface PortStats {
  ipackets: number;
  opackets: number;
  ibytes: number;
  obytes: number;
  imissed: number;
  ierrors: number;
  oerrors: number;
  rx_nombuf: number;
  q_ipackets: number[];
  q_opackets: number[];
  q_ibytes: number[];
  q_obytes: number[];
}

/** Data half of an RX queue: owned by one lcore, never locks, never allocates. */
export interface RxQueue {
  /** Receive up to n packets into out[0..]; returns how many (mbuf handles). */
  rxBurst(out: Uint32Array, n: number): number;
  /** The queue's Rx interrupt, when the port was configured with intr.rxq and the driver has one. */
  readonly intr?: RxInterrupt;
}

/**
 * An RX queue's interrupt, used from the lcore that owns the queue (rte_eth_dev_rx_intr_enable /
 * _disable + epoll, as in DPDK's l3fwd-power): arm it, sleep in poll(2) on fd, disarm, poll again.
 */
export interface RxInterrupt {
  /** the fd that turns readable (POLLIN) when a packet arrives while the interrupt is armed */
  readonly fd: number;
  /**
   * Arm the interrupt (rte_eth_dev_rx_intr_enable). Returns false when packets are already
   * waiting (the caller polls instead of sleeping): arming and checking close the race with a
   * packet that arrived just before.
   */
  enable(): boolean;
  /** Disarm it and consume what fd signalled, counting it in RXQ_INTERRUPTS (rte_eth_dev_rx_intr_disable). */
  disable(): void;
}

/** Data half of a TX queue. */
export interface TxQueue {
  /** Send up to n packets from pkts[off..]; returns how many were taken (the rest stay the caller's). */
  txBurst(pkts: Uint32Array, n: number, off?: number): number;
}

/** Everything a worker needs to rebuild a port's queues: plain data, structured-cloneable. */
export interface PortData {
  port: number;
  name: string;
  /** URL of the driver's data module, which exports openRxQueue and openTxQueue */
  module: string;
  /** per-queue driver data (rings, fds, addresses, sizes) */
  rxq: unknown[];
  txq: unknown[];
  /** the mempool each RX queue allocates from */
  rxPools: MempoolDesc[];
  stats: SharedArrayBuffer;
  mac: number[];
  /** the queue callbacks registered when data() was taken, applied in order by openRxQueue/openTxQueue */
  callbacks: QueueCallback[];
}

/**
 * A queue callback: the URL of a module exporting wrapRxQueue and/or wrapTxQueue
 * (QueueCallbackModule), and plain data handed to them. Structured-cloneable, like PortData.
 */
export interface QueueCallback {
  module: string;
  arg?: unknown;
}

/**
 * What a queue-callback module exports. Each is called once per queue, in the lcore that opens it,
 * and returns the queue to use: a wrapper around it, or the queue itself to leave it alone. A
 * wrapper runs on every burst: it must allocate nothing and keep its calls monomorphic.
 */
export interface QueueCallbackModule {
  wrapRxQueue?(port: PortData, q: number, queue: RxQueue, arg: unknown): RxQueue;
  wrapTxQueue?(port: PortData, q: number, queue: TxQueue, arg: unknown): TxQueue;
}

const queueCallbacks: QueueCallback[] = [];

/**
 * Register a queue callback for every port (main thread). It reaches the queues opened from a
 * port's data() taken after this call; queues already running keep what they had. Returns a
 * function that unregisters it (again for later data() only).
 */
export function addQueueCallback(cb: QueueCallback): () => void {
  if (typeof cb.module !== 'string' || cb.module === '') throw new TypeError('addQueueCallback: module must be the URL of a module exporting wrapRxQueue and/or wrapTxQueue');
  const entry = { ...cb };
  queueCallbacks.push(entry);
  return () => {
    const i = queueCallbacks.indexOf(entry);
    if (i >= 0) queueCallbacks.splice(i, 1);
  };
}

/** What a driver's data module exports. */
export interface DataModule {
  openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue | Promise<RxQueue>;
  openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue | Promise<TxQueue>;
}

type State = 'probed' | 'configured' | 'started' | 'stopped' | 'closed';

/** The control half of a port. Drivers extend it and implement the protected hooks. */
export abstract class EthDev {
  readonly port: number;
  readonly name: string;
  /** shared counters, written by the data halves */
  readonly statsMem: SharedArrayBuffer = new SharedArrayBuffer(STATS_WORDS * 8);
  protected readonly counters = new Float64Array(this.statsMem);
  protected conf: PortConf | null = null;
  protected readonly rxPools: Array<Mempool | null> = [];
  protected readonly rxDesc: number[] = [];
  protected readonly txDesc: number[] = [];
  private state: State = 'probed';
  private readonly linkListeners = new Set<(link: LinkStatus) => void>();
  private baseline = new Float64Array(STATS_WORDS);
  private promisc = false;

  protected constructor(name: string) {
    this.name = name;
    this.port = registerPort(this);
  }

  /** Driver facts; see DevInfo. */
  abstract info(): DevInfo;
  /** The port's MAC address (6 bytes). */
  abstract macAddr(): number[];
  /** Link state now. */
  abstract link(): LinkStatus;
  /** URL of the driver's data module. */
  protected abstract dataModule(): string;
  /** Driver data for RX queue q and TX queue q (plain data for PortData). */
  protected abstract rxqData(q: number): unknown;
  protected abstract txqData(q: number): unknown;
  /** Names of the driver's own counters (xstats), indexed by xstatIndex(i). */
  protected xstatNames(): string[] {
    return [];
  }
  /** Hooks the driver may implement. */
  protected onConfigure(_conf: PortConf): void {}
  protected onStart(): void {}
  protected onStop(): void {}
  protected onClose(): void {}
  protected onPromiscuous(_on: boolean): void {}
  /** Refresh counters that come from outside the data path (e.g. kernel drops) before reading. */
  protected refreshStats(): void {}

  /**
   * Call fn with the new link state on every link-state change the device signals
   * (RTE_ETH_EVENT_INTR_LSC; needs intr.lsc in the configuration and a driver with the
   * "lsc-interrupt" capability). Returns a function that removes fn.
   */
  onLinkChange(fn: (link: LinkStatus) => void): () => void {
    this.linkListeners.add(fn);
    return () => { this.linkListeners.delete(fn); };
  }

  /** Drivers call this from their link-state-change interrupt handler (main thread). */
  protected linkChanged(): void {
    if (this.linkListeners.size === 0) return;
    const l = this.link();
    for (const fn of [...this.linkListeners]) fn(l);
  }

  /** Current state: probed, configured, started, stopped or closed. */
  get status(): State {
    return this.state;
  }

  /** Configure queue counts, MTU and promiscuous mode (rte_eth_dev_configure). */
  configure(conf: PortConf): void {
    this.expect(['probed', 'configured', 'stopped'], 'configure');
    const info = this.info();
    if (!Number.isInteger(conf.rxQueues) || conf.rxQueues < 1 || conf.rxQueues > info.maxRxQueues) {
      throw new RangeError(`port ${this.port} (${this.name}): ${conf.rxQueues} RX queues requested, the driver supports 1..${info.maxRxQueues}`);
    }
    if (!Number.isInteger(conf.txQueues) || conf.txQueues < 1 || conf.txQueues > info.maxTxQueues) {
      throw new RangeError(`port ${this.port} (${this.name}): ${conf.txQueues} TX queues requested, the driver supports 1..${info.maxTxQueues}`);
    }
    if (conf.mtu !== undefined && (conf.mtu < info.minMtu || conf.mtu > info.maxMtu)) {
      throw new RangeError(`port ${this.port} (${this.name}): MTU ${conf.mtu} is outside ${info.minMtu}..${info.maxMtu}`);
    }
    this.conf = { ...conf };
    this.rxPools.length = conf.rxQueues;
    this.rxPools.fill(null);
    this.rxDesc.length = conf.rxQueues;
    this.txDesc.length = conf.txQueues;
    this.onConfigure(this.conf);
    if (conf.promiscuous !== undefined) this.promiscuous(conf.promiscuous);
    this.state = 'configured';
  }

  /** Set up RX queue q with nbDesc descriptors, allocating from pool (rte_eth_rx_queue_setup). */
  rxQueueSetup(q: number, nbDesc: number, pool: Mempool): void {
    this.expect(['configured', 'stopped'], 'rxQueueSetup');
    this.checkQueue(q, this.conf!.rxQueues, 'RX');
    this.checkDesc(nbDesc);
    this.rxPools[q] = pool;
    this.rxDesc[q] = nbDesc;
  }

  /** Set up TX queue q with nbDesc descriptors (rte_eth_tx_queue_setup). */
  txQueueSetup(q: number, nbDesc: number): void {
    this.expect(['configured', 'stopped'], 'txQueueSetup');
    this.checkQueue(q, this.conf!.txQueues, 'TX');
    this.checkDesc(nbDesc);
    this.txDesc[q] = nbDesc;
  }

  /** Start the port: every queue must be set up (rte_eth_dev_start). */
  start(): void {
    this.expect(['configured', 'stopped'], 'start');
    const c = this.conf!;
    for (let q = 0; q < c.rxQueues; q++) {
      if (!this.rxPools[q]) throw new Error(`port ${this.port} (${this.name}): RX queue ${q} is not set up; call rxQueueSetup(${q}, ...) before start()`);
    }
    for (let q = 0; q < c.txQueues; q++) {
      if (!this.txDesc[q]) throw new Error(`port ${this.port} (${this.name}): TX queue ${q} is not set up; call txQueueSetup(${q}, ...) before start()`);
    }
    this.onStart();
    this.state = 'started';
  }

  /** Stop the port; its lcores must have stopped polling it first (rte_eth_dev_stop). */
  stop(): void {
    if (this.state !== 'started') return;
    this.onStop();
    this.state = 'stopped';
  }

  /** Stop and release the port (rte_eth_dev_close). */
  close(): void {
    if (this.state === 'closed') return;
    this.stop();
    this.onClose();
    this.state = 'closed';
    unregisterPort(this);
  }

  /** Stop, then return to the probed state, keeping the port id (rte_eth_dev_reset). */
  reset(): void {
    this.expect(['probed', 'configured', 'started', 'stopped'], 'reset');
    this.stop();
    this.onClose();
    this.conf = null;
    this.state = 'probed';
  }

  /** Turn promiscuous mode on or off. */
  promiscuous(on: boolean): void {
    this.onPromiscuous(on);
    this.promisc = on;
  }

  /** Whether promiscuous mode is on. */
  get isPromiscuous(): boolean {
    return this.promisc;
  }

  /** The configuration in force, or null before configure(). */
  get configuration(): PortConf | null {
    return this.conf ? { ...this.conf } : null;
  }

  /** Plain data for rebuilding the queues in an lcore (openPortQueues); only once started. */
  data(): PortData {
    this.expect(['started'], 'data');
    const c = this.conf!;
    return {
      port: this.port, name: this.name, module: this.dataModule(),
      rxq: Array.from({ length: c.rxQueues }, (_, q) => this.rxqData(q)),
      txq: Array.from({ length: c.txQueues }, (_, q) => this.txqData(q)),
      rxPools: this.rxPools.map((p) => p!.desc), stats: this.statsMem, mac: this.macAddr(),
      callbacks: queueCallbacks.map((cb) => ({ ...cb })),
    };
  }

  /** Statistics since the last statsReset() (rte_eth_stats_get). */
  stats(): PortStats {
    this.refreshStats();
    const c = this.counters, b = this.baseline;
    const v = (i: number): number => c[i] - b[i];
    const nrx = this.conf?.rxQueues ?? 0, ntx = this.conf?.txQueues ?? 0;
    const s: PortStats = {
      ipackets: 0, opackets: 0, ibytes: 0, obytes: 0, imissed: 0, ierrors: 0, oerrors: 0, rx_nombuf: 0,
      q_ipackets: [], q_opackets: [], q_ibytes: [], q_obytes: [],
    };
    for (let q = 0; q < nrx; q++) {
      const r = rxqStatsBase(q);
      s.q_ipackets.push(v(r + RXQ_PACKETS));
      s.q_ibytes.push(v(r + RXQ_BYTES));
      s.ipackets += v(r + RXQ_PACKETS);
      s.ibytes += v(r + RXQ_BYTES);
      s.ierrors += v(r + RXQ_ERRORS);
      s.imissed += v(r + RXQ_MISSED);
      s.rx_nombuf += v(r + RXQ_NOMBUF);
    }
    for (let q = 0; q < ntx; q++) {
      const t = txqStatsBase(q);
      s.q_opackets.push(v(t + TXQ_PACKETS));
      s.q_obytes.push(v(t + TXQ_BYTES));
      s.opackets += v(t + TXQ_PACKETS);
      s.obytes += v(t + TXQ_BYTES);
      s.oerrors += v(t + TXQ_ERRORS);
    }
    return s;
  }

  /** Extended statistics by name: the basic ones, per queue, and the driver's own. */
  xstats(): Record<string, number> {
    const s = this.stats();
    const out: Record<string, number> = {
      rx_good_packets: s.ipackets, tx_good_packets: s.opackets, rx_good_bytes: s.ibytes, tx_good_bytes: s.obytes,
      rx_missed_errors: s.imissed, rx_errors: s.ierrors, tx_errors: s.oerrors, rx_mbuf_allocation_errors: s.rx_nombuf,
    };
    s.q_ipackets.forEach((n, q) => {
      out[`rx_q${q}_packets`] = n;
      out[`rx_q${q}_bytes`] = s.q_ibytes[q];
      if (this.conf?.intr?.rxq) out[`rx_q${q}_interrupts`] = this.counters[rxqStatsBase(q) + RXQ_INTERRUPTS] - this.baseline[rxqStatsBase(q) + RXQ_INTERRUPTS];
    });
    s.q_opackets.forEach((n, q) => { out[`tx_q${q}_packets`] = n; out[`tx_q${q}_bytes`] = s.q_obytes[q]; });
    this.xstatNames().forEach((name, i) => { out[name] = this.counters[xstatIndex(i)] - this.baseline[xstatIndex(i)]; });
    return out;
  }

  /** Zero the statistics (rte_eth_stats_reset): later reads count from now. */
  statsReset(): void {
    this.refreshStats();
    this.baseline = Float64Array.from(this.counters);
  }

  /** MAC address as text, aa:bb:cc:dd:ee:ff. */
  macString(): string {
    return formatMac(this.macAddr());
  }

  private expect(ok: State[], what: string): void {
    if (!ok.includes(this.state)) {
      throw new Error(`port ${this.port} (${this.name}): ${what}() is not allowed while ${this.state} (allowed when ${ok.join(' or ')})`);
    }
  }

  private checkQueue(q: number, n: number, dir: string): void {
    if (!Number.isInteger(q) || q < 0 || q >= n) throw new RangeError(`port ${this.port} (${this.name}): ${dir} queue ${q} does not exist (configured: ${n})`);
  }

  private checkDesc(n: number): void {
    const i = this.info();
    if (!Number.isInteger(n) || n < i.minDesc || n > i.maxDesc) {
      throw new RangeError(`port ${this.port} (${this.name}): ${n} descriptors requested; ${i.driverName} takes ${i.minDesc}..${i.maxDesc}`);
    }
  }
}

// ---- the port registry (per process) ----

const ports: Array<EthDev | null> = [];

function registerPort(dev: EthDev): number {
  if (ports.some((p) => p?.name === dev.name)) throw new Error(`a port named "${dev.name}" already exists`);
  ports.push(dev);
  return ports.length - 1;
}

function unregisterPort(dev: EthDev): void {
  if (ports[dev.port] === dev) ports[dev.port] = null;
}

/** All open ports, by id. */
export function listPorts(): EthDev[] {
  return ports.filter((p): p is EthDev => p !== null);
}

/** Close every port (EAL shutdown). */
export function closeAllPorts(): void {
  for (const p of listPorts()) p.close();
}

/** Rebuild RX queue q of a port in this thread (an lcore), which then owns it; the port's queue callbacks wrap it. */
export async function openRxQueue(data: PortData, q: number): Promise<RxQueue> {
  const mod = (await import(data.module)) as DataModule;
  if (q < 0 || q >= data.rxq.length) throw new RangeError(`port ${data.port} (${data.name}): RX queue ${q} does not exist (configured: ${data.rxq.length})`);
  let queue = await mod.openRxQueue(data, q, new Float64Array(data.stats));
  for (const cb of data.callbacks) {
    const wrap = ((await import(cb.module)) as QueueCallbackModule).wrapRxQueue;
    if (wrap) queue = wrap(data, q, queue, cb.arg);
  }
  return queue;
}

/** Rebuild TX queue q of a port in this thread (an lcore), which then owns it; the port's queue callbacks wrap it. */
export async function openTxQueue(data: PortData, q: number): Promise<TxQueue> {
  const mod = (await import(data.module)) as DataModule;
  if (q < 0 || q >= data.txq.length) throw new RangeError(`port ${data.port} (${data.name}): TX queue ${q} does not exist (configured: ${data.txq.length})`);
  // TX frees mbufs: the pools they come from must be known in this thread.
  for (const p of data.rxPools) Mempool.attach(p);
  let queue = await mod.openTxQueue(data, q, new Float64Array(data.stats));
  for (const cb of data.callbacks) {
    const wrap = ((await import(cb.module)) as QueueCallbackModule).wrapTxQueue;
    if (wrap) queue = wrap(data, q, queue, cb.arg);
  }
  return queue;
}
