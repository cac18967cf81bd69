/**
 * What the IPv4 and IPv6 LPM tables (lib/lpm/lpm.ts, lib/lpm/lpm6.ts) share: one memory layout
 * (the QSBR words, a tbl24 of 2^24 Int32 entries, then tbl8 groups of 256), its creation and
 * attach checks, the reader calls and the writer-only getters. Each table extends LpmTable and
 * keeps its own add, delete and lookups: the lookups read the inherited `declare`d tbl24 and
 * tbl8 fields of the instance itself, so they cost what they cost before (docs/performance.md).
 */
import { QsbrGroups, QsbrReaders, qsbrBytes } from './qsbr.js';
import { MAX_LCORE } from '../../src/lcore/id.js';
import { adviseHugePages } from '../../src/os/libc.js';

/** Entries of the first level. */
export const TBL24_ENTRIES = 1 << 24;

/** A table's location as plain data (LpmDesc, Lpm6Desc). */
export interface LpmTableDesc {
  name: string;
  memory: SharedArrayBuffer;
  numberTbl8s: number;
  maxReaders: number;
}

/** The create() options both tables take (LpmOptions, Lpm6Options). */
export interface LpmTableOptions {
  maxRules: number;
  numberTbl8s: number;
  maxReaders?: number;
  reclaimWaitMs?: number;
}

/** Which table a message speaks of: the prefix of its errors and its class and magic. */
export interface LpmKind {
  /** error prefix: `lpm` or `lpm6` */
  tag: string;
  /** class name, for the hints: `Lpm` or `Lpm6` */
  cls: string;
  /** table name in the attach errors: `LPM` or `LPM6` */
  label: string;
  /** first QSBR word of the memory */
  magic: number;
}

/** The writer's state both tables have: a rules table, the group allocator, the rule limit. */
export interface LpmWriterBase<R> {
  rules: { readonly count: number; readonly bytes: number; entries(): IterableIterator<R> };
  groups: QsbrGroups;
  maxRules: number;
}

