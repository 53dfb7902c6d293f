// The layers as a pipeline of ffx-stage processes, one per layer. The coordinator feeds the
// first stage; every stage trains its layer and forwards its activations, so all stages work
// at once on consecutive batches, and reports to the coordinator (cluster.ts) what it computed.
//
// A run goes through attempts: the first, and one more per rollback after a lost, stopped or
// stuck stage. Each attempt has a run id of its own (`<run>`, `<run>.1`, ...), so nothing of an
// abandoned attempt (its batches still in flight, its late reports) can reach the next one.
import { randomUUID } from 'node:crypto';
import type { ModelState } from '../checkpoint/checkpoint-file.js';
import {
  ConfigError,
  DEFAULT_CONFIG,
  mergeConfig,
  validateConfig,
  type RunConfig,
} from '../config/config.js';
import { NUM_CLASSES } from '../data/ff-data.js';
import type { NamedTensor } from '../core/safetensors.js';
import { batchRows, carriesLabels, isCompetitive, layerStateFloats } from '../core/ff-network.js';
import { modelShapes, rowShape } from '../core/model-shape.js';
import { MAX_HEADER_BYTES } from '../transport/bounds.js';
import type { WeightsMessage } from '../transport/wire.js';
import { Cluster, ClusterError, DISCOVERY_LAYERS, type ClusterOptions } from './cluster.js';
import type { Executor, GoodnessListener, TrainBatch, TrainListener } from './executor.js';
import type { EvalBatch } from './run-data.js';

export interface PipelineOptions extends Omit<ClusterOptions, 'maxMessageBytes'> {
  /** 'train' builds fresh layers (or a checkpoint's); 'eval' uses the layers stages hold. */
  mode: 'train' | 'eval';
  /** End the run with `stop` (stages exit) instead of `end` (stages wait for the next run). */
  stopStages: boolean;
  /** After a failure, how long to wait for every layer's stage to be back (or replaced). */
  recoveryTimeoutMs: number;
}

export class PipelineExecutor implements Executor {
  readonly numLayers: number;
  /** Every message of the run's first attempt carries its id; later ones `<run>~N`. */
  readonly run = randomUUID().slice(0, 8);
  readonly where: string;
  private readonly cfg: RunConfig;
  private readonly opts: PipelineOptions;
  private readonly cluster: Cluster;
  private attempt = 0;
  /** This attempt's training batches sent, and training reports received. */
  private sent = 0;
  private reported = 0;
  private markerId = 0;

  constructor(cfg: RunConfig, opts: PipelineOptions) {
    this.cfg = cfg;
    this.opts = opts;
    this.numLayers = cfg.model.layers.length - 1;
    this.where = `on ${this.numLayers} stages (run ${this.run})`;
    this.cluster = new Cluster(this.numLayers, this.run, {
      ...opts,
      maxMessageBytes: largestResult(cfg),
    });
  }

  async start(onTrain: TrainListener, state?: ModelState): Promise<void> {
    this.cluster.subscribe((msg) => {
      if (msg.type !== 'stats') return;
      this.reported++;
      onTrain({
        layer: msg.layer,
        epoch: msg.epoch,
        index: msg.seq,
        stats: { loss: msg.loss, goodnessPos: msg.goodnessPos, goodnessNeg: msg.goodnessNeg },
        timing: {
          stepSeconds: msg.stepMs / 1000,
          waitSeconds: msg.waitMs / 1000,
          transportSeconds: msg.transportMs / 1000,
          blockedSeconds: msg.blockedMs / 1000,
        },
        ...(msg.logits.length > 0 && { logits: msg.logits }),
      });
    });
    await this.cluster.bind();
    await this.cluster.register(this.cfg, this.opts.mode, state, this.run);
  }

  /** What each layer's stage said it computes on when it said hello. */
  backends(): string[] {
    return this.cluster.backends();
  }

  recoverable(err: unknown): boolean {
    return err instanceof ClusterError && err.recoverable && this.opts.mode === 'train';
  }

  /**
   * A new attempt: every stage drops the current one; once every layer has a stage again (the
   * survivors, and a replacement for each lost one: restarted by hand, by ffx-launch, systemd
   * or Kubernetes), each gets its layer's part of `state` under a new run id.
   */
  async rollback(state: ModelState | undefined): Promise<void> {
    await this.cluster.stopAll('rolling back to the last checkpoint', false);
    this.attempt++;
    this.sent = this.reported = 0;
    const run = `${this.run}.${this.attempt}`;
    this.opts.log(
      `coordinator: attempt ${this.attempt + 1} (run ${run}): waiting up to ` +
        `${this.opts.recoveryTimeoutMs / 1000}s for every layer's stage`,
    );
    await this.cluster.register(this.cfg, 'train', state, run, this.opts.recoveryTimeoutMs);
  }

  /**
   * The shape of a row of the model's input on the wire: competitive layers take images as
   * [h, w, c] (channels last); FF layers take vectors of `width`.
   */
  private inputRow(width: number): number[] {
    return isCompetitive(this.cfg.model)
      ? rowShape(modelShapes(this.cfg.model.layers)[0]!)
      : [width];
  }

  async train(batch: TrainBatch, lr: number): Promise<void> {
    const { size } = batch;
    const labelled = carriesLabels(this.cfg.model);
    const rows = batchRows(this.cfg.model, size);
    const x = { name: 'x', shape: [rows, ...this.inputRow(batch.x.length / rows)] };
    await this.cluster.send(
      {
        kind: 'train',
        run: this.cluster.run,
        epoch: batch.epoch,
        seq: batch.index,
        nPos: size,
        lr,
        // Readouts and competitive layers train on the labels: they travel with the batch.
        tensors: labelled ? [x, { name: 'y', shape: [size] }] : [x],
      },
      labelled ? [batch.x, Float32Array.from(batch.labels)] : [batch.x],
    );
    this.sent++;
  }

