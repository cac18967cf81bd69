/**
 * The lcore side of Rx interrupt mode (DPDK's l3fwd-power pattern): a poll loop reports how many
 * packets each round brought; after enough empty rounds the sleeper arms every queue's interrupt
 * (RxInterrupt.enable, which also re-checks for packets that arrived before arming), sleeps in one
 * poll(2) on all their fds for at most maxSleepMs, then disarms them all (RxInterrupt.disable) and
 * hands control back to the loop. A busy lcore never sleeps and polls at full rate; an idle one
 * costs a wake-up per maxSleepMs (so that the loop still sees its stop flag).
 *
 * Works with any RxInterrupt: an eventfd that a device's MSI-X vector signals, or the socket / tap
 * fd of a kernel-backed port. Allocates nothing per round or per sleep.
 */
import { pollFds, takeSocketError, clockGettime, CLOCK_MONOTONIC, POLLIN, POLLERR, SIZEOF_POLLFD, E } from '../../src/os/libc.js';
import type { RxInterrupt, RxQueue } from './ethdev.js';

export type { RxInterrupt } from './ethdev.js';

/** One RX queue an lcore polls, with the names its errors use. */
export interface RxIdleQueue {
  rxq: RxQueue;
  /** port id and name (PortData.port / .name) */
  port: number;
  name: string;
  /** RX queue index on that port */
  queue: number;
}

/** When to sleep and for how long. */
export interface RxIdleSleeperOptions {
  /** consecutive empty polling rounds before sleeping: 1 sleeps as soon as a round finds nothing */
  idlePolls: number;
  /** longest sleep, in ms, so the loop sees its stop flag at least this often */
  maxSleepMs: number;
  /** checked before each sleep: no sleep once it returns true (pass ctx.stopRequested) */
  stopRequested?: () => boolean;
}

/** What a sleeper did so far (all counts). */
export interface RxIdleStats {
  /** sleeps in poll(2) */
  sleeps: number;
  /** sleeps ended by an fd turning readable (a packet arrived) */
  wakeups: number;
  /** sleeps ended by maxSleepMs */
  timeouts: number;
  /** sleeps abandoned because a queue's enable() found packets already waiting */
  raced: number;
  /**
   * sleeps ended by an fd in an error state (POLLERR/POLLHUP/POLLNVAL without POLLIN, e.g. a TAP
   * interface deleted): that fd is left out of the following sleeps until one times out
   */
  errors: number;
  /** total ms spent asleep */
  sleptMs: number;
}

// A module constant, not E.EINTR at each use: the sleep path compares it per poll.
const EINTR = E.EINTR;

/** Puts an lcore to sleep on its RX queues' interrupts when they stay idle (rte_eth_dev_rx_intr_enable + epoll_wait). */
export class RxIdleSleeper {
  private readonly intrs: RxInterrupt[] = [];
  private readonly pfds: Uint8Array;
  /** pollfd views: fd words (negative = left out of poll) and revents */
  private readonly pfdFd: Int32Array;
  private readonly pfdRevents: Uint16Array;
  private readonly fds: Int32Array;
  private masked = 0;
  private readonly nfds: number;
  private readonly idlePolls: number;
  private readonly maxSleepMs: number;
  private readonly stop: (() => boolean) | null;
  private empty = 0;
  /**
   * What the sleeper did so far: a live object, read it any time (the counts are small integers,
   * so updating and reading them allocates nothing; sleptMs is a getter over a Float64Array,
   * because storing a double into an object field allocates and an element store does not).
   */
  readonly stats: RxIdleStats;
  private readonly slept = new Float64Array(1);
  /** struct timespec before and after a sleep (seconds in word 0, nanoseconds in word 2) */
  private readonly ts0 = new Uint8Array(16);
  private readonly ts1 = new Uint8Array(16);
  private readonly ts0w = new Int32Array(this.ts0.buffer);
  private readonly ts1w = new Int32Array(this.ts1.buffer);

  constructor(queues: readonly RxIdleQueue[], opts: RxIdleSleeperOptions) {
    if (queues.length === 0) throw new RangeError('RxIdleSleeper: no RX queues given: pass the queues this lcore polls');
    if (!Number.isInteger(opts.idlePolls) || opts.idlePolls < 1) {
      throw new RangeError(`RxIdleSleeper: idlePolls ${opts.idlePolls} must be an integer >= 1 (1 sleeps whenever a round finds nothing)`);
    }
    if (!Number.isInteger(opts.maxSleepMs) || opts.maxSleepMs < 0 || opts.maxSleepMs > 60000) {
      throw new RangeError(`RxIdleSleeper: maxSleepMs ${opts.maxSleepMs} must be an integer from 0 to 60000 (the loop checks its stop flag that often)`);
    }
    for (const q of queues) {
      const intr = q.rxq.intr;
      if (!intr) {
        throw new Error(`port ${q.port} (${q.name}) has no Rx interrupt: RX queue ${q.queue} cannot wake a sleeping lcore; configure the port with intr: { rxq: true } on a driver with the "rx-interrupt" capability, or keep the lcore polling`);
      }
      this.intrs.push(intr);
    }
    this.nfds = this.intrs.length;
    this.pfds = new Uint8Array(this.nfds * SIZEOF_POLLFD);
    this.pfdFd = new Int32Array(this.pfds.buffer);
    this.pfdRevents = new Uint16Array(this.pfds.buffer);
    this.fds = new Int32Array(this.nfds);
    const dv = new DataView(this.pfds.buffer);
    this.intrs.forEach((intr, i) => {
      this.fds[i] = intr.fd;
      dv.setInt32(i * SIZEOF_POLLFD, intr.fd, true);
      dv.setInt16(i * SIZEOF_POLLFD + 4, POLLIN, true);
    });
    this.idlePolls = opts.idlePolls;
    this.maxSleepMs = opts.maxSleepMs;
    this.stop = opts.stopRequested ?? null;
    const slept = this.slept;
    this.stats = { sleeps: 0, wakeups: 0, timeouts: 0, raced: 0, errors: 0, get sleptMs(): number { return slept[0]; } };
  }

