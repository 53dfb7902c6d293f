// FFLayer on the wasm backend: the closed-form step against tfjs autograd, the fused in-place
// optimizer against the tfjs-ops one, state round trips, tensor leaks, and a hand-derived step.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../src/backend/backend.js';
import { disposePart, ownShards, shardSizes } from '../../src/core/shards.js';
import {
  activeRows,
  FFLayer,
  shardRows,
  type GoodnessType,
  type LayerConfig,
  type LossType,
} from '../../src/core/ff-layer.js';
import {
  DEFAULT_OPTIMIZER,
  LayerOptimizer,
  type OptimizerConfig,
} from '../../src/core/optimizer.js';
import { gatherHost, ownedVariable } from '../../src/core/host-memory.js';
import type { NamedTensor } from '../../src/core/safetensors.js';
import { overlayAllLabels } from '../../src/data/ff-data.js';
import { Rng } from '../../src/data/rng.js';
import {
  assertFlushed,
  assertSameBits,
  FLUSH_STEPS,
  forceOps,
  runFlushScenario,
} from '../helpers/optimizer-paths.js';
import { referenceLoss } from '../helpers/ff-reference.js';

const IN = 12;
const OUT = 7;
const N_POS = 5;

/**
 * The order the step keeps its activations in: transposed on wasm, rows first where the
 * products run on BLAS (wasm+blas). The gradient suites run once in each (set by their
 * describe's before hook), here on the wasm backend.
 */
const order = { rowsFirst: false };

function layerConfig(over: Partial<LayerConfig> = {}): LayerConfig {
  return {
    inDim: IN,
    outDim: OUT,
    goodness: 'mean',
    negate: false,
    threshold: 0.2,
    normEps: 1e-8,
    seed: 3,
    rowsFirst: order.rowsFirst,
    ...over,
  };
}

function optimizer(over: Partial<OptimizerConfig> = {}): OptimizerConfig {
  return { ...DEFAULT_OPTIMIZER, ...over };
}

/** SGD without momentum or decay at lr 1: W_before - W_after is exactly the gradient. */
const PLAIN_SGD = optimizer({ type: 'sgd', lr: 1, momentum: 0, weightDecay: 0 });

/**
 * [pos; neg] rows of N(0,1) noise; positives get +shift on the first half of the features and
 * negatives on the second half, so the two are separable by direction.
 */
function batch(seed: number, nPos = N_POS, dim = IN, shift = 0): Float32Array {
  const rng = new Rng(seed);
  const x = new Float32Array(2 * nPos * dim);
  for (let r = 0; r < 2 * nPos; r++) {
    for (let c = 0; c < dim; c++) {
      const firstHalf = c < dim / 2;
      const bump = r < nPos === firstHalf ? shift : 0;
      x[r * dim + c] = rng.normal() + bump;
    }
  }
  return x;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'lengths differ');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** Copies of weight and bias. */
function params(layer: FFLayer): { w: Float32Array; b: Float32Array } {
  return {
    w: (layer.weight.dataSync() as Float32Array).slice(),
    b: (layer.bias.dataSync() as Float32Array).slice(),
  };
}

/** One step on x; returns [loss, g+, g-] and disposes what the step returned. */
function step(layer: FFLayer, x: tf.Tensor2D, lr: number, nPos = N_POS): number[] {
  const { h, stats } = layer.trainStep(x, nPos, lr);
  const out = Array.from(stats.dataSync());
  h.dispose();
  stats.dispose();
  return out;
}

function lossValue(layer: FFLayer, x: tf.Tensor2D, nPos = N_POS): number {
  const l = referenceLoss(layer, x, nPos);
  const v = l.dataSync()[0]!;
  l.dispose();
  return v;
}

/**
 * Autograd of the reference loss (helpers/ff-reference.ts) on x, then one step at lr 1: with PLAIN_SGD, W before - W after is the
 * gradient the closed form computed. Returns both, and the step's [loss, g+, g-].
 */
function autogradAndStep(layer: FFLayer, x: tf.Tensor2D) {
  const { value, grads } = tf.variableGrads(
    () => referenceLoss(layer, x, N_POS),
    [layer.weight, layer.bias],
  );
  const autoW = grads[layer.weight.name]!.dataSync().slice();
  const autoB = grads[layer.bias.name]!.dataSync().slice();
  const autoLoss = value.dataSync()[0]!;
  tf.dispose([value, ...Object.values(grads)]);
  const before = params(layer);
  const stats = step(layer, x, 1);
  const after = params(layer);
  const dW = before.w.map((w, i) => w - after.w[i]!);
  const dB = before.b.map((b, i) => b - after.b[i]!);
  return { autoW, autoB, autoLoss, dW, dB, stats };
}

/** Makes the layer's optimizer take the tfjs-ops path (the one native and GPU backends use). */
function forceOpsPath(layer: FFLayer): void {
  forceOps(layer.optimizer);
}

before(async () => {
  const info = await initBackend('wasm');
  assert.equal(info.name, 'wasm');
  assert.equal(tf.getBackend(), 'wasm');
});

