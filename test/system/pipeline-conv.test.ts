// Conv stages (CwComp's channel-wise competitive layers) as a pipeline compute the same bits as
// one process: three conv stages end with the weights, BatchNorm statistics and predictions of
// `train --local` (the prediction rule's layer weights fitted on held-out training images), on
// wasm and on wasm+blas (where the small-patch layers step fused); a run resumed from its
// epoch-1 checkpoint ends where the uninterrupted one did; a stage on two replicas
// (train.shards=2) ends with `train --local`'s bits for those shards; and a stage killed with
// SIGKILL mid-epoch is started again and rolled back to the same result. On the shipped sample,
// a few seconds an epoch.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import type { EvalResult } from '../../src/core/predict.js';
import { decodeSafetensors } from '../../src/core/safetensors.js';
import { killAll, ROOT, runNode, startNode, waitForOutput } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { blasLoads } from '../helpers/backends.js';
import { ON_WASM, referenceRun, type OnBackend } from '../helpers/runs.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

const LAYERS = [
  [1, 28, 28],
  { conv: 10, kernel: 3, padding: 1, pool: 2 },
  { conv: 20, kernel: 3, padding: 1, groups: 10, pool: 2 },
  { conv: 20, kernel: 3, stride: 2 },
];

const RUN = [
  '--config',
  join(ROOT, 'config', 'fashion-mnist-conv.json'),
  '--set',
  'data.dataset=fashion-mnist-sample',
  '--set',
  `model.layers=${JSON.stringify(LAYERS)}`,
  '--set',
  'data.trainLimit=1200',
  '--set',
  'data.testLimit=300',
  '--set',
  'data.jitter=1',
  '--set',
  'data.flip=true',
  '--set',
  'data.heldout=200',
  '--set',
  'eval.combine=fit',
  '--set',
  'train.batchSize=50',
  '--set',
  'output.checkpointEvery=1',
  '--epochs',
  '2',
  '--heartbeat-timeout',
  '2',
];

function launch(out: string, extra: string[] = [], backend: OnBackend['backend'] = 'wasm') {
  return startNode(
    [
      join(CLI, 'ffx-launch.js'),
      '--transport',
      'tcp',
      '--backend',
      backend,
      '--stage-threads',
      '1',
      ...RUN,
      ...extra,
      '--out',
      out,
    ],
    { timeoutMs: 120_000 },
  );
}

const evalOf = async (dir: string) =>
  JSON.parse(await readFile(join(dir, 'eval.json'), 'utf8')) as EvalResult;