  /**
   * Report one polling round that received got packets (over all queues). After idlePolls empty
   * rounds in a row this sleeps until a queue signals or maxSleepMs passes; returns true if it slept.
   */
  round(got: number): boolean {
    if (got > 0) {
      this.empty = 0;
      return false;
    }
    if (++this.empty < this.idlePolls) return false;
    return this.sleep();
  }

  /** Arm all, sleep, disarm all, now. Returns false when a queue had packets waiting (no sleep). */
  sleep(): boolean {
    if (this.stop !== null && this.stop()) return false;
    const intrs = this.intrs, n = this.nfds;
    let armed = 0;
    for (; armed < n; armed++) {
      if (!intrs[armed].enable()) {
        // Packets arrived between the last poll and arming: disarm what was armed (this one too) and poll.
        for (let i = 0; i <= armed; i++) intrs[i].disable();
        this.stats.raced++;
        this.empty = 0;
        return false;
      }
    }
    clockGettime(CLOCK_MONOTONIC, this.ts0);
    const r = pollFds(this.pfds, n, this.maxSleepMs);
    clockGettime(CLOCK_MONOTONIC, this.ts1);
    const a = this.ts0w, b = this.ts1w;
    this.slept[0] += (b[0] - a[0]) * 1000 + (b[2] - a[2]) / 1e6;
    for (let i = 0; i < n; i++) intrs[i].disable();
    this.stats.sleeps++;
    if (r > 0) {
      // pollfd i: its fd is Int32 word 2i, its revents Uint16 4i+3.
      const rev = this.pfdRevents, fdw = this.pfdFd;
      let input = false;
      for (let i = 0; i < n; i++) {
        const e = rev[4 * i + 3];
        if ((e & POLLIN) !== 0) input = true;
        else if (e !== 0 && fdw[2 * i] >= 0) {
          fdw[2 * i] = -1; // an fd stuck in an error state would wake every sleep at once: leave it out
          this.masked++;
        }
      }
      if (input) {
        this.stats.wakeups++;
        this.empty = 0;
      } else {
        this.stats.errors++;
      }
    } else if (r === 0 || r === -EINTR) {
      // Nothing arrived: stay at the threshold, so the next empty round sleeps again at once.
      this.stats.timeouts++;
      if (this.masked > 0) this.unmask();
    } else {
      throw new Error(`RxIdleSleeper: poll(2) on the RX interrupt fds failed with errno ${-r}: a queue's fd was closed (was its port stopped while the lcore ran?)`);
    }
    return true;
  }

  /** Watch the fds left out after an error again (after a quiet sleep: errors are rare and may clear). */
  private unmask(): void {
    for (let i = 0; i < this.nfds; i++) this.pfdFd[2 * i] = this.fds[i];
    this.masked = 0;
  }
}

/**
 * An RxInterrupt over a file descriptor that is level-triggered readable while packets wait (an
 * AF_PACKET socket, a TAP fd): arming is bookkeeping (the fd needs no switch), enable() asks the
 * driver's cheap pending() check (e.g. the next ring slot's status) so a packet that came in since
 * the last poll makes the caller poll again, and disable() counts an interrupt in the queue's
 * RXQ_INTERRUPTS when the fd was readable. For drivers' data halves.
 */
export class FdRxInterrupt implements RxInterrupt {
  private armed = false;
  private readonly pfd = new Uint8Array(SIZEOF_POLLFD);
  private readonly revents: Uint16Array;

  /** stats[index] is the queue's RXQ_INTERRUPTS counter; pending (optional) says whether packets wait already. */
  constructor(readonly fd: number, private readonly stats: Float64Array, private readonly index: number, private readonly pending: (() => boolean) | null = null) {
    const dv = new DataView(this.pfd.buffer);
    dv.setInt32(0, fd, true);
    dv.setInt16(4, POLLIN, true);
    this.revents = new Uint16Array(this.pfd.buffer, 6, 1);
  }

  /** Arm; false (and not armed) when pending() sees packets already waiting. */
  enable(): boolean {
    if (this.pending !== null && this.pending()) {
      this.armed = false;
      return false;
    }
    this.armed = true;
    return true;
  }

  /**
   * Disarm; one interrupt counted when armed and the fd is readable now. A socket error (POLLERR,
   * e.g. ENETDOWN after the interface went down) is taken, or the fd would poll ready forever.
   */
  disable(): void {
    if (!this.armed) return;
    this.armed = false;
    if (pollFds(this.pfd, 1, 0) <= 0) return;
    const e = this.revents[0];
    if ((e & POLLIN) !== 0) this.stats[this.index]++;
    if ((e & POLLERR) !== 0) takeSocketError(this.fd);
  }
}