for (const [rowsFirst, layout] of [
  [false, 'transposed'],
  [true, 'rows first'],
] as const) {
  describe(`FFLayer closed-form gradient (${layout})`, () => {
    before(() => (order.rowsFirst = rowsFirst));
    after(() => (order.rowsFirst = false));
    // Thresholds near each variant's typical goodness, so the sigmoids are not saturated and
    // every term of the gradient matters.
    // SymBa's alpha is set so that the goodness differences land in the sigmoid's slope.
    const variants: {
      goodness: GoodnessType;
      negate: boolean;
      threshold: number;
      loss?: LossType;
      alpha?: number;
    }[] = [
      { goodness: 'mean', negate: false, threshold: 0.2 },
      { goodness: 'mean', negate: true, threshold: -0.2 },
      { goodness: 'sum', negate: false, threshold: 1.5 },
      { goodness: 'sum', negate: true, threshold: -1.5 },
      { goodness: 'mean', negate: false, threshold: 0, loss: 'symba', alpha: 8 },
      { goodness: 'sum', negate: true, threshold: 0, loss: 'symba', alpha: 2 },
    ];
    for (const v of variants) {
      it(`equals tfjs autograd of the reference loss (loss ${v.loss ?? 'threshold'}, goodness ${v.goodness}, negate ${v.negate})`, () => {
        // The closed form in trainStep is hand-derived; autograd of the reference loss (the same loss written
        // as plain differentiable ops) is the reference. A wrong sign, a missing 1/2B or 2/k, or a
        // relu mask error would show up as a mismatch far above float32 rounding.
        const layer = new FFLayer(layerConfig(v), PLAIN_SGD);
        const x = tf.tensor2d(batch(11), [2 * N_POS, IN]);
        try {
          const { autoW, autoB, autoLoss, dW, dB, stats } = autogradAndStep(layer, x);
          // Not a vacuous comparison: the gradient has a size well above the tolerance.
          assert.ok(maxAbs(autoW) > 1e-3, `autograd dW too small: ${maxAbs(autoW)}`);
          assert.ok(maxAbs(autoB) > 1e-3, `autograd db too small: ${maxAbs(autoB)}`);
          // float32: ~1e-7 relative per op; W - (W - dW) loses ~ulp(W) ~ 3e-8 more.
          const tolW = 1e-5 * Math.max(1, maxAbs(autoW));
          const tolB = 1e-5 * Math.max(1, maxAbs(autoB));
          assert.ok(maxAbsDiff(dW, autoW) < tolW, `dW differs by ${maxAbsDiff(dW, autoW)}`);
          assert.ok(maxAbsDiff(dB, autoB) < tolB, `db differs by ${maxAbsDiff(dB, autoB)}`);
          // The loss the step reports is the loss before its update.
          assert.ok(Math.abs(stats[0]! - autoLoss) < 1e-6, `loss ${stats[0]} vs ${autoLoss}`);
        } finally {
          x.dispose();
          layer.dispose();
        }
      });
    }

    it('with peer normalisation, equals tfjs autograd of the reference loss, and moves the running mean', () => {
      const cfg = layerConfig({ goodness: 'sum', threshold: 1.5, peerNorm: 3, peerDecay: 0.8 });
      const layer = new FFLayer(cfg, PLAIN_SGD);
      const plain = new FFLayer({ ...cfg, peerNorm: 0 }, PLAIN_SGD);
      const x = tf.tensor2d(batch(11), [2 * N_POS, IN]);
      try {
        // A running mean as after some training: uneven across units.
        layer.peerMean!.assign(tf.tensor1d([0.1, 0.9, 0.3, 0, 1.4, 0.2, 0.6]));
        assert.equal(plain.peerMean, null);
        const grad = (l: FFLayer) => {
          const { value, grads } = tf.variableGrads(
            () => referenceLoss(l, x, N_POS),
            [l.weight, l.bias],
          );
          const out = {
            loss: value.dataSync()[0]!,
            w: grads[l.weight.name]!.dataSync().slice(),
            b: grads[l.bias.name]!.dataSync().slice(),
          };
          tf.dispose([value, ...Object.values(grads)]);
          return out;
        };
        const auto = grad(layer);
        // The peer term is not vanishing next to the FF one.
        assert.ok(maxAbsDiff(auto.w, grad(plain).w) > 1e-2, 'peer term too small to test');
        const h = layer.forward(x);
        const hPos = h.slice([0, 0], [N_POS, OUT]).arraySync() as number[][];
        h.dispose();
        const prev = Array.from(layer.peerMean!.dataSync());

        const before = params(layer);
        const stats = step(layer, x, 1);
        const after = params(layer);
        const dW = before.w.map((w, i) => w - after.w[i]!);
        const dB = before.b.map((b, i) => b - after.b[i]!);
        const tolW = 1e-5 * Math.max(1, maxAbs(auto.w));
        assert.ok(maxAbsDiff(dW, auto.w) < tolW, `dW differs by ${maxAbsDiff(dW, auto.w)}`);
        assert.ok(maxAbsDiff(dB, auto.b) < 1e-5 * Math.max(1, maxAbs(auto.b)));
        assert.ok(Math.abs(stats[0]! - auto.loss) < 1e-5, `loss ${stats[0]} vs ${auto.loss}`);
        // m = decay m_prev + (1 - decay) mean over the positive rows of H (before the update).
        const mean = Array.from(layer.peerMean!.dataSync());
        for (let j = 0; j < OUT; j++) {
          const batchMean = hPos.reduce((s, r) => s + r[j]!, 0) / N_POS;
          assert.ok(Math.abs(mean[j]! - (0.8 * prev[j]! + 0.2 * batchMean)) < 1e-6, `unit ${j}`);
        }
      } finally {
        x.dispose();
        layer.dispose();
        plain.dispose();
      }
    });

    it('forward and goodness equal a plain-JS reference computed from the exported weights', () => {
      // The autograd check above differentiates the layer's own forward pass, so it cannot see a
      // wrong forward (e.g. a bias broadcast along the wrong axis by a fused kernel). Here every
      // activation is recomputed in float64 from exportState: H = relu(x / (rms(x) + eps) W + b).
      const layer = new FFLayer(layerConfig({ goodness: 'sum' }), PLAIN_SGD);
      const xs = batch(13);
      const x = tf.tensor2d(xs, [2 * N_POS, IN]);
      try {
        const state = layer.exportState('l', false);
        const w = state.get('l.weight')!;
        const bias = state.get('l.bias')!.data;
        // The weight may be stored [in, out] or [out, in] (torch.nn.Linear); in != out tells which.
        const outMajor = w.shape[0] === OUT && w.shape[1] === IN;
        assert.ok(outMajor || (w.shape[0] === IN && w.shape[1] === OUT), `shape ${w.shape}`);
        const weight = (i: number, o: number) => w.data[outMajor ? o * IN + i : i * OUT + o]!;
        const want: number[] = [];
        const wantG: number[] = [];
        for (let r = 0; r < 2 * N_POS; r++) {
          const row = Array.from(xs.subarray(r * IN, (r + 1) * IN));
          const rms = Math.sqrt(row.reduce((s, v) => s + v * v, 0) / IN);
          let g = 0;
          for (let o = 0; o < OUT; o++) {
            let z = bias[o]!;
            for (let i = 0; i < IN; i++) z += (row[i]! / (rms + 1e-8)) * weight(i, o);
            const h = Math.max(0, z);
            want.push(h);
            g += h * h;
          }
          wantG.push(g);
        }
        const h = layer.forward(x);
        const g = layer.goodness(h);
        assert.deepEqual(h.shape, [2 * N_POS, OUT]);
        const gotH = h.dataSync();
        const gotG = g.dataSync();
        tf.dispose([h, g]);
        assert.ok(
          want.some((v) => v === 0) && want.some((v) => v > 0.1),
          'relu active and inactive',
        );
        assert.ok(maxAbsDiff(gotH, want) < 1e-5, `H differs by ${maxAbsDiff(gotH, want)}`);
        assert.ok(maxAbsDiff(gotG, wantG) < 1e-5, `g differs by ${maxAbsDiff(gotG, wantG)}`);
      } finally {
        x.dispose();
        layer.dispose();
      }
    });

    it('hands on the activations computed before the update', () => {
      // ff-layer.ts: H sent downstream is this step's H, before the weights change; the pipeline
      // and the single-process reference must agree on that choice.
      const layer = new FFLayer(layerConfig(), PLAIN_SGD);
      const x = tf.tensor2d(batch(12), [2 * N_POS, IN]);
      try {
        const hBefore = layer.forward(x);
        const expected = hBefore.dataSync().slice();
        hBefore.dispose();
        const { h, stats } = layer.trainStep(x, N_POS, 1);
        const got = h.dataSync().slice();
        tf.dispose([h, stats]);
        const hAfter = layer.forward(x);
        const moved = maxAbsDiff(hAfter.dataSync(), expected);
        hAfter.dispose();
        assert.deepEqual(got, expected);
        assert.ok(moved > 1e-3, 'the update changed the activations (else the check is vacuous)');
      } finally {
        x.dispose();
        layer.dispose();
      }
    });

    it('rejects a batch whose shape does not match [2*nPos, inDim]', () => {
      const layer = new FFLayer(layerConfig(), PLAIN_SGD);
      const x = tf.zeros([2 * N_POS + 1, IN]) as tf.Tensor2D;
      try {
        assert.throws(() => layer.trainStep(x, N_POS, 1), /expected \[10, 12\], got \[11, 12\]/);
      } finally {
        x.dispose();
        layer.dispose();
      }
    });
  });

  describe(`FFLayer loss 'softmax' (${layout})`, () => {
    before(() => (order.rowsFirst = rowsFirst));
    after(() => (order.rowsFirst = false));
    const DIM = 26; // the ten label columns and an image of 16
    const VALUE = 2; // the overlay's value

    /** Noise rows with a label overlay: positive row i has label i % 10, its negative another. */
    function overlaid(seed: number): { x: Float32Array; labels: number[] } {
      const x = batch(seed, N_POS, DIM);
      const labels = Array.from({ length: N_POS }, (_, i) => (i * 7) % 10);
      for (let r = 0; r < 2 * N_POS; r++) {
        const label = r < N_POS ? labels[r]! : (labels[r - N_POS]! + 3) % 10;
        x.fill(0, r * DIM, r * DIM + 10);
        x[r * DIM + label] = VALUE;
      }
      return { x, labels };
    }

    const variants: {
      goodness: GoodnessType;
      negate: boolean;
      alpha: number;
      peerNorm?: number;
    }[] = [
      { goodness: 'mean', negate: false, alpha: 8 },
      { goodness: 'sum', negate: false, alpha: 1.5 },
      { goodness: 'sum', negate: true, alpha: 2 },
      { goodness: 'sum', negate: false, alpha: 1.5, peerNorm: 3 },
    ];
    for (const v of variants) {
      it(`equals tfjs autograd of the ten overlays written out (goodness ${v.goodness}, negate ${v.negate}, peer norm ${v.peerNorm ?? 0})`, () => {
        // The step scores all ten labels from one product (the overlay moves ten columns);
        // the reference builds each label's rows and runs them through the layer, so a wrong column
        // update, overlay value or norm shows as a mismatch.
        const cfg = layerConfig({ inDim: DIM, loss: 'softmax', threshold: 0, ...v });
        const layer = new FFLayer(cfg, PLAIN_SGD);
        const x = tf.tensor2d(overlaid(21).x, [2 * N_POS, DIM]);
        try {
          if (layer.peerMean) layer.peerMean.assign(tf.tensor1d([0.1, 0.9, 0.3, 0, 1.4, 0.2, 0.6]));
          const { autoW, autoB, autoLoss, dW, dB, stats } = autogradAndStep(layer, x);
          assert.ok(maxAbs(autoW) > 1e-3, `autograd dW too small: ${maxAbs(autoW)}`);
          // The label columns get their own terms: they must move, and match.
          const labelCols = Array.from(autoW).filter((_, i) => i % DIM < 10);
          assert.ok(maxAbs(labelCols) > 1e-3, 'label columns of dW too small to test');
          const tolW = 1e-5 * Math.max(1, maxAbs(autoW));
          assert.ok(maxAbsDiff(dW, autoW) < tolW, `dW differs by ${maxAbsDiff(dW, autoW)}`);
          assert.ok(maxAbsDiff(dB, autoB) < 1e-5 * Math.max(1, maxAbs(autoB)));
          assert.ok(Math.abs(stats[0]! - autoLoss) < 1e-5, `loss ${stats[0]} vs ${autoLoss}`);
        } finally {
          x.dispose();
          layer.dispose();
        }
      });
    }

    it('in 3 shards (train.shards): still the whole batch autograd gives', () => {
      const cfg = layerConfig({ inDim: DIM, loss: 'softmax', threshold: 0, alpha: 8, shards: 3 });
      const layer = new FFLayer(cfg, PLAIN_SGD);
      const x = tf.tensor2d(overlaid(22).x, [2 * N_POS, DIM]);
      try {
        const { autoW, autoB, autoLoss, dW, dB, stats } = autogradAndStep(layer, x);
        assert.ok(maxAbs(autoW) > 1e-3, `autograd dW too small: ${maxAbs(autoW)}`);
        assert.ok(maxAbsDiff(dW, autoW) < 1e-5 * Math.max(1, maxAbs(autoW)));
        assert.ok(maxAbsDiff(dB, autoB) < 1e-5 * Math.max(1, maxAbs(autoB)));
        assert.ok(Math.abs(stats[0]! - autoLoss) < 1e-5, `loss ${stats[0]} vs ${autoLoss}`);
      } finally {
        x.dispose();
        layer.dispose();
      }
    });

    it('is the cross-entropy of the goodness the evaluation overlays give', () => {
      // Evaluation overlays each label in turn (overlayAllLabels) and takes the most goodness;
      // the loss must be the cross-entropy of exactly those scores.
      const alpha = 1.5;
      const cfg = layerConfig({ inDim: DIM, goodness: 'sum', loss: 'softmax', alpha });
      const layer = new FFLayer(cfg, PLAIN_SGD);
      const { x: xs, labels } = overlaid(22);
      const all = overlayAllLabels(xs, 0, N_POS, DIM, new Float32Array(10 * N_POS * DIM), VALUE);
      const x = tf.tensor2d(xs, [2 * N_POS, DIM]);
      const xAll = tf.tensor2d(all, [10 * N_POS, DIM]);
      try {
        const h = layer.forward(xAll);
        const gt = layer.goodness(h);
        const g = gt.dataSync();
        tf.dispose([h, gt]);
        let want = 0;
        for (let i = 0; i < N_POS; i++) {
          const s = Array.from({ length: 10 }, (_, c) => alpha * g[c * N_POS + i]!);
          const max = Math.max(...s);
          const lse = max + Math.log(s.reduce((a, v) => a + Math.exp(v - max), 0));
          want += (lse - s[labels[i]!]!) / N_POS;
        }
        assert.ok(want > 0.1, `a loss worth comparing: ${want}`);
        const stats = step(layer, x, 1);
        assert.ok(Math.abs(stats[0]! - want) < 1e-5 * Math.max(1, want), `${stats[0]} vs ${want}`);
      } finally {
        tf.dispose([x, xAll]);
        layer.dispose();
      }
    });

    it('refuses positive rows without a one-hot overlay, and an input with no image', () => {
      const layer = new FFLayer(layerConfig({ inDim: DIM, loss: 'softmax' }), PLAIN_SGD);
      const { x: xs } = overlaid(23);
      xs[3 * DIM + 5] = 1; // row 3 now has two labels
      const x = tf.tensor2d(xs, [2 * N_POS, DIM]);
      try {
        assert.throws(
          () => step(layer, x, 1),
          /one-hot overlay in its first 10 columns; row 3 has/,
        );
        assert.throws(
          () => new FFLayer(layerConfig({ inDim: 10, loss: 'softmax' }), PLAIN_SGD),
          /needs an input with the 10-column label overlay/,
        );
      } finally {
        x.dispose();
        layer.dispose();
      }
    });
  });

  describe(`FFLayer saturated rows (${layout})`, () => {
    before(() => (order.rowsFirst = rowsFirst));
    after(() => (order.rowsFirst = false));
    it('activeRows keeps the rows whose weight is within float32 reach of the largest', () => {
      assert.equal(activeRows([0.5, 1e-3, 1]), null, 'all count: no gather');
      assert.equal(activeRows([1, Number.NaN, 0]), null, 'a NaN batch keeps every row');
      // 2^-24 = 5.96e-8 of the largest: 5e-8 falls below it, 7e-8 does not.
      assert.deepEqual(Array.from(activeRows([1, 5e-8, 7e-8, 0])!), [0, 2]);
      // Below the absolute floor nothing counts, however the rows compare with each other.
      assert.deepEqual(Array.from(activeRows([1e-31, 2e-31])!), []);
      assert.deepEqual(Array.from(activeRows([0, 0])!), []);
    });

    it('a step that skips saturated rows still equals autograd', () => {
      // Threshold -25 with sum goodness: every positive row has t = g + 25 > 25, so its weight
      // sigmoid(-t) < 1.4e-11 is skipped; every negative row has weight ~1 and is kept.
      const layer = new FFLayer(layerConfig({ goodness: 'sum', threshold: -25 }), PLAIN_SGD);
      const x = tf.tensor2d(batch(17), [2 * N_POS, IN]);
      try {
        const g = tf.tidy(() => layer.goodness(layer.forward(x)));
        const weights = Array.from(
          g.dataSync(),
          (v, r) => 1 / (1 + Math.exp((r < N_POS ? 1 : -1) * (v + 25))),
        );
        g.dispose();
        const active = activeRows(weights);
        assert.deepEqual(Array.from(active!), [5, 6, 7, 8, 9], 'the negative rows only');
        assert.ok(
          weights.slice(0, N_POS).every((w) => w > 0),
          'skipped terms are not exact zeros',
        );

        const { grads } = tf.variableGrads(
          () => referenceLoss(layer, x, N_POS),
          [layer.weight, layer.bias],
        );
        const autoW = grads[layer.weight.name]!.dataSync();
        const autoB = grads[layer.bias.name]!.dataSync();
        tf.dispose(Object.values(grads));
        const before = params(layer);
        step(layer, x, 1);
        const after = params(layer);
        assert.ok(maxAbs(autoW) > 1e-3, `autograd dW too small: ${maxAbs(autoW)}`);
        const dW = before.w.map((w, i) => w - after.w[i]!);
        const dB = before.b.map((b, i) => b - after.b[i]!);
        assert.ok(maxAbsDiff(dW, autoW) < 1e-5 * Math.max(1, maxAbs(autoW)), 'dW');
        assert.ok(maxAbsDiff(dB, autoB) < 1e-5 * Math.max(1, maxAbs(autoB)), 'db');
      } finally {
        x.dispose();
        layer.dispose();
      }
    });

    it('with every row saturated the gradient is zero and the optimizer still steps', () => {
      // W = 10 everywhere, b = 0: positive rows of ones have g = OUT * (10 IN)^2 = 100800, negative
      // rows of zeros g = 0; at threshold 50000 both sides sit ~5e4 past it (weights exactly 0).
      // SGD's L2 term alone moves the weights: W <- W - lr * decay * W.
      const sgd = optimizer({ type: 'sgd', lr: 1, momentum: 0, weightDecay: 0.1 });
      const layer = new FFLayer(layerConfig({ goodness: 'sum', threshold: 50000 }), sgd);
      const xs = new Float32Array(2 * N_POS * IN).fill(1, 0, N_POS * IN);
      const x = tf.tensor2d(xs, [2 * N_POS, IN]);
      try {
        layer.importState(
          'l',
          new Map([
            ['l.weight', { shape: [OUT, IN], data: new Float32Array(OUT * IN).fill(10) }],
            ['l.bias', { shape: [OUT], data: new Float32Array(OUT) }],
          ]),
        );
        const [loss, gPos, gNeg] = step(layer, x, 1);
        assert.equal(loss, 0);
        assert.ok(Math.abs(gPos! - 100800) < 1, `g+ ${gPos}`);
        assert.equal(gNeg, 0);
        const { w } = params(layer);
        assert.ok(maxAbsDiff(w, new Float32Array(OUT * IN).fill(9)) < 1e-5, `W ${w[0]}`);
      } finally {
        x.dispose();
        layer.dispose();
      }
    });
  });
}

