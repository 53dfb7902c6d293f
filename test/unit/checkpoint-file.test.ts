// Checkpoints you can trust: written atomically (a failure part-way leaves the old file and no
// debris), each tensor's SHA-256 checked on load (a flipped byte is refused, naming the file),
// metadata validated like a config file, `latest` moved only after the checkpoint is on disk,
// the newest K kept, and a checkpoint that cannot send outputs elsewhere.
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import {
  removeInterruptedWrites,
  writeFileAtomic,
  WRITE_FAULT_ENV,
} from '../../src/checkpoint/atomic-file.js';
import {
  LATEST,
  checkFiniteState,
  checkpointConfig,
  checkpointName,
  commitCheckpoint,
  readCheckpoint,
  resolveCheckpoint,
  writeCheckpoint,
  type ModelState,
} from '../../src/checkpoint/checkpoint-file.js';
import { DEFAULT_CONFIG, type RunConfig } from '../../src/config/config.js';
import { decodeSafetensors, encodeSafetensors } from '../../src/core/safetensors.js';
import { isFfxError, type FfxError } from '../../src/errors.js';
import { runConfig } from '../../src/cli/run-options.js';
import { tempDir } from '../helpers/temp-dir.js';

const MODEL = { ...DEFAULT_CONFIG.model, layers: [4, 3, 2] };
const CFG: RunConfig = {
  ...DEFAULT_CONFIG,
  model: MODEL,
  train: { ...DEFAULT_CONFIG.train, epochs: 5 },
};

function state(seed: number): ModelState {
  const t = (shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return { shape, data: Float32Array.from({ length: n }, (_, i) => seed + i / 8) };
  };
  return {
    tensors: new Map([
      ['layers.0.weight', t([3, 4])],
      ['layers.0.bias', t([3])],
      ['layers.1.weight', t([2, 3])],
      ['layers.1.bias', t([2])],
    ]),
    optimizerSteps: [seed, seed],
  };
}

const refused =
  (code: string, ...mentions: string[]) =>
  (err: unknown) => {
    assert.ok(isFfxError(err), String(err));
    assert.equal(err.code, code, err.message);
    for (const m of mentions) assert.ok(err.message.includes(m), `"${err.message}" lacks "${m}"`);
    return true;
  };

