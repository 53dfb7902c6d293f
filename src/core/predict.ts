// Prediction from per-layer goodness: for each image, the label whose overlay gives the
// highest goodness summed over a set of layers. Pure arrays, no tfjs, so the coordinator of a
// distributed run aggregates the goodness that stages report with the same code.
import { NUM_CLASSES } from '../data/ff-data.js';

export interface LayerSet {
  name: string;
  /** 0-based layer indices whose goodness is summed. */
  layers: number[];
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

  /** `rule`: the 0-based layers the prediction rule sums (ruleLayers). */
  constructor(numLayers: number, rule: readonly number[]) {
    this.sets = layerSets(numLayers, rule);
    this.ruleIndex = this.sets.findIndex((s) => sameLayers(s.layers, rule));
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
        for (const l of set.layers) {
          const g = goodness[l]!;
          for (let c = 0; c < NUM_CLASSES; c++) score[c]! += g[c * b + i]!;
        }
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
    };
  }
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
