/**
 * A telemetry server that speaks DPDK's telemetry v2 protocol, so DPDK's own client
 * (`dpdk-telemetry.py -f PREFIX`) and other v2 clients read a running tspmd app.
 *
 * The protocol: a unix SOCK_SEQPACKET socket at <runtime dir>/dpdk_telemetry.v2 (runtime dir
 * /var/run/dpdk/<file-prefix> for root). On connect the server sends one message, a JSON greeting
 * {"version", "pid", "max_output_len"}; then each client message is one request, "/command" or
 * "/command,params", and each gets exactly one reply message, the JSON object {"/command": value}
 * (value null for an unknown command or bad parameters). No reply is longer than max_output_len.
 * A second process on the same prefix gets the next free instance, dpdk_telemetry.v2:1 and so on
 * (clients: -i 1), as DPDK 22.11 does; a socket file left by a killed process is replaced.
 *
 * Everything runs on the main thread: the sockets are non-blocking, one poll(2) on a libuv pool
 * thread (os.pollAsync, in slices of half a second) waits for connections and requests, and
 * close() wakes it with an eventfd.
 * The data path never sees any of it: handlers read the counters the lcores share.
 */
import { chmodSync, lstatSync, mkdirSync, readFileSync, rmdirSync, unlinkSync, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';
import * as os from '../../src/os/libc.js';
import { log } from '../../src/log.js';

/** A JSON value a command returns (what DPDK's rte_tel_data can hold, and a bit more). */
export type TelemetryValue = string | number | boolean | null | TelemetryValue[] | { [key: string]: TelemetryValue };

/** A command's handler: params is the text after the first comma (null when there is none); null means "no answer" (bad params). */
export type TelemetryHandler = (params: string | null, cmd: string) => TelemetryValue;

/** How to start a TelemetryServer. */
export interface TelemetryOptions {
  /** the EAL's --file-prefix: names the runtime directory */
  filePrefix: string;
  /** the socket's directory (default: runtimeDir(filePrefix)) */
  dir?: string;
  /** the "version" of the greeting and /info (default: "tspmd <package version>") */
  version?: string;
  /** connections served at once; more are accepted and closed at once, as DPDK does (default 8) */
  maxClients?: number;
}

/** The socket's name in the runtime directory (DPDK's, so its clients find it). */
export const TELEMETRY_SOCKET = 'dpdk_telemetry.v2';
/** The longest reply (DPDK's MAX_OUTPUT_LEN): clients read replies with a buffer of this size. */
export const MAX_OUTPUT_LEN = 16384;
/** The longest command name, as in DPDK (MAX_CMD_LEN, terminator included). */
export const MAX_CMD_LEN = 56;
/** The longest request read; the rest of a longer message is discarded (DPDK reads 1023 bytes). */
const MAX_REQUEST = 1024;
/** Requests handled per client per wake-up, so one busy client cannot hold the main thread. */
const BATCH = 16;
/** Longest wait in one poll(2) before the loop polls again (an idle server wakes twice a second). */
const POLL_SLICE_MS = 500;
/** Instances tried on one prefix (dpdk_telemetry.v2, :1, :2, ...). */
const MAX_INSTANCES = 64;

/**
 * DPDK's runtime directory for a file prefix, as DPDK's EAL and dpdk-telemetry.py compute it:
 * $RUNTIME_DIRECTORY, else /var/run for root or $XDG_RUNTIME_DIR (default /tmp) for others,
 * followed by dpdk/<prefix>.
 */
export function runtimeDir(filePrefix: string, env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): string {
  const base = env.RUNTIME_DIRECTORY || (uid === 0 ? '/var/run' : env.XDG_RUNTIME_DIR || '/tmp');
  return join(base, 'dpdk', filePrefix);
}

/** Live servers' socket paths and the directories to try removing, for the exit hook if close() never ran. */
const liveSockets = new Map<string, string[]>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const [p, dirs] of liveSockets) {
      try { unlinkSync(p); } catch { /* gone */ }
      removeEmptyDirs(dirs);
    }
  });
}

