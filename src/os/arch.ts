/**
 * What the CPU guarantees about memory order, for data paths that publish to another core or to
 * the kernel through shared memory.
 */

/**
 * x86 keeps stores in order and loads in order (TSO): a plain store publishes like a
 * store-release, a plain load reads like a load-acquire. `Atomics.store` is a call to V8's
 * builtin and an `xchg`, a full fence; data paths use plain accesses where this is true and
 * Atomics elsewhere.
 */
export const TSO = process.arch === 'x64' || process.arch === 'ia32';
