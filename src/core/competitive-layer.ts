// A channel-wise competitive layer (CwComp, Papachristodoulou et al., AAAI 2024): conv or dense,
// trained on its own loss with no negative data and no label overlay. The layer's output
// channels are cut into ten contiguous groups, one per class (channels [j S, (j+1) S), S =
// channels / 10), and class j's goodness is its group's mean squared activity:
//   Z = conv(X) + b   (or X W^T + b for a dense layer)
//   m = maxpool(relu(Z))                        (pool 1: none)
//   Y = gamma (m - mu) / sqrt(var + eps) + beta (BatchNorm: the batch's statistics in training,
//                                                running ones, as PyTorch keeps them, after)
//   G_j = mean over positions and group j's channels of Y^2             -> G [B, 10]
//   L = -mean_i log softmax(alpha G_i)[y_i]     (the cross-entropy of the true class)
// A layer predicts argmax_j G_j in one pass; a set of layers sums their G (predict.ts). What the
// next layer gets is Y, computed before this step's update, as FFLayer hands on H.
//
// The gradient, closed-form (checked against tfjs autograd in the tests):
//   dL/dG[b,j] = alpha (softmax(alpha G_b)_j - [j = y_b]) / B
//   dL/dY      = dL/dG[b, class of c] 2 Y / (positions S)
//   dbeta = sum dY,  dgamma = sum dY xhat     (xhat = (m - mu) / sqrt(var + eps), sums over the
//                                              batch's M pooled positions)
//   dm   = gamma / sqrt(var + eps) (dY - dbeta / M - xhat dgamma / M)
//   dZ   = dm at each window's maximum where Z + b > 0, else 0;   db = sum dZ
//   dW   = P^T dZ                              (P: the im2col patches of X; no dX: FF is local)
// The convolution is an im2col product, Z = P W, on whatever runs the backend's matrix products
// (BLAS under wasm+blas), and everything around the two products is a pass or two over host
// arrays (conv-kernels.ts). Grouped convolutions are a batch of G products, one per group. A conv
// layer with a small patch per group steps with its product fused into those loops where ffx-blas
// has them (directStep).
//
// Weights are saved as PyTorch keeps them: conv [out, in/groups, k, k], dense [out, in]; the
// layer computes with the conv kernel as [groups, k*k*in/groups, out/groups] (rows in (ky, kx,
// channel) order). Activations are channels last ([rows, height, width, channels], flat per
// row: model-shape.ts), so a dense layer after a conv one reads its input in (h, w, c) order.
import * as tf from '@tensorflow/tfjs';
import {
  fromHost,
  fromHostAll,
  host,
  hostView,
  hostWritten,
  ownedVariable,
  readFloats,
} from './host-memory.js';
import { LayerOptimizer, type OptimizerConfig } from './optimizer.js';
import type { NamedTensor } from './safetensors.js';
import { convOutput, isConv, type ConvSpec, type Shape } from './model-shape.js';
import { READOUT_CLASSES } from './readout.js';
import { convKernels, softmaxLoss, type Geometry } from './conv-kernels.js';
import type { ConvKernels, DirectGeometry } from '../backend/wasm-internals.js';
import {
  disposePart,
  shardLabels,
  shardSizes,
  sumTerm,
  type ShardPart,
  type ShardedLayer,
} from './shards.js';

export const CLASSES = READOUT_CLASSES;
/** BatchNorm's epsilon and the weight of each batch in its running statistics (PyTorch's). */
export const BN_EPS = 1e-4;
export const BN_MOMENTUM = 0.1;
/** Images per forward pass when evaluating: bounds the patches' memory whatever the batch. */
const FORWARD_CHUNK = 128;
/**
 * The largest patch (kernel^2 x input channels / groups) whose conv layer steps with its product
 * fused in (directStep): recomputing Z twice costs 2 DIRECT_PATCH multiply-adds a value, still
 * less than the memory traffic of storing it.
 */
export const DIRECT_PATCH = 32;

export interface CompetitiveConfig {
  /** [height, width, channels] of the input. */
  inShape: Shape;
  /** A conv layer's spec, or a dense layer's width. */
  spec: ConvSpec | number;
  /** The scale of goodness in the softmax (default 1). */
  alpha: number;
  seed: number;
  /** Shards of a batch, each normalised by its own statistics (default 1: the batch whole). */
  shards?: number;
}

