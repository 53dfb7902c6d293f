// The shapes a model's layers pass on. `model.layers` lists the input, then one entry per layer:
//   input:  a width (784: a flat vector) or [channels, height, width] ([3, 32, 32]: an image);
//   dense:  a width (1000);
//   conv:   { conv: channels, kernel, stride?, padding?, pool?, groups? }.
// Every boundary has a shape [height, width, channels] (a dense width d is [1, 1, d]); on the
// wire and between layers a batch is [rows, height, width, channels], channels last (NHWC, as
// tfjs keeps images), flat per row. The dataset's images are read into that order.

export interface ConvSpec {
  /** Output channels. */
  conv: number;
  /** Side of the square kernel. */
  kernel: number;
  /** Step between kernel positions (default 1). */
  stride?: number;
  /** Zeros added on every side before the convolution (default 0). */
  padding?: number;
  /** Side (and stride) of a max pooling after the ReLU (default 1: none). */
  pool?: number;
  /** Channel groups: each output group sees only its input group (default 1). */
  groups?: number;
}

export type LayerSpec = number | readonly number[] | ConvSpec;

/** [height, width, channels] of a boundary between layers. */
export type Shape = readonly [number, number, number];

export function isConv(spec: LayerSpec | undefined): spec is ConvSpec {
  return typeof spec === 'object' && spec !== null && !Array.isArray(spec);
}

/** A conv layer's output shape for an input of `shape`, or why it has none. */
export function convOutput(spec: ConvSpec, [h, w, c]: Shape): Shape | string {
  const { kernel, stride = 1, padding = 0, pool = 1, groups = 1 } = spec;
  if (c % groups !== 0 || spec.conv % groups !== 0)
    return `its ${groups} groups must divide its ${c} input and ${spec.conv} output channels`;
  const side = (n: number) => Math.floor((n + 2 * padding - kernel) / stride) + 1;
  const [ho, wo] = [side(h), side(w)];
  if (ho < 1 || wo < 1) return `a ${kernel}x${kernel} kernel does not fit a ${h}x${w} input`;
  if (ho < pool || wo < pool)
    return `a ${pool}x${pool} pooling does not fit its ${ho}x${wo} output`;
  return [Math.floor(ho / pool), Math.floor(wo / pool), spec.conv];
}

/**
 * The shape at every boundary: the input's, then each layer's output. Throws a RangeError
 * naming the first entry that does not fit (the config's rules check the entries' types).
 */
export function modelShapes(layers: readonly LayerSpec[]): Shape[] {
  const first = layers[0];
  if (first === undefined || isConv(first)) throw new RangeError('the input must come first');
  const shapes: Shape[] = [
    typeof first === 'number' ? [1, 1, first] : [first[1]!, first[2]!, first[0]!],
  ];
  layers.slice(1).forEach((spec, i) => {
    const prev = shapes[i]!;
    if (isConv(spec)) {
      if (prev[0] === 1 && prev[1] === 1 && i > 0 && !isConv(layers[i]))
        throw new RangeError(`layer ${i + 1}: a conv layer cannot follow a dense one`);
      const out = convOutput(spec, prev);
      if (typeof out === 'string') throw new RangeError(`layer ${i + 1}: ${out}`);
      shapes.push(out);
    } else if (typeof spec === 'number') {
      shapes.push([1, 1, spec]);
    } else {
      throw new RangeError(`layer ${i + 1}: only the input may be [channels, height, width]`);
    }
  });
  return shapes;
}

/**
 * The shape of one row of a batch at a boundary of `shape`, as the wire carries it: an image or
 * conv activations [h, w, c] (channels last), a vector [d].
 */
export function rowShape([h, w, c]: Shape): number[] {
  return h * w > 1 ? [h, w, c] : [c];
}

/** Values per row at every boundary: [784, 1000, ...] for a dense model. */
export function modelWidths(layers: readonly LayerSpec[]): number[] {
  return modelShapes(layers).map(([h, w, c]) => h * w * c);
}

/** Whether any layer is convolutional (such a model trains every layer with 'competitive'). */
export function hasConv(layers: readonly LayerSpec[]): boolean {
  return layers.slice(1).some(isConv);
}

/** A model's layers in a line: "784-1000-1000", "1x28x28-c20k3p1-c80k3p1g10/2-10". */
export function describeLayers(layers: readonly LayerSpec[]): string {
  return layers
    .map((spec) => {
      if (typeof spec === 'number') return String(spec);
      if (!isConv(spec)) return spec.join('x');
      const { kernel, stride = 1, padding = 0, pool = 1, groups = 1 } = spec;
      return (
        `c${spec.conv}k${kernel}` +
        (stride > 1 ? `s${stride}` : '') +
        (padding > 0 ? `p${padding}` : '') +
        (groups > 1 ? `g${groups}` : '') +
        (pool > 1 ? `/${pool}` : '')
      );
    })
    .join('-');
}

/** Layers first..last (1-based) in a line, from their input: "1x28x28-c20k3p1", "48-32-32". */
export function describeRange(layers: readonly LayerSpec[], first: number, last: number): string {
  const [h, w, c] = modelShapes(layers)[first - 1]!;
  const input: LayerSpec = h * w > 1 || Array.isArray(layers[first - 1]) ? [c, h, w] : c;
  return describeLayers([input, ...layers.slice(first, last + 1)]);
}
