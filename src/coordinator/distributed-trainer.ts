// The distributed trainer: the same schedule as the local trainer (same batches, negatives and
// learning rates, from the same seed), but every layer trains in its own ffx-stage process.
// The coordinator only feeds the first stage and aggregates what stages report.
import { appendFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { StepStats } from '../core/ff-layer.js';
import { learningRateAt } from '../core/optimizer.js';
import { EvalAccumulator, type EvalResult } from '../core/predict.js';
import type { NamedTensor } from '../core/safetensors.js';
import type { RunConfig } from '../config/config.js';
import { NUM_CLASSES, overlayAllLabels } from '../data/ff-data.js';
import { readCheckpoint, writeCheckpoint } from './checkpoint.js';
import { Cluster, ClusterError, type ClusterOptions } from './cluster.js';
import {
  prepareData,
  prepareOutput,
  trainSampler,
  type EpochRecord,
  type TrainResult,
} from './local-trainer.js';
import type { Reporter } from './reporter.js';

export interface DistributedOptions extends Omit<ClusterOptions, 'log'> {
  reporter: Reporter;
  /** End the run with `stop` (stages exit) instead of `end` (stages wait for the next run). */
  stopStages: boolean;
  /** A checkpoint to resume from (weights, optimizer state and epoch), local or distributed. */
  resume?: string;
}

export async function trainDistributed(
  cfg: RunConfig,
  opts: DistributedOptions,
): Promise<TrainResult> {
  const { reporter } = opts;
  const data = await prepareData(cfg, (l) => reporter.log(l));
  reporter.log(
    `data ${data.dataset.name} from ${data.dataset.source}: ${data.train.count} train, ${data.test.count} test`,
  );
  const numLayers = cfg.model.layers.length - 1;
  const resume = opts.resume ? await readCheckpoint(opts.resume, cfg.model) : undefined;
  const run = randomUUID().slice(0, 8);
  const cluster = new Cluster(numLayers, run, { ...opts, log: (l) => reporter.log(l) });
  try {
    await cluster.start(cfg, 'train', resume);
    const firstEpoch = resume?.epoch ?? 0;
    if (resume) reporter.log(`resumed from ${opts.resume} after epoch ${firstEpoch}`);
    const { batchSize, epochs } = cfg.train;
    const sampler = trainSampler(cfg, data);
    const totalSteps = epochs * sampler.batchesPerEpoch;
    const metricsFile = await prepareOutput(cfg, firstEpoch === 0);
    reporter.log(
      `run ${run}: model ${cfg.model.layers.join('-')} on ${numLayers} stages, ${epochs} epochs x ` +
        `${sampler.batchesPerEpoch} batches of ${batchSize}`,
    );
    const started = performance.now();
    const records: EpochRecord[] = [];
    let markerId = 0;
    for (let epoch = firstEpoch; epoch < epochs; epoch++) {
      const t0 = performance.now();
      const sums = Array.from({ length: numLayers }, () => ({
        loss: 0,
        goodnessPos: 0,
        goodnessNeg: 0,
      }));
      const sizes: number[] = [];
      const times = Array.from({ length: numLayers }, () => ({
        stepMs: 0,
        waitMs: 0,
        transportMs: 0,
        blockedMs: 0,
      }));
      let reports = 0;
      let lastDone = 0;
      let samplesDone = 0;
      let lr = cfg.optimizer.lr;
      reporter.startEpoch(epoch + 1, epochs, sampler.batchesPerEpoch);
      const lastLosses = new Array<number>(numLayers).fill(NaN);
      const unsubscribe = cluster.subscribe((msg) => {
        if (msg.type !== 'stats' || msg.epoch !== epoch) return;
        if (!Number.isFinite(msg.loss)) {
          cluster.abort(
            new ClusterError(
              'NON_FINITE_LOSS',
              `layer ${msg.layer}: loss is ${msg.loss} at epoch ${epoch + 1}, batch ${msg.seq + 1}; lower optimizer.lr`,
              [msg.layer],
            ),
          );
          return;
        }
        const size = sizes[msg.seq] ?? 0;
        const acc = sums[msg.layer - 1]!;
        acc.loss += msg.loss * size;
        acc.goodnessPos += msg.goodnessPos * size;
        acc.goodnessNeg += msg.goodnessNeg * size;
        lastLosses[msg.layer - 1] = msg.loss;
        const t = times[msg.layer - 1]!;
        t.stepMs += msg.stepMs;
        t.waitMs += msg.waitMs;
        t.transportMs += msg.transportMs;
        t.blockedMs += msg.blockedMs;
        reports++;
        if (msg.layer === numLayers) {
          // Progress as the last stage sees it: that batch has passed the whole pipeline.
          lastDone++;
          samplesDone += size;
          reporter.batch(lastDone, samplesDone, lastLosses);
          opts.metrics?.onProgress(
            epoch + 1,
            (epoch * sampler.batchesPerEpoch + lastDone) / totalSteps,
          );
        }
      });
      try {
        for (const batch of sampler.epoch(epoch)) {
          lr = learningRateAt(
            cfg.optimizer.lr,
            (epoch * sampler.batchesPerEpoch + batch.index) / totalSteps,
            cfg.train.cooldown,
          );
          sizes[batch.index] = batch.size;
          await cluster.send(
            {
              kind: 'train',
              run,
              epoch,
              seq: batch.index,
              nPos: batch.size,
              lr,
              tensors: [{ name: 'x', shape: [2 * batch.size, data.dim] }],
            },
            [batch.x],
          );
          opts.metrics?.onBatchSent(batch.size);
        }
        await cluster.send(
          { kind: 'marker', run, epoch, seq: 0, op: 'epoch-end', id: ++markerId, tensors: [] },
          [],
        );
        // Every stage's report of every batch, not only the last stage's ack: results from
        // different stages travel on different connections and may arrive in any order.
        await cluster.until(() => reports === sampler.batchesPerEpoch * numLayers);
      } finally {
        unsubscribe();
      }
      const seconds = (performance.now() - t0) / 1000;
      const samples = data.train.count;
      const record: EpochRecord = {
        epoch: epoch + 1,
        seconds,
        samplesPerSec: samples / seconds,
        lr,
        layers: sums.map((s): StepStats => ({
          loss: s.loss / samples,
          goodnessPos: s.goodnessPos / samples,
          goodnessNeg: s.goodnessNeg / samples,
        })),
        stages: times.map((t) => ({
          stepSeconds: t.stepMs / 1000,
          waitSeconds: t.waitMs / 1000,
          transportSeconds: t.transportMs / 1000,
          blockedSeconds: t.blockedMs / 1000,
        })),
      };
      const last = epoch === epochs - 1;
      if (!last && cfg.train.evalEvery > 0 && (epoch + 1) % cfg.train.evalEvery === 0) {
        record.eval = await evaluateDistributed(cluster, run, data.test, data.dim, cfg, epoch);
      }
      reporter.endEpoch(record);
      opts.metrics?.onEpoch(record);
      records.push(record);
      await appendFile(metricsFile, JSON.stringify(record) + '\n');
      const every = cfg.output.checkpointEvery;
      if (!last && every > 0 && (epoch + 1) % every === 0) {
        // In band: every stage exports its layer after this epoch's last batch.
        const file = join(cfg.output.dir, `checkpoint-epoch${epoch + 1}.safetensors`);
        await collectWeights(cluster, run, cfg, epoch + 1, file, ++markerId);
        reporter.log(`checkpoint ${file}`);
      }
    }
    const t0 = performance.now();
    const final = await evaluateDistributed(cluster, run, data.test, data.dim, cfg, epochs);
    opts.metrics?.onEval(final);
    reporter.log(
      `evaluated ${final.count} test images in ${((performance.now() - t0) / 1000).toFixed(1)}s`,
    );
    const weightsFile = join(cfg.output.dir, 'model.safetensors');
    await collectWeights(cluster, run, cfg, epochs, weightsFile, ++markerId);
    await writeFile(join(cfg.output.dir, 'eval.json'), JSON.stringify(final, null, 2) + '\n');
    await finishRun(cluster, run, epochs, opts.stopStages, ++markerId);
    return { epochs: records, final, weightsFile, seconds: (performance.now() - started) / 1000 };
  } catch (err) {
    await cluster.stopAll((err as Error).message, opts.stopStages);
    throw err;
  } finally {
    cluster.close();
  }
}

/** Accuracy from the goodness every stage reports for the overlaid test images. */
export async function evaluateDistributed(
  cluster: Cluster,
  run: string,
  split: { images: Float32Array; labels: Uint8Array; count: number },
  dim: number,
  cfg: RunConfig,
  epoch: number,
): Promise<EvalResult> {
  const numLayers = cluster.numLayers;
  const acc = new EvalAccumulator(numLayers, cfg.eval.skipFirst);
  const b = Math.min(cfg.eval.batchSize, split.count);
  const pending = new Map<number, { labels: Uint8Array; g: Float32Array[]; got: number }>();
  let batches = 0;
  let done = 0;
  const unsubscribe = cluster.subscribe((msg) => {
    if (msg.type !== 'goodness' || msg.epoch !== epoch) return;
    const p = pending.get(msg.seq);
    if (!p) return;
    p.g[msg.layer - 1] = msg.g;
    if (++p.got === numLayers) {
      acc.add(p.g, p.labels);
      pending.delete(msg.seq);
      done++;
    }
  });
  try {
    for (let start = 0, seq = 0; start < split.count; start += b, seq++) {
      const n = Math.min(b, split.count - start);
      // A fresh buffer per batch: zeromq may still hold the previous one.
      const x = overlayAllLabels(
        split.images,
        start,
        n,
        dim,
        new Float32Array(NUM_CLASSES * n * dim),
        cfg.model.overlayValue,
      );
      pending.set(seq, { labels: split.labels.subarray(start, start + n), g: [], got: 0 });
      batches++;
      await cluster.send(
        {
          kind: 'eval',
          run,
          epoch,
          seq,
          images: n,
          tensors: [{ name: 'x', shape: [NUM_CLASSES * n, dim] }],
        },
        [x],
      );
    }
    await cluster.until(() => done === batches);
  } finally {
    unsubscribe();
  }
  return acc.result();
}

/** Asks every stage for its layer (in band, after all training) and writes one checkpoint. */
async function collectWeights(
  cluster: Cluster,
  run: string,
  cfg: RunConfig,
  epoch: number,
  file: string,
  id: number,
): Promise<void> {
  const tensors = new Map<string, NamedTensor>();
  const steps = new Array<number>(cluster.numLayers).fill(0);
  let got = 0;
  const unsubscribe = cluster.subscribe((msg) => {
    if (msg.type !== 'weights') return;
    for (const [name, t] of Object.entries(msg.tensors)) tensors.set(name, t);
    steps[msg.layer - 1] = msg.optimizerStep;
    got++;
  });
  try {
    await cluster.send({ kind: 'marker', run, epoch, seq: 0, op: 'weights', id, tensors: [] }, []);
    await cluster.until(() => got === cluster.numLayers);
  } finally {
    unsubscribe();
  }
  // Layer order, as the local trainer writes them.
  const ordered = new Map(
    [...tensors.entries()].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })),
  );
  await writeCheckpoint(file, ordered, steps, cfg, epoch);
}

