// The single-process trainer: every layer, batch by batch, in this process. It is both the
// quick way to train on one machine and the reference a distributed run must reproduce.
import { mkdir, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkMemoryBudget } from '../backend/backend.js';
import type { StepStats } from '../core/ff-layer.js';
import { FFNetwork } from '../core/ff-network.js';
import { learningRateAt } from '../core/optimizer.js';
import { EvalAccumulator, type EvalResult } from '../core/predict.js';
import type { RunConfig } from '../config/config.js';
import { loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { loadDataset, type Dataset } from '../data/datasets.js';
import { BatchSampler, NUM_CLASSES, overlayAllLabels, toFloat } from '../data/ff-data.js';
import type { Reporter } from './reporter.js';
import type { CoordinatorMetrics } from '../metrics/metrics.js';

export interface PreparedData {
  dataset: Dataset;
  dim: number;
  train: { images: Float32Array; labels: Uint8Array; count: number };
  test: { images: Float32Array; labels: Uint8Array; count: number };
}

/** Loads the configured dataset and scales it (test with the training set's statistics). */
export async function prepareData(
  cfg: RunConfig,
  log: (line: string) => void,
): Promise<PreparedData> {
  const dataset = await loadDataset(cfg.data.dataset, { dataDir: cfg.data.dataDir, log });
  const dim = dataset.train.rows * dataset.train.cols;
  if (cfg.model.layers[0] !== dim) {
    throw new Error(
      `model.layers[0] is ${cfg.model.layers[0]}, but ${dataset.name} images have ${dim} pixels`,
    );
  }
  const limit = (n: number, max: number) => (n > 0 ? Math.min(n, max) : max);
  const trainCount = limit(cfg.data.trainLimit, dataset.train.count);
  const testCount = limit(cfg.data.testLimit, dataset.test.count);
  const train = toFloat(dataset.train.images, trainCount, dim, cfg.data.scale);
  const test = toFloat(dataset.test.images, testCount, dim, cfg.data.scale, train);
  return {
    dataset,
    dim,
    train: {
      images: train.data,
      labels: dataset.train.labels.subarray(0, trainCount),
      count: trainCount,
    },
    test: {
      images: test.data,
      labels: dataset.test.labels.subarray(0, testCount),
      count: testCount,
    },
  };
}

/**
 * The training batches of a run: order and negatives depend on the seed alone, so the local
 * and the distributed trainer (and a resumed run) see the same batches.
 */
export function trainSampler(cfg: RunConfig, data: PreparedData): BatchSampler {
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
  });
}

