// What a primary takes from its replicas (and a replica from its primary) on an exchange socket:
// only parts and updates of the shapes its layer expects; junk is never taken, so never fails a
// step.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { partsFit, updateFits } from '../../src/stage/replicas.js';
import type { PartsMessage, UpdateMessage, WeightsTensor } from '../../src/transport/wire.js';

const dims = { inDim: 4, outDim: 3 };
const t = (...shape: number[]): WeightsTensor => ({
  shape,
  data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
});
/** Shard 1 of a batch whose shard 1 has 2 positive rows (4 rows with its negatives). */
const part = (over: Record<string, WeightsTensor | undefined> = {}): PartsMessage => ({
  type: 'parts',
  run: 'r',
  seq: 0,
  layer: 2,
  replica: 2,
  tensors: Object.fromEntries(
    Object.entries({
      '1.h': t(4, 3),
      '1.g': t(4),
      '1.loss': t(1),
      '1.dw': t(3, 4),
      '1.db': t(3),
      ...over,
    }).filter((e): e is [string, WeightsTensor] => e[1] !== undefined),
  ),
});

describe('exchange messages', () => {
  const sizes = [3, 2];
  it('takes parts of the shards and shapes expected, and nothing else', () => {
    assert.ok(partsFit(part(), [1], sizes, dims));
    assert.ok(!partsFit(part(), [0, 1], sizes, dims), 'shard 0 missing');
    assert.ok(!partsFit(part({ '1.dw': t(4, 3) }), [1], sizes, dims), 'dw transposed');
    assert.ok(!partsFit(part({ '1.h': t(6, 3) }), [1], sizes, dims), 'rows of another shard');
    assert.ok(!partsFit(part({ '1.loss': undefined }), [1], sizes, dims), 'no loss');
    assert.ok(!partsFit(part(), [1], [3, 2], { inDim: 5, outDim: 3 }), 'another layer');
  });

  it('takes updates of the layer shape only', () => {
    const update = (dw: WeightsTensor, db: WeightsTensor): UpdateMessage => ({
      type: 'update',
      run: 'r',
      seq: 0,
      layer: 2,
      tensors: { dw, db },
    });
    assert.ok(updateFits(update(t(3, 4), t(3)), dims));
    assert.ok(!updateFits(update(t(3, 4, 1), t(3)), dims));
    assert.ok(!updateFits(update(t(3, 4), t(4)), dims));
    assert.ok(!updateFits({ ...update(t(3, 4), t(3)), tensors: {} }, dims));
  });
});
