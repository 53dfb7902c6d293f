// ffx-coordinator as a user runs it: spawned processes (each with a timeout, killed in cleanup),
// asserting exit codes, messages, the files a run writes, and an accuracy bound.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  checkpointConfig,
  readCheckpoint,
  writeCheckpoint,
} from '../../src/checkpoint/checkpoint-file.js';
import { DEFAULT_CONFIG } from '../../src/config/config.js';
import { decodeSafetensors } from '../../src/core/safetensors.js';
import { freePort } from '../../src/transport/sockets.js';
import type { EvalResult } from '../../src/core/predict.js';
import type { RunConfig } from '../../src/config/config.js';
import { ROOT, runNode, type RunResult } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli', 'ffx-coordinator.js');

function cli(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return runNode([CLI, ...args], { timeoutMs });
}

function assertNotTimedOut(r: RunResult): void {
  assert.equal(r.timedOut, false, `timed out\n${r.stdout}\n${r.stderr}`);
}

const tmp = tempDir('cli');

describe('ffx-coordinator help', () => {
  it('--help exits 0 and lists the commands', async () => {
    const r = await cli(['--help']);
    assertNotTimedOut(r);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /ffx-coordinator train\s/);
    assert.match(r.stdout, /ffx-coordinator eval\s/);
    assert.match(r.stdout, /FFX_<FLAG>/, 'the epilog explains the environment');
  });

  it('train --help exits 0 and lists every flag', async () => {
    const r = await cli(['train', '--help']);
    assert.equal(r.code, 0, r.stderr);
    // Wrapped at spaces (yargs's ESM build would cut "fail" / "ed" at column 80).
    assert.match(r.stdout, /a stage counts as\s+lost/);
    for (const flag of [
      '--config',
      '--local',
      '--backend',
      '--dataset',
      '--data-dir',
      '--layers',
      '--seed',
      '--set',
      '--quiet',
      '--epochs',
      '--batch-size',
      '--lr',
      '--eval-every',
      '--out',
      '--resume',
      // Listed once the CLI has the wasm threads option.
      '--threads',
    ]) {
      assert.match(r.stdout, new RegExp(`\\s${flag}\\s`), flag);
    }
  });

  it('eval --help exits 0 and lists its own flags', async () => {
    const r = await cli(['eval', '--help']);
    assert.equal(r.code, 0, r.stderr);
    for (const flag of ['--weights', '--split', '--json', '--backend', '--set']) {
      assert.match(r.stdout, new RegExp(`\\s${flag}\\s`), flag);
    }
  });

  it('no command exits non-zero and asks for one', async () => {
    const r = await cli([]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /name a command: train, eval, plan or report/);
  });
});

describe('ffx-coordinator usage and config errors', () => {
  it('a bad config key exits non-zero with a message naming the key', async () => {
    const r = await cli(['train', '--local', '--set', 'train.batchsize=5']);
    assertNotTimedOut(r);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /unknown config key "train\.batchsize"/);
  });

  it('a bad key in a config file names the file and the key', async () => {
    const file = tmp('typo.json');
    await writeFile(file, JSON.stringify({ optimizer: { learningRate: 0.1 } }));
    const r = await cli(['train', '--local', '--config', file]);
    assert.notEqual(r.code, 0);
    assert.ok(r.stderr.includes(`${file}: unknown config key "optimizer.learningRate"`), r.stderr);
  });

  it('distributed train with no stages fails after the register timeout, naming the layers', async () => {
    const port = await freePort();
    const r = await cli([
      'train',
      '--dataset',
      'fashion-mnist-sample',
      '--layers',
      '784,20,20,20',
      '--bind',
      `tcp://127.0.0.1:${port}`,
      '--register-timeout',
      '1',
    ]);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^error \[CLUSTER_MISSING_STAGES\]: no hello from layer 1, 2, 3 within 1s/m,
    );
    assert.match(r.stderr, /ffx-stage --layer N --coordinator tcp:\/\/127\.0\.0\.1:\d+/);
  });

  // run-main.ts promises: ConfigError and UsageError exit 2, printed as one
  // "error [CODE]: message" line, no usage text, no stack trace.
  it('a bad config key exits 2 with "error [CONFIG_UNKNOWN_KEY]"', async () => {
    const r = await cli(['train', '--local', '--set', 'train.batchsize=5']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^error \[CONFIG_UNKNOWN_KEY\]: unknown config key "train\.batchsize"/m);
    assert.doesNotMatch(r.stderr, /Options:|\n\s+at /, 'no usage dump, no stack');
  });

  it('eval without --local exits 2 with "error [USAGE]"', async () => {
    const r = await cli(['eval', '--weights', 'model.safetensors']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^error \[USAGE\]: --weights goes with --local/m);
  });
});

