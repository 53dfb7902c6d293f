// A reference for CompetitiveLayer written with tfjs ops and autograd, from the layer's saved
// (PyTorch-layout) weights: what the layer's closed-form step is checked against.
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import {
  BN_EPS,
  BN_MOMENTUM,
  CLASSES,
  type CompetitiveConfig,
} from '../../src/core/competitive-layer.js';
import type { NamedTensor } from '../../src/core/safetensors.js';

/**
 * The layer's forward from its saved state, in tfjs ops: per group a conv2d (HWIO kernel from
 * PyTorch's [O, Cg, k, k]), bias, relu, max pooling, BatchNorm (the batch's statistics, or with
 * `running` the saved ones), class goodness and the cross-entropy.
 */
export function reference(
  cfg: CompetitiveConfig,
  state: ReadonlyMap<string, NamedTensor>,
  x: tf.Tensor2D,
  labels: number[],
  running = false,
) {
  const [h, w, c] = cfg.inShape;
  const rows = x.shape[0];
  const get = (name: string) =>
    tf.tensor(state.get(`l.${name}`)!.data, state.get(`l.${name}`)!.shape);
  const kernel = tf.variable(get('weight'));
  const bias = tf.variable(get('bias') as tf.Tensor1D);
  const gamma = tf.variable(get('bn.weight') as tf.Tensor1D);
  const beta = tf.variable(get('bn.bias') as tf.Tensor1D);
  const forward = () => {
    let a: tf.Tensor4D;
    if (typeof cfg.spec === 'number') {
      const z = tf.add(tf.matMul(x, kernel as tf.Tensor2D, false, true), bias);
      a = tf.reshape(tf.relu(z), [rows, 1, 1, cfg.spec]);
    } else {
      const { kernel: k, stride = 1, padding = 0, pool = 1, groups = 1 } = cfg.spec;
      const image = tf.reshape(x, [rows, h, w, c]);
      const padded = tf.pad(image, [
        [0, 0],
        [padding, padding],
        [padding, padding],
        [0, 0],
      ]);
      const out = cfg.spec.conv;
      const cg = c / groups;
      const og = out / groups;
      const parts = Array.from({ length: groups }, (_, g) => {
        const wg = tf.transpose(tf.slice(kernel, [g * og, 0, 0, 0], [og, cg, k, k]), [2, 3, 1, 0]);
        const xg = tf.slice(padded, [0, 0, 0, g * cg], [-1, -1, -1, cg]);
        return tf.conv2d(xg as tf.Tensor4D, wg as tf.Tensor4D, stride, 'valid');
      });
      const z = tf.add(groups === 1 ? parts[0]! : tf.concat(parts, 3), bias);
      a = tf.relu(z) as tf.Tensor4D;
      if (pool > 1) a = tf.maxPool(a, pool, pool, 'valid');
    }
    const { mean, variance } = running
      ? { mean: get('bn.runningMean'), variance: get('bn.runningVar') }
      : tf.moments(a, [0, 1, 2]);
    const y = tf.add(
      tf.mul(tf.div(tf.sub(a, mean), tf.sqrt(tf.add(variance, BN_EPS))), gamma),
      beta,
    );
    const [, hp, wp, o] = y.shape as number[];
    const g = tf.mean(tf.square(tf.reshape(y, [rows, hp! * wp!, CLASSES, o! / CLASSES])), [1, 3]);
    const logp = tf.logSoftmax(tf.mul(g, cfg.alpha));
    const loss = tf.neg(tf.mean(tf.sum(tf.mul(logp, tf.oneHot(labels, CLASSES)), 1))) as tf.Scalar;
    return { y, g, loss, mean, variance };
  };
  const kept = forward();
  const { grads } = tf.variableGrads(() => forward().loss, [kernel, bias, gamma, beta]);
  const grad = (v: tf.Variable) => grads[v.name]!.dataSync() as Float32Array;
  const out = {
    y: kept.y.dataSync() as Float32Array,
    g: kept.g.dataSync() as Float32Array,
    loss: kept.loss.dataSync()[0]!,
    mean: kept.mean.dataSync() as Float32Array,
    variance: kept.variance.dataSync() as Float32Array,
    dWeight: grad(kernel),
    dBias: grad(bias),
    dGamma: grad(gamma),
    dBeta: grad(beta),
    count: (kept.y.size / kept.y.shape[3]!) as number,
  };
  tf.dispose([kernel, bias, gamma, beta, ...Object.values(grads), ...Object.values(kept)]);
  return out;
}

export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  tol = 1e-4,
) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (d > tol * Math.max(scale, 1e-6)) {
      assert.fail(`${what}[${i}]: ${actual[i]} vs ${expected[i]} (scale ${scale})`);
    }
  }
}

/**
 * A layer's training step (plain SGD at `lr`: the step is -lr times the gradient) against the
 * reference's: Y, the loss, the true class's mean goodness, every gradient, and BatchNorm's
 * running statistics (assertRunningAfterStep).
 */
export function assertStepMatches(
  ref: ReturnType<typeof reference>,
  step: {
    y: tf.Tensor;
    stats: tf.Tensor;
    labels: number[];
    before: ReadonlyMap<string, NamedTensor>;
    after: ReadonlyMap<string, NamedTensor>;
    lr: number;
  },
): void {
  const { labels, before, after, lr } = step;
  assertClose(step.y.dataSync(), ref.y, 'Y');
  const [loss, gTrue] = step.stats.dataSync();
  assert.ok(Math.abs(loss! - ref.loss) < 1e-5, `loss ${loss} vs ${ref.loss}`);
  const meanTrue = labels.reduce((s, l, b) => s + ref.g[b * CLASSES + l]!, 0) / labels.length;
  assert.ok(Math.abs(gTrue! - meanTrue) < 1e-5);
  const grad = (n: string) =>
    Float32Array.from(
      before.get(`l.${n}`)!.data,
      (v, i) => (v - after.get(`l.${n}`)!.data[i]!) / lr,
    );
  assertClose(grad('weight'), ref.dWeight, 'dW', 2e-3);
  assertClose(grad('bias'), ref.dBias, 'db', 2e-3);
  assertClose(grad('bn.weight'), ref.dGamma, 'dgamma', 2e-3);
  assertClose(grad('bn.bias'), ref.dBeta, 'dbeta', 2e-3);
  assertRunningAfterStep(before, after, ref);
}

/**
 * BatchNorm's running statistics after a step from those of `before`, as PyTorch keeps them:
 * momentum BN_MOMENTUM, the batch's variance over `count` values unbiased.
 */
export function assertRunningAfterStep(
  before: ReadonlyMap<string, NamedTensor>,
  after: ReadonlyMap<string, NamedTensor>,
  batch: { mean: ArrayLike<number>; variance: ArrayLike<number>; count: number },
): void {
  const unbiased = batch.count / (batch.count - 1);
  const was = (name: string) => before.get(`l.bn.${name}`)!.data;
  assertClose(
    after.get('l.bn.runningMean')!.data,
    Float32Array.from(
      batch.mean,
      (m, o) => (1 - BN_MOMENTUM) * was('runningMean')[o]! + BN_MOMENTUM * m,
    ),
    'running mean',
  );
  assertClose(
    after.get('l.bn.runningVar')!.data,
    Float32Array.from(
      batch.variance,
      (v, o) => (1 - BN_MOMENTUM) * was('runningVar')[o]! + BN_MOMENTUM * v * unbiased,
    ),
    'running var',
  );
}
