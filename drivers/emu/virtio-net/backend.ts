/**
 * virtio-net, emulated: the engine as one lcore-side object, VirtioNetBackend, written only against
 * the emudev back-end API (lib/emudev/backend.ts) and lib/ethdev's mbufs: the net_virtio_emu
 * port's queues (drivers/net/virtio_emu) drive it.
 *   - service(): pause requests, DMA table changes, the provider's published state (re-derived only
 *     when the generation or the table changed), link changes (a config interrupt), the control
 *     queue, doorbells (polled notify words every call, eventfds every FD_KICK_EVERY calls). Call it
 *     once per poll round: the provider's quiesce waits for it.
 *   - receive(out, n): the guest's transmitqs -> up to n mbufs (port RX), guest_tx.ts.
 *   - deliver(pkts, n): mbufs -> the guest's receiveqs (port TX): how many it took and freed; the
 *     rest stay the caller's (to free, counting them, or to offer again), guest_rx.ts.
 *   - idle(ms): the back-off sleep on the FD doorbells (a pause request or a wake ends it).
 * The device sets VRING_USED_F_NO_NOTIFY (unless wantKicks) and polls the avail rings: doorbells
 * only count as kicks and end an idle back-off.
 *
 * An exception (a bug, or a backend failing) is the caller's to catch outside its loop (no
 * try/catch in the hot path): crashed(e) frees the mbufs the burst held, sets DEVICE_NEEDS_RESET,
 * and after CRASH_BUDGET of them since the last device reset says to park: the queues are left
 * alone (pauses still honoured, parkedPoll()) until the driver resets the device.
 */
