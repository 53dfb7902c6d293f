// A process's metrics registry: always a fresh prom-client Registry (never the global one, so
// tests and several roles in one process do not share state), with default labels naming the
// role (and a stage's layer), Node's standard process_*/nodejs_* metrics under their usual names
// (so stock Grafana Node.js panels work), ffx_build_info and ffx_metrics_rendering_age_seconds.
//
// Also the small helpers the metric classes record through: they create metrics from the
// catalog and never throw on a value, because a NaN loss must not break a scrape or a stage.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BUILD_INFO, RENDERING_AGE, RUN_INFO } from './catalog.js';
import { MetricsError } from './errors.js';
import { ffxPackage } from '../package.js';

export type Role = 'stage' | 'coordinator';

export interface BuildInfo {
  /** ffx version (default: from ffx's package.json, or 'unknown'). */
  version?: string;
  /** Tensor backend in use: 'tensorflow', 'wasm', 'cpu' (default 'unknown'). */
  backend?: string;
}

/** What createRegistry made a registry for, so StageMetrics can check it gets the right one. */
export interface RegistryInfo {
  role: Role;
  labels: Readonly<Record<string, string>>;
}

const registries = new WeakMap<Registry, RegistryInfo>();

/** Role and default labels of a registry made by createRegistry; undefined for any other. */
export function registryInfo(registry: Registry): RegistryInfo | undefined {
  return registries.get(registry);
}

// Prometheus label names; names starting with __ are reserved for Prometheus itself.
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/**
 * A new registry for one process. `labels` become default labels on every series (for a stage,
 * `layer` is required: `{ layer: '2' }`); `role` is added from the first argument.
 */
export function createRegistry(
  role: Role,
  labels: Record<string, string> = {},
  build: BuildInfo = {},
): Registry {
  if (role !== 'stage' && role !== 'coordinator') {
    throw new MetricsError(
      'METRICS_BAD_ROLE',
      `metrics role must be 'stage' or 'coordinator'; got ${String(role)}`,
      role,
    );
  }
  for (const [name, value] of Object.entries(labels)) {
    if (!LABEL_NAME.test(name) || name.startsWith('__')) {
      throw new MetricsError(
        'METRICS_BAD_LABEL',
        `metrics label name must match ${LABEL_NAME.source} and not start with __; got ${JSON.stringify(name)}`,
        name,
      );
    }
    if (name === 'role') {
      throw new MetricsError(
        'METRICS_BAD_LABEL',
        `metrics label 'role' is set from the role argument; got labels.role = ${JSON.stringify(value)}`,
        value,
      );
    }
    if (typeof value !== 'string' || value === '') {
      throw new MetricsError(
        'METRICS_BAD_LABEL',
        `metrics label ${name} must be a non-empty string; got ${JSON.stringify(value)}`,
        value,
      );
    }
  }
  if (role === 'stage' && !isLayer(Number(labels.layer))) {
    throw new MetricsError(
      'METRICS_BAD_LAYER',
      `a stage registry needs labels.layer, a positive integer; got ${JSON.stringify(labels.layer)}`,
      labels.layer,
    );
  }
  if (role === 'coordinator' && 'layer' in labels) {
    // Coordinator metrics carry their own per-layer `layer` label.
    throw new MetricsError(
      'METRICS_BAD_LABEL',
      `a coordinator registry cannot have a default 'layer' label; got ${JSON.stringify(labels.layer)}`,
      labels.layer,
    );
  }
  const registry = new Registry();
  const defaults = { role, ...labels };
  registry.setDefaultLabels(defaults);
  registries.set(registry, { role, labels: defaults });
  collectDefaultMetrics({ register: registry });
  const info = gauge(registry, BUILD_INFO);
  info.set(
    {
      version: build.version ?? ffxPackage()?.version ?? 'unknown',
      node: process.version,
      backend: build.backend ?? 'unknown',
    },
    1,
  );
  // 0 here; the metrics server's thread writes the age of the rendering it serves.
  gauge(registry, RENDERING_AGE).set(0);
  return registry;
}

/**
 * ffx_run_info on `registry`: the setter makes `run` (and its config `name`, if known) the run
 * this process serves, or clears it with undefined. A run id that came over the network is
 * cut to 64 characters.
 */
export function runInfo(registry: Registry): (run?: { id: string; name?: string }) => void {
  const info = gauge(registry, RUN_INFO);
  return (run) => {
    info.reset();
    if (run) info.set({ run: run.id.slice(0, 64), name: run.name ?? '' }, 1);
  };
}

export function isLayer(n: number): boolean {
  return Number.isInteger(n) && n >= 1;
}

interface Spec<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
}

// A metric registered twice on one registry is a wiring bug (two StageMetrics on one registry).
function registering<T>(registry: Registry, name: string, make: () => T): T {
  if (registry.getSingleMetric(name)) {
    throw new MetricsError(
      'METRICS_DUPLICATE',
      `metric ${name} is already registered on this registry (one StageMetrics or CoordinatorMetrics per registry)`,
      name,
    );
  }
  return make();
}

export function counter<L extends string>(registry: Registry, spec: Spec<L>): Counter<L> {
  return registering(
    registry,
    spec.name,
    () =>
      new Counter<L>({
        name: spec.name,
        help: spec.help,
        labelNames: spec.labelNames,
        registers: [registry],
      }),
  );
}

export function gauge<L extends string>(
  registry: Registry,
  spec: Spec<L>,
  collect?: (this: Gauge<L>) => void,
): Gauge<L> {
  return registering(
    registry,
    spec.name,
    () =>
      new Gauge<L>({
        name: spec.name,
        help: spec.help,
        labelNames: spec.labelNames,
        registers: [registry],
        ...(collect ? { collect } : {}),
      }),
  );
}

export function histogram<L extends string>(
  registry: Registry,
  spec: Spec<L> & { readonly buckets: readonly number[] },
): Histogram<L> {
  return registering(
    registry,
    spec.name,
    () =>
      new Histogram<L>({
        name: spec.name,
        help: spec.help,
        labelNames: spec.labelNames,
        buckets: [...spec.buckets],
        registers: [registry],
      }),
  );
}

type Labels<L extends string> = Partial<Record<L, string>>;

/** Adds `value` when it is a finite, non-negative number; anything else is dropped. */
export function add<L extends string>(c: Counter<L>, labels: Labels<L>, value: number): void {
  // prom-client throws on Infinity and on negatives, and silently adds NaN (poisoning the
  // counter for good): a counter only ever takes finite increments.
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) c.inc(labels, value);
}

/** Sets the gauge; a value that is not a number becomes NaN, which a scrape renders. */
export function set<L extends string>(g: Gauge<L>, labels: Labels<L>, value: number): void {
  g.set(labels, typeof value === 'number' ? value : NaN);
}

/** Observes a finite, non-negative value; anything else is dropped (prom-client would throw). */
export function observe<L extends string>(h: Histogram<L>, labels: Labels<L>, value: number): void {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) h.observe(labels, value);
}

/** Calls a point-in-time source; a source that throws or returns a non-number reads as NaN. */
export function sample(source: () => number): number {
  try {
    const v = source();
    return typeof v === 'number' ? v : NaN;
  } catch {
    return NaN;
  }
}