interface Command {
  help: string;
  fn: TelemetryHandler;
}

/** A DPDK telemetry v2 server: register commands, start(), and close() at the end. */
export class TelemetryServer {
  /** the socket's path, once started */
  path = '';
  /** the instance: 0 for dpdk_telemetry.v2, n for dpdk_telemetry.v2:n */
  instance = 0;
  readonly version: string;
  readonly maxClients: number;
  /** counters for tests and /info-like diagnostics */
  readonly stats = { connections: 0, refused: 0, requests: 0, dropped: 0 };
  private readonly dir: string;
  private readonly commands = new Map<string, Command>();
  private listenFd = -1;
  private wakeFd = -1;
  private readonly clients = new Set<number>();
  private sockId: { dev: number; ino: number } | null = null;
  /** the runtime directory and, if start() made it, its parent: removed at close when empty */
  private dirsToRemove: string[] = [];
  private closing = false;
  private loopDone: Promise<void> = Promise.resolve();
  private readonly greeting: Uint8Array;
  private readonly warned = new Set<string>();

  /** A server for the EAL of filePrefix, with DPDK's built-in commands: /, /info and /help. */
  constructor(private readonly opts: TelemetryOptions) {
    this.dir = opts.dir ?? runtimeDir(opts.filePrefix);
    this.version = opts.version ?? `tspmd ${packageVersion()}`;
    this.maxClients = opts.maxClients ?? 8;
    this.greeting = Buffer.from(JSON.stringify(this.info()));
    this.register('/', 'Returns list of available commands, Takes no parameters', () => this.list());
    this.register('/info', 'Returns DPDK Telemetry information. Takes no parameters', () => this.info());
    this.register('/help', 'Returns help text for a command. Parameters: string command', (params) => {
      if (params === null) return this.commands.get('/help')!.help;
      const c = this.commands.get(params);
      return c ? { [params]: c.help } : null;
    });
  }

  /** Add a command (rte_telemetry_register_cmd): cmd starts with "/" and is shorter than MAX_CMD_LEN. */
  register(cmd: string, help: string, fn: TelemetryHandler): void {
    if (!cmd.startsWith('/') || cmd.length >= MAX_CMD_LEN || cmd.includes(',')) {
      throw new Error(`telemetry command "${cmd}": a command starts with "/", has no comma and is at most ${MAX_CMD_LEN - 1} characters`);
    }
    if (this.commands.has(cmd)) throw new Error(`telemetry command "${cmd}" is already registered`);
    this.commands.set(cmd, { help, fn });
  }

  /** Every command, sorted (the reply to "/"). */
  list(): string[] {
    return [...this.commands.keys()].sort();
  }

  /** The greeting and /info: version, pid, max_output_len. */
  info(): { version: string; pid: number; max_output_len: number } {
    return { version: this.version, pid: process.pid, max_output_len: MAX_OUTPUT_LEN };
  }

  /**
   * Answer one request ("/cmd" or "/cmd,params") with the reply's JSON text, as the socket would:
   * {"/cmd": value}, value null for an unknown command, bad parameters or a failing handler.
   */
  handle(request: string): string {
    const req = request.replace(/[\0\r\n]+$/, '');
    const comma = req.indexOf(',');
    const cmd = comma < 0 ? req : req.slice(0, comma);
    const rest = comma < 0 ? '' : req.slice(comma + 1);
    const params = rest === '' ? null : rest;
    const key = cmd === '' ? 'none' : cmd;
    const c = cmd.length < MAX_CMD_LEN ? this.commands.get(cmd) : undefined;
    let value: TelemetryValue = null;
    if (c) {
      try {
        value = c.fn(params, cmd);
      } catch (e) {
        log('debug', 'telemetry', `${req}: ${(e as Error).message}`);
        value = null;
      }
    }
    return this.fit(key, value);
  }

