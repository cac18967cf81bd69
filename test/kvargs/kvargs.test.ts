/**
 * lib/kvargs: `name,key=value,...` parsed against a driver's schema (each key kind, defaults, the
 * one error format), and the EAL option table of src/options.ts that makes parseEalArgs and --help.
 */
import t, { type Test } from 'tap';
import {
  parseDevargs, splitDevargs, checkDevargs, devargsError, devargsHelp, type DevargsSchema, type Devargs,
} from '../../lib/kvargs/kvargs.js';
import { EAL_OPTIONS, EAL_HELP, EAL_VALUE_OPTIONS, ealOptionKey, parseEalArgs, defaultEalOptions, UsageError } from '../../src/options.js';

const SCHEMA = {
  size: { kind: 'int', min: 14, max: 9000, default: 64, help: 'packet size in bytes' },
  ring: { kind: 'pow2', min: 2, max: 4096, help: 'ring entries' },
  copy: { kind: 'bool', default: false, help: 'copy the bytes' },
  mac: { kind: 'mac', unicast: true, help: 'the MAC address' },
  anymac: { kind: 'mac', default: [1, 0, 0x5e, 0, 0, 1], help: 'any MAC address' },
  iface: { kind: 'string', required: true, placeholder: 'IFNAME', pattern: /^[a-z0-9]+$/, maxLength: 8, help: 'interface name' },
  label: { kind: 'string', default: 'x', help: 'free text' },
  mode: { kind: 'enum', values: ['hash', 'lb', 'cpu'], default: 'hash', help: 'fanout mode' },
} as const satisfies DevargsSchema;

const CTX = { option: '--vdev', driver: 'net_test' };
const parse = (spec: string) => parseDevargs(spec, SCHEMA, CTX);
/** The UsageError a spec gets, with its exact message. */
const fails = (t: Test, spec: string, message: string) => t.throws(() => parse(spec), { name: 'UsageError', message }, spec);

// the result is typed from the schema: these lines only compile if it is
const typed: Devargs<typeof SCHEMA> = parse('t0,iface=eth0').args;
const n: number = typed.size;
const r: number | undefined = typed.ring;
const b: boolean = typed.copy;
const m: number[] | undefined = typed.mac;
const s: string = typed.iface;
const e: 'hash' | 'lb' | 'cpu' = typed.mode;
void [n, r, b, m, s, e];

t.test('defaults, and keys without a default are undefined', async (t) => {
  const { name, args } = parse('t0,iface=eth0');
  t.equal(name, 't0');
  t.same(args, { size: 64, ring: undefined, copy: false, mac: undefined, anymac: [1, 0, 0x5e, 0, 0, 1], iface: 'eth0', label: 'x', mode: 'hash' });
  t.not(parse('t0,iface=eth0').args.anymac, args.anymac, 'a default array is never shared');
});

t.test('int: whole numbers in range', async (t) => {
  t.equal(parse('t0,iface=a,size=14').args.size, 14);
  t.equal(parse('t0,iface=a,size=9000').args.size, 9000);
  for (const v of ['13', '9001', '-1', '1.5', '0x40', '', ' 64', '1e3', '99999999999999999999']) {
    fails(t, `t0,iface=a,size=${v}`, `--vdev "t0,iface=a,size=${v}": size=${v} must be a whole number from 14 to 9000`);
  }
});

t.test('pow2: powers of two in range', async (t) => {
  for (const v of [2, 4, 1024, 4096]) t.equal(parse(`t0,iface=a,ring=${v}`).args.ring, v);
  for (const v of ['0', '1', '3', '1000', '8192', 'x']) {
    fails(t, `t0,iface=a,ring=${v}`, `--vdev "t0,iface=a,ring=${v}": ring=${v} must be a power of two from 2 to 4096`);
  }
});

t.test('bool: 0 or 1', async (t) => {
  t.equal(parse('t0,iface=a,copy=1').args.copy, true);
  t.equal(parse('t0,iface=a,copy=0').args.copy, false);
  for (const v of ['yes', 'true', '2', '']) fails(t, `t0,iface=a,copy=${v}`, `--vdev "t0,iface=a,copy=${v}": copy=${v} must be 0 or 1`);
  fails(t, 't0,iface=a,copy', '--vdev "t0,iface=a,copy": copy= must be 0 or 1');
});

