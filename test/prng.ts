// One generator for the fuzzers and the benchmarks: bench/ may not import test/, so it lives there.
export { prng } from '../bench/prng.js';
