/**
 * dmatest: a small emulated DMA device on emudev, to prove the vfio-user path end to end.
 *
 * The driver puts descriptors in a ring in its DMA memory and writes the producer index to the
 * doorbell (a word in BAR0's shared page, mmapped by the driver). The device polls the doorbell
 * (it is not trapped), copies each descriptor's source to its destination, computes the source's
 * Adler-32, writes checksum and status back into the descriptor by DMA, advances the consumer
 * index, and raises MSI-X vector 0 through the client's eventfd.
 *
 * Two halves, like a PMD. This file is the control half, on the server's main thread, and an
 * emudev provider (lib/emudev/registry.ts: allocate it with emudevAllocate): the trapped registers
 * of BAR0's page 0 (REGION_READ/WRITE) and the engine state the data half needs, published the
 * emudev way in one small SharedArrayBuffer (the region "state"): the engine's ring as queue 0 of a
 * queue table (size = ring entries, descriptor area = ring address, vector 0, doorbell 0, an epoch
 * bumped at every enable and reset), and attributes over the same words (status, ring_lo, ring_hi,
 * entries, enabled: the provider's; completed, errors: the engine's), changed only inside
 * `emu.plane.quiesce()` so the engine never sees half a change, each change then bumping the
 * generation word. The doorbell (BAR0's shared page) is MEM doorbell 0. Events for subscribed
 * back-ends, posted inside the change: the driver enabling the engine gives QUEUE_ENABLED(0) then
 * STATUS_CHANGED(status), disabling it (or the client leaving) QUEUE_DISABLED(0) then
 * STATUS_CHANGED; an enable without a ring gives STATUS_CHANGED(STATUS_ERROR). (The error bit the
 * engine itself sets is not announced: only this thread posts.)
 *
 * The data half is the poll loop in dmatest_lcore.ts, a back-end written against the emudev
 * back-end API alone (EmuBackend from backendDesc()), started on a worker lcore by start(eal, lcore):
 * it reaches client memory and the eventfd through the data plane, by fd in place and without fd
 * through the plane's mailbox (DMA_READ/WRITE messages sent by this thread). Until start() the
 * registers work but no descriptor is executed.
 */
import * as U from '../../../src/iommu/vfio-uapi.js';
import { EmuDevice } from '../../../lib/emudev/emudev.js';
import { QUEUE_DESC_HI, QUEUE_DESC_LO, QUEUE_DOORBELL, QUEUE_ENABLE, QUEUE_EPOCH, QUEUE_SIZE, QUEUE_VECTOR, QUEUE_WORDS, type EmuAttrSpec, type EmuBackendDesc } from '../../../lib/emudev/backend.js';
import { EVENT_QUEUE_DISABLED, EVENT_QUEUE_ENABLED, EVENT_STATUS_CHANGED } from '../../../lib/emudev/events.js';
import type { EmuProvider, EmuProviderInfo } from '../../../lib/emudev/registry.js';
import type { Eal } from '../../../src/eal.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { log } from '../../../src/log.js';
import * as R from '../../../lib/dmatest/regs.js';
import type { DmatestLcoreArg, DmatestLcoreResult } from './dmatest_lcore.js';

const LCORE_MODULE = siblingModule(import.meta.url, 'dmatest_lcore');
/** How long start() waits for the lcore to attach to the data plane (worker start-up included). */
const START_TIMEOUT_MS = 30_000;

// The state words (Int32): attributes, then queue 0 of the queue table from Q_BASE.
const W_STATUS = 0, W_COMPLETED = 1, W_ERRORS = 2, W_GEN = 3, Q_BASE = 4;
const STATE_WORDS = Q_BASE + QUEUE_WORDS;
/** the doorbell id of the shared page's producer index */
const DOORBELL = 0;

