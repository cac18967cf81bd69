/**
 * net_null: a port that makes packets out of thin air on RX and drops them on TX, like DPDK's
 * net_null. The measure of a framework's own overhead: no device, no copies (unless copy=1).
 * `--vdev net_nullN[,size=64][,copy=0|1][,no-rx=0|1]`; no-rx=1 (DPDK's option of that name) makes RX
 * return nothing, for one-way set-ups where the port only takes what is forwarded to it.
 */
import { EthDev, type DevInfo, type LinkStatus, MAX_QUEUES } from '../../../lib/ethdev/ethdev.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { siblingModule } from '../../../src/lcore/module.js';
import type { NullQueueData } from './null_data.js';

const DATA = siblingModule(import.meta.url, 'null_data');

/** Control half of a net_null port. */
export class NullPort extends EthDev {
  readonly size: number;
  readonly copy: boolean;
  readonly noRx: boolean;

  constructor(name: string, size: number, copy: boolean, noRx = false) {
    super(name);
    this.size = size;
    this.copy = copy;
    this.noRx = noRx;
  }

  /** Driver facts. */
  info(): DevInfo {
    return {
      driverName: 'net_null', maxRxQueues: MAX_QUEUES, maxTxQueues: MAX_QUEUES, minMtu: 68, maxMtu: 9000,
      minDesc: 1, maxDesc: 65536, capabilities: ['multi-queue', 'promiscuous'],
    };
  }

  /** A locally administered address ending in the port id. */
  macAddr(): number[] {
    return [0x02, 0x74, 0x73, 0x70, 0x00, this.port & 0xff];
  }

  /** Always up once started, at a nominal 10 Gb/s. */
  link(): LinkStatus {
    return { up: this.status === 'started', speedMbps: 10000, fullDuplex: true };
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(): NullQueueData {
    return { size: this.size, copy: this.copy, noRx: this.noRx };
  }

  protected txqData(): NullQueueData {
    return { size: this.size, copy: this.copy, noRx: false };
  }
}

registerVdevDriver({
  name: 'net_null',
  description: 'makes packets on RX, drops them on TX (no device)',
  schema: {
    size: { kind: 'int', min: 14, max: 9000, default: 64, help: 'packet size in bytes' },
    copy: { kind: 'bool', default: false, help: '1: write/read packet bytes like a real device' },
    'no-rx': { kind: 'bool', default: false, help: '1: RX returns nothing (a port that only sinks what is sent to it)' },
  },
  probe: (name, args) => new NullPort(name, args.size, args.copy, args['no-rx']),
});
