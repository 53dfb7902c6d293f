// The planner's split: the best contiguous partition (checked against every partition there
// is), links charged to the stage that sends, and what it predicts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { partitionName } from '../../src/config/partition.js';
import {
  describePlan,
  planPartition,
  predict,
  type LayerCost,
} from '../../src/coordinator/planner.js';
import { Rng } from '../../src/data/rng.js';

const cost = (ms: number, outBytes = 0): LayerCost => ({ stepSeconds: ms / 1000, outBytes });

/** The slowest stage of every way to cut `costs` into `k` contiguous stages: the least. */
function bruteForce(costs: LayerCost[], k: number, bandwidth: number): number {
  const L = costs.length;
  let best = Infinity;
  const visit = (start: number, left: number, worst: number) => {
    if (left === 0) {
      if (start === L) best = Math.min(best, worst);
      return;
    }
    for (let end = start + 1; end <= L - left + 1; end++) {
      let t = 0;
      for (let i = start; i < end; i++) t += costs[i]!.stepSeconds;
      if (end < L) t += costs[end - 1]!.outBytes / bandwidth;
      visit(end, left - 1, Math.max(worst, t));
    }
  };
  visit(0, k, 0);
  return best;
}

describe('planPartition', () => {
  it('puts the heavy layer alone and groups the light ones', () => {
    const plan = planPartition([cost(30), cost(20), cost(5), cost(5)], 2, 100);
    assert.equal(partitionName(plan.partition), '1,2-4');
    assert.deepEqual(
      plan.stageSeconds.map((s) => Math.round(s * 1000)),
      [30, 30],
    );
    assert.equal(Math.round(plan.samplesPerSec), Math.round(100 / 0.03));
    assert.ok(Math.abs(plan.idealSpeedup - 60 / 30) < 1e-9);
    assert.match(describePlan(plan).join('\n'), /stage 2: layers 2-4 +30\.0 ms\/batch/);
  });

  it('charges a link to the stage that sends, and avoids a slow one', () => {
    // Layer 1's output is large: over a slow link, cutting after it costs more than it saves.
    const costs = [cost(10, 1_000_000), cost(10, 100), cost(10)];
    assert.equal(partitionName(planPartition(costs, 2, 100).partition), '1,2-3');
    const slow = planPartition(costs, 2, 100, 50_000_000); // 20 ms for layer 1's output
    assert.equal(partitionName(slow.partition), '1-2,3');
  });

  it('finds the best of every partition, for random costs', () => {
    const rng = new Rng(7);
    for (let trial = 0; trial < 200; trial++) {
      const L = 1 + Math.floor(rng.next() * 7);
      const costs = Array.from({ length: L }, () => cost(1 + rng.next() * 50, rng.next() * 1e6));
      const k = 1 + Math.floor(rng.next() * L);
      const bandwidth = 1e7 + rng.next() * 1e9;
      const plan = planPartition(costs, k, 100, bandwidth);
      assert.ok(plan.partition.length <= k);
      const slowest = Math.max(...plan.stageSeconds);
      const brute = Math.min(
        ...Array.from({ length: k }, (_, j) => bruteForce(costs, j + 1, bandwidth)),
      );
      assert.ok(Math.abs(slowest - brute) < 1e-12, `trial ${trial}`);
    }
  });

  it('plans fewer stages than layers only when asked for more, or when more would not help', () => {
    assert.equal(planPartition([cost(1), cost(2)], 5, 10).partition.length, 2);
    // Layer 1 sets the pace however the rest is cut: 2 stages do as well as 3.
    assert.equal(
      partitionName(planPartition([cost(50), cost(5), cost(5)], 3, 10).partition),
      '1,2-3',
    );
  });

  it('replicates a heavy layer when replicas are allowed and nodes are left, counting what they move', () => {
    // Layer 2's gradient is large: replicating it (or the whole net) moves more than it saves.
    const heavy = [
      { stepSeconds: 0.04, outBytes: 1000, inBytes: 1000, gradBytes: 1000 },
      { stepSeconds: 0.01, outBytes: 1000, inBytes: 1000, gradBytes: 100_000 },
    ];
    const bw = 10_000_000;
    const any = () => true;
    const plan = (n: number, allowed?: (r: number) => boolean, costs = heavy) =>
      partitionName(planPartition(costs, n, 100, bw, allowed).partition);
    assert.equal(plan(3), '1,2'); // without replicas, 2 stages are all there is
    assert.equal(plan(3, any), '1x2,2');
    assert.equal(plan(5, any), '1x4,2');
    assert.equal(
      plan(5, (r) => 2 % r === 0),
      '1x2,2',
    ); // replicas must divide train.shards 2
    // Over links too slow for layer 1's gradient too, no replicas.
    assert.equal(
      plan(
        3,
        any,
        heavy.map((c) => ({ ...c, gradBytes: 1_000_000 })),
      ),
      '1,2',
    );
    // Free links and cheap gradients: the whole net on three replicas beats any pipeline.
    assert.equal(
      partitionName(
        planPartition(
          heavy.map((c) => ({ ...c, gradBytes: 0 })),
          3,
          100,
          Infinity,
          any,
        ).partition,
      ),
      '1-2x3',
    );
    // What a replicated stage costs: its share of the step, its output, and what its primary
    // moves: the batch to the other replica, its parts in and the sum out.
    const p = { layers: { first: 1, last: 1 }, replicas: 2 };
    const q = { layers: { first: 2, last: 2 }, replicas: 1 };
    const t = predict(heavy, [p, q], 100, bw).stageSeconds[0]!;
    assert.ok(Math.abs(t - (0.02 + 1000 / bw + (1000 + 2 * 1000) / bw)) < 1e-12, `${t}`);
  });
});
