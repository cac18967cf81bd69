/**
 * The emudev registry (the seed's rte_emudev_allocate / get_dev_by_name / release and the provider
 * ops table): every emulated device of this process, by name and by id, and the main thread's
 * handle on each. A provider (a device model: drivers/emu) implements EmuProvider and is allocated
 * here; a back-end finds it by name or id and asks it for what it needs (backend.ts on an lcore).
 */
import type { EmuDevice } from './emudev.js';
import type { EmuBackendDesc } from './backend.js';

/** What a provider says of its device (the seed's rte_emudev_info). */
export interface EmuProviderInfo {
  /** device type, e.g. 'virtio-net', 'dmatest' */
  type: string;
  /** queue pairs the device may have (0: not a queue-pair device) */
  maxQueuePairs: number;
  /** queues in its queue table */
  maxQueues: number;
  /** event records a subscription's ring holds by default */
  maxEvents: number;
}

/** A device model as the registry holds it: the seed's rte_emudev_ops, in TypeScript style. */
export interface EmuProvider {
  /** the PCI device model a vfio-user server serves */
  readonly emu: EmuDevice;
  /** device facts */
  info(): EmuProviderInfo;
  /** what a back-end lcore attaches with (EmuBackend.attach); id is filled in by the registry */
  backendDesc(): Omit<EmuBackendDesc, 'id'>;
  /** apply a device-specific configuration (key=value, checked by the provider); only while stopped */
  configure?(config: Record<string, string>): void;
  /** the device may run (a back-end may attach) */
  start?(): Promise<void> | void;
  /** stop: back-ends detach first */
  stop?(): Promise<void> | void;
  /** a back-end changed an attribute the provider acts on (e.g. link status: a config interrupt) */
  attrChanged?(name: string): void;
  /** release the device (after stop) */
  close(): Promise<void> | void;
}
