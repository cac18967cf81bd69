/**
 * Telemetry for an app's EAL, as runApp sets it up: the DPDK telemetry v2 socket (unless
 * --no-telemetry) and the Prometheus server (with --metrics-port), both closed when the EAL
 * closes (eal.close(), which runApp and the SIGINT/SIGTERM path call).
 */
import type { Eal } from '../../src/eal.js';
import { TelemetryServer } from './server.js';
import { MetricsServer } from './metrics.js';
import { registerEalCommands, registerEthdevCommands } from './commands.js';

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
 * eal.close() stop them. Throws (after stopping whatever it started) naming what failed and how
 * to fix it.
 */
export async function startTelemetry(eal: Eal, args: TelemetryArgs): Promise<TelemetryServices> {
  const o = eal.options;
  let telemetry: TelemetryServer | null = null;
  let metrics: MetricsServer | null = null;
  if (!o.noTelemetry) {
    telemetry = new TelemetryServer({ filePrefix: o.filePrefix });
    registerEthdevCommands(telemetry);
    registerEalCommands(telemetry, { params: [args.prog, ...args.ealArgs], appParams: [args.prog, ...args.appArgs], lcores: eal.lcores });
    telemetry.start();
    const t = telemetry;
    eal.onClose(() => t.close());
  }
  if (o.metricsPort !== null) {
    metrics = new MetricsServer(o.metricsHost, o.metricsPort);
    await metrics.start(); // a failure here leaves the socket to eal.close(), which the caller runs
    const m = metrics;
    eal.onClose(() => m.close());
  }
  return { telemetry, metrics };
}
