/**
 * virtio-net, emulated: mbufs -> the guest's receiveqs (the engine's deliver side, port TX
 * semantics like DPDK's vhost PMD). Each packet goes behind a 12-byte virtio_net_hdr into one
 * descriptor chain, or with MRG_RXBUF into as many as it needs (num_buffers), on the receiveq
 * flow steering picks among the pairs in use (a hash of addresses and ports). The common case
 * (one pair, a single-segment mbuf of the engine's pool, one writable descriptor in the region of
 * the last one) runs in rxFast without per-packet calls. Chains are measured once per burst and a
 * burst's walk is bounded (vq.ts); the used entries are committed at the end of the burst.
 */
import { pktmbufFreeBulk, MBUF_NONE } from '../../../lib/mempool/mbuf.js';
import { MbufOff, MbufW16, MbufW32 } from '../../../lib/mempool/mbuf_layout.js';
import { copyBytes } from '../../../lib/net/copy.js';
import * as V from '../../../lib/virtio/virtio.js';
import * as D from './defs.js';
import { DROP, ABORT, FATAL, NOROOM } from './vq.js';
import { GuestTx } from './guest_tx.js';

// Module-local constants (see vq.ts).
const TWO32 = 0x1_0000_0000;
const MAX_HI = 0x20_0000;
const HDR = V.NET_HDR_SIZE;
const F_NEXT_ = V.VRING_DESC_F_NEXT, F_WRITE = V.VRING_DESC_F_WRITE, F_INDIRECT = V.VRING_DESC_F_INDIRECT;
const R = D.NeedsReset;

/** The receive direction (backend -> driver) on top of the transmit one. */
export class GuestRx extends GuestTx {
  // ---- receive: backend -> driver ----

  /**
   * Packets rb[0..n) into the receiveqs (steered over the pairs in use): how many it took, in
   * order (delivered, or dropped and counted), freed; it stops at the first one no receive buffer
   * can take now (none posted, or the device stopped): rb[took..n) stay the caller's.
   */
  protected rxBurst(rb: Uint32Array, n: number): number {
    const stats = this.stats;
    if (n === 0) return 0;
    this.rbArr = rb;
    this.rbHeld = n;
    // A new burst on every receiveq: no chain measured yet, the whole walk budget.
    for (let p = 0; p < this.pairs; p++) { this.measured[2 * p] = 0; this.walkLeft[2 * p] = 2 * this.qSize[2 * p]; }
    const v = this.v;
    let abort = false, k = 0, pkts = 0, bytes = 0, took = n;
    if (this.live && this.activePairs === 1 && this.qReady[0] && !this.viewsChanged()) {
      k = this.rxFast(rb, n);
      pkts = k;
      bytes = this.fastBytes;
      if (this.fastOut) took = k; // no buffers for the rest
    }
    if (took === n) {
      for (; k < n; k++) {
        const m = rb[k];
        if (!this.live) { took = k; break; }
        v.at(m);
        const len = v.pktLen;
        const q = this.activePairs > 1 ? 2 * this.steer(v.u8, v.data, v.dataLen) : 0;
        if (!this.qReady[q]) { took = k; break; }
        const r = this.place(q, m, len);
        if (r === ABORT || r === FATAL) { abort = true; took = k; break; }
        if (r === NOROOM) { took = k; break; }
        if (r === DROP) continue;
        pkts++;
        bytes += len;
      }
    }
    this.rbHeld = 0; // before the free: a handle it fails on must not make crashed() free the others again
    pktmbufFreeBulk(rb, took, 0);
    if (pkts > 0) { stats[D.S_RX_PACKETS] += pkts; stats[D.S_RX_BYTES] += bytes; }
    for (let p = 0; p < this.pairs; p++) {
      if (abort || !this.live) this.take[2 * p] = 0; // interrupted: redo with fresh state
      else this.commit(2 * p);
    }
    return took;
  }
  /**
   * The common case on receiveq 0, without per-packet calls: a single-segment mbuf of the backend's
   * pool into a one-descriptor chain that holds header and frame, in the region that held the last
   * one. Returns how many packets of rb it delivered (their bytes in fastBytes); it stops at the
   * first packet that needs anything else (the general path then judges that one and the rest).
   */
  protected rxFast(rb: Uint32Array, n: number): number {
    this.fastBytes = 0;
    this.fastOut = false;
    const size = this.qSize[0], mask = size - 1, take = this.take;
    const idx = Atomics.load(this.ru16[this.qAvailK[0]], (this.qAvailOff[0] >>> 1) + 1);
    const avail = (idx - this.lastAvail[0]) & 0xffff;
    if (avail > size) return 0; // the general path fails the queue
    let lim = avail - take[0];
    if (lim > n) lim = n;
    if (lim <= 0) { this.fastOut = lim === 0; return 0; }
    // Packets of the backend's pool only, so its views, hoisted, serve the copies.
    // (pool.offsetOf and the mbuf header read by hand, offsets from mbuf_layout.ts: this loop is
    // past the compiler's inlining budget.)
    const pool = this.pool, pid = pool.id, pu8 = pool.u8, pu16 = pool.u16, pu32 = pool.u32, objOff = pool.objOffset, objSize = pool.objSize;
    const du32 = this.ru32[this.qDescK[0]], dBase = this.qDescOff[0] >>> 2;
    const au16 = this.ru16[this.qAvailK[0]], aBase = (this.qAvailOff[0] >>> 1) + 2;
    const uu32 = this.ru32[this.qUsedK[0]], uBase = (this.qUsedOff[0] >>> 2) + 1;
    const win = this.wWin;
    const slot = this.lastAvail[0] + take[0], used = this.usedIdx[0] + take[0];
    let k = 0, bytes = 0, again = false;
    for (;; k++) {
      if (k === lim) {
        if (lim === n) break;
        // Out of buffers: the driver may have posted more meanwhile (looked at once per burst).
        if (again) { this.fastOut = true; break; }
        again = true;
        const more = (Atomics.load(au16, aBase - 1) - this.lastAvail[0]) & 0xffff;
        if (more > size) break; // the general path fails the queue
        lim = more - take[0] < n ? more - take[0] : n;
        if (lim <= k) { this.fastOut = true; break; }
      }
      const m = rb[k];
      if (m >>> 24 !== pid) break;
      const mo = objOff + Math.imul(m & 0xffffff, objSize);
      const len = pu32[(mo >> 2) + MbufW32.PktLen];
      if (pu16[(mo >> 1) + MbufW16.DataLen] !== len || len === 0) break; // chained (or empty): general path
      const head = au16[aBase + ((slot + k) & mask)];
      if (head >= size) break;
      const d = dBase + (head << 2);
      if ((du32[d + 3] & 0xffff) !== F_WRITE) break; // one device-writable descriptor, nothing else
      const dlen = du32[d + 2], need = HDR + len;
      if (dlen < need) break;
      const hi = du32[d + 1];
      if (hi >= MAX_HI) break;
      const a = hi * TWO32 + du32[d];
      // The whole descriptor inside a writable region mapped by fd: the last one's, another one
      // found before, or (rarely) one at() finds now.
      let j = this.wLast;
      if (!(a >= win[2 * j] && a + dlen <= win[2 * j + 1])) {
        if ((j = this.findW(hi, du32[d] | 0, dlen)) < 0) break; // the general path decides
      }
      const wk = this.wK[j], u8 = this.ru8[wk];
      const dst = a - win[2 * j], src = mo + MbufOff.Buf + pu16[(mo >> 1) + MbufW16.DataOff];
      if ((dst & 3) === 0) {
        // The header, all zero but num_buffers = 1, as three word stores.
        const u32 = this.ru32[wk], dw = dst >>> 2;
        u32[dw] = 0;
        u32[dw + 1] = 0;
        u32[dw + 2] = 0x10000;
        copyBytes(u8, u32, dst + HDR, pu8, pu32, src, len);
      } else {
        for (let i = 0; i < HDR; i++) u8[dst + i] = 0;
        u8[dst + 10] = 1;
        copyBytes(u8, this.ru32[wk], dst + HDR, pu8, pu32, src, len);
      }
      const u = uBase + 2 * ((used + k) & mask);
      uu32[u] = head;
      uu32[u + 1] = need;
      bytes += len;
    }
    take[0] += k;
    this.fastBytes = bytes;
    return k;
  }

