/**
 * What the veth forwarding benchmarks (afpacket, afxdp) share: the generator in namespace A, the
 * forwarder on the caller's ends, and the figure, what the kernel counted arriving in namespace B
 * per second after a warm-up, with each CPU's softirq share over the measured window.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Topology } from '../lib/netns/topology.js';

/** Seconds every forwarder runs before the measured window. */
export const WARMUP_S = 4;
const CLI = fileURLToPath(new URL('../app/tspmd.js', import.meta.url));

/** A counter of an interface inside a namespace. */
export function nsCounter(topo: Topology, ns: string, iface: string, name: 'rx_packets' | 'tx_packets'): number {
  return Number(topo.exec(ns, ['cat', `/sys/class/net/${iface}/statistics/${name}`]).trim());
}

/** Per-CPU jiffies: [busy except softirq, softirq, total] for each CPU line of /proc/stat. */
function cpuTimes(): number[][] {
  return readFileSync('/proc/stat', 'utf8').split('\n').filter((l) => /^cpu\d/.test(l)).map((l) => {
    const f = l.split(/\s+/).slice(1, 9).map(Number); // user nice system idle iowait irq softirq steal
    const total = f.reduce((a, b) => a + b, 0);
    return [total - f[3] - f[4] - f[6], f[6], total];
  });
}

/** One measured window: Mpps into B, Mpps the generator offered (A's TX), softirq share of each CPU (%). */
export interface VethWindow {
  mpps: number;
  offeredMpps: number;
  softirqPct: number[];
}

/** Kernel-counted packets per second into namespace B over `seconds` after the warm-up. */
export async function measureB(topo: Topology, seconds: number): Promise<VethWindow> {
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
  const a = nsCounter(topo, topo.nsB, topo.ifB, 'rx_packets'), o = nsCounter(topo, topo.nsA, topo.ifA, 'tx_packets');
  const c0 = cpuTimes(), t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const b = nsCounter(topo, topo.nsB, topo.ifB, 'rx_packets'), o1 = nsCounter(topo, topo.nsA, topo.ifA, 'tx_packets');
  const c1 = cpuTimes(), s = (performance.now() - t0) / 1000;
  const softirqPct = c1.map((c, i) => {
    const total = c[2] - c0[i][2];
    return total > 0 ? Number(((100 * (c[1] - c0[i][1])) / total).toFixed(1)) : 0;
  });
  return { mpps: (b - a) / s / 1e6, offeredMpps: (o1 - o) / s / 1e6, softirqPct };
}

/** Run a tspmd command (in a namespace when given); resolves when it exits 0. */
export function tspmdApp(argv: string[], netns?: string): Promise<void> {
  const cmd = netns ? 'ip' : process.execPath;
  const full = netns ? ['netns', 'exec', netns, process.execPath, CLI, ...argv] : [CLI, ...argv];
  const child = spawn(cmd, full, { stdio: ['ignore', 'ignore', 'inherit'] });
  return new Promise((resolve, reject) => child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`tspmd ${argv[0]} exited with ${code}`)))));
}

/** The MAC of B's interface (the generator's destination). */
export function macOfB(topo: Topology): string {
  return topo.exec(topo.nsB, ['cat', `/sys/class/net/${topo.ifB}/address`]).trim();
}

/** --rounds N from a benchmark's arguments (default def). */
export function roundsOption(args: string[], def: number): number {
  const ri = args.indexOf('--rounds');
  const rounds = ri >= 0 ? Number(args[ri + 1]) : def;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new Error(`--rounds takes a whole number from 1 to 50, not "${args[ri + 1]}"`);
  return rounds;
}

/** Mean of a list. */
export const mean = (x: number[]): number => x.reduce((a, b) => a + b, 0) / x.length;
/** Three decimals, as a number (for JSON). */
export const r3 = (x: number): number => Number(x.toFixed(3));
