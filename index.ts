/**
 * tspmd: the package's one entry point (`import { ... } from 'tspmd'`). Everything an application
 * needs is exported here, grouped like DPDK's headers; importing it also registers the built-in
 * drivers (net_null, net_ring, net_af_packet, net_af_xdp, net_tap, net_pcap, net_virtio_emu, net_virtio, net_igb,
 * dmatest)
 * with their buses (test/package/drivers.test.ts checks this list against the registries).
 * Modules under dist/ are internal: their paths may change between versions, these names do not.
 * docs/library.md walks through the API.
 */
import './drivers/index.js';
/** What is registered (names, bus, Rx interrupts): for help texts and listings that must not go stale. */
export { driverListing, rxInterruptDriverNames, type DriverListing } from './drivers/index.js';

// ---- EAL: options, environment, memory, lcores (rte_eal.h, rte_lcore.h, rte_memzone.h) ----
export { Eal, memoryConfig } from './src/eal.js';
export { parseEalArgs, splitArgs, defaultEalOptions, parseCoreList, UsageError, EAL_HELP, EAL_OPTIONS, type EalOptions, type EalOptionSpec, type LcoreMap } from './src/options.js';
export { EalMemory, type Memzone, type MemoryConfig } from './src/memory/memory.js';
export type { Segment, IovaMode } from './src/memory/segment.js';
export { Lcores, type LcoreContext, type LcoreFunction } from './src/lcore/lcores.js';
export { siblingModule } from './src/lcore/module.js';
export { lcoreId, MAX_LCORE, LCORE_ID_ANY } from './src/lcore/id.js';
export { countGc, type GcCounter } from './src/lcore/gc.js';
export { log, setLogLevel, type LogLevel } from './src/log.js';

// ---- devices: probing and buses (rte_bus.h, rte_dev.h) ----
export { probePorts, probeDeviceBuses, type ProbePortsOptions } from './drivers/bus/probe.js';
export { probeVdevs, parseVdev, registerVdevDriver, type VdevDriver, type VdevSpec } from './drivers/bus/vdev/vdev.js';
export { parseDevargs, devargsHelp, type DevargsSchema, type DevargSpec, type Devargs } from './lib/kvargs/kvargs.js';
export { PciBus, probePci, registerPciDriver, pciBusConfig, type PciDriver, type PciProbed, type PciProbeContext, type PciDevice, type PciId } from './drivers/bus/pci/pci.js';
export {
  registerMdevDriver, unregisterMdevDriver, mdevDrivers, type MdevDriver, type MdevProbed, type MdevProbeContext, type MdevClaimContext, type MdevDevice,
} from './drivers/bus/mdev/mdev.js';
export type { VfioDevice, DmaSpace, RegionInfo, IrqInfo, DeviceInfo } from './src/iommu/device.js';

// ---- ports (rte_ethdev.h) ----
export {
  EthDev, listPorts, closeAllPorts, openRxQueue, openTxQueue, addQueueCallback, MAX_QUEUES,
  type PortData, type PortConf, type PortStats, type LinkStatus, type DevInfo, type RxQueue, type TxQueue,
  type QueueCallback, type QueueCallbackModule,
} from './lib/ethdev/ethdev.js';
export { RxIdleSleeper, FdRxInterrupt, type RxInterrupt, type RxIdleQueue, type RxIdleSleeperOptions, type RxIdleStats } from './lib/ethdev/rx_intr.js';

// ---- mempools, mbufs, rings (rte_mempool.h, rte_mbuf.h, rte_ring.h) ----
export { Mempool, poolOf, MEMPOOL_MAX_OBJECTS, MEMPOOL_CACHE_MAX, type MempoolDesc, type MempoolOptions, type MempoolAudit } from './lib/mempool/mempool.js';
export {
  pktmbufPoolCreate, pktmbufAlloc, pktmbufAllocBulk, pktmbufFree, pktmbufFreeBulk, pktmbufFreeSeg, pktmbufFreeRecorded, pktmbufReset, isMbuf,
  pktmbufHeadroom, pktmbufDataRoom, readPacket, writePacket, chain, refcntUpdate, append, trim, lastSeg,
  MBUF_NONE, MBUF_HEADROOM, MBUF_DATAROOM, type PktmbufPoolOptions,
} from './lib/mempool/mbuf.js';
export { MbufView, macWords } from './lib/mempool/mbuf_view.js';
export { Ring, ringBytes, type RingDesc, type RingFlags } from './lib/ring/ring.js';

