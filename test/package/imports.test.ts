/**
 * The import graph of lib/, src/ and drivers/, file by file: no import circle between files
 * (counting `import type`, `export ... from` and literal `import('...')`: a circle through types only
 * still ties two files into one unit to read and change), the port API (lib/ethdev) reaches
 * nothing of the capture tool (lib/pdump, lib/pcap), directly or through another file, and the
 * layers point one way: src/ imports nothing of lib/, lib/vfio-user nothing of lib/emudev (emudev
 * implements the device interface the vfio-user server defines).
 */
import t from 'tap';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const DIRS = ['lib', 'src', 'drivers'];

/** Every .ts file under dir (relative to ROOT, '/'-separated). */
function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...tsFiles(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The repository file a relative specifier names (x.js -> x.ts, a folder -> its index.ts), or null. */
function resolve(from: string, spec: string): string | null {
  if (!spec.startsWith('.')) return null;
  const base = join(dirname(join(ROOT, from)), spec);
  for (const c of [base.replace(/\.js$/, '.ts'), base, `${base}.ts`, join(base, 'index.ts')]) {
    if (c.endsWith('.ts') && existsSync(c)) return relative(ROOT, c).split('\\').join('/');
  }
  return null;
}

/** file -> the files of lib/, src/, drivers/ it imports (static, type-only, re-exports, literal dynamic). */
function importGraph(): Map<string, string[]> {
  const files = DIRS.flatMap(tsFiles);
  const inTree = new Set(files);
  const graph = new Map<string, string[]>();
  for (const f of files) {
    const info = ts.preProcessFile(readFileSync(join(ROOT, f), 'utf8'), true, true);
    const to = info.importedFiles.map((i) => resolve(f, i.fileName)).filter((x): x is string => x !== null && inTree.has(x));
    graph.set(f, [...new Set(to)].sort());
  }
  return graph;
}

/** The strongly connected components with more than one file (or a file importing itself): Tarjan. */
function knots(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>(), low = new Map<string, number>(), stack: string[] = [], on = new Set<string>(), out: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(comp.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  return out;
}

/** One circle inside a knot, as a -> b -> ... -> a (a shortest one through its first file). */
function circle(graph: Map<string, string[]>, knot: string[]): string {
  const inKnot = new Set(knot), start = knot[0];
  const prev = new Map<string, string>();
  const queue = [start];
  while (queue.length) {
    const v = queue.shift()!;
    for (const w of graph.get(v) ?? []) {
      if (!inKnot.has(w)) continue;
      if (w === start) {
        const path = [start];
        for (let x = v; x !== start; x = prev.get(x)!) path.splice(1, 0, x);
        return [...path, start].join(' -> ');
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return knot.join(', ');
}

/** The import path from file to the first file matching target, or null. */
function reach(graph: Map<string, string[]>, from: string[], target: (f: string) => boolean): string[] | null {
  const prev = new Map<string, string | null>(from.map((f) => [f, null]));
  const queue = [...from];
  while (queue.length) {
    const v = queue.shift()!;
    if (target(v)) {
      const path: string[] = [];
      for (let x: string | null = v; x !== null; x = prev.get(x)!) path.unshift(x);
      return path;
    }
    for (const w of graph.get(v) ?? []) if (!prev.has(w)) { prev.set(w, v); queue.push(w); }
  }
  return null;
}

/** The files under from (a folder prefix) that reach a file under to, each with its import path. */
function reachers(graph: Map<string, string[]>, from: string, to: string): string[] {
  const out: string[] = [];
  for (const f of [...graph.keys()].filter((x) => x.startsWith(from))) {
    const path = reach(graph, [f], (x) => x.startsWith(to));
    if (path) out.push(path.join(' -> '));
  }
  return out;
}

const graph = importGraph();

t.test('the walker sees what it must', async (t) => {
  t.ok(graph.size > 50, `${graph.size} files under ${DIRS.join(', ')}`);
  const lcores = graph.get('src/lcore/lcores.ts') ?? [];
  t.ok(lcores.includes('src/lcore/types.ts'), 'an `import type` counts (lcores.ts -> types.ts)');
  t.ok(graph.get('drivers/index.ts')?.some((f) => f.startsWith('drivers/net/')), 'side-effect imports count (drivers/index.ts)');
  const toy = new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['d']], ['e', ['a']]]);
  t.same(knots(toy).map((k) => circle(toy, k)), ['a -> b -> c -> a', 'd -> d'], 'circles are found and printed');
});

t.test('no import circle between files of lib/, src/ and drivers/', async (t) => {
  const found = knots(graph).map((k) => circle(graph, k));
  t.same(found, [], `import circles:\n  ${found.join('\n  ')}`);
});

t.test('lib/ethdev reaches nothing of lib/pdump or lib/pcap', async (t) => {
  const ethdev = [...graph.keys()].filter((f) => f.startsWith('lib/ethdev/'));
  t.ok(ethdev.length > 0, 'lib/ethdev has files');
  const path = reach(graph, ethdev, (f) => f.startsWith('lib/pdump/') || f.startsWith('lib/pcap/'));
  t.equal(path, null, `import path: ${path?.join(' -> ')}`);
});

t.test('layers point one way: src/ reaches nothing of lib/, lib/vfio-user nothing of lib/emudev', async (t) => {
  const toy = new Map([['src/a.ts', ['src/b.ts']], ['src/b.ts', ['lib/x/c.ts']], ['lib/x/c.ts', []]]);
  t.same(reachers(toy, 'src/', 'lib/'), ['src/a.ts -> src/b.ts -> lib/x/c.ts', 'src/b.ts -> lib/x/c.ts'], 'a crossing is found, directly or through another file');
  t.ok([...graph.keys()].some((f) => f.startsWith('lib/vfio-user/')) && [...graph.keys()].some((f) => f.startsWith('lib/emudev/')), 'both lib/vfio-user and lib/emudev have files');
  t.ok(reachers(graph, 'lib/emudev/', 'lib/vfio-user/').length > 0, 'the walker sees emudev -> vfio-user (the allowed direction)');
  const up = reachers(graph, 'src/', 'lib/');
  t.same(up, [], `src/ imports from lib/:\n  ${up.join('\n  ')}`);
  const back = reachers(graph, 'lib/vfio-user/', 'lib/emudev/');
  t.same(back, [], `lib/vfio-user imports from lib/emudev:\n  ${back.join('\n  ')}`);
});
