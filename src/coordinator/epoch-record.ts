// What a run records about each epoch: one line of metrics.jsonl, one `epoch` event of
// --json, one Prometheus update. The same record whichever executor ran the layers.
import type { StepStats } from '../core/ff-layer.js';
import type { EvalResult } from '../core/predict.js';

/**
 * Where one layer's time went: computing, idle waiting for input (the pipeline bubble),
 * decoding and encoding messages (transport), and waiting for room downstream (backpressure).
 * Layers run in this process only compute.
 */
export interface StageTiming {
  stepSeconds: number;
  waitSeconds: number;
  transportSeconds: number;
  blockedSeconds: number;
}

export interface EpochRecord {
  /** 1-based. */
  epoch: number;
  seconds: number;
  samplesPerSec: number;
  /** Learning rate of the epoch's last batch. */
  lr: number;
  /** Per layer, the epoch's batches it trained (each once: all of them, in a complete run). */
  batches: number[];
  /** Per layer, means over the epoch's samples. */
  layers: StepStats[];
  /** Per layer, totals over the epoch. */
  stages: StageTiming[];
  /**
   * The epoch's training curve: up to CURVE_POINTS points, each the means over a run of
   * consecutive batches (the same number each, the last run shorter), for the curves of a
   * report within an epoch.
   */
  curve: CurvePoint[];
  eval?: EvalResult;
}

/** The most points an epoch's curve has. */
export const CURVE_POINTS = 50;

export interface CurvePoint {
  /** 1-based: the last batch of the run of batches this point sums up. */
  batch: number;
  /** The learning rate of that batch. */
  lr: number;
  /** Per layer, means over the run's samples. */
  layers: StepStats[];
}
