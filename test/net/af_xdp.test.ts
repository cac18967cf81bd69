/**
 * net_af_xdp for real: two network namespaces joined by `tspmd l2fwd` on two net_af_xdp ports over
 * the host-side ends of two veth pairs, in native XDP mode, in copy mode forced, and in generic
 * mode: ping crosses it, 8 MB of TCP each way arrive with equal SHA-256, every mbuf is back in its
 * pool after stop and the lcores collect no garbage after warm-up. Two queues spread flows over two
 * sockets; the private-UMEM fallback and the TX copy of another pool's mbufs work; a SIGKILLed
 * l2fwd leaves no XDP program and the next start works at once; a second process on an interface
 * is told who holds it; bad input is one line and exit 2. Needs root.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import '../../drivers/index.js';
import { sh, type Topology } from '../../lib/netns/topology.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue, openTxQueue } from '../../lib/ethdev/ethdev.js';
import { createXskMap, attachXskRedirect } from '../../src/os/bpf.js';
import { ifNameToIndex, close as closeFd } from '../../src/os/libc.js';
import { pktmbufPoolCreate, pktmbufFreeBulk, pktmbufAllocBulk, writePacket, readPacket } from '../../lib/mempool/mbuf.js';
import { buildUdpFrame } from '../../lib/net/packet.js';
import { parseMac } from '../../lib/net/mac.js';
import type { AfXdpPort } from '../../drivers/net/af_xdp/af_xdp.js';
import { CLI, CHILD_ENV, runCli, removeRunDir } from '../cli.js';
import { assertForwarderNoAlloc, type ForwarderGcSummary } from '../alloc.js';
import { pollQueues, run, topology } from './netdev-test.js';

const PEER = fileURLToPath(new URL('./tcp-peer.mjs', import.meta.url));
const root = process.getuid?.() === 0;
const needRoot = root ? false : 'needs root: network namespaces, veth pairs, AF_XDP sockets and an XDP program';

/** The XDP program line of `ip -d link show IF` ("prog/xdp id N name tspmd_xsk ..."), or '' when it has none. */
function xdpProg(iface: string): string {
  if (!existsSync(`/sys/class/net/${iface}`)) return '';
  return /prog\/xdp.*$/m.exec(sh(['ip', '-d', 'link', 'show', iface]))?.[0] ?? '';
}

interface L2fwd {
  child: ChildProcess;
  args: string[];
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** Start `tspmd l2fwd` on two af_xdp ports over the topology's host ends; resolves once a ping crosses it. */
async function startL2fwd(t: { teardown(fn: () => void): void }, topo: Topology, devargs = '', extra: string[] = []): Promise<L2fwd> {
  const args = ['l2fwd', '--no-huge', '--file-prefix', `${topo.prefix}f`, '-l', '0-1',
    '--vdev', `net_af_xdp0,iface=${topo.hostA}${devargs}`, '--vdev', `net_af_xdp1,iface=${topo.hostB}${devargs}`, '--', '--json', '-p', '0x3', ...extra];
  const child = spawn(process.execPath, [...process.execArgv, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...CHILD_ENV, TSPMD_LOG_LEVEL: 'info' } });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); removeRunDir(args); });
  let stdout = '', stderr = '';
  child.stdout!.on('data', (d: Buffer) => { stdout += d; });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d;
      if ((stderr.match(/^lcore \d+: RX port/gm) ?? []).length >= 2) resolve();
    });
    child.on('exit', (code) => reject(new Error(`l2fwd exited early (${code}): ${stderr}`)));
  });
  // "lcore N: RX port" comes before the worker has loaded its modules: wait until the path answers.
  for (const t0 = Date.now(); Date.now() - t0 < 60000;) {
    if ((await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '1', '-W', '1', topo.ipB])).code === 0) break;
  }
  return { child, args, done: done.then((r) => ({ ...r, stderr })) };
}

let tcpPort = 20000 + (process.pid % 10000);

