// Per-layer optimizers (Adam, AdamW, SGD with momentum) over a layer's own variables.
//
// tfjs ships Adam and SGD-momentum but not AdamW, and its optimizers keep state under
// variable names in a global registry; a layer that moves between processes needs its
// state as plain named tensors it can export and import, so the update is written here.
import * as tf from '@tensorflow/tfjs';
import { hostView, hostWritten, ownedVariable, wasmHeapOffset } from './host-memory.js';
import { optimizerKernels } from './wasm-kernels.js';
import { blasOptimizerKernels } from '../backend/blas.js';

export const OPTIMIZER_TYPES = ['adam', 'adamw', 'sgd'] as const;
export type OptimizerType = (typeof OPTIMIZER_TYPES)[number];

export interface OptimizerConfig {
  type: OptimizerType;
  /** Peak learning rate. */
  lr: number;
  /** Adam / AdamW only. */
  beta1: number;
  beta2: number;
  eps: number;
  /** SGD only. */
  momentum: number;
  /** L2 penalty added to the gradient (adam, sgd) or decoupled decay (adamw). */
  weightDecay: number;
}

export const DEFAULT_OPTIMIZER: OptimizerConfig = {
  type: 'adam',
  lr: 0.001,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  momentum: 0.9,
  weightDecay: 0,
};

/**
 * Flush to zero: every path of the update (the SIMD kernel, the JS loop, the tfjs ops) sets
 * g' = g + l2 p below FLUSH_GRAD and the slots (m, v, SGD's momentum) below FLUSH_SLOT to 0;
 * NaN passes. Subnormals cost x86 a microcode assist each (kernels/optimizer.wat says when they
 * pile up), and values this small cannot move a float32 weight: Adam divides by sqrt(v) + eps
 * with eps ~1e-8, and g'^2 (1-b2) stays normal above 1e-16.
 */
const FLUSH_GRAD = 1e-16;
const FLUSH_SLOT = 1e-30;

/**
 * One update's scalars, rounded to float32 once: the kernel, the JS loop and the tfjs ops all
 * take these, so all three compute the same float32 numbers.
 */
interface UpdateScalars {
  lr: number;
  /** SGD's momentum. */
  mu: number;
  b1: number;
  /**
   * 1 - b1 (and 1 - b2) as float32 subtracts them, 1 - f32(b1): the value the kernel always
   * used, so moving the subtraction out of it changed no result.
   */
  b1c: number;
  b2: number;
  b2c: number;
  /** Adam's bias correction folded into the step size and epsilon. */
  stepSize: number;
  epsHat: number;
  /** L2 penalty added to the gradient (adam, sgd; 0 for adamw). */
  l2: number;
  /** AdamW's decoupled decay as a factor on the weight (1 otherwise). */
  shrink: number;
  tinyGrad: number;
  tinySlot: number;
}

/** |x| < tiny ? 0 : x (NaN compares false and passes). */
function flush(x: number, tiny: number): number {
  return Math.abs(x) < tiny ? 0 : x;
}

/** The same flush as tfjs ops (its temporaries belong to the caller's tidy). */
function flushOps(x: tf.Tensor, tiny: number): tf.Tensor {
  return tf.where(tf.less(tf.abs(x), tiny), tf.zerosLike(x), x);
}

export class LayerOptimizer {
  readonly config: OptimizerConfig;
  /** Number of updates applied so far (Adam's bias correction needs it). */
  step = 0;
  private readonly slots = new Map<tf.Variable, tf.Variable[]>();

  constructor(config: OptimizerConfig, params: tf.Variable[]) {
    this.config = config;
    const slotCount = config.type === 'sgd' ? 1 : 2;
    for (const p of params) {
      const s: tf.Variable[] = [];
      for (let i = 0; i < slotCount; i++) s.push(ownedVariable(tf.zerosLike(p), false));
      this.slots.set(p, s);
    }
  }

  /**
   * Applies one update with learning rate `lr` (the schedule's value for this step).
   * Call inside tf.tidy: the temporaries are the caller's to reclaim.
   */
  apply(grads: Map<tf.Variable, tf.Tensor>, lr: number): void {
    this.step += 1;
    for (const [p, g] of grads) {
      const s = this.slots.get(p);
      if (!s) throw new Error(`optimizer has no state for variable ${p.name}`);
      const decay = this.config.weightDecay > 0 && p.rank > 1 ? this.config.weightDecay : 0; // never biases
      const k = this.updateScalars(lr, decay);
      if (this.applyInPlace(p, g, s, k)) {
        for (const t of [p, ...s]) hostWritten(t);
      } else {
        this.applyOps(p, g, s, k);
      }
    }
  }

  private updateScalars(lr: number, decay: number): UpdateScalars {
    const c = this.config;
    const f = Math.fround;
    const c2 = Math.sqrt(1 - c.beta2 ** this.step);
    const adamw = c.type === 'adamw';
    return {
      lr: f(lr),
      mu: f(c.momentum),
      b1: f(c.beta1),
      b1c: f(1 - f(c.beta1)),
      b2: f(c.beta2),
      b2c: f(1 - f(c.beta2)),
      stepSize: f((lr * c2) / (1 - c.beta1 ** this.step)),
      epsHat: f(c.eps * c2),
      l2: adamw ? 0 : f(decay),
      shrink: adamw ? f(1 - lr * decay) : 1,
      tinyGrad: f(FLUSH_GRAD),
      tinySlot: f(FLUSH_SLOT),
    };
  }

