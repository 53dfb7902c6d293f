// One Forward-Forward layer: length-normalise, linear + ReLU, goodness, local loss.
//
// For a batch X = [pos; neg] (2B x in) and sign s = +1 (pos) / -1 (neg):
//   Xn = X / (rms(X)_row + eps),  Z = Xn W^T + b,  H = relu(Z)     (W is [out, in])
//   g  = mean(H^2, 1)            (or sum; `negate` flips it so positives aim low)
//   L  = mean(softplus(-s (g - theta)))                      (loss 'threshold', Hinton's)
// The gradient is local and closed-form, so a step is two matrix products:
//   dL/dg = -s sigmoid(-s (g - theta)) / 2B,  dL/dZ = dL/dg * dg/dH (= 2H/k, zero where Z<=0)
//   dW = dL/dZ^T Xn,  db = colsum(dL/dZ).
// The losses live in loss/, each beside its derivation: 'threshold' (Hinton's, above), 'symba'
// (each positive row against its own negative) and 'softmax' (first layer: the cross-entropy of
// the true label among all ten label overlays, from one product).
// Peer normalisation (Hinton's, optional) keeps every unit about as active as the layer's
// average: a running mean of each unit's activity on positive data,
//   m = decay m_prev + (1 - decay) mean_pos(H)         (m_prev: a constant of the step)
//   L += peerNorm mean_j (mean_k m_k - m_j)^2,
// so dL/dH[r,j] = peerNorm (2/out) (m_j - mean(m)) (1 - decay)/B on the B positive rows, and
// m becomes m_prev for the next step.
// On wasm both products are computed transposed, Z^T = W Xn^T and dW = dZ^T Xn, so that the big
// operand (W) is never the one XNNPACK repacks: on wasm, repacking a changed 2000x2000 weight
// costs as much as a third of the product itself, and the small batch operand is cheap to pack.
// Where the products run on BLAS (backend wasm+blas), transposes are free flags of sgemm and an
// explicit transpose is a pass over memory: there the layer keeps rows first (`rowsFirst`),
// Z = Xn W^T and dW = dZ^T Xn with no transposed copy of anything. The two orders round
// differently, so each backend keeps one: the same backend always gives the same bits.
// Rows far past the threshold (sigmoid(-t) below float32 resolution of the batch's largest
// weight) are left out of the weight-gradient product: see activeRows.
// The activations handed to the next layer are this step's H, computed *before* the update:
// the pipeline sends them as soon as the forward pass is done, and the single-process
// reference does the same, so both are the same computation.
// Shards (train.shards S > 1, shards.ts): the batch is cut into S row ranges (positives with
// their negatives), each shard's forward and gradient is computed on its rows alone, as a batch
// of its own, and scaled by its share of the batch; the layer's gradient is their sum in shard
// order, which replicas computing some of the shards sum the same way: the same bits.
import * as tf from '@tensorflow/tfjs';
import { gatherHost, ownedVariable } from './host-memory.js';
import type { NamedTensor } from './safetensors.js';
import { LayerOptimizer, type OptimizerConfig } from './optimizer.js';
import { Readout } from './readout.js';
import { matMulTransposesFree } from '../backend/backend.js';
import type { Gradient, PeerStep } from './loss/loss.js';
import { LOSSES, type LossType } from './loss/losses.js';
import { LABELS } from './loss/softmax.js';
import { disposePart, shardSizes, sumTerm, type ShardPart, type ShardedLayer } from './shards.js';

export { LOSS_TYPES, type LossType } from './loss/losses.js';

export const GOODNESS_TYPES = ['mean', 'sum'] as const;
export type GoodnessType = (typeof GOODNESS_TYPES)[number];

export interface LayerConfig {
  inDim: number;
  outDim: number;
  /** Mean (default) or sum of squared activities. */
  goodness: GoodnessType;
  /** Positive data aims for goodness below the threshold instead of above. */
  negate: boolean;
  threshold: number;
  /**
   * 'threshold' (default): each row against the threshold; 'symba': each positive row against
   * its negative; 'softmax': each positive image's goodness under every label (first layer).
   */
  loss?: LossType;
  /** The scale of goodness in 'symba' and 'softmax' (default 1). */
  alpha?: number;
  /** Added to the row norm before dividing (keeps all-zero rows finite). */
  normEps: number;
  /** Seed of the weight initialisation. */
  seed: number;
  /** Weight of the peer-normalisation term (0: off) and the decay of its running mean. */
  peerNorm?: number;
  peerDecay?: number;
  /** A softmax readout on this layer (readout.ts), trained on the batch's neutral rows. */
  readout?: boolean;
  /**
   * Activations rows first ([rows, out]) rather than transposed (the wasm order); default:
   * where the backend's matrix products take transposes for free (wasm+blas).
   */
  rowsFirst?: boolean;
  /** Shards of a batch whose gradients are summed in order (default 1: the batch whole). */
  shards?: number;
}

