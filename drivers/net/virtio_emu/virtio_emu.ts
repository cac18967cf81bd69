/**
 * net_virtio_emu: the back-end PMD of tspmd's emulated virtio-net device, as DPDK's net_vhost is
 * vhost-user's: `--vdev net_virtio_emuN,socket=PATH[,mac=..][,queues=N][,mrg=0|1][,size=N]
 * [,notify_mmap=0|1][,notify_fds=0|1][,kicks=0|1]` (the device's own keys are the emulated device's,
 * drivers/emu/virtio-net/layout.ts VIRTIO_NET_ARGS, without backend=). Probe creates the device (the
 * provider: config space, BARs, features, reset), allocates it in the emudev registry under the
 * port's name and serves it over vfio-user on PATH (mode 0600) in this process, so any app becomes
 * a switch between a guest and its other ports:
 * `tspmd l2fwd --vdev net_virtio_emu0,socket=S --vdev net_tap0,iface=T -- -p 0x3`.
 * `--vdev net_virtio_emuN,device=NAME` is the port of a virtio-net device an application allocated
 * in the registry itself (emudevAllocate) and serves and releases itself.
 *
 * The port's RX is what the guest transmits, its TX what the guest receives; queue 0 in each
 * direction carries every queue pair. Link: up while the port is started and the driver has set
 * DRIVER_OK (and the device does not need a reset). Statistics and xstats are the device's own
 * counters (rx = the guest's transmitqs, tx = its receiveqs). The data half (virtio_emu_data.ts)
 * opens the device's engine (VirtioNetBackend) on the lcore that polls the RX queue; TX sent from
 * another lcore reaches it through the port's ring (created here at start).
 *
 * Stop: the lcores that opened the queues leave (the RX lcore drops its engine when its thread is
 * idle: the app has stopped polling, as rte_eth_dev_stop requires), then the mbufs left in the
 * ring are freed (counted as rx_nobuf_drops); close: the server
 * stops (the client is dropped, the socket file removed) and the device is released (a device=
 * device stays its allocator's). Client memory
 * that cannot be sealed is reached by message (emudev's default unsealedDma).
 */
import {
  EthDev, rxqStatsBase, txqStatsBase, xstatIndex, RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_MISSED, RXQ_NOMBUF, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
  type DevInfo, type LinkStatus,
} from '../../../lib/ethdev/ethdev.js';
import { VfioUserServer, type ServerOptions } from '../../../lib/vfio-user/server.js';
import { emudevAllocate, emudevFind, emudevList, type EmuDeviceHandle } from '../../../lib/emudev/registry.js';
import { devargsError } from '../../../lib/kvargs/kvargs.js';
import { UsageError } from '../../../src/options.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { log } from '../../../src/log.js';
import * as V from '../../../lib/virtio/virtio.js';
import { VirtioNetDevice } from '../../emu/virtio-net/device.js';
import { VIRTIO_NET_ARGS, STAT_NAMES, S_TX_PACKETS, S_TX_BYTES, S_TX_ERRORS, S_TX_NOMBUF, S_TX_DROPPED, S_RX_PACKETS, S_RX_BYTES, S_RX_NOBUF, S_RX_TOO_BIG, virtioNetConfig, type VirtioNetConfig } from '../../emu/virtio-net/layout.js';
import { Ring, nextPow2 } from '../../../lib/ring/ring.js';
import { pktmbufFreeBulk } from '../../../lib/mempool/mbuf.js';
import { RELEASE_GEN, ATTACHES, RELEASE_WORDS, releaseHeld, type VirtioEmuQueueData } from './virtio_emu_data.js';

const DATA = siblingModule(import.meta.url, 'virtio_emu_data');

/** How long stop waits for the lcores that opened the queues to detach. */
const DETACH_TIMEOUT_MS = 5000;

const { backend: _backend, ...DEVICE_ARGS } = VIRTIO_NET_ARGS;

/** net_virtio_emu's keys: where to serve, then the emulated device's own (without backend=). */
export const VIRTIO_EMU_ARGS = {
  socket: { kind: 'string', placeholder: 'PATH', help: 'the unix socket to serve a new device on over vfio-user (created mode 0600, removed at close); this or device=' },
  device: { kind: 'string', placeholder: 'NAME', help: 'instead of socket=: be the port of the virtio-net device allocated as NAME in the emudev registry (its allocator serves and releases it; the device keys below are its own then)' },
  ...DEVICE_ARGS,
} as const;

