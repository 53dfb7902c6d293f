// The run configuration: one source of truth for the model, optimizer, data and schedule.
// Precedence: command-line flags > FFX_* environment (via the CLI) > config file > defaults.
import { readFile } from 'node:fs/promises';
import { DEFAULT_OPTIMIZER, OPTIMIZER_TYPES, type OptimizerConfig } from '../core/optimizer.js';
import { GOODNESS_TYPES, LOSS_TYPES, type GoodnessType, type LossType } from '../core/ff-layer.js';
import type { ModelLoss } from '../core/ff-network.js';
import { hasConv, modelShapes, type LayerSpec } from '../core/model-shape.js';
import { DATASET_NAMES, type DatasetName } from '../data/datasets.js';
import { FfxError, type ErrorCode } from '../errors.js';

export interface RunConfig {
  name: string;
  seed: number;
  data: {
    dataset: DatasetName;
    /** Directory searched first for the IDX files. */
    dataDir?: string;
    /** 'unit' scales pixels to [0,1]; 'standard' also subtracts the mean and divides by the std. */
    scale: 'unit' | 'standard';
    /** Use only the first N training / test examples (0 = all). */
    trainLimit: number;
    testLimit: number;
    /** Shift each training image by up to this many pixels each way, seeded (0 = none). */
    jitter: number;
    /** Mirror each training image left-right with probability 1/2, seeded (false = never). */
    flip: boolean;
    /**
     * The last N training images (after trainLimit) are held out of training, to choose the
     * prediction rule's layer weights on (eval.combine 'fit'): never the test set (0 = none).
     */
    heldout: number;
  };
  model: {
    /**
     * The input, then one entry per layer: widths for dense layers ([784, 1000, 1000]), or an
     * image [channels, height, width] and conv layers { conv, kernel, stride, padding, pool,
     * groups } (src/core/model-shape.ts), dense layers after them.
     */
    layers: LayerSpec[];
    goodness: GoodnessType;
    negate: boolean;
    threshold: number;
    /**
     * The layers' objective, one for all or a list with one per layer: 'threshold' (Hinton's:
     * positive goodness above the threshold, negative below), 'symba' (each image's positive
     * goodness above its negative's, by a margin scaled with `alpha`) or 'softmax' (first
     * layer only: the cross-entropy of the true label among the goodness, times `alpha`, of
     * all ten label overlays, the scores the goodness rule predicts with); or 'competitive'
     * for every layer (CwComp: each class owns a tenth of a layer's channels, its goodness is
     * their mean square, the loss the cross-entropy of the true class; no overlay, no negative
     * data: src/core/competitive-layer.ts). Conv layers need 'competitive'.
     */
    loss: ModelLoss | LossType[];
    alpha: number;
    normEps: number;
    /** Value written into the label pixel of the overlay. */
    overlayValue: number;
    /**
     * Peer normalisation (Hinton): `weight` of the term pulling each unit's running mean
     * activity on positive data toward the layer's mean (0: off), `decay` of that mean.
     */
    peerNorm: { weight: number; decay: number };
    /**
     * Train a softmax readout on each layer: a linear classifier of the layer's normalised
     * activities for the image with a neutral label (every label pixel equal), predicting in
     * one pass (eval.rule 'readout'). Each batch then carries its images a third time.
     */
    readout: boolean;
  };
  /** How a batch's negative labels are chosen. */
  negatives: {
    /** 'uniform': any wrong label; 'hard': also wrong labels the model finds likely. */
    kind: 'uniform' | 'hard';
    /** With 'hard': the fraction of negatives drawn from last epoch's readout predictions. */
    hard: number;
    /** With 'hard': epochs of uniform negatives before the first hard ones. */
    warmup: number;
  };
  optimizer: OptimizerConfig;
  train: {
    epochs: number;
    batchSize: number;
    /** Fraction of training at the end over which the learning rate decays linearly to 0. */
    cooldown: number;
    /** Evaluate on the test split every N epochs (0 = only at the end). */
    evalEvery: number;
    /**
     * A batch's gradient is the sum, in order, of the gradients of this many shards of it (each
     * computed on its rows alone; a competitive layer's BatchNorm on each shard's own
     * statistics): the arithmetic replicas of a stage share (1: the batch whole).
     */
    shards: number;
  };
  eval: {
    /** Images per evaluation batch (each becomes 10 overlaid rows). */
    batchSize: number;
    /** Leave the first layer out of the goodness sum, as Hinton does. */
    skipFirst: boolean;
    /**
     * The layers (1-based) whose scores the prediction rule sums; empty: all of them (all but
     * the first with skipFirst). Every layer set is reported whatever this says.
     */
    layers: number[];
    /**
     * How the run predicts: 'goodness' (each label overlaid in turn, the one with the most
     * goodness) or 'readout' (one pass with a neutral label; needs model.readout).
     */
    rule: 'goodness' | 'readout';
    /**
     * How the rule's layers' scores combine: 'sum' (each layer's as it is) or 'fit' (weighted,
     * the weights chosen on data.heldout's images at each evaluation: the set "fitted").
     */
    combine: 'sum' | 'fit';
  };
  output: {
    /** Directory for weights, checkpoints and the metrics log. */
    dir: string;
    /**
     * Write a checkpoint every N epochs (0 = only the final weights). A distributed run that
     * loses a stage rolls back to the last one.
     */
    checkpointEvery: number;
    /** How many checkpoints to keep, newest first (0 = all). */
    keepCheckpoints: number;
  };
}

