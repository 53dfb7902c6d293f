// The checkpoint file: safetensors holding every layer's weights and optimizer slots, with the
// epoch reached, the optimizer step per layer and the run config in its metadata. The local and
// the distributed trainer write the same format, and either resumes from the other's files.
import { readFile, writeFile } from 'node:fs/promises';
import type { FFNetwork, ModelConfig } from '../core/ff-network.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { validateConfig, type RunConfig } from '../config/config.js';

const CHECKPOINT_FORMAT = 'ffx-checkpoint-v1';

/** A checkpoint that cannot serve the run: it lacks a layer's tensor, or the shapes differ. */
export class CheckpointError extends Error {
  readonly code = 'CHECKPOINT_MISMATCH';
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

/** Weights plus optimizer state and the epoch reached, as safetensors with metadata. */
export async function saveCheckpoint(
  net: FFNetwork,
  cfg: RunConfig,
  epoch: number,
  file: string,
): Promise<void> {
  const steps = net.layers.map((l) => l.optimizer.step);
  await writeCheckpoint(file, net.exportState(true), steps, cfg, epoch);
}

/** The checkpoint file format, shared by the local and the distributed trainer. */
export async function writeCheckpoint(
  file: string,
  tensors: Map<string, NamedTensor>,
  optimizerSteps: number[],
  cfg: RunConfig,
  epoch: number,
): Promise<void> {
  const metadata = {
    format: CHECKPOINT_FORMAT,
    epoch: String(epoch),
    optimizerSteps: JSON.stringify(optimizerSteps),
    config: JSON.stringify(cfg),
    layout:
      'layers.<i>.weight is [out, in] (torch.nn.Linear); a layer computes relu(normalise(x) @ weight.T + bias)',
  };
  await writeFile(file, encodeSafetensors(tensors, metadata));
}

/** The run config stored in a checkpoint's metadata (validated), or undefined if it has none. */
export async function checkpointConfig(file: string): Promise<RunConfig | undefined> {
  const { metadata } = decodeSafetensors(await readFile(file), file);
  return metadata.config ? validateConfig(JSON.parse(metadata.config)) : undefined;
}

/** What a run resumes from: a checkpoint's tensors, optimizer steps and epoch. */
export interface ResumeState {
  tensors: Map<string, NamedTensor>;
  /** Per layer. */
  optimizerSteps: number[];
  /** Epochs trained when the checkpoint was written. */
  epoch: number;
}

/**
 * Reads a checkpoint to resume `model` from; throws, naming the file and tensor, when a layer's
 * weight or bias is missing or does not fit the model.
 */
export async function readCheckpoint(file: string, model: ModelConfig): Promise<ResumeState> {
  const { tensors, metadata } = decodeSafetensors(await readFile(file), file);
  const widths = model.layers;
  for (let i = 0; i + 1 < widths.length; i++) {
    const want = [
      [`layers.${i}.weight`, [widths[i + 1]!, widths[i]!]],
      [`layers.${i}.bias`, [widths[i + 1]!]],
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
  return { tensors, optimizerSteps: steps, epoch: Number(metadata.epoch ?? 0) };
}

/** Loads weights (and optimizer state when present); returns the epoch the file was saved at. */
export async function loadCheckpoint(
  net: FFNetwork,
  file: string,
  model: ModelConfig,
): Promise<number> {
  const state = await readCheckpoint(file, model);
  net.importState(state.tensors);
  net.layers.forEach((l, i) => (l.optimizer.step = state.optimizerSteps[i] ?? 0));
  return state.epoch;
}