/** Where and how a net_virtio_emu port serves its device (null: the caller serves device.emu itself). */
export interface VirtioEmuServe {
  socket: string;
  server?: ServerOptions;
}

/** The control half of a net_virtio_emu port: the device, its server and the port. */
export class VirtioEmuPort extends EthDev {
  /** the emulated device (the provider) */
  readonly device: VirtioNetDevice;
  /** the release words (virtio_emu_data.ts): RELEASE_GEN bumped at stop, ATTACHES the lcores holding the port, OWNER, PRODUCER */
  private readonly words = new Int32Array(new SharedArrayBuffer(4 * RELEASE_WORDS));
  /** the device's registry entry when this port allocated it (and releases it at close) */
  private readonly owned: EmuDeviceHandle | null;
  private srv: VfioUserServer | null = null;
  /** foreign TX -> the RX lcore (made at start, TX queue 0's nb_desc rounded up to a power of two) */
  private txRing: Ring | null = null;
  private closing: Promise<void> | null = null;

  /** The port of device; owned: its registry entry, released at close (null: the device is someone else's). */
  constructor(name: string, device: VirtioNetDevice, owned: EmuDeviceHandle | null) {
    super(name);
    this.device = device;
    this.owned = owned;
  }

  /**
   * A new device from config as a port named name: allocated in the emudev registry under that
   * name and, with serve, served on serve.socket now (null: the caller serves device.emu itself).
   */
  static create(name: string, config: VirtioNetConfig, serve: VirtioEmuServe | null): VirtioEmuPort {
    const device = new VirtioNetDevice(config, name);
    let h: EmuDeviceHandle;
    try {
      h = emudevAllocate(name, device);
    } catch (e) {
      device.close();
      throw e;
    }
    const port = new VirtioEmuPort(name, device, h);
    if (serve) {
      try {
        port.srv = new VfioUserServer(device.emu, serve.socket, serve.server);
        port.srv.start();
      } catch (e) {
        port.srv = null;
        port.close();
        throw new Error(`${name}: cannot serve it on ${serve.socket}: ${(e as Error).message}`);
      }
    }
    return port;
  }

  /** The vfio-user server on the socket (null when another serves the device). */
  get server(): VfioUserServer | null {
    return this.srv;
  }

  /** Driver facts: one queue each way carries every queue pair of the device. */
  info(): DevInfo {
    return {
      driverName: 'net_virtio_emu', maxRxQueues: 1, maxTxQueues: 1, minMtu: 68, maxMtu: 9000,
      minDesc: 1, maxDesc: 65536, capabilities: ['promiscuous', 'link-state'],
    };
  }

  /** The device's MAC address (what the guest's interface carries). */
  macAddr(): number[] {
    return [...this.device.config.mac];
  }

  /** Up while started and the driver has the device running (DRIVER_OK, no DEVICE_NEEDS_RESET). */
  link(): LinkStatus {
    const s = this.device.deviceStatus;
    const up = this.status === 'started' && (s & V.STATUS_DRIVER_OK) !== 0 && (s & V.STATUS_DEVICE_NEEDS_RESET) === 0;
    return { up, speedMbps: 10000, fullDuplex: true };
  }

  /** A fresh ring for TX sent from lcores other than the RX one. */
  protected override onStart(): void {
    this.txRing = Ring.create(`${this.name}.tx`, nextPow2(this.txDesc[0]), { sp: true, sc: true });
  }

  /** The lcores that opened the queues leave (when idle, i.e. once they stopped polling); the ring's mbufs are freed. */
  protected override onStop(): void {
    Atomics.add(this.words, RELEASE_GEN, 1);
    Atomics.notify(this.words, RELEASE_GEN);
    releaseHeld(this.name); // queues opened in this thread
    const deadline = Date.now() + DETACH_TIMEOUT_MS;
    for (let n = Atomics.load(this.words, ATTACHES); n !== 0; n = Atomics.load(this.words, ATTACHES)) {
      if (Date.now() > deadline) {
        log('warn', 'net_virtio_emu', `${this.name}: the lcores polling it did not leave it within ${DETACH_TIMEOUT_MS} ms: stop the loops polling the port before stopping it`);
        return;
      }
      Atomics.wait(this.words, ATTACHES, n, 50);
    }
    this.drainTxRing();
  }

