// The report's charts, as Vega-Lite specs over a run's numbers. Each mark carries its values
// in its tooltip and its ARIA label (Vega-Lite writes them), so the rendered page can be read
// back: that is how the browser test checks that the charts hold the run's numbers.
import type { TopLevelSpec } from 'vega-lite';
import type { EpochPoint, EvalPoint, LayerPoint } from './run-files.js';

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
  // Whole epochs on the axis (tickMinStep); curve points read as fractions of one (1.25).
  axis: { tickMinStep: 1, format: '.4~f' },
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
    out.push(lossChart(epochs), goodnessChart(epochs, threshold), learningRateChart(epochs));
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

/**
 * A run's training curve: each epoch's curve points (a run of batches each), at the fraction of
 * the run they end (epoch 2's middle: 1.5); an epoch recorded without a curve, its means at its
 * end. `batch` says which: "7-9 of 30", or "all 30".
 */
interface CurveRow {
  epoch: number;
  batch: string;
  lr: number;
  layers: LayerPoint[];
}

function curveRows(epochs: EpochPoint[]): CurveRow[] {
  return epochs.flatMap((e): CurveRow[] => {
    if (e.curve.length === 0) return [{ epoch: e.epoch, batch: 'all', lr: e.lr, layers: e.layers }];
    const total = e.curve.at(-1)!.batch;
    return e.curve.map((p, i) => {
      const first = i === 0 ? 1 : e.curve[i - 1]!.batch + 1;
      return {
        epoch: e.epoch - 1 + p.batch / total,
        batch: `${first === p.batch ? p.batch : `${first}-${p.batch}`} of ${total}`,
        lr: p.lr,
        layers: p.layers,
      };
    });
  });
}

/** A legend of line styles: strokes, in grey (the colour is another legend's). */
const DASH_LEGEND = {
  symbolType: 'stroke',
  symbolStrokeColor: '#555',
  symbolStrokeWidth: 2,
  symbolSize: 300,
} as const;

/** Curves draw a point per run of batches, small: the line is what is read. */
const CURVE_MARK = { type: 'line', point: { filled: true, size: 14 }, tooltip: true } as const;

const CURVE_CAPTION = (epochs: EpochPoint[]) => {
  const points = Math.max(...epochs.map((e) => e.curve.length));
  const batches = Math.max(...epochs.map((e) => e.curve.at(-1)?.batch ?? 0));
  return points === 0
    ? "the epoch's mean over its samples"
    : points === batches
      ? 'the mean over each batch'
      : `the mean over each run of ${Math.ceil(batches / points)} batches`;
};

function lossChart(epochs: EpochPoint[]): Chart {
  const rows = curveRows(epochs).flatMap((r) =>
    r.layers.map((l, i) => ({ epoch: r.epoch, batch: r.batch, layer: layerName(i), loss: l.loss })),
  );
  const positive = rows.every((r) => r.loss > 0);
  return {
    id: 'loss',
    title: 'Loss per layer',
    caption: `Each layer's FF loss, ${CURVE_CAPTION(epochs)}${positive ? ' (log scale)' : ''}.`,
    spec: base(rows, {
      mark: CURVE_MARK,
      encoding: {
        x: EPOCH_X,
        y: {
          field: 'loss',
          type: 'quantitative',
          title: 'loss',
          scale: positive ? { type: 'log' } : { zero: false },
        },
        color: { field: 'layer', type: 'nominal', title: null },
        tooltip: [
          { field: 'layer', type: 'nominal' },
          { field: 'epoch', type: 'quantitative', format: '.4~f' },
          { field: 'batch', type: 'nominal' },
          { field: 'loss', type: 'quantitative', format: '.17~g' },
        ],
      },
    }),
  };
}

export interface Threshold {
  value: number;
  layers?: number[];
}

