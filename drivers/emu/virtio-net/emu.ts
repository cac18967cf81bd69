/**
 * The virtio-net device as one served unit: the device (device.ts), an EAL port as its backend
 * (net_tap, af_packet, ring, null: --vdev) and the device's lifecycle, its poll loop (datapath.ts)
 * on a worker lcore started and stopped here. `tspmd emu virtio-net` (app/emu/emu.ts) only parses
 * the command line and prints. The backend's mbuf pool lives in the EAL's memory.
 */
import type { Eal } from '../../../src/eal.js';
import { UsageError } from '../../../src/options.js';
import { log } from '../../../src/log.js';
import type { EthDev } from '../../../lib/ethdev/ethdev.js';
import { pktmbufPoolCreate } from '../../../lib/mempool/mbuf.js';
import type { EmuDevice } from '../../../lib/emudev/emudev.js';
import { VirtioNetDevice, VIRTIO_NET_LOOP_MODULE, VIRTIO_NET_LOOP_FN } from './device.js';
import type { VirtioNetLoopResult } from './datapath.js';
import * as L from './layout.js';

/** One line for `tspmd emu --help`. */
export const VIRTIO_NET_SUMMARY = 'virtio 1.x modern network device (split rings, MSI-X, MQ, MRG_RXBUF) on an EAL port: --vdev <backend>';

/** Descriptors of the backend's queues. */
const BACKEND_DESC = 1024;

/** A virtio-net device served by the emu app, with its backend port. */
export class VirtioNetEmu {
  readonly device: VirtioNetDevice;
  readonly backend: EthDev;
  private running: Promise<VirtioNetLoopResult> | null = null;
  private launched = false;
  private closed = false;

  /** Wrap a device and a started backend port. */
  constructor(device: VirtioNetDevice, backend: EthDev) {
    this.device = device;
    this.backend = backend;
  }

  /** The emudev device (for the vfio-user server). */
  get emu(): EmuDevice {
    return this.device.emu;
  }

  /** Launch the poll loop on worker lcore `lcore`; resolves once it runs. */
  async start(eal: Eal, lcore: number): Promise<void> {
    const st = this.device.state;
    const p = eal.lcores.launch<VirtioNetLoopResult>(lcore, VIRTIO_NET_LOOP_MODULE, VIRTIO_NET_LOOP_FN, this.device.loopArg(this.backend.data()));
    this.running = p;
    this.launched = true;
    let failed: unknown = null;
    p.catch((e: unknown) => { failed = e; });
    const deadline = Date.now() + 20000;
    while (Atomics.load(st, L.G_RUNNING) === 0) {
      if (failed) throw failed as Error;
      if (Date.now() > deadline) throw new Error(`virtio-net: the poll loop did not start on lcore ${lcore} within 20 s`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Stop the poll loop (the loop's own stop word: other lcores keep running); returns its result. */
  async stop(): Promise<VirtioNetLoopResult | null> {
    const p = this.running;
    if (!p) return null;
    this.running = null;
    Atomics.store(this.device.state, L.G_STOP, 1);
    try {
      return await p;
    } finally {
      Atomics.store(this.device.state, L.G_STOP, 0);
    }
  }

  /** Stop the loop, print the statistics (if it ever ran), release the device and stop the backend. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const r = await this.stop().catch((e: unknown) => { log('error', 'virtio-net', `poll loop failed: ${(e as Error).message}`); return null; });
    const s = this.device.statistics();
    if (this.launched) console.error(`${this.device.emu.name}: ${Object.entries(s).map(([k, v]) => `${k} ${v}`).join(', ')}${r ? `, loop iterations ${r.iterations}, gc ${r.gcCountAfterWarmup}` : ''}`);
    this.device.close();
    this.backend.stop();
  }
}

/**
 * Create the device named name from its arguments, its backend one of the app's ports (`tspmd emu
 * virtio-net,...`); the port must not serve another device already.
 */
export function createVirtioNetEmu(eal: Eal, args: Record<string, string>, ports: readonly EthDev[], name = 'virtio-net'): VirtioNetEmu {
  const cfg = L.parseVirtioNetArgs(args);
  if (ports.length === 0) throw new UsageError('virtio-net needs a backend port: add one, e.g. --vdev net_tap0,iface=tsp0 (or --vdev net_ring0 for a loopback)');
  const backend = ports.find((p) => p.port === cfg.backend);
  if (!backend) throw new UsageError(`${name}: backend=${cfg.backend} is not a port (ports: ${ports.map((p) => `${p.port}=${p.name}`).join(', ')}); choose one of them`);
  if (backend.status === 'started') throw new UsageError(`${name}: backend=${cfg.backend} (port ${backend.name}) is the backend of another device already; give each virtio-net device its own port (--vdev) and backend=PORT`);
  const pool = pktmbufPoolCreate(eal.memory, `vnet_pool${backend.port}`, 8191);
  backend.configure({ rxQueues: 1, txQueues: 1, promiscuous: true });
  const info = backend.info();
  const desc = Math.max(info.minDesc, Math.min(info.maxDesc, BACKEND_DESC));
  backend.rxQueueSetup(0, desc, pool);
  backend.txQueueSetup(0, desc);
  backend.start();
  return new VirtioNetEmu(new VirtioNetDevice(cfg, name), backend);
}
