/** What the DPDK-beside benchmarks (hash, ring) share: their options and the load averages. */
import { loadavg } from 'node:os';

/** The three load averages now, to two decimals. */
export function loadAvg(): number[] {
  return loadavg().map((x) => Number(x.toFixed(2)));
}

/** The options --quick, --rounds N, --no-dpdk (and where allowed --no-tspmd), parsed. */
export interface RoundsOptions {
  quick: boolean;
  rounds: number;
  withDpdk: boolean;
  withTspmd: boolean;
}

/**
 * Parse a benchmark's --quick, --rounds N (1 to maxRounds; default quickRounds with --quick, else
 * rounds), --no-dpdk and, with d.noTspmd, --no-tspmd; null after printing help for --help or -h.
 * Throws naming an unknown option.
 */
export function roundsOptions(bench: string, args: string[], help: string, d: { rounds: number; quickRounds: number; maxRounds: number; noTspmd?: boolean }): RoundsOptions | null {
  if (args.includes('--help') || args.includes('-h')) {
    console.log(help);
    return null;
  }
  const known = new Set(['--quick', '--rounds', '--no-dpdk', ...(d.noTspmd ? ['--no-tspmd'] : [])]);
  const bad = args.find((a, i) => !known.has(a) && args[i - 1] !== '--rounds');
  if (bad !== undefined) throw new Error(`${bench} benchmark: unknown option "${bad}"\n${help}`);
  const quick = args.includes('--quick');
  const ri = args.indexOf('--rounds');
  const rounds = ri >= 0 ? Number(args[ri + 1]) : quick ? d.quickRounds : d.rounds;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > d.maxRounds) throw new Error(`--rounds takes a whole number from 1 to ${d.maxRounds}, not "${args[ri + 1]}"`);
  const o = { quick, rounds, withDpdk: !args.includes('--no-dpdk'), withTspmd: !args.includes('--no-tspmd') };
  if (!o.withDpdk && !o.withTspmd) throw new Error(`${bench} benchmark: --no-dpdk and --no-tspmd leave nothing to measure`);
  return o;
}