export const DEFAULT_CONFIG: RunConfig = {
  name: 'ffx',
  seed: 1,
  data: {
    dataset: 'fashion-mnist',
    scale: 'unit',
    trainLimit: 0,
    testLimit: 0,
    jitter: 0,
    flip: false,
    heldout: 0,
  },
  model: {
    layers: [784, 1000, 1000],
    goodness: 'mean',
    negate: false,
    threshold: 1,
    loss: 'threshold',
    alpha: 1,
    normEps: 1e-8,
    overlayValue: 1,
    peerNorm: { weight: 0, decay: 0.9 },
    readout: false,
  },
  negatives: { kind: 'uniform', hard: 0.5, warmup: 1 },
  optimizer: { ...DEFAULT_OPTIMIZER },
  train: { epochs: 10, batchSize: 100, cooldown: 0.5, evalEvery: 1, shards: 1 },
  eval: { batchSize: 1000, skipFirst: false, layers: [], rule: 'goodness', combine: 'sum' },
  output: { dir: 'runs/ffx', checkpointEvery: 1, keepCheckpoints: 3 },
};

export class ConfigError extends FfxError<ErrorCode<'config'>> {
  /** Dotted path of the offending key, e.g. "train.batchSize". */
  readonly key: string;
  readonly value: unknown;
  constructor(code: ErrorCode<'config'>, key: string, value: unknown, message: string) {
    super(code, message);
    this.key = key;
    this.value = value;
  }
}

type Rule = (key: string, v: unknown) => void;

/** The largest count (epochs, batch sizes, limits) a config may give. */
const MAX_COUNT = 1_000_000;
const MAX_SEED = 2 ** 31 - 1;
/** Past this a step moves weights by more than they are worth: divergence, not training. */
const MAX_LR = 10;
const FLOAT32_MIN_NORMAL = 2 ** -126;

const fail = (key: string, v: unknown, what: string): never => {
  throw new ConfigError(
    'CONFIG_INVALID',
    key,
    v,
    `${key} must be ${what}; got ${JSON.stringify(v)}`,
  );
};
/** An integer from `min` to `max` (a count far past any run's is a typo or an attack). */
const int =
  (min: number, max = MAX_COUNT): Rule =>
  (k, v) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
      fail(k, v, `an integer from ${min} to ${max}`);
  };
/** A finite number from `min` to `max` (`min` itself left out with `minExclusive`). */
const num =
  (min: number, max: number, minExclusive = false): Rule =>
  (k, v) => {
    if (
      typeof v !== 'number' ||
      !Number.isFinite(v) ||
      v < min ||
      v > max ||
      (minExclusive && v === min)
    ) {
      fail(k, v, `a number ${minExclusive ? '>' : '>='} ${min} and <= ${max}`);
    }
  };
