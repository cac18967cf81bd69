/**
 * l3fwd end to end on net_pcap ports: a capture written by text2pcap (frames built here, checked by
 * tshark to parse as intended) with IPv4 and IPv6 packets to several prefixes, TTL 1, a bad
 * checksum, a bad IHL and non-IP frames goes through `tspmd l3fwd` in the default and the strict
 * mode, with LPM and EM lookups; tshark reads the outputs. Then the contract command, a bad rule
 * line, and routes changed through the telemetry socket while l3fwd forwards an endless stream.
 */
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildUdpFrame, parseIpv4 } from '../../lib/net/packet.js';
import { runtimeDir, TELEMETRY_SOCKET } from '../../lib/telemetry/server.js';
import { existsSync, statSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runCli, CHILD_ENV, removeRunDir, type CliResult } from '../cli.js';
import { readLpmRules, readEmRules, ipv4Process, parseConfig } from '../../examples/l3fwd/l3fwd.js';
import { assertForwarderNoAlloc, type ForwarderGcSummary } from '../alloc.js';
import { text2pcap } from '../text2pcap.js';
import { TelemetryClient } from '../../index.js';

const have = (cmd: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const missing = ['tshark', 'text2pcap'].filter((c) => !have(c));
const needTools = missing.length ? `needs ${missing.join(', ')} (apt-get install tshark)` : false;

const tag = `tsp${process.pid}l3`;
const dir = `/tmp/${tag}`;
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
}

/**
 * Run tspmd: the built dist/app/tspmd.js when this file runs as TypeScript and the build is newer
 * than l3fwd's source (npm test builds first), which starts in a second instead of the loader's
 * several; otherwise runCli.
 */
const DIST = fileURLToPath(new URL('../../dist/app/tspmd.js', import.meta.url));
const SRC = fileURLToPath(new URL('../../examples/l3fwd/l3fwd.ts', import.meta.url));
const useDist = import.meta.url.endsWith('.ts') && existsSync(DIST) && existsSync(SRC) && statSync(DIST).mtimeMs >= statSync(SRC).mtimeMs;

function tspmd(args: string[], opts: { timeoutMs?: number; onSpawn?: (c: ChildProcess) => void } = {}): Promise<CliResult> {
  if (!useDist) return runCli(args, opts);
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [DIST, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => { stderr += 'killed after timeout\n'; p.kill('SIGKILL'); }, opts.timeoutMs ?? 60_000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      if (signal) removeRunDir(args);
      resolve({ code: code ?? 128, stdout, stderr });
    });
    opts.onSpawn?.(p);
  });
}

const SRC_MAC = [0x02, 0x99, 0, 0, 0, 0x01], DST_MAC = [0x02, 0x98, 0, 0, 0, 0x02];

/** An IPv4/UDP frame (the project's builder) with its identification as a tag we find again in the output. */
function v4(dst: string, id: number, opts: { ttl?: number; src?: string; sport?: number; dport?: number } = {}): Uint8Array {
  const f = buildUdpFrame({ dstMac: DST_MAC, srcMac: SRC_MAC, srcIp: parseIpv4(opts.src ?? '10.9.9.9'), dstIp: parseIpv4(dst), srcPort: opts.sport ?? 1000, dstPort: opts.dport ?? 2000, size: 80, ttl: opts.ttl ?? 64 });
  f[18] = id >> 8; f[19] = id & 255;
  fixV4Checksum(f);
  return f;
}

function fixV4Checksum(f: Uint8Array): void {
  f[24] = 0; f[25] = 0;
  let s = 0;
  for (let i = 14; i < 34; i += 2) s += (f[i] << 8) | f[i + 1];
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  const c = ~s & 0xffff;
  f[24] = c >> 8; f[25] = c & 255;
}

/** An IPv6/UDP frame to dst with the flow label as its tag (UDP checksum left 0: tshark does not check it by default). */
function v6(dst: number[], tag6: number, hlim = 64, src: number[] = [0xfd, 0, ...new Array<number>(13).fill(0), 1]): Uint8Array {
  const f = new Uint8Array(14 + 40 + 8 + 8);
  f.set(DST_MAC, 0); f.set(SRC_MAC, 6); f[12] = 0x86; f[13] = 0xdd;
  f[14] = 0x60; f[15] = (tag6 >> 16) & 0x0f; f[16] = (tag6 >> 8) & 255; f[17] = tag6 & 255;
  f[18] = 0; f[19] = 16; f[20] = 17; f[21] = hlim;
  f.set(src, 22); f.set(dst, 38);
  f[54] = 0x03; f[55] = 0xe8; f[56] = 0x07; f[57] = 0xd0; f[58] = 0; f[59] = 16;
  return f;
}

