// config/cifar10-conv.json runs on CIFAR-10's binary format: a few steps on a small sample the
// test writes in that format (CIFAR-10 itself is not reachable here), in one process and as a
// two-stage pipeline, colour images (32x32x3, channels last) through both, to the same bits.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { EvalResult } from '../../src/core/predict.js';
import { killAll, ROOT } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { writeCifarSample } from '../helpers/cifar10.js';
import { ON_WASM, trainLocally, trainPipelined } from '../helpers/runs.js';
import { tempDir } from '../helpers/temp-dir.js';

describe('config/cifar10-conv.json on a CIFAR-10 sample in the binary format', () => {
  const tmp = tempDir('cifar');
  const RUN = () => [
    '--config',
    join(ROOT, 'config', 'cifar10-conv.json'),
    '--data-dir',
    tmp('data'),
    '--set',
    'data.trainLimit=60',
    '--set',
    'train.batchSize=20',
    '--set',
    'eval.batchSize=16',
    '--epochs',
    '1',
  ];
  before(() => writeCifarSample(tmp('data'), 12, 40, 7));
  after(killAll);

  it('trains a few steps in one process and as a pipeline, to the same bits', async () => {
    const local = await trainLocally(RUN(), tmp('local'), 120_000, ON_WASM);
    assert.equal(local.code, 0, local.stderr.slice(-3000));
    const piped = await trainPipelined([...RUN(), '--partition', '1-2,3-4'], tmp('piped'), 120_000);
    assert.equal(piped.code, 0, piped.stderr.slice(-3000));
    assert.match(
      piped.stderr,
      /data cifar10 from .*: 60 train, 40 test, 32x32 pixels x 3 channels/,
    );
    assert.match(piped.stderr, /\[stage 1-2\] layers 1-2\/4: 3x32x32-c20k3p1-c80k3p1g10\/2, run /);
    assert.equal(
      await maxWeightDiff(
        join(tmp('local'), 'model.safetensors'),
        join(tmp('piped'), 'model.safetensors'),
      ),
      0,
    );
    const evalOf = async (dir: string) =>
      JSON.parse(await readFile(join(dir, 'eval.json'), 'utf8')) as EvalResult;
    const [a, b] = [await evalOf(tmp('local')), await evalOf(tmp('piped'))];
    assert.equal(a.count, 40);
    assert.deepEqual(b, a);
  });
});
