// Hinton's threshold loss: each row of [pos; neg] against the threshold theta,
//   t = s (g - theta),   L = mean(softplus(-t))             (s = +1 pos, -1 neg; 2B rows)
// so dL/dg = -s sigmoid(-t) / 2B: row weight sigmoid(-t), scale 1/2B. t > 0 when the row is on
// the right side of the threshold; a row far past it has a weight of nearly 0.
import * as tf from '@tensorflow/tfjs';
import type { RowLoss } from './loss.js';

export const threshold: RowLoss = ({ g, nPos, signs, threshold: theta }) => {
  const t = tf.mul(signs, tf.sub(g, theta));
  return {
    loss: tf.mean(tf.softplus(tf.neg(t))),
    rowWeight: tf.sigmoid(tf.neg(t)) as tf.Tensor1D,
    scale: 1 / (2 * nPos),
  };
};
