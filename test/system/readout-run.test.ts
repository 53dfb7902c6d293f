// Runs with readouts and hard negatives (single process): both prediction rules reported, the
// saved weights reproduce them, and a run resumed from a checkpoint ends with the bits of one
// that went straight through (the table hard negatives draw from is in the checkpoint).
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { EvalResult } from '../../src/core/predict.js';
import { decodeSafetensors } from '../../src/core/safetensors.js';
import { smallRun, trainLocally } from '../helpers/runs.js';
import { ROOT, runNode } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli', 'ffx-coordinator.js');
const READOUT = [
  '--set',
  'model.readout=true',
  '--set',
  'negatives.kind=hard',
  '--set',
  'negatives.hard=0.7',
  '--set',
  'eval.rule=readout',
];

describe('readout and hard negatives', () => {
  const tmp = tempDir('readout');

  it('reports both rules; eval --local of the saved weights reproduces them', async () => {
    const run = await trainLocally([...smallRun(3), ...READOUT], tmp('full'), 120_000);
    assert.equal(run.code, 0, run.stderr);
    const saved = JSON.parse(await readFile(tmp('full', 'eval.json'), 'utf8')) as EvalResult;
    assert.equal(saved.method, 'readout');
    assert.equal(saved.accuracy, saved.readout!.accuracy);
    assert.deepEqual(saved.confusion, saved.readout!.confusion);
    assert.ok(saved.goodness!.accuracy > 0.5, `goodness ${saved.goodness!.accuracy}`);
    assert.ok(saved.readout!.accuracy > 0.5, `readout ${saved.readout!.accuracy}`);
    const names = [
      ...decodeSafetensors(await readFile(tmp('full', 'model.safetensors'))).tensors.keys(),
    ];
    for (const n of ['layers.0.readout.weight', 'layers.1.readout.bias', 'negatives.predictions']) {
      assert.ok(names.includes(n), n);
    }

    // The saved weights alone give the same figures, both rules and each one alone (the
    // readout's one pass per image, or goodness's ten).
    const weights = tmp('full', 'model.safetensors');
    const evalOf = async (rule: string) => {
      const r = await runNode(
        [
          CLI,
          'eval',
          '--local',
          '--backend',
          'wasm',
          '--threads',
          '1',
          '--json',
          '--rule',
          rule,
          '--weights',
          weights,
        ],
        { timeoutMs: 60_000 },
      );
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as EvalResult;
    };
    const both = await evalOf('both');
    assert.deepEqual(both.readout, saved.readout);
    assert.deepEqual(both.goodness, saved.goodness);
    const readout = await evalOf('readout');
    assert.equal(readout.method, 'readout');
    assert.equal(readout.accuracy, saved.readout!.accuracy);
    assert.deepEqual(readout.perLayerSet, saved.readout!.perLayerSet);
    assert.equal(readout.goodness, undefined);
    const goodness = await evalOf('goodness');
    assert.equal(goodness.method, 'goodness');
    assert.deepEqual(goodness.confusion, saved.goodness!.confusion);
  });

  it('eval --rule readout of a model without readouts is a config error (exit 2)', async () => {
    const plain = await trainLocally(smallRun(1), tmp('plain'), 120_000);
    assert.equal(plain.code, 0, plain.stderr);
    const r = await runNode(
      [
        CLI,
        'eval',
        '--local',
        '--backend',
        'wasm',
        '--rule',
        'readout',
        '--weights',
        tmp('plain', 'model.safetensors'),
      ],
      { timeoutMs: 60_000 },
    );
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /CONFIG_INVALID.*--rule readout needs a model with readouts/);
  });

  it('a run resumed after epoch 2 ends with the bits of one that went straight through', async () => {
    // The full run's checkpoint after epoch 2 holds epoch 2's predictions: epoch 3 draws its
    // hard negatives from them, resumed or not.
    const resumed = await trainLocally(
      [...smallRun(3), ...READOUT, '--resume', tmp('full', 'checkpoint-epoch2.safetensors')],
      tmp('resumed'),
      120_000,
    );
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.equal(
      await maxWeightDiff(tmp('full', 'model.safetensors'), tmp('resumed', 'model.safetensors')),
      0,
    );
    // Hard negatives changed what was trained: not the weights of uniform negatives.
    const uniform = await trainLocally(
      [...smallRun(3), '--set', 'model.readout=true'],
      tmp('uniform'),
      120_000,
    );
    assert.equal(uniform.code, 0, uniform.stderr);
    assert.ok(
      (await maxWeightDiff(
        tmp('full', 'model.safetensors'),
        tmp('uniform', 'model.safetensors'),
      ).catch(() => 1)) > 0,
    );
  });
});
