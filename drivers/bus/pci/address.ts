/**
 * Device addresses on the command line: PCI addresses (DDDD:BB:DD.F, or BB:DD.F in domain 0) and
 * mdev UUIDs, as -a/--allow and -b/--block take them (optionally followed by ",key=value" device
 * arguments, which are kept for the driver).
 */
import { resolve } from 'node:path';
import { UsageError } from '../../../src/options.js';
import { splitDevargs } from '../../../lib/kvargs/kvargs.js';

/** A PCI address split into its parts. */
export interface PciAddress {
  domain: number;
  bus: number;
  device: number;
  function: number;
}

const BDF_RE = /^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;
const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** Parse "0000:01:00.0" or "01:00.0"; null when s is not a PCI address. */
export function parsePciAddress(s: string): PciAddress | null {
  const m = BDF_RE.exec(s);
  if (!m) return null;
  const a = { domain: parseInt(m[1] ?? '0', 16), bus: parseInt(m[2], 16), device: parseInt(m[3], 16), function: Number(m[4]) };
  return a.device > 0x1f ? null : a;
}

/** The canonical form "0000:01:00.0" (lower case, 4-digit domain). */
export function formatPciAddress(a: PciAddress): string {
  const h = (n: number, w: number) => n.toString(16).padStart(w, '0');
  return `${h(a.domain, 4)}:${h(a.bus, 2)}:${h(a.device, 2)}.${a.function}`;
}

/** Whether s is an mdev UUID. */
export function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}

/** The prefix of a vfio-user device's name: "vfio-user:" and the server's socket path. */
export const VFIO_USER_PREFIX = 'vfio-user:';

/**
 * A device name in canonical form: a PCI address as DDDD:BB:DD.F, a UUID in lower case, or
 * vfio-user:<absolute socket path>; null if none of these.
 */
export function canonicalDeviceName(s: string): string | null {
  if (s.startsWith(VFIO_USER_PREFIX) && s.length > VFIO_USER_PREFIX.length) return VFIO_USER_PREFIX + resolve(s.slice(VFIO_USER_PREFIX.length));
  const a = parsePciAddress(s);
  if (a) return formatPciAddress(a);
  return isUuid(s) ? s.toLowerCase() : null;
}

/** One -a/-b entry: the device and its driver arguments. */
export interface DeviceSpec {
  /** canonical PCI address or UUID */
  name: string;
  /** key=value arguments after the address */
  args: Record<string, string>;
}

/** Parse an -a/-b entry ("0000:01:00.0,rxq=2"); throws UsageError naming the option; the driver checks the args against its schema. */
export function parseDeviceSpec(option: string, s: string): DeviceSpec {
  const { name: addr, raw } = splitDevargs(s, option);
  const name = canonicalDeviceName(addr);
  if (name === null) {
    throw new UsageError(`${option} "${s}": "${addr}" is neither a PCI address (DDDD:BB:DD.F or BB:DD.F, e.g. 0000:01:00.0), an mdev UUID, nor vfio-user:SOCKET`);
  }
  return { name, args: raw };
}

/** The allow and block lists of the EAL options, parsed once. */
export class DeviceFilter {
  readonly allow: ReadonlyMap<string, DeviceSpec>;
  readonly block: ReadonlySet<string>;

  /** Parse -a and -b entries; they exclude each other, as in DPDK. */
  constructor(allow: readonly string[], block: readonly string[]) {
    if (allow.length > 0 && block.length > 0) {
      throw new UsageError('-a/--allow and -b/--block exclude each other: list the devices to use with -a, or the ones to leave alone with -b');
    }
    this.allow = new Map(allow.map((s) => parseDeviceSpec('-a', s)).map((d) => [d.name, d]));
    this.block = new Set(block.map((s) => parseDeviceSpec('-b', s).name));
  }

  /** Why the lists exclude the device (its canonical name), or null when it may be used. */
  skipReason(name: string): string | null {
    if (this.block.has(name)) return 'blocked by -b';
    if (this.allow.size > 0 && !this.allow.has(name)) return 'not in -a';
    return null;
  }

  /** Driver arguments given with -a for the device. */
  args(name: string): Record<string, string> {
    return this.allow.get(name)?.args ?? {};
  }
}
