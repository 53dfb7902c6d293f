// Plans from measured cost: how to lay a run's layers out on K stages so that the slowest
// stage, which sets the pipeline's pace, is as fast as it can be. A layer's cost is its
// training step at the run's batch and loss, measured on this machine (profileLayers: a few
// steps on random data of the run's shape), and the activations it hands the next layer, which
// cross a link when that layer is on another stage (bytes / bandwidth, charged to the sender).
// The plan is the contiguous partition, each group on one process or on replicas (which
// share its steps and move its batch and gradients), that minimises the slowest stage
// (dynamic programming over the cut points and the processes: exact, L^2 K^2).
import type { RunConfig } from '../config/config.js';
import type { Partition } from '../config/partition.js';
import { FFNetwork, batchRows, carriesLabels, layerStateFloats } from '../core/ff-network.js';
import { modelWidths } from '../core/model-shape.js';
import { NUM_CLASSES } from '../data/classes.js';
import { Rng } from '../data/rng.js';
import { rangeLabel } from '../transport/layer-range.js';

export interface LayerCost {
  /** Seconds of one training step (one batch) of this layer alone. */
  stepSeconds: number;
  /** Bytes of the activations (and labels) it hands the next layer per batch. */
  outBytes: number;
  /** Bytes of its input per batch, and of its gradient (weights and bias): what replicas move. */
  inBytes?: number;
  gradBytes?: number;
}

export interface Plan {
  partition: Partition;
  /** Per stage: predicted seconds per batch (its layers' steps, and its links). */
  stageSeconds: number[];
  /** Index of the slowest stage. */
  bottleneck: number;
  /** The pipeline's predicted pace: the batch over the slowest stage's time. */
  samplesPerSec: number;
  /** One process's time per batch over the slowest stage's: what the layout can gain. */
  idealSpeedup: number;
}

/**
 * A stage of layers a..b (1-based) on `replicas` processes: its share of their steps, the link
 * to the next stage, and with replicas what its primary moves: the batch to each replica, and
 * each one's parts in and the summed gradient out.
 */
function stageSeconds(
  costs: LayerCost[],
  a: number,
  b: number,
  replicas: number,
  linkBytesPerSec: number,
): number {
  let step = 0;
  let grad = 0;
  for (let l = a; l <= b; l++) {
    step += costs[l - 1]!.stepSeconds;
    grad += costs[l - 1]!.gradBytes ?? 0;
  }
  const out = b < costs.length ? costs[b - 1]!.outBytes / linkBytesPerSec : 0;
  const moved = (replicas - 1) * ((costs[a - 1]!.inBytes ?? 0) + 2 * grad);
  return step / replicas + out + moved / linkBytesPerSec;
}

/**
 * The best plan on at most `processes` processes for layers of `costs`: contiguous groups, each
 * on `r` replicas for an r that `replicasAllowed` allows (default: none but 1), batches of
 * `batchSize` positives, links of `linkBytesPerSec` (Infinity: free). The slowest stage is as
 * fast as it can be; of equal plans, the one on fewest processes.
 */
export function planPartition(
  costs: LayerCost[],
  processes: number,
  batchSize: number,
  linkBytesPerSec = Infinity,
  replicasAllowed: (r: number) => boolean = (r) => r === 1,
): Plan {
  const L = costs.length;
  const K = Math.max(1, processes);
  // best[n][b]: the slowest stage of the best layout of layers 1..b on exactly n processes;
  // from[n][b]: its last stage (first layer, replicas).
  const best = Array.from({ length: K + 1 }, () => new Array<number>(L + 1).fill(Infinity));
  const from = Array.from({ length: K + 1 }, () =>
    new Array<{ a: number; r: number }>(L + 1).fill({ a: 0, r: 0 }),
  );
  best[0]![0] = 0;
  for (let n = 1; n <= K; n++) {
    for (let b = 1; b <= L; b++) {
      for (let a = 1; a <= b; a++) {
        for (let r = 1; r <= n; r++) {
          if (!replicasAllowed(r) || best[n - r]![a - 1] === Infinity) continue;
          const v = Math.max(best[n - r]![a - 1]!, stageSeconds(costs, a, b, r, linkBytesPerSec));
          if (v < best[n]![b]!) {
            best[n]![b] = v;
            from[n]![b] = { a, r };
          }
        }
      }
    }
  }
  let n = 1;
  for (let m = 1; m <= K; m++) if (best[m]![L]! < best[n]![L]!) n = m;
  const partition: Partition = [];
  for (let b = L; b >= 1;) {
    const { a, r } = from[n]![b]!;
    partition.unshift({ layers: { first: a, last: b }, replicas: r });
    n -= r;
    b = a - 1;
  }
  return predict(costs, partition, batchSize, linkBytesPerSec);
}

