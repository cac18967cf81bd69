/**
 * The packet-socket, TAP and AF_XDP kernel encodings used by net_af_packet, net_tap and
 * net_af_xdp, compared with the kernel's own headers by compiling a C program that prints them.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as P from '../../drivers/net/af_packet/uapi.js';
import * as T from '../../drivers/net/tap/tap.js';
import * as X from '../../drivers/net/af_xdp/uapi.js';

const hasCc = (() => { try { execFileSync('cc', ['--version'], { stdio: 'ignore' }); return true; } catch { return false; } })();

const checks: Array<[string, string, number]> = [
  ['SOL_PACKET', 'SOL_PACKET', P.SOL_PACKET], ['ETH_P_ALL', 'ETH_P_ALL', P.ETH_P_ALL],
  ['PACKET_ADD_MEMBERSHIP', 'PACKET_ADD_MEMBERSHIP', P.PACKET_ADD_MEMBERSHIP], ['PACKET_RX_RING', 'PACKET_RX_RING', P.PACKET_RX_RING],
  ['PACKET_STATISTICS', 'PACKET_STATISTICS', P.PACKET_STATISTICS], ['PACKET_VERSION', 'PACKET_VERSION', P.PACKET_VERSION],
  ['PACKET_RESERVE', 'PACKET_RESERVE', P.PACKET_RESERVE], ['PACKET_TX_RING', 'PACKET_TX_RING', P.PACKET_TX_RING],
  ['PACKET_LOSS', 'PACKET_LOSS', P.PACKET_LOSS], ['PACKET_FANOUT', 'PACKET_FANOUT', P.PACKET_FANOUT],
  ['PACKET_TX_HAS_OFF', 'PACKET_TX_HAS_OFF', P.PACKET_TX_HAS_OFF], ['PACKET_QDISC_BYPASS', 'PACKET_QDISC_BYPASS', P.PACKET_QDISC_BYPASS],
  ['PACKET_IGNORE_OUTGOING', 'PACKET_IGNORE_OUTGOING', P.PACKET_IGNORE_OUTGOING], ['PACKET_MR_PROMISC', 'PACKET_MR_PROMISC', P.PACKET_MR_PROMISC],
  ['TPACKET_V3', 'TPACKET_V3', P.TPACKET_V3], ['PACKET_FANOUT_HASH', 'PACKET_FANOUT_HASH', P.PACKET_FANOUT_HASH],
  ['PACKET_FANOUT_LB', 'PACKET_FANOUT_LB', P.PACKET_FANOUT_LB], ['PACKET_FANOUT_CPU', 'PACKET_FANOUT_CPU', P.PACKET_FANOUT_CPU],
  ['TP_STATUS_KERNEL', 'TP_STATUS_KERNEL', P.TP_STATUS_KERNEL], ['TP_STATUS_USER', 'TP_STATUS_USER', P.TP_STATUS_USER],
  ['TP_STATUS_AVAILABLE', 'TP_STATUS_AVAILABLE', P.TP_STATUS_AVAILABLE], ['TP_STATUS_SEND_REQUEST', 'TP_STATUS_SEND_REQUEST', P.TP_STATUS_SEND_REQUEST],
  ['TP_STATUS_SENDING', 'TP_STATUS_SENDING', P.TP_STATUS_SENDING], ['TP_STATUS_WRONG_FORMAT', 'TP_STATUS_WRONG_FORMAT', P.TP_STATUS_WRONG_FORMAT],
  ['sizeof tpacket_req3', 'sizeof(struct tpacket_req3)', P.SIZEOF_TPACKET_REQ3], ['sizeof sockaddr_ll', 'sizeof(struct sockaddr_ll)', P.SIZEOF_SOCKADDR_LL],
  ['sizeof packet_mreq', 'sizeof(struct packet_mreq)', P.SIZEOF_PACKET_MREQ], ['sizeof tpacket_stats_v3', 'sizeof(struct tpacket_stats_v3)', P.SIZEOF_TPACKET_STATS_V3],
  ['sizeof tpacket3_hdr', 'sizeof(struct tpacket3_hdr)', P.SIZEOF_TPACKET3_HDR],
  ['block_status', 'offsetof(struct tpacket_block_desc, hdr.bh1.block_status)', P.BD_BLOCK_STATUS],
  ['num_pkts', 'offsetof(struct tpacket_block_desc, hdr.bh1.num_pkts)', P.BD_NUM_PKTS],
  ['offset_to_first_pkt', 'offsetof(struct tpacket_block_desc, hdr.bh1.offset_to_first_pkt)', P.BD_OFFSET_TO_FIRST_PKT],
  ['tp_next_offset', 'offsetof(struct tpacket3_hdr, tp_next_offset)', P.H3_NEXT_OFFSET], ['tp_snaplen', 'offsetof(struct tpacket3_hdr, tp_snaplen)', P.H3_SNAPLEN],
  ['tp_len', 'offsetof(struct tpacket3_hdr, tp_len)', P.H3_LEN], ['tp_status', 'offsetof(struct tpacket3_hdr, tp_status)', P.H3_STATUS],
  ['tp_mac', 'offsetof(struct tpacket3_hdr, tp_mac)', P.H3_MAC], ['tp_net', 'offsetof(struct tpacket3_hdr, tp_net)', P.H3_NET],
  ['TX data offset', 'TPACKET3_HDRLEN - sizeof(struct sockaddr_ll)', P.TPACKET3_TX_DATA],
  ['TUNSETIFF', 'TUNSETIFF', T.TUNSETIFF], ['IFF_TAP', 'IFF_TAP', T.IFF_TAP], ['IFF_NO_PI', 'IFF_NO_PI', T.IFF_NO_PI],
  ['IFF_MULTI_QUEUE', 'IFF_MULTI_QUEUE', T.IFF_MULTI_QUEUE], ['SIOCGIFFLAGS', 'SIOCGIFFLAGS', T.SIOCGIFFLAGS],
  ['SIOCSIFFLAGS', 'SIOCSIFFLAGS', T.SIOCSIFFLAGS], ['SIOCSIFHWADDR', 'SIOCSIFHWADDR', T.SIOCSIFHWADDR], ['SIOCSIFMTU', 'SIOCSIFMTU', T.SIOCSIFMTU],
  ['IFF_UP', 'IFF_UP', T.IFF_UP], ['ARPHRD_ETHER', 'ARPHRD_ETHER', T.ARPHRD_ETHER], ['IFNAMSIZ', 'IFNAMSIZ', T.IFNAMSIZ],
  ['sizeof ifreq', 'sizeof(struct ifreq)', T.SIZEOF_IFREQ],
];

t.test('af_packet and tap encodings match the kernel headers', { skip: hasCc ? false : 'no C compiler (cc) to compile the header check' }, async (t) => {
  const dir = mkdtempSync(`${tmpdir()}/tsp-uapi-`);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const src = `#include <stdio.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/if_tun.h>
int main(void) {
${checks.map(([, expr]) => `  printf("%lld\\n", (long long)(${expr}));`).join('\n')}
  return 0;
}
`;
  writeFileSync(`${dir}/check.c`, src);
  execFileSync('cc', ['-o', `${dir}/check`, `${dir}/check.c`]);
  const got = execFileSync(`${dir}/check`, { encoding: 'utf8' }).trim().split('\n').map(Number);
  checks.forEach(([name], i) => t.equal(checks[i][2], got[i], `${name} = ${got[i]}`));
});

const x = (name: string, v: number): [string, string, number] => [name, name, v];
const xdpChecks: Array<[string, string, number]> = [
  x('AF_XDP', X.AF_XDP), x('SOL_XDP', X.SOL_XDP), x('XDP_SHARED_UMEM', X.XDP_SHARED_UMEM), x('XDP_COPY', X.XDP_COPY), x('XDP_ZEROCOPY', X.XDP_ZEROCOPY),
  x('XDP_USE_NEED_WAKEUP', X.XDP_USE_NEED_WAKEUP), x('XDP_UMEM_UNALIGNED_CHUNK_FLAG', X.XDP_UMEM_UNALIGNED_CHUNK_FLAG), x('XDP_RING_NEED_WAKEUP', X.XDP_RING_NEED_WAKEUP),
  x('XDP_MMAP_OFFSETS', X.XDP_MMAP_OFFSETS), x('XDP_RX_RING', X.XDP_RX_RING), x('XDP_TX_RING', X.XDP_TX_RING), x('XDP_UMEM_REG', X.XDP_UMEM_REG),
  x('XDP_UMEM_FILL_RING', X.XDP_UMEM_FILL_RING), x('XDP_UMEM_COMPLETION_RING', X.XDP_UMEM_COMPLETION_RING), x('XDP_STATISTICS', X.XDP_STATISTICS),
  x('XDP_OPTIONS', X.XDP_OPTIONS), x('XDP_OPTIONS_ZEROCOPY', X.XDP_OPTIONS_ZEROCOPY), x('SO_BUSY_POLL', X.SO_BUSY_POLL),
  x('SO_PREFER_BUSY_POLL', X.SO_PREFER_BUSY_POLL), x('SO_BUSY_POLL_BUDGET', X.SO_BUSY_POLL_BUDGET),
  x('XDP_PGOFF_RX_RING', X.XDP_PGOFF_RX_RING), x('XDP_PGOFF_TX_RING', X.XDP_PGOFF_TX_RING), x('XDP_UMEM_PGOFF_FILL_RING', X.XDP_UMEM_PGOFF_FILL_RING),
  x('XDP_UMEM_PGOFF_COMPLETION_RING', X.XDP_UMEM_PGOFF_COMPLETION_RING), x('XSK_UNALIGNED_BUF_OFFSET_SHIFT', X.XSK_UNALIGNED_BUF_OFFSET_SHIFT),
  x('XDP_PACKET_HEADROOM', X.XDP_PACKET_HEADROOM),
  x('SOL_PACKET', X.SOL_PACKET), x('PACKET_ADD_MEMBERSHIP', X.PACKET_ADD_MEMBERSHIP), x('PACKET_MR_PROMISC', X.PACKET_MR_PROMISC),
  ['sizeof packet_mreq', 'sizeof(struct packet_mreq)', X.SIZEOF_PACKET_MREQ],
  ['sizeof sockaddr_xdp', 'sizeof(struct sockaddr_xdp)', X.SIZEOF_SOCKADDR_XDP],
  ['sxdp_flags', 'offsetof(struct sockaddr_xdp, sxdp_flags)', 2], ['sxdp_ifindex', 'offsetof(struct sockaddr_xdp, sxdp_ifindex)', 4],
  ['sxdp_queue_id', 'offsetof(struct sockaddr_xdp, sxdp_queue_id)', 8], ['sxdp_shared_umem_fd', 'offsetof(struct sockaddr_xdp, sxdp_shared_umem_fd)', 12],
  ['sizeof xdp_ring_offset', 'sizeof(struct xdp_ring_offset)', X.SIZEOF_XDP_RING_OFFSET],
  ['ring producer', 'offsetof(struct xdp_ring_offset, producer)', X.RING_OFF_PRODUCER], ['ring consumer', 'offsetof(struct xdp_ring_offset, consumer)', X.RING_OFF_CONSUMER],
  ['ring desc', 'offsetof(struct xdp_ring_offset, desc)', X.RING_OFF_DESC], ['ring flags', 'offsetof(struct xdp_ring_offset, flags)', X.RING_OFF_FLAGS],
  ['sizeof xdp_mmap_offsets', 'sizeof(struct xdp_mmap_offsets)', X.SIZEOF_XDP_MMAP_OFFSETS],
  ['mmap rx', 'offsetof(struct xdp_mmap_offsets, rx)', X.MMAP_OFF_RX], ['mmap tx', 'offsetof(struct xdp_mmap_offsets, tx)', X.MMAP_OFF_TX],
  ['mmap fr', 'offsetof(struct xdp_mmap_offsets, fr)', X.MMAP_OFF_FR], ['mmap cr', 'offsetof(struct xdp_mmap_offsets, cr)', X.MMAP_OFF_CR],
  // 32 with or without tx_metadata_len (the headers of older kernels end at flags and pad to 8 bytes)
  ['sizeof xdp_umem_reg', 'sizeof(struct xdp_umem_reg)', X.SIZEOF_XDP_UMEM_REG],
  ['umem addr', 'offsetof(struct xdp_umem_reg, addr)', X.UMEM_REG_ADDR], ['umem len', 'offsetof(struct xdp_umem_reg, len)', X.UMEM_REG_LEN],
  ['umem chunk_size', 'offsetof(struct xdp_umem_reg, chunk_size)', X.UMEM_REG_CHUNK_SIZE], ['umem headroom', 'offsetof(struct xdp_umem_reg, headroom)', X.UMEM_REG_HEADROOM],
  ['umem flags', 'offsetof(struct xdp_umem_reg, flags)', X.UMEM_REG_FLAGS],
  ['sizeof xdp_desc', 'sizeof(struct xdp_desc)', X.SIZEOF_XDP_DESC],
  ['desc addr', 'offsetof(struct xdp_desc, addr)', X.DESC_ADDR], ['desc len', 'offsetof(struct xdp_desc, len)', X.DESC_LEN], ['desc options', 'offsetof(struct xdp_desc, options)', X.DESC_OPTIONS],
  ['sizeof xdp_statistics', 'sizeof(struct xdp_statistics)', X.SIZEOF_XDP_STATISTICS],
  ...X.XDP_STATISTICS_NAMES.map((n, i): [string, string, number] => [`statistics ${n}`, `offsetof(struct xdp_statistics, ${n})`, i * 8]),
  ['sizeof xdp_options', 'sizeof(struct xdp_options)', X.SIZEOF_XDP_OPTIONS],
];

t.test('af_xdp encodings match the kernel headers', { skip: hasCc ? false : 'no C compiler (cc) to compile the header check' }, async (t) => {
  const dir = mkdtempSync(`${tmpdir()}/tsp-uapi-`);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const src = `#include <stdio.h>
#include <stddef.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include <linux/if_xdp.h>
#include <linux/bpf.h>
int main(void) {
${xdpChecks.map(([, expr]) => `  printf("%lld\\n", (long long)(${expr}));`).join('\n')}
  return 0;
}
`;
  writeFileSync(`${dir}/check.c`, src);
  execFileSync('cc', ['-o', `${dir}/check`, `${dir}/check.c`]);
  const got = execFileSync(`${dir}/check`, { encoding: 'utf8' }).trim().split('\n').map(Number);
  xdpChecks.forEach(([name], i) => t.equal(xdpChecks[i][2], got[i], `${name} = ${got[i]}`));
  // The frame a fill address names: the kernel writes data XDP_PACKET_HEADROOM after it (a chunk must leave room for that).
  t.ok(X.XDP_UMEM_MIN_CHUNK_SIZE > X.XDP_PACKET_HEADROOM, 'the smallest chunk leaves room after the headroom');
});
