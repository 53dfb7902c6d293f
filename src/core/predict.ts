// Prediction from per-layer goodness: for each image, the label whose overlay gives the
// highest goodness summed over a set of layers. Pure arrays, no tfjs, so the coordinator of a
// distributed run aggregates the goodness that stages report with the same code.
import { NUM_CLASSES } from '../data/ff-data.js';

export interface LayerSet {
  name: string;
  /** 0-based layer indices whose goodness is summed. */
  layers: number[];
  /** Each layer's weight in the sum (one per entry of `layers`; absent: all 1). */
  weights?: number[];
}

export interface EvalResult {
  count: number;
  /** Accuracy of the configured prediction rule (the layer set eval.layers / skipFirst name). */
  accuracy: number;
  rule: string;
  perLayerSet: { name: string; accuracy: number }[];
  /** confusion[true][predicted], for the configured rule. */
  confusion: number[][];
  /**
   * With eval.combine 'fit': the rule's layers' weights, chosen on the held-out training images
   * (the rule is then the set "fitted").
   */
  weights?: number[];
  /**
   * With readouts, how the run predicts (eval.rule: the figures above are that method's), and
   * both methods' figures side by side.
   */
  method?: 'goodness' | 'readout';
  goodness?: EvalResult;
  readout?: EvalResult;
}

/**
 * The sets reported: every layer, all but the first, each layer alone, and every prefix (the
 * first k layers, "layers1-k": what each layer adds to those before it); with `rule` (0-based
 * layers) not among them, that set too, named after its layers ("layers1+3").
 */
export function layerSets(numLayers: number, rule?: readonly number[]): LayerSet[] {
  const all = Array.from({ length: numLayers }, (_, i) => i);
  const sets: LayerSet[] = [{ name: 'all', layers: all }];
  if (numLayers > 1) sets.push({ name: 'skip-first', layers: all.slice(1) });
  if (numLayers > 1) for (const i of all) sets.push({ name: `layer${i + 1}`, layers: [i] });
  for (let k = 2; k < numLayers; k++) sets.push({ name: `layers1-${k}`, layers: all.slice(0, k) });
  if (rule && !sets.some((s) => sameLayers(s.layers, rule))) {
    sets.push({ name: `layers${rule.map((l) => l + 1).join('+')}`, layers: [...rule] });
  }
  return sets;
}

/**
 * The 0-based layers whose scores the prediction rule sums: `layers` (1-based, as a config's
 * eval.layers gives them) when any, else all, or all but the first with `skipFirst`.
 */
export function ruleLayers(
  numLayers: number,
  opts: { skipFirst: boolean; layers?: readonly number[] },
): number[] {
  if (opts.layers?.length) return [...opts.layers].map((l) => l - 1).sort((a, b) => a - b);
  const all = Array.from({ length: numLayers }, (_, i) => i);
  return opts.skipFirst && numLayers > 1 ? all.slice(1) : all;
}

function sameLayers(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((l, i) => l === b[i]);
}

/**
 * Accumulates predictions over evaluation batches. Each batch gives, per layer, a Float32Array
 * of 10*B goodness values laid out label-major: row c*B + i is image i with label c overlaid
 * (the layout of overlayAllLabels).
 */
export class EvalAccumulator {
  private readonly sets: LayerSet[];
  private readonly ruleIndex: number;
  private readonly correct: number[];
  private readonly confusion: number[][];
  private count = 0;
  private readonly weights: number[] | undefined;

  /**
   * `rule`: the 0-based layers the prediction rule sums (ruleLayers); with `weights` (one per
   * rule layer), the rule is their weighted sum, the set "fitted".
   */
  constructor(numLayers: number, rule: readonly number[], weights?: readonly number[]) {
    this.sets = layerSets(numLayers, rule);
    if (weights) this.sets.push({ name: 'fitted', layers: [...rule], weights: [...weights] });
    this.weights = weights ? [...weights] : undefined;
    this.ruleIndex = weights
      ? this.sets.length - 1
      : this.sets.findIndex((s) => sameLayers(s.layers, rule));
    this.correct = this.sets.map(() => 0);
    this.confusion = Array.from({ length: NUM_CLASSES }, () =>
      new Array<number>(NUM_CLASSES).fill(0),
    );
  }

  add(goodness: readonly Float32Array[], labels: ArrayLike<number>): void {
    const b = labels.length;
    for (const g of goodness) {
      if (g.length !== NUM_CLASSES * b)
        throw new Error(`goodness has ${g.length} values, expected ${NUM_CLASSES * b}`);
    }
    const score = new Float64Array(NUM_CLASSES);
    this.sets.forEach((set, si) => {
      for (let i = 0; i < b; i++) {
        score.fill(0);
        set.layers.forEach((l, k) => {
          const g = goodness[l]!;
          const w = set.weights?.[k] ?? 1;
          for (let c = 0; c < NUM_CLASSES; c++) score[c]! += w * g[c * b + i]!;
        });
        const pred = argmax(score);
        const truth = labels[i]!;
        if (pred === truth) this.correct[si]! += 1;
        if (si === this.ruleIndex) this.confusion[truth]![pred]! += 1;
      }
    });
    this.count += b;
  }

