// The training driver: the one place that says what a run does. It owns the data, the batch
// order, the learning-rate schedule, the epoch records, the eval and checkpoint cadence, the
// outputs, resuming and recovery; an Executor (executor.ts) runs the layers. Because both
// executors are driven by this code, a pipelined run computes what a single-process run does
// by construction.
//
// Recovery is replay. Everything a run computes depends only on (seed, epoch, batch) and the
// state at the last checkpoint, so when a stage is lost the driver rolls every layer back to
// that state and trains again from there: the run ends with the weights of one that was never
// interrupted. The lineage (lineage.ts) counts what each layer trained per (epoch, batch),
// exactly once; the epoch's tally (epoch-tally.ts) sums its reports into the epoch's record,
// which metrics.jsonl logs (checkpoint/run-dir.ts).
import { describeLayers } from '../core/model-shape.js';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { removeInterruptedWrites, writeFileAtomic } from '../checkpoint/atomic-file.js';
import {
  CheckpointError,
  checkFiniteState,
  checkpointName,
  commitCheckpoint,
  type Checkpoint,
  readCheckpoint,
  type ModelState,
} from '../checkpoint/checkpoint-file.js';
import { MetricsLog, RUN_FILES } from '../checkpoint/run-dir.js';
import type { RunConfig } from '../config/config.js';
import { ffxPackage } from '../package.js';
import { learningRateAt } from '../core/optimizer.js';
import { EvalAccumulator, fitLayerWeights, ruleLayers, type EvalResult } from '../core/predict.js';
import { FfxError, SystemError, withFile } from '../errors.js';
import { plural } from '../log.js';
import type { CoordinatorMetrics } from '../metrics/index.js';
import { NUM_CLASSES, type BatchSampler } from '../data/ff-data.js';
import type { EpochRecord } from './epoch-record.js';
import { EpochTally } from './epoch-tally.js';
import type { Executor, TrainReport } from './executor.js';
import { Lineage, parseLineage, type LineageRecord } from './lineage.js';
import { PREDICTIONS_TENSOR, PredictionTable } from './predictions.js';
import type { Reporter } from './reporter.js';
import { evalBatches, prepareData, trainSampler, type RunData, type Split } from './run-data.js';

export interface TrainResult {
  epochs: EpochRecord[];
  final: EvalResult;
  weightsFile: string;
  seconds: number;
  /** Rollbacks after a lost stage, and the batches they had each layer train again. */
  recoveries: number;
  replayed: number[];
}

export interface DriverOptions {
  reporter: Reporter;
  metrics?: CoordinatorMetrics;
  /** A checkpoint to resume from (weights, optimizer state and epoch). */
  resume?: string;
  /** How many times a run may roll back after a failure its executor recovers from. */
  maxRecoveries?: number;
  /**
   * The run is taken over rather than started (a coordinator started again, or --resume), and
   * its lineage continues: from the run directory's lineage.json ('directory': --resume latest,
   * the run's own directory), or from the checkpoint's ('checkpoint': --resume FILE).
   */
  continues?: 'directory' | 'checkpoint';
}

/** Trains `cfg` on `executor`, writes the outputs under cfg.output.dir, and closes the executor. */
export async function train(
  cfg: RunConfig,
  executor: Executor,
  opts: DriverOptions,
): Promise<TrainResult> {
  try {
    const data = await loadData(cfg, opts.reporter);
    const { epochs } = cfg.train;
    const resume = opts.resume ? await readCheckpoint(opts.resume, cfg.model, epochs) : undefined;
    const earlier = await earlierLineage(cfg, executor.numLayers, opts.continues, resume);
    const training = new Training(cfg, executor, data, opts, resume, earlier);
    if (resume) opts.reporter.log(`resumed from ${opts.resume} after epoch ${resume.epoch}`);
    const result = await training.run();
    await executor.close();
    return result;
  } catch (err) {
    await executor.close(err);
    throw err;
  }
}

/** Where a run can go back to: the state after `epoch` epochs (undefined: fresh from the seed). */
interface RecoveryPoint {
  epoch: number;
  state: ModelState | undefined;
}

