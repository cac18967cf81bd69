/**
 * StatsReporter's live table (lib/app/stats.ts) on fake ports: the testpmd-like columns and rates,
 * plain lines when the output is not a terminal, an in-place redraw (cursor up, clear) on a
 * terminal that never writes a line wider than the terminal, and an unchanged JSON summary.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { StatsReporter, formatLiveTable, NOT_SENT_LEGEND, WIDE_TABLE_COLUMNS, type LiveRow } from '../../lib/app/stats.js';
import type { EthDev, PortStats } from '../../lib/ethdev/ethdev.js';

/** A port with settable counters: what StatsReporter reads (port, name, stats(), statsReset()). */
class FakePort {
  ipackets = 0;
  opackets = 0;
  imissed = 0;
  ierrors = 0;
  oerrors = 0;
  constructor(readonly port: number, readonly name: string) {}
  stats(): PortStats {
    return {
      ipackets: this.ipackets, opackets: this.opackets, ibytes: this.ipackets * 64, obytes: this.opackets * 64, imissed: this.imissed,
      ierrors: this.ierrors, oerrors: this.oerrors, rx_nombuf: 0, q_ipackets: [this.ipackets], q_opackets: [this.opackets], q_ibytes: [], q_obytes: [],
    };
  }
  statsReset(): void { /* counters start at 0 */ }
}

/** A writable that keeps what was written, optionally posing as a terminal of some width. */
class Capture extends Writable {
  text = '';
  isTTY?: boolean;
  columns?: number;
  constructor(tty: number | null) {
    super();
    if (tty !== null) { this.isTTY = true; this.columns = tty; }
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

const ports = (): FakePort[] => [new FakePort(0, 'net_null0'), new FakePort(1, 'vfio-user:/tmp/a-rather-long/socket/path.sock')];
const asDevs = (p: FakePort[]): EthDev[] => p as unknown as EthDev[];

t.test('formatLiveTable: testpmd-like columns, one line per port when wide', async (t) => {
  const row: LiveRow = { port: 0, name: 'net_null0', rxPackets: 1234567, rxMissed: 3, rxErrors: 4, txPackets: 7654321, txErrors: 5, notSent: 6, rxPps: 1000.4, txPps: 2000.6 };
  const lines = formatLiveTable([row], 2.04);
  t.equal(lines[0], 'Port statistics (2.0 s)');
  for (const h of ['RX-packets', 'RX-missed', 'RX-errors', 'TX-packets', 'TX-errors', 'not sent', 'Rx-pps', 'Tx-pps']) t.match(lines[1], h, `header has ${h}`);
  t.match(lines[2], /^0 +net_null0 +1,234,567 +3 +4 +7,654,321 +5 +6 +1,000 +2,001$/, 'the port\'s line in header order');
  t.equal(lines[3], 'total: Rx-pps 1,000  Tx-pps 2,001');
  t.equal(lines[4], NOT_SENT_LEGEND, 'the legend says what "not sent" means');
  t.ok(lines.every((l) => l.length <= WIDE_TABLE_COLUMNS), `no line over ${WIDE_TABLE_COLUMNS} columns`);
  const narrow = formatLiveTable([row], 2, 80);
  t.ok(narrow.every((l) => l.length < 80), `80 columns: every line fits (${Math.max(...narrow.map((l) => l.length))})`);
  t.match(narrow.join('\n'), /0 +net_null0 +1,234,567 +3 +4 +1,000\n +7,654,321 +5 +6 +2,001/, 'two lines per port: RX, then TX');
  t.ok(formatLiveTable([row], 2, 40).every((l) => l.length < 40), 'a very narrow terminal: lines are cut, never wrapped');
});

t.test('StatsReporter.print: rates over the period, plain lines when not a terminal', async (t) => {
  const p = ports();
  const out = new Capture(null);
  const drops = [0, 0];
  const r = new StatsReporter(asDevs(p), (i) => drops[i], out);
  const t0 = performance.now();
  r.start(0);
  t.teardown(() => r.stop());
  await new Promise((res) => setTimeout(res, 200));
  p[0].ipackets = 1000; p[0].opackets = 900; p[0].imissed = 2; drops[0] = 100;
  r.print();
  const took = (performance.now() - t0) / 1000;
  t.notMatch(out.text, /\x1b\[/, 'no escape sequences when not a terminal');
  const line = out.text.split('\n').find((l) => l.startsWith('0 '))!;
  const cols = line.trim().split(/ +/);
  t.same(cols.slice(0, 8), ['0', 'net_null0', '1,000', '2', '0', '900', '0', '100'], 'totals, missed and not sent');
  const rxPps = Number(cols[8].replace(/,/g, ''));
  t.ok(rxPps >= Math.floor(1000 / took) && rxPps <= 1000 / 0.19, `Rx-pps is packets over the period's seconds (${rxPps} for 1000 packets in ${took.toFixed(3)} s)`);
  const before = out.text.length;
  r.print();
  t.match(out.text.slice(before), /^\nPort statistics/, 'the next table follows as new lines');
  r.stop();
  const s = r.summary('x');
  t.same(Object.keys(s), ['app', 'elapsed_s', 'total_rx_mpps', 'total_tx_mpps', 'steady_rx_mpps', 'ports'], 'summary fields unchanged');
  t.same(Object.keys(s.ports[0]), ['port', 'name', 'ipackets', 'opackets', 'ibytes', 'obytes', 'imissed', 'ierrors', 'oerrors', 'rx_nombuf', 'dropped'], 'port fields unchanged');
  t.equal(s.ports[0].dropped, 100, 'dropped is the app\'s counter');
});

t.test('StatsReporter.print on a terminal: redrawn in place with cursor moves', async (t) => {
  const p = ports();
  const out = new Capture(100);
  const r = new StatsReporter(asDevs(p), () => 0, out);
  r.start(0);
  t.teardown(() => r.stop());
  r.print();
  const first = out.text;
  t.notMatch(first, /\x1b\[/, 'the first table is drawn where the cursor is');
  const n = first.trimEnd().split('\n').length;
  t.ok(first.split('\n').every((l) => l.length < 100), 'no line is wider than the terminal');
  p[1].ipackets = 5;
  r.print();
  const second = out.text.slice(first.length);
  t.ok(second.startsWith(`\x1b[${n}F\x1b[J`), `the second goes back ${n} lines and clears to the end of the screen first`);
  t.equal(second.replace(/\x1b\[\d+F\x1b\[J/, '').trimEnd().split('\n').length, n, 'and has as many lines');
  r.stop();
});

t.test('printSummary text: "not sent" explained, JSON unchanged', async (t) => {
  const p = ports();
  p[0].ipackets = 10;
  const out = new Capture(null);
  const r = new StatsReporter(asDevs(p), (i) => (i === 0 ? 7 : 0), out);
  r.start(0);
  r.stop();
  const s = r.summary('l2fwd', { extra: 1 });
  r.printSummary(s, false);
  t.match(out.text, /port 0 \(net_null0\): RX 10 pkts \/ 640 B, TX 0 pkts \/ 0 B, not sent 7 \(TX full\), missed 0/);
  out.text = '';
  r.printSummary(s, true);
  const j = JSON.parse(out.text) as Record<string, unknown>;
  t.equal(j.extra, 1);
  t.equal((j.ports as Array<Record<string, unknown>>)[0].dropped, 7, 'JSON keeps "dropped"');
});
