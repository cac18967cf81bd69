/**
 * l3fwd benchmark: tspmd l3fwd (LPM, one forwarding lcore) beside DPDK 22.11's l3fwd built from
 * the dpdk-doc package's source, on the same set-up: net_pcap0 replaying one pcap of 64-byte IPv4
 * packets to DPDK's default routes (198.18.0.x -> port 0, 198.18.1.x -> port 1) for ever
 * (infinite_rx=1), net_pcap1 reading an empty capture, no TX file (TX frees and counts, on both
 * sides), --config "(0,0,1)", --parse-ptype; DPDK with -l 1 (its main lcore forwards; l3fwd
 * gives every lcore a TX queue and net_pcap has one), tspmd with -l 0-1 (lcore 1 forwards, the
 * main thread only serves control). Why it is fair: the same PMD type, input and routes, one forwarding
 * core each; net_pcap's infinite RX copies packets from memory on demand, so the RX rate is the rate
 * at which the forwarding loop asks for them. DPDK's copy asks for no RX offloads (net_pcap has
 * none; its stock port_conf asks for checksum offload and fails to configure). Both rates are read
 * alike, from each process's telemetry socket (/ethdev/stats,0 ipackets over a timed window after
 * a warm-up). Rounds alternate DPDK then tspmd; the ratio is the median of the rounds' ratios.
 * Options: --rounds N (default 3), --seconds S (window, default 10), --quick (one round of 3 s).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, cpSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildUdpFrame, runtimeDir, telemetryAsk, TELEMETRY_SOCKET } from '../index.js';
import { median } from './dpdk.js';

const SRC = '/usr/share/dpdk/examples/l3fwd';
const BUILD = `/tmp/tsp-l3fwd-dpdk-${process.getuid?.() ?? 0}`;

/** Build DPDK's l3fwd from the dpdk-doc source (installed if missing), port_conf without RX offloads; the binary's path. */
export function buildDpdkL3fwd(): string {
  const bin = join(BUILD, 'dpdk-l3fwd');
  if (existsSync(bin)) return bin;
  if (!existsSync(SRC)) {
    console.log('dpdk: installing dpdk-doc and libdpdk-dev for the l3fwd source');
    const r = spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=300', 'install', '-y', 'dpdk-doc', 'libdpdk-dev', 'gcc', 'pkg-config'], { stdio: ['ignore', 2, 2], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (r.status !== 0 || !existsSync(SRC)) throw new Error(`${SRC} is missing and apt-get install dpdk-doc failed: install dpdk-doc and libdpdk-dev (DPDK 22.11)`);
  }
  rmSync(BUILD, { recursive: true, force: true });
  mkdirSync(BUILD, { recursive: true });
  cpSync(SRC, BUILD, { recursive: true });
  const main = join(BUILD, 'main.c');
  const text = readFileSync(main, 'utf8');
  const patched = text.replace('.offloads = RTE_ETH_RX_OFFLOAD_CHECKSUM,', '.offloads = 0,');
  if (patched === text) throw new Error(`${main}: port_conf's RX checksum offload line not found (not DPDK 22.11's l3fwd?)`);
  writeFileSync(main, patched);
  const meson = readFileSync(join(BUILD, 'meson.build'), 'utf8');
  const m = /sources = files\(([^)]*)\)/.exec(meson);
  if (!m) throw new Error(`${BUILD}/meson.build: no sources list`);
  const sources = [...m[1].matchAll(/'([^']+)'/g)].map((x) => join(BUILD, x[1]));
  const pc = (flag: string): string[] => {
    const r = spawnSync('pkg-config', [flag, 'libdpdk'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error('pkg-config libdpdk failed: install libdpdk-dev');
    return r.stdout.trim().split(/\s+/);
  };
  const args = ['-O3', '-march=native', '-include', 'rte_config.h', '-DALLOW_EXPERIMENTAL_API', `-I${SRC}/../common`, `-I${SRC}/../common/sse`,
    ...pc('--cflags'), ...sources, '-o', bin, ...pc('--libs')];
  console.log(`dpdk: building ${bin} (gcc -O3, l3fwd of ${SRC} with no RX offloads)`);
  const r = spawnSync('gcc', args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building DPDK's l3fwd failed: ${r.stderr.split('\n').filter((l) => l.includes('error')).slice(0, 5).join('; ')}`);
  return bin;
}

/** The input: 256 64-byte IPv4/UDP frames, half to 198.18.0.x (port 0), half to 198.18.1.x (port 1), as a pcap file. */
export function writeInput(file: string): void {
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 256; i++) {
    frames.push(buildUdpFrame({ dstMac: [2, 0, 0, 0, 0, 0], srcMac: [2, 0, 0, 0, 0, 9], srcIp: 0x0a000001 + i, dstIp: ((198 << 24) | (18 << 16) | ((i & 1) << 8) | (i >> 1)) >>> 0, srcPort: 1000 + i, dstPort: 9, size: 60 }));
  }
  const parts: Uint8Array[] = [];
  const hdr = Buffer.alloc(24);
  hdr.writeUInt32LE(0xa1b2c3d4, 0); hdr.writeUInt16LE(2, 4); hdr.writeUInt16LE(4, 6); hdr.writeUInt32LE(65535, 16); hdr.writeUInt32LE(1, 20);
  parts.push(hdr);
  for (const f of frames) {
    const r = Buffer.alloc(16);
    r.writeUInt32LE(f.length, 8); r.writeUInt32LE(f.length, 12);
    parts.push(r, f);
  }
  writeFileSync(file, Buffer.concat(parts));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Run cmd (an l3fwd serving telemetry under prefix), wait for traffic and warmS, and return port 0's RX Mpps over seconds. */
async function measure(name: string, cmd: string[], prefix: string, warmS: number, seconds: number): Promise<number> {
  const p: ChildProcess = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr!.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-4000); });
  const exited = new Promise<void>((r) => p.on('exit', () => r()));
  const sock = join(runtimeDir(prefix), TELEMETRY_SOCKET);
  const rx = async (): Promise<number> => ((await telemetryAsk(sock, '/ethdev/stats,0'))?.['/ethdev/stats'] as { ipackets?: number } | undefined)?.ipackets ?? 0;
  try {
    const end = Date.now() + 120_000;
    while ((await rx()) === 0) {
      if (p.exitCode !== null || Date.now() > end) throw new Error(`${name} did not start forwarding: ${err}`);
      await sleep(200);
    }
    await sleep(warmS * 1000);
    const a = await rx(), ta = performance.now();
    await sleep(seconds * 1000);
    const b = await rx(), tb = performance.now();
    return (b - a) / ((tb - ta) / 1000) / 1e6;
  } finally {
    p.kill('SIGINT');
    await Promise.race([exited, sleep(15_000)]);
    if (p.exitCode === null) p.kill('SIGKILL');
    rmSync(runtimeDir(prefix), { recursive: true, force: true });
  }
}

