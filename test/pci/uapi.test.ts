/**
 * The VFIO/IOMMUFD UAPI encodings against the kernel's own headers: a C program generated from the
 * TypeScript tables (every request code, constant, struct size and field offset tspmd uses) is
 * compiled with trixie's linux-libc-dev (which has linux/iommufd.h and VFIO_DEVICE_BIND_IOMMUFD;
 * test/pci/fetch-headers.sh fetches it) and its output compared value by value. Also checks the
 * _IOC encoder on codes with a direction and size, and the struct encode/decode helpers.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as U from '../../src/iommu/vfio-uapi.js';
import { PCI_CONFIG_CONSTANTS } from '../../drivers/bus/pci/config.js';
import { checkCdevNode } from '../../src/iommu/iommufd.js';

/** Every named constant: the VFIO/IOMMUFD ones and the PCI bus's config-space offsets and bits. */
const CONSTANTS: Readonly<Record<string, number>> = { ...U.UAPI_CONSTANTS, ...PCI_CONFIG_CONSTANTS };

const FETCH = fileURLToPath(new URL('./fetch-headers.sh', import.meta.url));
const CACHE = process.env.TSPMD_UAPI_CACHE ?? '/var/cache/tspmd/linux-libc-dev-trixie';

/** The include directory with linux/iommufd.h: the cache, or fetched now; null with the reason. */
function headers(): { inc: string } | { reason: string } {
  const inc = join(CACHE, 'usr/include');
  if (existsSync(join(inc, 'linux/iommufd.h'))) return { inc };
  try {
    const out = execFileSync('bash', [FETCH, CACHE], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 240000 });
    const got = out.trim().split('\n').pop() ?? '';
    if (existsSync(join(got, 'linux/iommufd.h'))) return { inc: got };
    return { reason: `${FETCH} ran but ${got}/linux/iommufd.h is missing` };
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    return { reason: `trixie's linux-libc-dev could not be fetched (${(err.stderr ?? err.message).trim().split('\n').pop()}); run ${FETCH}` };
  }
}

/** C source printing "kind name value" lines for everything in the TypeScript tables. */
function cProgram(): string {
  const lines: string[] = [
    '#include <stdio.h>', '#include <stddef.h>', '#include <linux/vfio.h>', '#include <linux/iommufd.h>', '#include <linux/pci_regs.h>',
    'int main(void) {',
  ];
  for (const name of Object.keys(U.UAPI_IOCTLS)) lines.push(`  printf("ioctl ${name} %lu\\n", (unsigned long)(${name}));`);
  for (const name of Object.keys(CONSTANTS)) lines.push(`  printf("const ${name} %lld\\n", (long long)(${name}));`);
  for (const name of Object.keys(U.UAPI_STRINGS)) lines.push(`  printf("string ${name} %s\\n", ${name});`);
  for (const s of U.UAPI_STRUCTS) {
    lines.push(`  printf("sizeof ${s.name} %zu\\n", sizeof(struct ${s.name}));`);
    lines.push(`  printf("alignof ${s.name} %zu\\n", _Alignof(struct ${s.name}));`);
    for (const f of s.fieldNames()) {
      lines.push(`  printf("offsetof ${s.name}.${f} %zu\\n", offsetof(struct ${s.name}, ${f}));`);
      if (!s.isFlexible(f)) lines.push(`  printf("sizeof ${s.name}.${f} %zu\\n", sizeof(((struct ${s.name} *)0)->${f}));`);
    }
  }
  lines.push('  return 0;', '}');
  return lines.join('\n') + '\n';
}

/** What the TypeScript side says, in the C program's line format. */
function tsValues(): Map<string, string> {
  const m = new Map<string, string>();
  for (const [k, v] of Object.entries(U.UAPI_IOCTLS)) m.set(`ioctl ${k}`, String(v));
  for (const [k, v] of Object.entries(CONSTANTS)) m.set(`const ${k}`, String(v));
  for (const [k, v] of Object.entries(U.UAPI_STRINGS)) m.set(`string ${k}`, v);
  for (const s of U.UAPI_STRUCTS) {
    m.set(`sizeof ${s.name}`, String(s.size));
    m.set(`alignof ${s.name}`, String(s.align));
    for (const f of s.fieldNames()) {
      m.set(`offsetof ${s.name}.${f}`, String(s.offsetOf(f)));
      if (!s.isFlexible(f)) m.set(`sizeof ${s.name}.${f}`, String(s.sizeOf(f)));
    }
  }
  return m;
}

const h = headers();
const skip = 'reason' in h ? `kernel headers with linux/iommufd.h are not available: ${h.reason}` : false;

