// The softmax readout on the wasm backend: its closed-form step against tfjs autograd, what it
// learns, its state round trip, and no tensor leaks.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../src/backend/backend.js';
import {
  buildLayer,
  layerPrefix,
  layerStateFloats,
  type ModelConfig,
} from '../../src/core/ff-network.js';
import { DEFAULT_OPTIMIZER, type OptimizerConfig } from '../../src/core/optimizer.js';
import { Readout, READOUT_CLASSES } from '../../src/core/readout.js';
import { Rng } from '../../src/data/rng.js';
import { readoutLoss } from '../helpers/ff-reference.js';

const IN = 9;
const N = 12;
const PLAIN_SGD: OptimizerConfig = {
  ...DEFAULT_OPTIMIZER,
  type: 'sgd',
  lr: 1,
  momentum: 0,
  weightDecay: 0,
};

/** n rows of noise, row i shifted along feature (label % IN): learnable from the features. */
function data(seed: number, n = N): { x: Float32Array; labels: Uint8Array } {
  const rng = new Rng(seed);
  const labels = Uint8Array.from({ length: n }, () => rng.int(READOUT_CLASSES));
  const x = Float32Array.from({ length: n * IN }, (_, k) => {
    const [r, c] = [Math.floor(k / IN), k % IN];
    return 0.3 * rng.normal() + (c === labels[r]! % IN ? 2 : 0) + (labels[r]! >= IN ? 1 : 0);
  });
  return { x, labels };
}

const maxAbs = (a: ArrayLike<number>) => Math.max(...Array.from(a, Math.abs));
const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i]!)));

before(async () => {
  await initBackend('wasm');
});

