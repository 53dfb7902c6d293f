import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isDataError } from '../../src/data/errors.js';
import {
  BatchSampler,
  NUM_CLASSES,
  overlayAllLabels,
  overlayLabels,
  sampleHardNegativeLabels,
  sampleNegativeLabels,
  shiftImage,
  mirrorImage,
  toFloat,
  type Batch,
  type BatchSamplerOptions,
} from '../../src/data/ff-data.js';
import { Rng } from '../../src/data/rng.js';

const DIM = 16;

/** Row r is r*100 + column, so any misplaced value is recognisable. */
function rowsOf(count: number, dim = DIM): Float32Array {
  const a = new Float32Array(count * dim);
  for (let r = 0; r < count; r++) for (let c = 0; c < dim; c++) a[r * dim + c] = r * 100 + c;
  return a;
}

function row(a: Float32Array, r: number, dim = DIM): number[] {
  return Array.from(a.subarray(r * dim, (r + 1) * dim));
}

/** Asserts out row `r` is src row `srcRow` with a one-hot of `label` in the first 10 pixels. */
function assertOverlaid(
  out: Float32Array,
  r: number,
  src: Float32Array,
  srcRow: number,
  label: number,
  on = 1,
) {
  const got = row(out, r);
  const head = new Array<number>(NUM_CLASSES).fill(0);
  head[label] = on;
  assert.deepEqual(got.slice(0, NUM_CLASSES), head, `row ${r} label ${label}`);
  assert.deepEqual(got.slice(NUM_CLASSES), row(src, srcRow).slice(NUM_CLASSES), `row ${r} pixels`);
}

describe('toFloat', () => {
  const bytes = new Uint8Array([0, 51, 102, 255, 9, 9]);

  it("'unit' divides by 255", () => {
    const { data, mean, std } = toFloat(bytes, 2, 2);
    assert.deepEqual(Array.from(data), [0, 0.2, 0.4, 1].map(Math.fround));
    assert.deepEqual([mean, std], [0, 1]);
  });

  it("'standard' uses the mean and std of the given pixels, or the stats passed in", () => {
    // Pixels /255: 0, .2, .4, 1 -> mean .4, variance (.16 + .04 + 0 + .36)/4 = .14.
    const { data, mean, std } = toFloat(bytes, 2, 2, 'standard');
    assert.ok(Math.abs(mean - 0.4) < 1e-12);
    assert.ok(Math.abs(std - Math.sqrt(0.14)) < 1e-12);
    const s = Math.sqrt(0.14);
    Array.from(data).forEach((v, i) =>
      assert.ok(Math.abs(v - [-0.4, -0.2, 0, 0.6][i]! / s) < 1e-6),
    );
    const test = toFloat(new Uint8Array([102]), 1, 1, 'standard', { mean, std });
    assert.ok(Math.abs(test.data[0]!) < 1e-6, 'same transform as the training set');
  });
});

describe('overlayLabels', () => {
  it('writes exactly one onValue in the first 10 pixels and copies the rest', () => {
    const src = rowsOf(5);
    const out = new Float32Array(6 * DIM).fill(-1);
    overlayLabels(src, 1, 3, DIM, [9, 0, 4], out, 2, 0.5);
    assert.deepEqual(row(out, 0), new Array(DIM).fill(-1), 'rows before outRowOffset untouched');
    assert.deepEqual(row(out, 1), new Array(DIM).fill(-1));
    assertOverlaid(out, 2, src, 1, 9, 0.5);
    assertOverlaid(out, 3, src, 2, 0, 0.5);
    assertOverlaid(out, 4, src, 3, 4, 0.5);
    assert.deepEqual(row(out, 5), new Array(DIM).fill(-1), 'rows after untouched');
    assert.deepEqual(src, rowsOf(5), 'src untouched');
  });

  it('rejects bad labels and short arrays', () => {
    const src = rowsOf(2);
    const out = new Float32Array(2 * DIM);
    const bad = (e: unknown) => isDataError(e, 'BAD_ARGUMENT');
    assert.throws(() => overlayLabels(src, 0, 2, DIM, [1, 10], out), bad);
    assert.throws(() => overlayLabels(src, 0, 2, DIM, [1], out), bad);
    assert.throws(() => overlayLabels(src, 1, 2, DIM, [1, 2], out), bad);
    assert.throws(() => overlayLabels(src, 0, 2, 8, [1, 2], out), bad, 'dim < 10');
  });
});

