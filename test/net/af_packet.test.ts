/**
 * net_af_packet for real: two network namespaces joined by l2fwd (the tspmd command) on the
 * host-side ends of two veth pairs. ping crosses it, a TCP transfer of several MB arrives intact,
 * the port counters agree with the kernel's; bad input and faults (missing interface, no
 * CAP_NET_RAW, interface down, interface deleted while forwarding) are handled. Needs root.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import '../../drivers/index.js';
import { ifStat, sh, type Topology } from '../../lib/netns/topology.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate } from '../../lib/mempool/mbuf.js';
import { CLI, CHILD_ENV, runCli } from '../cli.js';
import { pollQueues, run, topology } from './netdev-test.js';

const PEER = fileURLToPath(new URL('./tcp-peer.mjs', import.meta.url));
const root = process.getuid?.() === 0;
const needRoot = root ? false : 'needs root: network namespaces, veth pairs and AF_PACKET sockets';

/** Start `tspmd l2fwd` on af_packet ports over the topology's host ends; resolves once it forwards. */
async function startL2fwd(topo: Topology, extra: string[] = []): Promise<{ child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }> }> {
  const child = spawn(process.execPath, [...process.execArgv, CLI, 'l2fwd', '--no-huge', '--file-prefix', `${topo.prefix}f`, '-l', '0-1',
    '--vdev', `net_af_packet0,iface=${topo.hostA}`, '--vdev', `net_af_packet1,iface=${topo.hostB}`, '--', '--no-mac-updating', '--json', ...extra],
  { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
  let stdout = '', stderr = '';
  child.stdout!.on('data', (d: Buffer) => { stdout += d; });
  const ready = new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d;
      if ((stderr.match(/^lcore \d+: RX port/gm) ?? []).length >= 2) resolve();
    });
    child.on('exit', (code) => reject(new Error(`l2fwd exited early (${code}): ${stderr}`)));
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
  await ready;
  await new Promise((r) => setTimeout(r, 300));
  return { child, done };
}

t.test('l2fwd on af_packet joins two namespaces: ping, TCP, counters', { skip: needRoot, timeout: 120000 }, async (t) => {
  const topo = topology(t);
  const before = { aRx: ifStat(topo.hostA, 'rx_packets'), bTx: ifStat(topo.hostB, 'tx_packets'), bRx: ifStat(topo.hostB, 'rx_packets'), aTx: ifStat(topo.hostA, 'tx_packets') };
  const { child, done } = await startL2fwd(topo);
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });

  // "lcore N: RX port" is printed before the worker has loaded its modules: wait until the path answers
  for (const t0 = Date.now(); Date.now() - t0 < 60000;) {
    if ((await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '1', '-W', '1', topo.ipB])).code === 0) break;
  }
  const ping = await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '5', '-i', '0.2', '-W', '2', topo.ipB]);
  t.equal(ping.code, 0, 'ping from A to B through the forwarder');
  t.match(ping.stdout, /5 packets transmitted, 5 received/);

  // TCP: 8 MB from A to B, checked end to end with SHA-256.
  const port = String(20000 + (process.pid % 20000));
  const server = spawn('ip', ['netns', 'exec', topo.nsB, process.execPath, PEER, 'server', topo.ipB, port], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { if (server.exitCode === null) server.kill('SIGKILL'); });
  let serverOut = '';
  await new Promise<void>((resolve, reject) => {
    server.stdout!.on('data', (d: Buffer) => { serverOut += d; if (serverOut.includes('listening')) resolve(); });
    server.on('exit', () => reject(new Error(`TCP server exited: ${serverOut}`)));
  });
  const serverDone = new Promise<string>((resolve) => server.on('exit', () => resolve(serverOut)));
  const client = await run('ip', ['netns', 'exec', topo.nsA, process.execPath, PEER, 'client', topo.ipB, port, '8']);
  t.equal(client.code, 0, `client: ${client.stderr}`);
  const received = (await serverDone).split('\n').find((l) => /^\d+ [0-9a-f]{64}$/.test(l));
  t.equal(received, client.stdout.trim(), '8 MB arrived intact (same length and SHA-256)');

  child.kill('SIGINT');
  const r = await done;
  t.equal(r.code, 0, 'l2fwd exits cleanly on SIGINT');
  const s = JSON.parse(r.stdout.trim().split('\n').pop()!);
  const [p0, p1] = s.ports;
  const kernel = {
    aRx: ifStat(topo.hostA, 'rx_packets') - before.aRx, bTx: ifStat(topo.hostB, 'tx_packets') - before.bTx,
    bRx: ifStat(topo.hostB, 'rx_packets') - before.bRx, aTx: ifStat(topo.hostA, 'tx_packets') - before.aTx,
  };
  t.ok(p0.ipackets > 5000, `port 0 received ${p0.ipackets} packets`);
  t.equal(p0.ipackets + p0.imissed, kernel.aRx, 'port 0 RX (+ kernel drops) = what the kernel received on the A-side veth');
  t.equal(p1.opackets - p1.oerrors, kernel.bTx, 'port 1 TX = what the kernel sent into namespace B');
  t.equal(p1.ipackets + p1.imissed, kernel.bRx, 'port 1 RX = what the kernel received on the B-side veth');
  t.equal(p0.opackets - p0.oerrors, kernel.aTx, 'port 0 TX = what the kernel sent into namespace A');
  t.equal(s.mbufs_in_use_after_stop, 0, 'every mbuf back in its pool');
});

