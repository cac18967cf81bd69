/**
 * emudev back-end: a back-end written against the emudev back-end API alone (docs/emudev.md). Its
 * lcore attaches to a device with the EmuBackendDesc the registry hands out and reacts to the
 * device's events: at a queue enable it reads the queue's first descriptor from client memory, at
 * a memory table change it counts the regions, and so on. The device is dmatest (its own engine
 * not started: this back-end stands in for it); the main thread plays its client, with 64 KiB of
 * client memory reached through DMA_READ/WRITE messages, and then prints what the back-end saw.
 *
 *   node dist/examples/emudev/backend.js --no-huge -l 0-1
 */
import {
  type App, type EmuBackendDesc, type EmuEventChannelDesc, type LcoreContext, DmatestDevice, EmuBackend, EVENT_ALL, EVENT_ATTR_CHANGED,
  EVENT_DEVICE_RESET, EVENT_MEM_TABLE_CHANGED, EVENT_NAMES, EVENT_OVERFLOW, EVENT_QUEUE_ENABLED, EVENT_STATUS_CHANGED, UsageError, appMain,
  emudevAllocate, sleep,
} from '../../index.js';

/** What the lcore gets: the device, its event subscription, a stop word. */
export interface WatchArg {
  backend: EmuBackendDesc;
  channel: EmuEventChannelDesc;
  stop: SharedArrayBuffer;
}

/** The back-end's lcore: serve events until the stop word; returns one line per event. */
export function watch(arg: WatchArg, ctx: LcoreContext): string[] {
  const be = EmuBackend.attach(arg.backend);
  const events = be.events(arg.channel);
  const stop = new Int32Array(arg.stop);
  const desc = new Uint8Array(32), dv = new DataView(desc.buffer);
  const lines: string[] = [];
  try {
    while (Atomics.load(stop, 0) === 0 && !ctx.stopRequested()) {
      be.memory.service(); // honour a pause, pick up a new memory table
      const type = events.next();
      if (type === 0) { be.memory.sleep(1); continue; }
      let what = '';
      switch (type) {
        case EVENT_QUEUE_ENABLED: {
          const q = be.queueInfo(events.arg);
          // the first descriptor: a view when the memory came by fd, else through the main thread
          const o = be.memory.at(Number(q.desc), 32, false);
          let ok = o >= 0;
          if (ok) desc.set(be.memory.u8[be.memory.hit].subarray(o, o + 32));
          else if (o === -2) ok = be.memory.messageRead(Number(q.desc), desc, 0, 32);
          what = `queue ${q.index}: ${q.size} entries at 0x${q.desc.toString(16)}, doorbell ${q.doorbell}, vector ${q.vector}; ` +
            (ok ? `first descriptor copies ${dv.getUint32(16, true)} bytes` : 'its ring is not in client memory');
          break;
        }
        case EVENT_MEM_TABLE_CHANGED: what = `${events.arg} regions (${be.memory.regions} table slots here)`; break;
        case EVENT_STATUS_CHANGED: what = `status ${events.arg} (attribute "status": ${be.attrs[be.attrWord('status')]})`; break;
        case EVENT_DEVICE_RESET: what = `queue 0 ${be.queueInfo(0).enabled ? 'enabled' : 'disabled'}`; break;
        case EVENT_ATTR_CHANGED: {
          const a = be.attrSpecs[events.arg];
          what = `attribute "${a.name}" = ${be.attrs[a.word] >>> 0}`;
          break;
        }
        case EVENT_OVERFLOW: what = `${events.arg} events lost: re-read the device`; break;
        default: what = `arg ${events.arg}`;
      }
      lines.push(`#${events.seq} ${EVENT_NAMES[type] ?? type}: ${what}`);
    }
  } finally {
    be.detach();
  }
  return lines;
}

const IOVA = 0x10_0000n;

/** The example as an app (tspmd's app framework: EAL options, then its own). */
export const emudevBackend: App<Record<string, never>> = {
  name: 'emudev-backend',
  summary: 'A back-end on the emudev API: dmatest\'s events seen from an lcore while the main thread plays its client.',
  help: '  (no options)',
  parse(args) {
    if (args.length) throw new UsageError(`unknown option "${args[0]}" (see --help)`);
    return {};
  },
  async main(eal) {
    const lcore = eal.lcores.workers[0];
    if (lcore === undefined) throw new UsageError('emudev-backend needs a worker lcore: use -l with two cores, e.g. -l 0-1');
    const dev = new DmatestDevice('emudev-example');
    const h = emudevAllocate(dev.emu.name, dev);
    try {
      const ch = h.subscribe(EVENT_ALL);
      const stop = new Int32Array(new SharedArrayBuffer(4));
      const run = eal.lcores.launch(lcore, import.meta.url, watch, { backend: h.backendDesc(), channel: ch.desc(), stop: stop.buffer as SharedArrayBuffer });
      while (!h.emu.plane.attached) await sleep(1);
      // The client: 64 KiB of memory it lends by messages, one descriptor (copy 1234 bytes) in its ring.
      const mem = new Uint8Array(0x10000);
      new DataView(mem.buffer).setUint32(16, 1234, true);
      h.emu.connected({ read: async (iova, len) => mem.slice(Number(iova - IOVA), Number(iova - IOVA) + len), write: async (iova, data) => { mem.set(data, Number(iova - IOVA)); } });
      const reg = (off: number, v: number): void => h.emu.regionWrite(0, BigInt(off), new Uint8Array(new Uint32Array([v]).buffer));
      // each change, then wait until the back-end has read what it caused
      const step = async (fn: () => void): Promise<void> => { fn(); while (ch.backlog > 0) await sleep(1); };
      await step(() => h.emu.dmaMap(IOVA, 0x10000n, 3, -1, 0n));
      await step(() => { reg(0x10, Number(IOVA)); reg(0x14, 0); reg(0x18, 16); reg(0x08, 1); }); // ring, entries, enable
      await step(() => h.setAttr('errors', 0));
      await step(() => reg(0x08, 0)); // disable
      await step(() => h.emu.dmaUnmap(IOVA, 0x10000n));
      await step(() => h.emu.reset());
      Atomics.store(stop, 0, 1);
      for (const line of await run) console.log(line);
      console.log(`device ${h.id} "${h.name}": ${JSON.stringify(h.info())}`);
      h.unsubscribe(ch);
    } finally {
      await h.release();
    }
    return 0;
  },
};

appMain(import.meta.url, emudevBackend);
