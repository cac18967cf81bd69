/**
 * Example: drive an emulated dmatest device over vfio-user, the way a PMD drives hardware.
 *
 *   terminal 1:  tspmd emu dmatest --socket /tmp/dmatest.sock
 *   terminal 2:  node dist/app/emu/dmatest-demo.js /tmp/dmatest.sock [JOBS] [--message-dma]
 *
 * The client maps its EAL memory (memfd segments, --no-huge) into the device by fd, puts copy
 * descriptors in a ring, rings the doorbell with one store into the mmapped BAR page, and waits for
 * the MSI-X eventfd; then it checks every copy and checksum. With --message-dma the buffers are
 * anonymous memory without fd, reached by the device through DMA_READ/WRITE messages instead.
 */
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import * as os from '../../src/os/libc.js';
import { Eal } from '../../src/eal.js';
import { wholeNumber } from '../../src/options.js';
import { VfioUserClient } from '../../lib/vfio-user/client.js';
import { DmatestDriver } from '../../drivers/raw/dmatest/dmatest.js';
import { adler32, DESC_SIZE, DESC_STATUS_DONE } from '../../lib/dmatest/regs.js';

/** What one demo run did. */
export interface DemoResult {
  jobs: number;
  ok: number;
  bytes: number;
  interrupts: number;
  ms: number;
}

const JOB = 4096, RING = 64;

/**
 * A client of a dmatest device that stays connected between runs: its EAL, the vfio-user
 * connection, the ring and room for `capacity` jobs' source and destination buffers.
 */
export class DmatestSession {
  private readonly eal: Eal;
  private readonly client: VfioUserClient;
  private readonly drv: DmatestDriver;
  private readonly mem: Uint8Array;
  private readonly iova: bigint;
  private readonly anon: bigint;
  private readonly len: number;
  private closed = false;

  private constructor(eal: Eal, client: VfioUserClient, drv: DmatestDriver, mem: Uint8Array, iova: bigint, anon: bigint, readonly capacity: number) {
    this.eal = eal;
    this.client = client;
    this.drv = drv;
    this.mem = mem;
    this.iova = iova;
    this.anon = anon;
    this.len = mem.byteLength;
  }

  /** Connect to the device at socket and set its ring up; messageDma: buffers without fd, reached by DMA_READ/WRITE messages. */
  static async open(socket: string, capacity = 256, messageDma = false): Promise<DmatestSession> {
    const eal = new Eal({ noHuge: true, filePrefix: `tspdemo${process.pid}_${sessionSeq++}`, lcores: [{ id: 0, cpu: os.getAffinity()[0] }] });
    let client: VfioUserClient | null = null;
    let anon = 0n;
    const len = RING * DESC_SIZE + 2 * capacity * JOB;
    try {
      client = VfioUserClient.connect(socket);
      let va: bigint, iova: bigint;
      if (messageDma) {
        anon = os.mmap(0n, len, os.PROT_READ | os.PROT_WRITE, os.MAP_PRIVATE | os.MAP_ANONYMOUS, -1, 0);
        va = anon;
        iova = 0x1_0000_0000n;
        client.dmaMapMessage(va, iova, len);
        client.startService(); // answer the device's DMA_READ/WRITE while we wait
      } else {
        const mz = eal.memory.reserve('dmatest_demo', len, 4096);
        client.attachMemory(eal.memory); // every segment by fd
        va = mz.va;
        iova = mz.iova;
      }
      const drv = DmatestDriver.open(client, { va, iova, len: RING * DESC_SIZE }, { entries: RING });
      return new DmatestSession(eal, client, drv, new Uint8Array(os.viewOf(va, len)), iova, anon, capacity);
    } catch (e) {
      client?.close();
      if (anon !== 0n) os.munmap(anon, len);
      await eal.close();
      throw e;
    }
  }

  /** Copy jobs × 4 KiB of fresh random bytes through the device and verify every copy and checksum. */
  async run(jobs = this.capacity): Promise<DemoResult> {
    if (jobs < 1 || jobs > this.capacity) throw new RangeError(`dmatest session: ${jobs} jobs; this session has room for 1 to ${this.capacity}`);
    const { mem, iova, drv } = this;
    const srcOff = RING * DESC_SIZE, dstOff = srcOff + this.capacity * JOB;
    mem.set(randomBytes(jobs * JOB), srcOff);
    mem.fill(0, dstOff, dstOff + jobs * JOB);
    const t0 = Date.now();
    let ok = 0, interrupts = 0, next = 0, done = 0;
    while (done < jobs) {
      while (next < jobs && drv.inFlight < RING) {
        drv.submit(iova + BigInt(srcOff + next * JOB), iova + BigInt(dstOff + next * JOB), JOB);
        next++;
      }
      const r = await drv.wait(1, 5000);
      interrupts += r.interrupts;
      for (const c of r.completions) {
        const j = done++;
        const s = mem.subarray(srcOff + j * JOB, srcOff + (j + 1) * JOB);
        if (c.status === DESC_STATUS_DONE && c.checksum === adler32(s) && Buffer.from(mem.subarray(dstOff + j * JOB, dstOff + (j + 1) * JOB)).equals(s)) ok++;
      }
    }
    return { jobs, ok, bytes: jobs * JOB, interrupts, ms: Date.now() - t0 };
  }

  /** Disable the device's ring, disconnect and release the memory. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      this.drv.close();
    } finally {
      this.client.close();
      if (this.anon !== 0n) os.munmap(this.anon, this.len);
      await this.eal.close();
    }
  }
}

let sessionSeq = 0;

/** Copy jobs × 4 KiB through the device at socket and verify them (one session, one run). */
export async function dmatestDemo(socket: string, jobs = 256, messageDma = false): Promise<DemoResult> {
  const s = await DmatestSession.open(socket, jobs, messageDma);
  try {
    return await s.run(jobs);
  } finally {
    await s.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const socket = args.find((a) => !a.startsWith('-') && !/^\d+$/.test(a));
  if (!socket) {
    console.error('usage: dmatest-demo SOCKET [JOBS] [--message-dma]   (serve one with: tspmd emu dmatest --socket SOCKET)');
    process.exit(2);
  }
  const jobsArg = args.find((a) => /^\d+$/.test(a));
  const jobs = jobsArg === undefined ? 256 : wholeNumber(jobsArg, 1, 16384);
  if (jobs === null) {
    console.error(`dmatest-demo: JOBS "${jobsArg}": expected a whole number from 1 to 16384`);
    process.exit(2);
  }
  dmatestDemo(socket, jobs, args.includes('--message-dma')).then((r) => {
    console.log(`${r.ok}/${r.jobs} copies verified, ${(r.bytes / 1024).toFixed(0)} KiB in ${r.ms} ms, ${r.interrupts} interrupts`);
    process.exit(r.ok === r.jobs ? 0 : 1);
  }, (e: unknown) => {
    console.error(`dmatest-demo: ${(e as Error).message}`);
    process.exit(1);
  });
}
