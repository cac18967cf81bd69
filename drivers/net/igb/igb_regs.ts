/**
 * Intel 82576 (igb) registers, bits and descriptor layouts used by drivers/net/igb: byte offsets
 * into BAR0 and field values from the 82576 datasheet (section 8, register descriptions; section
 * 7.1.5 and 7.2.2.3, advanced descriptors), as QEMU's igb model implements them. Queue registers
 * use the 82576 layout (0xC000 / 0xE000 + 0x40 per queue), which covers all 16 queues.
 */

// ---- general ----
export const CTRL = 0x0000, STATUS = 0x0008, EECD = 0x0010, EERD = 0x0014, CTRL_EXT = 0x0018, MDIC = 0x0020;
export const CTRL_FD = 1 << 0, CTRL_SLU = 1 << 6, CTRL_RST = 1 << 26;
export const STATUS_FD = 1 << 0, STATUS_LU = 1 << 1, STATUS_SPEED_SHIFT = 6, STATUS_SPEED_MASK = 3 << 6;
/** EERD: start, done, word address at bit 2, data at bit 16 */
export const EERD_START = 1 << 0, EERD_DONE = 1 << 1, EERD_ADDR_SHIFT = 2, EERD_DATA_SHIFT = 16;
/** MDIC: data 15:0, PHY register 20:16, PHY address 25:21, op 27:26, ready 28, error 30 */
export const MDIC_REG_SHIFT = 16, MDIC_PHY_SHIFT = 21, MDIC_OP_WRITE = 1 << 26, MDIC_OP_READ = 2 << 26, MDIC_READY = 1 << 28, MDIC_ERROR = 1 << 30;
/** the internal PHY's MDIO address */
export const PHY_ADDR = 1;
/** IEEE 802.3 clause 22 PHY registers: control, status, identifiers */
export const PHY_BMCR = 0, PHY_BMSR = 1, PHY_ID1 = 2, PHY_ID2 = 3;
export const BMCR_FULL_DUPLEX = 1 << 8, BMCR_ANRESTART = 1 << 9, BMCR_AUTOEN = 1 << 12, BMCR_SPEED1000 = 1 << 6;
export const BMSR_LINK = 1 << 2, BMSR_AN_COMPLETE = 1 << 5;

// ---- interrupts ----
export const ICR = 0x00c0, ICS = 0x00c8, IMS = 0x00d0, IMC = 0x00d8;
/** ICR: link status change */
export const ICR_LSC = 1 << 2;
export const EICS = 0x1520, EIMS = 0x1524, EIMC = 0x1528, EIAC = 0x152c, EICR = 0x1580, GPIE = 0x1514;
/** EITR(n): interrupt throttling per MSI-X vector */
export const eitr = (n: number): number => 0x1680 + 4 * n;
/** IVAR0[q]: byte 0 routes RX queue q (< 8), byte 1 TX queue q, bytes 2/3 queues q + 8 */
export const ivar = (q: number): number => 0x1700 + 4 * q;
/** IVAR_MISC: byte 1 routes the "other" causes (ICR: link status change, ...) */
export const IVAR_MISC = 0x1740, IVAR_VALID = 0x80;
export const GPIE_NSICR = 1 << 0, GPIE_MSIX_MODE = 1 << 4, GPIE_EIAME = 1 << 30, GPIE_PBA = 1 << 31;
/** MSI-X vectors of the 82576 physical function */
export const MSIX_VECTORS = 10;

