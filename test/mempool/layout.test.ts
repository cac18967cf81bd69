/**
 * The mbuf header layout has one source, lib/mempool/mbuf_layout.ts. This test reads every
 * TypeScript file outside lib/mempool and fails where one indexes an mbuf header by a bare number
 * (`pu32[mw + 2]`, `(mo + 14) >> 1`, `v.off + 12`): such a number is a second copy of the layout
 * that a change to mbuf_layout.ts would leave stale. Header offsets are taken from the layout's
 * enums instead (tsc writes them as literals, so the fast paths lose nothing).
 *
 * What counts as an mbuf header offset: `X.off` (an MbufView's), and a variable whose initializer
 * is an mbuf's offset itself, perhaps shifted to a word index, with nothing added
 * (`pool.offsetOf(m)`, `(objOff + Math.imul(m & 0xffffff, objSize)) >> 2`, `v.off`, `o >> 2`).
 */
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DIRS = ['index.ts', 'src', 'lib', 'drivers', 'app', 'examples', 'bench', 'test'];
const SELF = relative(ROOT, fileURLToPath(import.meta.url));

/** Every .ts file under the given roots, as paths relative to the repository. */
function tsFiles(): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    const abs = join(ROOT, rel);
    if (statSync(abs).isDirectory()) {
      for (const e of readdirSync(abs)) walk(join(rel, e));
    } else if (rel.endsWith('.ts') && !rel.endsWith('.d.ts')) out.push(rel);
  };
  for (const d of DIRS) walk(d);
  return out;
}

/** Split a declaration list `a = x, b = f(y, z)` at its top-level commas. */
function declarators(list: string): string[] {
  const parts: string[] = [];
  let depth = 0, start = 0;
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === '(' || c === '[' || c === '{') depth++;
    else if (c === ')' || c === ']' || c === '}') depth--;
    else if (c === ',' && depth === 0) { parts.push(list.slice(start, i)); start = i + 1; }
  }
  parts.push(list.slice(start));
  return parts;
}

// An initializer that is an mbuf's offset itself, perhaps shifted to a word index, nothing added:
// pool.offsetOf(m), (objOff + Math.imul(m & 0xffffff, objSize)) >> 2, v.off, o >> 2.
const SHIFT = String.raw`(?:\s*>>>?\s*[123])?`;
const POOL_OFFSET = new RegExp(String.raw`^\s*\(?\s*(?:[\w.]+\.offsetOf\(\s*[^'"\s)][^)]*\)|objOff(?:set)?\s*\+\s*Math\.imul\([^;]*\)|[\w.]+\.off)\s*\)?${SHIFT}\s*$`);

/** The places in src that index an mbuf header by a bare number: "line: text". */
export function bareHeaderIndexes(src: string): string[] {
  // Names bound to an mbuf offset, in source order: a later declaration of the same name that is
  // something else ends it (names like `o` and `w` are reused for other things).
  const offsetNames = new Set<string>();
  const hits: string[] = [];
  src.split('\n').forEach((line, i) => {
    const code = line.replace(/\/\/.*$/, '');
    for (const m of code.matchAll(/\b(?:const|let)\s+([^;]*)/g)) {
      for (const d of declarators(m[1])) {
        const eq = /^\s*(\w+)\s*(?::\s*\w+\s*)?=(?!=)([\s\S]*)$/.exec(d);
        if (!eq) continue;
        const derived = new RegExp(`^\\s*\\(?\\s*(?:${[...offsetNames].join('|') || '(?!)'})\\s*\\)?${SHIFT}\\s*$`);
        if (POOL_OFFSET.test(eq[2]) || derived.test(eq[2])) offsetNames.add(eq[1]);
        else offsetNames.delete(eq[1]);
      }
    }
    const base = [...offsetNames].map((n) => `\\b${n}\\b`).concat([String.raw`\b\w+\.off\b`]).join('|');
    const forms = [
      new RegExp(`(?:${base})\\s*[+-]\\s*\\d+\\b`), // mo + 14, pu32[mw + 2], v.off + 12
      new RegExp(`\\(\\s*(?:${base})\\s*>>>?\\s*[123]\\s*\\)\\s*[+-]\\s*\\d+\\b`), // (o >> 2) + 1
    ];
    if (forms.some((re) => re.test(code))) hits.push(`${i + 1}: ${line.trim()}`);
  });
  return hits;
}

