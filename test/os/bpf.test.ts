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
