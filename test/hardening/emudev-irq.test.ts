/**
 * emudev hardening, issue 14 item 3: interrupt fds can never block the process, and MSI-X mask
 * bits are honoured.
 *
 * A client's SET_IRQS fds are written by the thread that raises the interrupt (the main thread or
 * the device's lcore). A pipe whose buffer is full, or a blocking eventfd whose counter is at its
 * maximum, would block that write forever: the main thread then never handles SIGTERM and every
 * quiesce times out. The scenarios that could hang run in a child process (this file, run again
 * with TSP_EMUDEV_IRQ_CHILD set) under a timeout, so a hang fails the test instead of hanging it.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as os from '../../src/os/libc.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { EmuDevice, type EmuDeviceSpec } from '../../lib/emudev/emudev.js';
import { DataPlane } from '../../lib/emudev/dataplane.js';
import { ProtocolError } from '../../lib/vfio-user/protocol.js';

const MSIX = U.VFIO_PCI_MSIX_IRQ_INDEX;
const EVENTFD_MAX = 0xfffffffffffffffen;
const CHILD = process.env.TSP_EMUDEV_IRQ_CHILD;

/** SET_IRQS DATA_EVENTFD | ACTION_TRIGGER for vectors start.. of MSI-X. */
function assign(dev: EmuDevice, start: number, fds: number[]): void {
  dev.setIrqs({ argsz: 0, flags: U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, index: MSIX, start, count: fds.length, bools: new Uint8Array(0) }, fds);
}

/** The eventfd's counter (read, so it is reset), or 0 when nothing is there (within ms). */
function drain(fd: number, ms = 0): bigint {
  if ((os.pollOne(fd, os.POLLIN, ms) & os.POLLIN) === 0) return 0n;
  const b = new Uint8Array(8);
  os.read(fd, b);
  return new DataView(b.buffer).getBigUint64(0, true);
}

function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

function simpleDevice(name: string, vectors = 1): EmuDevice {
  return new EmuDevice({ name, pci: { vendorId: 0x1234, deviceId: 0x11e9, classCode: 0xff0000 }, bars: [], irqs: [{ index: MSIX, count: vectors }] });
}

/** Child scenarios: print one line per result; a hang is the failure the parent sees. */
function child(which: string): void {
  const out = (s: string): void => { process.stdout.write(s + '\n'); };
  const dev = simpleDevice(`tsp-irq-${process.pid}`);
  if (which === 'pipe') {
    const [r, w] = os.pipe(os.O_NONBLOCK);
    const chunk = new Uint8Array(65536);
    try { for (;;) os.write(w, chunk); } catch (e) { if (!(e instanceof os.OsError) || e.code !== 'EAGAIN') throw e; }
    os.fcntl(w, os.F_SETFL, os.fcntl(w, os.F_GETFL) & ~os.O_NONBLOCK); // a full, blocking pipe
    try {
      assign(dev, 0, [w]);
      out('accepted');
      dev.triggerIrq(MSIX, 0); // a blocking write to a full pipe
      out('triggered');
    } catch (e) {
      out(`refused errno=${e instanceof ProtocolError ? e.errno : -1} ${(e as Error).message}`);
      os.close(w);
    }
    os.close(r);
  } else if (which === 'eventfd-full') {
    const efd = os.eventfd(0, 0); // blocking, as a careless client might send it
    os.write(efd, u64(EVENTFD_MAX)); // the counter at its maximum: one more write blocks
    assign(dev, 0, [efd]);
    out(`nonblocking=${(os.fcntl(efd, os.F_GETFL) & os.O_NONBLOCK) !== 0}`);
    const t0 = Date.now();
    const ok = dev.triggerIrq(MSIX, 0);
    out(`signalled=${ok} pending=${dev.irqPending(MSIX, 0)} ms=${Date.now() - t0}`);
    dev.reset(); // a quiesce-based change still works
    out(`drained=${drain(efd) === EVENTFD_MAX}`);
    // the lcore's side (the eventfd is still assigned; the device owns it): the retry happens in service()
    os.write(efd, u64(EVENTFD_MAX));
    const plane = DataPlane.attach(dev.plane.desc());
    out(`lcore-signalled=${plane.irq(MSIX, 0)} pending=${dev.irqPending(MSIX, 0)}`);
    plane.service();
    out(`still-full=${dev.irqPending(MSIX, 0)}`);
    out(`drained2=${drain(efd) === EVENTFD_MAX}`);
    plane.service(); // the eventfd has room now: the pending interrupt goes out
    out(`retried=${drain(efd)} pending=${dev.irqPending(MSIX, 0)}`);
    plane.detach();
  }
  dev.close();
}