  // Every stage's report of every batch, not the last stage's alone: reports from different
  // stages travel on different connections and may arrive in any order.
  drain(): Promise<void> {
    return this.cluster.until(() => this.reported === this.sent * this.numLayers);
  }

  async evaluate(
    batches: Iterable<EvalBatch>,
    epoch: number,
    onGoodness: GoodnessListener,
  ): Promise<void> {
    const pending = new Map<number, { batch: EvalBatch; goodness: Float32Array[]; got: number }>();
    let sent = 0;
    let done = 0;
    const unsubscribe = this.cluster.subscribe((msg) => {
      if (msg.type !== 'goodness' || msg.epoch !== epoch) return;
      const p = pending.get(msg.seq);
      if (!p || p.goodness[msg.layer - 1] !== undefined) return;
      p.goodness[msg.layer - 1] = msg.g;
      if (++p.got < this.numLayers) return;
      pending.delete(msg.seq);
      done++;
      onGoodness(p.batch, p.goodness);
    });
    try {
      for (const batch of batches) {
        pending.set(batch.index, { batch, goodness: [], got: 0 });
        sent++;
        const { rows } = batch;
        await this.cluster.send(
          {
            kind: 'eval',
            run: this.cluster.run,
            epoch,
            seq: batch.index,
            images: batch.images,
            tensors: [{ name: 'x', shape: [rows, ...this.inputRow(batch.x.length / rows)] }],
          },
          [batch.x],
        );
      }
      await this.cluster.until(() => done === sent);
    } finally {
      unsubscribe();
    }
  }

  /** In band: each stage sends its layer once every batch before the marker has passed it. */
  async exportState(epoch: number): Promise<ModelState> {
    const parts = new Map<number, WeightsMessage>();
    const unsubscribe = this.cluster.subscribe((msg) => {
      if (msg.type === 'weights' && msg.epoch === epoch) parts.set(msg.layer, msg);
    });
    try {
      await this.marker('weights', epoch);
      await this.cluster.until(() => parts.size === this.numLayers);
    } finally {
      unsubscribe();
    }
    const tensors = new Map<string, NamedTensor>();
    const optimizerSteps: number[] = [];
    for (let layer = 1; layer <= this.numLayers; layer++) {
      const part = parts.get(layer)!;
      for (const [name, t] of Object.entries(part.tensors)) tensors.set(name, t);
      optimizerSteps.push(part.optimizerStep);
    }
    return { tensors, optimizerSteps };
  }

  /**
   * A run that ended well ends in band: `end` keeps the stages (and their layers) for the next
   * coordinator, `stop` makes them exit; the last stage's ack says the marker passed them all.
   * An abandoned run is dropped by every stage at once, out of band.
   */
  async close(error?: unknown): Promise<void> {
    try {
      if (error === undefined) {
        const op = this.opts.stopStages ? 'stop' : 'end';
        let acked = false;
        const id = this.markerId + 1;
        const unsubscribe = this.cluster.subscribe((msg) => {
          if (msg.type === 'ack' && msg.id === id) acked = true;
        });
        try {
          await this.marker(op, 0);
          await this.cluster.until(() => acked);
        } finally {
          unsubscribe();
        }
      } else {
        const reason = error instanceof Error ? error.message : String(error);
        await this.cluster.stopAll(reason, this.opts.stopStages);
      }
    } finally {
      this.cluster.close();
    }
  }

  private marker(op: 'weights' | 'end' | 'stop', epoch: number): Promise<void> {
    return this.cluster.send(
      {
        kind: 'marker',
        run: this.cluster.run,
        epoch,
        seq: 0,
        op,
        id: ++this.markerId,
        tensors: [],
      },
      [],
    );
  }
}

/**
 * The largest message a stage of this run sends the coordinator: a layer's weights with its
 * optimizer slots, or an eval batch's goodness; with room for the header.
 */
/**
 * The config of the training run whose layers the running stages hold, for an eval without a
 * config (see Cluster.heldConfig), checked as a checkpoint's is. Binds the control endpoint
 * meanwhile, and lets it go.
 */
export async function heldConfig(opts: PipelineOptions): Promise<RunConfig> {
  const cluster = new Cluster(DISCOVERY_LAYERS, 'discovery', {
    ...opts,
    metrics: undefined, // not a run: nothing to export
    maxMessageBytes: MAX_HEADER_BYTES,
  });
  let held: unknown;
  try {
    await cluster.bind();
    held = await cluster.heldConfig(opts.registerTimeoutMs);
  } finally {
    cluster.close();
  }
  try {
    // Over the defaults, as a checkpoint's: a key a stage's older ffx lacked takes its default.
    return validateConfig(mergeConfig(DEFAULT_CONFIG, held));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new ClusterError(
      'CLUSTER_STAGE_ERROR',
      `the config of the run the stages hold is not valid: ${err.message}`,
      [],
    );
  }
}

function largestResult(cfg: RunConfig): number {
  let largest = NUM_CLASSES * cfg.eval.batchSize * 4;
  for (let i = 0; i + 1 < cfg.model.layers.length; i++) {
    largest = Math.max(largest, layerStateFloats(cfg.model, cfg.optimizer, i) * 4);
  }
  return largest + MAX_HEADER_BYTES; // room for the message's other fields
}
