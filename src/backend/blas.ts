// The wasm backend's matrix products on the machine's BLAS. WebAssembly's SIMD is four lanes
// without fused multiply-add, so tfjs-wasm's matMul runs at a fifth or less of what a CPU's
// sgemm does; ffx-blas (native/blas, an optional dependency that `npm install` builds where a C
// compiler is) calls CBLAS sgemm on the tensors where they lie in the wasm heap, and these
// kernels replace the backend's BatchMatMul and _FusedMatMul with it. Everything else stays on
// wasm. The products run on fixed blocks spread over `--threads` threads of ffx-blas's own, so
// their bits do not depend on the thread count (native/blas/src/ffx_blas.c says why).
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import {
  wasmInternalsProblem,
  type ConvKernels,
  type OptimizerKernels,
  type WasmBackendInternals,
} from './wasm-internals.js';

/** native/blas's exports. */
export interface BlasAddon extends ConvKernels {
  /** Row-major C = alpha op(A) op(B) + beta C; offsets and leading dimensions in elements. */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    offA: number,
    lda: number,
    b: Float32Array,
    offB: number,
    ldb: number,
    beta: number,
    c: Float32Array,
    offC: number,
    ldc: number,
    /** An epilogue on each block while it is in cache: + bias (n floats), then relu. */
    bias?: Float32Array | null,
    offBias?: number,
    relu?: boolean,
  ): void;
  /** optimizer.wat's updates (arrays as offsets in floats into `heap`). */
  adam(
    heap: Float32Array,
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
    heap: Float32Array,
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
  setThreads(n: number): void;
  threads(): number;
  /** The CBLAS library it opened, and OpenBLAS's kernel family for this CPU (null if unknown). */
  library: string;
  corename: string | null;
}

/** ffx-blas, loaded; throws an Error saying why it cannot be (not built, or no CBLAS library). */
export function loadBlasAddon(): BlasAddon {
  const require = createRequire(import.meta.url);
  try {
    return require('ffx-blas') as BlasAddon;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'MODULE_NOT_FOUND') {
      throw new Error(
        'not built (npm install builds it where a C compiler and python3 are: install them, ' +
          'then run npm install again)',
      );
    }
    throw new Error(e.message.split('\n')[0]);
  }
}

let optimizer: OptimizerKernels | null = null;
let conv: ConvKernels | null = null;

/** The conv layer's loops compiled in ffx-blas, once useBlasKernels() has run; else null. */
export function blasConvKernels(): ConvKernels | null {
  return conv;
}

/**
 * The optimizer's fused updates on the cores ffx-blas runs on (the bits of core/kernels/
 * optimizer.wat, on --threads threads), once useBlasKernels() has run; else null.
 */
export function blasOptimizerKernels(): OptimizerKernels | null {
  return optimizer;
}

/** OptimizerKernels (byte offsets into the heap) over the addon's updates (float offsets). */
function optimizerOn(blas: BlasAddon, backend: WasmBackend): OptimizerKernels {
  let heap: Float32Array | null = null;
  const floats = () => {
    const buffer = backend.wasm.HEAPU8.buffer;
    if (heap?.buffer !== buffer) heap = new Float32Array(buffer);
    return heap;
  };
  return {
    adam: (p, g, m, v, n, ...scalars) =>
      blas.adam(floats(), p / 4, g / 4, m / 4, v / 4, n, ...scalars),
    sgd: (p, g, m, n, ...scalars) => blas.sgd(floats(), p / 4, g / 4, m / 4, n, ...scalars),
  };
}