/** Send mb MB by TCP from (fromNs) to (toNs, toIp); returns what the client sent and what the server received ("<bytes> <sha256>"). */
async function tcp(t: { teardown(fn: () => void): void }, fromNs: string, toNs: string, toIp: string, mb: number): Promise<{ sent: string; received: string }> {
  const port = String(tcpPort++);
  const server = spawn('ip', ['netns', 'exec', toNs, process.execPath, PEER, 'server', toIp, port], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { if (server.exitCode === null) server.kill('SIGKILL'); });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    server.stdout!.on('data', (d: Buffer) => { out += d; if (out.includes('listening')) resolve(); });
    server.on('exit', () => reject(new Error(`TCP server exited: ${out}`)));
  });
  const serverDone = new Promise<string>((resolve) => server.on('exit', () => resolve(out)));
  const client = await run('ip', ['netns', 'exec', fromNs, process.execPath, PEER, 'client', toIp, port, String(mb)]);
  const received = (await serverDone).split('\n').find((l) => /^\d+ [0-9a-f]{64}$/.test(l)) ?? `(server: ${out.trim()})`;
  return { sent: client.code === 0 ? client.stdout.trim() : `(client failed: ${client.stderr.trim()})`, received };
}

/** Ping and 8 MB of TCP each way through a running l2fwd, then SIGINT: the summary's checks. */
async function forwardAndStop(t: Test, topo: Topology, fwd: L2fwd, what: string, beforeStop?: () => Promise<void>): Promise<Record<string, unknown>> {
  const ping = await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '5', '-i', '0.2', '-W', '2', topo.ipB]);
  t.equal(ping.code, 0, `${what}: ping from A to B through the forwarder`);
  t.match(ping.stdout, /5 packets transmitted, 5 received/, `${what}: every reply came back`);
  const ab = await tcp(t, topo.nsA, topo.nsB, topo.ipB, 8);
  t.equal(ab.received, ab.sent, `${what}: 8 MB from A to B arrived intact (same length and SHA-256)`);
  const ba = await tcp(t, topo.nsB, topo.nsA, topo.ipA, 8);
  t.equal(ba.received, ba.sent, `${what}: 8 MB from B to A arrived intact`);
  if (beforeStop) await beforeStop();
  fwd.child.kill('SIGINT');
  const r = await fwd.done;
  t.equal(r.code, 0, `${what}: l2fwd exits cleanly on SIGINT${r.code === 0 ? '' : `: ${r.stderr.slice(-400)}`}`);
  const s = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown> & ForwarderGcSummary & { ports: Array<Record<string, number>> };
  const [p0, p1] = s.ports;
  t.ok(p0.ipackets > 5000 && p1.ipackets > 5000, `${what}: both ports forwarded (${p0.ipackets} and ${p1.ipackets} packets received)`);
  t.equal(p0.opackets + p0.oerrors, p1.ipackets - p1.dropped, `${what}: port 0 sent what port 1 received`);
  t.equal(p1.opackets + p1.oerrors, p0.ipackets - p0.dropped, `${what}: port 1 sent what port 0 received`);
  t.equal(s.mbufs_in_use_after_stop, 0, `${what}: every mbuf back in its pool after stop`);
  assertForwarderNoAlloc(t, s, what);
  for (const i of [topo.hostA, topo.hostB]) t.equal(xdpProg(i), '', `${what}: no XDP program left on ${i} after the exit`);
  return s;
}

t.test('l2fwd on two net_af_xdp ports (native XDP) joins two namespaces: ping, 8 MB TCP each way, no copy between UMEM and mbufs; a second process on the interface is told who holds it', { skip: needRoot, timeout: 120000 }, async (t) => {
  const topo = topology(t);
  const fwd = await startL2fwd(t, topo, ',busy_budget=64'); // busy polling (the default is off)
  t.match(xdpProg(topo.hostA), /^prog\/xdp id \d+ name tspmd_xsk/, 'ip -d link show: tspmd\'s program on the A-side end');
  t.match(xdpProg(topo.hostB), /^prog\/xdp id \d+ name tspmd_xsk/, 'and on the B-side end');
  const second = await runCli(['l2fwd', '--no-huge', '--file-prefix', `${topo.prefix}s`, '-l', '0-1', '--vdev', `net_af_xdp0,iface=${topo.hostA}`, '--', '-p', '0x1', '--duration', '1']);
  t.equal(second.code, 2, 'a second process on the interface exits 2');
  t.match(second.stderr, new RegExp(`interface ${topo.hostA} is already in use by tspmd process ${fwd.child.pid} \\(.*\\) for port net_af_xdp0`), `the error names the holder: ${second.stderr.trim()}`);
  t.equal(second.stderr.trim().split('\n').length, 1, 'in one line');
  t.match(xdpProg(topo.hostA), /tspmd_xsk/, 'the first keeps its program');
  await forwardAndStop(t, topo, fwd, 'native');
  const log = (await fwd.done).stderr;
  t.match(log, /net_af_xdp0: 1 queue\(s\) on \S+ .*XDP program \d+ \(native\), bind copy, UMEM over mempool "l2fwd_pool" \(frames land in mbufs, no copy\)/, 'the log says: native XDP, copy bind (veth), UMEM over the mempool');
  t.notMatch(log, /private UMEM/, 'no fallback');
});

