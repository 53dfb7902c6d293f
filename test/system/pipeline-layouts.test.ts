// Layouts other than one process per layer compute the same bits as one process: stages that
// hold a group of consecutive layers (ffx-launch --partition 1-2,3-4: exactly two ffx-stage
// processes, activations passed in memory between a group's layers) end with the weights and
// the predictions of `train --local`, also when a group's process is killed mid-epoch and
// started again; and the coordinator holds every layer to exactly one stage, naming the
// overlap and the gap otherwise.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import type { EvalResult } from '../../src/core/predict.js';
import { decodeSafetensors } from '../../src/core/safetensors.js';
import { freePort } from '../../src/transport/sockets.js';
import { killAll, ROOT, runNode, startNode, startStage, waitForOutput } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { ON_WASM, referenceRun } from '../helpers/runs.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

// Four layers in two groups, with readouts, hard negatives and the softmax loss on the first
// layer: every per-layer result (stats with logits, goodness, weights) crosses a group.
const RUN = [
  '--config',
  join(ROOT, 'config', 'demo.json'),
  '--layers',
  '784,64,48,32,32',
  '--set',
  'model.threshold=50',
  '--set',
  'data.trainLimit=2000',
  '--set',
  'data.testLimit=500',
  '--set',
  'model.loss=["softmax","threshold","threshold","threshold"]',
  '--set',
  'model.alpha=0.1',
  '--set',
  'model.readout=true',
  '--set',
  'negatives.kind=hard',
  '--set',
  'eval.rule=readout',
  '--epochs',
  '3',
  '--heartbeat-timeout',
  '2',
];

// Shards: three layers, no readouts (a sharded batch has none yet), each batch's gradient the
// sum of two shards'.
const SHARDED = [
  '--config',
  join(ROOT, 'config', 'demo.json'),
  '--layers',
  '784,64,48,32',
  '--set',
  'model.threshold=50',
  '--set',
  'data.trainLimit=2000',
  '--set',
  'data.testLimit=500',
  '--set',
  'model.loss=symba',
  '--set',
  'model.alpha=0.05',
  '--epochs',
  '2',
];

/** ffx-launch of `run` laid out by `layout` (--partition SPEC, or ['--stages', 'K']). */
function launch(out: string, layout: string | string[], run = RUN) {
  return startNode(
    [
      join(CLI, 'ffx-launch.js'),
      '--transport',
      'tcp',
      '--backend',
      'wasm',
      '--stage-threads',
      '1',
      ...run,
      ...(typeof layout === 'string' ? ['--partition', layout] : layout),
      '--out',
      out,
    ],
    { timeoutMs: 120_000 },
  );
}

