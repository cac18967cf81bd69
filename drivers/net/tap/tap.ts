/**
 * net_tap: a TAP interface that this port creates (TUNSETIFF, IFF_TAP | IFF_NO_PI, IFF_MULTI_QUEUE
 * for several queues); what the port sends the kernel receives on that interface, and what the
 * kernel sends out of it the port receives. The interface is set up on start, down on stop and
 * disappears at close. `--vdev net_tapN[,iface=NAME][,mac=aa:bb:cc:dd:ee:ff][,qpairs=1]`.
 */
import { readFileSync } from 'node:fs';
import * as os from '../../../src/os/libc.js';
import { OsError } from '../../../src/os/libc.js';
import { UsageError } from '../../../src/options.js';
import { EthDev, type DevInfo, type LinkStatus, type PortConf } from '../../../lib/ethdev/ethdev.js';
import { parseMac } from '../../../lib/net/mac.js';
import { registerVdevDriver } from '../../bus/vdev/vdev.js';
import { siblingModule } from '../../../src/lcore/module.js';
import type { TapQueueData } from './tap_data.js';

const DATA = siblingModule(import.meta.url, 'tap_data');

// linux/if_tun.h, linux/sockios.h, linux/if.h (checked by test/net/tap.test.ts)
export const TUNSETIFF = 0x400454ca;
export const IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_MULTI_QUEUE = 0x0100;
export const SIOCGIFFLAGS = 0x8913, SIOCSIFFLAGS = 0x8914, SIOCSIFHWADDR = 0x8924, SIOCSIFMTU = 0x8922;
export const IFF_UP = 0x1, ARPHRD_ETHER = 1, IFNAMSIZ = 16, SIZEOF_IFREQ = 40;

/** A struct ifreq for name. */
function ifreq(name: string): Uint8Array {
  const b = new Uint8Array(SIZEOF_IFREQ);
  b.set(Buffer.from(name), 0);
  return b;
}

/** Control half of a net_tap port. */
export class TapPort extends EthDev {
  readonly iface: string;
  readonly qpairs: number;
  private fds: number[] = [];
  private ctl = -1;

  constructor(name: string, iface: string, qpairs: number, mac: number[] | null) {
    super(name);
    this.iface = iface;
    this.qpairs = qpairs;
    try {
      // Queue fds exist from probe on: the interface is there to be configured (addresses, MTU).
      for (let q = 0; q < qpairs; q++) this.fds.push(this.openQueue());
      this.ctl = os.socket(os.AF_INET, os.SOCK_DGRAM, 0);
      if (mac) this.setMac(mac);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  private openQueue(): number {
    let fd: number;
    try {
      fd = os.open('/dev/net/tun', os.O_RDWR | os.O_NONBLOCK);
    } catch (e) {
      throw new Error(`--vdev ${this.name}: cannot open /dev/net/tun (${(e as Error).message}); TAP needs the tun module and CAP_NET_ADMIN (root)`);
    }
    const req = ifreq(this.iface);
    new DataView(req.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | (this.qpairs > 1 ? IFF_MULTI_QUEUE : 0), true);
    try {
      os.ioctl(fd, TUNSETIFF, req);
    } catch (e) {
      os.close(fd);
      if (e instanceof OsError && e.code === 'EPERM') throw new Error(`--vdev ${this.name}: creating TAP interface "${this.iface}" needs CAP_NET_ADMIN (run as root)`);
      if (e instanceof OsError && e.code === 'EBUSY') throw new UsageError(`--vdev ${this.name}: interface "${this.iface}" exists and is not a free TAP interface; choose another iface=`);
      throw e;
    }
    return fd;
  }

  private setMac(mac: number[]): void {
    const req = ifreq(this.iface);
    const dv = new DataView(req.buffer);
    dv.setUint16(IFNAMSIZ, ARPHRD_ETHER, true);
    req.set(mac, IFNAMSIZ + 2);
    os.ioctl(this.ctl, SIOCSIFHWADDR, req);
  }

  private setUp(up: boolean): void {
    const req = ifreq(this.iface);
    const dv = new DataView(req.buffer);
    os.ioctl(this.ctl, SIOCGIFFLAGS, req);
    const flags = dv.getUint16(IFNAMSIZ, true);
    dv.setUint16(IFNAMSIZ, up ? flags | IFF_UP : flags & ~IFF_UP, true);
    os.ioctl(this.ctl, SIOCSIFFLAGS, req);
  }

  private attr(a: string): string | null {
    try {
      return readFileSync(`/sys/class/net/${this.iface}/${a}`, 'utf8').trim();
    } catch {
      return null;
    }
  }

  /** Driver facts. */
  info(): DevInfo {
    return {
      driverName: 'net_tap', maxRxQueues: this.qpairs, maxTxQueues: this.qpairs, minMtu: 68, maxMtu: 9000,
      minDesc: 1, maxDesc: 65536, capabilities: ['promiscuous', 'multi-queue', 'link-state', 'rx-interrupt'],
    };
  }

  /** The interface's MAC address. */
  macAddr(): number[] {
    const a = this.attr('address');
    return a ? parseMac(a) : [0, 0, 0, 0, 0, 0];
  }

  /** Up while the interface is administratively up. */
  link(): LinkStatus {
    const flags = Number(this.attr('flags') ?? 0);
    return { up: (flags & IFF_UP) !== 0, speedMbps: 10000, fullDuplex: true };
  }

  protected override onConfigure(conf: PortConf): void {
    if (conf.rxQueues !== conf.txQueues) throw new RangeError(`port ${this.port} (${this.name}): TAP queues come in pairs: ${conf.rxQueues} RX, ${conf.txQueues} TX`);
    if (conf.mtu !== undefined) {
      const req = ifreq(this.iface);
      new DataView(req.buffer).setInt32(IFNAMSIZ, conf.mtu, true);
      os.ioctl(this.ctl, SIOCSIFMTU, req);
    }
  }

  protected override onStart(): void {
    this.setUp(true);
  }

  protected override onStop(): void {
    this.setUp(false);
  }

  protected override onClose(): void {
    for (const fd of this.fds) os.close(fd);
    this.fds = [];
    if (this.ctl >= 0) os.close(this.ctl);
    this.ctl = -1;
  }

  protected dataModule(): string {
    return DATA;
  }

  protected rxqData(q: number): TapQueueData {
    return { fd: this.fds[q], intr: this.configuration?.intr?.rxq === true };
  }

  protected txqData(q: number): TapQueueData {
    return { fd: this.fds[q] };
  }
}

registerVdevDriver({
  name: 'net_tap',
  rxInterrupt: true,
  description: 'a TAP interface created by the port',
  schema: {
    iface: { kind: 'string', placeholder: 'IFNAME', pattern: /^[A-Za-z0-9_.-]{1,15}$/, allowed: '1-15 characters from A-Z a-z 0-9 _ . -', help: 'interface name (default dtapN)' },
    mac: { kind: 'mac', help: 'MAC address (default random)' },
    qpairs: { kind: 'int', min: 1, max: 16, default: 1, help: 'queue pairs' },
  },
  probe: (name, args) => {
    const iface = args.iface ?? `dtap${name.replace(/^\D+/, '')}`;
    return new TapPort(name, iface, args.qpairs, args.mac ?? null);
  },
});