/** Check a whole number in [min, max]; throws RangeError naming what and the table. */
export function checkInt(tag: string, what: string, v: number, min: number, max: number, table: string): void {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${tag} "${table}": ${what} ${v} must be a whole number from ${min} to ${max}`);
}

/** Bytes of a table's memory: QSBR words, tbl24, the groups. */
function tableBytes(maxReaders: number, numberTbl8s: number): number {
  return qsbrBytes(maxReaders) + TBL24_ENTRIES * 4 + numberTbl8s * 1024;
}

/**
 * Check create()'s options against the table's limits, allocate the zeroed shared memory, mark
 * it with the magic and make the group allocator over its QSBR words.
 */
export function createTables(kind: LpmKind, name: string, opts: LpmTableOptions, maxRules: number, maxTbl8s: number): { desc: LpmTableDesc; groups: QsbrGroups } {
  const tag = kind.tag;
  checkInt(tag, 'maxRules', opts.maxRules, 1, maxRules, name);
  checkInt(tag, 'numberTbl8s', opts.numberTbl8s, 0, maxTbl8s, name);
  const maxReaders = opts.maxReaders ?? MAX_LCORE;
  checkInt(tag, 'maxReaders', maxReaders, 1, 4096, name);
  const waitMs = opts.reclaimWaitMs ?? 1000;
  if (!(waitMs >= 0)) throw new RangeError(`${tag} "${name}": reclaimWaitMs ${waitMs} must be a number of milliseconds >= 0`);
  const n = opts.numberTbl8s;
  const bytes = tableBytes(maxReaders, n);
  let sab: SharedArrayBuffer;
  try {
    sab = new SharedArrayBuffer(bytes);
    adviseHugePages(sab); // lookups land at random in 64 MiB: a TLB entry per 2 MiB, not per 4 KiB
  } catch (e) {
    throw new RangeError(`${tag} "${name}": cannot allocate ${(bytes / 2 ** 20).toFixed(0)} MiB for the tables (${(e as Error).message}); lower numberTbl8s (${n} groups of 1 KiB)`);
  }
  const words = new Int32Array(sab, 0, qsbrBytes(maxReaders) / 4);
  words[0] = kind.magic;
  return { desc: { name, memory: sab, numberTbl8s: n, maxReaders }, groups: new QsbrGroups(n, words, maxReaders, waitMs) };
}

/** Check that desc describes a table of this kind before attaching to it; throws a one-line Error. */
export function checkAttach(kind: LpmKind, desc: LpmTableDesc): void {
  if (!(desc.memory instanceof SharedArrayBuffer) || desc.memory.byteLength !== tableBytes(desc.maxReaders, desc.numberTbl8s)) {
    throw new Error(`${kind.tag} "${desc.name}": the descriptor does not describe an ${kind.label} table (pass lpm.desc as it is)`);
  }
  if (Atomics.load(new Int32Array(desc.memory, 0, 1), 0) !== kind.magic) throw new Error(`${kind.tag} "${desc.name}": no ${kind.label} table in this memory (bad magic)`);
}

/** The base of Lpm and Lpm6: the shared tables, the readers, and the writer's state on the creating thread. */
export abstract class LpmTable<W extends LpmWriterBase<R>, R, D extends LpmTableDesc> {
  // Fields are `declare`d and assigned in the constructor, so V8 keeps them untagged in the lookup
  // loops (docs/performance.md).
  declare readonly name: string;
  /** where it lives, for attach() in other threads */
  declare readonly desc: D;
  /** tbl8 groups (number_tbl8s of the rte_lpm config) */
  declare readonly numberTbl8s: number;
  protected declare readonly tbl24: Int32Array;
  protected declare readonly tbl8: Int32Array;
  protected declare readonly kind: LpmKind;
  private declare readonly readers: QsbrReaders;
  protected declare readonly w: W | null;

  /** Views of desc's memory; writer is null on an attached (read-only) table. */
  protected constructor(kind: LpmKind, desc: D, writer: W | null) {
    const sab = desc.memory;
    const q = qsbrBytes(desc.maxReaders);
    this.name = desc.name;
    this.desc = desc;
    this.numberTbl8s = desc.numberTbl8s;
    this.kind = kind;
    this.readers = new QsbrReaders(new Int32Array(sab, 0, q / 4), desc.maxReaders, `${kind.tag} "${desc.name}"`);
    this.tbl24 = new Int32Array(sab, q, TBL24_ENTRIES);
    this.tbl8 = new Int32Array(sab, q + TBL24_ENTRIES * 4, desc.numberTbl8s * 256);
    this.w = writer;
  }

  /** The writer's state; throws when this thread attached the table read-only. */
  protected writer(op: string): W {
    if (!this.w) throw new Error(`${this.kind.tag} "${this.name}": ${op} on a table attached read-only (${this.kind.cls}.attach); routes change on the thread that created it`);
    return this.w;
  }

  /** Bytes the writer keeps besides the shared tables. */
  protected abstract writerBytes(w: W): number;

  /** Start reading as reader id (0..maxReaders-1, e.g. the lcore id): rte_rcu_qsbr_thread_register + rte_rcu_qsbr_thread_online. */
  readerOnline(id: number): void {
    this.readers.online(id);
  }

  /** A quiescent point of reader id, between bursts (rte_rcu_qsbr_quiescent). Allocates nothing. */
  readerQuiescent(id: number): void {
    this.readers.quiescent(id);
  }

  /** Reader id stops reading (rte_rcu_qsbr_thread_offline); any thread may call it for a reader that stopped. */
  readerOffline(id: number): void {
    this.readers.offline(id);
  }

  /**
   * Hand back the unlinked groups every online reader has passed (rte_rcu_qsbr_dq_reclaim);
   * add() and delete() do it themselves. Returns how many became free.
   */
  reclaim(): number {
    return this.writer('reclaim').groups.reclaim();
  }

  /** Rules in the table (writer only). */
  get rules(): number {
    return this.writer('rules').rules.count;
  }

  /** tbl8 groups linked or waiting for readers (writer only). */
  get tbl8sUsed(): number {
    return this.writer('tbl8sUsed').groups.used;
  }

  /** tbl8 groups unlinked and waiting for readers to pass a quiescent point (writer only). */
  get tbl8sWaiting(): number {
    return this.writer('tbl8sWaiting').groups.waiting;
  }

  /** Bytes of memory: the shared tables, and on the writer its rules (and shadow) tables. */
  get memoryBytes(): number {
    return this.desc.memory.byteLength + (this.w ? this.writerBytes(this.w) : 0);
  }

  /** Every rule as [ip, depth, nextHop] (writer only; for dumps and tests). */
  ruleList(): R[] {
    return [...this.writer('ruleList').rules.entries()];
  }
}
