/**
 * The emudev registry (lib/emudev/registry.ts): allocate, find by name and id, list, release
 * (stop then close through the provider), a taken name, configure/start/stop through the
 * provider's ops, and attributes (u32, bool, mac; who may set what; the provider's hook and
 * EVENT_ATTR_CHANGED) on a small provider defined here and on dmatest.
 */
import t from 'tap';
import * as U from '../../src/iommu/vfio-uapi.js';
import { EmuDevice } from '../../lib/emudev/emudev.js';
import { emudevAllocate, emudevFind, emudevList, emudevRelease, type EmuProvider, type EmuProviderInfo } from '../../lib/emudev/registry.js';
import { QUEUE_WORDS, type EmuAttrSpec, type EmuBackendDesc } from '../../lib/emudev/backend.js';
import { EmuEventReader, EVENT_ALL, EVENT_ATTR_CHANGED } from '../../lib/emudev/events.js';
import { DmatestDevice } from '../../drivers/emu/dmatest/dmatest.js';

const P = `tsp${process.pid}`;

/** A provider with a u32, a bool and a MAC the back-end sets, and a u32 the provider owns; it records its ops. */
class TinyProvider implements EmuProvider {
  readonly emu: EmuDevice;
  readonly calls: string[] = [];
  readonly words = new Int32Array(new SharedArrayBuffer(4 * (8 + QUEUE_WORDS)));
  readonly specs: EmuAttrSpec[] = [
    { name: 'mtu', kind: 'u32', word: 0, writer: 'backend', help: 'MTU' },
    { name: 'link', kind: 'bool', word: 1, writer: 'backend', help: 'link up' },
    { name: 'mac', kind: 'mac', word: 2, writer: 'backend', help: 'MAC' },
    { name: 'features', kind: 'u32', word: 4, writer: 'provider', help: 'offered features' },
  ];
  config: Record<string, string> = {};

  constructor(name: string) {
    this.emu = new EmuDevice({ name, pci: { vendorId: 0x1b36, deviceId: 0x10f2, classCode: 0xff0000 }, bars: [], irqs: [{ index: U.VFIO_PCI_MSIX_IRQ_INDEX, count: 2 }] });
    this.words[4] = 0x1234;
  }

  info(): EmuProviderInfo {
    return { type: 'tiny', maxQueuePairs: 1, maxQueues: 1, maxEvents: 32 };
  }

  backendDesc(): Omit<EmuBackendDesc, 'id'> {
    const words = this.words.buffer as SharedArrayBuffer;
    return { name: this.emu.name, type: 'tiny', plane: this.emu.plane.desc(), queues: { words, base: 8, stride: QUEUE_WORDS, count: 1 }, attrs: { words, specs: this.specs }, generation: 5, regions: {}, doorbells: [] };
  }

  configure(config: Record<string, string>): void {
    this.calls.push('configure');
    this.config = config;
  }

  start(): void { this.calls.push('start'); }
  async stop(): Promise<void> { this.calls.push('stop'); }
  attrChanged(name: string): void { this.calls.push(`attr:${name}`); }
  close(): void {
    this.calls.push('close');
    this.emu.close();
  }
}

t.test('allocate, find by name and id, list, release; a taken name', async (t) => {
  const a = new TinyProvider(`${P}a`), b = new DmatestDevice(`${P}b`);
  t.teardown(async () => { for (const h of emudevList()) await h.release(); await b.close(); a.emu.close(); });
  const ha = emudevAllocate(`${P}a`, a), hb = emudevAllocate(`${P}b`, b);
  t.not(ha.id, hb.id, `ids ${ha.id} and ${hb.id}`);
  t.equal(emudevFind(`${P}a`), ha, 'found by name');
  t.equal(emudevFind(hb.id), hb, 'found by id');
  t.equal(emudevFind('tspnosuch'), undefined, 'an unknown name: undefined');
  t.equal(emudevFind(99_999), undefined, 'an unknown id: undefined');
  t.same(emudevList().map((h) => h.name), [`${P}a`, `${P}b`], 'listed in id order');
  t.throws(() => emudevAllocate(`${P}a`, new TinyProvider(`${P}dup`)), { message: `emudev: the name "${P}a" is taken by device ${ha.id}; release it first or choose another name` }, 'a taken name is refused, naming the device');
  t.throws(() => emudevAllocate('', a), /non-empty name/, 'an empty name is refused');
  t.throws(() => emudevAllocate(`${P}a-again`, a), { message: `emudev: this provider is allocated already, as device ${ha.id} "${P}a"` }, 'one provider, one device');
  t.same(ha.info(), { type: 'tiny', maxQueuePairs: 1, maxQueues: 1, maxEvents: 32, id: ha.id, name: `${P}a`, numRegions: 9, numIrqs: 5, memRegions: 0, maxMemRegions: 1024, started: false }, 'info: the provider\'s facts, PCI counts, the memory table');
  t.equal(hb.info().type, 'dmatest', 'dmatest is a provider too');

  await ha.start();
  t.ok(ha.started && ha.info().started, 'started');
  await emudevRelease(ha.id);
  t.same(a.calls, ['start', 'stop', 'close'], 'release by id: the provider stopped, then closed');
  t.equal(emudevFind(`${P}a`), undefined, 'gone by name');
  t.equal(emudevFind(ha.id), undefined, 'gone by id');
  t.throws(() => ha.info(), { message: `${P}a: device ${ha.id} was released` }, 'a released handle refuses queries');
  await t.rejects(emudevRelease(ha.id), new RegExp(`^emudev: no device ${ha.id} to release \\(ids: ${hb.id}\\)$`), 'releasing it again by id: a clear error');
  const again = emudevAllocate(`${P}a`, new TinyProvider(`${P}a2`));
  t.ok(again.id > hb.id, 'the name is free again; ids are not reused');
  await emudevRelease(again);
  await emudevRelease(hb);
  t.same(emudevList(), [], 'nothing left');
});