t.test('mode=generic, then SIGKILL: no XDP program or tsp file left; the next start (force_copy=1, --rx-mode interrupt) works at once, the same, and stops cleanly after an interface was deleted under it', { skip: needRoot, timeout: 150000 }, async (t) => {
  const topo = topology(t);
  const tmpBefore = new Set(readdirSync(tmpdir()).filter((f) => f.startsWith('tsp')));
  const generic = await startL2fwd(t, topo, ',mode=generic,busy_budget=0');
  t.match(sh(['ip', 'link', 'show', topo.hostA]), /xdpgeneric/, 'mode=generic: the program is attached in generic (SKB) mode');
  t.match(xdpProg(topo.hostA), /tspmd_xsk/, 'tspmd\'s');
  const ping = await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '3', '-i', '0.2', '-W', '2', topo.ipB]);
  t.equal(ping.code, 0, 'generic: ping crosses');
  const ab = await tcp(t, topo.nsA, topo.nsB, topo.ipB, 8);
  t.equal(ab.received, ab.sent, 'generic: 8 MB from A to B arrived intact');
  generic.child.kill('SIGKILL');
  await generic.done;
  removeRunDir(generic.args);
  // The kernel detaches a BPF link when its last fd closes, during the process's exit.
  for (const t0 = Date.now(); Date.now() - t0 < 5000 && (xdpProg(topo.hostA) !== '' || xdpProg(topo.hostB) !== '');) await new Promise((r) => setTimeout(r, 50));
  t.equal(xdpProg(topo.hostA), '', 'after SIGKILL: no XDP program on the A-side end (ip -d link show)');
  t.equal(xdpProg(topo.hostB), '', 'nor on the B-side end');
  const left = readdirSync(tmpdir()).filter((f) => f.startsWith('tsp') && !tmpBefore.has(f));
  t.same(left, [], 'no tsp-named file left in the temporary directory');
  const next = await startL2fwd(t, topo, ',force_copy=1', ['--rx-mode', 'interrupt']);
  t.pass('the next l2fwd started and forwards a ping at once');
  const s = await forwardAndStop(t, topo, next, 'force_copy=1', async () => {
    // The B-side end deleted under the forwarder (its socket unbound by the kernel, its link gone).
    sh(['ip', 'link', 'del', topo.hostB]);
    await run('ip', ['netns', 'exec', topo.nsA, 'ping', '-c', '3', '-i', '0.2', '-W', '1', topo.ipB]);
    t.equal(next.child.exitCode, null, 'l2fwd keeps running after the B-side interface was deleted');
  });
  t.ok((s.rx_interrupts as number) > 0 && (s.lcore_wakeups as number) > 0, `Rx interrupts woke the sleeping lcore (${s.rx_interrupts} interrupts, ${s.lcore_wakeups} wake-ups in ${s.lcore_sleeps} sleeps)`);
  t.match((await next.done).stderr, /net_af_xdp0: .*bind copy, UMEM over mempool/, 'copy bind, UMEM over the mempool');
});

