// The run configuration: one test per validation rule, defaults, precedence, --set parsing, and
// every shipped config file.
import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  ConfigError,
  DEFAULT_CONFIG,
  loadConfig,
  mergeConfig,
  parseSetOverrides,
  validateConfig,
  validateSection,
  type RunConfig,
} from '../../src/config/config.js';
import { ROOT } from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

/** A deep copy of the defaults with `over` merged in, as loadConfig would see it. */
function withDefaults(over: unknown): unknown {
  return mergeConfig(structuredClone(DEFAULT_CONFIG), over);
}

/** Asserts validateConfig rejects `over` (merged into the defaults) with this code/key/message. */
function assertRejected(over: unknown, code: string, key: string, message: RegExp): void {
  assert.throws(
    () => validateConfig(withDefaults(over)),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `not a ConfigError: ${String(err)}`);
      assert.equal(err.code, code);
      assert.equal(err.key, key);
      assert.match(err.message, message);
      return true;
    },
  );
}

const tmp = tempDir('config');

async function configFile(name: string, content: unknown): Promise<string> {
  const file = tmp(name);
  await writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

describe('validateConfig', () => {
  it('accepts the defaults unchanged', () => {
    assert.deepEqual(validateConfig(structuredClone(DEFAULT_CONFIG)), DEFAULT_CONFIG);
  });

  it('names an unknown key, top level or in a section, and lists the known ones', () => {
    // Unknown keys are usually typos; the message must point at the exact key.
    assertRejected({ epochs: 3 }, 'CONFIG_UNKNOWN_KEY', 'epochs', /unknown config key "epochs"/);
    assertRejected(
      { train: { batchsize: 50 } },
      'CONFIG_UNKNOWN_KEY',
      'train.batchsize',
      /unknown config key "train\.batchsize" \(known here: epochs, batchSize, cooldown, evalEvery, shards\)/,
    );
  });

  it('names the key and the value of the wrong type', () => {
    assertRejected(
      { train: { epochs: '3' } },
      'CONFIG_INVALID',
      'train.epochs',
      /^train\.epochs must be an integer from 1 to 1000000; got "3"$/,
    );
    assertRejected(
      { model: { negate: 'yes' } },
      'CONFIG_INVALID',
      'model.negate',
      /must be true or false; got "yes"/,
    );
    assertRejected({ name: '' }, 'CONFIG_INVALID', 'name', /a non-empty string; got ""/);
    assertRejected({ train: 5 }, 'CONFIG_INVALID', 'train', /train must be an object; got 5/);
  });

  it('rejects a batch size that is not a positive integer', () => {
    for (const v of [-1, 0, 1.5]) {
      assertRejected(
        { train: { batchSize: v } },
        'CONFIG_INVALID',
        'train.batchSize',
        new RegExp(`an integer from 1 to 1000000; got ${v}$`),
      );
    }
  });

  it('checks number ranges, with exclusive lower bounds where zero makes no sense', () => {
    assertRejected({ optimizer: { lr: 0 } }, 'CONFIG_INVALID', 'optimizer.lr', /a learning rate/);
    assertRejected(
      { optimizer: { beta1: 1.5 } },
      'CONFIG_INVALID',
      'optimizer.beta1',
      /a number >= 0 and <= 0\.999999; got 1\.5/,
    );
    assertRejected({ model: { normEps: 0 } }, 'CONFIG_INVALID', 'model.normEps', /> 0/);
    assertRejected({ train: { cooldown: -0.1 } }, 'CONFIG_INVALID', 'train.cooldown', />= 0/);
    // A negative threshold is legal: negated goodness is negative.
    assert.equal(validateConfig(withDefaults({ model: { threshold: -2 } })).model.threshold, -2);
  });

  it('refuses absurd values up front, naming the bound', () => {
    // What an outside probe ran: each trained to NaN weights, or never ends.
    const absurd: [Record<string, unknown>, string, RegExp][] = [
      [
        { optimizer: { lr: 1e308 } },
        'optimizer.lr',
        /a learning rate from 1\.1754943508222875e-38 to 10; got 1e\+308$/,
      ],
      [{ optimizer: { lr: 1e-45 } }, 'optimizer.lr', /a learning rate/],
      [{ train: { epochs: 1e308 } }, 'train.epochs', /an integer from 1 to 1000000; got 1e\+308$/],
      [{ model: { normEps: 3 } }, 'model.normEps', /a number > 0 and <= 0\.01; got 3$/],
      [{ model: { threshold: Infinity } }, 'model.threshold', /a finite number; got null$/],
      [{ optimizer: { beta2: 1 } }, 'optimizer.beta2', /<= 0\.999999; got 1$/],
      [{ seed: 2 ** 40 }, 'seed', /an integer from 0 to 2147483647/],
      [{ model: { layers: [784, 1e7] } }, 'model.layers[1]', /a width from 1 to 1000000/],
    ];
    for (const [over, key, message] of absurd) assertRejected(over, 'CONFIG_INVALID', key, message);
    assert.equal(validateConfig(withDefaults({ optimizer: { lr: 10 } })).optimizer.lr, 10);
  });

  it('lists the allowed values of an enum', () => {
    assertRejected(
      { optimizer: { type: 'rmsprop' } },
      'CONFIG_INVALID',
      'optimizer.type',
      /one of adam, adamw, sgd; got "rmsprop"/,
    );
    assertRejected(
      { model: { goodness: 'max' } },
      'CONFIG_INVALID',
      'model.goodness',
      /one of mean, sum/,
    );
    assertRejected(
      { data: { dataset: 'imagenet' } },
      'CONFIG_INVALID',
      'data.dataset',
      /one of mnist, fashion-mnist, fashion-mnist-sample, cifar10/,
    );
  });

  it('requires model.layers to be the input and at least one layer, each entry named', () => {
    for (const v of [[784], [], '784,100']) {
      assertRejected({ model: { layers: v } }, 'CONFIG_INVALID', 'model.layers', /2 to 1001/);
    }
    for (const v of [
      [784, 0],
      [784, 1.5],
      [784, -10],
    ]) {
      assertRejected(
        { model: { layers: v } },
        'CONFIG_INVALID',
        'model.layers[1]',
        /a width from 1 to 1000000/,
      );
    }
    assertRejected(
      { model: { layers: [784, '100'] } },
      'CONFIG_INVALID',
      'model.layers[1]',
      /a width, an image \[channels, height, width\] or a conv layer; got "100"/,
    );
    assert.deepEqual(
      validateConfig(withDefaults({ model: { layers: [4, 3] } })).model.layers,
      [4, 3],
    );
  });

  it('rejects eval.skipFirst with a single layer (nothing would be left to sum)', () => {
    assertRejected(
      { model: { layers: [784, 100] }, eval: { skipFirst: true } },
      'CONFIG_INVALID',
      'eval.skipFirst',
      /false when the model has a single layer/,
    );
    const ok = validateConfig(
      withDefaults({ model: { layers: [784, 100, 100] }, eval: { skipFirst: true } }),
    );
    assert.equal(ok.eval.skipFirst, true);
  });

  it('takes conv layers after an image input, with loss competitive, naming a bad entry', () => {
    const conv = (over: Record<string, unknown> = {}) => ({
      conv: 20,
      kernel: 3,
      padding: 1,
      ...over,
    });
    const model = {
      layers: [[1, 28, 28], conv(), conv({ conv: 40, groups: 10, pool: 2 }), 10],
      loss: 'competitive',
    };
    const ok = validateConfig(withDefaults({ model }));
    assert.deepEqual(ok.model.layers, model.layers);
    assertRejected(
      { model: { ...model, loss: 'threshold' } },
      'CONFIG_INVALID',
      'model.loss',
      /'competitive' in a model with conv layers/,
    );
    assertRejected(
      { model: { ...model, layers: [[1, 28, 28], conv({ kernal: 3 })] } },
      'CONFIG_UNKNOWN_KEY',
      'model.layers[1].kernal',
      /known here: conv, kernel, stride, padding, pool, groups/,
    );
    assertRejected(
      { model: { ...model, layers: [[1, 28, 28], conv({ stride: 0 })] } },
      'CONFIG_INVALID',
      'model.layers[1].stride',
      /an integer from 1 to 64/,
    );
    assertRejected(
      { model: { ...model, layers: [[1, 28, 28], conv({ conv: 25 })] } },
      'CONFIG_INVALID',
      'model.layers[1]',
      /split into 10 class groups/,
    );
    assertRejected(
      { model: { ...model, layers: [[1, 4, 4], conv({ kernel: 7, padding: 0 })] } },
      'CONFIG_INVALID',
      'model.layers',
      /layer 1: a 7x7 kernel does not fit a 4x4 input/,
    );
    assertRejected(
      { model: { ...model, layers: [[1, 28, 28], 100, conv()] } },
      'CONFIG_INVALID',
      'model.layers',
      /layer 2: a conv layer cannot follow a dense one/,
    );
    assertRejected(
      { model: { ...model, layers: [[1, 28, 28], conv({ groups: 3 })] } },
      'CONFIG_INVALID',
      'model.layers',
      /its 3 groups must divide its 1 input and 20 output channels/,
    );
    assertRejected(
      { model: { ...model, layers: [784, [1, 28, 28]] } },
      'CONFIG_INVALID',
      'model.layers[1]',
      /first an image/,
    );
    // Shards of a competitive model: each normalised on its own (ghost batch norm).
    assert.equal(validateConfig(withDefaults({ model, train: { shards: 2 } })).train.shards, 2);
    assertRejected(
      { model: { ...model, readout: true } },
      'CONFIG_INVALID',
      'model.readout',
      /false with loss 'competitive'/,
    );
  });

  it("eval.combine 'fit' needs held-out training images to fit on", () => {
    assertRejected(
      { eval: { combine: 'fit' } },
      'CONFIG_INVALID',
      'eval.combine',
      /'sum' unless data.heldout holds images out to fit on/,
    );
    const ok = validateConfig(withDefaults({ data: { heldout: 5000 }, eval: { combine: 'fit' } }));
    assert.equal(ok.eval.combine, 'fit');
  });

  it('train.shards: 1 to 1024, and 1 with peer normalisation or readouts', () => {
    assert.equal(validateConfig(withDefaults({})).train.shards, 1);
    assert.equal(validateConfig(withDefaults({ train: { shards: 4 } })).train.shards, 4);
    assertRejected({ train: { shards: 0 } }, 'CONFIG_INVALID', 'train.shards', /from 1 to 1024/);
    assertRejected(
      { train: { shards: 2 }, model: { peerNorm: { weight: 0.1, decay: 0.9 } } },
      'CONFIG_INVALID',
      'train.shards',
      /1 with model.peerNorm/,
    );
    assertRejected(
      { train: { shards: 2 }, model: { readout: true } },
      'CONFIG_INVALID',
      'train.shards',
      /1 with model.readout/,
    );
  });

  it('refuses hard negatives and the readout rule without readouts, a bad peerNorm or loss', () => {
    assertRejected(
      { negatives: { kind: 'hard' } },
      'CONFIG_INVALID',
      'negatives.kind',
      /'uniform' unless model.readout is true/,
    );
    assertRejected(
      { eval: { rule: 'readout' } },
      'CONFIG_INVALID',
      'eval.rule',
      /'goodness' unless model.readout is true/,
    );
    assertRejected(
      { model: { peerNorm: { weight: 0.1, decay: 2 } } },
      'CONFIG_INVALID',
      'model.peerNorm.decay',
      /<= 1/,
    );
    assertRejected(
      { model: { peerNorm: { weight: 0.1, decay: 0.9, wieght: 1 } } },
      'CONFIG_UNKNOWN_KEY',
      'model.peerNorm.wieght',
      /known here: weight, decay/,
    );
    assertRejected({ model: { loss: 'hinge' } }, 'CONFIG_INVALID', 'model.loss', /symba/);
    assertRejected({ model: { loss: 'symba', alpha: 0 } }, 'CONFIG_INVALID', 'model.alpha', />/);
    const ok = validateConfig(
      withDefaults({
        model: { readout: true, loss: 'symba', alpha: 0.05 },
        negatives: { kind: 'hard' },
        eval: { rule: 'readout' },
      }),
    );
    assert.equal(ok.negatives.kind, 'hard');
    assert.equal(ok.model.loss, 'symba');
  });

  it('takes eval.layers as distinct layer numbers of the model, not with skipFirst', () => {
    const ok = validateConfig(withDefaults({ eval: { layers: [1] } }));
    assert.deepEqual(ok.eval.layers, [1]);
    assertRejected({ eval: { layers: [3] } }, 'CONFIG_INVALID', 'eval.layers', /from 1 to 2/);
    assertRejected({ eval: { layers: [0] } }, 'CONFIG_INVALID', 'eval.layers', /layer numbers/);
    assertRejected({ eval: { layers: [1, 1] } }, 'CONFIG_INVALID', 'eval.layers', /repeats/);
    assertRejected(
      { eval: { layers: [2], skipFirst: true } },
      'CONFIG_INVALID',
      'eval.skipFirst',
      /false when eval.layers names the layers/,
    );
  });

  it("takes one loss per layer, with 'softmax' on the first layer only", () => {
    const ok = validateConfig(withDefaults({ model: { loss: ['softmax', 'threshold'] } }));
    assert.deepEqual(ok.model.loss, ['softmax', 'threshold']);
    assertRejected(
      { model: { loss: ['softmax'] } },
      'CONFIG_INVALID',
      'model.loss',
      /one loss per layer \(2\)/,
    );
    assertRejected(
      { model: { loss: ['threshold', 'softmax'] } },
      'CONFIG_INVALID',
      'model.loss',
      /'softmax' on the first layer only .* layer 2 has it/,
    );
    // A single 'softmax' means every layer: refused for a model of two.
    assertRejected({ model: { loss: 'softmax' } }, 'CONFIG_INVALID', 'model.loss', /layer 2/);
    assertRejected(
      { model: { loss: ['softmax', 'hinge'] } },
      'CONFIG_INVALID',
      'model.loss[1]',
      /one of threshold, symba, softmax/,
    );
    assertRejected(
      { model: { loss: [] } },
      'CONFIG_INVALID',
      'model.loss',
      /or a list of threshold, symba, softmax/,
    );
    // A stage checks the section it is sent under the same rules.
    assert.throws(
      () => validateSection('model', { ...DEFAULT_CONFIG.model, loss: ['threshold', 'softmax'] }),
      /'softmax' on the first layer only/,
    );
    assert.equal(
      validateConfig(withDefaults({ model: { layers: [784, 500], loss: 'softmax' } })).model.loss,
      'softmax',
    );
  });
});

describe('validateSection (what a stage checks in its config message)', () => {
  it('accepts a whole model and optimizer section', () => {
    assert.deepEqual(validateSection('model', DEFAULT_CONFIG.model), DEFAULT_CONFIG.model);
    assert.deepEqual(
      validateSection('optimizer', DEFAULT_CONFIG.optimizer),
      DEFAULT_CONFIG.optimizer,
    );
  });

  it('refuses a missing key, an unknown key and a bad value, naming the key', () => {
    const noThreshold: Record<string, unknown> = { ...DEFAULT_CONFIG.model };
    delete noThreshold.threshold;
    assert.throws(() => validateSection('model', noThreshold), {
      code: 'CONFIG_INVALID',
      message: 'model.threshold must be present; got undefined',
    });
    assert.throws(() => validateSection('model', { ...DEFAULT_CONFIG.model, depth: 3 }), {
      code: 'CONFIG_UNKNOWN_KEY',
      key: 'model.depth',
    });
    assert.throws(() => validateSection('optimizer', { ...DEFAULT_CONFIG.optimizer, lr: -1 }), {
      code: 'CONFIG_INVALID',
      key: 'optimizer.lr',
    });
    assert.throws(() => validateSection('model', null), { code: 'CONFIG_INVALID', key: 'model' });
  });
});

describe('loadConfig', () => {
  it('fills every default when there is no file and no override', async () => {
    assert.deepEqual(await loadConfig(undefined), DEFAULT_CONFIG);
  });

  it('reads a file that starts with a byte order mark', async () => {
    const file = await configFile('bom.json', '\uFEFF{ "train": { "epochs": 4 } }');
    assert.equal((await loadConfig(file)).train.epochs, 4);
  });

  it('refuses a key given twice in one object, naming where, not keeping the last', async () => {
    const cases: [string, string][] = [
      ['{ "seed": 1, "seed": 2 }', 'seed'],
      ['{ "optimizer": { "lr": 0.1, "type": "sgd", "lr": 0.003 } }', 'optimizer.lr'],
      ['{ "model": { "layers": [784, 10] }, "model": { "layers": [784, 20] } }', 'model'],
    ];
    for (const [text, key] of cases) {
      const file = await configFile('twice.json', text);
      await assert.rejects(loadConfig(file), (err: ConfigError) => {
        assert.equal(err.code, 'CONFIG_INVALID');
        assert.equal(err.key, key);
        assert.match(
          err.message,
          new RegExp(`twice\\.json: key "${key.replace('.', '\\.')}" is given twice`),
        );
        return true;
      });
    }
    // The same key in different objects is no duplicate, nor one inside a string.
    const ok = await configFile(
      'fine.json',
      '{ "name": "a \\"seed\\": 3, \\"seed\\"", "model": { "peerNorm": { "weight": 0, "decay": 0.9 } }, "seed": 5 }',
    );
    assert.equal((await loadConfig(ok)).seed, 5);
  });

  it('fills the keys a file leaves out, section by section', async () => {
    const file = await configFile('partial.json', { train: { epochs: 3 }, seed: 9 });
    const cfg = await loadConfig(file);
    assert.equal(cfg.train.epochs, 3);
    assert.equal(cfg.seed, 9);
    assert.equal(cfg.train.batchSize, DEFAULT_CONFIG.train.batchSize, 'sibling key kept');
    assert.deepEqual(cfg.optimizer, DEFAULT_CONFIG.optimizer, 'untouched section kept');
  });

  it('applies overrides over the file, and arrays replace rather than merge', async () => {
    // defaults < file < overrides (the CLI passes flags and --set as overrides).
    const file = await configFile('base.json', {
      model: { layers: [784, 500, 500, 500], threshold: 2 },
      train: { epochs: 3, batchSize: 50 },
    });
    const cfg = await loadConfig(file, { model: { layers: [784, 20] }, train: { epochs: 7 } });
    assert.deepEqual(cfg.model.layers, [784, 20]);
    assert.equal(cfg.model.threshold, 2, 'file value where no override');
    assert.equal(cfg.train.epochs, 7, 'override wins over the file');
    assert.equal(cfg.train.batchSize, 50, 'file wins over the default');
    assert.equal(cfg.train.cooldown, DEFAULT_CONFIG.train.cooldown);
  });

  it("starts from a given base (a checkpoint's config) instead of the defaults", async () => {
    const base: RunConfig = {
      ...DEFAULT_CONFIG,
      seed: 42,
      model: { ...DEFAULT_CONFIG.model, layers: [784, 64, 32] },
      train: { ...DEFAULT_CONFIG.train, epochs: 5 },
    };
    const file = await configFile('over-base.json', { train: { epochs: 8 } });
    const cfg = await loadConfig(file, { optimizer: { lr: 0.5 } }, base);
    assert.deepEqual(cfg.model.layers, [784, 64, 32], 'from the base');
    assert.equal(cfg.seed, 42, 'from the base');
    assert.equal(cfg.train.epochs, 8, 'the file wins over the base');
    assert.equal(cfg.optimizer.lr, 0.5, 'overrides win over both');
    assert.deepEqual((await loadConfig(undefined, {}, base)).model.layers, [784, 64, 32]);
  });

  it('reports a bad key in the file against the file', async () => {
    const file = await configFile('typo.json', { optimizer: { learningRate: 0.1 } });
    await assert.rejects(loadConfig(file), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, 'CONFIG_UNKNOWN_KEY');
      assert.equal(err.key, 'optimizer.learningRate');
      assert.ok(err.message.startsWith(`${file}: unknown config key "optimizer.learningRate"`));
      return true;
    });
  });

  it('reports a bad override by its key', async () => {
    await assert.rejects(loadConfig(undefined, { train: { epochs: 0 } }), {
      name: 'ConfigError',
      code: 'CONFIG_INVALID',
      key: 'train.epochs',
    });
  });

  it('names a missing file and a file that is not JSON', async () => {
    const missing = tmp('nope.json');
    await assert.rejects(loadConfig(missing), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, 'CONFIG_NOT_FOUND');
      assert.ok(err.message.includes(missing));
      return true;
    });
    const bad = await configFile('bad.json', '{"train": {"epochs": 3,}}');
    await assert.rejects(loadConfig(bad), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, 'CONFIG_NOT_JSON');
      assert.ok(err.message.startsWith(`config file ${bad} is not valid JSON`));
      return true;
    });
  });

  it('leaves DEFAULT_CONFIG unchanged by merging', async () => {
    const before = structuredClone(DEFAULT_CONFIG);
    await loadConfig(undefined, { train: { epochs: 4 }, model: { layers: [784, 5] } });
    assert.deepEqual(DEFAULT_CONFIG, before);
  });

  it('returns a config that does not alias DEFAULT_CONFIG', async () => {
    const before = structuredClone(DEFAULT_CONFIG);
    const cfg: RunConfig = await loadConfig(undefined);
    try {
      cfg.train.epochs = 99;
      cfg.model.layers.push(10);
      assert.deepEqual(DEFAULT_CONFIG, before);
    } finally {
      // Undo, so that the rest of this file sees the real defaults whatever happened.
      Object.assign(DEFAULT_CONFIG.train, before.train);
      DEFAULT_CONFIG.model.layers = before.model.layers;
    }
  });
});