/** dmatest's attributes (words of the state region). */
const ATTRS: EmuAttrSpec[] = [
  { name: 'status', kind: 'u32', word: W_STATUS, writer: 'provider', help: 'REG_STATUS: bit 0 running, bit 1 error (the engine sets the error bit when the ring is unreachable)' },
  { name: 'ring_lo', kind: 'u32', word: Q_BASE + QUEUE_DESC_LO, writer: 'provider', help: 'the ring\'s IOVA, low 32 bits, latched at enable' },
  { name: 'ring_hi', kind: 'u32', word: Q_BASE + QUEUE_DESC_HI, writer: 'provider', help: 'the ring\'s IOVA, high 32 bits, latched at enable' },
  { name: 'entries', kind: 'u32', word: Q_BASE + QUEUE_SIZE, writer: 'provider', help: 'ring entries (a power of two), latched at enable' },
  { name: 'enabled', kind: 'bool', word: Q_BASE + QUEUE_ENABLE, writer: 'provider', help: 'the driver enabled the engine (CTRL_ENABLE with a valid ring)' },
  { name: 'completed', kind: 'u32', word: W_COMPLETED, writer: 'backend', help: 'descriptors completed since the last reset (counted by the engine)' },
  { name: 'errors', kind: 'u32', word: W_ERRORS, writer: 'backend', help: 'descriptors that failed since the last reset (counted by the engine)' },
];

/** Where the engine runs when started without arguments (configure's lcore=N, the constructor's eal). */
export interface DmatestOptions {
  eal?: Eal;
  lcore?: number;
}

/** The dmatest device: an EmuDevice, its registers, and its engine on an lcore; an emudev provider. */
export class DmatestDevice implements EmuProvider {
  readonly emu: EmuDevice;
  private ctrl = 0;
  /** ring registers as written (latched into the engine state when the engine is enabled) */
  private ringLo = 0;
  private ringHi = 0;
  private entries = 0;
  private readonly state = new Int32Array(new SharedArrayBuffer(4 * STATE_WORDS));
  /** the engine's stop word (Int32 0: run, 1: return) */
  private readonly stopWord = new Int32Array(new SharedArrayBuffer(4));
  private run: Promise<DmatestLcoreResult> | null = null;
  private closing: Promise<void> | null = null;
  private eal: Eal | undefined;
  private lcore: number | undefined;

  /** Create the device (BAR memory, config space); start() runs its engine. */
  constructor(name = 'dmatest', opts: DmatestOptions = {}) {
    this.eal = opts.eal;
    this.lcore = opts.lcore;
    this.state[Q_BASE + QUEUE_VECTOR] = 0;
    this.state[Q_BASE + QUEUE_DOORBELL] = DOORBELL;
    this.emu = new EmuDevice({
      name,
      pci: { vendorId: R.DMATEST_VENDOR, deviceId: R.DMATEST_DEVICE, classCode: 0xff0000, revision: 1, subsystemVendorId: R.DMATEST_VENDOR, subsystemId: 1 },
      bars: [
        { index: 0, size: R.BAR0_SIZE, shared: [{ offset: R.SHARED_PAGE, size: 0x1000 }], read: (off, buf) => this.readRegs(off, buf), write: (off, data) => this.writeRegs(off, data) },
        { index: 2, size: R.BAR2_SIZE, shared: [{ offset: 0, size: R.BAR2_SIZE }] },
      ],
      irqs: [{ index: U.VFIO_PCI_INTX_IRQ_INDEX, count: 0 }, { index: U.VFIO_PCI_MSIX_IRQ_INDEX, count: 1 }],
      onReset: () => this.resetState(),
    });
    this.emu.events.on('region-write', (index: number, off: number, len: number) => {
      // a doorbell through REGION_WRITE: end the engine's idle sleep now
      if (index === 0 && off <= R.REG_DOORBELL && off + len > R.REG_DOORBELL) this.emu.plane.wake();
    });
    this.emu.events.on('disconnect', () => this.disable());
  }

  /** Device facts for the emudev registry. */
  info(): EmuProviderInfo {
    return { type: 'dmatest', maxQueuePairs: 0, maxQueues: 1, maxEvents: 64 };
  }

