/**
 * `tspmd demo` as a user runs it (no root): the emulated virtio-net device in a child process,
 * l2fwd on the virtio PMD and net_null1 in the demo's process. Checked: exit 0, the JSON summary
 * shows packets both ways through the vfio-user port, no mbuf leaked, the device's process is gone
 * afterwards and no /tmp/tsp-demo-<pid>-* directory (with its socket) is left; bad options exit 2
 * with a message naming the option.
 *
 * Busy threads while it runs: the device's lcore and the demo's forwarding lcore (2). Packet
 * counts are checked for being non-zero only, never for a rate.
 */
import t, { type Test as Tap } from 'tap';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHILD_ENV, runCli } from '../cli.js';

/**
 * The demo runs as a user runs it: with the TypeScript loader only, without the test runner's
 * instrumentation (@tapjs/mock and @tapjs/processinfo, in execArgv and NODE_OPTIONS), which also
 * loads into every worker thread and makes the lcores start later still.
 */
const DEMO_EXEC_ARGV = process.execArgv.filter((a) => !/@tapjs[\\/](mock|processinfo)/.test(a));
const DEMO_ENV = Object.fromEntries(Object.entries(CHILD_ENV).filter(([k]) => k !== 'NODE_OPTIONS' && !k.startsWith('_TAPJS_') && !k.startsWith('TAP')));

/** Seconds of forwarding: l2fwd's clock starts once its lcore runs (Lcores.waitStarted), so 2 s carry traffic. */
const DURATION = '2';

/** Processes whose command line contains s (pid -> command line). */
function processesWith(s: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(s)) out.set(Number(d), cmd);
    } catch { /* exited meanwhile */ }
  }
  return out;
}

/** The part of l2fwd's JSON summary checked here. */
interface Summary {
  app: string;
  ports: Array<Record<string, number | string>>;
  mbufs_in_use_after_stop: number;
}

interface DemoRun {
  code: number;
  stdout: string;
  stderr: string;
  /** the demo's pid */
  pid: number;
  /** processes seen while it ran whose command line names the demo's private directory (the device) */
  devicePids: number[];
}

/** Run `tspmd demo ...args`, watching /proc for the device's process; SIGKILL after timeoutMs. */
async function runDemo(args: string[], timeoutMs = 120_000): Promise<DemoRun> {
  let pid = -1;
  let watch: NodeJS.Timeout | undefined;
  const seen = new Set<number>();
  const r = await runCli(['demo', ...args], {
    timeoutMs, execArgv: DEMO_EXEC_ARGV, env: DEMO_ENV,
    onSpawn: (p) => {
      pid = p.pid!;
      watch = setInterval(() => { for (const q of processesWith(`tsp-demo-${pid}/`).keys()) seen.add(q); }, 100);
    },
  });
  clearInterval(watch);
  return { ...r, pid, devicePids: [...seen] };
}

/** After a run: no process of it left, no directory left (one assertion each). */
function checkCleanedUp(t: Tap, r: DemoRun): void {
  const left = processesWith(`tsp-demo-${r.pid}/`);
  t.same([...left.values()], [], `no process of the demo left (device pids seen while it ran: ${r.devicePids.join(', ') || 'none'})`);
  const dirs = readdirSync(tmpdir()).filter((n) => n.startsWith(`tsp-demo-${r.pid}-`));
  t.same(dirs, [], `no ${join(tmpdir(), `tsp-demo-${r.pid}-*`)} directory (with its socket) left`);
}

t.test(`tspmd demo --duration ${DURATION} -T 0 --json: packets both ways through the vfio-user port, nothing left behind`, { timeout: 180_000 }, async (t) => {
  const r = await runDemo(['--duration', DURATION, '-T', '0', '--json']);
  t.equal(r.code, 0, `exit 0${r.code === 0 ? '' : `: ${r.stderr}`}`);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  let s: Summary | null = null;
  try { s = JSON.parse(last) as Summary; } catch { /* reported below */ }
  t.ok(s, `the last line of stdout is the JSON summary: ${last.slice(0, 200)}`);
  if (s) {
    t.equal(s.app, 'l2fwd', 'l2fwd\'s summary');
    const v = s.ports.find((p) => String(p.name).startsWith('vfio-user:'));
    t.ok(v, `a port named vfio-user:... (ports: ${s.ports.map((p) => p.name).join(', ')})`);
    if (v) {
      t.ok(Number(v.ipackets) > 0, `the virtio port received packets from the device (${v.ipackets})${Number(v.ipackets) > 0 ? '' : `\n${r.stderr}`}`);
      t.ok(Number(v.opackets) > 0, `the virtio port sent packets to the device (${v.opackets})`);
      t.equal(v.oerrors, 0, 'no TX errors on the virtio port');
    }
    t.equal(s.mbufs_in_use_after_stop, 0, 'no mbuf leaked');
  }
  t.match(r.stderr, /demo: device: virtio-net: tx_packets [1-9]/, 'the device reported the packets it forwarded at exit');
  t.ok(r.devicePids.length >= 1, 'the device ran in its own process');
  checkCleanedUp(t, r);
});

t.test('tspmd demo --bogus: exit 2 and a message naming the option', { timeout: 180_000 }, async (t) => {
  for (const args of [['--bogus'], ['--', '--bogus']]) {
    const r = await runDemo(args);
    t.equal(r.code, 2, `tspmd demo ${args.join(' ')}: exit 2`);
    t.match(r.stderr, /unknown (EAL|demo) option "--bogus"/, `tspmd demo ${args.join(' ')}: the message names --bogus`);
    t.equal(r.stdout, '', 'nothing on stdout');
    checkCleanedUp(t, r);
  }
});