export interface StepStats {
  loss: number;
  /** Mean goodness of the positive and negative rows (before the update). */
  goodnessPos: number;
  goodnessNeg: number;
}

/**
 * A row whose loss weight sigmoid(-t) is below this fraction of the batch's largest one adds
 * less to the gradient than float32 rounding of the sum does (2^-24 is float32's unit roundoff),
 * and one below SATURATED_FLOOR is zero for every purpose (Adam's eps is 1e-8).
 */
const SATURATED_RELATIVE = 2 ** -24;
const SATURATED_FLOOR = 1e-30;

/**
 * The rows of a batch whose gradient terms count, or null when all of them do. On well-trained
 * layers most rows are far past the threshold (t of tens to hundreds with sum goodness, so
 * sigmoid(-t) < 1e-20); skipping them saves most of the weight-gradient product, and the
 * subnormal products their terms would make, which cost x86 a microcode assist each.
 */
export function activeRows(weight: ArrayLike<number>): Int32Array | null {
  let max = 0;
  for (let r = 0; r < weight.length; r++) {
    const w = weight[r]!;
    if (Number.isNaN(w)) return null; // a diverged batch keeps its NaN gradient, as without this
    if (w > max) max = w;
  }
  const cutoff = Math.max(max * SATURATED_RELATIVE, SATURATED_FLOOR);
  let n = 0;
  for (let r = 0; r < weight.length; r++) if (weight[r]! >= cutoff) n++;
  if (n === weight.length) return null;
  const active = new Int32Array(n);
  for (let r = 0, i = 0; r < weight.length; r++) if (weight[r]! >= cutoff) active[i++] = r;
  return active;
}

/** `active` (ascending row indexes) with rows 0..n-1 added. */
function withRows(active: Int32Array, n: number): Int32Array {
  const rest = active.filter((r) => r >= n);
  const out = new Int32Array(n + rest.length);
  for (let r = 0; r < n; r++) out[r] = r;
  out.set(rest, n);
  return out;
}

/** Shard k's rows of a batch x = [pos; neg] of `nPos` each (sizes: shardSizes): [pos_k; neg_k]. */
export function shardRows(x: tf.Tensor2D, nPos: number, sizes: number[], k: number): tf.Tensor2D {
  const at = sizes.slice(0, k).reduce((a, b) => a + b, 0);
  const b = sizes[k]!;
  return tf.tidy(() =>
    tf.concat([tf.slice(x, [at, 0], [b, -1]), tf.slice(x, [nPos + at, 0], [b, -1])]),
  );
}

/** What one batch (or shard) gives the step: its activations, goodness, loss and gradient. */
interface ShardStep {
  h: tf.Tensor2D;
  g: tf.Tensor1D;
  loss: tf.Scalar;
  dw: tf.Tensor2D;
  db: tf.Tensor1D;
  peer: PeerStep | null;
}

export class FFLayer implements ShardedLayer {
  readonly config: LayerConfig;
  readonly weight: tf.Variable<tf.Rank.R2>;
  readonly bias: tf.Variable<tf.Rank.R1>;
  readonly optimizer: LayerOptimizer;
  /** Peer normalisation's running mean of each unit's activity on positive data (with it on). */
  readonly peerMean: tf.Variable<tf.Rank.R1> | null;
  readonly readout: Readout | null;
  // The sign column (+1 pos rows, -1 neg rows), built once per batch size.
  private readonly signs = new Map<number, tf.Tensor1D>();
  /** Whether activations are [rows, out] in the step (else [out, rows]: see the top). */
  private readonly rowsFirst: boolean;

