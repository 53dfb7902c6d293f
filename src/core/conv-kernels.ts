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
// The derivation of the backward pass is in competitive-layer.ts.

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
  let at = 0;
  for (let gi = 0; gi < groups; gi++) {
    const c0 = gi * cg;
    for (let b = 0; b < rows; b++) {
      for (let oy = 0; oy < ho; oy++) {
        for (let ox = 0; ox < wo; ox++) {
          for (let ky = 0; ky < kernel; ky++) {
            const iy = oy * stride + ky - padding;
            for (let kx = 0; kx < kernel; kx++) {
              const ix = ox * stride + kx - padding;
              if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
                for (let k = 0; k < cg; k++) p[at + k] = 0;
              } else {
                // A loop, not set(subarray): most groups are a few channels wide.
                const from = ((b * h + iy) * w + ix) * c + c0;
                for (let k = 0; k < cg; k++) p[at + k] = x[from + k]!;
              }
              at += cg;
            }
          }
        }
      }
    }
  }
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
  const best = new Float32Array(out);
  const where = new Int32Array(out);
  let at = 0;
  for (let b = 0; b < rows; b++) {
    for (let py = 0; py < hp; py++) {
      for (let px = 0; px < wp; px++) {
        best.fill(0);
        where.fill(-1);
        for (let dy = 0; dy < pool; dy++) {
          for (let dx = 0; dx < pool; dx++) {
            const pos = (b * ho + py * pool + dy) * wo + px * pool + dx;
            for (let gi = 0; gi < groups; gi++) {
              const base = (gi * n + pos) * og;
              const o0 = gi * og;
              for (let j = 0; j < og; j++) {
                const v = z[base + j]! + bias[o0 + j]!;
                if (v > best[o0 + j]!) {
                  best[o0 + j] = v;
                  where[o0 + j] = base + j;
                }
              }
            }
          }
        }
        m.set(best, at);
        arg.set(where, at);
        at += out;
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
 * classes channels, its mean square over the positions and the group.
 */
export function classGoodness(y: Float32Array, rows: number, out: number, classes: number) {
  const per = y.length / rows;
  const group = out / classes;
  const g = new Float64Array(rows * classes);
  for (let b = 0; b < rows; b++) {
    for (let i = b * per; i < (b + 1) * per; i += out) {
      for (let o = 0; o < out; o++) {
        const v = y[i + o]!;
        g[b * classes + Math.floor(o / group)]! += v * v;
      }
    }
  }
  const n = (per / out) * group;
  for (let k = 0; k < g.length; k++) g[k]! /= n;
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
  // dL/dy = dG[b, class of o] * 2 y / (positions * group)
  const k = 2 / (per * group);
  const sumDy = new Float64Array(out);
  const sumDyXhat = new Float64Array(out);
  for (let i = 0; i < count; i++) {
    const b = Math.floor(i / per);
    const at = i * out;
    for (let o = 0; o < out; o++) {
      const dy = dg[b * classes + Math.floor(o / group)]! * k * y[at + o]!;
      sumDy[o]! += dy;
      sumDyXhat[o]! += dy * (m[at + o]! - mean[o]!) * inv[o]!;
    }
  }
  const dbias = new Float64Array(out);
  for (let i = 0; i < count; i++) {
    const b = Math.floor(i / per);
    const at = i * out;
    for (let o = 0; o < out; o++) {
      const from = arg[at + o]!;
      if (from < 0) continue;
      const dy = dg[b * classes + Math.floor(o / group)]! * k * y[at + o]!;
      const xhat = (m[at + o]! - mean[o]!) * inv[o]!;
      const dm = (gamma[o]! * inv[o]! * (count * dy - sumDy[o]! - xhat * sumDyXhat[o]!)) / count;
      dz[from] = dm;
      dbias[o]! += dm;
    }
  }
  return {
    dgamma: Float32Array.from(sumDyXhat),
    dbeta: Float32Array.from(sumDy),
    dbias: Float32Array.from(dbias),
  };
}
