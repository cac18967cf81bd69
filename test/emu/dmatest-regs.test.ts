/**
 * dmatest's Adler-32 against known values (RFC 1950), so the tests that compare the engine's
 * checksums with it have an oracle of their own.
 */
import t from 'tap';
import { adler32 } from '../../lib/dmatest/regs.js';

t.test('Adler-32 known values and ranges', async (t) => {
  const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
  t.equal(adler32(new Uint8Array(0)), 1, 'empty input: 1');
  t.equal(adler32(enc('Wikipedia')), 0x11e60398, '"Wikipedia": 0x11e60398');
  t.equal(adler32(enc('abc')), 0x024d0127, '"abc": 0x024d0127');
  const big = new Uint8Array(100_000).fill(0xff);
  // every reduction step matters here: s grows past 2^32 without the modulo every 3800 bytes
  t.equal(adler32(big), naive(big), '100 KB of 0xff: the same as a byte-by-byte modulo');
  const b = enc('xxWikipediayy');
  t.equal(adler32(b, 2, 9), 0x11e60398, 'a range inside a larger buffer');
});

/** Adler-32 with a modulo per byte: slow, obviously right. */
function naive(b: Uint8Array): number {
  let a = 1, s = 0;
  for (const x of b) { a = (a + x) % 65521; s = (s + a) % 65521; }
  return ((s << 16) | a) >>> 0;
}
