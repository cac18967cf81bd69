/**
 * The packet-socket and TAP kernel encodings used by net_af_packet and net_tap, compared with the
 * kernel's own headers by compiling a C program that prints them.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as P from '../../drivers/net/af_packet/uapi.js';
import * as T from '../../drivers/net/tap/tap.js';

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