t.test('configure, start and stop through the provider\'s ops', async (t) => {
  const p = new TinyProvider(`${P}c`);
  const h = emudevAllocate(`${P}c`, p);
  t.teardown(() => h.release());
  h.configure({ queues: '2' });
  t.same(p.config, { queues: '2' }, 'configure reaches the provider');
  await h.start();
  t.throws(() => h.configure({ queues: '1' }), { message: `${P}c: configure while started: stop() the device first` }, 'configure while started is refused');
  await t.rejects(h.start(), { message: `${P}c: started already` }, 'start twice is refused');
  await h.stop();
  h.configure({ queues: '1' });
  t.same(p.calls, ['configure', 'start', 'stop', 'configure'], 'ops in order; stopped, configure works again');
  await h.stop();
  t.same(p.calls.length, 4, 'stop when stopped: nothing');

  const d = new DmatestDevice(`${P}d`);
  const hd = emudevAllocate(`${P}d`, d);
  t.teardown(() => hd.release());
  t.throws(() => hd.configure({ speed: '1' }), { message: `${P}d: unknown configuration key "speed" (dmatest takes lcore=N)` }, 'dmatest: an unknown key');
  t.throws(() => hd.configure({ lcore: 'x' }), /lcore=x is not a worker lcore number/, 'dmatest: a bad lcore');
  await t.rejects(hd.start(), /start needs an EAL and a worker lcore/, 'dmatest without an EAL: start says what it needs');
  t.notOk(hd.started, 'and is not started');
});

t.test('attributes: u32, bool, mac; only the back-end\'s may be set; the hook runs and EVENT_ATTR_CHANGED is posted', async (t) => {
  const p = new TinyProvider(`${P}e`);
  const h = emudevAllocate(`${P}e`, p);
  t.teardown(() => h.release());
  const ch = h.subscribe(EVENT_ALL);
  const r = EmuEventReader.attach(ch.desc());
  t.equal(ch.desc().capacity, 32, 'the subscription\'s ring holds the provider\'s maxEvents');
  t.same(h.attrs().map((a) => a.name), ['mtu', 'link', 'mac', 'features'], 'the declared attributes');
  t.equal(h.getAttr('features'), 0x1234, 'a provider attribute reads');
  t.same([h.getAttr('mtu'), h.getAttr('link'), h.getAttr('mac')], [0, false, '00:00:00:00:00:00'], 'initial values by kind');
  const gen0 = p.words[5];
  h.setAttr('mtu', 0xffff_fff0);
  h.setAttr('link', true);
  h.setAttr('mac', '02:AB:cd:00:10:ff');
  t.same([h.getAttr('mtu'), h.getAttr('link'), h.getAttr('mac')], [0xffff_fff0, true, '02:ab:cd:00:10:ff'], 'read back (u32 unsigned, MAC lower case)');
  t.same([p.words[2] >>> 0, p.words[3]], [0x00cdab02, 0xff10], 'the MAC\'s words: bytes 0-3, then 4-5, little endian');
  t.equal(p.words[5], gen0 + 3, 'each set bumps the generation word');
  t.same(p.calls.filter((c) => c.startsWith('attr:')), ['attr:mtu', 'attr:link', 'attr:mac'], 'the provider\'s hook ran for each');
  const seen: number[][] = [];
  for (let ty = r.next(); ty !== 0; ty = r.next()) seen.push([ty, r.arg]);
  t.same(seen, [[EVENT_ATTR_CHANGED, 0], [EVENT_ATTR_CHANGED, 1], [EVENT_ATTR_CHANGED, 2]], 'EVENT_ATTR_CHANGED with the attribute\'s index, in order');
  t.throws(() => h.setAttr('features', 1), { message: `${P}e: attribute "features" (u32) is written by the device model only; read it with getAttr` }, 'a provider attribute cannot be set');
  t.throws(() => h.setAttr('mtu', -1), /is not an integer 0..4294967295/, 'u32 out of range');
  t.throws(() => h.setAttr('mtu', 1.5), /is not an integer/, 'u32 not an integer');
  t.throws(() => h.setAttr('link', 1), /is not true or false/, 'bool from a number');
  t.throws(() => h.setAttr('mac', '02:00:00:00:00'), /is not a MAC address/, 'a short MAC');
  t.throws(() => h.getAttr('speed'), { message: `${P}e: no attribute "speed" (attributes: mtu, link, mac, features)` }, 'an unknown attribute names the known ones');
  t.equal(h.getAttr('mtu'), 0xffff_fff0, 'refused sets changed nothing');
  t.equal(r.next(), 0, 'and posted nothing');
  h.unsubscribe(ch);
});
