// What the training driver (driver.ts) needs from whatever runs the layers: every layer in this
// process (LocalExecutor), or one ffx-stage process per layer (PipelineExecutor). The driver
// owns the schedule (which batch, at which learning rate, when to evaluate and checkpoint); an
// executor only computes, and reports what it computed tagged by layer, epoch and batch.
import type { StepStats } from '../core/ff-layer.js';
import type { ModelState } from '../checkpoint/checkpoint-file.js';
import type { StageTiming } from './epoch-record.js';
import type { EvalBatch } from './run-data.js';

export interface TrainBatch {
  /** 0-based epoch and batch index: with the seed, they say what the batch holds. */
  epoch: number;
  index: number;
  /** Positive samples; x holds as many negatives after them. */
  size: number;
  /**
   * [2 * size, dim]: the positive rows, then the negative rows; with readouts, then the
   * neutral rows ([3 * size, dim]). Handed over: not reused.
   */
  x: Float32Array;
  /** The true labels (the readouts train on them). */
  labels: Uint8Array;
}

/** One layer's result for one training batch. */
export interface TrainReport {
  /** 1-based. */
  layer: number;
  epoch: number;
  index: number;
  stats: StepStats;
  timing: StageTiming;
  /** With readouts: the layer's logits for the batch's neutral rows [size, classes]. */
  logits?: Float32Array;
}

/**
 * Receives every layer's report of every training batch, in batch order per layer. When it
 * throws, the run fails: the executor's pending call and every later one reject with the error.
 */
export type TrainListener = (report: TrainReport) => void;

/**
 * Receives the per-layer scores of one evaluation batch ([layer][c * images + i]): goodness,
 * or with rule 'readout' the readouts' log-probabilities, in the same layout.
 */
export type GoodnessListener = (batch: EvalBatch, goodness: Float32Array[]) => void;

export interface Executor {
  readonly numLayers: number;
  /** This run's id (8 hex digits): in a pipeline's messages and logs, and in ffx_run_info. */
  readonly run: string;
  /** Where the layers run, for the run's log (e.g. "in this process"). */
  readonly where: string;
  /**
   * The tensor backend each layer computes on, once started (e.g. "wasm+blas"): different
   * backends round differently, so a run's bits are those of its backends.
   */
  backends(): string[];
  /**
   * Gets every layer ready: fresh from the seed, or with `state` (a checkpoint's) imported.
   * Reports of training batches go to `onTrain` from then on.
   */
  start(onTrain: TrainListener, state?: ModelState): Promise<void>;
  /**
   * Trains every layer on one batch at learning rate `lr`. Resolves when the executor can take
   * the next batch: after the step here, once the batch is queued in a pipeline.
   */
  train(batch: TrainBatch, lr: number): Promise<void>;
  /** Resolves once every layer has reported every batch trained so far: a barrier. */
  drain(): Promise<void>;
  /**
   * The goodness every layer gives each row of `batches` (label overlays), tagged `epoch`;
   * resolves once `onGoodness` has had every batch, in any order.
   */
  evaluate(
    batches: Iterable<EvalBatch>,
    epoch: number,
    onGoodness: GoodnessListener,
  ): Promise<void>;
  /** Every layer's weights, biases and optimizer state, after everything trained so far. */
  exportState(epoch: number): Promise<ModelState>;
  /** Whether `err` (thrown by one of these calls) is a failure rollback() can recover from. */
  recoverable(err: unknown): boolean;
  /**
   * After a recoverable failure: every layer is set back to `state` (undefined: fresh from the
   * seed), everything in flight is dropped, and reports of the abandoned work never arrive.
   * Resolves when training can go on; rejects when it cannot (e.g. no replacement in time).
   */
  rollback(state: ModelState | undefined): Promise<void>;
  /**
   * Ends the run and releases everything. Without `error` the run ended well (a pipeline's
   * stages are told so and keep their layers); with it, the run is abandoned.
   */
  close(error?: unknown): Promise<void>;
}
