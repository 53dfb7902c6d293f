// What a run has trained, per layer: each (epoch, batch) counted once in the run's final
// lineage however often a rollback had it trained again, and what was trained again. A
// recovered run ends with every layer at epochs x batches, the same as an uninterrupted one.
import { plural } from '../log.js';
import type { EpochRecord } from './epoch-record.js';

export class Lineage {
  /** Per layer: batches trained in the final lineage so far. */
  readonly batches: number[];
  /** Per layer: batches trained again after rollbacks. */
  readonly replayed: number[];
  /** Rollbacks so far. */
  recoveries = 0;

  /** `steps`: per layer, the optimizer steps of the state the run starts from (one a batch). */
  constructor(steps: readonly number[]) {
    this.batches = [...steps];
    this.replayed = steps.map(() => 0);
  }

  /** Layer `layer` (1-based) trained one more batch; returns its count. */
  trained(layer: number): number {
    return ++this.batches[layer - 1]!;
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

  /** The run's last word on it, e.g. "each layer trained 300, 300 batches (...)". */
  summary(epochs: number, batchesPerEpoch: number): string {
    const replayed = this.replayed.reduce((a, b) => a + b, 0);
    return (
      `lineage: each layer trained ${this.batches.join(', ')} batches ` +
      `(${plural(epochs, 'epoch')} x ${batchesPerEpoch}); ` +
      `${plural(this.recoveries, 'recovery', 'recoveries')}, ` +
      `${plural(replayed, 'batch step')} replayed`
    );
  }
}
