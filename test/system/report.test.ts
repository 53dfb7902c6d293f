// The run report (`ffx-coordinator report`, written by every run as it ends), opened in a
// real headless Chromium: it draws every chart without a console error or a network request,
// and what the charts drew — read back from the marks' ARIA labels — is the run's numbers.
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Browser } from 'puppeteer-core';
import type { EpochRecord } from '../../src/coordinator/epoch-record.js';
import type { EvalResult } from '../../src/core/predict.js';
import { classNames } from '../../src/data/class-names.js';
import { renderReport } from '../../src/report/report.js';
import type { EpochPoint, RunFiles } from '../../src/report/run-files.js';
import { chartMarks, launchBrowser, openFile } from '../helpers/browser.js';
import { referenceRun, smallRun, trainPipelined } from '../helpers/runs.js';
import { killAll, ROOT, runNode } from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');
const FASHION = classNames('fashion-mnist-sample');

/** |a - b| within `rel` of b (the labels carry 12 significant digits). */
function near(a: number, b: number, rel: number, what: string): void {
  assert.ok(
    Math.abs(a - b) <= rel * Math.max(1, Math.abs(b)),
    `${what}: drew ${a}, the run has ${b}`,
  );
}

const num = (s: string | undefined) => Number(s);
const percent = (s: string | undefined) => Number(s!.replace('%', '')) / 100;