describe('FFLayer training', () => {
  it('Adam drives the loss of a separable batch well below its start', () => {
    // 50 steps on one fixed batch whose pos and neg rows point different ways: a working
    // gradient and optimizer must cut the loss far below where it starts (~0.77, near ln 2 at
    // the threshold; it settles near 0.16); a sign error would raise it instead.
    const nPos = 16;
    const layer = new FFLayer(
      layerConfig({ inDim: 20, outDim: 16, threshold: 1 }),
      optimizer({ type: 'adam', lr: 0.03 }),
    );
    const x = tf.tensor2d(batch(21, nPos, 20, 1.5), [2 * nPos, 20]);
    try {
      const losses: number[] = [];
      let last: number[] = [];
      for (let i = 0; i < 50; i++) {
        last = step(layer, x, 0.03, nPos);
        losses.push(last[0]!);
      }
      const first = losses[0]!;
      const end = lossValue(layer, x, nPos);
      assert.ok(first > 0.4, `initial loss ${first}`);
      assert.ok(end < 0.4 * first, `loss went from ${first} to ${end}`);
      // Positives end above the threshold on average, negatives below.
      const h = layer.forward(x);
      const g = layer.goodness(h);
      const gv = g.dataSync();
      tf.dispose([h, g]);
      const mean = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + v, 0) / a.length;
      assert.ok(mean(gv.slice(0, nPos)) > 1, `mean g+ ${mean(gv.slice(0, nPos))}`);
      assert.ok(mean(gv.slice(nPos)) < 1, `mean g- ${mean(gv.slice(nPos))}`);
    } finally {
      x.dispose();
      layer.dispose();
    }
  });
});