const finite: Rule = (k, v) => {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(k, v, 'a finite number');
};
/**
 * A learning rate: a positive normal float32 (a subnormal one cannot move a weight, and is
 * flushed to zero on GPUs) no larger than MAX_LR.
 */
const learningRate: Rule = (k, v) => {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < FLOAT32_MIN_NORMAL || v > MAX_LR) {
    fail(k, v, `a learning rate from ${FLOAT32_MIN_NORMAL} to ${MAX_LR}`);
  }
};
const oneOf =
  (values: readonly string[]): Rule =>
  (k, v) => {
    if (typeof v !== 'string' || !values.includes(v)) fail(k, v, `one of ${values.join(', ')}`);
  };
const bool: Rule = (k, v) => {
  if (typeof v !== 'boolean') fail(k, v, 'true or false');
};
const str: Rule = (k, v) => {
  if (typeof v !== 'string' || v.length === 0) fail(k, v, 'a non-empty string');
};
const count = (v: unknown, max = MAX_COUNT) =>
  typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= max;
const CONV_KEYS: Record<string, number> = {
  conv: 1 << 16,
  kernel: 64,
  stride: 64,
  padding: 64,
  pool: 64,
  groups: 1 << 16,
};
/** One entry of model.layers: a width, an image [c, h, w] (first only) or a conv spec. */
function checkLayerSpec(k: string, v: unknown, first: boolean): void {
  if (typeof v === 'number') {
    if (!count(v)) fail(k, v, `a width from 1 to ${MAX_COUNT}`);
  } else if (Array.isArray(v)) {
    if (!first || v.length !== 3 || !v.every((n) => count(n, 1 << 16)))
      fail(k, v, 'a width, or first an image [channels, height, width]');
  } else if (typeof v === 'object' && v !== null) {
    for (const [key, n] of Object.entries(v)) {
      const max = CONV_KEYS[key];
      if (max === undefined) throw unknownKey(`${k}.${key}`, n, Object.keys(CONV_KEYS));
      if (key === 'padding' ? !(count(n, max) || n === 0) : !count(n, max))
        fail(`${k}.${key}`, n, `an integer from ${key === 'padding' ? 0 : 1} to ${max}`);
    }
    if (first || !('conv' in v) || !('kernel' in v))
      fail(k, v, 'a conv layer { conv: channels, kernel, ... } after the input');
  } else {
    fail(k, v, 'a width, an image [channels, height, width] or a conv layer');
  }
}
const layerSpecs: Rule = (k, v) => {
  if (!Array.isArray(v) || v.length < 2 || v.length > 1001)
    fail(k, v, 'a list of 2 to 1001 entries (the input, then one per layer)');
  (v as unknown[]).forEach((x, i) => checkLayerSpec(`${k}[${i}]`, x, i === 0));
  try {
    modelShapes(v as LayerSpec[]);
  } catch (err) {
    fail(k, v, `layers that fit together (${(err as Error).message})`);
  }
};

const MODEL_LOSSES: readonly string[] = [...LOSS_TYPES, 'competitive'];
const losses: Rule = (k, v) => {
  const what = `one of ${MODEL_LOSSES.join(', ')}, or a list of ${LOSS_TYPES.join(', ')} (one per layer)`;
  if (Array.isArray(v)) {
    if (v.length === 0) fail(k, v, what);
    v.forEach((x, i) => oneOf(LOSS_TYPES)(`${k}[${i}]`, x));
  } else if (typeof v !== 'string' || !MODEL_LOSSES.includes(v)) {
    fail(k, v, what);
  }
};

const layerList: Rule = (k, v) => {
  if (!Array.isArray(v) || !v.every((l) => Number.isInteger(l) && l >= 1))
    fail(k, v, 'a list of layer numbers (1 for the first layer)');
  if (new Set(v as number[]).size !== (v as number[]).length) fail(k, v, 'a list without repeats');
};

/**
 * What the model's keys must agree on: one loss per layer, and 'softmax' only where the
 * label overlay is, the first layer's input.
 */
