// Resuming a distributed run: a 2-stage run interrupted after epoch 1 and resumed from its
// checkpoint ends with exactly the weights, optimizer state and predictions of the run that
// went straight through; the local trainer resumes from the same file to the same result; and
// a checkpoint that does not fit the model is refused, naming the tensor. On wasm, and on
// wasm+blas where ffx-blas is built.
import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import type { EvalResult } from '../../src/core/predict.js';
import { decodeSafetensors } from '../../src/core/safetensors.js';
import { ROOT, runNode } from '../helpers/spawn.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { testBackends } from '../helpers/backends.js';
import { onBackend, trainLocally } from '../helpers/runs.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

// 1,000 images of the shipped sample in batches of 100: 10 optimizer steps per epoch.
const RUN = [
  '--config',
  join(ROOT, 'config', 'demo.json'),
  '--layers',
  '784,64,32',
  '--set',
  'model.threshold=50',
  '--set',
  'data.trainLimit=1000',
  '--set',
  'data.testLimit=300',
  '--set',
  'train.evalEvery=0',
  '--set',
  'output.checkpointEvery=1',
  '--epochs',
  '2',
  '--quiet',
];
for (const backend of testBackends()) {
  const on = onBackend(backend);
  const LAUNCH = [join(CLI, 'ffx-launch.js'), '--backend', backend, '--stage-threads', '1'];

  describe(`resuming a distributed run (${backend})`, () => {
    const tmp = tempDir('resume');
    const checkpoint = () => tmp('full', 'checkpoint-epoch1.safetensors');
    const read = async (run: string) =>
      decodeSafetensors(await readFile(tmp(run, 'model.safetensors')), run);
    const evalOf = async (run: string) =>
      JSON.parse(await readFile(tmp(run, 'eval.json'), 'utf8')) as EvalResult;

    const maxDiff = (a: string, b: string) =>
      maxWeightDiff(tmp(a, 'model.safetensors'), tmp(b, 'model.safetensors'));

    before(async () => {
      const full = await runNode([...LAUNCH, ...RUN, '--out', tmp('full')], { timeoutMs: 90_000 });
      assert.equal(full.code, 0, full.stderr);
    });

    it('continues from the checkpoint to the same weights and predictions', async () => {
      // No --config: the checkpoint's own config is the base.
      const resumed = await runNode(
        [...LAUNCH, '--resume', checkpoint(), '--out', tmp('resumed')],
        {
          timeoutMs: 90_000,
        },
      );
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.match(resumed.stderr, /resumed from .*checkpoint-epoch1\.safetensors after epoch 1/);
      assert.match(resumed.stderr, /\[stage 2\] layer 2\/2: 64-32, /);
      // ffx-launch's default data links are Unix sockets: on Linux in the abstract namespace (no
      // file to leave behind, whatever happens), elsewhere in a directory of its own, gone after.
      const ipc = /\[stage 1\] listening on ipc:\/\/(\S+)stage-1,/.exec(resumed.stderr);
      assert.ok(ipc, 'stage 1 listens on an ipc endpoint');
      if (process.platform === 'linux') assert.match(ipc[1]!, /^@ffx-launch-\d+-[0-9a-f]+-$/);
      else await assert.rejects(stat(ipc[1]!), { code: 'ENOENT' });

      assert.equal(await maxDiff('full', 'resumed'), 0);
      const steps = (run: string) =>
        read(run).then((f) => JSON.parse(f.metadata.optimizerSteps!) as number[]);
      assert.deepEqual(await steps('resumed'), [20, 20]);
      assert.deepEqual(await steps('full'), [20, 20]);
      // Only the epoch it trained is in its metrics.
      const lines = (await readFile(tmp('resumed', 'metrics.jsonl'), 'utf8')).trim().split('\n');
      assert.deepEqual(
        lines.map((l) => (JSON.parse(l) as { epoch: number }).epoch),
        [2],
      );
      const [a, b] = [await evalOf('full'), await evalOf('resumed')];
      assert.equal(a.count, 300);
      assert.deepEqual(b.confusion, a.confusion);
      // The checkpoint is not the end state: resuming had work to do.
      const ck = decodeSafetensors(await readFile(checkpoint())).tensors.get('layers.0.weight')!;
      const end = (await read('full')).tensors.get('layers.0.weight')!;
      assert.ok(
        ck.data.some((v, i) => v !== end.data[i]),
        'epoch 2 changed the weights',
      );
    });

    it('the local trainer resumes from the distributed checkpoint to the same result', async () => {
      const local = await trainLocally(['--resume', checkpoint()], tmp('local'), 60_000, on);
      assert.equal(local.code, 0, local.stderr);
      assert.equal(await maxDiff('full', 'local'), 0);
      assert.deepEqual((await evalOf('local')).confusion, (await evalOf('full')).confusion);
    });

    // (A refusal does not depend on the backend: on wasm alone.)
    if (backend === 'wasm')
      it('refuses a checkpoint that does not fit the model, naming the tensor', async () => {
        const wrong = await runNode(
          [...LAUNCH, '--resume', checkpoint(), '--layers', '784,64,16', '--out', tmp('wrong')],
          { timeoutMs: 60_000 },
        );
        assert.notEqual(wrong.code, 0);
        assert.match(
          wrong.stderr,
          /tensor "layers\.1\.weight" is \[32, 64\], model 784-64-16 needs \[16, 64\]/,
        );
      });
  });
}
