// The FF losses written from their definitions, as functions of a layer's variables, for
// autograd to check the closed-form steps of src/core/loss/ against. Nothing here shares code
// with the step: the goodness comes from the layer's public forward pass, the label softmax
// builds each label's overlaid rows the long way.
import * as tf from '@tensorflow/tfjs';
import type { FFLayer } from '../../src/core/ff-layer.js';
import type { Readout } from '../../src/core/readout.js';
import { LABELS, labelOverlay } from '../../src/core/loss/softmax.js';

/**
 * The loss of one step of `layer` on x = [pos; neg] (nPos each), differentiable in its weight
 * and bias: the FF loss, plus the peer term with the running mean as it stands.
 */
export function referenceLoss(layer: FFLayer, x: tf.Tensor2D, nPos: number): tf.Scalar {
  return tf.tidy(() => {
    const cfg = layer.config;
    const alpha = cfg.alpha ?? 1;
    const h = layer.forward(x);
    const g = layer.goodness(h);
    let ff: tf.Scalar;
    switch (cfg.loss ?? 'threshold') {
      case 'threshold': {
        // softplus(-(g - theta)) for positive rows, softplus(g - theta) for negative ones.
        const pos = tf.softplus(tf.neg(tf.sub(g.slice(0, nPos), cfg.threshold)));
        const neg = tf.softplus(tf.sub(g.slice(nPos, nPos), cfg.threshold));
        ff = tf.mean(tf.concat([pos, neg]));
        break;
      }
      case 'symba':
        ff = tf.mean(tf.softplus(tf.mul(tf.sub(g.slice(nPos, nPos), g.slice(0, nPos)), alpha)));
        break;
      case 'softmax':
        ff = labelLoss(layer, tf.slice(x, [0, 0], [nPos, -1]));
        break;
    }
    const peer = peerLoss(layer, h, nPos);
    return (peer ? tf.add(ff, peer) : ff) as tf.Scalar;
  });
}

/**
 * The label softmax the long way: each positive row `xp` once per label, with that label's
 * overlay written in, through the whole layer; the cross-entropy of the true label among the
 * ten goodness values, scaled by alpha.
 */
function labelLoss(layer: FFLayer, xp: tf.Tensor2D): tf.Scalar {
  const nPos = xp.shape[0];
  const { labels, value } = labelOverlay(tf.slice(xp, [0, 0], [-1, LABELS]).dataSync(), nPos);
  const image = tf.slice(xp, [0, LABELS], [-1, -1]);
  const variants = Array.from({ length: LABELS }, (_, k) => {
    const overlay = tf.mul(tf.reshape(tf.tensor1d(value), [nPos, 1]), tf.oneHot([k], LABELS));
    return tf.concat([overlay, image], 1) as tf.Tensor2D;
  });
  const g = tf.reshape(layer.goodness(layer.forward(tf.concat(variants, 0))), [LABELS, nPos]);
  const logP = tf.logSoftmax(tf.mul(tf.transpose(g), layer.config.alpha ?? 1));
  const onehot = tf.oneHot(tf.tensor1d(labels, 'int32'), LABELS);
  return tf.neg(tf.mean(tf.sum(tf.mul(onehot, logP), 1))) as tf.Scalar;
}

/**
 * Peer normalisation's term (null when off): the running mean after this step's positive rows,
 * m = decay m_prev + (1 - decay) mean_pos(H), and weight * mean_j (m_j - mean(m))^2.
 */
function peerLoss(layer: FFLayer, h: tf.Tensor2D, nPos: number): tf.Scalar | null {
  const weight = layer.config.peerNorm ?? 0;
  if (!layer.peerMean || weight === 0) return null;
  const decay = layer.config.peerDecay ?? 0.9;
  const m = tf.add(
    tf.mul(layer.peerMean, decay),
    tf.mul(tf.mean(tf.slice(h, [0, 0], [nPos, -1]), 0), 1 - decay),
  );
  return tf.mul(tf.mean(tf.square(tf.sub(m, tf.mean(m)))), weight) as tf.Scalar;
}

/** A readout's cross-entropy on normalised activities `hn`, differentiable in its variables. */
export function readoutLoss(r: Readout, hn: tf.Tensor2D, labels: ArrayLike<number>): tf.Scalar {
  return tf.tidy(() => {
    const logP = tf.logSoftmax(r.logits(hn));
    const y = tf.oneHot(tf.tensor1d(Array.from(labels), 'int32'), logP.shape[1]);
    return tf.neg(tf.mean(tf.sum(tf.mul(y, logP), 1))) as tf.Scalar;
  });
}