  /**
   * The update as tfjs ops: works on every backend. The ops and their order are the kernel's,
   * one float32 rounding each, so this path gives the fused one's numbers bit for bit.
   */
  private applyOps(p: tf.Variable, g0: tf.Tensor, s: tf.Variable[], k: UpdateScalars): void {
    // (With l2 = 0 the kernel adds 0 * p; skipping it differs only where p is not finite.)
    const g = flushOps(k.l2 ? g0.add(p.mul(k.l2)) : g0, k.tinyGrad);
    if (this.config.type === 'sgd') {
      const m = s[0]!;
      m.assign(flushOps(m.mul(k.mu).add(g), k.tinySlot));
      p.assign(p.sub(m.mul(k.lr)));
      return;
    }
    const [m, v] = s as [tf.Variable, tf.Variable];
    m.assign(flushOps(m.mul(k.b1).add(g.mul(k.b1c)), k.tinySlot));
    v.assign(flushOps(v.mul(k.b2).add(g.square().mul(k.b2c)), k.tinySlot));
    const update = m.mul(k.stepSize).div(v.sqrt().add(k.epsHat));
    p.assign((k.shrink === 1 ? p : p.mul(k.shrink)).sub(update));
  }

  /**
   * The same update as one fused loop over host memory (wasm, cpu): a single pass over the
   * parameters instead of ~12 tfjs ops that each stream them through memory. Returns false
   * where the storage is out of reach or shared, and the caller falls back to applyOps.
   */
  private applyInPlace(p: tf.Variable, g: tf.Tensor, s: tf.Variable[], k: UpdateScalars): boolean {
    const sgd = this.config.type === 'sgd';
    // Views are taken last and used at once: no tfjs call may run in between (heap growth).
    const pv = hostView(p, true);
    const gv = hostView(g);
    const mv = hostView(s[0]!, true);
    const vv = s[1] ? hostView(s[1], true) : null;
    if (!pv || !gv || !mv || (!sgd && !vv)) return false;
    const n = pv.length;
    const { l2, tinyGrad, tinySlot } = k;
    // On wasm the SIMD kernel takes the multiple-of-4 prefix; the JS loops below do the rest
    // (and everything on the cpu backend).
    // On wasm+blas the same update runs natively on every thread (the same bits).
    const kernels = blasOptimizerKernels() ?? optimizerKernels();
    let start = 0;
    if (kernels) {
      const at = (t: tf.Tensor) => wasmHeapOffset(t)!;
      start = n - (n % 4);
      if (sgd) kernels.sgd(at(p), at(g), at(s[0]!), start, k.mu, k.lr, l2, tinyGrad, tinySlot);
      else
        kernels.adam(
          at(p),
          at(g),
          at(s[0]!),
          at(s[1]!),
          start,
          k.b1,
          k.b1c,
          k.b2,
          k.b2c,
          k.stepSize,
          k.epsHat,
          l2,
          k.shrink,
          tinyGrad,
          tinySlot,
        );
    }
    // float32 arithmetic, as the kernel's: every operation rounded (fround), in its order.
    const f = Math.fround;
    if (sgd) {
      const { mu, lr } = k;
      for (let i = start; i < n; i++) {
        const pi = pv[i]!;
        const gi = flush(f(gv[i]! + f(l2 * pi)), tinyGrad);
        const mi = flush(f(f(mu * mv[i]!) + gi), tinySlot);
        mv[i] = mi;
        pv[i] = pi - f(lr * mi);
      }
      return true;
    }
    const { b1, b1c, b2, b2c, stepSize, epsHat, shrink } = k;
    const w = vv!;
    for (let i = start; i < n; i++) {
      const pi = pv[i]!;
      const gi = flush(f(gv[i]! + f(l2 * pi)), tinyGrad);
      const mi = flush(f(f(b1 * mv[i]!) + f(b1c * gi)), tinySlot);
      const vi = flush(f(f(b2 * w[i]!) + f(b2c * f(gi * gi))), tinySlot);
      mv[i] = mi;
      w[i] = vi;
      pv[i] = f(pi * shrink) - f(f(stepSize * mi) / f(f(Math.sqrt(vi)) + epsHat));
    }
    return true;
  }

  /** Optimizer slots by name, `<param name>.<slot>` (the live variables: do not dispose). */
  state(paramNames: Map<tf.Variable, string>): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    const slotNames = this.config.type === 'sgd' ? ['momentum'] : ['m', 'v'];
    for (const [p, s] of this.slots) {
      s.forEach((t, i) => out.set(`${paramNames.get(p)}.${slotNames[i]}`, t));
    }
    return out;
  }

  dispose(): void {
    for (const s of this.slots.values()) for (const t of s) t.dispose();
    this.slots.clear();
  }
}

/**
 * Learning rate at a point of training: constant, then a linear cooldown to zero over the
 * last `cooldown` fraction of training (Hinton's FF code halves the rate to zero over the
 * second half; cooldown 0 keeps it constant).
 */
export function learningRateAt(peak: number, progress: number, cooldown: number): number {
  if (cooldown <= 0) return peak;
  const start = 1 - cooldown;
  if (progress <= start) return peak;
  return peak * Math.max(0, (1 - progress) / cooldown);
}