describe('overlayAllLabels', () => {
  it('is label-major: row c*count + i is image i with label c', () => {
    const src = rowsOf(4);
    const count = 3;
    const out = overlayAllLabels(src, 1, count, DIM, new Float32Array(NUM_CLASSES * count * DIM));
    for (let c = 0; c < NUM_CLASSES; c++) {
      for (let i = 0; i < count; i++) assertOverlaid(out, c * count + i, src, 1 + i, c);
    }
  });
});

describe('sampleNegativeLabels', () => {
  it('never returns the true label and covers all 9 wrong ones about evenly', () => {
    const rng = new Rng(5);
    const labels = Uint8Array.from({ length: 90_000 }, (_, i) => i % 10);
    const neg = sampleNegativeLabels(labels, rng);
    const seen = Array.from({ length: 10 }, () => new Array<number>(10).fill(0));
    neg.forEach((n, i) => {
      assert.notEqual(n, labels[i]);
      seen[labels[i]!]![n]!++;
    });
    // Each true label: 9,000 draws over 9 wrong labels, 1,000 expected each, sd ~31.
    for (let t = 0; t < 10; t++) {
      for (let n = 0; n < 10; n++) {
        if (n === t) assert.equal(seen[t]![n], 0);
        else assert.ok(Math.abs(seen[t]![n]! - 1000) < 160, `true ${t} -> ${n}: ${seen[t]![n]}`);
      }
    }
  });

  it('writes into out when given', () => {
    const out = new Uint8Array(3);
    assert.equal(sampleNegativeLabels([0, 1, 2], new Rng(1), out), out);
  });
});

describe('sampleHardNegativeLabels', () => {
  // One image of class 3, predicted 3 (0.5), 2 (0.3), 5 (0.15), 7 (0.05): over its wrong
  // labels, 2, 5 and 7 with 0.6, 0.3 and 0.1.
  const probs = new Float32Array(NUM_CLASSES);
  [probs[3], probs[2], probs[5], probs[7]] = [0.5, 0.3, 0.15, 0.05];
  const draws = 30_000;
  const counts = (hard: number, seed: number) => {
    const labels = new Uint8Array(draws).fill(3);
    const all = new Float32Array(draws * NUM_CLASSES);
    for (let i = 0; i < draws; i++) all.set(probs, i * NUM_CLASSES);
    const out = sampleHardNegativeLabels(labels, all, hard, new Rng(seed));
    const n = new Array<number>(NUM_CLASSES).fill(0);
    for (const l of out) n[l]!++;
    return n;
  };
  /** Pearson's chi-square of observed counts against expected probabilities (over p > 0). */
  const chi2 = (n: number[], p: number[]) =>
    p.reduce((s, pi, c) => (pi > 0 ? s + (n[c]! - draws * pi) ** 2 / (draws * pi) : s), 0);

  it('never picks the true label, and follows the predicted distribution (hard = 1)', () => {
    const n = counts(1, 42);
    assert.equal(n[3], 0);
    const expect = [0, 0, 0.6, 0, 0, 0.3, 0, 0.1, 0, 0];
    for (const c of [0, 1, 4, 6, 8, 9]) assert.equal(n[c], 0, `label ${c} has no weight`);
    // 2 degrees of freedom: P(chi2 > 13.8) = 0.001.
    assert.ok(chi2(n, expect) < 13.8, `chi2 ${chi2(n, expect)}: ${n}`);
    // And the test can tell a uniform draw apart.
    assert.ok(
      chi2(
        counts(0, 42),
        expect.map((p) => (p > 0 ? 1 / 3 : 0)),
      ) > 1000,
    );
  });

  it('mixes in uniform wrong labels by 1 - hard', () => {
    const hard = 0.4;
    const n = counts(hard, 7);
    assert.equal(n[3], 0);
    const hardP = [0, 0, 0.6, 0, 0, 0.3, 0, 0.1, 0, 0];
    const expect = hardP.map((p, c) => (c === 3 ? 0 : hard * p + (1 - hard) / 9));
    // 8 degrees of freedom: P(chi2 > 26.1) = 0.001.
    assert.ok(chi2(n, expect) < 26.1, `chi2 ${chi2(n, expect)}: ${n}`);
  });

  it('falls back to uniform for an image without a usable prediction, and is seeded', () => {
    const labels = Uint8Array.from([0, 1, 2, 3]);
    const rows = new Float32Array(4 * NUM_CLASSES);
    rows[0] = 1; // all weight on the true label
    rows[NUM_CLASSES + 4] = NaN;
    // rows 2, 3: all zero
    const a = sampleHardNegativeLabels(labels, rows, 1, new Rng(1));
    const b = sampleHardNegativeLabels(labels, rows, 1, new Rng(1));
    assert.deepEqual(a, b);
    a.forEach((l, i) => assert.notEqual(l, labels[i]));
    assert.throws(() => sampleHardNegativeLabels(labels, rows, 1.5, new Rng(1)), /hard/);
    assert.throws(() => sampleHardNegativeLabels(labels, rows.subarray(1), 1, new Rng(1)), /probs/);
  });
});

