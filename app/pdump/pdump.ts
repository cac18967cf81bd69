/**
 * `tspmd pdump --file-prefix P --port N [--queue Q|'*'] [--dir rx|tx|both] --out FILE [--duration S]`:
 * capture a running tspmd app's port traffic into a pcap file without stopping it (DPDK's
 * dpdk-pdump). It finds the app through its telemetry socket (<run dir>/dpdk/P/dpdk_telemetry.v2
 * greets with the app's pid; or --pid), follows it only when the kernel says (SO_PEERCRED) that
 * the process serving it is the one it names and runs as the caller's uid or root, maps the app's
 * capture region (lib/pdump: a memfd reached
 * through /proc/PID/fd, which every app of the app framework sets up), switches the capture on for
 * that port's queues, drains their rings into FILE (classic pcap, nanosecond timestamps) every few
 * milliseconds, and switches it off after --duration seconds or at SIGINT/SIGTERM. The app's
 * lcores do the copying; while nobody captures they test one word per burst.
 */
import { join } from 'node:path';
import { eachOption, intOption, numberOption, type App } from '../../lib/app/app.js';
import { UsageError } from '../../src/options.js';
import * as os from '../../src/os/libc.js';
import { peerCred } from '../../src/os/peercred.js';
import { runtimeDir, TELEMETRY_SOCKET } from '../../lib/telemetry/server.js';
import { capture, type CaptureOptions } from '../../lib/pdump/capture.js';
import { CAPTURE_MAX_PORTS, CAPTURE_MAX_QUEUES } from '../../lib/pdump/region.js';

/** pdump's options: what to capture, and the app's pid when given (else asked from its telemetry socket). */
export interface PdumpOptions extends CaptureOptions {
  pid: number | null;
}

/**
 * The pid of the app serving the telemetry socket of filePrefix: the process the kernel names as
 * the socket's peer (SO_PEERCRED), which must run as the caller's uid or root and be the pid its
 * v2 greeting names; anything else (a socket another user or another process planted) is refused.
 */
export function appPid(filePrefix: string): number {
  return socketPeerApp(join(runtimeDir(filePrefix), TELEMETRY_SOCKET), filePrefix);
}

/** appPid for the socket at path (filePrefix only for messages). */
export function socketPeerApp(path: string, filePrefix: string): number {
  const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET, 0);
  try {
    try {
      os.connect(fd, os.sockaddrUn(path), path);
    } catch (e) {
      throw new Error(`no tspmd app answers on ${path} (${(e as Error).message}): start the app with --file-prefix ${filePrefix} (and telemetry on), or give its --pid`);
    }
    const peer = peerCred(fd);
    const me = process.geteuid?.() ?? 0;
    if (peer.uid !== me && peer.uid !== 0) {
      throw new Error(`${path} is served by uid ${peer.uid} (pid ${peer.pid}), not by you (uid ${me})${me === 0 ? '' : ' or root'}: refusing to follow it; another user may hold the run directory (start the app with XDG_RUNTIME_DIR set or another --file-prefix), or give the app's --pid`);
    }
    if (os.pollOne(fd, os.POLLIN, 3000) === 0) throw new Error(`${path}: no greeting within 3 s`);
    const m = os.recvmsg(fd, 16384);
    if (m === null || m.data.length === 0) throw new Error(`${path}: the app closed the connection without a greeting (its telemetry may have too many clients): try again`);
    let pid: unknown;
    try {
      pid = (JSON.parse(Buffer.from(m.data).toString('utf8')) as { pid?: unknown } | null)?.pid;
    } catch {
      throw new Error(`${path}: the greeting is not JSON: is this a tspmd or DPDK telemetry v2 socket?`);
    }
    if (typeof pid !== 'number') throw new Error(`${path}: the greeting has no pid`);
    if (pid !== peer.pid) throw new Error(`${path}: the greeting names pid ${pid} but the socket is served by pid ${peer.pid}; refusing to capture a process other than the one answering`);
    return peer.pid;
  } finally {
    os.close(fd);
  }
}

/** The pdump app (tspmd pdump). */
export const pdump: App<PdumpOptions> = {
  name: 'pdump',
  summary: 'Capture a running app\'s port traffic into a pcap file, as DPDK\'s dpdk-pdump.',
  help: `  --port N            port to capture (required)
  --queue Q|*         queue number, or * for all (default *)
  --dir rx|tx|both    direction (default both)
  --out FILE          pcap file to write (required; nanosecond timestamps)
  --duration SEC      stop after SEC seconds (default: at SIGINT/SIGTERM)
  --count N           stop after N packets are written (default 0: no limit)
  --snaplen N         bytes kept of each frame (default 65535)
  --pid PID           the app's pid (default: asked from its telemetry socket, by --file-prefix)`,
  ownFlags: { '--port': true, '--queue': true, '--dir': true, '--out': true, '--duration': true, '--count': true, '--snaplen': true, '--pid': true },
  ealDefaults: { noHuge: true, noTelemetry: true },
  parse(args) {
    const o: PdumpOptions = { port: -1, queue: -1, dir: 'both', out: '', durationS: 0, count: 0, pid: null, snaplen: 65535 };
    eachOption(args, (flag, value) => {
      switch (flag) {
        case '--port': o.port = intOption('--port', value(), 0, CAPTURE_MAX_PORTS - 1); break;
        case '--queue': {
          const q = value();
          o.queue = q === '*' ? -1 : intOption('--queue', q, 0, CAPTURE_MAX_QUEUES - 1);
          break;
        }
        case '--dir': {
          const d = value();
          if (d !== 'rx' && d !== 'tx' && d !== 'both') throw new UsageError(`--dir ${d}: expected rx, tx or both`);
          o.dir = d;
          break;
        }
        case '--out': o.out = value(); break;
        case '--duration': o.durationS = numberOption('--duration', value(), 0, 1e7); break;
        case '--count': o.count = intOption('--count', value(), 0, Number.MAX_SAFE_INTEGER); break;
        case '--snaplen': o.snaplen = intOption('--snaplen', value(), 64, 65535); break;
        case '--pid': o.pid = intOption('--pid', value(), 1, 1 << 30); break;
        default: throw new UsageError(`unknown pdump option "${flag}" (see --help)`);
      }
    });
    if (o.port < 0) throw new UsageError('pdump needs --port N: the port to capture');
    if (!o.out) throw new UsageError('pdump needs --out FILE: where to write the capture');
    return o;
  },
  async main(eal, o) {
    let stopNow: () => void = () => {};
    const stop = new Promise<void>((r) => { stopNow = r; });
    eal.handleSignals(() => stopNow());
    try {
      const pid = o.pid ?? appPid(eal.options.filePrefix);
      const r = await capture(o, pid, stop, (l) => console.log(l));
      console.log(`pdump: ${r.packets} packets written to ${r.out}${r.drops ? `, ${r.drops} dropped (the capture ring was full)` : ''}`);
      return 0;
    } catch (e) {
      // The errors pdump expects (no app, a refused peer or region, a bad record, a failed call)
      // are one line saying what is wrong; anything else (a bug) keeps its stack.
      if (!(e instanceof os.OsError) && !(e instanceof Error && e.name === 'Error')) throw e;
      console.error(`tspmd pdump: ${e.message}`);
      return 1;
    }
  },
};