class Training {
  private readonly reporter: Reporter;
  private readonly metrics: CoordinatorMetrics | undefined;
  private readonly sampler: BatchSampler;
  private readonly batches: number;
  private readonly log: MetricsLog;
  private point: RecoveryPoint;
  private tally: EpochTally;
  private readonly records: EpochRecord[] = [];
  private readonly lineage: Lineage;
  /** With hard negatives: what the readouts predicted for each training image. */
  private readonly predictions: PredictionTable | null = null;

  constructor(
    private readonly cfg: RunConfig,
    private readonly executor: Executor,
    private readonly data: RunData,
    private readonly opts: DriverOptions,
    resume: { epoch: number; state: ModelState } | undefined,
    earlier: LineageRecord | undefined,
  ) {
    this.reporter = opts.reporter;
    this.metrics = opts.metrics;
    const { kind, warmup } = cfg.negatives;
    if (kind === 'hard') {
      const n = executor.numLayers;
      this.predictions = new PredictionTable(data.train.count, ruleLayers(n, cfg.eval));
      this.predictions.restore(resume?.state.tensors.get(PREDICTIONS_TENSOR));
    }
    const predictions = this.predictions;
    this.sampler = trainSampler(
      cfg,
      data,
      predictions ? (epoch) => (epoch >= warmup ? predictions.probs : null) : undefined,
    );
    this.batches = this.sampler.batchesPerEpoch;
    if (resume) checkResumedSteps(opts.resume!, resume, this.batches);
    this.log = new MetricsLog(cfg.output.dir);
    this.point = { epoch: resume?.epoch ?? 0, state: resume?.state };
    this.tally = new EpochTally(executor.numLayers, 0, this.batches);
    // Each batch is one optimizer step: a checkpoint's step counts are what it has trained.
    this.lineage = new Lineage(
      Array.from({ length: executor.numLayers }, (_, i) => resume?.state.optimizerSteps[i] ?? 0),
      earlier,
    );
  }

  async run(): Promise<TrainResult> {
    const { cfg, executor, reporter } = this;
    const { epochs, batchSize } = cfg.train;
    await executor.start((r) => this.onReport(r), this.point.state);
    await this.prepareOutput();
    reporter.log(
      `model ${describeLayers(cfg.model.layers)} ${executor.where}, ${plural(epochs, 'epoch')} x ` +
        `${plural(this.batches, 'batch', 'batches')} of ${batchSize}, ${cfg.optimizer.type} ` +
        `lr ${cfg.optimizer.lr}, seed ${cfg.seed}`,
    );
    const started = performance.now();
    let epoch = this.point.epoch;
    for (;;) {
      try {
        for (; epoch < epochs; epoch++) await this.trainEpoch(epoch);
        const t0 = performance.now();
        const final = await evaluate(cfg, executor, this.data, this.data.test, epochs);
        reporter.log(
          `evaluated ${final.count} test images in ${((performance.now() - t0) / 1000).toFixed(1)}s`,
        );
        const state = this.withPredictions(await executor.exportState(epochs));
        checkFiniteState(state, 'at the end');
        const weightsFile = await this.finish(final, state);
        return {
          epochs: this.records,
          final,
          weightsFile,
          seconds: (performance.now() - started) / 1000,
          recoveries: this.lineage.recoveries,
          replayed: this.lineage.replayed,
        };
      } catch (err) {
        const max = this.opts.maxRecoveries ?? 0;
        if (!executor.recoverable(err)) throw err;
        if (this.lineage.recoveries >= max) {
          // Counted over the whole run, whichever coordinator made them (lineage.ts).
          reporter.warn(
            `no recovery left: the run made ${plural(this.lineage.recoveries, 'recovery', 'recoveries')} ` +
              `of --max-recoveries ${max}`,
          );
          throw err;
        }
        await this.rollBack(err as Error);
        epoch = this.point.epoch;
      }
    }
  }

