/**
 * Hugetlbfs fixtures for root tests that mount their own hugetlbfs and raise the 2 MB pool: the
 * pool's sysfs knob, reading it, and taking a mount away again whatever state it is in.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmdirSync } from 'node:fs';

/** The 2 MB hugepage pool size (write to raise it, restore what you added). */
export const NR_HUGEPAGES_2M = '/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';

/** The 2 MB pool's size now. */
export function readNrHugepages(): number {
  return Number(readFileSync(NR_HUGEPAGES_2M, 'utf8').trim());
}

/** Unmount dir (lazily if it is busy) and remove it; quiet when it is not mounted or gone. */
export function unmountAndRemove(dir: string): void {
  if (!existsSync(dir)) return;
  try {
    execFileSync('umount', [dir], { stdio: 'pipe' });
  } catch {
    try { execFileSync('umount', ['-l', dir], { stdio: 'pipe' }); } catch { /* not mounted */ }
  }
  try { rmdirSync(dir); } catch { /* gone or still busy */ }
}