  /** The reply text, cut to MAX_OUTPUT_LEN by dropping a dict's or an array's last entries (as DPDK does when its buffer is full). */
  private fit(key: string, value: TelemetryValue): string {
    const text = (v: TelemetryValue): string => `{${JSON.stringify(key)}:${JSON.stringify(v)}}`;
    let out = text(value);
    if (Buffer.byteLength(out) <= MAX_OUTPUT_LEN) return out;
    if (!this.warned.has(key)) {
      this.warned.add(key);
      log('warn', 'telemetry', `the reply to ${key} is ${Buffer.byteLength(out)} bytes, over max_output_len ${MAX_OUTPUT_LEN}: its last entries are left out`);
    }
    if (Array.isArray(value)) {
      const a = [...value];
      while (a.length > 0 && Buffer.byteLength(out = text(a)) > MAX_OUTPUT_LEN) a.pop();
      return text(a);
    }
    if (value !== null && typeof value === 'object') {
      const entries = Object.entries(value);
      while (entries.length > 0 && Buffer.byteLength(out = text(Object.fromEntries(entries))) > MAX_OUTPUT_LEN) entries.pop();
      return text(Object.fromEntries(entries));
    }
    return text(null);
  }

  /**
   * Create the runtime directory (0700) and the socket (0600), then serve in the background. A
   * socket file nobody listens on (left by a killed process) is replaced; a live one (another
   * process on this --file-prefix) makes this server take the next instance, with a warning that
   * names the other process and how to connect to this one. Throws naming the path and the fix
   * when the directory or the socket cannot be made.
   */
  start(): void {
    if (this.listenFd >= 0) throw new Error(`telemetry server ${this.path}: already started`);
    let made: string | undefined;
    try {
      made = mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new Error(`telemetry: cannot create the runtime directory ${this.dir}: ${(e as Error).message}; ` +
        'run as root, set RUNTIME_DIRECTORY to a writable directory, or turn telemetry off with --no-telemetry');
    }
    // The prefix's directory goes when empty (whoever made it: a killed run may have left it); its
    // parent (<run dir>/dpdk) only if this server made it.
    this.dirsToRemove = made !== undefined && made !== this.dir ? [this.dir, dirname(this.dir)] : [this.dir];
    const base = join(this.dir, TELEMETRY_SOCKET);
    const busy: string[] = [];
    let recreated = 0;
    for (let i = 0; i < MAX_INSTANCES && this.listenFd < 0; i++) {
      const path = i === 0 ? base : `${base}:${i}`;
      const holder = probeSocket(path);
      if (holder !== null) {
        busy.push(`${path} (${holder})`);
        continue;
      }
      const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET | os.SOCK_NONBLOCK, 0);
      try {
        os.bind(fd, os.sockaddrUn(path), `"${path}"`);
        chmodSync(path, 0o600);
        os.listen(fd, this.maxClients);
      } catch (e) {
        safeClose(fd);
        if (e instanceof os.OsError && e.code === 'EADDRINUSE') { busy.push(`${path} (bound meanwhile)`); continue; } // another process won the race
        if (e instanceof os.OsError && e.code === 'ENOENT' && recreated++ < 5) {
          // the other process on this prefix exited meanwhile and removed the (then empty) directory
          mkdirSync(this.dir, { recursive: true, mode: 0o700 });
          i--;
          continue;
        }
        this.removeDir();
        throw new Error(`telemetry: cannot listen on ${path}: ${(e as Error).message}; turn telemetry off with --no-telemetry or use another --file-prefix`);
      }
      this.listenFd = fd;
      this.path = path;
      this.instance = i;
    }
    if (this.listenFd < 0) {
      this.removeDir();
      throw new Error(`telemetry: all ${MAX_INSTANCES} instances of ${base} are in use; use another --file-prefix or --no-telemetry`);
    }
    const st = lstatSync(this.path);
    this.sockId = { dev: st.dev, ino: st.ino };
    liveSockets.set(this.path, this.dirsToRemove);
    installExitHook();
    this.wakeFd = os.eventfd(0, os.EFD_NONBLOCK);
    if (busy.length > 0) {
      log('warn', 'telemetry', `${busy.join(', ')} in use by another process of --file-prefix ${this.opts.filePrefix}; ` +
        `this one serves instance ${this.instance}: ${this.path} (dpdk-telemetry.py -f ${this.opts.filePrefix} -i ${this.instance}); give each app its own --file-prefix to avoid this`);
    }
    log('info', 'telemetry', `socket ${this.path} (dpdk-telemetry.py -f ${this.opts.filePrefix}${this.instance ? ` -i ${this.instance}` : ''})`);
    this.loopDone = this.loop().catch((e: unknown) => {
      log('error', 'telemetry', `server ${this.path} stopped: ${(e as Error).stack ?? String(e)}`);
    });
  }

  /** Connections open now. */
  get clientCount(): number {
    return this.clients.size;
  }

  /** Stop serving: close every connection and the socket, remove the socket file (and the runtime directory if this server made it and it is empty). */
  async close(): Promise<void> {
    if (this.closing) return this.loopDone;
    this.closing = true;
    if (this.wakeFd >= 0) {
      const one = new Uint8Array(8);
      one[0] = 1;
      try { os.write(this.wakeFd, one); } catch { /* already woken */ }
    }
    await this.loopDone;
    for (const fd of this.clients) safeClose(fd);
    this.clients.clear();
    safeClose(this.listenFd);
    this.listenFd = -1;
    safeClose(this.wakeFd);
    this.wakeFd = -1;
    this.unlinkOwnSocket();
    this.removeDir();
  }

  private removeDir(): void {
    removeEmptyDirs(this.dirsToRemove);
    this.dirsToRemove = [];
  }

  /** Remove the socket file if it is still the one this server bound. */
  private unlinkOwnSocket(): void {
    const id = this.sockId;
    this.sockId = null;
    if (!id) return;
    liveSockets.delete(this.path);
    try {
      const st = lstatSync(this.path);
      if (st.dev === id.dev && st.ino === id.ino) unlinkSync(this.path);
    } catch { /* gone */ }
  }

  private async loop(): Promise<void> {
    while (!this.closing) {
      const fds = [this.listenFd, this.wakeFd, ...this.clients];
      // A finite wait: the poll occupies one of libuv's (by default 4) pool threads, which the
      // vfio-user transport and fs calls share; it hands the thread back twice a second.
      const ev = await os.pollAsync(fds, os.POLLIN, POLL_SLICE_MS);
      if (this.closing) break;
      if (ev[0] !== 0) this.acceptAll();
      for (let i = 2; i < fds.length; i++) if (ev[i] !== 0) this.serve(fds[i], ev[i]);
    }
  }

  private acceptAll(): void {
    for (;;) {
      let fd: number;
      try {
        fd = os.accept(this.listenFd, os.SOCK_NONBLOCK);
      } catch (e) {
        log('debug', 'telemetry', `accept: ${(e as Error).message}`);
        return;
      }
      if (fd < 0) return;
      if (this.clients.size >= this.maxClients) {
        // As DPDK: over the limit, the connection is closed without a greeting.
        this.stats.refused++;
        log('debug', 'telemetry', `${this.path}: ${this.clients.size} clients connected (the limit): a new one is closed`);
        safeClose(fd);
        continue;
      }
      this.stats.connections++;
      if (!this.reply(fd, this.greeting)) { safeClose(fd); continue; }
      this.clients.add(fd);
    }
  }

  /** Read and answer up to BATCH requests of one client; drops it when it hung up or its socket is full. */
  private serve(fd: number, revents: number): void {
    for (let n = 0; n < BATCH; n++) {
      let m: os.RecvResult | null;
      try {
        m = os.recvmsg(fd, MAX_REQUEST, os.MSG_DONTWAIT);
      } catch (e) {
        this.drop(fd, (e as Error).message);
        return;
      }
      if (m === null) {
        if ((revents & (os.POLLHUP | os.POLLERR | os.POLLNVAL)) !== 0) this.drop(fd, null);
        return;
      }
      for (const extra of m.fds) safeClose(extra);
      if (m.data.length === 0) { this.drop(fd, null); return; }
      this.stats.requests++;
      const out = Buffer.from(this.handle(Buffer.from(m.data).toString('utf8')));
      if (!this.reply(fd, out)) { this.drop(fd, 'its socket is full: it sends requests without reading the replies'); return; }
    }
  }

  /** Send one message; false when it could not be sent (socket full or connection gone). */
  private reply(fd: number, msg: Uint8Array): boolean {
    try {
      return os.send(fd, msg, msg.byteLength, os.MSG_NOSIGNAL | os.MSG_DONTWAIT) === msg.byteLength;
    } catch {
      return false;
    }
  }

  private drop(fd: number, why: string | null): void {
    if (why !== null) {
      this.stats.dropped++;
      log('warn', 'telemetry', `${this.path}: client dropped: ${why}`);
    }
    this.clients.delete(fd);
    safeClose(fd);
  }
}