  private async trainEpoch(epoch: number): Promise<void> {
    const { cfg, executor, reporter, metrics, batches } = this;
    const { epochs } = cfg.train;
    const t0 = performance.now();
    this.tally = new EpochTally(executor.numLayers, epoch, batches);
    let lr = cfg.optimizer.lr;
    reporter.startEpoch(epoch + 1, epochs, batches);
    for (const batch of this.sampler.epoch(epoch)) {
      const progress = (epoch * batches + batch.index) / (epochs * batches);
      lr = learningRateAt(cfg.optimizer.lr, progress, cfg.train.cooldown);
      this.tally.sizes[batch.index] = batch.size;
      this.tally.lrs[batch.index] = lr;
      this.predictions?.expect(batch.index, batch.rows);
      const { index, size, x, labels } = batch;
      await executor.train({ epoch, index, size, x, labels }, lr);
      metrics?.onBatchSent(batch.size, lr);
    }
    await executor.drain();
    this.predictions?.commit();
    const record = this.tally.record((performance.now() - t0) / 1000, lr);
    const last = epoch === epochs - 1;
    if (!last && every(cfg.train.evalEvery, epoch)) {
      record.eval = await evaluate(cfg, executor, this.data, this.data.test, epoch);
    }
    reporter.endEpoch(record);
    metrics?.onEpoch(record);
    this.records.push(record);
    await this.log.append(record);
    if (!last && every(cfg.output.checkpointEvery, epoch)) await this.checkpoint(epoch + 1);
  }

  /**
   * The state after `epoch` epochs becomes the recovery point, and is written to disk. A
   * checkpoint that cannot be written (a full disk) is not the end of the run: the previous one
   * stays `latest`, and the run goes on.
   */
  private async checkpoint(epoch: number): Promise<void> {
    const state = this.withPredictions(await this.executor.exportState(epoch));
    checkFiniteState(state, `after epoch ${epoch}`);
    this.point = { epoch, state };
    const { dir, keepCheckpoints } = this.cfg.output;
    try {
      const lineage = this.lineage.record();
      await this.saveLineage();
      const file = await commitCheckpoint(
        dir,
        state,
        this.cfg,
        epoch,
        keepCheckpoints,
        checkpointName(epoch),
        lineage,
      );
      this.reporter.log(`checkpoint ${file}`);
    } catch (err) {
      if (!(err instanceof SystemError)) throw err;
      this.reporter.warn(`warning: [${err.code}] ${err.message}; the last checkpoint stays`);
    }
  }

  /** lineage.json: the run's lineage as it stands, for the coordinator that may take over. */
  private async saveLineage(): Promise<void> {
    const file = join(this.cfg.output.dir, RUN_FILES.lineage);
    await writeFileAtomic(file, JSON.stringify(this.lineage.record()) + '\n', 'lineage');
  }

  /** `state` with the prediction table hard negatives draw from, which a resume needs. */
  private withPredictions(state: ModelState): ModelState {
    if (this.predictions) state.tensors.set(PREDICTIONS_TENSOR, this.predictions.save());
    return state;
  }

  /** After a failure the executor recovers from: back to the recovery point, on every layer. */
  private async rollBack(err: Error): Promise<void> {
    const { executor, reporter, metrics, point, lineage } = this;
    const t0 = performance.now();
    // What the abandoned lineage trained since the point is trained again: count it.
    const dropped = [...this.records.filter((r) => r.epoch > point.epoch), this.tally.record(0, 0)];
    const lost = lineage.rollBack(dropped);
    const code = err instanceof FfxError ? ` [${err.code}]` : '';
    reporter.warn(
      `recovering${code}: ${err.message}; rolling every layer back to epoch ${point.epoch} ` +
        `(recovery ${lineage.recoveries} of at most ${this.opts.maxRecoveries ?? 0})`,
    );
    metrics?.onRecovery();
    lost.forEach((n, l) => {
      metrics?.onReplayed(l + 1, n);
      metrics?.onLineage(l + 1, lineage.batches[l]!);
    });
    this.records.splice(
      0,
      this.records.length,
      ...this.records.filter((r) => r.epoch <= point.epoch),
    );
    await this.log.rewind(point.epoch);
    await this.saveLineage();
    this.tally = new EpochTally(executor.numLayers, point.epoch, this.batches);
    this.predictions?.restore(point.state?.tensors.get(PREDICTIONS_TENSOR));
    await executor.rollback(point.state);
    reporter.log(
      `recovered in ${((performance.now() - t0) / 1000).toFixed(1)}s: training again from ` +
        `epoch ${point.epoch + 1}`,
    );
  }

  private onReport(r: TrainReport): void {
    if (r.epoch !== this.tally.epoch) {
      this.metrics?.onDuplicate(r.layer);
      return;
    }
    const added = this.tally.add(r);
    if (added === 'duplicate') {
      this.metrics?.onDuplicate(r.layer);
      return;
    }
    this.metrics?.onLineage(r.layer, this.lineage.trained(r.layer));
    if (r.logits) this.predictions?.add(r.index, r.layer, r.logits);
    if (added === 'batch-done') {
      const { done, samples, lastLosses } = this.tally;
      this.reporter.batch(done, samples, lastLosses);
      const total = this.cfg.train.epochs * this.batches;
      this.metrics?.onProgress(r.epoch + 1, (r.epoch * this.batches + done) / total);
    }
  }

