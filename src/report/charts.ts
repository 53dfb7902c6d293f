// The report's charts, as Vega-Lite specs over a run's numbers. Each mark carries its values
// in its tooltip and its ARIA label (Vega-Lite writes them), so the rendered page can be read
// back: that is how the browser test checks that the charts hold the run's numbers.
import type { TopLevelSpec } from 'vega-lite';
import type { EpochPoint, EvalPoint } from './run-files.js';

export interface Chart {
  id: string;
  title: string;
  /** One line under the title: what to look for. */
  caption: string;
  spec: TopLevelSpec;
}

const WIDTH = 340;
const HEIGHT = 220;

const EPOCH_X = {
  field: 'epoch',
  type: 'quantitative',
  title: 'epoch',
  axis: { tickMinStep: 1, format: 'd' },
  scale: { zero: false, nice: false },
} as const;

const layerName = (i: number) => `layer ${i + 1}`;

/** Every chart a run's numbers allow (a run with no epoch yet has none of the epoch charts). */
export function charts(
  epochs: EpochPoint[],
  final: EvalPoint | undefined,
  /** eval.json, or else the last epoch's evaluation. */
  last: EvalPoint | undefined,
  /** model.threshold, and the layers it applies to when not all (a list of losses). */
  threshold: Threshold | undefined,
  classes: readonly string[],
): Chart[] {
  const out: Chart[] = [];
  if (epochs.length > 0) {
    out.push(lossChart(epochs), goodnessChart(epochs, threshold));
  }
  const accuracy = accuracyChart(epochs, final);
  if (accuracy) out.push(accuracy);
  if (epochs.length > 0) out.push(throughputChart(epochs), stageTimeChart(epochs));
  if (last && last.confusion.length > 0)
    out.push(confusionChart(last, classes, final !== undefined));
  return out;
}

function base(data: object[], extra: Record<string, unknown>): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    width: WIDTH,
    height: HEIGHT,
    data: { values: data },
    ...extra,
  } as TopLevelSpec;
}

function lossChart(epochs: EpochPoint[]): Chart {
  const rows = epochs.flatMap((e) =>
    e.layers.map((l, i) => ({ epoch: e.epoch, layer: layerName(i), loss: l.loss })),
  );
  const positive = rows.every((r) => r.loss > 0);
  return {
    id: 'loss',
    title: 'Loss per layer',
    caption:
      "Each layer's FF loss, the epoch's mean over its samples" +
      (positive ? ' (log scale).' : '.'),
    spec: base(rows, {
      mark: { type: 'line', point: true, tooltip: true },
      encoding: {
        x: EPOCH_X,
        y: {
          field: 'loss',
          type: 'quantitative',
          title: 'loss',
          scale: positive ? { type: 'log' } : { zero: false },
        },
        color: { field: 'layer', type: 'nominal', title: null },
      },
    }),
  };
}

export interface Threshold {
  value: number;
  layers?: number[];
}

function goodnessChart(epochs: EpochPoint[], threshold: Threshold | undefined): Chart {
  const rows = epochs.flatMap((e) =>
    e.layers.flatMap((l, i) => [
      { epoch: e.epoch, layer: layerName(i), data: 'positive', goodness: l.goodnessPos },
      { epoch: e.epoch, layer: layerName(i), data: 'negative', goodness: l.goodnessNeg },
    ]),
  );
  const lines = {
    mark: { type: 'line', point: true, tooltip: true },
    encoding: {
      x: EPOCH_X,
      y: { field: 'goodness', type: 'quantitative', title: 'goodness', scale: { zero: false } },
      color: { field: 'layer', type: 'nominal', title: null },
      strokeDash: {
        field: 'data',
        type: 'nominal',
        title: null,
        sort: ['positive', 'negative'],
      },
      shape: { field: 'data', type: 'nominal', title: null, sort: ['positive', 'negative'] },
    },
  };
  const layer: object[] = [lines];
  if (threshold !== undefined) {
    layer.push({
      data: { values: [{ threshold: threshold.value }] },
      mark: { type: 'rule', color: '#888', strokeDash: [2, 2], tooltip: true },
      encoding: { y: { field: 'threshold', type: 'quantitative' } },
    });
  }
  return {
    id: 'goodness',
    title: 'Goodness of positive and negative data',
    caption:
      threshold === undefined
        ? "Mean goodness per layer, of positive and negative data: no threshold, the layers' losses compare them."
        : `Mean goodness per layer: positive data should rise above the threshold (${threshold.value}, dotted${threshold.layers ? `; ${threshold.layers.length === 1 ? 'layer' : 'layers'} ${threshold.layers.join(', ')}` : ''}), negative data fall below it.`,
    spec: base(rows, { layer }),
  };
}

/** An evaluation's accuracy per layer set: with readouts, each rule's, "(readout)" marked. */
function setAccuracies(ev: EvalPoint | undefined): { name: string; accuracy: number }[] {
  if (!ev) return [];
  if (!ev.byRule) return ev.perLayerSet;
  return [
    ...ev.byRule.goodness,
    ...ev.byRule.readout.map((s) => ({ ...s, name: `${s.name} (readout)` })),
  ];
}

