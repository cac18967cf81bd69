/**
 * pdump, the app side (rte_pdump_init): pdumpInit() gives this process a capture region and
 * registers lib/pdump/queue.ts as an ethdev queue callback, so every queue an lcore opens from
 * then on can be captured by `tspmd pdump` while the app runs. The app framework (runApp, hence
 * appMain) calls it unless TSPMD_PDUMP=0; an app that builds its own Eal calls it itself.
 * The capturing side is lib/pdump/capture.ts; the layout, lib/pdump/region.ts.
 */
import { isMainThread } from 'node:worker_threads';
import * as os from '../../src/os/libc.js';
import { log } from '../../src/log.js';
import { siblingModule } from '../../src/lcore/module.js';
import { addQueueCallback } from '../ethdev/ethdev.js';
import {
  CAPTURE_MAGIC, CAPTURE_MAX_PORTS, CAPTURE_MEMFD, CAPTURE_REGION, CAPTURE_VERSION, MASK_BASE, W_MAGIC, W_OWNER, W_VERSION, mapRegion,
  readerGone, type CaptureViews, type PdumpCallbackArg,
} from './region.js';

/** The queue-callback module (wrapRxQueue / wrapTxQueue), loaded by the lcores. */
const QUEUE_MODULE = siblingModule(import.meta.url, 'queue');

/** undefined: not tried yet; then whether this process can be captured. */
let ready: boolean | undefined;

/** How often the main thread checks that the pdump capturing this process still lives. */
const WATCH_MS = 1000;

/**
 * Set up this process's capture region and register the capture callback (main thread, once:
 * later calls return the first answer). Ports whose data() is taken afterwards can be captured.
 * Returns false when no region could be made (capture is then unavailable; nothing else changes).
 */
export function pdumpInit(): boolean {
  if (!isMainThread) throw new Error('pdumpInit() runs on the main thread, before the ports\' data() is handed to lcores');
  if (ready !== undefined) return ready;
  ready = false;
  let fd = -1;
  let views: CaptureViews;
  try {
    fd = os.memfdCreate(CAPTURE_MEMFD, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING);
    os.ftruncate(fd, CAPTURE_REGION);
    // Its size is fixed: a pdump maps it whole, and checks these seals before it does.
    os.addSeals(fd, os.F_SEAL_SHRINK | os.F_SEAL_GROW | os.F_SEAL_SEAL);
    views = mapRegion(fd).views; // this thread's mapping stays, for the watch; each lcore thread maps its own (lib/pdump/queue.ts)
    views.i32[W_VERSION] = CAPTURE_VERSION;
    Atomics.store(views.i32, W_MAGIC, CAPTURE_MAGIC);
  } catch (e) {
    if (fd >= 0) os.close(fd);
    log('warn', 'pdump', `no capture region (${(e as Error).message}): this process cannot be captured`);
    return false;
  }
  const arg: PdumpCallbackArg = { fd }; // the fd stays open for the process's life: lcores map it
  addQueueCallback({ module: QUEUE_MODULE, arg });
  const watch = setInterval(() => releaseDeadReader(views), WATCH_MS);
  watch.unref(); // never keeps the process alive
  ready = true;
  return true;
}

/**
 * The watch on the main thread (every WATCH_MS; the lcores never look): when the pdump that
 * claimed the region is gone (SIGKILL, a crash) without switching its capture off, clear every
 * queue mask, then release the claim. Masks first: a new pdump claims only a free region (or,
 * after waiting, a dead one's), so its own masks are never cleared. Returns the dead pdump's pid, or 0.
 */
export function releaseDeadReader(v: CaptureViews): number {
  const owner = Atomics.load(v.i32, W_OWNER);
  if (owner === 0 || !readerGone(owner)) return 0;
  for (let i = 0; i < CAPTURE_MAX_PORTS * 2; i++) Atomics.store(v.i32, MASK_BASE + i, 0);
  if (Atomics.compareExchange(v.i32, W_OWNER, owner, 0) !== owner) return 0;
  log('warn', 'pdump', `pdump pid ${owner} ended without switching its capture off: capture stopped (its file may end mid-capture)`);
  return owner;
}