t.test('mac: six hex bytes; unicast refuses multicast', async (t) => {
  t.same(parse('t0,iface=a,mac=02:00:00:00:00:0A').args.mac, [2, 0, 0, 0, 0, 10]);
  t.same(parse('t0,iface=a,mac=02-00-00-00-00-0b').args.mac, [2, 0, 0, 0, 0, 11], 'dashes, as parseMac takes them');
  t.same(parse('t0,iface=a,anymac=ff:ff:ff:ff:ff:ff').args.anymac, [255, 255, 255, 255, 255, 255], 'multicast where allowed');
  fails(t, 't0,iface=a,mac=01:00:5e:00:00:01', '--vdev "t0,iface=a,mac=01:00:5e:00:00:01": mac=01:00:5e:00:00:01 must be a unicast MAC address like 02:00:00:00:00:01');
  fails(t, 't0,iface=a,anymac=zz', '--vdev "t0,iface=a,anymac=zz": anymac=zz must be a MAC address like 02:00:00:00:00:01');
  fails(t, 't0,iface=a,mac=02:00:00:00:00', '--vdev "t0,iface=a,mac=02:00:00:00:00": mac=02:00:00:00:00 must be a unicast MAC address like 02:00:00:00:00:01');
});

t.test('string: pattern and length; a value may contain "="', async (t) => {
  t.equal(parse('t0,iface=eth0').args.iface, 'eth0');
  t.equal(parse('t0,iface=a,label=a=b c').args.label, 'a=b c');
  fails(t, 't0,iface=ETH0', `--vdev "t0,iface=ETH0": iface=ETH0 must be text matching ${String(/^[a-z0-9]+$/)} of at most 8 characters`);
  fails(t, 't0,iface=abcdefghi', `--vdev "t0,iface=abcdefghi": iface=abcdefghi must be text matching ${String(/^[a-z0-9]+$/)} of at most 8 characters`);
  const words = { name: { kind: 'string', pattern: /^\w{1,3}$/, allowed: '1-3 word characters', help: 'a name' } } as const satisfies DevargsSchema;
  t.throws(() => parseDevargs('d,name=abcd', words, CTX), { message: '--vdev "d,name=abcd": name=abcd must be 1-3 word characters' });
});

t.test('enum: one of the words', async (t) => {
  t.equal(parse('t0,iface=a,mode=cpu').args.mode, 'cpu');
  fails(t, 't0,iface=a,mode=rr', '--vdev "t0,iface=a,mode=rr": mode=rr must be one of hash, lb, cpu');
});

t.test('unknown, repeated, missing keys and empty parts: one format naming the whole spec', async (t) => {
  fails(t, 't0,iface=a,sise=64', '--vdev "t0,iface=a,sise=64": net_test has no key "sise"; valid keys: size (packet size in bytes), ring (ring entries), '
    + 'copy (copy the bytes), mac (the MAC address), anymac (any MAC address), iface (interface name), label (free text), mode (fanout mode)');
  t.throws(() => parseDevargs('d0,x=1', {}, CTX), { message: '--vdev "d0,x=1": net_test has no key "x"; valid keys: none' });
  fails(t, 't0,iface=a,size=64,size=128', '--vdev "t0,iface=a,size=64,size=128": key "size" is given twice (size=64, then size=128); give each key once');
  fails(t, 't0,size=64', '--vdev "t0,size=64": iface=IFNAME is required (interface name)');
  fails(t, 't0', '--vdev "t0": iface=IFNAME is required (interface name)');
  fails(t, 't0,,iface=a', '--vdev "t0,,iface=a": an empty argument (""); write NAME,key=value,key=value');
  fails(t, 't0,iface=a,', '--vdev "t0,iface=a,": an empty argument (""); write NAME,key=value,key=value');
  fails(t, 't0,=1', '--vdev "t0,=1": an empty argument ("=1"); write NAME,key=value,key=value');
  t.equal(parse(' t0 , iface=a').name, 't0', 'the name and keys are trimmed');
  t.equal(parse('t0, iface=a').args.iface, 'a');
});

t.test('split and check apart: the later check still names the whole spec', async (t) => {
  const { name, raw } = splitDevargs('0000:00:03.0,queue=1', '-a');
  t.equal(name, '0000:00:03.0');
  t.same(raw, { queue: '1' });
  t.throws(() => checkDevargs(raw, SCHEMA, { where: '-a 0000:00:03.0', driver: 'net_x' }), { message: /^-a "0000:00:03.0,queue=1": net_x has no key "queue"/ });
  t.throws(() => checkDevargs({ queue: '1' }, SCHEMA, { where: '-a 0000:00:03.0', driver: 'net_x' }), { message: /^-a 0000:00:03.0: net_x has no key "queue"/ },
    'a record not split here: the context names the device');
});

t.test('devargsError: a driver\'s own check in the same format', async (t) => {
  const { args } = parse('t0,iface=a,size=100');
  const err = devargsError(args, 'size', 'must be a multiple of 64');
  t.ok(err instanceof UsageError);
  t.equal(err.message, '--vdev "t0,iface=a,size=100": size=100 must be a multiple of 64');
  t.equal(devargsError(args, 'copy', 'needs size=64').message, '--vdev "t0,iface=a,size=100": copy=0 needs size=64', 'a default is shown as a value');
});