  /** Free what foreign lcores sent that the RX lcore did not deliver (no lcore uses the ring now). */
  private drainTxRing(): void {
    const r = this.txRing;
    if (!r) return;
    const buf = new Uint32Array(256);
    let left = 0;
    for (let k = r.dequeueBurst(buf, buf.length); k > 0; k = r.dequeueBurst(buf, buf.length)) {
      pktmbufFreeBulk(buf, k, 0);
      left += k;
    }
    this.device.stats[S_RX_NOBUF] += left;
  }

  /** Stop serving and release the device (shutdown() waits for both). */
  protected override onClose(): void {
    this.closing ??= this.release().catch((e: unknown) => log('error', 'net_virtio_emu', `${this.name}: closing: ${(e as Error).message}`));
  }

  /** Close the port (if open) and wait until the server is closed (client dropped, socket file removed) and the device released. */
  shutdown(): Promise<void> {
    this.close();
    return this.closing ?? Promise.resolve();
  }

  private async release(): Promise<void> {
    try {
      await this.srv?.close();
    } finally {
      await this.owned?.release(); // the registry entry goes, the device closes
    }
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(): VirtioEmuQueueData {
    return this.queueData();
  }

  protected txqData(): VirtioEmuQueueData {
    return this.queueData();
  }

  private queueData(): VirtioEmuQueueData {
    return { backend: this.device.engineArg(-1, this.port), release: this.words.buffer as SharedArrayBuffer, txRing: this.txRing!.desc };
  }

  /** The device's statistics, by their names. */
  protected override xstatNames(): string[] {
    return [...STAT_NAMES];
  }

  /** The port's counters are the device's: RX = the guest's transmitqs, TX = its receiveqs. */
  protected override refreshStats(): void {
    const d = this.device.stats, c = this.counters;
    const rx = rxqStatsBase(0), tx = txqStatsBase(0);
    c[rx + RXQ_PACKETS] = d[S_TX_PACKETS];
    c[rx + RXQ_BYTES] = d[S_TX_BYTES];
    c[rx + RXQ_ERRORS] = d[S_TX_ERRORS];
    c[rx + RXQ_MISSED] = d[S_TX_DROPPED];
    c[rx + RXQ_NOMBUF] = d[S_TX_NOMBUF];
    c[tx + TXQ_PACKETS] = d[S_RX_PACKETS];
    c[tx + TXQ_BYTES] = d[S_RX_BYTES];
    c[tx + TXQ_ERRORS] = d[S_RX_TOO_BIG];
    STAT_NAMES.forEach((_, i) => { c[xstatIndex(i)] = d[i]; });
  }
}

registerVdevDriver({
  name: 'net_virtio_emu',
  description: 'an emulated virtio-net device served over vfio-user in this process, as a port (the guest\'s TX is its RX)',
  schema: VIRTIO_EMU_ARGS,
  probe: (name, args, eal) => {
    if (args.device !== undefined) {
      if (args.socket !== undefined) throw devargsError(args, 'device', 'goes without socket= (the device is served by whoever allocated it)');
      const h = emudevFind(args.device);
      if (!h) throw devargsError(args, 'device', `names no device in the emudev registry (devices: ${emudevList().map((d) => d.name).join(', ') || 'none'}); allocate it first (emudevAllocate), or give socket=PATH for a new one`);
      if (!(h.provider instanceof VirtioNetDevice)) throw devargsError(args, 'device', `is a ${h.provider.info().type} device; net_virtio_emu drives virtio-net`);
      return new VirtioEmuPort(name, h.provider, null);
    }
    if (args.socket === undefined) throw new UsageError(`--vdev ${name}: socket=PATH is required (the unix socket to serve the device on), or device=NAME (a virtio-net device allocated in the emudev registry)`);
    const port = VirtioEmuPort.create(name, virtioNetConfig(args, -1), { socket: args.socket });
    eal.onClose(() => port.shutdown());
    return port;
  },
});