describe('ffx-coordinator train --local, then eval', () => {
  // The shipped sample (8,000 train, 2,000 test), 784-200-200, two epochs: ~7 s on 2 cores.
  // The settings of config/demo.json scaled to width 200 (sum goodness, threshold = width,
  // label pixel 10, Adam 0.003) reach 76-77% with seeds 1-4 on wasm and cpu; the defaults
  // (mean goodness, label pixel 1) barely learn in a run this short. 60% (chance is 10%) is a
  // bound a working trainer clears with room.
  const out = () => tmp('run');
  const common = [
    '--local',
    '--dataset',
    'fashion-mnist-sample',
    '--backend',
    'wasm',
    '--layers',
    '784,200,200',
    '--set',
    'model.goodness=sum',
    '--set',
    'model.threshold=200',
    '--set',
    'model.overlayValue=10',
  ];
  let trained: RunResult | undefined;
  let accuracyLine = '';

  it('trains, prints a test accuracy well above chance, and writes its files', async () => {
    trained = await cli(
      ['train', ...common, '--epochs', '2', '--lr', '0.003', '--out', out()],
      120_000,
    );
    assertNotTimedOut(trained);
    assert.equal(trained.code, 0, trained.stderr);
    const m = /^test accuracy (\d+\.\d\d)% \(2000 images, goodness summed over all\)$/m.exec(
      trained.stdout,
    );
    assert.ok(m, `no accuracy line in:\n${trained.stdout}`);
    accuracyLine = m[0];
    const accuracy = Number(m[1]) / 100;
    assert.ok(accuracy > 0.6, `test accuracy ${accuracy}`);
    assert.match(trained.stdout, /weights: .*model\.safetensors/);
    // Progress and the backend go to stderr, results to stdout.
    assert.match(trained.stderr, /^backend wasm /m);
    assert.match(trained.stderr, /^epoch 2\/2 /m);

    // metrics.jsonl: one JSON record per epoch, the layer-1 loss falling, interim evals.
    const lines = (await readFile(join(out(), 'metrics.jsonl'), 'utf8')).trimEnd().split('\n');
    assert.equal(lines.length, 2);
    const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    records.forEach((r, i) => {
      assert.equal(r.epoch, i + 1);
      assert.equal((r.layers as unknown[]).length, 2);
      assert.ok((r.samplesPerSec as number) > 0);
      // Each layer's compute time: parts of the epoch's, which also covers the data.
      const steps = (r.stages as { stepSeconds: number }[]).map((s) => s.stepSeconds);
      assert.equal(steps.length, 2);
      assert.ok(
        steps.every((t) => t > 0),
        `step seconds ${steps}`,
      );
      assert.ok(steps[0]! + steps[1]! < (r.seconds as number), `${steps} vs ${r.seconds}`);
    });
    const loss = (r: Record<string, unknown>) => (r.layers as { loss: number }[])[0]!.loss;
    assert.ok(
      loss(records[1]!) < loss(records[0]!),
      `layer-1 loss ${loss(records[0]!)} -> ${loss(records[1]!)}`,
    );
    assert.ok(records[0]!.eval, 'evalEvery 1: an interim evaluation');
    assert.equal(records[1]!.eval, undefined, 'the last epoch is evaluated once, in eval.json');

    // eval.json: the result printed above.
    const evalJson = JSON.parse(await readFile(join(out(), 'eval.json'), 'utf8')) as EvalResult;
    assert.equal(evalJson.count, 2000);
    assert.equal((100 * evalJson.accuracy).toFixed(2), m[1]);
    assert.equal(
      evalJson.confusion.flat().reduce((a, b) => a + b, 0),
      2000,
    );

    // model.safetensors: weights, Adam slots and the checkpoint metadata.
    const { tensors, metadata } = decodeSafetensors(
      await readFile(join(out(), 'model.safetensors')),
    );
    for (const l of [0, 1]) {
      for (const s of ['weight', 'weight.m', 'weight.v', 'bias', 'bias.m', 'bias.v']) {
        assert.ok(tensors.has(`layers.${l}.${s}`), `layers.${l}.${s}`);
      }
    }
    assert.deepEqual(
      [...tensors.get('layers.0.weight')!.shape].sort((a, b) => a - b),
      [200, 784],
    );
    assert.deepEqual(tensors.get('layers.1.bias')!.shape, [200]);
    assert.equal(metadata.format, 'ffx-checkpoint-v3');
    // A SHA-256 of every tensor's bytes.
    const sums = JSON.parse(metadata.sha256!) as Record<string, string>;
    assert.deepEqual(Object.keys(sums).sort(), [...tensors.keys()].sort());
    assert.match(sums['layers.0.weight']!, /^[0-9a-f]{64}$/);
    assert.equal(metadata.epoch, '2');
    assert.equal(metadata.optimizerSteps, '[160,160]', '2 epochs x 80 batches of 100');
    // The resolved config rides along: --set values included.
    const saved = JSON.parse(metadata.config!) as {
      model: { goodness: string; threshold: number; overlayValue: number };
    };
    assert.deepEqual(
      [saved.model.goodness, saved.model.threshold, saved.model.overlayValue],
      ['sum', 200, 10],
    );
  });

  it('eval --weights reproduces exactly the same accuracy and confusion matrix', async () => {
    assert.ok(trained?.code === 0, 'needs the training run above');
    const r = await cli(
      ['eval', ...common, '--weights', join(out(), 'model.safetensors'), '--json', '-q'],
      60_000,
    );
    assertNotTimedOut(r);
    assert.equal(r.code, 0, r.stderr);
    // JSON lines only, each an event, as train --json prints them.
    const events = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { event: string; time: string });
    assert.deepEqual(
      events.map((e) => e.event),
      ['result'],
      '-q: the result only',
    );
    const { split, event, time, ...result } = events[0] as EvalResult & {
      split: string;
      event: string;
      time: string;
    };
    assert.equal(event, 'result');
    assert.ok(!Number.isNaN(Date.parse(time)));
    assert.equal(split, 'test');
    assert.equal(
      `test accuracy ${(result.accuracy * 100).toFixed(2)}%`,
      accuracyLine.split(' (')[0],
    );
    const evalJson = JSON.parse(await readFile(join(out(), 'eval.json'), 'utf8')) as EvalResult;
    assert.deepEqual(result, evalJson);
  });

  it('eval with weights of another shape fails and names the tensor', async () => {
    assert.ok(trained?.code === 0, 'needs the training run above');
    const r = await cli([
      'eval',
      ...common.map((a) => (a === '784,200,200' ? '784,100,200' : a)),
      '--weights',
      join(out(), 'model.safetensors'),
      '-q',
    ]);
    assertNotTimedOut(r);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /^error \[CHECKPOINT_MISMATCH\]: .*model\.safetensors: tensor "layers\.0\.weight" is \[200, 784\], model 784-100-200 needs \[100, 784\]$/m,
    );
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'a user error: no stack trace');
  });
});