  /**
   * The output directory with the resolved config and the run's epoch log (metrics.jsonl,
   * from the epoch the run starts after); the eval.json and report.html of an earlier run in it
   * (--overwrite, or a resume of a finished run) go: they would describe that run until this
   * one ends, and so do the temporary files of writes a killed coordinator left.
   */
  private async prepareOutput(): Promise<void> {
    const { dir } = this.cfg.output;
    await withFile(dir, `cannot write the output directory ${dir}`, async () => {
      await mkdir(dir, { recursive: true });
      await removeInterruptedWrites(dir);
    });
    await writeFileAtomic(
      join(dir, RUN_FILES.config),
      JSON.stringify(this.cfg, null, 2) + '\n',
      'config',
    );
    const run = { ffx: ffxPackage()?.version ?? 'unknown', backends: this.executor.backends() };
    await writeFileAtomic(join(dir, RUN_FILES.run), JSON.stringify(run, null, 2) + '\n', 'run');
    // A coordinator taking the run over trains again the epochs the run had got past its
    // checkpoint: they count as replayed.
    const dropped = await this.log.open(this.point.epoch, this.opts.continues !== undefined);
    this.lineage.retrained(
      dropped.filter((r) => isBatchesRecord(r, this.executor.numLayers, this.batches)),
    );
    await this.saveLineage();
    for (const name of [RUN_FILES.eval, RUN_FILES.report]) {
      const file = join(dir, name);
      await withFile(file, `cannot remove ${file}`, () => rm(file, { force: true }));
    }
  }

