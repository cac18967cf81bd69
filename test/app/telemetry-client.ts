/**
 * A client of a telemetry v2 socket for tests: SEQPACKET, non-blocking and polled, so it never
 * blocks the event loop a server in the same process runs on.
 */
import * as os from '../../src/os/libc.js';

/** A SEQPACKET client of a telemetry socket (non-blocking, polled). */
export class TelemetryClient {
  readonly fd: number;
  /** Connect to the socket at path (the greeting is the first message recv() returns). */
  constructor(path: string) {
    this.fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET | os.SOCK_NONBLOCK, 0);
    os.connect(this.fd, os.sockaddrUn(path), path);
  }
  /** The next message as text, or null when the server closed the connection. */
  async recv(timeoutMs = 10_000): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = os.recvmsg(this.fd, 65536, os.MSG_DONTWAIT);
      if (m) return m.data.length === 0 ? null : Buffer.from(m.data).toString('utf8');
      if (Date.now() > deadline) throw new Error(`no message within ${timeoutMs} ms`);
      await os.pollAsync([this.fd], os.POLLIN, 100);
    }
  }
  /** Send a request ("/cmd,params") and parse its reply ({ "/cmd": value }); null when the server closed the connection. */
  async ask(req: string): Promise<Record<string, unknown> | null> {
    const b = Buffer.from(req);
    os.send(this.fd, b, b.length, os.MSG_NOSIGNAL);
    const r = await this.recv();
    return r === null ? null : JSON.parse(r) as Record<string, unknown>;
  }
  /** Close the connection (again: nothing). */
  close(): void {
    try { os.close(this.fd); } catch { /* closed */ }
  }
}
