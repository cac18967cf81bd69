/**
 * Per-packet cost of the parts of the forwarding path, for docs/performance.md: each part runs in
 * its own loop on one pinned worker lcore (CPU 1, as l2fwd's forwarding lcore), over the public API,
 * on two net_null ports and a pool set up as l2fwd sets them up (cache 256, bursts of 32):
 *
 *   alloc_free       Mempool allocBulk + freeBulk (the per-lcore cache path)
 *   alloc_init_free  pktmbufAllocBulk (alloc + header rearm, as net_null RX does it) + pktmbufFreeBulk
 *   rx_free          a net_null rxBurst as ethdev opens it (pdump's capture wrapper, stats) + pktmbufFreeBulk
 *   rx_tx            rxBurst + txBurst (net_null TX frees) on the same port pair
 *   rx_tx_raw        the same on the driver's queues without the queue callbacks (no capture wrapper)
 *   fwd_nomac        l2fwd's loop without the MAC rewrite (two ports, stop word read per round)
 *   fwd              l2fwd's loop: rx, MAC rewrite, tx, per port, both ports per round
 *
 * Differences of these give the table: alloc/free, mbuf init, rx driver, tx driver, the capture
 * hook (run() calls pdumpInit as the app framework does, so openRxQueue/openTxQueue wrap the
 * queues as in any app), the loop's bookkeeping and the MAC rewrite. Each figure is the median of
 * several timed repetitions (ns per packet), after a warm-up that lets every loop be optimized.
 */
import {
  Eal, Mempool, MbufView, macWords, openRxQueue, openTxQueue, pktmbufAllocBulk, pktmbufFreeBulk, pktmbufPoolCreate,
  probePorts, countGc, listPorts, pdumpInit, type LcoreContext, type PortData, type RxQueue, type TxQueue,
} from '../index.js';

/** Argument of partsLoop. */
export interface PartsArg {
  ports: PortData[];
  /** packets per repetition of each part */
  packets: number;
  reps: number;
}

/** Result of partsLoop: median ns per packet of each part, and the worker's GCs during the timed loops. */
export interface PartsResult {
  ns: Record<string, number>;
  gcCount: number;
}

const BURST = 32;

/** What a driver's data module exports (PortData.module): its queues without the queue callbacks. */
interface DriverDataModule {
  openRxQueue(port: PortData, q: number, stats: Float64Array): RxQueue | Promise<RxQueue>;
  openTxQueue(port: PortData, q: number, stats: Float64Array): TxQueue | Promise<TxQueue>;
}

function allocFree(pool: Mempool, buf: Uint32Array, iters: number): void {
  for (let i = 0; i < iters; i++) {
    pool.allocBulk(buf, BURST);
    pool.freeBulk(buf, BURST);
  }
}

function allocInitFree(pool: Mempool, buf: Uint32Array, iters: number): void {
  for (let i = 0; i < iters; i++) {
    pktmbufAllocBulk(pool, buf, BURST);
    pktmbufFreeBulk(buf, BURST);
  }
}

function rxFree(rx: RxQueue, buf: Uint32Array, iters: number): void {
  for (let i = 0; i < iters; i++) {
    const n = rx.rxBurst(buf, BURST);
    pktmbufFreeBulk(buf, n);
  }
}

function rxTx(rx: RxQueue, tx: TxQueue, buf: Uint32Array, iters: number): void {
  for (let i = 0; i < iters; i++) {
    const n = rx.rxBurst(buf, BURST);
    const k = tx.txBurst(buf, n, 0);
    if (k < n) pktmbufFreeBulk(buf, n - k, k);
  }
}

/** The raw-queue twin of rxTx: a second function so each keeps its own (monomorphic) call sites. */
function rxTxRaw(rx: RxQueue, tx: TxQueue, buf: Uint32Array, iters: number): void {
  for (let i = 0; i < iters; i++) {
    const n = rx.rxBurst(buf, BURST);
    const k = tx.txBurst(buf, n, 0);
    if (k < n) pktmbufFreeBulk(buf, n - k, k);
  }
}

interface Pair {
  rx: RxQueue;
  tx: TxQueue;
  w0: number; w1: number; w2: number;
}