function checkModel(model: RunConfig['model']): void {
  const layers = model.layers.length - 1;
  if (hasConv(model.layers) && model.loss !== 'competitive') {
    fail('model.loss', model.loss, "'competitive' in a model with conv layers");
  }
  if (model.loss === 'competitive') {
    const shapes = modelShapes(model.layers);
    const odd = shapes.findIndex((s, i) => i > 0 && s[2] % 10 !== 0);
    if (odd > 0) {
      fail(
        `model.layers[${odd}]`,
        model.layers[odd],
        "a layer whose channels (units) split into 10 class groups, with loss 'competitive'",
      );
    }
    if (model.readout) fail('model.readout', true, "false with loss 'competitive'");
    return;
  }

  const list =
    typeof model.loss === 'string' ? new Array<LossType>(layers).fill(model.loss) : model.loss;
  if (list.length !== layers) {
    fail('model.loss', model.loss, `one loss per layer (${layers}), or a single one for all`);
  }
  const late = list.findIndex((l, i) => i > 0 && l === 'softmax');
  if (late > 0) {
    fail(
      'model.loss',
      model.loss,
      `'softmax' on the first layer only (it reads the label overlay of the input); layer ${late + 1} has it`,
    );
  }
}

/** Keys a config may leave out (every other key is present once merged over the defaults). */
const OPTIONAL_KEYS: ReadonlySet<string> = new Set(['data.dataDir']);

/**
 * `value` as an object whose keys are those of `rules`, each checked by its rule: an unknown
 * key is an error (usually a typo), and so is a missing one unless OPTIONAL_KEYS lists it.
 * `where` is the object's dotted path ('' for the whole config).
 */
function checkRecord(where: string, value: unknown, rules: Record<string, Rule>): void {
  const at = (sub: string) => (where ? `${where}.${sub}` : sub);
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    fail(where || 'config', value, 'an object');
  const o = value as Record<string, unknown>;
  for (const [sub, x] of Object.entries(o)) {
    const rule = rules[sub];
    if (!rule) throw unknownKey(at(sub), x, Object.keys(rules));
    rule(at(sub), x);
  }
  for (const sub of Object.keys(rules)) {
    if (!(sub in o) && !OPTIONAL_KEYS.has(at(sub))) fail(at(sub), undefined, 'present');
  }
}

const record =
  (rules: Record<string, Rule>): Rule =>
  (k, v) =>
    checkRecord(k, v, rules);

const SCHEMA: Record<string, Record<string, Rule>> = {
  '': { name: str, seed: int(0, MAX_SEED) },
  data: {
    dataset: oneOf(DATASET_NAMES),
    dataDir: str,
    scale: oneOf(['unit', 'standard']),
    trainLimit: int(0, 1e9),
    testLimit: int(0, 1e9),
    jitter: int(0, 16),
    flip: bool,
    heldout: int(0, 1e9),
  },
  model: {
    layers: layerSpecs,
    goodness: oneOf(GOODNESS_TYPES),
    negate: bool,
    threshold: finite,
    loss: losses,
    alpha: num(0, 1e4, true),
    // Added to each row's norm before dividing: it keeps a zero row finite, no more.
    normEps: num(0, 1e-2, true),
    overlayValue: num(0, 1e3, true),
    peerNorm: record({ weight: num(0, 1e3), decay: num(0, 1) }),
    readout: bool,
  },
  negatives: { kind: oneOf(['uniform', 'hard']), hard: num(0, 1), warmup: int(1) },
  optimizer: {
    type: oneOf(OPTIMIZER_TYPES),
    lr: learningRate,
    // Below 1: Adam's bias correction divides by 1 - beta^t.
    beta1: num(0, 0.999999),
    beta2: num(0, 0.999999),
    eps: num(0, 1, true),
    momentum: num(0, 1),
    weightDecay: num(0, 1),
  },
  train: {
    epochs: int(1),
    batchSize: int(1),
    cooldown: num(0, 1),
    evalEvery: int(0),
    shards: int(1, 1024),
  },
  eval: {
    batchSize: int(1),
    skipFirst: bool,
    layers: layerList,
    rule: oneOf(['goodness', 'readout']),
    combine: oneOf(['sum', 'fit']),
  },
  output: { dir: str, checkpointEvery: int(0), keepCheckpoints: int(0) },
};

