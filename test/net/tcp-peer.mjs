// A TCP peer for the forwarding tests, run inside a namespace:
//   node tcp-peer.mjs server IP PORT      prints "listening", then "<bytes> <sha256>" of what it received
//   node tcp-peer.mjs client IP PORT MB   sends MB megabytes of random data, prints "<bytes> <sha256>"
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
const [mode, ip, port, mb] = process.argv.slice(2);
if (mode === 'server') {
  const srv = net.createServer((s) => {
    const h = createHash('sha256');
    let n = 0;
    s.on('data', (d) => { h.update(d); n += d.length; });
    s.on('end', () => { console.log(`${n} ${h.digest('hex')}`); s.end(); srv.close(); });
  });
  srv.listen(Number(port), ip, () => console.log('listening'));
  setTimeout(() => { console.log('timeout'); process.exit(3); }, 60000).unref();
} else {
  const data = randomBytes(Number(mb) * 1024 * 1024);
  const s = net.connect(Number(port), ip, () => { s.end(data); });
  s.on('close', () => console.log(`${data.length} ${createHash('sha256').update(data).digest('hex')}`));
  s.on('error', (e) => { console.error(e.message); process.exit(2); });
  setTimeout(() => { console.error('client timeout'); process.exit(3); }, 60000).unref();
}