t.test('request codes, constants and struct layouts match the kernel headers', { skip }, async (t) => {
  if ('reason' in h) return;
  const dir = mkdtempSync(join(tmpdir(), 'tspuapi-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const src = join(dir, 'uapi.c'), exe = join(dir, 'uapi');
  writeFileSync(src, cProgram());
  const triplet = join(h.inc, 'x86_64-linux-gnu');
  // -I dirs come before the system's /usr/include: linux/*.h and asm/*.h are trixie's.
  execFileSync('cc', ['-std=gnu11', '-Wall', '-Werror', '-I', h.inc, '-I', triplet, '-o', exe, src], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = execFileSync(exe, { encoding: 'utf8' });
  const c = new Map<string, string>();
  for (const line of out.trim().split('\n')) {
    const sp = line.lastIndexOf(' ');
    c.set(line.slice(0, sp), line.slice(sp + 1));
  }
  const ts = tsValues();
  t.equal(c.size, ts.size, `the C program printed all ${ts.size} values`);
  let mismatches = 0;
  for (const [k, v] of ts) {
    if (c.get(k) !== v) {
      mismatches++;
      t.fail(`${k}: TypeScript ${v}, kernel headers ${c.get(k)}`);
    }
  }
  t.equal(mismatches, 0, `${ts.size} values agree with the kernel headers in ${h.inc}`);
  // the headers really are the new ones (not bookworm's 6.1)
  t.ok(c.has('ioctl VFIO_DEVICE_BIND_IOMMUFD'), 'VFIO_DEVICE_BIND_IOMMUFD came from the headers');
});

t.test('_IOC encoding with direction and size, and decoding', async (t) => {
  // Known kernel encodings from asm-generic/ioctl.h's bit layout: dir 2 bits at 30, size 14 at 16.
  t.equal(U.io(';', 100), (0x3b << 8) | 100, '_IO(";", 100)');
  t.equal(U.iow('T', 1, 4), ((1 << 30) | (4 << 16) | (0x54 << 8) | 1) >>> 0, '_IOW');
  t.equal(U.ior('T', 1, 4), ((2 << 30) | (4 << 16) | (0x54 << 8) | 1) >>> 0, '_IOR is above 2^31 and still positive');
  t.ok(U.ior('T', 1, 4) > 0);
  t.same(U.iocDecode(U.iowr('V', 7, 40)), { dir: 3, type: 0x56, nr: 7, size: 40 });
  t.throws(() => U.ioc(0, ';', 256, 0), /out of range/);
  t.throws(() => U.ioc(0, ';', 1, 1 << 14), /out of range/);
});

t.test('struct encode/decode and capability chains', async (t) => {
  const b = U.vfio_region_info.encode({ argsz: 32, index: 7, size: 256, offset: 7n << 40n });
  t.equal(b.byteLength, 32);
  const d = U.vfio_region_info.decode(b);
  t.same(d, { argsz: 32, flags: 0, index: 7, cap_offset: 0, size: 256n, offset: 7n << 40n });
  const dv = U.view(b);
  t.equal(U.vfio_region_info.get(dv, 'offset'), 7 * 2 ** 40);
  U.vfio_region_info.set(dv, 'offset', 1n << 60n);
  t.throws(() => U.vfio_region_info.get(dv, 'offset'), /does not fit a number; read it with get64/);
  t.equal(U.vfio_region_info.get64(dv, 'offset'), 1n << 60n);
  t.throws(() => U.vfio_region_info.offsetOf('nope' as 'argsz'), /struct vfio_region_info has no field "nope"/);
  t.throws(() => U.vfio_region_info.decode(new Uint8Array(8)), /8 bytes left, 32 needed/);
  t.equal(U.vfio_irq_set.size, 20, 'flexible array adds no size');
  t.equal(U.vfio_region_info_cap_sparse_mmap.offsetOf('areas'), 16);

  // a chain: header at 32 -> 48 -> end; and a loop
  const buf = new Uint8Array(64);
  const v = U.view(buf);
  U.vfio_info_cap_header.set(v, 'id', 2, 32);
  U.vfio_info_cap_header.set(v, 'next', 48, 32);
  U.vfio_info_cap_header.set(v, 'id', 1, 48);
  U.vfio_info_cap_header.set(v, 'version', 1, 48);
  t.same(U.walkCaps(buf, 32, 'test'), [{ id: 2, version: 0, offset: 32 }, { id: 1, version: 1, offset: 48 }]);
  U.vfio_info_cap_header.set(v, 'next', 32, 48);
  t.throws(() => U.walkCaps(buf, 32, 'region 0'), /region 0: capability chain loops at offset 32/);
  t.throws(() => U.walkCaps(buf, 60, 'region 0'), /capability at offset 60 lies outside the 64-byte info buffer/);
});

t.test('IOMMUFD cdev node check: the node must be the char device sysfs names (major:minor)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsp-cdev-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // /dev/null is char device 1:3 on every Linux: a real node to check against a sysfs-like file.
  const sysfs = join(dir, 'dev');
  const fd = openSync('/dev/null', 'r');
  t.teardown(() => closeSync(fd));
  writeFileSync(sysfs, '1:3\n');
  t.doesNotThrow(() => checkCdevNode('0000:00:03.0', '/dev/null', fd, sysfs), 'the same major:minor: accepted');
  writeFileSync(sysfs, '511:0\n');
  t.throws(() => checkCdevNode('0000:00:03.0', '/dev/null', fd, sysfs),
    /0000:00:03\.0: \/dev\/null is char device 1:3 but .* says 511:0: the node is stale or another device's; recreate it \(mknod \/dev\/null c 511 0\)/,
    'another major:minor: refused, naming both numbers and the fix');
  const plain = join(dir, 'vfio0');
  writeFileSync(plain, '');
  const pfd = openSync(plain, 'r');
  t.teardown(() => closeSync(pfd));
  t.throws(() => checkCdevNode('0000:00:03.0', plain, pfd, sysfs), /is not a character device/, 'a regular file: refused');
  t.throws(() => checkCdevNode('0000:00:03.0', '/dev/null', fd, join(dir, 'missing')), /cannot be read .*bound to vfio-pci/, 'no sysfs dev file: refused');
});
