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
import { CAPTURE_MAGIC, CAPTURE_MEMFD, CAPTURE_REGION, CAPTURE_VERSION, W_MAGIC, W_VERSION, mapRegion, type PdumpCallbackArg } from './region.js';

/** The queue-callback module (wrapRxQueue / wrapTxQueue), loaded by the lcores. */
const QUEUE_MODULE = siblingModule(import.meta.url, 'queue');

/** undefined: not tried yet; then whether this process can be captured. */
let ready: boolean | undefined;

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
  try {
    fd = os.memfdCreate(CAPTURE_MEMFD, 0);
    os.ftruncate(fd, CAPTURE_REGION);
    const { views, va } = mapRegion(fd);
    views.i32[W_VERSION] = CAPTURE_VERSION;
    Atomics.store(views.i32, W_MAGIC, CAPTURE_MAGIC);
    os.munmap(va, CAPTURE_REGION); // each thread that opens a queue maps its own (lib/pdump/queue.ts)
  } catch (e) {
    if (fd >= 0) os.close(fd);
    log('warn', 'pdump', `no capture region (${(e as Error).message}): this process cannot be captured`);
    return false;
  }
  const arg: PdumpCallbackArg = { fd }; // the fd stays open for the process's life: lcores map it
  addQueueCallback({ module: QUEUE_MODULE, arg });
  ready = true;
  return true;
}
