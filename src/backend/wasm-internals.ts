// The tfjs 4.22 wasm backend's internals that ffx reads: where each tensor lies in the module's
// heap, and the heap itself. They are not API: core/host-memory.ts (the optimizer's in-place
// update) and backend/blas.ts (the native matrix products) check them once by shape, and fall
// back to tfjs's own ops where they differ.
import type { TensorInfo } from '@tensorflow/tfjs';

export interface WasmEntry {
  id: number;
  memoryOffset: number;
  refCount: number;
}
export interface WasmBackendInternals {
  dataIdMap: { get(id: object): WasmEntry | undefined };
  /** A kernel's output: `shape` of `dtype` malloc'ed in the heap, not written. */
  makeOutput(shape: number[], dtype: 'float32'): TensorInfo;
  wasm: {
    HEAPU8: Uint8Array;
    /** The heap: `wasmMemory` on the threaded build, `asm.memory` on the plain one. */
    wasmMemory?: WebAssembly.Memory;
    asm?: { memory?: WebAssembly.Memory };
    tfjs: {
      disposeData(id: number): void;
      registerTensor(id: number, size: number, memoryOffset: number): void;
    };
  };
}
/** Why `b` is not a tfjs 4.22 wasm backend as ffx reads it, or null when it is. */
export function wasmInternalsProblem(b: unknown): string | null {
  const x = b as Partial<WasmBackendInternals> | null;
  if (typeof x?.dataIdMap?.get !== 'function') return 'no dataIdMap.get';
  const w = x.wasm;
  if (!(w?.HEAPU8 instanceof Uint8Array)) return 'no wasm.HEAPU8';
  if (!((w.wasmMemory ?? w.asm?.memory) instanceof WebAssembly.Memory)) {
    return 'no wasm.wasmMemory or wasm.asm.memory';
  }
  if (typeof w.tfjs?.registerTensor !== 'function') return 'no wasm.tfjs.registerTensor';
  if (typeof w.tfjs.disposeData !== 'function') return 'no wasm.tfjs.disposeData';
  if (typeof x.makeOutput !== 'function') return 'no makeOutput';
  return null;
}

/**
 * The fused optimizer updates, over arrays in the wasm heap: core/kernels/optimizer.wat (core/
 * wasm-kernels.ts), or on the machine's cores through ffx-blas (blas.ts), with the same bits.
 */
export interface OptimizerKernels {
  /** Byte offsets of p, g, m, v; n floats (a multiple of 4); the scalars of optimizer.ts. */
  adam(
    p: number,
    g: number,
    m: number,
    v: number,
    n: number,
    b1: number,
    b1c: number,
    b2: number,
    b2c: number,
    step: number,
    eps: number,
    l2: number,
    shrink: number,
    tinyGrad: number,
    tinySlot: number,
  ): void;
  sgd(
    p: number,
    g: number,
    m: number,
    n: number,
    mu: number,
    lr: number,
    l2: number,
    tinyGrad: number,
    tinySlot: number,
  ): void;
}

/**
 * The competitive layer's loops around its products (core/conv-kernels.ts says what each
 * computes): in JavaScript, or compiled in ffx-blas (native/blas/src/ffx_conv.c) where the
 * products run there. Arrays are the caller's; integers are the layer's geometry.
 */
export interface ConvKernels {
  im2col(
    x: Float32Array,
    p: Float32Array,
    rows: number,
    h: number,
    w: number,
    c: number,
    kernel: number,
    stride: number,
    padding: number,
    groups: number,
    ho: number,
    wo: number,
  ): void;
  reluPool(
    z: Float32Array,
    bias: Float32Array,
    m: Float32Array,
    arg: Int32Array,
    rows: number,
    ho: number,
    wo: number,
    pool: number,
    hp: number,
    wp: number,
    out: number,
    groups: number,
  ): void;
  goodness(y: Float32Array, rows: number, out: number, classes: number, g: Float64Array): void;
  moments(
    m: Float32Array,
    count: number,
    out: number,
    mean: Float64Array,
    variance: Float64Array,
  ): void;
  affine(
    m: Float32Array,
    count: number,
    out: number,
    scale: Float64Array,
    shift: Float64Array,
    y: Float32Array,
  ): void;
  backward(
    dg: Float64Array,
    m: Float32Array,
    y: Float32Array,
    arg: Int32Array,
    mean: Float64Array,
    variance: Float64Array,
    gamma: Float32Array,
    eps: number,
    rows: number,
    count: number,
    out: number,
    classes: number,
    dz: Float32Array,
    dgamma: Float32Array,
    dbeta: Float32Array,
    dbias: Float32Array,
  ): void;
  /**
   * A conv layer's forward sweep with its product fused in (a small patch per group), where
   * ffx-blas has it (competitive-layer.ts: directStep). In a training step (`given` false) Y is
   * not written (directBackward writes it; y may be null).
   */
  directForward?(
    x: Float32Array,
    w: Float32Array,
    bias: Float32Array,
    gamma: Float32Array,
    beta: Float32Array,
    eps: number,
    ...geometryAndOutputs: [
      ...geometry: DirectGeometry,
      y: Float32Array | null,
      mean: Float64Array,
      variance: Float64Array,
      goodness: Float64Array,
      /** Each image's sums per channel [3, rows, out]: of Y^2, Y and Y (m - mean). */
      sums: Float64Array,
      /** Y with mean and variance as given (evaluation), not the batch's. */
      given: boolean,
    ]
  ): void;
  /** Its gradient, from dL/dG and what directForward returned, and Y, in one sweep. */
  directBackward?(
    x: Float32Array,
    w: Float32Array,
    bias: Float32Array,
    gamma: Float32Array,
    beta: Float32Array,
    eps: number,
    ...geometryAndArrays: [
      ...geometry: DirectGeometry,
      mean: Float64Array,
      variance: Float64Array,
      dg: Float64Array,
      sums: Float64Array,
      /** [groups, kernel^2 c / groups, out / groups], the kernel's layout. */
      dw: Float32Array,
      dgamma: Float32Array,
      dbeta: Float32Array,
      dbias: Float32Array,
      y: Float32Array,
    ]
  ): void;
}

/**
 * A layer's geometry as the fused kernels take it: rows, input height, width and channels,
 * kernel, stride, padding, groups, conv output height and width, pool, pooled height and width,
 * channels, classes.
 */
export type DirectGeometry = [
  rows: number,
  h: number,
  w: number,
  c: number,
  kernel: number,
  stride: number,
  padding: number,
  groups: number,
  ho: number,
  wo: number,
  pool: number,
  hp: number,
  wp: number,
  out: number,
  classes: number,
];
