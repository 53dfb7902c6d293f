// The checkpoint file: safetensors holding every layer's weights and optimizer slots, with the
// epoch reached, the optimizer step per layer, the run config and each tensor's SHA-256 in its
// metadata. Whatever ran the layers (this process, or a pipeline of stages) writes the same
// format, and either resumes from the other's files. Tensor names come from layerPrefix
// (core/ff-network.ts).
//
// A run's checkpoints live in its output directory: checkpoint-epochN.safetensors, the last
// `keep` of them, and `latest`, a one-line file naming the newest complete one. Every file is
// written atomically (atomic-file.ts) and `latest` moves only once its checkpoint is on disk,
// so a crash or a full disk at any moment leaves the previous checkpoint loadable.
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { layerParamShapes, type ModelConfig } from '../core/ff-network.js';
import { BN_EPS } from '../core/competitive-layer.js';
import { describeLayers } from '../core/model-shape.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { DEFAULT_CONFIG, mergeConfig, validateConfig, type RunConfig } from '../config/config.js';
import { FfxError, fileError, isFfxError, withFile, type ErrorCode } from '../errors.js';
import { writeFileAtomic } from './atomic-file.js';
import { RUN_FILES } from './run-dir.js';

const FORMAT = 'ffx-checkpoint-v3';
/**
 * Files of the first format have no checksums, the second's cover the tensors but not the
 * metadata; they still load, checked as far as they can be.
 */
const FORMATS = ['ffx-checkpoint-v1', 'ffx-checkpoint-v2', FORMAT];
const WITH_TENSOR_SUMS = ['ffx-checkpoint-v2', FORMAT];

/** The pointer to the newest complete checkpoint of a run, in its output directory. */
export const LATEST = 'latest';

/** A checkpoint that cannot serve the run: it is missing, damaged, or does not fit the model. */
export class CheckpointError extends FfxError<ErrorCode<'checkpoint'>> {}

/** Every layer's tensors (weights, biases, optimizer slots) and optimizer step counts. */
export interface ModelState {
  tensors: Map<string, NamedTensor>;
  /** Per layer, in layer order. */
  optimizerSteps: number[];
}

/** What a run resumes from: a checkpoint's state and the epochs it had trained. */
export interface Checkpoint {
  state: ModelState;
  /** Epochs trained when the checkpoint was written. */
  epoch: number;
  /** What the run recorded of its lineage (JSON, unchecked: the reader checks it). */
  lineage?: unknown;
}

/** The name of the checkpoint written after `epoch` epochs. */
export function checkpointName(epoch: number): string {
  return `checkpoint-epoch${epoch}.safetensors`;
}

function sha256(data: Float32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
    .digest('hex');
}

/**
 * SHA-256 over every other metadata entry (the tensors' checksums among them), in key order:
 * the metadata is covered as the tensors are, so an edited epoch or step count is found.
 */
function metadataDigest(metadata: Record<string, string>): string {
  const entries = Object.entries(metadata)
    .filter(([k]) => k !== 'integrity')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash('sha256').update(JSON.stringify(entries)).digest('hex');
}

/**
 * Refuses weights or optimizer state that are not finite: a diverged run (whose loss can stay
 * finite: goodness collapses to 0 once the weights are NaN) must not be saved, scored or
 * resumed as if it had trained. `when` says at which point, e.g. "after epoch 3".
 */
export function checkFiniteState(state: ModelState, when: string): void {
  for (const [name, t] of state.tensors) {
    const i = t.data.findIndex((v) => !Number.isFinite(v));
    if (i >= 0) {
      throw new FfxError(
        'NON_FINITE_WEIGHTS',
        `tensor "${name}" holds ${t.data[i]} (element ${i}) ${when}: the run diverged; ` +
          'lower optimizer.lr (or resume from an earlier checkpoint with a lower one)',
      );
    }
  }
}

/** What a reader in another language needs to compute with the tensors (metadata `layout`). */
function layoutNote(cfg: RunConfig): string {
  if (cfg.model.loss === 'competitive') {
    return (
      'layers.<i>.weight is [out, in/groups, k, k] for a conv layer (torch.nn.Conv2d; input ' +
      'channels last) or [out, in] for a dense one (torch.nn.Linear); a layer computes ' +
      `BatchNorm(maxpool(relu(conv(x) + bias))) with layers.<i>.bn.{weight, bias, runningMean, runningVar}, eps ${BN_EPS}; ` +
      "kernel, stride, padding, groups and pool are config's model.layers"
    );
  }
  return 'layers.<i>.weight is [out, in] (torch.nn.Linear); a layer computes relu(normalise(x) @ weight.T + bias)';
}

