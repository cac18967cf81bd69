/**
 * MAC addresses as text: aa:bb:cc:dd:ee:ff (or with dashes) to 6 bytes and back. Control-path
 * helpers (they allocate); per-packet code rewrites addresses with MbufView.setMacWords.
 */

/** Format 6 bytes as aa:bb:cc:dd:ee:ff. */
export function formatMac(b: ArrayLike<number>): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
}

/** Parse aa:bb:cc:dd:ee:ff (or aa-bb-...) into 6 bytes; throws naming the text when it is not a MAC address. */
export function parseMac(s: string): number[] {
  const m = /^([0-9a-fA-F]{2})(?:[:-]([0-9a-fA-F]{2})){5}$/.test(s) ? s.split(/[:-]/) : null;
  if (!m) throw new Error(`"${s}" is not a MAC address (expected six hex bytes like 02:00:00:00:00:01)`);
  return m.map((x) => parseInt(x, 16));
}

/** Whether a MAC address is multicast (or broadcast): the low bit of its first byte. */
export function isMulticastMac(b: ArrayLike<number>): boolean {
  return (b[0] & 1) === 1;
}
