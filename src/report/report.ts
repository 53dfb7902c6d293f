// `ffx-coordinator report RUN_DIR`: one self-contained HTML file that shows a run — loss and
// goodness per layer, test accuracy per layer set, throughput and where each layer's time
// went, the confusion matrix, the config. The charts are Vega-Lite specs compiled here to
// Vega, drawn in the page by Vega's own build, inlined: the file opens from disk with no
// network, and every number in it comes from the run directory.
import { describeLayers, type LayerSpec } from '../core/model-shape.js';
import { join } from 'node:path';
import { writeFileAtomic } from '../checkpoint/atomic-file.js';
import { RUN_FILES } from '../checkpoint/run-dir.js';
import { classNames } from '../data/class-names.js';
import { DATASET_NAMES, type DatasetName } from '../data/datasets.js';
import { charts } from './charts.js';
import { esc, figure, page, vegaSource } from './page.js';
import { readRunFiles, type EvalPoint, type RunFiles } from './run-files.js';

/**
 * Writes RUN_DIR/report.html (or `out`) from the run's files; returns its path and what the
 * report says it left out or could not show (also on the page).
 */
export async function writeReport(
  dir: string,
  out = join(dir, RUN_FILES.report),
): Promise<{ file: string; notes: string[] }> {
  const run = await readRunFiles(dir);
  await writeFileAtomic(out, renderReport(run, await vegaSource()), 'report');
  return { file: out, notes: reportNotes(run) };
}

/** The report's HTML: `vega` is Vega's browser build, inlined. */
export function renderReport(run: RunFiles, vega: string): string {
  const cfg = run.config;
  const model = obj(cfg.model);
  const data = obj(cfg.data);
  const dataset = String(data.dataset ?? 'unknown');
  const classes = DATASET_NAMES.includes(dataset as DatasetName)
    ? classNames(dataset as DatasetName)
    : [];
  // Only the threshold loss has a threshold for the goodness to cross; with a list of losses,
  // only the layers that have it.
  const losses = [model.loss ?? 'threshold'].flat();
  const layers =
    losses.length > 1 ? losses.flatMap((l, i) => (l === 'threshold' ? [i + 1] : [])) : undefined;
  const threshold =
    typeof model.threshold === 'number' && losses.includes('threshold')
      ? { value: model.threshold, layers }
      : undefined;
  const list = charts(run.epochs, run.final, lastEval(run), threshold, classes);
  const name = String(cfg.name ?? run.dir);
  const body = `<header>
<h1>ffx run <span class="name">${esc(name)}</span></h1>
<p class="sub">${esc(run.dir)} · ${esc(dataset)} · ${esc(layersOf(model))}</p>
</header>
<main>
${summary(run)}
${notes(run)}
<section class="charts">
${list.map(figure).join('\n')}
${layerSetTable(lastEval(run))}
</section>
<section class="card wide" id="config">
<h2>Config</h2>
<p class="caption">config.json: the resolved config the run used (defaults, file and flags).</p>
<pre>${esc(JSON.stringify(cfg, null, 2))}</pre>
</section>
</main>
<footer>Made by <code>ffx-coordinator report ${esc(run.dir)}</code> from config.json, metrics.jsonl and eval.json. Charts: Vega-Lite / Vega, inlined.</footer>`;
  return page(`ffx run ${name}`, body, list, vega);
}

export function backendsOf(backends: string[]): string {
  if (backends.length === 0) return '—';
  if (backends.every((b) => b === backends[0])) return backends[0]!;
  return backends.map((b, i) => `layer ${i + 1}: ${b}`).join(', ');
}