if (CHILD) {
  child(CHILD);
} else {
  /** Run a child scenario; SIGKILL after ms. */
  const run = (which: string, ms: number): Promise<{ code: number | null; signal: string | null; out: string; err: string }> => new Promise((resolve) => {
    const p = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], { env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1', TSP_EMUDEV_IRQ_CHILD: which }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), ms);
    p.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out, err }); });
  });

  t.test('SET_IRQS with a full blocking pipe: refused as not an eventfd, nothing blocks', async (t) => {
    const r = await run('pipe', 30_000);
    t.equal(r.signal, null, `the child was not killed by the timeout (it printed: ${JSON.stringify(r.out)}; stderr ${r.err.slice(-400)})`);
    t.equal(r.code, 0, 'and exited normally');
    t.match(r.out, /^refused errno=22 .*fd 1 of 1 is not an eventfd \(it is pipe:\[\d+\]\).*eventfd\(2\)/m, 'EINVAL naming what the fd is and what to send');
    t.notMatch(r.out, /triggered/, 'the pipe was never written');
  });

  t.test('an eventfd at its maximum: made O_NONBLOCK, EAGAIN keeps the interrupt pending, delivered later', async (t) => {
    const r = await run('eventfd-full', 30_000);
    t.equal(r.signal, null, `the child was not killed by the timeout (it printed: ${JSON.stringify(r.out)}; stderr ${r.err.slice(-400)})`);
    t.equal(r.code, 0, 'and exited normally');
    t.match(r.out, /^nonblocking=true$/m, 'the device made the eventfd non-blocking');
    t.match(r.out, /^signalled=false pending=true ms=\d+$/m, 'the main thread\'s trigger returned at once, interrupt pending');
    t.match(r.out, /^drained=true$/m, 'the counter was left as it was');
    t.match(r.out, /^lcore-signalled=false pending=true$/m, 'the lcore\'s irq() does not block either');
    t.match(r.out, /^still-full=true$/m, 'service() retries and keeps it pending while the eventfd is full');
    t.match(r.out, /^drained2=true$/m);
    t.match(r.out, /^retried=1 pending=false$/m, 'once the client read its eventfd, the next service() delivers exactly one interrupt');
  });

  t.test('SET_IRQS takes only eventfds: memfd, socket; nothing is kept, the old eventfd stays', async (t) => {
    const dev = simpleDevice(`tsp-irq-${process.pid}`, 2);
    t.teardown(() => dev.close());
    const efd = os.eventfd(0, os.EFD_NONBLOCK);
    assign(dev, 0, [efd]); // the device owns it now
    const mfd = os.memfdCreate(`tsp-irq-${process.pid}`, 0);
    const [s0, s1] = os.socketpair(os.AF_UNIX, os.SOCK_STREAM);
    t.teardown(() => { for (const fd of [mfd, s0, s1]) os.close(fd); });
    const e2 = os.eventfd(0, os.EFD_NONBLOCK);
    t.teardown(() => os.close(e2));
    for (const [what, fd] of [['a memfd', mfd], ['a socket', s0]] as Array<[string, number]>) {
      const fds = [e2, fd];
      t.throws(() => assign(dev, 0, fds), { errno: os.E.EINVAL, message: /fd 2 of 2 is not an eventfd/ }, `${what} is refused`);
      t.same(fds, [e2, fd], 'no fd of the refused request was taken (the caller closes them)');
    }
    t.equal(dev.plane.irqFd(MSIX, 0), efd, 'vector 0 keeps its eventfd');
    t.ok(dev.triggerIrq(MSIX, 0), 'and still signals');
    t.equal(drain(efd, 100), 1n);
  });

  const TABLE_BAR = 1, TABLE = 0x0, PBA = 0x800;
  /** A device with 3 MSI-X vectors whose table and PBA emudev emulates, and an MSI-X capability. */
  const msixDevice = (): EmuDevice => {
    const body = new Uint8Array(10);
    const dv = new DataView(body.buffer);
    dv.setUint16(0, 3 - 1, true);
    dv.setUint32(2, TABLE | TABLE_BAR, true);
    dv.setUint32(6, PBA | TABLE_BAR, true);
    const writeMask = new Uint8Array(10);
    writeMask[1] = 0xc0; // enable and function mask
    const spec: EmuDeviceSpec = {
      name: `tsp-msix-${process.pid}`, pci: { vendorId: 0x1234, deviceId: 0x11ea, classCode: 0xff0000 },
      bars: [{ index: TABLE_BAR, size: 0x1000 }], irqs: [{ index: MSIX, count: 3 }],
      capabilities: [{ id: 0x11, body, writeMask }], msix: { bar: TABLE_BAR, tableOffset: TABLE, pbaOffset: PBA },
    };
    return new EmuDevice(spec);
  };
  const ctrl = (dev: EmuDevice, v: number): number => new DataView(dev.regionRead(TABLE_BAR, BigInt(TABLE + 16 * v + 12), 4).buffer).getUint32(0, true);
  const setCtrl = (dev: EmuDevice, v: number, val: number): void => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, val, true);
    dev.regionWrite(TABLE_BAR, BigInt(TABLE + 16 * v + 12), b);
  };
  const pba = (dev: EmuDevice): number => dev.regionRead(TABLE_BAR, BigInt(PBA), 1)[0];

  t.test('MSI-X table: a masked vector sets its PBA bit instead of signalling, unmasking delivers once', async (t) => {
    const dev = msixDevice();
    t.teardown(() => dev.close());
    const efds = [0, 1, 2].map(() => os.eventfd(0, os.EFD_NONBLOCK));
    const ours = efds.map((fd) => os.fcntl(fd, 1030 /* F_DUPFD_CLOEXEC */, 0)); // the device takes the originals
    t.teardown(() => ours.forEach((fd) => os.close(fd)));
    assign(dev, 0, efds);
    t.same([ctrl(dev, 0), ctrl(dev, 1), ctrl(dev, 2)], [1, 1, 1], 'after reset every vector is masked in the table');
    t.notOk(dev.triggerIrq(MSIX, 0), 'vector 0 masked: not signalled');
    t.equal(drain(ours[0], 50), 0n, 'its eventfd stays quiet');
    t.equal(pba(dev), 0b001, 'its PBA bit is set');
    setCtrl(dev, 0, 0);
    t.equal(drain(ours[0], 1000), 1n, 'unmasking in the table delivers the held interrupt, once');
    t.equal(pba(dev), 0, 'PBA clear');
    t.ok(dev.triggerIrq(MSIX, 0), 'unmasked: signalled directly');
    t.equal(drain(ours[0], 1000), 1n);

    // the lcore's irq() honours the table too
    setCtrl(dev, 1, 0);
    setCtrl(dev, 2, 1);
    const plane = DataPlane.attach(dev.plane.desc());
    t.teardown(() => { if (dev.plane.attached) plane.detach(); });
    t.notOk(plane.irq(MSIX, 2), 'lcore: vector 2 masked in the table');
    t.ok(plane.irq(MSIX, 1), 'lcore: vector 1 unmasked');
    t.equal(pba(dev), 0b100, 'PBA: vector 2 pending');
    plane.detach();
    t.equal(drain(ours[1], 1000), 1n);
    t.equal(drain(ours[2], 50), 0n);

    // the function mask (MSI-X message control bit 14) holds every vector
    const cap = dev.config[0x34];
    t.equal(dev.config[cap], 0x11, 'the MSI-X capability');
    dev.regionWrite(U.VFIO_PCI_CONFIG_REGION_INDEX, BigInt(cap + 3), Uint8Array.of(0xc0));
    t.notOk(dev.triggerIrq(MSIX, 1), 'function mask: vector 1 held');
    t.equal(pba(dev), 0b110);
    dev.regionWrite(U.VFIO_PCI_CONFIG_REGION_INDEX, BigInt(cap + 3), Uint8Array.of(0x80));
    t.equal(drain(ours[1], 1000), 1n, 'function mask cleared: vector 1 delivered');
    t.equal(drain(ours[2], 50), 0n, 'vector 2 is still masked in its entry');
    t.equal(pba(dev), 0b100);

    // SET_IRQS MASK/UNMASK is a separate reason: the vector fires only when no reason is left
    setCtrl(dev, 2, 0);
    t.equal(drain(ours[2], 1000), 1n, 'vector 2 unmasked in the table: delivered');
    dev.setIrqs({ argsz: 0, flags: U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_MASK, index: MSIX, start: 0, count: 1, bools: new Uint8Array(0) }, []);
    setCtrl(dev, 0, 1);
    dev.triggerIrq(MSIX, 0);
    setCtrl(dev, 0, 0);
    t.equal(drain(ours[0], 50), 0n, 'table unmasked but SET_IRQS mask still set: held');
    dev.setIrqs({ argsz: 0, flags: U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_UNMASK, index: MSIX, start: 0, count: 1, bools: new Uint8Array(0) }, []);
    t.equal(drain(ours[0], 1000), 1n, 'and delivered when the last reason goes');

    dev.reset();
    t.same([ctrl(dev, 0), pba(dev)], [1, 0], 'reset masks the vectors again and clears pending bits');
    t.throws(() => new EmuDevice({ name: 'tsp-bad', pci: { vendorId: 1, deviceId: 2, classCode: 0 }, bars: [{ index: 1, size: 0x1000, shared: [{ offset: 0, size: 0x1000 }] }], irqs: [{ index: MSIX, count: 2 }], msix: { bar: 1, tableOffset: 0, pbaOffset: 0x800 } }), /table overlaps a shared area/, 'a table in shared memory is refused');
  });
}