/**
 * Whether a server listens on path: null when the path is free (a stale socket file is removed
 * first, with a log line), else a description of the holder ("pid 1234, l2fwd"). Throws when a
 * file that is not a socket is in the way.
 */
function probeSocket(path: string): string | null {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`telemetry: cannot check ${path}: ${(e as Error).message}`);
  }
  if (!st.isSocket()) throw new Error(`telemetry: ${path} exists and is not a socket; remove it, or use another --file-prefix or --no-telemetry`);
  const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET | os.SOCK_NONBLOCK, 0);
  let code = 'connected';
  try {
    os.connect(fd, os.sockaddrUn(path), `"${path}"`);
  } catch (e) {
    if (!(e instanceof os.OsError)) { safeClose(fd); throw e; }
    code = e.code;
  }
  if (code === 'connected' || code === 'EAGAIN' || code === 'EINPROGRESS') {
    let who = 'a running process';
    try {
      // The greeting names the holder's pid (a short wait, only at start-up and only when the prefix is shared).
      if (code === 'connected' && (os.pollOne(fd, os.POLLIN, 200) & os.POLLIN) !== 0) {
        const m = os.recvmsg(fd, 1024, os.MSG_DONTWAIT);
        const pid = m ? (JSON.parse(Buffer.from(m.data).toString('utf8')) as { pid?: unknown }).pid : undefined;
        if (typeof pid === 'number') who = `pid ${pid}${processName(pid)}`;
      }
    } catch { /* no greeting: keep the generic description */ }
    safeClose(fd);
    return who;
  }
  safeClose(fd);
  if (code !== 'ECONNREFUSED') {
    throw new Error(`telemetry: cannot tell whether a process serves ${path} (connect failed with ${code}); remove it if none does, or use another --file-prefix or --no-telemetry`);
  }
  try {
    const now = lstatSync(path);
    if (now.dev !== st.dev || now.ino !== st.ino) return 'bound meanwhile';
    unlinkSync(path);
  } catch { /* removed meanwhile */ }
  log('info', 'telemetry', `removed stale socket ${path} (left by a process that is gone: connecting was refused)`);
  return null;
}

/** ", <comm>" of a process, or "" when it cannot be read. */
function processName(pid: number): string {
  try {
    return `, ${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}`;
  } catch {
    return '';
  }
}

/** rmdir each directory, in order, that is empty (one in use by another app of the prefix stays). */
function removeEmptyDirs(dirs: readonly string[]): void {
  for (const d of dirs) {
    try { rmdirSync(d); } catch { return; /* not empty, or gone */ }
  }
}

function safeClose(fd: number): void {
  if (fd < 0) return;
  try { os.close(fd); } catch { /* already closed */ }
}

let cachedVersion: string | null = null;

/** This package's version, from the nearest package.json named tspmd above this module ("unknown" if none). */
export function packageVersion(): string {
  if (cachedVersion !== null) return cachedVersion;
  cachedVersion = 'unknown';
  for (let url = new URL('./', import.meta.url), i = 0; i < 6; url = new URL('../', url), i++) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', url), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'tspmd' && typeof pkg.version === 'string') { cachedVersion = pkg.version; break; }
    } catch { /* not here */ }
  }
  return cachedVersion;
}
