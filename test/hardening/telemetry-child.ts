/**
 * A telemetry server in a process of its own, for test/hardening/telemetry.test.ts: started as
 * another user (setpriv), under a lower fd limit (prlimit), or both. It does what an app's start-up
 * does for telemetry (a TelemetryServer for --file-prefix PREFIX in the runtime directory of its
 * user, or in DIR), prints one JSON line ({"ready": true, "path", "pid"} or {"error": message},
 * then exit 1), and takes commands on stdin, one per line, each answered with one JSON line:
 *   fill   open /dev/null until the fd table is full (EMFILE): what a flood of metrics
 *          connections does to the app; {"filled": n}
 *   free   close those again; {"freed": n}
 *   stats  {"stats": the server's counters, "clients": connections open, "fds": fds open}
 * End of stdin closes the server and exits 0.
 *
 * argv[2]: JSON {"prefix": P, "dir"?: D, "maxClients"?: N, "idleTimeoutMs"?: N}
 */
import { readdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import * as os from '../../src/os/libc.js';
import { TelemetryServer, type TelemetryOptions } from '../../lib/telemetry/server.js';

const args = JSON.parse(process.argv[2] ?? '{}') as { prefix: string; dir?: string; maxClients?: number; idleTimeoutMs?: number };
const say = (v: unknown): void => { process.stdout.write(`${JSON.stringify(v)}\n`); };

const opts: TelemetryOptions & { idleTimeoutMs?: number } = { filePrefix: args.prefix, dir: args.dir, maxClients: args.maxClients, idleTimeoutMs: args.idleTimeoutMs };
const server = new TelemetryServer(opts);
try {
  server.start();
} catch (e) {
  say({ error: (e as Error).message });
  process.exit(1);
}
say({ ready: true, path: server.path, pid: process.pid });

/** Open fds (-1 while the table is full: listing /proc/self/fd needs one). */
function fdCount(): number {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return -1;
  }
}

const filler: number[] = [];
const lines = createInterface({ input: process.stdin });
lines.on('line', (cmd) => {
  switch (cmd.trim()) {
    case 'fill':
      for (;;) {
        try {
          filler.push(os.open('/dev/null', os.O_RDONLY | os.O_CLOEXEC));
        } catch {
          break; // EMFILE: the table is full
        }
      }
      say({ filled: filler.length });
      break;
    case 'free': {
      const n = filler.length;
      for (const fd of filler.splice(0)) os.close(fd);
      say({ freed: n });
      break;
    }
    case 'stats':
      say({ stats: server.stats, clients: server.clientCount, fds: fdCount() });
      break;
    default:
      say({ unknown: cmd });
  }
});
lines.on('close', () => {
  for (const fd of filler.splice(0)) os.close(fd);
  void server.close().then(() => process.exit(0));
});
