// Prediction from per-layer goodness: hand-made goodness arrays with a known answer per rule.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  EvalAccumulator,
  fitLayerWeights,
  formatConfusion,
  layerSets,
  ruleLayers,
} from '../../src/core/predict.js';
import { Rng } from '../../src/data/rng.js';
import { NUM_CLASSES } from '../../src/data/ff-data.js';

/**
 * Goodness for B images in the label-major layout (row c*B + i = image i with label c):
 * every value 0 except `peaks[i] = [label, value]` for image i.
 */
function goodness(b: number, peaks: [number, number][]): Float32Array {
  const g = new Float32Array(NUM_CLASSES * b);
  peaks.forEach(([c, v], i) => (g[c * b + i] = v));
  return g;
}

function zeros(n = NUM_CLASSES): number[][] {
  return Array.from({ length: n }, () => new Array<number>(n).fill(0));
}

// Four images, two layers. Per image: [true label, layer 1 peak, layer 2 peak] -> prediction.
//   image 0, label 3: L1 3 (5), L2 7 (2) -> all 3 ok,   layer1 3 ok,   layer2 7 wrong
//   image 1, label 5: L1 0 (1), L2 5 (3) -> all 5 ok,   layer1 0 wrong, layer2 5 ok
//   image 2, label 9: L1 9 (2), L2 1 (4) -> all 1 wrong, layer1 9 ok,   layer2 1 wrong
//   image 3, label 4: L1 8 (1), L2 4 (3) -> all 4 ok,   layer1 8 wrong, layer2 4 ok
// all 3/4, skip-first (= layer 2 alone here) 2/4, layer1 2/4, layer2 2/4.
const LABELS = [3, 5, 9, 4];
const L1 = goodness(4, [
  [3, 5],
  [0, 1],
  [9, 2],
  [8, 1],
]);
const L2 = goodness(4, [
  [7, 2],
  [5, 3],
  [1, 4],
  [4, 3],
]);

describe('layerSets', () => {
  it('names all, skip-first, each layer alone and each prefix', () => {
    assert.deepEqual(layerSets(4), [
      { name: 'all', layers: [0, 1, 2, 3] },
      { name: 'skip-first', layers: [1, 2, 3] },
      { name: 'layer1', layers: [0] },
      { name: 'layer2', layers: [1] },
      { name: 'layer3', layers: [2] },
      { name: 'layer4', layers: [3] },
      { name: 'layers1-2', layers: [0, 1] },
      { name: 'layers1-3', layers: [0, 1, 2] },
    ]);
  });

  it('has only "all" for a single layer (the other sets would repeat it or be empty)', () => {
    assert.deepEqual(layerSets(1), [{ name: 'all', layers: [0] }]);
  });

  it("adds the rule's set when it is none of those, named after its layers", () => {
    assert.deepEqual(layerSets(3, [0, 2]).at(-1), { name: 'layers1+3', layers: [0, 2] });
    assert.equal(layerSets(3, [1, 2]).length, 6, 'skip-first is already there');
    assert.equal(layerSets(3, [0, 1]).length, 6, 'so is the prefix layers1-2');
  });
});

describe('ruleLayers', () => {
  it('takes eval.layers (1-based, any order), else all, else all but the first', () => {
    assert.deepEqual(ruleLayers(3, { skipFirst: false, layers: [3, 1] }), [0, 2]);
    assert.deepEqual(ruleLayers(3, { skipFirst: false, layers: [] }), [0, 1, 2]);
    assert.deepEqual(ruleLayers(3, { skipFirst: true, layers: [] }), [1, 2]);
    assert.deepEqual(ruleLayers(1, { skipFirst: true }), [0]);
  });
});

