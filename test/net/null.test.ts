/**
 * net_null's no-rx option (DPDK's devarg of that name): RX returns nothing and counts nothing,
 * TX still takes and frees; without it RX generates. Both on one EAL, main thread, no root.
 */
import t from 'tap';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue, openTxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';

t.test('net_null no-rx=1 receives nothing and still sinks TX; the default generates', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tspnull${process.pid}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const [sink, gen] = await probeVdevs(eal, ['net_null0,no-rx=1', 'net_null1']);
  const pool = pktmbufPoolCreate(eal.memory, 'null_test', 1023, { cacheSize: 0 });
  for (const p of [sink, gen]) {
    p.configure({ rxQueues: 1, txQueues: 1 });
    p.rxQueueSetup(0, 256, pool);
    p.txQueueSetup(0, 256);
    p.start();
  }
  const buf = new Uint32Array(32);
  const rxSink = await openRxQueue(sink.data(), 0), rxGen = await openRxQueue(gen.data(), 0);
  t.equal(rxSink.rxBurst(buf, 32), 0, 'no-rx port: an RX burst returns nothing');
  t.equal(pool.inUseCount(), 0, 'no-rx port: no mbuf taken');
  t.equal(rxGen.rxBurst(buf, 32), 32, 'default port: an RX burst is full');
  pktmbufFreeBulk(buf, 32);
  t.ok(pktmbufAllocBulk(pool, buf, 32), 'mbufs for TX');
  const txSink = await openTxQueue(sink.data(), 0);
  t.equal(txSink.txBurst(buf, 32, 0), 32, 'no-rx port: TX takes the whole burst');
  t.equal(pool.inUseCount(), 0, 'every mbuf back in the pool');
  const s = sink.stats();
  t.equal(s.ipackets, 0, 'no-rx port counts no RX');
  t.equal(s.opackets, 32, 'no-rx port counts its TX');
  t.equal(gen.stats().ipackets, 32, 'default port counts its RX');
  for (const p of [sink, gen]) { p.stop(); p.close(); }
});

t.test('net_null no-rx takes only 0 or 1', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tspnullb${process.pid}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  await t.rejects(probeVdevs(eal, ['net_null0,no-rx=2']), /no-rx/, 'a bad value names the key');
});
