// Plans from measured cost: how to lay a run's layers out on K stages so that the slowest
// stage, which sets the pipeline's pace, is as fast as it can be. A layer's cost is its
// training step at the run's batch and loss, measured on this machine (profileLayers: a few
// steps on random data of the run's shape), and the activations it hands the next layer, which
// cross a link when that layer is on another stage (bytes / bandwidth, charged to the sender).
// The plan is the contiguous partition that minimises the slowest stage (dynamic programming
// over the cut points: exact, L^2 K).
import type { RunConfig } from '../config/config.js';
import type { Partition } from '../config/partition.js';
import { FFNetwork } from '../core/ff-network.js';
import { NUM_CLASSES } from '../data/classes.js';
import { Rng } from '../data/rng.js';
import { rangeLabel } from '../transport/layer-range.js';

export interface LayerCost {
  /** Seconds of one training step (one batch) of this layer alone. */
  stepSeconds: number;
  /** Bytes of the activations (and labels) it hands the next layer per batch. */
  outBytes: number;
}

export interface Plan {
  partition: Partition;
  /** Per stage: predicted seconds per batch (its layers' steps, and its link to the next). */
  stageSeconds: number[];
  /** Index of the slowest stage. */
  bottleneck: number;
  /** The pipeline's predicted pace: the batch over the slowest stage's time. */
  samplesPerSec: number;
  /** One process's time per batch over the slowest stage's: what the layout can gain. */
  idealSpeedup: number;
}

/**
 * The best plan of `stages` stages (fewer when the network has fewer layers) for layers of
 * `costs`, batches of `batchSize` positives, links of `linkBytesPerSec` (Infinity: free).
 */
export function planPartition(
  costs: LayerCost[],
  stages: number,
  batchSize: number,
  linkBytesPerSec = Infinity,
): Plan {
  const L = costs.length;
  const k = Math.max(1, Math.min(stages, L));
  const prefix = [0];
  for (const c of costs) prefix.push(prefix.at(-1)! + c.stepSeconds);
  const link = (last: number) => (last < L ? costs[last - 1]!.outBytes / linkBytesPerSec : 0);
  // time(a, b): a stage holding layers a..b (1-based).
  const time = (a: number, b: number) => prefix[b]! - prefix[a - 1]! + link(b);
  // best[j][b]: the slowest stage of the best split of layers 1..b into j stages; cut[j][b]: where
  // its last stage starts.
  const best = Array.from({ length: k + 1 }, () => new Array<number>(L + 1).fill(Infinity));
  const cut = Array.from({ length: k + 1 }, () => new Array<number>(L + 1).fill(0));
  best[0]![0] = 0;
  for (let j = 1; j <= k; j++) {
    for (let b = j; b <= L; b++) {
      for (let a = j; a <= b; a++) {
        const v = Math.max(best[j - 1]![a - 1]!, time(a, b));
        if (v < best[j]![b]!) {
          best[j]![b] = v;
          cut[j]![b] = a;
        }
      }
    }
  }
  const partition: Partition = [];
  for (let j = k, b = L; j >= 1; j--) {
    const a = cut[j]![b]!;
    partition.unshift({ layers: { first: a, last: b }, replicas: 1 });
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
  const L = costs.length;
  const stageSeconds = partition.map(({ layers: { first, last } }) => {
    let t = 0;
    for (let l = first; l <= last; l++) t += costs[l - 1]!.stepSeconds;
    return t + (last < L ? costs[last - 1]!.outBytes / linkBytesPerSec : 0);
  });
  const slowest = Math.max(...stageSeconds);
  const total = costs.reduce((t, c) => t + c.stepSeconds, 0);
  return {
    partition,
    stageSeconds,
    bottleneck: stageSeconds.indexOf(slowest),
    samplesPerSec: batchSize / slowest,
    idealSpeedup: total / slowest,
  };
}

/** The plan as lines: each stage's layers and predicted time, then the pace and the bottleneck. */
export function describePlan(plan: Plan): string[] {
  const lines = plan.partition.map(
    (s, i) =>
      `  stage ${i + 1}: ${rangeLabel(s.layers).padEnd(12)} ${(plan.stageSeconds[i]! * 1000).toFixed(1)} ms/batch` +
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
  const rows = (model.readout ? 3 : 2) * nPos;
  const rng = new Rng(cfg.seed);
  const x = Float32Array.from({ length: rows * model.layers[0]! }, () => rng.next());
  const labels = Array.from({ length: nPos }, (_, i) => i % NUM_CLASSES);
  const net = new FFNetwork(model, cfg.optimizer, cfg.seed, train.shards);
  try {
    const seconds: number[][] = model.layers.slice(1).map(() => []);
    for (let s = 0; s <= steps; s++) {
      const out = net.trainBatch(x, nPos, cfg.optimizer.lr, model.readout ? labels : undefined);
      if (s > 0) out.forEach((o, i) => seconds[i]!.push(o.seconds));
    }
    return seconds.map((t, i) => ({
      stepSeconds: t.sort((a, b) => a - b)[Math.floor(t.length / 2)]!,
      outBytes: rows * model.layers[i + 1]! * 4 + (model.readout ? nPos * 4 : 0),
    }));
  } finally {
    net.dispose();
  }
}