describe('FFLayer shards (train.shards)', () => {
  it('cuts a batch as evenly as it goes, the larger shards first, none empty', () => {
    assert.deepEqual(shardSizes(100, 1), [100]);
    assert.deepEqual(shardSizes(100, 4), [25, 25, 25, 25]);
    assert.deepEqual(shardSizes(100, 3), [34, 33, 33]);
    assert.deepEqual(shardSizes(3, 8), [1, 1, 1]);
  });

  for (const loss of ['threshold', 'symba'] as const) {
    it(`${loss}: the gradient of 3 shards is the batch's (to rounding), its bits the same run to run`, () => {
      const config = layerConfig({ loss, alpha: 2 });
      const x = tf.tensor2d(batch(31), [2 * N_POS, IN]);
      const run = (shards: number) => {
        const layer = new FFLayer({ ...config, shards }, PLAIN_SGD);
        try {
          const auto = autogradAndStep(layer, x);
          return { ...auto, w: params(layer).w };
        } finally {
          layer.dispose();
        }
      };
      try {
        const [whole, sharded, again] = [run(1), run(3), run(3)];
        // The reference loss is the whole batch's: the shards' sum is its gradient.
        for (let i = 0; i < whole.dW.length; i++) {
          assert.ok(Math.abs(sharded.dW[i]! - sharded.autoW[i]!) < 1e-5, `dW[${i}]`);
        }
        for (let i = 0; i < whole.dB.length; i++) {
          assert.ok(Math.abs(sharded.dB[i]! - sharded.autoB[i]!) < 1e-5, `dB[${i}]`);
        }
        // Loss and the goodness means are the batch's too.
        for (const i of [0, 1, 2]) {
          assert.ok(Math.abs(sharded.stats[i]! - whole.stats[i]!) < 1e-6, `stats[${i}]`);
        }
        assert.deepEqual(again.w, sharded.w, 'deterministic');
      } finally {
        x.dispose();
      }
    });
  }

  it('deals the shards to replicas in runs, the first run to the first replica', () => {
    assert.deepEqual(ownShards(4, 4, 0, 2), [0, 1]);
    assert.deepEqual(ownShards(4, 4, 1, 2), [2, 3]);
    assert.deepEqual(ownShards(3, 4, 1, 2), [2]); // a batch of 3 rows: 3 shards
    assert.deepEqual(ownShards(1, 4, 1, 2), []);
  });

  it('two replicas, each computing its shards, end with the bits of one layer computing all', () => {
    const config = layerConfig({ shards: 4 });
    const opt = optimizer({ type: 'adam', lr: 0.01 });
    const [whole, primary, helper] = [1, 2, 3].map(() => new FFLayer(config, opt));
    const sizes = shardSizes(N_POS, 4); // 5 rows: [2, 1, 1, 1]
    try {
      for (const seed of [41, 42, 43]) {
        const x = tf.tensor2d(batch(seed), [2 * N_POS, IN]);
        const local = whole!.trainStep(x, N_POS, 0.01);
        // Each replica its shards, from the whole batch (as a helper gets it).
        const partsOf = (layer: FFLayer, r: number) => {
          const ks = ownShards(sizes.length, 4, r, 2);
          const inputs = ks.map((k) => shardRows(x, N_POS, sizes, k));
          const parts = layer.shardParts(
            inputs,
            ks.map((k) => sizes[k]!),
            N_POS,
          );
          tf.dispose(inputs);
          return parts;
        };
        const own = partsOf(primary!, 0);
        // The helper's parts cross the wire as float32 arrays.
        const received = partsOf(helper!, 1).map((p) => {
          const copy = {
            h: tf.tensor2d(p.h.dataSync(), p.h.shape),
            g: tf.tensor1d(p.g.dataSync()),
            loss: tf.scalar(p.loss.dataSync()[0]!),
            terms: {
              dw: tf.tensor2d(p.terms.dw!.dataSync(), p.terms.dw!.shape as [number, number]),
              db: tf.tensor1d(p.terms.db!.dataSync()),
            },
          };
          disposePart(p);
          return copy;
        });
        const step = primary!.combineParts([...own, ...received], N_POS, 0.01);
        const update = Object.fromEntries(
          Object.entries(step.update).map(([k, t]) => [k, tf.tensor(t.dataSync(), t.shape)]),
        );
        helper!.applyUpdate(update, 0.01);
        assert.deepEqual(step.h.dataSync(), local.h.dataSync(), 'activations');
        assert.deepEqual(step.stats.dataSync(), local.stats.dataSync(), 'stats');
        tf.dispose([x, local.h, local.stats, step.h, step.stats]);
        tf.dispose([...Object.values(step.update), ...Object.values(update)]);
      }
      const w = params(whole!).w;
      assert.deepEqual(params(primary!).w, w, 'the primary');
      assert.deepEqual(params(helper!).w, w, 'the helper');
    } finally {
      for (const l of [whole, primary, helper]) l!.dispose();
    }
  });

  it('hands the next layer every row in the batch order, as the whole batch would', () => {
    const x = tf.tensor2d(batch(32), [2 * N_POS, IN]);
    const [a, b] = [1, 2].map((shards) => new FFLayer(layerConfig({ shards }), PLAIN_SGD));
    try {
      const ha = a!.trainStep(x, N_POS, 0.1);
      const hb = b!.trainStep(x, N_POS, 0.1);
      const [va, vb] = [ha.h.dataSync(), hb.h.dataSync()];
      assert.equal(vb.length, va.length);
      for (let i = 0; i < va.length; i++) assert.ok(Math.abs(va[i]! - vb[i]!) < 1e-6, `h[${i}]`);
      tf.dispose([ha.h, ha.stats, hb.h, hb.stats]);
    } finally {
      x.dispose();
      a!.dispose();
      b!.dispose();
    }
  });
});

