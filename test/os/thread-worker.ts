/** Worker thread for test/os/libc.test.ts: names itself, reports its tid and CPUs, waits to be told to exit. */
import { parentPort, workerData } from 'node:worker_threads';
import * as os from '../../src/os/libc.js';

const { name } = workerData as { name: string };
os.setThreadName(name);
parentPort!.postMessage({ tid: os.gettid(), cpus: os.getAffinity() });
parentPort!.once('message', () => parentPort!.close());
