/**
 * The lab's guest program: runs INSIDE the QEMU guest (test/lab/init.sh starts it as
 * `node /tspmd/dist/test/lab/guest.js --bdf BDF --mode group`) on a real kernel with VFIO and an
 * emulated IOMMU, and exercises the project's own code unchanged on a NIC bound to vfio-pci:
 *
 *   devices     `tspmd devices --vfio-mode MODE --json` (the CLI, in a child process) lists the NIC
 *   devices-auto  with --vfio-mode auto it picks iommufd exactly when /dev/iommu and the cdev node exist
 *   eal         EAL hugepage memory (hugetlbfs, 2 MiB pages)
 *   probe       the PCI bus probes the NIC through --vfio-mode MODE (a lab driver's id table matches it)
 *   dma-mapped  every EAL segment is DMA-mapped in the container (mapping it again: EEXIST from the kernel)
 *   iommufd-eexist   (iommufd) mapping a segment again with the same translation is no error; the same
 *               IOVA for other memory, or a range inside a mapped one, is a clear error
 *   iommufd-detach   (iommufd) an attached device holds its IOAS (IOMMU_DESTROY: EBUSY); after
 *               VFIO_DEVICE_DETACH_IOMMUFD_PT, with its fd still open, the IOAS can be destroyed
 *   cdev-rdev   (iommufd) the cdev node is checked against sysfs vfio-dev/vfioN/dev; another number is refused
 *   config      vendor/device read from the VFIO config region agree with sysfs
 *   bar         BARs mapped (Bar.open) and a register read and written through the mapping and
 *               through pread/pwrite (Bar.open with mmap: false), both paths agreeing
 *               (e1000e: STATUS at BAR0+0x8, TDBAL round trips; virtio-net modern: the common
 *               configuration found through the virtio PCI capabilities, device_feature shows
 *               VIRTIO_F_VERSION_1)
 *   dma-tx / dma-blocked / dma-remap   (e1000e) a TX descriptor in EAL memory at its IOVA is
 *               fetched, its frame read and sent (TPT, total packets transmitted, counts one) and its DD
 *               bit written back; after unmapping the segment the same DMA is refused (no DD, a
 *               DMAR fault in the kernel log); mapped again, it works again
 *   mdev-*      with --mdev UUID (an mtty mdev init.sh created): `tspmd devices` lists it with ids
 *               read through VFIO, the mdev bus hands it to the PCI bus, which probes it through
 *               the same mode by UUID; its config space is read from the region; its I/O BAR (not
 *               mmap-able) is read and written through pread/pwrite (16550 LSR, scratch register)
 *   noiommu-*   (--mode noiommu: no emulated IOMMU, vfio.enable_unsafe_noiommu_mode=1) noiommu-nodes
 *               (the group node is /dev/vfio/noiommu-N, and the kernel gave the device no cdev: sysfs
 *               vfio-dev/vfioN has no dev, /dev/vfio/devices/ no node), noiommu-iommufd-refused
 *               (--vfio-mode iommufd fails in one line naming the device as no-IOMMU), noiommu-auto
 *               (the EAL, --vfio-mode auto and --iova-mode pa, opens it through the no-IOMMU group and
 *               says why not the cdev); dma-tx then runs at PHYSICAL addresses (the EAL's pagemap)
 *   virtio-*    (virtio-net) the virtio PMD (drivers/net/virtio) on the real device, in a second EAL
 *               with -l 0-1: virtio-probe (net_virtio probes it through MODE, VERSION_1 and
 *               ACCESS_PLATFORM negotiated), virtio-config (MAC 52:54:00:12:34:56 and link up from
 *               the device configuration), virtio-arp (from a worker lcore, an ARP request for
 *               10.0.2.2 leaves through QEMU's slirp backend and slirp's reply from
 *               52:55:0a:00:02:02 comes back through the RX ring), virtio-stats (port and
 *               per-queue counters, control-queue commands), virtio-restart (stop resets the device
 *               and returns every mbuf; started again, a second exchange works), virtio-intr (with
 *               intr.rxq the lcore sleeps in poll(2) on the queue's MSI-X eventfd, set up through the
 *               kernel's VFIO_DEVICE_SET_IRQS, and slirp's ARP reply wakes it), virtio-pwrite (with
 *               bar_mmap=0 the lcore's doorbells are pwrites on the VFIO device fd), virtio-close (close
 *               resets the device, the EAL closes, no DMAR fault was logged)
 *
 * Each result is one line on stdout: `TSPLAB {"nic":..,"mode":..,"check":..,"ok":..,...}`.
 * The exit code is 0 when every check passed.
 */
import { execFile, execFileSync } from 'node:child_process';
import { isMainThread } from 'node:worker_threads';
import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Eal } from '../../src/eal.js';
import { parseEalArgs } from '../../src/options.js';
import * as os from '../../src/os/libc.js';
import { Bar } from '../../src/iommu/bar.js';
import type { VfioDevice } from '../../src/iommu/device.js';
import * as U from '../../src/iommu/vfio-uapi.js';
import { Iommufd, checkCdevNode } from '../../src/iommu/iommufd.js';
import { Vfio } from '../../src/iommu/vfio.js';
import { probePci, registerPciDriver, unregisterPciDriver, type PciBus } from '../../drivers/bus/pci/pci.js';
import { enableBusMaster, readConfig16, readConfigSpace, PCI_COMMAND } from '../../drivers/bus/pci/config.js';
import { listPorts, openRxQueue, openTxQueue, type PortData } from '../../lib/ethdev/ethdev.js';
import { formatMac } from '../../lib/net/mac.js';
import { Mempool } from '../../lib/mempool/mempool.js';
import { chain, pktmbufAlloc, pktmbufFree, pktmbufPoolCreate, readPacket, writePacket, type PktmbufPoolOptions } from '../../lib/mempool/mbuf.js';
import { MbufView } from '../../lib/mempool/mbuf_view.js';
import { ipv4Checksum, onesSum } from '../../lib/net/packet.js';
import type { MempoolDesc } from '../../lib/mempool/mempool.js';
import { siblingModule } from '../../src/lcore/module.js';
import type { LcoreContext } from '../../src/lcore/types.js';
// a type only: the driver registers itself with the PCI bus when imported, which checkVirtioPmd does late
import type { VirtioNetPort } from '../../drivers/net/virtio/virtio.js';
import { probePciAndMdev, type MdevStatus } from '../../drivers/bus/mdev/mdev.js';

import { guestArg } from './guest-args.js';

type Detail = Record<string, unknown>;

const bdf = guestArg('--bdf', '0000:00:03.0');
const labMode = guestArg('--mode', 'group');
/**
 * VFIO's no-IOMMU mode (no emulated IOMMU): the device's group is resolved as 'group'; the EAL opens
 * it with --vfio-mode auto and --iova-mode pa. Nothing is DMA-mapped there and there is no IOMMU
 * to refuse a DMA, so dma-mapped, dma-blocked, dma-remap and the iommufd-* checks do not apply.
 */