const DEMO_MODEL = DEFAULT_CONFIG.model;

describe('ffx-coordinator train refuses what it cannot continue or score', () => {
  // The shipped sample, 784-32, on wasm: seconds a run.
  const run = [
    '--local',
    '--config',
    join(ROOT, 'config', 'demo.json'),
    '--layers',
    '784,32',
    '--set',
    'model.threshold=32',
    '--set',
    'data.trainLimit=1000',
    '--set',
    'data.testLimit=200',
    '--backend',
    'wasm',
    '-q',
  ];

  it('a resume whose checkpoint took other step counts than the run gives (edited, or other data)', async () => {
    const first = await cli(['train', ...run, '--epochs', '2', '--out', tmp('steps')], 60_000);
    assert.equal(first.code, 0, first.stderr);
    const checkpoint = join(tmp('steps'), 'checkpoint-epoch1.safetensors');
    // 1,000 images: 10 batches of 100 an epoch; at 50 the run would have 20.
    const r = await cli(
      ['train', ...run, '--resume', checkpoint, '--batch-size', '50', '--out', tmp('steps-50')],
      60_000,
    );
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      /error \[CHECKPOINT_CORRUPT\]: .*checkpoint-epoch1\.safetensors: its layers took 10 optimizer steps, but 1 epoch of this run's 20 batches are 20/,
    );
  });

  it('a checkpoint of a diverged run (NaN weights) is refused, naming the tensor', async () => {
    // A probe's run with a huge learning rate ended with every weight NaN and "test accuracy
    // 9.75%"; such weights are never written now, and never resumed from.
    const first = join(tmp('steps'), 'checkpoint-epoch1.safetensors');
    const { state, epoch } = await readCheckpoint(first, { ...DEMO_MODEL, layers: [784, 32] }, 2);
    state.tensors.get('layers.0.weight')!.data[5] = NaN;
    const cfg = (await checkpointConfig(first))!;
    const poisoned = join(tmp('nan'), 'checkpoint-epoch1.safetensors');
    await mkdir(tmp('nan'), { recursive: true });
    await writeCheckpoint(poisoned, state, cfg, epoch);
    const r = await cli(['train', ...run, '--resume', poisoned, '--out', tmp('nan-out')], 60_000);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      /error \[NON_FINITE_WEIGHTS\]: tensor "layers\.0\.weight" holds NaN \(element 5\) in .*checkpoint-epoch1\.safetensors: the run diverged/,
    );
  });

  it('an absurd learning rate is refused before anything runs', async () => {
    const r = await cli(['train', ...run, '--lr', '1e308', '--out', tmp('absurd')]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /error \[CONFIG_INVALID\]: optimizer\.lr must be a learning rate from/);
  });
});

