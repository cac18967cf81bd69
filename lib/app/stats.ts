/**
 * Live port statistics for the apps: a periodic table like testpmd's port statistics (RX/TX
 * packets, RX-missed, RX-errors, TX-errors, not sent, Rx-pps/Tx-pps per port), redrawn in place
 * on a terminal and printed as plain lines otherwise, and the final summary, as text or as one
 * JSON line (whose fields are a contract: tests and benchmarks parse them).
 */
import type { EthDev, PortStats } from '../ethdev/ethdev.js';

/** One port's line of the summary (the JSON contract's fields): its totals, without per-queue lists. */
export interface PortSummary extends Omit<PortStats, 'q_ipackets' | 'q_opackets' | 'q_ibytes' | 'q_obytes'> {
  port: number;
  name: string;
  /** packets the app dropped because TX was full */
  dropped: number;
}

/** The final summary of an app run. */
export interface Summary {
  app: string;
  elapsed_s: number;
  total_rx_mpps: number;
  total_tx_mpps: number;
  /** median of the per-second RX rates after the first second */
  steady_rx_mpps: number;
  ports: PortSummary[];
  [extra: string]: unknown;
}

/** Prints a table every period and builds the summary. */
export class StatsReporter {
  private last: Array<{ rx: number; tx: number }> = [];
  private lastT = 0;
  private timer: NodeJS.Timeout | null = null;
  private startT = 0;
  private endT = 0;
  /** total RX packets/s of each whole second, for the steady-state figure */
  private seconds: number[] = [];
  private sampler: NodeJS.Timeout | null = null;
  private lastSample = { t: 0, rx: 0 };
  /** whether out is a terminal: the table is then redrawn in place */
  private readonly tty: boolean;
  /** lines of the table on screen (TTY only), to move back over */
  private shownLines = 0;

  /**
   * drops(i) reads the app's counter of packets it had to free for ports[i] because a TX queue was
   * full (shown as "not sent"; the summary's "dropped"). out is where the table goes; a TTY (isTTY)
   * gets it redrawn in place.
   */
  constructor(private readonly ports: EthDev[], private readonly drops: (i: number) => number, private readonly out: NodeJS.WritableStream = process.stdout) {
    this.tty = (out as { isTTY?: boolean }).isTTY === true;
  }

  /** Mark the start of forwarding (zeroes port statistics) and print every periodS seconds (0: never). */
  start(periodS: number): void {
    for (const p of this.ports) p.statsReset();
    this.startT = this.lastT = performance.now();
    this.last = this.ports.map(() => ({ rx: 0, tx: 0 }));
    if (periodS > 0) this.timer = setInterval(() => this.print(), periodS * 1000);
    this.lastSample = { t: this.startT, rx: 0 };
    this.sampler = setInterval(() => {
      const now = performance.now();
      const rx = this.ports.reduce((a, p) => a + p.stats().ipackets, 0);
      this.seconds.push((rx - this.lastSample.rx) / ((now - this.lastSample.t) / 1000));
      this.lastSample = { t: now, rx };
    }, 1000);
  }

  /** Median of the per-second total RX rates, skipping the first second (JIT warm-up); 0 if too short. */
  steadyRxPps(): number {
    const s = this.seconds.slice(1).sort((a, b) => a - b);
    return s.length === 0 ? 0 : s[s.length >> 1];
  }

  /** Mark the end of forwarding. */
  stop(): void {
    this.endT = performance.now();
    if (this.timer) clearInterval(this.timer);
    if (this.sampler) clearInterval(this.sampler);
    this.timer = this.sampler = null;
  }

  /** Print the live table once: in place on a TTY (the previous table is redrawn), as new lines otherwise. */
  print(): void {
    const now = performance.now();
    const dt = Math.max(1e-3, (now - this.lastT) / 1000);
    const rows: LiveRow[] = this.ports.map((p, i) => {
      const s = p.stats();
      const row: LiveRow = {
        port: p.port, name: p.name, rxPackets: s.ipackets, rxMissed: s.imissed, rxErrors: s.ierrors, txPackets: s.opackets,
        txErrors: s.oerrors, notSent: this.drops(i), rxPps: (s.ipackets - this.last[i].rx) / dt, txPps: (s.opackets - this.last[i].tx) / dt,
      };
      this.last[i] = { rx: s.ipackets, tx: s.opackets };
      return row;
    });
    this.lastT = now;
    // A pseudo-terminal with no size (e.g. under script(1)) reports 0 columns: take 80.
    const cols = (this.out as { columns?: number }).columns;
    const columns = !this.tty ? Infinity : cols !== undefined && cols > 0 ? cols : 80;
    const lines = formatLiveTable(rows, (now - this.startT) / 1000, columns);
    if (this.tty) {
      // Back to the first line of the previous table, clear to the end of the screen, draw again.
      const up = this.shownLines > 0 ? `\x1b[${this.shownLines}F\x1b[J` : '';
      this.out.write(up + lines.join('\n') + '\n');
      this.shownLines = lines.length;
      return;
    }
    this.out.write('\n' + lines.join('\n') + '\n');
  }

  /** The summary of the whole run. */
  summary(app: string, extra: Record<string, unknown> = {}): Summary {
    const elapsed = ((this.endT || performance.now()) - this.startT) / 1000;
    const ports = this.ports.map((p, i): PortSummary => {
      const s = p.stats();
      return {
        port: p.port, name: p.name, ipackets: s.ipackets, opackets: s.opackets, ibytes: s.ibytes, obytes: s.obytes,
        imissed: s.imissed, ierrors: s.ierrors, oerrors: s.oerrors, rx_nombuf: s.rx_nombuf, dropped: this.drops(i),
      };
    });
    const rx = ports.reduce((a, p) => a + p.ipackets, 0), tx = ports.reduce((a, p) => a + p.opackets, 0);
    const r = (x: number): number => Math.round(x * 1000) / 1000;
    return {
      app, elapsed_s: r(elapsed), total_rx_mpps: r(rx / elapsed / 1e6), total_tx_mpps: r(tx / elapsed / 1e6),
      steady_rx_mpps: r(this.steadyRxPps() / 1e6), ports, ...extra,
    };
  }

