// What a stage does with a run's config before any socket is touched: checks it against this
// stage (its layer, its place in the pipeline, the model and optimizer under the rules of a
// config file, the run's largest batches against the backend's memory), then builds the layer
// the run trains (fresh from the seed, or a checkpoint's state) or, to evaluate, takes the one
// the stage holds. A config the stage cannot serve is a StageError whose code the coordinator
// sees; nothing here sends, binds or keeps a timer.
import { ConfigError, validateSection } from '../config/config.js';
import type { FFLayer } from '../core/ff-layer.js';
import { buildLayer, checkRunMemory, layerPrefix } from '../core/ff-network.js';
import { NUM_CLASSES } from '../data/classes.js';
import { MAX_HEADER_BYTES } from '../transport/bounds.js';
import type { ConfigMessage } from '../transport/wire.js';
import { StageError } from './errors.js';

/**
 * The layer stage `layer` (1-based) serves the run of `config` with: `held` itself (an eval
 * run; it must have the model's shape), or a new one (a training run), which the caller owns.
 */
export function setUpRun(config: ConfigMessage, layer: number, held: FFLayer | null): FFLayer {
  const bad = (message: string) =>
    new StageError('STAGE_BAD_CONFIG', `layer ${layer}: config of run ${config.run}: ${message}`);
  if (config.layer !== layer) throw bad(`it is for layer ${config.layer}`);
  if (config.numLayers < layer) throw bad(`numLayers ${config.numLayers} < this layer`);
  if ((config.next === null) !== (layer === config.numLayers)) {
    throw bad(`next is ${config.next} for layer ${layer} of ${config.numLayers}`);
  }
  let model, optimizer;
  try {
    model = validateSection('model', config.model);
    optimizer = validateSection('optimizer', config.optimizer);
  } catch (err) {
    if (err instanceof ConfigError) throw bad(err.message);
    throw err;
  }
  const index = layer - 1;
  const [inDim, outDim] = [model.layers[index], model.layers[index + 1]];
  if (inDim === undefined || outDim === undefined) {
    throw bad(`model.layers ${model.layers.join('-')} has no layer ${layer}`);
  }
  // The run's largest batches must fit this backend: refused now, not crashed on later.
  try {
    checkRunMemory(Math.max(inDim, outDim), config.batchSize, config.evalBatchSize, model.readout);
  } catch (err) {
    throw bad((err as Error).message);
  }
  if (config.mode === 'eval') {
    const shape = held?.config;
    if (!shape || shape.inDim !== inDim || shape.outDim !== outDim) {
      const has = shape ? `${shape.inDim}-${shape.outDim}` : 'no trained layer';
      throw new StageError(
        'STAGE_NO_WEIGHTS',
        `layer ${layer}: asked to evaluate ${inDim}-${outDim}, but this stage holds ${has}`,
      );
    }
    return held!;
  }
  const fresh = buildLayer(model, optimizer, config.seed, index);
  if (Object.keys(config.state).length > 0) {
    // Resuming: the checkpoint's weights and optimizer state replace the fresh ones.
    try {
      fresh.importState(layerPrefix(index), new Map(Object.entries(config.state)));
    } catch (err) {
      fresh.dispose();
      throw new StageError(
        'STAGE_BAD_STATE',
        `layer ${layer}: cannot resume: ${(err as Error).message}`,
      );
    }
    fresh.steps = config.optimizerStep;
  }
  return fresh;
}

/** The largest data message of a run, for a stage whose input is `inDim` wide. */
export function largestDataMessage(config: ConfigMessage, inDim: number): number {
  // With readouts a batch carries its images a third time (neutral rows), and their labels.
  const rows = Math.max(3 * config.batchSize, NUM_CLASSES * config.evalBatchSize);
  return rows * inDim * 4 + config.batchSize * 4 + MAX_HEADER_BYTES;
}
