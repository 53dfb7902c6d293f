// The conv (competitive) layer's training step against the bare convolution on the same
// backend: im2col, the forward product and the weight-gradient product, timed the same way
// (what any conv layer trained by gradient does on a backend whose convs are products). The
// step adds ReLU, pooling, BatchNorm, the class goodness and the loss, forward and back, and the
// optimizer: its overhead is step / bare. The shapes are config/fashion-mnist-conv.json's conv
// layers.
import * as tf from '@tensorflow/tfjs';
import { CompetitiveLayer } from '../src/core/competitive-layer.js';
import { convKernels } from '../src/core/conv-kernels.js';
import { fromHost, host } from '../src/core/host-memory.js';
import { DEFAULT_OPTIMIZER } from '../src/core/optimizer.js';
import { modelShapes, type LayerSpec } from '../src/core/model-shape.js';
import { timeIt } from './time-it.js';

export interface ConvRow {
  backend: string;
  layer: string;
  batch: number;
  stepMs: number;
  bareMs: number;
}

/** config/fashion-mnist-conv.json's conv layers (its last, dense, layer is not a conv). */
const LAYERS: LayerSpec[] = [
  [1, 28, 28],
  { conv: 20, kernel: 3, padding: 1 },
  { conv: 80, kernel: 3, padding: 1, groups: 10, pool: 2 },
  { conv: 240, kernel: 3, padding: 1 },
  { conv: 480, kernel: 3, padding: 1, groups: 10, pool: 2 },
];

export function benchConvLayers(backend: string, batch: number, minMs: number): ConvRow[] {
  const shapes = modelShapes(LAYERS);
  return LAYERS.slice(1).map((spec, i) => {
    const inShape = shapes[i]!;
    const layer = new CompetitiveLayer(
      { inShape, spec: spec as never, alpha: 1, seed: 1 },
      {
        ...DEFAULT_OPTIMIZER,
        lr: 0.001,
      },
    );
    const [h, w, c] = inShape;
    const x = tf.randomNormal([batch, h * w * c]) as tf.Tensor2D;
    const labels = Array.from({ length: batch }, (_, r) => r % 10);
    const stepMs = timeIt(() => {
      const { h: out, stats } = layer.trainStep(x, batch, 0.001, labels);
      stats.dataSync();
      tf.dispose([out, stats]);
    }, minMs);
    const conv = spec as Exclude<LayerSpec, number | readonly number[]>;
    const { kernel, padding = 0, stride = 1, groups = 1 } = conv;
    const ho = Math.floor((h + 2 * padding - kernel) / stride) + 1;
    const wo = Math.floor((w + 2 * padding - kernel) / stride) + 1;
    const n = batch * ho * wo;
    const k = (kernel * kernel * c) / groups;
    const weights = tf.randomNormal([groups, k, conv.conv / groups]) as tf.Tensor3D;
    const bareMs = timeIt(() => {
      // The patches written where the backend keeps them, as the layer does.
      const pt = fromHost([groups, n, k], (p) =>
        convKernels().im2col(host(x), p, batch, h, w, c, kernel, stride, padding, groups, ho, wo),
      ) as tf.Tensor3D;
      tf.tidy(() => {
        const z = tf.matMul(pt, weights);
        const dw = tf.matMul(pt, z, true, false); // z stands in for dZ: the same shape
        dw.dataSync();
      });
      pt.dispose();
    }, minMs);
    tf.dispose([x, weights]);
    layer.dispose();
    const name = `${h}x${w}x${c} c${conv.conv}k${kernel}${groups > 1 ? `g${groups}` : ''}`;
    return { backend, layer: name, batch, stepMs, bareMs };
  });
}

export function printConvTable(rows: ConvRow[]): void {
  if (rows.length === 0) return;
  const head = ['backend', 'conv layer', 'batch', 'step ms', 'bare conv ms', 'step / bare'];
  const body = rows.map((r) => [
    r.backend,
    r.layer,
    String(r.batch),
    r.stepMs.toFixed(1),
    r.bareMs.toFixed(1),
    `${(r.stepMs / r.bareMs).toFixed(2)}x`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log('\nconv (competitive) layers: the training step against the bare conv (im2col,');
  console.log('forward and weight-gradient products) on the same backend');
  console.log(line(head));
  for (const b of body) console.log(line(b));
}
