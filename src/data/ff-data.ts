import { NUM_CLASSES } from './classes.js';
import { DataError } from './errors.js';
import { Rng } from './rng.js';

export { NUM_CLASSES };

export type PixelScale = 'unit' | 'standard';

export interface PixelStats {
  mean: number;
  std: number;
}

export interface ScaledImages extends PixelStats {
  data: Float32Array;
}

function fail(message: string): never {
  throw new DataError('BAD_ARGUMENT', message);
}

function checkCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0)
    fail(`${name} must be a non-negative integer, got ${value}`);
}

function checkRows(name: string, arr: ArrayLike<number>, rows: number, dim: number): void {
  if (arr.length < rows * dim) {
    fail(`${name} has ${arr.length} values, needs ${rows} rows x ${dim} = ${rows * dim}`);
  }
}

function checkDim(dim: number): void {
  if (!Number.isInteger(dim) || dim < NUM_CLASSES) {
    fail(
      `dim must be an integer >= ${NUM_CLASSES} (the label overlay needs that many pixels), got ${dim}`,
    );
  }
}

/**
 * Bytes to floats for the first count*dim pixels: 'unit' is x/255 (mean 0, std 1 reported);
 * 'standard' is (x/255 - mean)/std. Pass the training set's `stats` when scaling a test set,
 * so both go through the same transform.
 */
export function toFloat(
  images: Uint8Array,
  count: number,
  dim: number,
  scale: PixelScale = 'unit',
  stats?: PixelStats,
): ScaledImages {
  checkCount('count', count);
  checkCount('dim', dim);
  checkRows('images', images, count, dim);
  const pixels = images.subarray(0, count * dim);
  let mean = 0;
  let std = 1;
  if (scale === 'standard') {
    if (stats) {
      ({ mean, std } = stats);
    } else {
      // A 256-bin histogram gives exact sums (no float drift over 47M pixels) in one pass.
      const hist = new Float64Array(256);
      for (let i = 0; i < pixels.length; i++) hist[pixels[i]!]!++;
      let sum = 0;
      let sumSq = 0;
      for (let v = 0; v < 256; v++) {
        sum += hist[v]! * v;
        sumSq += hist[v]! * v * v;
      }
      const n = Math.max(pixels.length, 1);
      mean = sum / n / 255;
      std = Math.sqrt(Math.max(sumSq / n / (255 * 255) - mean * mean, 0)) || 1;
    }
  } else if (scale !== 'unit') {
    fail(`scale must be 'unit' or 'standard', got '${String(scale)}'`);
  }
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = (v / 255 - mean) / std;
  const data = new Float32Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) data[i] = lut[pixels[i]!]!;
  return { data, mean, std };
}

function checkLabel(label: number | undefined, row: number): number {
  if (label === undefined || !Number.isInteger(label) || label < 0 || label >= NUM_CLASSES) {
    fail(`label of row ${row} must be an integer in 0..${NUM_CLASSES - 1}, got ${label}`);
  }
  return label;
}

/** Hinton's overlay: the first NUM_CLASSES pixels become a one-hot of `label`. */
function writeOneHot(out: Float32Array, offset: number, label: number, onValue: number): void {
  out.fill(0, offset, offset + NUM_CLASSES);
  out[offset + label] = onValue;
}

/**
 * Copies src rows rowStart..rowStart+count-1 to out rows outRowOffset.. and overlays the label:
 * row i gets labels[i] (labels are indexed from 0 for the first copied row, not by rowStart).
 */
export function overlayLabels(
  src: Float32Array,
  rowStart: number,
  count: number,
  dim: number,
  labels: ArrayLike<number>,
  out: Float32Array,
  outRowOffset = 0,
  onValue = 1,
): Float32Array {
  checkDim(dim);
  checkRows('src', src, rowStart + count, dim);
  checkRows('out', out, outRowOffset + count, dim);
  if (labels.length < count) fail(`labels has ${labels.length} values, needs ${count}`);
  out.set(src.subarray(rowStart * dim, (rowStart + count) * dim), outRowOffset * dim);
  for (let i = 0; i < count; i++) {
    writeOneHot(out, (outRowOffset + i) * dim, checkLabel(labels[i], i), onValue);
  }
  return out;
}

/**
 * For evaluation: out is [NUM_CLASSES * count, dim], label-major. Row c*count + i is src row
 * rowStart+i with label c overlaid, so out.subarray(c*count*dim, (c+1)*count*dim) is the whole
 * batch under hypothesis c.
 */
