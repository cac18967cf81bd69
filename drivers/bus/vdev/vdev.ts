/**
 * The vdev bus: virtual devices named on the command line, `--vdev name,key=value,...`.
 * A device name is a driver name followed by an instance number (net_null0 -> driver net_null);
 * drivers declare the keys they accept as a devargs schema (lib/kvargs), and anything else is a clear error.
 */
import type { Eal } from '../../../src/eal.js';
import type { EthDev } from '../../../lib/ethdev/ethdev.js';
import { UsageError } from '../../../src/options.js';
import { splitDevargs, checkDevargs, type Devargs, type DevargsSchema } from '../../../lib/kvargs/kvargs.js';

/** A virtual-device driver: its keys (a devargs schema) and how it makes a port from them. */
export interface VdevDriver<S extends DevargsSchema = DevargsSchema> {
  /** e.g. "net_null" */
  name: string;
  /** one-line description for listings */
  description: string;
  /** the keys it accepts (lib/kvargs) */
  schema: S;
  /** its RX queues can give an Rx interrupt (PortConf.intr.rxq): help texts and docs list it from here */
  rxInterrupt?: boolean;
  /** create the port for device `name` with checked, typed args */
  probe(name: string, args: Devargs<S>, eal: Eal): EthDev | Promise<EthDev>;
}

const drivers = new Map<string, VdevDriver>();

/** Make a driver available to --vdev. */
export function registerVdevDriver<const S extends DevargsSchema>(d: VdevDriver<S>): void {
  drivers.set(d.name, d as unknown as VdevDriver);
}

/** Registered vdev drivers, in registration order. */
export function vdevDrivers(): VdevDriver[] {
  return [...drivers.values()];
}

/** A parsed --vdev argument. */
export interface VdevSpec {
  name: string;
  driver: VdevDriver;
  args: Devargs<DevargsSchema>;
}

/** Parse one --vdev argument; throws UsageError naming the driver or key that is wrong. */
export function parseVdev(spec: string): VdevSpec {
  const { name, raw } = splitDevargs(spec, '--vdev');
  const m = /^([a-z_]+?)(\d+)$/.exec(name);
  const driver = m ? drivers.get(m[1]) : undefined;
  if (!m || !driver) {
    const known = [...drivers.keys()].map((n) => `${n}N`).join(', ') || 'none registered';
    throw new UsageError(`--vdev "${spec}": unknown device "${name}"; a device is a driver name plus a number (drivers: ${known})`);
  }
  return { name, driver, args: checkDevargs(raw, driver.schema, { where: `--vdev "${spec}"`, driver: driver.name }) };
}

/** Probe every --vdev of the EAL, in order; ports get ids in that order. */
export async function probeVdevs(eal: Eal, specs: readonly string[] = eal.options.vdevs): Promise<EthDev[]> {
  const parsed = specs.map(parseVdev);
  const seen = new Set<string>();
  for (const p of parsed) {
    if (seen.has(p.name)) throw new UsageError(`--vdev ${p.name} is given twice`);
    seen.add(p.name);
  }
  const out: EthDev[] = [];
  for (const p of parsed) {
    const dev = await p.driver.probe(p.name, p.args, eal);
    eal.onClose(() => dev.close());
    out.push(dev);
  }
  return out;
}