const noIommu = labMode === 'noiommu';
const mode = noIommu ? 'group' : labMode;
const mdevUuid = guestArg('--mdev', '');
// the mtty sample's PCI ids (samples/vfio-mdev/mtty.c config space)
const MTTY_VENDOR = 0x4348, MTTY_DEVICE = 0x3253;
const sysDev = `/sys/bus/pci/devices/${bdf}`;
const vendor = parseInt(readFileSync(join(sysDev, 'vendor'), 'utf8'), 16);
const deviceId = parseInt(readFileSync(join(sysDev, 'device'), 'utf8'), 16);
const nic = vendor === 0x8086 && deviceId === 0x10d3 ? 'e1000e' : vendor === 0x1af4 && deviceId === 0x1041 ? 'virtio-net' : `${vendor.toString(16)}:${deviceId.toString(16)}`;
const hex = (n: number | bigint): string => '0x' + n.toString(16);

let failures = 0;
function report(check: string, ok: boolean, detail: Detail = {}): void {
  if (!ok) failures++;
  const line = JSON.stringify({ nic, mode: labMode, check, ok, ...detail }, (_k, v: unknown) => (typeof v === 'bigint' ? hex(v) : v));
  process.stdout.write(`TSPLAB ${line}\n`);
}
function errorOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The kernel log (busybox dmesg), as lines. */
function dmesg(): string[] {
  try {
    return execFileSync('dmesg', { encoding: 'utf8' }).split('\n');
  } catch {
    return [];
  }
}

