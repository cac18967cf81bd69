/**
 * Telemetry for tspmd apps (docs/telemetry.md): a DPDK telemetry v2 socket server with DPDK's
 * ethdev and EAL commands, and Prometheus metrics over HTTP. runApp starts both for every app.
 */
export { TelemetryServer, runtimeDir, TELEMETRY_SOCKET, MAX_OUTPUT_LEN, type TelemetryOptions, type TelemetryHandler, type TelemetryValue } from './server.js';
export { registerEthdevCommands, registerEalCommands, type EalTelemetryContext } from './commands.js';
export { MetricsServer, renderMetrics, METRICS_DEFAULTS, type MetricsOptions, type MetricsLimits } from './metrics.js';
export { TelemetryClient, telemetryAsk } from './client.js';
export { startTelemetry, telemetryOf, type TelemetryServices, type TelemetryArgs } from './start.js';
