/** Command-line arguments of the lab's guest programs (guest.ts, igb-guest.ts): `--name value` pairs. */
const argv = process.argv.slice(2);

/** The value after `name` on the command line, or def. */
export function guestArg(name: string, def: string): string {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : def;
}
