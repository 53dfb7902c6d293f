// `ffx-coordinator report RUN_A RUN_B ...`: several runs on the same charts (accuracy, loss,
// learning rate, throughput), a row of figures for each, and the table of what their configs
// set differently: what a user looks at after an ablation. Each run is read as report.ts reads
// one (run-files.ts); the page is made the same way (page.ts).
import { basename } from 'node:path';
import { writeFileAtomic } from '../checkpoint/atomic-file.js';
import { UsageError } from '../errors.js';
import { comparisonCharts, type LabelledRun } from './charts.js';
import { esc, figure, page, vegaSource } from './page.js';
import { backendsOf, duration, lastEval, obj, pct, reportNotes } from './report.js';
import { readRunFiles, type RunFiles } from './run-files.js';

/** Writes the comparison of the runs in `dirs` to `out`; returns notes about what was left out. */
export async function writeComparison(
  dirs: string[],
  out: string,
): Promise<{ file: string; notes: string[] }> {
  if (dirs.length < 2) throw new UsageError('comparing runs takes two run directories or more');
  const runs = await Promise.all(dirs.map((d) => readRunFiles(d)));
  const labelled = labels(runs);
  const notes = runs.flatMap((r, i) => reportNotes(r).map((n) => `${labelled[i]!.label}: ${n}`));
  await writeFileAtomic(out, renderComparison(runs, labelled, await vegaSource()), 'report');
  return { file: out, notes };
}

/** Each run by its config's name, made unique with its directory's name (then a number). */
function labels(runs: RunFiles[]): LabelledRun[] {
  const names = runs.map((r) => String(r.config.name ?? basename(r.dir)));
  const taken = new Set<string>();
  return runs.map((r, i) => {
    const name = names[i]!;
    let label = names.filter((n) => n === name).length > 1 ? `${name} (${basename(r.dir)})` : name;
    for (let n = 2; taken.has(label); n++) label = `${name} (${basename(r.dir)}, ${n})`;
    taken.add(label);
    return { label, epochs: r.epochs, final: r.final };
  });
}

export function renderComparison(runs: RunFiles[], labelled: LabelledRun[], vega: string): string {
  const list = comparisonCharts(labelled);
  const body = `<header>
<h1>ffx: ${runs.length} runs compared</h1>
<p class="sub">${runs.map((r) => esc(r.dir)).join(' · ')}</p>
</header>
<main>
${runTable(runs, labelled)}
${configDifferences(runs, labelled)}
<section class="charts">
${list.map(figure).join('\n')}
</section>
</main>
<footer>Made by <code>ffx-coordinator report ${runs.map((r) => esc(r.dir)).join(' ')}</code> from each run's config.json, metrics.jsonl and eval.json. Charts: Vega-Lite / Vega, inlined.</footer>`;
  return page(`ffx: ${labelled.map((l) => l.label).join(' vs ')}`, body, list, vega);
}

function runTable(runs: RunFiles[], labelled: LabelledRun[]): string {
  const rows = runs.map((r, i) => {
    const ev = lastEval(r);
    const seconds = r.epochs.reduce((s, e) => s + e.seconds, 0);
    const samples = r.epochs.reduce((s, e) => s + e.samplesPerSec * e.seconds, 0);
    const planned = obj(r.config.train).epochs;
    const cells = [
      ev ? pct(ev.accuracy) + (r.final ? '' : ' (last eval)') : '—',
      `${r.epochs.at(-1)?.epoch ?? 0} of ${typeof planned === 'number' ? planned : '?'}`,
      seconds > 0 ? duration(seconds) : '—',
      seconds > 0 ? Math.round(samples / seconds).toLocaleString('en-US') : '—',
      backendsOf(r.backends),
    ];
    return `<tr><td>${esc(labelled[i]!.label)}</td><td>${esc(r.dir)}</td>${cells.map((c, k) => `<td${k < 4 ? ' class="num"' : ''}>${esc(c)}</td>`).join('')}</tr>`;
  });
  return `<section class="card" id="runs">
<h2>Runs</h2>
<table><thead><tr><th>run</th><th>directory</th><th class="num">test accuracy</th><th class="num">epochs</th><th class="num">time in epochs</th><th class="num">samples/s</th><th>backend</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody></table>
</section>`;
}

/** Every config key (dotted path) whose value is not the same in every run. */
export function differingKeys(configs: Record<string, unknown>[]): Map<string, unknown[]> {
  const flat = configs.map((c) => flatten(c));
  const keys = [...new Set(flat.flatMap((f) => [...f.keys()]))].sort();
  const out = new Map<string, unknown[]>();
  for (const key of keys) {
    if (key === 'output.dir') continue; // always differs, and the table of runs shows it
    const values = flat.map((f) => f.get(key));
    const shown = values.map((v) => JSON.stringify(v));
    if (shown.some((v) => v !== shown[0])) out.set(key, values);
  }
  return out;
}

/** `{a: {b: 1, c: [2]}}` -> a.b = 1, a.c = [2] (arrays are values). */
function flatten(v: unknown, prefix = '', out = new Map<string, unknown>()): Map<string, unknown> {
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) flatten(x, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, v);
  }
  return out;
}

function configDifferences(runs: RunFiles[], labelled: LabelledRun[]): string {
  const diff = differingKeys(runs.map((r) => r.config));
  const show = (v: unknown) => (v === undefined ? '(not set)' : JSON.stringify(v));
  const body =
    diff.size === 0
      ? `<p class="caption">The runs' configs are the same (but for output.dir).</p>`
      : `<table><thead><tr><th>config key</th>${labelled.map((l) => `<th>${esc(l.label)}</th>`).join('')}</tr></thead>
<tbody>
${[...diff]
  .map(
    ([key, values]) =>
      `<tr><td><code>${esc(key)}</code></td>${values.map((v) => `<td><code>${esc(show(v))}</code></td>`).join('')}</tr>`,
  )
  .join('\n')}
</tbody></table>`;
  return `<section class="card" id="config-diff">
<h2>What the configs set differently</h2>
<p class="caption">Every key of config.json (the resolved configs) whose value is not the same in every run.</p>
${body}
</section>`;
}