describe('run report', () => {
  const tmp = tempDir('report');
  let run = '';
  let records: EpochRecord[] = [];
  let final: EvalResult;
  let browser: Browser;

  before(async () => {
    run = tmp('run');
    // Two stages over tcp, an evaluation after each epoch: every chart has something to draw.
    const launched = await trainPipelined(
      [...smallRun(3, 500), '--set', 'train.evalEvery=1', '--quiet'],
      run,
      120_000,
    );
    assert.equal(launched.code, 0, launched.stderr);
    records = (await readFile(join(run, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as EpochRecord);
    final = JSON.parse(await readFile(join(run, 'eval.json'), 'utf8')) as EvalResult;
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    killAll();
  });

  it('is written by the run as it ends, one file that loads nothing from elsewhere', async () => {
    const html = await readFile(join(run, 'report.html'), 'utf8');
    assert.equal(records.length, 3);
    assert.match(html, /^<!doctype html>/);
    // (That nothing is fetched at all, the browser test checks.)
    for (const outside of [/<script[^>]+src=/i, /<link\b/i, /@import/i, /<iframe/i]) {
      assert.doesNotMatch(html, outside);
    }
    assert.ok(html.length < 2_000_000, `${html.length} bytes`);
  });

  it('renders in Chromium without console errors, and its charts hold the run’s numbers', async () => {
    const { page, problems } = await openFile(browser, join(run, 'report.html'));
    await page.waitForSelector('body[data-charts]', { timeout: 30_000 });
    const drawn = await page.$eval('body', (b) => b.getAttribute('data-charts'));
    assert.equal(drawn, '7/7');

    // The curves: each epoch's points (a run of batches each), every layer, at the fraction of
    // the run they end.
    const loss = await chartMarks(page, '[data-chart="loss"]');
    const marks = await chartMarks(page, '[data-chart="goodness"]');
    const goodness = marks.filter((m) => m.data !== undefined);
    const lr = await chartMarks(page, '[data-chart="lr"]');
    const points = records.flatMap((r) => {
      assert.ok(r.curve.length >= 10, `epoch ${r.epoch}: a curve of ${r.curve.length} points`);
      const total = r.curve.at(-1)!.batch;
      return r.curve.map((p, k) => {
        const first = k === 0 ? 1 : r.curve[k - 1]!.batch + 1;
        const batch = `${first === p.batch ? p.batch : `${first}-${p.batch}`} of ${total}`;
        return { r, p, batch, at: r.epoch - 1 + p.batch / total };
      });
    });
    assert.equal(loss.length, points.length * 2);
    assert.equal(goodness.length, points.length * 2 * 2);
    assert.equal(lr.length, points.length);
    // The threshold, as a rule: model.threshold=256 in smallRun.
    assert.deepEqual(
      marks.filter((m) => m.data === undefined),
      [{ threshold: '256' }],
    );
    for (const { r, p, batch, at } of points) {
      const where = (m: Record<string, string>) =>
        m.batch === batch && Math.abs(num(m.epoch) - at) < 1e-4;
      near(num(lr.find(where)?.['learning rate']), p.lr, 1e-10, `lr, epoch ${r.epoch} ${batch}`);
      p.layers.forEach((l, i) => {
        const mine = (m: Record<string, string>) => where(m) && m.layer === `layer ${i + 1}`;
        const drew = loss.find(mine);
        assert.ok(drew, `no loss point for epoch ${r.epoch} ${batch} layer ${i + 1}`);
        near(num(drew.loss), l.loss, 1e-10, `loss, epoch ${r.epoch} ${batch} layer ${i + 1}`);
        const pos = goodness.find((m) => mine(m) && m.data === 'positive');
        const neg = goodness.find((m) => mine(m) && m.data === 'negative');
        near(num(pos?.goodness), l.goodnessPos, 1e-10, `positive goodness, ${batch}`);
        near(num(neg?.goodness), l.goodnessNeg, 1e-10, `negative goodness, ${batch}`);
      });
    }
    // The curve's means are the epoch's, over runs of batches: weighted by their batches
    // (of equal sizes here), they make the epoch's mean.
    for (const r of records) {
      let sum = 0;
      r.curve.forEach(
        (p, k) => (sum += p.layers[0]!.loss * (p.batch - (r.curve[k - 1]?.batch ?? 0))),
      );
      const mean = sum / r.curve.at(-1)!.batch;
      near(mean, r.layers[0]!.loss, 1e-9 * Math.abs(mean), `epoch ${r.epoch}'s mean loss`);
    }

    // Per layer set: the evaluations after epochs 1 and 2, then eval.json (after the last).
    const accuracy = await chartMarks(page, '[data-chart="accuracy"]');
    const evaluated = records.filter((r) => r.eval);
    assert.equal(evaluated.length, 2);
    assert.equal(accuracy.length, 3 * final.perLayerSet.length);
    for (const r of evaluated) {
      for (const s of r.eval!.perLayerSet) {
        const m = accuracy.find(
          (x) => num(x.epoch) === r.epoch && x.set === s.name && x.when === 'during training',
        );
        near(percent(m?.accuracy), s.accuracy, 1e-9, `${s.name} accuracy, epoch ${r.epoch}`);
      }
    }
    for (const s of final.perLayerSet) {
      const m = accuracy.find((x) => num(x.epoch) === 3 && x.set === s.name && x.when === 'final');
      near(percent(m?.accuracy), s.accuracy, 1e-9, `${s.name} final accuracy`);
    }

    const speed = await chartMarks(page, '[data-chart="throughput"]');
    for (const r of records) {
      const m = speed.find((x) => num(x.epoch) === r.epoch);
      near(num(m?.['samples/s']), r.samplesPerSec, 1e-10, `samples/s, epoch ${r.epoch}`);
    }

    // A pipeline's layers wait and (de)code as well as compute: all of it is drawn.
    const time = await chartMarks(page, '[data-chart="stage-time"]');
    const parts = {
      compute: 'stepSeconds',
      transport: 'transportSeconds',
      'blocked on send': 'blockedSeconds',
      'waiting for input': 'waitSeconds',
    } as const;
    for (const layer of [0, 1]) {
      for (const [part, key] of Object.entries(parts)) {
        const total = records.reduce((s, r) => s + r.stages[layer]![key], 0);
        const m = time.find((x) => x.layer === `layer ${layer + 1}` && x.part === part);
        near(num(m?.seconds), total, 1e-9, `${part} seconds of layer ${layer + 1}`);
      }
    }
    assert.ok(records.every((r) => r.stages[1]!.transportSeconds > 0));

    // Every cell of the confusion matrix, by class name.
    const cells = await chartMarks(page, '[data-chart="confusion"]');
    assert.equal(cells.length, 100);
    final.confusion.forEach((row, t) =>
      row.forEach((count, p) => {
        const m = cells.find((x) => x.true === FASHION[t] && x.predicted === FASHION[p]);
        assert.equal(num(m?.count), count, `confusion[${FASHION[t]}][${FASHION[p]}]`);
      }),
    );

    const summary = await page.$eval('#summary', (e) => e.textContent ?? '');
    assert.ok(summary.includes(`${(100 * final.accuracy).toFixed(2)}%`), summary);
    assert.ok(summary.includes('3 of 3'), summary);
    // Both stages said hello as wasm (run.json).
    assert.ok(summary.includes('backendwasm'), summary);
    const config = await page.$eval('#config pre', (e) => e.textContent ?? '');
    assert.deepEqual(
      JSON.parse(config),
      JSON.parse(await readFile(join(run, 'config.json'), 'utf8')),
    );
    assert.deepEqual(problems, []);
    await page.close();
  });

  it('shows an unfinished, hand-edited run: junk lines left out, nothing in it runs', async () => {
    // No eval.json (the run was stopped), a name meant to break out of the page, junk lines.
    const partial = tmp('partial');
    await mkdir(partial);
    const cfg = JSON.parse(await readFile(join(run, 'config.json'), 'utf8')) as { name: string };
    cfg.name = '</script><script>alert("name")</script><img src=x onerror=alert(1)>';
    await writeFile(join(partial, 'config.json'), JSON.stringify(cfg));
    const lines = (await readFile(join(run, 'metrics.jsonl'), 'utf8')).trim().split('\n');
    await writeFile(
      join(partial, 'metrics.jsonl'),
      [
        lines[0],
        'not json',
        '{"epoch":"2"}',
        '{"epoch":2,"layers":[{"loss":"</script>"}]}',
        lines[1],
      ]
        .map((l) => l + '\n')
        .join(''),
    );
    await copyFile(join(run, 'model.safetensors'), join(partial, 'model.safetensors'));
    const made = await runNode([join(CLI, 'ffx-coordinator.js'), 'report', partial], {
      timeoutMs: 30_000,
    });
    assert.equal(made.code, 0, made.stderr);
    assert.equal(made.stdout.trim(), `report: ${join(partial, 'report.html')}`);
    // The console says what the page says it left out.
    assert.match(made.stderr, /^note: 3 lines of metrics\.jsonl are not an epoch record/m);
    assert.match(made.stderr, /^note: No eval\.json: the run has not finished/m);

    const { page, problems } = await openFile(browser, join(partial, 'report.html'));
    await page.waitForSelector('body[data-charts]', { timeout: 30_000 });
    assert.equal(await page.$eval('body', (b) => b.getAttribute('data-charts')), '7/7');
    assert.equal(await page.$eval('h1 .name', (e) => e.textContent), cfg.name);
    const notes = await page.$eval('.notes', (e) => e.textContent ?? '');
    assert.match(notes, /No eval\.json/);
    assert.match(notes, /3 lines of metrics\.jsonl are not an epoch record/);
    // Two epochs drawn, their curves' points for both layers; the matrix is epoch 2's evaluation.
    assert.equal(
      (await chartMarks(page, '[data-chart="loss"]')).length,
      (records[0]!.curve.length + records[1]!.curve.length) * 2,
    );
    const epoch2 = records[1]!.eval!;
    const cells = await chartMarks(page, '[data-chart="confusion"]');
    assert.equal(
      num(cells.find((x) => x.true === FASHION[0] && x.predicted === FASHION[0])?.count),
      epoch2.confusion[0]![0],
    );
    const summary = await page.$eval('#summary', (e) => e.textContent ?? '');
    assert.ok(summary.includes('2 of 3'), summary);
    assert.ok(summary.includes(`${(100 * epoch2.accuracy).toFixed(2)}%`), summary);
    assert.deepEqual(problems, []);
    await page.close();
  });

  it('compares runs: both drawn on the same charts, their config differences in a table', async () => {
    // A second run: one process, two epochs, evaluated only at the end.
    const other = await referenceRun(smallRun(2));
    const out = tmp('a-vs-b.html');
    const made = await runNode(
      [join(CLI, 'ffx-coordinator.js'), 'report', run, other, '--out', out],
      { timeoutMs: 30_000 },
    );
    assert.equal(made.code, 0, made.stderr);
    assert.equal(made.stdout.trim(), `report: ${out}`);
    const otherRecords = (await readFile(join(other, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as EpochRecord);
    const otherFinal = JSON.parse(await readFile(join(other, 'eval.json'), 'utf8')) as EvalResult;
    // Both configs are named "demo": each run is told apart by its directory.
    const labels = [`demo (${basename(run)})`, `demo (${basename(other)})`];

    const { page, problems } = await openFile(browser, out);
    await page.waitForSelector('body[data-charts]', { timeout: 30_000 });
    assert.equal(await page.$eval('body', (b) => b.getAttribute('data-charts')), '4/4');
    const diff = await page.$$eval('#config-diff tbody tr', (rows) =>
      rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent ?? '')),
    );
    assert.deepEqual(
      diff.find((r) => r[0] === 'train.epochs'),
      ['train.epochs', '3', '2'],
    );
    assert.equal(diff.find((r) => r[0] === 'train.evalEvery')?.[1], '1');
    assert.ok(!diff.some((r) => r[0] === 'output.dir' || r[0] === 'model.layers'), String(diff));

    const accuracy = await chartMarks(page, '[data-chart="accuracy"]');
    const finals = accuracy.filter((m) => m.when === 'final');
    near(percent(finals.find((m) => m.run === labels[0])?.accuracy), final.accuracy, 1e-9, 'run A');
    near(
      percent(finals.find((m) => m.run === labels[1])?.accuracy),
      otherFinal.accuracy,
      1e-9,
      'run B',
    );
    // A's evaluations after each epoch, B's at the end only.
    const evals = (rs: EpochRecord[]) => rs.filter((r) => r.eval).length + 1;
    assert.equal(evals(otherRecords), 1);
    assert.equal(accuracy.length, evals(records) + evals(otherRecords));
    const loss = await chartMarks(page, '[data-chart="loss"]');
    for (const [label, recs] of [
      [labels[0]!, records],
      [labels[1]!, otherRecords],
    ] as const) {
      const mine = loss.filter((m) => m.run === label);
      assert.equal(mine.length, recs.reduce((n, r) => n + r.curve.length, 0) * 2, label);
      const lastPoint = recs.at(-1)!.curve.at(-1)!;
      const drew = mine.find((m) => m.layer === 'layer 2' && num(m.epoch) === recs.length);
      near(num(drew?.loss), lastPoint.layers[1]!.loss, 1e-10, `${label}: the last loss`);
      const speed = (await chartMarks(page, '[data-chart="throughput"]')).filter(
        (m) => m.run === label,
      );
      assert.equal(speed.length, recs.length);
      near(
        num(speed.at(-1)?.['samples/s']),
        recs.at(-1)!.samplesPerSec,
        1e-3,
        `${label}: samples/s`,
      );
    }
    assert.equal(
      (await chartMarks(page, '[data-chart="lr"]')).length,
      records.reduce((n, r) => n + r.curve.length, 0) +
        otherRecords.reduce((n, r) => n + r.curve.length, 0),
    );
    assert.deepEqual(problems, []);
    await page.close();

    // One run is a report; none is a usage error.
    const none = await runNode([join(CLI, 'ffx-coordinator.js'), 'report'], { timeoutMs: 30_000 });
    assert.equal(none.code, 2);
  });

  it('refuses a directory that is not a run (exit 2, REPORT_NOT_A_RUN)', async () => {
    const r = await runNode([join(CLI, 'ffx-coordinator.js'), 'report', tmp('nothing')], {
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /REPORT_NOT_A_RUN.*it has no config\.json/);
    // A garbage config.json is named as such, not as a missing one.
    const garbled = tmp('garbled');
    await mkdir(garbled);
    await writeFile(join(garbled, 'config.json'), '{"name": "trunc');
    const g = await runNode([join(CLI, 'ffx-coordinator.js'), 'report', garbled], {
      timeoutMs: 30_000,
    });
    assert.equal(g.code, 2);
    assert.match(
      g.stderr,
      /REPORT_NOT_A_RUN.*garbled\/config\.json is not a run's config \(not a JSON object\)/,
    );
  });

  it('names an eval.json that is not one, rather than call the run unfinished', async () => {
    const dir = tmp('bad-eval');
    await mkdir(dir);
    for (const f of ['config.json', 'metrics.jsonl']) await copyFile(join(run, f), join(dir, f));
    await writeFile(join(dir, 'eval.json'), '{"accuracy": "high"}');
    const r = await runNode([join(CLI, 'ffx-coordinator.js'), 'report', dir], {
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /^note: eval\.json is not what a run writes \(edited or damaged\?\): left out\.$/m,
    );
    assert.doesNotMatch(r.stderr, /has not finished/);
  });
});

describe('run report: the goodness chart and the losses', () => {
  const epoch: EpochPoint = {
    epoch: 1,
    seconds: 1,
    samplesPerSec: 1,
    lr: 0.001,
    layers: [
      { loss: 0.4, goodnessPos: 300, goodnessNeg: 200 },
      { loss: 4, goodnessPos: 1100, goodnessNeg: 850 },
    ],
    stages: [],
    curve: [],
  };
  const caption = (loss: unknown): string => {
    const run: RunFiles = {
      dir: 'r',
      config: { model: { threshold: 1000, loss } },
      epochs: [epoch],
      final: undefined,
      skippedLines: 0,
      unreadable: [],
      backends: [],
    };
    const html = renderReport(run, '');
    const at = html.indexOf('Goodness of positive and negative data');
    return /<p class="caption">([^<]*)<\/p>/.exec(html.slice(at))![1]!;
  };

  it('draws the threshold for the layers that have the threshold loss, and says which', () => {
    assert.match(caption(undefined), /above the threshold \(1000, dotted grey\), negative/);
    assert.match(caption(['softmax', 'threshold']), /\(1000, dotted grey; layer 2\)/);
    assert.match(caption('symba'), /no threshold/);
  });
});