t.test('bad input: missing interface, no CAP_NET_RAW', { skip: needRoot }, async (t) => {
  const missing = await runCli(['l2fwd', '--no-huge', '--file-prefix', `tspafm${process.pid}`, '--vdev', 'net_af_packet0,iface=tspnosuch0']);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /interface "tspnosuch0" does not exist/);
  const noIface = await runCli(['l2fwd', '--no-huge', '--file-prefix', `tspafm${process.pid}`, '--vdev', 'net_af_packet0']);
  t.equal(noIface.code, 2);
  t.match(noIface.stderr, /iface=IFNAME is required/);
  const unpriv = await runCli(['l2fwd', '--no-huge', '--file-prefix', `tspafu${process.pid}`, '--vdev', 'net_af_packet0,iface=lo'],
    { wrap: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'] });
  t.equal(unpriv.code, 1, 'exit 1 without CAP_NET_RAW');
  t.match(unpriv.stderr, /needs CAP_NET_RAW/);
});

t.test('interface down: link reported down, polling is harmless; up again: link up', { skip: needRoot }, async (t) => {
  const topo = topology(t);
  sh(['ip', 'link', 'set', topo.hostA, 'down']);
  const eal = new Eal({ noHuge: true, filePrefix: `${topo.prefix}d`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const [port] = await probeVdevs(eal, [`net_af_packet0,iface=${topo.hostA}`]);
  t.notOk(port.link().up, 'link down');
  const pool = pktmbufPoolCreate(eal.memory, 'afdown', 2047, { cacheSize: 32 });
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 512, pool);
  port.txQueueSetup(0, 512);
  port.start();
  const rx = await openRxQueue(port.data(), 0);
  const burst = new Uint32Array(32);
  t.equal(rx.rxBurst(burst, 32), 0, 'nothing to receive');
  sh(['ip', 'link', 'set', topo.hostA, 'up']);
  const t0 = Date.now();
  while (!port.link().up && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
  t.ok(port.link().up, 'link up again');
  port.stop();
  pool.flushCache();
  t.equal(pool.inUseCount(), 0);
});

t.test('interface deleted while forwarding: l2fwd keeps running, exits cleanly on SIGINT', { skip: needRoot, timeout: 60000 }, async (t) => {
  const topo = topology(t);
  const { child, done } = await startL2fwd(topo);
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '2', '-i', '0.2', '-W', '1', topo.ipB]);
  sh(['ip', 'link', 'del', topo.hostB]);
  // Traffic towards the vanished port: ARP requests from A.
  await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '3', '-i', '0.2', '-W', '1', topo.ipB]);
  await new Promise((r) => setTimeout(r, 500));
  t.equal(child.exitCode, null, 'still running');
  child.kill('SIGINT');
  const r = await done;
  t.equal(r.code, 0, `clean exit: ${r.stderr.slice(-500)}`);
  const s = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.equal(s.ports.length, 2, 'summary printed for both ports');
  t.equal(s.mbufs_in_use_after_stop, 0);
});

