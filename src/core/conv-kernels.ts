// The competitive layer's step outside its two matrix products, as loops over host arrays:
// im2col, bias + ReLU + max pooling, BatchNorm, the class goodness and the cross-entropy, and the
// whole way back to dZ. On wasm each of these as tfjs ops streams the activations through
// memory a dozen times at a few GB/s (a slice of a batch costs more than the product it feeds);
// here each is one or two passes, sums in float64, in a fixed order: the same bits every run.
//
// Shapes (one layer, a batch of B images):
//   input x    [B, h, w, c]               channels last, flat
//   patches P  [G, N, K]                  N = B ho wo positions, K = kernel^2 c / G, a row in
//                                          (ky, kx, channel of group g) order
//   Z          [G, N, Og]                 the product P Wg (no bias), Og = O / G; channel o of
//                                          group g = floor(o / Og) is column o - g Og
//   pooled m   [B, hp, wp, O]             max over each pool x pool window of relu(Z + b)
//   y          [B, hp, wp, O]             BatchNorm of m: what the next layer gets
// The derivation of the backward pass is in competitive-layer.ts. Where the products run in
// ffx-blas, so do these loops (native/blas/src/ffx_conv.c, the same computations in the same
// order): convKernels() says which.
import { blasConvKernels } from '../backend/blas.js';
import type { ConvKernels } from '../backend/wasm-internals.js';

export interface Geometry {
  rows: number;
  /** Input [h, w, c]. */
  h: number;
  w: number;
  c: number;
  kernel: number;
  stride: number;
  padding: number;
  groups: number;
  /** Conv output [ho, wo], pooled [hp, wp], channels O. */
  ho: number;
  wo: number;
  pool: number;
  hp: number;
  wp: number;
  out: number;
}

/** P from x (a conv layer's; a dense layer's P is x itself). */
export function im2col(x: Float32Array, g: Geometry, p: Float32Array): void {
  const { rows, h, w, c, kernel, stride, padding, groups, ho, wo } = g;
  const cg = c / groups;
  // Ungrouped, a kernel row inside the image is one span of kernel * c values of x.
  const span = groups === 1 ? kernel * c : 0;
  let at = 0;
  for (let gi = 0; gi < groups; gi++) {
    const c0 = gi * cg;
    for (let b = 0; b < rows; b++) {
      for (let oy = 0; oy < ho; oy++) {
        for (let ox = 0; ox < wo; ox++) {
          const x0 = ox * stride - padding;
          const inside = x0 >= 0 && x0 + kernel <= w;
          for (let ky = 0; ky < kernel; ky++) {
            const iy = oy * stride + ky - padding;
            if (iy < 0 || iy >= h) {
              p.fill(0, at, at + kernel * cg);
              at += kernel * cg;
              continue;
            }
            const row = (b * h + iy) * w;
            if (span > 0 && inside) {
              const from = (row + x0) * c;
              copy(x, from, p, at, span);
              at += span;
              continue;
            }
            for (let kx = 0; kx < kernel; kx++) {
              const ix = x0 + kx;
              if (ix < 0 || ix >= w) p.fill(0, at, at + cg);
              else copy(x, (row + ix) * c + c0, p, at, cg);
              at += cg;
            }
          }
        }
      }
    }
  }
}

/** n values of `from` at `i` into `to` at `j`: a loop for short runs, set for long ones. */
function copy(from: Float32Array, i: number, to: Float32Array, j: number, n: number): void {
  if (n >= 64) {
    to.set(from.subarray(i, i + n), j);
    return;
  }
  for (let k = 0; k < n; k++) to[j + k] = from[i + k]!;
}

/**
 * m = maxpool(relu(Z + bias)), and for each pooled value the index into Z of the window's
 * maximum (the first in scan order), or -1 where the ReLU is zero there (no gradient).
 */
export function reluPool(
  z: Float32Array,
  bias: Float32Array,
  g: Geometry,
  m: Float32Array,
  arg: Int32Array,
): void {
  const { rows, ho, wo, pool, hp, wp, out, groups } = g;
  const og = out / groups;
  const n = rows * ho * wo;
  m.fill(0);
  arg.fill(-1);
  for (let gi = 0; gi < groups; gi++) {
    const o0 = gi * og;
    for (let b = 0; b < rows; b++) {
      for (let py = 0; py < hp; py++) {
        for (let px = 0; px < wp; px++) {
          const at = ((b * hp + py) * wp + px) * out + o0;
          for (let dy = 0; dy < pool; dy++) {
            for (let dx = 0; dx < pool; dx++) {
              const base = (gi * n + (b * ho + py * pool + dy) * wo + px * pool + dx) * og;
              for (let j = 0; j < og; j++) {
                const v = z[base + j]! + bias[o0 + j]!;
                if (v > m[at + j]!) {
                  m[at + j] = v;
                  arg[at + j] = base + j;
                }
              }
            }
          }
        }
      }
    }
  }
}