describe('conv stages (loss competitive) as a pipeline', () => {
  const tmp = tempDir('conv');
  after(killAll);

  it('three conv stages: the weights, running statistics and predictions of --local', async () => {
    const local = await referenceRun(RUN, ON_WASM);
    const r = await launch(tmp('pipeline')).result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(r.stderr, /\[stage 1\] layer 1\/3: 1x28x28-c10k3p1\/2, run /);
    assert.match(r.stderr, /\[stage 3\] layer 3\/3: 20x7x7-c20k3s2, run /);
    const weights = (dir: string) => join(dir, 'model.safetensors');
    assert.equal(await maxWeightDiff(weights(local), weights(tmp('pipeline'))), 0);
    const { tensors, metadata } = decodeSafetensors(await readFile(weights(tmp('pipeline'))));
    assert.deepEqual(JSON.parse(metadata.optimizerSteps!), [40, 40, 40]);
    // PyTorch's layouts: conv [out, in / groups, k, k]; BatchNorm's statistics saved.
    assert.deepEqual(tensors.get('layers.1.weight')!.shape, [20, 1, 3, 3]);
    assert.deepEqual(tensors.get('layers.2.bn.runningVar')!.shape, [20]);
    const [ea, eb] = [await evalOf(local), await evalOf(tmp('pipeline'))];
    assert.equal(eb.count, 300);
    assert.deepEqual(eb, ea);
    // Each layer and each prefix predicts on its own, and learned something; the rule weighs
    // the layers as 200 held-out training images chose.
    const sets = Object.fromEntries(eb.perLayerSet.map((s) => [s.name, s.accuracy]));
    assert.equal(eb.rule, 'fitted');
    assert.equal(eb.weights!.length, 3);
    assert.deepEqual(Object.keys(sets).sort(), [
      'all',
      'fitted',
      'layer1',
      'layer2',
      'layer3',
      'layers1-2',
      'skip-first',
    ]);
    for (const [name, acc] of Object.entries(sets)) assert.ok(acc > 0.15, `${name}: ${acc}`);
  });

  it(
    "on wasm+blas, its small-patch layers stepping fused (ffx-blas's directStep): the bits of --local",
    { skip: !blasLoads().ok && blasLoads().why },
    async () => {
      const local = await referenceRun(RUN, { backend: 'wasm+blas', threads: 1 });
      const r = await launch(tmp('blas'), [], 'wasm+blas').result;
      assert.equal(r.code, 0, r.stderr.slice(-3000));
      const weights = (dir: string) => join(dir, 'model.safetensors');
      assert.equal(await maxWeightDiff(weights(local), weights(tmp('blas'))), 0);
      assert.deepEqual(await evalOf(tmp('blas')), await evalOf(local));
      // Not the wasm run's arithmetic: layers 1 and 2 took the fused step.
      const wasm = await referenceRun(RUN, ON_WASM);
      assert.ok((await maxWeightDiff(weights(local), weights(wasm))) > 0);
    },
  );

  it('resumed from its epoch-1 checkpoint: the same weights as the run straight through', async () => {
    const local = await referenceRun(RUN, ON_WASM);
    const r = await runNode(
      [
        join(CLI, 'ffx-launch.js'),
        '--backend',
        'wasm',
        '--stage-threads',
        '1',
        '--resume',
        join(local, 'checkpoint-epoch1.safetensors'),
        '--out',
        tmp('resumed'),
      ],
      { timeoutMs: 120_000 },
    );
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(r.stderr, /resumed from .*checkpoint-epoch1\.safetensors after epoch 1/);
    const weights = (dir: string) => join(dir, 'model.safetensors');
    assert.equal(await maxWeightDiff(weights(local), weights(tmp('resumed'))), 0);
    assert.deepEqual((await evalOf(tmp('resumed'))).confusion, (await evalOf(local)).confusion);
  });

  it('layer 2 on two replicas (train.shards=2, each shard its own BatchNorm): the bits of --local', async () => {
    const sharded = [...RUN, '--set', 'train.shards=2'];
    const [local, whole] = [await referenceRun(sharded, ON_WASM), await referenceRun(RUN, ON_WASM)];
    const r = await launch(tmp('replicas'), ['--set', 'train.shards=2', '--partition', '1,2x2,3'])
      .result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(r.stderr, /hello from layer 2 replica 2\/2 /);
    const weights = (dir: string) => join(dir, 'model.safetensors');
    assert.equal(await maxWeightDiff(weights(local), weights(tmp('replicas'))), 0);
    assert.deepEqual(await evalOf(tmp('replicas')), await evalOf(local));
    // Shards change the arithmetic (two BatchNorms of 25 images): not the unsharded run's.
    assert.ok((await maxWeightDiff(weights(local), weights(whole))) > 0);
  });

  it('a conv stage killed with SIGKILL mid-epoch: started again, rolled back, same weights', async () => {
    const local = await referenceRun(RUN, ON_WASM);
    const run = launch(tmp('killed'), ['--partition', '1,2-3']);
    await waitForOutput(run.stderr, /\[coordinator\] epoch 2\/2 \d+% /, 90_000);
    await sleep(Math.floor(Math.random() * 200));
    const pid = Number(/stage 2-3 \(pid (\d+)\)/.exec(run.stderr())![1]);
    process.kill(pid, 'SIGKILL');
    const r = await run.result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(
      r.stderr,
      /lineage: each layer trained 40, 40, 40 batches \(2 epochs x 20\); 1 recovery/,
    );
    const weights = (dir: string) => join(dir, 'model.safetensors');
    assert.equal(await maxWeightDiff(weights(local), weights(tmp('killed'))), 0);
  });
});
