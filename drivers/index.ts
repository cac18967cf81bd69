/** The built-in drivers: importing this module registers them with their buses. */
import './net/null/null.js';
import './net/ring/ring.js';
import './net/af_packet/af_packet.js';
import './net/tap/tap.js';
import './net/pcap/pcap.js';
import './net/virtio/virtio.js';
import './net/igb/igb.js';
import './raw/dmatest/pci.js';