/** `tspmd devices --vfio-mode MODE --json`, the real CLI in a child process. */
function devicesCli(vfioMode: string = mode): Promise<{ code: number; stdout: string; stderr: string }> {
  const cli = fileURLToPath(new URL('../../app/tspmd.js', import.meta.url));
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, 'devices', '--vfio-mode', vfioMode, '--json'], { timeout: 120000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/**
 * --vfio-mode auto on this kernel: iommufd when /dev/iommu and the device's cdev node exist (the
 * lab's IOMMUFD kernel), else group (Debian's kernel: no IOMMUFD, although sysfs has vfio-dev/vfioN).
 */
async function checkAutoMode(): Promise<void> {
  const cdev = (() => { try { return readdirSync(join(sysDev, 'vfio-dev')).find((n) => /^vfio\d+$/.test(n)) ?? null; } catch { return null; } })();
  const expect = existsSync('/dev/iommu') && cdev !== null && existsSync(`/dev/vfio/devices/${cdev}`) ? 'iommufd' : 'group';
  const r = await devicesCli('auto');
  try {
    const rows = JSON.parse(r.stdout.trim().split('\n').pop() ?? '[]') as Array<Record<string, unknown>>;
    const row = rows.find((x) => x.addr === bdf);
    report('devices-auto', r.code === 0 && row !== undefined && row.vfio_mode === expect, {
      expect, vfioMode: row?.vfio_mode ?? null, devIommu: existsSync('/dev/iommu'), sysfsCdev: cdev,
    });
  } catch (e) {
    report('devices-auto', false, { exit: r.code, error: errorOf(e), stderr: r.stderr.slice(0, 400) });
  }
}

async function checkDevices(group: number): Promise<void> {
  const r = await devicesCli();
  try {
    const rows = JSON.parse(r.stdout.trim().split('\n').pop() ?? '[]') as Array<Record<string, unknown>>;
    const row = rows.find((x) => x.addr === bdf);
    const ok = r.code === 0 && row !== undefined && row.kernel_driver === 'vfio-pci' && row.iommu_group === group &&
      row.vfio_mode === mode && row.vendor === '0x' + vendor.toString(16).padStart(4, '0') && row.device === '0x' + deviceId.toString(16).padStart(4, '0');
    report('devices', ok, { exit: r.code, row: row ?? null, expectGroup: group, stderr: r.stderr.slice(0, 400) });
    if (mdevUuid) {
      const m = rows.find((x) => x.addr === mdevUuid);
      report('mdev-devices', m !== undefined && m.bus === 'mdev' && m.device_api === 'vfio-pci' && m.vfio_mode === mode &&
        typeof m.iommu_group === 'number' && m.vendor === '0x4348' && m.device === '0x3253', { row: m ?? null });
    }
  } catch (e) {
    report('devices', false, { exit: r.code, error: errorOf(e), stdout: r.stdout.slice(0, 400), stderr: r.stderr.slice(0, 400) });
  }
}

// e1000e (82574) registers and legacy TX descriptor (Intel datasheet; Linux e1000e hw.h)
const E_STATUS = 0x8, E_TCTL = 0x400, E_TDBAL = 0x3800, E_TDBAH = 0x3804, E_TDLEN = 0x3808, E_TDH = 0x3810, E_TDT = 0x3818;
// statistics, clear on read: total packets transmitted
const E_TPT = 0x40d4;
const TCTL_EN = 0x2, TCTL_PSP = 0x8;
const TXD_CMD_EOP = 0x01, TXD_CMD_IFCS = 0x02, TXD_CMD_RS = 0x08, TXD_STAT_DD = 0x01;

function checkE1000eBars(vfio: VfioDevice): void {
  const mm = Bar.open(vfio, U.VFIO_PCI_BAR0_REGION_INDEX);
  const pio = Bar.open(vfio, U.VFIO_PCI_BAR0_REGION_INDEX, { mmap: false });
  try {
    const statusMmap = mm.read32(E_STATUS), statusPread = pio.read32(E_STATUS);
    const mapped = mm.isMapped(E_STATUS, 4);
    // a read/write register (TDBAL keeps bits 31:4): pwrite -> mmap read, mmap write -> pread
    pio.write32(E_TDBAL, 0x12345670);
    const viaMmap = mm.read32(E_TDBAL);
    mm.write32(E_TDBAL, 0x0abcdef0);
    const viaPread = pio.read32(E_TDBAL);
    mm.write32(E_TDBAL, 0);
    const ok = mapped && statusMmap === statusPread && statusMmap !== 0 && statusMmap !== 0xffffffff &&
      viaMmap === 0x12345670 && viaPread === 0x0abcdef0;
    report('bar', ok, {
      bar: 0, size: mm.size, mapped: mm.mapped, statusMmap: hex(statusMmap), statusPread: hex(statusPread),
      linkUp: (statusMmap & 0x2) !== 0, tdbalPwriteThenMmap: hex(viaMmap), tdbalMmapThenPread: hex(viaPread),
    });
  } finally {
    pio.close();
    mm.close();
  }
}

function checkVirtioBars(vfio: VfioDevice, cfg: Uint8Array): void {
  // virtio PCI capability (vendor-specific, id 0x09): cfg_type at +3 (1 = common), bar at +4, offset at +8
  const dv = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  let p = cfg[0x34] & 0xfc, bar = -1, off = -1, len = 0;
  const seen: Detail[] = [];
  for (let n = 0; p !== 0 && n < 48; n++, p = cfg[p + 1] & 0xfc) {
    if (cfg[p] === 0x09) {
      seen.push({ at: hex(p), cfgType: cfg[p + 3], bar: cfg[p + 4], offset: hex(dv.getUint32(p + 8, true)) });
      if (cfg[p + 3] === 1 && bar < 0) { bar = cfg[p + 4]; off = dv.getUint32(p + 8, true); len = dv.getUint32(p + 12, true); }
    }
  }
  if (bar < 0) {
    report('bar', false, { error: 'no virtio common configuration capability in config space', caps: seen });
    return;
  }
  const mm = Bar.open(vfio, bar);
  const pio = Bar.open(vfio, bar, { mmap: false });
  try {
    // device_feature_select (u32 at +0), device_feature (u32 at +4), num_queues (u16 at +0x12)
    mm.write32(off + 0, 1);
    const hiMmap = mm.read32(off + 4);
    pio.write32(off + 0, 1);
    const hiPread = pio.read32(off + 4);
    mm.write32(off + 0, 0);
    const loMmap = mm.read32(off + 4);
    pio.write32(off + 0, 0);
    const loPread = pio.read32(off + 4);
    const qMmap = mm.read16(off + 0x12), qPread = pio.read16(off + 0x12);
    const version1 = (hiMmap & 1) !== 0;
    const ok = mm.isMapped(off, 0x38) && version1 && hiMmap === hiPread && loMmap === loPread && qMmap === qPread && qMmap > 0;
    report('bar', ok, {
      bar, size: mm.size, mapped: mm.mapped, commonCfg: { offset: hex(off), length: len }, caps: seen,
      deviceFeatureHiMmap: hex(hiMmap), deviceFeatureHiPread: hex(hiPread), deviceFeatureLoMmap: hex(loMmap),
      deviceFeatureLoPread: hex(loPread), VIRTIO_F_VERSION_1: version1, numQueuesMmap: qMmap, numQueuesPread: qPread,
    });
  } finally {
    pio.close();
    mm.close();
  }
}

/** A TX descriptor at a mapped IOVA, DD written back; unmapped: refused with a DMAR fault; mapped again: works. */
async function checkE1000eDma(eal: Eal, vfio: VfioDevice): Promise<void> {
  enableBusMaster(vfio);
  const cmd = readConfig16(vfio, PCI_COMMAND);
  // IOVA-contiguous: in pa mode the device walks physical addresses
  const ring = eal.memory.reserve('lab_txring', 4096, 4096, true);
  const buf = eal.memory.reserve('lab_txbuf', 2048, 64, true);
  const ringU8 = new Uint8Array(os.viewOf(ring.va, ring.len));
  const ringDv = new DataView(ringU8.buffer);
  const frame = new Uint8Array(os.viewOf(buf.va, 64));
  frame.fill(0xff, 0, 6); // broadcast
  frame.set([0x02, 0x00, 0x00, 0x00, 0x00, 0x01], 6);
  frame.set([0x88, 0xb5], 12); // local experimental ethertype
  for (let i = 14; i < 60; i++) frame[i] = i;
  ringU8.fill(0);

  const bar = Bar.open(vfio, U.VFIO_PCI_BAR0_REGION_INDEX);
  try {
    bar.write32(E_TCTL, 0);
    bar.write32(E_TDBAL, Number(ring.iova & 0xffffffffn));
    bar.write32(E_TDBAH, Number(ring.iova >> 32n));
    bar.write32(E_TDLEN, 8 * 16); // 8 descriptors (a multiple of 128 bytes)
    bar.write32(E_TDH, 0);
    bar.write32(E_TDT, 0);
    bar.write32(E_TCTL, TCTL_EN | TCTL_PSP);

    bar.read32(E_TPT); // clear the counter
    const post = async (i: number): Promise<{ dd: boolean; status: number; tdh: number; ms: number; txPackets: number }> => {
      const d = i * 16;
      ringDv.setBigUint64(d, buf.iova, true);
      ringDv.setUint16(d + 8, 60, true);
      ringU8[d + 10] = 0;
      ringU8[d + 11] = TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS;
      ringU8[d + 12] = 0;
      const t0 = Date.now();
      bar.write32(E_TDT, (i + 1) % 8);
      for (;;) {
        const status = Atomics.load(ringU8, d + 12);
        if ((status & TXD_STAT_DD) !== 0 || Date.now() - t0 > 1500) {
          return {
            dd: (status & TXD_STAT_DD) !== 0, status, tdh: bar.read32(E_TDH), ms: Date.now() - t0,
            txPackets: bar.read32(E_TPT),
          };
        }
        await sleep(5);
      }
    };

    const tx = await post(0);
    // DD: the device read the descriptor and wrote it back; one packet sent (TPT): it read the frame
    // no-IOMMU: the descriptor and frame addresses are physical (iova-mode pa), not the VAs
    report('dma-tx', tx.dd && tx.txPackets === 1 && (!noIommu || (eal.memory.config.iovaMode === 'pa' && ring.iova !== ring.va && buf.iova !== buf.va)), {
      iovaMode: eal.memory.config.iovaMode, ringVa: ring.va, ringIova: ring.iova, bufVa: buf.va, bufIova: buf.iova, pciCommand: hex(cmd),
      descStatus: hex(tx.status), tdh: tx.tdh, ms: tx.ms, txPackets: tx.txPackets,
    });
    if (noIommu) {
      bar.write32(E_TCTL, 0);
      return;
    }

    // negative control: unmap the segment holding the ring (type1 unmaps whole mappings), same DMA
    const seg = eal.memory.segment(ring.segment);
    const before = dmesg().length;
    vfio.dmaUnmap(seg.iova, seg.len);
    const blocked = await post(1);
    await sleep(300); // let the fault interrupt be logged
    const faults = dmesg().slice(Math.max(0, before - 1)).filter((l) => /DMAR/.test(l) && /fault|Request device/i.test(l));
    report('dma-blocked', !blocked.dd && faults.length > 0, {
      unmapped: { iova: seg.iova, len: seg.len }, descStatus: hex(blocked.status), ddWritten: blocked.dd, tdh: blocked.tdh, txPackets: blocked.txPackets,
      dmarFaults: faults.slice(0, 4).map((l) => l.trim()),
    });

    // mapped again, the device reaches the same memory again (the refusal was the IOMMU's)
    vfio.dmaMap(seg.va, seg.iova, seg.len);
    const again = await post(2);
    report('dma-remap', again.dd && again.txPackets === 1, { descStatus: hex(again.status), tdh: again.tdh, ms: again.ms, txPackets: again.txPackets });
    bar.write32(E_TCTL, 0);
  } finally {
    bar.close();
  }
}

/** The mdev: handed over by the mdev bus, probed by the PCI bus by UUID, config and I/O BAR through VFIO. */
function checkMdev(bus: PciBus, mdevs: MdevStatus[]): void {
  const st = mdevs.find((m) => m.dev.uuid === mdevUuid);
  const p = bus.probed().find((x) => x.dev.addr === mdevUuid);
  report('mdev-probe', st !== undefined && st.pci !== null && p !== undefined && p.vfio.backend === mode && st.vfioMode === mode, {
    type: st?.dev.type ?? null, typeName: st?.dev.typeName ?? null, deviceApi: st?.dev.deviceApi ?? null, parent: st?.dev.parent ?? null,
    iommuGroup: st?.dev.iommuGroup ?? null, handedOver: st?.pci !== null, skip: st?.skipReason ?? null,
    driver: p?.driver.name ?? null, backend: p?.vfio.backend ?? null,
  });
  if (!p) return;
  const vfio = p.vfio;
  const cfg = readConfigSpace(vfio);
  const dv = new DataView(cfg.buffer);
  const v = dv.getUint16(0, true), d = dv.getUint16(2, true), cls = dv.getUint32(8, true) >>> 8;
  report('mdev-config', v === MTTY_VENDOR && d === MTTY_DEVICE && cls === 0x070002 && p.dev.id.vendor === v && p.dev.id.device === d, {
    vendor: hex(v), device: hex(d), class: hex(cls), info: vfio.info(),
  });
  // BAR0: the first 16550 port, an I/O BAR the kernel does not let be mmap'd
  const r = vfio.regionInfo(U.VFIO_PCI_BAR0_REGION_INDEX);
  const bar = Bar.open(vfio, U.VFIO_PCI_BAR0_REGION_INDEX);
  try {
    const lsr = bar.read8(5); // LSR: THRE | TEMT when nothing is pending
    bar.write8(7, 0x5a); // SCR, the scratch register
    const scr1 = bar.read8(7);
    bar.write8(7, 0xa5);
    const scr2 = bar.read8(7);
    report('mdev-bar', r.size === 8 && (lsr & 0x60) === 0x60 && scr1 === 0x5a && scr2 === 0xa5 && !bar.isMapped(7, 1), {
      size: r.size, mappable: r.mappable, mapped: bar.mapped, path: bar.mapped.length ? 'mmap' : 'pread/pwrite',
      lsr: hex(lsr), scratch: [hex(scr1), hex(scr2)],
    });
  } finally {
    bar.close();
  }
}

// ---- the virtio PMD on QEMU's virtio-net-pci (slirp: we are 10.0.2.15, the gateway 10.0.2.2) ----

const SLIRP_GW_MAC = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const QEMU_DEFAULT_MAC = '52:54:00:12:34:56';

/** An ARP request "who has 10.0.2.2, tell 10.0.2.15" from mac, padded to 60 bytes. */
function arpRequest(mac: number[]): Uint8Array {
  const f = new Uint8Array(60);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  f.set([0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01], 12);
  f.set(mac, 22);
  f.set([10, 0, 2, 15], 28);
  f.set([10, 0, 2, 2], 38);
  return f;
}

/** What one ARP exchange on the worker lcore saw. */
export interface ArpExchange {
  sent: number;
  /** the reply's first 42 bytes, or null */
  reply: number[] | null;
  /** other frames received meanwhile */
  others: number;
  ms: number;
}

/**
 * Runs on a worker lcore (this module is imported there; main() runs only on the main thread):
 * the port's queues rebuilt from PortData, so the doorbell is the worker's store into the BAR
 * mapping. Sends an ARP request every second until slirp's reply arrives or timeoutMs passes.
 */
export async function virtioArpLcore(a: { port: PortData; timeoutMs: number }, ctx: LcoreContext): Promise<ArpExchange> {
  const rx = await openRxQueue(a.port, 0);
  const tx = await openTxQueue(a.port, 0);
  const pool = Mempool.attach(a.port.rxPools[0]);
  const frame = arpRequest(a.port.mac);
  const burst = new Uint32Array(32), one = new Uint32Array(1), bytes = new Uint8Array(2048);
  const t0 = Date.now();
  let sent = 0, others = 0, lastSend = -Infinity, reply: number[] | null = null;
  while (!ctx.stopRequested() && reply === null && Date.now() - t0 < a.timeoutMs) {
    if (Date.now() - lastSend >= 1000) {
      const m = pktmbufAlloc(pool);
      if (m >= 0 && writePacket(m, frame)) {
        one[0] = m;
        if (tx.txBurst(one, 1) === 1) sent++;
        else pktmbufFree(m);
      }
      lastSend = Date.now();
    }
    const n = rx.rxBurst(burst, burst.length);
    for (let i = 0; i < n; i++) {
      const len = readPacket(burst[i], bytes);
      const isReply = len >= 42 && bytes[12] === 0x08 && bytes[13] === 0x06 && bytes[20] === 0 && bytes[21] === 2 &&
        bytes.subarray(6, 12).every((b, k) => b === SLIRP_GW_MAC[k]) && bytes.subarray(28, 32).join('.') === '10.0.2.2' &&
        bytes.subarray(38, 42).join('.') === '10.0.2.15';
      if (isReply && reply === null) reply = Array.from(bytes.subarray(0, 42));
      else others++;
      pktmbufFree(burst[i]);
    }
  }
  // give the device a moment, then reclaim the completed requests (a TX burst of 0 reclaims)
  for (const end = Date.now() + 50; Date.now() < end;) tx.txBurst(burst, 0);
  return { sent, reply, others, ms: Date.now() - t0 };
}

/** What virtioIntrLcore saw. */
export interface IntrExchange {
  sent: number;
  reply: boolean;
  sleeps: number;
  wakeups: number;
  ms: number;
}

/**
 * The ARP exchange again, woken by the RX queue's MSI-X interrupt: the lcore arms the queue
 * (RxInterrupt.enable: VRING_AVAIL_F_NO_INTERRUPT cleared), sends the request and sleeps in poll(2)
 * on the queue's eventfd. Slirp answers while QEMU handles the kick, so the reply's interrupt has
 * to be what ends the sleep (armed before the send, nothing can slip past it).
 */
export async function virtioIntrLcore(a: { port: PortData; timeoutMs: number }, ctx: LcoreContext): Promise<IntrExchange> {
  const rx = await openRxQueue(a.port, 0);
  const tx = await openTxQueue(a.port, 0);
  const pool = Mempool.attach(a.port.rxPools[0]);
  const intr = rx.intr;
  const frame = arpRequest(a.port.mac);
  const burst = new Uint32Array(32), one = new Uint32Array(1), bytes = new Uint8Array(2048);
  const t0 = Date.now();
  let sent = 0, reply = false, sleeps = 0, wakeups = 0;
  while (intr && !ctx.stopRequested() && !reply && Date.now() - t0 < a.timeoutMs) {
    if (intr.enable()) {
      const m = pktmbufAlloc(pool);
      if (m >= 0 && writePacket(m, frame)) {
        one[0] = m;
        if (tx.txBurst(one, 1) === 1) sent++;
        else pktmbufFree(m);
      }
      sleeps++;
      if (os.pollOne(intr.fd, 1 /* POLLIN */, 3000) !== 0) wakeups++;
    }
    intr.disable();
    const n = rx.rxBurst(burst, burst.length);
    for (let i = 0; i < n; i++) {
      const len = readPacket(burst[i], bytes);
      if (len >= 42 && bytes[12] === 0x08 && bytes[13] === 0x06 && bytes[21] === 2 && bytes.subarray(28, 32).join('.') === '10.0.2.2') reply = true;
      pktmbufFree(burst[i]);
    }
  }
  for (const end = Date.now() + 50; Date.now() < end;) tx.txBurst(burst, 0);
  return { sent, reply, sleeps, wakeups, ms: Date.now() - t0 };
}

const PING_PAYLOAD = 400;

/** An ICMP echo request 10.0.2.15 -> 10.0.2.2 with a 400-byte patterned payload (442-byte frame). */
function pingRequest(mac: number[]): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + PING_PAYLOAD);
  f.set(SLIRP_GW_MAC, 0);
  f.set(mac, 6);
  f.set([0x08, 0x00], 12);
  const ipLen = f.length - 14;
  f.set([0x45, 0, ipLen >> 8, ipLen & 0xff, 0x12, 0x34, 0, 0, 64, 1, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2], 14);
  const ipc = ipv4Checksum(f, 14);
  f[24] = ipc >> 8;
  f[25] = ipc & 0xff;
  f.set([8, 0, 0, 0, 0x74, 0x73, 0, 1], 34); // echo request, id 0x7473, seq 1
  for (let i = 0; i < PING_PAYLOAD; i++) f[42 + i] = (i * 7 + 3) & 0xff;
  const c = ~onesSum(f, 34, 8 + PING_PAYLOAD) & 0xffff;
  f[36] = c >> 8;
  f[37] = c & 0xff;
  return f;
}

