// The wasm+blas backend (src/backend/blas.ts, native/blas): its products equal a float64
// reference for every transpose and batch broadcast, its fused bias and relu give the bits of
// the unfused ops, its optimizer updates the bits of the wasm kernel, the FF step on it equals
// autograd of the losses written from their definitions, and its bits do not depend on the
// number of threads. Each case runs in a child process (a process has one backend).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { blasLoads } from '../helpers/backends.js';
import { killAll, ROOT, runModule } from '../helpers/spawn.js';

const url = (...p: string[]) => JSON.stringify(pathToFileURL(join(ROOT, 'dist', ...p)).href);

/** Runs `body` with `tf`, `blas` (the addon) and `report(x)` on wasm+blas; returns what it reported. */
async function onBlas(body: string, threads = 2): Promise<Record<string, unknown>> {
  const source = `
    const tf = await import('@tensorflow/tfjs');
    const b = await import(${url('src', 'backend', 'backend.js')});
    await b.initBackend('wasm+blas', { threads: ${threads} });
    const blas = (await import('node:module')).createRequire(import.meta.url)('ffx-blas');
    const out = {};
    const report = (k, v) => (out[k] = v);
    ${body}
    console.log('REPORT ' + JSON.stringify(out));
  `;
  const r = await runModule(source, { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  const line = r.stdout.split('\n').find((l) => l.startsWith('REPORT '));
  assert.ok(line, r.stdout + r.stderr);
  return JSON.parse(line.slice(7)) as Record<string, unknown>;
}

const blas = blasLoads();

describe(
  'the wasm+blas backend',
  { skip: blas.ok ? false : `ffx-blas does not load here: ${blas.why}` },
  () => {
    after(() => killAll());

    it('multiplies as a float64 reference does, for every transpose and batch broadcast', async () => {
      const r = await onBlas(`
      const cases = [[[5, 7], [7, 3], false, false], [[7, 5], [7, 3], true, false],
        [[5, 7], [3, 7], false, true], [[7, 5], [3, 7], true, true], [[2, 5, 7], [7, 3], false, false],
        [[2, 5, 7], [2, 3, 7], false, true], [[3, 1, 4, 6], [1, 2, 6, 5], false, false],
        [[300, 260], [260, 270], false, false], [[4, 0], [0, 3], false, false]];
      const worst = [];
      for (const [sa, sb, ta, tb] of cases) {
        const a = tf.randomNormal(sa, 0, 1, 'float32', 1), b2 = tf.randomNormal(sb, 0, 1, 'float32', 2);
        const c = tf.matMul(a, b2, ta, tb);
        const [A, B, C] = [a.dataSync(), b2.dataSync(), c.dataSync()];
        const rank = c.shape.length, [m, n] = c.shape.slice(-2);
        const k = ta ? sa[sa.length - 2] : sa[sa.length - 1];
        const batchOf = (shape, idx) => { // the flat batch of a tensor of shape for output batch idx
          const dims = shape.slice(0, -2), pad = rank - 2 - dims.length; let flat = 0;
          dims.forEach((d, i) => (flat = flat * d + (d === 1 ? 0 : idx[pad + i])));
          return flat;
        };
        let w = 0;
        const outBatch = c.shape.slice(0, -2), total = outBatch.reduce((p, q) => p * q, 1);
        for (let bi = 0; bi < total; bi++) {
          const idx = []; let rest = bi;
          for (let d = outBatch.length - 1; d >= 0; d--) { idx.unshift(rest % outBatch[d]); rest = Math.floor(rest / outBatch[d]); }
          const [oa, ob] = [batchOf(sa, idx) * (sa.at(-1) * sa.at(-2)), batchOf(sb, idx) * (sb.at(-1) * sb.at(-2))];
          for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
            let s = 0;
            for (let q = 0; q < k; q++) s += (ta ? A[oa + q * m + i] : A[oa + i * k + q]) * (tb ? B[ob + j * k + q] : B[ob + q * n + j]);
            w = Math.max(w, Math.abs(s - C[bi * m * n + i * n + j]) / Math.max(1, Math.sqrt(k)));
          }
        }
        worst.push([JSON.stringify([sa, sb, ta, tb]), c.shape.join('x'), w]);
      }
      report('worst', worst);
    `);
      for (const [which, shape, err] of r.worst as [string, string, number][]) {
        assert.ok(err < 1e-5, `${which} -> ${shape}: error ${err}`);
      }
    });

    it('fuses the bias and relu into the product with the bits of the separate ops', async () => {
      const r = await onBlas(`
      const x = tf.randomNormal([300, 70], 0, 1, 'float32', 3);
      const w = tf.randomNormal([260, 70], 0, 1, 'float32', 4);
      const bias = tf.randomNormal([260], 0, 1, 'float32', 5);
      const same = (a, b2) => a.dataSync().every((v, i) => Object.is(v, b2.dataSync()[i]));
      const fused = tf.fused.matMul({ a: x, b: w, transposeB: true, bias, activation: 'relu' });
      const linear = tf.fused.matMul({ a: x, b: w, transposeB: true, bias });
      const apart = tf.add(tf.matMul(x, w, false, true), bias);
      report('linear', same(linear, apart));
      report('relu', same(fused, tf.relu(apart)));
      report('negatives', apart.dataSync().some((v) => v < 0));
    `);
      assert.deepEqual(r, { linear: true, relu: true, negatives: true });
    });

    it("updates Adam and SGD slots with the wasm kernel's bits, on every thread", async () => {
      const r = await onBlas(`
      const { optimizerKernels } = await import(${url('src', 'core', 'wasm-kernels.js')});
      const { blasOptimizerKernels } = await import(${url('src', 'backend', 'blas.js')});
      const { ownedVariable, wasmHeapOffset } = await import(${url('src', 'core', 'host-memory.js')});
      const n = 300000;
      // Values across the flush thresholds, and a NaN.
      const vals = (seed) => Float32Array.from({ length: n }, (_, i) =>
        i === 7 ? NaN : Math.sin(i * seed) * 10 ** (-(i % 40)));
      const run = (k, kind) => {
        const [p, g, m, v] = [1, 2, 3, 4].map((s) => ownedVariable(tf.tensor1d(vals(s)), false));
        const at = (t) => wasmHeapOffset(t);
        if (kind === 'adam') k.adam(at(p), at(g), at(m), at(v), n, 0.9, 0.1, 0.999, 0.001, 0.01, 1e-8, 0.001, 0.99, 1e-16, 1e-30);
        else k.sgd(at(p), at(g), at(m), n, 0.9, 0.01, 0.001, 1e-16, 1e-30);
        const outs = [p, m, v].map((t) => Array.from(t.dataSync(), (x) => Object.is(x, -0) ? '-0' : String(x)));
        tf.dispose([p, g, m, v]);
        return outs;
      };
      for (const kind of ['adam', 'sgd']) {
        const native = run(blasOptimizerKernels(), kind), wasm = run(optimizerKernels(), kind);
        report(kind, native.every((a, i) => a.every((x, j) => x === wasm[i][j])));
      }
    `);
      assert.deepEqual(r, { adam: true, sgd: true });
    });

    it('steps an FF layer as autograd of its loss says, with every loss and peer norm', async () => {
      const r = await onBlas(`
      const { FFLayer } = await import(${url('src', 'core', 'ff-layer.js')});
      const { referenceLoss } = await import(${url('test', 'helpers', 'ff-reference.js')});
      const sgd = { type: 'sgd', lr: 1, momentum: 0, weightDecay: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
      const nPos = 5, inDim = 30, outDim = 9;
      const x = (overlay) => {
        const data = Float32Array.from({ length: 2 * nPos * inDim }, (_, i) => Math.sin(i * 1.7) + 0.3);
        if (overlay) for (let r = 0; r < 2 * nPos; r++) for (let c = 0; c < 10; c++) data[r * inDim + c] = c === r % 10 ? 2 : 0;
        return tf.tensor2d(data, [2 * nPos, inDim]);
      };
      const variants = [
        { goodness: 'mean', threshold: 0.3 }, { goodness: 'sum', threshold: 2.5, negate: true },
        { goodness: 'sum', threshold: 0, loss: 'symba', alpha: 0.5 },
        { goodness: 'sum', threshold: 0, loss: 'softmax', alpha: 1.5, overlay: true },
        { goodness: 'mean', threshold: 0.3, peerNorm: 2 },
      ];
      const worst = [];
      for (const v of variants) {
        const layer = new FFLayer({ inDim, outDim, goodness: v.goodness, negate: v.negate ?? false,
          threshold: v.threshold, loss: v.loss, alpha: v.alpha, normEps: 1e-8, seed: 3, peerNorm: v.peerNorm ?? 0 }, sgd);
        const input = x(v.overlay);
        const { grads } = tf.variableGrads(() => referenceLoss(layer, input, nPos), [layer.weight, layer.bias]);
        const auto = grads[layer.weight.name].dataSync().slice();
        const before = layer.weight.dataSync().slice();
        const { h, stats } = layer.trainStep(input, nPos, 1);
        const after = layer.weight.dataSync();
        let w = 0, scale = 0;
        for (let i = 0; i < auto.length; i++) { w = Math.max(w, Math.abs(before[i] - after[i] - auto[i])); scale = Math.max(scale, Math.abs(auto[i])); }
        worst.push([JSON.stringify(v), w, scale]);
        tf.dispose([h, stats, input]);
        layer.dispose();
      }
      report('worst', worst);
    `);
      for (const [which, err, scale] of r.worst as [string, number, number][]) {
        assert.ok(scale > 1e-4, `${which}: the gradient is not ~0 (${scale})`);
        assert.ok(
          err < 1e-5 + 1e-4 * scale,
          `${which}: closed form vs autograd ${err} (scale ${scale})`,
        );
      }
    });

    it('gives the same bits on 1, 2 and 3 threads', async () => {
      const r = await onBlas(`
      const { FFLayer } = await import(${url('src', 'core', 'ff-layer.js')});
      const { DEFAULT_OPTIMIZER } = await import(${url('src', 'core', 'optimizer.js')});
      const x = tf.randomUniform([600, 784], 0, 1, 'float32', 9);
      const hashes = [];
      for (const threads of [1, 2, 3]) {
        blas.setThreads(threads);
        const layer = new FFLayer({ inDim: 784, outDim: 700, goodness: 'sum', negate: false, threshold: 300,
          normEps: 1e-8, seed: 1 }, DEFAULT_OPTIMIZER);
        for (let s = 0; s < 3; s++) { const { h, stats } = layer.trainStep(x, 300, 0.003); tf.dispose([h, stats]); }
        const w = layer.weight.dataSync();
        hashes.push((await import('node:crypto')).createHash('sha256').update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength)).digest('hex'));
        layer.dispose();
      }
      report('hashes', hashes);
    `);
      const [one, two, three] = r.hashes as string[];
      assert.equal(two, one);
      assert.equal(three, one);
    });
  },
);
