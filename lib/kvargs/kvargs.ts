/**
 * kvargs: device arguments `name,key=value,...` (DPDK's rte_kvargs), parsed here once for every
 * device kind: --vdev ports, -a PCI and vfio-user devices, `tspmd emu` devices. A driver declares
 * its keys as a schema, plain data (one typed entry per key: a whole number in a range, a power of
 * two, a 0/1 flag, a MAC address, a string, one of a list of words), and gets its arguments back
 * typed from that schema and checked. Every mistake is a UsageError in one format that names the
 * option and the whole device spec as given, then the key, the value and what is allowed:
 *
 *   --vdev "net_ring0,size=1000": size=1000 must be a power of two from 1 to 1048576
 *   --vdev "net_null0,sise=64": net_null has no key "sise"; valid keys: size (...), copy (...)
 */
import { UsageError, wholeNumber } from '../../src/options.js';
import { formatMac, isMulticastMac, parseMac } from '../net/mac.js';

/** What every key declares. */
interface KeyBase {
  /** one line saying what the key means: --help and the unknown-key error list it */
  help: string;
  /** the value's placeholder in help and in the missing-key error (default: by kind, e.g. N, MAC) */
  placeholder?: string;
  /** the key must be given (a required key has no default) */
  required?: boolean;
}

/** A whole number from min to max ("int"), or a power of two from min to max ("pow2"). */
export interface IntDevarg extends KeyBase {
  kind: 'int' | 'pow2';
  min: number;
  max: number;
  default?: number;
}

/** A flag written 0 or 1. */
export interface BoolDevarg extends KeyBase {
  kind: 'bool';
  default?: boolean;
}

/** A MAC address aa:bb:cc:dd:ee:ff (lib/net/mac.ts parseMac); unicast refuses multicast addresses. */
export interface MacDevarg extends KeyBase {
  kind: 'mac';
  unicast?: boolean;
  default?: readonly number[];
}

/** Text, optionally matching a pattern and at most maxLength characters; allowed words the rule for messages. */
export interface StringDevarg extends KeyBase {
  kind: 'string';
  pattern?: RegExp;
  maxLength?: number;
  /** the rule in words for errors, e.g. "1-15 characters from A-Z a-z 0-9 _ . -" (default: from pattern and maxLength) */
  allowed?: string;
  default?: string;
}

/** One word of a list. */
export interface EnumDevarg extends KeyBase {
  kind: 'enum';
  values: readonly string[];
  default?: string;
}

/** One key of a schema: its kind, its rule, its default (or required) and its one-line help. */
export type DevargSpec = IntDevarg | BoolDevarg | MacDevarg | StringDevarg | EnumDevarg;

/** A driver's keys by name; declare it `as const satisfies DevargsSchema` so the parsed args are typed. */
export type DevargsSchema = Readonly<Record<string, DevargSpec>>;

/** The type a key's value parses to. */
type DevargValue<K> =
  K extends { kind: 'int' | 'pow2' } ? number
    : K extends { kind: 'bool' } ? boolean
      : K extends { kind: 'mac' } ? number[]
        : K extends { kind: 'enum'; values: readonly (infer V)[] } ? V
          : string;

/** Whether a key always has a value: it is required or has a default. */
type Always<K> = K extends { required: true } ? true : K extends { default: number | boolean | string | readonly number[] } ? true : false;

/** The parsed arguments of a schema: each key typed by its kind; keys with a default or required are always set. */
export type Devargs<S extends DevargsSchema> = {
  readonly [K in keyof S]: Always<S[K]> extends true ? DevargValue<S[K]> : DevargValue<S[K]> | undefined;
};

/** For messages: where the arguments came from, used when they were not split here (see splitDevargs). */
export interface DevargsContext {
  /** e.g. "-a 0000:00:03.0" or "virtio-net" */
  where: string;
  /** the driver or device kind whose keys these are, e.g. "net_virtio" */
  driver: string;
}

