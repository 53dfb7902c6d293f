// An epoch's tally: the epoch's means per layer, and its curve, points of the means over runs
// of consecutive batches, whatever order the layers' reports come in.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CURVE_POINTS } from '../../src/coordinator/epoch-record.js';
import { EpochTally } from '../../src/coordinator/epoch-tally.js';
import type { TrainReport } from '../../src/coordinator/executor.js';

const TIMING = { stepSeconds: 0.01, waitSeconds: 0, transportSeconds: 0, blockedSeconds: 0 };

function report(layer: number, index: number): TrainReport {
  // Numbers a mean can be checked against by hand: loss = layer * 10 + index.
  const loss = layer * 10 + index;
  return {
    layer,
    epoch: 0,
    index,
    stats: { loss, goodnessPos: 2 * loss, goodnessNeg: loss / 2 },
    timing: TIMING,
  };
}

function tally(batches: number, sizes: (i: number) => number): EpochTally {
  const t = new EpochTally(2, 0, batches);
  for (let i = 0; i < batches; i++) {
    t.sizes[i] = sizes(i);
    t.lrs[i] = 0.1 - i * 0.001;
  }
  return t;
}

describe('epoch tally', () => {
  it('a point per run of batches, sample-weighted means, the run’s last learning rate', () => {
    const batches = 3 * CURVE_POINTS - 10; // 140: 47 points of 3 batches, the last of 2
    const t = tally(batches, (i) => (i === batches - 1 ? 50 : 100));
    // Layer 2's reports first, then layer 1's, each in batch order (two connections).
    for (const layer of [2, 1]) for (let i = 0; i < batches; i++) t.add(report(layer, i));
    const r = t.record(2, 0.05);
    assert.equal(r.curve.length, Math.ceil(batches / 3));
    assert.deepEqual(
      r.curve.slice(0, 2).map((p) => p.batch),
      [3, 6],
    );
    // Batches 0..2, equal sizes: layer 1's losses 10, 11, 12.
    assert.equal(r.curve[0]!.layers[0]!.loss, 11);
    assert.equal(r.curve[0]!.layers[1]!.goodnessPos, 2 * 21);
    assert.equal(r.curve[0]!.lr, 0.1 - 2 * 0.001);
    // The last point: batches 138 (100 samples) and 139 (50).
    const last = r.curve.at(-1)!;
    assert.equal(last.batch, batches);
    assert.equal(last.layers[0]!.loss, (100 * (10 + 138) + 50 * (10 + 139)) / 150);
    // The epoch's means are the same sums.
    const samples = 100 * (batches - 1) + 50;
    let sum = 0;
    for (let i = 0; i < batches; i++) sum += (i === batches - 1 ? 50 : 100) * (10 + i);
    assert.equal(r.layers[0]!.loss, sum / samples);
  });

  it('one point per batch for short epochs; none for a run a layer has not finished', () => {
    const t = tally(7, () => 10);
    for (let i = 0; i < 7; i++) t.add(report(1, i));
    for (let i = 0; i < 4; i++) t.add(report(2, i));
    const r = t.record(1, 0.1);
    assert.deepEqual(
      r.curve.map((p) => p.batch),
      [1, 2, 3, 4],
    );
    assert.equal(r.curve[3]!.layers[1]!.loss, 23);
    // A report twice counts once.
    assert.equal(t.add(report(1, 0)), 'duplicate');
  });
});
