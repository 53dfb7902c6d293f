// A stack of FF layers trained batch by batch in one process: the single-process reference
// that a distributed pipeline must reproduce. Layer l trains on the activations layer l-1
// produced for the same batch in the same step, exactly as stage l would receive them.
import * as tf from '@tensorflow/tfjs';
import { checkMemoryBudget } from '../backend/backend.js';
import { CompetitiveLayer } from './competitive-layer.js';
import { FFLayer, type GoodnessType, type LossType, type StepStats } from './ff-layer.js';
import { isConv, modelShapes, modelWidths, type LayerSpec } from './model-shape.js';
import type { OptimizerConfig } from './optimizer.js';
import type { NamedTensor } from './safetensors.js';
import { READOUT_CLASSES } from './readout.js';

/** What a model's layers train on: an FF loss, or every layer channel-wise competitive. */
export type ModelLoss = LossType | 'competitive';

/** A layer of either kind: FF (label overlay, positive and negative data) or competitive. */
export type Layer = FFLayer | CompetitiveLayer;

export interface ModelConfig {
  /**
   * The input, then one entry per layer (model-shape.ts): widths for dense layers, e.g.
   * [784, 1000, 1000], or [channels, height, width] and conv specs.
   */
  layers: LayerSpec[];
  goodness: GoodnessType;
  negate: boolean;
  threshold: number;
  /**
   * The FF objective ('threshold' when absent), for every layer or a list with one per layer,
   * and the scale of goodness that 'symba' and 'softmax' use.
   */
  loss?: ModelLoss | LossType[];
  alpha?: number;
  normEps: number;
  /** Peer normalisation: the weight of its term (0: off) and the decay of its running mean. */
  peerNorm?: { weight: number; decay: number };
  /** A softmax readout on every layer. */
  readout?: boolean;
}

/**
 * Refuses, before anything is built, a run whose batches would not fit the backend's memory.
 * FF: a training step holds a few [2B, width] activations per layer ([3B, width] with
 * readouts), an evaluation batch [10B, width]. Competitive: a step holds its input, the im2col
 * patches (kernel^2 times the input), the products and a few copies of the output; evaluation
 * runs in chunks of a training batch, but holds its whole batch's input and output.
 * `layers`: the 0-based layers held.
 */
export function checkRunMemory(
  model: ModelConfig,
  layers: readonly number[],
  batchSize: number,
  evalBatchSize: number,
): void {
  const widths = modelWidths(model.layers);
  const widest = Math.max(...layers.flatMap((i) => [widths[i]!, widths[i + 1]!]));
  if (isCompetitive(model)) {
    const step = Math.max(
      ...layers.map((i) => {
        const spec = model.layers[i + 1]!;
        const patches = isConv(spec) ? widths[i]! * spec.kernel ** 2 : 0;
        const [h, w, c] = modelShapes(model.layers)[i + 1]!;
        const pool = isConv(spec) ? (spec.pool ?? 1) ** 2 : 1;
        return widths[i]! + 2 * patches + 3 * h * w * c * pool + 4 * widths[i + 1]!;
      }),
    );
    checkMemoryBudget(batchSize * step * 4, `a batch of ${batchSize}`);
    checkMemoryBudget(
      evalBatchSize * widest * 4 * 3,
      `an evaluation batch of ${evalBatchSize} images`,
    );
    return;
  }
  const rows = batchRows(model, batchSize);
  checkMemoryBudget(rows * widest * 4 * 6, `a batch of ${batchSize}`);
  checkMemoryBudget(
    READOUT_CLASSES * evalBatchSize * widest * 4 * 4,
    `an evaluation batch of ${evalBatchSize} images (${READOUT_CLASSES * evalBatchSize} rows)`,
  );
}

/** A layer's report of one training step. */
export interface LayerStep extends StepStats {
  seconds: number;
  /** With a readout: its logits for the batch's neutral rows [nPos, classes]. */
  logits?: Float32Array;
}

/**
 * Where layer `index` (0-based) keeps its tensors in a saved model or a checkpoint:
 * `layers.<index>.weight`, `.bias`, and its optimizer slots (`layers.<index>.weight.m`, ...).
 */
export function layerPrefix(index: number): string {
  return `layers.${index}`;
}

/**
 * The shapes of layer `index`'s parameters under their saved names (no optimizer slots): what
 * a weights file must hold for it. FF: weight [out, in] and bias; competitive: the kernel
 * ([out, in / groups, k, k], dense [out, in]), bias, and BatchNorm's four.
 */