describe('parseSetOverrides', () => {
  it('parses values as JSON when they parse, else keeps the string', () => {
    assert.deepEqual(
      parseSetOverrides([
        'train.epochs=3',
        'eval.skipFirst=true',
        'model.layers=[784,100,10]',
        'name=my-run',
        'data.dataDir=/data/x=y',
        'output.dir="007"',
      ]),
      {
        train: { epochs: 3 },
        eval: { skipFirst: true },
        model: { layers: [784, 100, 10] },
        name: 'my-run',
        data: { dataDir: '/data/x=y' }, // split at the first '='
        output: { dir: '007' }, // quoted: a string, not the number 7
      },
    );
  });

  it('merges several keys of one section and builds nested paths', () => {
    assert.deepEqual(parseSetOverrides(['train.epochs=3', 'train.batchSize=50', 'a.b.c.d=1']), {
      train: { epochs: 3, batchSize: 50 },
      a: { b: { c: { d: 1 } } },
    });
  });

  it('rejects an item without key=value', () => {
    for (const item of ['train.epochs', '=3', '']) {
      assert.throws(() => parseSetOverrides([item]), {
        name: 'ConfigError',
        code: 'CONFIG_BAD_SET',
        message: `--set expects key.path=value; got "${item}"`,
      });
    }
  });

  it('feeds loadConfig, where a typo in the path is an unknown key', async () => {
    const cfg = await loadConfig(undefined, parseSetOverrides(['optimizer.type=sgd']));
    assert.equal(cfg.optimizer.type, 'sgd');
    await assert.rejects(loadConfig(undefined, parseSetOverrides(['optimiser.type=sgd'])), {
      code: 'CONFIG_UNKNOWN_KEY',
      key: 'optimiser',
    });
  });
});

