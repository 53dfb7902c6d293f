// The dashboard against a real Prometheus: Debian's `prometheus` server on 127.0.0.1 scrapes a
// short distributed ffx run (coordinator + 2 stages), and every panel's query, run through
// Prometheus's HTTP API while the run is going, returns data.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { freePort } from '../../src/transport/sockets.js';
import {
  ROOT,
  startCommand,
  startNode,
  startStage,
  waitForOutput,
  type Started,
} from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

interface Panel {
  title?: string;
  targets?: { expr?: string }[];
  panels?: Panel[];
}

/** Grafana's variables as the dashboard would resolve them for this run. */
function resolveVariables(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '30s')
    .replaceAll('$job', 'ffx')
    .replaceAll('$instance', '.*')
    .replaceAll('$run', '.*')
    .replaceAll('$layer', '.*');
}

describe('dashboard queries on a live Prometheus', () => {
  const tmp = tempDir('prom');
  let promUrl = '';
  let coordinator: Started;

  before(async () => {
    // Not a skip: CI installs the package (.ci/run); elsewhere this says what is missing.
    const has = spawnSync('prometheus', ['--version']);
    assert.equal(
      has.error,
      undefined,
      'prometheus not found: install the Debian package `prometheus`',
    );
    const [promPort, coordPort, s1, s2, control] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const targets = [coordPort, s1, s2].map((p) => `'127.0.0.1:${p}'`).join(', ');
    await writeFile(
      tmp('prometheus.yml'),
      `global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ffx\n    static_configs:\n      - targets: [${targets}]\n`,
    );
    startCommand(
      'prometheus',
      [
        `--config.file=${tmp('prometheus.yml')}`,
        `--storage.tsdb.path=${tmp('data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ],
      { timeoutMs: 120_000 },
    );
    promUrl = `http://127.0.0.1:${promPort}`;
    const endpoint = `tcp://127.0.0.1:${control}`;
    coordinator = startNode(
      [
        join(ROOT, 'dist', 'src', 'cli', 'ffx-coordinator.js'),
        'train',
        '--config',
        join(ROOT, 'config', 'demo.json'),
        '--set',
        'data.trainLimit=1000',
        '--set',
        'data.testLimit=300',
        '--epochs',
        '200',
        '--bind',
        endpoint,
        '--metrics-port',
        String(coordPort),
        '--stop-stages',
        '--out',
        tmp('run'),
      ],
      { timeoutMs: 120_000 },
    );
    for (const [layer, port] of [
      [1, s1],
      [2, s2],
    ] as const) {
      startStage(layer, endpoint, 120_000, ['--metrics-port', String(port)]);
    }
    // Several epochs in (each evaluates), and Prometheus scraping all three processes for a
    // few seconds, so every series has a history to rate over.
    await waitForOutput(coordinator.stderr, /epoch 3\/200 /, 60_000);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const res = await fetch(
        `${promUrl}/api/v1/query?query=${encodeURIComponent('count(up{job="ffx"} == 1)')}`,
      ).catch(() => null);
      const body = res?.ok
        ? ((await res.json()) as { data: { result: { value: [number, string] }[] } })
        : null;
      if (body?.data.result[0]?.value[1] === '3') break;
      assert.ok(Date.now() < deadline, 'Prometheus did not get all three targets up within 30 s');
      await new Promise((r) => setTimeout(r, 250));
    }
    await new Promise((r) => setTimeout(r, 5000));
    assert.equal(coordinator.child.exitCode, null, 'the run is still going while the queries run');
  });

  it('every panel query returns data', async () => {
    const dashboard = JSON.parse(
      await readFile(join(ROOT, 'grafana', 'dashboards', 'ffx.json'), 'utf8'),
    ) as {
      panels: Panel[];
    };
    const queries: { title: string; expr: string }[] = [];
    const walk = (panels: Panel[]) => {
      for (const p of panels) {
        for (const t of p.targets ?? [])
          if (t.expr) queries.push({ title: p.title ?? '', expr: t.expr });
        if (p.panels) walk(p.panels);
      }
    };
    walk(dashboard.panels);
    assert.ok(queries.length >= 30, `only ${queries.length} queries`);
    // All three targets are being scraped.
    const empty: string[] = [];
    for (const { title, expr } of queries) {
      const res = await fetch(
        `${promUrl}/api/v1/query?query=${encodeURIComponent(resolveVariables(expr))}`,
      );
      const body = (await res.json()) as {
        status: string;
        error?: string;
        data?: { result: unknown[] };
      };
      assert.equal(body.status, 'success', `${title}: ${expr}: ${body.error}`);
      if ((body.data?.result.length ?? 0) === 0) empty.push(`${title}: ${expr}`);
    }
    assert.deepEqual(empty, [], `queries without data:\n${empty.join('\n')}`);
  });
});
