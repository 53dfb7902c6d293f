// What a stage does with a run's config before any socket is touched: checks it against this
// stage (its layers, its place in the pipeline, the model and optimizer under the rules of a
// config file, the run's largest batches against the backend's memory), then builds the layers
// the run trains (fresh from the seed, or a checkpoint's state) or, to evaluate, takes the one
// the stage holds. A config the stage cannot serve is a StageError whose code the coordinator
// sees; nothing here sends, binds or keeps a timer.
import { ConfigError, validateSection } from '../config/config.js';
import { buildLayer, checkRunMemory, layerPrefix, type Layer } from '../core/ff-network.js';
import { describeLayers, modelWidths } from '../core/model-shape.js';
import { NUM_CLASSES } from '../data/classes.js';
import { MAX_HEADER_BYTES } from '../transport/bounds.js';
import type { ConfigMessage } from '../transport/wire.js';
import { StageError } from './errors.js';
import { layersOf, rangeLabel, type LayerRange } from '../transport/layer-range.js';

/**
 * The layers a stage of `layers` serves the run of `config` with: `held` itself (an eval run;
 * each must have the model's shape), or new ones (a training run), which the caller owns.
 */
export function setUpRun(
  config: ConfigMessage,
  layers: LayerRange,
  held: readonly Layer[] | null,
  replica = 1,
): Layer[] {
  const name = rangeLabel(layers);
  const bad = (message: string) =>
    new StageError('STAGE_BAD_CONFIG', `${name}: config of run ${config.run}: ${message}`);
  if (config.layer !== layers.first || config.last !== layers.last) {
    throw bad(`it is for ${rangeLabel({ first: config.layer, last: config.last })}`);
  }
  if (config.numLayers < layers.last) throw bad(`numLayers ${config.numLayers} < this stage's`);
  if (config.replica !== replica) throw bad(`it is for replica ${config.replica}, not ${replica}`);
  // A replica's downstream is its primary's: it sends nothing on.
  if (replica === 1 && (config.next === null) !== (layers.last === config.numLayers)) {
    throw bad(`next is ${config.next} for ${name} of ${config.numLayers}`);
  }
  if (config.replicas > 1 && config.shards % config.replicas !== 0) {
    throw bad(`train.shards ${config.shards} is not a multiple of its ${config.replicas} replicas`);
  }
  let model, optimizer;
  try {
    model = validateSection('model', config.model);
    optimizer = validateSection('optimizer', config.optimizer);
  } catch (err) {
    if (err instanceof ConfigError) throw bad(err.message);
    throw err;
  }
  const widths = modelWidths(model.layers);
  const shapes = layersOf(layers).map((layer) => {
    const [inDim, outDim] = [widths[layer - 1], widths[layer]];
    if (inDim === undefined || outDim === undefined) {
      throw bad(`model.layers ${describeLayers(model.layers)} has no layer ${layer}`);
    }
    // The run's largest batches must fit this backend: refused now, not crashed on later.
    try {
      checkRunMemory(model, [layer - 1], config.batchSize, config.evalBatchSize);
    } catch (err) {
      throw bad((err as Error).message);
    }
    return { layer, inDim, outDim };
  });
  if (config.mode === 'eval') {
    const fits =
      held?.length === shapes.length &&
      shapes.every(
        (s, i) => held[i]!.config.inDim === s.inDim && held[i]!.config.outDim === s.outDim,
      );
    if (!fits) {
      const has = held?.length
        ? held.map((l) => `${l.config.inDim}-${l.config.outDim}`).join(', ')
        : 'no trained layer';
      const asked = shapes.map((s) => `${s.inDim}-${s.outDim}`).join(', ');
      throw new StageError(
        'STAGE_NO_WEIGHTS',
        `${name}: asked to evaluate ${asked}, but this stage holds ${has}`,
      );
    }
    return [...held!];
  }
  const built: Layer[] = [];
  try {
    for (const { layer } of shapes) {
      const index = layer - 1;
      const fresh = buildLayer(model, optimizer, config.seed, index, config.shards);
      built.push(fresh);
      if (Object.keys(config.state).length > 0) {
        // Resuming: the checkpoint's weights and optimizer state replace the fresh ones.
        try {
          fresh.importState(layerPrefix(index), new Map(Object.entries(config.state)));
        } catch (err) {
          throw new StageError(
            'STAGE_BAD_STATE',
            `layer ${layer}: cannot resume: ${(err as Error).message}`,
          );
        }
        fresh.steps = config.optimizerStep;
      }
    }
  } catch (err) {
    for (const l of built) l.dispose();
    throw err;
  }
  return built;
}

/** The largest data message of a run, for a stage whose input is `inDim` wide. */
export function largestDataMessage(config: ConfigMessage, inDim: number): number {
  // With readouts a batch carries its images a third time (neutral rows), and their labels.
  const rows = Math.max(3 * config.batchSize, NUM_CLASSES * config.evalBatchSize);
  return rows * inDim * 4 + config.batchSize * 4 + MAX_HEADER_BYTES;
}
