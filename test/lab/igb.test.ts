/**
 * net_igb on a real kernel's VFIO: QEMU 11.1 (the project fetches it for the vfio-user interop
 * test; Debian 12's QEMU 7.2 has no igb) boots a guest with an emulated Intel IOMMU, an 82576
 * (-device igb) on vfio-pci driven by tspmd, and three e1000e NICs owned by the guest's kernel,
 * joined by QEMU hubs:
 *
 *   hub 0: igb (tspmd)  <->  kA (ns tspA, 10.77.0.1)
 *   hub 1: kC (net_af_packet, tspmd's other port)  <->  kB (ns tspB, 10.77.0.2)
 *
 * The guest runs test/lab/igb-guest.ts (each check one TSPLAB line); this side turns them into
 * assertions and answers the guest's `TSPLAB-CTL set_link ...` requests on QEMU's monitor. The
 * same guest boot also reopens the igb on a sparse BAR0 (bar_unmap=) and with BAR0 unmapped
 * (bar_mmap=0): ping and the TCP transfer each (checks igb-sparse-*, igb-unmapped-*), and times a
 * tail kick as a mapped store and as a pwrite (igb-kick-cost). Both VFIO paths: the group/container on Debian's 6.12 kernel and IOMMUFD on the lab's own build.
 *
 * Skips (saying why) only when the lab cannot run here: not root / not x86-64 Linux, TSPMD_LAB=0,
 * or no network to the Debian mirror on a cold cache. TSPMD_LAB_LOG_DIR=DIR keeps the consoles.
 */
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { connect } from 'node:net';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runGuest } from './qemu-run.js';
import { cannotRun, fetchQemu11, ROOT, CACHE, type QemuEnv } from './qemu11.js';
import { tempDir } from '../vfio-user/helpers.js';

const BOOT_TIMEOUT_MS = Number(process.env.TSPMD_LAB_IGB_TIMEOUT ?? 1200) * 1000;
const BDF = '0000:00:03.0';
const IGB_MAC = '52:54:00:74:73:03';
/** every check the guest must report, in order */
const CHECKS = [
  'net-setup', 'igb-devices', 'igb-probe', 'igb-link', 'igb-ping', 'igb-tcp', 'igb-counters', 'igb-rss', 'igb-intr',
  'igb-link-down', 'igb-link-up', 'igb-kick-cost', 'igb-quiet', 'igb-sparse-probe', 'igb-sparse-ping', 'igb-sparse-tcp',
  'igb-unmapped-probe', 'igb-unmapped-ping', 'igb-unmapped-tcp', 'igb-pktgen', 'igb-l2fwd', 'igb-dma-fault', 'igb-done',
];

t.setTimeout(2 * BOOT_TIMEOUT_MS + 30 * 60 * 1000);

interface Kernel {
  name: string;
  kernel: string;
  mode: 'group' | 'iommufd';
}

const why = cannotRun();
if (why) {
  t.test('igb lab', { skip: why }, async () => undefined);
} else {
  // the lab's kernels and initramfs (with dist/ and this guest program), then QEMU 11.1
  const buildArgs = process.env.npm_lifecycle_event === 'test' ? ['--no-tsc'] : [];
  const build = spawnSync('bash', [join(ROOT, 'test/lab/build.sh'), ...buildArgs], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, TSPMD_LAB_CACHE: CACHE }, timeout: 20 * 60 * 1000 });
  const fetch = build.status === 0 ? fetchQemu11() : null;
  if (build.status === 3 || fetch?.kind === 'unavailable') {
    t.test('igb lab', { skip: 'the lab cannot be built here (no network to the Debian mirror on a cold cache)' }, async () => undefined);
  } else if (build.status !== 0) {
    t.fail(`lab build (test/lab/build.sh) failed with exit ${build.status}`, { log: `${build.stdout}${build.stderr}`.slice(-6000) });
  } else if (fetch?.kind === 'failed') {
    t.fail(fetch.why, { log: fetch.log });
  } else if (fetch?.kind === 'ready') {
    const env = readLabEnv();
    const kernels: Kernel[] = [{ name: `Debian ${env.KVER}`, kernel: env.KERNEL, mode: 'group' }];
    if (env.KERNEL_IOMMUFD) kernels.push({ name: `lab ${env.KVER_IOMMUFD}`, kernel: env.KERNEL_IOMMUFD, mode: 'iommufd' });
    else t.fail('the IOMMUFD kernel is not built: run test/lab/build.sh --iommufd once (.ci/run does it)');
    for (const k of kernels) t.test(`igb guest, --vfio-mode ${k.mode}, kernel ${k.name}, ${fetch.env.QEMU11_VERSION}`, (tt) => igbGuest(tt, fetch.env, env.INITRD, k));
  }
}

function readLabEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of readFileSync(join(CACHE, 'lab.env'), 'utf8').split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  return env;
}

