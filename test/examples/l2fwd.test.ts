/**
 * l2fwd through linked net_ring ports, with the forwarding loop on a real pinned worker lcore:
 * N packets in, N out, MAC addresses rewritten as specified, statistics exact, stop/restart,
 * every mbuf back in its pool; a throwing poll loop surfaces its error; the tspmd command's
 * arguments, exit codes and JSON summary.
 */
import t from 'tap';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue, openTxQueue, type EthDev } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, writePacket, readPacket, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { siblingModule } from '../../src/lcore/module.js';
import { runLcoresUntilDone } from '../../lib/app/app.js';
import { planL2fwd } from '../../examples/l2fwd/l2fwd.js';
import { buildUdpFrame, checkUdpFrame, parseIpv4 } from '../../lib/net/packet.js';
import { l2fwdLoop, type L2fwdLcoreArg } from '../../examples/l2fwd/l2fwd.js';
import { runCli } from '../cli.js';
import { assertForwarderNoAlloc } from '../alloc.js';

const LOOP = new URL(`../../examples/l2fwd/l2fwd${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url).href;
const THROWER = siblingModule(import.meta.url, 'throwing-lcore');
const prefix = `tspl2f${process.pid}`;

/** Ports: 0<->1 and 2<->3 are linked back to back; l2fwd forwards between 1 and 3. */
async function setup(t: { teardown(fn: () => unknown): void }) {
  const eal = new Eal({ noHuge: true, filePrefix: prefix, lcores: [{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const ports = await probeVdevs(eal, ['net_ring0', 'net_ring1,peer=net_ring0', 'net_ring2', 'net_ring3,peer=net_ring2']);
  const pool = pktmbufPoolCreate(eal.memory, 'l2fwd_test', 4095, { cacheSize: 64 });
  for (const p of ports) {
    p.configure({ rxQueues: 1, txQueues: 1 });
    p.rxQueueSetup(0, 512, pool);
    p.txQueueSetup(0, 512);
    p.start();
  }
  return { eal, ports, pool };
}

function l2fwdArg(ports: EthDev[], mac: boolean, drops: SharedArrayBuffer): L2fwdLcoreArg {
  const [, p1, , p3] = ports;
  return {
    burst: 32, macUpdating: mac, drops,
    assignments: [
      { rx: p1.data(), tx: p3.data(), dstMac: [2, 0, 0, 0, 0, 3], srcMac: p3.macAddr(), dropIndex: 0 },
      { rx: p3.data(), tx: p1.data(), dstMac: [2, 0, 0, 0, 0, 1], srcMac: p1.macAddr(), dropIndex: 1 },
    ],
  };
}

const frame = (i: number) => buildUdpFrame({
  dstMac: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], srcMac: [2, 9, 9, 9, 9, 9],
  srcIp: parseIpv4('10.0.0.1') + i, dstIp: parseIpv4('10.0.1.1'), srcPort: 1000 + (i & 0xfff), dstPort: 2000, size: 64 + (i % 100),
});

/** Send n numbered frames into port 0 (so they arrive on port 1) and collect what comes out of port 2. */
async function pushThrough(ports: EthDev[], pool: ReturnType<typeof pktmbufPoolCreate>, n: number) {
  const tx0 = await openTxQueue(ports[0].data(), 0);
  const rx2 = await openRxQueue(ports[2].data(), 0);
  const buf = new Uint32Array(32), out = new Uint32Array(32), bytes = new Uint8Array(2048);
  const got: Uint8Array[] = [];
  let sent = 0;
  // The lcore starts in the background (a worker loading its modules: seconds on a loaded
  // machine): allow two minutes for the first frame back, then 20 s without progress.
  let deadline = Date.now() + 120_000, seen = 0;
  while ((sent < n || got.length < n) && Date.now() < deadline) {
    // Keep at most 512 packets in flight: the far ring (1024) never fills, so nothing is dropped.
    if (sent < n && sent - got.length < 512) {
      const k = Math.min(32, n - sent);
      if (pktmbufAllocBulk(pool, buf, k)) {
        for (let i = 0; i < k; i++) writePacket(buf[i], frame(sent + i));
        const s = tx0.txBurst(buf, k, 0);
        if (s < k) pktmbufFreeBulk(buf, k - s, s);
        sent += s;
      }
    }
    const r = rx2.rxBurst(out, 32);
    for (let i = 0; i < r; i++) {
      const len = readPacket(out[i], bytes);
      got.push(bytes.slice(0, len));
    }
    pktmbufFreeBulk(out, r, 0);
    if (got.length !== seen) {
      seen = got.length;
      deadline = Math.max(deadline, Date.now() + 20_000);
    }
    if (r === 0) await new Promise((res) => setImmediate(res));
  }
  return got;
}

t.test('l2fwd between linked net_ring ports: counts, MACs, statistics, restart, no leak', async (t) => {
  const { eal, ports, pool } = await setup(t);
  const drops = new SharedArrayBuffer(16);
  const N = 5000;
  for (const round of [1, 2]) {
    const running = eal.lcores.launch(1, LOOP, l2fwdLoop, l2fwdArg(ports, true, drops));
    const got = await pushThrough(ports, pool, N);
    eal.lcores.requestStop();
    await running;
    t.equal(got.length, N, `round ${round}: N packets in, N out`);
    let macOk = 0, payloadOk = 0;
    got.forEach((f, i) => {
      if (f.slice(0, 6).join() === '2,0,0,0,0,3' && f.slice(6, 12).join() === ports[3].macAddr().join()) macOk++;
      const info = checkUdpFrame(f);
      if (info && info.ipChecksumOk && info.udpChecksumOk && info.srcIp === parseIpv4('10.0.0.1') + i && f.length === 64 + (i % 100)) payloadOk++;
    });
    t.equal(macOk, N, 'destination 02:00:00:00:00:03, source = port 3 MAC, on every frame');
    t.equal(payloadOk, N, 'payload intact and in order');
    const s1 = ports[1].stats(), s3 = ports[3].stats();
    t.equal(s1.ipackets, N * round, 'port 1 RX count (cumulative)');
    t.equal(s3.opackets, N * round, 'port 3 TX count');
    const bytes = Array.from({ length: N }, (_, i) => 64 + (i % 100)).reduce((a, b) => a + b, 0);
    t.equal(s1.ibytes, bytes * round, 'port 1 RX bytes');
    t.equal(s3.obytes, bytes * round, 'port 3 TX bytes');
    t.equal(new Float64Array(drops)[0], 0, 'no drops');
    // Stop and restart the ports: in-flight packets go back to the pool.
    for (const p of ports) p.stop();
    pool.flushCache();
    t.equal(pool.inUseCount(), 0, `round ${round}: every mbuf back in its pool after stop`);
    for (const p of ports) p.start();
  }
});

t.test('--no-mac-updating leaves frames unchanged; TX full counts drops and frees', async (t) => {
  const { eal, ports, pool } = await setup(t);
  const drops = new SharedArrayBuffer(16);
  const running = eal.lcores.launch(1, LOOP, l2fwdLoop, l2fwdArg(ports, false, drops));
  const got = await pushThrough(ports, pool, 300);
  eal.lcores.requestStop();
  await running;
  t.equal(got.length, 300);
  t.same(Array.from(got[7]), Array.from(frame(7)), 'bytes unchanged');
  for (const p of ports) p.stop();
  pool.flushCache();
  t.equal(pool.inUseCount(), 0);
});

t.test('a throwing poll loop rejects with its error and stack; the others stop', async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `${prefix}x`, lcores: [{ id: 0, cpu: 0 }, { id: 1, cpu: 1 }, { id: 2, cpu: 1 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const ok = eal.lcores.launch(2, THROWER, 'spinUntilStopped', null);
  const bad = eal.lcores.launch(1, THROWER, 'throwAfter', 50);
  const err = await runLcoresUntilDone(eal, [ok, bad], 30).then(() => null, (e: unknown) => e as Error);
  t.ok(err, 'rejected');
  t.match(err?.message, /deliberate failure in lcore 1/);
  t.match(err?.stack, /throwAfter/, 'stack names the poll function');
  t.notOk(eal.lcores.busy(2), 'the healthy lcore was stopped too');
});

t.test('planL2fwd: pairs, lcore spread, and clear errors', async (t) => {
  const fake = (port: number) => ({ port }) as EthDev;
  const ps = [0, 1, 2, 3].map(fake);
  t.same(planL2fwd(ps, [1], 4).map((a) => [a.lcore, a.rx.port, a.tx.port]), [[1, 0, 1], [1, 1, 0], [1, 2, 3], [1, 3, 2]]);
  t.same(planL2fwd(ps, [1, 2], 2).map((a) => a.lcore), [1, 1, 2, 2]);
  t.throws(() => planL2fwd(ps.slice(0, 3), [1], 4), /odd number/);
  t.throws(() => planL2fwd([], [1], 1), /no ports/);
  t.throws(() => planL2fwd(ps, [], 1), /worker lcore/);
  t.throws(() => planL2fwd(ps, [1], 1), /need 4 worker lcores, 1 available/);
});

t.test('tspmd l2fwd command: JSON summary contract on null ports', async (t) => {
  const r = await runCli(['l2fwd', '--no-huge', '--file-prefix', `${prefix}c`, '-l', '0-1', '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '-p', '0x3', '--duration', '2', '--json']);
  t.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.equal(s.app, 'l2fwd');
  // at least the duration; the upper bound only catches a run that does not stop (start-up on a loaded machine took 14 s)
  t.ok(s.elapsed_s >= 1.9 && s.elapsed_s < 60, `elapsed ${s.elapsed_s}`);
  t.ok(s.total_rx_mpps > 0.1, `rx ${s.total_rx_mpps} Mpps`);
  t.equal(s.ports.length, 2);
  t.same(Object.keys(s.ports[0]).slice(0, 2), ['port', 'name']);
  for (const k of ['ipackets', 'opackets', 'imissed', 'ierrors', 'oerrors', 'rx_nombuf']) t.type(s.ports[0][k], 'number', k);
  t.equal(s.ports[0].name, 'net_null0');
  t.equal(s.ports[0].ipackets, s.ports[1].opackets, 'what port 0 received, port 1 sent');
  t.equal(s.ports[1].ipackets, s.ports[0].opackets, 'and back');
  t.equal(s.mbufs_in_use_after_stop, 0, 'no mbuf leaked');
  assertForwarderNoAlloc(t, s, 'the forwarding loop on null ports');
});

t.test('tspmd: bad arguments give a clear message and exit code 2', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['nosuchapp'], /unknown app "nosuchapp"/],
    [['l2fwd', '--bogus'], /unknown EAL option "--bogus"/],
    [['l2fwd', '--no-huge', '--', '-p', 'xyz'], /-p "xyz": expected a hexadecimal port mask from 0x1 to 0xffffffff/],
    [['l2fwd', '--no-huge', '--', '--nope'], /unknown l2fwd option "--nope"/],
    [['l2fwd', '--no-huge', '--file-prefix', `${prefix}b`, '--vdev', 'net_bogus0'], /unknown device "net_bogus0"/],
    [['l2fwd', '--no-huge', '--file-prefix', `${prefix}b`, '--vdev', 'net_null0,sise=64'], /net_null has no key "sise"; valid keys: size/],
    [['l2fwd', '--no-huge', '--file-prefix', `${prefix}b`, '--vdev', 'net_null0'], /odd number/],
    [['l2fwd', '--no-huge', '-l', 'x'], /-l: bad core list "x"/],
    [['pktgen', '--no-huge', '--', '--size', '9'], /--size "9": expected a whole number from 42 to 9018/],
  ];
  for (const [args, re] of cases) {
    const r = await runCli(args);
    t.equal(r.code, 2, `exit 2 for ${args.join(' ')}`);
    t.match(r.stderr, re, args.join(' '));
  }
  const h = await runCli(['l2fwd', '--help']);
  t.equal(h.code, 0);
  t.match(h.stdout, /--no-mac-updating/);
  t.match(h.stdout, /--vdev/);
});

t.test('tspmd pktgen -> net_ring loopback: every packet counted, valid checksums', async (t) => {
  const r = await runCli(['pktgen', '--no-huge', '--file-prefix', `${prefix}p`, '-l', '0-1', '--vdev', 'net_ring0', '--', '--tx-port', '0', '--rx-port', '0', '--count', '100000', '--flows', '16', '--json']);
  t.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.equal(s.app, 'pktgen');
  t.equal(s.sent, 100000);
  t.equal(s.received, 100000, 'all sent packets came back through the loopback ring');
  t.equal(s.ports[0].opackets, 100000);
  t.equal(s.ports[0].ipackets, 100000);
  t.equal(s.mbufs_in_use_after_stop, 0);
});
