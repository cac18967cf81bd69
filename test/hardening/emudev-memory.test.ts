/**
 * emudev hardening, issue 14 item 4: memory files that can shrink must not kill the device process.
 *
 * A client that holds a file the device maps (a BAR memfd it received, or its own DMA memory) can
 * ftruncate it; the device's next access past the new end is SIGBUS, which kills the process.
 * BAR memfds are sealed before they are sent; client DMA memfds must carry F_SEAL_SHRINK (the
 * device adds it when the memfd allows sealing); memory that cannot be sealed follows the device's
 * unsealedDma policy ('message', the default, reaches it through DMA messages, so a shrink costs a
 * failed read, not the process). The scenarios that die of SIGBUS on unfixed code run in a child process (this
 * file, run again with TSP_EMUDEV_MEM_CHILD set).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as os from '../../src/os/libc.js';
import { EmuDevice, type DmaMessagePath } from '../../lib/emudev/emudev.js';
import { DMA_FLAG_READ, DMA_FLAG_WRITE, ProtocolError } from '../../lib/vfio-user/protocol.js';
import { createSegment, freeSegment } from '../../src/memory/segment.js';
import { runCli } from '../cli.js';

const RW = DMA_FLAG_READ | DMA_FLAG_WRITE;
const SIZE = 64 * 1024;
const IOVA = 0x1000_0000n;
const CHILD = process.env.TSP_EMUDEV_MEM_CHILD;
const NAME = `tsp-mem-${process.pid}`;

function device(name = NAME): EmuDevice {
  return new EmuDevice({ name, pci: { vendorId: 0x1234, deviceId: 0x11eb, classCode: 0xff0000 }, bars: [{ index: 0, size: 0x4000, shared: [{ offset: 0x1000, size: 0x1000 }] }], irqs: [] });
}

/** A client memfd of SIZE bytes holding a pattern. */
function clientMemfd(flags: number): number {
  const fd = os.memfdCreate(NAME, flags);
  os.ftruncate(fd, SIZE);
  const b = new Uint8Array(SIZE).map((_, i) => i & 0xff);
  os.pwrite(fd, b, SIZE, 0);
  return fd;
}

/** The message path as a client would serve DMA_READ/WRITE: from its own file. */
function filePath(fd: number): DmaMessagePath {
  return {
    read: async (iova, len) => {
      const b = new Uint8Array(len);
      const n = os.pread(fd, b, len, iova - IOVA);
      if (n !== len) throw new Error(`client memory: read ${n} of ${len} bytes`);
      return b;
    },
    write: async (iova, data) => { os.pwrite(fd, data, data.byteLength, iova - IOVA); },
  };
}

/** Whether this process maps a file whose name contains needle (/proc/self/maps). */
const mapped = (needle: string): boolean => readFileSync('/proc/self/maps', 'utf8').includes(needle);

/** Child scenarios: one line per step; SIGBUS is the failure the parent sees. */
async function child(which: string): Promise<void> {
  const out = (s: string): void => { process.stdout.write(s + '\n'); };
  const dev = device();
  const shrink = (fd: number): void => {
    try { os.ftruncate(fd, 0); out('shrunk'); } catch (e) { out(`shrink refused ${(e as os.OsError).code}`); }
  };
  if (which === 'bar') {
    const fd = dev.regionFd(0); // what REGION_INFO sends the client (O_RDWR)
    out(`seals=${os.getSeals(fd)}`);
    shrink(fd);
    out(`doorbell=${dev.barMemory(0)[0x1000]}`); // the device polls its doorbell page
  } else if (which === 'sealable') {
    const fd = clientMemfd(os.MFD_ALLOW_SEALING); // sealable, but the client did not seal it
    dev.dmaMap(IOVA, BigInt(SIZE), RW, fd, 0n);
    out(`seals=${os.getSeals(fd)}`);
    shrink(fd);
    out(`byte=${dev.translate(IOVA + 0x3000n, 16, false)![5]}`);
  } else if (which === 'unsealable') {
    const fd = clientMemfd(0); // made without MFD_ALLOW_SEALING: it can never be sealed
    out(`policy=${dev.unsealedDma}`); // the default
    dev.connected(filePath(fd));
    dev.dmaMap(IOVA, BigInt(SIZE), RW, fd, 0n);
    out(`local=${dev.translate(IOVA, 16, false) !== null}`);
    out(`before=${(await dev.dmaRead(IOVA + 0x3000n, 16))[5]}`);
    shrink(fd);
    try { out(`after=${(await dev.dmaRead(IOVA + 0x3000n, 16))[5]}`); } catch (e) { out(`after: read failed: ${(e as Error).message}`); }
  }
  dev.close();
  out('alive');
}

