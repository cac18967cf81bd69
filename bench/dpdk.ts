/**
 * DPDK as the yardstick: run Debian's dpdk-testpmd (22.11) next to tspmd's own benchmarks.
 *  - ensureDpdk(): find dpdk-testpmd, installing the Debian packages `dpdk dpdk-dev` when missing;
 *  - ensureHugepages(n): a hugetlbfs mount and n free 2 MB hugepages, with a restore function;
 *  - runTestpmd(opts): one non-interactive testpmd run (auto-start, --stats-period 1), stopped with
 *    SIGINT after `seconds` of forwarding, per-period per-port Rx-pps/Tx-pps parsed from its output;
 *  - dpdkNullMacFwd(s): the reference figure, two null ports with mac forwarding on one core.
 * How each figure is taken and read: docs/performance.md. Set TSPMD_BENCH_VERBOSE to see the
 * command lines and every stats period.
 * Observed with 22.11 here: the first stats period always shows 0 pps (no previous sample); with
 * --stats-period 1 periods come every 1 to 2 s (testpmd sleeps 1 s and compares against a TSC
 * period), but each Rx-pps/Tx-pps is computed over the real elapsed time; an unknown
 * --forward-mode is only warned about (testpmd then runs io), so it is checked here.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

const HUGE_2M = '/sys/kernel/mm/hugepages/hugepages-2048kB';
const VERBOSE = Boolean(process.env.TSPMD_BENCH_VERBOSE);

/** One port's throughput in one stats period, as testpmd printed it (packets per second). */
export interface PortPps {
  port: number;
  rxPps: number;
  txPps: number;
}

/** What runTestpmd measured. */
export interface TestpmdResult {
  /** Median over the measured periods of the ports' summed Rx-pps, in Mpps. */
  rxMpps: number;
  /** Median over the measured periods of the ports' summed Tx-pps, in Mpps. */
  txMpps: number;
  /** Every complete stats period, per port, as printed (warm-up periods included). */
  periods: PortPps[][];
  /** Leading periods left out of the medians because no traffic flowed yet. */
  warmupPeriods: number;
  /** Milliseconds from spawn to the first stats period (EAL init, port start). */
  startupMs: number;
  /** True when testpmd ignored SIGINT and had to be killed with SIGKILL. */
  forcedKill: boolean;
  /** The command that was run. */
  command: string;
  /** The full output (stdout and stderr interleaved), for errors. */
  log: string;
}

/** Options of runTestpmd (EAL and application arguments besides the defaults it always passes). */
export interface TestpmdOptions {
  /** --vdev arguments, e.g. `net_null0` or `net_af_packet0,iface=veth0`. */
  vdevs: string[];
  /** --forward-mode: io, mac, macswap, rxonly, txonly, ... */
  forwardMode: string;
  /** Seconds to forward after the first stats period appeared (expect about seconds/1.5 periods). */
  seconds: number;
  /** -l, default `0-1`. */
  lcores?: string;
  /** --main-lcore, default 0. */
  mainLcore?: number;
  /** --file-prefix, default `tsp-dpdk-<pid>-<n>` (unique per call). */
  filePrefix?: string;
  /** More EAL arguments (before `--`). */
  extraEal?: string[];
  /** More application arguments (after the defaults, so they override them: e.g. `--nb-cores=2`). */
  extraApp?: string[];
  /** Run inside `ip netns exec NS`. */
  netns?: string;
  /** Seconds to wait for the first stats period before giving up, default 60. */
  startTimeout?: number;
  /** Stop forwarding early when this settles (e.g. once another process measured what it needed). */
  until?: Promise<unknown>;
}

let runCount = 0;

