// Shards (train.shards S > 1) fix the arithmetic of a batch whatever the layout: the batch is cut
// into S shards (shardSizes), each shard's step is computed on its rows alone, as a batch of its
// own, scaled by its share of the batch, and the parts are combined in shard order. Replicas of a
// stage, each computing some of the shards (ownShards), combine the same parts in the same order:
// the same bits as one process computing all of them. What a part holds, and how parts combine,
// is the layer's (FFLayer: the gradient summed; CompetitiveLayer: also each shard's BatchNorm
// statistics, pooled); the stage moves them by name (stage/replicas.ts).
import * as tf from '@tensorflow/tfjs';

/**
 * The positive rows (images) of each of `shards` shards of a batch of `nPos`: as equal as they
 * go, the larger first, none empty (fewer shards than asked when the batch is smaller).
 */
export function shardSizes(nPos: number, shards: number): number[] {
  const n = Math.min(shards, nPos);
  return Array.from({ length: n }, (_, k) => Math.floor(nPos / n) + (k < nPos % n ? 1 : 0));
}

/**
 * The shards replica `replica` (0-based) of `replicas` computes, of the shardSizes of a batch:
 * the shards are dealt in runs of shards / replicas (replicas divide shards), the first run to
 * the first replica. A small last batch may leave a replica none.
 */
export function ownShards(
  count: number,
  shards: number,
  replica: number,
  replicas: number,
): number[] {
  const per = shards / replicas;
  const out: number[] = [];
  for (let k = replica * per; k < Math.min(count, (replica + 1) * per); k++) out.push(k);
  return out;
}

/** The labels of shards `ks` of a batch's (sizes: its shardSizes). */
export function shardLabels(
  labels: ArrayLike<number>,
  sizes: number[],
  ks: number[],
): ArrayLike<number>[] {
  const starts = sizes.map((_, k) => sizes.slice(0, k).reduce((a, b) => a + b, 0));
  return ks.map((k) => Array.prototype.slice.call(labels, starts[k]!, starts[k]! + sizes[k]!));
}

/**
 * A shard's part of a step: its activations (as the layer hands them on), `g` [2 * size] (the
 * two halves the step's goodness statistics average: positive then negative rows, or each
 * image's true class then its other classes), its loss scaled by its share of the batch, and
 * `terms`: what the layer combines over the shards, by name (its gradient, scaled by the share).
 */
export interface ShardPart {
  h: tf.Tensor2D;
  g: tf.Tensor1D;
  loss: tf.Scalar;
  terms: Record<string, tf.Tensor>;
}

/** The parts' term `name` summed in shard order (a new tensor; the parts keep theirs). */
export function sumTerm(parts: ShardPart[], name: string): tf.Tensor {
  return tf.tidy(() =>
    parts.slice(1).reduce((a, p) => tf.add(a, p.terms[name]!), parts[0]!.terms[name]!),
  );
}

/** The parts' tensors: disposes them. */
export function disposePart(p: ShardPart): void {
  p.h.dispose();
  p.g.dispose();
  p.loss.dispose();
  for (const t of Object.values(p.terms)) t.dispose();
}

/** A layer whose step can be cut into shards, computed apart, and combined. */
export interface ShardedLayer {
  readonly config: { inDim: number; outDim: number };
  /** Shard k's input rows of a batch x of `nPos` positive rows (sizes: shardSizes). */
  shardInput(x: tf.Tensor2D, nPos: number, sizes: number[], k: number): tf.Tensor2D;
  /**
   * The parts of some of a batch's shards: `inputs[i]` (shardInput) of `sizes[i]` positive rows,
   * with their `labels[i]` where the layer learns from labels, of a batch of `nPos`. Nothing is
   * updated; the caller owns the parts.
   */
  shardParts(
    inputs: tf.Tensor2D[],
    sizes: number[],
    nPos: number,
    labels?: ArrayLike<number>[],
  ): ShardPart[];
  /**
   * Every shard's part (in shard order) made one step: combined, applied, the activations back
   * in the batch's row order. Disposes the parts; returns the activations, the step's [loss,
   * goodness, goodness] and the update a replica applies (applyUpdate), owned by the caller.
   */
  combineParts(
    parts: ShardPart[],
    nPos: number,
    lr: number,
  ): { h: tf.Tensor2D; stats: tf.Tensor1D; update: Record<string, tf.Tensor> };
  /** A replica's step: the update its primary combined. */
  applyUpdate(update: Record<string, tf.Tensor>, lr: number): void;
  /** The shapes of a part of `size` positive rows: h, g, loss ([1]) and each term. */
  partShapes(size: number): Record<string, number[]>;
  /** The shapes of an update's tensors. */
  updateShapes(): Record<string, number[]>;
}
