// What the readouts predicted for every training image during an epoch: the distribution hard
// negatives are drawn from in the next one. A batch's negatives are chosen before it enters
// the first layer, so they can only use predictions made earlier: each epoch reads the table
// the previous epoch wrote (frozen as it starts) and writes a new one. Everything in it comes
// from the layers' reports in layer order, so it is the same whichever executor ran them.
import { NUM_CLASSES } from '../data/ff-data.js';
import { FfxError } from '../errors.js';
import type { NamedTensor } from '../core/safetensors.js';

/** The table's tensor in a checkpoint: [images, classes] probabilities. */
export const PREDICTIONS_TENSOR = 'negatives.predictions';

export class PredictionTable {
  /** Read by the epoch being trained (written by the one before); all zero before any. */
  private current: Float32Array;
  /** Being written by the epoch being trained. */
  private next: Float32Array;
  /** Per batch index of this epoch: its images, and the logits of the layers reported so far. */
  private readonly pending = new Map<number, { rows: Uint32Array; logits: Float32Array[] }>();

  /** `layers`: the 0-based layers whose readouts predict (the eval rule's layer set). */
  constructor(
    private readonly images: number,
    private readonly layers: readonly number[],
  ) {
    this.current = new Float32Array(images * NUM_CLASSES);
    this.next = new Float32Array(images * NUM_CLASSES);
  }

  /** The table the epoch being trained draws from. */
  get probs(): Float32Array {
    return this.current;
  }

  /** A batch is about to be trained: which images it holds. */
  expect(index: number, rows: Uint32Array): void {
    this.pending.set(index, { rows, logits: [] });
  }

  /**
   * A layer's readout logits for batch `index` ([images, classes]). Once every predicting
   * layer's are in, the batch's images get softmax(sum over those layers of log-softmax).
   */
  add(index: number, layer: number, logits: Float32Array): void {
    const batch = this.pending.get(index);
    const at = this.layers.indexOf(layer - 1);
    if (!batch || at < 0) return;
    if (logits.length !== batch.rows.length * NUM_CLASSES) {
      throw new FfxError(
        'CLUSTER_STAGE_ERROR',
        `layer ${layer}: ${logits.length} readout logits for batch ${index + 1} of ` +
          `${batch.rows.length} images (${batch.rows.length * NUM_CLASSES} expected)`,
      );
    }
    batch.logits[at] = logits;
    if (this.layers.some((_, i) => batch.logits[i] === undefined)) return;
    this.pending.delete(index);
    const score = new Float64Array(NUM_CLASSES);
    batch.rows.forEach((row, i) => {
      score.fill(0);
      for (const z of batch.logits)
        addLogSoftmax(score, z.subarray(i * NUM_CLASSES, (i + 1) * NUM_CLASSES));
      const max = Math.max(...score);
      let total = 0;
      for (let c = 0; c < NUM_CLASSES; c++) total += Math.exp(score[c]! - max);
      for (let c = 0; c < NUM_CLASSES; c++) {
        this.next[row * NUM_CLASSES + c] = Math.exp(score[c]! - max) / total;
      }
    });
  }

  /** The epoch is over (every report in): the next one draws from what it predicted. */
  commit(): void {
    this.current = this.next.slice();
    this.pending.clear();
  }

  /** Back to a saved state (a checkpoint's tensor, or none: nothing predicted yet). */
  restore(saved: NamedTensor | undefined): void {
    this.current =
      saved && saved.data.length === this.current.length
        ? Float32Array.from(saved.data)
        : new Float32Array(this.images * NUM_CLASSES);
    this.next = this.current.slice();
    this.pending.clear();
  }

  /** The table as a checkpoint tensor. */
  save(): NamedTensor {
    return { shape: [this.images, NUM_CLASSES], data: this.current.slice() };
  }
}

/** score += log softmax(z), in float64. */
function addLogSoftmax(score: Float64Array, z: Float32Array): void {
  let max = -Infinity;
  for (const v of z) max = Math.max(max, v);
  let total = 0;
  for (const v of z) total += Math.exp(v - max);
  const log = max + Math.log(total);
  for (let c = 0; c < NUM_CLASSES; c++) score[c]! += z[c]! - log;
}
