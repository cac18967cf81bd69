/**
 * Captures for tests made by Wireshark's text2pcap from frames built in the test.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';

/**
 * Write frames as text2pcap input (a hex dump with offsets, in OUT.txt beside out) and run
 * text2pcap with extra args (e.g. ['-F', 'pcapng']) to make the capture out.
 */
export function text2pcap(frames: Uint8Array[], out: string, args: string[] = []): void {
  const lines: string[] = [];
  for (const f of frames) {
    for (let o = 0; o < f.length; o += 16) lines.push(`${o.toString(16).padStart(4, '0')} ${Array.from(f.subarray(o, o + 16), (x) => x.toString(16).padStart(2, '0')).join(' ')}`);
    lines.push('');
  }
  const txt = `${out}.txt`;
  writeFileSync(txt, lines.join('\n') + '\n');
  execFileSync('text2pcap', ['-q', ...args, txt, out], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
