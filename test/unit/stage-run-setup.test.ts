// A stage's run set-up without sockets: what it refuses in a config (by code and reason), the
// layer it builds (fresh from the seed, or the checkpoint's state) and the one it keeps to
// evaluate.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { initBackend } from '../../src/backend/backend.js';
import { DEFAULT_CONFIG } from '../../src/config/config.js';
import { FFNetwork, layerPrefix, layerTensors, type Layer } from '../../src/core/ff-network.js';
import { StageError } from '../../src/stage/errors.js';
import { largestDataMessage, setUpRun } from '../../src/stage/run-setup.js';
import { MAX_HEADER_BYTES } from '../../src/transport/bounds.js';
import type { ConfigMessage } from '../../src/transport/wire.js';

const MODEL = { ...DEFAULT_CONFIG.model, layers: [20, 8, 6] };
const TWO = { first: 2, last: 2 };

function config(over: Partial<ConfigMessage> = {}): ConfigMessage {
  return {
    type: 'config',
    run: 'r1',
    layer: 2,
    last: 2,
    replica: 1,
    replicas: 1,
    replicaEndpoints: [],
    replicaExchanges: [],
    replicaKeys: [],
    numLayers: 2,
    model: MODEL,
    optimizer: DEFAULT_CONFIG.optimizer,
    seed: 5,
    next: null,
    nextKey: '',
    prevKey: '',
    batchSize: 10,
    evalBatchSize: 10,
    shards: 1,
    linkTimeoutMs: 1000,
    mode: 'train',
    state: {},
    optimizerStep: 0,
    origin: null,
    ...over,
  };
}

/** The StageError setUpRun throws for `cfg`: its code and message. */
function refusal(cfg: ConfigMessage, layer = 2): { code: string; message: string } {
  try {
    for (const l of setUpRun(cfg, { first: layer, last: layer }, null)) l.dispose();
  } catch (err) {
    assert.ok(err instanceof StageError, String(err));
    return { code: err.code, message: err.message };
  }
  return assert.fail('setUpRun accepted it');
}

/** A layer's weight, as saved. */
function weightOf(layer: Layer): Float32Array {
  return layer.exportState('l', false).get('l.weight')!.data;
}

describe('setUpRun', () => {
  before(async () => {
    await initBackend('wasm', { threads: 1 });
  });

  it("builds the layer a run starts from: the seed's, as the single-process network builds it", () => {
    const [layer] = setUpRun(config(), TWO, null);
    const net = new FFNetwork(MODEL, DEFAULT_CONFIG.optimizer, 5);
    try {
      assert.deepEqual(weightOf(layer!), weightOf(net.layers[1]!));
      assert.equal(layer!.steps, 0);
    } finally {
      layer!.dispose();
      net.dispose();
    }
  });

  it('builds every layer of a group, each as the single-process network builds it', () => {
    const model = { ...MODEL, layers: [20, 8, 6, 5] };
    const group = setUpRun(
      config({ layer: 2, last: 3, numLayers: 3, model }),
      { first: 2, last: 3 },
      null,
    );
    const net = new FFNetwork(model, DEFAULT_CONFIG.optimizer, 5);
    try {
      assert.equal(group.length, 2);
      assert.deepEqual(weightOf(group[0]!), weightOf(net.layers[1]!));
      assert.deepEqual(weightOf(group[1]!), weightOf(net.layers[2]!));
      assert.throws(() => setUpRun(config({ layer: 2, last: 3, numLayers: 3, model }), TWO, null), {
        code: 'STAGE_BAD_CONFIG',
        message: /layer 2: config of run r1: it is for layers 2-3/,
      });
    } finally {
      for (const l of group) l.dispose();
      net.dispose();
    }
  });

  it("resumes from the checkpoint's state: its tensors and step count", () => {
    const net = new FFNetwork(MODEL, DEFAULT_CONFIG.optimizer, 9);
    const state = Object.fromEntries(layerTensors(net.exportState(true), 1));
    const [layer] = setUpRun(config({ state, optimizerStep: 42 }), TWO, null);
    try {
      assert.deepEqual(weightOf(layer!), weightOf(net.layers[1]!));
      assert.equal(layer!.steps, 42);
    } finally {
      layer!.dispose();
      net.dispose();
    }
  });

  it('keeps the layer it holds to evaluate, and refuses to evaluate another shape or none', () => {
    const held = setUpRun(config(), TWO, null);
    try {
      assert.deepEqual(setUpRun(config({ mode: 'eval' }), TWO, held), held);
      const other = { ...MODEL, layers: [20, 8, 7] };
      assert.throws(() => setUpRun(config({ mode: 'eval', model: other }), TWO, held), {
        code: 'STAGE_NO_WEIGHTS',
        message: 'layer 2: asked to evaluate 8-7, but this stage holds 8-6',
      });
      assert.deepEqual(refusal(config({ mode: 'eval' })), {
        code: 'STAGE_NO_WEIGHTS',
        message: 'layer 2: asked to evaluate 8-6, but this stage holds no trained layer',
      });
    } finally {
      for (const l of held) l.dispose();
    }
  });

  const bad: [string, Partial<ConfigMessage>, RegExp][] = [
    ['another layer', { layer: 1, last: 1 }, /config of run r1: it is for layer 1/],
    ['fewer layers', { numLayers: 1 }, /numLayers 1 < this stage's/],
    ['a downstream for the last', { next: 'tcp://127.0.0.1:1' }, /next is tcp:.* for layer 2 of 2/],
    ['a model without the layer', { model: { ...MODEL, layers: [20, 8] } }, /has no layer 2/],
    ['a bad model key', { model: { ...MODEL, goodness: 'max' } }, /model\.goodness must be one of/],
    ['an unknown optimizer key', { optimizer: { ...DEFAULT_CONFIG.optimizer, x: 1 } }, /unknown/],
    ['batches beyond memory', { batchSize: 30_000_000 }, /a batch of 30000000 needs about/],
  ];
  for (const [what, over, reason] of bad) {
    it(`refuses a config with ${what} (STAGE_BAD_CONFIG)`, () => {
      const r = refusal(config(over));
      assert.equal(r.code, 'STAGE_BAD_CONFIG');
      assert.match(r.message, reason);
    });
  }

  it('refuses a resume state that does not fit the layer (STAGE_BAD_STATE)', () => {
    const state = { [`${layerPrefix(1)}.weight`]: { shape: [6, 9], data: new Float32Array(54) } };
    const r = refusal(config({ state }));
    assert.equal(r.code, 'STAGE_BAD_STATE');
    assert.match(r.message, /cannot resume: tensor "layers\.1\.weight" is \[6, 9\]/);
  });

  it("bounds the run's largest data message: a readout batch or an eval batch, plus a header", () => {
    const cfg = config({ batchSize: 100, evalBatchSize: 50 });
    // 3 x 100 rows (pos, neg, neutral) < 10 x 50 overlaid eval rows.
    assert.equal(largestDataMessage(cfg, 8), 500 * 8 * 4 + 100 * 4 + MAX_HEADER_BYTES);
  });
});
