/**
 * net_ring: ports backed by shared-memory rings, like DPDK's net_ring. Packets move by handle
 * (zero copy). Without a peer a port is a loopback (what it sends, it receives); with
 * `peer=net_ringN` two ports are linked back to back (what one sends, the other receives).
 * `--vdev net_ringN[,size=1024][,peer=net_ringM]`.
 */
import { EthDev, type DevInfo, type LinkStatus, MAX_QUEUES, listPorts } from '../../../lib/ethdev/ethdev.js';
import { Ring, type RingDesc } from '../../../lib/ring/ring.js';
import { pktmbufFree } from '../../../lib/mempool/mbuf.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { devargsError } from '../../../lib/kvargs/kvargs.js';
import { siblingModule } from '../../../src/lcore/module.js';

const DATA = siblingModule(import.meta.url, 'ring_data');

/** Control half of a net_ring port. */
export class RingPort extends EthDev {
  readonly ringSize: number;
  private peer: RingPort | null = null;
  private txRings: Ring[] = [];

  constructor(name: string, ringSize: number) {
    super(name);
    this.ringSize = ringSize;
  }

  /** Link two ports back to back. */
  static link(a: RingPort, b: RingPort): void {
    a.peer = b;
    b.peer = a;
  }

  /** Driver facts. */
  info(): DevInfo {
    return {
      driverName: 'net_ring', maxRxQueues: MAX_QUEUES, maxTxQueues: MAX_QUEUES, minMtu: 68, maxMtu: 9000,
      minDesc: 1, maxDesc: 65536, capabilities: ['multi-queue', 'zero-copy'],
    };
  }

  /** A locally administered address ending in the port id. */
  macAddr(): number[] {
    return [0x02, 0x72, 0x69, 0x6e, 0x67, this.port & 0xff];
  }

  /** Up while started (and, with a peer, while the peer is started too). */
  link(): LinkStatus {
    const up = this.status === 'started' && (this.peer === null || this.peer.status === 'started');
    return { up, speedMbps: 100000, fullDuplex: true };
  }

  /** The port this one is linked to, or null for a loopback. */
  get linkedTo(): RingPort | null {
    return this.peer;
  }

  /** The ring behind TX queue q, created on first use (a peer's RX may ask before we configure). */
  private txRing(q: number): Ring {
    while (this.txRings.length <= q) this.txRings.push(Ring.create(`${this.name}_tx${this.txRings.length}`, this.ringSize, { sp: true, sc: true }));
    return this.txRings[q];
  }

  /** Packets still in flight go back to their pools; lcores must have stopped polling. */
  protected override onStop(): void {
    drain(this.txRings);
  }

  protected override onClose(): void {
    drain(this.txRings);
    if (this.peer) this.peer.peer = null;
    this.peer = null;
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(q: number): RingDesc {
    return (this.peer ?? this).txRing(q).desc;
  }

  protected txqData(q: number): RingDesc {
    return this.txRing(q).desc;
  }
}

const tmp = new Uint32Array(256);

function drain(rings: Ring[]): void {
  for (const r of rings) {
    for (let n = r.dequeueBurst(tmp, tmp.length); n > 0; n = r.dequeueBurst(tmp, tmp.length)) {
      for (let i = 0; i < n; i++) pktmbufFree(tmp[i]);
    }
  }
}

registerVdevDriver({
  name: 'net_ring',
  description: 'shared-memory ring port: loopback, or back to back with peer=',
  schema: {
    size: { kind: 'pow2', min: 1, max: 1 << 20, default: 1024, help: 'ring entries per queue' },
    peer: { kind: 'string', placeholder: 'net_ringM', help: 'name of an earlier net_ring port to link with' },
  },
  probe: (name, args) => {
    const port = new RingPort(name, args.size);
    if (args.peer !== undefined) {
      const peer = listPorts().find((p) => p.name === args.peer);
      if (!(peer instanceof RingPort)) {
        port.close();
        throw devargsError(args, 'peer', `is not an earlier net_ring port (give it first, e.g. --vdev ${args.peer} --vdev ${name},peer=${args.peer})`);
      }
      RingPort.link(port, peer);
    }
    return port;
  },
});