import { log } from '../../../src/log.js';
import type { Mempool } from '../../../lib/mempool/mempool.js';
import { poolOf } from '../../../lib/mempool/mempool.js';
import { pktmbufFreeSeg, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import * as D from './defs.js';
import { BURST, type VirtioNetBackendArg } from './vq.js';
import { CtrlQueue } from './ctrlq.js';

export type { VirtioNetBackendArg } from './vq.js';
export { BURST } from './vq.js';

/** Busy service() calls between two reads of the ioeventfd doorbells (the rings are polled anyway). */
const FD_KICK_EVERY = 16;
/** Exceptions since the last device reset after which the queues are parked until the next one. */
const CRASH_BUDGET = 100;
const R = D.NeedsReset;
const NOTIFY_IDLE = D.NOTIFY_IDLE;

/** The virtio-net device's engine on an lcore. */
export class VirtioNetBackend extends CtrlQueue {
  /** the statistics (defs.ts STAT_NAMES; the caller adds what it drops of receive's and deliver's packets) */
  get statistics(): Float64Array {
    return this.stats;
  }

  /** the queue pairs of the device */
  get queuePairs(): number {
    return this.pairs;
  }

  private calls = 0;
  /** the transmitq receive() starts with (round robin over the pairs) */
  private txNext = 0;

  /** Attach to the device (its EmuBackendDesc in arg) with pool for the mbufs receive() fills. */
  static open(arg: VirtioNetBackendArg, pool: Mempool): VirtioNetBackend {
    return new VirtioNetBackend(arg, pool);
  }

  /** Pauses, DMA table and state changes, link changes, the control queue, doorbells: the work it saw (kicks and commands). */
  service(): number {
    this.refresh();
    if (Atomics.load(this.st, this.wLinkDown) !== this.linkDown) this.linkChange();
    let work = this.kicks();
    if (this.bells > 0 && ++this.calls % FD_KICK_EVERY === 0) work += this.fdKicks();
    if (this.live && this.qReady[this.ctrlQ]) {
      work += this.ctrlQueue(this.ctrlQ);
      if (this.slow) this.refresh();
    }
    return work;
  }

  /** The guest's transmitqs -> up to n mbufs at out[0..) from the pool (BURST a queue per call at most): how many. */
  receive(out: Uint32Array, n: number): number {
    if (this.slow) this.refresh();
    if (!this.live) return 0;
    const pairs = this.pairs;
    let got = 0;
    for (let i = 0, p = this.txNext; i < pairs && got < n; i++, p = p + 1 < pairs ? p + 1 : 0) {
      const q = 2 * p + 1;
      if (!this.qReady[q]) continue;
      got += this.txQueue(q, out, got, n - got < BURST ? n - got : BURST);
      // A slow-path message's wait may have let memory go: refresh before another queue.
      if (this.slow) this.refresh();
    }
    if (pairs > 1) this.txNext = this.txNext + 1 < pairs ? this.txNext + 1 : 0;
    this.mbHeld = 0; // the caller's now
    return got;
  }

  /** pkts[0..n) -> the guest's receiveqs: how many it took (in order; delivered or dropped, freed); the rest stay the caller's. */
  deliver(pkts: Uint32Array, n: number): number {
    if (this.slow) this.refresh();
    if (!this.live) return 0;
    const took = this.rxBurst(pkts, n);
    if (this.slow) this.refresh();
    return took;
  }

  /** Back off: sleep up to ms on the FD doorbells (a pause request or a wake ends it sooner); the kicks that came. */
  idle(ms: number): number {
    this.plane.sleepOnDoorbells(ms);
    return this.bells > 0 ? this.fdKicks() : 0;
  }

  /** Leave the device: no view of client memory is used afterwards. */
  close(): void {
    this.be.detach();
  }

  /**
   * An exception escaped the loop (a bug, or a backend failing): free the mbufs the burst held,
   * stop the queues (DEVICE_NEEDS_RESET), keep serving. False once CRASH_BUDGET exceptions
   * happened since the last device reset (then parkedPoll() until a reset). Call it when receive(), deliver() or
   * service() threw; it frees the mbufs of the burst in hand (deliver's pkts included).
   */
  crashed(e: unknown): boolean {
    log('error', 'virtio-net', `data path: ${(e as Error).stack ?? String(e)}`);
    try {
      const lost = this.release(this.mbArr, 0, this.mbHeld) + this.release(this.rbArr, 0, this.rbHeld);
      if (lost > 0) log('warn', 'virtio-net', `data path: ${lost} mbuf handle(s) of the failed burst name no pool of this thread: not freed`);
    } catch (f) {
      log('error', 'virtio-net', `data path: freeing the failed burst's mbufs: ${(f as Error).message}`);
    }
    this.mbHeld = this.rbHeld = 0;
    this.take.fill(0);
    this.slow = true; // re-derive everything at the top
    this.fail(R.INTERNAL, -1);
    return ++this.errors < CRASH_BUDGET;
  }

  /**
   * Out of crash budget (crashed() said false), the queues parked: touch no queue and no mbuf, only
   * honour pauses; true once the driver reset the device (the queues may go on, with a new budget).
   */
  parkedPoll(): boolean {
    this.plane.service();
    return Atomics.load(this.st, this.wResets) !== this.resets;
  }

  /** Free n packets of ms from at whose segments belong to pools of this thread; the handles that do not. */
  private release(ms: Uint32Array, at: number, n: number): number {
    let lost = 0;
    for (let i = at; i < at + n; i++) {
      let s = ms[i];
      while (s !== MBUF_NONE) {
        const p = poolOf(s);
        if (p === undefined || (s & 0xff_ffff) >= p.size) { lost++; break; }
        s = pktmbufFreeSeg(s);
      }
    }
    return lost;
  }

  /** Doorbells written to the polled notify words since the last look (each is a kick). */
  private kicks(): number {
    const nf = this.notify, at = this.notifyAt;
    let n = 0;
    for (let i = 0; i < at.length; i++) {
      const w = at[i];
      if (nf[w] !== NOTIFY_IDLE) { Atomics.store(nf, w, NOTIFY_IDLE); n++; }
    }
    if (n > 0) this.stats[D.S_KICKS] += n;
    return n;
  }

  /** Doorbells rung through the ioeventfds since the last look (each is a kick). */
  private fdKicks(): number {
    let n = 0;
    for (let i = 0; i < this.bells; i++) n += this.plane.doorbell(this.bellIds[i]);
    if (n > 0) { this.stats[D.S_KICKS] += n; this.stats[D.S_KICKS_EVENTFD] += n; }
    return n;
  }
}
