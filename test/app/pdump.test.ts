/**
 * tspmd pdump against a running tspmd l2fwd: a capture taken while the app forwards has the frames
 * the app saw (bytes as in the file it replays; with live pings, exactly the pings, in the same bytes
 * as the app's own TX file), tshark reads what pdump wrote, one pdump at a time, clear errors when
 * there is no app or no capture region. The live-ping part needs root (veth, netns).
 */
import t, { type Test } from 'tap';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, CHILD_ENV, runCli, killChildren } from '../cli.js';
import { PcapWriter, readCaptureFile, capturedPacket } from '../../lib/pcap/pcap.js';
import { buildUdpFrame } from '../../lib/net/packet.js';
import { sh } from '../../lib/netns/topology.js';

const needRoot = process.getuid?.() === 0 ? false : 'needs root: veth pairs and network namespaces';
let haveTshark = true;
try { execFileSync('sh', ['-c', 'command -v tshark && command -v tcpdump'], { stdio: 'ignore' }); } catch { haveTshark = false; }
const needTools = haveTshark ? false : 'needs tshark and tcpdump (apt-get install tshark tcpdump)';

const tag = `tsp${process.pid}pd`;
const dir = `/tmp/${tag}`;
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const children = new Set<ChildProcess>();
t.teardown(async () => {
  await killChildren(children);
  rmSync(dir, { recursive: true, force: true });
});

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** Start `tspmd l2fwd ...`; resolves once its lcores forward (a line "lcore N: RX port" and a second more). */
async function startApp(args: string[], env: NodeJS.ProcessEnv = CHILD_ENV): Promise<{ child: ChildProcess; out: () => string; done: Promise<number> }> {
  const child = spawn(process.execPath, [...process.execArgv, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  children.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const done = new Promise<number>((r) => child.on('exit', (c) => r(c ?? 1)));
  const deadline = Date.now() + 60000;
  while (!/lcore \d+: RX port/.test(out)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`l2fwd did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 1000));
  return { child, out: () => out, done };
}

/** Frames to replay: UDP frames of several sizes. */
function replayFile(path: string): Uint8Array[] {
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 16; i++) frames.push(buildUdpFrame({ dstMac: [2, 0, 0, 0, 0, 2], srcMac: [2, 0, 0, 0, 0, 1], srcIp: 0x0a000001, dstIp: 0x0a000002, srcPort: 1000 + i, dstPort: 9, size: 60 + i * 37 }));
  const w = new PcapWriter(path);
  for (const f of frames) w.write(f, 0, f.length, 1, 0);
  w.close();
  return frames;
}

t.test('pdump captures a running l2fwd: frames as the app saw them, tshark reads the file, one pdump at a time', { skip: needTools, timeout: 300000 }, async (t) => {
  const a = join(dir, 'replay.pcap'), cap = join(dir, 'cap.pcap');
  const frames = replayFile(a);
  const prefix = `${tag}a`;
  const app = await startApp(['l2fwd', '--no-huge', '--file-prefix', prefix, '--vdev', `net_pcap0,rx_pcap=${a},infinite_rx=1`, '--vdev', 'net_pcap1', '--', '-p', '0x3', '--no-mac-updating', '-T', '0', '--duration', '300']);
  // The first pdump holds the capture (port 1's RX: net_pcap1 receives nothing) until SIGINT: under
  // load a pdump's start-up alone can take seconds, so the second starts only once the first has
  // attached, and the first ends when the second is done.
  let firstChild: ChildProcess | null = null, firstOut = '';
  const first = runCli(['pdump', '--file-prefix', prefix, '--port', '1', '--dir', 'rx', '--out', join(dir, 'idle.pcap')], {
    onSpawn: (c) => { firstChild = c; c.stdout!.on('data', (d: Buffer) => { firstOut += d.toString(); }); },
  });
  const deadline = Date.now() + 60000;
  while (!/capturing port/.test(firstOut) && firstChild!.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.match(firstOut, /capturing port 1 rx/, 'the first pdump attached');
  const second = await runCli(['pdump', '--file-prefix', prefix, '--port', '0', '--out', join(dir, 'second.pcap'), '--duration', '1']);
  t.equal(second.code, 1, 'a second pdump on the same app is refused');
  t.match(second.stderr, /already being captured by pdump pid \d+/);
  firstChild!.kill('SIGINT');
  const idle = await first;
  t.equal(idle.code, 0, `the first pdump exits 0 at SIGINT ${idle.stderr}`);

  // The capture itself is bounded by --count: a quiet machine forwards millions of frames a
  // second, and a file of millions of frames is more than the checks below need.
  const COUNT = 200_000;
  const r = await runCli(['pdump', '--file-prefix', prefix, '--port', '1', '--dir', 'tx', '--out', cap, '--count', String(COUNT), '--duration', '120']);
  t.equal(r.code, 0, `pdump exits 0 ${r.stderr}`);
  const m = /pdump: (\d+) packets written/.exec(r.stdout);
  t.ok(m, r.stdout);
  const written = Number(m?.[1] ?? 0);
  t.equal(written, COUNT, `--count ${COUNT}: exactly ${COUNT} frames written`);
  const tshark = execFileSync('tshark', ['-r', cap], { encoding: 'utf8', maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n').length;
  t.equal(tshark, written, 'tshark reads as many frames as pdump wrote');
  const ix = readCaptureFile(cap);
  const known = new Set(frames.map(hex));
  let bad = 0;
  for (let i = 0; i < ix.count; i++) if (!known.has(hex(capturedPacket(ix, i)))) bad++;
  t.equal(bad, 0, 'every captured frame is one of the replayed frames, byte for byte');
  // Frames come in file order, so consecutive ones follow each other in the replay (ring drops aside).
  t.ok(ix.nanosecond, 'nanosecond pcap');

  // After the capture the app runs on undisturbed and a new pdump may attach.
  const again = await runCli(['pdump', '--file-prefix', prefix, '--port', '0', '--dir', 'rx', '--queue', '0', '--out', join(dir, 'again.pcap'), '--duration', '1']);
  t.equal(again.code, 0, `a later pdump works ${again.stderr}`);
  t.match(again.stdout, /pdump: [1-9]\d* packets written/);
  app.child.kill('SIGINT');
  t.equal(await app.done, 0, 'l2fwd ends normally after being captured');
});

t.test('pdump errors: no app, no capture region, bad options', { timeout: 300000 }, async (t) => {
  const none = await runCli(['pdump', '--file-prefix', `${tag}none`, '--port', '0', '--out', join(dir, 'x.pcap'), '--duration', '1']);
  t.equal(none.code, 1);
  t.match(none.stderr, /no tspmd app answers on .*dpdk_telemetry\.v2.*start the app with --file-prefix/);
  const usage = await runCli(['pdump', '--file-prefix', `${tag}none`, '--out', join(dir, 'x.pcap')]);
  t.equal(usage.code, 2);
  t.match(usage.stderr, /pdump needs --port N/);
  const dirBad = await runCli(['pdump', '--port', '0', '--out', 'x', '--dir', 'up']);
  t.match(dirBad.stderr, /--dir up: expected rx, tx or both/);

  const prefix = `${tag}b`;
  const a = join(dir, 'replay2.pcap');
  replayFile(a);
  const app = await startApp(['l2fwd', '--no-huge', '--file-prefix', prefix, '--vdev', `net_pcap0,rx_pcap=${a}`, '--vdev', 'net_pcap1', '--', '-p', '0x3', '-T', '0', '--duration', '300'],
    { ...CHILD_ENV, TSPMD_PDUMP: '0' });
  const off = await runCli(['pdump', '--file-prefix', prefix, '--port', '0', '--out', join(dir, 'y.pcap'), '--duration', '1']);
  t.equal(off.code, 1);
  t.match(off.stderr, /has no capture region .*started with TSPMD_PDUMP=0/);
  app.child.kill('SIGINT');
  t.equal(await app.done, 0);
});

/** Frames of a pcap as tcpdump prints them (hex, link header included). */
function tcpdumpFrames(file: string, filter: string[]): string[] {
  const out: string[] = [];
  for (const l of execFileSync('tcpdump', ['-r', file, '-nn', '-xx', ...filter], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')) {
    if (l.startsWith('\t0x')) out[out.length - 1] += l.replace(/^\t0x[0-9a-f]+:\s*/, '').replace(/\s+/g, '');
    else if (l.trim() !== '') out.push('');
  }
  return out;
}

t.test('pdump of live pings: exactly the pings, in the bytes the app forwarded', { skip: needRoot || needTools, timeout: 300000 }, async (t: Test) => {
  const ns = `${tag}n`, host = `${tag}h`, peer = `${tag}p`;
  t.teardown(() => {
    try { sh(['ip', 'link', 'del', host]); } catch { /* gone */ }
    try { sh(['ip', 'netns', 'del', ns]); } catch { /* gone */ }
  });
  sh(['ip', 'netns', 'add', ns]);
  sh(['ip', 'link', 'add', host, 'type', 'veth', 'peer', 'name', peer, 'netns', ns]);
  try { sh(['sysctl', '-qw', `net.ipv6.conf.${host}.disable_ipv6=1`]); } catch { /* no IPv6 */ }
  sh(['ip', 'link', 'set', host, 'up']);
  sh(['ip', '-n', ns, 'addr', 'add', '10.214.3.2/24', 'dev', peer]);
  sh(['ip', '-n', ns, 'link', 'set', peer, 'up']);
  sh(['ip', '-n', ns, 'neigh', 'add', '10.214.3.1', 'lladdr', '02:00:00:00:aa:01', 'dev', peer]);
  const b = join(dir, 'fwd.pcap'), cap0 = join(dir, 'ping-rx.pcap'), cap1 = join(dir, 'ping-tx.pcap');
  const prefix = `${tag}c`;
  const app = await startApp(['l2fwd', '--no-huge', '--file-prefix', prefix, '--vdev', `net_pcap0,rx_iface=${host}`, '--vdev', `net_pcap1,tx_pcap=${b}`, '--', '-p', '0x3', '--no-mac-updating', '-T', '0', '--duration', '300']);
  const icmp = ['icmp'];
  for (const [port, dirn, file, count] of [[0, 'rx', cap0, 5], [1, 'tx', cap1, 7]] as const) {
    const pd = spawn(process.execPath, [...process.execArgv, CLI, 'pdump', '--file-prefix', prefix, '--port', String(port), '--dir', dirn, '--out', file, '--duration', '6'], { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
    children.add(pd);
    let out = '';
    pd.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    pd.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
    const deadline = Date.now() + 30000;
    while (!/capturing port/.test(out) && pd.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    t.match(out, /capturing port/, `pdump ${port} ${dirn} attached`);
    // Nobody answers (the host side has no address): ping exits 1, the requests went out all the same.
    sh(['sh', '-c', `ip netns exec ${ns} ping -c ${count} -i 0.2 -W 0.1 -p aa55 10.214.3.1 >/dev/null || true`], 20000);
    const code = await new Promise<number>((r) => pd.on('exit', (c) => r(c ?? 1)));
    t.equal(code, 0, `pdump exits 0 ${out}`);
    const pings = tcpdumpFrames(file, icmp);
    t.equal(pings.length, count, `${file}: the ${count} echo requests, as tcpdump reads them`);
  }
  app.child.kill('SIGINT');
  t.equal(await app.done, 0);
  const forwarded = tcpdumpFrames(b, icmp);
  t.equal(forwarded.length, 12, 'the app forwarded 12 pings into its TX file');
  t.same([...tcpdumpFrames(cap0, icmp), ...tcpdumpFrames(cap1, icmp)], forwarded, 'the captures hold the same bytes as the frames the app forwarded');
});
