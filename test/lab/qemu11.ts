/**
 * QEMU 11.1 (the vfio-user client) for lab tests: the private tree test/lab/qemu-vfio-user.sh
 * fetches, its environment file, and the command line of a q35 TCG guest whose RAM is a shared
 * memfd (so a vfio-user server can map it by fd) with one vfio-user-pci device.
 */
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CACHE = process.env.TSPMD_LAB_CACHE ?? '/var/cache/tspmd/lab';
const FETCH_TIMEOUT_MS = 20 * 60 * 1000; // a cold cache may also run build.sh (kernel, busybox)

/** What qemu-vfio-user.sh records in $CACHE/qemu-11/qemu.env. */
export interface QemuEnv {
  QEMU11_TREE: string;
  QEMU11_VERSION: string;
  KERNEL: string;
  /** the initramfs that lists PCI devices */
  INITRD: string;
  /** the initramfs that brings up virtio_net and pings */
  INITRD_NET: string;
}

/** Why these tests cannot run here, or null. */
export function cannotRun(): string | null {
  if (process.env.TSPMD_LAB === '0') return 'TSPMD_LAB=0';
  if (process.platform !== 'linux' || process.arch !== 'x64') return `needs x86-64 Linux (this is ${process.platform}/${process.arch})`;
  if (process.getuid?.() !== 0) return `needs root (apt-get download into ${CACHE})`;
  return null;
}

/** Outcome of fetching QEMU 11.1: ready (with its env), unavailable here (skip), or failed. */
export type FetchOutcome = { kind: 'ready'; env: QemuEnv; secs: string } | { kind: 'unavailable'; reason: string } | { kind: 'failed'; why: string; log: string };

/** Run test/lab/qemu-vfio-user.sh (cached after the first run) and read its environment. */
export function fetchQemu11(): FetchOutcome {
  const t0 = Date.now();
  const r = spawnSync('bash', [join(ROOT, 'test/lab/qemu-vfio-user.sh')], {
    cwd: ROOT, encoding: 'utf8', env: { ...process.env, TSPMD_LAB_CACHE: CACHE }, timeout: FETCH_TIMEOUT_MS,
  });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status === 3) return { kind: 'unavailable', reason: log.split('\n').find((l) => l.includes('UNAVAILABLE')) ?? 'qemu-vfio-user.sh exit 3' };
  if (r.status !== 0) return { kind: 'failed', why: `test/lab/qemu-vfio-user.sh failed${r.error ? `: ${r.error.message}` : ` with exit ${r.status}`}`, log: log.slice(-6000) };
  const env: Record<string, string> = {};
  const path = join(CACHE, 'qemu-11/qemu.env');
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  for (const k of ['QEMU11_TREE', 'QEMU11_VERSION', 'KERNEL', 'INITRD', 'INITRD_NET']) {
    if (!env[k]) return { kind: 'failed', why: `${path}: ${k} is missing`, log };
  }
  return { kind: 'ready', env: env as unknown as QemuEnv, secs: ((Date.now() - t0) / 1000).toFixed(1) };
}

/** QEMU 11.1 through its tree's own dynamic linker, with the tree's firmware, one vfio-user-pci device on sock. */
export function qemuCommand(env: QemuEnv, sock: string, o: { ramMb: number; initrd: string; append?: string }): { file: string; args: string[] } {
  const tree = env.QEMU11_TREE, lib = join(tree, 'usr/lib/x86_64-linux-gnu');
  const dev = JSON.stringify({ driver: 'vfio-user-pci', socket: { type: 'unix', path: sock } });
  return {
    file: join(lib, 'ld-linux-x86-64.so.2'),
    args: [
      '--library-path', lib, '--argv0', 'qemu-system-x86_64', join(tree, 'usr/bin/qemu-system-x86_64'),
      '-L', join(tree, 'usr/share/qemu'), '-L', join(tree, 'usr/share/seabios'),
      '-machine', 'q35', '-accel', 'tcg,thread=single', '-cpu', 'max', '-m', `${o.ramMb}M`,
      '-object', `memory-backend-memfd,id=mem,size=${o.ramMb}M,share=on`, '-machine', 'memory-backend=mem',
      '-nographic', '-nodefaults', '-serial', 'stdio', '-no-reboot',
      '-device', dev,
      '-kernel', env.KERNEL, '-initrd', o.initrd, '-append', `console=ttyS0 panic=-1 quiet${o.append ? ' ' + o.append : ''}`,
    ],
  };
}

/**
 * Run body as tap subtest `title` with QEMU 11.1 ready; skip (saying why) when it cannot run here
 * or cannot be fetched, fail when fetching fails otherwise.
 */
export function withQemu11(title: string, body: (t: Test, env: QemuEnv) => Promise<void>): void {
  const why = cannotRun();
  if (why) {
    t.test(title, { skip: why }, async () => undefined);
    return;
  }
  const fetch = fetchQemu11();
  if (fetch.kind === 'unavailable') t.test(title, { skip: `QEMU 11.1 cannot be fetched here: ${fetch.reason}` }, async () => undefined);
  else if (fetch.kind === 'failed') t.fail(fetch.why, { log: fetch.log });
  else {
    t.pass(`QEMU 11.1 tree ready in ${fetch.secs} s (${fetch.env.QEMU11_VERSION})`);
    t.test(title, (tt) => body(tt, fetch.env));
  }
}
