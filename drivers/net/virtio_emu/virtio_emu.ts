/**
 * net_virtio_emu: the back-end PMD of tspmd's emulated virtio-net device, as DPDK's net_vhost is
 * vhost-user's: `--vdev net_virtio_emuN,socket=PATH[,mac=..][,queues=N][,mrg=0|1][,size=N]
 * [,notify_mmap=0|1][,notify_fds=0|1][,kicks=0|1]` (the device's own keys are the emulated device's,
 * drivers/emu/virtio-net/layout.ts VIRTIO_NET_ARGS, without backend=). Probe creates the device (the
 * provider: config space, BARs, features, reset) and serves it over vfio-user on PATH (mode 0600) in
 * this process, so any app becomes a switch between a guest and its other ports:
 * `tspmd l2fwd --vdev net_virtio_emu0,socket=S --vdev net_tap0,iface=T -- -p 0x3`.
 *
 * The port's RX is what the guest transmits, its TX what the guest receives; queue 0 in each
 * direction carries every queue pair. Link: up while the port is started and the driver has set
 * DRIVER_OK (and the device does not need a reset). Statistics and xstats are the device's own
 * counters (rx = the guest's transmitqs, tx = its receiveqs). The data half (virtio_emu_data.ts)
 * opens the device's engine (VirtioNetBackend) on the one lcore that polls both queues.
 *
 * Stop: the lcore that opened the queues detaches from the device (it drops its engine when its
 * thread is idle: the app has stopped polling, as rte_eth_dev_stop requires); close: the server
 * stops (the client is dropped, the socket file removed) and the device is released. Client memory
 * that cannot be sealed is reached by message (emudev's default unsealedDma).
 */
import {
  EthDev, rxqStatsBase, txqStatsBase, xstatIndex, RXQ_PACKETS, RXQ_BYTES, RXQ_ERRORS, RXQ_MISSED, RXQ_NOMBUF, TXQ_PACKETS, TXQ_BYTES, TXQ_ERRORS,
  type DevInfo, type LinkStatus,
} from '../../../lib/ethdev/ethdev.js';
import { VfioUserServer, type ServerOptions } from '../../../lib/vfio-user/server.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { siblingModule } from '../../../src/lcore/module.js';
import { log } from '../../../src/log.js';
import * as V from '../../../lib/virtio/virtio.js';
import { VirtioNetDevice } from '../../emu/virtio-net/device.js';
import { VIRTIO_NET_ARGS, STAT_NAMES, S_TX_PACKETS, S_TX_BYTES, S_TX_ERRORS, S_TX_NOMBUF, S_TX_DROPPED, S_RX_PACKETS, S_RX_BYTES, S_RX_TOO_BIG, virtioNetConfig, type VirtioNetConfig } from '../../emu/virtio-net/layout.js';
import { RELEASE_GEN, ATTACHES, RELEASE_WORDS, releaseHeld, type VirtioEmuQueueData } from './virtio_emu_data.js';

const DATA = siblingModule(import.meta.url, 'virtio_emu_data');

/** How long stop waits for the lcores that opened the queues to detach. */
const DETACH_TIMEOUT_MS = 5000;

const { backend: _backend, ...DEVICE_ARGS } = VIRTIO_NET_ARGS;

/** net_virtio_emu's keys: where to serve, then the emulated device's own (without backend=). */
export const VIRTIO_EMU_ARGS = {
  socket: { kind: 'string', required: true, placeholder: 'PATH', help: 'the unix socket to serve the device on over vfio-user (created mode 0600, removed at close)' },
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
  /** the vfio-user server on the socket (null when the caller serves the device) */
  readonly server: VfioUserServer | null = null;
  /** RELEASE_GEN (bumped at stop: the lcore holding the device detaches) and ATTACHES (1 while one holds it) */
  private readonly words = new Int32Array(new SharedArrayBuffer(4 * RELEASE_WORDS));
  private closing: Promise<void> | null = null;

  /** Create the device from its configuration and, with serve, serve it on serve.socket now. */
  constructor(name: string, config: VirtioNetConfig, serve: VirtioEmuServe | null) {
    super(name);
    let step = 'create the device';
    try {
      this.device = new VirtioNetDevice(config, name);
      if (serve) {
        step = `serve it on ${serve.socket}`;
        this.server = new VfioUserServer(this.device.emu, serve.socket, serve.server);
        this.server.start();
      }
    } catch (e) {
      this.close();
      throw new Error(`${name}: cannot ${step}: ${(e as Error).message}`);
    }
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

  /** The lcore that opened the queues detaches (when idle, i.e. once it stopped polling). */
  protected override onStop(): void {
    Atomics.add(this.words, RELEASE_GEN, 1);
    Atomics.notify(this.words, RELEASE_GEN);
    releaseHeld(this.name); // queues opened in this thread
    const deadline = Date.now() + DETACH_TIMEOUT_MS;
    for (let n = Atomics.load(this.words, ATTACHES); n !== 0; n = Atomics.load(this.words, ATTACHES)) {
      if (Date.now() > deadline) {
        log('warn', 'net_virtio_emu', `${this.name}: the lcore polling it did not detach from the device within ${DETACH_TIMEOUT_MS} ms: stop the loop polling the port before stopping it`);
        return;
      }
      Atomics.wait(this.words, ATTACHES, n, 50);
    }
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
      await this.server?.close();
    } finally {
      (this.device as VirtioNetDevice | undefined)?.close(); // undefined: its constructor failed
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
    const c = this.device.config;
    return {
      backend: { desc: { id: -1, ...this.device.backendDesc() }, pairs: c.pairs, maxQueueSize: c.queueSize, wantKicks: c.wantKicks === true, port: this.port },
      release: this.words.buffer as SharedArrayBuffer,
    };
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
    const port = new VirtioEmuPort(name, virtioNetConfig(args, -1), { socket: args.socket });
    eal.onClose(() => port.shutdown());
    return port;
  },
});