export function overlayAllLabels(
  src: Float32Array,
  rowStart: number,
  count: number,
  dim: number,
  out: Float32Array,
  onValue = 1,
): Float32Array {
  checkDim(dim);
  checkRows('src', src, rowStart + count, dim);
  checkRows('out', out, NUM_CLASSES * count, dim);
  const rows = src.subarray(rowStart * dim, (rowStart + count) * dim);
  for (let c = 0; c < NUM_CLASSES; c++) {
    out.set(rows, c * count * dim);
    for (let i = 0; i < count; i++) writeOneHot(out, (c * count + i) * dim, c, onValue);
  }
  return out;
}

/** For each true label, a wrong label drawn uniformly from the other NUM_CLASSES - 1. */
export function sampleNegativeLabels(
  labels: ArrayLike<number>,
  rng: Rng,
  out: Uint8Array = new Uint8Array(labels.length),
): Uint8Array {
  if (out.length < labels.length) fail(`out has ${out.length} values, needs ${labels.length}`);
  for (let i = 0; i < labels.length; i++) {
    // Adding 1..9 modulo 10 can never land back on the true label.
    out[i] = (checkLabel(labels[i], i) + 1 + rng.int(NUM_CLASSES - 1)) % NUM_CLASSES;
  }
  return out;
}

/**
 * Hard negatives (Hinton): for each image, with probability `hard`, a wrong label drawn from
 * the model's predicted distribution (`probs`, NUM_CLASSES non-negative weights per image,
 * row i for labels[i]; the true label's weight is ignored), else a uniform wrong label. An
 * image whose wrong labels all have weight 0 (or whose row is not finite) gets a uniform one.
 * Never the true label. Draws one uniform number per image, then one for the label.
 */
export function sampleHardNegativeLabels(
  labels: ArrayLike<number>,
  probs: Float32Array,
  hard: number,
  rng: Rng,
  out: Uint8Array = new Uint8Array(labels.length),
): Uint8Array {
  if (out.length < labels.length) fail(`out has ${out.length} values, needs ${labels.length}`);
  if (probs.length < labels.length * NUM_CLASSES) {
    fail(`probs has ${probs.length} values, needs ${labels.length} x ${NUM_CLASSES}`);
  }
  if (!(hard >= 0 && hard <= 1)) fail(`hard must be in [0, 1], got ${hard}`);
  for (let i = 0; i < labels.length; i++) {
    const label = checkLabel(labels[i], i);
    const useHard = rng.next() < hard;
    let total = 0;
    if (useHard) {
      for (let c = 0; c < NUM_CLASSES; c++) {
        const p = probs[i * NUM_CLASSES + c]!;
        if (c !== label) total += p >= 0 ? p : NaN;
      }
    }
    if (!useHard || !(total > 0) || !Number.isFinite(total)) {
      out[i] = (label + 1 + rng.int(NUM_CLASSES - 1)) % NUM_CLASSES;
      continue;
    }
    // Inverse CDF over the wrong labels; the last one with weight takes any rounding excess.
    let u = rng.next() * total;
    let pick = -1;
    for (let c = 0; c < NUM_CLASSES; c++) {
      const p = probs[i * NUM_CLASSES + c]!;
      if (c === label || p <= 0) continue;
      pick = c;
      if (u < p) break;
      u -= p;
    }
    out[i] = pick;
  }
  return out;
}

/** The rows of `probs` ([*, NUM_CLASSES]) of the given images, in their order. */
function rowsOf(probs: Float32Array, rows: Uint32Array): Float32Array {
  const out = new Float32Array(rows.length * NUM_CLASSES);
  rows.forEach((r, i) =>
    out.set(probs.subarray(r * NUM_CLASSES, (r + 1) * NUM_CLASSES), i * NUM_CLASSES),
  );
  return out;
}

