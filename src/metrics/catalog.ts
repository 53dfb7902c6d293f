// Every ffx_* metric, in one table: names, types, help and label names live here, and the
// classes that record them read this table, so METRIC_NAMES (which dashboards are checked
// against) cannot drift from what a scrape exposes. Conventions (prometheus.io/docs/practices/
// naming): prefix ffx_, base units (_seconds, _bytes), counters end in _total, and every label
// has a small bounded set of values, listed below.
import { PROTOCOL_ERROR_CODES } from '../transport/errors.js';
import { DATA_KINDS, type ControlType } from '../transport/wire.js';

export type MetricType = 'counter' | 'gauge' | 'histogram';

export interface MetricSpec {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  readonly labelNames: readonly string[];
  readonly buckets?: readonly number[];
}

export const PHASES = ['train', 'eval'] as const;
export type Phase = (typeof PHASES)[number];

export const POLARITIES = ['pos', 'neg'] as const;
export type Polarity = (typeof POLARITIES)[number];

/** The `reason` label of messages the coordinator drops (see coordinator/cluster.ts). */
export const DROP_REASONS = [
  'malformed',
  'foreign',
  'stale',
  'unregistered',
  'refused',
  'unauthenticated',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/** The `state` label: a stage's life (see stage/stage.ts). */
export const STAGE_STATES = [
  'waiting',
  'configured',
  'training',
  'evaluating',
  'between-runs',
  'closing',
] as const;
export type StageState = (typeof STAGE_STATES)[number];

const CONTROL_KINDS = [
  'hello',
  'config',
  'ready',
  'heartbeat',
  'stop',
  'abort',
  'error',
  'stats',
  'goodness',
  'ack',
  'rejected',
  'weights',
] as const satisfies readonly ControlType[];

/** The `kind` label: data kinds, control/result types, `invalid` (undecodable), `other`. */
export const MESSAGE_KINDS = [...DATA_KINDS, ...CONTROL_KINDS, 'invalid', 'other'] as const;
export type MessageKind = (typeof MESSAGE_KINDS)[number];

/**
 * The `reason` label of rejected messages: the protocol error codes, BAD_RUN (a stage's
 * message of another run, see stage.ts), UNAUTHENTICATED (a connection whose CurveZMQ key the
 * stage does not let in), and OTHER for any code not listed here, so a peer cannot grow the
 * label set.
 */
export const REJECT_REASONS = [
  ...PROTOCOL_ERROR_CODES,
  'BAD_RUN',
  'UNAUTHENTICATED',
  'OTHER',
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

/** The bounded `kind` label for a message kind or control type. */
export function messageKind(kind: string): MessageKind {
  return (MESSAGE_KINDS as readonly string[]).includes(kind) ? (kind as MessageKind) : 'other';
}

/** The bounded `reason` label for a protocol error code. */
export function rejectReason(code: string): RejectReason {
  return (REJECT_REASONS as readonly string[]).includes(code) ? (code as RejectReason) : 'OTHER';
}

/** A stage's step: 1 ms (a small layer on a GPU) .. 30 s (a wide layer, big batch, pure JS). */
export const STEP_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
] as const;

/** An epoch: a second (a toy run) .. two hours. */
export const EPOCH_BUCKETS = [
  1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200,
] as const;

export const BUILD_INFO = {
  name: 'ffx_build_info',
  type: 'gauge',
  help: 'Always 1; labels say which ffx, Node.js and tensor backend this process runs.',
  labelNames: ['version', 'node', 'backend'],
} as const satisfies MetricSpec;

export const RUN_INFO = {
  name: 'ffx_run_info',
  type: 'gauge',
  help: 'Always 1; labels say which run this process serves now (run id; the config name at the coordinator). No series between runs. Dashboards join on it to tell runs apart.',
  labelNames: ['run', 'name'],
} as const satisfies MetricSpec;

/**
 * A scrape's age. The process renders its metrics between steps (and once a second); a scrape
 * that comes during a long step gets the last rendering, and this says how old it is.
 */
export const RENDERING_AGE = {
  name: 'ffx_metrics_rendering_age_seconds',
  type: 'gauge',
  help: 'How old the numbers of this scrape are: 0 when rendered for it, else the age of the last rendering (the process was in a step).',
  labelNames: [],
} as const satisfies MetricSpec;

export const STAGE = {
  batches: {
    name: 'ffx_stage_batches_total',
    type: 'counter',
    help: 'Batches this stage has processed.',
    labelNames: ['phase', 'layer'],
  },
  samples: {
    name: 'ffx_stage_samples_total',
    type: 'counter',
    help: 'Samples this stage has processed: positive samples (train), test images (eval).',
    labelNames: ['phase', 'layer'],
  },
  stepDuration: {
    name: 'ffx_stage_step_duration_seconds',
    type: 'histogram',
    help: 'Compute time of one batch (forward, loss and update for train).',
    labelNames: ['phase', 'layer'],
    buckets: STEP_BUCKETS,
  },
  inputWait: {
    name: 'ffx_stage_input_wait_seconds_total',
    type: 'counter',
    help: 'Time idle waiting for input: the pipeline bubble.',
    labelNames: [],
  },
  sendBlocked: {
    name: 'ffx_stage_send_blocked_seconds_total',
    type: 'counter',
    help: 'Time blocked sending downstream: backpressure from the next stage.',
    labelNames: [],
  },
  transport: {
    name: 'ffx_stage_transport_seconds_total',
    type: 'counter',
    help: 'Time decoding and encoding messages.',
    labelNames: [],
  },
  messagesReceived: {
    name: 'ffx_stage_messages_received_total',
    type: 'counter',
    help: 'Messages received, by kind.',
    labelNames: ['kind'],
  },
  messagesSent: {
    name: 'ffx_stage_messages_sent_total',
    type: 'counter',
    help: 'Messages sent, by kind.',
    labelNames: ['kind'],
  },
  bytesReceived: {
    name: 'ffx_stage_bytes_received_total',
    type: 'counter',
    help: 'Bytes received (all frames of a message).',
    labelNames: [],
  },
  bytesSent: {
    name: 'ffx_stage_bytes_sent_total',
    type: 'counter',
    help: 'Bytes sent (all frames of a message).',
    labelNames: [],
  },
  rejected: {
    name: 'ffx_stage_rejected_messages_total',
    type: 'counter',
    help: 'Messages rejected, by protocol error code.',
    labelNames: ['reason'],
  },
  loss: {
    name: 'ffx_stage_loss',
    type: 'gauge',
    help: 'Loss of the last training batch (NaN if it was not finite).',
    labelNames: ['layer'],
  },
  goodness: {
    name: 'ffx_stage_goodness',
    type: 'gauge',
    help: 'Mean goodness of the last training batch, for positive and negative samples (competitive layers: of the true class and of each other class).',
    labelNames: ['polarity', 'layer'],
  },
  nonfiniteLoss: {
    name: 'ffx_stage_nonfinite_loss_total',
    type: 'counter',
    help: 'Training batches whose loss was NaN or infinite.',
    labelNames: ['layer'],
  },
  lastBatch: {
    name: 'ffx_stage_last_batch_timestamp_seconds',
    type: 'gauge',
    help: 'Unix time of the last batch processed (train or eval).',
    labelNames: [],
  },
  queueDepth: {
    name: 'ffx_stage_inbound_queue_depth',
    type: 'gauge',
    help: 'Messages received but not yet handled, at scrape time.',
    labelNames: [],
  },
  queueBytes: {
    name: 'ffx_stage_inbound_queue_bytes',
    type: 'gauge',
    help: 'Bytes of the messages received but not yet handled, at scrape time.',
    labelNames: [],
  },
  state: {
    name: 'ffx_stage_state',
    type: 'gauge',
    help: 'The stage state: 1 for the current one (waiting, configured, training, evaluating, between-runs, closing), 0 for the others.',
    labelNames: ['state'],
  },
  coordinatorLost: {
    name: 'ffx_stage_coordinator_lost_total',
    type: 'counter',
    help: 'Runs this stage dropped because their coordinator went silent (killed, hung, cut off) mid-run.',
    labelNames: [],
  },
  leftovers: {
    name: 'ffx_stage_leftover_messages_total',
    type: 'counter',
    help: 'Messages of a run this stage had already left (aborted or ended), dropped unread.',
    labelNames: [],
  },
  epoch: {
    name: 'ffx_stage_epoch',
    type: 'gauge',
    help: 'Epoch (1-based) of the last batch processed.',
    labelNames: ['layer'],
  },
} as const satisfies Record<string, MetricSpec>;

export const COORDINATOR = {
  stagesExpected: {
    name: 'ffx_coordinator_stages_expected',
    type: 'gauge',
    help: 'Layers the run needs a stage for (a stage may hold several).',
    labelNames: [],
  },
  stagesRegistered: {
    name: 'ffx_coordinator_stages_registered',
    type: 'gauge',
    help: 'Layers whose stage has said hello.',
    labelNames: [],
  },
  stagesUp: {
    name: 'ffx_coordinator_stages_up',
    type: 'gauge',
    help: 'Layers whose registered stage was heard from within the heartbeat timeout.',
    labelNames: [],
  },
  epoch: {
    name: 'ffx_coordinator_epoch',
    type: 'gauge',
    help: 'Epoch (1-based) in progress.',
    labelNames: [],
  },
  progress: {
    name: 'ffx_coordinator_progress_ratio',
    type: 'gauge',
    help: 'Fraction of the run done, 0..1.',
    labelNames: [],
  },
  batchesSent: {
    name: 'ffx_coordinator_batches_sent_total',
    type: 'counter',
    help: 'Training batches sent to the first stage.',
    labelNames: [],
  },
  samples: {
    name: 'ffx_coordinator_samples_total',
    type: 'counter',
    help: 'Positive training samples sent to the first stage.',
    labelNames: [],
  },
  learningRate: {
    name: 'ffx_coordinator_learning_rate',
    type: 'gauge',
    help: 'Learning rate at the end of the last epoch.',
    labelNames: [],
  },
  evalAccuracy: {
    name: 'ffx_coordinator_eval_accuracy',
    type: 'gauge',
    help: 'Test accuracy of the last evaluation, by layer set (all, skip-first, layerN, layers1-K).',
    labelNames: ['set'],
  },
  layerLoss: {
    name: 'ffx_coordinator_layer_loss',
    type: 'gauge',
    help: 'Mean loss of a layer over the last epoch.',
    labelNames: ['layer'],
  },
  layerGoodness: {
    name: 'ffx_coordinator_layer_goodness',
    type: 'gauge',
    help: 'Mean goodness of a layer over the last epoch, for positive and negative samples (competitive layers: of the true class and of each other class).',
    labelNames: ['layer', 'polarity'],
  },
  stageLost: {
    name: 'ffx_coordinator_stage_lost_total',
    type: 'counter',
    help: 'Stages that stopped answering (no heartbeat within the timeout).',
    labelNames: ['layer'],
  },
  stageStalled: {
    name: 'ffx_coordinator_stage_stalled_total',
    type: 'counter',
    help: 'Stages that kept heartbeating but made no progress with work outstanding, past the progress timeout.',
    labelNames: ['layer'],
  },
  heartbeatAge: {
    name: 'ffx_coordinator_stage_heartbeat_age_seconds',
    type: 'gauge',
    help: 'Seconds since the coordinator last heard from a stage (heartbeat or result): no heartbeat means lost.',
    labelNames: ['layer'],
  },
  progressAge: {
    name: 'ffx_coordinator_stage_progress_age_seconds',
    type: 'gauge',
    help: 'Seconds a stage has had work outstanding without reporting a result (0 when it has none): no progress means stuck or slow.',
    labelNames: ['layer'],
  },
  recoveries: {
    name: 'ffx_coordinator_recoveries_total',
    type: 'counter',
    help: 'Rollbacks to the last checkpoint after a lost or stuck stage.',
    labelNames: [],
  },
  batchesTrained: {
    name: 'ffx_coordinator_batches_trained',
    type: 'gauge',
    help: "Batches a layer has trained in the run's final lineage: each (epoch, batch) once; a rollback takes back what it discards.",
    labelNames: ['layer'],
  },
  batchesReplayed: {
    name: 'ffx_coordinator_batches_replayed_total',
    type: 'counter',
    help: 'Batches a layer trained in a lineage a rollback discarded, and so trained again.',
    labelNames: ['layer'],
  },
  duplicateReports: {
    name: 'ffx_coordinator_duplicate_reports_total',
    type: 'counter',
    help: 'Reports of a (layer, epoch, batch) already counted, dropped.',
    labelNames: ['layer'],
  },
  dropped: {
    name: 'ffx_coordinator_dropped_messages_total',
    type: 'counter',
    help: 'Messages the coordinator dropped unread, by reason: malformed, foreign (not from the stage registered for the layer), stale (of another run), unregistered (a heartbeat of a stage it does not know), refused (a hello), unauthenticated (a connection whose CurveZMQ key it does not trust, refused before any message).',
    labelNames: ['reason'],
  },
  rejected: {
    name: 'ffx_coordinator_rejected_messages_total',
    type: 'counter',
    help: 'Messages that stages reported rejecting, by layer and protocol error code.',
    labelNames: ['layer', 'reason'],
  },
  lastBatch: {
    name: 'ffx_coordinator_last_batch_timestamp_seconds',
    type: 'gauge',
    help: 'Unix time the last training batch was sent.',
    labelNames: [],
  },
  epochDuration: {
    name: 'ffx_coordinator_epoch_duration_seconds',
    type: 'histogram',
    help: 'Wall time of one epoch (training, without evaluation).',
    labelNames: [],
    buckets: EPOCH_BUCKETS,
  },
} as const satisfies Record<string, MetricSpec>;

/** Every ffx_* metric family this module defines, with its type. */
export const METRIC_SPECS: readonly MetricSpec[] = [
  BUILD_INFO,
  RUN_INFO,
  RENDERING_AGE,
  ...Object.values(STAGE),
  ...Object.values(COORDINATOR),
];

/** Every ffx_* metric family name (histograms by base name, without _bucket/_sum/_count). */
export const METRIC_NAMES: readonly string[] = METRIC_SPECS.map((s) => s.name);

/**
 * Every series name a scrape can contain for ffx_* metrics: histograms expose _bucket, _sum and
 * _count. A PromQL expression may name any of these.
 */
export const METRIC_SERIES_NAMES: readonly string[] = METRIC_SPECS.flatMap((s) =>
  s.type === 'histogram' ? [`${s.name}_bucket`, `${s.name}_sum`, `${s.name}_count`] : [s.name],
);
