// Scrapes that never stall: every process of a pipeline answers /metrics at once while its
// stages are deep in long training steps (the HTTP server runs on a thread of its own).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { killAll, ROOT, startNode, waitForOutput } from './helpers/spawn.js';

const SCRAPES = 20;
const LIMIT_MS = 250;

describe('scrapes during training', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ffx-scrape-'));
  });
  after(async () => {
    killAll();
    await rm(dir, { recursive: true, force: true });
  });

  it(`${SCRAPES} scrapes of every process each answer within ${LIMIT_MS} ms`, async (t) => {
    // Wide layers and big batches: each stage's step keeps its main thread busy for about a
    // second on one thread.
    const run = startNode(
      [
        join(ROOT, 'dist', 'src', 'cli', 'ffx-launch.js'),
        '--config',
        join(ROOT, 'config', 'demo.json'),
        '--layers',
        '784,2000,2000',
        '--batch-size',
        '1000',
        '--epochs',
        '3',
        '--backend',
        'wasm',
        '--stage-threads',
        '1',
        '--out',
        join(dir, 'run'),
      ],
      { timeoutMs: 180_000 },
    );
    // Data flows through every stage once the first quarter of an epoch is done.
    await waitForOutput(run.stderr, /\[coordinator\] epoch 1\/3 \d+% /, 90_000);
    const urls = /metrics at (\S+) (\S+) (\S+) \(coordinator/.exec(run.stderr())!.slice(1);
    const names = ['coordinator', 'stage 1', 'stage 2'];
    const worst = urls.map(() => 0);
    const states = urls.map(() => [] as string[]);
    const batches = urls.map(() => [] as number[]);
    for (let n = 0; n < SCRAPES; n++) {
      await Promise.all(
        urls.map(async (url, i) => {
          const t0 = performance.now();
          const res = await fetch(url);
          const text = await res.text();
          const ms = performance.now() - t0;
          worst[i] = Math.max(worst[i]!, ms);
          assert.equal(res.status, 200);
          assert.ok(ms < LIMIT_MS, `${names[i]}: scrape ${n + 1} took ${ms.toFixed(0)} ms`);
          const state = /^ffx_stage_state\{state="([a-z-]+)"[^}]*\} 1$/m.exec(text)?.[1];
          if (state) states[i]!.push(state);
          const done = /^ffx_stage_batches_total\{[^}]*phase="train"[^}]*\} (\d+)$/m.exec(text);
          if (done) batches[i]!.push(Number(done[1]));
        }),
      );
      await sleep(150);
    }
    t.diagnostic(
      `slowest scrape: ${names.map((name, i) => `${name} ${worst[i]!.toFixed(0)} ms`).join(', ')}`,
    );
    // The stages were at work while scraped: training (or evaluating, at an epoch's end) in
    // the renderings they served (each at most a step old), with batches done meanwhile.
    for (const i of [1, 2]) {
      assert.ok(
        states[i]!.some((s) => s === 'training' || s === 'evaluating'),
        `${names[i]}: ${states[i]!.join(' ')}`,
      );
      assert.ok(batches[i]!.at(-1)! > batches[i]![0]!, `${names[i]}: ${batches[i]!.join(' ')}`);
    }
    run.child.kill('SIGINT');
    await run.result;
  });
});
