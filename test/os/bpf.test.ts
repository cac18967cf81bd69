/**
 * src/os/bpf.ts, src/os/netlink.ts and src/os/ifclaim.ts against the real kernel (root): tspmd's
 * XDP program attached through a BPF link to one end of a veth pair (2 RX and 2 TX queues on both
 * ends, the other end up in a tsp network namespace) in native and in generic mode, seen by
 * `ip -d link show` and by xdpProgramOn, gone after close() and after the holder's SIGKILL; a
 * second attach while one is held is an XdpBusyError naming the program and who holds it; the
 * XSKMAP takes an AF_XDP socket; frames of queues with no socket pass to the kernel stack (ping
 * works) and frames of queues with one are redirected to it (ping fails, the socket counts them);
 * one claim per interface across processes; the encodings match the kernel headers.
 */
import t from 'tap';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as os from '../../src/os/libc.js';
import * as B from '../../src/os/bpf.js';
import * as N from '../../src/os/netlink.js';
import { claimInterface, InterfaceClaimedError } from '../../src/os/ifclaim.js';
import { sh, uniquePrefix } from '../../lib/netns/topology.js';
import { CHILD_ENV } from '../cli.js';
import * as X from './xsk-min.js';

const CHILD = fileURLToPath(new URL('./bpf-child.ts', import.meta.url));
const root = process.getuid?.() === 0;
const needRoot = root ? false : 'needs root: network namespaces, veth pairs, bpf(2) and XDP';

/** A veth pair with 2 RX and 2 TX queues on each end: `host` in this namespace, `peer` in namespace `ns`, both up. */
interface Veth { ns: string; host: string; peer: string; ifindex: number }

function vethPair(t: { teardown(fn: () => void): void }, opts: { hostRx?: number } = {}): Veth {
  const p = uniquePrefix();
  const v: Veth = { ns: `${p}N`, host: `${p}h`, peer: `${p}p`, ifindex: 0 };
  t.teardown(() => {
    if (existsSync(`/run/netns/${v.ns}`)) try { sh(['ip', 'netns', 'del', v.ns]); } catch { /* gone */ }
    if (existsSync(`/sys/class/net/${v.host}`)) try { sh(['ip', 'link', 'del', v.host]); } catch { /* gone */ }
  });
  sh(['ip', 'netns', 'add', v.ns]);
  // veth native XDP: the receiving end needs at least as many RX queues as its peer has TX queues
  const rx = String(opts.hostRx ?? 2);
  sh(['ip', 'link', 'add', v.host, 'numrxqueues', rx, 'numtxqueues', '2', 'type', 'veth', 'peer', 'name', v.peer, 'numrxqueues', '2', 'numtxqueues', '2', 'netns', v.ns]);
  sh(['ip', 'link', 'set', v.host, 'up']);
  // native XDP on a veth end wants its peer up
  sh(['ip', '-n', v.ns, 'link', 'set', v.peer, 'up']);
  v.ifindex = os.ifNameToIndex(v.host);
  return v;
}

/** The "prog/xdp id N name X" line of `ip -d link show` (in ns when given), or null. */
function ipShowsXdp(ifname: string, ns?: string): { id: number; name: string; word: string } | null {
  const out = sh([...(ns ? ['ip', '-n', ns] : ['ip']), '-d', 'link', 'show', 'dev', ifname]);
  const m = /prog\/xdp id (\d+)(?: name (\S+))?/.exec(out);
  const w = /mtu \d+ (xdp\S*)/.exec(out);
  return m ? { id: Number(m[1]), name: m[2] ?? '', word: w?.[1] ?? '' } : null;
}

/** Wait (up to ms) until `ip -d link show` shows no XDP program on ifname; returns whether it went. */
async function xdpGone(ifname: string, ns?: string, ms = 5000): Promise<boolean> {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 100))) {
    if (ipShowsXdp(ifname, ns) === null) return true;
  }
  return ipShowsXdp(ifname, ns) === null;
}

