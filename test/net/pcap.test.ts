/**
 * net_pcap and lib/pcap against Wireshark's and tcpdump's own tools: files made by text2pcap,
 * editcap, tcpdump and dumpcap are read with the packet counts, lengths, timestamps and bytes tshark
 * sees; files written here open in tshark and tcpdump with the same; the l2fwd contract (a capture
 * in, the same frames out) holds; bad devargs and bad files fail with messages that say what is
 * wrong. Live captures on veths and iface= need root; the rest runs as any user.
 */
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue, openTxQueue } from '../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, writePacket, readPacket, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { buildUdpFrame } from '../../lib/net/packet.js';
import { sh, ifStat } from '../../lib/netns/topology.js';
import {
  PcapFormatError, PcapWriter, capturedPacket, parseCapture, readCaptureFile, PCAP_MAGIC_NS,
} from '../../lib/pcap/pcap.js';
import type { PcapPort } from '../../drivers/net/pcap/pcap.js';
import { runCli } from '../cli.js';
import { assertForwarderNoAlloc, type ForwarderGcSummary } from '../alloc.js';
import { text2pcap } from '../text2pcap.js';
import { undoAlways } from '../always.js';

const root = process.getuid?.() === 0;
const needRoot = root ? false : 'needs root: live captures on veths and AF_PACKET sockets need CAP_NET_ADMIN/CAP_NET_RAW';
const have = (cmd: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const tools = ['tshark', 'tcpdump', 'text2pcap', 'editcap', 'dumpcap'].filter((c) => !have(c));
const needTools = tools.length ? `needs ${tools.join(', ')} (apt-get install tshark tcpdump)` : false;

const tag = `tsp${process.pid}pc`;
const dir = `/tmp/${tag}`;
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
}

/** What tshark sees in a file: one [length, epoch seconds text] per frame. */
function tsharkFrames(file: string): Array<[number, string]> {
  return run('tshark', ['-r', file, '-T', 'fields', '-e', 'frame.len', '-e', 'frame.cap_len', '-e', 'frame.time_epoch'])
    .split('\n').filter((l) => l.trim() !== '').map((l) => {
      const [len, , ts] = l.split('\t');
      return [Number(len), ts];
    });
}

/** tcpdump's hex dump of every frame, link header included, without the summary lines (timestamps). */
function tcpdumpHex(file: string): string[] {
  return run('tcpdump', ['-r', file, '-nn', '-xx']).split('\n').filter((l) => l.startsWith('\t0x'));
}