describe('EvalAccumulator', () => {
  it('sums goodness over each layer set and takes the argmax per image', () => {
    // Values in the table above; a row-major (i*10 + c) reading of the layout would scramble it.
    const acc = new EvalAccumulator(2, [0, 1]);
    acc.add([L1, L2], LABELS);
    const r = acc.result();
    assert.equal(r.count, 4);
    assert.equal(r.rule, 'all');
    assert.equal(r.accuracy, 3 / 4);
    assert.deepEqual(r.perLayerSet, [
      { name: 'all', accuracy: 3 / 4 },
      { name: 'skip-first', accuracy: 2 / 4 },
      { name: 'layer1', accuracy: 2 / 4 },
      { name: 'layer2', accuracy: 2 / 4 },
    ]);
    // confusion[true][predicted] for the rule "all": 3->3, 5->5, 9->1, 4->4.
    const want = zeros();
    want[3]![3] = 1;
    want[5]![5] = 1;
    want[9]![1] = 1;
    want[4]![4] = 1;
    assert.deepEqual(r.confusion, want);
  });

  it('with skipFirst, reports and confuses on the sum without layer 1', () => {
    // Same goodness: the rule is now skip-first, so image 0 is predicted 7 and the accuracy is
    // 2/4; the per-set figures do not depend on the rule.
    const acc = new EvalAccumulator(2, [1]);
    acc.add([L1, L2], LABELS);
    const r = acc.result();
    assert.equal(r.rule, 'skip-first');
    assert.equal(r.accuracy, 2 / 4);
    assert.deepEqual(
      r.perLayerSet.map((s) => s.accuracy),
      [3 / 4, 2 / 4, 2 / 4, 2 / 4],
    );
    const want = zeros();
    want[3]![7] = 1;
    want[5]![5] = 1;
    want[9]![1] = 1;
    want[4]![4] = 1;
    assert.deepEqual(r.confusion, want);
  });

  it('with skipFirst and one layer, falls back to "all"', () => {
    const acc = new EvalAccumulator(1, ruleLayers(1, { skipFirst: true }));
    acc.add([L2], LABELS);
    const r = acc.result();
    assert.equal(r.rule, 'all');
    assert.equal(r.accuracy, 2 / 4);
    assert.deepEqual(r.perLayerSet, [{ name: 'all', accuracy: 2 / 4 }]);
  });

  it('with the rule on layer 1 alone, reports and confuses on it', () => {
    const acc = new EvalAccumulator(2, ruleLayers(2, { skipFirst: false, layers: [1] }));
    acc.add([L1, L2], LABELS);
    const r = acc.result();
    assert.equal(r.rule, 'layer1');
    assert.equal(r.accuracy, 2 / 4);
    // Layer 1 predicts 3, 0, 9, 8.
    assert.equal(r.confusion[5]![0], 1);
    assert.equal(r.confusion[4]![8], 1);
  });

  it('accumulates over batches of different sizes', () => {
    // Batch 1 = images 0..3 above (3 right under "all"); batch 2 = one image, label 2, with
    // L1 peak 2 (1.5) and L2 peak 6 (1): "all" predicts 2 (right), layer2 alone 6 (wrong).
    const acc = new EvalAccumulator(2, [0, 1]);
    acc.add([L1, L2], Uint8Array.from(LABELS));
    acc.add([goodness(1, [[2, 1.5]]), goodness(1, [[6, 1]])], [2]);
    const r = acc.result();
    assert.equal(r.count, 5);
    assert.equal(r.accuracy, 4 / 5);
    assert.equal(r.perLayerSet[3]!.accuracy, 2 / 5, 'layer2 alone predicts 6 for the new image');
    assert.equal(r.confusion[2]![2], 1);
    assert.equal(
      r.confusion.flat().reduce((a, b) => a + b, 0),
      5,
      'one confusion count per image',
    );
  });

  it('breaks ties towards the lowest label', () => {
    // All-equal goodness: argmax keeps the first maximum, label 0.
    const acc = new EvalAccumulator(1, [0]);
    acc.add([new Float32Array(NUM_CLASSES * 2).fill(0.5)], [0, 7]);
    const r = acc.result();
    assert.equal(r.accuracy, 1 / 2);
    assert.equal(r.confusion[7]![0], 1);
  });

  it('rejects goodness that is not 10 values per image', () => {
    const acc = new EvalAccumulator(2, [0, 1]);
    assert.throws(() => acc.add([L1, new Float32Array(39)], LABELS), /39 values, expected 40/);
  });

  it('reports accuracy 0, not NaN, before any batch', () => {
    const r = new EvalAccumulator(2, [0, 1]).result();
    assert.equal(r.count, 0);
    assert.equal(r.accuracy, 0);
    assert.deepEqual(r.confusion, zeros());
  });

  it('returns a copy of the confusion matrix', () => {
    const acc = new EvalAccumulator(2, [0, 1]);
    acc.add([L1, L2], LABELS);
    acc.result().confusion[3]![3] = 99;
    assert.equal(acc.result().confusion[3]![3], 1);
  });
});