if (CHILD) {
  await child(CHILD);
} else {
  const run = (which: string, ms: number): Promise<{ code: number | null; signal: string | null; out: string; err: string }> => new Promise((resolve) => {
    const p = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], { env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1', TSP_EMUDEV_MEM_CHILD: which }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), ms);
    p.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out, err }); });
  });
  const SEALED = os.F_SEAL_SHRINK | os.F_SEAL_GROW | os.F_SEAL_SEAL;

  t.test('BAR memfd: sealed before it is sent, a client\'s ftruncate(fd, 0) fails, the doorbell read lives', async (t) => {
    const r = await run('bar', 30_000);
    t.equal(r.signal, null, `the device process was not killed (it printed ${JSON.stringify(r.out)}; stderr ${r.err.slice(-300)})`);
    t.match(r.out, new RegExp(`^seals=${SEALED}$`, 'm'), 'F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL');
    t.match(r.out, /^shrink refused EPERM$/m, 'the client cannot shrink it');
    t.match(r.out, /^doorbell=0\nalive$/m, 'the device reads its doorbell and closes normally');
  });

  t.test('client DMA memfd that allows sealing: the device seals it against shrinking before mapping it', async (t) => {
    const r = await run('sealable', 30_000);
    t.equal(r.signal, null, `the device process was not killed (it printed ${JSON.stringify(r.out)}; stderr ${r.err.slice(-300)})`);
    t.match(r.out, new RegExp(`^seals=${os.F_SEAL_SHRINK}$`, 'm'), 'F_SEAL_SHRINK added to the client\'s memfd');
    t.match(r.out, /^shrink refused EPERM$/m);
    t.match(r.out, /^byte=5\nalive$/m, 'the device reads the client\'s memory, mapped by fd');
  });

  t.test('client DMA memfd that cannot be sealed, unsealedDma \'message\' (the default): a shrink fails a read, not the process', async (t) => {
    const r = await run('unsealable', 30_000);
    t.equal(r.signal, null, `the device process was not killed (it printed ${JSON.stringify(r.out)}; stderr ${r.err.slice(-300)})`);
    t.match(r.out, /^policy=message$/m, 'message is the default policy');
    t.match(r.out, /^local=false$/m, 'not mapped: reached through the message path');
    t.match(r.out, /^before=5$/m, 'reads work before');
    t.match(r.out, /^shrunk$/m, 'the client shrinks its file');
    t.match(r.out, /^after: read failed: client memory: read 0 of 16 bytes\nalive$/m, 'the next read fails cleanly and the device lives');
  });

  t.test('unsealable memory: policy refuse (EPERM naming the fix), map (as before), message; files on tmpfs and ext4', async (t) => {
    const dev = device();
    t.teardown(() => dev.close());
    const files = [join('/dev/shm', `${NAME}-file`), join(tmpdir(), `${NAME}-file`)];
    t.teardown(() => files.forEach((f) => rmSync(f, { force: true })));
    const fds: number[] = [];
    t.teardown(() => fds.forEach((fd) => os.close(fd)));
    for (const f of files) {
      writeFileSync(f, new Uint8Array(SIZE));
      fds.push(openSync(f, 'r+'));
    }
    fds.push(clientMemfd(0));
    const what = ['a tmpfs file (seals: F_SEAL_SEAL)', 'an ext4 file (F_GET_SEALS: EINVAL)', 'a memfd made without MFD_ALLOW_SEALING'];
    for (const [i, fd] of fds.entries()) {
      dev.unsealedDma = 'refuse';
      t.throws(() => dev.dmaMap(IOVA, BigInt(SIZE), RW, fd, 0n), { errno: os.E.EPERM, message: /size is not sealed.*MFD_ALLOW_SEALING.*F_SEAL_SHRINK/ }, `refuse: ${what[i]} is refused`);
      t.equal(dev.dmaRegions().length, 0, 'nothing was mapped');
      dev.unsealedDma = 'message';
      dev.dmaMap(IOVA, BigInt(SIZE), RW, fd, 0n);
      t.equal(dev.dmaRegions()[0].va, 0n, 'message: no local mapping');
      dev.dmaUnmap(IOVA, BigInt(SIZE));
      dev.unsealedDma = 'map';
      dev.dmaMap(IOVA, BigInt(SIZE), RW, fd, 0n);
      t.not(dev.dmaRegions()[0].va, 0n, 'map: mapped by fd (the client is trusted)');
      dev.dmaUnmap(IOVA, BigInt(SIZE));
    }
    t.ok(fds.every((fd) => { try { closeSync(openSync(`/proc/self/fd/${fd}`, 'r')); return true; } catch { return false; } }), 'the client\'s fds are untouched (the caller owns them)');
  });

  t.test('EAL memfd segments are sealed against resizing before any device sees them', async (t) => {
    for (const huge of [false]) {
      const seg = createSegment(1, 2 * 4096, 4096, { kind: 'memfd', huge, prefix: `tspseal${process.pid}` }, 'va');
      t.teardown(() => freeSegment(seg));
      t.equal(os.getSeals(seg.fd) & (os.F_SEAL_SHRINK | os.F_SEAL_GROW), os.F_SEAL_SHRINK | os.F_SEAL_GROW, 'F_SEAL_SHRINK | F_SEAL_GROW');
      t.throws(() => os.ftruncate(seg.fd, 4096), { code: 'EPERM' }, 'cannot shrink');
      t.throws(() => os.ftruncate(seg.fd, 4 * 4096), { code: 'EPERM' }, 'cannot grow');
      const dev = device();
      t.teardown(() => dev.close());
      dev.unsealedDma = 'refuse';
      dev.dmaMap(IOVA, BigInt(seg.len), RW, seg.fd, 0n);
      t.not(dev.dmaRegions()[0].va, 0n, 'a device that refuses unsealed memory maps it by fd');
    }
  });

  // hugetlbfs: mmap and munmap work in whole huge pages. Needs one free 2 MiB page (root may add one).
  const NR = '/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';
  const free = (): number => Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  t.test('hugetlb memfd DMA_MAP of 4 KiB: mapped and unmapped as one whole huge page', async (t) => {
    let added = 0;
    if (free() < 1 && process.getuid?.() === 0) {
      try { writeFileSync(NR, String(Number(readFileSync(NR, 'utf8')) + 1)); added = 1; } catch { /* no hugepages here */ }
    }
    t.teardown(() => { if (added) writeFileSync(NR, String(Number(readFileSync(NR, 'utf8')) - added)); });
    if (free() < 1) { t.plan(0, 'skip: no free 2 MiB hugepage (and none could be added)'); return; }
    const HUGE = 2 << 20;
    const fd = os.memfdCreate(`${NAME}-huge`, os.MFD_HUGETLB | (21 << os.MFD_HUGE_SHIFT) | os.MFD_ALLOW_SEALING);
    t.teardown(() => os.close(fd));
    os.ftruncate(fd, HUGE);
    os.addSeals(fd, os.F_SEAL_SHRINK);
    const dev = device();
    t.teardown(() => dev.close());
    dev.unsealedDma = 'refuse';
    t.throws(() => dev.dmaMap(IOVA, 4096n, RW, fd, 4096n), { errno: os.E.EINVAL, message: /not aligned to the file's 2097152-byte pages/ }, 'a file offset inside a huge page is refused');
    dev.dmaMap(IOVA, 4096n, RW, fd, 0n);
    t.ok(mapped(`${NAME}-huge`), 'mapped');
    dev.translate(IOVA, 4096, true)!.fill(7);
    t.doesNotThrow(() => dev.dmaUnmap(IOVA, 4096n), 'DMA_UNMAP unmaps what was mapped');
    t.notOk(mapped(`${NAME}-huge`), 'nothing of it is left mapped');
  });

  t.test('refusals are protocol errors', async (t) => {
    const dev = device();
    t.teardown(() => dev.close());
    dev.unsealedDma = 'refuse';
    const fd = clientMemfd(0);
    t.teardown(() => os.close(fd));
    const e = (() => { try { dev.dmaMap(IOVA, BigInt(SIZE), RW, fd, 0n); return null; } catch (x) { return x; } })();
    t.ok(e instanceof ProtocolError, 'a ProtocolError (the server turns it into an error reply)');
  });

  // in the parent only: a child scenario must not run the CLI too (it would outlive its time limit)
  t.test('tspmd emu --unsealed-dma: the policy is an option; a bad value is refused before the EAL starts; --help names the default and why', async (t) => {
    const bad = await runCli(['emu', 'dmatest', '--socket', join(tmpdir(), `tsp-unsealed-${process.pid}.sock`), '--unsealed-dma', 'sometimes']);
    t.equal(bad.code, 2, 'exit 2');
    t.match(bad.stderr, /tspmd emu: --unsealed-dma "sometimes": use map, message, refuse/);
    const help = await runCli(['emu', '--help']);
    t.match(help.stdout, /--unsealed-dma map\|message\|refuse/, '--help lists it');
    t.match(help.stdout.replace(/\s+/g, ' '), /reach it with DMA_READ\/WRITE messages \(default: a client that truncates mapped memory kills this process with SIGBUS, which Node cannot survive\)/, '--help: message is the default, and why');
  });
}
