/**
 * Issue 22, finding 8 (the small ones on the option surface):
 *  - every whole-number option of tspmd's commands and examples goes through one parser that
 *    refuses fractions, negatives, NaN, trailing junk, exponents, hex where decimal is meant and
 *    values out of range, with a usage error naming the option and the range (`pdump --queue 0.5`
 *    used to reach the reader); options in seconds still take fractions;
 *  - device arguments (kvargs) refuse keys the driver does not know, `__proto__`, `constructor`
 *    and `prototype` included, and no key reaches an object's prototype;
 *  - bench/dpdk.ts mounts its hugetlbfs on a fresh private directory (mkdtemp, 0700), never on
 *    the predictable /tmp/tsp-dpdk-huge-PID, and never through a planted name.
 * All in this process, except one `tspmd pdump` run for the exit code; no root needed.
 */
import t from 'tap';
import { lstatSync, mkdtempSync, readdirSync, readlinkSync, rmSync, rmdirSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import '../../drivers/index.js';
import type { App } from '../../lib/app/app.js';
import { UsageError } from '../../src/options.js';
import { pdump } from '../../app/pdump/pdump.js';
import { demo } from '../../app/demo/demo.js';
import { l2fwd } from '../../examples/l2fwd/l2fwd.js';
import { l3fwd } from '../../examples/l3fwd/l3fwd.js';
import { pktgen } from '../../examples/pktgen/pktgen.js';
import { parseVdev } from '../../drivers/bus/vdev/vdev.js';
import { parseDeviceSpec } from '../../drivers/bus/pci/address.js';
import { parseDevargs, splitDevargs, type DevargsSchema } from '../../lib/kvargs/kvargs.js';
import { hugeMountDir } from '../../bench/dpdk.js';
import { runCli } from '../cli.js';

// The two runs of the command start at once (each spends seconds starting node); their tests await them.
const pdumpRun = runCli(['pdump', '--file-prefix', `tsp${process.pid}opt`, '--', '--port', '0', '--queue', '0.5', '--out', join(tmpdir(), `tsp${process.pid}opt.pcap`), '--duration', '1']);
const vdevRun = runCli(['l2fwd', '--no-huge', '--file-prefix', `tsp${process.pid}optv`, '--vdev', 'net_null0,__proto__=1', '--vdev', 'net_null1', '--', '--duration', '1']);

/** An app's parse(); throws what it throws. */
function parse<O>(app: App<O>, args: string[]): O {
  return (app as { parse(args: string[]): O }).parse(args);
}

/** The whole-number options: the app, the arguments the option needs besides itself, the option, its range. */
const INT_OPTIONS: Array<[App<never>, string[], string, number, number]> = [
  [pdump as App<never>, ['--port', '0', '--out', 'x'], '--queue', 0, 15],
  [pdump as App<never>, ['--out', 'x'], '--port', 0, 31],
  [pdump as App<never>, ['--port', '0', '--out', 'x'], '--snaplen', 64, 65535],
  [pdump as App<never>, ['--port', '0', '--out', 'x'], '--pid', 1, 2 ** 30],
  [l2fwd as App<never>, [], '-q', 1, 64],
  [l2fwd as App<never>, [], '--burst', 1, 512],
  [l2fwd as App<never>, [], '--rxd', 1, 65536],
  [l2fwd as App<never>, [], '--txd', 1, 65536],
  [l2fwd as App<never>, [], '--idle-polls', 1, 1e9],
  [pktgen as App<never>, [], '--tx-port', 0, 1023],
  [pktgen as App<never>, [], '--rx-port', 0, 1023],
  [pktgen as App<never>, [], '--rate', 0, 1e9],
  [pktgen as App<never>, [], '--size', 42, 9018],
  [pktgen as App<never>, [], '--count', 0, Number.MAX_SAFE_INTEGER],
  [pktgen as App<never>, [], '--flows', 1, 65536],
  [pktgen as App<never>, [], '--sport', 0, 65535],
  [pktgen as App<never>, [], '--dport', 0, 65535],
  [pktgen as App<never>, [], '--burst', 1, 512],
];

/** Options in seconds (fractions allowed): the app, its other arguments, the option, its range. */
const SECONDS_OPTIONS: Array<[App<never>, string[], string, number, number]> = [
  [pdump as App<never>, ['--port', '0', '--out', 'x'], '--duration', 0, 1e7],
  [l2fwd as App<never>, [], '--duration', 0, 1e7],
  [l2fwd as App<never>, [], '-T', 0, 86400],
  [pktgen as App<never>, [], '--duration', 0, 1e7],
  [pktgen as App<never>, [], '-T', 0, 86400],
  [demo as App<never>, [], '--duration', 0.5, 1e7],
  [demo as App<never>, [], '-T', 0, 86400],
];

/** Whether parse threw a UsageError whose message names the option, the value and the range. */
function refused(app: App<never>, args: string[], flag: string, value: string, min: number, max: number): string | null {
  try {
    parse(app, [...args, flag, value]);
  } catch (e) {
    if (!(e instanceof UsageError)) return `threw ${(e as Error).name}: ${(e as Error).message}`;
    const m = e.message;
    return m.startsWith(`${flag} "${value}": `) && m.includes(`from ${min} to ${max}`) ? null : `message: ${m}`;
  }
  return 'accepted';
}

t.test('finding 8: every whole-number option refuses fractions, negatives, NaN, junk and out-of-range values, naming the option and the range', async (t) => {
  for (const [app, args, flag, min, max] of INT_OPTIONS) {
    t.doesNotThrow(() => parse(app, [...args, flag, String(min)]), `${app.name} ${flag} ${min} is accepted`);
    t.doesNotThrow(() => parse(app, [...args, flag, String(max)]), `${app.name} ${flag} ${max} is accepted`);
    const bad = ['0.5', `${min}.5`, `${min}.0`, '-1', '-0', 'NaN', 'Infinity', `${min}x`, `${min} `, ` ${min}`, '', '1e3', '0x10', '+1', `${max + 1}`, '99999999999999999999999'];
    if (min > 0) bad.push(String(min - 1));
    const wrong = bad.map((v) => [v, refused(app, args, flag, v, min, max)] as const).filter(([, r]) => r !== null);
    t.same(wrong, [], `${app.name} ${flag}: every bad value refused with '${flag} "VALUE": ... from ${min} to ${max}'`);
  }
});

t.test('finding 8: options in seconds still take fractions, and refuse negatives, NaN and junk', async (t) => {
  for (const [app, args, flag, min, max] of SECONDS_OPTIONS) {
    const o = parse(app, [...args, flag, '1.5']) as Record<string, unknown>;
    t.ok(Object.values(o).includes(1.5), `${app.name} ${flag} 1.5 is 1.5 seconds`);
    const wrong = ['-1', 'NaN', '1x', '', '1e3', '1.', '.5', `${max + 1}`].map((v) => [v, refused(app, args, flag, v, min, max)] as const).filter(([, r]) => r !== null);
    t.same(wrong, [], `${app.name} ${flag}: every bad value refused`);
  }
});

t.test('finding 8: l2fwd and l3fwd -p take a hexadecimal mask from 0x1 to 0xffffffff and nothing else', async (t) => {
  const apps: [string, (args: string[]) => { portmask: number | null }][] = [['l2fwd', (a) => parse(l2fwd, a)], ['l3fwd', (a) => parse(l3fwd, a)]];
  for (const [name, parseArgs] of apps) {
    t.equal(parseArgs(['-p', '0x3']).portmask, 3, `${name} -p 0x3`);
    t.equal(parseArgs(['-p', 'ffffffff']).portmask, 0xffffffff, `${name} -p ffffffff`);
    for (const v of ['0', '0x0', '0x100000000', 'ffffffffffffffffffffffff', '0x3.5', '-3', 'g', '']) {
      t.throws(() => parseArgs(['-p', v]), { name: 'UsageError', message: `-p "${v}": expected a hexadecimal port mask from 0x1 to 0xffffffff, e.g. 0x3` }, `${name} -p ${v}`);
    }
  }
});

t.test('finding 8: `tspmd pdump --queue 0.5` is a usage error (exit 2) naming --queue and its range', async (t) => {
  const r = await pdumpRun;
  t.equal(r.code, 2, 'exit 2');
  t.match(r.stderr, /^tspmd pdump: --queue "0\.5": expected a whole number from 0 to 15\n$/, r.stderr);
});

const SCHEMA = {
  size: { kind: 'int', min: 14, max: 9000, default: 64, help: 'packet size in bytes' },
} as const satisfies DevargsSchema;

t.test('finding 8: kvargs refuses keys the driver does not know, __proto__, constructor and prototype included', async (t) => {
  const keys = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '__defineGetter__', 'valueOf'];
  for (const key of keys) {
    t.throws(() => parseDevargs(`t0,${key}=1`, SCHEMA, { option: '--vdev', driver: 'net_test' }),
      { name: 'UsageError', message: `--vdev "t0,${key}=1": net_test has no key "${key}"; valid keys: size (packet size in bytes)` }, `t0,${key}=1`);
    t.throws(() => parseVdev(`net_null0,${key}=1`), { name: 'UsageError', message: new RegExp(`^--vdev "net_null0,${key}=1": net_null has no key "${key}"; valid keys: `) }, `--vdev net_null0,${key}=1`);
  }
  // The raw record keeps such a key as a plain own entry: nothing reaches its prototype.
  const { raw } = splitDevargs('x,__proto__={"polluted":1},constructor=2', '--vdev');
  t.same(Object.keys(raw), ['__proto__', 'constructor'], 'both keys are own entries of the record');
  t.equal(raw.__proto__ as unknown, '{"polluted":1}', '__proto__ is a value, not a prototype');
  t.equal(Object.getPrototypeOf(raw), null, 'the record has no prototype to reach');
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched');
  const pci = parseDeviceSpec('-a', '0000:01:00.0,__proto__=1');
  t.same(Object.keys(pci.args), ['__proto__'], '-a keeps __proto__ as a key for the driver to refuse');
  t.throws(() => splitDevargs('x,__proto__=1,__proto__=2', '--vdev'), { name: 'UsageError', message: /key "__proto__" is given twice/ });
});

