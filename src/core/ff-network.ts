// A stack of FF layers trained batch by batch in one process: the single-process reference
// that a distributed pipeline must reproduce. Layer l trains on the activations layer l-1
// produced for the same batch in the same step, exactly as stage l would receive them.
import * as tf from '@tensorflow/tfjs';
import { FFLayer, type GoodnessType, type StepStats } from './ff-layer.js';
import type { OptimizerConfig } from './optimizer.js';
import type { NamedTensor } from './safetensors.js';

export interface ModelConfig {
  /** Widths from the input to the last layer, e.g. [784, 1000, 1000]. */
  layers: number[];
  goodness: GoodnessType;
  negate: boolean;
  threshold: number;
  normEps: number;
  /** Peer normalisation: the weight of its term (0: off) and the decay of its running mean. */
  peerNorm?: { weight: number; decay: number };
}

/**
 * Where layer `index` (0-based) keeps its tensors in a saved model or a checkpoint:
 * `layers.<index>.weight`, `.bias`, and its optimizer slots (`layers.<index>.weight.m`, ...).
 */
export function layerPrefix(index: number): string {
  return `layers.${index}`;
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

/** Builds layer `index` of a model: what a pipeline stage does for its own layer. */
export function buildLayer(
  model: ModelConfig,
  optimizer: OptimizerConfig,
  runSeed: number,
  index: number,
): FFLayer {
  const inDim = model.layers[index];
  const outDim = model.layers[index + 1];
  if (inDim === undefined || outDim === undefined) {
    throw new RangeError(
      `layer ${index + 1} does not exist in a model with ${model.layers.length - 1} layers`,
    );
  }
  return new FFLayer(
    {
      inDim,
      outDim,
      goodness: model.goodness,
      negate: model.negate,
      threshold: model.threshold,
      normEps: model.normEps,
      seed: layerSeed(runSeed, index),
      peerNorm: model.peerNorm?.weight ?? 0,
      peerDecay: model.peerNorm?.decay ?? 0.9,
    },
    optimizer,
  );
}

export class FFNetwork {
  readonly layers: FFLayer[];

  constructor(model: ModelConfig, optimizer: OptimizerConfig, seed: number) {
    this.layers = model.layers.slice(1).map((_, i) => buildLayer(model, optimizer, seed, i));
  }

  /**
   * Trains every layer on one batch x = [pos; neg] (2*nPos rows); returns stats per layer, with
   * the seconds each layer's step took.
   */
  trainBatch(x: Float32Array, nPos: number, lr: number): (StepStats & { seconds: number })[] {
    const inDim = this.layers[0]!.config.inDim;
    let input = tf.tensor2d(x, [2 * nPos, inDim]);
    const stats: (StepStats & { seconds: number })[] = [];
    try {
      for (const layer of this.layers) {
        const t0 = performance.now();
        const step = layer.trainStep(input, nPos, lr);
        input.dispose();
        input = step.h;
        const [loss, goodnessPos, goodnessNeg] = step.stats.dataSync();
        step.stats.dispose();
        stats.push({
          loss: loss!,
          goodnessPos: goodnessPos!,
          goodnessNeg: goodnessNeg!,
          seconds: (performance.now() - t0) / 1000,
        });
      }
    } finally {
      input.dispose();
    }
    return stats;
  }

  /** Goodness of every row of x at every layer (for evaluation: x holds label overlays). */
  goodness(x: Float32Array, rows: number): Float32Array[] {
    let input = tf.tensor2d(x, [rows, this.layers[0]!.config.inDim]);
    const out: Float32Array[] = [];
    try {
      for (const layer of this.layers) {
        const h = layer.forward(input);
        input.dispose();
        input = h;
        const g = layer.goodness(h);
        out.push(g.dataSync() as Float32Array);
        g.dispose();
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