  /** What a back-end lcore attaches with: the data plane, queue 0 and the attributes over the state words, the doorbell page. */
  backendDesc(): Omit<EmuBackendDesc, 'id'> {
    const words = this.state.buffer as SharedArrayBuffer;
    return {
      name: this.emu.name, type: 'dmatest', plane: this.emu.plane.desc(),
      queues: { words, base: Q_BASE, stride: QUEUE_WORDS, count: 1 },
      attrs: { words, specs: ATTRS.map((a) => ({ ...a })) },
      generation: W_GEN,
      regions: { state: words },
      doorbells: [{ id: DOORBELL, kind: 'mem', bar: 0, offset: R.REG_DOORBELL, size: 4, va: this.emu.barAddress(0) + BigInt(R.REG_DOORBELL) }],
    };
  }

  /** Configuration: lcore=N, the worker lcore start() runs the engine on. */
  configure(config: Record<string, string>): void {
    for (const [k, v] of Object.entries(config)) {
      if (k !== 'lcore') throw new Error(`${this.emu.name}: unknown configuration key "${k}" (dmatest takes lcore=N)`);
      if (!/^\d+$/.test(v)) throw new Error(`${this.emu.name}: lcore=${v} is not a worker lcore number`);
      this.lcore = Number(v);
    }
  }

  /** Descriptors completed since the last reset. */
  get completedCount(): number {
    return Atomics.load(this.state, W_COMPLETED) >>> 0;
  }

  /** Whether the engine runs on an lcore (between start() and close()). */
  get started(): boolean {
    return this.run !== null && this.emu.plane.attached;
  }

  /** Start the engine's poll loop on worker lcore `lcore` of eal (default: the configured ones); resolves once it polls. */
  async start(eal = this.eal, lcore = this.lcore): Promise<void> {
    if (this.run || this.closing) throw new Error(`${this.emu.name}: the engine was started already (or the device is closed)`);
    if (!eal || lcore === undefined) throw new Error(`${this.emu.name}: start needs an EAL and a worker lcore: pass them to start(eal, lcore), or give the constructor { eal } and configure lcore=N`);
    const arg: DmatestLcoreArg = { backend: { ...this.backendDesc(), id: -1 }, stop: this.stopWord.buffer as SharedArrayBuffer };
    Atomics.store(this.stopWord, 0, 0);
    const run = eal.lcores.launch<DmatestLcoreResult>(lcore, LCORE_MODULE, 'dmatestLcore', arg);
    this.run = run;
    let ended = false, failure: unknown = null;
    run.then(() => { ended = true; }, (e: unknown) => { ended = true; failure = e; });
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!this.emu.plane.attached) {
      if (ended) throw new Error(`${this.emu.name}: the engine on lcore ${lcore} ended before it started${failure ? `: ${(failure as Error).message}` : ''}`);
      if (Date.now() > deadline) {
        Atomics.store(this.stopWord, 0, 1);
        throw new Error(`${this.emu.name}: the engine did not start on lcore ${lcore} within ${START_TIMEOUT_MS} ms`);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    log('info', 'dmatest', `${this.emu.name}: engine polling on lcore ${lcore}`);
  }

  /** Stop the engine (stop word, then wait for its lcore); start() may run it again. */
  async stop(): Promise<void> {
    const run = this.run;
    if (!run) return;
    Atomics.store(this.stopWord, 0, 1);
    this.emu.plane.wake();
    try {
      const r = await run;
      log('debug', 'dmatest', `${this.emu.name}: engine stopped: ${r.completed} completed, ${r.errors} failed since the last reset`);
    } catch (e) {
      log('warn', 'dmatest', `${this.emu.name}: the engine's lcore failed: ${(e as Error).message}`);
    } finally {
      if (this.run === run) this.run = null;
    }
  }

  /** Stop the engine and release the device. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.stop();
      this.emu.close();
    })();
    return this.closing;
  }

  /** Change the engine state with the engine parked, then tell it to reload (the generation word). */
  private change(fn: () => void): void {
    this.emu.plane.quiesce(() => {
      fn();
      Atomics.add(this.state, W_GEN, 1);
    });
  }

  /** onReset (called inside the plane's quiesce): registers, engine state and the shared page. */
  private resetState(): void {
    this.ctrl = this.ringLo = this.ringHi = this.entries = 0;
    this.change(() => {
      for (const w of [W_STATUS, W_COMPLETED, W_ERRORS, Q_BASE + QUEUE_SIZE, Q_BASE + QUEUE_ENABLE, Q_BASE + QUEUE_DESC_LO, Q_BASE + QUEUE_DESC_HI]) Atomics.store(this.state, w, 0);
      Atomics.add(this.state, Q_BASE + QUEUE_EPOCH, 1);
      this.emu.barMemory(0).fill(0, R.SHARED_PAGE, R.SHARED_PAGE + 0x1000);
    });
  }

  private readRegs(off: number, buf: Uint8Array): void {
    // registers are 32-bit; any access inside page 0 reads the containing words
    for (let i = 0; i < buf.byteLength; i++) {
      const a = off + i;
      const word = this.reg(a & ~3);
      buf[i] = (word >>> (8 * (a & 3))) & 0xff;
    }
  }

  private reg(off: number): number {
    switch (off) {
      case R.REG_ID: return R.DMATEST_ID;
      case R.REG_VERSION: return R.DMATEST_VERSION;
      case R.REG_CTRL: return this.ctrl;
      case R.REG_STATUS: return Atomics.load(this.state, W_STATUS) >>> 0;
      case R.REG_RING_LO: return this.ringLo;
      case R.REG_RING_HI: return this.ringHi;
      case R.REG_RING_ENTRIES: return this.entries;
      case R.REG_COMPLETED: return Atomics.load(this.state, W_COMPLETED) >>> 0;
      case R.REG_ERRORS: return Atomics.load(this.state, W_ERRORS) >>> 0;
      default: return 0;
    }
  }

  private writeRegs(off: number, data: Uint8Array): void {
    if (off % 4 !== 0 || data.byteLength !== 4) return; // registers take aligned 32-bit writes only
    const v = (data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24)) >>> 0;
    switch (off) {
      case R.REG_CTRL: {
        this.ctrl = v & R.CTRL_ENABLE;
        if (this.ctrl & R.CTRL_ENABLE) this.enable();
        else this.disable();
        break;
      }
      case R.REG_RING_LO: this.ringLo = v; break;
      case R.REG_RING_HI: this.ringHi = v; break;
      case R.REG_RING_ENTRIES: this.entries = v >= 1 && v <= 4096 && (v & (v - 1)) === 0 ? v : 0; break;
      default: break;
    }
  }