// ---- exact-match tables (rte_hash.h) ----
export { Hash, HashFullError, hashMurmur3, hashBytes, HASH_VALUE_MAX, type HashOptions, type HashDesc, type HashStats } from './lib/hash/hash.js';

// ---- packets (rte_ether.h, rte_ip.h, rte_udp.h) ----
export {
  buildUdpFrame, checkUdpFrame, parseIpv4, ipv4Checksum, udpChecksum, ETH_HLEN, IPV4_HLEN, UDP_HLEN, ETHERTYPE_IPV4,
  IPPROTO_UDP, type UdpFrameSpec, type UdpFrameInfo,
} from './lib/net/packet.js';
export { formatMac, parseMac, isMulticastMac } from './lib/net/mac.js';
export {
  parseIpv4Prefix, formatIpv4, formatIpv4Prefix, maskIpv4, parseIpv6, parseIpv6Prefix, formatIpv6, formatIpv6Prefix, maskIpv6,
  type Ipv4Prefix, type Ipv6Prefix,
} from './lib/net/ipaddr.js';

// ---- longest-prefix match (rte_lpm.h, rte_lpm6.h; readers' quiescent points as rte_rcu_qsbr.h) ----
export { Lpm, LpmFullError, LPM_MAX_NEXT_HOP, LPM_MAX_TBL8S, LPM_MAX_RULES, type LpmOptions, type LpmDesc } from './lib/lpm/lpm.js';
export { Lpm6, LPM6_MAX_NEXT_HOP, LPM6_MAX_TBL8S, LPM6_MAX_RULES, type Lpm6Options, type Lpm6Desc } from './lib/lpm/lpm6.js';

// ---- live capture (rte_pdump.h): runApp calls pdumpInit; an app with its own Eal may call it ----
export { pdumpInit } from './lib/pdump/pdump.js';

// ---- applications: `app [EAL options] -- [app options]`, one module per app ----
export { runApp, appMain, eachOption, intOption, numberOption, portmaskOption, wholeNumber, runLcoresUntilDone, sleep, type App, type RunEnd } from './lib/app/app.js';
export { StatsReporter, type Summary, type PortSummary } from './lib/app/stats.js';
export * from './lib/telemetry/index.js'; // telemetry: DPDK's telemetry v2 socket, Prometheus metrics (rte_telemetry.h)

// ---- device providers: vfio-user and emulated PCI devices ----
export { VfioUserServer, type ServerOptions, type ServerStats } from './lib/vfio-user/server.js';
export { VfioUserClient, VfioUserError, type ClientOptions } from './lib/vfio-user/client.js';
export { EmuDevice, type EmuDeviceSpec, type EmuBarSpec, type EmuIrqSpec, type EmuCapability, type PciIdentity, type DmaRegion } from './lib/emudev/emudev.js';
export { DataPlane, type DataPlaneDesc } from './lib/emudev/dataplane.js';
// the emudev API (rte_emudev.h; docs/emudev.md): the registry and device handle (main thread), the back-end (lcore), events
export {
  emudevAllocate, emudevFind, emudevList, emudevRelease, EmuDeviceHandle,
  type EmuProvider, type EmuProviderInfo, type EmuDeviceInfo, type EmuMemRegion, type EmuAttrValue,
} from './lib/emudev/registry.js';
export {
  EmuBackend, QUEUE_SIZE, QUEUE_ENABLE, QUEUE_VECTOR, QUEUE_DESC_LO, QUEUE_DESC_HI, QUEUE_AVAIL_LO, QUEUE_AVAIL_HI, QUEUE_USED_LO, QUEUE_USED_HI,
  QUEUE_EPOCH, QUEUE_DOORBELL, QUEUE_WORDS, type EmuBackendDesc, type EmuQueueInfo, type EmuAttrSpec, type EmuDoorbellInfo, type EmuIrqInfo,
} from './lib/emudev/backend.js';
export {
  EmuEventChannel, EmuEventReader, EVENT_QUEUE_ENABLED, EVENT_QUEUE_DISABLED, EVENT_DEVICE_RESET, EVENT_MEM_TABLE_CHANGED, EVENT_STATUS_CHANGED,
  EVENT_ATTR_CHANGED, EVENT_OVERFLOW, EVENT_ALL, EVENT_NAMES, type EmuEventChannelDesc,
} from './lib/emudev/events.js';
export { DmatestDevice, type DmatestOptions } from './drivers/emu/dmatest/dmatest.js';
export { spawnEmu, type EmuChild } from './lib/emudev/spawn.js';
