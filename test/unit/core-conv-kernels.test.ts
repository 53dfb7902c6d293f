// The conv layer's loops: ffx-blas's compiled ones (native/blas/src/ffx_conv.c) give the bits of
// the JavaScript ones (core/conv-kernels.ts) on every kernel, for plain, grouped, strided and
// pooled geometries; and they refuse arrays too short for the geometry instead of running past
// them. Where ffx-blas is built (CI requires it).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadBlasAddon, type BlasAddon } from '../../src/backend/blas.js';
import { JS_CONV_KERNELS } from '../../src/core/conv-kernels.js';
import { Rng } from '../../src/data/rng.js';
import { blasLoads } from '../helpers/backends.js';

function noise(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
}

// [rows, h, w, c, kernel, stride, padding, groups, out, pool]
const GEOMETRIES = [
  [3, 6, 6, 2, 3, 1, 1, 1, 20, 1],
  [2, 6, 6, 10, 3, 1, 1, 10, 20, 2],
  [2, 7, 7, 3, 3, 2, 0, 1, 10, 2],
  [4, 5, 5, 40, 3, 1, 1, 1, 30, 1],
];

describe(
  'conv kernels: ffx-blas against JavaScript',
  { skip: !blasLoads().ok && blasLoads().why },
  () => {
    const native = (): BlasAddon => loadBlasAddon();

    for (const [rows, h, w, c, kernel, stride, padding, groups, out, pool] of GEOMETRIES) {
      it(`the same bits: ${rows}x${h}x${w}x${c}, k${kernel} s${stride} p${padding} g${groups} -> ${out}, pool ${pool}`, () => {
        const ho = Math.floor((h! + 2 * padding! - kernel!) / stride!) + 1;
        const wo = Math.floor((w! + 2 * padding! - kernel!) / stride!) + 1;
        const [hp, wp] = [Math.floor(ho / pool!), Math.floor(wo / pool!)];
        const x = noise(rows! * h! * w! * c!, 1);
        const both = <T>(f: (k: typeof JS_CONV_KERNELS) => T): [T, T] => [
          f(JS_CONV_KERNELS),
          f(native()),
        ];
        const [pj, pn] = both((k) => {
          const p = new Float32Array(rows! * ho * wo * kernel! * kernel! * c!);
          k.im2col(x, p, rows!, h!, w!, c!, kernel!, stride!, padding!, groups!, ho, wo);
          return p;
        });
        assert.deepEqual(pn, pj);
        const z = noise(rows! * ho * wo * out!, 2);
        const bias = noise(out!, 3);
        const count = rows! * hp * wp;
        const [rj, rn] = both((k) => {
          const m = new Float32Array(count * out!);
          const arg = new Int32Array(count * out!);
          k.reluPool(z, bias, m, arg, rows!, ho, wo, pool!, hp, wp, out!, groups!);
          return { m, arg };
        });
        assert.deepEqual(rn, rj);
        const [sj, sn] = both((k) => {
          const mean = new Float64Array(out!);
          const variance = new Float64Array(out!);
          k.moments(rj.m, count, out!, mean, variance);
          const y = new Float32Array(count * out!);
          const scale = Float64Array.from(variance, (v) => 1.5 / Math.sqrt(v + 1e-4));
          const shift = Float64Array.from(mean, (mu, o) => 0.1 - mu * scale[o]!);
          k.affine(rj.m, count, out!, scale, shift, y);
          return { mean, variance, y };
        });
        assert.deepEqual(sn, sj);
        const [gj, gn] = both((k) => {
          const g = new Float64Array(rows! * 10);
          k.goodness(sj.y, rows!, out!, 10, g);
          return g;
        });
        assert.deepEqual(gn, gj);
        assert.ok(gj.every((v) => v > 0));
        const dg = Float64Array.from(noise(rows! * 10, 4));
        const gamma = noise(out!, 5);
        const [bj, bn] = both((k) => {
          const dz = new Float32Array(z.length);
          const d = [0, 1, 2].map(() => new Float32Array(out!)) as Float32Array[];
          k.backward(
            dg,
            rj.m,
            sj.y,
            rj.arg,
            sj.mean,
            sj.variance,
            gamma,
            1e-4,
            rows!,
            count,
            out!,
            10,
            dz,
            d[0]!,
            d[1]!,
            d[2]!,
          );
          return { dz, d };
        });
        assert.deepEqual(bn, bj);
        assert.ok(bj.dz.some((v) => v !== 0));
      });
    }

    it('refuses arrays shorter than the geometry needs', () => {
      const k = native();
      const x = new Float32Array(2 * 4 * 4);
      assert.throws(
        () => k.im2col(x, new Float32Array(10), 2, 4, 4, 1, 3, 1, 1, 1, 4, 4),
        /im2col: an array is too short/,
      );
      assert.throws(
        () =>
          k.reluPool(
            new Float32Array(8),
            new Float32Array(10),
            new Float32Array(10),
            new Int32Array(10),
            1,
            2,
            2,
            2,
            1,
            1,
            10,
            1,
          ),
        /reluPool: an array is too short/,
      );
      const arg = new Int32Array(10).fill(1000);
      assert.throws(
        () =>
          k.backward(
            new Float64Array(10),
            new Float32Array(10),
            new Float32Array(10),
            arg,
            new Float64Array(10),
            new Float64Array(10).fill(1),
            new Float32Array(10),
            1e-4,
            1,
            1,
            10,
            10,
            new Float32Array(10),
            new Float32Array(10),
            new Float32Array(10),
            new Float32Array(10),
          ),
        /an index in arg runs past dz/,
      );
    });
  },
);