  /** CTRL_ENABLE: latch the ring into queue 0 and let the engine run (from the consumer index in the shared page). */
  private enable(): void {
    if (this.entries === 0) {
      this.ctrl = 0;
      this.change(() => this.setStatus(R.STATUS_ERROR));
      return;
    }
    const q = Q_BASE;
    this.change(() => {
      Atomics.store(this.state, q + QUEUE_DESC_LO, this.ringLo | 0);
      Atomics.store(this.state, q + QUEUE_DESC_HI, this.ringHi | 0);
      Atomics.store(this.state, q + QUEUE_SIZE, this.entries);
      Atomics.store(this.state, q + QUEUE_ENABLE, 1);
      Atomics.add(this.state, q + QUEUE_EPOCH, 1);
      this.emu.postEvent(EVENT_QUEUE_ENABLED, 0);
      this.setStatus(R.STATUS_RUNNING);
    });
  }

  /** The driver cleared CTRL_ENABLE, or the client left: the engine stops (queue 0 disabled). */
  private disable(): void {
    this.change(() => {
      if (Atomics.exchange(this.state, Q_BASE + QUEUE_ENABLE, 0) !== 0) this.emu.postEvent(EVENT_QUEUE_DISABLED, 0);
      this.setStatus(Atomics.load(this.state, W_STATUS) & ~R.STATUS_RUNNING);
    });
  }

  /** Set the status word; STATUS_CHANGED when it changed. */
  private setStatus(v: number): void {
    if (Atomics.exchange(this.state, W_STATUS, v) !== v) this.emu.postEvent(EVENT_STATUS_CHANGED, v);
  }
}
