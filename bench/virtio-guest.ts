/**
 * The guest side of the virtio benchmarks (bench/virtio.ts, bench/vswitch.ts), on the package's
 * entry point alone: tspmd's net_virtio attached to a vfio-user socket in this process (`-a
 * vfio-user:SOCK`, main thread on CPU 0, its one lcore on CPU 1), receiving (rxOnly) or sending
 * 64-byte frames as fast as it can (txOnly), and sampleRate, which turns any packet counter into a
 * rate: the median of 1 s periods after the counter first moved and a warm-up.
 */
import {
  Eal, Mempool, MbufView, parseEalArgs, probeDeviceBuses, listPorts, openRxQueue, openTxQueue, pktmbufPoolCreate, pktmbufAllocBulk, pktmbufFreeBulk,
  buildUdpFrame, type EthDev, type LcoreContext, type MempoolDesc, type PortData,
} from '../index.js';
import { median } from './dpdk.js';

/** Argument of the guest's lcore loops. */
export interface GuestLoopArg {
  port: PortData;
  burst: number;
  /** txOnly: the pool its frames come from */
  pool: MempoolDesc;
  /** txOnly: the frame every packet carries */
  frame: Uint8Array;
}

/** The receive loop on the guest's lcore: take bursts and free them, until stopped. */
export async function rxOnly(arg: GuestLoopArg, ctx: LcoreContext): Promise<number> {
  const rx = await openRxQueue(arg.port, 0);
  const pkts = new Uint32Array(arg.burst);
  let total = 0;
  while (!ctx.stopRequested()) {
    const n = rx.rxBurst(pkts, arg.burst);
    if (n > 0) {
      pktmbufFreeBulk(pkts, n);
      total += n;
    }
  }
  return total;
}

/**
 * The send loop on the guest's lcore: allocate a burst, give each mbuf the frame's length, send,
 * free what did not fit; until stopped. The frame's bytes are written into every mbuf of the pool
 * once before (they stay there: nothing in the guest writes them again), so the guest offers all
 * it can and the switch is what limits (testpmd's txonly rewrites its headers per packet instead).
 */
export async function txOnly(arg: GuestLoopArg, ctx: LcoreContext): Promise<number> {
  const tx = await openTxQueue(arg.port, 0);
  const pool = Mempool.attach(arg.pool);
  const pkts = new Uint32Array(arg.burst);
  const pkt = new MbufView();
  const burst = arg.burst, len = arg.frame.length;
  prefill(pool, arg.frame);
  let total = 0;
  while (!ctx.stopRequested()) {
    if (!pktmbufAllocBulk(pool, pkts, burst)) continue;
    for (let i = 0; i < burst; i++) pkt.at(pkts[i]).setLen(len);
    const k = tx.txBurst(pkts, burst, 0);
    if (k < burst) pktmbufFreeBulk(pkts, burst - k, k);
    total += k;
  }
  pool.flushCache();
  return total;
}

/** Write frame into every free mbuf of pool (all of them taken at once, then given back). */
function prefill(pool: Mempool, frame: Uint8Array): void {
  const all = new Uint32Array(pool.availableCount());
  let n = 0;
  while (n < all.length && pktmbufAllocBulk(pool, all, 1, n)) n++;
  const pkt = new MbufView();
  for (let i = 0; i < n; i++) pkt.at(all[i]).write(frame);
  pktmbufFreeBulk(all, n);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The rate of a packet counter in Mpps: wait until it moves (at most startTimeoutS), let warmupS
 * pass, then the median of `seconds` periods of 1 s, each over its measured elapsed time.
 */
export async function sampleRate(read: () => number | Promise<number>, what: string, warmupS: number, seconds: number, startTimeoutS = 60): Promise<{ mpps: number; periods: number[] }> {
  const first = await read(), end = Date.now() + startTimeoutS * 1000;
  while ((await read()) === first) {
    if (Date.now() > end) throw new Error(`${what}: no packets within ${startTimeoutS} s`);
    await sleep(100);
  }
  await sleep(warmupS * 1000);
  const periods: number[] = [];
  let last = await read(), t0 = performance.now();
  for (let s = 0; s < seconds; s++) {
    await sleep(1000);
    const now = await read(), t1 = performance.now();
    periods.push((now - last) / ((t1 - t0) / 1000) / 1e6);
    last = now;
    t0 = t1;
  }
  return { mpps: median(periods), periods };
}

/** The guest's 64-byte frame (mbuf data length 64, as testpmd's --txpkts=64 and net_null's size=64): UDP, broadcast. */
export function guestFrame(): Uint8Array {
  return buildUdpFrame({ dstMac: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], srcMac: [2, 0, 0, 0, 0, 0x47], srcIp: 0xc0a80001, dstIp: 0xc0a80002, srcPort: 9, dstPort: 9, size: 64 });
}

/**
 * Attach tspmd's net_virtio to the vfio-user socket in this process, run rxOnly or txOnly on its
 * lcore while `measure(port)` runs, then stop and close everything; measure's result.
 */
export async function withGuest<T>(sock: string, prefix: string, mode: 'rx' | 'tx', measure: (port: EthDev) => Promise<T>): Promise<T> {
  let eal: Eal | null = null;
  try {
    eal = new Eal(parseEalArgs(['--no-huge', '-l', '0-1', '--main-lcore', '0', '--file-prefix', prefix, '-a', `vfio-user:${sock}`]));
    await probeDeviceBuses(eal);
    const port = listPorts().find((p) => p.info().driverName.includes('virtio'));
    if (!port) throw new Error(`the virtio PMD did not probe vfio-user:${sock} (ports: ${listPorts().map((p) => p.name).join(', ') || 'none'})`);
    const pool = pktmbufPoolCreate(eal.memory, 'bench_guest', 8191, { cacheSize: 256 });
    port.configure({ rxQueues: 1, txQueues: 1 });
    port.rxQueueSetup(0, 256, pool);
    port.txQueueSetup(0, 256);
    port.start();
    const arg: GuestLoopArg = { port: port.data(), burst: 32, pool: pool.desc, frame: guestFrame() };
    const done = eal.lcores.launch(eal.lcores.workers[0], import.meta.url, mode === 'rx' ? rxOnly : txOnly, arg);
    let result: T;
    try {
      result = await measure(port);
    } finally {
      eal.lcores.requestStop();
      await done;
    }
    port.close();
    return result;
  } finally {
    if (eal) await eal.close();
  }
}
