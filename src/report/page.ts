// What a report page is made of, whether it shows one run (report.ts) or compares several
// (compare.ts): the charts' figures, Vega's browser build inlined with the code that draws
// them, and the style. The page opens from disk with no network.
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compile } from 'vega-lite';
import type { Chart } from './charts.js';

let vegaCache: string | undefined;

/** Vega's minified browser build and its licence, from the installed package. */
export async function vegaSource(): Promise<string> {
  if (vegaCache === undefined) {
    const pkg = dirname(dirname(fileURLToPath(import.meta.resolve('vega'))));
    const [code, licence] = await Promise.all([
      readFile(join(pkg, 'build', 'vega.min.js'), 'utf8'),
      readFile(join(pkg, 'LICENSE'), 'utf8'),
    ]);
    vegaCache = `/*! Vega, https://vega.github.io\n${licence.replaceAll('*/', '* /')}*/\n${code}`;
  }
  return vegaCache;
}

/**
 * The page: `title` in the tab, `body` (header and main, from the caller), then the charts'
 * compiled specs and the code that draws each into its figure (figure()).
 */
export function page(title: string, body: string, charts: Chart[], vega: string): string {
  const specs = charts.map((c) => ({ id: c.id, spec: compile(c.spec).spec }));
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ffx-coordinator report">
<title>${esc(title)}</title>
<style>${STYLE}</style>
</head>
<body>
${body}
<script type="application/json" id="ffx-charts">${scriptJson(specs)}</script>
<script>${vega}</script>
<script>${DRAW}</script>
</body>
</html>
`;
}

/** Draws each chart into its figure; `data-charts` on <body> says how many drew. */
const DRAW = `
(function () {
  var specs = JSON.parse(document.getElementById('ffx-charts').textContent);
  var drawn = 0;
  Promise.all(specs.map(function (c) {
    var el = document.querySelector('[data-chart="' + c.id + '"] .chart');
    var view = new vega.View(vega.parse(c.spec), { renderer: 'svg', container: el, hover: true });
    return view.runAsync().then(function () { drawn++; }, function (err) {
      el.textContent = 'This chart could not be drawn: ' + err;
      console.error('chart ' + c.id + ': ' + err);
    });
  })).then(function () {
    document.body.setAttribute('data-charts', drawn + '/' + specs.length);
  });
})();
`;

export function figure(c: Chart): string {
  return `<figure class="card" data-chart="${esc(c.id)}">
<h2>${esc(c.title)}</h2>
<p class="caption">${esc(c.caption)}</p>
<div class="chart"></div>
</figure>`;
}

/** "wasm+blas (...)" when every layer ran on the same, else "layer 1: ..., layer 2: ...". */
/** Text for HTML content and attributes. */
export function esc(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!,
  );
}

/** JSON safe inside a <script> element: no "</script>", "<!--" or line separators. */
function scriptJson(v: unknown): string {
  return JSON.stringify(v)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

const STYLE = `
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --bg: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { padding: 20px 28px 8px; }
h1 { margin: 0; font-size: 22px; font-weight: 600; }
h1 .name { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.sub { margin: 4px 0 0; color: var(--muted); }
main { padding: 8px 28px 28px; max-width: 1200px; }
.summary { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 16px; }
.figure { background: white; border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.figure .k { color: var(--muted); font-size: 12px; }
.figure .v { font-size: 18px; font-weight: 600; }
.notes p { background: #fff7e0; border: 1px solid #f0d890; border-radius: 6px; padding: 8px 12px; margin: 0 0 8px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.card { background: white; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; margin: 0 0 16px; }
.charts .card { margin: 0; flex: 0 1 auto; }
.card h2 { margin: 0; font-size: 15px; font-weight: 600; }
.caption { margin: 2px 0 8px; color: var(--muted); font-size: 12px; max-width: 500px; }
#config { margin-top: 16px; }
table { border-collapse: collapse; }
th, td { padding: 3px 14px 3px 0; border-bottom: 1px solid var(--line); text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { margin: 0; font-size: 12px; max-height: 480px; overflow: auto; }
footer { padding: 0 28px 24px; color: var(--muted); font-size: 12px; }
`;