describe('LayerOptimizer in-place path', () => {
  const cases: { name: string; opt: OptimizerConfig }[] = [
    { name: 'adam', opt: optimizer({ type: 'adam', lr: 0.05 }) },
    { name: 'adam + L2', opt: optimizer({ type: 'adam', lr: 0.05, weightDecay: 0.1 }) },
    { name: 'adamw', opt: optimizer({ type: 'adamw', lr: 0.05, weightDecay: 0.5 }) },
    {
      name: 'sgd momentum',
      opt: optimizer({ type: 'sgd', lr: 0.5, momentum: 0.9, weightDecay: 0.1 }),
    },
  ];
  for (const c of cases) {
    it(`${c.name}: the fused JS loop equals the tfjs-ops update over 5 steps`, () => {
      // Two layers, same seed and batch; one forced onto applyOps. Same weights, slots and
      // per-step losses to float32 rounding: the fused loop is the same update (decay on
      // weights only, bias correction, momentum). Per-step losses also differ if a stale
      // XNNPACK packed-weight cache made a step see old weights.
      const fused = new FFLayer(layerConfig(), c.opt);
      const ops = new FFLayer(layerConfig(), c.opt);
      forceOpsPath(ops);
      const x = tf.tensor2d(batch(31), [2 * N_POS, IN]);
      const start = params(fused);
      try {
        for (let k = 0; k < 5; k++) {
          const a = step(fused, x, c.opt.lr);
          const b = step(ops, x, c.opt.lr);
          assert.ok(maxAbsDiff(a, b) < 1e-5, `step ${k + 1} stats ${a} vs ${b}`);
        }
        const sf = fused.exportState('l', true);
        const so = ops.exportState('l', true);
        assert.deepEqual([...sf.keys()].sort(), [...so.keys()].sort());
        for (const [name, t] of sf) {
          const d = maxAbsDiff(t.data, so.get(name)!.data);
          assert.ok(d < 1e-5, `${name} differs by ${d}`);
        }
        // The updates did something (the comparison is not between two untouched layers).
        assert.ok(maxAbsDiff(params(fused).w, start.w) > 1e-2, 'weights moved');
        assert.ok(maxAbsDiff(params(fused).b, start.b) > 1e-3, 'bias moved');
      } finally {
        x.dispose();
        fused.dispose();
        ops.dispose();
      }
    });
  }

  it('each step sees the previous update (no stale XNNPACK weight cache)', () => {
    // The fused path writes weights through the wasm heap under the same tensor id; XNNPACK
    // caches packed weights by id, so without hostWritten the next matMul would use the old
    // weights. A fresh layer loaded with the exported weights has never been packed: its loss
    // is the truth. Both the live layer's reference loss and the loss the next step reports must match.
    const opt = optimizer({ type: 'adam', lr: 0.05 });
    const layer = new FFLayer(layerConfig(), opt);
    const x = tf.tensor2d(batch(41), [2 * N_POS, IN]);
    try {
      let prevLoss = step(layer, x, opt.lr)[0]!;
      for (let k = 1; k <= 4; k++) {
        const fresh = new FFLayer(layerConfig({ seed: 99 }), opt);
        fresh.importState('l', layer.exportState('l', false));
        const truth = lossValue(fresh, x);
        fresh.dispose();
        const live = lossValue(layer, x);
        const reported = step(layer, x, opt.lr)[0]!;
        assert.ok(Math.abs(truth - prevLoss) > 1e-4, 'the update changed the loss');
        assert.ok(
          Math.abs(live - truth) < 1e-6,
          `step ${k}: reference loss ${live}, fresh ${truth}`,
        );
        assert.ok(Math.abs(reported - truth) < 1e-6, `step ${k + 1} reported ${reported}`);
        prevLoss = reported;
      }
    } finally {
      x.dispose();
      layer.dispose();
    }
  });

  it('flushes what would turn subnormal to zero, in the SIMD kernel and the JS tail alike', () => {
    // 7 values: the wasm kernel takes the first 4, the JS loop the last 3; both halves hold a
    // flushed gradient (1e-20 < 1e-16) with a decaying m (0.9 * 1e-31 < 1e-30), a slot that
    // stays (0.9 * 2e-30), and a NaN, which must pass.
    const p = ownedVariable(tf.ones([7]), true);
    const opt = new LayerOptimizer(optimizer({ type: 'adam', lr: 0.01 }), [p]);
    const [m, v] = [...opt.state(new Map([[p, 'p']])).values()];
    tf.tidy(() => m!.assign(tf.tensor1d([1e-31, 0, 2e-30, 0, 1e-31, 2e-30, 0])));
    const g = tf.tensor1d([1e-20, 1e-3, 0, NaN, 1e-20, 0, NaN]);
    try {
      tf.tidy(() => opt.apply(new Map([[p, g]]), 0.01));
      const mv = m!.dataSync();
      const vv = v!.dataSync();
      assert.deepEqual(
        Array.from(mv, (x, i) => (i === 1 || i === 2 || i === 5 ? x > 0 : x)),
        [0, true, true, NaN, 0, true, NaN],
      );
      assert.ok(Math.abs(mv[1]! - 1e-4) < 1e-9 && Math.abs(mv[2]! - 1.8e-30) < 1e-35, `m ${mv}`);
      assert.deepEqual(
        Array.from(vv, (x, i) => (i === 1 ? x > 0 : x)),
        [0, true, 0, NaN, 0, 0, NaN],
      );
      // Slots at zero leave their weights alone; the real gradient moved its weight.
      const pv = p.dataSync();
      assert.deepEqual([pv[0], pv[2], pv[4], pv[5]], [1, 1, 1, 1]);
      assert.ok(pv[1]! < 1, `p[1] ${pv[1]}`);
    } finally {
      g.dispose();
      opt.dispose();
      p.dispose();
    }
  });

  const flushCases: { name: string; opt: OptimizerConfig }[] = [
    { name: 'adam', opt: optimizer({ type: 'adam', lr: 0.01 }) },
    { name: 'adam + L2', opt: optimizer({ type: 'adam', lr: 0.01, weightDecay: 0.1 }) },
    { name: 'adamw', opt: optimizer({ type: 'adamw', lr: 0.01, weightDecay: 0.1 }) },
    {
      name: 'sgd momentum + L2',
      opt: optimizer({ type: 'sgd', lr: 0.1, momentum: 0.9, weightDecay: 0.1 }),
    },
  ];
  for (const c of flushCases) {
    it(`${c.name}: the tfjs-ops path flushes as the fused one does, bit for bit`, () => {
      // Gradients below and above 1e-16, slots decaying under 1e-30, NaNs, in the kernel's
      // part and the JS tail (see helpers/optimizer-paths.ts), over several steps. Both paths
      // round every operation to float32 in the same order, so the bits agree; a path that did
      // not flush would leave ~1e-31 slots where the other has 0.
      const fused = runFlushScenario(c.opt, 'fused');
      const ops = runFlushScenario(c.opt, 'ops');
      assert.deepEqual(fused.inPlace, Array<boolean>(FLUSH_STEPS).fill(true), 'fused path ran');
      assert.deepEqual(ops.inPlace, Array<boolean>(FLUSH_STEPS).fill(false), 'ops path ran');
      const names = c.opt.type === 'sgd' ? ['p', 'momentum'] : ['p', 'm', 'v'];
      names.forEach((name, i) => assertSameBits(fused.values[i]!, ops.values[i]!, name));
      assertFlushed(fused, c.opt);
    });
  }

  it('leaves a tensor that shares the weight storage untouched', () => {
    // hostView(..., exclusive) refuses shared storage: a reshape of the weight (same storage,
    // refCount 2; tf.clone would copy on wasm) must keep the old values, and the layer must
    // still update (through the ops path).
    const layer = new FFLayer(layerConfig(), optimizer({ type: 'adam', lr: 0.05 }));
    const x = tf.tensor2d(batch(51), [2 * N_POS, IN]);
    const alias = tf.reshape(layer.weight, [-1]);
    try {
      assert.equal(alias.dataId, layer.weight.dataId, 'the alias shares the storage');
      const before = alias.dataSync().slice();
      step(layer, x, 0.05);
      assert.deepEqual(alias.dataSync(), before, 'the alias was written through');
      assert.ok(maxAbsDiff(params(layer).w, before) > 1e-2, 'the weight itself was updated');
    } finally {
      alias.dispose();
      x.dispose();
      layer.dispose();
    }
  });
});