/** The layout change between PyTorch's conv weight [O, Cg, k, k] and [G, k*k*Cg, O/G]. */
function permuteKernel(
  from: Float32Array,
  o: number,
  groups: number,
  cg: number,
  k: number,
  toTorch: boolean,
): Float32Array {
  const out = new Float32Array(from.length);
  const og = o / groups;
  for (let oc = 0; oc < o; oc++) {
    const g = Math.floor(oc / og);
    for (let ci = 0; ci < cg; ci++)
      for (let ky = 0; ky < k; ky++)
        for (let kx = 0; kx < k; kx++) {
          const torch = ((oc * cg + ci) * k + ky) * k + kx;
          const gemm = (g * k * k * cg + (ky * k + kx) * cg + ci) * og + (oc - g * og);
          if (toTorch) out[torch] = from[gemm]!;
          else out[gemm] = from[torch]!;
        }
  }
  return out;
}

export class CompetitiveLayer implements ShardedLayer {
  readonly config: CompetitiveConfig & { inDim: number; outDim: number };
  readonly outShape: Shape;
  /** Conv: [groups, k*k*in/groups, out/groups]; dense: [out, in]. */
  readonly kernel: tf.Variable;
  readonly bias: tf.Variable<tf.Rank.R1>;
  readonly gamma: tf.Variable<tf.Rank.R1>;
  readonly beta: tf.Variable<tf.Rank.R1>;
  readonly runningMean: Float32Array;
  readonly runningVar: Float32Array;
  readonly optimizer: LayerOptimizer;
  readonly readout = null;
  private readonly conv: ConvSpec | null;
  private readonly buffers = new Map<string, Float32Array | Int32Array>();

  constructor(config: CompetitiveConfig, optimizer: OptimizerConfig) {
    const { inShape, spec } = config;
    const [h, w, c] = inShape;
    this.conv = isConv(spec) ? spec : null;
    const out = this.conv ? convOutput(this.conv, inShape) : ([1, 1, spec as number] as const);
    if (typeof out === 'string') throw new RangeError(`conv layer: ${out}`);
    const channels = out[2];
    if (channels % CLASSES !== 0) {
      throw new RangeError(
        `a competitive layer's ${channels} channels must split into ${CLASSES} equal class groups`,
      );
    }
    this.outShape = out;
    this.config = { ...config, inDim: h * w * c, outDim: out[0] * out[1] * out[2] };
    // PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, drawn in
    // PyTorch's layout.
    const groups = this.conv?.groups ?? 1;
    const fanIn = this.conv ? (this.conv.kernel ** 2 * c) / groups : h * w * c;
    const bound = 1 / Math.sqrt(fanIn);
    const init = tf.randomUniform([channels * fanIn], -bound, bound, 'float32', config.seed);
    const values = init.dataSync() as Float32Array;
    init.dispose();
    this.kernel = ownedVariable(
      this.conv
        ? tf.tensor3d(
            permuteKernel(values, channels, groups, c / groups, this.conv.kernel, false),
            [groups, fanIn, channels / groups],
          )
        : tf.tensor2d(values, [channels, fanIn]),
      true,
    );
    this.bias = ownedVariable(
      tf.randomUniform([channels], -bound, bound, 'float32', config.seed + 1),
      true,
    );
    this.gamma = ownedVariable(tf.ones([channels]), true);
    this.beta = ownedVariable(tf.zeros([channels]), true);
    this.runningMean = new Float32Array(channels);
    this.runningVar = new Float32Array(channels).fill(1);
    this.optimizer = new LayerOptimizer(optimizer, this.trainable());
  }

  get steps(): number {
    return this.optimizer.step;
  }

  set steps(n: number) {
    this.optimizer.step = n;
  }