/** Frames as tcpdump prints them, one hex string per frame. */
function tcpdumpFrames(file: string): string[] {
  const out: string[] = [];
  for (const l of run('tcpdump', ['-r', file, '-nn', '-xx']).split('\n')) {
    if (l.startsWith('\t0x')) out[out.length - 1] += l.replace(/^\t0x[0-9a-f]+:\s*/, '').replace(/\s+/g, '');
    else if (l.trim() !== '') out.push('');
  }
  return out;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const scratch = new Uint8Array(65536);
/** An mbuf's packet bytes as hex. */
const mbufHex = (m: number): string => hex(scratch.subarray(0, readPacket(m, scratch)));

/** Frames for text2pcap: an ARP broadcast, an IPv4/UDP frame, a 1514-byte frame. */
function sampleFrames(): Uint8Array[] {
  const a = [0x02, 0, 0, 0, 0, 0x0a], b = [0x02, 0, 0, 0, 0, 0x0b];
  const arp = new Uint8Array(42);
  arp.fill(0xff, 0, 6);
  arp.set(a, 6);
  arp.set([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1], 12);
  const frames: Uint8Array[] = [arp];
  for (const size of [60, 333, 1514]) frames.push(buildUdpFrame({ dstMac: b, srcMac: a, srcIp: 0x0a000001, dstIp: 0x0a000002, srcPort: 7, dstPort: 9, size }));
  return frames;
}

/** A classic pcap rewritten in the other byte order (header and record fields swapped). */
function swapPcap(src: Uint8Array): Uint8Array {
  const out = Uint8Array.from(src);
  const dv = new DataView(out.buffer), sv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const le = sv.getUint32(0, true) === 0xa1b2c3d4 || sv.getUint32(0, true) === PCAP_MAGIC_NS;
  dv.setUint32(0, sv.getUint32(0, le), !le);
  dv.setUint16(4, sv.getUint16(4, le), !le);
  dv.setUint16(6, sv.getUint16(6, le), !le);
  for (const o of [8, 12, 16, 20]) dv.setUint32(o, sv.getUint32(o, le), !le);
  for (let off = 24; off < src.length;) {
    const cap = sv.getUint32(off + 8, le);
    for (let k = 0; k < 16; k += 4) dv.setUint32(off + k, sv.getUint32(off + k, le), !le);
    off += 16 + cap;
  }
  return out;
}

/** Check an index against what tshark says of the file, and its frames against tcpdump's bytes. */
function sameAsTools(t: Test, file: string): void {
  const ix = readCaptureFile(file);
  const frames = tsharkFrames(file);
  t.equal(ix.count, frames.length, `${file}: ${frames.length} frames, as tshark counts`);
  t.same(Array.from(ix.origLen), frames.map((f) => f[0]), 'frame lengths as tshark sees them');
  t.same(Array.from({ length: ix.count }, (_, i) => `${ix.tsSec[i]}.${String(ix.tsNsec[i]).padStart(9, '0')}`), frames.map((f) => f[1]), 'timestamps to the nanosecond as tshark prints them');
  t.same(Array.from({ length: ix.count }, (_, i) => hex(capturedPacket(ix, i))), tcpdumpFrames(file), 'frame bytes as tcpdump dumps them');
}

t.test('reader: pcap and pcapng files made by text2pcap and editcap', { skip: needTools }, async (t) => {
  const frames = sampleFrames();
  const us = join(dir, 'us.pcap'), ng = join(dir, 'us.pcapng'), ns = join(dir, 'ns.pcap'), be = join(dir, 'be.pcap'), bens = join(dir, 'bens.pcap');
  const ngns = join(dir, 'ns.pcapng');
  text2pcap(frames, us, ['-F', 'pcap', '-t', '%Y-%m-%d %H:%M:%S.']);
  text2pcap(frames, ng, ['-F', 'pcapng']);
  run('editcap', ['-F', 'nsecpcap', us, ns]);
  run('editcap', ['-F', 'pcapng', ns, ngns]);
  writeFileSync(be, swapPcap(readFileSync(us)));
  writeFileSync(bens, swapPcap(readFileSync(ns)));
  for (const f of [us, ng, ns, ngns, be, bens]) sameAsTools(t, f);
  t.equal(readCaptureFile(us).format, 'pcap');
  t.equal(readCaptureFile(be).littleEndian, false, 'the swapped file is read as big endian');
  t.equal(readCaptureFile(bens).nanosecond, true);
  t.equal(readCaptureFile(ng).format, 'pcapng');
  t.same(hex(capturedPacket(readCaptureFile(ng), 3)), hex(frames[3]), 'the 1514-byte frame is the one given to text2pcap');
});

t.test('reader: pcapng skips blocks it does not know and honours if_tsresol', async (t) => {
  // SHB, IDB (tsresol 2^-10), a custom block (0x00000bad), an unknown one (0x42), one for local
  // use (0x80001234), an EPB, an SPB; all built by hand.
  const blocks: number[][] = [];
  const u32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
  const u16 = (v: number): number[] => [v & 0xff, v >>> 8];
  const block = (type: number, body: number[]): void => {
    while (body.length % 4) body.push(0);
    const len = body.length + 12;
    blocks.push([...u32(type), ...u32(len), ...body, ...u32(len)]);
  };
  block(0x0a0d0d0a, [...u32(0x1a2b3c4d), ...u16(1), ...u16(0), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  block(1, [...u16(1), 0, 0, ...u32(0), ...u16(9), ...u16(1), 0x8a, 0, 0, 0, ...u16(0), ...u16(0)]);
  block(0x00000bad, [1, 2, 3, 4, 5]);
  block(0x42, [9, 9]);
  block(0x80001234, [1, 2, 3, 4, 5, 6, 7, 8]);
  const frame = Array.from({ length: 60 }, (_, i) => i);
  block(6, [...u32(0), ...u32(0), ...u32(1024 * 5 + 512), ...u32(60), ...u32(60), ...frame]);
  block(3, [...u32(60), ...frame]);
  const file = join(dir, 'hand.pcapng');
  writeFileSync(file, Uint8Array.from(blocks.flat()));
  const ix = readCaptureFile(file);
  t.equal(ix.count, 2, 'EPB and SPB read, the unknown block skipped');
  t.equal(ix.tsSec[0], 5);
  t.equal(ix.tsNsec[0], 500000000, '5632 ticks of 2^-10 s = 5.5 s');
  t.same(Array.from(capturedPacket(ix, 1)), frame);
  // tshark lists a custom block as a record of its own: count its Ethernet frames.
  if (!needTools) t.equal(run('tshark', ['-r', file, '-Y', 'eth']).trim().split('\n').length, 2, 'tshark reads the same two Ethernet frames');
});

t.test('writer: PcapWriter files open in tshark and tcpdump with the same frames', { skip: needTools }, async (t) => {
  const frames = sampleFrames();
  const file = join(dir, 'w.pcap');
  const w = new PcapWriter(file, { bufferSize: 4096 }); // small: flushes along the way
  for (let i = 0; i < 200; i++) {
    const f = frames[i % frames.length];
    w.write(f, 0, f.length, 1700000000 + i, i * 1000 + 7);
  }
  w.close();
  t.equal(tsharkFrames(file).length, 200, 'tshark counts 200 frames');
  t.equal(run('capinfos', ['-t', file]).includes('nanosecond'), true, 'a nanosecond pcap');
  const dump = tcpdumpFrames(file);
  t.equal(dump.length, 200);
  t.same(dump.slice(0, 4), frames.map(hex), 'bytes as written');
  sameAsTools(t, file);
});

t.test('errors: missing file, not a capture, truncated, devargs', async (t) => {
  t.throws(() => readCaptureFile(join(dir, 'nope.pcap')), { message: /nope\.pcap: no such file/ });
  writeFileSync(join(dir, 'text.pcap'), 'hello, this is text\n');
  t.throws(() => readCaptureFile(join(dir, 'text.pcap')), { message: /text\.pcap: starts with 68 65 6c 6c: not a pcap or pcapng file/ });
  const w = new PcapWriter(join(dir, 'cut.pcap'));
  w.write(new Uint8Array(100), 0, 100, 1, 2);
  w.close();
  const cut = readFileSync(join(dir, 'cut.pcap')).subarray(0, 24 + 16 + 50);
  t.throws(() => parseCapture(cut, 'cut.pcap'), { message: /cut\.pcap: packet 1 at byte 24 claims 100 bytes; the file ends before/ });
  t.throws(() => parseCapture(new Uint8Array(2), 'tiny'), PcapFormatError);

  const eal = new Eal({ noHuge: true, filePrefix: `${tag}e`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const bad = async (spec: string, re: RegExp): Promise<void> => { await t.rejects(probeVdevs(eal, [spec]), { message: re }, spec); };
  await bad(`net_pcap0,rx_pcap=${dir}/nope.pcap`, /rx_pcap=.*nope\.pcap: no such file/);
  await bad(`net_pcap0,rx_pcap=${dir}/text.pcap`, /not a pcap or pcapng file/);
  await bad('net_pcap0,infinite_rx=1', /infinite_rx=1 needs rx_pcap=FILE/);
  await bad('net_pcap0,iface=lo,rx_iface=lo', /iface=lo cannot be combined with rx_iface= or tx_iface=/);
  await bad(`net_pcap0,rx_pcap=${dir}/cut.pcap,rx_iface=lo`, /rx_pcap=.* and rx_iface= both give RX a source/);
  await bad(`net_pcap0,tx_iface=${tag}nx`, /tx_iface=tsp\w+: no such interface/);
  await bad('net_pcap0,rx_pcapp=x', /net_pcap has no key "rx_pcapp"/);
});

t.test('port: RX to the end of the file then nothing, infinite_rx, TX file flushed at stop, appended after restart, mbufs back', async (t) => {
  const frames = sampleFrames();
  const src = join(dir, 'src.pcap'), out = join(dir, 'out.pcap');
  const w = new PcapWriter(src);
  for (let i = 0; i < 50; i++) w.write(frames[i % 4], 0, frames[i % 4].length, 1, i);
  w.close();
  const eal = new Eal({ noHuge: true, filePrefix: `${tag}p`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const [a, b, c] = await probeVdevs(eal, [`net_pcap0,rx_pcap=${src},tx_pcap=${out}`, `net_pcap1,rx_pcap=${src},infinite_rx=1`, 'net_pcap2']);
  const pool = pktmbufPoolCreate(eal.memory, 'pcap', 1023, { cacheSize: 0 });
  for (const p of [a, b, c]) {
    p.configure({ rxQueues: 1, txQueues: 1 });
    p.rxQueueSetup(0, 256, pool);
    p.txQueueSetup(0, 256);
    p.start();
  }
  const rx = await openRxQueue(a.data(), 0), tx = await openTxQueue(a.data(), 0);
  const burst = new Uint32Array(32);
  let total = 0;
  const seen: string[] = [];
  for (let i = 0; i < 10; i++) {
    const n = rx.rxBurst(burst, 32);
    for (let k = 0; k < n; k++) seen.push(mbufHex(burst[k]));
    total += n;
    t.equal(tx.txBurst(burst, n, 0), n);
  }
  t.equal(total, 50, 'the file\'s 50 packets, then nothing');
  t.same(seen.slice(0, 4), frames.map(hex), 'in file order, bytes intact');
  t.equal((a as PcapPort).rxFilePosition, 50);
  t.equal(a.stats().ipackets, 50);
  t.equal(a.stats().opackets, 50);

  const inf = await openRxQueue(b.data(), 0);
  let loops = 0;
  for (let i = 0; i < 10; i++) {
    const n = inf.rxBurst(burst, 32);
    loops += n;
    pktmbufFreeBulk(burst, n);
  }
  t.equal(loops, 320, 'infinite_rx keeps delivering full bursts past the end');
  const none = await openRxQueue(c.data(), 0), drop = await openTxQueue(c.data(), 0);
  t.equal(none.rxBurst(burst, 32), 0, 'no rx_pcap: nothing received');
  t.ok(pktmbufAllocBulk(pool, burst, 8));
  for (let k = 0; k < 8; k++) writePacket(burst[k], frames[1]);
  t.equal(drop.txBurst(burst, 8, 0), 8, 'no tx_pcap: dropped, counted as sent');

  a.stop();
  if (!needTools) t.equal(tsharkFrames(out).length, 50, 'stop flushed 50 frames tshark reads');
  a.start();
  const tx2 = await openTxQueue(a.data(), 0);
  t.ok(pktmbufAllocBulk(pool, burst, 5));
  for (let k = 0; k < 5; k++) writePacket(burst[k], frames[2]);
  t.equal(tx2.txBurst(burst, 5, 0), 5);
  for (const p of [a, b, c]) p.stop();
  t.equal(pool.inUseCount(), 0, 'every mbuf back in the pool');
  a.close();
  const back = readCaptureFile(out);
  t.equal(back.count, 55, 'the restarted port appended to the same file');
  t.equal(hex(capturedPacket(back, 54)), hex(frames[2]));
  t.ok(back.nanosecond && back.snaplen === 65535, 'nanosecond magic, snaplen 65535');
  if (!needTools) sameAsTools(t, out);
});

/** Run the contract on a capture: l2fwd from A through net_pcap0 -> net_pcap1 into B. */
async function contract(t: Test, a: string, name: string): Promise<void> {
  const want = tsharkFrames(a).length;
  t.ok(want > 0, `${a}: ${want} frames`);
  for (const mac of [false, true]) {
    const b = join(dir, `${name}-${mac ? 'mac' : 'nomac'}.pcap`);
    const args = ['l2fwd', '--no-huge', '--file-prefix', `${tag}c`, '--vdev', `net_pcap0,rx_pcap=${a}`, '--vdev', `net_pcap1,tx_pcap=${b}`, '--', '-p', '0x3', '--duration', '2', '-T', '0'];
    if (!mac) args.push('--no-mac-updating');
    const r = await runCli(args, { timeoutMs: 90_000 });
    t.equal(r.code, 0, `l2fwd exits 0 ${r.code ? r.stderr : ''}`);
    const got = tsharkFrames(b);
    t.equal(got.length, want, `${name}${mac ? ' (MAC updating)' : ''}: tshark reads ${want} frames in B as in A`);
    const fa = tcpdumpFrames(a), fb = tcpdumpFrames(b);
    t.equal(fb.length, fa.length, 'tcpdump counts the same');
    if (!mac) t.same(fb, fa, 'the frames\' bytes equal A\'s (tcpdump -xx)');
    else t.same(fb.map((f) => f.slice(24)), fa.map((f) => f.slice(24)), 'with MAC updating, all but the two MAC addresses equal A\'s');
    t.same(tcpdumpHex(b).length, tcpdumpHex(a).length);
  }
}

t.test('contract: l2fwd from a text2pcap capture to a pcap tshark reads alike', { skip: needTools, timeout: 240000 }, async (t) => {
  const a = join(dir, 'contract-A.pcapng');
  const many: Uint8Array[] = [];
  for (let i = 0; i < 25; i++) many.push(...sampleFrames());
  text2pcap(many, a, ['-F', 'pcapng']);
  await contract(t, a, 'text2pcap');
});

t.test('contract: l2fwd replays tcpdump and dumpcap captures of a real ping', { skip: needRoot || needTools, timeout: 300000 }, async (t) => {
  const ns = `${tag}n`, host = `${tag}h`, peer = `${tag}p`;
  undoAlways(t, () => {
    try { sh(['ip', 'link', 'del', host]); } catch { /* gone */ }
    try { sh(['ip', 'netns', 'del', ns]); } catch { /* gone */ }
  });
  sh(['ip', 'netns', 'add', ns]);
  sh(['ip', 'link', 'add', host, 'type', 'veth', 'peer', 'name', peer, 'netns', ns]);
  sh(['ip', 'addr', 'add', '10.213.9.1/24', 'dev', host]);
  sh(['ip', 'link', 'set', host, 'up']);
  sh(['ip', '-n', ns, 'addr', 'add', '10.213.9.2/24', 'dev', peer]);
  sh(['ip', '-n', ns, 'link', 'set', peer, 'up']);
  for (const [tool, file] of [['tcpdump', join(dir, 'ping.pcap')], ['dumpcap', join(dir, 'ping.pcapng')]] as const) {
    const args = tool === 'tcpdump' ? ['-i', host, '-U', '-w', file, '-c', '8', 'icmp'] : ['-i', host, '-w', file, '-q', '-c', '8', '-f', 'icmp'];
    const cap = execFileAsync(tool, args);
    await new Promise((r) => setTimeout(r, 1500)); // the capture is open
    sh(['ping', '-c', '4', '-i', '0.2', '-s', '1200', '10.213.9.2']);
    await cap;
    t.ok(existsSync(file), `${tool} wrote ${file}`);
    t.equal(tsharkFrames(file).length, 8, `${tool}: 4 echo requests and 4 replies`);
    sameAsTools(t, file);
    await contract(t, file, tool);
  }
});

t.test('iface=: frames sent go out of the interface, frames arriving are received', { skip: needRoot, timeout: 60000 }, async (t) => {
  const ia = `${tag}a`, ib = `${tag}b`;
  undoAlways(t, () => { try { sh(['ip', 'link', 'del', ia]); } catch { /* gone */ } });
  sh(['ip', 'link', 'add', ia, 'type', 'veth', 'peer', 'name', ib]);
  for (const i of [ia, ib]) {
    try { sh(['sysctl', '-qw', `net.ipv6.conf.${i}.disable_ipv6=1`]); } catch { /* no IPv6 */ }
    sh(['ip', 'link', 'set', i, 'up']);
  }
  const eal = new Eal({ noHuge: true, filePrefix: `${tag}i`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  const [pa, pb] = await probeVdevs(eal, [`net_pcap0,iface=${ia}`, `net_pcap1,rx_iface=${ib}`]);
  const pool = pktmbufPoolCreate(eal.memory, 'pcapif', 1023, { cacheSize: 0 });
  for (const p of [pa, pb]) {
    p.configure({ rxQueues: 1, txQueues: 1, promiscuous: true });
    p.rxQueueSetup(0, 256, pool);
    p.txQueueSetup(0, 256);
    p.start();
  }
  t.same(pa.macString(), readFileSync(`/sys/class/net/${ia}/address`, 'utf8').trim(), 'iface=: the interface\'s MAC');
  const tx = await openTxQueue(pa.data(), 0), rx = await openRxQueue(pb.data(), 0);
  const frame = buildUdpFrame({ dstMac: [2, 9, 9, 9, 9, 9], srcMac: pa.macAddr(), srcIp: 0x0a000001, dstIp: 0x0a000002, srcPort: 7, dstPort: 9, size: 100 });
  const burst = new Uint32Array(32);
  const before = ifStat(ib, 'rx_packets');
  t.ok(pktmbufAllocBulk(pool, burst, 20));
  for (let k = 0; k < 20; k++) writePacket(burst[k], frame);
  t.equal(tx.txBurst(burst, 20, 0), 20);
  t.equal(ifStat(ib, 'rx_packets') - before, 20, 'the peer interface counted 20 frames in');
  let got = 0;
  const deadline = Date.now() + 3000;
  while (got < 20 && Date.now() < deadline) {
    const n = rx.rxBurst(burst, 32);
    for (let k = 0; k < n; k++) if (mbufHex(burst[k]) === hex(frame)) got++;
    pktmbufFreeBulk(burst, n);
    if (n === 0) await new Promise((r) => setTimeout(r, 10));
  }
  t.equal(got, 20, 'rx_iface= received the 20 frames on the peer');
  for (const p of [pa, pb]) p.stop();
  t.equal(pool.inUseCount(), 0, 'every mbuf back in the pool');
});

/** Run a command to completion without blocking the event loop. */
function execFileAsync(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    import('node:child_process').then(({ execFile }) => {
      execFile(cmd, args, { timeout: 20000 }, (e) => (e ? reject(e) : resolve()));
    }, reject);
  });
}

t.test('l2fwd over net_pcap: no worker GC after warm-up, no mbuf left in use (infinite_rx into a TX file)', { timeout: 240000 }, async (t) => {
  const src = join(dir, 'gc.pcap'), out = join(dir, 'gc-out.pcap');
  const frames = sampleFrames();
  const w = new PcapWriter(src);
  for (const f of frames.slice(0, 2)) w.write(f, 0, f.length, 1, 0);
  w.close();
  // TX into a file too: net_pcap1's TX writes what port 0 replays (small frames, a few hundred MB, removed after).
  const r = await runCli(['l2fwd', '--no-huge', '--file-prefix', `${tag}g`, '--vdev', `net_pcap0,rx_pcap=${src},infinite_rx=1`, '--vdev', `net_pcap1,tx_pcap=${out}`, '--', '-p', '0x3', '--duration', '3', '--json'], { timeoutMs: 120_000 });
  t.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as ForwarderGcSummary & { mbufs_in_use_after_stop?: number };
  assertForwarderNoAlloc(t, s, 'l2fwd over net_pcap');
  t.equal(s.mbufs_in_use_after_stop, 0, 'every mbuf back in the pool');
  const ix = readCaptureFile(out);
  t.ok(ix.count > 10000, `${ix.count} frames written, all flushed and readable`);
  t.equal(hex(capturedPacket(ix, ix.count - 1)).length > 0, true);
  rmSync(out, { force: true });
});