/** QEMU 11.1's command line: q35 + intel-iommu (as the group lab), the igb and three e1000e on two hubs, a monitor. */
function qemuArgs(q: QemuEnv, initrd: string, k: Kernel, monitor: string): { file: string; args: string[] } {
  const tree = q.QEMU11_TREE, lib = join(tree, 'usr/lib/x86_64-linux-gnu');
  return {
    file: join(lib, 'ld-linux-x86-64.so.2'),
    args: [
      '--library-path', lib, '--argv0', 'qemu-system-x86_64', join(tree, 'usr/bin/qemu-system-x86_64'),
      '-L', join(tree, 'usr/share/qemu'), '-L', join(tree, 'usr/share/seabios'),
      '-machine', 'q35,kernel-irqchip=split', '-accel', 'tcg,thread=single', '-cpu', 'max',
      '-device', 'intel-iommu,intremap=on,caching-mode=on,aw-bits=48',
      '-m', '2G', '-smp', '2', '-nographic', '-nodefaults', '-serial', 'stdio', '-no-reboot',
      '-netdev', 'hubport,id=ha0,hubid=0', '-netdev', 'hubport,id=ha1,hubid=0',
      '-netdev', 'hubport,id=hb0,hubid=1', '-netdev', 'hubport,id=hb1,hubid=1',
      '-device', `igb,id=tspigb,netdev=ha0,addr=03.0,romfile=,mac=${IGB_MAC}`,
      '-device', 'e1000e,id=tspka,netdev=ha1,addr=04.0,romfile=,mac=52:54:00:74:73:04',
      '-device', 'e1000e,id=tspkb,netdev=hb0,addr=05.0,romfile=,mac=52:54:00:74:73:05',
      '-device', 'e1000e,id=tspkc,netdev=hb1,addr=06.0,romfile=,mac=52:54:00:74:73:06',
      '-monitor', `unix:${monitor},server=on,wait=off`,
      '-kernel', k.kernel, '-initrd', initrd,
      '-append', `console=ttyS0 intel_iommu=on iommu=pt panic=-1 quiet no_timer_check tsplab.bdf=${BDF} tsplab.mode=${k.mode} tsplab.prog=igb tsplab.igbmac=${IGB_MAC}`,
    ],
  };
}

/** Send one HMP command on QEMU's monitor socket. */
function monitorCommand(sock: string, cmd: string): Promise<string> {
  return new Promise((resolve) => {
    const c = connect(sock);
    let out = '';
    const done = (): void => { c.destroy(); resolve(out); };
    c.on('data', (d) => {
      out += d.toString();
      if (out.split('(qemu)').length > 2) done();
    });
    c.on('connect', () => c.write(`${cmd}\n`));
    c.on('error', (e) => { out += `error: ${e.message}`; done(); });
    setTimeout(done, 5000);
  });
}

async function igbGuest(t: Test, q: QemuEnv, initrd: string, k: Kernel): Promise<void> {
  const monitor = join(tempDir(t), 'monitor.sock');
  const { file, args } = qemuArgs(q, initrd, k, monitor);
  const monitorLog: string[] = [];
  const run = await runGuest(file, args, BOOT_TIMEOUT_MS, (fn) => t.teardown(fn), (line) => {
    const m = /TSPLAB-CTL (set_link \S+ (?:on|off))/.exec(line);
    if (m) void monitorCommand(monitor, m[1]).then((out) => { monitorLog.push(`${m[1]}: ${out.replace(/\x1b\[[0-9;]*[a-zA-Z]/g, '').trim().slice(-200)}`); });
  });
  let failed = false;
  const check = (ok: boolean, name: string, extra: object = {}): void => {
    if (!ok) failed = true;
    t.ok(ok, name, extra);
  };
  check(!run.error && !run.timedOut && run.code === 0, `QEMU 11.1 boots the igb guest and powers it off (${run.secs} s)`, { exit: run.code, timedOut: run.timedOut, error: run.error?.message });
  const by = new Map(run.results.map((r) => [r.check, r]));
  for (const r of run.results) {
    if (r.check === 'done' || r.check === 'igb-done') continue;
    const { check: name, ok, ...detail } = r;
    check(ok === true, `igb (${k.mode}): ${name}`, { detail });
  }
  for (const name of CHECKS) check(by.has(name), `igb (${k.mode}): check "${name}" was reported`);
  const tcp = by.get('igb-tcp'), pg = by.get('igb-pktgen');
  if (tcp?.ok) t.comment(`igb (${k.mode}) TCP through tspmd under TCG: ${JSON.stringify(tcp.aToB)} / ${JSON.stringify(tcp.bToA)}`);
  for (const name of ['sparse', 'unmapped']) {
    const r = by.get(`igb-${name}-tcp`);
    if (r?.ok) t.comment(`igb (${k.mode}) TCP on a${name === 'sparse' ? ' sparse' : 'n unmapped'} BAR0 (${String(r.devarg)}) under TCG: ${JSON.stringify(r.aToB)} / ${JSON.stringify(r.bToA)}, ${String(r.runSecs)} s from EAL start to the transfer's end`);
  }
  const kick = by.get('igb-kick-cost');
  if (kick?.ok) t.comment(`igb (${k.mode}) tail kick under TCG (QEMU's emulation cost): mapped store ${String(kick.mappedNs)} ns, pwrite ${String(kick.pwriteNs)} ns (${String(kick.n)} each)`);
  if (pg?.ok) t.comment(`igb (${k.mode}) pktgen under TCG: ${JSON.stringify(pg.summary)}`);
  t.comment(`monitor: ${monitorLog.join(' | ') || 'no commands'}`);
  if (failed) t.comment(`guest console (last 12 KB):\n${run.tail(12000)}`);
  if (process.env.TSPMD_LAB_LOG_DIR) {
    mkdirSync(process.env.TSPMD_LAB_LOG_DIR, { recursive: true });
    writeFileSync(join(process.env.TSPMD_LAB_LOG_DIR, `igb-${k.mode}.log`), run.log);
  }
}
