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
 * The runtime directory is used only when it is a real directory of this user that nobody else
 * can reach (0700; made so, or narrowed to it when it is only readable by others); <run dir>/dpdk
 * is made sticky and world-writable (01777) inside a shared directory such as /tmp, so that every
 * user can make a prefix directory in it, and 0700 elsewhere. The socket is made 0600 under a
 * umask. A directory that is not fit (another user's, a symlink, open to writing by others) makes
 * start() throw one line that names it and the fix; runApp then runs without telemetry.
 *
 * Everything runs on the main thread: the sockets are non-blocking, one poll(2) on a libuv pool
 * thread (os.pollAsync, in slices of half a second) waits for connections and requests, and
 * close() wakes it with an eventfd. At the client limit a new connection evicts the client idle
 * longest; a client idle for idleTimeoutMs is closed; when accept fails (EMFILE: the process is at
 * its fd limit) the socket is left out of the poll for ACCEPT_BACKOFF_MS, with one warning per
 * episode, instead of being polled again at once.
 * The data path never sees any of it: handlers read the counters the lcores share.
 */
import { closeSync, fchmodSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, readlinkSync, rmdirSync, statSync, unlinkSync, constants as fsc, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
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
  /** connections served at once (default 8, DPDK's); at the limit a new connection evicts the client that has sent nothing for the longest */
  maxClients?: number;
  /** a client that sends no request for this long is closed (default DEFAULT_IDLE_TIMEOUT_MS; 0: never) */
  idleTimeoutMs?: number;
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
/** Live sockets whose greeting is read at start-up to name their process (a short wait each); the rest are "a running process". */
const NAMED_HOLDERS = 4;
/** Connections the kernel queues before accept. */
const LISTEN_BACKLOG = 64;
/** Connections accepted per wake-up, so a connection flood cannot hold the main thread. */
const ACCEPT_BATCH = 64;
/** Clients served at once unless TelemetryOptions.maxClients says otherwise (DPDK's MAX_CONNECTIONS). */
export const DEFAULT_MAX_CLIENTS = 8;
/** A client that sends nothing for this long is closed (5 minutes: monitoring agents poll every few seconds, a person types). */
export const DEFAULT_IDLE_TIMEOUT_MS = 300_000;
/** When accept fails (EMFILE, ENFILE, ENOMEM), the listening socket rests this long before the next attempt. */
export const ACCEPT_BACKOFF_MS = 100;

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
  readonly idleTimeoutMs: number;
  /**
   * Counters for tests and diagnostics: connections accepted, refused (the greeting could not be
   * sent), requests answered, clients dropped for not reading their replies, evicted at the client
   * limit, closed after the idle timeout, and failed accept attempts.
   */
  readonly stats = { connections: 0, refused: 0, requests: 0, dropped: 0, evicted: 0, idleClosed: 0, acceptErrors: 0 };
  private readonly dir: string;
  private readonly commands = new Map<string, Command>();
  private listenFd = -1;
  private wakeFd = -1;
  /** connected clients: fd -> when it connected or last sent a request (performance.now()) */
  private readonly clients = new Map<number, { lastActive: number }>();
  /** accept rests until then (after it failed) */
  private acceptPausedUntil = 0;
  /** the accept failures of the current episode (null: accept works) */
  private acceptTrouble: { since: number; failures: number } | null = null;
  private droppedWarned = false;
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
    this.maxClients = Math.max(1, opts.maxClients ?? DEFAULT_MAX_CLIENTS);
    this.idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
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
    // As DPDK reads it: a C string (up to the first NUL), and a line end is not part of it.
    const nul = request.indexOf('\0');
    const req = (nul < 0 ? request : request.slice(0, nul)).replace(/[\r\n]+$/, '');
    const comma = req.indexOf(',');
    const cmd = comma < 0 ? req : req.slice(0, comma);
    const rest = comma < 0 ? '' : req.slice(comma + 1);
    const params = rest === '' ? null : rest;
    const key = cmd === '' ? 'none' : cmd;
    const c = Buffer.byteLength(cmd) < MAX_CMD_LEN ? this.commands.get(cmd) : undefined;
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
    let out: string;
    try {
      out = text(value);
    } catch (e) {
      // not JSON (a bigint, a cycle): a handler's mistake, answered as a failure
      log('debug', 'telemetry', `${key}: the reply is not JSON: ${(e as Error).message}`);
      return text(null);
    }
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
   * Make or check the runtime directory (see the module's comment), then create the socket (0600,
   * under a umask) and serve in the background. A socket file nobody listens on (left by a killed
   * process) is replaced; a live one (another process on this --file-prefix), or a file that is
   * not a socket, makes this server take the next instance, with a warning that names what is in
   * the way and how to connect to this one. Throws one line naming the directory or socket, what
   * is wrong and the fix when the directory is not fit or no socket name is free (runApp then
   * runs without telemetry).
   */
  start(): void {
    if (this.listenFd >= 0) throw new Error(`telemetry server ${this.path}: already started`);
    const euid = process.geteuid?.() ?? 0;
    // runtimeDir's rules: RUNTIME_DIRECTORY when set, else /var/run for root and XDG_RUNTIME_DIR for others.
    const xdg = euid !== 0 && !process.env.RUNTIME_DIRECTORY;
    const fix = `use another --file-prefix, or set ${xdg ? 'XDG_RUNTIME_DIR' : 'RUNTIME_DIRECTORY'} to a directory of your own` +
      `${xdg ? ` (such as /run/user/${euid})` : ''}, or turn telemetry off with --no-telemetry`;
    this.dirsToRemove = prepareRuntimeDir(this.dir, euid, fix);
    const base = join(this.dir, TELEMETRY_SOCKET);
    const busy: string[] = [];
    let recreated = 0;
    for (let i = 0; i < MAX_INSTANCES && this.listenFd < 0; i++) {
      const path = i === 0 ? base : `${base}:${i}`;
      const holder = probeSocket(path, busy.length < NAMED_HOLDERS);
      if (holder !== null) {
        busy.push(`${path} (${holder})`);
        continue;
      }
      const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET | os.SOCK_NONBLOCK, 0);
      try {
        // Made 0600 by the umask: no window in which it is open to others, and no chmod that
        // would follow a symlink put in its place.
        const addr = os.sockaddrUn(path);
        withUmask(0o177, () => os.bind(fd, addr, `"${path}"`));
        os.listen(fd, LISTEN_BACKLOG);
      } catch (e) {
        safeClose(fd);
        if (e instanceof os.OsError && e.code === 'EADDRINUSE') { busy.push(`${path} (bound meanwhile)`); continue; } // another process won the race
        if (e instanceof os.OsError && e.code === 'ENOENT' && recreated++ < 5) {
          // the other process on this prefix exited meanwhile and removed the (then empty) directory
          this.dirsToRemove = prepareRuntimeDir(this.dir, euid, fix);
          i--;
          continue;
        }
        this.removeDir();
        throw new Error(`cannot listen on ${path}: ${(e as Error).message}; ${fix}`);
      }
      this.listenFd = fd;
      this.path = path;
      this.instance = i;
    }
    if (this.listenFd < 0) {
      this.removeDir();
      throw new Error(`all ${MAX_INSTANCES} telemetry socket names in ${this.dir} are taken (${summary(busy)}); end the other apps of --file-prefix ${this.opts.filePrefix}, or ${fix}`);
    }
    const st = lstatSync(this.path);
    this.sockId = { dev: st.dev, ino: st.ino };
    liveSockets.set(this.path, this.dirsToRemove);
    installExitHook();
    this.wakeFd = os.eventfd(0, os.EFD_NONBLOCK);
    if (busy.length > 0) {
      log('warn', 'telemetry', `${summary(busy)} cannot be used; this app serves instance ${this.instance}: ${this.path} ` +
        `(dpdk-telemetry.py -f ${this.opts.filePrefix} -i ${this.instance}); give each app its own --file-prefix to avoid this`);
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

  /** Stop serving: close every connection and the socket, remove the socket file (and the runtime directory if it is empty, and its parent if this server made it and it is not shared). */
  async close(): Promise<void> {
    if (this.closing) return this.loopDone;
    this.closing = true;
    if (this.wakeFd >= 0) {
      const one = new Uint8Array(8);
      one[0] = 1;
      try { os.write(this.wakeFd, one); } catch { /* already woken */ }
    }
    await this.loopDone;
    for (const fd of this.clients.keys()) safeClose(fd);
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
      const now = performance.now();
      this.closeIdle(now);
      // After a failed accept the listening socket rests (left out of the poll: fd -1) instead of
      // being polled again at once: its pending connection would wake the poll straight away.
      const resting = now < this.acceptPausedUntil;
      const fds = [resting ? -1 : this.listenFd, this.wakeFd, ...this.clients.keys()];
      // A finite wait: the poll occupies one of libuv's (by default 4) pool threads, which the
      // vfio-user transport and fs calls share; it hands the thread back twice a second.
      const wait = resting ? Math.min(POLL_SLICE_MS, Math.max(1, Math.ceil(this.acceptPausedUntil - now))) : POLL_SLICE_MS;
      const ev = await os.pollAsync(fds, os.POLLIN, wait);
      if (this.closing) break;
      // Clients first: accepting may evict one and reuse its fd number.
      for (let i = 2; i < fds.length; i++) if (ev[i] !== 0 && this.clients.has(fds[i])) this.serve(fds[i], ev[i]);
      if (ev[0] !== 0) this.acceptAll();
    }
  }

  private acceptAll(): void {
    for (let n = 0; n < ACCEPT_BATCH; n++) {
      let fd: number;
      try {
        fd = os.accept(this.listenFd, os.SOCK_NONBLOCK);
      } catch (e) {
        const code = e instanceof os.OsError ? e.code : '';
        if (code === 'ECONNABORTED' || code === 'EINTR' || code === 'EPROTO') continue; // that connection went away
        this.acceptFailed(e as Error, code);
        return;
      }
      if (fd < 0) return;
      this.acceptWorks();
      // At the limit the client that has sent nothing for the longest makes room: a new client is always served.
      if (this.clients.size >= this.maxClients) this.evictIdlest();
      this.stats.connections++;
      if (!this.reply(fd, this.greeting)) { this.stats.refused++; safeClose(fd); continue; }
      this.clients.set(fd, { lastActive: performance.now() });
    }
  }

  /** accept failed (EMFILE, ENFILE, ENOMEM, ...): rest the listening socket, and say so once per episode. */
  private acceptFailed(e: Error, code: string): void {
    this.stats.acceptErrors++;
    const now = performance.now();
    this.acceptPausedUntil = now + ACCEPT_BACKOFF_MS;
    if (this.acceptTrouble === null) {
      this.acceptTrouble = { since: now, failures: 0 };
      const why = code === 'EMFILE' ? ': the process is at its fd limit (ulimit -n), e.g. held by many metrics connections'
        : code === 'ENFILE' ? ': the system is out of file descriptors' : '';
      log('warn', 'telemetry', `${this.path}: cannot accept connections (${code || e.message})${why}; new clients wait, retried every ${ACCEPT_BACKOFF_MS} ms`);
    }
    this.acceptTrouble.failures++;
  }

  /** accept worked: end an episode of failures, with one line. */
  private acceptWorks(): void {
    if (this.acceptTrouble === null) return;
    const { since, failures } = this.acceptTrouble;
    this.acceptTrouble = null;
    log('info', 'telemetry', `${this.path}: accepting connections again, after ${failures} failed attempt(s) in ${Math.round(performance.now() - since)} ms`);
  }

  /** Close the client that has sent nothing for the longest. */
  private evictIdlest(): void {
    let fd = -1, oldest = Infinity;
    for (const [f, c] of this.clients) if (c.lastActive < oldest) { oldest = c.lastActive; fd = f; }
    if (fd < 0) return;
    this.stats.evicted++;
    log('debug', 'telemetry', `${this.path}: ${this.clients.size} clients (the limit): the one idle for ${Math.round(performance.now() - oldest)} ms makes room for a new one`);
    this.drop(fd, null);
  }

  /** Close the clients that have sent nothing for idleTimeoutMs. */
  private closeIdle(now: number): void {
    if (!(this.idleTimeoutMs > 0)) return;
    for (const [fd, c] of this.clients) {
      if (now - c.lastActive < this.idleTimeoutMs) continue;
      this.stats.idleClosed++;
      log('debug', 'telemetry', `${this.path}: a client idle for ${Math.round(now - c.lastActive)} ms is closed`);
      this.drop(fd, null);
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
      // An empty message reads as the end of the connection, as in DPDK (read() returns 0).
      if (m.data.length === 0) { this.drop(fd, null); return; }
      this.stats.requests++;
      const c = this.clients.get(fd);
      if (c) c.lastActive = performance.now();
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

  /** Close a client; why (a misbehaving client) is a warning the first time, then a debug line. */
  private drop(fd: number, why: string | null): void {
    if (why !== null) {
      this.stats.dropped++;
      log(this.droppedWarned ? 'debug' : 'warn', 'telemetry', `${this.path}: client dropped: ${why}`);
      this.droppedWarned = true;
    }
    this.clients.delete(fd);
    safeClose(fd);
  }
}

/** The first few entries of a list, and how many more. */
function summary(items: readonly string[]): string {
  return items.length <= 3 ? items.join(', ') : `${items.slice(0, 3).join(', ')} and ${items.length - 3} more`;
}

/** Run fn with the process umask set to mask (restored after, also when fn throws). */
function withUmask<T>(mask: number, fn: () => T): T {
  const old = process.umask(mask);
  try {
    return fn();
  } finally {
    process.umask(old);
  }
}

/** What a file is, for messages: "a directory (mode 0777, uid 65534)". */
function describe(st: Stats): string {
  const kind = st.isSymbolicLink() ? 'a symbolic link' : st.isDirectory() ? 'a directory' : st.isSocket() ? 'a socket' : st.isFile() ? 'a regular file' : 'a special file';
  return `${kind} (mode 0${(st.mode & 0o7777).toString(8)}, uid ${st.uid})`;
}

/** stat(2) of path (following links), or null when it does not exist. */
function statOrNull(path: string): Stats | null {
  try {
    return statSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/** A directory every user may write to, where only an entry's owner may remove or rename it: /tmp. */
function sharedSticky(st: Stats): boolean {
  return st.isDirectory() && (st.mode & 0o1002) === 0o1002;
}

/**
 * Make the runtime directory dir (<run dir>/dpdk/<prefix>) and check that it is fit for the
 * socket; returns the directories to remove at close when empty (dir, and its parent if made here
 * and not shared). The parent, when missing, is made 01777 inside a shared sticky directory (/tmp:
 * every user makes a prefix directory in it, as in /tmp itself) and 0700 elsewhere; a parent others
 * may write to must be sticky. dir must be a real directory (not a symlink) of euid that no other
 * user can write to; made 0700, and narrowed to 0700 when others may only read it. Throws one line
 * naming the directory, what is wrong and fix.
 */
function prepareRuntimeDir(dir: string, euid: number, fix: string): string[] {
  const parent = dirname(dir);
  const fail = (what: string): Error => new Error(`${what}; ${fix}`);
  for (let attempt = 0; ; attempt++) {
    const made: string[] = [];
    let pst: Stats | null;
    try {
      pst = statOrNull(parent);
      if (pst === null) {
        const grand = dirname(parent);
        if (statOrNull(grand) === null) mkdirSync(grand, { recursive: true, mode: 0o700 }); // e.g. a RUNTIME_DIRECTORY not made yet
        const shared = sharedSticky(statSync(grand));
        try {
          withUmask(0, () => mkdirSync(parent, { mode: shared ? 0o1777 : 0o700 }));
          if (!shared) made.push(parent); // a shared one stays, like /tmp: removing it would let anyone make it anew as their own
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
        pst = statSync(parent);
      }
    } catch (e) {
      throw new Error(`cannot create the telemetry runtime directory ${dir}: ${(e as Error).message}; ${fix}`);
    }
    const link = lstatSync(parent);
    if (link.isSymbolicLink() && link.uid !== 0 && link.uid !== euid) throw fail(`${parent} is a symbolic link of uid ${link.uid}, who could point it elsewhere`);
    if (!pst.isDirectory()) throw fail(`${parent} is ${describe(pst)}, not a directory`);
    if ((pst.mode & 0o022) !== 0 && (pst.mode & 0o1000) === 0) throw fail(`${parent} is writable by other users and not sticky (${describe(pst)}): they could swap ${dir} for their own`);
    try {
      mkdirSync(dir, { mode: 0o700 });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' && attempt < 5) continue; // the parent was removed meanwhile (another app on the prefix ended)
      if (code !== 'EEXIST') throw new Error(`cannot create the telemetry runtime directory ${dir}: ${(e as Error).message} (${parent} is ${describe(pst)}); ${fix}`);
    }
    const st = lstatSync(dir);
    if (st.isSymbolicLink()) {
      let to = '';
      try { to = ` to ${readlinkSync(dir)}`; } catch { /* unreadable */ }
      throw fail(`the telemetry runtime directory ${dir} is a symbolic link${to} (uid ${st.uid}), not a directory: it is not followed`);
    }
    if (!st.isDirectory()) throw fail(`the telemetry runtime directory ${dir} is ${describe(st)}, not a directory`);
    if (st.uid !== euid) throw fail(`the telemetry runtime directory ${dir} belongs to uid ${st.uid}, not to this user (uid ${euid}): that user could replace the socket and answer in its place`);
    if ((st.mode & 0o022) !== 0) throw fail(`the telemetry runtime directory ${dir} is writable by other users (${describe(st)}): they could replace the socket and answer in its place`);
    if ((st.mode & 0o077) !== 0) narrow(dir, st);
    return [dir, ...made];
  }
}

/** chmod 0700 a directory of ours that others may read: through an fd opened without following links, checked to be the one looked at. */
function narrow(dir: string, st: Stats): void {
  const fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  try {
    const now = fstatSync(fd);
    if (now.dev !== st.dev || now.ino !== st.ino) throw new Error(`the telemetry runtime directory ${dir} changed while it was checked`);
    fchmodSync(fd, 0o700);
  } finally {
    closeSync(fd);
  }
  log('info', 'telemetry', `${dir} was readable by other users (mode 0${(st.mode & 0o777).toString(8)}): narrowed to 0700`);
}

/**
 * What is at a socket name: null when it is free (nothing there, or a stale socket, which is
 * removed first with a log line), else what is in the way: a live server ("pid 1234, l2fwd" when
 * askWho and it greets), or a file that is not a socket (left alone). Never throws for what it
 * finds: every case leaves the name to the next instance.
 */
function probeSocket(path: string, askWho: boolean): string | null {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    return `cannot be checked: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
  }
  // DPDK removes whatever is there when connecting to it fails; a file that is not a socket is
  // left alone here (it is not a telemetry socket of a dead process), and the next name is used.
  if (!st.isSocket()) return `${describe(st)}, not a socket: left alone`;
  const fd = os.socket(os.AF_UNIX, os.SOCK_SEQPACKET | os.SOCK_NONBLOCK, 0);
  let code = 'connected';
  try {
    os.connect(fd, os.sockaddrUn(path), `"${path}"`);
  } catch (e) {
    code = e instanceof os.OsError ? e.code : (e as Error).message;
  }
  if (code === 'connected' || code === 'EAGAIN' || code === 'EINPROGRESS') {
    let who = 'in use by a running process';
    try {
      // The greeting names the holder's pid (a short wait, only at start-up and only when the prefix is shared).
      if (askWho && code === 'connected' && (os.pollOne(fd, os.POLLIN, 200) & os.POLLIN) !== 0) {
        const m = os.recvmsg(fd, 1024, os.MSG_DONTWAIT);
        const pid = m ? (JSON.parse(Buffer.from(m.data).toString('utf8')) as { pid?: unknown }).pid : undefined;
        if (typeof pid === 'number') who = `in use by pid ${pid}${processName(pid)}`;
      }
    } catch { /* no greeting: keep the generic description */ }
    safeClose(fd);
    return who;
  }
  safeClose(fd);
  if (code !== 'ECONNREFUSED') return `a socket nobody can be asked about (connect: ${code}): left alone`;
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