describe('layouts: stages holding groups of layers', () => {
  const tmp = tempDir('layouts');
  after(killAll);

  it('--partition 1-2,3-4: two processes, the same weights and predictions as --local', async () => {
    const local = await referenceRun(RUN, ON_WASM);
    const r = await launch(tmp('groups'), '1-2,3-4').result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    // Exactly two stage processes, each serving its group.
    const started = /ffx-launch: started (.*)/.exec(r.stderr)![1]!;
    assert.deepEqual(
      [...started.matchAll(/stage ([\d-]+) \(pid \d+\)/g)].map((m) => m[1]),
      ['1-2', '3-4'],
    );
    assert.match(r.stderr, /\[stage 1-2\] layers 1-2\/4: 784-64-48, run /);
    assert.match(r.stderr, /\[stage 3-4\] layers 3-4\/4: 48-32-32, run /);
    assert.equal(
      await maxWeightDiff(join(local, 'model.safetensors'), tmp('groups', 'model.safetensors')),
      0,
    );
    const { metadata } = decodeSafetensors(await readFile(tmp('groups', 'model.safetensors')));
    assert.deepEqual(JSON.parse(metadata.optimizerSteps!), [60, 60, 60, 60]);
    const evalOf = async (dir: string) =>
      JSON.parse(await readFile(join(dir, 'eval.json'), 'utf8')) as EvalResult;
    const [ea, eb] = [await evalOf(local), await evalOf(tmp('groups'))];
    assert.equal(eb.count, 500);
    assert.deepEqual(eb, ea);
    // Each layer reported its own stats: the epoch records hold four layers' losses.
    const record = JSON.parse(
      (await readFile(tmp('groups', 'metrics.jsonl'), 'utf8')).trim().split('\n')[0]!,
    ) as { batches: number[]; layers: { loss: number }[] };
    assert.deepEqual(record.batches, [20, 20, 20, 20]);
    const losses = record.layers.map((l) => l.loss);
    assert.equal(new Set(losses).size, 4, `per-layer losses ${losses}`);
  });

  it("a group's process killed with SIGKILL mid-epoch: started again, rolled back, same weights", async () => {
    const local = await referenceRun(RUN, ON_WASM);
    const run = launch(tmp('killed'), '1,2-4');
    await waitForOutput(run.stderr, /\[coordinator\] epoch 2\/3 \d+% /, 60_000);
    await sleep(Math.floor(Math.random() * 200));
    const pid = Number(/stage 2-4 \(pid (\d+)\)/.exec(run.stderr())![1]);
    process.kill(pid, 'SIGKILL');
    const r = await run.result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(r.stderr, /layers 2-4 \(pid \d+ on .+\) stopped answering/);
    assert.match(
      r.stderr,
      /lineage: each layer trained 60, 60, 60, 60 batches \(3 epochs x 20\); 1 recovery/,
    );
    assert.equal(
      await maxWeightDiff(join(local, 'model.safetensors'), tmp('killed', 'model.safetensors')),
      0,
    );
  });

  it('train.shards=2: the stages sum the shards as --local does, to the same bits', async () => {
    const sharded = [...SHARDED, '--set', 'train.shards=2'];
    const local = await referenceRun(sharded, ON_WASM);
    const r = await launch(tmp('sharded'), '1-2,3', sharded).result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    const weights = (dir: string) => join(dir, 'model.safetensors');
    assert.equal(await maxWeightDiff(weights(local), weights(tmp('sharded'))), 0);
    // The shards are not a no-op: the whole batches' sums round otherwise.
    const whole = await referenceRun(SHARDED, ON_WASM);
    assert.ok((await maxWeightDiff(weights(local), weights(whole))) > 0);
  });

  it('--stages 2 on an unbalanced network: a measured plan, printed, and the same bits', async () => {
    const run = [
      ...SHARDED.map((a) => (a === '784,64,48,32' ? '784,512,32,32,32' : a)),
      '--epochs',
      '1',
    ];
    const local = await referenceRun(run, ON_WASM);
    const r = await launch(tmp('planned'), ['--stages', '2'], run).result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    const partition =
      /plan for up to 2 stages from each layer's step measured here \(wasm, 1 thread\): --partition (\S+)/.exec(
        r.stderr,
      )?.[1];
    assert.ok(partition, r.stderr.slice(0, 2000));
    assert.match(r.stderr, /ffx-launch:\s+stage 1: .* ms\/batch/);
    assert.match(r.stderr, /predicted \d+ samples\/s; ideal speed-up \d\.\d\dx/);
    assert.equal(partition.split(',').length, 2);
    assert.equal(
      await maxWeightDiff(join(local, 'model.safetensors'), tmp('planned', 'model.safetensors')),
      0,
    );
  });

  it('ffx-coordinator plan: the best stages for 1..N nodes, links included', async () => {
    const r = await runNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'plan',
        ...SHARDED.map((a) => (a === '784,64,48,32' ? '784,512,32,32,32' : a)),
        '--backend',
        'wasm',
        '--threads',
        '1',
        '--nodes',
        '3',
        '--link-gbps',
        '1',
      ],
      { timeoutMs: 60_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^model 784-512-32-32-32, batch 100, measured on this machine \(wasm, 1 thread a stage\): layer 1 [\d.]+ ms/m,
    );
    assert.match(r.stdout, /^links 1 Gbit\/s: 1->2 [\d.]+ ms/m);
    for (const k of [1, 2, 3])
      assert.match(r.stdout, new RegExp(`^${k} nodes?: --partition `, 'm'));
    assert.match(r.stdout, /^best: ffx-launch --partition \S+ /m);
  });

  it('a layout that cannot be run is a usage error saying why, before anything starts', async () => {
    const refused = async (args: string[], message: RegExp) => {
      const r = await runNode([join(CLI, 'ffx-launch.js'), ...SHARDED, ...args], {
        timeoutMs: 30_000,
      });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /started/);
    };
    await refused(['--partition', '1,3'], /--partition "1,3": no stage holds layer 2 /);
    await refused(['--partition', '1-2,2-3'], /layer 2 is in two stages/);
    await refused(
      ['--partition', '1,2-3x2'],
      /2-3x2 needs train.shards a multiple of 2 \(it is 1\)/,
    );
    await refused(['--partition', '1,2-3', '--stages', '2'], /mutually exclusive/);
    await refused(['--stages', '0'], /--stages must be a positive integer; got 0/);
  });

  it('--partition 1,2x2: layer 2 on two replicas, the same bits as --local; one replica killed mid-epoch, still', async () => {
    const run = [
      ...SHARDED.map((a) => (a === '784,64,48,32' ? '784,256,256' : a === '2' ? '3' : a)),
      '--set',
      'train.shards=2',
      '--heartbeat-timeout',
      '2',
    ];
    const local = await referenceRun(run, ON_WASM);
    const weights = (dir: string) => join(dir, 'model.safetensors');
    const plain = await launch(tmp('replicas'), '1,2x2', run).result;
    assert.equal(plain.code, 0, plain.stderr.slice(-3000));
    const started = /ffx-launch: started (.*)/.exec(plain.stderr)![1]!;
    assert.deepEqual(
      [...started.matchAll(/(stage [\d/-]+) \(pid \d+\)/g)].map((m) => m[1]),
      ['stage 1', 'stage 2/1', 'stage 2/2'],
    );
    assert.match(plain.stderr, /hello from layer 2 replica 2\/2 /);
    assert.equal(await maxWeightDiff(weights(local), weights(tmp('replicas'))), 0);

    const killed = launch(tmp('replica-killed'), '1,2x2', run);
    await waitForOutput(killed.stderr, /\[coordinator\] epoch 2\/3 \d+% /, 60_000);
    await sleep(Math.floor(Math.random() * 200));
    process.kill(Number(/stage 2\/2 \(pid (\d+)\)/.exec(killed.stderr())![1]), 'SIGKILL');
    const r = await killed.result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(r.stderr, /layer 2 replica 2\/2 \(pid \d+ on .+\) stopped answering/);
    assert.match(r.stderr, /lineage: .*1 recover/);
    assert.equal(await maxWeightDiff(weights(local), weights(tmp('replica-killed'))), 0);
  });

  it('every layer in exactly one stage: an overlap is refused, a gap named', async () => {
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const coordinator = startNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        ...RUN,
        '--bind',
        control,
        '--register-timeout',
        '6',
        '--out',
        tmp('gap'),
      ],
      { timeoutMs: 60_000 },
    );
    const first = startStage('1-2', control, 60_000);
    await waitForOutput(coordinator.stderr, /hello from layers 1-2 /, 30_000);
    const overlapping = startStage('2-3', control, 60_000);
    await waitForOutput(
      overlapping.stderr,
      /layers 2-3 overlap layers 1-2 of another stage, heard from lately, at layer 2; waiting to take over/,
      30_000,
    );
    const r = await coordinator.result;
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.match(r.stderr, /\[CLUSTER_MISSING_STAGES\]: no hello from layer 3, 4 within 6s/);
    for (const s of [first, overlapping]) s.killGroup('SIGKILL');
  });
});