const V6 = (p: number, last = 5): number[] => [0x20, 0x01, 0x02, 0, 0, 0, 0, p, 0, 0, 0, 0, 0, 0, 0, last];

/** The input: each frame's tag, what it is, and where the default and the strict mode send it (LPM, default routes, ports 0-2). */
interface Case { tag: number; what: string; frame: Uint8Array; lpm: number | null; strict: number | null; reason?: string }

function cases(): Case[] {
  const c: Case[] = [];
  let tg = 1;
  const add = (what: string, frame: Uint8Array, lpm: number | null, strict: number | null, reason?: string): void => { c.push({ tag: tg, what, frame, lpm, strict, reason }); tg++; };
  for (let i = 0; i < 3; i++) {
    add(`IPv4 to 198.18.${i}.7`, v4(`198.18.${i}.7`, tg), i, i);
    add(`IPv4 to 198.18.${i}.200`, v4(`198.18.${i}.200`, tg), i, i);
    add(`IPv6 to 2001:200:0:${i}::5`, v6(V6(i), tg), i, i);
  }
  add('IPv4 to 198.18.9.1 (a default route to a port not enabled: no route)', v4('198.18.9.1', tg), 0, null, 'no_route');
  add('IPv4 to 10.1.2.3 (no route)', v4('10.1.2.3', tg), 0, null, 'no_route');
  add('IPv6 to fd00::9 (no route)', v6([0xfd, ...new Array<number>(14).fill(0), 9], tg), 0, null, 'no_route');
  add('IPv4 TTL 1 to 198.18.1.8', v4('198.18.1.8', tg, { ttl: 1 }), 1, null, 'ttl_exceeded');
  add('IPv6 hop limit 1 to 2001:200:0:2::5', v6(V6(2), tg, 1), 2, null, 'ttl_exceeded');
  const bad = v4('198.18.2.9', tg);
  bad[24] ^= 0x5a;
  add('IPv4 with a bad checksum to 198.18.2.9', bad, 2, null, 'bad_checksum');
  const ihl = v4('198.18.1.9', tg);
  ihl[14] = 0x44;
  fixV4Checksum(ihl);
  add('IPv4 with IHL 4 to 198.18.1.9', ihl, null, null, 'bad_header');
  const arp = new Uint8Array(60);
  arp.fill(0xff, 0, 6); arp.set(SRC_MAC, 6); arp.set([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1], 12);
  arp[40] = tg; // tag in the target address
  add('ARP (not IP)', arp, 0, null, 'not_ip');
  return c;
}

/** What tshark says of each frame of a capture. */
interface Seen { type: string; ipId: number; ttl: number; ipDst: string; cksum: string; ipv6Flow: number; hlim: number; ethDst: string; ethSrc: string; arpTag: number }

function tshark(file: string): Seen[] {
  const fields = ['eth.type', 'ip.id', 'ip.ttl', 'ip.dst', 'ip.checksum.status', 'ipv6.flow', 'ipv6.hlim', 'eth.dst', 'eth.src', 'arp.dst.proto_ipv4'];
  const out = run('tshark', ['-r', file, '-o', 'ip.check_checksum:TRUE', '-T', 'fields', '-E', 'separator=|', ...fields.flatMap((f) => ['-e', f])]);
  return out.split('\n').filter((l) => l !== '').map((l) => {
    const f = l.split('|');
    return {
      type: f[0], ipId: Number(f[1] || -1), ttl: Number(f[2] || -1), ipDst: f[3], cksum: f[4], ipv6Flow: Number(f[5] || -1), hlim: Number(f[6] || -1),
      ethDst: f[7], ethSrc: f[8], arpTag: f[9] ? Number(f[9].split('.')[2]) : -1,
    };
  });
}

