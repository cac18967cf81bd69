/**
 * Live port statistics for the apps: a periodic table (RX/TX packets, drops, Rx-pps/Tx-pps per
 * port) and the final summary, as text or as one JSON line.
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

  /** drops(i) reads the app's drop counter for ports[i]. */
  constructor(private readonly ports: EthDev[], private readonly drops: (i: number) => number, private readonly out: NodeJS.WritableStream = process.stdout) {}

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

  /** Print the live table once. */
  print(): void {
    const now = performance.now();
    const dt = (now - this.lastT) / 1000;
    const lines = [`\nPort statistics (${((now - this.startT) / 1000).toFixed(1)} s)`];
    lines.push(`${'port'.padEnd(5)}${'name'.padEnd(20)}${'RX packets'.padStart(15)}${'TX packets'.padStart(15)}${'dropped'.padStart(15)}${'missed'.padStart(12)}${'Rx-pps'.padStart(13)}${'Tx-pps'.padStart(13)}`);
    let trx = 0, ttx = 0;
    this.ports.forEach((p, i) => {
      const s = p.stats();
      const rxpps = (s.ipackets - this.last[i].rx) / dt, txpps = (s.opackets - this.last[i].tx) / dt;
      trx += rxpps;
      ttx += txpps;
      this.last[i] = { rx: s.ipackets, tx: s.opackets };
      lines.push(`${String(p.port).padEnd(5)}${shortName(p.name, 19).padEnd(20)}${fmt(s.ipackets, 15)}${fmt(s.opackets, 15)}${fmt(this.drops(i), 15)}${fmt(s.imissed, 12)}${fmt(Math.round(rxpps), 13)}${fmt(Math.round(txpps), 13)}`);
    });
    lines.push(`total: Rx-pps ${Math.round(trx).toLocaleString('en-US')}  Tx-pps ${Math.round(ttx).toLocaleString('en-US')}`);
    this.lastT = now;
    this.out.write(lines.join('\n') + '\n');
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
      lines.push(`  port ${p.port} (${p.name}): RX ${p.ipackets} pkts / ${p.ibytes} B, TX ${p.opackets} pkts / ${p.obytes} B, dropped ${p.dropped}, missed ${p.imissed}, rx errors ${p.ierrors}, tx errors ${p.oerrors}, no mbuf ${p.rx_nombuf}`);
    }
    this.out.write(lines.join('\n') + '\n');
  }
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