  result(): EvalResult {
    const acc = (n: number) => (this.count === 0 ? 0 : n / this.count);
    return {
      count: this.count,
      accuracy: acc(this.correct[this.ruleIndex]!),
      rule: this.sets[this.ruleIndex]!.name,
      perLayerSet: this.sets.map((s, i) => ({ name: s.name, accuracy: acc(this.correct[i]!) })),
      confusion: this.confusion.map((row) => [...row]),
      ...(this.weights && { weights: this.weights }),
    };
  }
}

/**
 * Layer weights for a prediction rule, chosen on held-out images: the weights w >= 0 of
 * sum_l w_l S_l (S_l layer l's scores) that predict the held-out labels best. Candidates: each
 * layer alone, all of them summed, and the weights maximising the labels' log-likelihood under
 * softmax(sum_l w_l S_l) (projected gradient ascent, each layer's scores scaled to unit spread
 * first: goodness of one layer may be 100x another's); the most accurate on the held-out images
 * is refined one weight at a time while that helps. So the rule is never worse on the held-out
 * images than its best layer alone. `scores[l]` is layer l's [NUM_CLASSES * n] label-major,
 * as EvalAccumulator takes them.
 */
export function fitLayerWeights(
  scores: readonly Float32Array[],
  labels: ArrayLike<number>,
  steps = 300,
): number[] {
  const n = labels.length;
  const L = scores.length;
  if (n === 0) return new Array<number>(L).fill(1);
  const scale = scores.map((s) => {
    let mean = 0;
    for (const v of s) mean += v;
    mean /= s.length;
    let sq = 0;
    for (const v of s) sq += (v - mean) ** 2;
    const sd = Math.sqrt(sq / s.length);
    return sd > 0 && Number.isFinite(sd) ? 1 / sd : 0;
  });
  const correct = (w: readonly number[]) => {
    let right = 0;
    for (let i = 0; i < n; i++) {
      let best = 0;
      let top = -Infinity;
      for (let c = 0; c < NUM_CLASSES; c++) {
        let v = 0;
        for (let l = 0; l < L; l++) v += w[l]! * scores[l]![c * n + i]!;
        if (v > top) [top, best] = [v, c];
      }
      if (best === labels[i]) right++;
    }
    return right;
  };
  const candidates: number[][] = [
    ...scores.map((_, l) => scores.map((__, k) => (k === l ? 1 : 0))),
    new Array<number>(L).fill(1),
    likelihoodWeights(scores, scale, labels, steps),
  ];
  let w = candidates[0]!;
  let right = correct(w);
  for (const c of candidates.slice(1)) {
    const r = correct(c);
    if (r > right) [w, right] = [c, r];
  }
  // One weight at a time, halved, doubled or dropped, while the held-out count improves.
  for (let round = 0; round < 3; round++) {
    let improved = false;
    for (let l = 0; l < L; l++) {
      for (const f of [0, 0.5, 2]) {
        const t = w.map((v, k) =>
          k === l ? (v === 0 && f === 2 ? 1 / (scale[l]! || 1) : v * f) : v,
        );
        const r = correct(t);
        if (r > right) [w, right, improved] = [t, r, true];
      }
    }
    if (!improved) break;
  }
  return w;
}

/** Weights (in the scores' units) maximising the held-out log-likelihood; see fitLayerWeights. */
function likelihoodWeights(
  scores: readonly Float32Array[],
  scale: readonly number[],
  labels: ArrayLike<number>,
  steps: number,
): number[] {
  const n = labels.length;
  const L = scores.length;
  const w = new Array<number>(L).fill(1);
  const z = new Float64Array(NUM_CLASSES);
  const grad = new Float64Array(L);
  for (let step = 0; step < steps; step++) {
    grad.fill(0);
    for (let i = 0; i < n; i++) {
      let max = -Infinity;
      for (let c = 0; c < NUM_CLASSES; c++) {
        let v = 0;
        for (let l = 0; l < L; l++) v += w[l]! * scale[l]! * scores[l]![c * n + i]!;
        z[c] = v;
        max = Math.max(max, v);
      }
      let sum = 0;
      for (let c = 0; c < NUM_CLASSES; c++) sum += Math.exp(z[c]! - max);
      for (let c = 0; c < NUM_CLASSES; c++) {
        const p = Math.exp(z[c]! - max) / sum - (c === labels[i] ? 1 : 0);
        for (let l = 0; l < L; l++) grad[l]! += (p * scale[l]! * scores[l]![c * n + i]!) / n;
      }
    }
    for (let l = 0; l < L; l++) w[l] = Math.max(0, w[l]! - 0.5 * grad[l]!);
  }
  return w.map((v, l) => v * scale[l]!);
}

function argmax(a: Float64Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

/** A confusion matrix as aligned text, rows = true label, columns = predicted. */
export function formatConfusion(confusion: number[][], classNames?: readonly string[]): string {
  const names = classNames ?? confusion.map((_, i) => String(i));
  const w = Math.max(5, ...confusion.flat().map((n) => String(n).length + 1));
  const corner = 'true\\pred';
  const nw = Math.max(corner.length, ...names.map((n) => n.length));
  const lines = [`${corner.padEnd(nw)} ${confusion.map((_, i) => String(i).padStart(w)).join('')}`];
  confusion.forEach((row, i) =>
    lines.push(`${names[i]!.padEnd(nw)} ${row.map((n) => String(n).padStart(w)).join('')}`),
  );
  return lines.join('\n');
}
