/**
 * Reading sysfs: strings, hex and decimal numbers, links and directories under a configurable root
 * (--sysfs-root), so that every bus scan runs unchanged on /sys and on a test's fixture tree.
 * Every error names the path that could not be read or parsed.
 */
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { basename } from 'node:path';

/** A sysfs file or link that is missing, unreadable or malformed; `path` names it. */
export class SysfsError extends Error {
  /** the file or link involved */
  readonly path: string;
  /** An error about path: "sysfs <path>: <what>". */
  constructor(path: string, what: string) {
    super(`sysfs ${path}: ${what}`);
    this.name = 'SysfsError';
    this.path = path;
  }
}

/** Node's fs error text without the repeated path ("ENOENT: no such file or directory"). */
function fsMessage(e: unknown): string {
  return (e as Error).message.replace(/, \w+ '[^']*'(?: -> '[^']*')?$/, '');
}

/** Whether path exists (following links). */
export function exists(path: string): boolean {
  return existsSync(path);
}

/** Whether path is a symbolic link (not followed). */
export function isLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

/** A sysfs attribute's text with trailing whitespace removed; throws SysfsError naming the path. */
export function readString(path: string): string {
  try {
    return readFileSync(path, 'latin1').replace(/\s+$/, '');
  } catch (e) {
    throw new SysfsError(path, `cannot be read: ${fsMessage(e)}`);
  }
}

/** Like readString, but null when the file does not exist (other errors still throw). */
export function readOptionalString(path: string): string | null {
  if (!existsSync(path) && !isLink(path)) return null;
  return readString(path);
}

/** A hex attribute ("0x8086" or "8086"); throws SysfsError naming the path and the text. */
export function readHex(path: string): number {
  const s = readString(path);
  if (!/^(0x)?[0-9a-fA-F]{1,12}$/.test(s)) throw new SysfsError(path, `expected a hex number, found "${s}"`);
  return parseInt(s.replace(/^0x/, ''), 16);
}

/** A decimal attribute (may be negative, e.g. numa_node -1); throws SysfsError naming the path. */
export function readInt(path: string): number {
  const s = readString(path);
  if (!/^-?\d{1,15}$/.test(s)) throw new SysfsError(path, `expected a decimal number, found "${s}"`);
  return Number(s);
}

/** Like readInt, but null when the file does not exist. */
export function readOptionalInt(path: string): number | null {
  return existsSync(path) ? readInt(path) : null;
}

/** The last component of a link's target ("driver" -> "vfio-pci"), or null when there is no link. */
export function readLinkName(path: string): string | null {
  if (!isLink(path)) {
    if (existsSync(path)) throw new SysfsError(path, 'expected a symbolic link, found a file or directory');
    return null;
  }
  try {
    return basename(readlinkSync(path));
  } catch (e) {
    throw new SysfsError(path, `link cannot be read: ${fsMessage(e)}`);
  }
}

/** The absolute path a link (or a path through links) resolves to, or null when it dangles. */
export function resolvePath(path: string): string | null {
  try {
    return realpathSync(path);
  } catch {
    return null;
  }
}

/** Entries of a sysfs directory, sorted; throws SysfsError naming the directory. */
export function listDir(path: string): string[] {
  try {
    return readdirSync(path).sort();
  } catch (e) {
    throw new SysfsError(path, `directory cannot be read: ${fsMessage(e)}`);
  }
}

/** Entries of a directory, or [] when it does not exist. */
export function listOptionalDir(path: string): string[] {
  return existsSync(path) ? listDir(path) : [];
}