describe('FFLayer resources', () => {
  for (const [path, peerNorm] of [
    ['fused', 0],
    ['ops', 0],
    ['fused', 0.1],
  ] as const) {
    it(`trainStep, forward, goodness and the reference loss leak no tensors (${path} optimizer path, peer norm ${peerNorm})`, () => {
      // tfjs never garbage-collects tensors: one leaked per step is a leak per batch.
      const layer = new FFLayer(
        layerConfig({ peerNorm }),
        optimizer({ type: 'adamw', weightDecay: 0.1 }),
      );
      if (path === 'ops') forceOpsPath(layer);
      const x = tf.tensor2d(batch(61), [2 * N_POS, IN]);
      try {
        step(layer, x, 0.01); // warm-up: builds the cached sign column once
        const base = tf.memory().numTensors;
        for (let i = 0; i < 10; i++) step(layer, x, 0.01);
        assert.equal(tf.memory().numTensors, base, 'after 10 trainStep calls');
        for (let i = 0; i < 3; i++) {
          const h = layer.forward(x);
          const g = layer.goodness(h);
          tf.dispose([h, g]);
          lossValue(layer, x);
        }
        layer.exportState('l', true);
        assert.equal(
          tf.memory().numTensors,
          base,
          'after forward/goodness/reference loss/exportState',
        );
      } finally {
        x.dispose();
        layer.dispose();
      }
    });
  }

  it('dispose releases every tensor the layer owns', () => {
    const base = tf.memory().numTensors;
    const layer = new FFLayer(layerConfig(), optimizer({ type: 'adam' }));
    const x = tf.tensor2d(batch(62), [2 * N_POS, IN]);
    step(layer, x, 0.01);
    x.dispose();
    // weight, bias, m and v for each, one cached sign column.
    assert.equal(tf.memory().numTensors, base + 7);
    layer.dispose();
    assert.equal(tf.memory().numTensors, base);
  });
});

