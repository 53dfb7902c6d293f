// A layer's softmax readout: a linear classifier on the layer's length-normalised activities
// for an image shown with a neutral label (every label pixel equal), trained with its own
// local objective, cross-entropy against the true label. No gradient reaches the FF layer it
// reads. One forward pass of a neutral image then predicts, instead of one pass per label.
//
// With Hn = normalise(H) (n x in), R the weight [classes, in] and b the bias:
//   Z = Hn R^T + b,  P = softmax(Z),  L = -mean_i log P[i, y_i]
//   dL/dZ = (P - onehot(y)) / n,  dR = dZ^T Hn,  db = colsum(dZ).
// Each layer has one; a layer set predicts with the sum of its layers' log-probabilities
// (predict.ts), so the heads train apart and a pipeline stage needs only its own layer.
import * as tf from '@tensorflow/tfjs';
import { ownedVariable } from './host-memory.js';
import { LayerOptimizer, type OptimizerConfig } from './optimizer.js';
import type { NamedTensor } from './safetensors.js';

export const READOUT_CLASSES = 10;

export class Readout {
  readonly inDim: number;
  readonly weight: tf.Variable<tf.Rank.R2>;
  readonly bias: tf.Variable<tf.Rank.R1>;
  readonly optimizer: LayerOptimizer;

  /** Starts at zero: every class equally likely until it has trained. */
  constructor(inDim: number, optimizer: OptimizerConfig) {
    this.inDim = inDim;
    this.weight = ownedVariable(tf.zeros([READOUT_CLASSES, inDim]), true);
    this.bias = ownedVariable(tf.zeros([READOUT_CLASSES]), true);
    this.optimizer = new LayerOptimizer(optimizer, [this.weight, this.bias]);
  }

  /** Z = Hn R^T + b for normalised activities `hn` [n, in]: [n, classes]. */
  logits(hn: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => {
      // R Hn^T then transpose: the small operand is the one transposed (see ff-layer.ts).
      const zT = tf.add(
        tf.matMul(this.weight, tf.transpose(hn)),
        tf.reshape(this.bias, [READOUT_CLASSES, 1]),
      );
      return tf.transpose(zT) as tf.Tensor2D;
    });
  }

  /**
   * One step on `hn` with the true `labels`: returns the logits before the update (owned by
   * the caller) and the loss.
   */
  trainStep(
    hn: tf.Tensor2D,
    labels: ArrayLike<number>,
    lr: number,
  ): { logits: tf.Tensor2D; loss: number } {
    const n = hn.shape[0];
    if (hn.shape[1] !== this.inDim || labels.length !== n) {
      throw new Error(
        `readout trainStep: expected [${labels.length}, ${this.inDim}], got [${hn.shape.join(', ')}]`,
      );
    }
    const { logits, loss } = tf.tidy(() => {
      const z = this.logits(hn);
      const y = this.oneHot(labels);
      const logP = tf.logSoftmax(z);
      const loss = tf.neg(tf.mean(tf.sum(tf.mul(y, logP), 1)));
      const dz = tf.div(tf.sub(tf.exp(logP), y), n); // [n, classes]
      const dzT = tf.transpose(dz);
      const grads = new Map<tf.Variable, tf.Tensor>([
        [this.weight, tf.matMul(dzT, hn)],
        [this.bias, tf.sum(dzT, 1)],
      ]);
      this.optimizer.apply(grads, lr);
      return { logits: z, loss };
    });
    const value = loss.dataSync()[0]!;
    loss.dispose();
    return { logits, loss: value };
  }

  /** `<prefix>.readout.weight` [classes, in], `.bias`, and the optimizer's slots with them. */
  exportState(prefix: string, withOptimizer: boolean): Map<string, NamedTensor> {
    const out = new Map<string, NamedTensor>();
    const names = this.names(prefix);
    for (const [v, name] of names)
      out.set(name, { shape: [...v.shape], data: v.dataSync() as Float32Array });
    if (withOptimizer) {
      for (const [name, t] of this.optimizer.state(names))
        out.set(name, { shape: [...t.shape], data: t.dataSync() as Float32Array });
    }
    return out;
  }

  /** Loads what exportState wrote (the optimizer's slots when present). */
  importState(prefix: string, tensors: ReadonlyMap<string, NamedTensor>): void {
    const names = this.names(prefix);
    const targets = new Map<string, tf.Variable>([...names].map(([v, name]) => [name, v]));
    for (const [name, t] of this.optimizer.state(names)) targets.set(name, t);
    for (const [name, v] of targets) {
      const t = tensors.get(name);
      if (!t) {
        if (v === this.weight || v === this.bias) throw new Error(`no tensor "${name}"`);
        continue;
      }
      if (t.shape.join('x') !== v.shape.join('x')) {
        throw new Error(
          `tensor "${name}" is [${t.shape.join(', ')}], the readout needs [${v.shape.join(', ')}]`,
        );
      }
      tf.tidy(() => v.assign(tf.tensor(t.data, v.shape)));
    }
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
    this.optimizer.dispose();
  }

  private names(prefix: string): Map<tf.Variable, string> {
    return new Map<tf.Variable, string>([
      [this.weight, `${prefix}.readout.weight`],
      [this.bias, `${prefix}.readout.bias`],
    ]);
  }

  private oneHot(labels: ArrayLike<number>): tf.Tensor2D {
    return tf.tidy(
      () =>
        tf
          .oneHot(tf.tensor1d(Int32Array.from(labels), 'int32'), READOUT_CLASSES)
          .toFloat() as tf.Tensor2D,
    );
  }
}