/** A frame's tag as the test wrote it: IPv4 identification, IPv6 flow label, ARP target address byte. */
const tagOf = (s: Seen): number => (s.type === '0x0800' ? s.ipId : s.type === '0x86dd' ? s.ipv6Flow : s.arpTag);

const input = join(dir, 'in.pcap');
const all = cases();

t.before(() => {
  if (needTools) return;
  text2pcap(all.map((c) => c.frame), input);
  // The independent check that the input is what it claims to be.
  const seen = tshark(input);
  if (seen.length !== all.length) throw new Error(`tshark reads ${seen.length} frames in ${input}, ${all.length} written`);
});

t.test('tshark parses the input as written', { skip: needTools }, async (t) => {
  const seen = tshark(input);
  t.same(seen.map(tagOf), all.map((c) => (c.reason === 'bad_header' ? -1 : c.tag)), 'every frame carries its tag (the IHL 4 one is no IPv4 header for tshark either)');
  const bad = all.findIndex((c) => c.reason === 'bad_checksum');
  t.equal(seen[bad].cksum, '0', `the bad checksum frame is bad for tshark (status ${seen[bad].cksum})`);
  t.ok(seen.filter((s, i) => s.type === '0x0800' && i !== bad && all[i].reason !== 'bad_header').every((s) => s.cksum === '1'), 'the other IPv4 checksums are good (status 1)');
});

/** Run l3fwd over the input with three ports, 0 reading the input; returns what each port sent and the summary. */
async function l3fwd(t: Test, name: string, extra: string[], inFile = input): Promise<{ out: Seen[][]; summary: Record<string, unknown> & ForwarderGcSummary }> {
  const outs = [0, 1, 2].map((p) => join(dir, `${name}-out${p}.pcap`));
  const args = ['l3fwd', '--no-huge', '--no-telemetry', '--file-prefix', `${tag}${name}`,
    '--vdev', `net_pcap0,rx_pcap=${inFile},tx_pcap=${outs[0]}`, '--vdev', `net_pcap1,tx_pcap=${outs[1]}`, '--vdev', `net_pcap2,tx_pcap=${outs[2]}`,
    '--', '-p', '0x7', '--duration', '1.5', '--json', ...extra];
  const r = await tspmd(args, { timeoutMs: 60_000 });
  t.equal(r.code, 0, `l3fwd ${extra.join(' ')} exits 0 ${r.code ? r.stderr : ''}`);
  const line = r.stdout.trim().split('\n').pop() ?? '{}';
  return { out: outs.map((f) => tshark(f)), summary: JSON.parse(line) as Record<string, unknown> & ForwarderGcSummary };
}

/** Check that each case is on the port `want` names (null: nowhere), TTL/hop limit decremented, checksum valid, MACs rewritten. */
function checkOutput(t: Test, out: Seen[][], want: (c: Case) => number | null, what: string): void {
  for (const c of all) {
    const where = out.map((seen) => seen.filter((s) => tagOf(s) === c.tag));
    const ports = where.flatMap((w, p) => w.map(() => p));
    const w = want(c);
    t.same(ports, w === null ? [] : [w], `${what}: ${c.what} ${w === null ? 'dropped' : `out of port ${w} only`}`);
    if (w === null) continue;
    const s = where[w][0];
    t.equal(s.ethDst, `02:00:00:00:00:0${w}`, `${what}: ${c.what}: destination MAC of port ${w}`);
    if (s.type === '0x0800') {
      const inTtl = c.frame[22];
      t.equal(s.ttl, (inTtl - 1) & 255, `${what}: ${c.what}: TTL ${inTtl} -> ${(inTtl - 1) & 255}`);
      if (c.reason !== 'bad_checksum') t.equal(s.cksum, '1', `${what}: ${c.what}: header checksum valid for tshark`);
    } else if (s.type === '0x86dd') {
      t.equal(s.hlim, c.frame[21] - 1, `${what}: ${c.what}: hop limit decremented`);
    }
  }
}

t.test('LPM, default mode: DPDK l3fwd\'s decisions', { skip: needTools }, async (t) => {
  const { out, summary } = await l3fwd(t, 'lpm', []);
  checkOutput(t, out, (c) => c.lpm, 'lpm');
  const d = summary.dropped as Record<string, number>;
  t.equal(d.bad_header, 1, 'the bad IHL frame is the one drop (RFC 1812 check)');
  t.equal(Object.values(d).reduce((a, b) => a + b, 0), 1, 'nothing else dropped');
  t.equal(summary.mbufs_in_use_after_stop, 0, 'every mbuf back');
});