describe('FFLayer state', () => {
  it('saves the peer-normalisation mean with the optimizer state, and only with peer norm on', () => {
    const on = new FFLayer(layerConfig({ peerNorm: 0.1 }), optimizer());
    const off = new FFLayer(layerConfig(), optimizer());
    const x = tf.tensor2d(batch(4), [2 * N_POS, IN]);
    const copy = new FFLayer(layerConfig({ peerNorm: 0.1 }), optimizer());
    try {
      step(on, x, 0.01);
      const state = on.exportState('layers.0', true);
      assert.deepEqual(state.get('layers.0.peerMean')?.shape, [OUT]);
      assert.ok(maxAbs(state.get('layers.0.peerMean')!.data) > 0);
      assert.equal(on.exportState('layers.0', false).has('layers.0.peerMean'), false);
      assert.equal(off.exportState('layers.0', true).has('layers.0.peerMean'), false);
      copy.importState('layers.0', state);
      copy.optimizer.step = on.optimizer.step;
      assert.deepEqual(copy.peerMean!.dataSync(), on.peerMean!.dataSync());
      // The next step is the same on both, the peer term included.
      assert.deepEqual(step(copy, x, 0.01), step(on, x, 0.01));
      assert.deepEqual(params(copy).w, params(on).w);
    } finally {
      tf.dispose([x]);
      on.dispose();
      off.dispose();
      copy.dispose();
    }
  });

  it('exportState/importState with optimizer slots gives an identical next step', () => {
    // A layer resumed from exported state (weights, m, v, step count) must continue exactly
    // as the original: bit-identical stats and parameters after the next step.
    const opt = optimizer({ type: 'adam', lr: 0.05 });
    const a = new FFLayer(layerConfig(), opt);
    const b = new FFLayer(layerConfig({ seed: 77 }), opt);
    const x = tf.tensor2d(batch(71), [2 * N_POS, IN]);
    try {
      for (let i = 0; i < 3; i++) step(a, x, opt.lr);
      const state = a.exportState('layers.0', true);
      assert.deepEqual([...state.keys()].sort(), [
        'layers.0.bias',
        'layers.0.bias.m',
        'layers.0.bias.v',
        'layers.0.weight',
        'layers.0.weight.m',
        'layers.0.weight.v',
      ]);
      assert.deepEqual(state.get('layers.0.weight')!.shape, [...a.weight.shape]);
      assert.deepEqual([...a.weight.shape].sort(), [IN, OUT].sort());
      assert.ok(maxAbs(state.get('layers.0.weight.v')!.data) > 0, 'slots hold real state');
      b.importState('layers.0', state);
      b.optimizer.step = a.optimizer.step; // the caller carries the step count (metadata)
      const sa = step(a, x, opt.lr);
      const sb = step(b, x, opt.lr);
      assert.deepEqual(sb, sa);
      const ea = a.exportState('layers.0', true);
      const eb = b.exportState('layers.0', true);
      for (const [name, t] of ea) assert.deepEqual(eb.get(name)!.data, t.data, name);
    } finally {
      x.dispose();
      a.dispose();
      b.dispose();
    }
  });

  it('importState names a missing weight and a shape mismatch', () => {
    const layer = new FFLayer(layerConfig(), optimizer());
    try {
      const state = layer.exportState('l', false);
      assert.throws(() => layer.importState('other', state), /no tensor "other\.weight"/);
      const bad = new Map<string, NamedTensor>(state);
      bad.set('l.bias', { shape: [OUT + 1], data: new Float32Array(OUT + 1) });
      assert.throws(() => layer.importState('l', bad), /"l\.bias" is \[8\], layer expects \[7\]/);
    } finally {
      layer.dispose();
    }
  });
});

