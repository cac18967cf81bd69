/**
 * DMA mapping of EAL memory: every segment, existing and future, is mapped into every DMA space
 * (a VFIO type1 container, an IOMMUFD IOAS, a vfio-user peer) that is attached to the memory.
 * In va mode a segment is one mapping at iova = va; in pa mode each physically contiguous run of
 * pages is mapped at its physical address (what a no-IOMMU device would use directly).
 */
import type { EalMemory } from '../memory/memory.js';
import type { Segment } from '../memory/segment.js';
import type { DmaSpace } from './device.js';
import { log } from '../log.js';

/** The (va, iova, len) pieces a segment is mapped as: one in va mode, contiguous page runs in pa mode. */
export function segmentRuns(seg: Segment): Array<{ va: bigint; iova: bigint; len: number }> {
  if (seg.pageIovas === null) return [{ va: seg.va, iova: seg.iova, len: seg.len }];
  const runs: Array<{ va: bigint; iova: bigint; len: number }> = [];
  const ps = BigInt(seg.pageSize);
  for (let p = 0; p < seg.pageIovas.length; p++) {
    const last = runs[runs.length - 1];
    const iova = seg.pageIovas[p];
    if (last && last.iova + BigInt(last.len) === iova) last.len += seg.pageSize;
    else runs.push({ va: seg.va + BigInt(p) * ps, iova, len: seg.pageSize });
  }
  return runs;
}

/** An attachment of EAL memory to one DMA space; detach() stops mapping new segments. */
export class DmaMemoryMap {
  private active = true;
  private readonly mapped: Array<{ iova: bigint; len: number }> = [];
  private readonly space: DmaSpace;
  private readonly what: string;

  /** Map every existing segment of memory into space now, and every later one when it appears. */
  constructor(memory: EalMemory, space: DmaSpace, what: string) {
    this.space = space;
    this.what = what;
    memory.onSegment((seg) => {
      if (!this.active) return;
      for (const r of segmentRuns(seg)) {
        try {
          space.dmaMap(r.va, r.iova, r.len);
        } catch (e) {
          throw new Error(`DMA mapping of memory segment ${seg.id} (va 0x${r.va.toString(16)}, iova 0x${r.iova.toString(16)}, ${r.len} bytes) into ${what} failed: ${(e as Error).message}`);
        }
        this.mapped.push({ iova: r.iova, len: r.len });
      }
      log('debug', 'vfio', `${what}: mapped segment ${seg.id} (${seg.len} bytes, iova 0x${seg.iova.toString(16)})`);
    });
  }

  /** The mappings made so far (iova, len), in order. */
  mappings(): ReadonlyArray<{ iova: bigint; len: number }> {
    return this.mapped;
  }

  /** Stop mapping new segments; with unmap, also remove the mappings made (best effort, errors logged). */
  detach(unmap: boolean): void {
    if (!this.active) return;
    this.active = false;
    if (!unmap) return;
    for (const m of this.mapped) {
      try {
        this.space.dmaUnmap(m.iova, m.len);
      } catch (e) {
        log('warn', 'vfio', `${this.what}: unmapping iova 0x${m.iova.toString(16)} failed: ${(e as Error).message}`);
      }
    }
    this.mapped.length = 0;
  }
}