  /** Flow steering over the pairs in use: a hash of the IPv4/IPv6 addresses and TCP/UDP ports. */
  protected steer(u8: Uint8Array, d: number, len: number): number {
    let h = 0, from = 0, to = 0;
    const et = (u8[d + 12] << 8) | u8[d + 13];
    if (et === 0x0800 && len >= 34) {
      from = d + 26; to = d + 34;
      const ihl = (u8[d + 14] & 15) << 2, proto = u8[d + 23];
      if ((proto === 6 || proto === 17) && len >= 14 + ihl + 4) { for (let i = 0; i < 4; i++) h = Math.imul(h, 31) + u8[d + 14 + ihl + i]; }
    } else if (et === 0x86dd && len >= 54) {
      from = d + 22; to = d + 54;
    } else return 0;
    for (let i = from; i < to; i++) h = Math.imul(h, 31) + u8[i];
    h ^= h >>> 16;
    return (h >>> 0) % this.activePairs;
  }

  /** Copy one packet into receiveq q behind its header: 1, NOROOM (no room now), DROP (a chain too small, counted), FATAL or ABORT. */
  protected place(q: number, m: number, len: number): number {
    const left = this.pending(q);
    if (left < 0) return this.fail(R.AVAIL_JUMP, q);
    const need = HDR + len;
    const max = this.mrg ? left : left > 0 ? 1 : 0;
    // Chains are measured once per burst (slots after lastAvail, cached from take on): a packet
    // that finds too little room does not make the next one walk the same chains again.
    const take0 = this.take[q], base = (q >>> 1) * this.maxQ, heads = this.chainHead, caps = this.chainCap;
    let cap = 0, chains = 0;
    while (cap < need && chains < max) {
      const s = take0 + chains;
      if (s >= this.measured[q]) {
        const head = this.headAt(q, s);
        const c = this.rxChain(q, head, false);
        if (c < 0) return c;
        // With MRG_RXBUF every buffer holds at least the header (5.1.6.3.1): no empty buffers.
        if (this.mrg && c < HDR) return this.fail(R.RX_SHORT, q);
        heads[base + s] = head;
        caps[base + s] = c;
        this.measured[q] = s + 1;
      }
      cap += caps[base + s];
      chains++;
    }
    if (cap < need) {
      // Without MRG_RXBUF a packet goes into one chain: too small a chain stays for a smaller packet.
      if (chains > 0 && !this.mrg) { this.stats[D.S_RX_TOO_BIG]++; return DROP; }
      return NOROOM; // the caller's to drop (and count) or offer again
    }
    const hdr32 = this.hdr32;
    hdr32[0] = 0; // flags, gso_type, hdr_len: no offloads
    hdr32[1] = 0; // gso_size, csum_start
    hdr32[2] = chains << 16; // csum_offset, num_buffers (1 without MRG_RXBUF)
    const v = this.v.at(m); // stays at the cursor's segment until the packet is written
    this.cHdr = 0;
    this.cOff = v.data;
    this.cLeft = v.dataLen;
    this.wLeft = need;
    for (let c = 0; c < chains; c++) {
      const head = heads[base + take0 + c];
      const w = this.rxChain(q, head, true);
      if (w < 0) { this.take[q] = take0; return w; }
      this.putUsed(q, head, w);
    }
    if (this.wLeft > 0) return this.fail(R.CHAIN_CHANGED, q); // the driver rewrote descriptors under us
    return 1;
  }