describe('FFLayer hand-derived step', () => {
  it('matches loss, goodness and SGD update worked out by hand', () => {
    // in 2, out 1, W = [0.5, 0.25]^T, b = 0.25, threshold 0.5, mean goodness (k = 1).
    // pos x = [1, 1]:  rms = 1, xn = [1, 1],  z = 0.5 + 0.25 + 0.25 = 1,   h = 1,   g = 1
    // neg x = [2, -2]: rms = 2, xn = [1, -1], z = 0.5 - 0.25 + 0.25 = 0.5, h = 0.5, g = 0.25
    // L = (softplus(-(1 - 0.5)) + softplus(0.25 - 0.5)) / 2
    //   = (ln(1 + e^-0.5) + ln(1 + e^-0.25)) / 2 = (0.474077 + 0.575939) / 2 = 0.525008
    // dL/dg: pos -sigmoid(-0.5)/2 = -0.188770, neg +sigmoid(-0.25)/2 = 0.218912
    // dL/dz = dL/dg * 2h:     pos -0.377541,         neg 0.218912
    // dW = xn^T dz = [-0.377541 + 0.218912, -0.377541 - 0.218912] = [-0.158629, -0.596452]
    // db = -0.158629. SGD, lr 1, no momentum: W = [0.658629, 0.846452], b = 0.408629.
    const layer = new FFLayer(
      {
        inDim: 2,
        outDim: 1,
        goodness: 'mean',
        negate: false,
        threshold: 0.5,
        normEps: 1e-8,
        seed: 1,
      },
      PLAIN_SGD,
    );
    const x = tf.tensor2d([1, 1, 2, -2], [2, 2]);
    try {
      layer.importState(
        'l',
        new Map([
          // [in, out] or [out, in]: with one output both layouts hold the same two values.
          ['l.weight', { shape: [...layer.weight.shape], data: new Float32Array([0.5, 0.25]) }],
          ['l.bias', { shape: [1], data: new Float32Array([0.25]) }],
        ]),
      );
      const expectedLoss = (Math.log1p(Math.exp(-0.5)) + Math.log1p(Math.exp(-0.25))) / 2;
      assert.ok(Math.abs(expectedLoss - 0.525008) < 1e-6, 'the comment above is right');
      assert.ok(Math.abs(lossValue(layer, x, 1) - expectedLoss) < 1e-6);
      const [loss, gPos, gNeg] = step(layer, x, 1, 1);
      assert.ok(Math.abs(loss! - expectedLoss) < 1e-6, `loss ${loss}`);
      assert.ok(Math.abs(gPos! - 1) < 1e-6, `g+ ${gPos}`);
      assert.ok(Math.abs(gNeg! - 0.25) < 1e-6, `g- ${gNeg}`);
      const { w, b } = params(layer);
      const sig = (t: number) => 1 / (1 + Math.exp(-t));
      const dzPos = -sig(-0.5); // -sigmoid(-0.5)/2 * 2h, h = 1
      const dzNeg = sig(-0.25) / 2; // sigmoid(-0.25)/2 * 2h, h = 0.5
      const want = [0.5 - (dzPos + dzNeg), 0.25 - (dzPos - dzNeg), 0.25 - (dzPos + dzNeg)];
      assert.ok(maxAbsDiff([...w, ...b], want) < 1e-6, `params ${[...w, ...b]} vs ${want}`);
      assert.ok(maxAbsDiff(want, [0.658629, 0.846452, 0.408629]) < 1e-6);
    } finally {
      x.dispose();
      layer.dispose();
    }
  });
});

// The active rows' gather (and the softmax loss's label columns) run through it.
describe('gatherHost', () => {
  it("gatherHost gives tf.gather's values: rows, columns (a label twice), entries", () => {
    const rng = new Rng(5);
    const m = tf.tensor2d(
      Float32Array.from({ length: 6 * 7 }, () => rng.next() - 0.5),
      [6, 7],
    );
    const v = tf.tensor1d(Float32Array.from({ length: 6 }, () => rng.next()));
    try {
      for (const [t, idx, axis] of [
        [m, Int32Array.from([0, 2, 5]), 0],
        [m, Int32Array.from([6, 1, 1, 3]), 1],
        [v, Int32Array.from([4, 0]), 0],
        [m, new Int32Array(0), 0],
      ] as const) {
        const want = tf.gather(t, idx, axis);
        const got = gatherHost(t, idx, axis);
        assert.deepEqual(got.shape, want.shape);
        assert.deepEqual(Array.from(got.dataSync()), Array.from(want.dataSync()));
        tf.dispose([want, got]);
      }
    } finally {
      tf.dispose([m, v]);
    }
  });
});
