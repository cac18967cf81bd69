/**
 * dmatest: a small emulated DMA device on emudev, to prove the vfio-user path end to end.
 *
 * The driver puts descriptors in a ring in its DMA memory and writes the producer index to the
 * doorbell (a word in BAR0's shared page, mmapped by the driver). The device polls the doorbell
 * (it is not trapped), copies each descriptor's source to its destination, computes the source's
 * Adler-32, writes checksum and status back into the descriptor by DMA, advances the consumer
 * index, and raises MSI-X vector 0 through the client's eventfd.
 *
 * Two halves, like a PMD. This file is the control half, on the server's main thread: the
 * trapped registers of BAR0's page 0 (REGION_READ/WRITE) and the engine state the data half needs
 * (status, ring address and size, counters) in a small SharedArrayBuffer, changed only inside
 * `emu.plane.quiesce()` so the engine never sees half a change. The data half is the poll loop in
 * dmatest_lcore.ts, started on a worker lcore by start(eal, lcore): it reaches client memory and
 * the eventfd through the emudev data plane (lib/emudev/dataplane.ts), by fd in place and without
 * fd through the plane's mailbox (DMA_READ/WRITE messages sent by this thread). Until start() the
 * registers work but no descriptor is executed.
 */
import * as U from '../../../src/iommu/vfio-uapi.js';
import { EmuDevice } from '../../../lib/emudev/emudev.js';
import type { Eal } from '../../../src/eal.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { log } from '../../../src/log.js';
import * as R from '../../../lib/dmatest/regs.js';
import { S_COMPLETED, S_ENTRIES, S_ERRORS, S_GEN, S_RING_HI, S_RING_LO, S_STATUS, S_STOP, S_WORDS, type DmatestLcoreArg, type DmatestLcoreResult } from './dmatest_lcore.js';

const LCORE_MODULE = siblingModule(import.meta.url, 'dmatest_lcore');
/** How long start() waits for the lcore to attach to the data plane (worker start-up included). */
const START_TIMEOUT_MS = 30_000;

/** The dmatest device: an EmuDevice, its registers, and its engine on an lcore. */
export class DmatestDevice {
  readonly emu: EmuDevice;
  private ctrl = 0;
  /** ring registers as written (latched into the engine state when the engine is enabled) */
  private ringLo = 0;
  private ringHi = 0;
  private entries = 0;
  private readonly state = new Int32Array(new SharedArrayBuffer(4 * S_WORDS));
  private run: Promise<DmatestLcoreResult> | null = null;
  private closing: Promise<void> | null = null;

  /** Create the device (BAR memory, config space); start() runs its engine. */
  constructor(name = 'dmatest') {
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
    this.emu.events.on('disconnect', () => this.change(() => Atomics.and(this.state, S_STATUS, ~R.STATUS_RUNNING)));
  }

  /** Descriptors completed since the last reset. */
  get completedCount(): number {
    return Atomics.load(this.state, S_COMPLETED) >>> 0;
  }

  /** Whether the engine runs on an lcore (between start() and close()). */
  get started(): boolean {
    return this.run !== null && this.emu.plane.attached;
  }

  /** Start the engine's poll loop on worker lcore `lcore` of eal; resolves once it polls. */
  async start(eal: Eal, lcore: number): Promise<void> {
    if (this.run || this.closing) throw new Error(`${this.emu.name}: the engine was started already (or the device is closed)`);
    const arg: DmatestLcoreArg = { plane: this.emu.plane.desc(), state: this.state.buffer as SharedArrayBuffer, sharedPage: this.emu.barAddress(0) + BigInt(R.SHARED_PAGE) };
    Atomics.store(this.state, S_STOP, 0);
    const run = eal.lcores.launch<DmatestLcoreResult>(lcore, LCORE_MODULE, 'dmatestLcore', arg);
    this.run = run;
    let ended = false, failure: unknown = null;
    run.then(() => { ended = true; }, (e: unknown) => { ended = true; failure = e; });
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!this.emu.plane.attached) {
      if (ended) throw new Error(`${this.emu.name}: the engine on lcore ${lcore} ended before it started${failure ? `: ${(failure as Error).message}` : ''}`);
      if (Date.now() > deadline) {
        Atomics.store(this.state, S_STOP, 1);
        throw new Error(`${this.emu.name}: the engine did not start on lcore ${lcore} within ${START_TIMEOUT_MS} ms`);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    log('info', 'dmatest', `${this.emu.name}: engine polling on lcore ${lcore}`);
  }

  /** Stop the engine (stop word, then wait for its lcore) and release the device. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      Atomics.store(this.state, S_STOP, 1);
      this.emu.plane.wake();
      if (this.run) {
        try {
          const r = await this.run;
          log('debug', 'dmatest', `${this.emu.name}: engine stopped: ${r.completed} completed, ${r.errors} failed since the last reset`);
        } catch (e) {
          log('warn', 'dmatest', `${this.emu.name}: the engine's lcore failed: ${(e as Error).message}`);
        }
      }
      this.emu.close();
    })();
    return this.closing;
  }

  /** Change the engine state with the engine parked, then tell it to reload (S_GEN). */
  private change(fn: () => void): void {
    this.emu.plane.quiesce(() => {
      fn();
      Atomics.add(this.state, S_GEN, 1);
    });
  }

  /** onReset (called inside the plane's quiesce): registers, engine state and the shared page. */
  private resetState(): void {
    this.ctrl = this.ringLo = this.ringHi = this.entries = 0;
    this.change(() => {
      for (const w of [S_STATUS, S_RING_LO, S_RING_HI, S_ENTRIES, S_COMPLETED, S_ERRORS]) Atomics.store(this.state, w, 0);
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
      case R.REG_STATUS: return Atomics.load(this.state, S_STATUS) >>> 0;
      case R.REG_RING_LO: return this.ringLo;
      case R.REG_RING_HI: return this.ringHi;
      case R.REG_RING_ENTRIES: return this.entries;
      case R.REG_COMPLETED: return Atomics.load(this.state, S_COMPLETED) >>> 0;
      case R.REG_ERRORS: return Atomics.load(this.state, S_ERRORS) >>> 0;
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
        else this.change(() => Atomics.and(this.state, S_STATUS, ~R.STATUS_RUNNING));
        break;
      }
      case R.REG_RING_LO: this.ringLo = v; break;
      case R.REG_RING_HI: this.ringHi = v; break;
      case R.REG_RING_ENTRIES: this.entries = v >= 1 && v <= 4096 && (v & (v - 1)) === 0 ? v : 0; break;
      default: break;
    }
  }

  /** CTRL_ENABLE: latch the ring into the engine state and let the engine run (from the consumer index in the shared page). */
  private enable(): void {
    if (this.entries === 0) {
      this.ctrl = 0;
      this.change(() => Atomics.store(this.state, S_STATUS, R.STATUS_ERROR));
      return;
    }
    this.change(() => {
      Atomics.store(this.state, S_RING_LO, this.ringLo | 0);
      Atomics.store(this.state, S_RING_HI, this.ringHi | 0);
      Atomics.store(this.state, S_ENTRIES, this.entries);
      Atomics.store(this.state, S_STATUS, R.STATUS_RUNNING);
    });
  }
}