t.test('LPM, --strict: the bad ones dropped and counted by reason', { skip: needTools }, async (t) => {
  const { out, summary } = await l3fwd(t, 'lpms', ['--strict', '--parse-ptype']);
  checkOutput(t, out, (c) => c.strict, 'strict');
  const want: Record<string, number> = { bad_header: 0, bad_length: 0, bad_checksum: 0, ttl_exceeded: 0, no_route: 0, not_ip: 0 };
  for (const c of all) if (c.reason) want[c.reason]++;
  t.same(summary.dropped, want, `drops by reason: ${JSON.stringify(want)}`);
});

t.test('EM: DPDK\'s default 5-tuples, IPv4 and --ipv6, default and strict', { skip: needTools, timeout: 120_000 }, async (t) => {
  // DPDK's default EM rules: UDP 9 -> 9 from 198.18.P.1 to 198.18.P.0, and 2001:200:0:P::1 to ::0.
  const frames = [
    v4('198.18.1.0', 1, { src: '198.18.1.1', sport: 9, dport: 9 }),
    v4('198.18.2.0', 2, { src: '198.18.2.1', sport: 9, dport: 9 }),
    v4('198.18.2.0', 3, { src: '198.18.2.1', sport: 9, dport: 10 }), // no match
    v6(V6(1, 0), 4, 64, V6(1, 1)), // matches only with --ipv6
  ];
  frames[3].set([0, 9, 0, 9], 54); // UDP ports 9 -> 9
  const em = join(dir, 'em.pcap');
  text2pcap(frames, em);
  const where = (out: Seen[][]): number[][] => out.map((seen) => seen.map(tagOf).sort());
  let r = await l3fwd(t, 'em', ['--lookup', 'em'], em);
  t.same(where(r.out), [[3, 4], [1], [2]], 'IPv4 rules: 5-tuple matches to ports 1 and 2, the rest (and IPv6: no IPv6 rules) back out of port 0');
  r = await l3fwd(t, 'em6', ['-E', '--ipv6', '--strict'], em);
  t.same(where(r.out), [[], [4], []], '--ipv6 --strict: the IPv6 5-tuple to port 1, the IPv4 ones (no IPv4 rules) dropped');
  t.equal((r.summary.dropped as Record<string, number>).no_route, 3, 'three no-route drops');
});

t.test('the contract command with a rule file; SIGINT stops it', { skip: needTools, timeout: 90_000 }, async (t) => {
  const routes = join(dir, 'routes.cfg');
  writeFileSync(routes, '# routes\nR198.18.0.0/24 1\n\nR198.18.1.0/24 0\nR10.0.0.0/8 0x1\n');
  const outs = [join(dir, 'c-out0.pcap'), join(dir, 'c-out1.pcap')];
  const prefix = `${tag}c`;
  const args = ['l3fwd', '--no-huge', '--file-prefix', prefix, '--vdev', `net_pcap0,rx_pcap=${input},tx_pcap=${outs[0]}`, '--vdev', `net_pcap1,tx_pcap=${outs[1]}`,
    '--', '-p', '0x3', '--config', '(0,0,1),(1,0,1)', `--rule_ipv4=${routes}`];
  const r = await tspmd(args, {
    timeoutMs: 80_000,
    onSpawn: (child) => {
      // SIGINT once port 0 has received the whole input (read through the telemetry socket).
      void (async () => {
        try {
          const c = await connect(prefix, 60_000);
          try {
            await until(async () => (((await c.ask('/ethdev/stats,0'))?.['/ethdev/stats'] as { ipackets?: number } | null)?.ipackets ?? 0) >= all.length, 60_000);
          } finally {
            c.close();
          }
        } finally {
          child.kill('SIGINT');
        }
      })();
    },
  });
  t.equal(r.code, 0, `exits 0 after SIGINT ${r.code ? r.stderr : ''}`);
  t.match(r.stdout, /l3fwd summary/, 'prints its summary');
  const [o0, o1] = outs.map((f) => tshark(f).map(tagOf));
  const byDst = (s: string): number => all.find((c) => c.what === `IPv4 to ${s}`)!.tag;
  t.ok(o1.includes(byDst('198.18.0.7')) && o0.includes(byDst('198.18.1.7')), '198.18.0.0/24 to port 1, 198.18.1.0/24 to port 0, as the file says');
  t.ok(o1.includes(all.find((c) => c.what.startsWith('IPv4 to 10.1.2.3'))!.tag), '10.0.0.0/8 to port 0x1');
  t.ok(o0.includes(byDst('198.18.2.7')), '198.18.2.0/24 is not in the file: no route, back out of port 0');
});