/** What the ping exchange on the worker lcore saw. */
export interface PingExchange {
  sent: number;
  others: number;
  ms: number;
  /** the echo reply: segments of the received mbuf chain, its length, whether the payload came back intact */
  reply: { segs: number; len: number; payloadIntact: boolean; from: string } | null;
}

/**
 * Worker lcore: send the echo request as a chain of three mbufs (14 + 28 + 400 bytes: the TX path
 * with the queue's own header slot and one descriptor per segment) once a second, until slirp's
 * echo reply arrives in the RX queue, whose mbufs (64-byte data room) force the device to merge it
 * over several buffers (MRG_RXBUF: a chained mbuf).
 */
export async function virtioPingLcore(a: { port: PortData; txPool: MempoolDesc; timeoutMs: number }, ctx: LcoreContext): Promise<PingExchange> {
  const rx = await openRxQueue(a.port, 0);
  const tx = await openTxQueue(a.port, 0);
  const pool = Mempool.attach(a.txPool);
  const frame = pingRequest(a.port.mac);
  const cuts = [0, 14, 42, frame.length];
  const burst = new Uint32Array(32), one = new Uint32Array(1), bytes = new Uint8Array(4096);
  const t0 = Date.now();
  let sent = 0, others = 0, lastSend = -Infinity, reply: PingExchange['reply'] = null;
  while (!ctx.stopRequested() && reply === null && Date.now() - t0 < a.timeoutMs) {
    if (Date.now() - lastSend >= 1000) {
      const segs = [0, 1, 2].map(() => pktmbufAlloc(pool));
      if (segs.every((m) => m >= 0)) {
        segs.forEach((m, i) => writePacket(m, frame.subarray(cuts[i], cuts[i + 1])));
        chain(segs[1], segs[2]);
        chain(segs[0], segs[1]);
        one[0] = segs[0];
        if (tx.txBurst(one, 1) === 1) sent++;
        else pktmbufFree(segs[0]);
      } else segs.forEach((m) => m >= 0 && pktmbufFree(m));
      lastSend = Date.now();
    }
    const n = rx.rxBurst(burst, burst.length);
    for (let i = 0; i < n; i++) {
      const len = readPacket(burst[i], bytes);
      const isReply = len >= 42 && bytes[12] === 0x08 && bytes[13] === 0x00 && bytes[23] === 1 && bytes[34] === 0 &&
        bytes.subarray(26, 30).join('.') === '10.0.2.2' && bytes[38] === 0x74 && bytes[39] === 0x73;
      if (isReply && reply === null) {
        let intact = len === frame.length;
        for (let k = 42; intact && k < len; k++) intact = bytes[k] === frame[k];
        reply = { segs: new MbufView().at(burst[i]).nbSegs, len, payloadIntact: intact, from: formatMac(bytes.subarray(6, 12)) };
      } else others++;
      pktmbufFree(burst[i]);
    }
  }
  for (const end = Date.now() + 50; Date.now() < end;) tx.txBurst(burst, 0);
  return { sent, others, ms: Date.now() - t0, reply };
}

