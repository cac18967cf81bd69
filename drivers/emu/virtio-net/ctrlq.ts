/**
 * virtio-net, emulated: the control queue. VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (with MQ negotiated)
 * sets the queue pairs in use (the active_pairs attribute); anything else is answered
 * VIRTIO_NET_ERR. A command is read from its device-readable descriptors (64 bytes at most are
 * looked at), the ack written to the first device-writable byte; the walk is checked like a
 * transmit chain's (vq.ts).
 */
import * as V from '../../../lib/virtio/virtio.js';
import * as D from './defs.js';
import { ABORT, BURST } from './vq.js';
import { GuestRx } from './guest_rx.js';

// Module-local constants (see vq.ts).
const TWO32 = 0x1_0000_0000;
const MAX_HI = 0x20_0000;
const F_NEXT_ = V.VRING_DESC_F_NEXT, F_WRITE = V.VRING_DESC_F_WRITE, F_INDIRECT = V.VRING_DESC_F_INDIRECT;
const R = D.NeedsReset;

/** The control queue on top of both directions. */
export class CtrlQueue extends GuestRx {
  // ---- control queue ----

  protected ctrlQueue(q: number): number {
    let n = this.pending(q);
    if (n < 0) { this.fail(R.AVAIL_JUMP, q); return 0; }
    if (n > BURST) n = BURST;
    this.walkLeft[q] = this.qSize[q];
    for (let i = 0; i < n; i++) {
      const head = this.headAt(q, i);
      const r = this.ctrlCommand(q, head);
      if (r < 0) { this.take[q] = 0; return 0; }
      this.putUsed(q, head, r);
    }
    this.commit(q);
    return n;
  }

  /** Execute one control command; the bytes written (the ack: 1, or 0 without a writable buffer). */
  protected ctrlCommand(q: number, head: number): number {
    const size = this.qSize[q], p = this.plane, buf = this.ctrlBuf, budget = this.walkLeft[q];
    if (head >= size) return this.fail(R.HEAD_RANGE, q);
    let i = head, count = 0, got = 0, ack = -1, writing = false;
    for (;;) {
      if (++count > size) return this.fail(R.LOOP, q);
      if (count > budget) return this.fail(R.WALK, q);
      const du32 = this.ru32[this.qDescK[q]], d = (this.qDescOff[q] >>> 2) + 4 * i;
      const lo = du32[d], hi = du32[d + 1], dlen = du32[d + 2], w3 = du32[d + 3];
      const w = (w3 & F_WRITE) !== 0;
      if ((w3 & F_INDIRECT) !== 0) return this.fail(R.INDIRECT, q);
      if (writing && !w) return this.fail(R.DIRECTION, q); // device-readable after device-writable
      writing = w;
      if (dlen > 0) {
        if (hi >= MAX_HI) return this.fail(R.BAD_ADDRESS, q);
        const a = hi * TWO32 + lo;
        const off = p.at(a, dlen, w);
        if (off === -1) return this.fail(R.BAD_ADDRESS, q);
        if (w) { if (ack < 0) ack = a; }
        else if (got < buf.length) {
          const c = Math.min(dlen, buf.length - got);
          if (off >= 0) { const u8 = this.ru8[p.hit]; for (let b = 0; b < c; b++) buf[got + b] = u8[off + b]; }
          else {
            this.slow = true;
            const ok = p.messageRead(a, buf, got, c);
            if (this.changed()) return ABORT;
            if (!ok) return this.fail(R.BAD_ADDRESS, q);
          }
          got += c;
        }
      }
      if ((w3 & F_NEXT_) === 0) break;
      const next = w3 >>> 16;
      if (next >= size) return this.fail(R.NEXT_RANGE, q);
      i = next;
    }
    this.walkLeft[q] = budget - count;
    this.stats[D.S_CTRL]++;
    let result = V.VIRTIO_NET_ERR;
    if (got >= 4 && buf[0] === V.VIRTIO_NET_CTRL_MQ && buf[1] === V.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET && this.mq) {
      const pairs = buf[2] | (buf[3] << 8);
      if (pairs >= 1 && pairs <= this.pairs) {
        this.activePairs = pairs;
        Atomics.store(this.st, this.wActivePairs, pairs);
        result = V.VIRTIO_NET_OK;
      }
    }
    if (ack < 0) return 0;
    const off = p.at(ack, 1, true);
    if (off >= 0) this.ru8[p.hit][off] = result;
    else {
      this.ackBuf[0] = result;
      this.slow = true;
      const ok = p.messageWrite(ack, this.ackBuf, 0, 1);
      if (this.changed()) return ABORT;
      if (!ok) return this.fail(R.BAD_ADDRESS, q);
    }
    return 1;
  }
}