t.test('a bad rule line: one line naming the file and the line, exit 2', async (t) => {
  const bad = join(dir, 'bad.cfg');
  writeFileSync(bad, '# ok\nR198.18.0.0/24 0\nR198.18.300.0/24 1\n');
  const r = await tspmd(['l3fwd', '--no-huge', '--', `--rule_ipv4=${bad}`]);
  t.equal(r.code, 2, 'exit 2');
  t.match(r.stderr, new RegExp(`--rule_ipv4=${bad} line 3: "R198\\.18\\.300\\.0/24 1"`), `names file and line: ${r.stderr.trim()}`);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  const msg = (fn: () => unknown): string => { try { fn(); return 'no error'; } catch (e) { return (e as Error).message; } };
  writeFileSync(bad, 'R198.18.0.0/24 0\n198.18.1.0/24 1\n');
  t.match(msg(() => readLpmRules('--rule_ipv4', bad, false)), /line 2: .*starts with R/, 'a line without R');
  writeFileSync(bad, 'R2001:200::/64 256\n');
  t.match(msg(() => readLpmRules('--rule_ipv6', bad, true)), /line 1: .*out port "256"/, 'an out port over 255');
  writeFileSync(bad, 'R198.18.0.0 198.18.0.1 9 9 0x11\n');
  t.match(msg(() => readEmRules('--rule_ipv4', bad, false)), /line 1: .*expected 6 fields, found 5/, 'EM: a missing field');
  writeFileSync(bad, '# nothing\n');
  t.match(msg(() => readLpmRules('--rule_ipv4', bad, false)), /no rule \(R\.\.\.\) lines/, 'a file without rules');
  writeFileSync(bad, '#c\n\nR198.18.0.0/24 0\nR10.0.0.0/8\t0x1 extra\n');
  t.same(readLpmRules('--rule_ipv4', bad, false), [{ ip: 0xc6120000, depth: 24, port: 0 }, { ip: 0x0a000000, depth: 8, port: 1 }], 'comments and blank lines skipped, tabs, hex ports, extra fields ignored (as DPDK)');
  t.match(msg(() => readLpmRules('--rule_ipv6', join(dir, 'nope.cfg'), true)), /nope\.cfg: cannot read the rule file \(ENOENT\)/, 'a missing file');
});

/** Poll cond every 100 ms until it holds or ms pass. */
async function until(cond: () => Promise<boolean> | boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
  return true;
}

/** Connect to the telemetry socket of prefix once it exists; the greeting read. */
async function connect(prefix: string, ms: number): Promise<TelemetryClient> {
  const sock = join(runtimeDir(prefix), TELEMETRY_SOCKET);
  await until(() => existsSync(sock), ms);
  const c = new TelemetryClient(sock);
  await c.recv();
  return c;
}