/** Writes `state` with the run config and the epoch reached, atomically. */
export async function writeCheckpoint(
  file: string,
  state: ModelState,
  cfg: RunConfig,
  epoch: number,
  lineage?: unknown,
): Promise<void> {
  // Layer order, whatever order the layers' parts arrived in.
  const tensors = new Map(
    [...state.tensors].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })),
  );
  const metadata: Record<string, string> = {
    format: FORMAT,
    epoch: String(epoch),
    optimizerSteps: JSON.stringify(state.optimizerSteps),
    config: JSON.stringify(cfg),
    sha256: JSON.stringify(Object.fromEntries([...tensors].map(([n, t]) => [n, sha256(t.data)]))),
    layout: layoutNote(cfg),
  };
  if (lineage !== undefined) metadata.lineage = JSON.stringify(lineage);
  metadata.integrity = metadataDigest(metadata);
  await writeFileAtomic(file, encodeSafetensors(tensors, metadata), 'checkpoint');
}

/**
 * Writes the checkpoint of `epoch` into `dir`, then points `latest` at it, then deletes all but
 * the newest `keep` checkpoints (0: keep every one). Returns the checkpoint's path.
 */
export async function commitCheckpoint(
  dir: string,
  state: ModelState,
  cfg: RunConfig,
  epoch: number,
  keep: number,
  name = checkpointName(epoch),
  lineage?: unknown,
): Promise<string> {
  const file = join(dir, name);
  await writeCheckpoint(file, state, cfg, epoch, lineage);
  await writeFileAtomic(join(dir, LATEST), `${name}\n`, 'checkpoint pointer');
  if (keep > 0) {
    const old = (await readdir(dir))
      .map((f) => ({ f, epoch: /^checkpoint-epoch(\d+)\.safetensors$/.exec(f)?.[1] }))
      .filter((c): c is { f: string; epoch: string } => c.epoch !== undefined)
      .sort((a, b) => Number(b.epoch) - Number(a.epoch))
      .slice(keep);
    for (const { f } of old) if (f !== name) await rm(join(dir, f), { force: true });
  }
  return file;
}

/**
 * The checkpoint `arg` names: a file, or `latest` for the newest complete checkpoint under
 * `outDir`.
 */
export async function resolveCheckpoint(arg: string, outDir: string): Promise<string> {
  if (arg !== LATEST) return arg;
  const pointer = join(outDir, LATEST);
  let name: string;
  try {
    name = (await readFile(pointer, 'utf8')).trim();
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') {
      throw new CheckpointError(
        'CHECKPOINT_NOT_FOUND',
        `--resume latest: ${outDir} has no complete checkpoint yet (no ${pointer}); ` +
          'give --out the run directory, or a checkpoint file',
      );
    }
    throw err;
  }
  // Only a file of that directory: the pointer cannot send a reader elsewhere.
  if (name !== basename(name) || name === '' || name.startsWith('.')) {
    throw new CheckpointError('CHECKPOINT_CORRUPT', `${pointer} holds "${name}", not a file name`);
  }
  return join(outDir, name);
}

async function readFileOf(file: string) {
  const bytes = await withFile(file, `cannot read checkpoint ${file}`, () => readFile(file));
  return decodeSafetensors(bytes, file);
}

/** The run config stored in a checkpoint's metadata (validated), or undefined if it has none. */
export async function checkpointConfig(file: string): Promise<RunConfig | undefined> {
  const { metadata } = await readFileOf(file);
  if (!metadata.config) return undefined;
  try {
    // Over the defaults: a key added since the checkpoint was written takes its default, which
    // is what that version did without it.
    return validateConfig(mergeConfig(DEFAULT_CONFIG, JSON.parse(metadata.config)));
  } catch (err) {
    if (!isFfxError(err) && !(err instanceof SyntaxError)) throw err;
    throw new CheckpointError(
      'CHECKPOINT_CORRUPT',
      `${file}: the config in its metadata is not valid: ${(err as Error).message}`,
    );
  }
}

/**
 * Reads a checkpoint to resume `model` from, for a run of `epochs` epochs. Refuses, naming the
 * file and what is wrong: a tensor whose bytes do not match their SHA-256, metadata that is not
 * what ffx writes (the epoch not an integer in 0..epochs, ...), a layer's weight or bias that
 * is missing or does not fit the model.
 */
