// Every layer in this process, batch by batch: the quick way to train on one machine, and the
// reference a pipeline of stages must reproduce. Layer l trains on the activations layer l-1
// produced for the same batch in the same step, exactly as stage l receives them.
import { randomUUID } from 'node:crypto';
import { activeBackend } from '../backend/backend.js';
import type { ModelState } from '../checkpoint/checkpoint-file.js';
import type { RunConfig } from '../config/config.js';
import { FFNetwork, checkRunMemory } from '../core/ff-network.js';
import type { Executor, GoodnessListener, TrainBatch, TrainListener } from './executor.js';
import type { EvalBatch } from './run-data.js';

export class LocalExecutor implements Executor {
  readonly numLayers: number;
  readonly run = randomUUID().slice(0, 8);
  readonly where = 'in this process';
  private readonly cfg: RunConfig;
  private net: FFNetwork | null = null;
  private onTrain: TrainListener = () => {};

  constructor(cfg: RunConfig) {
    this.cfg = cfg;
    this.numLayers = cfg.model.layers.length - 1;
  }

  async start(onTrain: TrainListener, state?: ModelState): Promise<void> {
    this.onTrain = onTrain;
    const { model, train, eval: ev } = this.cfg;
    const all = Array.from({ length: this.numLayers }, (_, i) => i);
    checkRunMemory(model, all, train.batchSize, ev.batchSize);
    this.build(state);
  }

  backends(): string[] {
    const { name, package: pkg } = activeBackend();
    return new Array<string>(this.numLayers).fill(`${name} (${pkg})`);
  }

  /** Nothing fails here that training again would not repeat. */
  recoverable(): boolean {
    return false;
  }

  async rollback(state: ModelState | undefined): Promise<void> {
    this.net?.dispose();
    this.build(state);
  }

  private build(state: ModelState | undefined): void {
    const { cfg } = this;
    this.net = new FFNetwork(cfg.model, cfg.optimizer, cfg.seed, cfg.train.shards);
    if (state) {
      this.net.importState(state.tensors);
      this.net.layers.forEach((l, i) => (l.steps = state.optimizerSteps[i] ?? 0));
    }
  }

  async train(batch: TrainBatch, lr: number): Promise<void> {
    const stats = this.network().trainBatch(batch.x, batch.size, lr, batch.labels);
    stats.forEach(({ seconds, logits, ...s }, i) =>
      this.onTrain({
        layer: i + 1,
        epoch: batch.epoch,
        index: batch.index,
        stats: s,
        timing: { stepSeconds: seconds, waitSeconds: 0, transportSeconds: 0, blockedSeconds: 0 },
        ...(logits && { logits }),
      }),
    );
  }

  /** Every report was delivered during train(). */
  async drain(): Promise<void> {}

  async evaluate(
    batches: Iterable<EvalBatch>,
    _epoch: number,
    onGoodness: GoodnessListener,
  ): Promise<void> {
    const net = this.network();
    for (const b of batches) {
      onGoodness(
        b,
        b.rule === 'readout' ? net.readoutScores(b.x, b.images) : net.goodness(b.x, b.rows),
      );
    }
  }

  async exportState(): Promise<ModelState> {
    const net = this.network();
    return {
      tensors: net.exportState(true),
      optimizerSteps: net.layers.map((l) => l.steps),
    };
  }

  async close(): Promise<void> {
    this.net?.dispose();
    this.net = null;
  }

  private network(): FFNetwork {
    if (!this.net) throw new Error('LocalExecutor: start() first');
    return this.net;
  }
}
