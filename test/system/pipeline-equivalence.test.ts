// The central test of the pipeline: a 3-stage run over tcp on 127.0.0.1 (separate OS
// processes, started by ffx-launch) reproduces the single-process reference with the same
// config and seed: the same weights after an epoch and the same test predictions.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { EvalResult } from '../../src/core/predict.js';
import { decodeSafetensors } from '../../src/core/safetensors.js';
import { ROOT } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { testBackends } from '../helpers/backends.js';
import { onBackend, referenceRun, trainPipelined } from '../helpers/runs.js';
import { tempDir } from '../helpers/temp-dir.js';

// A real data slice: 2,000 training and 500 test images of the shipped Fashion-MNIST sample,
// 784-64-48-32 (three stages), one epoch. Each case runs on wasm (one thread per process, so
// the matrix products are computed in the same order) and, where ffx-blas is built, on
// wasm+blas (whose bits do not depend on threads: the reference takes 2, each stage 1).
const RUN = [
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
  'train.evalEvery=0',
  '--epochs',
  '1',
  '--quiet',
];

for (const backend of testBackends()) {
  const on = onBackend(backend);
  describe(`3-stage pipeline vs single-process reference (${backend})`, () => {
    const tmp = tempDir('equiv');

    it('produces the same weights (max |diff| = 0) and the same predictions', async () => {
      const local = await referenceRun(RUN, on);
      const piped = await trainPipelined(RUN, tmp('piped'), 90_000, on);
      assert.equal(piped.code, 0, piped.stderr);
      // Three stage processes really ran and each served its own layer.
      for (const layer of [1, 2, 3]) {
        assert.match(piped.stderr, new RegExp(`\\[stage ${layer}\\] layer ${layer}/3: `));
        assert.match(
          piped.stderr,
          new RegExp(`\\[stage ${layer}\\] listening on tcp://127\\.0\\.0\\.1:\\d+`),
        );
      }

      const worst = await maxWeightDiff(
        join(local, 'model.safetensors'),
        tmp('piped', 'model.safetensors'),
      );
      // One driver runs both: the same floats in the same order, so not a bit differs.
      assert.equal(worst, 0, `max |diff| ${worst}`);
      // Training did move the weights: the comparison is not between two initialisations.
      const steps = JSON.parse(
        decodeSafetensors(await readFile(tmp('piped', 'model.safetensors'))).metadata
          .optimizerSteps!,
      ) as number[];
      assert.deepEqual(steps, [20, 20, 20], '2,000 images / batch 100 = 20 steps per layer');
      if (backend !== 'wasm') {
        // The native products really ran: they round otherwise than wasm's.
        const wasm = join(await referenceRun(RUN), 'model.safetensors');
        assert.ok((await maxWeightDiff(join(local, 'model.safetensors'), wasm)) > 0);
      }

      const evalOf = async (run: string) =>
        JSON.parse(await readFile(join(run, 'eval.json'), 'utf8')) as EvalResult;
      const ea = await evalOf(local);
      const eb = await evalOf(tmp('piped'));
      assert.equal(ea.count, 500);
      assert.deepEqual(eb.confusion, ea.confusion);
      assert.deepEqual(eb.perLayerSet, ea.perLayerSet);
      // A tiny net after one epoch on 2,000 images: not good, but learning (chance is 10%).
      assert.ok(ea.accuracy > 0.2, `accuracy ${ea.accuracy} after one epoch on 2,000 images`);
    });

    it('with SymBa loss, peer normalisation and jittered images, over 2 epochs: the same bits too', async () => {
      // Jitter draws per epoch, and the peer term's running means carry from step to step and
      // epoch to epoch: both must be the same in every stage as in the one process. SymBa pairs
      // row i with row B+i, so a stage must keep the batch's halves in the coordinator's order.
      const run = [
        ...RUN.map((a, i) => (RUN[i - 1] === '--epochs' ? '2' : a)),
        '--set',
        'model.peerNorm.weight=0.05',
        '--set',
        'data.jitter=1',
        '--set',
        'model.loss=symba',
        '--set',
        'model.alpha=0.05',
      ];
      const local = await referenceRun(run, on);
      const piped = await trainPipelined(run, tmp('piped-extras'), 90_000, on);
      assert.equal(piped.code, 0, piped.stderr);
      const [a, b] = [join(local, 'model.safetensors'), tmp('piped-extras', 'model.safetensors')];
      assert.equal(await maxWeightDiff(a!, b!), 0);
      const { tensors } = decodeSafetensors(await readFile(b!));
      for (const layer of [0, 1, 2]) {
        const mean = tensors.get(`layers.${layer}.peerMean`);
        assert.ok(mean && mean.data.some((v) => v > 0), `layers.${layer}.peerMean`);
      }
      // And they are not the plain run's weights.
      const plain = join(await referenceRun(RUN, on), 'model.safetensors');
      assert.ok((await maxWeightDiff(a!, plain).catch(() => 1)) > 0);
    });

    it('with readouts, hard negatives and the softmax loss, over 2 epochs: the same bits and the same predictions', async () => {
      // Epoch 2 draws hard negatives from what the readouts predicted in epoch 1: the stages'
      // logits, gathered by the coordinator, must be the ones the single process computes.
      // The first layer scores all ten labels of each positive row (loss 'softmax').
      const run = [
        ...RUN.map((a, i) => (RUN[i - 1] === '--epochs' ? '2' : a)),
        '--set',
        'model.loss=["softmax","threshold","threshold"]',
        '--set',
        'model.alpha=0.1',
        '--set',
        'model.readout=true',
        '--set',
        'negatives.kind=hard',
        '--set',
        'eval.rule=readout',
      ];
      const local = await referenceRun(run, on);
      const piped = await trainPipelined(run, tmp('piped-readout'), 90_000, on);
      assert.equal(piped.code, 0, piped.stderr);
      const [a, b] = [local, tmp('piped-readout')];
      assert.equal(
        await maxWeightDiff(join(a!, 'model.safetensors'), join(b!, 'model.safetensors')),
        0,
      );
      const { tensors } = decodeSafetensors(await readFile(join(b!, 'model.safetensors')));
      assert.ok(tensors.get('negatives.predictions')!.data.some((p) => p > 0.5));
      assert.ok(tensors.has('layers.2.readout.weight'));
      const ea = JSON.parse(await readFile(join(a!, 'eval.json'), 'utf8')) as EvalResult;
      const eb = JSON.parse(await readFile(join(b!, 'eval.json'), 'utf8')) as EvalResult;
      assert.equal(eb.method, 'readout');
      assert.deepEqual(eb, ea);
    });
  });
}
