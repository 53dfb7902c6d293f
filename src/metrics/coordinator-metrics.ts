// What the coordinator records: the cluster's health (stages expected, registered, up; lost),
// the run's progress, per-layer epoch means and the accuracy of each evaluation. Layer labels
// are bounded by the run's number of layers; stage counts are read at scrape time.
import type { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { layerSets, type EvalResult } from '../core/predict.js';
import {
  COORDINATOR,
  DROP_REASONS,
  REJECT_REASONS,
  rejectReason,
  type DropReason,
} from './catalog.js';
import { MetricsError } from './errors.js';
import {
  add,
  counter,
  gauge,
  histogram,
  isLayer,
  observe,
  registryInfo,
  runInfo,
  sample,
  set,
} from './registry.js';

/** One stage's liveness, for the age gauges (index: layer - 1). */
export interface StageAges {
  /** Seconds since anything was heard from it. */
  heartbeat: number;
  /** Seconds it has had work outstanding without a result (0 when it has none). */
  progress: number;
}

export interface StagesSnapshot {
  /** Stages the run needs. */
  expected: number;
  /** Stages that said hello. */
  registered: number;
  /** Registered stages heard from within the heartbeat timeout. */
  up: number;
}

/** The parts of an EpochRecord (coordinator/epoch-record.ts) recorded here. */
export interface EpochRecordLike {
  /** 1-based. */
  epoch: number;
  seconds: number;
  lr?: number;
  layers: readonly { loss: number; goodnessPos: number; goodnessNeg: number }[];
  eval?: EvalResultLike;
}

export type EvalResultLike = Pick<EvalResult, 'perLayerSet'>;

export interface CoordinatorMetricsOptions {
  /** Layers (= stages) of the run: bounds the `layer` and `set` labels. */
  numLayers: number;
  /** The layers (0-based) of the run's prediction rule, when eval.layers names a set of its own. */
  rule?: readonly number[];
  /** Unix time in seconds (tests pass a fixed clock). */
  now?: () => number;
}

export class CoordinatorMetrics {
  readonly numLayers: number;
  private readonly now: () => number;
  private readonly evalSets: ReadonlySet<string>;
  private stagesSource: () => StagesSnapshot;
  private agesSource: () => StageAges[] = () => [];

  private readonly epoch: Gauge<never>;
  private readonly progress: Gauge<never>;
  private readonly batchesSent: Counter<never>;
  private readonly samples: Counter<never>;
  private readonly learningRate: Gauge<never>;
  private readonly evalAccuracy: Gauge<'set'>;
  private readonly layerLoss: Gauge<'layer'>;
  private readonly layerGoodness: Gauge<'layer' | 'polarity'>;
  private readonly stageLost: Counter<'layer'>;
  private readonly stageStalled: Counter<'layer'>;
  private readonly recoveries: Counter<never>;
  private readonly batchesTrained: Gauge<'layer'>;
  private readonly batchesReplayed: Counter<'layer'>;
  private readonly duplicateReports: Counter<'layer'>;
  private readonly dropped: Counter<'reason'>;
  private readonly rejected: Counter<'layer' | 'reason'>;
  private readonly lastBatch: Gauge<never>;
  private readonly epochDuration: Histogram<never>;
  private readonly setRun: ReturnType<typeof runInfo>;

  /** Registers the coordinator metrics on `registry` (from `createRegistry('coordinator', ...)`). */
  constructor(registry: Registry, opts: CoordinatorMetricsOptions) {
    const { numLayers } = opts;
    if (!isLayer(numLayers)) {
      throw new MetricsError(
        'METRICS_BAD_LAYER',
        `coordinator metrics numLayers must be a positive integer; got ${numLayers}`,
        numLayers,
      );
    }
    const info = registryInfo(registry);
    if (info && info.role !== 'coordinator') {
      throw new MetricsError(
        'METRICS_BAD_ROLE',
        `coordinator metrics need a registry made by createRegistry('coordinator'); got one for role ${info.role}`,
        info.role,
      );
    }
    this.numLayers = numLayers;
    this.now = opts.now ?? (() => Date.now() / 1000);
    this.evalSets = new Set(layerSets(numLayers, opts.rule).map((s) => s.name));
    this.stagesSource = () => ({ expected: numLayers, registered: 0, up: 0 });

    // Point in time: one read of the cluster per gauge per scrape.
    const stages = (key: keyof StagesSnapshot) => () => sample(() => this.stagesSource()[key]);
    const expected = stages('expected');
    const registered = stages('registered');
    const up = stages('up');
    gauge(registry, COORDINATOR.stagesExpected, function () {
      this.set(expected());
    });
    gauge(registry, COORDINATOR.stagesRegistered, function () {
      this.set(registered());
    });
    gauge(registry, COORDINATOR.stagesUp, function () {
      this.set(up());
    });
    this.epoch = gauge(registry, COORDINATOR.epoch);
    this.progress = gauge(registry, COORDINATOR.progress);
    this.batchesSent = counter(registry, COORDINATOR.batchesSent);
    this.samples = counter(registry, COORDINATOR.samples);
    this.learningRate = gauge(registry, COORDINATOR.learningRate);
    this.evalAccuracy = gauge(registry, COORDINATOR.evalAccuracy);
    this.layerLoss = gauge(registry, COORDINATOR.layerLoss);
    this.layerGoodness = gauge(registry, COORDINATOR.layerGoodness);
    this.stageLost = counter(registry, COORDINATOR.stageLost);
    this.stageStalled = counter(registry, COORDINATOR.stageStalled);
    this.recoveries = counter(registry, COORDINATOR.recoveries);
    this.batchesTrained = gauge(registry, COORDINATOR.batchesTrained);
    this.batchesReplayed = counter(registry, COORDINATOR.batchesReplayed);
    this.duplicateReports = counter(registry, COORDINATOR.duplicateReports);
    this.dropped = counter(registry, COORDINATOR.dropped);
    for (const reason of DROP_REASONS) this.dropped.inc({ reason }, 0);
    // Point in time, per layer: one read of the cluster per gauge per scrape.
    const age = (layer: number, key: keyof StageAges) => () =>
      this.agesSource()[layer - 1]?.[key] ?? NaN;
    for (const [spec, key] of [
      [COORDINATOR.heartbeatAge, 'heartbeat'],
      [COORDINATOR.progressAge, 'progress'],
    ] as const) {
      gauge(registry, spec, function () {
        for (let layer = 1; layer <= numLayers; layer++) {
          this.set({ layer: String(layer) }, sample(age(layer, key)));
        }
      });
    }
    this.rejected = counter(registry, COORDINATOR.rejected);
    this.lastBatch = gauge(registry, COORDINATOR.lastBatch);
    this.epochDuration = histogram(registry, COORDINATOR.epochDuration);
    this.setRun = runInfo(registry);

    // Every known series from the start, so rate() and the dashboard have data before an event.
    for (let layer = 1; layer <= numLayers; layer++) {
      this.stageLost.inc({ layer: String(layer) }, 0);
      this.stageStalled.inc({ layer: String(layer) }, 0);
      this.batchesTrained.set({ layer: String(layer) }, 0);
      this.batchesReplayed.inc({ layer: String(layer) }, 0);
      this.duplicateReports.inc({ layer: String(layer) }, 0);
      for (const reason of REJECT_REASONS) this.rejected.inc({ layer: String(layer), reason }, 0);
    }
  }

  /**
   * Where the stage gauges come from: called at every scrape. Until set, `expected` is
   * numLayers and the others 0. A source that throws reads as NaN, without failing the scrape.
   */
  setStagesSource(source: () => StagesSnapshot): void {
    this.stagesSource = source;
  }

  /** The run this coordinator drives: its id and its config's name (ffx_run_info). */
  onRun(id: string, name: string): void {
    this.setRun({ id, name });
  }

  /** `epoch` is 1-based; `ratio` the fraction of the whole run done (clamped to 0..1). */
  onProgress(epoch: number, ratio: number): void {
    set(this.epoch, {}, epoch);
    set(this.progress, {}, Math.min(1, Math.max(0, ratio)));
  }

  /** A training batch of `samples` positive samples sent to the first stage, at rate `lr`. */
  onBatchSent(samples: number, lr: number): void {
    add(this.batchesSent, {}, 1);
    add(this.samples, {}, samples);
    set(this.learningRate, {}, lr); // from the first batch on, not from the first epoch's end
    set(this.lastBatch, {}, this.now());
  }

  /** An epoch finished: per-layer means, its duration, and its evaluation if it had one. */
  onEpoch(record: EpochRecordLike): void {
    set(this.epoch, {}, record.epoch);
    observe(this.epochDuration, {}, record.seconds);
    if (record.lr !== undefined) set(this.learningRate, {}, record.lr);
    record.layers.forEach((s, i) => {
      const layer = i + 1;
      if (layer > this.numLayers) return; // bounded label set
      set(this.layerLoss, { layer: String(layer) }, s.loss);
      set(this.layerGoodness, { layer: String(layer), polarity: 'pos' }, s.goodnessPos);
      set(this.layerGoodness, { layer: String(layer), polarity: 'neg' }, s.goodnessNeg);
    });
    if (record.eval) this.onEval(record.eval);
  }

  /** An evaluation: accuracy of every layer set of layerSets(numLayers, rule); other names are ignored. */
  onEval(result: EvalResultLike): void {
    for (const { name, accuracy } of result.perLayerSet) {
      if (this.evalSets.has(name)) set(this.evalAccuracy, { set: name }, accuracy);
    }
  }

  /**
   * Where the per-stage age gauges come from (index: layer - 1): called at every scrape.
   * Until set, or for a layer it does not cover, they read NaN.
   */
  setStageAgesSource(source: () => StageAges[]): void {
    this.agesSource = source;
  }

  /** A rollback to the last checkpoint. */
  onRecovery(): void {
    add(this.recoveries, {}, 1);
  }

  /** `layer` has trained `batches` batches in the final lineage. */
  onLineage(layer: number, batches: number): void {
    if (isLayer(layer) && layer <= this.numLayers) {
      set(this.batchesTrained, { layer: String(layer) }, batches);
    }
  }

  /** A rollback discarded `batches` that `layer` had trained: it trains them again. */
  onReplayed(layer: number, batches: number): void {
    add(this.batchesReplayed, { layer: this.layerLabel(layer) }, batches);
  }

  /** A message dropped unread (see DropReason). */
  onDropped(reason: DropReason): void {
    add(this.dropped, { reason }, 1);
  }

  /** A second report of a (layer, epoch, batch), dropped. */
  onDuplicate(layer: number): void {
    add(this.duplicateReports, { layer: this.layerLabel(layer) }, 1);
  }

  /** A stage that heartbeats but does not progress (CLUSTER_STAGE_STALLED). */
  onStageStalled(layer: number): void {
    add(this.stageStalled, { layer: this.layerLabel(layer) }, 1);
  }

  /** A stage stopped answering (CLUSTER_STAGE_LOST). Out-of-range layers count as "other". */
  onStageLost(layer: number): void {
    add(this.stageLost, { layer: this.layerLabel(layer) }, 1);
  }

  /** A stage reported rejecting a message with protocol error `code`. */
  onRejected(layer: number, code: string): void {
    add(this.rejected, { layer: this.layerLabel(layer), reason: rejectReason(code) }, 1);
  }

  // Layers come from the network: one out of range must not grow the label set.
  private layerLabel(layer: number): string {
    return isLayer(layer) && layer <= this.numLayers ? String(layer) : 'other';
  }
}