/** A bpf-child.ts process: JSON lines out, command lines in. */
class Child {
  readonly proc: ChildProcess;
  private lines: string[] = [];
  private waiters: Array<() => void> = [];
  private stderr = '';
  readonly exited: Promise<number | null>;
  constructor(args: string[], wrap: string[] = []) {
    const cmd = [...wrap, process.execPath, ...process.execArgv, CHILD, ...args];
    this.proc = spawn(cmd[0], cmd.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], env: CHILD_ENV });
    let buf = '';
    this.proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) this.lines.push(buf.slice(0, i));
      this.waiters.splice(0).forEach((w) => w());
    });
    this.proc.stderr!.on('data', (d: Buffer) => { this.stderr += d.toString(); });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code) => { this.waiters.splice(0).forEach((w) => w()); resolve(code); }));
  }
  /** The next JSON line (within 60 s: children load TypeScript). */
  async next(): Promise<Record<string, unknown>> {
    const t0 = Date.now();
    while (this.lines.length === 0) {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) throw new Error(`bpf-child exited (${this.proc.exitCode ?? this.proc.signalCode}): ${this.stderr}`);
      if (Date.now() - t0 > 60000) throw new Error(`bpf-child said nothing in 60 s: ${this.stderr}`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 1000); });
    }
    return JSON.parse(this.lines.shift()!) as Record<string, unknown>;
  }
  /** Send a command line and return the answer. */
  async ask(line: string): Promise<Record<string, unknown>> {
    this.proc.stdin!.write(`${line}\n`);
    return this.next();
  }
  kill(): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
  }
}

function child(t: { teardown(fn: () => void): void }, args: string[], wrap: string[] = []): Child {
  const c = new Child(args, wrap);
  t.teardown(() => c.kill());
  return c;
}

t.test('tspmd\'s program is accepted by the verifier and attaches through a BPF link, native and generic; close() detaches it', { skip: needRoot }, async (t) => {
  const v = vethPair(t);
  const mapFd = B.createXskMap(2);
  t.teardown(() => os.close(mapFd));
  t.equal(B.mapInfo(mapFd).name, 'tspmd_xsks', 'the map is named tspmd_xsks');
  for (const [mode, word] of [['native', 'xdp'], ['generic', 'xdpgeneric']] as const) {
    const a = B.attachXskRedirect({ ifname: v.host, ifindex: v.ifindex, mapFd, mode });
    t.teardown(() => a.close());
    t.ok(a.progId > 0 && a.linkId > 0, `${mode}: program id ${a.progId}, link id ${a.linkId}`);
    t.same({ mode: a.mode, ifindex: a.ifindex, ifname: a.ifname }, { mode, ifindex: v.ifindex, ifname: v.host });
    const shown = ipShowsXdp(v.host);
    t.same(shown, { id: a.progId, name: 'tspmd_xsk', word }, `${mode}: ip -d link show: ${word} ... prog/xdp id ${a.progId} name tspmd_xsk`);
    t.same(B.xdpProgramOn(v.ifindex), { id: a.progId, name: 'tspmd_xsk', mode }, `${mode}: xdpProgramOn (netlink) agrees`);
    t.same(B.linkInfo(a.linkFd), { id: a.linkId, type: B.BPF_LINK_TYPE_XDP, progId: a.progId, ifindex: v.ifindex }, `${mode}: the link is an XDP link on the interface`);
    a.close();
    a.close();
    t.equal(ipShowsXdp(v.host), null, `${mode}: gone after close() (twice is harmless)`);
    t.equal(B.xdpProgramOn(v.ifindex), null, `${mode}: xdpProgramOn says none`);
  }
});

t.test('a SIGKILLed holder leaves no program behind: the kernel closes its link', { skip: needRoot }, async (t) => {
  const v = vethPair(t);
  const c = child(t, ['attach', v.host, 'native']);
  const r = await c.next();
  t.ok(typeof r.progId === 'number' && r.progId > 0, `the child attached program ${String(r.progId)}${r.error ? `: ${String(r.message)}` : ''}`);
  t.equal(ipShowsXdp(v.host)?.id, r.progId, 'ip -d link show names the child\'s program');
  c.proc.kill('SIGKILL');
  await c.exited;
  t.ok(await xdpGone(v.host), 'after SIGKILL, ip -d link show shows no XDP program (polled up to 5 s)');
  const mapFd = B.createXskMap(2);
  t.teardown(() => os.close(mapFd));
  const a = B.attachXskRedirect({ ifname: v.host, ifindex: v.ifindex, mapFd, mode: 'native' });
  t.teardown(() => a.close());
  t.ok(a.progId > 0, 'the next attach works at once');
});