/** The virtio PMD on the NIC, in a fresh EAL with a worker lcore (after the first EAL closed). */
async function checkVirtioPmd(): Promise<void> {
  const before = dmesg().length;
  let eal: Eal | null = null;
  try {
    eal = new Eal(parseEalArgs(['--vfio-mode', mode, '-m', '64', '--huge-dir', '/dev/hugepages', '-l', '0-1', '--file-prefix', 'tsplabv', '-a', bdf]));
    unregisterPciDriver('lab_nic');
    const virtio = await import('../../drivers/net/virtio/virtio.js');
    const { featureNames, featureBit, VIRTIO_F_VERSION_1, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF } = await import('../../lib/virtio/virtio.js');
    let bus: PciBus;
    try {
      bus = await probePci(eal);
    } catch (e) {
      report('virtio-probe', false, { error: errorOf(e) });
      return;
    }
    const p = bus.probed().find((x) => x.dev.addr === bdf);
    const port = listPorts().find((x): x is VirtioNetPort => x instanceof virtio.VirtioNetPort);
    const f = port?.features ?? 0n;
    const hasF = (bit: number): boolean => (f & featureBit(bit)) !== 0n;
    report('virtio-probe', p?.driver.name === 'net_virtio' && p.vfio.backend === mode && port !== undefined && hasF(VIRTIO_F_VERSION_1) && hasF(VIRTIO_F_ACCESS_PLATFORM), {
      driver: p?.driver.name ?? null, backend: p?.vfio.backend ?? null, port: port?.port ?? null,
      offered: port ? featureNames(port.offered) : null, negotiated: port ? featureNames(f) : null, info: port?.info() ?? null,
    });
    if (!port) return;

    const link = port.link();
    report('virtio-config', hasF(VIRTIO_NET_F_MAC) && hasF(VIRTIO_NET_F_STATUS) && port.macString() === QEMU_DEFAULT_MAC && link.up, {
      mac: port.macString(), expectMac: QEMU_DEFAULT_MAC, link,
    });

    const pool = pktmbufPoolCreate(eal.memory, 'labv_pool', 1023, { cacheSize: 32 });
    // promiscuous off: with CTRL_RX that is a control-queue command the real device must ack
    port.configure({ rxQueues: 1, txQueues: 1, promiscuous: false });
    port.rxQueueSetup(0, 256, pool);
    port.txQueueSetup(0, 256);
    const LOOP = siblingModule(import.meta.url, 'guest');
    const exchange = async (): Promise<ArpExchange> => {
      port.start();
      return eal!.lcores.launch<ArpExchange>(1, LOOP, 'virtioArpLcore', { port: port.data(), timeoutMs: 20000 });
    };
    const fmtReply = (r: number[] | null): Detail | null => r && { from: formatMac(r.slice(6, 12)), to: formatMac(r.slice(0, 6)), senderMac: formatMac(r.slice(22, 28)), senderIp: r.slice(28, 32).join('.'), targetMac: formatMac(r.slice(32, 38)) };
    const ex1 = await exchange();
    const mac = port.macAddr();
    report('virtio-arp', ex1.reply !== null && ex1.reply.slice(32, 38).every((b, k) => b === mac[k]), {
      sent: ex1.sent, ms: ex1.ms, others: ex1.others, reply: fmtReply(ex1.reply),
    });
    const st = port.stats(), xs = port.xstats();
    report('virtio-stats', st.opackets === ex1.sent && st.obytes === 60 * ex1.sent && st.ipackets >= 1 && st.ibytes >= 42 &&
      st.q_ipackets[0] === st.ipackets && st.q_opackets[0] === st.opackets && st.ierrors === 0 && st.oerrors === 0 &&
      (port.info().capabilities.includes('promiscuous') ? xs.ctrl_commands >= 1 : true), {
      stats: st, xstats: xs,
    });

    port.stop();
    const statusAfterStop = port.pci.status();
    const inUse = pool.inUseCount();
    const ex2 = await exchange();
    port.stop();
    report('virtio-restart', statusAfterStop === 0 && inUse === 0 && ex2.reply !== null && pool.inUseCount() === 0, {
      deviceStatusAfterStop: statusAfterStop, mbufsInUseAfterStop: inUse, sent: ex2.sent, ms: ex2.ms, reply: fmtReply(ex2.reply),
      mbufsInUseAfterSecondStop: pool.inUseCount(),
    });

    // MRG_RXBUF and scatter TX: RX buffers of 64 data bytes (76 with the header) for a 442-byte reply
    const small: PktmbufPoolOptions = { cacheSize: 32, dataRoom: 64 };
    const smallPool = pktmbufPoolCreate(eal.memory, 'labv_small', 1023, small);
    port.rxQueueSetup(0, 256, smallPool);
    port.start();
    const pg = await eal.lcores.launch<PingExchange>(1, LOOP, 'virtioPingLcore', { port: port.data(), txPool: pool.desc, timeoutMs: 20000 });
    const st2 = port.stats();
    port.stop();
    report('virtio-mrg', hasF(VIRTIO_NET_F_MRG_RXBUF) && pg.reply !== null && pg.reply.segs > 1 && pg.reply.payloadIntact &&
      st2.ierrors === 0 && st2.oerrors === 0 && pool.inUseCount() === 0 && smallPool.inUseCount() === 0, {
      sent: pg.sent, ms: pg.ms, others: pg.others, reply: pg.reply, stats: st2,
      mbufsInUse: { tx: pool.inUseCount(), rx: smallPool.inUseCount() },
    });

    // Rx interrupts over the kernel's VFIO: MSI-X through SET_IRQS, the lcore asleep in poll(2)
    port.configure({ rxQueues: 1, txQueues: 1, promiscuous: false, intr: { rxq: true } });
    port.rxQueueSetup(0, 256, pool);
    port.txQueueSetup(0, 256);
    port.start();
    const ix = await eal.lcores.launch<IntrExchange>(1, LOOP, 'virtioIntrLcore', { port: port.data(), timeoutMs: 20000 });
    const ixs = port.xstats();
    port.stop();
    report('virtio-intr', port.info().capabilities.includes('rx-interrupt') && ix.reply && ix.wakeups > 0 && (ixs.rx_q0_interrupts ?? 0) > 0 && pool.inUseCount() === 0, {
      ...ix, rx_q0_interrupts: ixs.rx_q0_interrupts ?? null, mbufsInUse: pool.inUseCount(),
    });

    port.close();
    const closed = port.status === 'closed' && port.pci.isClosed;
    await eal.close();
    eal = null;
    const faults = dmesg().slice(Math.max(0, before - 1)).filter((l) => /DMAR/.test(l) && /fault|Request device/i.test(l));
    report('virtio-close', closed && faults.length === 0, { portStatus: port.status, barsClosed: port.pci.isClosed, dmarFaults: faults.slice(0, 4) });
  } catch (e) {
    report('virtio-pmd', false, { error: e instanceof Error ? e.stack ?? e.message : String(e) });
  } finally {
    if (eal) await eal.close().catch((e: unknown) => report('virtio-close', false, { error: errorOf(e) }));
  }
  await checkVirtioPwrite();
}