  /**
   * One step on a batch x [B, inDim] with its true `labels`: returns Y of every row (owned by
   * the caller) and [loss, mean goodness of the true class, mean goodness of each other one].
   * With shards (config.shards > 1), the shards' parts combined (combineParts).
   */
  trainStep(
    x: tf.Tensor2D,
    nPos: number,
    lr: number,
    labels?: ArrayLike<number>,
  ): { h: tf.Tensor2D; stats: tf.Tensor1D; logits?: tf.Tensor2D } {
    const rows = x.shape[0];
    if (rows !== nPos || x.shape[1] !== this.config.inDim) {
      throw new Error(
        `trainStep: expected [${nPos}, ${this.config.inDim}], got [${x.shape.join(', ')}]`,
      );
    }
    if (labels?.length !== rows) throw new Error(`trainStep: needs the ${rows} labels`);
    const sizes = shardSizes(rows, this.config.shards ?? 1);
    if (sizes.length > 1) {
      const ks = sizes.map((_, k) => k);
      const inputs = ks.map((k) => this.shardInput(x, rows, sizes, k));
      const parts = this.shardParts(inputs, sizes, rows, shardLabels(labels, sizes, ks));
      tf.dispose(inputs);
      const { h, stats, update } = this.combineParts(parts, rows, lr);
      tf.dispose(Object.values(update));
      return { h, stats };
    }
    const step = this.shardStep(x, labels, 1);
    this.optimizer.apply(this.gradientMap(step.grads), lr);
    tf.dispose(Object.values(step.grads));
    this.updateRunning(step.mean, step.variance, step.count);
    let gTrue = 0;
    let gAll = 0;
    for (let b = 0; b < rows; b++) {
      gTrue += step.goodness[b * CLASSES + labels[b]!]!;
      for (let j = 0; j < CLASSES; j++) gAll += step.goodness[b * CLASSES + j]!;
    }
    const stats = tf.tensor1d([step.loss, gTrue / rows, (gAll - gTrue) / (rows * (CLASSES - 1))]);
    return { h: step.y, stats };
  }

  /**
   * The forward pass and gradient of a batch, or of a shard of one (its loss and gradient scaled
   * by `share`, its share of the batch); nothing is updated. Returns Y (owned by the caller),
   * the class goodness [rows, CLASSES], the loss, the gradient by name (tensors the caller
   * owns), and BatchNorm's batch statistics over its `count` pooled positions.
   */
  private shardStep(
    x: tf.Tensor2D,
    labels: ArrayLike<number>,
    share: number,
  ): {
    y: tf.Tensor2D;
    goodness: Float64Array;
    loss: number;
    grads: Record<'kernel' | 'bias' | 'gamma' | 'beta', tf.Tensor>;
    mean: Float64Array;
    variance: Float64Array;
    count: number;
  } {
    const rows = x.shape[0];
    const k = convKernels();
    const g = this.geometry(rows);
    if (this.direct(g, k)) return this.directStep(x, labels, share, g, k);
    const out = g.out;
    const { p, z } = this.product(x, g);
    const count = rows * g.hp * g.wp; // pooled positions of the batch
    const m = this.scratch('m', Float32Array, count * out);
    const arg = this.scratch('arg', Int32Array, count * out);
    this.reluPool(z, g, m, arg);
    z.dispose();
    const [mean, variance] = [new Float64Array(out), new Float64Array(out)];
    k.moments(m, count, out, mean, variance);
    const gamma = Float32Array.from(host(this.gamma));
    const beta = host(this.beta);
    const scale = Float64Array.from(gamma, (v, o) => v / Math.sqrt(variance[o]! + BN_EPS));
    const shift = Float64Array.from(scale, (s, o) => beta[o]! - mean[o]! * s);
    const y = this.scratch('y', Float32Array, count * out);
    k.affine(m, count, out, scale, shift, y);
    const goodness = new Float64Array(rows * CLASSES);
    k.goodness(y, rows, out, CLASSES, goodness);
    const { loss, dg } = softmaxLoss(goodness, labels, CLASSES, this.config.alpha);
    // A shard's loss is its mean: its share of the batch's is share of it, and so its gradient.
    if (share !== 1) for (let i = 0; i < dg.length; i++) dg[i]! *= share;
    const [dgamma, dbeta, dbias] = [0, 1, 2].map(() => new Float32Array(out)) as [
      Float32Array,
      Float32Array,
      Float32Array,
    ];
    const dzShape = this.conv ? [g.groups, rows * g.ho * g.wo, out / g.groups] : [rows, out];
    const dz = fromHost(dzShape, (view) =>
      k.backward(
        dg,
        m,
        y,
        arg,
        mean,
        variance,
        gamma,
        BN_EPS,
        rows,
        count,
        out,
        CLASSES,
        view,
        dgamma,
        dbeta,
        dbias,
      ),
    );
    const dw = this.conv
      ? tf.matMul(p as tf.Tensor3D, dz as tf.Tensor3D, true, false)
      : tf.matMul(dz as tf.Tensor2D, p as tf.Tensor2D, true, false);
    tf.dispose([dz, ...(p === x ? [] : [p])]);
    return {
      // A shard's Y outlives the next shard's step, which reuses the scratch array (a backend
      // may keep the array it is given rather than copy it).
      y: tf.tensor2d(share === 1 ? y : y.slice(), [rows, this.config.outDim]),
      goodness,
      loss: share === 1 ? loss : loss * share,
      grads: {
        kernel: dw,
        bias: tf.tensor1d(dbias),
        gamma: tf.tensor1d(dgamma),
        beta: tf.tensor1d(dbeta),
      },
      mean,
      variance,
      count,
    };
  }

