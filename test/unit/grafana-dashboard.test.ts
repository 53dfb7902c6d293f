// The Grafana dashboard is checked against what ffx actually exports: every query must parse as
// PromQL, name only series a scrape can contain (the catalog, prom-client's default metrics, or
// Prometheus' `up`), filter by the dashboard's variables, and use counters only through
// rate/increase over $__rate_interval. A renamed metric then fails here, not on a blank panel.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parser } from '@prometheus-io/lezer-promql';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { METRIC_NAMES, METRIC_SERIES_NAMES, METRIC_SPECS } from '../../src/metrics/catalog.js';
import { ROOT } from '../helpers/spawn.js';

const DASHBOARD_PATH = join(ROOT, 'grafana', 'dashboards', 'ffx.json');

type SyntaxNode = ReturnType<typeof parser.parse>['topNode'];

interface Target {
  refId?: string;
  expr?: string;
  legendFormat?: string;
  datasource?: { uid?: string };
}

interface Panel {
  id?: number;
  type: string;
  title?: string;
  description?: string;
  datasource?: { type?: string; uid?: string };
  fieldConfig?: {
    defaults?: { unit?: string };
    overrides?: {
      matcher: { id: string; options: string };
      properties: { id: string; value: unknown }[];
    }[];
  };
  gridPos?: { h: number; w: number; x: number; y: number };
  targets?: Target[];
  panels?: Panel[];
}

interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
  multi?: boolean;
  includeAll?: boolean;
  allValue?: string;
}

interface Dashboard {
  uid: string;
  title: string;
  templating: { list: Variable[] };
  panels: Panel[];
}

const dashboard = JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as Dashboard;

/** Every panel but rows, including panels nested in collapsed rows. */
function contentPanels(panels: readonly Panel[]): Panel[] {
  return panels.flatMap((p) =>
    p.type === 'row' ? contentPanels(p.panels ?? []) : [p, ...contentPanels(p.panels ?? [])],
  );
}

const PANELS = contentPanels(dashboard.panels);

interface Query {
  panel: Panel;
  expr: string;
}

const QUERIES: Query[] = PANELS.flatMap((panel) =>
  (panel.targets ?? []).map((t) => {
    assert.ok(t.expr, `panel "${panel.title}" target ${t.refId} has no expr`);
    return { panel, expr: t.expr };
  }),
);

/** What Grafana would send: variables replaced by plausible values. */
function substitute(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '5m')
    .replaceAll('$job', '.*')
    .replaceAll('$instance', '.*')
    .replaceAll('$layer', '.*');
}

/**
 * The source parsed to inspect selectors: `$job`-style variables stay as they are (inside a quoted
 * matcher value they are valid PromQL strings, so matchers can be checked for the variable
 * itself); only the range needs a value.
 */
function keepingVariables(expr: string): string {
  return expr.replaceAll('$__rate_interval', '5m');
}

function errorsIn(expr: string): string[] {
  const errors: string[] = [];
  const cursor = parser.parse(expr).cursor();
  do {
    if (cursor.node.type.isError) {
      errors.push(`at ${cursor.from}: ${JSON.stringify(expr.slice(cursor.from, cursor.to + 10))}`);
    }
  } while (cursor.next());
  return errors;
}

interface Selector {
  metric: string;
  matchers: Map<string, { op: string; value: string }>;
  node: SyntaxNode;
  /** The text `node` positions refer to. */
  source: string;
}

function selectorsIn(expr: string): Selector[] {
  const source = keepingVariables(expr);
  const tree = parser.parse(source);
  const text = (n: SyntaxNode): string => source.slice(n.from, n.to);
  const selectors: Selector[] = [];
  tree.iterate({
    enter(ref) {
      if (ref.name !== 'VectorSelector') return;
      const node = ref.node;
      const id = node.getChild('Identifier');
      assert.ok(id, `a selector without a metric name in ${expr}`);
      const matchers = new Map<string, { op: string; value: string }>();
      for (const m of node.getChild('LabelMatchers')?.getChildren('UnquotedLabelMatcher') ?? []) {
        const name = m.getChild('LabelName');
        const op = m.getChild('MatchOp');
        const value = m.getChild('StringLiteral');
        assert.ok(name && op && value, `malformed matcher ${text(m)} in ${expr}`);
        matchers.set(text(name), { op: text(op), value: JSON.parse(text(value)) as string });
      }
      selectors.push({ metric: text(id), matchers, node, source });
    },
  });
  return selectors;
}

/** The function a selector's range vector is passed to, if the selector has a range. */
function rangeFunction(selector: Selector): string | undefined {
  const matrix = selector.node.parent;
  if (matrix?.name !== 'MatrixSelector') return undefined;
  const call = matrix.parent?.parent;
  if (call?.name !== 'FunctionCall') return undefined;
  const fn = call.getChild('FunctionIdentifier');
  return fn ? selector.source.slice(fn.from, fn.to) : undefined;
}

async function defaultMetricSeriesNames(): Promise<Set<string>> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const metrics = await registry.getMetricsAsJSON();
  registry.clear();
  return new Set(
    metrics.flatMap((m) =>
      String(m.type) === 'histogram'
        ? [`${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`]
        : [m.name],
    ),
  );
}

