// LayerOptimizer on the pure-JS cpu backend: the fused JS loop over the whole weight (no SIMD
// kernel here) against the tfjs-ops path, bit for bit, flushes included. A process chooses its
// backend once, so this lives apart from core-ff-layer.test.ts (wasm).
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../src/backend/backend.js';
import { DEFAULT_OPTIMIZER, type OptimizerConfig } from '../../src/core/optimizer.js';
import {
  assertFlushed,
  assertSameBits,
  FLUSH_STEPS,
  runFlushScenario,
} from '../helpers/optimizer-paths.js';

before(async () => {
  assert.equal((await initBackend('cpu')).name, 'cpu');
});

describe('LayerOptimizer on the cpu backend', () => {
  const cases: OptimizerConfig[] = [
    { ...DEFAULT_OPTIMIZER, type: 'adam', lr: 0.01, weightDecay: 0.1 },
    { ...DEFAULT_OPTIMIZER, type: 'adamw', lr: 0.01, weightDecay: 0.1 },
    { ...DEFAULT_OPTIMIZER, type: 'sgd', lr: 0.1, momentum: 0.9, weightDecay: 0.1 },
  ];
  for (const opt of cases) {
    it(`${opt.type}: the JS loop and the tfjs-ops path give the same bits`, () => {
      const fused = runFlushScenario(opt, 'fused');
      const ops = runFlushScenario(opt, 'ops');
      assert.deepEqual(fused.inPlace, Array<boolean>(FLUSH_STEPS).fill(true), 'fused path ran');
      const names = opt.type === 'sgd' ? ['p', 'momentum'] : ['p', 'm', 'v'];
      names.forEach((name, i) => assertSameBits(fused.values[i]!, ops.values[i]!, name));
      assertFlushed(fused, opt);
      assert.equal(tf.getBackend(), 'cpu');
    });
  }
});
