// What one pipeline stage records: work done, where its time goes (compute, the pipeline
// bubble, backpressure, transport), traffic, rejections, and the last batch's loss and goodness.
// The stage calls plain methods with plain numbers; nothing here throws on a value or keeps a
// timer, and the queue depth is read at scrape time from a callback.
import type { Counter, Gauge, Histogram, Registry } from 'prom-client';
import {
  PHASES,
  POLARITIES,
  REJECT_REASONS,
  STAGE,
  STAGE_STATES,
  messageKind,
  rejectReason,
  type Phase,
  type StageState,
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

/** One batch through this stage; every time in seconds, every field a plain number. */
export interface StepEvent {
  /** Positive samples (train: header.nPos) or test images (eval: header.images). */
  samples: number;
  /** Compute time of the step (tensor work, including reading results back). */
  stepSeconds: number;
  /**
   * Idle time waiting for this batch to arrive (the pipeline bubble). Count each wait once:
   * here, or through onInputWait, not both.
   */
  waitSeconds?: number;
  /** Time decoding the input and encoding the output. */
  transportSeconds?: number;
  /** Time blocked in send, waiting for the downstream stage (backpressure). */
  sendSeconds?: number;
  /** 1-based epoch of the batch (the wire header's epoch + 1). */
  epoch?: number;
  /** The layer that did the step, in a stage of several (default: the stage's first). */
  layer?: number;
}

export interface TrainStepEvent extends StepEvent {
  loss: number;
  goodnessPos: number;
  goodnessNeg: number;
}

export interface StageMetricsOptions {
  /** Unix time in seconds (tests pass a fixed clock). */
  now?: () => number;
  /**
   * The last layer of a stage that holds several (default: `layer`, one): the per-layer series
   * (batches, samples, step time, loss, goodness, epoch) carry each layer's own `layer` label.
   */
  last?: number;
}

export class StageMetrics {
  readonly layer: number;
  /**
   * The labels of each layer the stage holds: none for the first (the registry's default
   * `layer` label names it, so a stage of one layer renders as before), `layer` for the others.
   */
  private readonly layerLabels = new Map<number, { layer?: string }>();
  private readonly now: () => number;
  private queueDepthSource: () => number = () => 0;
  private queueBytesSource: () => number = () => 0;

  private readonly batches: Counter<'phase' | 'layer'>;
  private readonly samples: Counter<'phase' | 'layer'>;
  private readonly stepDuration: Histogram<'phase' | 'layer'>;
  private readonly inputWait: Counter<never>;
  private readonly sendBlocked: Counter<never>;
  private readonly transport: Counter<never>;
  private readonly messagesReceived: Counter<'kind'>;
  private readonly messagesSent: Counter<'kind'>;
  private readonly bytesReceived: Counter<never>;
  private readonly bytesSent: Counter<never>;
  private readonly rejected: Counter<'reason'>;
  private readonly loss: Gauge<'layer'>;
  private readonly goodness: Gauge<'polarity' | 'layer'>;
  private readonly nonfiniteLoss: Counter<'layer'>;
  private readonly lastBatch: Gauge<never>;
  private readonly epoch: Gauge<'layer'>;
  private readonly state: Gauge<'state'>;
  private readonly leftovers: Counter<never>;
  private readonly coordinatorLost: Counter<never>;
  private readonly setRun: ReturnType<typeof runInfo>;

  /**
   * Registers the stage metrics on `registry`, which should come from
   * `createRegistry('stage', { layer: String(layer) })`: its default labels put `layer` on
   * every series. A registry made for another layer, or for the coordinator, is refused.
   */
  constructor(registry: Registry, layer: number, opts: StageMetricsOptions = {}) {
    if (!isLayer(layer)) {
      throw new MetricsError(
        'METRICS_BAD_LAYER',
        `stage metrics layer must be a positive integer; got ${layer}`,
        layer,
      );
    }
    const info = registryInfo(registry);
    if (info && (info.role !== 'stage' || info.labels.layer !== String(layer))) {
      throw new MetricsError(
        'METRICS_BAD_LAYER',
        `stage metrics for layer ${layer} need a registry made by createRegistry('stage', { layer: '${layer}' }); ` +
          `got one for role ${info.role}, layer ${info.labels.layer ?? '(none)'}`,
        layer,
      );
    }
    this.layer = layer;
    const last = opts.last ?? layer;
    if (!isLayer(last) || last < layer) {
      throw new MetricsError(
        'METRICS_BAD_LAYER',
        `stage metrics last layer must be an integer >= ${layer}; got ${last}`,
        last,
      );
    }
    for (let l = layer; l <= last; l++)
      this.layerLabels.set(l, l === layer ? {} : { layer: String(l) });
    this.now = opts.now ?? (() => Date.now() / 1000);

    this.batches = counter(registry, STAGE.batches);
    this.samples = counter(registry, STAGE.samples);
    this.stepDuration = histogram(registry, STAGE.stepDuration);
    this.inputWait = counter(registry, STAGE.inputWait);
    this.sendBlocked = counter(registry, STAGE.sendBlocked);
    this.transport = counter(registry, STAGE.transport);
    this.messagesReceived = counter(registry, STAGE.messagesReceived);
    this.messagesSent = counter(registry, STAGE.messagesSent);
    this.bytesReceived = counter(registry, STAGE.bytesReceived);
    this.bytesSent = counter(registry, STAGE.bytesSent);
    this.rejected = counter(registry, STAGE.rejected);
    this.loss = gauge(registry, STAGE.loss);
    this.goodness = gauge(registry, STAGE.goodness);
    this.nonfiniteLoss = counter(registry, STAGE.nonfiniteLoss);
    this.lastBatch = gauge(registry, STAGE.lastBatch);
    // Point in time: read from the stage's callback at each scrape.
    const depth = () => sample(this.queueDepthSource);
    gauge(registry, STAGE.queueDepth, function () {
      this.set(depth());
    });
    const queued = () => sample(this.queueBytesSource);
    gauge(registry, STAGE.queueBytes, function () {
      this.set(queued());
    });
    this.epoch = gauge(registry, STAGE.epoch);
    this.state = gauge(registry, STAGE.state);
    this.leftovers = counter(registry, STAGE.leftovers);
    this.coordinatorLost = counter(registry, STAGE.coordinatorLost);
    this.setRun = runInfo(registry);

    // Series that exist from the start, so rate() and "is it zero?" panels work before the
    // first batch or the first rejection.
    for (const layer of this.layerLabels.values()) {
      for (const phase of PHASES) {
        this.batches.inc({ phase, ...layer }, 0);
        this.samples.inc({ phase, ...layer }, 0);
        this.stepDuration.zero({ phase, ...layer });
      }
      this.loss.set(layer, NaN); // no batch yet
      this.nonfiniteLoss.inc(layer, 0);
      this.epoch.set(layer, 0);
      for (const polarity of POLARITIES) this.goodness.set({ polarity, ...layer }, NaN);
    }
    for (const reason of REJECT_REASONS) this.rejected.inc({ reason }, 0);
    this.setState('waiting');
  }

  /** A training batch done: counts, times, and this batch's loss and goodness. */
  onTrainStep(e: TrainStepEvent): void {
    const layer = this.step('train', e);
    if (!Number.isFinite(e.loss)) add(this.nonfiniteLoss, layer, 1);
    set(this.loss, layer, Number.isFinite(e.loss) ? e.loss : NaN);
    set(this.goodness, { polarity: 'pos', ...layer }, e.goodnessPos);
    set(this.goodness, { polarity: 'neg', ...layer }, e.goodnessNeg);
  }

  /** An evaluation batch done. */
  onEval(e: StepEvent): void {
    this.step('eval', e);
  }

  /** Idle time not followed by a step: receive timeouts, waits for markers or bad messages. */
  onInputWait(seconds: number): void {
    add(this.inputWait, {}, seconds);
  }

  /** A message received (before it is decoded: use kind 'invalid' if it does not decode). */
  onReceived(kind: string, bytes: number): void {
    add(this.messagesReceived, { kind: messageKind(kind) }, 1);
    add(this.bytesReceived, {}, bytes);
  }

  /** A message sent: downstream (train/eval/marker) or to the coordinator (stats, ...). */
  onSent(kind: string, bytes: number): void {
    add(this.messagesSent, { kind: messageKind(kind) }, 1);
    add(this.bytesSent, {}, bytes);
  }

  /**
   * The run this stage serves (ffx_run_info), undefined between runs. A coordinator's later
   * attempts (`<run>~1`, ...) are the same run.
   */
  onRun(id: string | undefined): void {
    this.setRun(id === undefined ? undefined : { id: id.replace(/~\d+$/, '') });
  }

  /** The stage's state now: its series reads 1, every other state's 0. */
  setState(state: StageState): void {
    for (const s of STAGE_STATES) this.state.set({ state: s }, s === state ? 1 : 0);
  }

  /** A message of a run the stage had already left, dropped unread. */
  onLeftover(): void {
    add(this.leftovers, {}, 1);
  }

  /** The run served was dropped: its coordinator went silent. */
  onCoordinatorLost(): void {
    add(this.coordinatorLost, {}, 1);
  }

  /** A message rejected with a protocol error code; unknown codes count as OTHER. */
  onRejected(code: string): void {
    add(this.rejected, { reason: rejectReason(code) }, 1);
  }

  /**
   * Where `ffx_stage_inbound_queue_depth` comes from: called at every scrape (default 0). A
   * source that throws reads as NaN, without failing the scrape.
   */
  setInboundQueueDepth(source: () => number): void {
    this.queueDepthSource = source;
  }

  /** Where `ffx_stage_inbound_queue_bytes` comes from (called at every scrape, default 0). */
  setInboundQueueBytes(source: () => number): void {
    this.queueBytesSource = source;
  }

  /** Counts a step of one layer; returns that layer's labels. */
  private step(phase: Phase, e: StepEvent): { layer?: string } {
    const layer = this.layerLabels.get(e.layer ?? this.layer);
    if (!layer) {
      throw new MetricsError(
        'METRICS_BAD_LAYER',
        `a step of layer ${e.layer}, which this stage (from layer ${this.layer}) does not hold`,
        e.layer,
      );
    }
    add(this.batches, { phase, ...layer }, 1);
    add(this.samples, { phase, ...layer }, e.samples);
    observe(this.stepDuration, { phase, ...layer }, e.stepSeconds);
    add(this.inputWait, {}, e.waitSeconds ?? 0);
    add(this.transport, {}, e.transportSeconds ?? 0);
    add(this.sendBlocked, {}, e.sendSeconds ?? 0);
    set(this.lastBatch, {}, this.now());
    if (e.epoch !== undefined) set(this.epoch, layer, e.epoch);
    return layer;
  }
}
