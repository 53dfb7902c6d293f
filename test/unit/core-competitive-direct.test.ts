// CompetitiveLayer's fused step (directStep: ffx-blas recomputes the product inside its sweeps,
// native/blas/src/ffx_conv.c) for conv layers with a small patch per group, on wasm+blas,
// against the tfjs autograd reference computed on the cpu backend from the same saved weights,
// and its evaluation with the running statistics; then a step in shards. Where ffx-blas is
// built (CI requires it).
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../src/backend/backend.js';
import {
  CompetitiveLayer,
  DIRECT_PATCH,
  type CompetitiveConfig,
} from '../../src/core/competitive-layer.js';
import { convKernels } from '../../src/core/conv-kernels.js';
import { DEFAULT_OPTIMIZER, type OptimizerConfig } from '../../src/core/optimizer.js';
import type { ConvSpec, Shape } from '../../src/core/model-shape.js';
import { Rng } from '../../src/data/rng.js';
import { blasLoads } from '../helpers/backends.js';
import { assertClose, assertStepMatches, reference } from '../helpers/competitive-reference.js';

const SGD: OptimizerConfig = { ...DEFAULT_OPTIMIZER, type: 'sgd', lr: 1, momentum: 0 };
const LR = 1e-3;

function noise(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
}

// Patches of 9 to 27 values: grey 3x3, two channels, grey 5x5, colour strided; grouped layers
// with pooling (2 and 8 channels a group, as the conv config's second layer), odd sizes pooled,
// a pool of 3.
const CASES: [string, Shape, ConvSpec][] = [
  ['grey 3x3, padding 1', [6, 6, 1], { conv: 20, kernel: 3, padding: 1 }],
  ['two channels 3x3, padding 1', [5, 7, 2], { conv: 10, kernel: 3, padding: 1 }],
  ['grey 5x5, padding 2', [6, 6, 1], { conv: 30, kernel: 5, padding: 2 }],
  ['colour 3x3, stride 2, no padding', [7, 7, 3], { conv: 20, kernel: 3, stride: 2 }],
  ['grouped, 2x2 pooling', [6, 6, 10], { conv: 20, kernel: 3, padding: 1, groups: 10, pool: 2 }],
  [
    'grouped, 8 channels a group, 2x2 pooling',
    [6, 8, 20],
    { conv: 80, kernel: 3, padding: 1, groups: 10, pool: 2 },
  ],
  ['odd size pooled', [7, 7, 3], { conv: 10, kernel: 3, pool: 2 }],
  ['pool 3, grouped in 2', [9, 8, 2], { conv: 30, kernel: 3, padding: 1, groups: 2, pool: 3 }],
];

describe(
  'CompetitiveLayer, fused direct step on ffx-blas',
  { skip: !blasLoads().ok && blasLoads().why },
  () => {
    before(async () => {
      await initBackend('wasm+blas');
    });

    it('is what ffx-blas offers for these layers', () => {
      assert.equal(typeof convKernels().directForward, 'function');
      assert.equal(typeof convKernels().directBackward, 'function');
      for (const [, [, , c], spec] of CASES) {
        assert.ok((spec.kernel ** 2 * c) / (spec.groups ?? 1) <= DIRECT_PATCH);
      }
    });

    // Fresh, and after a first step (running statistics of its own, which a step must update).
    for (const [name, inShape, spec] of CASES) {
      for (const warm of [false, true]) {
        it(`${name}${warm ? ', after a first step' : ''}: forward, loss, every gradient and the running statistics as autograd has them`, async () => {
          const cfg: CompetitiveConfig = { inShape, spec, alpha: 2, seed: 7 };
          const layer = new CompetitiveLayer(cfg, SGD);
          const rows = 6;
          const labels = [0, 3, 9, 3, 5, 1];
          if (warm) {
            const first = tf.tensor2d(noise(rows * layer.config.inDim, 4), [
              rows,
              layer.config.inDim,
            ]);
            const { h, stats } = layer.trainStep(first, rows, LR, [2, 2, 7, 8, 0, 4]);
            tf.dispose([first, h, stats]);
          }
          const data = noise(rows * layer.config.inDim, 3);
          const x = tf.tensor2d(data, [rows, layer.config.inDim]);
          const stateBefore = layer.exportState('l', false);
          const shift = stateBefore.get('l.bn.runningMean')!.data;
          assert.equal(
            shift.some((v) => v !== 0),
            warm,
          );
          const { h, stats } = layer.trainStep(x, rows, LR, labels);
          const after = layer.exportState('l', false);
          // Evaluation: the same fused sweep with the running statistics.
          const evalY = layer.forward(x);
          const [y, s, ey] = [h, stats, evalY].map((t) => ({ v: t.dataSync(), shape: t.shape }));
          tf.dispose([x, h, stats, evalY]);
          await tf.setBackend('cpu');
          try {
            const xc = tf.tensor2d(data, [rows, layer.config.inDim]);
            const ref = reference(cfg, stateBefore, xc, labels);
            const [yc, sc] = [tf.tensor(y!.v, y!.shape), tf.tensor(s!.v)];
            assertStepMatches(ref, {
              y: yc,
              stats: sc,
              labels,
              before: stateBefore,
              after,
              lr: LR,
            });
            assertClose(ey!.v, reference(cfg, after, xc, labels, true).y, 'eval Y');
            tf.dispose([xc, yc, sc]);
          } finally {
            await tf.setBackend('wasm');
          }
          layer.dispose();
        });
      }
    }

    it('in two shards: the parts combined are the step of the whole batch on its shards', () => {
      // Shards go through the same fused step; each shard's Y must equal that shard stepped on
      // its own by a fresh copy, and the combined step must move the weights.
      const inShape: Shape = [6, 6, 1];
      const spec: ConvSpec = { conv: 20, kernel: 3, padding: 1 };
      const layer = new CompetitiveLayer({ inShape, spec, alpha: 2, seed: 7, shards: 2 }, SGD);
      const alone = new CompetitiveLayer({ inShape, spec, alpha: 2, seed: 7 }, SGD);
      const rows = 8;
      const labels = [0, 3, 9, 3, 5, 1, 2, 7];
      const x = tf.tensor2d(noise(rows * 36, 5), [rows, 36]);
      const { h } = layer.trainStep(x, rows, LR, labels);
      const first = tf.slice(x, [0, 0], [4, -1]);
      const { h: h1, stats } = alone.trainStep(first, 4, LR, labels.slice(0, 4));
      assert.deepEqual(h.dataSync().slice(0, 4 * 6 * 6 * 20), h1.dataSync());
      tf.dispose([x, h, first, h1, stats]);
      layer.dispose();
      alone.dispose();
    });
  },
);