export interface BatchSamplerOptions {
  /** count*dim pixels, already scaled (see toFloat). */
  images: Float32Array;
  labels: Uint8Array;
  count: number;
  dim: number;
  batchSize: number;
  seed: number;
  shuffle: boolean;
  /** Skip the last batch when it would be smaller than batchSize. */
  dropLast: boolean;
  onValue?: number;
  /**
   * Augmentation: each training image shifted by up to `jitter` pixels in each direction
   * (uniform, seeded by (seed, epoch)), the vacated pixels set to `background`. 0: none.
   */
  jitter?: number;
  /**
   * Augmentation: each training image mirrored left-right with probability 1/2 (seeded by
   * (seed, epoch), a stream of its own), after the jitter's shift.
   */
  flip?: boolean;
  /** [rows, cols] of an image (needed with jitter or flip). */
  imageShape?: readonly [number, number];
  /** Values per pixel, channels last (default 1). */
  channels?: number;
  /** The scaled value of a black pixel (0 with 'unit' scaling). */
  background?: number;
  /** Each image a third time after the negatives, with a neutral label (for a readout). */
  neutral?: boolean;
  /** Each image once as it is: no overlay, no negatives (competitive layers). */
  plain?: boolean;
  /**
   * Hard negatives: `fraction` of the negative labels drawn from `probs(epoch)`, predicted
   * probabilities of every training image ([count, NUM_CLASSES], by image index; null for
   * uniform negatives that epoch). Read once as each epoch starts.
   */
  hardNegatives?: { fraction: number; probs: (epoch: number) => Float32Array | null };
}

/** Rng stream of the jitter draws: epoch e uses JITTER_STREAM + e, apart from the order's. */
const JITTER_STREAM = 0x4a170000;
/** Rng stream of the flip draws: epoch e uses FLIP_STREAM + e. */
const FLIP_STREAM = 0x4f110000;

/**
 * Writes `src` (a rows x cols image) shifted by (dy, dx) pixels into out[offset..]: out pixel
 * (r, c) is src (r - dy, c - dx), or `background` where that falls outside the image.
 */
export function shiftImage(
  src: Float32Array,
  rows: number,
  cols: number,
  dy: number,
  dx: number,
  background: number,
  out: Float32Array,
  offset: number,
): void {
  for (let r = 0; r < rows; r++) {
    const o = offset + r * cols;
    const sr = r - dy;
    if (sr < 0 || sr >= rows) {
      out.fill(background, o, o + cols);
      continue;
    }
    const c0 = Math.max(0, dx);
    const c1 = Math.min(cols, cols + dx);
    out.fill(background, o, o + c0);
    out.set(src.subarray(sr * cols + c0 - dx, sr * cols + c1 - dx), o + c0);
    out.fill(background, o + c1, o + cols);
  }
}

/** Mirrors the rows x cols image at out[offset..] left-right in place (channels last). */
export function mirrorImage(
  out: Float32Array,
  offset: number,
  rows: number,
  cols: number,
  channels: number,
): void {
  for (let r = 0; r < rows; r++) {
    const row = offset + r * cols * channels;
    for (let a = 0, b = cols - 1; a < b; a++, b--) {
      for (let ch = 0; ch < channels; ch++) {
        const i = row + a * channels + ch;
        const j = row + b * channels + ch;
        const t = out[i]!;
        out[i] = out[j]!;
        out[j] = t;
      }
    }
  }
}

export interface Batch {
  index: number;
  size: number;
  /**
   * [2*size, dim]: positive rows first, then negative rows; the layout the trainer sends.
   * With neutral rows, [3*size, dim]: those come last.
   */
  x: Float32Array;
  /** Views of x. */
  pos: Float32Array;
  neg: Float32Array;
  /** Empty without neutral rows. */
  neutral: Float32Array;
  labels: Uint8Array;
  negLabels: Uint8Array;
  /** Which training image each row is (its index in the data set). */
  rows: Uint32Array;
}

/** The neutral label: every label pixel onValue / NUM_CLASSES (they sum to onValue). */
function writeNeutral(out: Float32Array, offset: number, onValue: number): void {
  out.fill(onValue / NUM_CLASSES, offset, offset + NUM_CLASSES);
}

/**
 * Yields FF training batches. Order and negative labels depend only on (seed, epochIndex),
 * so a rerun, or another process given the same seed, produces identical batches.
 */
export class BatchSampler {
  readonly count: number;
  readonly dim: number;
  readonly batchSize: number;
  readonly batchesPerEpoch: number;
  private readonly opts: BatchSamplerOptions;