  constructor(config: LayerConfig, optimizer: OptimizerConfig) {
    if (config.loss === 'softmax' && config.inDim <= LABELS) {
      throw new RangeError(
        `loss 'softmax' needs an input with the ${LABELS}-column label overlay and an image; got ${config.inDim} columns`,
      );
    }
    if ((config.shards ?? 1) > 1 && (config.readout || (config.peerNorm ?? 0) > 0)) {
      throw new RangeError(
        'shards > 1 with a readout or peer normalisation: their steps are over the whole batch',
      );
    }
    this.config = config;
    this.rowsFirst = config.rowsFirst ?? matMulTransposesFree();
    // Kaiming-uniform-like init, as torch.nn.Linear does: U(-1/sqrt(in), 1/sqrt(in)).
    const bound = 1 / Math.sqrt(config.inDim);
    this.weight = ownedVariable(
      tf.randomUniform([config.outDim, config.inDim], -bound, bound, 'float32', config.seed),
      true,
    );
    this.bias = ownedVariable(
      tf.randomUniform([config.outDim], -bound, bound, 'float32', config.seed + 1),
      true,
    );
    this.optimizer = new LayerOptimizer(optimizer, [this.weight, this.bias]);
    this.peerMean = this.peerWeight() > 0 ? ownedVariable(tf.zeros([config.outDim]), false) : null;
    this.readout = config.readout ? new Readout(config.outDim, optimizer) : null;
  }

  /** Training steps taken (one per batch): the optimizers' bias corrections depend on it. */
  get steps(): number {
    return this.optimizer.step;
  }

  /** Resuming: the steps a checkpoint had taken (the readout steps with its layer). */
  set steps(n: number) {
    this.optimizer.step = n;
    if (this.readout) this.readout.optimizer.step = n;
  }

  /** The readout's log-probabilities [rows, classes] for activities `h` of neutral rows. */
  readoutScores(h: tf.Tensor2D): tf.Tensor2D {
    if (!this.readout) throw new Error('this layer has no readout');
    return tf.tidy(() => tf.logSoftmax(this.readout!.logits(this.normalise(h))) as tf.Tensor2D);
  }

