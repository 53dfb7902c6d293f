// The data of a run: the dataset scaled once, the training batches in the order the seed gives,
// and the test images as label overlays. Every executor sees exactly these arrays, so a run
// computes the same thing whichever executor runs its layers.
import { ConfigError, type RunConfig } from '../config/config.js';
import { isCompetitive } from '../core/ff-network.js';
import { loadDataset, type Dataset } from '../data/datasets.js';
import { BatchSampler, NUM_CLASSES, overlayAllLabels, toFloat } from '../data/ff-data.js';

export interface Split {
  images: Float32Array;
  labels: Uint8Array;
  count: number;
}

export interface RunData {
  dataset: Dataset;
  /** Pixels per image: the model's input width. */
  dim: number;
  /** [rows, cols] of an image. */
  shape: [number, number];
  /** Values per pixel (channels last). */
  channels: number;
  /** The scaled value of a black pixel. */
  background: number;
  train: Split;
  /** data.heldout training images kept out of training (eval.combine 'fit' fits on them). */
  heldout: Split;
  test: Split;
}

/** Loads the configured dataset and scales it (test with the training set's statistics). */
export async function prepareData(cfg: RunConfig, log: (line: string) => void): Promise<RunData> {
  const dataset = await loadDataset(cfg.data.dataset, { dataDir: cfg.data.dataDir, log });
  const dim = dataset.train.channels * dataset.train.rows * dataset.train.cols;
  const input = cfg.model.layers[0]!;
  const shape = [dataset.train.channels, dataset.train.rows, dataset.train.cols];
  const fits = Array.isArray(input) ? input.join() === shape.join() : input === dim;
  if (!fits) {
    throw new ConfigError(
      'CONFIG_INVALID',
      'model.layers',
      cfg.model.layers,
      `model.layers[0] is ${JSON.stringify(input)}, but ${dataset.name} images are ` +
        `${shape.join('x')} (channels x rows x columns): ${dim} values, or ${JSON.stringify(shape)}`,
    );
  }
  const limit = (n: number, max: number) => (n > 0 ? Math.min(n, max) : max);
  const limited = limit(cfg.data.trainLimit, dataset.train.count);
  if (cfg.data.heldout >= limited) {
    throw new ConfigError(
      'CONFIG_INVALID',
      'data.heldout',
      cfg.data.heldout,
      `data.heldout must leave training images: ${limited} are there, ${cfg.data.heldout} held out`,
    );
  }
  const trainCount = limited - cfg.data.heldout;
  const testCount = limit(cfg.data.testLimit, dataset.test.count);
  const train = toFloat(dataset.train.images, trainCount, dim, cfg.data.scale);
  const held = toFloat(
    dataset.train.images.subarray(trainCount * dim),
    cfg.data.heldout,
    dim,
    cfg.data.scale,
    train,
  );
  const test = toFloat(dataset.test.images, testCount, dim, cfg.data.scale, train);
  const { rows, cols } = dataset.train;
  if (cfg.data.jitter >= Math.min(rows, cols)) {
    throw new ConfigError(
      'CONFIG_INVALID',
      'data.jitter',
      cfg.data.jitter,
      `data.jitter must be below the image size (${rows}x${cols}), got ${cfg.data.jitter}`,
    );
  }
  return {
    dataset,
    dim,
    shape: [rows, cols],
    channels: dataset.train.channels,
    background: (0 - train.mean) / train.std,
    train: {
      images: train.data,
      labels: dataset.train.labels.subarray(0, trainCount),
      count: trainCount,
    },
    heldout: {
      images: held.data,
      labels: dataset.train.labels.subarray(trainCount, limited),
      count: cfg.data.heldout,
    },
    test: {
      images: test.data,
      labels: dataset.test.labels.subarray(0, testCount),
      count: testCount,
    },
  };
}

/**
 * The training batches of a run: order and negatives depend on the seed and the epoch alone,
 * so every executor, and a resumed run, sees the same batches.
 */
export function trainSampler(
  cfg: RunConfig,
  data: RunData,
  hardProbs?: (epoch: number) => Float32Array | null,
): BatchSampler {
  return new BatchSampler({
    images: data.train.images,
    labels: data.train.labels,
    count: data.train.count,
    dim: data.dim,
    batchSize: cfg.train.batchSize,
    seed: cfg.seed,
    shuffle: true,
    dropLast: false,
    onValue: cfg.model.overlayValue,
    jitter: cfg.data.jitter,
    flip: cfg.data.flip,
    imageShape: data.shape,
    channels: data.channels,
    background: data.background,
    neutral: cfg.model.readout,
    plain: isCompetitive(cfg.model),
    hardNegatives: hardProbs && { fraction: cfg.negatives.hard, probs: hardProbs },
  });
}

/**
 * One evaluation batch: `images` images, each with every label overlaid (rule 'goodness'), or
 * each once with a neutral label (rule 'readout').
 */
export interface EvalBatch {
  index: number;
  images: number;
  rule: 'goodness' | 'readout';
  /** Rows of x: NUM_CLASSES * images with overlays, else images. */
  rows: number;
  /**
   * 'goodness': [NUM_CLASSES * images, dim], label-major: image i with label c is row
   * c * images + i. 'readout', and every batch of a competitive model: [images, dim], the
   * images as they are (a readout's with a neutral label).
   */
  x: Float32Array;
  labels: Uint8Array;
}

/**
 * A split as evaluation batches of `cfg.eval.batchSize` images. Each batch has a buffer of its
 * own: an executor may still be sending one while the next is made.
 */
export function* evalBatches(
  split: Split,
  dim: number,
  cfg: RunConfig,
  rule: EvalBatch['rule'] = 'goodness',
): Generator<EvalBatch> {
  const b = Math.min(cfg.eval.batchSize, split.count);
  const onValue = cfg.model.overlayValue;
  const plain = isCompetitive(cfg.model);
  for (let start = 0, index = 0; start < split.count; start += b, index++) {
    const n = Math.min(b, split.count - start);
    let x: Float32Array;
    if (plain) {
      x = split.images.slice(start * dim, (start + n) * dim);
    } else if (rule === 'goodness') {
      x = overlayAllLabels(
        split.images,
        start,
        n,
        dim,
        new Float32Array(NUM_CLASSES * n * dim),
        onValue,
      );
    } else {
      x = split.images.slice(start * dim, (start + n) * dim);
      for (let i = 0; i < n; i++) x.fill(onValue / NUM_CLASSES, i * dim, i * dim + NUM_CLASSES);
    }
    const rows = plain || rule === 'readout' ? n : NUM_CLASSES * n;
    yield { index, images: n, rule, rows, x, labels: split.labels.subarray(start, start + n) };
  }
}
