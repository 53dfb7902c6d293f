import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { register as globalRegistry, type Registry } from 'prom-client';
import { EvalAccumulator } from '../../src/core/predict.js';
import {
  CoordinatorMetrics,
  METRIC_NAMES,
  METRIC_SERIES_NAMES,
  METRIC_SPECS,
  REJECT_REASONS,
  StageMetrics,
  createRegistry,
  isMetricsError,
  type MetricsErrorCode,
  type TrainStepEvent,
} from '../../src/metrics/index.js';
import { ROOT } from '../helpers/spawn.js';

// ---------------------------------------------------------------------------------------------
// A strict parser for the Prometheus text format (0.0.4): any line it cannot read fails the test.
// ---------------------------------------------------------------------------------------------

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE_LINE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: -?\\d+)?$`);
const LABEL_PAIR = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y;

function parseValue(text: string, line: string): number {
  // Go's strconv.ParseFloat, which Prometheus uses, takes NaN and Inf in any case.
  if (/^nan$/i.test(text)) return NaN;
  if (/^\+?inf$/i.test(text)) return Infinity;
  if (/^-inf$/i.test(text)) return -Infinity;
  assert.match(text, /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/, `bad value in: ${line}`);
  return Number(text);
}

function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  LABEL_PAIR.lastIndex = 0;
  while (LABEL_PAIR.lastIndex < text.length) {
    const m = LABEL_PAIR.exec(text);
    assert.ok(m, `bad labels in: ${line}`);
    assert.ok(!(m[1]! in labels), `duplicate label ${m[1]} in: ${line}`);
    labels[m[1]!] = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
  }
  return labels;
}

function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  let current: Family | undefined;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (meta) {
      const [, what, name, rest] = meta as unknown as [string, string, string, string];
      if (!current || current.name !== name) {
        assert.ok(!families.has(name), `family ${name} appears twice`);
        current = { name, type: 'untyped', help: '', samples: [] };
        families.set(name, current);
      }
      if (what === 'HELP') current.help = rest;
      else {
        assert.match(rest, /^(counter|gauge|histogram|summary|untyped)$/, line);
        current.type = rest;
      }
      continue;
    }
    assert.ok(!line.startsWith('#'), `unexpected comment: ${line}`);
    const m = SAMPLE_LINE.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const [, name, labelText, valueText] = m as unknown as [
      string,
      string,
      string | undefined,
      string,
    ];
    assert.ok(current, `sample before any TYPE: ${line}`);
    const suffixes = current.type === 'histogram' ? ['_bucket', '_sum', '_count'] : [''];
    assert.ok(
      suffixes.some((s) => name === current!.name + s),
      `sample ${name} is not of family ${current.name} (${current.type})`,
    );
    current.samples.push({
      name,
      labels: labelText ? parseLabels(labelText, line) : {},
      value: parseValue(valueText, line),
    });
  }
  return families;
}

async function scrape(registry: Registry): Promise<Map<string, Family>> {
  return parseExposition(await registry.metrics());
}

/** The value of the one series of `name` whose labels include `labels`. */
function value(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number {
  const base = name.replace(/_(bucket|sum|count)$/, '');
  const family = families.get(name) ?? families.get(base);
  assert.ok(family, `no family ${name}`);
  const hits = family.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  assert.equal(hits.length, 1, `${name}${JSON.stringify(labels)}: ${hits.length} series`);
  return hits[0]!.value;
}

function close(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) < 1e-9, `${what}: ${actual}, expected ${expected}`);
}

function expectCode(code: MetricsErrorCode, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(isMetricsError(err, code), `expected MetricsError ${code}, got ${String(err)}`);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

const step = (over: Partial<TrainStepEvent> = {}): TrainStepEvent => ({
  samples: 32,
  stepSeconds: 0.004,
  loss: 0.5,
  goodnessPos: 3,
  goodnessNeg: 1,
  ...over,
});

function stageSetup(layer = 2, now = () => 1_700_000_000) {
  const registry = createRegistry('stage', { layer: String(layer) }, { backend: 'cpu' });
  return { registry, metrics: new StageMetrics(registry, layer, { now }) };
}

function coordinatorSetup(numLayers = 3) {
  const registry = createRegistry('coordinator', {}, { backend: 'none' });
  return {
    registry,
    metrics: new CoordinatorMetrics(registry, { numLayers, now: () => 1_700_000_123 }),
  };
}

// ---------------------------------------------------------------------------------------------

describe('metric names', () => {
  it('METRIC_NAMES is every ffx_ family a stage and a coordinator expose, and nothing else', async () => {
    const exposed = new Set<string>();
    for (const { registry } of [stageSetup(), coordinatorSetup()]) {
      for (const name of (await scrape(registry)).keys()) {
        if (name.startsWith('ffx_')) exposed.add(name);
      }
    }
    assert.equal(new Set(METRIC_NAMES).size, METRIC_NAMES.length, 'duplicates in METRIC_NAMES');
    assert.deepEqual([...exposed].sort(), [...METRIC_NAMES].sort());
    assert.ok(METRIC_SERIES_NAMES.includes('ffx_stage_step_duration_seconds_bucket'));
    assert.ok(!METRIC_SERIES_NAMES.includes('ffx_stage_step_duration_seconds'));
  });

  it('follow Prometheus conventions: counters _total, histograms _seconds, base units', async () => {
    const specs = new Map(METRIC_SPECS.map((s) => [s.name, s]));
    for (const { registry } of [stageSetup(), coordinatorSetup()]) {
      for (const [name, family] of await scrape(registry)) {
        if (!name.startsWith('ffx_')) continue;
        assert.match(name, /^ffx_[a-z][a-z0-9_]*[a-z0-9]$/, name);
        assert.equal(family.type, specs.get(name)!.type, `${name}: type differs from its spec`);
        assert.ok(family.help.length > 0, `${name} has no help`);
        if (family.type === 'counter') assert.match(name, /_total$/, name);
        else assert.doesNotMatch(name, /_total$/, name);
        if (family.type === 'histogram') assert.match(name, /_seconds$/, name);
        assert.doesNotMatch(name, /_(ms|millis|milliseconds|kb|mb|percent)(_|$)/, name);
      }
    }
  });

  it('uses the standard process_ and nodejs_ names for default metrics', async () => {
    const families = await scrape(stageSetup().registry);
    for (const name of [
      'process_cpu_user_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_seconds',
      'nodejs_heap_size_used_bytes',
    ]) {
      if (name === 'process_resident_memory_bytes' && process.platform !== 'linux') continue;
      assert.ok(families.has(name), `${name} missing`);
    }
  });
});

describe('createRegistry', () => {
  it('puts role and layer on every series of a stage, and build info', async () => {
    const families = await scrape(stageSetup(2).registry);
    let series = 0;
    for (const family of families.values()) {
      for (const s of family.samples) {
        assert.equal(s.labels.role, 'stage', `${s.name} lacks role`);
        assert.equal(s.labels.layer, '2', `${s.name} lacks layer`);
        series++;
      }
    }
    assert.ok(series > 50, `only ${series} series`);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      version: string;
    };
    const info = families.get('ffx_build_info')!.samples;
    assert.equal(info.length, 1);
    assert.deepEqual(info[0]!.labels, {
      version: pkg.version,
      node: process.version,
      backend: 'cpu',
      role: 'stage',
      layer: '2',
    });
    assert.equal(info[0]!.value, 1);
  });

  it('gives each registry its own state, and never touches the global one', async () => {
    const a = stageSetup(1);
    const b = stageSetup(2);
    a.metrics.onTrainStep(step());
    a.metrics.onRejected('BAD_SHAPE');
    const sa = await scrape(a.registry);
    const sb = await scrape(b.registry);
    assert.equal(value(sa, 'ffx_stage_batches_total', { phase: 'train' }), 1);
    assert.equal(value(sb, 'ffx_stage_batches_total', { phase: 'train' }), 0);
    assert.equal(value(sa, 'ffx_stage_rejected_messages_total', { reason: 'BAD_SHAPE' }), 1);
    assert.equal(value(sb, 'ffx_stage_rejected_messages_total', { reason: 'BAD_SHAPE' }), 0);
    assert.doesNotMatch(await globalRegistry.metrics(), /ffx_/);
  });

  it('refuses a stage registry without a positive integer layer', () => {
    assert.throws(() => createRegistry('stage', {}), expectCode('METRICS_BAD_LAYER', /undefined/));
    assert.throws(() => createRegistry('stage', { layer: '0' }), expectCode('METRICS_BAD_LAYER'));
    assert.throws(
      () => createRegistry('stage', { layer: '1.5' }),
      expectCode('METRICS_BAD_LAYER', /"1\.5"/),
    );
  });

  it('refuses bad, reserved and empty labels', () => {
    assert.throws(
      () => createRegistry('coordinator', { 'bad-name': 'x' }),
      expectCode('METRICS_BAD_LABEL', /bad-name/),
    );
    assert.throws(
      () => createRegistry('coordinator', { __meta: 'x' }),
      expectCode('METRICS_BAD_LABEL'),
    );
    assert.throws(
      () => createRegistry('coordinator', { role: 'x' }),
      expectCode('METRICS_BAD_LABEL', /role/),
    );
    assert.throws(
      () => createRegistry('coordinator', { run: '' }),
      expectCode('METRICS_BAD_LABEL', /run/),
    );
    assert.throws(
      () => createRegistry('coordinator', { layer: '1' }),
      expectCode('METRICS_BAD_LABEL', /layer/),
    );
    assert.throws(
      () => createRegistry('worker' as 'stage', { layer: '1' }),
      expectCode('METRICS_BAD_ROLE', /worker/),
    );
  });
});

describe('StageMetrics', () => {
  it('counts training steps, their time, and keeps the last loss and goodness', async () => {
    const { registry, metrics } = stageSetup(2, () => 1_700_000_000.5);
    metrics.onTrainStep(
      step({ waitSeconds: 0.5, transportSeconds: 0.01, sendSeconds: 0.1, epoch: 3 }),
    );
    metrics.onTrainStep(
      step({
        samples: 16,
        stepSeconds: 0.2,
        waitSeconds: 0.25,
        transportSeconds: 0.02,
        loss: 0.25,
        goodnessPos: 4,
        goodnessNeg: 0.5,
        epoch: 3,
      }),
    );
    metrics.onEval({ samples: 100, stepSeconds: 0.03, transportSeconds: 0.005 });
    metrics.onInputWait(1);
    const f = await scrape(registry);
    assert.equal(value(f, 'ffx_stage_batches_total', { phase: 'train' }), 2);
    assert.equal(value(f, 'ffx_stage_samples_total', { phase: 'train' }), 48); // 32 + 16
    assert.equal(value(f, 'ffx_stage_batches_total', { phase: 'eval' }), 1);
    assert.equal(value(f, 'ffx_stage_samples_total', { phase: 'eval' }), 100);
    const train = { phase: 'train' };
    assert.equal(value(f, 'ffx_stage_step_duration_seconds_count', train), 2);
    close(value(f, 'ffx_stage_step_duration_seconds_sum', train), 0.204, 'step sum');
    // 0.004 s falls in the 5 ms bucket, 0.2 s in the 250 ms one; buckets are cumulative.
    const le = (b: string) =>
      value(f, 'ffx_stage_step_duration_seconds_bucket', { ...train, le: b });
    assert.equal(le('0.0025'), 0);
    assert.equal(le('0.005'), 1);
    assert.equal(le('0.1'), 1);
    assert.equal(le('0.25'), 2);
    assert.equal(le('+Inf'), 2);
    assert.equal(value(f, 'ffx_stage_step_duration_seconds_count', { phase: 'eval' }), 1);
    close(value(f, 'ffx_stage_input_wait_seconds_total'), 1.75, 'wait'); // 0.5 + 0.25 + 1
    close(value(f, 'ffx_stage_transport_seconds_total'), 0.035, 'transport'); // .01+.02+.005
    close(value(f, 'ffx_stage_send_blocked_seconds_total'), 0.1, 'send');
    assert.equal(value(f, 'ffx_stage_loss'), 0.25);
    assert.equal(value(f, 'ffx_stage_goodness', { polarity: 'pos' }), 4);
    assert.equal(value(f, 'ffx_stage_goodness', { polarity: 'neg' }), 0.5);
    assert.equal(value(f, 'ffx_stage_nonfinite_loss_total'), 0);
    assert.equal(value(f, 'ffx_stage_epoch'), 3);
    assert.equal(value(f, 'ffx_stage_last_batch_timestamp_seconds'), 1_700_000_000.5);
  });

  it('scrapes a NaN or infinite loss as NaN, counts it, and stays usable', async () => {
    const { registry, metrics } = stageSetup();
    const before = await scrape(registry);
    assert.ok(Number.isNaN(value(before, 'ffx_stage_loss')), 'no batch yet: NaN');
    metrics.onTrainStep(
      step({
        loss: NaN,
        goodnessPos: Infinity,
        goodnessNeg: -Infinity,
        samples: NaN,
        stepSeconds: NaN,
        waitSeconds: Infinity,
        transportSeconds: -1,
      }),
    );
    metrics.onTrainStep(step({ loss: Infinity }));
    const text = await registry.metrics();
    assert.match(text, /^ffx_stage_loss\{[^}]*\} nan$/im);
    const f = parseExposition(text);
    assert.ok(Number.isNaN(value(f, 'ffx_stage_loss')));
    assert.equal(value(f, 'ffx_stage_nonfinite_loss_total'), 2);
    assert.equal(value(f, 'ffx_stage_goodness', { polarity: 'pos' }), 3); // the second step's
    assert.equal(value(f, 'ffx_stage_batches_total', { phase: 'train' }), 2);
    // Values that are not finite, non-negative amounts are dropped, never added.
    assert.equal(value(f, 'ffx_stage_samples_total', { phase: 'train' }), 32);
    assert.equal(value(f, 'ffx_stage_step_duration_seconds_count', { phase: 'train' }), 1);
    assert.equal(value(f, 'ffx_stage_input_wait_seconds_total'), 0);
    assert.equal(value(f, 'ffx_stage_transport_seconds_total'), 0);

    metrics.onTrainStep(step({ goodnessPos: Infinity }));
    const g = await scrape(registry);
    assert.equal(value(g, 'ffx_stage_loss'), 0.5);
    assert.equal(value(g, 'ffx_stage_goodness', { polarity: 'pos' }), Infinity);
    assert.equal(value(g, 'ffx_stage_samples_total', { phase: 'train' }), 64);
  });

  it('counts traffic and rejections with bounded labels', async () => {
    const { registry, metrics } = stageSetup();
    metrics.onReceived('train', 1000);
    metrics.onReceived('train', 500);
    metrics.onReceived('no-such-kind', 7);
    metrics.onReceived('invalid', NaN);
    metrics.onSent('stats', 120);
    metrics.onSent('train', -3);
    metrics.onRejected('BAD_WIDTH');
    metrics.onRejected('BAD_RUN');
    metrics.onRejected('SOMETHING_NEW');
    const f = await scrape(registry);
    assert.equal(value(f, 'ffx_stage_messages_received_total', { kind: 'train' }), 2);
    assert.equal(value(f, 'ffx_stage_messages_received_total', { kind: 'other' }), 1);
    assert.equal(value(f, 'ffx_stage_messages_received_total', { kind: 'invalid' }), 1);
    assert.equal(value(f, 'ffx_stage_bytes_received_total'), 1507);
    assert.equal(value(f, 'ffx_stage_messages_sent_total', { kind: 'stats' }), 1);
    assert.equal(value(f, 'ffx_stage_messages_sent_total', { kind: 'train' }), 1);
    assert.equal(value(f, 'ffx_stage_bytes_sent_total'), 120);
    const rejected = f.get('ffx_stage_rejected_messages_total')!.samples;
    assert.deepEqual(rejected.map((s) => s.labels.reason).sort(), [...REJECT_REASONS].sort());
    const byReason = Object.fromEntries(rejected.map((s) => [s.labels.reason, s.value]));
    assert.equal(byReason.BAD_WIDTH, 1);
    assert.equal(byReason.BAD_RUN, 1);
    assert.equal(byReason.OTHER, 1);
    assert.equal(byReason.BAD_SHAPE, 0);
  });

  it('reads the inbound queue depth at scrape time; a failing source reads NaN', async () => {
    const { registry, metrics } = stageSetup();
    assert.equal(value(await scrape(registry), 'ffx_stage_inbound_queue_depth'), 0);
    let depth = 3;
    metrics.setInboundQueueDepth(() => depth);
    assert.equal(value(await scrape(registry), 'ffx_stage_inbound_queue_depth'), 3);
    depth = 5;
    assert.equal(value(await scrape(registry), 'ffx_stage_inbound_queue_depth'), 5);
    metrics.setInboundQueueDepth(() => {
      throw new Error('socket closed');
    });
    assert.ok(Number.isNaN(value(await scrape(registry), 'ffx_stage_inbound_queue_depth')));
  });

  it('says which run it serves (ffx_run_info): one run for all its attempts, none between runs', async () => {
    const { registry, metrics } = stageSetup(2);
    const runs = async () =>
      (await scrape(registry))
        .get('ffx_run_info')!
        .samples.map((x): [Record<string, string>, number] => [x.labels, x.value]);
    assert.deepEqual(await runs(), []);
    metrics.onRun('50502aa5');
    assert.deepEqual(await runs(), [[{ role: 'stage', layer: '2', run: '50502aa5', name: '' }, 1]]);
    metrics.onRun('50502aa5~2'); // the coordinator's third attempt at the same run
    assert.deepEqual(await runs(), [[{ role: 'stage', layer: '2', run: '50502aa5', name: '' }, 1]]);
    metrics.onRun(undefined);
    assert.deepEqual(await runs(), []);
    metrics.onRun('x'.repeat(1000));
    assert.equal((await runs())[0]?.[0].run, 'x'.repeat(64));
  });

  it('a stage of several layers: each layer its own series, the process its first layer', async () => {
    const registry = createRegistry('stage', { layer: '2' });
    const metrics = new StageMetrics(registry, 2, { last: 3 });
    metrics.onTrainStep(step({ layer: 2, loss: 0.25, waitSeconds: 0.5 }));
    metrics.onTrainStep(step({ layer: 3, loss: 0.75, stepSeconds: 0.008 }));
    metrics.onTrainStep(step({ loss: 0.5 })); // no layer: the first
    const f = await scrape(registry);
    assert.equal(value(f, 'ffx_stage_batches_total', { phase: 'train', layer: '2' }), 2);
    assert.equal(value(f, 'ffx_stage_batches_total', { phase: 'train', layer: '3' }), 1);
    assert.equal(value(f, 'ffx_stage_loss', { layer: '2' }), 0.5);
    assert.equal(value(f, 'ffx_stage_loss', { layer: '3' }), 0.75);
    close(
      value(f, 'ffx_stage_step_duration_seconds_sum', { phase: 'train', layer: '3' }),
      0.008,
      'layer 3 step',
    );
    // The process's own series (the wait) carry its first layer only.
    close(value(f, 'ffx_stage_input_wait_seconds_total', { layer: '2' }), 0.5, 'wait');
    assert.equal(f.get('ffx_stage_input_wait_seconds_total')!.samples.length, 1);
    assert.throws(
      () => metrics.onTrainStep(step({ layer: 4 })),
      expectCode('METRICS_BAD_LAYER', /layer 4/),
    );
    assert.throws(
      () => new StageMetrics(createRegistry('stage', { layer: '5' }), 5, { last: 4 }),
      expectCode('METRICS_BAD_LAYER', /last layer/),
    );
  });

  it('refuses a bad layer, a registry for another layer or role, and a second instance', () => {
    const registry = createRegistry('stage', { layer: '2' });
    assert.throws(() => new StageMetrics(registry, 3), expectCode('METRICS_BAD_LAYER', /layer 2/));
    assert.throws(() => new StageMetrics(registry, 0), expectCode('METRICS_BAD_LAYER', /got 0/));
    assert.throws(
      () => new StageMetrics(createRegistry('coordinator'), 1),
      expectCode('METRICS_BAD_LAYER', /coordinator/),
    );
    new StageMetrics(registry, 2);
    assert.throws(() => new StageMetrics(registry, 2), expectCode('METRICS_DUPLICATE'));
  });
});

describe('CoordinatorMetrics', () => {
  it('records batches, progress, epoch means and evaluation accuracy', async () => {
    const { registry, metrics } = coordinatorSetup(3);
    metrics.onProgress(2, 0.5);
    metrics.onBatchSent(32, 0.03);
    metrics.onBatchSent(16, 0.02);
    // The learning rate is there from the first batch, not only at an epoch's end.
    assert.equal(value(await scrape(registry), 'ffx_coordinator_learning_rate'), 0.02);
    // One image of label 0. Goodness per layer, label-major (10 rows of one image):
    // layer 1 prefers label 0 (3), layers 2 and 3 label 1 (1 each). Summed: all -> 0 (3 > 2,
    // right), skip-first -> 1 (wrong), layer1 right, layer2 and layer3 wrong, layers1-2 -> 0
    // (3 > 1, right).
    const g = (label: number, v: number) =>
      Float32Array.from({ length: 10 }, (_, c) => (c === label ? v : 0));
    const acc = new EvalAccumulator(3, [1, 2]);
    acc.add([g(0, 3), g(1, 1), g(1, 1)], [0]);
    metrics.onEpoch({
      epoch: 2,
      seconds: 12,
      lr: 0.01,
      layers: [
        { loss: 0.7, goodnessPos: 2, goodnessNeg: 1 },
        { loss: 0.6, goodnessPos: 3, goodnessNeg: 0.5 },
        { loss: NaN, goodnessPos: 4, goodnessNeg: 0.25 },
      ],
      eval: acc.result(),
    });
    const f = await scrape(registry);
    assert.equal(value(f, 'ffx_coordinator_epoch'), 2);
    assert.equal(value(f, 'ffx_coordinator_progress_ratio'), 0.5);
    assert.equal(value(f, 'ffx_coordinator_batches_sent_total'), 2);
    assert.equal(value(f, 'ffx_coordinator_samples_total'), 48);
    assert.equal(value(f, 'ffx_coordinator_last_batch_timestamp_seconds'), 1_700_000_123);
    assert.equal(value(f, 'ffx_coordinator_learning_rate'), 0.01);
    assert.equal(value(f, 'ffx_coordinator_layer_loss', { layer: '2' }), 0.6);
    assert.ok(Number.isNaN(value(f, 'ffx_coordinator_layer_loss', { layer: '3' })));
    assert.equal(value(f, 'ffx_coordinator_layer_goodness', { layer: '3', polarity: 'neg' }), 0.25);
    assert.equal(value(f, 'ffx_coordinator_epoch_duration_seconds_count'), 1);
    assert.equal(value(f, 'ffx_coordinator_epoch_duration_seconds_sum'), 12);
    const accuracy = Object.fromEntries(
      f.get('ffx_coordinator_eval_accuracy')!.samples.map((s) => [s.labels.set, s.value]),
    );
    assert.deepEqual(accuracy, {
      all: 1,
      'skip-first': 0,
      layer1: 1,
      layer2: 0,
      layer3: 0,
      'layers1-2': 1,
    });
    for (const s of f.get('ffx_coordinator_eval_accuracy')!.samples) {
      assert.equal(s.labels.role, 'coordinator');
    }
  });

  it('says which run it drives: ffx_run_info with the run id and the config name', async () => {
    const { registry, metrics } = coordinatorSetup();
    metrics.onRun('1a2b3c4d', 'fashion-mnist-fast');
    const info = (await scrape(registry)).get('ffx_run_info')!.samples;
    assert.deepEqual(
      info.map((x) => [x.labels, x.value]),
      [[{ role: 'coordinator', run: '1a2b3c4d', name: 'fashion-mnist-fast' }, 1]],
    );
  });

  it('keeps layer and set labels bounded by the number of layers', async () => {
    const { registry, metrics } = coordinatorSetup(2);
    metrics.onEval({
      perLayerSet: [
        { name: 'all', accuracy: 0.9 },
        { name: 'layer7', accuracy: 0.1 },
      ],
    });
    metrics.onRejected(2, 'BAD_SHAPE');
    metrics.onRejected(99, 'WHATEVER');
    metrics.onStageLost(2);
    metrics.onStageLost(-1);
    metrics.onProgress(1, 1.5);
    metrics.onEpoch({
      epoch: 1,
      seconds: 1,
      layers: [0, 1, 2].map(() => ({ loss: 1, goodnessPos: 1, goodnessNeg: 1 })),
    });
    const f = await scrape(registry);
    assert.deepEqual(
      f.get('ffx_coordinator_eval_accuracy')!.samples.map((s) => s.labels.set),
      ['all'],
    );
    assert.equal(
      value(f, 'ffx_coordinator_rejected_messages_total', { layer: '2', reason: 'BAD_SHAPE' }),
      1,
    );
    assert.equal(
      value(f, 'ffx_coordinator_rejected_messages_total', { layer: 'other', reason: 'OTHER' }),
      1,
    );
    assert.equal(value(f, 'ffx_coordinator_stage_lost_total', { layer: '1' }), 0);
    assert.equal(value(f, 'ffx_coordinator_stage_lost_total', { layer: '2' }), 1);
    assert.equal(value(f, 'ffx_coordinator_stage_lost_total', { layer: 'other' }), 1);
    assert.equal(value(f, 'ffx_coordinator_progress_ratio'), 1);
    assert.deepEqual(
      f.get('ffx_coordinator_layer_loss')!.samples.map((s) => s.labels.layer),
      ['1', '2'],
    );
  });

  it('reads stage counts at scrape time; a failing source reads NaN', async () => {
    const { registry, metrics } = coordinatorSetup(3);
    let f = await scrape(registry);
    assert.equal(value(f, 'ffx_coordinator_stages_expected'), 3);
    assert.equal(value(f, 'ffx_coordinator_stages_registered'), 0);
    const snapshot = { expected: 3, registered: 2, up: 1 };
    metrics.setStagesSource(() => snapshot);
    f = await scrape(registry);
    assert.equal(value(f, 'ffx_coordinator_stages_registered'), 2);
    assert.equal(value(f, 'ffx_coordinator_stages_up'), 1);
    snapshot.up = 2;
    assert.equal(value(await scrape(registry), 'ffx_coordinator_stages_up'), 2);
    metrics.setStagesSource(() => {
      throw new Error('cluster closed');
    });
    f = await scrape(registry);
    assert.ok(Number.isNaN(value(f, 'ffx_coordinator_stages_up')));
  });

  it('refuses a bad numLayers and a stage registry', () => {
    assert.throws(
      () => new CoordinatorMetrics(createRegistry('coordinator'), { numLayers: 0 }),
      expectCode('METRICS_BAD_LAYER', /got 0/),
    );
    assert.throws(
      () => new CoordinatorMetrics(stageSetup().registry, { numLayers: 2 }),
      expectCode('METRICS_BAD_ROLE', /stage/),
    );
  });
});