/** Creates the output directory with the resolved config; returns the metrics log's path. */
export async function prepareOutput(cfg: RunConfig, fresh: boolean): Promise<string> {
  await mkdir(cfg.output.dir, { recursive: true });
  await writeFile(join(cfg.output.dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  const metricsFile = join(cfg.output.dir, 'metrics.jsonl');
  if (fresh) await writeFile(metricsFile, '');
  return metricsFile;
}

/** Accuracy of the network on a split: overlay each label, sum goodness, argmax. */
export function evaluate(
  net: FFNetwork,
  split: { images: Float32Array; labels: Uint8Array; count: number },
  dim: number,
  cfg: RunConfig,
): EvalResult {
  const acc = new EvalAccumulator(net.layers.length, cfg.eval.skipFirst);
  const maxWidth = Math.max(...cfg.model.layers);
  const b = Math.min(cfg.eval.batchSize, split.count);
  checkMemoryBudget(
    NUM_CLASSES * b * maxWidth * 4 * 4,
    `evaluation batch of ${b} images (${NUM_CLASSES * b} rows)`,
  );
  const x = new Float32Array(NUM_CLASSES * b * dim);
  for (let start = 0; start < split.count; start += b) {
    const n = Math.min(b, split.count - start);
    const rows = x.subarray(0, NUM_CLASSES * n * dim);
    overlayAllLabels(split.images, start, n, dim, rows, cfg.model.overlayValue);
    acc.add(net.goodness(rows, NUM_CLASSES * n), split.labels.subarray(start, start + n));
  }
  return acc.result();
}

export interface EpochRecord {
  epoch: number;
  seconds: number;
  samplesPerSec: number;
  lr: number;
  layers: StepStats[];
  /**
   * Per stage (layer): time computing, idle waiting for input (bubble), decoding and encoding
   * messages (transport), and waiting for room downstream (backpressure). A local run has only
   * the computing time, per layer.
   */
  stages?: {
    stepSeconds: number;
    waitSeconds: number;
    transportSeconds: number;
    blockedSeconds: number;
  }[];
  eval?: EvalResult;
}

export interface TrainResult {
  epochs: EpochRecord[];
  final: EvalResult;
  weightsFile: string;
  seconds: number;
}

export interface TrainOptions {
  reporter: Reporter;
  metrics?: CoordinatorMetrics;
  /** A checkpoint to resume from (weights, optimizer state and epoch). */
  resume?: string;
}

export async function trainLocal(cfg: RunConfig, opts: TrainOptions): Promise<TrainResult> {
  const { reporter } = opts;
  const data = await prepareData(cfg, (l) => reporter.log(l));
  reporter.log(
    `data ${data.dataset.name} from ${data.dataset.source}: ${data.train.count} train, ${data.test.count} test, ${data.dim} pixels`,
  );
  const { batchSize, epochs } = cfg.train;
  checkMemoryBudget(
    2 * batchSize * Math.max(...cfg.model.layers) * 4 * 6,
    `training batch of ${batchSize}`,
  );
  const net = new FFNetwork(cfg.model, cfg.optimizer, cfg.seed);
  try {
    let firstEpoch = 0;
    if (opts.resume) {
      firstEpoch = await loadCheckpoint(net, opts.resume, cfg.model);
      reporter.log(`resumed from ${opts.resume} after epoch ${firstEpoch}`);
    }
    const sampler = trainSampler(cfg, data);
    const totalSteps = epochs * sampler.batchesPerEpoch;
    const metricsFile = await prepareOutput(cfg, firstEpoch === 0);
    reporter.log(
      `model ${cfg.model.layers.join('-')}, ${epochs} epochs x ${sampler.batchesPerEpoch} batches of ${batchSize}, ` +
        `${cfg.optimizer.type} lr ${cfg.optimizer.lr}, seed ${cfg.seed}`,
    );
    const started = performance.now();
    const records: EpochRecord[] = [];
    for (let epoch = firstEpoch; epoch < epochs; epoch++) {
      const t0 = performance.now();
      const sums = net.layers.map(() => ({ loss: 0, goodnessPos: 0, goodnessNeg: 0, seconds: 0 }));
      let samples = 0;
      let lr = cfg.optimizer.lr;
      reporter.startEpoch(epoch + 1, epochs, sampler.batchesPerEpoch);
      for (const batch of sampler.epoch(epoch)) {
        const step = epoch * sampler.batchesPerEpoch + batch.index;
        lr = learningRateAt(cfg.optimizer.lr, step / totalSteps, cfg.train.cooldown);
        const stats = net.trainBatch(batch.x, batch.size, lr);
        stats.forEach((s, l) => {
          if (!Number.isFinite(s.loss)) {
            throw new Error(
              `layer ${l + 1}: loss is ${s.loss} at epoch ${epoch + 1}, batch ${batch.index + 1}; lower optimizer.lr`,
            );
          }
          const acc = sums[l]!;
          acc.loss += s.loss * batch.size;
          acc.goodnessPos += s.goodnessPos * batch.size;
          acc.goodnessNeg += s.goodnessNeg * batch.size;
          acc.seconds += s.seconds;
        });
        samples += batch.size;
        opts.metrics?.onBatchSent(batch.size);
        opts.metrics?.onProgress(epoch + 1, (step + 1) / totalSteps);
        reporter.batch(
          batch.index + 1,
          samples,
          stats.map((s) => s.loss),
        );
      }
      const seconds = (performance.now() - t0) / 1000;
      const record: EpochRecord = {
        epoch: epoch + 1,
        seconds,
        samplesPerSec: samples / seconds,
        lr,
        layers: sums.map((s) => ({
          loss: s.loss / samples,
          goodnessPos: s.goodnessPos / samples,
          goodnessNeg: s.goodnessNeg / samples,
        })),
        stages: sums.map((s) => ({
          stepSeconds: s.seconds,
          waitSeconds: 0,
          transportSeconds: 0,
          blockedSeconds: 0,
        })),
      };
      const last = epoch === epochs - 1;
      if (!last && cfg.train.evalEvery > 0 && (epoch + 1) % cfg.train.evalEvery === 0) {
        record.eval = evaluate(net, data.test, data.dim, cfg);
      }
      reporter.endEpoch(record);
      opts.metrics?.onEpoch(record);
      records.push(record);
      await appendFile(metricsFile, JSON.stringify(record) + '\n');
      if (
        !last &&
        cfg.output.checkpointEvery > 0 &&
        (epoch + 1) % cfg.output.checkpointEvery === 0
      ) {
        const file = join(cfg.output.dir, `checkpoint-epoch${epoch + 1}.safetensors`);
        await saveCheckpoint(net, cfg, epoch + 1, file);
        reporter.log(`checkpoint ${file}`);
      }
    }
    const t0 = performance.now();
    const final = evaluate(net, data.test, data.dim, cfg);
    opts.metrics?.onEval(final);
    reporter.log(
      `evaluated ${final.count} test images in ${((performance.now() - t0) / 1000).toFixed(1)}s`,
    );
    const weightsFile = join(cfg.output.dir, 'model.safetensors');
    await saveCheckpoint(net, cfg, epochs, weightsFile);
    await writeFile(join(cfg.output.dir, 'eval.json'), JSON.stringify(final, null, 2) + '\n');
    return { epochs: records, final, weightsFile, seconds: (performance.now() - started) / 1000 };
  } finally {
    net.dispose();
  }
}
