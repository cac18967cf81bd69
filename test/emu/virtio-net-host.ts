/**
 * The device side of the virtio-net tests, in its own worker thread: the VirtioNetDevice control
 * half and a VfioUserServer. The vfio-user client is synchronous (it blocks its thread until the
 * reply), so the server cannot share the test's thread; the device's poll loop runs on an EAL
 * lcore launched by the test thread with the loopArg this host posts back.
 *
 * Messages in: { op: 'close' }. Messages out: { op: 'ready', arg, state, stats }, { op: 'closed' }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { chmodSync } from 'node:fs';
import { VfioUserServer } from '../../lib/vfio-user/server.js';
import type { PortData } from '../../lib/ethdev/ethdev.js';
import { VirtioNetDevice } from '../../drivers/emu/virtio-net/device.js';
import type { VirtioNetConfig } from '../../drivers/emu/virtio-net/layout.js';

/** What the host is started with. */
export interface HostData {
  socket: string;
  config: VirtioNetConfig;
  backend: PortData;
  resetOnDisconnect: boolean;
}

const data = workerData as HostData;
const dev = new VirtioNetDevice(data.config, 'tsp-vnet');
const server = new VfioUserServer(dev.emu, data.socket, { resetOnDisconnect: data.resetOnDisconnect });
// listenUnix sets the umask around bind(); workers may not (process.umask(mask) throws there).
// The socket lives in the test's private directory; it gets mode 0600 right after.
const umask = process.umask;
process.umask = ((mask?: number) => (mask === undefined ? (umask as () => number).call(process) : 0o022)) as typeof process.umask;
try {
  server.start();
} finally {
  process.umask = umask;
}
chmodSync(data.socket, 0o600);
parentPort!.postMessage({ op: 'ready', arg: dev.loopArg(data.backend), state: dev.state.buffer, stats: dev.stats.buffer });
parentPort!.on('message', (m: { op: string }) => {
  if (m.op !== 'close') return;
  void server.close().then(() => {
    dev.close();
    parentPort!.postMessage({ op: 'closed', connections: server.stats.connections });
    parentPort!.close();
  });
});