t.test('a bad schema is the driver\'s bug: a plain Error the first time it is used', async (t) => {
  const bad = { n: { kind: 'int', min: 1, max: 4, default: 9, help: 'n' } } as const satisfies DevargsSchema;
  t.throws(() => parseDevargs('d', bad, CTX), { name: 'Error', message: 'devargs schema: the default of "n" (9) is not a whole number from 1 to 4' });
  const both = { n: { kind: 'bool', required: true, default: true, help: 'n' } } as const satisfies DevargsSchema;
  t.throws(() => parseDevargs('d', both, CTX), { message: /is required and has a default/ });
});

t.test('devargsHelp: one line per key, placeholder, rule and default', async (t) => {
  t.equal(devargsHelp(SCHEMA, '    '), [
    '    size=N            packet size in bytes; a whole number from 14 to 9000 (default 64)',
    '    ring=N            ring entries; a power of two from 2 to 4096',
    '    copy=0|1          copy the bytes (default 0)',
    '    mac=MAC           the MAC address',
    '    anymac=MAC        any MAC address (default 01:00:5e:00:00:01)',
    `    iface=IFNAME      interface name; text matching ${String(/^[a-z0-9]+$/)} of at most 8 characters (required)`,
    '    label=TEXT        free text (default x)',
    '    mode=hash|lb|cpu  fanout mode (default hash)',
  ].join('\n'));
});

t.test('EAL_OPTIONS makes EAL_HELP, the value set and the key map', async (t) => {
  const lines = EAL_HELP.split('\n');
  t.equal(lines[0], 'EAL options (before "--"):');
  t.equal(lines.length, EAL_OPTIONS.length + 1, 'one help line per option');
  const seen = new Set<string>();
  for (const [i, o] of EAL_OPTIONS.entries()) {
    const left = `${o.names.join(', ')}${o.value ? ` ${o.value}` : ''}`;
    t.ok(lines[i + 1].startsWith(`  ${left} `), `--help lists ${left}`);
    t.ok(lines[i + 1].endsWith(o.help), `--help explains ${o.names.join(', ')}`);
    t.ok(o.key in defaultEalOptions(), `${o.key} is an EalOptions field`);
    for (const name of o.names) {
      t.notOk(seen.has(name), `${name} is spelled once`);
      seen.add(name);
      t.equal(ealOptionKey(name), o.key);
      t.equal(EAL_VALUE_OPTIONS.has(name), o.value !== null, `${name} ${o.value === null ? 'is a flag' : 'takes a value'}`);
    }
  }
  t.equal(ealOptionKey('--nope'), undefined);
  t.match(EAL_HELP, /\n {2}-l, --lcores LIST {6}lcores to use/, 'the columns of the old help');
});

/** A good value for each value-taking option. */
const SAMPLE: Record<string, string> = {
  lcores: '0-1', mainLcore: '0', memoryMb: '64', hugeDir: '/dev/hugepages', filePrefix: 'tspk', iovaMode: 'pa', vdevs: 'net_null0',
  allow: '0000:00:03.0', block: '0000:00:04.0', sysfsRoot: '/tmp/sys', devRoot: '/tmp/dev', vfioMode: 'group', logLevel: 'debug',
  metricsPort: '9100', metricsHost: '0.0.0.0',
};
/** Options that only make sense with another one. */
const NEEDS: Record<string, string[]> = { metricsHost: ['--metrics-port', '9100'] };

t.test('parseEalArgs accepts every spelling of every option, with its value apart and after "="', async (t) => {
  const base = defaultEalOptions();
  for (const o of EAL_OPTIONS) {
    for (const name of o.names) {
      if (o.value === null) {
        const got = parseEalArgs([name]);
        const undoes = EAL_OPTIONS.find((x) => x !== o && x.key === o.key && x.value === null);
        if (got[o.key] === base[o.key] && undoes) {
          // a flag that restores the default (--telemetry): it undoes the one that changes it
          t.equal(parseEalArgs([undoes.names[0], name])[o.key], base[o.key], `${name} undoes ${undoes.names[0]}`);
        } else {
          t.not(got[o.key], base[o.key], `${name} sets ${o.key}`);
        }
        if (name.startsWith('--')) t.throws(() => parseEalArgs([`${name}=1`]), { message: `${name} takes no value (got "${name}=1")` });
        continue;
      }
      const v = SAMPLE[o.key];
      t.ok(v !== undefined, `a sample value for ${o.key}`);
      const pre = NEEDS[o.key] ?? [];
      const apart = parseEalArgs([...pre, name, v]);
      t.notSame(apart[o.key], base[o.key], `${name} ${v} sets ${o.key}`);
      if (name.startsWith('--')) t.same(parseEalArgs([...pre, `${name}=${v}`])[o.key], apart[o.key], `${name}=${v}`);
      t.throws(() => parseEalArgs([...pre, name]), { name: 'UsageError', message: `${name} needs a value (see --help)` });
    }
  }
  t.throws(() => parseEalArgs(['--lcore', '1']), { message: 'unknown EAL option "--lcore" (application options go after "--"; see --help)' });
});