/** Where a raw record (from splitDevargs) or a parsed result (from checkDevargs) came from, for messages. */
interface Origin {
  /** `option "whole spec"` */
  where: string;
  raw: Readonly<Record<string, string>>;
}

/**
 * splitDevargs remembers the spec each raw record came from, so that a check made later and
 * elsewhere (a PCI driver at probe time gets only the record) still names the whole spec as given;
 * checkDevargs does the same for its result, for devargsError.
 */
const origins = new WeakMap<object, Origin>();

const checkedSchemas = new WeakSet<DevargsSchema>();

/**
 * Split "name,key=value,..." into the name and its raw values (a key without "=" has value "");
 * throws UsageError for an empty or repeated key. The record has no prototype: every key given,
 * `__proto__` and `constructor` included, is a plain own entry that a schema check then refuses.
 */
export function splitDevargs(spec: string, option: string): { name: string; raw: Record<string, string> } {
  const where = `${option} "${spec}"`;
  const [name, ...parts] = spec.split(',');
  const raw = Object.create(null) as Record<string, string>;
  for (const part of parts) {
    const eq = part.indexOf('=');
    const key = (eq < 0 ? part : part.slice(0, eq)).trim();
    if (key === '') throw new UsageError(`${where}: an empty argument ("${part}"); write NAME,key=value,key=value`);
    if (Object.hasOwn(raw, key)) throw new UsageError(`${where}: key "${key}" is given twice (${key}=${raw[key]}, then ${part.trim()}); give each key once`);
    raw[key] = eq < 0 ? '' : part.slice(eq + 1);
  }
  origins.set(raw, { where, raw });
  return { name: name.trim(), raw };
}

/** Check raw values against a schema: unknown, missing and bad keys are UsageErrors; returns them typed, defaults filled in. */
export function checkDevargs<const S extends DevargsSchema>(raw: Readonly<Record<string, string>>, schema: S, ctx: DevargsContext): Devargs<S> {
  checkSchema(schema);
  const where = origins.get(raw)?.where ?? ctx.where;
  for (const key of Object.keys(raw)) {
    if (!Object.hasOwn(schema, key)) {
      const valid = Object.entries(schema).map(([k, s]) => `${k} (${s.help})`).join(', ') || 'none';
      throw new UsageError(`${where}: ${ctx.driver} has no key "${key}"; valid keys: ${valid}`);
    }
  }
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(schema)) {
    const text = raw[key];
    if (text === undefined) {
      if (s.required) throw new UsageError(`${where}: ${key}=${placeholder(s)} is required (${s.help})`);
      out[key] = Array.isArray(s.default) ? [...(s.default as readonly number[])] : s.default; // never share a default array
      continue;
    }
    const v = parseValue(s, text);
    if (v === null) throw new UsageError(`${where}: ${key}=${text} must be ${allowed(s)}`);
    out[key] = v;
  }
  origins.set(out, { where, raw });
  return out as Devargs<S>;
}

/** Parse "name,key=value,..." against a schema in one step: the name (as given) and the typed, checked args. */
export function parseDevargs<const S extends DevargsSchema>(spec: string, schema: S, ctx: { option: string; driver: string }): { name: string; args: Devargs<S> } {
  const { name, raw } = splitDevargs(spec, ctx.option);
  return { name, args: checkDevargs(raw, schema, { where: `${ctx.option} "${spec}"`, driver: ctx.driver }) };
}

/** A UsageError in the devargs format for a check a driver makes itself (across keys): "<where>: key=value <problem>". */
export function devargsError(args: object, key: string, problem: string): UsageError {
  const o = origins.get(args);
  const value = o?.raw[key] ?? show((args as Record<string, unknown>)[key]);
  return new UsageError(`${o ? `${o.where}: ` : ''}${key}=${value} ${problem}`);
}

