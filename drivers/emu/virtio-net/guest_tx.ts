/**
 * virtio-net, emulated: the guest's transmitqs -> mbufs (the engine's receive side, port RX
 * semantics). Each burst takes up to BURST new avail entries of a transmitq, copies each chain
 * after its 12-byte virtio_net_hdr into an mbuf of the engine's pool (the common case, one
 * device-readable descriptor in memory mapped by fd, inline; the rest in gatherTx), and commits
 * the entries (used length 0) at the end; a chain too long for an mbuf or without a frame is
 * dropped and counted (tx_errors). The mbufs go to the caller; statistics count what it got.
 */
import { pktmbufAllocInit, pktmbufFreeBulk, MBUF_HDR } from '../../../lib/mempool/mbuf.js';
import { copyBytes } from '../../../lib/net/copy.js';
import * as V from '../../../lib/virtio/virtio.js';
import * as D from './defs.js';
import { VirtQueues, DROP, ABORT } from './vq.js';

// Module-local constants (see vq.ts).
const TWO32 = 0x1_0000_0000;
const MAX_HI = 0x20_0000;
const HDR = V.NET_HDR_SIZE;
const F_NEXT_ = V.VRING_DESC_F_NEXT, F_WRITE = V.VRING_DESC_F_WRITE, F_INDIRECT = V.VRING_DESC_F_INDIRECT;
const R = D.NeedsReset;

/** The transmit direction (driver -> backend) on top of the queue state. */
export class GuestTx extends VirtQueues {
  /**
   * Up to max of transmitq q's new packets into mbufs at mb[at..]: how many, with the avail
   * entries they and the dropped ones took committed. mb[0..at + filled) stay held (mbHeld, freed
   * by crashed() after an exception) until receive() hands them to its caller.
   */
  protected txQueue(q: number, mb: Uint32Array, at: number, max: number): number {
    let n = this.pending(q);
    if (n < 0) { this.fail(R.AVAIL_JUMP, q); return 0; }
    if (n === 0) return 0;
    if (n > max) n = max;
    const stats = this.stats;
    if (!pktmbufAllocInit(this.pool, mb, n, at, 0, this.port)) { stats[D.S_TX_NOMBUF]++; return 0; }
    this.mbArr = mb; // mb[0..at) are earlier queues' packets of the same receive(): held too
    this.mbHeld = at + n;
    // mb is all from this.pool: its views serve the copies, the view the header.
    const size = this.qSize[q], mask = size - 1, room = this.room, pool = this.pool, pu8 = pool.u8, pu32 = pool.u32, v = this.v;
    const du32 = this.ru32[this.qDescK[q]], dBase = this.qDescOff[q] >>> 2;
    const au16 = this.ru16[this.qAvailK[q]], aBase = (this.qAvailOff[q] >>> 1) + 2, slot = this.lastAvail[q];
    this.walkLeft[q] = size; // chains in flight are disjoint: a burst walks at most the whole table
    const win = this.rWin, data = MBUF_HDR + this.headroom;
    let filled = 0, bytes = 0;
    for (let i = 0; i < n; i++) {
      const head = au16[aBase + ((slot + i) & mask)];
      let len = -4;
      // The common case inline: one device-readable descriptor, header and frame, in a region
      // mapped by fd. Anything else is gatherTx's to judge.
      if (head < size) {
        const d = dBase + (head << 2);
        const dlen = du32[d + 2], hi = du32[d + 1];
        if ((du32[d + 3] & 0xffff) === 0 && dlen > HDR && dlen - HDR <= room && hi < MAX_HI) {
          const a = hi * TWO32 + du32[d];
          let j = this.rLast;
          if ((a >= win[2 * j] && a + dlen <= win[2 * j + 1]) || (j = this.findR(hi, du32[d] | 0, dlen)) >= 0) {
            const k = this.rK[j], src = a - win[2 * j] + HDR, dst = v.at(mb[at + filled]).off + data;
            len = dlen - HDR;
            copyBytes(pu8, pu32, dst, this.ru8[k], this.ru32[k], src, len);
            v.setLen(len);
          }
        }
      }
      if (len === -4) len = this.gatherTx(q, head, mb[at + filled]);
      if (len >= 0) { filled++; bytes += len; }
      else if (len !== DROP) { // FATAL or ABORT: nothing of the burst is committed
        this.take[q] = 0;
        this.mbHeld = at; // before the free: one that fails half-way must not be freed again by crashed()
        pktmbufFreeBulk(mb, n, at);
        return 0;
      }
      this.putUsed(q, head, 0); // the device wrote nothing into a transmit buffer
    }
    this.mbHeld = at + filled;
    if (filled < n) pktmbufFreeBulk(mb, n - filled, at + filled);
    this.commit(q);
    if (filled > 0) {
      stats[D.S_TX_PACKETS] += filled;
      stats[D.S_TX_BYTES] += bytes;
    }
    return filled;
  }

