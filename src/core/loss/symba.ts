// SymBa (Lee & Song): each image's positive row i against its own negative row B+i instead of
// both against a threshold, so the two sides get equal weight:
//   d_i = alpha (g_i - g_B+i),   L = mean_i softplus(-d_i),
//   dL/dg_i = -alpha sigmoid(-d_i) / B = -dL/dg_B+i,
// the row form dL/dg = -s w scale with the pair's weight sigmoid(-d_i) on both of its rows and
// scale alpha / B. d > 0 when the positive row beats its negative.
import * as tf from '@tensorflow/tfjs';
import type { RowLoss } from './loss.js';

export const symba: RowLoss = ({ g, nPos, alpha }) => {
  const d = tf.mul(tf.sub(g.slice(0, nPos), g.slice(nPos)), alpha);
  const w = tf.sigmoid(tf.neg(d));
  return {
    loss: tf.mean(tf.softplus(tf.neg(d))),
    rowWeight: tf.concat([w, w]) as tf.Tensor1D,
    scale: alpha / nPos,
  };
};
