// How a run's layers are laid out on processes: a partition is a list of stages, each a run of
// consecutive layers (a group) served by one process, or by R replicas of it. Written as
// --partition takes it: "1,2-3,4x2" is layer 1, layers 2-3, and layer 4 on two replicas.
import { UsageError } from '../errors.js';
import { rangeName, type LayerRange } from '../transport/layer-range.js';

export interface PartStage {
  layers: LayerRange;
  /** Processes holding this group (data parallel inside the pipeline); 1 without replicas. */
  replicas: number;
}

export type Partition = PartStage[];

/** "1,2-3,4x2": the inverse of parsePartition. */
export function partitionName(p: Partition): string {
  return p.map((s) => rangeName(s.layers) + (s.replicas > 1 ? `x${s.replicas}` : '')).join(',');
}

/** One stage per layer: the layout without --partition. */
export function onePerLayer(numLayers: number): Partition {
  return Array.from({ length: numLayers }, (_, i) => ({
    layers: { first: i + 1, last: i + 1 },
    replicas: 1,
  }));
}

/**
 * --partition SPEC for a network of `numLayers` layers (or as many as it names): every layer in
 * exactly one stage, the stages in order; anything else is a usage error naming the gap, the
 * overlap or the bad part.
 */
export function parsePartition(spec: string, numLayers?: number): Partition {
  const bad = (why: string) =>
    new UsageError(`--partition ${JSON.stringify(spec)}: ${why} (e.g. 1,2-3,4x2)`);
  const out: Partition = [];
  for (const part of spec.split(',')) {
    const m = /^\s*(\d{1,6})(?:-(\d{1,6}))?(?:x(\d{1,3}))?\s*$/.exec(part);
    if (!m) throw bad(`"${part}" is not N, FIRST-LAST, or either with xR (replicas)`);
    const first = Number(m[1]);
    const last = m[2] === undefined ? first : Number(m[2]);
    const replicas = m[3] === undefined ? 1 : Number(m[3]);
    if (first < 1 || last < first) throw bad(`"${part}": layers are 1-based, FIRST <= LAST`);
    if (replicas < 1) throw bad(`"${part}": at least 1 replica`);
    out.push({ layers: { first, last }, replicas });
  }
  let next = 1;
  for (const { layers } of out) {
    if (layers.first > next) {
      throw bad(
        `no stage holds layer${layers.first - next > 1 ? 's' : ''} ${rangeName({ first: next, last: layers.first - 1 })}`,
      );
    }
    if (layers.first < next) {
      throw bad(`layer ${layers.first} is in two stages (stages are consecutive, in order)`);
    }
    next = layers.last + 1;
  }
  numLayers ??= next - 1;
  if (next <= numLayers) {
    throw bad(
      `no stage holds layer${numLayers - next > 0 ? 's' : ''} ${rangeName({ first: next, last: numLayers })}`,
    );
  }
  if (next > numLayers + 1) {
    throw bad(`the network has ${numLayers} layers, the partition ${next - 1}`);
  }
  return out;
}