describe('BatchSampler', () => {
  const count = 23;
  const images = rowsOf(count);
  const labels = Uint8Array.from({ length: count }, (_, i) => (i * 7) % 10);
  const opts = (over: Partial<BatchSamplerOptions> = {}): BatchSamplerOptions => ({
    images,
    labels,
    count,
    dim: DIM,
    batchSize: 5,
    seed: 1234,
    shuffle: true,
    dropLast: false,
    ...over,
  });
  const rowsIn = (b: Batch): number[] =>
    Array.from({ length: b.size }, (_, i) =>
      Math.round((b.pos[i * DIM + NUM_CLASSES]! - NUM_CLASSES) / 100),
    );
  const epochRows = (s: BatchSampler, e: number): number[] => [...s.epoch(e)].flatMap(rowsIn);

  it('yields pos rows then neg rows in x, with pos/neg as views', () => {
    for (const b of new BatchSampler(opts()).epoch(0)) {
      assert.equal(b.x.length, 2 * b.size * DIM);
      assert.equal(b.pos.buffer, b.x.buffer);
      assert.equal(b.neg.buffer, b.x.buffer);
      assert.equal(b.neg.byteOffset, b.size * DIM * 4);
      rowsIn(b).forEach((r, i) => {
        assert.equal(b.labels[i], labels[r]);
        assert.notEqual(b.negLabels[i], b.labels[i]);
        assertOverlaid(b.x, i, images, r, b.labels[i]!);
        assertOverlaid(b.x, b.size + i, images, r, b.negLabels[i]!);
      });
    }
  });

  it('visits every example exactly once per epoch', () => {
    const s = new BatchSampler(opts());
    assert.equal(s.batchesPerEpoch, 5);
    const sizes = [...s.epoch(3)].map((b) => b.size);
    assert.deepEqual(sizes, [5, 5, 5, 5, 3]);
    assert.deepEqual(
      epochRows(s, 3).sort((a, b) => a - b),
      Array.from({ length: count }, (_, i) => i),
    );
  });

  it('is a pure function of (seed, epoch)', () => {
    const a = [...new BatchSampler(opts()).epoch(2)];
    const b = [...new BatchSampler(opts()).epoch(2)];
    assert.deepEqual(a, b, 'same seed and epoch: identical batches');
    const s = new BatchSampler(opts());
    assert.notDeepEqual(epochRows(s, 2), epochRows(s, 3), 'another epoch: another order');
    assert.notDeepEqual(epochRows(s, 2), epochRows(new BatchSampler(opts({ seed: 99 })), 2));
  });

  it('keeps the data order when shuffle is off, still with fresh negatives per epoch', () => {
    const s = new BatchSampler(opts({ shuffle: false }));
    assert.deepEqual(
      epochRows(s, 0),
      Array.from({ length: count }, (_, i) => i),
    );
    const neg = (e: number) => [...s.epoch(e)].flatMap((b) => Array.from(b.negLabels));
    assert.notDeepEqual(neg(0), neg(1));
  });

  it('drops the short last batch with dropLast', () => {
    const s = new BatchSampler(opts({ dropLast: true }));
    assert.equal(s.batchesPerEpoch, 4);
    const batches = [...s.epoch(0)];
    assert.deepEqual(
      batches.map((b) => [b.index, b.size]),
      [
        [0, 5],
        [1, 5],
        [2, 5],
        [3, 5],
      ],
    );
    assert.equal(new Set(batches.flatMap(rowsIn)).size, 20);
  });

  it('rejects bad options, naming the field', () => {
    const check = (over: Partial<BatchSamplerOptions>, field: string) =>
      assert.throws(
        () => new BatchSampler(opts(over)),
        (e: unknown) => isDataError(e, 'BAD_ARGUMENT') && e.message.includes(field),
      );
    check({ batchSize: 0 }, 'options.batchSize');
    check({ count: 24 }, 'options.images');
    check({ labels: labels.subarray(1) }, 'options.labels');
    check({ labels: Uint8Array.from(labels, (l, i) => (i === 4 ? 12 : l)) }, 'label of row 4');
    check({ jitter: 1 }, 'options.imageShape');
    check({ jitter: 4, imageShape: [4, 4] }, 'options.jitter');
    check({ jitter: -1 }, 'options.jitter');
  });
});