export function layerParamShapes(
  model: Pick<ModelConfig, 'layers' | 'loss'>,
  index: number,
): [string, number[]][] {
  const p = layerPrefix(index);
  const shapes = modelShapes(model.layers);
  const spec = model.layers[index + 1]!;
  const [inShape, outShape] = [shapes[index]!, shapes[index + 1]!];
  const out = outShape[2];
  const inWidth = inShape[0] * inShape[1] * inShape[2];
  if (!isCompetitive(model)) {
    return [
      [`${p}.weight`, [out, inWidth]],
      [`${p}.bias`, [out]],
    ];
  }
  const kernel = isConv(spec)
    ? [out, inShape[2] / (spec.groups ?? 1), spec.kernel, spec.kernel]
    : [out, inWidth];
  return [
    [`${p}.weight`, kernel],
    [`${p}.bias`, [out]],
    ...['bn.weight', 'bn.bias', 'bn.runningMean', 'bn.runningVar'].map((n): [string, number[]] => [
      `${p}.${n}`,
      [out],
    ]),
  ];
}

/** The tensors of layer `index` (0-based) among a model's, under their saved names. */
export function layerTensors(
  tensors: ReadonlyMap<string, NamedTensor>,
  index: number,
): Map<string, NamedTensor> {
  const prefix = `${layerPrefix(index)}.`;
  return new Map([...tensors].filter(([name]) => name.startsWith(prefix)));
}

/** Initialisation seed of layer `index` (0-based): a stage derives it from the run seed alone. */
export function layerSeed(runSeed: number, index: number): number {
  return (runSeed * 7919 + index * 104729) % 2147483647;
}

/** The objective of layer `index` (0-based). */
export function layerLoss(model: Pick<ModelConfig, 'loss'>, index: number): ModelLoss {
  const loss = model.loss ?? 'threshold';
  return typeof loss === 'string' ? loss : (loss[index] ?? 'threshold');
}

/**
 * Whether the model's layers are channel-wise competitive: its batches are plain images with
 * their labels (no overlay, no negatives), and each layer scores every class in one pass.
 */
export function isCompetitive(model: Pick<ModelConfig, 'loss'>): boolean {
  return model.loss === 'competitive';
}

/**
 * Rows of a training batch of `nPos` images: each once (competitive), positive and negative
 * (FF), and a third time with a neutral label (FF with readouts).
 */
export function batchRows(model: Pick<ModelConfig, 'loss' | 'readout'>, nPos: number): number {
  return (isCompetitive(model) ? 1 : model.readout ? 3 : 2) * nPos;
}

/** Whether a training batch carries its true labels (readouts and competitive layers train on them). */
export function carriesLabels(model: Pick<ModelConfig, 'loss' | 'readout'>): boolean {
  return isCompetitive(model) || (model.readout ?? false);
}

/** Builds layer `index` of a model: what a pipeline stage does for its own layer. */
export function buildLayer(
  model: ModelConfig,
  optimizer: OptimizerConfig,
  runSeed: number,
  index: number,
  shards = 1,
): Layer {
  const spec = model.layers[index + 1];
  if (spec === undefined || index < 0) {
    throw new RangeError(
      `layer ${index + 1} does not exist in a model with ${model.layers.length - 1} layers`,
    );
  }
  const loss = layerLoss(model, index);
  if (loss === 'competitive') {
    if (Array.isArray(spec)) throw new RangeError(`layer ${index + 1} is not a layer`);
    return new CompetitiveLayer(
      {
        inShape: modelShapes(model.layers)[index]!,
        spec: spec as number | Exclude<LayerSpec, number | readonly number[]>,
        alpha: model.alpha ?? 1,
        seed: layerSeed(runSeed, index),
        shards,
      },
      optimizer,
    );
  }
  if (isConv(spec))
    throw new RangeError(`layer ${index + 1}: a conv layer needs loss 'competitive'`);
  const [inDim, outDim] = modelWidths(model.layers).slice(index, index + 2) as [number, number];
  return new FFLayer(
    {
      inDim,
      outDim,
      goodness: model.goodness,
      negate: model.negate,
      threshold: model.threshold,
      loss,
      alpha: model.alpha ?? 1,
      normEps: model.normEps,
      seed: layerSeed(runSeed, index),
      peerNorm: model.peerNorm?.weight ?? 0,
      peerDecay: model.peerNorm?.decay ?? 0.9,
      readout: model.readout ?? false,
      shards,
    },
    optimizer,
  );
}

/**
 * How many float32 values layer `index`'s exportState(true) holds: weight and bias, with a
 * peer-normalisation mean and a readout's weight and bias, each parameter with its optimizer
 * slots. What a stage's weights message carries, so the coordinator can bound its size.
 */