/**
 * Ends a run in band: `end` keeps the stages (and their layers) for the next coordinator,
 * `stop` makes them exit. Waits for the last stage's ack, so the marker has passed every stage.
 */
export async function finishRun(
  cluster: Cluster,
  run: string,
  epoch: number,
  stop: boolean,
  id: number,
): Promise<void> {
  let acked = false;
  const unsubscribe = cluster.subscribe((msg) => {
    if (msg.type === 'ack' && msg.id === id) acked = true;
  });
  try {
    await cluster.send(
      { kind: 'marker', run, epoch, seq: 0, op: stop ? 'stop' : 'end', id, tensors: [] },
      [],
    );
    await cluster.until(() => acked);
  } finally {
    unsubscribe();
  }
}

/** `ffx-coordinator eval` on running stages: the layers they hold, on a split of the data. */
export async function evalDistributed(
  cfg: RunConfig,
  split: 'test' | 'train',
  opts: DistributedOptions,
): Promise<EvalResult> {
  const { reporter } = opts;
  const data = await prepareData(cfg, (l) => reporter.log(l));
  const numLayers = cfg.model.layers.length - 1;
  const run = randomUUID().slice(0, 8);
  const cluster = new Cluster(numLayers, run, { ...opts, log: (l) => reporter.log(l) });
  try {
    await cluster.start(cfg, 'eval');
    const result = await evaluateDistributed(cluster, run, data[split], data.dim, cfg, 0);
    await finishRun(cluster, run, 0, opts.stopStages, 1);
    return result;
  } catch (err) {
    await cluster.stopAll((err as Error).message, opts.stopStages);
    throw err;
  } finally {
    cluster.close();
  }
}