/**
 * virtio-pwrite: the same ARP exchange with `-a BDF,bar_mmap=0`: no BAR is mapped, so the lcore
 * rings its doorbells with pwrite on the VFIO device fd at the notify region's offset (the
 * worker-side fallback), on the real kernel's VFIO.
 */
async function checkVirtioPwrite(): Promise<void> {
  let eal: Eal | null = null;
  try {
    eal = new Eal(parseEalArgs(['--vfio-mode', mode, '-m', '64', '--huge-dir', '/dev/hugepages', '-l', '0-1', '--file-prefix', 'tsplabvp', '-a', `${bdf},bar_mmap=0`]));
    const virtio = await import('../../drivers/net/virtio/virtio.js');
    await probePci(eal);
    const port = listPorts().find((x): x is VirtioNetPort => x instanceof virtio.VirtioNetPort);
    if (!port) throw new Error('net_virtio did not probe the device with bar_mmap=0');
    const pool = pktmbufPoolCreate(eal.memory, 'labvp_pool', 1023, { cacheSize: 32 });
    port.configure({ rxQueues: 1, txQueues: 1, promiscuous: false });
    port.rxQueueSetup(0, 256, pool);
    port.txQueueSetup(0, 256);
    port.start();
    const mapped = port.pci.notifyMapped(0);
    const ex = await eal.lcores.launch<ArpExchange>(1, siblingModule(import.meta.url, 'guest'), 'virtioArpLcore', { port: port.data(), timeoutMs: 20000 });
    const xs = port.xstats();
    port.stop();
    report('virtio-pwrite', !mapped && ex.reply !== null && (xs.tx_q0_kicks ?? 0) > 0 && pool.inUseCount() === 0, {
      notifyMapped: mapped, sent: ex.sent, ms: ex.ms, reply: ex.reply !== null, txKicks: xs.tx_q0_kicks ?? null, rxKicks: xs.rx_q0_kicks ?? null,
    });
    port.close();
  } catch (e) {
    report('virtio-pwrite', false, { error: e instanceof Error ? e.stack ?? e.message : String(e) });
  } finally {
    if (eal) await eal.close().catch((e: unknown) => report('virtio-pwrite', false, { error: errorOf(e) }));
  }
}