/** The whole config: every section a record of its keys, the top-level keys beside them. */
const TOP_LEVEL: Record<string, Rule> = Object.fromEntries(
  Object.entries(SCHEMA).flatMap(([section, rules]) =>
    section === '' ? Object.entries(rules) : [[section, record(rules)]],
  ),
);

/** Checks every key against the schema; unknown keys are errors (they are usually typos). */
export function validateConfig(raw: unknown): RunConfig {
  checkRecord('', raw, TOP_LEVEL);
  const cfg = raw as RunConfig;
  checkModel(cfg.model);
  if (cfg.eval.skipFirst && cfg.model.layers.length < 3) {
    fail('eval.skipFirst', true, 'false when the model has a single layer');
  }
  const numLayers = cfg.model.layers.length - 1;
  if (cfg.eval.layers.some((l) => l > numLayers)) {
    fail('eval.layers', cfg.eval.layers, `layer numbers from 1 to ${numLayers}`);
  }
  if (cfg.eval.skipFirst && cfg.eval.layers.length > 0) {
    fail('eval.skipFirst', true, 'false when eval.layers names the layers');
  }
  // Hard negatives come from the readout's predictions; the readout rule needs one.
  if (cfg.negatives.kind === 'hard' && !cfg.model.readout) {
    fail('negatives.kind', 'hard', "'uniform' unless model.readout is true");
  }
  if (cfg.eval.combine === 'fit' && cfg.data.heldout === 0) {
    fail('eval.combine', 'fit', "'sum' unless data.heldout holds images out to fit on");
  }
  if (cfg.eval.rule === 'readout' && !cfg.model.readout) {
    fail('eval.rule', 'readout', "'goodness' unless model.readout is true");
  }
  // Shards split the FF loss's rows; the peer term's running mean and the readout's step are
  // over the whole batch, so they cannot be summed from shards (not yet: refused, not approximated).
  if (cfg.train.shards > 1 && (cfg.model.peerNorm?.weight ?? 0) > 0) {
    fail(
      'train.shards',
      cfg.train.shards,
      '1 with model.peerNorm (its running mean is over the whole batch)',
    );
  }
  if (cfg.train.shards > 1 && cfg.model.readout) {
    fail(
      'train.shards',
      cfg.train.shards,
      "1 with model.readout (the readout's step is not sharded yet)",
    );
  }
  return cfg;
}

/**
 * `ffx-coordinator eval --rule`: a rule that only one method answers must be one this model
 * has ('readout' needs readouts); 'both' and 'goodness' always are.
 */
export function checkEvalRule(cfg: RunConfig, rule: 'both' | 'goodness' | 'readout'): void {
  if (rule === 'readout' && !cfg.model.readout) {
    throw new ConfigError(
      'CONFIG_INVALID',
      'model.readout',
      false,
      'eval --rule readout needs a model with readouts (model.readout true); this one has none',
    );
  }
}

/**
 * Checks one section given whole, with every key present and none unknown: what a stage does
 * with the model and optimizer its coordinator sends, under the rules of a config file.
 */
export function validateSection<K extends 'model' | 'optimizer'>(
  name: K,
  value: unknown,
): RunConfig[K] {
  checkRecord(name, value, SCHEMA[name]!);
  if (name === 'model') checkModel(value as RunConfig['model']);
  return value as RunConfig[K];
}

function unknownKey(key: string, value: unknown, known: string[]): ConfigError {
  return new ConfigError(
    'CONFIG_UNKNOWN_KEY',
    key,
    value,
    `unknown config key "${key}" (known here: ${known.join(', ')})`,
  );
}

/** Deep merge of plain objects; arrays and scalars from `over` replace those in `base`. */
export function mergeConfig<T>(base: T, over: unknown): T {
  if (typeof over !== 'object' || over === null || Array.isArray(over)) return over as T;
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    if (k === '__proto__' || k === 'constructor' || k === 'prototype') {
      throw new ConfigError('CONFIG_UNKNOWN_KEY', k, v, `unknown config key "${k}"`);
    }
    const b = out[k];
    out[k] = typeof b === 'object' && b !== null && !Array.isArray(b) ? mergeConfig(b, v) : v;
  }
  return out as T;
}