  constructor(opts: BatchSamplerOptions) {
    const { count, dim, batchSize, seed } = opts;
    checkCount('options.count', count);
    checkDim(dim);
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      fail(`options.batchSize must be a positive integer, got ${batchSize}`);
    }
    if (!Number.isSafeInteger(seed)) fail(`options.seed must be an integer, got ${seed}`);
    checkRows('options.images', opts.images, count, dim);
    if (opts.labels.length < count) {
      fail(`options.labels has ${opts.labels.length} values, needs ${count}`);
    }
    for (let i = 0; i < count; i++) checkLabel(opts.labels[i], i);
    const jitter = opts.jitter ?? 0;
    if (!Number.isInteger(jitter) || jitter < 0) {
      fail(`options.jitter must be a non-negative integer, got ${jitter}`);
    }
    if (jitter > 0 || opts.flip) {
      const [rows, cols] = opts.imageShape ?? [0, 0];
      const channels = opts.channels ?? 1;
      if (rows * cols * channels !== dim)
        fail(`options.imageShape must be [rows, cols] with rows*cols*${channels} = ${dim}`);
      if (jitter >= Math.min(rows, cols)) {
        fail(`options.jitter must be below the image size ${rows}x${cols}, got ${jitter}`);
      }
    }
    this.opts = opts;
    this.count = count;
    this.dim = dim;
    this.batchSize = batchSize;
    this.batchesPerEpoch = opts.dropLast
      ? Math.floor(count / batchSize)
      : Math.ceil(count / batchSize);
  }

  *epoch(epochIndex: number): Generator<Batch, void, undefined> {
    const { images, labels, dim, shuffle, onValue = 1, jitter = 0, background = 0 } = this.opts;
    const rng = Rng.derive(this.opts.seed, epochIndex);
    const order = shuffle ? rng.permutation(this.count) : null;
    const jitterRng = jitter > 0 ? Rng.derive(this.opts.seed, JITTER_STREAM + epochIndex) : null;
    const flipRng = this.opts.flip ? Rng.derive(this.opts.seed, FLIP_STREAM + epochIndex) : null;
    const [rows, cols] = this.opts.imageShape ?? [0, 0];
    const channels = this.opts.channels ?? 1;
    const plain = this.opts.plain ?? false;
    const copies = plain ? 1 : this.opts.neutral ? 3 : 2;
    const hard = this.opts.hardNegatives;
    const probs = hard?.probs(epochIndex) ?? null;
    for (let index = 0; index < this.batchesPerEpoch; index++) {
      const start = index * this.batchSize;
      const size = Math.min(this.batchSize, this.count - start);
      // Fresh arrays per batch: the consumer may still be sending the previous one.
      const x = new Float32Array(copies * size * dim);
      const batchLabels = new Uint8Array(size);
      const batchRows = new Uint32Array(size);
      for (let i = 0; i < size; i++) {
        const row = order ? order[start + i]! : start + i;
        batchRows[i] = row;
        const image = images.subarray(row * dim, (row + 1) * dim);
        if (jitterRng) {
          const dy = jitterRng.int(2 * jitter + 1) - jitter;
          const dx = jitterRng.int(2 * jitter + 1) - jitter;
          // Channels last: a row of the image is cols * channels values.
          shiftImage(image, rows, cols * channels, dy, dx * channels, background, x, i * dim);
        } else {
          x.set(image, i * dim);
        }
        if (flipRng && flipRng.int(2) === 1) mirrorImage(x, i * dim, rows, cols, channels);
        if (!plain) x.copyWithin((size + i) * dim, i * dim, (i + 1) * dim);
        batchLabels[i] = labels[row]!;
      }
      if (plain) {
        const none = new Float32Array(0);
        yield {
          index,
          size,
          x,
          pos: x,
          neg: none,
          neutral: none,
          labels: batchLabels,
          negLabels: new Uint8Array(0),
          rows: batchRows,
        };
        continue;
      }
      const negLabels = probs
        ? sampleHardNegativeLabels(batchLabels, rowsOf(probs, batchRows), hard!.fraction, rng)
        : sampleNegativeLabels(batchLabels, rng);
      for (let i = 0; i < size; i++) {
        writeOneHot(x, i * dim, batchLabels[i]!, onValue);
        writeOneHot(x, (size + i) * dim, negLabels[i]!, onValue);
      }
      if (copies === 3) {
        x.copyWithin(2 * size * dim, 0, size * dim);
        for (let i = 0; i < size; i++) writeNeutral(x, (2 * size + i) * dim, onValue);
      }
      yield {
        index,
        size,
        x,
        pos: x.subarray(0, size * dim),
        neg: x.subarray(size * dim, 2 * size * dim),
        neutral: x.subarray(2 * size * dim, copies * size * dim),
        labels: batchLabels,
        negLabels,
        rows: batchRows,
      };
    }
  }
}
