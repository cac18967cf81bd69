/**
 * The package as a consumer gets it: `npm pack`'s tarball installed into a fresh package, the
 * README's "As a library" program compiled with tsc --strict against the package's own types and
 * run on two ring ports and on two null ports, the `tspmd` bin run from the consumer's
 * node_modules/.bin, the lock file agreeing with package.json (so `npm install` in a fresh
 * clone leaves git status clean), and package.json's allowScripts deciding on every dependency's
 * install script (so `npm install` says nothing about one) with koffi still loading. Needs the built dist/ (npm test builds first) and the npm
 * registry or npm's cache for koffi, piscina and @types/node.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');
const NPM_ENV = { ...process.env, npm_config_fund: 'false', npm_config_audit: 'false', npm_config_update_notifier: 'false' };

interface Run { code: number; stdout: string; stderr: string }

function run(cmd: string, args: string[], cwd: string, timeout = 240_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout, env: NPM_ENV, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** The first ```ts block of the README's "## As a library" section. */
function readmeProgram(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## As a library'));
  const m = /```ts\n([\s\S]*?)```/.exec(section);
  if (!m) throw new Error('README.md: no ```ts block under "## As a library"');
  return m[1];
}

t.test('package.json and package-lock.json agree (npm install leaves the lock unchanged)', async (t) => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { name: string; version: string; packages: Record<string, Record<string, unknown>> };
  const root = lock.packages[''];
  t.equal(lock.name, pkg.name);
  t.equal(lock.version, pkg.version);
  for (const k of ['name', 'version', 'license', 'bin', 'dependencies', 'devDependencies', 'engines']) t.same(root[k], pkg[k], `lock's root ${k} is package.json's`);
});

t.test('npm install runs no dependency install script and says nothing about one; koffi loads from its prebuilt', async (t) => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { allowScripts?: Record<string, boolean> };
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { hasInstallScript?: boolean }> };
  const allow = pkg.allowScripts ?? {};
  // Keys are "name" or "name@range"; a scoped name starts with its own @.
  const covered = new Set(Object.keys(allow).map((k) => /^(@?[^@]+)/.exec(k)![1]));
  const withScripts = Object.entries(lock.packages).filter(([, p]) => p.hasInstallScript === true)
    .map(([path]) => path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length));
  t.ok(withScripts.includes('koffi'), 'the lock marks koffi as having an install script (else this test checks nothing)');
  for (const name of withScripts) t.ok(covered.has(name), `package.json's allowScripts decides on ${name}'s install script (else npm install warns about it)`);
  t.equal(allow.koffi, false, 'koffi\'s install script is denied: it only checks the prebuilt loads or compiles koffi with CMake');

  // Without its script koffi needs the prebuilt of its optional dependency for this platform.
  const koffiPkg = JSON.parse(readFileSync(join(ROOT, 'node_modules/koffi/package.json'), 'utf8')) as { optionalDependencies?: Record<string, string> };
  const prebuilt = `@koromix/koffi-${process.platform}-${process.arch}`;
  t.ok(koffiPkg.optionalDependencies?.[prebuilt], `koffi ships its binary for ${process.platform}-${process.arch} as ${prebuilt}`);
  const load = await run(process.execPath, ['-e', 'import("koffi").then((k) => console.log(typeof k.default.load))'], ROOT, 30_000);
  t.equal(load.stdout.trim(), 'function', `koffi loads${load.code === 0 ? '' : `: ${load.stderr}`}`);

  // npm's own view, where it has one (npm 11's install-scripts command; older npm lack it).
  const ls = await run('npm', ['install-scripts', 'ls', '--json'], ROOT, 60_000);
  let pending: unknown[] | undefined;
  try { pending = (JSON.parse(ls.stdout) as { allowScripts: unknown[] }).allowScripts; } catch { /* no such command */ }
  if (pending === undefined) t.comment(`npm has no "install-scripts ls --json" here (exit ${ls.code}): checked package.json and the lock only`);
  else t.same(pending, [], 'npm install-scripts ls: no dependency\'s install script left unreviewed');
});

t.test('the bin is executable after the build', async (t) => {
  const mode = statSync(join(ROOT, 'dist/app/tspmd.js')).mode;
  t.equal(mode & 0o111, 0o111, 'dist/app/tspmd.js has its run bits (npm run build sets them, not only npm install)');
});

t.test('npm pack, install into a fresh package, compile and run the README program', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsppkg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pack = await run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], ROOT);
  t.equal(pack.code, 0, pack.code === 0 ? 'npm pack' : `npm pack: ${pack.stderr}`);
  const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  if (!t.ok(tarball, 'npm pack wrote a tarball')) return;
  const app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'tsp-consumer', version: '1.0.0', private: true, type: 'module' }));
  const devTypes = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }).devDependencies['@types/node'];
  const inst = await run('npm', ['install', '--prefer-offline', '--no-package-lock', join(dir, tarball!), `@types/node@${devTypes}`], app);
  if (!t.equal(inst.code, 0, inst.code === 0 ? 'npm install of the tarball' : `npm install of the tarball: ${inst.stderr.slice(-2000)}`)) return;

  // Nothing an app needs lives under dist/ paths: the program imports 'tspmd' only.
  const program = readmeProgram();
  const imports = [...program.matchAll(/from\s+'([^']+)'/g)].map((m) => m[1]);
  t.same([...new Set(imports)], ['tspmd'], 'the README program imports only from "tspmd"');
  writeFileSync(join(app, 'app.ts'), program);
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', types: ['node'], outDir: '.' },
    files: ['app.ts'],
  }));
  const tsc = await run(process.execPath, [TSC, '-p', '.'], app);
  if (!t.equal(tsc.code, 0, `tsc --strict against the package's types${tsc.code === 0 ? '' : `:\n${tsc.stdout}${tsc.stderr}`}`)) return;

  for (const ports of [['net_ring0', 'net_ring1'], ['net_null0', 'net_null1']]) {
    const args = ['app.js', '--no-huge', '--file-prefix', `tsppkg${process.pid}`, ...ports.flatMap((p) => ['--vdev', p])];
    const r = await run(process.execPath, args, app, 60_000);
    t.equal(r.code, 0, `node ${args.join(' ')}${r.code === 0 ? '' : `: ${r.stderr}`}`);
    const last = r.stdout.trim().split('\n').pop() ?? '';
    let forwarded = -1;
    try { forwarded = (JSON.parse(last) as { forwarded: number }).forwarded; } catch { /* asserted below */ }
    t.ok(forwarded > 0, `${ports.join(' + ')}: last line ${last} has forwarded > 0`);
  }
  const help = await run(process.execPath, ['app.js', '--help'], app, 30_000);
  t.equal(help.code, 0);
  t.match(help.stdout, /EAL options/, 'the app has --help with the EAL options');

  const bin = await run(join(app, 'node_modules/.bin/tspmd'), ['--help'], app, 30_000);
  t.equal(bin.code, 0, `the installed tspmd bin runs${bin.code === 0 ? '' : `: ${bin.stderr}`}`);
  t.match(bin.stdout, /usage: tspmd <app>/);
});
