// Per-layer optimizers (Adam, AdamW, SGD with momentum) over a layer's own variables.
//
// tfjs ships Adam and SGD-momentum but not AdamW, and its optimizers keep state under
// variable names in a global registry; a layer that moves between processes needs its
// state as plain named tensors it can export and import, so the update is written here.
import * as tf from '@tensorflow/tfjs';
import { hostView, hostWritten, ownedVariable, wasmHeapOffset } from './host-memory.js';
import { optimizerKernels } from './wasm-kernels.js';

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
 * The fused update flushes gradients below FLUSH_GRAD and slots below FLUSH_SLOT to zero, as
 * the SIMD kernel does (see kernels/optimizer.wat: subnormals cost x86 a microcode assist each,
 * and values this small cannot move a float32 weight).
 */
const FLUSH_GRAD = 1e-16;
const FLUSH_SLOT = 1e-30;

function flush(x: number, tiny: number): number {
  return Math.abs(x) < tiny ? 0 : x;
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
      if (this.applyInPlace(p, g, s, lr, decay)) {
        for (const t of [p, ...s]) hostWritten(t);
      } else {
        this.applyOps(p, g, s, lr, decay);
      }
    }
  }

  // Adam's bias correction folded into the step size and epsilon: two scalars per step.
  private adamScalars(lr: number): { stepSize: number; epsHat: number } {
    const c = this.config;
    const c2 = Math.sqrt(1 - c.beta2 ** this.step);
    return { stepSize: (lr * c2) / (1 - c.beta1 ** this.step), epsHat: c.eps * c2 };
  }

  /** The update as tfjs ops: works on every backend. */
  private applyOps(
    p: tf.Variable,
    g0: tf.Tensor,
    s: tf.Variable[],
    lr: number,
    decay: number,
  ): void {
    const c = this.config;
    if (c.type === 'sgd') {
      const g = decay ? g0.add(p.mul(decay)) : g0;
      const m = s[0]!;
      m.assign(m.mul(c.momentum).add(g));
      p.assign(p.sub(m.mul(lr)));
      return;
    }
    const g = decay && c.type === 'adam' ? g0.add(p.mul(decay)) : g0;
    const [m, v] = s as [tf.Variable, tf.Variable];
    m.assign(m.mul(c.beta1).add(g.mul(1 - c.beta1)));
    v.assign(v.mul(c.beta2).add(g.square().mul(1 - c.beta2)));
    const { stepSize, epsHat } = this.adamScalars(lr);
    let update = m.div(v.sqrt().add(epsHat)).mul(stepSize);
    if (decay && c.type === 'adamw') update = update.add(p.mul(lr * decay));
    p.assign(p.sub(update));
  }

  /**
   * The same update as one fused loop over host memory (wasm, cpu): a single pass over the
   * parameters instead of ~12 tfjs ops that each stream them through memory. Returns false
   * where the storage is out of reach or shared, and the caller falls back to applyOps.
   */
  private applyInPlace(
    p: tf.Variable,
    g: tf.Tensor,
    s: tf.Variable[],
    lr: number,
    decay: number,
  ): boolean {
    const c = this.config;
    // Views are taken last and used at once: no tfjs call may run in between (heap growth).
    const { stepSize, epsHat } = this.adamScalars(lr);
    const pv = hostView(p, true);
    const gv = hostView(g);
    const mv = hostView(s[0]!, true);
    const vv = s[1] ? hostView(s[1], true) : null;
    if (!pv || !gv || !mv || (c.type !== 'sgd' && !vv)) return false;
    const n = pv.length;
    const l2 = c.type === 'adamw' ? 0 : decay;
    const shrink = c.type === 'adamw' ? 1 - lr * decay : 1;
    // On wasm the SIMD kernel takes the multiple-of-4 prefix; the JS loops below do the rest
    // (and everything on the cpu backend).
    const kernels = optimizerKernels();
    let start = 0;
    if (kernels) {
      const at = (t: tf.Tensor) => wasmHeapOffset(t)!;
      start = n - (n % 4);
      if (c.type === 'sgd') kernels.sgd(at(p), at(g), at(s[0]!), start, c.momentum, lr, l2);
      else
        kernels.adam(
          at(p),
          at(g),
          at(s[0]!),
          at(s[1]!),
          start,
          c.beta1,
          c.beta2,
          stepSize,
          epsHat,
          l2,
          shrink,
        );
    }
    if (c.type === 'sgd') {
      const mu = c.momentum;
      for (let i = start; i < n; i++) {
        const mi = flush(mu * mv[i]! + flush(gv[i]! + l2 * pv[i]!, FLUSH_GRAD), FLUSH_SLOT);
        mv[i] = mi;
        pv[i] = pv[i]! - lr * mi;
      }
      return true;
    }
    const b1 = c.beta1;
    const b2 = c.beta2;
    const w = vv!;
    for (let i = start; i < n; i++) {
      const pi = pv[i]!;
      const gi = flush(gv[i]! + l2 * pi, FLUSH_GRAD);
      const mi = flush(b1 * mv[i]! + (1 - b1) * gi, FLUSH_SLOT);
      const vi = flush(b2 * w[i]! + (1 - b2) * gi * gi, FLUSH_SLOT);
      mv[i] = mi;
      w[i] = vi;
      pv[i] = pi * shrink - (stepSize * mi) / (Math.sqrt(vi) + epsHat);
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