function summary(run: RunFiles): string {
  const cfg = run.config;
  const train = obj(cfg.train);
  const opt = obj(cfg.optimizer);
  const epochs = run.epochs;
  const ev = lastEval(run);
  const seconds = epochs.reduce((s, e) => s + e.seconds, 0);
  const samples = epochs.reduce((s, e) => s + e.samplesPerSec * e.seconds, 0);
  const planned = typeof train.epochs === 'number' ? train.epochs : undefined;
  const done = epochs.at(-1)?.epoch ?? 0;
  const items: [string, string][] = [
    [run.final ? 'test accuracy' : 'test accuracy (last eval)', ev ? `${pct(ev.accuracy)}` : '—'],
    ['epochs', planned !== undefined ? `${done} of ${planned}` : String(done)],
    // The epochs' own time: the console's "trained in" is the wall time, evaluations and all.
    ['time in epochs (no evals)', seconds > 0 ? duration(seconds) : '—'],
    ['samples/s', seconds > 0 ? Math.round(samples / seconds).toLocaleString('en-US') : '—'],
    ['batch size', String(train.batchSize ?? '—')],
    ['optimizer', `${String(opt.type ?? '?')} lr ${String(opt.lr ?? '?')}`],
    ['backend', backendsOf(run.backends)],
    ['seed', String(cfg.seed ?? '—')],
  ];
  return `<section class="summary" id="summary">
${items.map(([k, v]) => `<div class="figure"><div class="k">${esc(k)}</div><div class="v">${esc(v)}</div></div>`).join('\n')}
</section>`;
}

/** What the report left out of the run's files, or could not show. */
export function reportNotes(run: RunFiles): string[] {
  const out: string[] = [];
  for (const file of run.unreadable) {
    out.push(`${file} is not what a run writes (edited or damaged?): left out.`);
  }
  if (!run.final && !run.unreadable.includes(RUN_FILES.eval)) {
    out.push(
      'No eval.json: the run has not finished (or failed); the figures are those of the epochs it recorded.',
    );
  }
  if (run.epochs.length === 0) out.push('metrics.jsonl has no epoch yet.');
  if (run.skippedLines > 0) {
    const one = run.skippedLines === 1;
    out.push(
      `${run.skippedLines} line${one ? '' : 's'} of metrics.jsonl ${one ? 'is' : 'are'} not an ` +
        `epoch record and ${one ? 'was' : 'were'} left out.`,
    );
  }
  return out;
}

function notes(run: RunFiles): string {
  const out = reportNotes(run);
  return out.length === 0
    ? ''
    : `<section class="notes">${out.map((n) => `<p>${esc(n)}</p>`).join('')}</section>`;
}

/** eval.json, or else the last epoch's evaluation. */
export function lastEval(run: RunFiles): EvalPoint | undefined {
  return run.final ?? [...run.epochs].reverse().find((e) => e.eval)?.eval;
}

function layerSetTable(ev: EvalPoint | undefined): string {
  if (!ev || ev.perLayerSet.length === 0) return '';
  const cell = (a: number | undefined) => `<td class="num">${a === undefined ? '' : pct(a)}</td>`;
  const by = ev.byRule;
  const rows = (by?.goodness ?? ev.perLayerSet)
    .map((s) => {
      const readout = by?.readout.find((r) => r.name === s.name)?.accuracy;
      return `<tr><td>${esc(s.name)}</td>${cell(s.accuracy)}${by ? cell(readout) : ''}</tr>`;
    })
    .join('\n');
  const head = by
    ? '<th class="num">goodness</th><th class="num">readout</th>'
    : '<th class="num">accuracy</th>';
  return `<section class="card" id="layer-sets">
<h2>Accuracy per layer set</h2>
<p class="caption">${esc(String(ev.count))} test images; the run predicts with "${esc(ev.rule)}".</p>
<table><thead><tr><th>layers</th>${head}</tr></thead>
<tbody>
${rows}
</tbody></table>
</section>`;
}

export function obj(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : {};
}

function layersOf(model: Record<string, unknown>): string {
  const layers = model.layers;
  try {
    return `model ${describeLayers(layers as LayerSpec[])}`;
  } catch {
    return 'model ?';
  }
}

export const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

export function duration(s: number): string {
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - 60 * m)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
