// The layers a stage holds: a run of consecutive layers (1-based, first <= last), one for a
// stage of a single layer. Its name is "2" or "2-3", as --layer takes it and as logs say it.
export interface LayerRange {
  readonly first: number;
  readonly last: number;
}

/** "2" for one layer, "2-3" for a group. */
export function rangeName({ first, last }: LayerRange): string {
  return first === last ? String(first) : `${first}-${last}`;
}

/** "layer 2" or "layers 2-3": a stage named in a line. */
export function rangeLabel(r: LayerRange): string {
  return `${r.first === r.last ? 'layer' : 'layers'} ${rangeName(r)}`;
}

/** The layers of `r`, in order. */
export function layersOf({ first, last }: LayerRange): number[] {
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

/** Whether `r` is a well-formed range within 1..numLayers. */
export function inRun(r: LayerRange, numLayers: number): boolean {
  return (
    Number.isInteger(r.first) &&
    Number.isInteger(r.last) &&
    r.first >= 1 &&
    r.first <= r.last &&
    r.last <= numLayers
  );
}

/** "2" or "2-3" (what --layer takes) as a range; a RangeError saying what is expected otherwise. */
export function parseLayerRange(text: string): LayerRange {
  const m = /^\s*(\d{1,6})(?:\s*-\s*(\d{1,6}))?\s*$/.exec(text);
  const first = Number(m?.[1]);
  const last = m?.[2] === undefined ? first : Number(m[2]);
  if (!m || first < 1 || last < first) {
    throw new RangeError(
      `"${text}" is not a layer or a run of layers: give N (e.g. 2) or FIRST-LAST (e.g. 2-3), 1-based, FIRST <= LAST`,
    );
  }
  return { first, last };
}
