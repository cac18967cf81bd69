/**
 * Which lcore the calling thread is. Each worker thread has its own module instance, so this is
 * thread-local state: set once when an lcore starts (or by the EAL for the main thread) and read
 * by per-lcore structures such as mempool caches.
 */

/** "not an lcore": a thread that must not use per-lcore caches. */
export const LCORE_ID_ANY = -1;
/** Highest number of lcores (like RTE_MAX_LCORE); ids are 0..MAX_LCORE-1. */
export const MAX_LCORE = 128;

let current = LCORE_ID_ANY;

/** The calling thread's lcore id, or LCORE_ID_ANY. */
export function lcoreId(): number {
  return current;
}

/** Declare the calling thread to be lcore id (LCORE_ID_ANY to leave the role). */
export function setLcoreId(id: number): void {
  if (id !== LCORE_ID_ANY && (!Number.isInteger(id) || id < 0 || id >= MAX_LCORE)) {
    throw new RangeError(`lcore id ${id} must be 0..${MAX_LCORE - 1}`);
  }
  current = id;
}
