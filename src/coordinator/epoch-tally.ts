// One epoch's reports, summed per layer with each batch's size as its weight: what becomes the
// epoch's record (epoch-record.ts). A layer's reports arrive in batch order, so the sums are the
// same floats whichever executor produced them.
import type { StepStats } from '../core/ff-layer.js';
import { FfxError } from '../errors.js';
import {
  CURVE_POINTS,
  type CurvePoint,
  type EpochRecord,
  type StageTiming,
} from './epoch-record.js';
import type { TrainReport } from './executor.js';

/** One epoch's reports, each (layer, batch) once. */
export class EpochTally {
  /** Positive samples and the learning rate per batch index, set as each batch is sent. */
  readonly sizes: number[] = [];
  readonly lrs: number[] = [];
  /** Batches, and their samples, that every layer has reported. */
  done = 0;
  samples = 0;
  readonly lastLosses: number[];
  private readonly seen: Uint8Array[];
  private readonly distinct: number[];
  private readonly sums: StepStats[];
  private readonly times: StageTiming[];
  /** The curve: batches per point, and per point and layer, sums and batches reported. */
  private readonly span: number;
  private readonly segments: { sums: StepStats[]; reported: number[] }[];

  constructor(
    private readonly numLayers: number,
    readonly epoch: number,
    batches: number,
  ) {
    this.lastLosses = new Array<number>(numLayers).fill(NaN);
    this.seen = Array.from({ length: numLayers }, () => new Uint8Array(batches));
    this.distinct = new Array<number>(numLayers).fill(0);
    this.sums = Array.from({ length: numLayers }, zeroStats);
    this.span = Math.max(1, Math.ceil(batches / CURVE_POINTS));
    this.segments = Array.from({ length: Math.ceil(batches / this.span) }, () => ({
      sums: Array.from({ length: numLayers }, zeroStats),
      reported: new Array<number>(numLayers).fill(0),
    }));
    this.times = Array.from({ length: numLayers }, () => ({
      stepSeconds: 0,
      waitSeconds: 0,
      transportSeconds: 0,
      blockedSeconds: 0,
    }));
  }

  /** Adds one report: 'duplicate' if that (layer, batch) was in, 'batch-done' for the last layer's. */
  add(r: TrainReport): 'added' | 'batch-done' | 'duplicate' {
    const seen = this.seen[r.layer - 1]!;
    if (r.index >= seen.length || seen[r.index]) return 'duplicate';
    if (!Number.isFinite(r.stats.loss)) {
      throw new FfxError(
        'NON_FINITE_LOSS',
        `layer ${r.layer}: loss is ${r.stats.loss} at epoch ${r.epoch + 1}, batch ${r.index + 1}; lower optimizer.lr`,
      );
    }
    seen[r.index] = 1;
    this.distinct[r.layer - 1]! += 1;
    const size = this.sizes[r.index] ?? 0;
    addStats(this.sums[r.layer - 1]!, r.stats, size);
    const segment = this.segments[Math.floor(r.index / this.span)]!;
    addStats(segment.sums[r.layer - 1]!, r.stats, size);
    segment.reported[r.layer - 1]! += 1;
    const t = this.times[r.layer - 1]!;
    t.stepSeconds += r.timing.stepSeconds;
    t.waitSeconds += r.timing.waitSeconds;
    t.transportSeconds += r.timing.transportSeconds;
    t.blockedSeconds += r.timing.blockedSeconds;
    this.lastLosses[r.layer - 1] = r.stats.loss;
    if (r.layer !== this.numLayers) return 'added';
    // The last layer's report: that batch has passed every layer.
    this.done++;
    this.samples += size;
    return 'batch-done';
  }

  record(seconds: number, lr: number): EpochRecord {
    const samples = this.samples;
    return {
      epoch: this.epoch + 1,
      seconds,
      samplesPerSec: samples / seconds,
      lr,
      batches: [...this.distinct],
      layers: this.sums.map((s) => meanStats(s, samples)),
      stages: this.times.map((t) => ({ ...t })),
      curve: this.curve(),
    };
  }

  /** A point for each run of batches every layer has reported whole. */
  private curve(): CurvePoint[] {
    const batches = this.seen[0]!.length;
    return this.segments.flatMap((seg, i): CurvePoint[] => {
      const first = i * this.span;
      const last = Math.min(batches, first + this.span) - 1;
      if (seg.reported.some((n) => n !== last - first + 1)) return [];
      let samples = 0;
      for (let b = first; b <= last; b++) samples += this.sizes[b] ?? 0;
      return [
        {
          batch: last + 1,
          lr: this.lrs[last] ?? NaN,
          layers: seg.sums.map((s) => meanStats(s, samples)),
        },
      ];
    });
  }
}

const zeroStats = (): StepStats => ({ loss: 0, goodnessPos: 0, goodnessNeg: 0 });

function addStats(sum: StepStats, stats: StepStats, weight: number): void {
  sum.loss += stats.loss * weight;
  sum.goodnessPos += stats.goodnessPos * weight;
  sum.goodnessNeg += stats.goodnessNeg * weight;
}

function meanStats(sum: StepStats, samples: number): StepStats {
  return {
    loss: sum.loss / samples,
    goodnessPos: sum.goodnessPos / samples,
    goodnessNeg: sum.goodnessNeg / samples,
  };
}
