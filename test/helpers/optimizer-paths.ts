// One optimizer scenario run on both update paths, for tests that compare them bit for bit: a
// 3x5 weight (15 floats: the wasm kernel takes 12, the JS tail 3) whose values exercise every
// flush of the update (see FLUSH_GRAD, FLUSH_SLOT in src/core/optimizer.ts).
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { ownedVariable } from '../../src/core/host-memory.js';
import { LayerOptimizer, type OptimizerConfig } from '../../src/core/optimizer.js';

export const FLUSH_STEPS = 8;
const SHAPE: [number, number] = [3, 5];

// Per element: weight, gradient, first slot (m, or SGD's momentum), second slot (v).
// g' = g + l2 p; with l2 0.1 a weight of 1e-18 keeps g' near g, a weight of 0 makes it g.
const CASES: [p: number, g: number, m: number, v: number, why: string][] = [
  [1, 1e-3, 0, 0, 'an ordinary update'],
  [1e-18, 1e-20, 0, 0, "g' ~1.1e-19 < 1e-16: flushed"],
  [1e-18, 5e-16, 0, 0, "g' kept; (1-b2) g'^2 ~2.5e-34 < 1e-30: v flushed"],
  [0, 0, 2e-30, 1.003e-30, 'slots decay under 1e-30 after some steps (m: 7, v: 3)'],
  [0, 0, 1.05e-30, 1.0005e-30, 'slots flushed on the first step'],
  [0.5, NaN, 0, 0, 'NaN passes'],
  [3, -0.25, 0, 0, 'an ordinary update'],
  [0, 1e-16, 0, 0, "g' = float32(1e-16): not below the threshold, kept"],
  [0, -1e-17, 0, 0, "g' flushed (negative)"],
  [1e-18, -2e-16, 0, 0, "g' kept, just above"],
  [0.25, 1e-20, 0, 0, "g' flushed for adamw (l2 0), 0.025 with L2"],
  [-1, 1e-2, 0, 0, 'an ordinary update'],
  // The JS tail.
  [2, NaN, 0, 0, 'NaN passes'],
  [0, 1e-20, 2e-30, 1.003e-30, "g' flushed, slots decaying"],
  [1e-18, 3e-16, 0, 0, "g' kept"],
];

export interface PathResult {
  /** p, then the slots: float32 values after FLUSH_STEPS updates. */
  values: Float32Array[];
  /** What each applyInPlace call answered (true: the fused path ran). */
  inPlace: boolean[];
}

/** Makes the optimizer take the tfjs-ops path (the one native and GPU backends use). */
export function forceOps(opt: LayerOptimizer): void {
  (opt as unknown as { applyInPlace: () => boolean }).applyInPlace = () => false;
}

function column(i: number): Float32Array {
  return Float32Array.from(CASES, (c) => c[i] as number);
}

/** Runs the scenario on the active backend, on the fused path or forced onto tfjs ops. */
export function runFlushScenario(config: OptimizerConfig, path: 'fused' | 'ops'): PathResult {
  const p = ownedVariable(tf.tensor2d(column(0), SHAPE), true);
  const opt = new LayerOptimizer(config, [p]);
  const inPlace: boolean[] = [];
  const self = opt as unknown as { applyInPlace: (...a: unknown[]) => boolean };
  if (path === 'ops') forceOps(opt);
  const applyInPlace = self.applyInPlace.bind(opt);
  self.applyInPlace = (...a) => {
    const r = applyInPlace(...a);
    inPlace.push(r);
    return r;
  };
  const slots = [...opt.state(new Map([[p, 'p']])).values()];
  tf.tidy(() => slots.forEach((s, i) => s.assign(tf.tensor2d(column(2 + i), SHAPE))));
  const g = tf.tensor2d(column(1), SHAPE);
  try {
    for (let k = 0; k < FLUSH_STEPS; k++) tf.tidy(() => opt.apply(new Map([[p, g]]), config.lr));
    return { values: [p, ...slots].map((t) => t.dataSync() as Float32Array), inPlace };
  } finally {
    g.dispose();
    opt.dispose();
    p.dispose();
  }
}

/** Asserts a and b hold the same float32 bits (any NaN equals any NaN: payloads may differ). */
export function assertSameBits(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: lengths differ`);
  const ab = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const bb = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < a.length; i++) {
    const same = Number.isNaN(a[i]) ? Number.isNaN(b[i]) : ab[i] === bb[i];
    assert.ok(same, `${what}[${i}] (${CASES[i]![4]}): ${a[i]} vs ${b[i]}`);
  }
}

/** Checks that the scenario did exercise the flushes (one path's result suffices). */
export function assertFlushed(r: PathResult, config: OptimizerConfig): void {
  const [p, m, v] = r.values as [Float32Array, Float32Array, Float32Array | undefined];
  for (const i of [5, 12]) assert.ok(Number.isNaN(p[i]!) && Number.isNaN(m[i]!), `NaN at ${i}`);
  // Decayed or flushed on the first step: 0, where an unflushed update leaves ~1e-31.
  for (const i of [3, 4, 13]) assert.equal(m[i], 0, `m[${i}]`);
  if (v) for (const i of [3, 4, 13]) assert.equal(v[i], 0, `v[${i}]`);
  // g' kept with (1-b2) g'^2 flushed. (With L2, Adam's first update, m / eps, moves this
  // weight to ~1e-10 and g' with it, so only the first step saw the flush.)
  if (v && (config.type === 'adamw' || config.weightDecay === 0)) assert.equal(v[2], 0, 'v[2]');
  // Flushed gradients leave m at 0, kept ones do not.
  for (const i of [1, 8]) assert.equal(m[i], 0, `m[${i}]`);
  for (const i of [2, 7, 9, 14]) assert.notEqual(m[i], 0, `m[${i}]`);
  assert.equal(r.values.length, config.type === 'sgd' ? 2 : 3);
}