/** A batch's per-channel mean and (biased) variance over the rows of m [count, out]. */
export function channelMoments(
  m: Float32Array,
  out: number,
): { mean: Float64Array; variance: Float64Array } {
  const count = m.length / out;
  const mean = new Float64Array(out);
  for (let i = 0; i < m.length; i += out) for (let o = 0; o < out; o++) mean[o]! += m[i + o]!;
  for (let o = 0; o < out; o++) mean[o]! /= count;
  const variance = new Float64Array(out);
  for (let i = 0; i < m.length; i += out) {
    for (let o = 0; o < out; o++) {
      const d = m[i + o]! - mean[o]!;
      variance[o]! += d * d;
    }
  }
  for (let o = 0; o < out; o++) variance[o]! /= count;
  return { mean, variance };
}

/** y = scale m + shift per channel (BatchNorm with its statistics folded in). */
export function affine(
  m: Float32Array,
  scale: ArrayLike<number>,
  shift: ArrayLike<number>,
  y: Float32Array,
): void {
  const out = scale.length;
  for (let i = 0; i < m.length; i += out)
    for (let o = 0; o < out; o++) y[i + o] = scale[o]! * m[i + o]! + shift[o]!;
}

/**
 * Class goodness G [rows, classes] of y [rows, positions, out]: each class's group of out /
 * classes channels, its mean square over the positions and the group (each channel's sum over
 * the positions first, then the group's).
 */
export function classGoodness(y: Float32Array, rows: number, out: number, classes: number) {
  const per = y.length / rows;
  const group = out / classes;
  const n = (per / out) * group;
  const g = new Float64Array(rows * classes);
  const acc = new Float64Array(out);
  for (let b = 0; b < rows; b++) {
    acc.fill(0);
    for (let i = b * per; i < (b + 1) * per; i += out) {
      for (let o = 0; o < out; o++) acc[o]! += y[i + o]! * y[i + o]!;
    }
    for (let j = 0, o = 0; j < classes; j++) {
      let sum = 0;
      for (const end = o + group; o < end; o++) sum += acc[o]!;
      g[b * classes + j] = sum / n;
    }
  }
  return g;
}

/**
 * The cross-entropy of the true labels under softmax(alpha G), and dL/dG (mean over the rows).
 */
export function softmaxLoss(
  g: Float64Array,
  labels: ArrayLike<number>,
  classes: number,
  alpha: number,
): { loss: number; dg: Float64Array } {
  const rows = labels.length;
  const dg = new Float64Array(g.length);
  let loss = 0;
  for (let b = 0; b < rows; b++) {
    let max = -Infinity;
    for (let j = 0; j < classes; j++) max = Math.max(max, alpha * g[b * classes + j]!);
    let sum = 0;
    for (let j = 0; j < classes; j++) sum += Math.exp(alpha * g[b * classes + j]! - max);
    const label = labels[b]!;
    loss -= alpha * g[b * classes + label]! - max - Math.log(sum);
    for (let j = 0; j < classes; j++) {
      const p = Math.exp(alpha * g[b * classes + j]! - max) / sum;
      dg[b * classes + j] = (alpha * (p - (j === label ? 1 : 0))) / rows;
    }
  }
  return { loss: loss / rows, dg };
}

/**
 * From dL/dG back to dZ (written into `dz`, zero elsewhere), with the gradients of BatchNorm's
 * scale and shift and of the bias. `m` is the pooled batch, `y` its BatchNorm output, `arg`
 * where each pooled value came from in Z (reluPool).
 */