t.test('the scanner catches the forms a stale copy of the layout takes', async (t) => {
  const today = [
    'const mw = (objOff + Math.imul(m & 0xffffff, objSize)) >> 2;\npu32[mw + 2] = plen;',
    'const mo = objOff + Math.imul(m & 0xffffff, objSize);\nconst len = pu32[(mo + 8) >> 2];',
    'const mo = objOff + Math.imul(m & 0xffffff, objSize);\nx = pu16[(mo + 14) >> 1];',
    'const o = pool.offsetOf(m);\nu16[(o >> 1) + 7] = 1;',
    'u32[(v.off >> 2) + 8] = 0;',
    'const o = p.offsetOf(m), w = o >> 2;\nu32[w + 4] = 1;',
  ];
  for (const src of today) t.equal(bareHeaderIndexes(src).length, 1, src.split('\n').pop()!);
  const fine = [
    'const mw = (objOff + Math.imul(m & 0xffffff, objSize)) >> 2;\npu32[mw + MbufW32.PktLen] = plen;',
    'const o = pool.offsetOf(m);\nu16[(o >> 1) + MbufW16.DataOff] = 1;',
    'const d = v.data;\nu8[d + 12] = 8; // the EtherType, packet bytes',
    'const h = v.off + MbufOff.Buf + doff - 12;\npu32[(h >> 2) + 1] = 0; // a virtio header in the headroom',
    'const i = q + 1; // no offset at all',
  ];
  for (const src of fine) t.same(bareHeaderIndexes(src), [], src.split('\n').pop()!);
});

t.test('no file outside lib/mempool indexes an mbuf header by a bare number', async (t) => {
  const files = tsFiles().filter((f) => !f.startsWith('lib/mempool/') && f !== SELF);
  t.ok(files.length > 100, `${files.length} files read`);
  const found: string[] = [];
  for (const f of files) for (const h of bareHeaderIndexes(readFileSync(join(ROOT, f), 'utf8'))) found.push(`${f}:${h}`);
  t.same(found, [], 'header offsets come from lib/mempool/mbuf_layout.ts (MbufOff, MbufW16, MbufW32, MbufW64)');
});

t.test('the layout: word indexes name the byte offsets, every field inside the header', async (t) => {
  const { MbufOff, MbufW16, MbufW32, MbufW64 } = await import('../../lib/mempool/mbuf_layout.js');
  const { MBUF_HDR } = await import('../../lib/mempool/mbuf.js');
  t.equal(MBUF_HDR, MbufOff.Buf, 'the pool reserves the header the layout describes');
  t.same([MbufW32.PktLen, MbufW32.LenOff, MbufW32.RefSegs, MbufW32.PortBuf, MbufW32.OlFlagsLo, MbufW32.Next, MbufW32.Ptype, MbufW32.Hash].map((w) => w * 4),
    [MbufOff.PktLen, MbufOff.DataLen, MbufOff.Refcnt, MbufOff.Port, MbufOff.OlFlags, MbufOff.Next, MbufOff.Ptype, MbufOff.Hash]);
  t.same([MbufW16.DataLen, MbufW16.DataOff, MbufW16.Refcnt, MbufW16.NbSegs, MbufW16.Port, MbufW16.BufLen, MbufW16.Vlan].map((w) => w * 2),
    [MbufOff.DataLen, MbufOff.DataOff, MbufOff.Refcnt, MbufOff.NbSegs, MbufOff.Port, MbufOff.BufLen, MbufOff.Vlan]);
  t.same([MbufW64.Lens, MbufW64.RefPort, MbufW64.OlFlags, MbufW64.NextPtype].map((w) => w * 8), [MbufOff.PktLen, MbufOff.Refcnt, MbufOff.OlFlags, MbufOff.Next]);
  t.ok(MbufOff.Vlan + 2 <= MbufOff.Buf, 'the last field ends inside the header');
});