function goodnessChart(epochs: EpochPoint[], threshold: Threshold | undefined): Chart {
  const rows = curveRows(epochs).flatMap((r) =>
    r.layers.flatMap((l, i) => [
      {
        epoch: r.epoch,
        batch: r.batch,
        layer: layerName(i),
        data: 'positive',
        goodness: l.goodnessPos,
      },
      {
        epoch: r.epoch,
        batch: r.batch,
        layer: layerName(i),
        data: 'negative',
        goodness: l.goodnessNeg,
      },
    ]),
  );
  const lines = {
    mark: CURVE_MARK,
    encoding: {
      x: EPOCH_X,
      y: { field: 'goodness', type: 'quantitative', title: 'goodness', scale: { zero: false } },
      color: { field: 'layer', type: 'nominal', title: null },
      // Negative data dashed; the threshold (below) dotted and grey, and labelled on the chart.
      strokeDash: {
        field: 'data',
        type: 'nominal',
        title: null,
        sort: ['positive', 'negative'],
        scale: {
          domain: ['positive', 'negative'],
          range: [
            [1, 0],
            [6, 3],
          ],
        },
        legend: DASH_LEGEND,
      },
      tooltip: [
        { field: 'layer', type: 'nominal' },
        { field: 'data', type: 'nominal' },
        { field: 'epoch', type: 'quantitative', format: '.4~f' },
        { field: 'batch', type: 'nominal' },
        { field: 'goodness', type: 'quantitative', format: '.17~g' },
      ],
    },
  };
  const layer: object[] = [lines];
  if (threshold !== undefined) {
    const at = { data: { values: [{ threshold: threshold.value }] } };
    layer.push(
      {
        ...at,
        mark: { type: 'rule', color: '#777', strokeDash: [2, 2], tooltip: true },
        encoding: { y: { field: 'threshold', type: 'quantitative' } },
      },
      {
        ...at,
        mark: { type: 'text', align: 'right', dy: -6, x: 'width', color: '#555', aria: false },
        encoding: {
          y: { field: 'threshold', type: 'quantitative' },
          text: { value: `threshold ${threshold.value}` },
        },
      },
    );
  }
  return {
    id: 'goodness',
    title: 'Goodness of positive and negative data',
    caption:
      `Mean goodness per layer, ${CURVE_CAPTION(epochs)}, of positive data (solid) and negative data (dashed)` +
      (threshold === undefined
        ? ": no threshold, the layers' losses compare them."
        : `: positive data should rise above the threshold (${threshold.value}, dotted grey${threshold.layers ? `; ${threshold.layers.length === 1 ? 'layer' : 'layers'} ${threshold.layers.join(', ')}` : ''}), negative data fall below it.`),
    spec: base(rows, { layer }),
  };
}

