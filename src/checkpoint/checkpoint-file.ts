// The checkpoint file: safetensors holding every layer's weights and optimizer slots, with the
// epoch reached, the optimizer step per layer and the run config in its metadata. Whatever ran
// the layers (this process, or a pipeline of stages) writes the same format, and either resumes
// from the other's files. Tensor names come from layerPrefix (core/ff-network.ts).
import { readFile, writeFile } from 'node:fs/promises';
import { layerPrefix, type ModelConfig } from '../core/ff-network.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { validateConfig, type RunConfig } from '../config/config.js';
import { FfxError, withFile } from '../errors.js';

const CHECKPOINT_FORMAT = 'ffx-checkpoint-v1';

/** A checkpoint that cannot serve the run: it lacks a layer's tensor, or the shapes differ. */
export class CheckpointError extends FfxError<'CHECKPOINT_MISMATCH'> {
  constructor(message: string) {
    super('CHECKPOINT_MISMATCH', message);
  }
}

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
}

/** Writes `state` with the run config and the epoch reached. */
export async function writeCheckpoint(
  file: string,
  state: ModelState,
  cfg: RunConfig,
  epoch: number,
): Promise<void> {
  const metadata = {
    format: CHECKPOINT_FORMAT,
    epoch: String(epoch),
    optimizerSteps: JSON.stringify(state.optimizerSteps),
    config: JSON.stringify(cfg),
    layout:
      'layers.<i>.weight is [out, in] (torch.nn.Linear); a layer computes relu(normalise(x) @ weight.T + bias)',
  };
  // Layer order, whatever order the layers' parts arrived in.
  const tensors = new Map(
    [...state.tensors].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })),
  );
  const bytes = encodeSafetensors(tensors, metadata);
  await withFile(file, `cannot write checkpoint ${file}`, () => writeFile(file, bytes));
}

async function readFileOf(file: string) {
  const bytes = await withFile(file, `cannot read checkpoint ${file}`, () => readFile(file));
  return decodeSafetensors(bytes, file);
}

/** The run config stored in a checkpoint's metadata (validated), or undefined if it has none. */
export async function checkpointConfig(file: string): Promise<RunConfig | undefined> {
  const { metadata } = await readFileOf(file);
  return metadata.config ? validateConfig(JSON.parse(metadata.config)) : undefined;
}

/**
 * Reads a checkpoint to resume `model` from; throws, naming the file and tensor, when a layer's
 * weight or bias is missing or does not fit the model.
 */
export async function readCheckpoint(file: string, model: ModelConfig): Promise<Checkpoint> {
  const { tensors, metadata } = await readFileOf(file);
  const widths = model.layers;
  for (let i = 0; i + 1 < widths.length; i++) {
    const want = [
      [`${layerPrefix(i)}.weight`, [widths[i + 1]!, widths[i]!]],
      [`${layerPrefix(i)}.bias`, [widths[i + 1]!]],
    ] as const;
    for (const [name, shape] of want) {
      const got = tensors.get(name)?.shape;
      if (got?.join('x') !== shape.join('x')) {
        throw new CheckpointError(
          `${file}: ${got ? `tensor "${name}" is [${got.join(', ')}]` : `no tensor "${name}"`}, ` +
            `model ${widths.join('-')} needs [${shape.join(', ')}]`,
        );
      }
    }
  }
  const steps = metadata.optimizerSteps ? (JSON.parse(metadata.optimizerSteps) as number[]) : [];
  return {
    state: {
      tensors,
      optimizerSteps: widths.slice(1).map((_, i) => steps[i] ?? 0),
    },
    epoch: Number(metadata.epoch ?? 0),
  };
}