t.test('bad input: a clear error naming it; exit 2 (1 without a capability or the memlock limit)', { skip: needRoot, timeout: 90000 }, async (t) => {
  const topo = topology(t);
  const eal = new Eal({ noHuge: true, filePrefix: `${topo.prefix}e`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const cases: Array<[string, string, RegExp]> = [
    ['a missing interface', 'net_af_xdp0,iface=tspnosuch0', /interface "tspnosuch0" does not exist/],
    ['a queue past the interface\'s count', `net_af_xdp0,iface=${topo.hostA},queue_count=2`, new RegExp(`queue 1 \\(start_queue=0, queue_count=2\\) is past what interface ${topo.hostA} has: 1 RX and 1 TX queue`)],
    ['start_queue past it', `net_af_xdp1,iface=${topo.hostA},start_queue=3`, /queue 3 .* is past what interface/],
    ['a bad mode', `net_af_xdp0,iface=${topo.hostA},mode=fast`, /mode=fast must be one of native, generic/],
    ['a bad queue_count', `net_af_xdp0,iface=${topo.hostA},queue_count=0`, /queue_count=0 must be a whole number from 1 to 16/],
    ['an unknown key', `net_af_xdp0,iface=${topo.hostA},xdp_prog=x.o`, /net_af_xdp has no key "xdp_prog"/],
    ['no iface', 'net_af_xdp0', /iface=IFNAME is required/],
  ];
  for (const [what, spec, re] of cases) await t.rejects(probeVdevs(eal, [spec]), { name: 'UsageError', message: re }, what);
  t.equal(xdpProg(topo.hostA), '', 'nothing was attached');
  // An interface that carries another XDP program (here: tspmd's own, attached by this test).
  const map = createXskMap(1);
  const other = attachXskRedirect({ ifname: topo.hostB, ifindex: ifNameToIndex(topo.hostB), mapFd: map, mode: 'native' });
  t.teardown(() => { other.close(); closeFd(map); });
  const [busy] = await probeVdevs(eal, [`net_af_xdp2,iface=${topo.hostB},busy_budget=0`]);
  const pool = pktmbufPoolCreate(eal.memory, 'xdpbusy', 1023, { cacheSize: 0 });
  busy.configure({ rxQueues: 1, txQueues: 1 });
  busy.rxQueueSetup(0, 256, pool);
  busy.txQueueSetup(0, 256);
  t.throws(() => busy.start(), { name: 'UsageError', message: new RegExp(`interface ${topo.hostB} already carries XDP program id ${other.progId} "tspmd_xsk" \\(native\\).*held by BPF link \\d+ of process ${process.pid}`) }, 'an interface with another XDP program: the error names the program and who holds it');
  t.equal(pool.inUseCount(), 0, 'the failed start gave every mbuf back');
  busy.close();
  // Through the command: exit 2 for a bad argument; exit 1 for root without CAP_BPF (and CAP_SYS_ADMIN, which stands in for it).
  // And without CAP_IPC_LOCK under a 1 MiB RLIMIT_MEMLOCK (soft and hard): the UMEM cannot be locked.
  const [missing, noBpf, memlock] = await Promise.all([
    runCli(['l2fwd', '--no-huge', '--file-prefix', `${topo.prefix}m`, '--vdev', 'net_af_xdp0,iface=tspnosuch0']),
    runCli(['l2fwd', '--no-huge', '--file-prefix', `${topo.prefix}c`, '--vdev', `net_af_xdp0,iface=${topo.hostA}`],
      { wrap: ['setpriv', '--bounding-set=-bpf,-sys_admin', '--inh-caps=-bpf,-sys_admin'] }),
    runCli(['pktgen', '--no-huge', '--file-prefix', `${topo.prefix}l`, '-l', '0-1', '--vdev', `net_af_xdp0,iface=${topo.hostA}`, '--', '--duration', '1'],
      { wrap: ['prlimit', '--memlock=1048576:1048576', 'setpriv', '--bounding-set=-ipc_lock', '--inh-caps=-ipc_lock'] }),
  ]);
  t.equal(missing.code, 2, 'a missing interface: exit 2');
  t.match(missing.stderr, /^tspmd l2fwd: --vdev net_af_xdp0: interface "tspnosuch0" does not exist[^\n]*\n$/, `in one line: ${missing.stderr.trim()}`);
  t.equal(noBpf.code, 1, 'exit 1 without CAP_BPF');
  t.match(noBpf.stderr, /net_af_xdp needs CAP_BPF \(loading the XDP program/, 'the error names the capability');
  t.equal(memlock.code, 1, 'exit 1 without CAP_IPC_LOCK and too low a memlock limit');
  t.match(memlock.stderr, /the kernel refused to lock \d+ KiB of UMEM \(ENOBUFS\): it needs CAP_IPC_LOCK, or an RLIMIT_MEMLOCK that covers every UMEM \(now 1024 KiB, hard limit 1024 KiB\)/, 'the error names the limit and its value');
  t.equal(xdpProg(topo.hostA), '', 'still nothing attached');
});

/** An EAL and a started one-port net_af_xdp in this process (for tests that poll queues themselves). */
async function inProcessPort(t: { teardown(fn: () => void): void }, topo: Topology, devargs: string, queues: number, dataRoom = 2048) {
  const eal = new Eal({ noHuge: true, filePrefix: `${topo.prefix}p`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const [dev] = await probeVdevs(eal, [`net_af_xdp0,iface=${topo.hostA}${devargs}`]);
  const port = dev as AfXdpPort;
  const pool = pktmbufPoolCreate(eal.memory, 'xdpq', 4095, { cacheSize: 64, dataRoom });
  port.configure({ rxQueues: queues, txQueues: queues });
  for (let q = 0; q < queues; q++) { port.rxQueueSetup(q, 512, pool); port.txQueueSetup(q, 512); }
  port.start();
  t.teardown(() => port.close());
  return { eal, port, pool };
}

/** A sender in namespace A: `flows` UDP flows (source ports 30000+) of `each` datagrams to B's address, through a static neighbour entry (no ARP). */
function udpFlows(topo: Topology, flows: number, each: number): Promise<{ code: number; stdout: string; stderr: string }> {
  topo.exec(topo.nsA, ['ip', 'neigh', 'replace', topo.ipB, 'lladdr', '02:00:00:00:00:bb', 'dev', topo.ifA]);
  const send = `const d=require('dgram');let n=0;const go=async()=>{for(let f=0;f<${flows};f++){const s=d.createSocket('udp4');await new Promise(r=>s.bind(30000+f,'${topo.ipA}',r));for(let i=0;i<${each};i++){await new Promise(r=>s.send(Buffer.alloc(32),9,'${topo.ipB}',r));n++}s.close()}console.log(n)};go()`;
  return run('ip', ['netns', 'exec', topo.nsA, process.execPath, '-e', send]);
}

/** rx_packets of namespace A's veth end. */
const rxA = (topo: Topology): number => Number(topo.exec(topo.nsA, ['cat', `/sys/class/net/${topo.ifA}/statistics/rx_packets`]).trim());

/** Frames from this port to namespace A's end (UDP to A's address), in mbufs of pool. */
function framesToA(topo: Topology, pool: ReturnType<typeof pktmbufPoolCreate>, n: number, srcMac: number[]): Uint32Array {
  const ip = (s: string): number => s.split('.').reduce((a, b) => (a << 8) | Number(b), 0) >>> 0;
  const frame = buildUdpFrame({ dstMac: parseMac(topo.exec(topo.nsA, ['cat', `/sys/class/net/${topo.ifA}/address`]).trim()), srcMac, srcIp: ip(topo.ipB), dstIp: ip(topo.ipA), srcPort: 9, dstPort: 9, size: 100 });
  const burst = new Uint32Array(n);
  if (!pktmbufAllocBulk(pool, burst, n)) throw new Error('pool empty');
  for (const m of burst) writePacket(m, frame);
  return burst;
}

t.test('queue_count=2 on veths with two queues: flows spread over both sockets, counted per queue, nothing lost unseen', { skip: needRoot, timeout: 60000 }, async (t) => {
  const topo = topology(t, { queues: 2 });
  const { eal, port, pool } = await inProcessPort(t, topo, ',queue_count=2,busy_budget=0', 2);
  t.same(port.xdpStatus()?.queues, [0, 1], 'sockets on queues 0 and 1');
  t.equal(port.xdpStatus()?.umem, 'mempool', 'the UMEM is the mempool\'s memory');
  const data = port.data();
  const rxq = [await openRxQueue(data, 0), await openRxQueue(data, 1)];
  const txq = [await openTxQueue(data, 0), await openTxQueue(data, 1)];
  const sender = udpFlows(topo, 64, 20);
  let sent: string | null = null;
  void sender.then((r) => { sent = r.stdout.trim(); });
  const got = await pollQueues(rxq, (g) => sent !== null && g[0] + g[1] + port.stats().imissed >= 1280);
  t.equal(sent, '1280', 'the sender sent 1280 datagrams');
  const s = port.stats();
  t.equal(got[0] + got[1] + s.imissed, 1280, `what the queues got (${got[0]} + ${got[1]}) and the kernel's drops (${s.imissed}) add up to what was sent`);
  t.ok(got[0] > 0 && got[1] > 0, 'each queue got some flows');
  t.same(s.q_ipackets, got, 'per-queue counters');
  // TX on each queue: from the port's pool (sent where it lies) and from another pool (copied).
  const other = pktmbufPoolCreate(eal.memory, 'xdpother', 255, { cacheSize: 0 });
  const before = rxA(topo);
  const mine = framesToA(topo, pool, 10, port.macAddr());
  t.equal(txq[0].txBurst(mine, 10, 0), 10, 'queue 0 takes 10 frames of the port\'s pool');
  const foreign = framesToA(topo, other, 10, port.macAddr());
  t.equal(txq[1].txBurst(foreign, 10, 0), 10, 'queue 1 takes 10 frames of another pool');
  for (const t0 = Date.now(); Date.now() - t0 < 5000 && rxA(topo) - before < 20;) await new Promise((r) => setTimeout(r, 20));
  t.equal(rxA(topo) - before, 20, 'namespace A received all 20');
  const x = port.xstats();
  t.same(port.stats().q_opackets, [10, 10], 'per-queue TX counters');
  t.equal(x.q0_tx_copies, 0, 'the port\'s own mbufs were not copied');
  t.equal(x.q1_tx_copies, 10, 'the other pool\'s were, into the port\'s');
  t.equal(other.inUseCount(), 0, 'the other pool\'s mbufs went back at once');
  port.stop();
  t.equal(pool.inUseCount(), 0, 'after stop every mbuf is back: the fill rings\' and the TX ring\'s');
});

t.test('the private UMEM when the kernel refuses the mempool (4 KiB data room): one copy each way, told in log and info', { skip: needRoot, timeout: 60000 }, async (t) => {
  const topo = topology(t);
  const { port, pool } = await inProcessPort(t, topo, ',busy_budget=0', 1, 4096);
  const st = port.xdpStatus()!;
  t.equal(st.umem, 'private', 'a private UMEM');
  t.match(st.umemRefused, /EINVAL: its mbuf buffers are 4224 bytes, more than the 4096-byte page/, `the reason: ${st.umemRefused}`);
  t.ok(port.info().capabilities.includes('umem-private'), 'info() says so');
  const data = port.data();
  const rx = await openRxQueue(data, 0), tx = await openTxQueue(data, 0);
  const sender = udpFlows(topo, 4, 25);
  let sent: string | null = null;
  void sender.then((r) => { sent = r.stdout.trim(); });
  const burst = new Uint32Array(32), bytes = new Uint8Array(2048);
  let got = 0, good = 0;
  for (const deadline = Date.now() + 20000; (sent === null || got + port.stats().imissed < 100) && Date.now() < deadline;) {
    const n = rx.rxBurst(burst, 32);
    for (let i = 0; i < n; i++) {
      const len = readPacket(burst[i], bytes);
      // 14 + 20 + 8 + 32: to 02:00:00:00:00:bb, IPv4, UDP to port 9
      if (len === 74 && bytes[5] === 0xbb && bytes[12] === 0x08 && bytes[23] === 17 && bytes[37] === 9) good++;
    }
    got += n;
    pktmbufFreeBulk(burst, n, 0);
    await new Promise((r) => setImmediate(r));
  }
  t.equal(got, 100, 'RX: all 100 datagrams');
  t.equal(good, 100, 'each the frame that was sent');
  const before = rxA(topo);
  const out = framesToA(topo, pool, 20, port.macAddr());
  t.equal(tx.txBurst(out, 20, 0), 20, 'TX takes 20');
  for (const t0 = Date.now(); Date.now() - t0 < 5000 && rxA(topo) - before < 20;) await new Promise((r) => setTimeout(r, 20));
  t.equal(rxA(topo) - before, 20, 'namespace A received them');
  port.stop();
  t.equal(pool.inUseCount(), 0, 'every mbuf back in its pool');
});
