// What a primary takes from its replicas (and a replica from its primary) on an exchange socket:
// only parts and updates of the shapes its layer expects; junk is never taken, so never fails a
// step. The shapes are each layer's own (an FF layer's gradient, a conv layer's kernel and
// BatchNorm statistics).
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { initBackend } from '../../src/backend/backend.js';
import { CompetitiveLayer } from '../../src/core/competitive-layer.js';
import { FFLayer } from '../../src/core/ff-layer.js';
import { DEFAULT_OPTIMIZER } from '../../src/core/optimizer.js';
import { partsFit, updateFits } from '../../src/stage/replicas.js';
import type { PartsMessage, UpdateMessage, WeightsTensor } from '../../src/transport/wire.js';

await initBackend('cpu');

const ffLayer = (inDim: number, outDim: number) =>
  new FFLayer(
    { inDim, outDim, goodness: 'mean', negate: false, threshold: 1, normEps: 1e-8, seed: 1 },
    DEFAULT_OPTIMIZER,
  );
const dims = ffLayer(4, 3);
const wider = ffLayer(5, 3);
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
    assert.ok(!partsFit(part(), [1], [3, 2], wider), 'another layer');
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

describe('exchange messages of a conv (competitive) layer', () => {
  // 4x4 images of 10 channels to 20 channels of 3x3 in 10 groups, pooled to 2x2: the kernel is
  // [10 groups, 3 * 3 * 1, 2], a row [2, 2, 20].
  const layer = new CompetitiveLayer(
    {
      inShape: [4, 4, 10],
      spec: { conv: 20, kernel: 3, padding: 1, groups: 10, pool: 2 },
      alpha: 1,
      seed: 1,
      shards: 2,
    },
    DEFAULT_OPTIMIZER,
  );
  after(() => {
    for (const l of [layer, dims, wider]) l.dispose();
  });
  const terms = (k: number, over: Record<string, WeightsTensor | undefined> = {}) => ({
    [`${k}.kernel`]: t(10, 9, 2),
    [`${k}.bias`]: t(20),
    [`${k}.gamma`]: t(20),
    [`${k}.beta`]: t(20),
    [`${k}.mean`]: t(20),
    [`${k}.var`]: t(20),
    ...over,
  });
  const msg = (over: Record<string, WeightsTensor | undefined> = {}): PartsMessage => ({
    type: 'parts',
    run: 'r',
    seq: 0,
    layer: 2,
    replica: 2,
    tensors: Object.fromEntries(
      Object.entries({
        '1.h': t(2, 2 * 2 * 20),
        '1.g': t(4),
        '1.loss': t(1),
        ...terms(1, over),
      }).filter((e): e is [string, WeightsTensor] => e[1] !== undefined),
    ),
  });

  it('takes parts with one row per image, the kernel in its layout and the statistics', () => {
    const sizes = [2, 2];
    assert.ok(partsFit(msg(), [1], sizes, layer));
    assert.ok(!partsFit(msg({ '1.var': undefined }), [1], sizes, layer), 'no variance');
    assert.ok(
      !partsFit(msg({ '1.kernel': t(20, 2, 3, 3) }), [1], sizes, layer),
      "PyTorch's layout",
    );
    assert.ok(!partsFit(msg(), [1], [3, 3], layer), 'rows of another batch');
    assert.ok(!partsFit(msg(), [1], sizes, dims), 'an FF layer');
  });

  it('takes updates with every tensor the layer applies', () => {
    const update = (tensors: Record<string, WeightsTensor>): UpdateMessage => ({
      type: 'update',
      run: 'r',
      seq: 0,
      layer: 2,
      tensors,
    });
    const whole = Object.fromEntries(
      Object.entries(terms(0)).map(([k, v]) => [k.slice(2), v]),
    ) as Record<string, WeightsTensor>;
    assert.ok(updateFits(update(whole), layer));
    const noMean = { ...whole };
    delete noMean.mean;
    assert.ok(!updateFits(update(noMean), layer));
    assert.ok(!updateFits(update({ dw: t(20, 40), db: t(20) }), layer));
  });
});