describe('Readout', () => {
  it('its closed-form step equals tfjs autograd of the reference loss, and returns the logits before it', () => {
    const r = new Readout(IN, PLAIN_SGD);
    const { x, labels } = data(3);
    const hn = tf.tensor2d(x, [N, IN]);
    try {
      // Away from zero, where every term of the gradient matters.
      r.weight.assign(tf.randomNormal([READOUT_CLASSES, IN], 0, 0.5, 'float32', 7));
      r.bias.assign(tf.randomNormal([READOUT_CLASSES], 0, 0.5, 'float32', 8));
      const { value, grads } = tf.variableGrads(
        () => readoutLoss(r, hn, labels),
        [r.weight, r.bias],
      );
      const autoW = grads[r.weight.name]!.dataSync().slice();
      const autoB = grads[r.bias.name]!.dataSync().slice();
      const autoLoss = value.dataSync()[0]!;
      const before = r.logits(hn);
      const expectLogits = before.dataSync().slice();
      tf.dispose([value, before, ...Object.values(grads)]);

      const w0 = r.weight.dataSync().slice();
      const b0 = r.bias.dataSync().slice();
      const { logits, loss } = r.trainStep(hn, labels, 1);
      const dW = w0.map((w, i) => w - r.weight.dataSync()[i]!);
      const dB = b0.map((b, i) => b - r.bias.dataSync()[i]!);
      assert.ok(maxAbs(autoW) > 1e-2, `autograd dW too small: ${maxAbs(autoW)}`);
      assert.ok(maxAbsDiff(dW, autoW) < 1e-5 * Math.max(1, maxAbs(autoW)), 'dW');
      assert.ok(maxAbsDiff(dB, autoB) < 1e-5 * Math.max(1, maxAbs(autoB)), 'db');
      assert.ok(Math.abs(loss - autoLoss) < 1e-6, `loss ${loss} vs ${autoLoss}`);
      assert.deepEqual(logits.shape, [N, READOUT_CLASSES]);
      assert.deepEqual(logits.dataSync(), expectLogits);
      logits.dispose();
    } finally {
      hn.dispose();
      r.dispose();
    }
  });

  it('starts uniform (loss ln 10) and learns labels its features carry', () => {
    const r = new Readout(IN, { ...DEFAULT_OPTIMIZER, lr: 0.05 });
    const { x, labels } = data(5, 200);
    const hn = tf.tensor2d(x, [200, IN]);
    try {
      const first = r.trainStep(hn, labels, 0.05);
      first.logits.dispose();
      assert.ok(Math.abs(first.loss - Math.log(10)) < 1e-5, `${first.loss}`);
      let last = first.loss;
      for (let i = 0; i < 300; i++) {
        const s = r.trainStep(hn, labels, 0.05);
        s.logits.dispose();
        last = s.loss;
      }
      assert.ok(last < 0.3, `loss after 300 steps: ${last}`);
      const z = r.logits(hn);
      const pred = tf.argMax(z, 1);
      const hits = Array.from(pred.dataSync()).filter((p, i) => p === labels[i]).length;
      tf.dispose([z, pred]);
      assert.ok(hits >= 190, `${hits} of 200 right`);
    } finally {
      hn.dispose();
      r.dispose();
    }
  });

  it('exports and imports its weights and optimizer slots: the next step is the same', () => {
    const a = new Readout(IN, DEFAULT_OPTIMIZER);
    const b = new Readout(IN, DEFAULT_OPTIMIZER);
    const { x, labels } = data(9);
    const hn = tf.tensor2d(x, [N, IN]);
    try {
      for (let i = 0; i < 3; i++) a.trainStep(hn, labels, 0.01).logits.dispose();
      const state = a.exportState('layers.1', true);
      assert.deepEqual([...state.keys()].sort(), [
        'layers.1.readout.bias',
        'layers.1.readout.bias.m',
        'layers.1.readout.bias.v',
        'layers.1.readout.weight',
        'layers.1.readout.weight.m',
        'layers.1.readout.weight.v',
      ]);
      b.importState('layers.1', state);
      b.optimizer.step = a.optimizer.step;
      const sa = a.trainStep(hn, labels, 0.01);
      const sb = b.trainStep(hn, labels, 0.01);
      assert.equal(sa.loss, sb.loss);
      assert.deepEqual(a.weight.dataSync(), b.weight.dataSync());
      tf.dispose([sa.logits, sb.logits]);
      assert.throws(() => b.importState('layers.2', state), /no tensor "layers.2.readout.weight"/);
    } finally {
      hn.dispose();
      a.dispose();
      b.dispose();
    }
  });

  it('leaks no tensors', () => {
    const r = new Readout(IN, DEFAULT_OPTIMIZER);
    const { x, labels } = data(2);
    const hn = tf.tensor2d(x, [N, IN]);
    try {
      r.trainStep(hn, labels, 0.01).logits.dispose();
      const base = tf.memory().numTensors;
      for (let i = 0; i < 5; i++) {
        r.trainStep(hn, labels, 0.01).logits.dispose();
        r.logits(hn).dispose();
        readoutLoss(r, hn, labels).dispose();
      }
      r.exportState('l', true);
      assert.equal(tf.memory().numTensors, base);
    } finally {
      hn.dispose();
      r.dispose();
    }
  });
});

describe('layerStateFloats: the bound on a stage weights message', () => {
  it('counts every float a layer saves, with readouts, peer means and each optimizer', () => {
    // A bound short of the real size makes ZeroMQ drop the stage's weights message: the run
    // then waits for it until its progress timeout, at every checkpoint.
    for (const type of ['adam', 'sgd'] as const) {
      for (const readout of [false, true]) {
        for (const weight of [0, 0.1]) {
          const model: ModelConfig = {
            layers: [20, 7, 5],
            goodness: 'sum',
            negate: false,
            threshold: 5,
            normEps: 1e-8,
            readout,
            peerNorm: { weight, decay: 0.9 },
          };
          const optimizer = { ...DEFAULT_OPTIMIZER, type };
          for (const index of [0, 1]) {
            const layer = buildLayer(model, optimizer, 1, index);
            const saved = layer.exportState(layerPrefix(index), true);
            const floats = [...saved.values()].reduce((n, t) => n + t.data.length, 0);
            layer.dispose();
            assert.equal(
              layerStateFloats(model, optimizer, index),
              floats,
              `${type}, readout ${readout}, peer ${weight}, layer ${index}`,
            );
          }
        }
      }
    }
  });
});
