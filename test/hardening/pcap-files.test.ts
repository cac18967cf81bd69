/**
 * Capture files as an attacker on the same machine or a malicious file would use them (issue 22,
 * findings 4, 6 and 7).
 *
 * Finding 4: `--vdev net_pcap,tx_pcap=F` and `tspmd pdump --out F` (through lib/pcap's writer) never
 * write through a symlink planted at F, never into a FIFO, device, directory, a file with other hard
 * links or another user's file; new capture files are 0600 whatever the umask; an existing regular
 * file of one's own is replaced (as DPDK's tx_pcap truncates) and left 0600. `rx_pcap=` on a FIFO
 * is refused at once instead of blocking for ever. Every refusal is one line naming the path, exit 2.
 *
 * Finding 6: pcapng blocks and options whose lengths do not hold what they must (an IDB of total
 * length 12 at the end of the file, an if_tsoffset option without its value, a Simple Packet Block
 * of length 12 ...) give one line naming the file, the block's offset and what is wrong; the CLI
 * exits 2 with that line and no stack.
 *
 * Finding 7: a 32 MiB file of 2 M empty records loads (in a child process) with a peak RSS above
 * the process's resident size before the load of at most 48 MiB (the index is 16 MiB: 8 bytes a
 * packet); before the fix it was about 250 MB.
 */
import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import {
  chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { PcapFormatError, PcapWriter, parseCapture } from '../../lib/pcap/pcap.js';
import { CHILD_ENV, killChildren, runCli } from '../cli.js';
import { tempDir } from './server-helpers.js';
import { frame, pcapFile, pcapngFile } from './pcap-corpus.js';

const root = process.getuid?.() === 0;
const tag = `tsp${process.pid}pf`;
const children = new Set<ChildProcess>();
t.teardown(() => killChildren(children));

/** A one-line error: no newline, no stack frame. */
const oneLine = (s: string): boolean => !s.trim().includes('\n') && !/\n\s+at /.test(s) && s.trim() !== '';

/** The error fn throws (fails the test when it returns). */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error, got none');
}

