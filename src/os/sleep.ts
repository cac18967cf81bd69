/**
 * The one blocking delay of the control plane: a driver waiting for a device handshake (a reset
 * bit to clear, an EEPROM or PHY access to finish) sleeps its thread for a millisecond at a time.
 */

/** Shared word nobody ever notifies: Atomics.wait on it is a plain timed sleep. */
const SLEEPER = new Int32Array(new SharedArrayBuffer(4));

/** Block the calling thread for ms milliseconds (control plane only: never on an lcore's data path). */
export function sleepMs(ms: number): void {
  Atomics.wait(SLEEPER, 0, 0, ms);
}