  /**
   * Whether this step runs as directStep: a conv layer whose patch (per group) is at most
   * DIRECT_PATCH values, where ffx-blas has the fused kernels.
   */
  private direct(g: Geometry, k: ConvKernels): boolean {
    return (
      this.conv !== null &&
      (g.kernel * g.kernel * g.c) / g.groups <= DIRECT_PATCH &&
      k.directForward !== undefined &&
      k.directBackward !== undefined
    );
  }

  /**
   * shardStep with the product fused into the two sweeps around it (ffx_conv.c: directForward
   * and directBackward): image by image, Z is recomputed from the padded image, which stays in
   * cache, and only Y is written out. The first sweep takes each image's sums of m per channel,
   * from which BatchNorm's moments, the sums of Y and so the goodness and loss follow; the second
   * writes Y and the gradient. For a small patch (a first layer's: 9 values for a 3x3 kernel on
   * grey images; a grouped layer's few channels a group) Z costs a few multiply-adds a value,
   * far less than writing the patches, Z, m, arg and dZ out and reading them back. The same math
   * as the general path, its sums in an order of its own.
   */
  private directStep(
    x: tf.Tensor2D,
    labels: ArrayLike<number>,
    share: number,
    g: Geometry,
    k: ConvKernels,
  ): ReturnType<CompetitiveLayer['shardStep']> {
    const { rows, out } = g;
    const geometry = this.directGeometry(g);
    const [mean, variance] = [new Float64Array(out), new Float64Array(out)];
    const goodness = new Float64Array(rows * CLASSES);
    const sums = new Float64Array(3 * rows * out);
    // The views are taken inside each call: an allocation in between may move the heap.
    const params = () =>
      [host(x), host(this.kernel), host(this.bias), host(this.gamma), host(this.beta)] as const;
    k.directForward!(...params(), BN_EPS, ...geometry, null, mean, variance, goodness, sums, false);
    const { loss, dg } = softmaxLoss(goodness, labels, CLASSES, this.config.alpha);
    if (share !== 1) for (let i = 0; i < dg.length; i++) dg[i]! *= share;
    const dw = new Float32Array(this.kernel.size);
    const [dgamma, dbeta, dbias] = [0, 1, 2].map(() => new Float32Array(out)) as [
      Float32Array,
      Float32Array,
      Float32Array,
    ];
    const y = fromHostAll([rows, this.config.outDim], (view) =>
      k.directBackward!(
        ...params(),
        BN_EPS,
        ...geometry,
        mean,
        variance,
        dg,
        sums,
        dw,
        dgamma,
        dbeta,
        dbias,
        view,
      ),
    ) as tf.Tensor2D;
    return {
      y,
      goodness,
      loss: share === 1 ? loss : loss * share,
      grads: {
        kernel: tf.tensor(dw, this.kernel.shape),
        bias: tf.tensor1d(dbias),
        gamma: tf.tensor1d(dgamma),
        beta: tf.tensor1d(dbeta),
      },
      mean,
      variance,
      count: rows * g.hp * g.wp,
    };
  }