/**
 * noiommu-nodes: what Linux 6.6+ shows for a no-IOMMU device: the group node /dev/vfio/noiommu-N
 * (and no /dev/vfio/N), a sysfs vfio-dev/vfioN entry WITHOUT a dev file and no node under
 * /dev/vfio/devices/ (drivers/vfio/vfio.h vfio_device_add(): "cdev does not support noiommu device").
 */
function checkNoIommuNodes(group: number): void {
  const isChr = (p: string): boolean => { try { return statSync(p).isCharacterDevice(); } catch { return false; } };
  const list = (d: string): string[] | null => { try { return readdirSync(d); } catch { return null; } };
  const vfioDev = list(join(sysDev, 'vfio-dev')) ?? [];
  const cdevName = vfioDev.find((n) => /^vfio\d+$/.test(n)) ?? null;
  const devFile = cdevName ? join(sysDev, 'vfio-dev', cdevName, 'dev') : null;
  const devNodes = list('/dev/vfio/devices');
  const groupNode = `/dev/vfio/noiommu-${group}`;
  const groupName = (() => { try { return readFileSync(`/sys/kernel/iommu_groups/${group}/name`, 'utf8').trim(); } catch { return null; } })();
  const taint = dmesg().find((l) => /taint.*noiommu/i.test(l))?.trim() ?? null;
  const ok = group >= 0 && isChr(groupNode) && !existsSync(`/dev/vfio/${group}`) && cdevName !== null && devFile !== null && !existsSync(devFile) &&
    (devNodes === null || devNodes.length === 0);
  report('noiommu-nodes', ok, {
    groupNode, groupNodeIsChr: isChr(groupNode), plainGroupNode: existsSync(`/dev/vfio/${group}`), iommuGroupName: groupName,
    sysfsVfioDev: vfioDev, sysfsEntry: cdevName ? join(sysDev, 'vfio-dev', cdevName) : null,
    sysfsEntryFiles: cdevName ? list(join(sysDev, 'vfio-dev', cdevName)) : null, sysfsDevFile: devFile !== null && existsSync(devFile),
    devVfio: list('/dev/vfio'), devVfioDevices: devNodes ?? 'absent', devIommu: existsSync('/dev/iommu'), kernelLog: taint,
  });
}

/** noiommu-iommufd-refused: the VFIO layer with --vfio-mode iommufd refuses the no-IOMMU device in one line. */
function checkNoIommuRefused(group: number): void {
  const v = new Vfio({ mode: 'iommufd', sysfsRoot: '/sys', devRoot: '/dev', memory: null });
  let error = 'opened';
  try {
    v.openDevice({ name: bdf, sysfsDir: realpathSync(sysDev), iommuGroup: group }).close();
  } catch (e) {
    error = errorOf(e);
  } finally {
    v.close();
  }
  const want = new RegExp(`^${bdf}: --vfio-mode iommufd: no-IOMMU device \\(group node /dev/vfio/noiommu-${group}\\): .*; use --vfio-mode group or auto$`);
  report('noiommu-iommufd-refused', want.test(error) && !error.includes('\n'), { error });
}

async function main(): Promise<void> {
  report('guest', true, {
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(), node: process.version,
    cmdline: readFileSync('/proc/cmdline', 'utf8').trim(),
  });
  let group = -1;
  try {
    group = Number(basename(readlinkSync(join(sysDev, 'iommu_group'))));
  } catch (e) {
    report('iommu-group', false, { error: `no iommu_group link: ${errorOf(e)}` });
  }
  await checkDevices(group);
  await checkAutoMode();
  if (noIommu) {
    checkNoIommuNodes(group);
    checkNoIommuRefused(group);
  }

  let eal: Eal | null = null;
  try {
    const vfioArgs = noIommu ? ['--vfio-mode', 'auto', '--iova-mode', 'pa'] : ['--vfio-mode', mode];
    const opts = parseEalArgs([...vfioArgs, '-m', '64', '--huge-dir', '/dev/hugepages', '-l', '0', '-a', bdf, ...(mdevUuid ? ['-a', mdevUuid] : [])]);
    eal = new Eal(opts);
    const b = eal.memory.config.backing;
    report('eal', b.kind === 'hugetlbfs' && eal.memory.config.pageSize === 2 ** 21 && eal.memory.segments.length > 0 &&
      (!noIommu || (eal.memory.config.iovaMode === 'pa' && eal.memory.segments.every((s) => s.iova !== s.va))), {
      backing: b.kind, pageSize: eal.memory.config.pageSize, iovaMode: eal.memory.config.iovaMode,
      segments: eal.memory.segments.map((s) => ({ id: s.id, va: s.va, iova: s.iova, len: s.len, path: s.path })),
    });
  } catch (e) {
    report('eal', false, { error: errorOf(e) });
    return;
  }

  try {
    registerPciDriver({
      name: 'lab_nic', description: 'the lab guest NIC (test/lab/guest.ts)',
      idTable: [{ vendor, device: deviceId }, { vendor: MTTY_VENDOR, device: MTTY_DEVICE }],
      probe: () => ({ close: () => undefined }),
    });
    let bus: PciBus;
    let mdevs: MdevStatus[] = [];
    try {
      if (mdevUuid) ({ bus, mdevs } = await probePciAndMdev(eal));
      else bus = await probePci(eal);
    } catch (e) {
      report('probe', false, { error: errorOf(e) });
      return;
    }
    if (mdevUuid) {
      try {
        checkMdev(bus, mdevs);
      } catch (e) {
        report('mdev-probe', false, { error: errorOf(e) });
      }
    }
    const st = bus.status().find((s) => s.dev.addr === bdf);
    const p = bus.probed().find((x) => x.dev.addr === bdf);
    report('probe', p !== undefined && p.vfio.backend === (noIommu ? 'group (no-IOMMU)' : mode) && st?.vfioMode === mode, {
      driver: p?.driver.name ?? null, backend: p?.vfio.backend ?? null, statusMode: st?.vfioMode ?? null, reason: st?.modeReason ?? null,
      skip: st?.skipReason ?? null,
    });
    if (noIommu) {
      // what the EAL's --vfio-mode auto chose for the device it opened, and the reason it logged
      const sysfsDir = realpathSync(sysDev);
      const reason = st?.modeReason ?? '';
      const want = `auto: group node /dev/vfio/noiommu-${group} (no-IOMMU); no-IOMMU device: this kernel gives it no VFIO cdev ` +
        `(${sysfsDir}/vfio-dev/`;
      report('noiommu-auto', st?.vfioMode === 'group' && p?.vfio.backend === 'group (no-IOMMU)' && reason.startsWith(want) &&
        / has no dev; Linux 6\.6\+ keeps no-IOMMU devices on the group path\)$/.test(reason), {
        vfioMode: st?.vfioMode ?? null, backend: p?.vfio.backend ?? null, reason,
      });
    }
    if (!p) return;
    const vfio = p.vfio;

    if (mode === 'iommufd') checkIommufdMaps(eal, vfio);
    else if (!noIommu) try {
      // the kernel refuses to map an IOVA range that is already mapped: EEXIST proves the EAL's mapping
      const segs = eal.memory.segments.map((s) => {
        try {
          vfio.dmaMap(s.va, s.iova, s.len);
          vfio.dmaUnmap(s.iova, s.len);
          return { id: s.id, iova: s.iova, len: s.len, mapped: false, answer: 'mapped again without error: the EAL had not mapped it' };
        } catch (e) {
          return { id: s.id, iova: s.iova, len: s.len, mapped: /EEXIST/.test(errorOf(e)), answer: errorOf(e) };
        }
      });
      report('dma-mapped', segs.length > 0 && segs.every((s) => s.mapped), { segments: segs });
    } catch (e) {
      report('dma-mapped', false, { error: errorOf(e) });
    }

    let cfg: Uint8Array | null = null;
    try {
      cfg = readConfigSpace(vfio);
      const dv = new DataView(cfg.buffer);
      const v = dv.getUint16(0, true), d = dv.getUint16(2, true);
      const info = vfio.info();
      report('config', v === vendor && d === deviceId && info.isPci, {
        vendor: hex(v), device: hex(d), regions: info.numRegions, irqs: info.numIrqs, canReset: info.canReset,
      });
    } catch (e) {
      report('config', false, { error: errorOf(e) });
    }

    try {
      if (nic === 'e1000e') checkE1000eBars(vfio);
      else if (nic === 'virtio-net' && cfg) checkVirtioBars(vfio, cfg);
      else report('bar', false, { error: `no BAR check for ${nic}` });
    } catch (e) {
      report('bar', false, { error: errorOf(e) });
    }

    if (nic === 'e1000e') {
      try {
        await checkE1000eDma(eal, vfio);
      } catch (e) {
        report('dma-tx', false, { error: errorOf(e) });
      }
    }
  } finally {
    try {
      await eal.close();
      report('close', true);
    } catch (e) {
      report('close', false, { error: errorOf(e) });
    }
  }
  if (mode === 'iommufd') checkIommufdRelease();
}