describe('formatConfusion', () => {
  const m = zeros();
  m[0]![0] = 812;
  m[6]![0] = 123456; // 6 digits: widens every column to 7
  m[9]![9] = 1;

  /** The character index at which the text of column `c` ends in `line`. */
  function columnEnds(line: string, start: number): number[] {
    const ends: number[] = [];
    const re = /\S+/g;
    re.lastIndex = start;
    for (let hit = re.exec(line); hit; hit = re.exec(line)) ends.push(hit.index + hit[0].length);
    return ends;
  }

  it('prints a header and one row per true label, right-aligned under the column labels', () => {
    const names = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat'].concat([
      'Sandal',
      'Shirt',
      'Sneaker',
      'Bag',
      'Ankle boot',
    ]);
    const lines = formatConfusion(m, names).split('\n');
    assert.equal(lines.length, 1 + NUM_CLASSES);
    assert.match(lines[0]!, /^true\\pred\s+0\s+1/);
    names.forEach((n, i) => assert.ok(lines[i + 1]!.startsWith(n), `row ${i} starts with ${n}`));
    // Every column ends at the same character in every line: 7-wide columns after a
    // 11-char name column and one space.
    const nameWidth = 'T-shirt/top'.length + 1;
    const want = Array.from({ length: NUM_CLASSES }, (_, c) => nameWidth + 7 * (c + 1));
    for (const line of lines) assert.deepEqual(columnEnds(line, nameWidth), want, line);
    assert.deepEqual(
      lines[7]!.slice(nameWidth).trim().split(/\s+/).map(Number),
      [123456, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
  });

  it('aligns the header with the rows when names are shorter than "true\\pred"', () => {
    const lines = formatConfusion(m).split('\n');
    const ends = lines.map((l) => columnEnds(l, l.indexOf(' ')));
    for (const e of ends) assert.deepEqual(e, ends[0]);
  });
});

describe('fitLayerWeights and the fitted rule', () => {
  /** Label-major scores [10 n] of n images: `signal` on the true class, noise of `spread`. */
  function scores(labels: number[], signal: number, spread: number, seed: number): Float32Array {
    const rng = new Rng(seed);
    const n = labels.length;
    const s = new Float32Array(NUM_CLASSES * n);
    for (let i = 0; i < n; i++)
      for (let c = 0; c < NUM_CLASSES; c++)
        s[c * n + i] = spread * (rng.next() - 0.5) + (c === labels[i] ? signal : 0);
    return s;
  }
  const labelsOf = (n: number, seed: number) => {
    const rng = new Rng(seed);
    return Array.from({ length: n }, () => Math.floor(rng.next() * NUM_CLASSES));
  };

  it('weighs a loud useless layer down: the fitted rule beats the plain sum and every layer', () => {
    // Layer 1 informative at a small scale, layer 2 noise 100x louder, layer 3 informative
    // on its own noise: summed, layer 2 drowns the others.
    const make = (n: number, seed: number) => {
      const labels = labelsOf(n, seed);
      return {
        labels,
        g: [
          scores(labels, 1, 2, seed + 1),
          scores(labels, 0, 200, seed + 2),
          scores(labels, 1, 2, seed + 3),
        ],
      };
    };
    const held = make(2000, 10);
    const w = fitLayerWeights(held.g, held.labels);
    assert.equal(w.length, 3);
    assert.ok(w.every((v) => v >= 0));
    assert.ok(w[1]! < 0.01 * Math.min(w[0]!, w[2]!), `weights ${w}`);
    const test = make(2000, 20);
    const acc = new EvalAccumulator(3, [0, 1, 2], w);
    acc.add(test.g, test.labels);
    const r = acc.result();
    const by = Object.fromEntries(r.perLayerSet.map((s) => [s.name, s.accuracy]));
    assert.equal(r.rule, 'fitted');
    assert.deepEqual(r.weights, w);
    assert.equal(r.accuracy, by.fitted);
    assert.ok(by.fitted! > by.all! + 0.3, `fitted ${by.fitted} vs all ${by.all}`);
    assert.ok(by.fitted! > Math.max(by.layer1!, by.layer3!), JSON.stringify(by));
  });

  it('never predicts the held-out images worse than its best layer alone', () => {
    for (const seed of [1, 2, 3]) {
      const labels = labelsOf(1500, seed);
      // A good layer, a worse one, and one that is mostly noise: sums of them can lose to the
      // good one alone.
      const g = [
        scores(labels, 1, 1.5, seed + 10),
        scores(labels, 1, 6, seed + 20),
        scores(labels, 0.2, 3, seed + 30),
      ];
      const w = fitLayerWeights(g, labels);
      const accOf = (weights: number[]) => {
        const acc = new EvalAccumulator(3, [0, 1, 2], weights);
        acc.add(g, labels);
        return acc.result().accuracy;
      };
      const best = Math.max(accOf([1, 0, 0]), accOf([0, 1, 0]), accOf([0, 0, 1]));
      assert.ok(accOf(w) >= best, `seed ${seed}: fitted ${accOf(w)} < best layer ${best}`);
    }
  });

  it('is all ones for no images, and the plain sum without weights', () => {
    assert.deepEqual(fitLayerWeights([new Float32Array(0), new Float32Array(0)], []), [1, 1]);
    const acc = new EvalAccumulator(2, [0, 1]);
    acc.add(
      [Float32Array.from({ length: 10 }, (_, c) => (c === 2 ? 1 : 0)), new Float32Array(10)],
      [2],
    );
    assert.equal(acc.result().rule, 'all');
    assert.equal(acc.result().weights, undefined);
  });
});
