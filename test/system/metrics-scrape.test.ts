// Scrapes that never stall: a process whose main thread is busy in long steps (as a stage's is,
// computing a wide layer) still answers /metrics at once, because the HTTP server runs on a
// thread of its own, and what it serves is at most a step and the refresh second old, whoever
// scrapes and however rarely (the first scrape too).
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { describe, it } from 'node:test';
import { ROOT, startNode, waitForOutput, type Started } from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

const SCRAPES = 20;
const LIMIT_MS = 250;
const STEP_MS = 600;
/** A rendering is at most a step and the refresh second old (and a little slack). */
const MAX_AGE_S = STEP_MS / 1000 + 1 + 0.25;

/**
 * A stage's metrics, and a main thread busy for STEP_MS at a time, one batch counted a step,
 * for argv[2] steps.
 */
const BUSY = `
const m = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'src', 'metrics', 'index.js')).href)});
const registry = m.createRegistry('stage', { layer: '1' }, { backend: 'cpu' });
const metrics = new m.StageMetrics(registry, 1);
const server = await m.MetricsServer.start(registry, { host: '127.0.0.1', port: 0 });
console.error('metrics at http://127.0.0.1:' + server.port + '/metrics');
// Waiting for a coordinator a while (nobody scrapes), then a run's steps.
await new Promise((r) => setTimeout(r, 2500));
metrics.setState('training');
for (let step = 1; step <= Number(process.argv[2]); step++) {
  const end = Date.now() + ${STEP_MS};
  while (Date.now() < end) {} // the main thread is busy: nothing but the server's thread answers
  metrics.onTrainStep({ samples: 100, stepSeconds: ${STEP_MS / 1000}, waitSeconds: 0,
    transportSeconds: 0, sendSeconds: 0, epoch: 1, loss: 0.5, goodnessPos: 2, goodnessNeg: 1 });
  console.error('step ' + step + ' at ' + Date.now());
  await new Promise((r) => setImmediate(r)); // between steps, as a stage's loop does
}
await server.close();
`;

describe('scrapes while the main thread is busy', () => {
  const tmp = tempDir('scrape');

  /** The busy process, running `steps` steps; resolves once it is in step 3. */
  async function busy(steps: number): Promise<{ child: Started; url: string }> {
    const script = tmp('busy.mjs');
    await writeFile(script, BUSY);
    const child = startNode([script, String(steps)], { timeoutMs: 30_000 + steps * STEP_MS * 2 });
    // Nobody scraped before: the first scrape comes a refresh second and a step after the run
    // began, mid-step.
    await waitForOutput(child.stderr, /step 3 at/, 20_000);
    return { child, url: /metrics at (\S+)/.exec(child.stderr())![1]! };
  }

  /**
   * One scrape: answered within LIMIT_MS, the run's state and batches as of the last step or
   * the one before (a rendering made between two steps, at most a second before the last step
   * finished), and an age that says so. Returns how long it took.
   */
  async function scrape(child: Started, url: string, what: string): Promise<number> {
    const t0 = performance.now();
    const res = await fetch(url);
    const text = await res.text();
    const ms = performance.now() - t0;
    assert.equal(res.status, 200);
    assert.ok(ms < LIMIT_MS, `${what} took ${ms.toFixed(0)} ms`);
    assert.match(text, /^ffx_stage_state\{state="training"[^}]*\} 1$/m);
    const served = Number(
      /^ffx_stage_batches_total\{[^}]*phase="train"[^}]*\} (\d+)$/m.exec(text)?.[1],
    );
    const steps = [...child.stderr().matchAll(/step (\d+) at/g)].length;
    assert.ok(served >= steps - 1 && served <= steps, `${what}: ${served} batches, ${steps} steps`);
    const age = Number(/^ffx_metrics_rendering_age_seconds\{[^}]*\} (\S+)$/m.exec(text)?.[1]);
    assert.ok(age >= 0 && age <= MAX_AGE_S, `${what}: rendering ${age} s old`);
    return ms;
  }

  it(`${SCRAPES} scrapes each answer within ${LIMIT_MS} ms, none more than a step and a second old`, async (t) => {
    const { child, url } = await busy(12);
    let worst = 0;
    for (let n = 0; n < SCRAPES; n++) {
      worst = Math.max(worst, await scrape(child, url, `scrape ${n + 1}`));
      await sleep(150);
    }
    t.diagnostic(`slowest scrape: ${worst.toFixed(0)} ms`);
    const r = await child.result;
    assert.equal(r.code, 0, r.stderr);
  });

  it('a scrape 70 s after the last (past any once-a-minute renewal) is as fresh', async () => {
    const { child, url } = await busy(Math.ceil(75_000 / STEP_MS));
    await scrape(child, url, 'the first scrape');
    await sleep(70_000);
    await scrape(child, url, 'a scrape 70 s later');
    child.child.kill('SIGKILL');
    await child.result;
  });
});