/** The l3fwd figures (see bench/run.ts for the contract). */
export async function run(args: string[]): Promise<Record<string, number | number[] | string>> {
  const quick = args.includes('--quick');
  const si = args.indexOf('--seconds'), ri = args.indexOf('--rounds');
  const seconds = si >= 0 ? Number(args[si + 1]) : quick ? 3 : 10;
  const rounds = ri >= 0 ? Number(args[ri + 1]) : quick ? 1 : 3;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new Error(`--rounds takes a whole number from 1 to 50, not "${args[ri + 1]}"`);
  if (!(seconds > 0 && seconds <= 600)) throw new Error(`--seconds takes 1 to 600, not "${args[si + 1]}"`);
  const dpdkBin = buildDpdkL3fwd();
  const dir = `/tmp/tspbl3${process.pid}`;
  mkdirSync(dir, { recursive: true });
  const input = join(dir, 'in.pcap');
  writeInput(input);
  const cli = fileURLToPath(new URL('../app/tspmd.js', import.meta.url));
  // DPDK's net_pcap needs an RX or TX source to probe: port 1 reads an empty capture. Neither port
  // has a TX file, so TX frees (and counts) on both sides.
  const empty = join(dir, 'empty.pcap');
  writeFileSync(empty, readFileSync(input).subarray(0, 24));
  const vdevs = ['--vdev', `net_pcap0,rx_pcap=${input},infinite_rx=1`, '--vdev', `net_pcap1,rx_pcap=${empty}`];
  const app = ['-p', '0x3', '--config', '(0,0,1)', '--parse-ptype'];
  const dpdk: number[] = [], tspmd: number[] = [], ratios: number[] = [];
  try {
    for (let r = 1; r <= rounds; r++) {
      const dp = `tspbl3d${process.pid}`, tp = `tspbl3t${process.pid}`;
      console.log(`round ${r}/${rounds}: DPDK l3fwd (LPM, 1 lcore, net_pcap infinite RX), ${seconds} s ...`);
      const d = await measure('DPDK l3fwd', [dpdkBin, '-l', '1', '--no-huge', '-m', '1024', '--file-prefix', dp, ...vdevs, '--', ...app], dp, 2, seconds);
      console.log(`  dpdk: ${d.toFixed(2)} Mpps`);
      console.log(`round ${r}/${rounds}: tspmd l3fwd, the same, ${seconds} s ...`);
      const t = await measure('tspmd l3fwd', [process.execPath, cli, 'l3fwd', '-l', '0-1', '--no-huge', '--file-prefix', tp, ...vdevs, '--', ...app, '-T', '0'], tp, 2, seconds);
      console.log(`  tspmd: ${t.toFixed(2)} Mpps; ratio ${(t / d).toFixed(3)}`);
      dpdk.push(Number(d.toFixed(3)));
      tspmd.push(Number(t.toFixed(3)));
      ratios.push(Number((t / d).toFixed(3)));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const ratio = median(ratios);
  console.log(`ratios ${ratios.join(' ')}; median ${ratio.toFixed(3)} (load average ${loadavg().map((x) => x.toFixed(2)).join(' ')})`);
  return {
    tspmd_mpps: Number(median(tspmd).toFixed(3)), dpdk_mpps: Number(median(dpdk).toFixed(3)), ratio: Number(ratio.toFixed(3)),
    rounds, seconds, ratios, tspmd_runs_mpps: tspmd, dpdk_runs_mpps: dpdk, loadavg: loadavg().map((x) => x.toFixed(2)).join(' '),
  };
}