/** l2fwd's loop body (examples/l2fwd), iters rounds over both ports; mac selects the rewrite (false: --no-mac-updating). */
function fwdLoop(fwd: Pair[], buf: Uint32Array, pkt: MbufView, iters: number, mac: boolean, control: Int32Array, drops: Float64Array): void {
  const nf = fwd.length;
  for (let r = 0; r < iters && Atomics.load(control, 0) === 0; r++) {
    for (let i = 0; i < nf; i++) {
      const f = fwd[i];
      const n = f.rx.rxBurst(buf, BURST);
      if (n === 0) continue;
      if (mac) pkt.setMacWordsBurst(buf, 0, n, f.w0, f.w1, f.w2);
      const sent = f.tx.txBurst(buf, n, 0);
      if (sent < n) {
        pktmbufFreeBulk(buf, n - sent, sent);
        drops[i] += n - sent;
      }
    }
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

/** The lcore function: time each part reps times, packets per repetition. */
export async function partsLoop(a: PartsArg, ctx: LcoreContext): Promise<PartsResult> {
  const [p0, p1] = a.ports;
  const pool = Mempool.attach(p0.rxPools[0]);
  const rx0 = await openRxQueue(p0, 0), rx1 = await openRxQueue(p1, 0);
  const tx0 = await openTxQueue(p0, 0), tx1 = await openTxQueue(p1, 0);
  // The driver's own queues, without the queue callbacks' wrappers (same statistics memory).
  const mod = (await import(p0.module)) as DriverDataModule;
  const rawRx0 = await mod.openRxQueue(p0, 0, new Float64Array(p0.stats)), rawTx1 = await mod.openTxQueue(p1, 0, new Float64Array(p1.stats));
  const [a0, a1, a2] = macWords([2, 0, 0, 0, 0, 1], p1.mac);
  const [b0, b1, b2] = macWords([2, 0, 0, 0, 0, 0], p0.mac);
  const fwd: Pair[] = [{ rx: rx0, tx: tx1, w0: a0, w1: a1, w2: a2 }, { rx: rx1, tx: tx0, w0: b0, w1: b1, w2: b2 }];
  const buf = new Uint32Array(BURST);
  const pkt = new MbufView();
  const drops = new Float64Array(2);
  const control = ctx.control;
  const iters = Math.ceil(a.packets / BURST);
  const parts: Array<[string, (n: number) => void, number]> = [
    ['alloc_free', (n) => allocFree(pool, buf, n), BURST],
    ['alloc_init_free', (n) => allocInitFree(pool, buf, n), BURST],
    ['rx_free', (n) => rxFree(rx0, buf, n), BURST],
    ['rx_tx', (n) => rxTx(rx0, tx1, buf, n), BURST],
    ['rx_tx_raw', (n) => rxTxRaw(rawRx0, rawTx1, buf, n), BURST],
    ['fwd_nomac', (n) => fwdLoop(fwd, buf, pkt, n >> 1, false, control, drops), BURST],
    ['fwd', (n) => fwdLoop(fwd, buf, pkt, n >> 1, true, control, drops), BURST],
  ];
  // Warm-up: every part long enough to be optimized (about a second in all).
  for (let w = 0; w < 3; w++) for (const [, fn] of parts) fn(Math.ceil(iters / 4));
  const gc = countGc();
  const times = new Map<string, number[]>(parts.map(([name]) => [name, []]));
  const t0 = performance.now();
  // Interleaved repetitions: a slow second of the machine hits every part alike.
  for (let r = 0; r < a.reps && Atomics.load(control, 0) === 0; r++) {
    for (const [name, fn, per] of parts) {
      const s = performance.now();
      fn(iters);
      times.get(name)!.push(((performance.now() - s) * 1e6) / (iters * per));
    }
  }
  const t1 = performance.now();
  await gc.settle();
  gc.stop();
  pool.flushCache();
  const ns: Record<string, number> = {};
  for (const [name, ts] of times) ns[name] = median(ts);
  return { ns, gcCount: gc.countBetween(t0, t1) };
}

/** The fwd-parts figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number>> {
  const quick = args.includes('--quick');
  const eal = new Eal({
    noHuge: true, filePrefix: `tspparts${process.pid}`, lcores: [{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }], mainLcore: 0,
    vdevs: ['net_null0', 'net_null1'],
  });
  try {
    // As runApp does for every app: the capture wrapper whose cost rx_tx - rx_tx_raw measures.
    if (!pdumpInit()) throw new Error('fwd-parts: pdumpInit() found no capture region (memfd): the capture hook cannot be measured');
    await probePorts(eal);
    const ports = listPorts().slice(0, 2);
    const pool = pktmbufPoolCreate(eal.memory, 'parts_pool', 8191, { cacheSize: 256 });
    for (const p of ports) {
      p.configure({ rxQueues: 1, txQueues: 1, promiscuous: true });
      p.rxQueueSetup(0, 1024, pool);
      p.txQueueSetup(0, 1024);
      p.start();
    }
    const arg: PartsArg = { ports: ports.map((p) => p.data()), packets: quick ? 2_000_000 : 8_000_000, reps: quick ? 5 : 9 };
    const r = await eal.lcores.launch(1, import.meta.url, partsLoop, arg);
    for (const p of ports) p.stop();
    if (pool.inUseCount() !== 0) throw new Error(`fwd-parts leaked ${pool.inUseCount()} mbufs`);
    const n = r.ns;
    const d = (x: number): number => Number(x.toFixed(2));
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(n)) out[`${k}_ns`] = d(v);
    // The split (ns per packet); the rows add up to fwd_ns.
    out.split_alloc_free_ns = d(n.alloc_free);
    out.split_mbuf_init_ns = d(n.alloc_init_free - n.alloc_free);
    out.split_rx_driver_ns = d(n.rx_free - n.alloc_init_free);
    out.split_tx_driver_ns = d(n.rx_tx - n.rx_free);
    out.split_loop_ns = d(n.fwd_nomac - n.rx_tx);
    out.split_mac_rewrite_ns = d(n.fwd - n.fwd_nomac);
    out.capture_hook_ns = d(n.rx_tx - n.rx_tx_raw);
    out.fwd_mpps_equivalent = d(1e3 / n.fwd);
    out.worker_gc_count = r.gcCount;
    console.log('per-packet cost of the forwarding path\'s parts (ns per packet, median of the repetitions):');
    for (const [k, v] of Object.entries(out)) console.log(`  ${k.padEnd(24)} ${v}`);
    return out;
  } finally {
    await eal.close();
  }
}