  private directGeometry(g: Geometry): DirectGeometry {
    const { rows, h, w, c, kernel, stride, padding, groups, ho, wo, pool, hp, wp, out } = g;
    return [rows, h, w, c, kernel, stride, padding, groups, ho, wo, pool, hp, wp, out, CLASSES];
  }

  private gradientMap(grads: Record<string, tf.Tensor>): Map<tf.Variable, tf.Tensor> {
    return new Map<tf.Variable, tf.Tensor>([
      [this.kernel, grads.kernel!],
      [this.bias, grads.bias!],
      [this.gamma, grads.gamma!],
      [this.beta, grads.beta!],
    ]);
  }

  /**
   * BatchNorm's running statistics as PyTorch keeps them, from a batch's mean and (biased)
   * variance over `count` values a channel: the variance unbiased, or (count 0) already so.
   */
  private updateRunning(mean: ArrayLike<number>, variance: ArrayLike<number>, count: number) {
    const [n, d] = count > 0 ? [count, Math.max(count - 1, 1)] : [1, 1];
    for (let o = 0; o < this.runningMean.length; o++) {
      this.runningMean[o] = (1 - BN_MOMENTUM) * this.runningMean[o]! + BN_MOMENTUM * mean[o]!;
      this.runningVar[o] =
        (1 - BN_MOMENTUM) * this.runningVar[o]! + (BN_MOMENTUM * variance[o]! * n) / d;
    }
  }

  shardInput(x: tf.Tensor2D, _nPos: number, sizes: number[], k: number): tf.Tensor2D {
    const at = sizes.slice(0, k).reduce((a, b) => a + b, 0);
    return tf.slice(x, [at, 0], [sizes[k]!, -1]);
  }

  /**
   * Each shard's forward pass and gradient on its images alone, BatchNorm with the shard's own
   * statistics (ghost batch norm, as data-parallel PyTorch without SyncBatchNorm): the gradient
   * and loss scaled by the shard's share, and its statistics, to combine (combineParts).
   */
  shardParts(
    inputs: tf.Tensor2D[],
    sizes: number[],
    nPos: number,
    labels?: ArrayLike<number>[],
  ): ShardPart[] {
    if (labels?.length !== inputs.length) throw new Error("shardParts: needs each shard's labels");
    return inputs.map((x, i) => {
      const size = sizes[i]!;
      const shardLabels = labels[i]!;
      if (x.shape[0] !== size || shardLabels.length !== size) {
        throw new Error(`shardParts: shard ${i} has ${x.shape[0]} images, ${size} expected`);
      }
      const step = this.shardStep(x, shardLabels, size / nPos);
      // Each image's goodness of its class, then its mean over the other classes.
      const g = new Float32Array(2 * size);
      for (let b = 0; b < size; b++) {
        let all = 0;
        for (let j = 0; j < CLASSES; j++) all += step.goodness[b * CLASSES + j]!;
        const own = step.goodness[b * CLASSES + shardLabels[b]!]!;
        g[b] = own;
        g[size + b] = (all - own) / (CLASSES - 1);
      }
      return {
        h: step.y,
        g: tf.tensor1d(g),
        loss: tf.scalar(step.loss),
        terms: {
          ...step.grads,
          mean: tf.tensor1d(Float32Array.from(step.mean)),
          var: tf.tensor1d(Float32Array.from(step.variance)),
        },
      };
    });
  }