function learningRateChart(epochs: EpochPoint[]): Chart {
  const rows = curveRows(epochs).map((r) => ({ epoch: r.epoch, batch: r.batch, lr: r.lr }));
  return {
    id: 'lr',
    title: 'Learning rate',
    caption:
      'The learning rate of the last batch of each point: constant, then falling linearly to 0 ' +
      'over the last train.cooldown of training.',
    spec: base(rows, {
      mark: CURVE_MARK,
      encoding: {
        x: EPOCH_X,
        y: { field: 'lr', type: 'quantitative', title: 'learning rate', scale: { zero: true } },
        tooltip: [
          { field: 'epoch', type: 'quantitative', format: '.4~f' },
          { field: 'batch', type: 'nominal' },
          { field: 'lr', type: 'quantitative', title: 'learning rate', format: '.17~g' },
        ],
      },
    }),
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

/** Runs side by side: each run's label (unique) and its numbers. */
export interface LabelledRun {
  label: string;
  epochs: EpochPoint[];
  final: EvalPoint | undefined;
}

/** The charts that compare runs: their accuracy, loss, learning rate and throughput. */
export function comparisonCharts(runs: LabelledRun[]): Chart[] {
  const color = {
    field: 'run',
    type: 'nominal',
    title: null,
    sort: runs.map((r) => r.label),
  } as const;
  const accuracy = runs.flatMap((r) => {
    const rows = r.epochs.flatMap((e) =>
      e.eval
        ? [{ run: r.label, epoch: e.epoch, accuracy: e.eval.accuracy, when: 'during training' }]
        : [],
    );
    if (r.final) {
      const epoch = r.epochs.at(-1)?.epoch ?? 0;
      rows.push({ run: r.label, epoch, accuracy: r.final.accuracy, when: 'final' });
    }
    return rows;
  });
  const loss = runs.flatMap((r) =>
    curveRows(r.epochs).flatMap((c) =>
      c.layers.map((l, i) => ({
        run: r.label,
        layer: layerName(i),
        epoch: c.epoch,
        batch: c.batch,
        loss: l.loss,
      })),
    ),
  );
  const lr = runs.flatMap((r) =>
    curveRows(r.epochs).map((c) => ({ run: r.label, epoch: c.epoch, batch: c.batch, lr: c.lr })),
  );
  const speed = runs.flatMap((r) =>
    r.epochs.map((e) => ({ run: r.label, epoch: e.epoch, samplesPerSec: e.samplesPerSec })),
  );
  const positive = loss.every((r) => r.loss > 0);
  return [
    {
      id: 'accuracy',
      title: 'Test accuracy',
      caption:
        "Each run's accuracy by its own prediction rule; a run's last point is its eval.json.",
      spec: base(accuracy, {
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
          color,
          tooltip: [
            { field: 'run', type: 'nominal' },
            { field: 'epoch', type: 'quantitative' },
            { field: 'accuracy', type: 'quantitative', format: '.2%' },
            { field: 'when', type: 'nominal' },
          ],
        },
      }),
    },
    {
      id: 'loss',
      title: 'Loss per layer',
      caption: `Each run's layers (layer 1 solid, later ones dashed), the curves of its epochs${positive ? ' (log scale)' : ''}.`,
      spec: base(loss, {
        mark: CURVE_MARK,
        encoding: {
          x: EPOCH_X,
          y: {
            field: 'loss',
            type: 'quantitative',
            title: 'loss',
            scale: positive ? { type: 'log' } : { zero: false },
          },
          color,
          strokeDash: {
            field: 'layer',
            type: 'nominal',
            title: null,
            legend: DASH_LEGEND,
          },
          tooltip: [
            { field: 'run', type: 'nominal' },
            { field: 'layer', type: 'nominal' },
            { field: 'epoch', type: 'quantitative', format: '.4~f' },
            { field: 'batch', type: 'nominal' },
            { field: 'loss', type: 'quantitative', format: '.17~g' },
          ],
        },
      }),
    },
    {
      id: 'lr',
      title: 'Learning rate',
      caption: "Each run's learning rate schedule.",
      spec: base(lr, {
        mark: CURVE_MARK,
        encoding: {
          x: EPOCH_X,
          y: { field: 'lr', type: 'quantitative', title: 'learning rate', scale: { zero: true } },
          color,
          tooltip: [
            { field: 'run', type: 'nominal' },
            { field: 'epoch', type: 'quantitative', format: '.4~f' },
            { field: 'batch', type: 'nominal' },
            { field: 'lr', type: 'quantitative', title: 'learning rate', format: '.17~g' },
          ],
        },
      }),
    },
    {
      id: 'throughput',
      title: 'Throughput',
      caption: 'Training samples per second, per epoch.',
      spec: base(speed, {
        mark: { type: 'line', point: true, tooltip: true },
        encoding: {
          x: EPOCH_X,
          y: {
            field: 'samplesPerSec',
            type: 'quantitative',
            title: 'samples/s',
            scale: { zero: true },
          },
          color,
          tooltip: [
            { field: 'run', type: 'nominal' },
            { field: 'epoch', type: 'quantitative' },
            { field: 'samplesPerSec', type: 'quantitative', title: 'samples/s', format: ',.0f' },
          ],
        },
      }),
    },
  ];
}