export function backward(
  args: {
    dg: Float64Array;
    m: Float32Array;
    y: Float32Array;
    arg: Int32Array;
    mean: Float64Array;
    variance: Float64Array;
    gamma: ArrayLike<number>;
    eps: number;
    rows: number;
    out: number;
    classes: number;
  },
  dz: Float32Array,
): { dgamma: Float32Array; dbeta: Float32Array; dbias: Float32Array } {
  const { dg, m, y, arg, mean, variance, gamma, eps, rows, out, classes } = args;
  const count = m.length / out;
  const per = count / rows; // pooled positions per image
  const group = out / classes;
  const inv = Float64Array.from(variance, (v) => 1 / Math.sqrt(v + eps));
  // dL/dy = coef[o] y, coef[o] = dG[b, class of o] * 2 / (positions * group), per image b.
  const k = 2 / (per * group);
  const coef = new Float64Array(out);
  const setCoef = (b: number) => {
    for (let o = 0; o < out; o++) coef[o] = dg[b * classes + Math.floor(o / group)]! * k;
  };
  const sumDy = new Float64Array(out);
  const sumDyXhat = new Float64Array(out);
  for (let b = 0; b < rows; b++) {
    setCoef(b);
    for (let at = b * per * out; at < (b + 1) * per * out; at += out) {
      for (let o = 0; o < out; o++) {
        const dy = coef[o]! * y[at + o]!;
        sumDy[o]! += dy;
        sumDyXhat[o]! += dy * (m[at + o]! - mean[o]!);
      }
    }
  }
  // dm = a[o] dy - b[o] - c[o] (m - mean), with the per-channel constants folded.
  const ka = new Float64Array(out);
  const kb = new Float64Array(out);
  const kc = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    sumDyXhat[o]! *= inv[o]!;
    ka[o] = gamma[o]! * inv[o]!;
    kb[o] = (ka[o]! * sumDy[o]!) / count;
    kc[o] = (ka[o]! * inv[o]! * sumDyXhat[o]!) / count;
  }
  const dbias = new Float64Array(out);
  for (let b = 0; b < rows; b++) {
    setCoef(b);
    for (let at = b * per * out; at < (b + 1) * per * out; at += out) {
      for (let o = 0; o < out; o++) {
        const from = arg[at + o]!;
        if (from < 0) continue;
        const dm = ka[o]! * coef[o]! * y[at + o]! - kb[o]! - kc[o]! * (m[at + o]! - mean[o]!);
        dz[from] = dm;
        dbias[o]! += dm;
      }
    }
  }
  return {
    dgamma: Float32Array.from(sumDyXhat),
    dbeta: Float32Array.from(sumDy),
    dbias: Float32Array.from(dbias),
  };
}

/** These loops as ConvKernels (flat arguments, as ffx-blas takes them). */
export const JS_CONV_KERNELS: ConvKernels = {
  im2col: (x, p, rows, h, w, c, kernel, stride, padding, groups, ho, wo) =>
    im2col(x, { ...geo(rows, ho, wo, 1, 0, 0, 0, groups), h, w, c, kernel, stride, padding }, p),
  reluPool: (z, bias, m, arg, rows, ho, wo, pool, hp, wp, out, groups) =>
    reluPool(z, bias, geo(rows, ho, wo, pool, hp, wp, out, groups), m, arg),
  goodness: (y, rows, out, classes, g) => g.set(classGoodness(y, rows, out, classes)),
  moments: (m, count, out, mean, variance) => {
    const r = channelMoments(m.subarray(0, count * out), out);
    mean.set(r.mean);
    variance.set(r.variance);
  },
  affine: (m, count, out, scale, shift, y) =>
    affine(m.subarray(0, count * out), scale.subarray(0, out), shift.subarray(0, out), y),
  backward: (
    dg,
    m,
    y,
    arg,
    mean,
    variance,
    gamma,
    eps,
    rows,
    count,
    out,
    classes,
    dz,
    dgamma,
    dbeta,
    dbias,
  ) => {
    const n = count * out;
    const r = backward(
      { dg, m: m.subarray(0, n), y, arg, mean, variance, gamma, eps, rows, out, classes },
      dz,
    );
    dgamma.set(r.dgamma);
    dbeta.set(r.dbeta);
    dbias.set(r.dbias);
  },
};

function geo(
  rows: number,
  ho: number,
  wo: number,
  pool: number,
  hp: number,
  wp: number,
  out: number,
  groups: number,
): Geometry {
  return {
    rows,
    h: 0,
    w: 0,
    c: 0,
    kernel: 0,
    stride: 1,
    padding: 0,
    groups,
    ho,
    wo,
    pool,
    hp,
    wp,
    out,
  };
}

/** The loops this process runs: ffx-blas's where the products run there, else these. */
export function convKernels(): ConvKernels {
  return blasConvKernels() ?? JS_CONV_KERNELS;
}