/** A schema as help lines, one per key: "key=PLACEHOLDER  help; the rule (default D)". */
export function devargsHelp(schema: DevargsSchema, indent = '  '): string {
  const rows = Object.entries(schema).map(([k, s]) => {
    const ruled = s.kind === 'int' || s.kind === 'pow2' || (s.kind === 'string' && (s.pattern ?? s.maxLength ?? s.allowed) !== undefined);
    const rule = ruled ? `; ${allowed(s)}` : ''; // a flag's, a MAC's and a word list's rule is in the placeholder
    const def = s.required ? ' (required)' : s.default === undefined ? '' : ` (default ${show(s.default)})`;
    return [`${k}=${placeholder(s)}`, `${s.help}${rule}${def}`];
  });
  const width = Math.max(0, ...rows.map((r) => r[0].length)) + 2;
  return rows.map(([a, b]) => `${indent}${a.padEnd(width)}${b}`).join('\n');
}

function placeholder(s: DevargSpec): string {
  if (s.placeholder !== undefined) return s.placeholder;
  switch (s.kind) {
    case 'int': case 'pow2': return 'N';
    case 'bool': return '0|1';
    case 'mac': return 'MAC';
    case 'string': return 'TEXT';
    case 'enum': return s.values.join('|');
  }
}

/** What a key allows, in words: the end of "key=value must be ...". */
function allowed(s: DevargSpec): string {
  switch (s.kind) {
    case 'int': return `a whole number from ${s.min} to ${s.max}`;
    case 'pow2': return `a power of two from ${s.min} to ${s.max}`;
    case 'bool': return '0 or 1';
    case 'mac': return `a ${s.unicast ? 'unicast ' : ''}MAC address like 02:00:00:00:00:01`;
    case 'enum': return `one of ${s.values.join(', ')}`;
    case 'string': {
      if (s.allowed !== undefined) return s.allowed;
      const rules = [s.pattern ? `text matching ${s.pattern}` : 'text', s.maxLength !== undefined ? `of at most ${s.maxLength} characters` : ''];
      return rules.filter((r) => r !== '').join(' ');
    }
  }
}

/** The value of text for the key, or null when the key does not allow it. */
function parseValue(s: DevargSpec, text: string): number | boolean | number[] | string | null {
  switch (s.kind) {
    case 'int': case 'pow2': {
      const n = wholeNumber(text, s.min, s.max); // the command line's one whole-number parser
      if (n === null) return null;
      return s.kind === 'pow2' && (n === 0 || 2 ** Math.round(Math.log2(n)) !== n) ? null : n;
    }
    case 'bool': return text === '1' ? true : text === '0' ? false : null;
    case 'mac': {
      let mac: number[];
      try {
        mac = parseMac(text);
      } catch {
        return null;
      }
      return s.unicast && isMulticastMac(mac) ? null : mac;
    }
    case 'enum': return s.values.includes(text) ? text : null;
    case 'string': {
      if (s.pattern && !s.pattern.test(text)) return null;
      return s.maxLength !== undefined && text.length > s.maxLength ? null : text;
    }
  }
}

function show(v: unknown): string {
  if (Array.isArray(v)) return formatMac(v as number[]);
  if (typeof v === 'boolean') return v ? '1' : '0';
  return String(v);
}

/** A schema's own mistakes are the driver's bug, found the first time it is used: a bad default, a required key with a default. */
function checkSchema(schema: DevargsSchema): void {
  if (checkedSchemas.has(schema)) return;
  for (const [key, s] of Object.entries(schema)) {
    if (!/^[A-Za-z0-9_][A-Za-z0-9_-]*$/.test(key)) throw new Error(`devargs schema: key "${key}" must be letters, digits, _ and - (as DPDK's no-rx), not starting with -`);
    if (key in Object.prototype) throw new Error(`devargs schema: key "${key}" is a name of Object.prototype; choose another`);
    if (s.required && s.default !== undefined) throw new Error(`devargs schema: key "${key}" is required and has a default`);
    if (s.default !== undefined && parseValue(s, show(s.default)) === null) throw new Error(`devargs schema: the default of "${key}" (${show(s.default)}) is not ${allowed(s)}`);
  }
  checkedSchemas.add(schema);
}