// ---- receive ----
export const RCTL = 0x0100, RXCSUM = 0x5000, RLPML = 0x5004, MRQC = 0x5818;
export const RCTL_EN = 1 << 1, RCTL_SBP = 1 << 2, RCTL_UPE = 1 << 3, RCTL_MPE = 1 << 4, RCTL_LPE = 1 << 5, RCTL_BAM = 1 << 15, RCTL_SECRC = 1 << 26;
/** RXCSUM.PCSD: the descriptor carries the RSS hash instead of the fragment checksum (needed for RSS) */
export const RXCSUM_PCSD = 1 << 13;
/** MRQC: RSS with multiple queues, and the packet fields hashed */
export const MRQC_RSS = 0x2, MRQC_TCPIPV4 = 1 << 16, MRQC_IPV4 = 1 << 17, MRQC_TCPIPV6EX = 1 << 18, MRQC_IPV6 = 1 << 20, MRQC_UDPIPV4 = 1 << 22, MRQC_UDPIPV6 = 1 << 23;
/** RETA: 128 one-byte entries (queue index in bits 3:0); RSSRK: the 40-byte Toeplitz key */
export const RETA = 0x5c00, RSSRK = 0x5c80, RETA_ENTRIES = 128;
export const MTA = 0x5200, MTA_WORDS = 128, RAL0 = 0x5400, RAH0 = 0x5404, RAH_AV = 1 << 31;
export const rdbal = (q: number): number => 0xc000 + 0x40 * q;
export const rdbah = (q: number): number => 0xc004 + 0x40 * q;
export const rdlen = (q: number): number => 0xc008 + 0x40 * q;
export const srrctl = (q: number): number => 0xc00c + 0x40 * q;
export const rdh = (q: number): number => 0xc010 + 0x40 * q;
export const rdt = (q: number): number => 0xc018 + 0x40 * q;
export const rxdctl = (q: number): number => 0xc028 + 0x40 * q;
/** RQDPC(q): packets dropped for want of descriptors (read clears) */
export const rqdpc = (q: number): number => 0xc030 + 0x40 * q;
/** SRRCTL: packet buffer size in KiB (bits 6:0), advanced one-buffer descriptors, drop when no descriptor */
export const SRRCTL_BSIZEPKT_SHIFT = 10, SRRCTL_DESCTYPE_ADV_ONEBUF = 1 << 25, SRRCTL_DROP_EN = 1 << 31;
export const RXDCTL_ENABLE = 1 << 25;

// ---- transmit ----
export const TCTL = 0x0400, TCTL_EN = 1 << 1, TCTL_PSP = 1 << 3, TCTL_CT = 0xf << 4, TCTL_COLD = 0x3f << 12;
export const tdbal = (q: number): number => 0xe000 + 0x40 * q;
export const tdbah = (q: number): number => 0xe004 + 0x40 * q;
export const tdlen = (q: number): number => 0xe008 + 0x40 * q;
export const tdh = (q: number): number => 0xe010 + 0x40 * q;
export const tdt = (q: number): number => 0xe018 + 0x40 * q;
export const txdctl = (q: number): number => 0xe028 + 0x40 * q;
export const TXDCTL_ENABLE = 1 << 25;

// ---- statistics (read clears; the 64-bit octet counters clear when their high half is read) ----
export const CRCERRS = 0x4000, MPC = 0x4010, GPRC = 0x4074, BPRC = 0x4078, MPRC = 0x407c, GPTC = 0x4080;
export const GORCL = 0x4088, GORCH = 0x408c, GOTCL = 0x4090, GOTCH = 0x4094, RNBC = 0x40a0, RUC = 0x40a4, ROC = 0x40ac;
export const TPR = 0x40d0, TPT = 0x40d4, MPTC = 0x40f0, BPTC = 0x40f4;

// ---- descriptors: 16 bytes, four little-endian u32 words ----
export const DESC_BYTES = 16;
/** RX write-back, word 2 (status_error): descriptor done, end of packet, and the error bits 31:24 */
export const RXD_STAT_DD = 1 << 0, RXD_STAT_EOP = 1 << 1, RXD_ERR_MASK = 0xff000000;
/** TX advanced data descriptor, word 2 (cmd_type_len) */
export const TXD_DTYP_DATA = 0x3 << 20, TXD_CMD_EOP = 1 << 24, TXD_CMD_IFCS = 1 << 25, TXD_CMD_RS = 1 << 27, TXD_CMD_DEXT = 1 << 29;
/** TX word 3 (olinfo_status): payload length at bit 14; write-back: DD in bit 0 */
export const TXD_PAYLEN_SHIFT = 14, TXD_STAT_DD = 1 << 0;
/** Descriptor ring lengths must be multiples of 128 bytes (8 descriptors); up to 4096 descriptors */
export const RING_ALIGN_DESC = 8, MAX_DESC = 4096;