describe('checkpoint files', () => {
  const tmp = tempDir('ckpt');
  after(async () => {
    delete process.env[WRITE_FAULT_ENV];
  });

  it('round-trips state and epoch, with a SHA-256 per tensor in the metadata', async () => {
    const file = tmp('a.safetensors');
    await writeCheckpoint(file, state(3), CFG, 2);
    const { tensors, metadata } = decodeSafetensors(await readFile(file));
    assert.equal(metadata.format, 'ffx-checkpoint-v3');
    assert.match(metadata.integrity!, /^[0-9a-f]{64}$/);
    assert.match(metadata.layout!, /\[out, in\] \(torch\.nn\.Linear\).*normalise/);
    assert.deepEqual(Object.keys(JSON.parse(metadata.sha256!)).sort(), [...tensors.keys()].sort());
    const back = await readCheckpoint(file, MODEL, 5);
    assert.equal(back.epoch, 2);
    assert.deepEqual(back.state.optimizerSteps, [3, 3]);
    assert.deepEqual(
      back.state.tensors.get('layers.1.bias')!.data,
      state(3).tensors.get('layers.1.bias')!.data,
    );
  });

  it('says how a competitive (conv) network is laid out, for readers in other languages', async () => {
    const file = tmp('conv.safetensors');
    const conv: RunConfig = { ...CFG, model: { ...MODEL, loss: 'competitive' } };
    await writeCheckpoint(file, state(3), conv, 1);
    const { metadata } = decodeSafetensors(await readFile(file));
    assert.match(metadata.layout!, /\[out, in\/groups, k, k\] .*torch\.nn\.Conv2d/);
    assert.match(
      metadata.layout!,
      /BatchNorm\(maxpool\(relu\(conv\(x\) \+ bias\)\)\).*eps 0\.0001/,
    );
  });

  it('refuses a file with a flipped data byte, naming the file and the tensor', async () => {
    const file = tmp('flipped.safetensors');
    await writeCheckpoint(file, state(1), CFG, 1);
    const bytes = await readFile(file);
    bytes[bytes.length - 3]! ^= 0x10; // a byte of the last tensor's data
    await writeFile(file, bytes);
    await assert.rejects(
      readCheckpoint(file, MODEL, 5),
      refused('CHECKPOINT_CORRUPT', file, 'does not match its SHA-256'),
    );
  });

  it('validates the metadata: the epoch an integer in range, the steps integers, the format known', async () => {
    const write = async (name: string, metadata: Record<string, string>) => {
      const file = tmp(name);
      await writeFile(file, encodeSafetensors(state(1).tensors, metadata));
      return file;
    };
    for (const epoch of ['1.5', '-1', 'x', '9', '1e3']) {
      const file = await write(`epoch-${epoch}.safetensors`, {
        format: 'ffx-checkpoint-v1',
        epoch,
      });
      await assert.rejects(
        readCheckpoint(file, MODEL, 5),
        refused('CHECKPOINT_CORRUPT', `"${epoch}"`, '0..5'),
      );
    }
    const steps = await write('steps.safetensors', { epoch: '1', optimizerSteps: '[1, -2]' });
    await assert.rejects(
      readCheckpoint(steps, MODEL, 5),
      refused('CHECKPOINT_CORRUPT', 'optimizerSteps'),
    );
    const format = await write('format.safetensors', { format: 'ffx-checkpoint-v9', epoch: '1' });
    await assert.rejects(
      readCheckpoint(format, MODEL, 5),
      refused('CHECKPOINT_CORRUPT', 'ffx-checkpoint-v9'),
    );
    const noSums = await write('nosums.safetensors', { format: 'ffx-checkpoint-v2', epoch: '1' });
    await assert.rejects(readCheckpoint(noSums, MODEL, 5), refused('CHECKPOINT_CORRUPT', 'sha256'));
    // A first-format file has no checksums, and still loads.
    const v1 = await write('v1.safetensors', { format: 'ffx-checkpoint-v1', epoch: '1' });
    assert.equal((await readCheckpoint(v1, MODEL, 5)).epoch, 1);
  });

  it('checkFiniteState names the first tensor that is not finite, and when', () => {
    checkFiniteState(state(1), 'after epoch 1');
    for (const bad of [NaN, Infinity, -Infinity]) {
      const s = state(1);
      s.tensors.get('layers.1.bias')!.data[1] = bad;
      assert.throws(
        () => checkFiniteState(s, 'after epoch 3'),
        (err: FfxError) =>
          err.code === 'NON_FINITE_WEIGHTS' &&
          err.message.startsWith(
            `tensor "layers.1.bias" holds ${bad} (element 1) after epoch 3: the run diverged`,
          ),
      );
    }
  });

  it('refuses edited metadata: the epoch, the steps, the config, each named', async () => {
    // What an outside probe did: rewrote a checkpoint's epoch or step count and resumed from
    // it, and the run went on with every tensor different from the uninterrupted run's.
    const file = tmp('checkpoint-epoch2.safetensors');
    await writeCheckpoint(file, state(20), CFG, 2);
    const { tensors, metadata } = decodeSafetensors(await readFile(file));
    const edited = async (name: string, change: Record<string, string>) => {
      const f = tmp(name);
      await writeFile(f, encodeSafetensors(tensors, { ...metadata, ...change }));
      return f;
    };
    const changes: Record<string, string>[] = [
      { epoch: '1' },
      { epoch: '0' },
      { optimizerSteps: '[21,21]' },
      { config: metadata.config!.replace('"seed":1', '"seed":2') },
    ];
    for (const change of changes) {
      const f = await edited('checkpoint-epoch2.safetensors', change);
      await assert.rejects(
        readCheckpoint(f, MODEL, 5),
        refused('CHECKPOINT_CORRUPT', f, 'its metadata does not match its integrity checksum'),
      );
    }
    // Files of the earlier format carry no metadata checksum: their name and their layers'
    // steps are still checked against the metadata.
    const v2: Record<string, string> = { ...metadata, format: 'ffx-checkpoint-v2' };
    delete v2.integrity;
    const older = async (name: string, change: Record<string, string>) => {
      const f = tmp(name);
      await writeFile(f, encodeSafetensors(tensors, { ...v2, ...change }));
      return f;
    };
    const renamed = await older('checkpoint-epoch3.safetensors', {});
    await assert.rejects(
      readCheckpoint(renamed, MODEL, 5),
      refused('CHECKPOINT_CORRUPT', 'its name says epoch 3, its metadata epoch 2'),
    );
    const uneven = await older('uneven.safetensors', { optimizerSteps: '[20,19]' });
    await assert.rejects(
      readCheckpoint(uneven, MODEL, 5),
      refused('CHECKPOINT_CORRUPT', 'optimizerSteps [20,19] differ between layers'),
    );
    assert.equal((await readCheckpoint(await older('ok-v2.safetensors', {}), MODEL, 5)).epoch, 2);
  });

  it('reads the config of a checkpoint written before a key existed, with its default', async () => {
    const old = structuredClone(CFG) as unknown as Record<string, Record<string, unknown>>;
    delete old.model!.loss;
    delete old.eval!.layers;
    const file = tmp('old-config.safetensors');
    await writeFile(
      file,
      encodeSafetensors(state(1).tensors, { epoch: '1', config: JSON.stringify(old) }),
    );
    const cfg = await checkpointConfig(file);
    assert.equal(cfg?.model.loss, 'threshold');
    assert.deepEqual(cfg?.eval.layers, []);
    // A key that is wrong, not missing, is still refused.
    old.eval!.layers = 'two';
    await writeFile(
      file,
      encodeSafetensors(state(1).tensors, { epoch: '1', config: JSON.stringify(old) }),
    );
    await assert.rejects(checkpointConfig(file), refused('CHECKPOINT_CORRUPT', 'eval.layers'));
  });

  it('moves `latest` only after the checkpoint, and keeps the newest K', async () => {
    const run = tmp('run');
    await rm(run, { recursive: true, force: true });
    await mkdir(run);
    for (let epoch = 1; epoch <= 5; epoch++)
      await commitCheckpoint(run, state(epoch), CFG, epoch, 2);
    assert.deepEqual((await readdir(run)).sort(), [checkpointName(4), checkpointName(5), LATEST]);
    const latest = await resolveCheckpoint(LATEST, run);
    assert.equal(latest, join(run, checkpointName(5)));
    assert.equal((await readCheckpoint(latest, MODEL, 5)).epoch, 5);

    // A write that fails part-way: the previous checkpoint stays latest, and nothing is left over.
    for (const at of [0, 10, 100]) {
      process.env[WRITE_FAULT_ENV] = `${checkpointName(6)}@${at}`;
      await assert.rejects(
        commitCheckpoint(run, state(6), { ...CFG, train: { ...CFG.train, epochs: 6 } }, 6, 2),
        refused('FILE_NO_SPACE', join(run, checkpointName(6))),
      );
      delete process.env[WRITE_FAULT_ENV];
      assert.deepEqual((await readdir(run)).sort(), [checkpointName(4), checkpointName(5), LATEST]);
      assert.equal(await resolveCheckpoint(LATEST, run), latest);
    }
    // The pointer names a file of that directory only.
    await writeFile(join(run, LATEST), '../elsewhere.safetensors\n');
    await assert.rejects(
      resolveCheckpoint(LATEST, run),
      refused('CHECKPOINT_CORRUPT', 'not a file name'),
    );
    await assert.rejects(
      resolveCheckpoint(LATEST, tmp('empty')),
      refused('CHECKPOINT_NOT_FOUND', 'no complete checkpoint'),
    );
  });

  it('writeFileAtomic leaves the old file whole when the new one fails', async () => {
    const file = tmp('note.txt');
    await writeFileAtomic(file, 'old\n', 'note');
    process.env[WRITE_FAULT_ENV] = 'note.txt@2';
    await assert.rejects(
      writeFileAtomic(file, 'new contents\n', 'note'),
      refused('FILE_NO_SPACE', file),
    );
    delete process.env[WRITE_FAULT_ENV];
    assert.equal(await readFile(file, 'utf8'), 'old\n');
    assert.deepEqual(
      (await readdir(tmp())).filter((f) => f.includes('note.txt')),
      ['note.txt'],
    );
  });

  it('the temporary files of killed writers go, those of running ones and others stay', async () => {
    const dir = tmp('interrupted');
    await mkdir(dir);
    // A pid above the kernel's limit (2^22) cannot be running.
    const dead = `.lineage.json.${2 ** 22 + 1}.bdf330de.tmp`;
    const live = `.metrics.jsonl.${process.pid}.0123abcd.tmp`;
    const names = [dead, live, 'notes.tmp', `.x.${2 ** 22 + 1}.tmp`, 'model.safetensors'];
    await Promise.all(names.map((f) => writeFile(join(dir, f), 'x')));
    assert.deepEqual(await removeInterruptedWrites(dir), [dead]);
    assert.deepEqual((await readdir(dir)).sort(), names.filter((f) => f !== dead).sort());
  });

  it("a checkpoint cannot send a resumed run's outputs elsewhere: they go beside it", async () => {
    const run = tmp('resume-here');
    await mkdir(run);
    const redirect = { ...CFG, output: { ...CFG.output, dir: tmp('not-here') } };
    await writeCheckpoint(join(run, 'c.safetensors'), state(1), redirect, 1);
    const cfg = await runConfig(
      { set: [], backend: 'auto', quiet: true, verbose: false, local: true },
      join(run, 'c.safetensors'),
    );
    assert.equal(cfg.output.dir, run);
    // --out still decides, when given.
    const out = tmp('chosen');
    const chosen = await runConfig(
      { set: [], backend: 'auto', quiet: true, verbose: false, local: true, out },
      join(run, 'c.safetensors'),
    );
    assert.equal(chosen.output.dir, out);
  });
});