  /** Copy a transmit chain (after its header) into mbuf m; its length, DROP, FATAL or ABORT. */
  protected gatherTx(q: number, head: number, m: number): number {
    const size = this.qSize[q], p = this.plane;
    if (head >= size) return this.fail(R.HEAD_RANGE, q);
    // Nothing below moves the view: it is still at m for setLen at the end.
    const v = this.v.at(m), dst = v.off + MBUF_HDR + this.headroom, room = this.room, budget = this.walkLeft[q];
    let i = head, count = 0, skip = HDR, len = 0, over = false;
    for (;;) {
      if (++count > size) return this.fail(R.LOOP, q);
      if (count > budget) return this.fail(R.WALK, q);
      const du32 = this.ru32[this.qDescK[q]], d = (this.qDescOff[q] >>> 2) + 4 * i;
      const lo = du32[d], hi = du32[d + 1], dlen = du32[d + 2], w3 = du32[d + 3];
      if ((w3 & F_INDIRECT) !== 0) return this.fail(R.INDIRECT, q);
      if ((w3 & F_WRITE) !== 0) return this.fail(R.DIRECTION, q);
      if (dlen > 0) {
        if (hi >= MAX_HI) return this.fail(R.BAD_ADDRESS, q);
        // A window when the memory has an fd (no call boxes the address); at() decides the rest.
        const j = this.findR(hi, lo | 0, dlen);
        let off: number, k: number;
        if (j >= 0) { k = this.rK[j]; off = hi * TWO32 + lo - this.rWin[2 * j]; }
        else {
          off = p.at(hi * TWO32 + lo, dlen, false);
          if (off === -1) return this.fail(R.BAD_ADDRESS, q);
          k = p.hit;
        }
        const s = skip < dlen ? skip : dlen;
        skip -= s;
        const c = dlen - s;
        if (c > 0) {
          if (len + c > room) over = true;
          else {
            if (off >= 0) copyBytes(v.u8, v.u32, dst + len, this.ru8[k], this.ru32[k], off + s, c);
            else {
              this.slow = true;
              const ok = p.messageRead(hi * TWO32 + lo + s, v.u8, dst + len, c);
              if (this.changed()) return ABORT; // judged again with fresh state
              if (!ok) return this.fail(R.BAD_ADDRESS, q);
            }
            len += c;
          }
        }
      }
      if ((w3 & F_NEXT_) === 0) break;
      const next = w3 >>> 16;
      if (next >= size) return this.fail(R.NEXT_RANGE, q);
      i = next;
    }
    this.walkLeft[q] = budget - count;
    // Too long for an mbuf (no segmentation offload was offered), or shorter than its header.
    if (over || skip > 0 || len === 0) { this.stats[D.S_TX_ERRORS]++; return DROP; }
    v.setLen(len);
    return len;
  }
}