/** What a given partition of layers of `costs` will do: each stage's time, the pace, the gain. */
export function predict(
  costs: LayerCost[],
  partition: Partition,
  batchSize: number,
  linkBytesPerSec = Infinity,
): Plan {
  const times = partition.map(({ layers: { first, last }, replicas }) =>
    stageSeconds(costs, first, last, replicas, linkBytesPerSec),
  );
  const slowest = Math.max(...times);
  const total = costs.reduce((t, c) => t + c.stepSeconds, 0);
  return {
    partition,
    stageSeconds: times,
    bottleneck: times.indexOf(slowest),
    samplesPerSec: batchSize / slowest,
    idealSpeedup: total / slowest,
  };
}

/** The plan as lines: each stage's layers and predicted time, then the pace and the bottleneck. */
export function describePlan(plan: Plan): string[] {
  const lines = plan.partition.map(
    (s, i) =>
      `  stage ${i + 1}: ${(rangeLabel(s.layers) + (s.replicas > 1 ? ` x${s.replicas}` : '')).padEnd(12)} ${(plan.stageSeconds[i]! * 1000).toFixed(1)} ms/batch` +
      (i === plan.bottleneck && plan.partition.length > 1 ? '  <- bottleneck' : ''),
  );
  lines.push(
    `  predicted ${Math.round(plan.samplesPerSec)} samples/s; ideal speed-up ` +
      `${plan.idealSpeedup.toFixed(2)}x over one process`,
  );
  return lines;
}

/**
 * Each layer's cost for the run of `cfg` on the backend this process runs: the median of
 * `steps` training steps (after one to warm up) on random data of the run's batch shape.
 */
export function profileLayers(cfg: RunConfig, steps = 3): LayerCost[] {
  const { model, train } = cfg;
  const nPos = train.batchSize;
  const rows = batchRows(model, nPos);
  const widths = modelWidths(model.layers);
  const labelled = carriesLabels(model);
  const rng = new Rng(cfg.seed);
  const x = Float32Array.from({ length: rows * widths[0]! }, () => rng.next());
  const labels = Array.from({ length: nPos }, (_, i) => i % NUM_CLASSES);
  const net = new FFNetwork(model, cfg.optimizer, cfg.seed, train.shards);
  try {
    const seconds: number[][] = model.layers.slice(1).map(() => []);
    for (let s = 0; s <= steps; s++) {
      const out = net.trainBatch(x, nPos, cfg.optimizer.lr, labelled ? labels : undefined);
      if (s > 0) out.forEach((o, i) => seconds[i]!.push(o.seconds));
    }
    const labelBytes = labelled ? nPos * 4 : 0;
    return seconds.map((t, i) => ({
      stepSeconds: t.sort((a, b) => a - b)[Math.floor(t.length / 2)]!,
      outBytes: rows * widths[i + 1]! * 4 + labelBytes,
      inBytes: rows * widths[i]! * 4 + labelBytes,
      gradBytes: layerStateFloats(model, { ...cfg.optimizer, type: 'sgd' }, i) * 2,
    }));
  } finally {
    net.dispose();
  }
}
