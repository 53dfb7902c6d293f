// CompetitiveLayer (CwComp) on the cpu backend, against a reference written with tfjs ops and
// autograd from the layer's saved (PyTorch-layout) weights: forward, loss, the closed-form
// gradient of every parameter, BatchNorm's running statistics, grouped and strided convs,
// pooling of odd sizes, dense layers, and state round trips.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../src/backend/backend.js';
import {
  CLASSES,
  CompetitiveLayer,
  type CompetitiveConfig,
} from '../../src/core/competitive-layer.js';
import { DEFAULT_OPTIMIZER, type OptimizerConfig } from '../../src/core/optimizer.js';
import type { ConvSpec, Shape } from '../../src/core/model-shape.js';
import { Rng } from '../../src/data/rng.js';
import {
  assertClose,
  assertRunningAfterStep,
  assertStepMatches,
  reference,
} from '../helpers/competitive-reference.js';
import { disposePart, ownShards, shardLabels, shardSizes } from '../../src/core/shards.js';

const SGD: OptimizerConfig = {
  ...DEFAULT_OPTIMIZER,
  type: 'sgd',
  lr: 1,
  momentum: 0,
  weightDecay: 0,
};
const LR = 1e-3;

function noise(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
}

const CASES: [string, Shape, ConvSpec | number][] = [
  ['conv 3x3, padding 1', [6, 6, 2], { conv: 20, kernel: 3, padding: 1 }],
  [
    'grouped conv with 2x2 pooling',
    [6, 6, 10],
    { conv: 20, kernel: 3, padding: 1, groups: 10, pool: 2 },
  ],
  ['strided conv, odd size pooled', [7, 7, 3], { conv: 10, kernel: 3, stride: 2, pool: 2 }],
  ['dense', [1, 1, 12], 30],
  ['dense after a conv (h, w, c input)', [2, 3, 4], 20],
];

