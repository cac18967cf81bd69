/**
 * A client of a tspmd (or DPDK) telemetry v2 socket: SEQPACKET, non-blocking and polled, so it
 * never blocks the event loop, even one that serves the socket in the same process.
 */
import * as os from '../../src/os/libc.js';

/** A connection to a telemetry socket; the server's greeting is the first message recv() returns. */
export class TelemetryClient {
  readonly fd: number;
  /** Connect to the socket at path; throws (and leaves no fd open) when nothing listens there. */
  constructor(readonly path: string) {
    this.fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET | os.SOCK_NONBLOCK, 0);
    try {
      os.connect(this.fd, os.sockaddrUn(path), path);
    } catch (e) {
      os.close(this.fd);
      throw e;
    }
  }

  /** The next message as text, or null when the server closed the connection; throws after timeoutMs. */
  async recv(timeoutMs = 10_000): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = os.recvmsg(this.fd, 65536, os.MSG_DONTWAIT);
      if (m) return m.data.length === 0 ? null : Buffer.from(m.data).toString('utf8');
      if (Date.now() > deadline) throw new Error(`telemetry ${this.path}: no message within ${timeoutMs} ms`);
      await os.pollAsync([this.fd], os.POLLIN, 100);
    }
  }

  /** Send a request ("/cmd,params") and return its reply as text; null when the server closed the connection. */
  async request(req: string, timeoutMs = 10_000): Promise<string | null> {
    const b = Buffer.from(req);
    os.send(this.fd, b, b.length, os.MSG_NOSIGNAL);
    return await this.recv(timeoutMs);
  }

  /** Send a request and parse its reply ({ "/cmd": value }); null when the server closed the connection. */
  async ask(req: string): Promise<Record<string, unknown> | null> {
    const r = await this.request(req);
    return r === null ? null : JSON.parse(r) as Record<string, unknown>;
  }

  /** Close the connection (again: nothing). */
  close(): void {
    try { os.close(this.fd); } catch { /* closed */ }
  }
}

/** One request on a fresh connection (greeting skipped); null when no server listens at path. */
export async function telemetryAsk(path: string, req: string): Promise<Record<string, unknown> | null> {
  let c: TelemetryClient;
  try { c = new TelemetryClient(path); } catch { return null; }
  try {
    await c.recv();
    return await c.ask(req);
  } finally {
    c.close();
  }
}
