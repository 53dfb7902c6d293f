// A stage's life across coordinators and signals: stages whose coordinator was stopped with
// SIGINT in mid-epoch drop that run (its leftovers counted, never failing anything) and serve
// the next coordinator's run to completion, with the weights a fresh run gets; SIGTERM ends a
// stage promptly in any state, including while it waits for a coordinator.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { freePort } from '../../src/transport/sockets.js';
import { ROOT, startNode, startStage, waitForOutput, type Started } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { metricsUrl, scrape, seriesValue } from '../helpers/metrics.js';
import { smallRun, referenceRun } from '../helpers/runs.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

// Layer 2 (512 -> 2048) costs 2.6 times layer 1 (784 -> 512): stage 2 is the bottleneck, so
// in mid-epoch the link into it is full of the run's batches, and they become leftovers.
const MODEL = [
  '--config',
  join(ROOT, 'config', 'demo.json'),
  '--layers',
  '784,512,2048',
  '--set',
  'model.threshold=2048',
  '--set',
  'data.trainLimit=2000',
  '--set',
  'data.testLimit=300',
  '--set',
  'train.evalEvery=0',
];

async function scrapeStage(stage: Started): Promise<string> {
  return scrape(metricsUrl(stage.stderr()));
}

/** Resolves with the time (ms) `started` took to exit after `signal`, and its result. */
async function timeToExit(started: Started, signal: NodeJS.Signals) {
  const t0 = performance.now();
  started.child.kill(signal);
  const r = await started.result;
  return { ms: performance.now() - t0, r };
}

describe('stage lifecycle across coordinators', () => {
  const tmp = tempDir('lifecycle');
  let control = '';
  let stages: Started[] = [];
  const coordinator = (epochs: number, out: string) =>
    startNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        ...MODEL,
        '--epochs',
        String(epochs),
        '--bind',
        control,
        '--out',
        tmp(out),
      ],
      { timeoutMs: 90_000 },
    );

  before(async () => {
    control = `tcp://127.0.0.1:${await freePort()}`;
    stages = [1, 2].map((layer) => startStage(layer, control, 150_000, ['--verbose']));
  });

  it('after a coordinator is stopped with SIGINT in mid-epoch, serve the next run to completion', async () => {
    const first = coordinator(50, 'interrupted');
    // In mid-epoch: training batches are flowing through both stages.
    await waitForOutput(first.stderr, /epoch 1\/50 \d+% /, 60_000);
    const { r } = await timeToExit(first, 'SIGINT');
    assert.equal(r.code, 130, r.stderr.slice(-2000));
    assert.match(r.stderr, /^error \[RUN_INTERRUPTED\]: interrupted by SIGINT$/m);
    const run = /run ([0-9a-f]{8})\)/.exec(r.stderr)?.[1];
    assert.ok(run, 'the coordinator names its run');
    // Told in band, both stages drop the run and wait for the next coordinator.
    for (const [i, s] of stages.entries()) {
      await waitForOutput(s.stderr, new RegExp(`coordinator aborted run ${run}`), 10_000);
      await waitForOutput(
        s.stderr,
        new RegExp(`layer ${i + 1}: training -> between-runs \\(run ${run} aborted\\)`),
        10_000,
      );
    }

    const second = coordinator(1, 'next');
    const r2 = await second.result;
    assert.equal(r2.code, 0, r2.stderr.slice(-3000));
    assert.match(r2.stdout, /test accuracy \d+\.\d+% \(300 images/);

    // The aborted run's leftovers were dropped and counted; nothing was rejected.
    let leftovers = 0;
    for (const [i, s] of stages.entries()) {
      const text = await scrapeStage(s);
      const labels = `role="stage",layer="${i + 1}"`;
      leftovers += seriesValue(text, `ffx_stage_leftover_messages_total{${labels}}`);
      for (const reason of ['BAD_RUN', 'BAD_WIDTH', 'BAD_SHAPE']) {
        assert.equal(
          seriesValue(text, `ffx_stage_rejected_messages_total{reason="${reason}",${labels}}`),
          0,
          `layer ${i + 1} ${reason}`,
        );
      }
      assert.equal(seriesValue(text, `ffx_stage_state{state="between-runs",${labels}}`), 1);
    }
    assert.ok(leftovers >= 1, `leftovers counted: ${leftovers}`);

    // Nothing of the aborted run reached the new one: it ends with a fresh run's weights.
    const local = await referenceRun([...MODEL, '--epochs', '1']);
    assert.equal(
      await maxWeightDiff(join(local, 'model.safetensors'), tmp('next', 'model.safetensors')),
      0,
    );
  });

  it('SIGTERM ends a stage between runs, exit 0', async () => {
    const { r } = await timeToExit(stages[1]!, 'SIGTERM');
    assert.equal(r.code, 0, r.stderr.slice(-2000));
    assert.match(r.stderr, /layer 2: SIGTERM, stopping/);
    assert.match(r.stderr, /between-runs -> closing/);
  });

  it('SIGTERM ends a stage that waits for its coordinator within 2 s, exit 0', async () => {
    // Nothing listens here: the stage says hello into the void, waiting.
    const nobody = `tcp://127.0.0.1:${await freePort()}`;
    const waiting = startStage(1, nobody, 30_000, ['--verbose']);
    await waitForOutput(waiting.stderr, /layer 1: listening on /, 20_000);
    const { ms, r } = await timeToExit(waiting, 'SIGTERM');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.signal, null);
    assert.match(r.stderr, /waiting -> closing/);
    assert.ok(ms < 2000, `exited ${ms.toFixed(0)} ms after SIGTERM`);
  });

  it('exits without a ZeroMQ warning: hellos queued for a coordinator that is gone do not hold it', async () => {
    // Stages without metrics (a metrics thread changes how a process exits), a run, then
    // seconds of hellos into the void before SIGTERM. zeromq.js warns "Waiting for queued
    // ZeroMQ messages to be delivered" when queued messages hold an exit for 500 ms.
    const bind = `tcp://127.0.0.1:${await freePort()}`;
    const pair = [1, 2].map((layer) => startStage(layer, bind, 90_000, ['--no-metrics']));
    const run = await startNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        ...smallRun(1, 200),
        '--no-metrics',
        '--bind',
        bind,
        '--out',
        tmp('quiet-exit'),
      ],
      { timeoutMs: 90_000 },
    ).result;
    assert.equal(run.code, 0, run.stderr.slice(-2000));
    assert.doesNotMatch(run.stderr, /WARNING/);
    await delay(4500);
    for (const [i, stage] of pair.entries()) {
      const { r } = await timeToExit(stage, 'SIGTERM');
      assert.equal(r.code, 0, r.stderr.slice(-2000));
      assert.match(r.stderr, new RegExp(`layer ${i + 1}: stopped`));
      assert.doesNotMatch(r.stderr, /WARNING/);
    }
  });
});