function accuracyChart(epochs: EpochPoint[], final: EvalPoint | undefined): Chart | undefined {
  const rows = epochs.flatMap((e) =>
    setAccuracies(e.eval).map((s) => ({
      epoch: e.epoch,
      set: s.name,
      accuracy: s.accuracy,
      when: 'during training',
    })),
  );
  const last = epochs.at(-1)?.epoch ?? 0;
  for (const s of setAccuracies(final)) {
    // eval.json is the evaluation after the last epoch.
    rows.push({ epoch: last, set: s.name, accuracy: s.accuracy, when: 'final' });
  }
  if (rows.length === 0) return undefined;
  return {
    id: 'accuracy',
    title: 'Test accuracy per layer set',
    caption:
      'Accuracy when goodness is summed over every layer ("all"), all but the first, or one layer' +
      (final ? '; the last point of each line is eval.json.' : '.'),
    spec: base(rows, {
      mark: { type: 'line', point: true, tooltip: true },
      encoding: {
        x: EPOCH_X,
        y: {
          field: 'accuracy',
          type: 'quantitative',
          title: 'test accuracy',
          axis: { format: '.0%' },
          scale: { zero: false },
        },
        color: { field: 'set', type: 'nominal', title: null, sort: null },
        tooltip: [
          { field: 'set', type: 'nominal' },
          { field: 'epoch', type: 'quantitative' },
          { field: 'accuracy', type: 'quantitative', format: '.2%' },
          { field: 'when', type: 'nominal' },
        ],
      },
    }),
  };
}

function throughputChart(epochs: EpochPoint[]): Chart {
  const rows = epochs.map((e) => ({
    epoch: e.epoch,
    samplesPerSec: e.samplesPerSec,
    seconds: e.seconds,
    lr: e.lr,
  }));
  return {
    id: 'throughput',
    title: 'Throughput',
    caption: 'Training samples per second, per epoch (evaluation and checkpoints not counted).',
    spec: base(rows, {
      mark: { type: 'line', point: true, tooltip: true },
      encoding: {
        x: EPOCH_X,
        y: {
          field: 'samplesPerSec',
          type: 'quantitative',
          title: 'samples/s',
          scale: { zero: true },
        },
        tooltip: [
          { field: 'epoch', type: 'quantitative' },
          { field: 'samplesPerSec', type: 'quantitative', title: 'samples/s', format: ',.0f' },
          { field: 'seconds', type: 'quantitative', title: 'seconds', format: '.2f' },
          { field: 'lr', type: 'quantitative', title: 'learning rate', format: '.3g' },
        ],
      },
    }),
  };
}

const TIME_PARTS = [
  ['stepSeconds', 'compute'],
  ['transportSeconds', 'transport'],
  ['blockedSeconds', 'blocked on send'],
  ['waitSeconds', 'waiting for input'],
] as const;

function stageTimeChart(epochs: EpochPoint[]): Chart {
  const layers = Math.max(...epochs.map((e) => e.stages.length));
  const rows = Array.from({ length: layers }, (_, i) =>
    TIME_PARTS.map(([key, part], order) => ({
      layer: layerName(i),
      part,
      order,
      seconds: epochs.reduce((s, e) => s + (e.stages[i]?.[key] ?? 0), 0),
    })),
  ).flat();
  return {
    id: 'stage-time',
    title: "Where each layer's time went",
    caption:
      'Seconds over the whole run: computing, (de)coding messages, blocked on a full next ' +
      'stage, idle waiting for input (the pipeline bubble). Layers run in one process only compute.',
    spec: base(rows, {
      height: Math.max(60, 40 * layers),
      mark: { type: 'bar', tooltip: true },
      encoding: {
        y: { field: 'layer', type: 'nominal', title: null },
        x: { field: 'seconds', type: 'quantitative', title: 'seconds', stack: 'zero' },
        color: {
          field: 'part',
          type: 'nominal',
          title: null,
          sort: TIME_PARTS.map(([, p]) => p),
          scale: { range: ['#4c78a8', '#f58518', '#e45756', '#bab0ac'] },
        },
        order: { field: 'order', type: 'quantitative' },
        tooltip: [
          { field: 'layer', type: 'nominal' },
          { field: 'part', type: 'nominal' },
          { field: 'seconds', type: 'quantitative', format: '.3f' },
        ],
      },
    }),
  };
}

function confusionChart(ev: EvalPoint, classes: readonly string[], final: boolean): Chart {
  const n = ev.confusion.length;
  const name = (i: number) => classes[i] ?? String(i);
  const names = Array.from({ length: n }, (_, i) => name(i));
  const rows = ev.confusion.flatMap((row, t) => {
    const total = row.reduce((a, b) => a + b, 0);
    return row.map((count, p) => ({
      true: name(t),
      predicted: name(p),
      count,
      share: total > 0 ? count / total : 0,
    }));
  });
  const axis = { type: 'ordinal', sort: names } as const;
  return {
    id: 'confusion',
    title: 'Confusion matrix',
    caption:
      `${ev.count} test images, rule "${ev.rule}"${final ? '' : " (the last epoch's evaluation: the run has no eval.json)"}; ` +
      'rows are the true class, the colour is the share of that row.',
    spec: base(rows, {
      width: 400,
      height: 400,
      encoding: {
        x: { field: 'predicted', ...axis, title: 'predicted', axis: { labelAngle: -40 } },
        y: { field: 'true', ...axis, title: 'true class' },
      },
      layer: [
        {
          mark: { type: 'rect', tooltip: true },
          encoding: {
            color: {
              field: 'share',
              type: 'quantitative',
              title: 'share of row',
              scale: { scheme: 'blues', domain: [0, 1] },
              legend: { format: '.0%' },
            },
            tooltip: [
              { field: 'true', type: 'nominal', title: 'true' },
              { field: 'predicted', type: 'nominal' },
              { field: 'count', type: 'quantitative' },
              { field: 'share', type: 'quantitative', format: '.1%', title: 'share of row' },
            ],
          },
        },
        {
          mark: { type: 'text', fontSize: 10, aria: false },
          encoding: {
            text: { field: 'count', type: 'quantitative' },
            color: { condition: { test: 'datum.share > 0.5', value: 'white' }, value: 'black' },
          },
        },
      ],
    }),
  };
}