describe('shipped config files', () => {
  it("config/*.json all validate, with inputs of their data set's shape", async () => {
    // The input must match the data set's images, or training fails at start-up.
    const names = (await readdir(join(ROOT, 'config'))).filter((n) => n.endsWith('.json'));
    assert.deepEqual(names.sort(), [
      'cifar10-conv.json',
      'demo.json',
      'fashion-mnist-best.json',
      'fashion-mnist-conv.json',
      'fashion-mnist-fast.json',
      'mnist-hinton.json',
    ]);
    const inputs: Record<string, unknown> = {
      'cifar10-conv.json': [3, 32, 32],
      'fashion-mnist-conv.json': [1, 28, 28],
    };
    for (const name of names) {
      const cfg = await loadConfig(join(ROOT, 'config', name));
      assert.deepEqual(cfg.model.layers[0], inputs[name] ?? 784, `${name}: model.layers[0]`);
    }
    // The best recipe: readouts, hard negatives, and the first layer's softmax over labels.
    const best = await loadConfig(join(ROOT, 'config', 'fashion-mnist-best.json'));
    assert.equal(best.model.readout, true);
    assert.equal(best.negatives.kind, 'hard');
    assert.deepEqual(best.model.loss, ['softmax', 'threshold']);
    assert.deepEqual(best.eval.layers, [1]);
  });
});