describe('shiftImage', () => {
  // 3 x 4: pixel (r, c) = 10 r + c + 1.
  const src = Float32Array.from({ length: 12 }, (_, i) => 10 * Math.floor(i / 4) + (i % 4) + 1);
  const shifted = (dy: number, dx: number) => {
    const out = new Float32Array(14).fill(7);
    shiftImage(src, 3, 4, dy, dx, -1, out, 1);
    assert.equal(out[0], 7, 'nothing before offset');
    assert.equal(out[13], 7, 'nothing after the image');
    return Array.from(out.subarray(1, 13));
  };

  it('moves pixels down/right for positive shifts, up/left for negative, filling background', () => {
    assert.deepEqual(shifted(0, 0), Array.from(src));
    // prettier-ignore
    assert.deepEqual(shifted(1, 2), [
      -1, -1, -1, -1,
      -1, -1, 1, 2,
      -1, -1, 11, 12,
    ]);
    // prettier-ignore
    assert.deepEqual(shifted(-1, -1), [
      12, 13, 14, -1,
      22, 23, 24, -1,
      -1, -1, -1, -1,
    ]);
    assert.deepEqual(shifted(3, 0), new Array(12).fill(-1));
  });
});

describe('BatchSampler with jitter', () => {
  // 100 images of 4 x 4 pixels, each a distinct ramp (no two shifts of one image agree).
  const side = 4;
  const dim = side * side;
  const count = 100;
  const images = Float32Array.from({ length: count * dim }, (_, i) => 1 + (i % dim) + 0.001 * i);
  const labels = Uint8Array.from({ length: count }, (_, i) => i % 10);
  const make = (jitter: number, seed = 5) =>
    new BatchSampler({
      images,
      labels,
      count,
      dim,
      batchSize: 10,
      seed,
      shuffle: true,
      dropLast: false,
      jitter,
      imageShape: [side, side],
      background: -2,
    });

  /** The (dy, dx) that turns image `row` into `seen` (label pixels aside), or null. */
  const shiftOf = (row: number, seen: Float32Array, j: number): [number, number] | null => {
    const out = new Float32Array(dim);
    for (let dy = -j; dy <= j; dy++) {
      for (let dx = -j; dx <= j; dx++) {
        shiftImage(images.subarray(row * dim, (row + 1) * dim), side, side, dy, dx, -2, out, 0);
        if (out.subarray(NUM_CLASSES).every((v, i) => v === seen[NUM_CLASSES + i])) {
          return [dy, dx];
        }
      }
    }
    return null;
  };

  it('shifts each image by up to jitter pixels, the same for its positive and negative row', () => {
    const plain = [...make(0).epoch(3)];
    const jittered = [...make(1).epoch(3)];
    const seen = new Map<string, number>();
    jittered.forEach((b, k) => {
      const p = plain[k]!;
      // Order and negative labels are those of the run without jitter.
      assert.deepEqual(b.labels, p.labels);
      assert.deepEqual(b.negLabels, p.negLabels);
      for (let i = 0; i < b.size; i++) {
        // Which image: the unjittered batch has it at the same place.
        const v = p.pos[i * dim + NUM_CLASSES]!; // 1 + 10 + 0.001 (source * dim + 10)
        const source = Math.round(((v - 11) / 0.001 - NUM_CLASSES) / dim);
        const pos = b.pos.subarray(i * dim, (i + 1) * dim);
        const neg = b.neg.subarray(i * dim, (i + 1) * dim);
        assert.deepEqual(pos.subarray(NUM_CLASSES), neg.subarray(NUM_CLASSES));
        const shift = shiftOf(source, pos, 1);
        assert.ok(shift, `batch ${k} row ${i}: not a shift of image ${source} by at most 1`);
        seen.set(shift.join(','), (seen.get(shift.join(',')) ?? 0) + 1);
        assert.equal(pos[b.labels[i]!], 1);
        assert.equal(neg[b.negLabels[i]!], 1);
      }
    });
    // All 9 shifts occur, roughly uniformly (100 draws: each expected 11.1).
    assert.equal(seen.size, 9);
    for (const [shift, n] of seen) assert.ok(n >= 2 && n <= 25, `${shift}: ${n}`);
  });

  it('is a pure function of (seed, epoch), and differs between epochs', () => {
    const a = [...make(2).epoch(1)].map((b) => Array.from(b.x));
    const b = [...make(2).epoch(1)].map((b) => Array.from(b.x));
    assert.deepEqual(a, b);
    const c = [...make(2).epoch(2)].map((b) => Array.from(b.x));
    assert.notDeepEqual(a, c);
  });
});

