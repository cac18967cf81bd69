/**
 * Lists of drivers written in the docs, checked against the registries (registerVdevDriver,
 * registerPciDriver), so that a new driver cannot be left out of them: the README's table of
 * virtual devices and its list of drivers with Rx interrupts, the net/{...} list of
 * docs/architecture.md, the drivers docs/drivers.md's Rx interrupt section names, the header
 * comment of index.ts, and l2fwd's --help.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { driverListing } from '../../drivers/index.js';
import { l2fwd } from '../../examples/l2fwd/l2fwd.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (f: string): string => readFileSync(ROOT + f, 'utf8');
const all = driverListing();
const net = all.filter((d) => d.name.startsWith('net_'));
const rxIntr = all.filter((d) => d.rxInterrupt).map((d) => d.name);

/** The names among `names` that text does not mention as a word. */
const missing = (text: string, names: string[]): string[] => names.filter((n) => !new RegExp(`\\b${n}\\b`).test(text));

t.test('the registries', async (t) => {
  t.ok(all.some((d) => d.bus === 'vdev') && all.some((d) => d.bus === 'pci'), `both buses have drivers (${all.map((d) => d.name).join(', ')})`);
  t.ok(rxIntr.includes('net_af_packet') && rxIntr.includes('net_virtio'), `drivers declare Rx interrupts (${rxIntr.join(', ')})`);
});

t.test('README: a row per vdev driver; the drivers with Rx interrupts', async (t) => {
  const readme = read('README.md');
  const rows = [...readme.matchAll(/^\| `(net_[a-z_]+)N` \|/gm)].map((m) => m[1]);
  t.same(rows, all.filter((d) => d.bus === 'vdev').map((d) => d.name), 'the virtual-device table has one row per vdev driver, in registration order');
  const para = /Drivers with interrupts:([^]*?)\./.exec(readme)?.[1] ?? '';
  t.ok(para, 'README says which drivers have interrupts ("Drivers with interrupts: ...")');
  t.same(missing(para, rxIntr), [], `every driver with Rx interrupts is named there (${para.trim()})`);
  t.same(missing(para, all.filter((d) => !d.rxInterrupt).map((d) => d.name)).length, all.filter((d) => !d.rxInterrupt).length, 'and no driver without them');
});

t.test('docs/architecture.md: the net/{...} list of PMDs', async (t) => {
  const list = /net\/\{([a-z_,]+)\}/.exec(read('docs/architecture.md'))?.[1].split(',') ?? [];
  t.same([...list].sort(), net.map((d) => d.name.slice(4)).sort(), `net/{${list.join(',')}} names every net driver`);
});

t.test('docs/drivers.md: the Rx interrupt section names every driver that has them', async (t) => {
  const doc = read('docs/drivers.md');
  const section = doc.slice(doc.indexOf('## Rx interrupt mode'), doc.indexOf('\n## ', doc.indexOf('## Rx interrupt mode') + 1));
  // MSI-X drivers are named without the net_ prefix there ("MSI-X devices (virtio, igb)")
  const short = section.replace(/\b(?=(virtio|igb)\b)/g, 'net_');
  t.same(missing(short, rxIntr), [], 'af_packet, tap and the MSI-X drivers');
});

t.test('index.ts: the header comment lists every driver', async (t) => {
  const header = read('index.ts').split('*/')[0];
  t.same(missing(header, all.map((d) => d.name)), [], 'every registered driver is named');
});

t.test("l2fwd --help: the drivers with Rx interrupts, from the registries", async (t) => {
  t.same(missing(l2fwd.help ?? '', rxIntr), [], 'all named');
});