t.test('ipv4Process: the incremental checksum equals a recomputed one; the checks per mode', async (t) => {
  let seed = 12345;
  const rnd = (): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) & 0xff;
  let bad = 0;
  for (let k = 0; k < 20_000; k++) {
    const f = v4(`198.18.${rnd()}.${rnd()}`, k & 0xffff, { ttl: 2 + (k % 254), src: `${rnd()}.${rnd()}.${rnd()}.${rnd()}` });
    const before = f[22];
    if (ipv4Process(f, 14, f.length, true, true) !== -1) { bad++; continue; }
    const want = f.slice();
    fixV4Checksum(want);
    if (f[22] !== before - 1 || f[24] !== want[24] || f[25] !== want[25]) bad++;
  }
  t.equal(bad, 0, '20,000 random headers, TTL 2-255: TTL - 1, checksum as recomputed');
  const f = v4('198.18.0.1', 1, { ttl: 1 });
  t.equal(ipv4Process(f.slice(), 14, f.length, true, false), -1, 'default: TTL 1 forwarded');
  t.equal(ipv4Process(f.slice(), 14, f.length, true, true), 3, 'strict: TTL 1 is ttl_exceeded');
  const g = v4('198.18.0.1', 1);
  t.equal(ipv4Process(g.slice(), 14, g.length, false, true), 4, 'strict: no route');
  g[16] = 0; g[17] = 19;
  t.equal(ipv4Process(g.slice(), 14, g.length, true, false), 0, 'total length 19: bad_header in both modes (DPDK\'s check)');
  g[16] = 0; g[17] = 200;
  fixV4Checksum(g);
  t.equal(ipv4Process(g.slice(), 14, g.length, true, false), -1, 'total length past the frame: forwarded by default');
  t.equal(ipv4Process(g.slice(), 14, g.length, true, true), 1, 'and bad_length in strict');
  t.same(parseConfig('(0,0,1), (1,0,2)'), [{ port: 0, queue: 0, lcore: 1 }, { port: 1, queue: 0, lcore: 2 }], '--config parses');
  t.throws(() => parseConfig('(0,0)'), /expected \(port,queue,lcore\) triples/, '--config: a bad triple');
});

t.test('several lcores and queues per port (net_null, two queues each, two lcores): every packet counted once', async (t) => {
  const r = await tspmd(['l3fwd', '--no-huge', '--no-telemetry', '--file-prefix', `${tag}mq`, '-l', '0,1@1,2@1', '--vdev', 'net_null0', '--vdev', 'net_null1',
    '--', '--config', '(0,0,1),(0,1,2),(1,0,1),(1,1,2)', '--strict', '--duration', '1', '--json']);
  t.equal(r.code, 0, `exits 0 ${r.code ? r.stderr : ''}`);
  t.match(r.stderr, /lcore 1: RX port 0 queue 0[\s\S]*lcore 2: RX port 0 queue 1/, 'queues spread as --config says');
  const s = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { ports: Array<{ ipackets: number; opackets: number }>; dropped: Record<string, number>; mbufs_in_use_after_stop: number };
  const rx = s.ports.reduce((a, p) => a + p.ipackets, 0);
  t.ok(rx > 0, `${rx} packets received`);
  t.equal(s.dropped.not_ip, rx, 'net_null\'s frames are not IP: --strict drops every one, counted once over both lcores');
  t.equal(s.ports.reduce((a, p) => a + p.opackets, 0), 0, 'none sent');
  t.equal(s.mbufs_in_use_after_stop, 0, 'every mbuf back');
});