/**
 * IOMMUFD, the seed's map rules: mapping the EAL's segments again with the same translation is not
 * an error (EEXIST tolerated, the EAL's mapping kept: the DMA checks after this use it), while the
 * same IOVA for other memory, or an IOVA range inside a mapped one, is a clear error.
 */
function checkIommufdMaps(eal: Eal, vfio: VfioDevice): void {
  try {
    const same = eal.memory.segments.map((s) => {
      try {
        vfio.dmaMap(s.va, s.iova, s.len);
        return { id: s.id, ok: true, answer: 'no error' };
      } catch (e) {
        return { id: s.id, ok: false, answer: errorOf(e) };
      }
    });
    const s0 = eal.memory.segments[0], page = eal.memory.config.pageSize;
    const attempt = (va: bigint, iova: bigint, len: number): string => {
      try {
        vfio.dmaMap(va, iova, len);
        vfio.dmaUnmap(iova, len);
        return 'mapped without error';
      } catch (e) {
        return errorOf(e);
      }
    };
    const other = s0.len >= 2 * page ? attempt(s0.va + BigInt(page), s0.iova, page) : 'segment too small';
    const inside = s0.len >= 2 * page ? attempt(s0.va + BigInt(page), s0.iova + BigInt(page), page) : 'segment too small';
    report('iommufd-eexist', same.length > 0 && same.every((x) => x.ok) && /that IOVA already maps va/.test(other) && /overlaps one already mapped/.test(inside), {
      same, otherMemory: other, insideRange: inside,
    });
  } catch (e) {
    report('iommufd-eexist', false, { error: errorOf(e) });
  }
}

/**
 * IOMMUFD release, after the EAL closed the device: a device opened through its cdev (its node's
 * major:minor checked against sysfs) holds its IOAS (IOMMU_DESTROY answers EBUSY); after
 * VFIO_DEVICE_DETACH_IOMMUFD_PT, with the device fd still open, the IOAS can be destroyed; and a
 * node with another major:minor is refused before use.
 */
function checkIommufdRelease(): void {
  const cdevName = readdirSync(join(sysDev, 'vfio-dev')).find((n) => /^vfio\d+$/.test(n));
  const cdev = `/dev/vfio/devices/${cdevName}`, sysfsDevFile = join(sysDev, 'vfio-dev', String(cdevName), 'dev');
  const destroy = (fd: number, id: number): string => {
    const d = U.iommu_destroy;
    try {
      os.ioctl(fd, U.IOMMU_DESTROY, d.encode({ size: d.size, id }));
      return 'destroyed';
    } catch (e) {
      return errorOf(e);
    }
  };
  let ioas: Iommufd | null = null;
  try {
    ioas = Iommufd.open('/dev');
    const dev = ioas.openDevice(bdf, cdev, sysfsDevFile);
    const whileAttached = destroy(ioas.fd, ioas.ioasId);
    const d = U.vfio_device_detach_iommufd_pt;
    os.ioctl(dev.fd, U.VFIO_DEVICE_DETACH_IOMMUFD_PT, d.encode({ argsz: d.size, flags: 0 }));
    const afterDetach = destroy(ioas.fd, ioas.ioasId);
    dev.close();
    report('iommufd-detach', /EBUSY/.test(whileAttached) && afterDetach === 'destroyed', { cdev, whileAttached, afterDetach });
  } catch (e) {
    report('iommufd-detach', false, { error: errorOf(e) });
  } finally {
    ioas?.close();
  }
  // the node check: the real node against its own sysfs dev file, and against another number
  try {
    const want = readFileSync(sysfsDevFile, 'utf8').trim();
    const fd = os.open(cdev, os.O_RDWR);
    let same = 'accepted', wrong = 'accepted';
    try {
      try { checkCdevNode(bdf, cdev, fd, sysfsDevFile); } catch (e) { same = errorOf(e); }
      const fake = '/tmp/tsp-lab-rdev';
      writeFileSync(fake, `${Number(want.split(':')[0]) + 1}:0\n`);
      try { checkCdevNode(bdf, cdev, fd, fake); } catch (e) { wrong = errorOf(e); }
    } finally {
      os.close(fd);
    }
    report('cdev-rdev', same === 'accepted' && /the node is stale or another device's/.test(wrong), { sysfs: want, same, wrong });
  } catch (e) {
    report('cdev-rdev', false, { error: errorOf(e) });
  }
}

if (isMainThread) main().then(() => (nic === 'virtio-net' ? checkVirtioPmd() : undefined)).then(
  () => process.exit(failures === 0 ? 0 : 1),
  (e: unknown) => {
    report('guest', false, { error: e instanceof Error ? e.stack ?? e.message : String(e) });
    process.exit(1);
  },
);