  /**
   * The shards' parts (in shard order) made one step: gradients and losses summed in that
   * order; BatchNorm's running statistics from the shards' pooled (the batch's mean, and the
   * mean of the shards' variances plus their means' spread), made unbiased.
   */
  combineParts(
    parts: ShardPart[],
    nPos: number,
    lr: number,
  ): { h: tf.Tensor2D; stats: tf.Tensor1D; update: Record<string, tf.Tensor> } {
    try {
      const sizes = parts.map((p) => p.g.shape[0]! / 2);
      const out = this.outShape[2];
      const [mean, variance] = [new Float64Array(out), new Float64Array(out)];
      const moments = parts.map((p) => [host(p.terms.mean!).slice(), host(p.terms.var!).slice()]);
      moments.forEach(([m], k) => {
        for (let o = 0; o < out; o++) mean[o]! += (sizes[k]! / nPos) * m![o]!;
      });
      moments.forEach(([m, v], k) => {
        for (let o = 0; o < out; o++) {
          const d = m![o]! - mean[o]!;
          variance[o]! += (sizes[k]! / nPos) * (v![o]! + d * d);
        }
      });
      const count = nPos * this.outShape[0] * this.outShape[1];
      const unbiased = Float32Array.from(variance, (v) => (v * count) / Math.max(count - 1, 1));
      let loss = 0;
      let gTrue = 0;
      let gOther = 0;
      parts.forEach((p, k) => {
        loss += p.loss.dataSync()[0]!;
        const g = p.g.dataSync();
        for (let b = 0; b < sizes[k]!; b++) {
          gTrue += g[b]!;
          gOther += g[sizes[k]! + b]!;
        }
      });
      const update: Record<string, tf.Tensor> = {};
      for (const name of ['kernel', 'bias', 'gamma', 'beta']) update[name] = sumTerm(parts, name);
      update.mean = tf.tensor1d(Float32Array.from(mean));
      update.var = tf.tensor1d(unbiased);
      this.applyUpdate(update, lr);
      return {
        h: tf.concat(parts.map((p) => p.h)) as tf.Tensor2D,
        stats: tf.tensor1d([loss, gTrue / nPos, gOther / nPos]),
        update,
      };
    } finally {
      parts.forEach(disposePart);
    }
  }

  /** The shards' combined gradient and statistics (combineParts) applied. */
  applyUpdate(update: Record<string, tf.Tensor>, lr: number): void {
    this.optimizer.apply(this.gradientMap(update), lr);
    this.updateRunning(host(update.mean!), host(update.var!), 0);
  }

  partShapes(size: number): Record<string, number[]> {
    return { h: [size, this.config.outDim], g: [2 * size], loss: [1], ...this.updateShapes() };
  }

  updateShapes(): Record<string, number[]> {
    const out = [this.outShape[2]];
    return {
      kernel: [...this.kernel.shape],
      bias: out,
      gamma: out,
      beta: out,
      mean: out,
      var: out,
    };
  }

  /** Y with the running statistics: what evaluation, and a stage after a trained one, use. */
  forward(x: tf.Tensor2D): tf.Tensor2D {
    const rows = x.shape[0];
    const out = this.outShape[2];
    const k = convKernels();
    if (rows > 0 && this.direct(this.geometry(rows), k)) return this.directForward(x, k);
    // Y goes straight into the tensor's storage where the backend lets it (an evaluation batch's
    // Y can be a hundred MB: a copy is one more sweep of fresh pages).
    const y = tf.zeros([rows, this.config.outDim]) as tf.Tensor2D;
    const values = hostView(y, true) ? null : new Float32Array(rows * this.config.outDim);
    const scale = Float64Array.from(
      host(this.gamma),
      (v, o) => v / Math.sqrt(this.runningVar[o]! + BN_EPS),
    );
    const beta = host(this.beta);
    const shift = Float64Array.from(scale, (s, o) => beta[o]! - this.runningMean[o]! * s);
    for (let at = 0; at < rows; at += FORWARD_CHUNK) {
      const n = Math.min(FORWARD_CHUNK, rows - at);
      const chunk = tf.slice(x, [at, 0], [n, -1]);
      const g = this.geometry(n);
      const { p, z } = this.product(chunk, g);
      const count = n * g.hp * g.wp;
      const m = this.scratch('m', Float32Array, count * out);
      const arg = this.scratch('arg', Int32Array, count * out);
      this.reluPool(z, g, m, arg);
      tf.dispose([chunk, p, z]);
      const into = values ?? hostView(y, true)!; // the heap may have moved
      k.affine(m, count, out, scale, shift, into.subarray(at * this.config.outDim));
    }
    if (!values) {
      hostWritten(y);
      return y;
    }
    y.dispose();
    return tf.tensor2d(values, [rows, this.config.outDim]);
  }