describe('mirrorImage', () => {
  it("reverses each row of pixels, keeping each pixel's channels in order", () => {
    // 2 x 3 pixels of 2 channels: pixel (r, c) channel k = 100 r + 10 c + k.
    const img = Float32Array.from({ length: 12 }, (_, i) => {
      const [r, c, k] = [Math.floor(i / 6), Math.floor(i / 2) % 3, i % 2];
      return 100 * r + 10 * c + k;
    });
    const out = new Float32Array(14).fill(7);
    out.set(img, 1);
    mirrorImage(out, 1, 2, 3, 2);
    // prettier-ignore
    assert.deepEqual(Array.from(out), [
      7,
      20, 21, 10, 11, 0, 1,
      120, 121, 110, 111, 100, 101,
      7,
    ]);
    mirrorImage(out, 1, 2, 3, 2);
    assert.deepEqual(Array.from(out.subarray(1, 13)), Array.from(img));
  });
});

describe('BatchSampler with flip', () => {
  // 200 images of 3 x 5 pixels, no two alike and none symmetric.
  const [rows, cols] = [3, 5];
  const dim = rows * cols;
  const count = 200;
  const images = Float32Array.from({ length: count * dim }, (_, i) => (i % dim) + 0.001 * i);
  const labels = Uint8Array.from({ length: count }, (_, i) => i % 10);
  const make = (flip: boolean, seed = 3) =>
    new BatchSampler({
      images,
      labels,
      count,
      dim,
      batchSize: 20,
      seed,
      shuffle: true,
      dropLast: false,
      plain: true,
      flip,
      imageShape: [rows, cols],
    });

  it('mirrors about half the images, the others untouched, the order unchanged', () => {
    const plain = [...make(false).epoch(2)];
    const flipped = [...make(true).epoch(2)];
    let mirrored = 0;
    flipped.forEach((b, k) => {
      const p = plain[k]!;
      assert.deepEqual(b.rows, p.rows);
      assert.deepEqual(b.labels, p.labels);
      for (let i = 0; i < b.size; i++) {
        const seen = Array.from(b.x.subarray(i * dim, (i + 1) * dim));
        const image = p.x.slice(i * dim, (i + 1) * dim);
        if (seen.every((v, j) => v === image[j])) continue;
        mirrorImage(image, 0, rows, cols, 1);
        assert.deepEqual(
          seen,
          Array.from(image),
          `batch ${k} row ${i}: neither itself nor mirrored`,
        );
        mirrored++;
      }
    });
    // 200 fair draws: 100 expected.
    assert.ok(mirrored >= 70 && mirrored <= 130, `${mirrored} of 200 mirrored`);
  });

  it('is a pure function of (seed, epoch), and differs between epochs', () => {
    const a = [...make(true).epoch(1)].map((b) => Array.from(b.x));
    assert.deepEqual(
      a,
      [...make(true).epoch(1)].map((b) => Array.from(b.x)),
    );
    assert.notDeepEqual(
      a,
      [...make(true).epoch(4)].map((b) => Array.from(b.x)),
    );
  });

  it('needs the image shape', () => {
    assert.throws(
      () =>
        new BatchSampler({
          images,
          labels,
          count,
          dim,
          batchSize: 20,
          seed: 1,
          shuffle: true,
          dropLast: false,
          flip: true,
        }),
      /options.imageShape/,
    );
  });
});