  /** Walk a receive chain: its capacity, or (write) copy up to wLeft bytes into it and return them. */
  protected rxChain(q: number, head: number, write: boolean): number {
    const size = this.qSize[q], p = this.plane, budget = this.walkLeft[q];
    if (head >= size) return this.fail(R.HEAD_RANGE, q);
    let i = head, count = 0, total = 0;
    for (;;) {
      if (++count > size) return this.fail(R.LOOP, q);
      if (count > budget) return this.fail(R.WALK, q);
      const du32 = this.ru32[this.qDescK[q]], d = (this.qDescOff[q] >>> 2) + 4 * i;
      const lo = du32[d], hi = du32[d + 1], dlen = du32[d + 2], w3 = du32[d + 3];
      if ((w3 & F_INDIRECT) !== 0) return this.fail(R.INDIRECT, q);
      if ((w3 & F_WRITE) === 0) return this.fail(R.DIRECTION, q);
      if (dlen > 0) {
        if (hi >= MAX_HI) return this.fail(R.BAD_ADDRESS, q);
        const j = this.findW(hi, lo | 0, dlen);
        let off = -2, k = 0;
        if (j >= 0) { k = this.wK[j]; off = hi * TWO32 + lo - this.wWin[2 * j]; }
        else {
          off = p.at(hi * TWO32 + lo, dlen, true);
          if (off === -1) return this.fail(R.BAD_ADDRESS, q);
          k = p.hit;
        }
        if (!write) total += dlen;
        else if (this.wLeft > 0) {
          const c = dlen < this.wLeft ? dlen : this.wLeft;
          const r = this.emit(hi, lo | 0, off, k, c);
          if (r < 0) return r;
          this.wLeft -= c;
          total += c;
        }
      }
      if ((w3 & F_NEXT_) === 0) break;
      const next = w3 >>> 16;
      if (next >= size) return this.fail(R.NEXT_RANGE, q);
      i = next;
    }
    this.walkLeft[q] = budget - count;
    return total;
  }

  /** Copy n bytes from the RX cursor (header, then mbuf segments) to guest address hi:lo (off in region k, or -2). */
  protected emit(hi: number, lo: number, off: number, k: number, n: number): number {
    let done = 0;
    while (done < n) {
      let src8: Uint8Array, src32: Uint32Array, s: number, c: number;
      if (this.cHdr < HDR) {
        c = HDR - this.cHdr < n - done ? HDR - this.cHdr : n - done;
        src8 = this.hdr; src32 = this.hdr32; s = this.cHdr;
        this.cHdr += c;
      } else {
        const v = this.v;
        while (this.cLeft === 0) {
          const nx = v.next;
          if (nx === MBUF_NONE) { this.stats[D.S_RX_NOBUF]++; return DROP; } // pkt_len beyond the segments: a backend bug
          v.at(nx);
          this.cOff = v.data;
          this.cLeft = v.dataLen;
        }
        c = this.cLeft < n - done ? this.cLeft : n - done;
        src8 = v.u8; src32 = v.u32; s = this.cOff;
        this.cOff += c; this.cLeft -= c;
      }
      if (off >= 0) copyBytes(this.ru8[k], this.ru32[k], off + done, src8, src32, s, c);
      else {
        this.slow = true;
        const ok = this.plane.messageWrite(hi * TWO32 + (lo >>> 0) + done, src8, s, c);
        if (this.changed()) return ABORT;
        if (!ok) return this.fail(R.BAD_ADDRESS, -1);
      }
      done += c;
    }
    return done;
  }
}
