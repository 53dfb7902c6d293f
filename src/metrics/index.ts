// Prometheus metrics for ffx: one registry per process (createRegistry), what a stage and the
// coordinator record (StageMetrics, CoordinatorMetrics), and the scrape endpoint
// (MetricsServer). The metric catalog, with every name, is in catalog.ts.
export {
  MetricsError,
  isMetricsError,
  METRICS_ERROR_CODES,
  type MetricsErrorCode,
} from './errors.js';
export {
  METRIC_NAMES,
  METRIC_SERIES_NAMES,
  METRIC_SPECS,
  MESSAGE_KINDS,
  REJECT_REASONS,
  PHASES,
  POLARITIES,
  STAGE_STATES,
  DROP_REASONS,
  STEP_BUCKETS,
  EPOCH_BUCKETS,
  type MetricSpec,
  type MetricType,
  type MessageKind,
  type RejectReason,
  type Phase,
  type Polarity,
  type StageState,
  type DropReason,
} from './catalog.js';
export {
  createRegistry,
  registryInfo,
  type BuildInfo,
  type RegistryInfo,
  type Role,
} from './registry.js';
export {
  StageMetrics,
  type StageMetricsOptions,
  type StepEvent,
  type TrainStepEvent,
} from './stage-metrics.js';
export {
  CoordinatorMetrics,
  type CoordinatorMetricsOptions,
  type EpochRecordLike,
  type EvalResultLike,
  type StageAges,
  type StagesSnapshot,
} from './coordinator-metrics.js';
export {
  DEFAULT_METRICS_PORT,
  MetricsServer,
  type MetricsServerOptions,
} from './metrics-server.js';
