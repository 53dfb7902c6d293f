// The training driver: the one place that says what a run does. It owns the data, the batch
// order, the learning-rate schedule, the epoch records, the eval and checkpoint cadence, the
// outputs and resuming; an Executor (executor.ts) runs the layers. Because both executors are
// driven by this code, a pipelined run computes what a single-process run does by construction.
import { appendFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readCheckpoint, writeCheckpoint, type ModelState } from '../checkpoint/checkpoint-file.js';
import type { RunConfig } from '../config/config.js';
import type { StepStats } from '../core/ff-layer.js';
import { learningRateAt } from '../core/optimizer.js';
import { EvalAccumulator, type EvalResult } from '../core/predict.js';
import { FfxError, withFile } from '../errors.js';
import type { CoordinatorMetrics } from '../metrics/index.js';
import type { EpochRecord, StageTiming } from './epoch-record.js';
import type { Executor, TrainReport } from './executor.js';
import type { Reporter } from './reporter.js';
import { evalBatches, prepareData, trainSampler, type RunData, type Split } from './run-data.js';

export interface TrainResult {
  epochs: EpochRecord[];
  final: EvalResult;
  weightsFile: string;
  seconds: number;
}

export interface DriverOptions {
  reporter: Reporter;
  metrics?: CoordinatorMetrics;
  /** A checkpoint to resume from (weights, optimizer state and epoch). */
  resume?: string;
}

/** Trains `cfg` on `executor`, writes the outputs under cfg.output.dir, and closes the executor. */
export async function train(
  cfg: RunConfig,
  executor: Executor,
  opts: DriverOptions,
): Promise<TrainResult> {
  const { reporter, metrics } = opts;
  try {
    const data = await loadData(cfg, reporter);
    const resume = opts.resume ? await readCheckpoint(opts.resume, cfg.model) : undefined;
    const sampler = trainSampler(cfg, data);
    const { epochs, batchSize } = cfg.train;
    const batches = sampler.batchesPerEpoch;
    const totalSteps = epochs * batches;
    const firstEpoch = resume?.epoch ?? 0;
    let tally = new EpochTally(executor.numLayers, 0);
    await executor.start((r) => {
      if (tally.add(r)) {
        reporter.batch(tally.done, tally.samples, tally.lastLosses);
        metrics?.onProgress(r.epoch + 1, (r.epoch * batches + tally.done) / totalSteps);
      }
    }, resume?.state);
    if (resume) reporter.log(`resumed from ${opts.resume} after epoch ${firstEpoch}`);
    const metricsFile = await prepareOutput(cfg, firstEpoch === 0);
    reporter.log(
      `model ${cfg.model.layers.join('-')} ${executor.where}, ${epochs} epochs x ${batches} ` +
        `batches of ${batchSize}, ${cfg.optimizer.type} lr ${cfg.optimizer.lr}, seed ${cfg.seed}`,
    );
    const started = performance.now();
    const records: EpochRecord[] = [];
    for (let epoch = firstEpoch; epoch < epochs; epoch++) {
      const t0 = performance.now();
      tally = new EpochTally(executor.numLayers, epoch);
      let lr = cfg.optimizer.lr;
      reporter.startEpoch(epoch + 1, epochs, batches);
      for (const batch of sampler.epoch(epoch)) {
        lr = learningRateAt(
          cfg.optimizer.lr,
          (epoch * batches + batch.index) / totalSteps,
          cfg.train.cooldown,
        );
        tally.sizes[batch.index] = batch.size;
        await executor.train({ epoch, index: batch.index, size: batch.size, x: batch.x }, lr);
        metrics?.onBatchSent(batch.size);
      }
      await executor.drain();
      const record = tally.record((performance.now() - t0) / 1000, lr);
      const last = epoch === epochs - 1;
      if (!last && every(cfg.train.evalEvery, epoch)) {
        record.eval = await evaluate(cfg, executor, data.test, data.dim, epoch);
      }
      reporter.endEpoch(record);
      metrics?.onEpoch(record);
      records.push(record);
      await withFile(metricsFile, `cannot append to ${metricsFile}`, () =>
        appendFile(metricsFile, JSON.stringify(record) + '\n'),
      );
      if (!last && every(cfg.output.checkpointEvery, epoch)) {
        const file = join(cfg.output.dir, `checkpoint-epoch${epoch + 1}.safetensors`);
        await writeCheckpoint(file, await executor.exportState(epoch + 1), cfg, epoch + 1);
        reporter.log(`checkpoint ${file}`);
      }
    }
    const t0 = performance.now();
    const final = await evaluate(cfg, executor, data.test, data.dim, epochs);
    metrics?.onEval(final);
    reporter.log(
      `evaluated ${final.count} test images in ${((performance.now() - t0) / 1000).toFixed(1)}s`,
    );
    const weightsFile = join(cfg.output.dir, 'model.safetensors');
    await writeCheckpoint(weightsFile, await executor.exportState(epochs), cfg, epochs);
    const evalFile = join(cfg.output.dir, 'eval.json');
    await withFile(evalFile, `cannot write ${evalFile}`, () =>
      writeFile(evalFile, JSON.stringify(final, null, 2) + '\n'),
    );
    await executor.close();
    return { epochs: records, final, weightsFile, seconds: (performance.now() - started) / 1000 };
  } catch (err) {
    await executor.close(err);
    throw err;
  }
}