/** Probe one net_pcap port on a fresh EAL and start it (as an app does); returns the error or null. */
async function probeAndStart(spec: string, prefix: string): Promise<Error | null> {
  const eal = new Eal({ noHuge: true, noTelemetry: true, filePrefix: prefix, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  try {
    const [p] = await probeVdevs(eal, [spec]);
    const { pktmbufPoolCreate } = await import('../../lib/mempool/mbuf.js');
    const pool = pktmbufPoolCreate(eal.memory, `${prefix}m`, 63, { cacheSize: 0 });
    p.configure({ rxQueues: 1, txQueues: 1 });
    p.rxQueueSetup(0, 32, pool);
    p.txQueueSetup(0, 32);
    p.start();
    p.stop();
    return null;
  } catch (e) {
    return e as Error;
  } finally {
    await eal.close();
  }
}

t.test('finding 4: tx_pcap= and the capture writer never write through a planted symlink; its target is untouched', async (t) => {
  const dir = tempDir(t);
  const target = join(dir, 'precious');
  writeFileSync(target, 'root secret\n', { mode: 0o600 });
  const link = join(dir, 'cap.pcap');
  symlinkSync(target, link);
  const dangling = join(dir, 'dangling.pcap');
  symlinkSync(join(dir, 'created-through-link'), dangling);

  const e1 = thrown(() => new PcapWriter(link).close());
  t.match(e1.message, /cap\.pcap.*symbolic link/, `the writer refuses: ${e1.message}`);
  t.ok(oneLine(e1.message), 'one line');
  const e2 = await probeAndStart(`net_pcap0,tx_pcap=${link}`, `${tag}a`);
  t.match(e2?.message ?? 'no error', /tx_pcap=.*cap\.pcap.*symbolic link/, `tx_pcap= refuses: ${e2?.message}`);
  const e3 = await probeAndStart(`net_pcap0,tx_pcap=${dangling}`, `${tag}b`);
  t.match(e3?.message ?? 'no error', /symbolic link/, 'a dangling link is refused too');
  t.equal(readFileSync(target, 'utf8'), 'root secret\n', 'the target keeps its bytes');
  t.equal(statSync(target).mode & 0o777, 0o600, 'and its mode');
  t.notOk(existsSync(join(dir, 'created-through-link')), 'nothing created through the dangling link');
});

t.test('finding 4: new capture files are 0600 whatever the umask; an own regular file is replaced and left 0600', async (t) => {
  const dir = tempDir(t);
  const old = process.umask(0);
  t.teardown(() => { process.umask(old); });
  const w = join(dir, 'w.pcap');
  const pw = new PcapWriter(w);
  pw.write(frame(60, 1), 0, 60, 1, 2);
  pw.close();
  t.equal(statSync(w).mode & 0o777, 0o600, 'PcapWriter (tspmd pdump --out) creates 0600 under umask 0');
  const tx = join(dir, 'tx.pcap');
  t.equal((await probeAndStart(`net_pcap0,tx_pcap=${tx}`, `${tag}c`))?.message ?? null, null, 'tx_pcap= to a new file');
  t.equal(statSync(tx).mode & 0o777, 0o600, 'tx_pcap= creates 0600 under umask 0');
  const own = join(dir, 'own.pcap');
  writeFileSync(own, 'x'.repeat(5000), { mode: 0o644 });
  chmodSync(own, 0o644);
  t.equal((await probeAndStart(`net_pcap0,tx_pcap=${own}`, `${tag}d`))?.message ?? null, null, 'tx_pcap= to an existing file of one\'s own');
  t.equal(statSync(own).size, 24, 'replaced: a pcap file header, the old bytes gone');
  t.equal(statSync(own).mode & 0o777, 0o600, 'and 0600 afterwards');
  writeFileSync(own, 'y'.repeat(100), { mode: 0o644 });
  chmodSync(own, 0o664);
  new PcapWriter(own).close();
  t.equal(statSync(own).size, 24, 'PcapWriter replaces an own file as well');
  t.equal(statSync(own).mode & 0o777, 0o600);
});

t.test('finding 4: a directory, a device, a file with another hard link are refused with one line; nothing is written', async (t) => {
  const dir = tempDir(t);
  const sub = join(dir, 'sub.pcap');
  mkdirSync(sub);
  const a = join(dir, 'a'), b = join(dir, 'b.pcap');
  writeFileSync(a, 'linked\n', { mode: 0o600 });
  linkSync(a, b);
  const cases: Array<[string, RegExp]> = [[sub, /sub\.pcap.*directory/], ['/dev/null', /\/dev\/null.*not a regular file/], [b, /b\.pcap.*2 hard links/]];
  for (const [path, re] of cases) {
    const e = thrown(() => new PcapWriter(path).close());
    t.match(e.message, re, `writer: ${e.message}`);
    t.ok(oneLine(e.message), 'one line');
    const p = await probeAndStart(`net_pcap0,tx_pcap=${path}`, `${tag}e`);
    t.match(p?.message ?? 'no error', re, `tx_pcap=: ${p?.message}`);
  }
  t.equal(readFileSync(a, 'utf8'), 'linked\n', 'the hard-linked file keeps its bytes');
  const r = await probeAndStart(`net_pcap0,rx_pcap=${sub}`, `${tag}f`);
  t.match(r?.message ?? 'no error', /rx_pcap=.*sub\.pcap.*directory/, `rx_pcap= of a directory: ${r?.message}`);
  const d = await probeAndStart('net_pcap0,rx_pcap=/dev/null', `${tag}g`);
  t.match(d?.message ?? 'no error', /rx_pcap=\/dev\/null.*not a regular file/, `rx_pcap= of a device: ${d?.message}`);
});

t.test('finding 4: rx_pcap= and tx_pcap= on a FIFO are refused at once with one line, no blocking (rx_pcap= through tspmd l2fwd: exit 2)', { timeout: 150_000 }, async (t) => {
  const dir = tempDir(t);
  const fifo = join(dir, 'fifo.pcap');
  await new Promise<void>((res, rej) => execFile('mkfifo', ['-m', '0600', fifo], (e) => (e ? rej(e) : res())));
  // The reported case, in a child: before the fix it blocked for ever in the open (no writer comes).
  // The timeout only bounds a regression; the refusal itself comes before any waiting.
  const r = await runCli(['l2fwd', '--no-huge', '--no-telemetry', '--file-prefix', `${tag}h`, '--vdev', `net_pcap0,rx_pcap=${fifo}`, '--vdev', 'net_null1', '--', '-p', '0x3', '--duration', '1'], { timeoutMs: 120_000 });
  t.equal(r.code, 2, 'rx_pcap=FIFO: exit 2', { stderr: r.stderr });
  t.match(r.stderr, /rx_pcap=.*fifo\.pcap: is a FIFO, not a regular file/, `names the path: ${r.stderr.trim()}`);
  t.ok(oneLine(r.stderr), 'one line');
  // TX: refused before the FIFO is opened (an open for writing would wait for a reader).
  const e = thrown(() => new PcapWriter(fifo).close());
  t.match(e.message, /fifo\.pcap: is a FIFO, not a regular file/, `writer: ${e.message}`);
  const p = await probeAndStart(`net_pcap0,tx_pcap=${fifo}`, `${tag}k`);
  t.match(p?.message ?? 'no error', /tx_pcap=.*fifo\.pcap: is a FIFO, not a regular file/, `tx_pcap=: ${p?.message}`);
  t.ok(lstatSync(fifo).isFIFO(), 'the FIFO is still there');
});

t.test('finding 4: another user\'s file is never replaced, not even by root', { skip: root ? false : 'needs root: the file must belong to another user' }, async (t) => {
  const dir = tempDir(t);
  chmodSync(dir, 0o1777); // a shared directory like /tmp
  const theirs = join(dir, 'theirs.pcap');
  writeFileSync(theirs, 'nobody\'s capture\n', { mode: 0o666 });
  chownSync(theirs, 65534, 65534);
  const e = thrown(() => new PcapWriter(theirs).close());
  t.match(e.message, /theirs\.pcap.*belongs to uid 65534/, e.message);
  const p = await probeAndStart(`net_pcap0,tx_pcap=${theirs}`, `${tag}i`);
  t.match(p?.message ?? 'no error', /tx_pcap=.*belongs to uid 65534/, `tx_pcap=: ${p?.message}`);
  t.equal(readFileSync(theirs, 'utf8'), 'nobody\'s capture\n', 'their file keeps its bytes');
  t.equal(statSync(theirs).uid, 65534, 'and its owner');
});

t.test('finding 4: tspmd pdump --out refuses a planted symlink (exit 2, one line) and writes 0600', { timeout: 280_000 }, async (t) => {
  const dir = tempDir(t);
  const target = join(dir, 'precious');
  writeFileSync(target, 'secret\n', { mode: 0o600 });
  const link = join(dir, 'out.pcap');
  symlinkSync(target, link);
  const prefix = `${tag}p`;
  // Little traffic (a small file replayed once on each port): the captures stay small.
  const src = join(dir, 'src.pcap');
  writeFileSync(src, pcapFile({ records: [{ data: frame(60, 1) }, { data: frame(64, 2) }] }));
  let out = '';
  let app: ChildProcess | null = null;
  const appDone = runCli(['l2fwd', '--no-huge', '--no-telemetry', '--file-prefix', prefix, '--vdev', `net_pcap0,rx_pcap=${src}`, '--vdev', `net_pcap1,rx_pcap=${src}`, '--', '-p', '0x3', '--duration', '600'], {
    timeoutMs: 240_000,
    onSpawn: (c) => { app = c; children.add(c); c.stdout!.on('data', (d: Buffer) => { out += d.toString(); }); c.stderr!.on('data', (d: Buffer) => { out += d.toString(); }); },
  });
  const deadline = Date.now() + 150_000;
  while (!/lcore \d+: RX port/.test(out)) {
    if (Date.now() > deadline) throw new Error(`l2fwd did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const pid = String((app as unknown as ChildProcess).pid);
  const bad = await runCli(['pdump', '--', '--pid', pid, '--port', '0', '--out', link, '--duration', '1'], { timeoutMs: 120_000 });
  t.equal(bad.code, 2, 'pdump --out SYMLINK: exit 2', { stderr: bad.stderr });
  t.match(bad.stderr, /out\.pcap.*symbolic link/, `names the path: ${bad.stderr.trim()}`);
  t.ok(oneLine(bad.stderr), 'one line');
  t.equal(readFileSync(target, 'utf8'), 'secret\n', 'the target keeps its bytes');
  const good = join(dir, 'good.pcap');
  const ok = await runCli(['pdump', '--', '--pid', pid, '--port', '0', '--out', good, '--duration', '1'], { timeoutMs: 120_000 });
  t.equal(ok.code, 0, 'pdump into a new file', { stderr: ok.stderr });
  t.equal(statSync(good).mode & 0o077, 0, 'the capture is readable by its owner only');
  (app as unknown as ChildProcess).kill('SIGINT');
  t.equal((await appDone).code, 0, 'l2fwd ends normally');
});

/** pcapng pieces for finding 6, little endian. */
const le32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
const le16 = (v: number): number[] => [v & 0xff, v >>> 8];
const SHB = [...le32(0x0a0d0d0a), ...le32(28), ...le32(0x1a2b3c4d), ...le16(1), ...le16(0), ...le32(0xffffffff), ...le32(0xffffffff), ...le32(28)];
const IDB = [...le32(1), ...le32(20), ...le16(1), ...le16(0), ...le32(0), ...le32(20)];

/** The malformed files of finding 6 and what the error must say. */
function malformed(): Array<{ name: string; bytes: Uint8Array; re: RegExp }> {
  const f = (a: number[]): Uint8Array => Uint8Array.from(a);
  return [
    { name: 'idb12.pcapng', bytes: f([...SHB, ...le32(1), ...le32(12), ...le32(12)]), re: /byte 28.*interface description block.*length 12/ },
    { name: 'tsoffset.pcapng', bytes: f([...SHB, ...le32(1), ...le32(24), ...le16(1), ...le16(0), ...le32(0), ...le16(14), ...le16(8), ...le32(24)]), re: /byte 28.*option 14.*8 bytes/ },
    { name: 'spb12.pcapng', bytes: f([...SHB, ...IDB, ...le32(3), ...le32(12), ...le32(12)]), re: /byte 48.*simple packet block.*length 12/ },
    { name: 'epb28.pcapng', bytes: f([...SHB, ...IDB, ...le32(6), ...le32(28), ...le32(0), ...le32(0), ...le32(0), ...le32(0), ...le32(28)]), re: /byte 48.*enhanced packet block.*length 28/ },
    { name: 'opb16.pcapng', bytes: f([...SHB, ...IDB, ...le32(2), ...le32(16), ...le32(0), ...le32(16)]), re: /byte 48.*packet block.*length 16/ },
    { name: 'optrun.pcapng', bytes: f([...SHB, ...le32(1), ...le32(28), ...le16(1), ...le16(0), ...le32(0), ...le16(9), ...le16(200), 9, 0, 0, 0, ...le32(28)]), re: /byte 28.*option 9.*200 bytes/ },
    { name: 'shb16.pcapng', bytes: f([...le32(0x0a0d0d0a), ...le32(16), ...le32(0x1a2b3c4d), ...le32(16)]), re: /byte 0.*section header block.*length 16/ },
    { name: 'trailer.pcapng', bytes: f([...SHB, ...le32(1), ...le32(20), ...le16(1), ...le16(0), ...le32(0), ...le32(24)]), re: /byte 28.*length 20 ends with length 24/ },
    { name: 'tsresol0.pcapng', bytes: f([...SHB, ...le32(1), ...le32(28), ...le16(1), ...le16(0), ...le32(0), ...le16(9), ...le16(0), ...le16(0), ...le16(0), ...le32(28)]), re: /byte 28.*if_tsresol.*0 bytes/ },
  ];
}

t.test('finding 6: malformed pcapng blocks and options: one line naming the file, the block offset and what is wrong', async (t) => {
  for (const m of malformed()) {
    const e = thrown(() => parseCapture(m.bytes, m.name));
    t.ok(e instanceof PcapFormatError, `${m.name}: a PcapFormatError, not ${e.name}`);
    t.match(e.message, new RegExp(`^${m.name.replace('.', '\\.')}: `), `${m.name}: names the file`);
    t.match(e.message, m.re, `${m.name}: ${e.message}`);
    t.ok(oneLine(e.message), 'one line');
  }
  // Interfaces cost memory per block (20 bytes of file each): a section may declare 65,536.
  const many = (n: number): Uint8Array => Uint8Array.from([...SHB, ...Array.from({ length: n }, () => IDB).flat()]);
  t.equal(parseCapture(many(65536), 'many.pcapng').count, 0, '65,536 interfaces are read');
  t.match(thrown(() => parseCapture(many(65537), 'toomany.pcapng')).message, /^toomany\.pcapng: block at byte 1310748: interface description block number 65537 of its section; at most 65536/);
  // What stays valid: a well-formed file with every block kind still loads.
  const ok = pcapngFile([{ ifaces: [{ tsresol: 9, tsoffset: 2n }], blocks: [{ kind: 'epb', iface: 0, data: frame(60, 1), ts: 5n }, { kind: 'spb', data: frame(61, 2) }, { kind: 'opb', iface: 0, data: frame(62, 3) }] }]);
  const ix = parseCapture(ok, 'ok.pcapng');
  t.same(Array.from(ix.capLen), [60, 61, 62], 'a well-formed file still loads');
  t.equal(ix.tsSec[0], 2, 'if_tsoffset applied');
  // Classic pcap: a record that runs past the end, a header cut short.
  const cut = pcapFile({ records: [{ data: frame(100, 1) }] }).subarray(0, 24 + 16 + 50);
  t.match(thrown(() => parseCapture(cut, 'cut.pcap')).message, /^cut\.pcap: packet 1 at byte 24 claims 100 bytes; the file ends before/);
  const short = pcapFile({ records: [{ data: frame(10, 1) }] }).subarray(0, 24 + 10);
  t.match(thrown(() => parseCapture(short, 'short.pcap')).message, /^short\.pcap: truncated record header at byte 24/);
});

t.test('finding 6: tspmd l2fwd with a malformed rx_pcap exits 2 with that one line, no stack', { timeout: 150_000 }, async (t) => {
  const dir = tempDir(t);
  // One file through the CLI (each run starts a whole app); the parser's lines for the others are checked above.
  for (const m of malformed().filter((x) => x.name === 'idb12.pcapng')) {
    const file = join(dir, m.name);
    writeFileSync(file, m.bytes);
    const r = await runCli(['l2fwd', '--no-huge', '--no-telemetry', '--file-prefix', `${tag}j`, '--vdev', `net_pcap0,rx_pcap=${file}`, '--vdev', 'net_null1', '--', '-p', '0x3', '--duration', '1'], { timeoutMs: 120_000 });
    t.equal(r.code, 2, `${m.name}: exit 2`, { stderr: r.stderr });
    t.match(r.stderr, new RegExp(`rx_pcap=${file.replace(/[.]/g, '\\.')}: `), 'names the file');
    t.match(r.stderr, m.re, `${m.name}: ${r.stderr.trim()}`);
    t.ok(oneLine(r.stderr), 'one line, no stack');
  }
});

t.test('finding 7: 2 M empty records (32 MiB): peak RSS of the load at most 48 MiB above the resident size before it', { timeout: 180_000 }, async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'empty-2m.pcap');
  const n = 2 * 1024 * 1024;
  const buf = Buffer.alloc(24 + n * 16);
  buf.set(pcapFile({ records: [] }), 0);
  for (let i = 0; i < n; i++) buf.writeUInt32LE(1700000000 + (i >>> 10), 24 + i * 16);
  writeFileSync(file, buf);
  t.equal(statSync(file).size, 32 * 1024 * 1024 + 24, 'a 32 MiB file');
  const child = fileURLToPath(new URL('./pcap-rss-child.ts', import.meta.url));
  const out = await new Promise<string>((res, rej) => {
    const c = execFile(process.execPath, [...process.execArgv, child, file], { env: CHILD_ENV, timeout: 150_000, maxBuffer: 1 << 20 }, (e, so, se) => (e ? rej(new Error(`${e.message}\n${se}`)) : res(so)));
    children.add(c);
  });
  const r = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { rssBefore: number; hwmBefore: number; hwm: number; packets: number; ms: number };
  const mib = (x: number): string => (x / 1048576).toFixed(1);
  t.comment(`rss before the load ${mib(r.rssBefore)} MiB, peak before ${mib(r.hwmBefore)} MiB, peak after ${mib(r.hwm)} MiB, load ${r.ms} ms, ${r.packets} packets`);
  t.equal(r.packets, n, 'every record loaded');
  const growth = r.hwm - r.rssBefore;
  t.ok(growth <= 48 * 1048576, `peak ${mib(growth)} MiB above the resident size before the load (bound 48 MiB; the index is ${mib(n * 8)} MiB)`);
});
