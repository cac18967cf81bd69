/**
 * Logging for the EAL, drivers and apps: one line per message, "tspmd: <level>: <component>: text",
 * on stderr so that stdout stays for an app's own output (tables, JSON).
 */
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
let current: LogLevel = (process.env.TSPMD_LOG_LEVEL as LogLevel | undefined) ?? 'warn';

/** Set the lowest level that is printed. */
export function setLogLevel(level: string): void {
  if (!(level in ORDER)) throw new Error(`unknown log level "${level}": use one of ${Object.keys(ORDER).join(', ')}`);
  current = level as LogLevel;
}

/** The current log level. */
export function logLevel(): LogLevel {
  return current;
}

/** Print one log line for component at level (if enabled). */
export function log(level: LogLevel, component: string, msg: string): void {
  if (ORDER[level] <= ORDER[current]) process.stderr.write(`tspmd: ${level}: ${component}: ${msg}\n`);
}