export function layerStateFloats(
  model: ModelConfig,
  optimizer: OptimizerConfig,
  index: number,
): number {
  const copies = 1 + (optimizer.type === 'sgd' ? 1 : 2); // the value and its slots
  const [inDim, outDim] = modelWidths(model.layers).slice(index, index + 2) as [number, number];
  if (isCompetitive(model)) {
    // Kernel, bias, BatchNorm's scale and shift with their slots; its running statistics.
    const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
    const params = layerParamShapes(model, index).map(([, shape]) => size(shape));
    const running = params.slice(-2).reduce((a, b) => a + b, 0);
    return (params.reduce((a, b) => a + b, 0) - running) * copies + running;
  }
  let params = outDim * (inDim + 1);
  if (model.readout) params += READOUT_CLASSES * (outDim + 1);
  const peer = (model.peerNorm?.weight ?? 0) > 0 ? outDim : 0;
  return params * copies + peer;
}

export class FFNetwork {
  readonly layers: Layer[];

  constructor(model: ModelConfig, optimizer: OptimizerConfig, seed: number, shards = 1) {
    this.layers = model.layers
      .slice(1)
      .map((_, i) => buildLayer(model, optimizer, seed, i, shards));
  }

  /**
   * Trains every layer on one batch x = [pos; neg] (2*nPos rows; with readouts [pos; neg;
   * neutral] and the true `labels`); returns stats per layer, with the seconds each layer's
   * step took.
   */
  trainBatch(x: Float32Array, nPos: number, lr: number, labels?: ArrayLike<number>): LayerStep[] {
    const inDim = this.layers[0]!.config.inDim;
    let input = tf.tensor2d(x, [x.length / inDim, inDim]);
    const stats: LayerStep[] = [];
    try {
      for (const layer of this.layers) {
        const t0 = performance.now();
        const step = layer.trainStep(input, nPos, lr, labels);
        input.dispose();
        input = step.h;
        const [loss, goodnessPos, goodnessNeg] = step.stats.dataSync();
        step.stats.dispose();
        const out: LayerStep = {
          loss: loss!,
          goodnessPos: goodnessPos!,
          goodnessNeg: goodnessNeg!,
          seconds: 0,
        };
        const logits = 'logits' in step ? (step.logits as tf.Tensor2D | undefined) : undefined;
        if (logits) {
          out.logits = logits.dataSync() as Float32Array;
          logits.dispose();
        }
        out.seconds = (performance.now() - t0) / 1000;
        stats.push(out);
      }
    } finally {
      input.dispose();
    }
    return stats;
  }

  /**
   * Every layer's readout log-probabilities for images with a neutral label (x: [rows, dim]),
   * label-major as goodness() gives them: value c*rows + i is image i's for label c.
   */
  readoutScores(x: Float32Array, rows: number): Float32Array[] {
    return this.perLayer(x, rows, (layer, h) => tf.transpose(layer.readoutScores(h)));
  }

  /** Goodness of every row of x at every layer (for evaluation: x holds label overlays). */
  goodness(x: Float32Array, rows: number): Float32Array[] {
    return this.perLayer(x, rows, (layer, h) => layer.goodness(h));
  }

  /** x ([rows, dim]) forward through every layer; `score` of each layer's activations. */
  private perLayer(
    x: Float32Array,
    rows: number,
    score: (layer: Layer, h: tf.Tensor2D) => tf.Tensor,
  ): Float32Array[] {
    let input = tf.tensor2d(x, [rows, this.layers[0]!.config.inDim]);
    const out: Float32Array[] = [];
    try {
      for (const layer of this.layers) {
        const h = layer.forward(input);
        input.dispose();
        input = h;
        const s = tf.tidy(() => score(layer, h));
        out.push(s.dataSync() as Float32Array);
        s.dispose();
      }
    } finally {
      input.dispose();
    }
    return out;
  }

  /** All layers' state, named `layers.<i>.weight` / `.bias` (0-based), plus optimizer slots. */
  exportState(withOptimizer: boolean): Map<string, NamedTensor> {
    const out = new Map<string, NamedTensor>();
    this.layers.forEach((l, i) => {
      for (const [k, v] of l.exportState(layerPrefix(i), withOptimizer)) out.set(k, v);
    });
    return out;
  }

  importState(tensors: ReadonlyMap<string, NamedTensor>): void {
    this.layers.forEach((l, i) => l.importState(layerPrefix(i), tensors));
  }

  dispose(): void {
    for (const l of this.layers) l.dispose();
  }
}