  /** Print the summary as a table (text) or one JSON line. */
  printSummary(s: Summary, json: boolean): void {
    if (json) {
      this.out.write(JSON.stringify(s) + '\n');
      return;
    }
    const lines = [`\n${s.app} summary: ${s.elapsed_s} s, RX ${s.total_rx_mpps} Mpps, TX ${s.total_tx_mpps} Mpps`];
    for (const p of s.ports) {
      lines.push(`  port ${p.port} (${p.name}): RX ${p.ipackets} pkts / ${p.ibytes} B, TX ${p.opackets} pkts / ${p.obytes} B, not sent ${p.dropped} (TX full), missed ${p.imissed}, rx errors ${p.ierrors}, tx errors ${p.oerrors}, no mbuf ${p.rx_nombuf}`);
    }
    this.out.write(lines.join('\n') + '\n');
  }
}

/** One port's line of the live table. */
export interface LiveRow {
  port: number;
  name: string;
  rxPackets: number;
  rxMissed: number;
  rxErrors: number;
  txPackets: number;
  txErrors: number;
  /** packets the app freed because a TX queue was full (the summary's "dropped") */
  notSent: number;
  rxPps: number;
  txPps: number;
}

/** What "not sent" means, printed under the live table. */
export const NOT_SENT_LEGEND = 'not sent: freed because a TX queue was full (l2fwd: counted on the RX port)';

/** Width of the one-line-per-port table; narrower terminals get two lines per port. */
export const WIDE_TABLE_COLUMNS = 128;

/**
 * The live table's lines, like testpmd's port statistics: per port the RX and TX totals, RX-missed
 * (the device had no room), RX-errors, TX-errors, not sent (TX queue full), and the Rx-pps/Tx-pps
 * of the last period; then the totals and the legend. With columns (a terminal's width) below
 * WIDE_TABLE_COLUMNS each port takes two lines (RX, then TX) that fit 80 columns.
 */
export function formatLiveTable(rows: readonly LiveRow[], elapsedS: number, columns = Infinity): string[] {
  const lines = [`Port statistics (${elapsedS.toFixed(1)} s)`];
  const wide = columns >= WIDE_TABLE_COLUMNS;
  if (wide) {
    lines.push(`${'port'.padEnd(5)}${'name'.padEnd(20)}${'RX-packets'.padStart(15)}${'RX-missed'.padStart(11)}${'RX-errors'.padStart(11)}` +
      `${'TX-packets'.padStart(15)}${'TX-errors'.padStart(11)}${'not sent'.padStart(14)}${'Rx-pps'.padStart(13)}${'Tx-pps'.padStart(13)}`);
  } else {
    lines.push(`${'port'.padEnd(5)}${'name'.padEnd(20)}${'RX-packets'.padStart(15)}${'RX-missed'.padStart(11)}${'RX-errors'.padStart(11)}${'Rx-pps'.padStart(13)}`);
    lines.push(`${''.padEnd(25)}${'TX-packets'.padStart(15)}${'TX-errors'.padStart(11)}${'not sent'.padStart(11)}${'Tx-pps'.padStart(13)}`);
  }
  let trx = 0, ttx = 0;
  for (const r of rows) {
    trx += r.rxPps;
    ttx += r.txPps;
    const head = `${String(r.port).padEnd(5)}${shortName(r.name, 19).padEnd(20)}`;
    if (wide) {
      lines.push(`${head}${fmt(r.rxPackets, 15)}${fmt(r.rxMissed, 11)}${fmt(r.rxErrors, 11)}` +
        `${fmt(r.txPackets, 15)}${fmt(r.txErrors, 11)}${fmt(r.notSent, 14)}${fmt(Math.round(r.rxPps), 13)}${fmt(Math.round(r.txPps), 13)}`);
    } else {
      lines.push(`${head}${fmt(r.rxPackets, 15)}${fmt(r.rxMissed, 11)}${fmt(r.rxErrors, 11)}${fmt(Math.round(r.rxPps), 13)}`);
      lines.push(`${''.padEnd(25)}${fmt(r.txPackets, 15)}${fmt(r.txErrors, 11)}${fmt(r.notSent, 11)}${fmt(Math.round(r.txPps), 13)}`);
    }
  }
  lines.push(`total: Rx-pps ${Math.round(trx).toLocaleString('en-US')}  Tx-pps ${Math.round(ttx).toLocaleString('en-US')}`);
  lines.push(NOT_SENT_LEGEND);
  // Never wider than the terminal: a wrapped line would throw off the in-place redraw.
  return Number.isFinite(columns) ? lines.map((l) => (l.length >= columns ? l.slice(0, Math.max(1, columns - 1)) : l)) : lines;
}

/** n with thousands separators, right-aligned in w columns, always after at least one space. */
function fmt(n: number, w: number): string {
  return ' ' + n.toLocaleString('en-US').padStart(w - 1);
}

/** A port name cut to n characters, keeping its start and end ("vfio-user:/t…/virtio-net.sock"). */
function shortName(name: string, n: number): string {
  if (name.length <= n) return name;
  const tail = Math.floor((n - 1) / 2);
  return `${name.slice(0, n - 1 - tail)}…${name.slice(name.length - tail)}`;
}
