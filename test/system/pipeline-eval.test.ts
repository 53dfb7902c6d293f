// Stages outlive a run: after `ffx-coordinator train` they keep their layers and wait for the
// next coordinator, so `ffx-coordinator eval` evaluates what they hold; `--stop-stages` ends
// them. A stage with no trained layer refuses an eval with an error that names the layer.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import type { EvalResult } from '../../src/core/predict.js';
import { decodeSafetensors } from '../../src/core/safetensors.js';
import { freePort } from '../../src/transport/sockets.js';
import { ROOT, runNode, startStage, type Started } from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');
const MODEL = [
  '--config',
  join(ROOT, 'config', 'demo.json'),
  '--layers',
  '784,64,64',
  '--set',
  'model.threshold=64',
  '--set',
  'data.trainLimit=1000',
  '--set',
  'data.testLimit=400',
  '--quiet',
];

describe('eval of the layers running stages hold', () => {
  const tmp = tempDir('eval');
  let control = '';
  let stages: Started[] = [];
  const coordinator = (args: string[]) =>
    runNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        ...args,
        ...MODEL,
        '--bind',
        control,
        '--register-timeout',
        '20',
      ],
      {
        timeoutMs: 60_000,
      },
    );

  before(async () => {
    control = `tcp://127.0.0.1:${await freePort()}`;
    stages = [1, 2].map((layer) => startStage(layer, control, 90_000));
  });

  it('refuses to evaluate before any training, naming the layer', async () => {
    const r = await coordinator(['eval']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /error \[STAGE_NO_WEIGHTS\]: layer \d: asked to evaluate \d+-64, but this stage holds no trained layer/,
    );
  });

  it('without a config before any training: says what each layer holds', async () => {
    const r = await runNode(
      [join(CLI, 'ffx-coordinator.js'), 'eval', '--bind', control, '--register-timeout', '4'],
      { timeoutMs: 30_000 },
    );
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /error \[CLUSTER_MISSING_STAGES\]: no trained run whose every layer a stage holds within 4s \(layer 1: no trained layer; layer 2: no trained layer\): give the run's --config/,
    );
  });

  it("train, then eval on the running stages gives the training run's final result", async () => {
    const out = tmp('run');
    const t = await coordinator([
      'train',
      '--epochs',
      '2',
      '--set',
      'output.checkpointEvery=1',
      '--out',
      out,
    ]);
    assert.equal(t.code, 0, t.stderr);
    const trained = JSON.parse(await readFile(join(out, 'eval.json'), 'utf8')) as EvalResult;
    // The mid-run checkpoint holds both layers as they were after epoch 1 (10 steps each).
    const ckpt = decodeSafetensors(await readFile(join(out, 'checkpoint-epoch1.safetensors')));
    assert.equal(ckpt.metadata.epoch, '1');
    assert.deepEqual(JSON.parse(ckpt.metadata.optimizerSteps!), [10, 10]);
    assert.deepEqual(ckpt.tensors.get('layers.1.weight')!.shape, [64, 64]);
    const e = await coordinator(['eval', '--json']);
    assert.equal(e.code, 0, e.stderr);
    const lines = e.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { event: string });
    const evaluated = lines.pop() as EvalResult & { split: string; event: string };
    assert.ok(lines.every((l) => l.event === 'log'));
    assert.equal(evaluated.event, 'result');
    assert.equal(evaluated.split, 'test');
    assert.equal(evaluated.count, 400);
    assert.deepEqual(evaluated.confusion, trained.confusion);
    assert.equal(evaluated.accuracy, trained.accuracy);
    // Both stages are still up, waiting for the next coordinator.
    for (const s of stages) assert.equal(s.child.exitCode, null);

    // Without a config (nor --layers, nor the data limits): the stages' run's config, so the
    // same result.
    const bare = await runNode(
      [join(CLI, 'ffx-coordinator.js'), 'eval', '--bind', control, '--register-timeout', '20'],
      { timeoutMs: 60_000 },
    );
    assert.equal(bare.code, 0, bare.stderr);
    assert.match(
      bare.stderr,
      /no --config: evaluating what the stages hold, 784-64-64 \(run config "demo", data fashion-mnist-sample\)/,
    );
    assert.match(
      bare.stdout,
      new RegExp(`^test accuracy ${(trained.accuracy * 100).toFixed(2)}% \\(400 images`, 'm'),
    );
  });

  it('--stop-stages ends the stages after the run', async () => {
    const e = await coordinator(['eval', '--split', 'train', '--stop-stages']);
    assert.equal(e.code, 0, e.stderr);
    assert.match(e.stdout, /^train accuracy \d+\.\d+% \(1000 images/m);
    for (const s of stages) {
      const r = await s.result;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /layer \d: stopped/);
    }
  });
});
