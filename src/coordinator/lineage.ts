// What a run has trained, per layer: each (epoch, batch) counted once in the run's final
// lineage however often it was trained again, and what was trained again, by rollbacks after a
// lost stage and by coordinators that took over the run. A recovered run ends with every layer
// at epochs x batches, the same as an uninterrupted one. The lineage belongs to the run, not to
// one coordinator: it is kept in the run directory (lineage.json, rewritten at every change) and
// in every checkpoint, and a coordinator that continues the run continues its lineage, so
// --max-recoveries counts over the whole run.
import { plural } from '../log.js';
import type { EpochRecord } from './epoch-record.js';

/** What lineage.json and a checkpoint's metadata keep. */
export interface LineageRecord {
  recoveries: number;
  /** Per layer: batches trained again. */
  replayed: number[];
  /** Coordinators that took the run over after the first (a restart, or a --resume). */
  restarts: number;
}

export class Lineage {
  /** Per layer: batches trained in the final lineage so far. */
  readonly batches: number[];
  /** Per layer: batches trained again after rollbacks and restarts. */
  readonly replayed: number[];
  /** Rollbacks so far. */
  recoveries = 0;
  restarts = 0;

  /**
   * `steps`: per layer, the optimizer steps of the state the run starts from (one a batch);
   * `earlier`: what the run's earlier coordinators recorded, when this one continues it.
   */
  constructor(steps: readonly number[], earlier?: LineageRecord) {
    this.batches = [...steps];
    this.replayed = steps.map((_, l) => earlier?.replayed[l] ?? 0);
    if (earlier) {
      this.recoveries = earlier.recoveries;
      this.restarts = earlier.restarts + 1;
    }
  }

  /** Layer `layer` (1-based) trained one more batch; returns its count. */
  trained(layer: number): number {
    return ++this.batches[layer - 1]!;
  }

  /** Batches the run had trained past its resume point, which this coordinator trains again. */
  retrained(dropped: readonly Pick<EpochRecord, 'batches'>[]): void {
    for (const r of dropped) r.batches.forEach((n, l) => (this.replayed[l]! += n));
  }

  /**
   * A rollback: the batches of `dropped` (the epochs past the recovery point, and the partial
   * epoch's tally) leave the lineage and count as trained again. Returns what each layer lost.
   */
  rollBack(dropped: readonly Pick<EpochRecord, 'batches'>[]): number[] {
    this.recoveries++;
    const lost = this.batches.map(() => 0);
    for (const r of dropped) r.batches.forEach((n, l) => (lost[l]! += n));
    lost.forEach((n, l) => {
      this.replayed[l]! += n;
      this.batches[l]! -= n;
    });
    return lost;
  }

  record(): LineageRecord {
    return { recoveries: this.recoveries, replayed: [...this.replayed], restarts: this.restarts };
  }

  /** The run's last word on it, e.g. "each layer trained 300, 300 batches (...)". */
  summary(epochs: number, batchesPerEpoch: number): string {
    const replayed = this.replayed.reduce((a, b) => a + b, 0);
    return (
      `lineage: each layer trained ${this.batches.join(', ')} batches ` +
      `(${plural(epochs, 'epoch')} x ${batchesPerEpoch}); ` +
      `${plural(this.recoveries, 'recovery', 'recoveries')}, ` +
      `${plural(replayed, 'batch step')} replayed` +
      (this.restarts > 0 ? `, ${plural(this.restarts, 'coordinator restart')}` : '')
    );
  }
}

/** A lineage record read back (lineage.json, a checkpoint's metadata), or undefined if unsound. */
export function parseLineage(value: unknown, layers: number): LineageRecord | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  const count = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
  if (!count(v.recoveries) || !count(v.restarts)) return undefined;
  if (!Array.isArray(v.replayed) || v.replayed.length !== layers || !v.replayed.every(count)) {
    return undefined;
  }
  return { recoveries: v.recoveries, replayed: v.replayed as number[], restarts: v.restarts };
}