function findInPath(name: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  for (const d of [...dirs, '/usr/bin', '/usr/local/bin', '/usr/sbin', '/bin']) {
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

function aptInstall(pkgs: string[]): boolean {
  const args = ['-y', '-o', 'DPkg::Lock::Timeout=300', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold', 'install', ...pkgs];
  console.log(`dpdk: apt-get ${args.join(' ')}`);
  // apt's chatter goes to stderr so that stdout stays the benchmark's own.
  const r = spawnSync('apt-get', args, { stdio: ['ignore', 2, 2], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.error) console.log(`dpdk: apt-get could not run: ${r.error.message}`);
  return r.status === 0;
}

/** Path of dpdk-testpmd; installs the Debian packages `dpdk dpdk-dev` (apt-get) when it is missing. */
export function ensureDpdk(): string {
  const found = findInPath('dpdk-testpmd');
  if (found) return found;
  const pkgs = ['dpdk', 'dpdk-dev'];
  console.log(`dpdk: dpdk-testpmd not found, installing the Debian packages ${pkgs.join(' ')}`);
  let ok = aptInstall(pkgs);
  if (!ok) {
    console.log('dpdk: install failed, running apt-get update and trying again');
    const u = spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=300', 'update'], { stdio: ['ignore', 2, 2], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (u.status !== 0) console.log(`dpdk: apt-get update failed (${u.error?.message ?? `exit ${u.status}`})`);
    ok = aptInstall(pkgs);
  }
  const path = findInPath('dpdk-testpmd');
  if (!path) {
    throw new Error(`dpdk-testpmd is missing and installing the Debian packages "${pkgs.join(' ')}" ${ok ? 'did not provide it' : 'failed'} ` +
      '(apt-get output above, on stderr); install DPDK 22.11 by hand (needs root and a Debian 12 package source)');
  }
  console.log(`dpdk: installed ${path}`);
  return path;
}

function readNum(file: string): number {
  return Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
}

function defaultHugepageKb(): number {
  const m = /^Hugepagesize:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 2048;
}

/** hugetlbfs mount points serving 2 MB pages, from /proc/mounts. */
export function hugetlbfsMounts2M(): string[] {
  const dflt2M = defaultHugepageKb() === 2048;
  const out: string[] = [];
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, dir, type, opts] = line.split(' ');
    if (type !== 'hugetlbfs' || !dir) continue;
    const ps = /(?:^|,)pagesize=([^,]+)/.exec(opts ?? '');
    if (ps ? ps[1] === '2M' || ps[1] === '2048k' : dflt2M) out.push(dir.replace(/\\040/g, ' '));
  }
  return out;
}

/**
 * A fresh directory for ensureHugepages to mount a hugetlbfs on (it runs as root): mkdtemp under
 * the temporary directory, so the name is unpredictable, the directory is new, ours and 0700, and
 * nothing another user planted (a directory or a symlink at a guessable name) is followed.
 */
export function hugeMountDir(): string {
  return mkdtempSync(join(tmpdir(), 'tsp-dpdk-huge-'));
}

/** Makes sure a 2 MB hugetlbfs is mounted and `pages` 2 MB hugepages are free; returns a function undoing exactly that. */
export function ensureHugepages(pages: number): () => void {
  if (!Number.isInteger(pages) || pages < 0) throw new Error(`ensureHugepages: bad page count ${pages}`);
  if (!existsSync(HUGE_2M)) throw new Error(`ensureHugepages: ${HUGE_2M} missing (kernel without 2 MB hugepages?)`);
  let mounted: string | undefined;
  if (hugetlbfsMounts2M().length === 0) {
    const dir = hugeMountDir();
    console.log(`dpdk: no hugetlbfs mounted, mounting one at ${dir}`);
    const r = spawnSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M', 'nodev', dir], { encoding: 'utf8' });
    if (r.status !== 0) {
      try { rmdirSync(dir); } catch { /* keep going */ }
      throw new Error(`ensureHugepages: mount -t hugetlbfs at ${dir} failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
    }
    mounted = dir;
  }
  // Pages reserved by a mapping but not faulted in yet count as free: take them out.
  const available = (): number => readNum(`${HUGE_2M}/free_hugepages`) - readNum(`${HUGE_2M}/resv_hugepages`);
  let added = 0;
  let restored = false;
  const restore = (): void => {
    if (restored) return;
    restored = true;
    const problems: string[] = [];
    if (added > 0) {
      // Give back what we added, relative to the current value: someone else may have changed it meanwhile.
      try {
        const nr = readNum(`${HUGE_2M}/nr_hugepages`);
        writeFileSync(`${HUGE_2M}/nr_hugepages`, String(Math.max(0, nr - added)));
        if (VERBOSE) console.log(`dpdk: nr_hugepages ${nr} -> ${Math.max(0, nr - added)}`);
      } catch (e) {
        problems.push(`could not lower nr_hugepages by ${added}: ${(e as Error).message}`);
      }
    }
    if (mounted) {
      let r = spawnSync('umount', [mounted], { encoding: 'utf8' });
      if (r.status !== 0) r = spawnSync('umount', ['-l', mounted], { encoding: 'utf8' });
      if (r.status !== 0) problems.push(`could not unmount ${mounted}: ${(r.stderr || `exit ${r.status}`).trim()}`);
      else {
        try { rmdirSync(mounted); } catch (e) { problems.push(`could not remove ${mounted}: ${(e as Error).message}`); }
      }
    }
    if (problems.length) console.error(`dpdk: hugepage restore: ${problems.join('; ')}`);
  };
  try {
    const shortfall = pages - available();
    if (shortfall > 0) {
      const nr = readNum(`${HUGE_2M}/nr_hugepages`);
      console.log(`dpdk: ${pages} free 2 MB hugepages needed, raising nr_hugepages ${nr} -> ${nr + shortfall}`);
      writeFileSync(`${HUGE_2M}/nr_hugepages`, String(nr + shortfall));
      added = Math.max(0, readNum(`${HUGE_2M}/nr_hugepages`) - nr);
      const now = available();
      if (now < pages) throw new Error(`ensureHugepages: only ${now} of ${pages} 2 MB hugepages free after raising nr_hugepages by ${added} (memory fragmented or taken?)`);
    }
  } catch (e) {
    restore();
    throw e;
  }
  return restore;
}

/** Parses testpmd's periodic "NIC statistics" blocks into per-period per-port Rx-pps/Tx-pps (complete periods only). */
export function parseTestpmdStats(text: string): PortPps[][] {
  const periods: PortPps[][] = [];
  let cur: PortPps[] = [];
  let port: PortPps | undefined;
  const flush = (): void => {
    if (cur.length) periods.push(cur);
    cur = [];
    port = undefined;
  };
  // Each period starts with "ESC[2J ESC[1;1H" (clear screen); a repeated port number also ends one.
  for (const line of text.split(/\r?\n/)) {
    if (line.includes('\x1b[2J')) flush();
    const h = /NIC statistics for port (\d+)/.exec(line);
    if (h) {
      const id = Number(h[1]);
      if (cur.some((p) => p.port === id)) flush();
      port = { port: id, rxPps: NaN, txPps: NaN };
      cur.push(port);
      continue;
    }
    if (!port) continue;
    const rx = /Rx-pps:\s+(\d+)/.exec(line);
    if (rx) port.rxPps = Number(rx[1]);
    const tx = /Tx-pps:\s+(\d+)/.exec(line);
    if (tx) port.txPps = Number(tx[1]);
  }
  flush();
  // A period cut short (by SIGINT while printing) lacks ports or numbers.
  const nPorts = Math.max(0, ...periods.map((p) => p.length));
  return periods.filter((p) => p.length === nPorts && p.every((s) => Number.isFinite(s.rxPps) && Number.isFinite(s.txPps)));
}

/** Median of xs (0 when empty). */
export function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function tail(log: string, lines = 40): string {
  return log.split('\n').slice(-lines).join('\n').replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
}

function quote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Runs dpdk-testpmd non-interactively for `seconds` of forwarding and returns its per-period and median throughput. */
export async function runTestpmd(opts: TestpmdOptions): Promise<TestpmdResult> {
  const testpmd = ensureDpdk();
  const prefix = opts.filePrefix ?? `tsp-dpdk-${process.pid}-${runCount++}`;
  const eal = [
    '-l', opts.lcores ?? '0-1', '--main-lcore', String(opts.mainLcore ?? 0),
    '--in-memory', '--file-prefix', prefix, '--no-pci',
    ...opts.vdevs.flatMap((v) => ['--vdev', v]),
    ...(opts.extraEal ?? []),
  ];
  const app = [
    `--forward-mode=${opts.forwardMode}`, '--nb-cores=1', '--total-num-mbufs=16384',
    '-a', '--stats-period', '1',
    ...(opts.extraApp ?? []),
  ];
  // setpriv --pdeathsig: testpmd dies with us even if this process is SIGKILLed.
  const setpriv = findInPath('setpriv');
  let argv = [...(setpriv ? [setpriv, '--pdeathsig', 'KILL', '--'] : []), testpmd, ...eal, '--', ...app];
  if (opts.netns) argv = ['ip', 'netns', 'exec', opts.netns, ...argv];
  const command = argv.map(quote).join(' ');
  if (VERBOSE) console.log(`dpdk: ${command}`);

  const chunks: string[] = [];
  let log = '';
  const logText = (): string => (chunks.length ? ((log += chunks.join('')), (chunks.length = 0), log) : log);
  const t0 = performance.now();
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const killNow = (): void => {
    if (!exited(child)) child.kill('SIGKILL');
  };
  process.on('exit', killNow);

  let startupMs = -1;
  let forcedKill = false;
  let onStats: (() => void) | undefined;
  let seen = 0; // how much of stdout was searched for the first stats block
  let outText = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stdout!.on('data', (s: string) => {
    chunks.push(s);
    if (startupMs < 0) {
      outText += s;
      if (outText.indexOf('Rx-pps:', Math.max(0, seen - 8)) >= 0) {
        startupMs = performance.now() - t0;
        outText = '';
        onStats?.();
      } else seen = outText.length;
    }
  });
  child.stderr!.on('data', (s: string) => chunks.push(s));
  let spawnFailed = false;
  const exit = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const spawnError = new Promise<Error>((resolve) => child.once('error', (e) => {
    if (child.pid === undefined) spawnFailed = true;
    resolve(e);
  }));
  const sleep = (ms: number): Promise<'timeout'> => new Promise((r) => setTimeout(() => r('timeout'), ms).unref());
  const exitWithin = async (ms: number): Promise<boolean> => (await Promise.race([exit.then(() => 'exit' as const), sleep(ms)])) === 'exit';

  /** SIGINT, then SIGKILL if it does not exit within `graceMs`; never waits forever. */
  const stop = async (graceMs: number): Promise<void> => {
    if (spawnFailed) return;
    if (!exited(child)) child.kill('SIGINT');
    if (!(await exitWithin(graceMs))) {
      forcedKill = true;
      child.kill('SIGKILL');
      await exitWithin(5000);
    }
  };
  const fail = (why: string): Error => new Error(`dpdk-testpmd ${why}\ncommand: ${command}\n--- last lines of its output ---\n${tail(logText())}`);

  try {
    const started = new Promise<'stats'>((resolve) => {
      onStats = () => resolve('stats');
      if (startupMs >= 0) resolve('stats');
    });
    const first = await Promise.race([
      started,
      exit.then(() => 'exit' as const),
      spawnError,
      sleep((opts.startTimeout ?? 60) * 1000),
    ]);
    if (first instanceof Error) throw fail(`could not be started: ${first.message}`);
    if (first === 'exit') throw fail(`exited before printing any stats (${child.signalCode ?? `exit code ${child.exitCode}`})`);
    if (first === 'timeout') {
      await stop(3000);
      throw fail(`printed no stats within ${opts.startTimeout ?? 60} s`);
    }
    // testpmd only warns about an unknown --forward-mode ("Invalid X packet forwarding mode") and runs io.
    const mode = /^(\S+) packet forwarding(?: with retry)? - ports=/m.exec(logText());
    if (mode && mode[1] !== opts.forwardMode) throw fail(`runs "${mode[1]}" forwarding instead of "${opts.forwardMode}"`);
    if (VERBOSE) console.log(`dpdk: testpmd forwarding after ${startupMs.toFixed(0)} ms`);
    const early = opts.until?.then(() => 'until' as const, () => 'until' as const) ?? new Promise<never>(() => {});
    const during = await Promise.race([sleep(opts.seconds * 1000), exit.then(() => 'exit' as const), early]);
    if (during === 'exit') throw fail(`exited while forwarding (${child.signalCode ?? `exit code ${child.exitCode}`})`);
    await stop(10_000);
  } finally {
    // An exception on the way (or SIGINT not honoured): never leave testpmd behind.
    if (!exited(child)) await stop(3000);
    process.removeListener('exit', killNow);
    // Even with --in-memory the EAL leaves its runtime directory (empty after a clean exit, its
    // telemetry sockets after SIGKILL). Ours alone when the prefix is the generated one.
    if (exited(child)) {
      const runDir = join(process.getuid?.() === 0 ? '/var/run' : process.env.XDG_RUNTIME_DIR ?? '/tmp', 'dpdk', prefix);
      try {
        if (opts.filePrefix === undefined) rmSync(runDir, { recursive: true, force: true });
        else rmdirSync(runDir);
      } catch { /* not there, or not empty: leave it */ }
    }
  }

  const text = logText();
  const periods = parseTestpmdStats(text);
  if (periods.length === 0) throw fail('printed no parsable Rx-pps/Tx-pps stats');
  const sum = (p: PortPps[], k: 'rxPps' | 'txPps'): number => p.reduce((a, s) => a + s[k], 0);
  let warmupPeriods = periods.findIndex((p) => sum(p, 'rxPps') + sum(p, 'txPps') > 0);
  if (warmupPeriods < 0) warmupPeriods = periods.length;
  const measured = periods.slice(warmupPeriods);
  if (VERBOSE) {
    periods.forEach((p, i) => console.log(`dpdk:   period ${i}${i < warmupPeriods ? ' (warm-up)' : ''}: ${p.map((s) => `port ${s.port} rx ${(s.rxPps / 1e6).toFixed(2)} tx ${(s.txPps / 1e6).toFixed(2)}`).join(', ')} Mpps`));
  }
  return {
    rxMpps: median(measured.map((p) => sum(p, 'rxPps'))) / 1e6,
    txMpps: median(measured.map((p) => sum(p, 'txPps'))) / 1e6,
    periods,
    warmupPeriods,
    startupMs,
    forcedKill,
    command,
    log: text,
  };
}

/** 2 MB hugepages for one testpmd run with --total-num-mbufs=16384 (measured: 26 in use with two null ports), with a margin. */
export const TESTPMD_HUGEPAGES = 32;

/** DPDK's null-port mac-forwarding rate on one core: both ports' Rx-pps summed, median over the periods, in Mpps. */
export async function dpdkNullMacFwd(seconds = 10): Promise<number> {
  ensureDpdk();
  const restore = ensureHugepages(TESTPMD_HUGEPAGES);
  try {
    const r = await runTestpmd({ vdevs: ['net_null0', 'net_null1'], forwardMode: 'mac', seconds });
    if (!(r.rxMpps > 0)) throw new Error(`dpdk-testpmd null mac forwarding moved no packets\ncommand: ${r.command}\n${tail(r.log)}`);
    return r.rxMpps;
  } finally {
    restore();
  }
}

/**
 * DPDK's ring yardstick: `echo ring_perf_autotest | dpdk-test ...` on lcores 0-1, from the same
 * Debian package set as testpmd (dpdk-test is in dpdk-dev). Its two-core section runs an SP/SC
 * bulk enqueue loop on one core and a dequeue loop on the other over the same entries, and prints
 * the enqueue side's TSC cycles per entry plus the dequeue side's: both loops span the same
 * transfer (the ring holds 4 K of its 1 M entries), so entries per second through the ring are
 * 2 x TSC Hz / the printed figure, and TSC Hz / the figure is half that.
 */
export interface RingPerfResult {
  /** The `legacy APIs: SP/SC: bulk (size: 32)` figure of the section used: enqueue + dequeue cycles per entry. */
  cyclesPerEntry: number;
  /** Which section it came from: `two physical cores`, or `two hyperthreads` where the VM shows only that. */
  section: string;
  /** The command that was run. */
  command: string;
  /** Its whole output. */
  log: string;
}

/** The sections of ring_perf_autotest's output that run the SP/SC pair on two lcores, preferred first. */
const RING_PERF_SECTIONS = ['two physical cores', 'two hyperthreads'];

/** The SP/SC bulk-32 cycles per entry of the first two-lcore section present (legacy API), or null. */
export function parseRingPerf(text: string): { cyclesPerEntry: number; section: string } | null {
  const found = new Map<string, number>();
  let section = '';
  for (const line of text.split(/\r?\n/)) {
    const h = /^### Testing using (.+?) ###/.exec(line);
    if (h) section = h[1];
    const m = /^legacy APIs: SP\/SC: bulk \(size: 32\): ([\d.]+)\s*$/.exec(line);
    // The legacy API's block comes first; the elem API's lines have another prefix.
    if (m && !found.has(section)) found.set(section, Number(m[1]));
  }
  for (const s of RING_PERF_SECTIONS) {
    const c = found.get(s);
    if (c !== undefined && c > 0) return { cyclesPerEntry: c, section: s };
  }
  return null;
}

/** Path of dpdk-test; installs DPDK's Debian packages (ensureDpdk) when it is missing. */
export function ensureDpdkTest(): string {
  const found = findInPath('dpdk-test');
  if (found) return found;
  ensureDpdk();
  const path = findInPath('dpdk-test');
  if (!path) throw new Error('dpdk-test is missing although dpdk-testpmd is there: install the Debian package dpdk-dev (it ships /usr/bin/dpdk-test)');
  return path;
}

/** One run of DPDK's ring_perf_autotest on lcores 0-1 without hugepages; the SP/SC bulk-32 two-lcore figure. */
export function runRingPerf(): RingPerfResult {
  const bin = ensureDpdkTest();
  // Our own file prefix: the default one ("rte") would collide with any other DPDK process.
  const prefix = `tsp-ringperf-${process.pid}-${runCount++}`;
  const setpriv = findInPath('setpriv');
  const argv = [...(setpriv ? [setpriv, '--pdeathsig', 'KILL', '--'] : []), bin, '-l', '0-1', '--no-pci', '--no-huge', '-m', '256', '--file-prefix', prefix];
  const command = `echo ring_perf_autotest | ${argv.map(quote).join(' ')}`;
  if (VERBOSE) console.log(`dpdk: ${command}`);
  const r = spawnSync(argv[0], argv.slice(1), { input: 'ring_perf_autotest\n', encoding: 'utf8', timeout: 300_000, killSignal: 'SIGKILL', maxBuffer: 16 << 20 });
  const runDir = join(process.getuid?.() === 0 ? '/var/run' : process.env.XDG_RUNTIME_DIR ?? '/tmp', 'dpdk', prefix);
  rmSync(runDir, { recursive: true, force: true });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const fail = (why: string): Error => new Error(`dpdk-test ring_perf_autotest ${why}\ncommand: ${command}\n--- last lines of its output ---\n${tail(log)}`);
  if (r.error) throw fail(`could not run: ${r.error.message}`);
  if (r.status !== 0) throw fail(`exited with ${r.signal ?? `code ${r.status}`}`);
  const p = parseRingPerf(log);
  if (!p) throw fail(`printed no "legacy APIs: SP/SC: bulk (size: 32)" line in a "${RING_PERF_SECTIONS.join('" or "')}" section`);
  return { ...p, command, log };
}

/** The TSC rate in MHz and where it came from: the kernel's calibration (dmesg, else journalctl -k), else /proc/cpuinfo's "cpu MHz". */
export function tscMhz(): { mhz: number; source: string } {
  for (const [cmd, args] of [['dmesg', []], ['journalctl', ['-k', '-b', '--no-pager', '-q']]] as const) {
    const r = spawnSync(cmd, [...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (r.status !== 0 || !r.stdout) continue;
    // "Refined TSC clocksource calibration" (bare metal) is more exact than the early "Detected".
    const refined = /tsc: Refined TSC clocksource calibration: ([\d.]+) MHz/.exec(r.stdout);
    const detected = /tsc: Detected ([\d.]+) MHz processor/.exec(r.stdout);
    const m = refined ?? detected;
    if (m) return { mhz: Number(m[1]), source: `${cmd}: "${m[0]}"` };
  }
  const c = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
  if (!c) throw new Error('no TSC rate: neither the kernel log (dmesg, journalctl -k) has "tsc: Detected ... MHz" nor /proc/cpuinfo a "cpu MHz" line');
  return { mhz: Number(c[1]), source: `/proc/cpuinfo "cpu MHz" (the kernel log has no "tsc: Detected" line: the current clock, which may differ from the TSC rate)` };
}
