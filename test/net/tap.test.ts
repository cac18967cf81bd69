/**
 * net_tap for real: the port creates a TAP interface (name, MAC, up/down with the port, gone at
 * close); frames the port sends are counted by the kernel on that interface, and frames the kernel
 * sends out of it (ARP requests for a neighbour) arrive on the port. Needs root.
 */
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import '../../drivers/index.js';
import { Eal } from '../../src/eal.js';
import { probeVdevs } from '../../drivers/bus/vdev/vdev.js';
import { openRxQueue, openTxQueue } from '../../lib/ethdev/ethdev.js';
import { formatMac } from '../../lib/net/mac.js';
import { pktmbufPoolCreate, pktmbufAllocBulk, writePacket, readPacket, pktmbufFreeBulk } from '../../lib/mempool/mbuf.js';
import { buildUdpFrame } from '../../lib/net/packet.js';
import { sh, ifStat, uniquePrefix } from '../../lib/netns/topology.js';

const needRoot = process.getuid?.() === 0 ? false : 'needs root: creating TAP interfaces needs CAP_NET_ADMIN';

t.test('net_tap: interface lifecycle, TX counted by the kernel, kernel frames received', { skip: needRoot, timeout: 60000 }, async (t) => {
  const iface = `${uniquePrefix()}t`;
  const mac = [0x02, 0x54, 0x53, 0x50, 0x00, 0x07];
  const eal = new Eal({ noHuge: true, filePrefix: `${iface}e`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(async () => {
    await eal.close();
    if (existsSync(`/sys/class/net/${iface}`)) sh(['ip', 'link', 'del', iface]);
  });
  const [port] = await probeVdevs(eal, [`net_tap0,iface=${iface},mac=${formatMac(mac)}`]);
  t.ok(existsSync(`/sys/class/net/${iface}`), 'TAP interface created');
  t.equal(readFileSync(`/sys/class/net/${iface}/address`, 'utf8').trim(), formatMac(mac), 'MAC set');
  t.same(port.macAddr(), mac);
  t.notOk(port.link().up, 'down before start');
  const pool = pktmbufPoolCreate(eal.memory, 'tap', 2047, { cacheSize: 32 });
  port.configure({ rxQueues: 1, txQueues: 1 });
  port.rxQueueSetup(0, 256, pool);
  port.txQueueSetup(0, 256);
  port.start();
  t.ok(port.link().up, 'up after start');
  try { sh(['sysctl', '-qw', `net.ipv6.conf.${iface}.disable_ipv6=1`]); } catch { /* no IPv6 */ }

  // TX: 100 frames from the port = 100 frames the kernel receives on the interface.
  const tx = await openTxQueue(port.data(), 0);
  const before = ifStat(iface, 'rx_packets');
  const burst = new Uint32Array(50);
  for (let round = 0; round < 2; round++) {
    t.ok(pktmbufAllocBulk(pool, burst, 50));
    for (let i = 0; i < 50; i++) writePacket(burst[i], buildUdpFrame({ dstMac: mac, srcMac: [2, 1, 1, 1, 1, 1], srcIp: 0x0a000001, dstIp: 0x0a000002, srcPort: 9, dstPort: 9, size: 60 + i }));
    t.equal(tx.txBurst(burst, 50, 0), 50);
  }
  t.equal(ifStat(iface, 'rx_packets') - before, 100, 'the kernel counted 100 frames in');
  t.equal(port.stats().opackets, 100);

  // RX: give the interface an address and ping a neighbour: the kernel sends ARP requests out of it.
  sh(['ip', 'addr', 'add', '10.211.7.1/24', 'dev', iface]);
  const rx = await openRxQueue(port.data(), 0);
  const out = new Uint32Array(32), frame = new Uint8Array(2048);
  let arps = 0;
  const deadline = Date.now() + 8000;
  const pinger = sh(['sh', '-c', `(ping -c 3 -i 0.3 -W 1 10.211.7.2 >/dev/null 2>&1 &) ; echo started`]);
  t.match(pinger, /started/);
  while (arps === 0 && Date.now() < deadline) {
    const n = rx.rxBurst(out, 32);
    for (let i = 0; i < n; i++) {
      const len = readPacket(out[i], frame);
      if (len >= 42 && frame[12] === 0x08 && frame[13] === 0x06 && frame.slice(6, 12).join() === mac.join() && frame.slice(38, 42).join() === '10,211,7,2') arps++;
    }
    pktmbufFreeBulk(out, n, 0);
    if (n === 0) await new Promise((r) => setTimeout(r, 20));
  }
  t.ok(arps > 0, `received the kernel's ARP request for 10.211.7.2 (${arps})`);
  t.ok(port.stats().ipackets >= arps);

  port.stop();
  t.notOk(port.link().up, 'down after stop');
  port.close();
  const t0 = Date.now();
  while (existsSync(`/sys/class/net/${iface}`) && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
  t.notOk(existsSync(`/sys/class/net/${iface}`), 'interface removed at close');
  pool.flushCache();
  t.equal(pool.inUseCount(), 0, 'every mbuf back in its pool');
});

t.test('net_tap bad input', { skip: needRoot }, async (t) => {
  const eal = new Eal({ noHuge: true, filePrefix: `tsptb${process.pid}`, lcores: [{ id: 0, cpu: 0 }], mainLcore: 0 });
  t.teardown(() => eal.close());
  await t.rejects(probeVdevs(eal, ['net_tap0,iface=this-name-is-too-long']), /^--vdev "net_tap0,iface=this-name-is-too-long": iface=this-name-is-too-long must be 1-15 characters/);
  await t.rejects(probeVdevs(eal, ['net_tap0,mac=zz']), /^--vdev "net_tap0,mac=zz": mac=zz must be a (unicast )?MAC address like 02:00:00:00:00:01$/);
  await t.rejects(probeVdevs(eal, ['net_tap0,colour=red']), /net_tap has no key "colour"/);
});