  /** H = relu(normalise(x) W^T + b), no gradient bookkeeping. */
  forward(x: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => {
      const { act } = this.activate(this.normalise(x), false);
      return this.rowsFirst ? act : tf.transpose(act);
    });
  }

  /** Goodness of each row of H. */
  goodness(h: tf.Tensor2D): tf.Tensor1D {
    return tf.tidy(() => {
      const sq = tf.square(h);
      const g = this.config.goodness === 'mean' ? tf.mean(sq, 1) : tf.sum(sq, 1);
      return (this.config.negate ? tf.neg(g) : g) as tf.Tensor1D;
    });
  }

  /**
   * One training step on x = [pos; neg] (2*nPos rows), or with a readout x = [pos; neg;
   * neutral] (3*nPos rows) and the true `labels`: the FF loss is over pos and neg, the readout
   * trains on the neutral rows. Returns H of every row (owned by the caller), a [3] tensor of
   * loss, mean pos goodness, mean neg goodness, and with a readout its logits for the neutral
   * rows before its update (owned by the caller).
   */
  trainStep(
    x: tf.Tensor2D,
    nPos: number,
    lr: number,
    labels?: ArrayLike<number>,
  ): { h: tf.Tensor2D; stats: tf.Tensor1D; logits?: tf.Tensor2D } {
    const rows = this.readout ? 3 * nPos : 2 * nPos;
    if (x.shape[0] !== rows || x.shape[1] !== this.config.inDim) {
      throw new Error(
        `trainStep: expected [${rows}, ${this.config.inDim}], got [${x.shape.join(', ')}]`,
      );
    }
    if (!this.readout) return this.ffStep(x, nPos, lr);
    if (labels?.length !== nPos) throw new Error(`trainStep: needs the ${nPos} labels`);
    // One product for all three thirds: the neutral rows' activities come with the weights
    // before the update, as pos and neg get, and only pos and neg enter the FF loss.
    const step = this.ffStep(x, nPos, lr);
    const hn = tf.tidy(() => this.normalise(tf.slice(step.h, [2 * nPos, 0], [nPos, -1])));
    const { logits } = this.readout.trainStep(hn, labels, lr);
    hn.dispose();
    return { h: step.h, stats: step.stats, logits };
  }

  /**
   * The FF step on the first 2*nPos rows of x ([pos; neg]); rows after them (a readout's
   * neutral ones) are only carried forward. Returns H of every row.
   */
  private ffStep(x: tf.Tensor2D, nPos: number, lr: number): { h: tf.Tensor2D; stats: tf.Tensor1D } {
    const sizes = shardSizes(nPos, this.config.shards ?? 1);
    if (sizes.length > 1) {
      const inputs = sizes.map((_, k) => shardRows(x, nPos, sizes, k));
      const parts = this.shardParts(inputs, sizes, nPos);
      tf.dispose(inputs);
      const { h, stats, update } = this.combineParts(parts, nPos, lr);
      tf.dispose(Object.values(update));
      return { h, stats };
    }
    return tf.tidy(() => {
      const { h, g, loss: value, dw, db, peer } = this.shardStep(x, nPos);
      const stats = tf.stack([value, tf.mean(g.slice(0, nPos)), tf.mean(g.slice(nPos))]);
      if (peer) this.peerMean!.assign(peer.mean);
      this.update(dw, db, lr);
      return { h: tf.keep(h), stats: tf.keep(stats) as tf.Tensor1D };
    });
  }

  /**
   * The parts of a sharded step for some of a batch's shards (a replica's, or all of them):
   * `inputs[i]` is a shard's rows [pos; neg] (shardRows), `sizes[i]` its positive rows, of a
   * batch of `nPos`. Each part's loss and gradient are scaled by its share of the batch.
   * Nothing is updated; the caller owns the parts.
   */
  shardParts(inputs: tf.Tensor2D[], sizes: number[], nPos: number): ShardPart[] {
    return inputs.map((x, i) => {
      const [h, g, loss, dw, db] = tf.tidy(() => {
        const b = sizes[i]!;
        // Each shard's loss is its mean: its share of the batch's is b / nPos of it.
        const step = this.shardStep(x, b, b / nPos);
        return [step.h, step.g, step.loss, step.dw, step.db];
      });
      return { h, g, loss, terms: { dw, db } } as ShardPart;
    });
  }

  shardInput(x: tf.Tensor2D, nPos: number, sizes: number[], k: number): tf.Tensor2D {
    return shardRows(x, nPos, sizes, k);
  }

  partShapes(size: number): Record<string, number[]> {
    const { outDim } = this.config;
    return { h: [2 * size, outDim], g: [2 * size], loss: [1], ...this.updateShapes() };
  }

  updateShapes(): Record<string, number[]> {
    const { inDim, outDim } = this.config;
    return { dw: [outDim, inDim], db: [outDim] };
  }

  /**
   * Every shard's part of a batch (in shard order) made one step: the gradients and losses
   * summed in that order, the update applied, and H and goodness back in the batch's row order.
   * Disposes the parts; returns H, the stats and the summed gradient (the update, for replicas
   * that did not sum), owned by the caller.
   */
  combineParts(
    parts: ShardPart[],
    nPos: number,
    lr: number,
  ): { h: tf.Tensor2D; stats: tf.Tensor1D; update: Record<string, tf.Tensor> } {
    try {
      return tf.tidy(() => {
        const sizes = parts.map((p) => p.g.shape[0]! / 2);
        const rows = (t: (p: ShardPart) => tf.Tensor, half: number) =>
          parts.map((p, k) => tf.slice(t(p), [half * sizes[k]!], [sizes[k]!]));
        const h = tf.concat([
          ...parts.map((p, k) => tf.slice(p.h, [0, 0], [sizes[k]!, -1])),
          ...parts.map((p, k) => tf.slice(p.h, [sizes[k]!, 0], [sizes[k]!, -1])),
        ]);
        const g = tf.concat([...rows((p) => p.g, 0), ...rows((p) => p.g, 1)]) as tf.Tensor1D;
        const loss = parts.slice(1).reduce<tf.Tensor>((a, p) => tf.add(a, p.loss), parts[0]!.loss);
        const [dw, db] = [sumTerm(parts, 'dw'), sumTerm(parts, 'db')] as [tf.Tensor2D, tf.Tensor1D];
        const stats = tf.stack([
          loss,
          tf.mean(g.slice(0, nPos)),
          tf.mean(g.slice(nPos)),
        ]) as tf.Tensor1D;
        this.update(dw, db, lr);
        return { h, stats, update: { dw, db } };
      });
    } finally {
      parts.forEach(disposePart);
    }
  }

  applyUpdate(update: Record<string, tf.Tensor>, lr: number): void {
    this.update(update.dw as tf.Tensor2D, update.db as tf.Tensor1D, lr);
  }

  /** The optimizer's step on the gradient (dw, db): what a replica does with the summed one. */
  update(dw: tf.Tensor2D, db: tf.Tensor1D, lr: number): void {
    this.optimizer.apply(
      new Map<tf.Variable, tf.Tensor>([
        [this.weight, dw],
        [this.bias, db],
      ]),
      lr,
    );
  }

  /**
   * Forward and gradient of one batch, or one shard of one: x = [pos; neg] (and neutral rows,
   * only carried forward), nPos positive rows; with `share` (a shard's of its batch) its loss and
   * gradient scaled by it. Nothing is updated.
   */
  private shardStep(x: tf.Tensor2D, nPos: number, share = 1): ShardStep {
    const xn = this.normalise(x);
    const loss = LOSSES[this.config.loss ?? 'threshold'];
    // A row loss needs only H; the label loss needs the pre-activations too.
    const { z, act } = this.activate(xn, loss.kind === 'label');
    const h = this.rowsFirst ? act : tf.transpose(act); // [rows, out]: what the next layer gets
    const ffRows = 2 * nPos;
    const g = this.goodness(x.shape[0] > ffRows ? tf.slice(h, [0, 0], [ffRows, -1]) : h);
    const peer = this.peerStep(h, nPos);
    const {
      loss: value,
      dw,
      db,
    } = loss.kind === 'label'
      ? loss.gradient({
          xn,
          zT: this.rowsFirst ? tf.transpose(z!) : z!,
          nPos,
          weight: this.weight,
          alpha: this.config.alpha ?? 1,
          dgScale: this.dgScale(),
          peer,
        })
      : this.rowGradient(xn, act, g, nPos, peer, share);
    if (share === 1) return { h, g, loss: value, dw, db, peer };
    // A row loss took its share in its per-row weights (rowGradient); the label loss's
    // gradient is scaled here.
    const label = loss.kind === 'label';
    return {
      h,
      g,
      loss: tf.mul(value, share),
      dw: label ? tf.mul(dw, share) : dw,
      db: label ? tf.mul(db, share) : db,
      peer,
    };
  }

  /**
   * Loss and gradient of a row loss (one that scores each row on its own goodness `g`:
   * loss/loss.ts), with the peer term when on; rows after the first 2*nPos carry no loss.
   */
  private rowGradient(
    xn: tf.Tensor2D,
    act: tf.Tensor2D,
    g: tf.Tensor1D,
    nPos: number,
    peer: PeerStep | null,
    share = 1,
  ): Gradient {
    // A shard's share of the batch scales the per-row weights before the products: a pass
    // over the rows rather than over the gradient.
    const s = this.signsFor(nPos);
    const ffRows = 2 * nPos;
    const rowLoss = LOSSES[this.config.loss ?? 'threshold'];
    if (rowLoss.kind !== 'row') throw new Error(`loss '${this.config.loss}' is not a row loss`);
    const { loss, rowWeight, scale } = rowLoss.terms({
      g,
      nPos,
      signs: s,
      threshold: this.config.threshold,
      alpha: this.config.alpha ?? 1,
    });
    // dL/dg * dg/dH = -s rowWeight scale * (+-2/k) * H; fold the scalars into the column.
    const col = tf.mul(tf.mul(s, rowWeight), -this.dgScale() * scale * share) as tf.Tensor1D;
    let active = activeRows(rowWeight.dataSync());
    // The peer term reaches every positive row, saturated or not.
    if (peer && active) active = withRows(active, nPos);
    if (!active && xn.shape[0] > ffRows) {
      act = this.rowsFirst
        ? tf.slice(act, [0, 0], [ffRows, -1])
        : tf.slice(act, [0, 0], [-1, ffRows]);
      xn = tf.slice(xn, [0, 0], [ffRows, -1]);
    }
    const { dw, db } = this.gradient(act, col, xn, active, peer && { ...peer, nPos });
    return { loss: peer ? tf.add(loss, peer.loss) : loss, dw, db };
  }

  /**
   * Peer normalisation of a step whose activations are `h` (null when off): the running mean
   * it leads to, its loss, and dL/dH per unit on a positive row (`grad`).
   */
  private peerStep(h: tf.Tensor2D, nPos: number): PeerStep | null {
    if (!this.peerMean) return null;
    const w = this.peerWeight();
    const decay = this.config.peerDecay ?? 0.9;
    const batchMean = tf.mean(tf.slice(h, [0, 0], [nPos, -1]), 0);
    const mean = tf.add(tf.mul(this.peerMean, decay), tf.mul(batchMean, 1 - decay)) as tf.Tensor1D;
    const dev = tf.sub(mean, tf.mean(mean)); // m_j - mean(m)
    const loss = tf.mul(tf.mean(tf.square(dev)), w) as tf.Scalar;
    const n = this.config.outDim;
    const grad = tf.mul(dev, (w * 2 * (1 - decay)) / (n * nPos)) as tf.Tensor1D;
    return { mean, loss, grad };
  }

  private peerWeight(): number {
    return this.config.peerNorm ?? 0;
  }

  /**
   * The layer's state as named float32 arrays (copies): `<prefix>.weight` [out, in] (the
   * layer computes x W^T + b, as torch.nn.Linear), `<prefix>.bias` [out], and with `withOptimizer` the optimizer's slots
   * (`<prefix>.weight.m`, ...). The optimizer's step count goes in metadata by the caller.
   */
  exportState(prefix: string, withOptimizer: boolean): Map<string, NamedTensor> {
    const out = new Map<string, NamedTensor>();
    const names = new Map<tf.Variable, string>([
      [this.weight, `${prefix}.weight`],
      [this.bias, `${prefix}.bias`],
    ]);
    for (const [v, name] of names)
      out.set(name, { shape: [...v.shape], data: v.dataSync() as Float32Array });
    if (withOptimizer && this.peerMean) {
      out.set(`${prefix}.peerMean`, {
        shape: [this.config.outDim],
        data: this.peerMean.dataSync() as Float32Array,
      });
    }
    if (withOptimizer) {
      for (const [name, t] of this.optimizer.state(names))
        out.set(name, { shape: [...t.shape], data: t.dataSync() as Float32Array });
    }
    for (const [name, t] of this.readout?.exportState(prefix, withOptimizer) ?? [])
      out.set(name, t);
    return out;
  }

  /** Loads what exportState wrote; optimizer slots are loaded when present. */
  importState(prefix: string, tensors: ReadonlyMap<string, NamedTensor>): void {
    const names = new Map<tf.Variable, string>([
      [this.weight, `${prefix}.weight`],
      [this.bias, `${prefix}.bias`],
    ]);
    const targets = new Map<string, tf.Variable>();
    for (const [v, name] of names) targets.set(name, v);
    for (const [name, t] of this.optimizer.state(names)) targets.set(name, t);
    if (this.peerMean) targets.set(`${prefix}.peerMean`, this.peerMean);
    for (const [name, v] of targets) {
      const t = tensors.get(name);
      if (!t) {
        if (v === this.weight || v === this.bias)
          throw new Error(`weights have no tensor "${name}"`);
        continue;
      }
      if (t.shape.join('x') !== v.shape.join('x')) {
        throw new Error(
          `tensor "${name}" is [${t.shape.join(', ')}], layer expects [${v.shape.join(', ')}]`,
        );
      }
      tf.tidy(() => v.assign(tf.tensor(t.data, v.shape)));
    }
    this.readout?.importState(prefix, tensors);
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
    this.optimizer.dispose();
    this.peerMean?.dispose();
    this.readout?.dispose();
    for (const s of this.signs.values()) s.dispose();
    this.signs.clear();
  }

  private normalise(x: tf.Tensor2D): tf.Tensor2D {
    // Root-mean-square rather than unit length (as in Hinton's reference code): every input
    // element stays O(1) whatever the width, so the same init and threshold suit every layer.
    const rms = tf.sqrt(tf.mean(tf.square(x), 1, true));
    return tf.div(x, tf.add(rms, this.config.normEps));
  }

  /**
   * H = relu(Z) in the step's order, and with `withZ` Z itself. Where the products run on BLAS,
   * the bias and the relu go with the product (one pass over the output, while it is in cache).
   */
  private activate(xn: tf.Tensor2D, withZ: boolean): { z?: tf.Tensor2D; act: tf.Tensor2D } {
    if (this.rowsFirst && matMulTransposesFree()) {
      const product = (activation: 'linear' | 'relu') =>
        tf.fused.matMul({ a: xn, b: this.weight, transposeB: true, bias: this.bias, activation });
      if (!withZ) return { act: product('relu') as tf.Tensor2D };
      const z = product('linear') as tf.Tensor2D;
      return { z, act: tf.relu(z) };
    }
    const z = this.preactivations(xn);
    return { z, act: tf.relu(z) };
  }

  /** Z^T = W Xn^T + b, [out, rows]; rows first, Z = Xn W^T + b, [rows, out]. */
  private preactivations(xn: tf.Tensor2D): tf.Tensor2D {
    if (this.rowsFirst) return tf.add(tf.matMul(xn, this.weight, false, true), this.bias);
    // Transpose then multiply: matMul's transpose flags are ~13x slower on wasm.
    // Not tf.fused.matMul: its wasm kernel reads the bias's stored rank-1 shape through the
    // reshape and adds it along the wrong axis.
    const bias = tf.reshape(this.bias, [this.config.outDim, 1]);
    const zT = tf.add(tf.matMul(this.weight, tf.transpose(xn)), bias);
    // The reshape shares the bias's storage; release it so the optimizer may update in place.
    bias.dispose();
    return zT as tf.Tensor2D;
  }

  /**
   * dW = dZ^T Xn and db = colsum(dZ), dZ = H * col (+ the peer term on positive rows, where
   * H > 0), over the rows in `active` only (null: all of them). The other rows' terms are too
   * small to change the sums. `act` is H as the step holds it: H^T [out, rows], or rows first.
   */
  private gradient(
    act: tf.Tensor2D,
    col: tf.Tensor1D,
    xn: tf.Tensor2D,
    active: Int32Array | null,
    peer: { grad: tf.Tensor1D; nPos: number } | null,
  ): { dw: tf.Tensor2D; db: tf.Tensor1D } {
    if (active && active.length === 0) {
      // Every row saturated: a zero gradient, and the optimizer still takes its step.
      return { dw: tf.zerosLike(this.weight), db: tf.zerosLike(this.bias) };
    }
    const rowAxis = this.rowsFirst ? 0 : 1;
    /** A per-row column [rows] as a tensor that broadcasts along `act`'s rows. */
    const perRow = (n: number): [number, number] => (this.rowsFirst ? [n, 1] : [1, n]);
    const rows = active ?? Int32Array.from({ length: col.shape[0] }, (_, r) => r);
    if (active) {
      act = gatherHost(act, active, rowAxis);
      col = gatherHost(col, active);
      xn = gatherHost(xn, active);
    }
    if (this.rowsFirst && !peer) {
      // dZ = H col (per row), so dW = H^T (col Xn) and db = col^T H: two products and a pass
      // over the input, never one over the [rows, out] activations.
      const n = col.shape[0];
      const dw = tf.matMul(act, tf.mul(xn, tf.reshape(col, [n, 1])), true, false);
      const db = tf.reshape(tf.matMul(tf.reshape(col, [1, n]), act), [this.config.outDim]);
      return { dw: dw as tf.Tensor2D, db: db as tf.Tensor1D };
    }
    let dz = tf.mul(act, tf.reshape(col, perRow(col.shape[0])));
    if (peer) {
      const positive = tf.tensor2d(
        Float32Array.from(rows, (r) => (r < peer.nPos ? 1 : 0)),
        perRow(rows.length),
      );
      const relu = tf.cast(tf.greater(act, 0), 'float32');
      const perUnit = this.rowsFirst ? [1, this.config.outDim] : [this.config.outDim, 1];
      const term = tf.mul(tf.mul(relu, tf.reshape(peer.grad, perUnit)), positive);
      dz = tf.add(dz, term);
    }
    if (!this.rowsFirst) return { dw: tf.matMul(dz, xn), db: tf.sum(dz, rowAxis) };
    // The column sums as a product too (ones^T dZ): tfjs's sum down a column transposes first.
    const ones = tf.ones([1, dz.shape[0]]);
    const db = tf.reshape(tf.matMul(ones, dz), [this.config.outDim]) as tf.Tensor1D;
    return { dw: tf.matMul(dz, xn, true, false), db };
  }

  /** dg/dH = dgScale * H. */
  private dgScale(): number {
    const k = this.config.goodness === 'mean' ? this.config.outDim : 1;
    return ((this.config.negate ? -1 : 1) * 2) / k;
  }

  private signsFor(nPos: number): tf.Tensor1D {
    let s = this.signs.get(nPos);
    if (!s) {
      s = tf.tidy(() => tf.concat([tf.ones([nPos]), tf.fill([nPos], -1)]) as tf.Tensor1D);
      tf.keep(s);
      this.signs.set(nPos, s);
    }
    return s;
  }
}