export async function readCheckpoint(
  file: string,
  model: ModelConfig,
  epochs: number,
): Promise<Checkpoint> {
  const { tensors, metadata } = await readFileOf(file);
  const corrupt = (what: string) => new CheckpointError('CHECKPOINT_CORRUPT', `${file}: ${what}`);
  if (metadata.format !== undefined && !FORMATS.includes(metadata.format)) {
    throw corrupt(`format "${metadata.format}" is not one ffx reads (${FORMATS.join(', ')})`);
  }
  if (metadata.format === FORMAT && metadata.integrity !== metadataDigest(metadata)) {
    throw corrupt(
      'its metadata does not match its integrity checksum: it was changed after it was written',
    );
  }
  if (WITH_TENSOR_SUMS.includes(metadata.format ?? '')) {
    const sums = parseJson(metadata.sha256, () => corrupt('no sha256 in its metadata'));
    for (const [name, t] of tensors) {
      const want = (sums as Record<string, unknown>)[name];
      if (want !== sha256(t.data)) {
        throw corrupt(
          want === undefined
            ? `tensor "${name}" has no checksum`
            : `tensor "${name}" does not match its SHA-256: the file is damaged`,
        );
      }
    }
  }
  const epoch = Number(metadata.epoch ?? '0');
  if (!/^\d+$/.test(metadata.epoch ?? '0') || !Number.isSafeInteger(epoch) || epoch > epochs) {
    throw corrupt(
      `its epoch "${metadata.epoch}" is not an integer in 0..${epochs} (the run's train.epochs)`,
    );
  }
  // A checkpoint's name says its epoch: the two must agree.
  const named = /^checkpoint-epoch(\d+)\.safetensors$/.exec(basename(file))?.[1];
  if (named !== undefined && Number(named) !== epoch) {
    throw corrupt(`its name says epoch ${named}, its metadata epoch ${metadata.epoch}`);
  }
  const numLayers = model.layers.length - 1;
  for (let i = 0; i < numLayers; i++) {
    for (const [name, shape] of layerParamShapes(model, i)) {
      const got = tensors.get(name)?.shape;
      if (got?.join('x') !== shape.join('x')) {
        throw new CheckpointError(
          'CHECKPOINT_MISMATCH',
          `${file}: ${got ? `tensor "${name}" is [${got.join(', ')}]` : `no tensor "${name}"`}, ` +
            `model ${describeLayers(model.layers)} needs [${shape.join(', ')}]`,
        );
      }
    }
  }
  let steps: unknown = [];
  if (metadata.optimizerSteps !== undefined) {
    steps = parseJson(metadata.optimizerSteps, () => corrupt('optimizerSteps is not JSON'));
  }
  const stepsOk =
    Array.isArray(steps) &&
    steps.length <= numLayers &&
    steps.every((s) => Number.isSafeInteger(s) && (s as number) >= 0);
  if (!stepsOk) {
    throw corrupt(`optimizerSteps ${metadata.optimizerSteps} is not a list of integers >= 0`);
  }
  // Every layer trains every batch once: the layers' step counts are one number.
  if ((steps as number[]).some((s) => s !== (steps as number[])[0])) {
    throw corrupt(`optimizerSteps ${metadata.optimizerSteps} differ between layers`);
  }
  const state = {
    tensors,
    optimizerSteps: Array.from({ length: numLayers }, (_, i) => (steps as number[])[i] ?? 0),
  };
  checkFiniteState(state, `in ${file}`);
  let lineage: unknown;
  try {
    lineage = metadata.lineage === undefined ? undefined : JSON.parse(metadata.lineage);
  } catch {
    throw corrupt('its lineage is not JSON');
  }
  return { state, epoch, lineage };
}

function parseJson(text: string | undefined, error: () => Error): unknown {
  if (text === undefined) throw error();
  try {
    return JSON.parse(text);
  } catch {
    throw error();
  }
}

/** Files that say a directory holds a run (finished or not). */
function isRunFile(name: string): boolean {
  return (
    name === 'model.safetensors' ||
    name === LATEST ||
    name === RUN_FILES.metrics ||
    /^checkpoint-epoch\d+\.safetensors$/.test(name)
  );
}

/**
 * The directory a new run writes to: `dir`, unless it holds a run already; then, rather than
 * write over it, the first free `dir-2`, `dir-3`, ... (made here, so that two runs started at
 * once cannot take the same). With `overwrite`, `dir` as it is.
 */
export async function claimRunDir(dir: string, overwrite: boolean): Promise<string> {
  const holdsRun = async (d: string) => {
    try {
      return (await readdir(d)).some(isRunFile);
    } catch (err) {
      // Not there (or not a directory: writing it says so, naming it): no run there.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return false;
      throw fileError(err, d, `cannot read the output directory ${d}`);
    }
  };
  if (overwrite || !(await holdsRun(dir))) return dir;
  for (let n = 2; ; n++) {
    const candidate = `${dir.replace(/\/+$/, '')}-${n}`;
    try {
      await mkdir(candidate);
      return candidate;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw fileError(err, candidate, `cannot create the output directory ${candidate}`);
    }
  }
}