  /** forward() of a layer that steps as directStep: the fused sweep with the running moments. */
  private directForward(x: tf.Tensor2D, k: ConvKernels): tf.Tensor2D {
    const rows = x.shape[0];
    const g = this.geometry(rows);
    const mean = Float64Array.from(this.runningMean);
    const variance = Float64Array.from(this.runningVar);
    const goodness = new Float64Array(rows * CLASSES);
    const sums = new Float64Array(3 * rows * g.out);
    return fromHostAll([rows, this.config.outDim], (view) =>
      k.directForward!(
        host(x),
        host(this.kernel),
        host(this.bias),
        host(this.gamma),
        host(this.beta),
        BN_EPS,
        ...this.directGeometry(g),
        view,
        mean,
        variance,
        goodness,
        sums,
        true,
      ),
    ) as tf.Tensor2D;
  }

  /**
   * Every class's goodness of activations `h` [rows, outDim], label-major ([CLASSES * rows]:
   * value c * rows + i is row i's for class c), the layout overlay goodness has.
   */
  goodness(h: tf.Tensor2D): tf.Tensor1D {
    const rows = h.shape[0];
    const g = new Float64Array(rows * CLASSES);
    convKernels().goodness(host(h), rows, this.outShape[2], CLASSES, g);
    const out = new Float32Array(rows * CLASSES);
    for (let b = 0; b < rows; b++)
      for (let j = 0; j < CLASSES; j++) out[j * rows + b] = g[b * CLASSES + j]!;
    return tf.tensor1d(out);
  }

  readoutScores(): tf.Tensor2D {
    throw new Error('a competitive layer has no readout: its class goodness predicts');
  }

  /** The patches of x (x itself for a dense layer) and their product with the kernel. */
  private product(x: tf.Tensor2D, g: Geometry): { p: tf.Tensor; z: tf.Tensor } {
    if (!this.conv) return { p: x, z: tf.matMul(x, this.kernel as tf.Tensor2D, false, true) };
    const k = (g.kernel * g.kernel * g.c) / g.groups;
    const p = fromHostAll([g.groups, g.rows * g.ho * g.wo, k], (view) =>
      convKernels().im2col(
        host(x),
        view,
        g.rows,
        g.h,
        g.w,
        g.c,
        g.kernel,
        g.stride,
        g.padding,
        g.groups,
        g.ho,
        g.wo,
      ),
    );
    return { p, z: tf.matMul(p as tf.Tensor3D, this.kernel as tf.Tensor3D) };
  }

  /**
   * A work array of `length` kept from step to step: a fresh one each step costs its page
   * faults, as much as the loop that fills it.
   */
  private scratch<T extends Float32Array | Int32Array>(
    name: string,
    type: { new (n: number): T },
    length: number,
  ): T {
    let a = this.buffers.get(name) as T | undefined;
    if (!a || a.length < length) {
      a = new type(length);
      this.buffers.set(name, a);
    }
    return a.subarray(0, length) as T;
  }

  /** m = maxpool(relu(z + b)), and where each value came from (conv-kernels.ts). */
  private reluPool(z: tf.Tensor, g: Geometry, m: Float32Array, arg: Int32Array): void {
    const { rows, ho, wo, pool, hp, wp, out, groups } = g;
    convKernels().reluPool(
      host(z),
      host(this.bias),
      m,
      arg,
      rows,
      ho,
      wo,
      pool,
      hp,
      wp,
      out,
      groups,
    );
  }

  private geometry(rows: number): Geometry {
    const [h, w, c] = this.config.inShape;
    const [hp, wp, out] = this.outShape;
    if (!this.conv) {
      return {
        rows,
        h,
        w,
        c,
        kernel: 1,
        stride: 1,
        padding: 0,
        groups: 1,
        ho: 1,
        wo: 1,
        pool: 1,
        hp: 1,
        wp: 1,
        out,
      };
    }
    const { kernel, stride = 1, padding = 0, pool = 1, groups = 1 } = this.conv;
    const ho = Math.floor((h + 2 * padding - kernel) / stride) + 1;
    const wo = Math.floor((w + 2 * padding - kernel) / stride) + 1;
    return { rows, h, w, c, kernel, stride, padding, groups, ho, wo, pool, hp, wp, out };
  }

  private trainable(): tf.Variable[] {
    return [this.kernel, this.bias, this.gamma, this.beta];
  }

