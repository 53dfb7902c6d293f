// The label softmax (first layer only: its input carries the label overlay in its first C = 10
// columns). Each positive image is scored under every label at once, and the loss is the
// cross-entropy of the true one, as the goodness rule predicts:
//   z_k = A + c w_k  (A: the pre-activation with the label columns zeroed, w_k: column k of W,
//                     c: the overlay value after normalisation; the norm is the same for all k)
//   g_k = goodness(relu(z_k)),  P = softmax(alpha g),  L = -mean_i log P[i, y_i]
//   dL/dg_k = alpha (P_k - [k = y]) / B,  dL/dz_k = dL/dg_k * dg/dH,
//   dW = (sum_k dz_k)^T Xm  + column k: sum_i c_i dz_k[i],  db = colsum(sum_k dz_k).
// One product gives all ten labels (the overlay moves only C input columns), so it costs
// little more than the threshold loss; negative rows only pass on to the next layer. Peer
// normalisation's term is on the positive rows, i.e. on z_y of each image.
import * as tf from '@tensorflow/tfjs';
import { gatherHost } from '../host-memory.js';
import { READOUT_CLASSES } from '../readout.js';
import type { LabelLoss } from './loss.js';

/** The label overlay's width: the first columns of the first layer's input. */
export const LABELS = READOUT_CLASSES;

/**
 * Each row's label and overlay value from the first LABELS columns of `rows` rows (a one-hot
 * times the value, as the data's overlay writes it). The loss needs the true label of each
 * positive row; anything but such an overlay there is an error, not a guess.
 */
export function labelOverlay(
  cols: ArrayLike<number>,
  rows: number,
): { labels: Int32Array; value: Float32Array } {
  const labels = new Int32Array(rows);
  const value = new Float32Array(rows);
  for (let i = 0; i < rows; i++) {
    const row = Array.from({ length: LABELS }, (_, k) => cols[i * LABELS + k]!);
    const set = row.filter((v) => v !== 0);
    if (set.length !== 1 || !(set[0]! > 0)) {
      throw new Error(
        `loss 'softmax' reads each positive row's label from a one-hot overlay in its first ${LABELS} columns; row ${i} has [${row.join(', ')}] there`,
      );
    }
    labels[i] = row.indexOf(set[0]!);
    value[i] = set[0]!;
  }
  return { labels, value };
}

export const softmax: LabelLoss = ({ xn, zT, nPos, weight, alpha, dgScale, peer }) => {
  const [out, inDim] = weight.shape;
  const xp = tf.slice(xn, [0, 0], [nPos, -1]);
  const { labels, value } = labelOverlay(tf.slice(xp, [0, 0], [-1, LABELS]).dataSync(), nPos);
  const c = tf.tensor1d(value);
  const zpT = tf.slice(zT, [0, 0], [-1, nPos]);
  // A = Z_pos - c w_y: the pre-activation without the label; z_k = A + c w_k, [C, out, B].
  const aT = tf.sub(zpT, tf.mul(gatherHost(weight, labels, 1), tf.reshape(c, [1, nPos])));
  const wLabels = tf.transpose(tf.slice(weight, [0, 0], [-1, LABELS])); // [C, out]
  const zAll = tf.add(
    tf.reshape(aT, [1, out, nPos]),
    tf.mul(tf.reshape(wLabels, [LABELS, out, 1]), tf.reshape(c, [1, 1, nPos])),
  );
  const hAll = tf.relu(zAll);
  const gAll = tf.mul(tf.sum(tf.square(hAll), 1), dgScale / 2); // [C, B]
  const logP = tf.logSoftmax(tf.mul(tf.transpose(gAll), alpha)); // [B, C]
  const onehot = tf.cast(tf.oneHot(tf.tensor1d(labels, 'int32'), LABELS), 'float32');
  const loss = tf.neg(tf.mean(tf.sum(tf.mul(onehot, logP), 1))) as tf.Scalar;
  const dG = tf.mul(tf.sub(tf.exp(logP), onehot), alpha / nPos); // dL/dg, [B, C]
  let dz = tf.mul(tf.reshape(tf.transpose(dG), [LABELS, 1, nPos]), tf.mul(hAll, dgScale));
  if (peer) {
    const term = tf.mul(tf.cast(tf.greater(zpT, 0), 'float32'), tf.reshape(peer.grad, [out, 1]));
    const atLabel = tf.reshape(tf.transpose(onehot), [LABELS, 1, nPos]);
    dz = tf.add(dz, tf.mul(atLabel, tf.reshape(term, [1, out, nPos])));
  }
  const daT = tf.sum(dz, 0); // [out, B]
  const keep = tf.concat([tf.zeros([1, LABELS]), tf.ones([1, inDim - LABELS])], 1);
  // Column k of W also moves the label-k overlay: sum_i c_i dz_k[i], [C, out].
  const cols = tf.reshape(
    tf.matMul(tf.reshape(dz, [LABELS * out, nPos]), tf.reshape(c, [nPos, 1])),
    [LABELS, out],
  );
  const dw = tf.add(
    tf.matMul(daT, tf.mul(xp, keep)),
    tf.pad(tf.transpose(cols), [
      [0, 0],
      [0, inDim - LABELS],
    ]),
  ) as tf.Tensor2D;
  return { loss: peer ? tf.add(loss, peer.loss) : loss, dw, db: tf.sum(daT, 1) };
};