  /** The final weights, `latest` pointing at them, and eval.json. */
  private async finish(final: EvalResult, state: ModelState): Promise<string> {
    const { cfg, metrics } = this;
    metrics?.onEval(final);
    const { dir, keepCheckpoints } = cfg.output;
    const name = 'model.safetensors';
    await this.saveLineage();
    const weightsFile = await commitCheckpoint(
      dir,
      state,
      cfg,
      cfg.train.epochs,
      keepCheckpoints,
      name,
      this.lineage.record(),
    );
    await writeFileAtomic(join(dir, RUN_FILES.eval), JSON.stringify(final, null, 2) + '\n', 'eval');
    this.reporter.log(this.lineage.summary(cfg.train.epochs, this.batches));
    return weightsFile;
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
  opts: { reporter: Reporter; state?: ModelState; only?: 'goodness' | 'readout' },
): Promise<EvalResult> {
  try {
    const data = await loadData(cfg, opts.reporter);
    await executor.start(() => {}, opts.state);
    const result = await evaluate(cfg, executor, data, data[split], 0, opts.only);
    await executor.close();
    return result;
  } catch (err) {
    await executor.close(err);
    throw err;
  }
}

/** Where the held-out batches' sequence numbers start in an evaluation. */
const HELDOUT_SEQ = 1 << 24;

/**
 * Accuracy on a split: overlay each label, sum goodness over layers, argmax; with readouts
 * also one neutral pass each, summing the readouts' log-probabilities, and the figures of the
 * method eval.rule names on top. `only`: that method alone (the readout's is 10x cheaper).
 * With eval.combine 'fit', the held-out images go through first and the rule weighs its
 * layers as fitLayerWeights chooses on them.
 */
async function evaluate(
  cfg: RunConfig,
  executor: Executor,
  data: RunData,
  split: Split,
  epoch: number,
  only?: 'goodness' | 'readout',
): Promise<EvalResult> {
  const rule = ruleLayers(executor.numLayers, cfg.eval);
  const by = async (method: 'goodness' | 'readout') => {
    const weights = cfg.eval.combine === 'fit' ? await fitted(method) : undefined;
    const acc = new EvalAccumulator(executor.numLayers, rule, weights);
    await executor.evaluate(evalBatches(split, data.dim, cfg, method), epoch, (b, g) =>
      acc.add(g, b.labels),
    );
    return acc.result();
  };
  // The rule's layers' scores of every held-out image, then the weights they choose.
  const fitted = async (method: 'goodness' | 'readout') => {
    const n = data.heldout.count;
    const scores = rule.map(() => new Float32Array(NUM_CLASSES * n));
    const labels = data.heldout.labels;
    const batches = evalBatches(data.heldout, data.dim, cfg, method);
    const starts = new Map<number, number>();
    let at = 0;
    // Numbered apart from the test batches of the same evaluation (a late copy of a result
    // can never pass for one of theirs).
    const indexed = (function* () {
      for (const b of batches) {
        const index = HELDOUT_SEQ + b.index;
        starts.set(index, at);
        at += b.images;
        yield { ...b, index };
      }
    })();
    await executor.evaluate(indexed, epoch, (b, g) => {
      const start = starts.get(b.index)!;
      rule.forEach((l, k) => {
        for (let c = 0; c < NUM_CLASSES; c++)
          scores[k]!.set(g[l]!.subarray(c * b.images, (c + 1) * b.images), c * n + start);
      });
    });
    return fitLayerWeights(scores, labels);
  };
  if (only) return { ...(await by(only)), method: only };
  const goodness = await by('goodness');
  if (!cfg.model.readout) return goodness;
  const readout = await by('readout');
  const chosen = cfg.eval.rule === 'readout' ? readout : goodness;
  return { ...chosen, method: cfg.eval.rule, goodness, readout };
}

async function loadData(cfg: RunConfig, reporter: Reporter): Promise<RunData> {
  const data = await prepareData(cfg, (l) => reporter.log(l));
  reporter.log(
    `data ${data.dataset.name} from ${data.dataset.source}: ${data.train.count} train, ` +
      `${data.test.count} test, ` +
      (data.channels === 1
        ? `${data.dim} pixels`
        : `${data.shape.join('x')} pixels x ${data.channels} channels`),
  );
  return data;
}

/**
 * What the run's earlier coordinators recorded of its lineage, when this one continues it:
 * the run directory's lineage.json (which a recovery after the last checkpoint updated too),
 * else the checkpoint's. A file that does not read as a lineage is left out.
 */
async function earlierLineage(
  cfg: RunConfig,
  layers: number,
  continues: DriverOptions['continues'],
  resume: Checkpoint | undefined,
): Promise<LineageRecord | undefined> {
  if (!continues) return undefined;
  const fromCheckpoint = parseLineage(resume?.lineage, layers);
  if (continues === 'checkpoint') return fromCheckpoint;
  const file = join(cfg.output.dir, RUN_FILES.lineage);
  const text = await readFile(file, 'utf8').catch(() => undefined);
  let fromDir: LineageRecord | undefined;
  try {
    fromDir = text === undefined ? undefined : parseLineage(JSON.parse(text), layers);
  } catch {
    fromDir = undefined;
  }
  return fromDir ?? fromCheckpoint;
}

/** A metrics.jsonl record with the batches (at most `max`) each of `layers` layers trained. */
function isBatchesRecord(
  r: unknown,
  layers: number,
  max: number,
): r is Pick<EpochRecord, 'batches'> {
  const b = (r as { batches?: unknown } | null)?.batches;
  return (
    Array.isArray(b) &&
    b.length === layers &&
    b.every((n) => Number.isSafeInteger(n) && n >= 0 && n <= max)
  );
}

/**
 * Each batch is one optimizer step of every layer: a checkpoint after `epoch` epochs of this
 * run's batches has taken epoch x batches. Anything else is a checkpoint edited by hand, or one
 * of a run with other data or another batch size, whose lineage this run cannot continue.
 */
function checkResumedSteps(
  file: string,
  resume: { epoch: number; state: ModelState },
  batches: number,
): void {
  const want = resume.epoch * batches;
  const steps = resume.state.optimizerSteps;
  if (steps.some((s) => s !== want)) {
    throw new CheckpointError(
      'CHECKPOINT_CORRUPT',
      `${file}: its layers took ${steps.join(', ')} optimizer steps, but ` +
        `${plural(resume.epoch, 'epoch')} of this run's ${batches} batches are ${want} ` +
        '(a checkpoint edited by hand, or one of a run with other data or another batch size)',
    );
  }
}

/** True after every `n`-th epoch (0-based `epoch`); never for n = 0. */
function every(n: number, epoch: number): boolean {
  return n > 0 && (epoch + 1) % n === 0;
}