t.test('routes changed through the telemetry socket under a steady stream: packets move, none to a wrong port; no allocation', { skip: needTools, timeout: 120_000 }, async (t) => {
  // The stream alternates 198.18.9.7 (its port is whatever route 198.18.9.x has) and 198.18.0.7 (port 0).
  // Ports 1 and 2 have no files: they count what they send (an endless stream would fill the disk).
  const stream = join(dir, 'stream.pcap');
  text2pcap([v4('198.18.9.7', 7), v4('198.18.0.7', 8)], stream);
  const prefix = `${tag}rt`;
  const args = ['l3fwd', '--no-huge', '--file-prefix', prefix,
    '--vdev', `net_pcap0,rx_pcap=${stream},infinite_rx=1`, '--vdev', 'net_pcap1', '--vdev', 'net_pcap2',
    '--', '-p', '0x7', '--json', '--strict', '-T', '0'];
  const replies: Array<Record<string, unknown> | null> = [];
  /** port 1 and 2 packets sent during each phase (after its change took effect) */
  const phases: Array<{ what: string; d1: number; d2: number }> = [];
  const r = await tspmd(args, {
    timeoutMs: 100_000,
    onSpawn: (child) => {
      void (async () => {
        let c: TelemetryClient | null = null;
        try {
          c = await connect(prefix, 60_000);
          const cl = c;
          const opackets = async (p: number): Promise<number> => ((await cl.ask(`/ethdev/stats,${p}`))?.['/ethdev/stats'] as { opackets: number }).opackets;
          const ipackets = async (): Promise<number> => ((await cl.ask('/ethdev/stats,0'))?.['/ethdev/stats'] as { ipackets: number }).ipackets;
          // warm-up (the lcore's own: 1 s and 10,000 packets) well passed before the first change
          const t0 = await ipackets();
          await until(async () => (await ipackets()) > t0 + 50_000, 60_000);
          await new Promise((res) => setTimeout(res, 1500));
          const steps: Array<[string, string]> = [
            ['/l3fwd/route_add,198.18.9.0/24,1', 'to port 1'], ['/l3fwd/route_add,198.18.9.0/25,2', 'to port 2 (the /25)'],
            ['/l3fwd/route_del,198.18.9.0/25', 'back to port 1'], ['/l3fwd/route_add,198.18.9.0/24,9', 'unchanged (refused)'],
            ['/l3fwd/routes', 'unchanged'], ['/l3fwd/route_del,198.18.9.0/24', 'no route'],
          ];
          for (const [req, what] of steps) {
            replies.push(await cl.ask(req));
            // packets in flight when the change returned are gone after 300 ms; then measure a phase of 500 ms
            await new Promise((res) => setTimeout(res, 300));
            const a1 = await opackets(1), a2 = await opackets(2);
            await new Promise((res) => setTimeout(res, 500));
            phases.push({ what, d1: (await opackets(1)) - a1, d2: (await opackets(2)) - a2 });
          }
        } finally {
          c?.close();
          child.kill('SIGINT');
        }
      })();
    },
  });
  t.equal(r.code, 0, `exits 0 ${r.code ? r.stderr : ''}`);
  t.same(replies[0], { '/l3fwd/route_add': { added: '198.18.9.0/24', port: 1 } }, 'route_add replies');
  t.same(replies[2], { '/l3fwd/route_del': { deleted: '198.18.9.0/25' } }, 'route_del replies');
  t.match(replies[3], { '/l3fwd/route_add': { error: /port 9 is not enabled/ } }, 'a route to a port that is not enabled is refused');
  t.match(replies[4], { '/l3fwd/routes': { ipv4: { '198.18.9.0/24': 1, '198.18.0.0/24': 0 } } }, '/l3fwd/routes lists the table');
  t.equal(phases.length, 6, 'six phases measured');
  const [p1, p2, p3, p4, , p6] = phases;
  t.ok(p1.d1 > 0 && p1.d2 === 0, `after the /24 to port 1: port 1 +${p1.d1}, port 2 +${p1.d2}`);
  t.ok(p2.d1 === 0 && p2.d2 > 0, `after the /25 to port 2: port 1 +${p2.d1}, port 2 +${p2.d2}`);
  t.ok(p3.d1 > 0 && p3.d2 === 0, `after deleting the /25: port 1 +${p3.d1}, port 2 +${p3.d2}`);
  t.ok(p4.d1 > 0 && p4.d2 === 0, `a refused change changes nothing: port 1 +${p4.d1}, port 2 +${p4.d2}`);
  t.ok(p6.d1 === 0 && p6.d2 === 0, `after deleting the /24: port 1 +${p6.d1}, port 2 +${p6.d2}`);
  const summary = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, unknown> & ForwarderGcSummary & { ports: Array<{ ipackets: number; opackets: number; dropped: number }> };
  t.equal(summary.route_changes, 4, 'four changes made');
  const [s0, s1, s2] = summary.ports;
  const drops = summary.dropped as Record<string, number>;
  // Received in file order 9.7, 0.7, 9.7, ...: floor(n / 2) were 198.18.0.7, the others 198.18.9.7.
  const to0 = Math.floor(s0.ipackets / 2), to9 = s0.ipackets - to0;
  t.equal(s0.opackets + s0.dropped, to0, `port 0 sent exactly the ${to0} packets to 198.18.0.7`);
  t.equal(s1.opackets + s2.opackets + s1.dropped + s2.dropped + drops.no_route, to9, `ports 1 and 2 and the no-route drops account for exactly the ${to9} packets to 198.18.9.7`);
  t.equal(drops.bad_header + drops.bad_checksum + drops.ttl_exceeded + drops.not_ip + drops.bad_length, 0, 'no other drop');
  t.equal(summary.mbufs_in_use_after_stop, 0, 'every mbuf back');
  assertForwarderNoAlloc(t, summary, 'l3fwd under route changes');
});
