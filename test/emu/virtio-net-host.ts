/**
 * The device side of the virtio-net tests, in its own worker thread: the device as its
 * net_virtio_emu port (VirtioEmuPort, the device and its vfio-user server), configured and started
 * with the test's pool. The vfio-user client is synchronous (it blocks its thread until the reply),
 * so the server cannot share the test's thread; the forwarding loop (virtioNetFwdLoop) runs on an
 * EAL lcore launched by the test thread with the port data this host posts back.
 *
 * Messages in: { op: 'close' } (once the loop returned). Messages out: { op: 'ready', guest, state, stats }, { op: 'closed' }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { chmodSync } from 'node:fs';
import type { VirtioNetConfig } from '../../drivers/emu/virtio-net/layout.js';
import { VirtioEmuPort } from '../../drivers/net/virtio_emu/virtio_emu.js';
import { Mempool, type MempoolDesc } from '../../lib/mempool/mempool.js';

/** What the host is started with. */
export interface HostData {
  socket: string;
  config: VirtioNetConfig;
  /** the pool of the port's RX queue (the guest's frames) */
  pool: MempoolDesc;
  resetOnDisconnect: boolean;
}

const data = workerData as HostData;
// listenUnix sets the umask around bind(); workers may not (process.umask(mask) throws there).
// The socket lives in the test's private directory; it gets mode 0600 right after.
const umask = process.umask;
process.umask = ((mask?: number) => (mask === undefined ? (umask as () => number).call(process) : 0o022)) as typeof process.umask;
let port: VirtioEmuPort;
try {
  port = VirtioEmuPort.create('tsp-vnet', data.config, { socket: data.socket, server: { resetOnDisconnect: data.resetOnDisconnect } });
} finally {
  process.umask = umask;
}
chmodSync(data.socket, 0o600);
port.configure({ rxQueues: 1, txQueues: 1 });
port.rxQueueSetup(0, 1024, Mempool.attach(data.pool));
port.txQueueSetup(0, 1024);
port.start();
const dev = port.device;
parentPort!.postMessage({ op: 'ready', guest: port.data(), state: dev.state.buffer, stats: dev.stats.buffer });
parentPort!.on('message', (m: { op: string }) => {
  if (m.op !== 'close') return;
  port.stop();
  void port.shutdown().then(() => {
    parentPort!.postMessage({ op: 'closed', connections: port.server?.stats.connections ?? 0 });
    parentPort!.close();
  });
});
