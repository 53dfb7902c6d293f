// --partition and --layer as a user writes them: what they mean, and each mistake named.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { onePerLayer, parsePartition, partitionName } from '../../src/config/partition.js';
import { parseLayerRange, rangeLabel } from '../../src/transport/layer-range.js';

describe('partitions', () => {
  it('reads groups and replicas, and writes them back', () => {
    const p = parsePartition('1,2-3,4x2', 4);
    assert.deepEqual(p, [
      { layers: { first: 1, last: 1 }, replicas: 1 },
      { layers: { first: 2, last: 3 }, replicas: 1 },
      { layers: { first: 4, last: 4 }, replicas: 2 },
    ]);
    assert.equal(partitionName(p), '1,2-3,4x2');
    assert.equal(partitionName(onePerLayer(3)), '1,2,3');
    // Without the network's depth, the partition says it.
    assert.equal(parsePartition('1-2,3-5').at(-1)!.layers.last, 5);
  });

  const bad: [string, number, RegExp][] = [
    ['1,3', 3, /no stage holds layer 2 /],
    ['1-2', 4, /no stage holds layers 3-4 /],
    ['1-2,2-3', 3, /layer 2 is in two stages/],
    ['2-3', 3, /no stage holds layer 1 /],
    ['1-4', 3, /the network has 3 layers, the partition 4/],
    ['1,a', 2, /"a" is not N, FIRST-LAST/],
    ['3-2', 3, /FIRST <= LAST/],
    ['1x0,2', 2, /at least 1 replica/],
    ['', 2, /"" is not N/],
  ];
  for (const [spec, layers, message] of bad) {
    it(`refuses ${JSON.stringify(spec)} for ${layers} layers, saying why`, () => {
      assert.throws(() => parsePartition(spec, layers), { code: 'USAGE', message });
    });
  }

  it('--layer takes N or FIRST-LAST', () => {
    assert.deepEqual(parseLayerRange('2'), { first: 2, last: 2 });
    assert.deepEqual(parseLayerRange('2-3'), { first: 2, last: 3 });
    assert.equal(rangeLabel(parseLayerRange('2-3')), 'layers 2-3');
    assert.equal(rangeLabel(parseLayerRange('4')), 'layer 4');
    for (const text of ['0', '3-2', 'one', '1-', '1.5']) {
      assert.throws(() => parseLayerRange(text), /not a layer or a run of layers/, text);
    }
  });
});