  private names(prefix: string): Map<tf.Variable, string> {
    return new Map<tf.Variable, string>([
      [this.kernel, `${prefix}.weight`],
      [this.bias, `${prefix}.bias`],
      [this.gamma, `${prefix}.bn.weight`],
      [this.beta, `${prefix}.bn.bias`],
    ]);
  }

  /** The saved shape of the kernel, and its values between the two layouts. */
  private savedKernel(values: Float32Array, toTorch: boolean): NamedTensor {
    const out = this.outShape[2];
    if (!this.conv) return { shape: [out, this.config.inDim], data: values };
    const { kernel, groups = 1 } = this.conv;
    const cg = this.config.inShape[2] / groups;
    return {
      shape: [out, cg, kernel, kernel],
      data: permuteKernel(values, out, groups, cg, kernel, toTorch),
    };
  }

  /**
   * The layer's state as named float32 arrays (copies): the kernel (PyTorch's layout), bias,
   * BatchNorm's scale, shift and running statistics, and with `withOptimizer` the optimizer's
   * slots (the kernel's in the kernel's saved layout).
   */
  exportState(prefix: string, withOptimizer: boolean): Map<string, NamedTensor> {
    const out = new Map<string, NamedTensor>();
    const copy = (v: tf.Tensor): NamedTensor =>
      v === this.kernel || v.shape.join() === this.kernel.shape.join()
        ? this.savedKernel(readFloats(v), true)
        : { shape: [...v.shape], data: readFloats(v) };
    const names = this.names(prefix);
    for (const [v, name] of names) out.set(name, copy(v));
    const channels = this.outShape[2];
    out.set(`${prefix}.bn.runningMean`, { shape: [channels], data: this.runningMean.slice() });
    out.set(`${prefix}.bn.runningVar`, { shape: [channels], data: this.runningVar.slice() });
    if (withOptimizer) for (const [name, t] of this.optimizer.state(names)) out.set(name, copy(t));
    return out;
  }

  /** Loads what exportState wrote; optimizer slots are loaded when present. */
  importState(prefix: string, tensors: ReadonlyMap<string, NamedTensor>): void {
    const names = this.names(prefix);
    const targets = new Map<string, tf.Variable>();
    for (const [v, name] of names) targets.set(name, v);
    for (const [name, t] of this.optimizer.state(names)) targets.set(name, t);
    const channels = this.outShape[2];
    const stats: [string, Float32Array][] = [
      [`${prefix}.bn.runningMean`, this.runningMean],
      [`${prefix}.bn.runningVar`, this.runningVar],
    ];
    const expect = (name: string, t: NamedTensor | undefined, shape: readonly number[]) => {
      if (!t) throw new Error(`weights have no tensor "${name}"`);
      if (t.shape.join('x') !== shape.join('x')) {
        throw new Error(
          `tensor "${name}" is [${t.shape.join(', ')}], layer expects [${shape.join(', ')}]`,
        );
      }
      return t;
    };
    for (const [name] of stats) expect(name, tensors.get(name), [channels]);
    // A variance below zero (a file edited by hand) would make every prediction NaN.
    const variance = tensors.get(`${prefix}.bn.runningVar`)!.data;
    const bad = variance.findIndex((v) => !(v >= 0));
    if (bad >= 0) {
      throw new Error(
        `tensor "${prefix}.bn.runningVar" holds ${variance[bad]} at ${bad}: a variance is >= 0`,
      );
    }
    for (const [name, v] of targets) {
      const t = tensors.get(name);
      if (!t && !names.has(v)) continue; // no optimizer slots: fresh ones
      const isKernel = v.shape.join() === this.kernel.shape.join();
      const saved = isKernel ? this.savedKernel(new Float32Array(v.size), true).shape : v.shape;
      const got = expect(name, t, saved);
      const values = isKernel && this.conv ? this.savedKernel(got.data, false).data : got.data;
      tf.tidy(() => v.assign(tf.tensor(values, v.shape)));
    }
    for (const [name, into] of stats) into.set(tensors.get(name)!.data);
  }

  dispose(): void {
    for (const v of this.trainable()) v.dispose();
    this.optimizer.dispose();
    this.buffers.clear();
  }
}