/**
 * Accuracy of the layers `executor` holds on a split of the configured data (`ffx-coordinator
 * eval`); closes the executor.
 */
export async function evaluateSplit(
  cfg: RunConfig,
  executor: Executor,
  split: 'train' | 'test',
  opts: { reporter: Reporter; state?: ModelState },
): Promise<EvalResult> {
  try {
    const data = await loadData(cfg, opts.reporter);
    await executor.start(() => {}, opts.state);
    const result = await evaluate(cfg, executor, data[split], data.dim, 0);
    await executor.close();
    return result;
  } catch (err) {
    await executor.close(err);
    throw err;
  }
}

/** Accuracy on a split: overlay each label, sum goodness over layers, argmax. */
async function evaluate(
  cfg: RunConfig,
  executor: Executor,
  split: Split,
  dim: number,
  epoch: number,
): Promise<EvalResult> {
  const acc = new EvalAccumulator(executor.numLayers, cfg.eval.skipFirst);
  await executor.evaluate(evalBatches(split, dim, cfg), epoch, (b, g) => acc.add(g, b.labels));
  return acc.result();
}

async function loadData(cfg: RunConfig, reporter: Reporter): Promise<RunData> {
  const data = await prepareData(cfg, (l) => reporter.log(l));
  reporter.log(
    `data ${data.dataset.name} from ${data.dataset.source}: ${data.train.count} train, ` +
      `${data.test.count} test, ${data.dim} pixels`,
  );
  return data;
}

/** True after every `n`-th epoch (0-based `epoch`); never for n = 0. */
function every(n: number, epoch: number): boolean {
  return n > 0 && (epoch + 1) % n === 0;
}

/** Creates the output directory with the resolved config; returns the metrics log's path. */
async function prepareOutput(cfg: RunConfig, fresh: boolean): Promise<string> {
  const dir = cfg.output.dir;
  const metricsFile = join(dir, 'metrics.jsonl');
  await withFile(dir, `cannot write the output directory ${dir}`, async () => {
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
    if (fresh) await writeFile(metricsFile, '');
  });
  return metricsFile;
}

/**
 * One epoch's reports, summed per layer with each batch's size as its weight. A layer's reports
 * arrive in batch order, so the sums are the same floats whichever executor produced them.
 */
class EpochTally {
  /** Positive samples per batch index, set as each batch is sent. */
  readonly sizes: number[] = [];
  /** Batches, and their samples, that every layer has reported. */
  done = 0;
  samples = 0;
  readonly lastLosses: number[];
  private readonly sums: { loss: number; goodnessPos: number; goodnessNeg: number }[];
  private readonly times: StageTiming[];

  constructor(
    private readonly numLayers: number,
    private readonly epoch: number,
  ) {
    this.lastLosses = new Array<number>(numLayers).fill(NaN);
    this.sums = Array.from({ length: numLayers }, () => ({
      loss: 0,
      goodnessPos: 0,
      goodnessNeg: 0,
    }));
    this.times = Array.from({ length: numLayers }, () => ({
      stepSeconds: 0,
      waitSeconds: 0,
      transportSeconds: 0,
      blockedSeconds: 0,
    }));
  }

  /** Adds one report; true when it completes a batch (the last layer's). */
  add(r: TrainReport): boolean {
    if (!Number.isFinite(r.stats.loss)) {
      throw new FfxError(
        'NON_FINITE_LOSS',
        `layer ${r.layer}: loss is ${r.stats.loss} at epoch ${r.epoch + 1}, batch ${r.index + 1}; lower optimizer.lr`,
      );
    }
    const size = this.sizes[r.index] ?? 0;
    const sum = this.sums[r.layer - 1]!;
    sum.loss += r.stats.loss * size;
    sum.goodnessPos += r.stats.goodnessPos * size;
    sum.goodnessNeg += r.stats.goodnessNeg * size;
    const t = this.times[r.layer - 1]!;
    t.stepSeconds += r.timing.stepSeconds;
    t.waitSeconds += r.timing.waitSeconds;
    t.transportSeconds += r.timing.transportSeconds;
    t.blockedSeconds += r.timing.blockedSeconds;
    this.lastLosses[r.layer - 1] = r.stats.loss;
    if (r.layer !== this.numLayers) return false;
    // The last layer's report: that batch has passed every layer.
    this.done++;
    this.samples += size;
    return true;
  }

  record(seconds: number, lr: number): EpochRecord {
    const samples = this.samples;
    return {
      epoch: this.epoch + 1,
      seconds,
      samplesPerSec: samples / seconds,
      lr,
      layers: this.sums.map((s): StepStats => ({
        loss: s.loss / samples,
        goodnessPos: s.goodnessPos / samples,
        goodnessNeg: s.goodnessNeg / samples,
      })),
      stages: this.times.map((t) => ({ ...t })),
    };
  }
}
