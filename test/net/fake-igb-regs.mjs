// The register thread of FakeIgb (fake-igb.ts), in plain JavaScript so that a worker runs it
// without the TypeScript loader (which takes seconds to start in a thread). Once a millisecond
// until ctl[0] is set: CTRL.RST clears, an EERD read returns its EEPROM word, an MDIC access
// completes (a read returns the PHY register). The register offsets and bits come from the
// driver's igb_regs.ts through workerData; ctl[1] counts the handshakes answered.
import { workerData, parentPort } from 'node:worker_threads';
import koffi from 'koffi';

const { va, len, ctl: ctlBuf, eeprom, phy, R } = workerData;
const r = new Uint32Array(koffi.view(va, len));
const ctl = new Int32Array(ctlBuf);
parentPort.postMessage('ready');
while (Atomics.load(ctl, 0) === 0) {
  const c = Atomics.load(r, R.CTRL >> 2);
  if ((c & R.CTRL_RST) !== 0 && Atomics.compareExchange(r, R.CTRL >> 2, c, (c & ~R.CTRL_RST) >>> 0) === c) Atomics.add(ctl, 1, 1);
  const e = Atomics.load(r, R.EERD >> 2);
  if ((e & R.EERD_START) !== 0 && (e & R.EERD_DONE) === 0) {
    const addr = (e >>> R.EERD_ADDR_SHIFT) & 0x3fff;
    Atomics.store(r, R.EERD >> 2, (((eeprom[addr] ?? 0xffff) << R.EERD_DATA_SHIFT) | R.EERD_DONE) >>> 0);
    Atomics.add(ctl, 1, 1);
  }
  const m = Atomics.load(r, R.MDIC >> 2);
  if (m !== 0 && (m & (R.MDIC_READY | R.MDIC_ERROR)) === 0) {
    const reg = (m >>> R.MDIC_REG_SHIFT) & 0x1f;
    const v = (m & R.MDIC_OP_READ) !== 0 ? (m & 0xffff0000) | (phy[reg] ?? 0) : m;
    Atomics.store(r, R.MDIC >> 2, (v | R.MDIC_READY) >>> 0);
    Atomics.add(ctl, 1, 1);
  }
  Atomics.wait(ctl, 2, 0, 1);
}