t.test('tspmd netns up/down builds and removes the topology', { skip: needRoot }, async (t) => {
  const prefix = `tsp${(process.pid % 46656).toString(36)}n`;
  t.teardown(() => { void runCli(['netns', 'down', '--prefix', prefix]); });
  const up = await runCli(['netns', 'up', '--prefix', prefix]);
  t.equal(up.code, 0, up.stderr);
  t.match(up.stdout, new RegExp(`net_af_packet0,iface=${prefix}a1`));
  t.match(up.stdout, new RegExp(`net_af_xdp0,iface=${prefix}a1 --vdev net_af_xdp1,iface=${prefix}b1`), 'and the af_xdp one');
  t.match(sh(['ip', '-d', 'link', 'show', `${prefix}a1`]), /numtxqueues 1 numrxqueues 1/, 'veth ends with one queue each way (native XDP wants the same count on both ends)');
  t.match(sh(['ip', 'netns', 'list']), new RegExp(`${prefix}A`));
  const down = await runCli(['netns', 'down', '--prefix', prefix]);
  t.equal(down.code, 0);
  t.notMatch(sh(['ip', 'netns', 'list']), new RegExp(`${prefix}[AB]`));
  const bad = await runCli(['netns', 'down']);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /needs --prefix/);
});

t.test('qpairs=2: PACKET_FANOUT spreads flows over both queues, nothing lost', { skip: needRoot, timeout: 60000 }, async (t) => {
  const topo = topology(t);
  const eal = new Eal({ noHuge: true, filePrefix: `${topo.prefix}q`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const [port] = await probeVdevs(eal, [`net_af_packet0,iface=${topo.hostA},qpairs=2,fanout_mode=hash`]);
  const pool = pktmbufPoolCreate(eal.memory, 'affan', 4095, { cacheSize: 64 });
  port.configure({ rxQueues: 2, txQueues: 2 });
  for (const q of [0, 1]) { port.rxQueueSetup(q, 512, pool); port.txQueueSetup(q, 512); }
  port.start();
  const rxq = [await openRxQueue(port.data(), 0), await openRxQueue(port.data(), 1)];
  // 64 UDP flows from A (a static neighbour entry: no ARP needed), 20 datagrams each.
  topo.exec(topo.nsA, ['ip', 'neigh', 'replace', topo.ipB, 'lladdr', '02:00:00:00:00:bb', 'dev', topo.ifA]);
  const send = `const d=require('dgram');let n=0;const go=async()=>{for(let f=0;f<64;f++){const s=d.createSocket('udp4');await new Promise(r=>s.bind(30000+f,'${topo.ipA}',r));for(let i=0;i<20;i++){await new Promise(r=>s.send(Buffer.alloc(32),9,'${topo.ipB}',r));n++}s.close()}console.log(n)};go()`;
  const before = ifStat(topo.hostA, 'rx_packets');
  // Poll while the sender runs: a 1 ms block timeout closes sparse blocks, so a stalled reader
  // would see the ring fill (the kernel's drops would then show as imissed).
  const sender = run('ip', ['netns', 'exec', topo.nsA, process.execPath, '-e', send]);
  let sent: string | null = null;
  void sender.then((r) => { sent = r.stdout.trim(); });
  const got = await pollQueues(rxq, (g) => sent !== null && g[0] + g[1] >= 1280);
  t.equal(sent, '1280', 'the sender sent 1280 datagrams');
  const kernel = ifStat(topo.hostA, 'rx_packets') - before;
  t.equal(port.stats().imissed, 0, 'no kernel drops');
  t.equal(got[0] + got[1], kernel, `both queues together got what the kernel received (${got[0]} + ${got[1]})`);
  t.ok(got[0] > 0 && got[1] > 0, 'each queue got some flows');
  const s = port.stats();
  t.same(s.q_ipackets, got, 'per-queue counters');
  port.stop();
  pool.flushCache();
  t.equal(pool.inUseCount(), 0);
});