const LAYERED = new Set(
  METRIC_SPECS.filter(
    (s) => s.name.startsWith('ffx_stage_') || s.labelNames.includes('layer'),
  ).flatMap((s) =>
    (s.type === 'histogram' ? ['_bucket', '_sum', '_count'] : ['']).map((x) => s.name + x),
  ),
);

describe('grafana dashboard ffx.json', () => {
  it('has the fixed uid and title', () => {
    assert.equal(dashboard.uid, 'ffx-overview');
    assert.equal(dashboard.title, 'ffx — Forward-Forward training');
  });

  it('defines the datasource, job, instance, run and layer variables', () => {
    const vars = new Map(dashboard.templating.list.map((v) => [v.name, v]));
    const query = (v: Variable | undefined) =>
      typeof v?.query === 'string' ? v.query : (v?.query?.query ?? '');
    assert.equal(vars.get('datasource')?.type, 'datasource');
    assert.equal(vars.get('datasource')?.query, 'prometheus');
    assert.equal(query(vars.get('job')), 'label_values(ffx_build_info, job)');
    assert.equal(
      query(vars.get('instance')),
      'label_values(ffx_build_info{job=~"$job"}, instance)',
    );
    assert.equal(
      query(vars.get('layer')),
      'label_values(ffx_stage_batches_total{job=~"$job"}, layer)',
    );
    assert.equal(
      query(vars.get('run')),
      'label_values(ffx_run_info{job=~"$job", instance=~"$instance"}, run)',
    );
    for (const name of ['job', 'instance', 'run', 'layer']) {
      assert.equal(vars.get(name)?.multi, true, `${name} is multi-value`);
      assert.equal(vars.get(name)?.includeAll, true, `${name} includes All`);
    }
    // All jobs: the coordinators' and the stages' (deploy/prometheus scrapes them apart).
    assert.equal(vars.get('job')?.allValue, 'ffx.*');
  });

  it('tells runs apart: training series join ffx_run_info, filtered by $run, {{run}} in the legend', () => {
    const training = new Set([
      'ffx_stage_loss',
      'ffx_stage_goodness',
      'ffx_coordinator_layer_loss',
      'ffx_coordinator_layer_goodness',
      'ffx_coordinator_eval_accuracy',
      'ffx_coordinator_learning_rate',
      'ffx_coordinator_progress_ratio',
      'ffx_coordinator_epoch',
      'ffx_stage_samples_total',
      'ffx_stage_step_duration_seconds_bucket',
      'ffx_stage_input_wait_seconds_total',
      'ffx_stage_send_blocked_seconds_total',
      'ffx_stage_transport_seconds_total',
    ]);
    let joined = 0;
    for (const p of PANELS) {
      for (const t of p.targets ?? []) {
        const selectors = selectorsIn(t.expr ?? '');
        const info = selectors.filter((x) => x.metric === 'ffx_run_info');
        if (!selectors.some((x) => training.has(x.metric))) continue;
        const where = `"${p.title}": ${t.expr}`;
        assert.ok(info.length > 0, `${where} does not join ffx_run_info`);
        for (const i of info) assert.deepEqual(i.matchers.get('run'), { op: '=~', value: '$run' });
        assert.match(t.expr!, /group_left \(run\) ffx_run_info/, where);
        assert.match(t.legendFormat ?? '', /^\{\{run\}\}/, `${where}: legend ${t.legendFormat}`);
        joined++;
      }
    }
    assert.ok(joined >= 14, `${joined} queries`);
  });

  it('draws sent bytes below the axis with an override, not a negated query', () => {
    for (const p of PANELS) {
      for (const t of p.targets ?? []) {
        assert.ok(!/^\s*-/.test(t.expr ?? ''), `panel "${p.title}" negates ${t.expr}`);
      }
    }
    const bytes = PANELS.find((p) => p.title === 'Bytes received / sent per stage')!;
    const sent = bytes.targets!.find((t) => t.expr!.includes('ffx_stage_bytes_sent_total'))!;
    const override = bytes.fieldConfig!.overrides!.find((o) => o.matcher.options === sent.refId);
    assert.deepEqual(override?.matcher.id, 'byFrameRefID');
    assert.deepEqual(override?.properties, [{ id: 'custom.transform', value: 'negative-Y' }]);
  });

  it('counts throughput in samples/s, and its datasource steps at the scrape interval', () => {
    const throughput = PANELS.find((p) => p.title === 'Training throughput per stage')!;
    assert.equal(throughput.fieldConfig?.defaults?.unit, 'suffix: samples/s');
    const datasource = readFileSync(
      join(ROOT, 'grafana', 'provisioning', 'datasources', 'prometheus.yaml'),
      'utf8',
    );
    const prometheus = readFileSync(join(ROOT, 'deploy', 'prometheus', 'prometheus.yml'), 'utf8');
    const scrape = /scrape_interval: (\w+)/.exec(prometheus)![1];
    assert.equal(/timeInterval: (\w+)/.exec(datasource)![1], scrape);
  });

  it('gives every panel a title, a description, a unit, the datasource variable and queries', () => {
    assert.ok(PANELS.length > 0);
    for (const p of PANELS) {
      const where = `panel ${p.id} "${p.title}"`;
      assert.ok(p.title?.trim(), `panel ${p.id} has no title`);
      assert.ok(p.description?.trim(), `${where} has no description`);
      assert.ok(p.fieldConfig?.defaults?.unit?.trim(), `${where} has no unit`);
      assert.equal(p.datasource?.uid, '${datasource}', `${where} datasource`);
      assert.ok(['timeseries', 'stat', 'table'].includes(p.type), `${where} type ${p.type}`);
      assert.ok((p.targets ?? []).length > 0, `${where} has no targets`);
      for (const t of p.targets ?? []) {
        assert.equal(t.datasource?.uid, '${datasource}', `${where} target ${t.refId} datasource`);
      }
    }
  });

  it('lays panels out on the 24-column grid without overlaps', () => {
    const all = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
    const cells = new Set<string>();
    for (const p of all) {
      const g = p.gridPos;
      assert.ok(g, `panel ${p.id} has no gridPos`);
      assert.ok(
        g.x >= 0 && g.w > 0 && g.x + g.w <= 24,
        `panel ${p.id} gridPos ${JSON.stringify(g)}`,
      );
      for (let y = g.y; y < g.y + g.h; y++) {
        for (let x = g.x; x < g.x + g.w; x++) {
          const cell = `${x},${y}`;
          assert.ok(!cells.has(cell), `panel ${p.id} "${p.title}" overlaps another at ${cell}`);
          cells.add(cell);
        }
      }
    }
  });

  it('writes every query as valid PromQL', () => {
    assert.ok(QUERIES.length > 0);
    for (const { panel, expr } of QUERIES) {
      assert.deepEqual(errorsIn(substitute(expr)), [], `"${panel.title}": ${expr}`);
    }
  });

  it('the parse check catches a broken query', () => {
    assert.notDeepEqual(errorsIn(substitute('rate(ffx_stage_loss{job=~"$job"[5m])')), []);
    assert.notDeepEqual(errorsIn('sum by (layer (up)'), []);
  });

  it('names only series that ffx, prom-client defaults or Prometheus produce', async () => {
    const known = new Set([...METRIC_SERIES_NAMES, ...(await defaultMetricSeriesNames()), 'up']);
    for (const { panel, expr } of QUERIES) {
      const selectors = selectorsIn(expr);
      for (const s of selectors) {
        assert.ok(known.has(s.metric), `"${panel.title}" uses unknown metric ${s.metric}: ${expr}`);
        if (s.metric.startsWith('ffx_')) {
          assert.ok(METRIC_SERIES_NAMES.includes(s.metric), `${s.metric} is not in the catalog`);
        }
      }
    }
  });

  it('filters every selector by job and instance, and per-layer series by layer', () => {
    for (const { panel, expr } of QUERIES) {
      for (const s of selectorsIn(expr)) {
        const where = `"${panel.title}" ${s.metric}: ${expr}`;
        assert.deepEqual(s.matchers.get('job'), { op: '=~', value: '$job' }, where);
        assert.deepEqual(s.matchers.get('instance'), { op: '=~', value: '$instance' }, where);
        if (LAYERED.has(s.metric)) {
          assert.deepEqual(s.matchers.get('layer'), { op: '=~', value: '$layer' }, where);
        }
      }
    }
  });

  it('uses [$__rate_interval] for every range', () => {
    for (const { panel, expr } of QUERIES) {
      for (const [, range] of expr.matchAll(/\[([^\]]*)\]/g)) {
        assert.equal(range, '$__rate_interval', `"${panel.title}": ${expr}`);
      }
      for (const s of selectorsIn(expr)) {
        const fn = rangeFunction(s);
        if (s.node.parent?.name === 'MatrixSelector') {
          assert.ok(fn === 'rate' || fn === 'increase', `"${panel.title}" ${fn}(): ${expr}`);
        }
      }
    }
  });

  it('reads counters only through rate/increase, except in stat panels of totals', () => {
    for (const { panel, expr } of QUERIES) {
      const showsTotal = panel.type === 'stat' && /\btotal\b/i.test(panel.title ?? '');
      for (const s of selectorsIn(expr)) {
        if (!s.metric.endsWith('_total') || showsTotal) continue;
        const fn = rangeFunction(s);
        assert.ok(
          fn === 'rate' || fn === 'increase',
          `"${panel.title}" reads counter ${s.metric} raw: ${expr}`,
        );
      }
    }
  });

  it('shows every ffx metric family somewhere', () => {
    const used = new Set(QUERIES.flatMap(({ expr }) => selectorsIn(expr).map((s) => s.metric)));
    const missing = METRIC_NAMES.filter(
      (name) => ![name, `${name}_bucket`, `${name}_sum`, `${name}_count`].some((n) => used.has(n)),
    );
    assert.deepEqual(missing, [], `metrics on no panel: ${missing.join(', ')}`);
  });
});