describe('ffx-coordinator train --json', () => {
  it('writes only JSON lines on stdout: the events of the run, then the result', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ffx-json-'));
    try {
      const r = await cli(
        ['train', '--local', '--config', join(ROOT, 'config', 'demo.json'), '--epochs', '2'].concat(
          ['--set', 'data.trainLimit=800', '--set', 'data.testLimit=200', '--json', '--out', dir],
        ),
        60_000,
      );
      assertNotTimedOut(r);
      assert.equal(r.code, 0, r.stderr);
      const events = r.stdout
        .trim()
        .split('\n')
        .map(
          (l) =>
            JSON.parse(l) as { event: string; epoch?: number; accuracy?: number; count?: number },
        );
      const kinds = events.map((e) => e.event);
      assert.deepEqual(
        kinds.filter((k) => k === 'epoch-start' || k === 'epoch'),
        ['epoch-start', 'epoch', 'epoch-start', 'epoch'],
      );
      assert.ok(kinds.includes('progress') && kinds.includes('log'));
      const result = events[events.length - 1]!;
      assert.equal(result.event, 'result');
      assert.equal(result.count, 200);
      assert.ok(result.accuracy! > 0.1 && result.accuracy! <= 1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('configuration precedence: flags > FFX_* environment > config file > defaults', () => {
  it('resolves seed and epochs from each source in that order', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ffx-prec-'));
    try {
      // config/demo.json sets sum goodness and 5 epochs; the defaults are mean and 10.
      const run = async (name: string, args: string[], env: Record<string, string>) => {
        const out = join(dir, name);
        const common = [
          'train',
          '--local',
          '--config',
          join(ROOT, 'config', 'demo.json'),
          '--quiet',
        ];
        const limits = [
          '--set',
          'data.trainLimit=200',
          '--set',
          'data.testLimit=100',
          '--out',
          out,
        ];
        const r = await runNode([CLI, ...common, ...limits, ...args], { timeoutMs: 60_000, env });
        assert.equal(r.code, 0, r.stderr);
        return JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as RunConfig;
      };
      const fileOnly = await run('file', ['--epochs', '1'], {});
      assert.equal(fileOnly.model.goodness, 'sum', 'the file beats the defaults');
      assert.equal(fileOnly.seed, 1);
      const fromEnv = await run('env', [], { FFX_SEED: '7', FFX_EPOCHS: '1' });
      assert.equal(fromEnv.seed, 7, 'the environment beats the file');
      assert.equal(fromEnv.train.epochs, 1);
      assert.equal(fromEnv.model.goodness, 'sum');
      const flagWins = await run('flag', ['--seed', '9', '--eval-every', '0'], {
        FFX_SEED: '7',
        FFX_EPOCHS: '1',
      });
      assert.equal(flagWins.seed, 9, 'a flag beats the environment');
      assert.equal(flagWins.train.epochs, 1);
      assert.equal(fileOnly.train.evalEvery, 1);
      assert.equal(flagWins.train.evalEvery, 0, '--eval-every beats the file');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('leaves out FFX_* variables that name no flag: the ones ffx reads itself silently', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ffx-env-'));
    try {
      const r = await runNode(
        [
          CLI,
          'train',
          '--local',
          '--config',
          join(ROOT, 'config', 'demo.json'),
          '--set',
          'data.trainLimit=200',
          '--set',
          'data.testLimit=100',
          '--out',
          dir,
        ],
        {
          timeoutMs: 60_000,
          env: {
            FFX_EPOCHS: '1',
            FFX_CACHE_DIR: join(dir, 'cache'),
            FFX_WEIGHTS: 'an eval flag',
            FFX_EPOCHZ: '3',
          },
        },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        r.stderr.match(/warning: FFX_EPOCHZ names no flag of ffx-coordinator/g)?.length,
        1,
      );
      assert.match(r.stderr, /warning: FFX_WEIGHTS names no flag/);
      assert.doesNotMatch(r.stderr, /FFX_CACHE_DIR|FFX_EPOCHS/);
      const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as RunConfig;
      assert.equal(cfg.train.epochs, 1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a new run never writes over an old one', () => {
  const TINY = [
    '--config',
    join(ROOT, 'config', 'demo.json'),
    '--layers',
    '784,16,16',
    '--set',
    'data.trainLimit=200',
    '--set',
    'data.testLimit=100',
    '--epochs',
    '1',
    '--backend',
    'cpu',
    '--no-metrics',
  ];

  it('goes to DIR-2, DIR-3 and says so; --overwrite replaces; ffx-launch does the same', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ffx-out-'));
    try {
      const out = join(dir, 'run');
      const first = await cli(['train', '--local', ...TINY, '--out', out], 60_000);
      assert.equal(first.code, 0, first.stderr);
      const model = await readFile(join(out, 'model.safetensors'));
      const second = await cli(['train', '--local', ...TINY, '--out', out, '--seed', '2'], 60_000);
      assert.equal(second.code, 0, second.stderr);
      assert.match(
        second.stderr,
        new RegExp(`${out} holds a run already: this one writes to ${out}-2 `),
      );
      assert.match(second.stdout, new RegExp(`weights: ${out}-2/model.safetensors`));
      assert.deepEqual(
        await readFile(join(out, 'model.safetensors')),
        model,
        'the first run is kept',
      );
      const over = await cli(
        ['train', '--local', ...TINY, '--out', out, '--seed', '2', '--overwrite'],
        60_000,
      );
      assert.equal(over.code, 0, over.stderr);
      assert.doesNotMatch(over.stderr, /holds a run already/);
      assert.equal(
        await maxWeightDiff(join(out, 'model.safetensors'), join(`${out}-2`, 'model.safetensors')),
        0,
        'seed 2 written over the first run',
      );
      const launched = await runNode(
        [
          join(ROOT, 'dist', 'src', 'cli', 'ffx-launch.js'),
          ...TINY,
          '--stage-threads',
          '1',
          '--out',
          out,
        ],
        { timeoutMs: 90_000 },
      );
      assert.equal(launched.code, 0, launched.stderr);
      assert.match(launched.stderr, new RegExp(`this one writes to ${out}-3 `));
      assert.ok((await readdir(`${out}-3`)).includes('model.safetensors'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
