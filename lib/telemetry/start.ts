/**
 * Telemetry for an app's EAL, as runApp sets it up: the DPDK telemetry v2 socket (unless
 * --no-telemetry, or when it cannot be served: then one warning) and the Prometheus server (with
 * --metrics-port), both closed when the EAL closes (eal.close(), which runApp and the
 * SIGINT/SIGTERM path call).
 */
import type { Eal } from '../../src/eal.js';
import { TelemetryServer } from './server.js';
import { MetricsServer } from './metrics.js';
import { registerEalCommands, registerEthdevCommands } from './commands.js';
import { log } from '../../src/log.js';

/** The telemetry socket each EAL serves, so an app's main() can add its own commands (l3fwd's routes). */
const servers = new WeakMap<Eal, TelemetryServer>();

/** The telemetry server runApp started for eal, or null (--no-telemetry, or it could not start): apps register their commands on it. */
export function telemetryOf(eal: Eal): TelemetryServer | null {
  return servers.get(eal) ?? null;
}

/** What startTelemetry started (null: turned off). */
export interface TelemetryServices {
  telemetry: TelemetryServer | null;
  metrics: MetricsServer | null;
}

/** The command line, for /eal/params and /eal/app_params. */
export interface TelemetryArgs {
  /** the program's name, first in both lists (e.g. "tspmd l2fwd") */
  prog: string;
  /** EAL arguments (before "--") */
  ealArgs: string[];
  /** application arguments (after "--") */
  appArgs: string[];
}

/**
 * Start the telemetry socket and the metrics server the EAL's options ask for, and have
 * eal.close() stop them. A telemetry socket that cannot be served (its runtime directory is not
 * fit, every socket name is taken) is one warning naming the directory and the fix, and the app
 * runs without it (telemetry null). Throws naming what failed and how to fix it when the metrics
 * server cannot start (leaving what it started to eal.close()).
 */
export async function startTelemetry(eal: Eal, args: TelemetryArgs): Promise<TelemetryServices> {
  const o = eal.options;
  let telemetry: TelemetryServer | null = null;
  let metrics: MetricsServer | null = null;
  if (!o.noTelemetry) {
    const t = new TelemetryServer({ filePrefix: o.filePrefix });
    registerEthdevCommands(t);
    registerEalCommands(t, { params: [args.prog, ...args.ealArgs], appParams: [args.prog, ...args.appArgs], lcores: eal.lcores });
    try {
      t.start();
      telemetry = t;
      servers.set(eal, t);
      eal.onClose(() => { servers.delete(eal); return t.close(); });
    } catch (e) {
      // Unlike DPDK (whose rte_eal_init fails), the app runs: telemetry is a window on it, not a part of it.
      log('warn', 'telemetry', `off for this run: ${(e as Error).message}`);
    }
  }
  if (o.metricsPort !== null) {
    metrics = new MetricsServer(o.metricsHost, o.metricsPort);
    await metrics.start(); // a failure here leaves the socket to eal.close(), which the caller runs
    const m = metrics;
    eal.onClose(() => m.close());
  }
  return { telemetry, metrics };
}
