/**
 * The seam pdump attaches through, in one process: ethdev's queue callbacks travel in port.data()
 * and wrap the queues openRxQueue/openTxQueue return; without pdumpInit the queues are the
 * driver's own; with it, a capture (lib/pdump/capture.ts against this very process) records the
 * frames of RX bursts and only the frames TX took.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { addQueueCallback, openRxQueue, openTxQueue, type DataModule, type EthDev, type RxQueue, type TxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { pdumpInit } from '../../lib/pdump/pdump.js';
import { capture } from '../../lib/pdump/capture.js';
import { wrapTxQueue } from '../../lib/pdump/queue.js';
import { readCaptureFile } from '../../lib/pcap/pcap.js';

const dir = mkdtempSync(`/tmp/tsp${process.pid}pds`);
const eal = new Eal({ noHuge: true, filePrefix: `tsp${process.pid}pds`, noTelemetry: true });
t.teardown(async () => {
  await eal.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A stand-in for a device with little room: the queue takes at most `room` frames per burst. */
function limitedTx(inner: TxQueue, room: number): TxQueue {
  return { txBurst: (pkts, n, off = 0) => inner.txBurst(pkts, n < room ? n : room, off) };
}

let ports: EthDev[] = [];
t.before(async () => {
  ports = await probeVdevs(eal, ['net_null0', 'net_null1']);
  const pool = pktmbufPoolCreate(eal.memory, 'pds_pool', 2047, { cacheSize: 0 });
  for (const p of ports) {
    p.configure({ rxQueues: 1, txQueues: 1 });
    p.rxQueueSetup(0, 256, pool);
    p.txQueueSetup(0, 256);
    p.start();
  }
});

t.test('without pdumpInit the queues are the driver\'s own; a registered callback travels in data() until removed', async (t) => {
  const d = ports[0].data();
  t.same(d.callbacks, [], 'no queue callback registered');
  const rx = await openRxQueue(d, 0);
  t.equal(rx.constructor.name, 'NullRx', 'openRxQueue returns the driver\'s queue itself');
  const remove = addQueueCallback({ module: new URL('../../lib/pdump/queue.ts', import.meta.url).href, arg: { fd: -1 } });
  t.equal(ports[0].data().callbacks.length, 1, 'data() taken after addQueueCallback carries it');
  const rx2 = await openRxQueue(ports[0].data(), 0);
  t.equal(rx2.constructor.name, 'NullRx', 'a callback may leave a queue alone (no region behind fd -1)');
  remove();
  t.same(ports[0].data().callbacks, [], 'removed: later data() carries none');
  t.throws(() => addQueueCallback({ module: '' }), /module must be the URL/);
});

t.test('with pdumpInit the queues come wrapped, and a capture of this process records RX bursts and the frames TX took', async (t) => {
  t.equal(pdumpInit(), true, 'pdumpInit sets up the capture region');
  t.equal(pdumpInit(), true, 'a second call is a no-op');
  const d0 = ports[0].data(), d1 = ports[1].data();
  t.equal(d0.callbacks.length, 1, 'one callback, registered once');
  t.match(d0.callbacks[0].module, /\/lib\/pdump\/queue\.(ts|js)$/, 'the callback is lib/pdump/queue');
  const rx: RxQueue = await openRxQueue(d0, 0);
  const tx: TxQueue = await openTxQueue(d0, 0);
  t.equal(rx.constructor.name, 'CapturedRx', 'openRxQueue returns pdump\'s wrapper');
  t.equal(tx.constructor.name, 'CapturedTx', 'openTxQueue returns pdump\'s wrapper');
  const rx1 = await openRxQueue(d1, 0);
  // A TX queue that takes 5 frames of each burst, under pdump's wrapper as openTxQueue would put it.
  const driver = (await import(d0.module)) as DataModule;
  const txFull = wrapTxQueue(d0, 0, limitedTx(await driver.openTxQueue(d0, 0, new Float64Array(d0.stats)), 5), d0.callbacks[0].arg);
  const buf = new Uint32Array(32);
  // Nobody captures yet: the bursts are not recorded.
  for (let i = 0; i < 10; i++) pktmbufFreeBulk(buf, rx.rxBurst(buf, 32), 0);

  const out = join(dir, 'self.pcap');
  let started: () => void = () => {};
  const attached = new Promise<void>((r) => { started = r; });
  let stop: () => void = () => {};
  const stopped = new Promise<void>((r) => { stop = r; });
  const running = capture({ port: 0, queue: -1, dir: 'both', out, durationS: 0, snaplen: 65535 }, process.pid, stopped, () => started());
  await attached;
  let rxFrames = 0, txTaken = 0;
  for (let round = 0; round < 3; round++) {
    const n = rx.rxBurst(buf, 32);
    rxFrames += n;
    pktmbufFreeBulk(buf, n, 0);
    const m = rx1.rxBurst(buf, 32); // port 1's frames leave through port 0: a TX with room for 5
    const k = txFull.txBurst(buf, m, 0);
    txTaken += k;
    pktmbufFreeBulk(buf, m - k, k);
  }
  stop();
  const r = await running;
  t.equal(rxFrames, 96, 'net_null gave full bursts');
  t.equal(txTaken, 15, 'TX took 5 of each burst');
  t.equal(r.packets, rxFrames + txTaken, 'the capture has every RX frame and only the TX frames taken');
  t.equal(r.drops, 0, 'nothing dropped');
  t.equal(readCaptureFile(out).count, r.packets, 'the pcap file holds them');
  // Bursts between two captures are not recorded, and a later capture records only its own.
  for (let i = 0; i < 3; i++) pktmbufFreeBulk(buf, rx.rxBurst(buf, 32), 0);
  let started2: () => void = () => {};
  const attached2 = new Promise<void>((r) => { started2 = r; });
  let stop2: () => void = () => {};
  const running2 = capture({ port: 0, queue: 0, dir: 'rx', out: join(dir, 'again.pcap'), durationS: 0, snaplen: 64 }, process.pid, new Promise<void>((r) => { stop2 = r; }), () => started2());
  await attached2;
  for (let i = 0; i < 2; i++) pktmbufFreeBulk(buf, rx.rxBurst(buf, 32), 0);
  stop2();
  t.equal((await running2).packets, 64, 'a second capture has exactly the 2 bursts made while it ran');
});
