/**
 * The vdev bus: virtual devices named on the command line, `--vdev name,key=value,...`.
 * A device name is a driver name followed by an instance number (net_null0 -> driver net_null);
 * drivers register the keys they accept, and anything else is a clear error.
 */
import type { Eal } from '../../../src/eal.js';
import type { EthDev } from '../../../lib/ethdev/ethdev.js';
import { UsageError } from '../../../src/options.js';

/** A virtual-device driver. */
export interface VdevDriver {
  /** e.g. "net_null" */
  name: string;
  /** one-line description for listings */
  description: string;
  /** accepted keys and what each means */
  keys: Record<string, string>;
  /** create the port for device `name` with validated args */
  probe(name: string, args: Record<string, string>, eal: Eal): EthDev | Promise<EthDev>;
}

const drivers = new Map<string, VdevDriver>();

/** Make a driver available to --vdev. */
export function registerVdevDriver(d: VdevDriver): void {
  drivers.set(d.name, d);
}

/** Registered drivers, by name. */
export function vdevDrivers(): VdevDriver[] {
  return [...drivers.values()];
}

/** A parsed --vdev argument. */
export interface VdevSpec {
  name: string;
  driver: VdevDriver;
  args: Record<string, string>;
}

/** Parse one --vdev argument; throws UsageError naming the driver or key that is wrong. */
export function parseVdev(spec: string): VdevSpec {
  const [name, ...kvs] = spec.split(',');
  const m = /^([a-z_]+?)(\d+)$/.exec(name);
  const driver = m ? drivers.get(m[1]) : undefined;
  if (!m || !driver) {
    const known = [...drivers.keys()].map((n) => `${n}N`).join(', ') || 'none registered';
    throw new UsageError(`--vdev "${spec}": unknown device "${name}"; a device is a driver name plus a number (drivers: ${known})`);
  }
  const args: Record<string, string> = {};
  for (const kv of kvs) {
    const eq = kv.indexOf('=');
    const key = eq < 0 ? kv : kv.slice(0, eq);
    if (!(key in driver.keys)) {
      const valid = Object.entries(driver.keys).map(([k, d]) => `${k} (${d})`).join(', ') || 'none';
      throw new UsageError(`--vdev "${spec}": ${driver.name} has no key "${key}"; valid keys: ${valid}`);
    }
    if (key in args) throw new UsageError(`--vdev "${spec}": key "${key}" is given twice`);
    args[key] = eq < 0 ? '' : kv.slice(eq + 1);
  }
  return { name, driver, args };
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

/** Read an integer key with bounds; throws UsageError naming device and key. */
export function intArg(dev: string, args: Record<string, string>, key: string, def: number, min: number, max: number): number {
  const v = args[key];
  if (v === undefined) return def;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new UsageError(`--vdev ${dev}: ${key}=${v} must be a whole number from ${min} to ${max}`);
  }
  return Number(v);
}