t.test('an interface that carries an XDP program already: XdpBusyError naming it, its holder and the fix', { skip: needRoot }, async (t) => {
  const v = vethPair(t);
  const mapFd = B.createXskMap(2);
  t.teardown(() => os.close(mapFd));

  // held by a link of this process
  const a = B.attachXskRedirect({ ifname: v.host, ifindex: v.ifindex, mapFd, mode: 'native' });
  t.teardown(() => a.close());
  for (const mode of ['native', 'generic'] as const) {
    const e = catchErr(() => B.attachXskRedirect({ ifname: v.host, ifindex: v.ifindex, mapFd, mode }));
    t.type(e, B.XdpBusyError, `${mode} attach over a native one: XdpBusyError`);
    t.type(e, B.BpfError, 'which is a BpfError');
    const m = e?.message ?? '';
    t.match(m, new RegExp(`interface ${v.host} already carries XDP program id ${a.progId} "tspmd_xsk" \\(native\\)`), 'names the program: id, name, mode');
    t.match(m, new RegExp(`BPF link ${a.linkId} of process ${process.pid} \\(this process\\)`), 'names the link and the process holding it');
    t.same((e as B.XdpBusyError).program, { id: a.progId, name: 'tspmd_xsk', mode: 'native' });
  }
  t.equal(ipShowsXdp(v.host)?.id, a.progId, 'the program in place is untouched');
  a.close();

  // held by a link of another process
  const c = child(t, ['attach', v.host, 'generic']);
  const r = await c.next();
  t.equal(r.mode, 'generic', 'a child attached in generic mode');
  const e2 = catchErr(() => B.attachXskRedirect({ ifname: v.host, ifindex: v.ifindex, mapFd, mode: 'native' }));
  t.type(e2, B.XdpBusyError, 'native attach over the child\'s generic one: XdpBusyError');
  t.match(e2?.message ?? '', new RegExp(`XDP program id ${String(r.progId)} "tspmd_xsk" \\(generic\\).*BPF link ${String(r.linkId)} of process ${String(r.pid)} \\(\\S*node \\[\\d+ options\\] \\S*bpf-child\\.ts attach ${v.host} generic\\): stop that process`), 'names the child\'s pid and command line');
  c.proc.stdin!.end();
  t.equal(await c.exited, 0, 'the child detaches and exits');
  t.ok(await xdpGone(v.host), 'no program left');

  // attached through netlink (as `ip link set dev X xdp obj ...` does): no link, ip link removes it
  const progFd = B.loadXskRedirect(mapFd);
  t.teardown(() => { try { os.close(progFd); } catch { /* closed */ } });
  t.equal(netlinkAttach(v.ifindex, progFd, B.XDP_FLAGS_DRV_MODE), 0, 'a program attached through netlink (IFLA_XDP_FD)');
  os.close(progFd);
  const legacy = B.xdpProgramOn(v.ifindex);
  t.same(legacy && { name: legacy.name, mode: legacy.mode }, { name: 'tspmd_xsk', mode: 'native' });
  const e3 = catchErr(() => B.attachXskRedirect({ ifname: v.host, ifindex: v.ifindex, mapFd, mode: 'native' }));
  t.type(e3, B.XdpBusyError);
  const fix = `ip link set dev ${v.host} xdpdrv off`;
  t.match(e3?.message ?? '', `remove it with: ${fix}`, 'says how to remove it');
  sh(fix.split(' '));
  t.equal(B.xdpProgramOn(v.ifindex), null, 'the command it gives removes it');
});