describe('CompetitiveLayer', () => {
  before(async () => {
    await initBackend('cpu');
  });

  for (const [name, inShape, spec] of CASES) {
    it(`${name}: forward, loss and every gradient as tfjs autograd has them`, () => {
      const cfg: CompetitiveConfig = { inShape, spec, alpha: 2, seed: 7 };
      const layer = new CompetitiveLayer(cfg, SGD);
      const rows = 6;
      const x = tf.tensor2d(noise(rows * layer.config.inDim, 3), [rows, layer.config.inDim]);
      const labels = [0, 3, 9, 3, 5, 1];
      const before = layer.exportState('l', false);
      const ref = reference(cfg, before, x, labels);
      const { h, stats } = layer.trainStep(x, rows, LR, labels);
      const after = layer.exportState('l', false);
      assertStepMatches(ref, { y: h, stats, labels, before, after, lr: LR });
      // Evaluation: the running statistics, and the class goodness label-major.
      const evalRef = reference(cfg, after, x, labels, true);
      const y = layer.forward(x);
      assertClose(y.dataSync(), evalRef.y, 'eval Y');
      const g = layer.goodness(y).dataSync();
      for (let b = 0; b < rows; b++)
        for (let j = 0; j < CLASSES; j++)
          assert.ok(
            Math.abs(g[j * rows + b]! - evalRef.g[b * CLASSES + j]!) <
              1e-4 * (1 + Math.abs(evalRef.g[b * CLASSES + j]!)),
          );
      tf.dispose([x, h, stats, y]);
      layer.dispose();
    });
  }

  it("in shards: each normalised by its own statistics, the step the shares of theirs, the running statistics the batch's", () => {
    const cfg: CompetitiveConfig = {
      inShape: [6, 6, 10],
      spec: { conv: 20, kernel: 3, padding: 1, groups: 10, pool: 2 },
      alpha: 2,
      seed: 7,
      shards: 2,
    };
    const layer = new CompetitiveLayer(cfg, SGD);
    const rows = 6;
    const x = tf.tensor2d(noise(rows * layer.config.inDim, 4), [rows, layer.config.inDim]);
    const labels = [0, 3, 9, 3, 5, 1];
    const before = layer.exportState('l', false);
    const half = (k: number) => tf.slice(x, [3 * k, 0], [3, -1]);
    const [a, b] = [0, 1].map((k) =>
      reference(cfg, before, half(k), labels.slice(3 * k, 3 * k + 3)),
    );
    const whole = reference(cfg, before, x, labels);
    const { h, stats } = layer.trainStep(x, rows, LR, labels);
    const after = layer.exportState('l', false);
    // Y: each shard's own BatchNorm; the loss and gradient, half of each shard's.
    assertClose(h.dataSync(), Float32Array.from([...a!.y, ...b!.y]), 'Y');
    const loss = stats.dataSync()[0]!;
    assert.ok(Math.abs(loss - (a!.loss + b!.loss) / 2) < 1e-5, `loss ${loss}`);
    assert.ok(Math.abs(loss - whole.loss) > 1e-4, 'not the loss of one BatchNorm over the batch');
    const step = (n: string) =>
      Float32Array.from(
        before.get(`l.${n}`)!.data,
        (v, i) => (v - after.get(`l.${n}`)!.data[i]!) / LR,
      );
    const halves = (f: (r: typeof a) => Float32Array) =>
      Float32Array.from(f(a), (v, i) => (v + f(b)[i]!) / 2);
    assertClose(
      step('weight'),
      halves((r) => r!.dWeight),
      'dW',
      2e-3,
    );
    assertClose(
      step('bias'),
      halves((r) => r!.dBias),
      'db',
      2e-3,
    );
    assertClose(
      step('bn.weight'),
      halves((r) => r!.dGamma),
      'dgamma',
      2e-3,
    );
    assertClose(
      step('bn.bias'),
      halves((r) => r!.dBeta),
      'dbeta',
      2e-3,
    );
    // The running statistics pool the shards': the whole batch's mean and variance.
    assertRunningAfterStep(before, after, whole);
    tf.dispose([x, h, stats]);
    layer.dispose();
  });

  it('two replicas, each computing its shards, end with the bits of one layer computing all', () => {
    const cfg: CompetitiveConfig = {
      inShape: [6, 6, 2],
      spec: { conv: 20, kernel: 3, padding: 1, pool: 2 },
      alpha: 2,
      seed: 3,
      shards: 4,
    };
    const opt: OptimizerConfig = { ...DEFAULT_OPTIMIZER, type: 'adam', lr: 0.01 };
    const [whole, primary, helper] = [1, 2, 3].map(() => new CompetitiveLayer(cfg, opt));
    const rows = 7;
    const sizes = shardSizes(rows, 4); // [2, 2, 2, 1]
    try {
      for (const seed of [41, 42, 43]) {
        const x = tf.tensor2d(noise(rows * whole!.config.inDim, seed), [rows, whole!.config.inDim]);
        const labels = [0, 3, 9, 3, 5, 1, 7];
        const local = whole!.trainStep(x, rows, 0.01, labels);
        const partsOf = (layer: CompetitiveLayer, r: number) => {
          const ks = ownShards(sizes.length, 4, r, 2);
          const inputs = ks.map((k) => layer.shardInput(x, rows, sizes, k));
          const parts = layer.shardParts(
            inputs,
            ks.map((k) => sizes[k]!),
            rows,
            shardLabels(labels, sizes, ks),
          );
          tf.dispose(inputs);
          return parts;
        };
        const own = partsOf(primary!, 0);
        // The helper's parts cross the wire as float32 arrays.
        const copy = (t: tf.Tensor) => tf.tensor(t.dataSync().slice(), t.shape);
        const received = partsOf(helper!, 1).map((p) => {
          const c = {
            h: copy(p.h) as tf.Tensor2D,
            g: copy(p.g) as tf.Tensor1D,
            loss: copy(p.loss) as tf.Scalar,
            terms: Object.fromEntries(Object.entries(p.terms).map(([k, t]) => [k, copy(t)])),
          };
          disposePart(p);
          return c;
        });
        const step = primary!.combineParts([...own, ...received], rows, 0.01);
        const update = Object.fromEntries(
          Object.entries(step.update).map(([k, t]) => [k, copy(t)]),
        );
        helper!.applyUpdate(update, 0.01);
        assert.deepEqual(step.h.dataSync(), local.h.dataSync(), 'activations');
        assert.deepEqual(step.stats.dataSync(), local.stats.dataSync(), 'stats');
        tf.dispose([x, local.h, local.stats, step.h, step.stats]);
        tf.dispose([...Object.values(step.update), ...Object.values(update)]);
      }
      const state = (l: CompetitiveLayer) =>
        [...l.exportState('l', true)].map(([k, t]) => [k, Array.from(t.data)]);
      const w = state(whole!);
      assert.deepEqual(state(primary!), w, 'the primary');
      assert.deepEqual(state(helper!), w, 'the helper');
    } finally {
      for (const l of [whole, primary, helper]) l!.dispose();
    }
  });

  it('evaluates in chunks the same as in one pass (a batch larger than a chunk)', () => {
    const cfg: CompetitiveConfig = {
      inShape: [5, 5, 1],
      spec: { conv: 10, kernel: 3 },
      alpha: 1,
      seed: 2,
    };
    const layer = new CompetitiveLayer(cfg, SGD);
    const rows = 300;
    const x = tf.tensor2d(noise(rows * 25, 5), [rows, 25]);
    const whole = layer.forward(x).dataSync();
    const last = layer.forward(tf.slice(x, [290, 0], [10, -1])).dataSync();
    assert.deepEqual(last, whole.slice(290 * layer.config.outDim));
    layer.dispose();
  });

  it('saves and loads its state, optimizer slots and running statistics included', () => {
    const cfg: CompetitiveConfig = {
      inShape: [6, 6, 10],
      spec: { conv: 20, kernel: 3, padding: 1, groups: 10, pool: 2 },
      alpha: 1,
      seed: 4,
    };
    const adam = { ...DEFAULT_OPTIMIZER, type: 'adam' as const, lr: 0.01 };
    const a = new CompetitiveLayer(cfg, adam);
    const b = new CompetitiveLayer({ ...cfg, seed: 5 }, adam);
    const x = tf.tensor2d(noise(4 * 360, 1), [4, 360]);
    const labels = [1, 2, 3, 4];
    for (let s = 0; s < 3; s++) tf.dispose(Object.values(a.trainStep(x, 4, 0.01, labels)));
    const state = a.exportState('layers.0', true);
    assert.deepEqual(state.get('layers.0.weight')!.shape, [20, 1, 3, 3]);
    assert.deepEqual(state.get('layers.0.weight.m')!.shape, [20, 1, 3, 3]);
    b.importState('layers.0', state);
    b.steps = a.steps;
    const again = b.exportState('layers.0', true);
    for (const [name, t] of state) assert.deepEqual(again.get(name)!.data, t.data, name);
    // Both step on to the same bits.
    const ha = a.trainStep(x, 4, 0.01, labels);
    const hb = b.trainStep(x, 4, 0.01, labels);
    assert.deepEqual(ha.h.dataSync(), hb.h.dataSync());
    const missing = new Map(state);
    missing.delete('layers.0.bn.runningVar');
    assert.throws(() => b.importState('layers.0', missing), /no tensor "layers.0.bn.runningVar"/);
    const negative = new Map(state);
    negative.set('layers.0.bn.runningVar', {
      shape: [20],
      data: Float32Array.from({ length: 20 }, (_, i) => (i === 7 ? -1 : 1)),
    });
    assert.throws(
      () => b.importState('layers.0', negative),
      /"layers.0.bn.runningVar" holds -1 at 7: a variance is >= 0/,
    );
    const wrong = new Map(state);
    wrong.set('layers.0.weight', { shape: [20, 9], data: new Float32Array(180) });
    assert.throws(
      () => b.importState('layers.0', wrong),
      /is \[20, 9\], layer expects \[20, 1, 3, 3\]/,
    );
    tf.dispose([x, ha.h, ha.stats, hb.h, hb.stats]);
    a.dispose();
    b.dispose();
  });

  it('refuses channels that do not split into the ten classes, and a kernel larger than its input', () => {
    const opt = SGD;
    assert.throws(
      () =>
        new CompetitiveLayer(
          { inShape: [4, 4, 1], spec: { conv: 12, kernel: 3 }, alpha: 1, seed: 1 },
          opt,
        ),
      /12 channels must split into 10 equal class groups/,
    );
    assert.throws(
      () =>
        new CompetitiveLayer(
          { inShape: [2, 2, 1], spec: { conv: 10, kernel: 3 }, alpha: 1, seed: 1 },
          opt,
        ),
      /a 3x3 kernel does not fit a 2x2 input/,
    );
  });
});
