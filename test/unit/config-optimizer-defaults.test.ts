// The optimizer's defaults have one home (core/optimizer.ts); the run config starts from a copy.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_CONFIG } from '../../src/config/config.js';
import { DEFAULT_OPTIMIZER } from '../../src/core/optimizer.js';

describe('DEFAULT_CONFIG.optimizer', () => {
  it('is a copy of DEFAULT_OPTIMIZER, not the same object', () => {
    assert.deepEqual(DEFAULT_CONFIG.optimizer, DEFAULT_OPTIMIZER);
    assert.notEqual(DEFAULT_CONFIG.optimizer, DEFAULT_OPTIMIZER, 'a run config may be edited');
  });
});