t.test('attach errors name the cause: no native XDP, veth queue mismatch, no such interface, no privileges', { skip: needRoot }, async (t) => {
  const mapFd = B.createXskMap(2);
  t.teardown(() => os.close(mapFd));
  // an interface type whose driver has no native XDP (which ones the kernel has varies)
  const plain = `${uniquePrefix()}d`;
  const type = ['bridge', 'ifb', 'dummy'].find((ty) => spawnSync('ip', ['link', 'add', plain, 'type', ty]).status === 0);
  t.teardown(() => { if (existsSync(`/sys/class/net/${plain}`)) try { sh(['ip', 'link', 'del', plain]); } catch { /* gone */ } });
  if (type) {
    const pi = os.ifNameToIndex(plain);
    const e1 = catchErr(() => B.attachXskRedirect({ ifname: plain, ifindex: pi, mapFd, mode: 'native' }));
    t.match(e1, { name: 'BpfError', errno: os.E.EOPNOTSUPP }, `a ${type} interface has no native XDP: EOPNOTSUPP`);
    t.match(e1?.message ?? '', `the driver of ${plain} has no native XDP: use mode=generic`);
    const g = B.attachXskRedirect({ ifname: plain, ifindex: pi, mapFd, mode: 'generic' });
    t.equal(B.xdpProgramOn(pi)?.mode, 'generic', 'generic mode works there');
    g.close();
  } else {
    t.comment('no bridge, ifb or dummy interface type in this kernel: the no-native-XDP case is not tried');
  }

  const v = vethPair(t, { hostRx: 1 });
  const e2 = catchErr(() => B.attachXskRedirect({ ifname: v.host, ifindex: v.ifindex, mapFd, mode: 'native' }));
  t.match(e2, { name: 'BpfError', code: 'ENOSPC' }, 'a veth end with 1 RX queue, its peer with 2 TX queues');
  t.match(e2?.message ?? '', 'fewer RX queues than its veth peer has TX queues');

  const e3 = catchErr(() => B.attachXskRedirect({ ifname: 'tspnosuch', ifindex: 0x7ffffff0, mapFd, mode: 'native' }));
  t.match(e3, { name: 'BpfError', message: /no interface with index 2147483632 \(tspnosuch\) in this network namespace/ }, 'no such interface (the kernel says EINVAL)');
  t.throws(() => B.xdpProgramOn(0x7ffffff0), { name: 'OsError', code: 'ENODEV' }, 'xdpProgramOn of a missing interface throws ENODEV');
  t.throws(() => B.createXskMap(0), RangeError);

  const c = child(t, ['attach', v.host, 'native'], ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all']);
  const r = await c.next();
  t.equal(r.error, 'BpfError', 'without privileges: a BpfError');
  t.match(String(r.message), /BPF_MAP_CREATE.*EPERM.*needs CAP_BPF and CAP_NET_ADMIN/, `names the capabilities: ${String(r.message).slice(0, 120)}...`);
});

t.test('the XSKMAP: set and delete an AF_XDP socket, unbound and bound; wrong values are clear errors', { skip: needRoot }, async (t) => {
  const v = vethPair(t);
  const mapFd = B.createXskMap(2, 'tspmd_xsk_t1');
  t.teardown(() => os.close(mapFd));
  t.equal(B.mapInfo(mapFd).name, 'tspmd_xsk_t1', 'the name given is the map\'s');
  const unbound = os.socket(X.AF_XDP, os.SOCK_RAW, 0);
  t.teardown(() => os.close(unbound));
  // Linux 5.10 dropped the check that wanted the RX ring, UMEM and fill ring first (xsk_is_setup_for_bpf_map)
  B.xskMapSet(mapFd, 0, unbound);
  t.pass('an unbound AF_XDP socket is accepted (kernels before 5.10 want it set up: enter sockets after bind)');
  B.xskMapSet(mapFd, 0, unbound);
  t.pass('setting the same socket again is no error');
  B.xskMapDelete(mapFd, 0);
  B.xskMapDelete(mapFd, 0);
  t.pass('delete, and delete of an empty entry');
  const s = X.boundXsk(v.ifindex, 1);
  t.teardown(() => s.close());
  B.xskMapSet(mapFd, 1, s.fd);
  B.xskMapSet(mapFd, 0, s.fd);
  B.xskMapDelete(mapFd, 1);
  t.pass('a socket bound to queue 1 of the veth: set at 1 and 0, deleted at 1');

  const [r, w] = os.pipe();
  t.teardown(() => { os.close(r); os.close(w); });
  t.throws(() => B.xskMapSet(mapFd, 0, r), { name: 'BpfError', code: 'ENOTSOCK', message: /BPF_MAP_UPDATE_ELEM xskmap fd \d+, queue 0 -> socket fd \d+.*not an open socket/ }, 'a pipe');
  const udp = os.socket(os.AF_INET, os.SOCK_DGRAM, 0);
  t.teardown(() => os.close(udp));
  t.throws(() => B.xskMapSet(mapFd, 0, udp), { name: 'BpfError', errno: os.E.EOPNOTSUPP, message: /not an AF_XDP socket/ }, 'a UDP socket');
  t.throws(() => B.xskMapSet(mapFd, 2, s.fd), { name: 'BpfError', code: 'E2BIG', message: /past the map's max_entries/ }, 'queue 2 of a 2-entry map');
  t.throws(() => B.xskMapSet(1 << 20, 0, s.fd), { name: 'BpfError', code: 'EBADF' }, 'a map fd that is not open');
});

t.test('frames of queues without a socket pass to the kernel stack; queues with one are redirected to it', { skip: needRoot, timeout: 120000 }, async (t) => {
  const p = uniquePrefix();
  const nsA = `${p}A`, nsB = `${p}B`, a = `${p}a`, b = `${p}b`;
  const net = `10.${100 + Math.floor(Math.random() * 100)}.${Math.floor(Math.random() * 250)}`;
  t.teardown(() => {
    for (const ns of [nsA, nsB]) if (existsSync(`/run/netns/${ns}`)) try { sh(['ip', 'netns', 'del', ns]); } catch { /* gone */ }
    if (existsSync(`/sys/class/net/${a}`)) try { sh(['ip', 'link', 'del', a]); } catch { /* gone */ }
  });
  sh(['ip', 'netns', 'add', nsA]);
  sh(['ip', 'netns', 'add', nsB]);
  sh(['ip', 'link', 'add', a, 'numrxqueues', '2', 'numtxqueues', '2', 'type', 'veth', 'peer', 'name', b, 'numrxqueues', '2', 'numtxqueues', '2']);
  sh(['ip', 'link', 'set', a, 'netns', nsA]);
  sh(['ip', 'link', 'set', b, 'netns', nsB]);
  for (const [ns, dev, ip] of [[nsA, a, `${net}.1`], [nsB, b, `${net}.2`]]) {
    sh(['ip', '-n', ns, 'addr', 'add', `${ip}/24`, 'dev', dev]);
    sh(['ip', '-n', ns, 'link', 'set', dev, 'up']);
  }
  const ping = (count: number): number => spawnSync('ip', ['netns', 'exec', nsA, 'ping', '-c', String(count), '-i', '0.2', '-W', '1', `${net}.2`], { timeout: 30000 }).status ?? -1;
  /** ping until one answer comes (up to 10 s: the neighbour entry may need a fresh ARP round). */
  const pingWorks = async (): Promise<boolean> => {
    for (const t0 = Date.now(); Date.now() - t0 < 10000;) if (ping(1) === 0) return true;
    return false;
  };

  const c = child(t, ['redirect', b, 'native', '2'], ['ip', 'netns', 'exec', nsB]);
  const r = await c.next();
  t.equal(r.sockets, 2, `program ${String(r.progId)} on ${b} (native) and two AF_XDP sockets bound to its queues 0 and 1${r.error ? `: ${String(r.message)}` : ''}`);
  t.same(ipShowsXdp(b, nsB), { id: r.progId, name: 'tspmd_xsk', word: 'xdp' }, 'ip -d link show in namespace B shows it');
  t.ok(await pingWorks(), 'no socket in the map: ping A -> B works (XDP_PASS for an empty entry)');
  t.equal(ping(3), 0, 'and keeps working (3 of 3)');
  t.same((await c.ask('stats')).dropped, 0, 'the sockets saw nothing');

  t.same((await c.ask('set')).set, 2, 'both sockets entered in the map');
  t.not(ping(3), 0, 'ping A -> B fails: every frame goes to a socket (whose fill ring is empty)');
  const st = await c.ask('stats');
  t.ok(Number(st.dropped) > 0, `the sockets counted the frames redirected to them (${String(st.dropped)} dropped for an empty fill ring)`);

  t.same((await c.ask('delete')).deleted, 2, 'both taken out of the map');
  t.ok(await pingWorks(), 'ping A -> B works again');
  c.proc.stdin!.end();
  t.equal(await c.exited, 0);
  t.ok(await xdpGone(b, nsB), 'the program is gone with the child');
});

t.test('claimInterface: one holder per interface; a second gets an error naming the first\'s pid', async (t) => {
  const ifname = `${uniquePrefix()}c`;
  const c = child(t, ['claim', ifname, 'net_af_xdp0 (test)']);
  const r = await c.next();
  t.equal(r.claimed, ifname, `a child (pid ${String(r.pid)}) claims ${ifname}`);
  const e = catchErr(() => claimInterface(ifname, 'net_af_xdp1'));
  t.type(e, InterfaceClaimedError, 'a second claim from this process: InterfaceClaimedError');
  const ce = e as InterfaceClaimedError;
  t.equal(ce.pid, r.pid, 'names the holder\'s pid');
  t.match(ce.cmdline, `bpf-child.ts claim ${ifname}`, 'and its command line');
  t.equal(ce.what, 'net_af_xdp0 (test)', 'and what it holds the interface for');
  t.match(ce.message, new RegExp(`^interface ${ifname} is already in use by tspmd process ${String(r.pid)} \\(.*bpf-child\\.ts claim ${ifname} .*\\) for net_af_xdp0 \\(test\\): one tspmd process per interface`));
  c.kill();
  await c.exited;
  const mine = claimInterface(ifname, 'net_af_xdp1');
  t.pass('after the holder\'s SIGKILL the claim is free at once (nothing on disk)');
  t.throws(() => claimInterface(ifname, 'net_af_xdp2'), { name: 'InterfaceClaimedError', pid: process.pid, message: /already in use by this process \(pid \d+\) for net_af_xdp1/ }, 'a second claim in the same process names this process');
  const c2 = child(t, ['claim', ifname, 'x']);
  const r2 = await c2.next();
  t.equal(r2.error, 'InterfaceClaimedError', 'another process is refused while this one holds it');
  t.match(String(r2.message), new RegExp(`in use by tspmd process ${process.pid} .* for net_af_xdp1`), `it names this process: ${String(r2.message).slice(0, 100)}...`);
  mine.close();
  mine.close();
  claimInterface(ifname, 'again').close();
  t.pass('close() frees it (twice is harmless)');
  const other = claimInterface(`${ifname}x`, 'y');
  other.close();
  t.pass('another interface is another claim');
});

/** The error fn throws, or null. */
function catchErr(fn: () => unknown): Error | null {
  try { fn(); } catch (e) { return e as Error; }
  return null;
}

/** Attach progFd to ifindex through rtnetlink (IFLA_XDP_FD), as `ip link set dev X xdp ...` does; returns the kernel's errno (0: done). */
function netlinkAttach(ifindex: number, progFd: number, flags: number): number {
  const fd = os.socket(N.AF_NETLINK, os.SOCK_RAW, N.NETLINK_ROUTE);
  try {
    const m = Buffer.alloc(16 + 16 + 4 + 8 + 8);
    m.writeUInt32LE(m.length, 0);
    m.writeUInt16LE(19, 4); // RTM_SETLINK
    m.writeUInt16LE(N.NLM_F_REQUEST | 4, 6); // NLM_F_ACK
    m.writeUInt32LE(1, 8);
    m.writeInt32LE(ifindex, 20);
    m.writeUInt16LE(20, 32);
    m.writeUInt16LE(N.IFLA_XDP | 0x8000, 34); // NLA_F_NESTED
    m.writeUInt16LE(8, 36);
    m.writeUInt16LE(1, 38); // IFLA_XDP_FD
    m.writeInt32LE(progFd, 40);
    m.writeUInt16LE(8, 44);
    m.writeUInt16LE(3, 46); // IFLA_XDP_FLAGS
    m.writeUInt32LE(flags, 48);
    os.send(fd, m, m.length, 0);
    const r = os.recvmsg(fd, 8192);
    if (!r || r.data.byteLength < 20) return -1;
    return -Buffer.from(r.data).readInt32LE(16);
  } finally {
    os.close(fd);
  }
}

const hasCc = spawnSync('cc', ['--version']).status === 0;

t.test('the bpf(2), rtnetlink and AF_XDP encodings match the kernel headers', { skip: hasCc ? false : 'no C compiler (cc) to compile the header check' }, async (t) => {
  const checks: Array<[string, number]> = [
    ['__NR_bpf', B.SYS_bpf],
    ['BPF_MAP_CREATE', B.BPF_MAP_CREATE], ['BPF_MAP_LOOKUP_ELEM', B.BPF_MAP_LOOKUP_ELEM], ['BPF_MAP_UPDATE_ELEM', B.BPF_MAP_UPDATE_ELEM],
    ['BPF_MAP_DELETE_ELEM', B.BPF_MAP_DELETE_ELEM], ['BPF_PROG_LOAD', B.BPF_PROG_LOAD], ['BPF_PROG_GET_FD_BY_ID', B.BPF_PROG_GET_FD_BY_ID],
    ['BPF_OBJ_GET_INFO_BY_FD', B.BPF_OBJ_GET_INFO_BY_FD], ['BPF_LINK_CREATE', B.BPF_LINK_CREATE], ['BPF_LINK_GET_FD_BY_ID', B.BPF_LINK_GET_FD_BY_ID],
    ['BPF_LINK_GET_NEXT_ID', B.BPF_LINK_GET_NEXT_ID], ['BPF_MAP_TYPE_XSKMAP', B.BPF_MAP_TYPE_XSKMAP], ['BPF_PROG_TYPE_XDP', B.BPF_PROG_TYPE_XDP],
    ['BPF_XDP', B.BPF_XDP], ['BPF_LINK_TYPE_XDP', B.BPF_LINK_TYPE_XDP], ['BPF_FUNC_redirect_map', B.BPF_FUNC_redirect_map],
    ['BPF_PSEUDO_MAP_FD', B.BPF_PSEUDO_MAP_FD], ['BPF_OBJ_NAME_LEN', B.BPF_OBJ_NAME_LEN], ['BPF_ANY', B.BPF_ANY],
    ['XDP_FLAGS_SKB_MODE', B.XDP_FLAGS_SKB_MODE], ['XDP_FLAGS_DRV_MODE', B.XDP_FLAGS_DRV_MODE],
    ['XDP_ABORTED', B.XDP_ABORTED], ['XDP_DROP', B.XDP_DROP], ['XDP_PASS', B.XDP_PASS], ['XDP_TX', B.XDP_TX], ['XDP_REDIRECT', B.XDP_REDIRECT],
    ['offsetof(struct xdp_md, rx_queue_index)', B.XDP_MD_RX_QUEUE_INDEX],
    ['BPF_LDX | BPF_MEM | BPF_W', B.BPF_LDX_MEM_W], ['BPF_LD | BPF_IMM | BPF_DW', B.BPF_LD_IMM_DW], ['BPF_ALU64 | BPF_MOV | BPF_K', B.BPF_ALU64_MOV_K],
    ['BPF_JMP | BPF_CALL', B.BPF_JMP_CALL], ['BPF_JMP | BPF_EXIT', B.BPF_JMP_EXIT], ['sizeof(struct bpf_insn)', B.SIZEOF_BPF_INSN],
    // struct bpf_insn's register nibbles: dst_reg low, src_reg high (little-endian bitfields)
    ['((union { struct bpf_insn i; unsigned char b[8]; }){ .i = { .dst_reg = 2, .src_reg = 1 } }).b[1]', 0x12],
    ['offsetof(union bpf_attr, map_type)', B.ATTR.map_type], ['offsetof(union bpf_attr, key_size)', B.ATTR.key_size],
    ['offsetof(union bpf_attr, value_size)', B.ATTR.value_size], ['offsetof(union bpf_attr, max_entries)', B.ATTR.max_entries],
    ['offsetof(union bpf_attr, map_flags)', B.ATTR.map_flags], ['offsetof(union bpf_attr, map_name)', B.ATTR.map_name],
    ['offsetof(union bpf_attr, map_ifindex) + 4', B.ATTR.map_create_end],
    ['offsetof(union bpf_attr, map_fd)', B.ATTR.elem_map_fd], ['offsetof(union bpf_attr, key)', B.ATTR.elem_key],
    ['offsetof(union bpf_attr, value)', B.ATTR.elem_value], ['offsetof(union bpf_attr, flags)', B.ATTR.elem_flags],
    ['offsetof(union bpf_attr, flags) + 8', B.ATTR.elem_end],
    ['offsetof(union bpf_attr, prog_type)', B.ATTR.prog_type], ['offsetof(union bpf_attr, insn_cnt)', B.ATTR.insn_cnt],
    ['offsetof(union bpf_attr, insns)', B.ATTR.insns], ['offsetof(union bpf_attr, license)', B.ATTR.license],
    ['offsetof(union bpf_attr, log_level)', B.ATTR.log_level], ['offsetof(union bpf_attr, log_size)', B.ATTR.log_size],
    ['offsetof(union bpf_attr, log_buf)', B.ATTR.log_buf], ['offsetof(union bpf_attr, prog_flags)', B.ATTR.prog_flags],
    ['offsetof(union bpf_attr, prog_name)', B.ATTR.prog_name], ['offsetof(union bpf_attr, expected_attach_type)', B.ATTR.expected_attach_type],
    ['offsetof(union bpf_attr, expected_attach_type) + 4', B.ATTR.prog_load_end],
    ['offsetof(union bpf_attr, prog_id)', B.ATTR.id], ['offsetof(union bpf_attr, link_id)', B.ATTR.id],
    ['offsetof(union bpf_attr, next_id)', B.ATTR.next_id], ['offsetof(union bpf_attr, open_flags) + 4', B.ATTR.id_end],
    ['offsetof(union bpf_attr, info.bpf_fd)', B.ATTR.info_bpf_fd], ['offsetof(union bpf_attr, info.info_len)', B.ATTR.info_len],
    ['offsetof(union bpf_attr, info.info)', B.ATTR.info], ['offsetof(union bpf_attr, info.info) + 8', B.ATTR.info_end],
    ['offsetof(union bpf_attr, link_create.prog_fd)', B.ATTR.link_prog_fd], ['offsetof(union bpf_attr, link_create.target_ifindex)', B.ATTR.link_target_ifindex],
    ['offsetof(union bpf_attr, link_create.attach_type)', B.ATTR.link_attach_type], ['offsetof(union bpf_attr, link_create.flags)', B.ATTR.link_flags],
    ['offsetof(union bpf_attr, link_create.flags) + 4', B.ATTR.link_create_end],
    ['offsetof(struct bpf_prog_info, id)', B.INFO.prog_id], ['offsetof(struct bpf_prog_info, name)', B.INFO.prog_name],
    ['offsetof(struct bpf_prog_info, name) + BPF_OBJ_NAME_LEN', B.INFO.prog_end],
    ['offsetof(struct bpf_map_info, id)', B.INFO.map_id], ['offsetof(struct bpf_map_info, name)', B.INFO.map_name],
    ['offsetof(struct bpf_map_info, name) + BPF_OBJ_NAME_LEN', B.INFO.map_end],
    ['offsetof(struct bpf_link_info, type)', B.INFO.link_type], ['offsetof(struct bpf_link_info, id)', B.INFO.link_id],
    ['offsetof(struct bpf_link_info, prog_id)', B.INFO.link_prog_id], ['offsetof(struct bpf_link_info, xdp.ifindex)', B.INFO.link_xdp_ifindex],
    ['offsetof(struct bpf_link_info, xdp.ifindex) + 4', B.INFO.link_end],
    ['AF_NETLINK', N.AF_NETLINK], ['NETLINK_ROUTE', N.NETLINK_ROUTE], ['NLMSG_ERROR', N.NLMSG_ERROR], ['RTM_NEWLINK', N.RTM_NEWLINK],
    ['RTM_GETLINK', N.RTM_GETLINK], ['RTM_SETLINK', 19], ['NLM_F_REQUEST', N.NLM_F_REQUEST], ['NLM_F_ACK', 4], ['NLA_F_NESTED', 0x8000],
    ['sizeof(struct nlmsghdr)', N.SIZEOF_NLMSGHDR], ['sizeof(struct ifinfomsg)', N.SIZEOF_IFINFOMSG],
    ['offsetof(struct ifinfomsg, ifi_index)', 4], ['sizeof(struct rtattr)', 4],
    ['IFLA_XDP', N.IFLA_XDP], ['IFLA_EXT_MASK', N.IFLA_EXT_MASK], ['RTEXT_FILTER_SKIP_STATS', N.RTEXT_FILTER_SKIP_STATS],
    ['IFLA_XDP_FD', 1], ['IFLA_XDP_ATTACHED', N.IFLA_XDP_ATTACHED], ['IFLA_XDP_FLAGS', 3], ['IFLA_XDP_PROG_ID', N.IFLA_XDP_PROG_ID],
    ['IFLA_XDP_DRV_PROG_ID', N.IFLA_XDP_DRV_PROG_ID], ['IFLA_XDP_SKB_PROG_ID', N.IFLA_XDP_SKB_PROG_ID], ['IFLA_XDP_HW_PROG_ID', N.IFLA_XDP_HW_PROG_ID],
    ['XDP_ATTACHED_NONE', N.XDP_ATTACHED_NONE], ['XDP_ATTACHED_DRV', N.XDP_ATTACHED_DRV], ['XDP_ATTACHED_SKB', N.XDP_ATTACHED_SKB],
    ['XDP_ATTACHED_HW', N.XDP_ATTACHED_HW], ['XDP_ATTACHED_MULTI', N.XDP_ATTACHED_MULTI],
    ['AF_XDP', X.AF_XDP], ['SOL_XDP', X.SOL_XDP], ['XDP_RX_RING', X.XDP_RX_RING], ['XDP_UMEM_REG', X.XDP_UMEM_REG],
    ['XDP_UMEM_FILL_RING', X.XDP_UMEM_FILL_RING], ['XDP_UMEM_COMPLETION_RING', X.XDP_UMEM_COMPLETION_RING], ['XDP_STATISTICS', X.XDP_STATISTICS],
    ['XDP_COPY', X.XDP_COPY], ['sizeof(struct xdp_umem_reg)', X.SIZEOF_XDP_UMEM_REG], ['sizeof(struct sockaddr_xdp)', X.SIZEOF_SOCKADDR_XDP],
    ['sizeof(struct xdp_statistics)', X.SIZEOF_XDP_STATISTICS], ['offsetof(struct xdp_statistics, rx_fill_ring_empty_descs)', 32],
  ];
  const dir = mkdtempSync(join(tmpdir(), `tsp-bpf-uapi-${process.pid}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'check.c'), `#include <stdio.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <linux/bpf.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
int main(void) {
${checks.map(([expr]) => `  printf("%lld\\n", (long long)(${expr}));`).join('\n')}
  return 0;
}
`);
  execFileSync('cc', ['-Wall', '-Werror', '-o', join(dir, 'check'), join(dir, 'check.c')], { stdio: 'pipe' });
  const got = execFileSync(join(dir, 'check'), { encoding: 'utf8' }).trim().split('\n').map(Number);
  checks.forEach(([expr, mine], i) => t.equal(mine, got[i], `${expr} = ${got[i]}`));
});

t.test('the program: six instructions as the kernel reads them', async (t) => {
  const p = B.xskRedirectProgram(7);
  t.same([...p], [
    0x61, 0x12, 16, 0, 0, 0, 0, 0, //   r2 = *(u32 *)(r1 + 16)
    0x18, 0x11, 0, 0, 7, 0, 0, 0, //    r1 = map fd 7 (BPF_PSEUDO_MAP_FD)
    0, 0, 0, 0, 0, 0, 0, 0,
    0xb7, 0x03, 0, 0, 2, 0, 0, 0, //    r3 = XDP_PASS
    0x85, 0x00, 0, 0, 51, 0, 0, 0, //   call bpf_redirect_map
    0x95, 0x00, 0, 0, 0, 0, 0, 0, //    exit
  ]);
});