t.test('finding 8: tspmd l2fwd --vdev net_null0,__proto__=1 is a usage error (exit 2)', async (t) => {
  const r = await vdevRun;
  t.equal(r.code, 2, 'exit 2');
  t.match(r.stderr, /--vdev "net_null0,__proto__=1": net_null has no key "__proto__"; valid keys: /, r.stderr);
});

t.test('finding 8: bench/dpdk.ts mounts its hugetlbfs on a fresh private directory, not on /tmp/tsp-dpdk-huge-PID', async (t) => {
  // What an attacker plants at the name the bench used to take: a symlink to a directory of theirs.
  const victim = mkdtempSync(join(tmpdir(), `tsp-huge-victim-${process.pid}-`));
  const planted = join(tmpdir(), `tsp-dpdk-huge-${process.pid}`);
  rmSync(planted, { recursive: true, force: true });
  symlinkSync(victim, planted);
  const made: string[] = [];
  t.teardown(() => {
    for (const d of made) if (d !== planted) rmSync(d, { recursive: true, force: true });
    rmSync(planted, { force: true });
    rmSync(victim, { recursive: true, force: true });
  });
  const a = hugeMountDir();
  made.push(a);
  const b = hugeMountDir();
  made.push(b);
  t.not(a, planted, `not the predictable name (${a})`);
  t.not(a, b, 'each call makes a new directory');
  for (const d of [a, b]) {
    const st = lstatSync(d);
    t.ok(st.isDirectory() && !st.isSymbolicLink(), `${d} is a real directory`);
    t.equal(st.mode & 0o777, 0o700, `${d} is mode 0700`);
    t.equal(st.uid, process.getuid?.(), `${d} is ours`);
    t.equal(dirname(d), tmpdir(), `${d} is directly under ${tmpdir()}`);
    t.same(readdirSync(d), [], `${d} is empty`);
    t.match(d, new RegExp(`^${tmpdir()}/tsp-dpdk-huge-[A-Za-z0-9]{6}$`), `${d} has a random part`);
  }
  t.equal(readlinkSync(planted), victim, 'the planted symlink is left as it was');
  t.same(readdirSync(victim), [], 'nothing was made in the planted target');
  t.equal(statSync(victim).mode & 0o777, 0o700, 'the planted target\'s mode is unchanged');
  rmdirSync(a);
  rmdirSync(b);
});
