/**
 * A process running an EAL on hugetlbfs, for test/memory/hugepages.test.ts.
 * argv: hugeDir prefix memoryMb mode, where mode is
 *   hold    - keep running (the EAL's files stay locked) until killed
 *   signals - the same, with the EAL's default SIGINT/SIGTERM handling (eal.handleSignals())
 *   exit    - call process.exit(7) without closing: the EAL's exit hook must remove the files
 * Prints one JSON line {pid, files} once the EAL is up.
 */
import { Eal } from '../../src/eal.js';

const [hugeDir, filePrefix, mb, mode] = process.argv.slice(2);
const eal = new Eal({ hugeDir, filePrefix, memoryMb: Number(mb), lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
if (mode === 'signals') eal.handleSignals();
process.stdout.write(JSON.stringify({ pid: process.pid, files: eal.memory.files() }) + '\n');
if (mode === 'exit') process.exit(7);
setInterval(() => { /* stay alive until a signal */ }, 1000);
