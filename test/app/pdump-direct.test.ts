/**
 * The capture contract on the built package: an app of the app framework can be captured whether
 * it runs on its own (`node dist/examples/l2fwd/l2fwd.js ...`) or through the command
 * (`tspmd l2fwd ...`). Exactly: l2fwd on two net_null ports with --duration 10 in the background,
 * then `tspmd pdump --no-huge --file-prefix P -- --port 0 --out F --duration 2`, and tshark reads
 * frames from F. Runs the compiled dist/ (the example is run as a file); dist/ is built first when
 * it is missing or older than the sources (npm test builds it before the suite).
 */
import t, { type Test } from 'tap';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { killChildren, removeRunDir } from '../cli.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const L2FWD = join(ROOT, 'dist/examples/l2fwd/l2fwd.js');
const TSPMD = join(ROOT, 'dist/app/tspmd.js');

let haveTshark = true;
try { execFileSync('sh', ['-c', 'command -v tshark'], { stdio: 'ignore' }); } catch { haveTshark = false; }
const needTshark = haveTshark ? false : 'needs tshark to read the capture (apt-get install tshark)';
let haveCapinfos = true;
try { execFileSync('sh', ['-c', 'command -v capinfos'], { stdio: 'ignore' }); } catch { haveCapinfos = false; }

const tag = `tsp${process.pid}pdd`;
const dir = `/tmp/${tag}`;
const children = new Set<ChildProcess>();
const prefixes: string[] = [];
t.teardown(async () => {
  await killChildren(children);
  for (const p of prefixes) removeRunDir(['--file-prefix', p]);
  rmSync(dir, { recursive: true, force: true });
});

/** The .ts sources that dist/ is compiled from (tests and benchmarks aside). */
function sources(): string[] {
  const out = [join(ROOT, 'index.ts')];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
    }
  };
  for (const d of ['src', 'lib', 'drivers', 'app', 'examples']) walk(join(ROOT, d));
  return out;
}

/** Build dist/ with tsc when a source has no compiled file or one older than itself; throws with tsc's output when the build fails. */
function ensureDist(): string {
  const stale = sources().find((s) => {
    const js = join(ROOT, 'dist', relative(ROOT, s).replace(/\.ts$/, '.js'));
    return !existsSync(js) || statSync(js).mtimeMs < statSync(s).mtimeMs;
  });
  if (stale === undefined) return 'dist/ is up to date';
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', ROOT], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300000 });
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`building dist/ (npx tsc -p .) failed, needed to run ${relative(ROOT, L2FWD)}: ${x.stdout ?? ''}${x.stderr ?? ''}${x.message}`);
  }
  if (!existsSync(L2FWD)) throw new Error(`npx tsc -p . ran but ${L2FWD} is missing`);
  return `dist/ rebuilt (${relative(ROOT, stale)} was newer than its compiled file)`;
}

/** Spawn node with args (plain node: dist/ is JavaScript); collects output. */
function run(args: string[]): { child: ChildProcess; out: () => string; done: Promise<number> } {
  const env = { ...process.env };
  delete env.TSPMD_PDUMP;
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env });
  children.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const done = new Promise<number>((r) => child.on('exit', (c, sig) => r(c ?? (sig ? 128 : 1))));
  return { child, out: () => out, done };
}

/** The contract for one way of starting l2fwd (argv before the EAL options). */
async function captureOf(t: Test, how: string, start: string[]): Promise<void> {
  const prefix = `${tag}${prefixes.length}`;
  prefixes.push(prefix);
  const file = join(dir, `${prefix}.pcap`);
  const app = run([...start, '--no-huge', '--file-prefix', prefix, '--vdev', 'net_null0', '--vdev', 'net_null1', '--', '--duration', '10']);
  const deadline = Date.now() + 30000;
  while (!/lcore \d+: RX port/.test(app.out())) {
    if (app.child.exitCode !== null || Date.now() > deadline) throw new Error(`${how} did not start:\n${app.out()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const pd = run([TSPMD, 'pdump', '--no-huge', '--file-prefix', prefix, '--', '--port', '0', '--out', file, '--duration', '2']);
  const code = await pd.done;
  t.equal(code, 0, `${how}: pdump exits 0`, { output: pd.out() });
  const m = /pdump: (\d+) packets written/.exec(pd.out());
  const written = Number(m?.[1] ?? 0);
  t.ok(written > 0, `${how}: pdump wrote ${written} frames`);
  // tshark dissects about 100,000 frames a second here: it reads the first thousand (a whole
  // 2-second capture of net_null is over a million frames); capinfos counts every record.
  const shown = execFileSync('tshark', ['-r', file, '-c', '1000'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n').filter((l) => l !== '');
  t.equal(shown.length, Math.min(written, 1000), `${how}: tshark -r reads frames from the capture`);
  t.match(shown[0] ?? '', /Ethernet II|→|->/, `${how}: tshark shows an Ethernet frame: ${shown[0]}`);
  if (haveCapinfos) {
    const info = execFileSync('capinfos', ['-c', '-M', file], { encoding: 'utf8' });
    t.match(info, new RegExp(`Number of packets:\\s+${written}\\b`), `${how}: capinfos counts all ${written} frames pdump wrote`);
  }
  app.child.kill('SIGINT');
  t.equal(await app.done, 0, `${how}: l2fwd ends normally after being captured`, { output: app.out().slice(-2000) });
  rmSync(file, { force: true });
}

t.test('pdump captures l2fwd run directly from dist/ and through tspmd', { skip: needTshark, timeout: 600000 }, async (t) => {
  t.comment(ensureDist());
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  await captureOf(t, 'node dist/examples/l2fwd/l2fwd.js', [L2FWD]);
  await captureOf(t, 'tspmd l2fwd', [TSPMD, 'l2fwd']);
});