/**
 * Reads a JSON config file over `base` (the defaults, or a checkpoint's config), applies
 * overrides, validates the result.
 */
export async function loadConfig(
  file: string | undefined,
  overrides: unknown = {},
  base: RunConfig = DEFAULT_CONFIG,
): Promise<RunConfig> {
  let fromFile: unknown = {};
  if (file) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new ConfigError(
        'CONFIG_NOT_FOUND',
        'config',
        file,
        `cannot read config file ${file}: ${(err as Error).message}`,
      );
    }
    // A byte order mark (editors on Windows write one) is not part of the JSON.
    text = text.replace(/^\uFEFF/, '');
    try {
      fromFile = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(
        'CONFIG_NOT_JSON',
        'config',
        file,
        `config file ${file} is not valid JSON: ${(err as Error).message}`,
      );
    }
    // JSON.parse keeps the last of two equal keys: a silent choice between two settings.
    const twice = duplicateKey(text);
    if (twice !== null) {
      throw new ConfigError(
        'CONFIG_INVALID',
        twice,
        undefined,
        `config file ${file}: key "${twice}" is given twice; keep one`,
      );
    }
    // Check the file alone first so its errors are reported against the file's own keys.
    validatePartial(base, fromFile, file);
  }
  // A fresh copy: callers may change their config without touching the defaults.
  return validateConfig(structuredClone(mergeConfig(mergeConfig(base, fromFile), overrides)));
}

function validatePartial(base: RunConfig, partial: unknown, file: string): void {
  try {
    validateConfig(mergeConfig(base, partial));
  } catch (err) {
    if (err instanceof ConfigError) {
      throw new ConfigError(err.code, err.key, err.value, `${file}: ${err.message}`);
    }
    throw err;
  }
}

/** Parses `key.path=value` overrides (value as JSON when it parses, else a string). */
export function parseSetOverrides(items: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0)
      throw new ConfigError(
        'CONFIG_BAD_SET',
        'set',
        item,
        `--set expects key.path=value; got "${item}"`,
      );
    const path = item.slice(0, eq).split('.');
    if (
      path.some((p) => p === '__proto__' || p === 'constructor' || p === 'prototype' || p === '')
    ) {
      throw new ConfigError(
        'CONFIG_BAD_SET',
        'set',
        item,
        `--set key "${item.slice(0, eq)}" is not a config key`,
      );
    }
    const text = item.slice(eq + 1);
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = text;
    }
    let node = out;
    for (const part of path.slice(0, -1)) {
      node[part] = (node[part] as Record<string, unknown> | undefined) ?? {};
      node = node[part] as Record<string, unknown>;
    }
    node[path[path.length - 1]!] = value;
  }
  return out;
}

/**
 * The dotted path of the first key that appears twice in one object of `text` (valid JSON),
 * or null. A small walk over the text: JSON.parse cannot tell, it keeps the last one.
 */
export function duplicateKey(text: string): string | null {
  let i = 0;
  const ws = () => {
    while (i < text.length && ' \t\r\n'.includes(text[i]!)) i++;
  };
  const string = (): string => {
    const start = i;
    i++; // the opening quote
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  /** Walks one value at i; returns a duplicate's path below `path`, or null. */
  const value = (path: string): string | null => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const seen = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return null;
      }
      for (;;) {
        ws();
        const key = string();
        const at = path ? `${path}.${key}` : key;
        if (seen.has(key)) return at;
        seen.add(key);
        ws();
        i++; // ':'
        const inner = value(at);
        if (inner !== null) return inner;
        ws();
        if (text[i++] === '}') return null; // else ','
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return null;
      }
      for (let n = 0; ; n++) {
        const inner = value(`${path}[${n}]`);
        if (inner !== null) return inner;
        ws();
        if (text[i++] === ']') return null; // else ','
      }
    }
    if (c === '"') {
      string();
      return null;
    }
    while (i < text.length && !',]} \t\r\n'.includes(text[i]!)) i++; // a number, true, false, null
    return null;
  };
  return value('');
}