/** The wasm backend as these kernels use it. */
interface WasmBackend extends WasmBackendInternals {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  disposeData(dataId: object): void;
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

const KERNELS = ['BatchMatMul', '_FusedMatMul'] as const;

/**
 * Replaces the active wasm backend's matrix-product kernels with sgemm on `threads` threads.
 * Throws when the backend is not the wasm one ffx knows how to read.
 */
export function useBlasKernels(blas: BlasAddon, threads: number): void {
  const backend = tf.backend();
  const problem =
    tf.getBackend() !== 'wasm'
      ? `the active backend is ${tf.getBackend()}, not wasm`
      : (wasmInternalsProblem(backend) ??
        (typeof (backend as Partial<WasmBackend>).makeOutput === 'function'
          ? null
          : 'no makeOutput'));
  if (problem)
    throw new Error(`the wasm backend is not the one ffx-blas's kernels read (${problem})`);
  blas.setThreads(threads);
  optimizer = optimizerOn(blas, backend as unknown as WasmBackend);
  // A build from before the conv loops has none: the layer then runs its JavaScript ones.
  conv = typeof blas.im2col === 'function' ? blas : null;
  const original = new Map(KERNELS.map((name) => [name, tf.getKernel(name, 'wasm')!]));
  const products = new BlasProducts(blas, (name) => original.get(name)!);
  for (const name of KERNELS) {
    tf.unregisterKernel(name, 'wasm');
    tf.registerKernel({
      kernelName: name,
      backendName: 'wasm',
      kernelFunc: (args) =>
        name === 'BatchMatMul' ? products.batchMatMul(args) : products.fusedMatMul(args),
    });
  }
}

/** The two kernels, over one addon. */
class BlasProducts {
  /** A Float32Array over the whole heap; renewed when the heap grows (a new buffer). */
  private heap: Float32Array | null = null;

  constructor(
    private readonly blas: BlasAddon,
    private readonly original: (name: (typeof KERNELS)[number]) => tf.KernelConfig,
  ) {}

  batchMatMul(args: KernelArgs): tf.TensorInfo {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    if (a.dtype !== 'float32' || b.dtype !== 'float32') {
      return this.original('BatchMatMul').kernelFunc(args) as tf.TensorInfo;
    }
    return this.product(args.backend as WasmBackend, a, b, transposeA, transposeB);
  }

  /**
   * The product with its bias and relu done natively on each block (one product, a bias per
   * column: the common case, a layer's), else the product, then the bias and the activation
   * by the backend's own kernels.
   */
  fusedMatMul(args: KernelArgs): tf.TensorInfo {
    const { a, b, bias } = args.inputs as Record<string, tf.TensorInfo | undefined>;
    const attrs = args.attrs as {
      transposeA: boolean;
      transposeB: boolean;
      activation?: string;
      leakyreluAlpha?: number;
    };
    const backend = args.backend as WasmBackend;
    const simple = ['linear', 'relu', 'relu6', 'elu', 'sigmoid', undefined];
    if (a!.dtype !== 'float32' || b!.dtype !== 'float32' || !simple.includes(attrs.activation)) {
      return this.original('_FusedMatMul').kernelFunc(args) as tf.TensorInfo;
    }
    const activation = attrs.activation ?? 'linear';
    const n = attrs.transposeB ? b!.shape[b!.shape.length - 2]! : b!.shape[b!.shape.length - 1]!;
    const one = (t: tf.TensorInfo) => tf.util.sizeFromShape(t.shape.slice(0, -2)) === 1;
    if (
      one(a!) &&
      one(b!) &&
      (activation === 'linear' || activation === 'relu') &&
      (!bias || bias.shape.join() === String(n))
    ) {
      const relu = activation === 'relu';
      return this.product(backend, a!, b!, attrs.transposeA, attrs.transposeB, bias ?? null, relu);
    }
    let y = this.product(backend, a!, b!, attrs.transposeA, attrs.transposeB);
    const then = (kernel: string, inputs: Record<string, tf.TensorInfo>) => {
      const z = tf.getKernel(kernel, 'wasm')!.kernelFunc({ inputs, backend, attrs: {} });
      backend.disposeData(y.dataId);
      y = z as tf.TensorInfo;
    };
    if (bias) then('Add', { a: y, b: bias });
    const kernel = { relu: 'Relu', relu6: 'Relu6', elu: 'Elu', sigmoid: 'Sigmoid' }[
      attrs.activation as 'relu'
    ];
    if (kernel) then(kernel, { x: y });
    return y;
  }

