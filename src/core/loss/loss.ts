// What a loss gives an FF layer's step (ff-layer.ts). Two shapes:
//
// - A row loss scores each row of [pos; neg] on its own goodness g (threshold.ts, symba.ts).
//   It returns the loss and, per row, the weight w and a scale c such that
//       dL/dg = -s w c        (s = +1 on positive rows, -1 on negative ones),
//   from which the layer takes the rest of the gradient (dL/dH = dL/dg * dg/dH, dW, db) and
//   skips the rows whose weight is too small to count (ff-layer.ts, activeRows).
// - A label loss scores each positive image under every label at once (softmax.ts) and returns
//   the whole gradient, since its rows are not the batch's rows.
//
// A new loss is one function of either shape in a file of its own, with its derivation, and one
// entry in losses.ts.
import type * as tf from '@tensorflow/tfjs';

export interface RowTerms {
  loss: tf.Scalar;
  /** Per row of [pos; neg]: the weight w in dL/dg = -s w scale. */
  rowWeight: tf.Tensor1D;
  scale: number;
}

export interface RowLossInput {
  /** Goodness of the rows [pos; neg], nPos each. */
  g: tf.Tensor1D;
  nPos: number;
  /** +1 for the nPos positive rows, -1 for the nPos negative ones. */
  signs: tf.Tensor1D;
  threshold: number;
  alpha: number;
}

export type RowLoss = (input: RowLossInput) => RowTerms;

/** Peer normalisation's part of a step: the running mean it leads to, its loss, dL/dH per unit. */
export interface PeerStep {
  mean: tf.Tensor1D;
  loss: tf.Scalar;
  grad: tf.Tensor1D;
}

export interface Gradient {
  /** The step's loss, the peer term included. */
  loss: tf.Scalar;
  dw: tf.Tensor2D;
  db: tf.Tensor1D;
}

export interface LabelLossInput {
  /** The normalised input of the whole batch [rows, in], and the pre-activations [out, rows]. */
  xn: tf.Tensor2D;
  zT: tf.Tensor2D;
  nPos: number;
  /** The layer's weights [out, in]. */
  weight: tf.Tensor2D;
  alpha: number;
  /** dg/dH = dgScale * H (2/out for mean goodness, 2 for sum; negated with `negate`). */
  dgScale: number;
  /** Peer normalisation's term, when on: it reaches each image's true-label row. */
  peer: PeerStep | null;
}

export type LabelLoss = (input: LabelLossInput) => Gradient;

export type Loss = { kind: 'row'; terms: RowLoss } | { kind: 'label'; gradient: LabelLoss };