  /** op(a) op(b) for each batch, with tfjs's broadcasting of the batch dimensions. */
  private product(
    backend: WasmBackend,
    a: tf.TensorInfo,
    b: tf.TensorInfo,
    transposeA: boolean,
    transposeB: boolean,
    bias: tf.TensorInfo | null = null,
    relu = false,
  ): tf.TensorInfo {
    const [ra, rb] = [a.shape.length, b.shape.length];
    const k = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
    const kB = transposeB ? b.shape[rb - 1]! : b.shape[rb - 2]!;
    const m = transposeA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
    const n = transposeB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
    if (k !== kB) {
      throw new Error(
        `Error in matMul: inner shapes (${k}) and (${kB}) of Tensors with shapes ` +
          `${a.shape} and ${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
      );
    }
    const aBatch = a.shape.slice(0, -2);
    const bBatch = b.shape.slice(0, -2);
    const outBatch = tf.broadcast_util.assertAndGetBroadcastShape(aBatch, bBatch);
    const out = backend.makeOutput([...outBatch, m, n], 'float32'); // may grow the heap
    const heap = this.heapOf(backend);
    const offC = offset(backend, out);
    const batches = tf.util.sizeFromShape(outBatch);
    if (m * n * batches === 0) return out;
    if (k === 0) {
      heap.fill(0, offC, offC + batches * m * n);
      return out;
    }
    const [offA, offB] = [offset(backend, a), offset(backend, b)];
    const lda = transposeA ? m : k;
    const ldb = transposeB ? k : n;
    const aBatches = tf.util.sizeFromShape(aBatch);
    if (bias || relu) {
      // One product (fusedMatMul checked), with its bias and relu on each block.
      const offBias = bias ? offset(backend, bias) : 0;
      const biasHeap = bias ? heap : null;
      this.blas.sgemm(
        transposeA,
        transposeB,
        m,
        n,
        k,
        1,
        heap,
        offA,
        lda,
        heap,
        offB,
        ldb,
        0,
        heap,
        offC,
        n,
        biasHeap,
        offBias,
        relu,
      );
      return out;
    }
    if (tf.util.sizeFromShape(bBatch) === 1 && !transposeA && aBatches === batches) {
      // b shared by every batch and a's batches one after another: one product of all rows.
      this.blas.sgemm(
        false,
        transposeB,
        aBatches * m,
        n,
        k,
        1,
        heap,
        offA,
        lda,
        heap,
        offB,
        ldb,
        0,
        heap,
        offC,
        n,
      );
      return out;
    }
    const rank = outBatch.length;
    const padded = (s: number[]) => [...new Array<number>(rank - s.length).fill(1), ...s];
    const [aDims, bDims] = [padded(aBatch), padded(bBatch)];
    for (let i = 0; i < batches; i++) {
      // Output batch i's index in each dimension, and the batch of a and of b it reads.
      let [ia, ib, rest] = [0, 0, i];
      for (let d = rank - 1, aStride = 1, bStride = 1; d >= 0; d--) {
        const idx = rest % outBatch[d]!;
        rest = Math.floor(rest / outBatch[d]!);
        if (aDims[d] !== 1) ia += idx * aStride;
        if (bDims[d] !== 1) ib += idx * bStride;
        aStride *= aDims[d]!;
        bStride *= bDims[d]!;
      }
      this.blas.sgemm(
        transposeA,
        transposeB,
        m,
        n,
        k,
        1,
        heap,
        offA + ia * m * k,
        lda,
        heap,
        offB + ib * k * n,
        ldb,
        0,
        heap,
        offC + i * m * n,
        n,
      );
    }
    return out;
  }

  private heapOf(backend: WasmBackend): Float32Array {
    const buffer = backend.wasm.HEAPU8.buffer;
    if (this.heap?.buffer !== buffer) this.heap = new Float32Array(buffer);
    return this.heap;
  }
}

/** Where a tensor's floats start in the heap (in floats). */
function offset(backend: WasmBackend, t: tf.TensorInfo): number {
  const entry = backend.dataIdMap.get(t.dataId);
  if (!entry || entry.memoryOffset % 4 !== 0) {
    throw new Error('ffx-blas kernels: a tensor without an aligned place in the wasm heap');
  }
  return entry.memoryOffset / 4;
}
