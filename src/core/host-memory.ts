// Zero-copy access to tensor storage on backends that keep it in JS-visible memory.
//
// wasm keeps every tensor in the module's heap and pure-JS cpu in typed arrays, so an
// elementwise update (the optimizer) can run as one fused pass over the storage (a SIMD
// kernel on wasm, a JS loop on cpu) instead of a dozen tfjs ops that each stream the whole
// weight matrix through memory.
//
// These are tfjs internals, not API: each backend's are checked once, by version (the pinned
// one) and by shape, and where they differ every function here answers null, the optimizer
// takes the tfjs-ops path, and the log says so once.
import * as tf from '@tensorflow/tfjs';
import { version_wasm } from '@tensorflow/tfjs-backend-wasm';
import { log } from '../log.js';
import {
  wasmInternalsProblem,
  type WasmBackendInternals,
  type WasmEntry,
} from '../backend/wasm-internals.js';

export { wasmInternalsProblem };

/** The tfjs release whose backend internals this file reads (package.json pins it). */
export const PINNED_TFJS_VERSION = '4.22.0';

interface CpuEntry {
  values?: unknown;
  refCount: number;
}
interface CpuBackendInternals {
  data: { get(id: object): CpuEntry | undefined };
}

const FALLBACK = 'the optimizer update runs as tfjs ops, ~3x slower';

/** Why `b` is not a tfjs 4.22 cpu backend as this file reads it, or null when it is. */
export function cpuInternalsProblem(b: unknown): string | null {
  const x = b as Partial<CpuBackendInternals> | null;
  return typeof x?.data?.get === 'function' ? null : 'no data.get';
}

// Per backend instance: its internals, or null where they cannot be used.
const checked = new WeakMap<object, object | null>();

function internals(
  name: 'wasm' | 'cpu',
  versions: Record<string, string>,
  problemOf: (b: unknown) => string | null,
): object | null {
  if (tf.getBackend() !== name) return null;
  const b = tf.backend();
  let got = checked.get(b);
  if (got === undefined) {
    const stale = Object.entries(versions).filter(([, v]) => v !== PINNED_TFJS_VERSION);
    const problem =
      stale.length > 0
        ? `${stale.map(([pkg, v]) => `${pkg} ${v}`).join(', ')}, not ${PINNED_TFJS_VERSION}`
        : problemOf(b);
    if (problem) unusable(name, problem);
    got = problem ? null : b;
    checked.set(b, got);
  }
  return got;
}

function unusable(name: string, problem: string): void {
  log.warnOnce(
    `host-memory:${name}`,
    `${name} backend internals are not the ones ffx reads (${problem}): ${FALLBACK}`,
  );
}

function wasmBackend(): WasmBackendInternals | null {
  const versions = {
    '@tensorflow/tfjs-core': tf.version_core,
    '@tensorflow/tfjs-backend-wasm': version_wasm,
  };
  return internals('wasm', versions, wasmInternalsProblem) as WasmBackendInternals | null;
}

function cpuBackend(): CpuBackendInternals | null {
  const versions = {
    '@tensorflow/tfjs-core': tf.version_core,
    '@tensorflow/tfjs-backend-cpu': tf.version['tfjs-backend-cpu'],
  };
  return internals('cpu', versions, cpuInternalsProblem) as CpuBackendInternals | null;
}

/** `t`'s storage record on the wasm backend, or null (none, or not of the expected shape). */
function wasmEntry(b: WasmBackendInternals, t: tf.Tensor): WasmEntry | null {
  const d = b.dataIdMap.get(t.dataId);
  if (!d) return null;
  if (
    typeof d.id !== 'number' ||
    typeof d.memoryOffset !== 'number' ||
    typeof d.refCount !== 'number'
  ) {
    unusable('wasm', 'a dataIdMap entry without numeric id, memoryOffset and refCount');
    checked.set(b, null); // and no more views from this backend
    return null;
  }
  return d;
}

/**
 * A Float32Array aliasing a float32 tensor's storage, or null where the backend keeps it out of
 * reach (native TensorFlow, GPU, or internals other than tfjs 4.22's). The view is valid only
 * until the next tfjs call: the wasm heap may grow and detach it. With `exclusive`, also null
 * unless the tensor is the storage's only owner, so writing through the view cannot change
 * another tensor.
 */
export function hostView(t: tf.Tensor, exclusive = false): Float32Array | null {
  if (t.dtype !== 'float32') return null;
  const wasm = wasmBackend();
  if (wasm) {
    const d = wasmEntry(wasm, t);
    if (!d || (exclusive && d.refCount !== 1)) return null;
    return new Float32Array(wasm.wasm.HEAPU8.buffer, d.memoryOffset, t.size);
  }
  const cpu = cpuBackend();
  if (cpu) {
    const d = cpu.data.get(t.dataId);
    if (!d || !(d.values instanceof Float32Array) || (exclusive && d.refCount !== 1)) return null;
    return d.values;
  }
  return null;
}

/**
 * A float32 tensor's values, copied out: what dataSync() returns, faster where the storage is
 * in reach (tfjs-wasm copies its shared heap byte by byte; a Buffer copy moves it in bulk, ~3x
 * faster for a batch of activations).
 */
export function readFloats(t: tf.Tensor): Float32Array {
  const view = hostView(t);
  if (!view) return t.dataSync() as Float32Array;
  const out = Buffer.allocUnsafeSlow(view.byteLength);
  Buffer.from(view.buffer, view.byteOffset, view.byteLength).copy(out);
  return new Float32Array(out.buffer, out.byteOffset, view.length);
}

/**
 * Byte offset of a float32 tensor's storage in the wasm backend's heap (null on other backends,
 * where the internals are not tfjs 4.22's, or with `exclusive` when the storage is shared with
 * another tensor).
 */
export function wasmHeapOffset(t: tf.Tensor, exclusive = false): number | null {
  if (t.dtype !== 'float32') return null;
  const wasm = wasmBackend();
  const d = wasm && wasmEntry(wasm, t);
  if (!d || (exclusive && d.refCount !== 1)) return null;
  return d.memoryOffset;
}

/** The wasm backend's heap, for kernels that work on tensors in place. */
export function wasmHeap(): WebAssembly.Memory | null {
  const w = wasmBackend()?.wasm;
  return w?.wasmMemory ?? w?.asm?.memory ?? null;
}

/**
 * Call after writing through a hostView. The wasm backend's XNNPACK kernels cache weights
 * packed for the matMul, keyed by tensor id, on the assumption that a tensor never changes;
 * re-registering the id drops those caches (the memory itself is untouched).
 */
export function hostWritten(t: tf.Tensor): void {
  // Where the internals are unusable hostView handed out no view on wasm, so nothing was
  // written behind XNNPACK's back and there is no cache to drop.
  const wasm = wasmBackend();
  const d = wasm && wasmEntry(wasm, t);
  if (!d) return;
  wasm.wasm.tfjs.disposeData(d.id);
  wasm.wasm.tfjs.registerTensor(d.id, t.size, d.memoryOffset);
}

/** tf.variable that owns its storage alone (tf.variable shares the initial tensor's). */
export function ownedVariable<R extends tf.Rank>(
  init: tf.Tensor<R>,
  trainable: boolean,
  name?: string,
): tf.Variable<R> {
  const v = tf.variable(init, trainable, name);
  init.dispose();
  return v;
}

/** A tensor's values: a view of them where the backend allows (valid until the next tfjs call), else a copy. */
export function host(t: tf.Tensor): Float32Array {
  return hostView(t) ?? (t.dataSync() as Float32Array);
}

/**
 * fromHost for a `fill` that writes every value: on wasm the storage is taken unwritten, as a
 * kernel's output is (a batch's patches can be a hundred MB: zeros first would be one more
 * sweep of them).
 */
export function fromHostAll(shape: number[], fill: (out: Float32Array) => void): tf.Tensor {
  const wasm = wasmBackend();
  if (wasm) {
    const t = tf.engine().makeTensorFromTensorInfo(wasm.makeOutput(shape, 'float32'));
    if (filledInPlace(t, fill)) return t;
    t.dispose();
  }
  return fromHost(shape, fill);
}

/** Whether `fill` could write `t`'s storage in place (then done, and tfjs told of it). */
function filledInPlace(t: tf.Tensor, fill: (out: Float32Array) => void): boolean {
  const view = hostView(t, true);
  if (!view) return false;
  fill(view);
  hostWritten(t);
  return true;
}

/**
 * A new float32 tensor of `shape` whose values `fill` writes: in place in the backend's storage
 * where it can (no copy; `fill` must not call tfjs), else into an array then copied.
 */
export function fromHost(shape: number[], fill: (out: Float32Array) => void): tf.Tensor {
  const t = tf.fill(shape, 0); // a kernel: filled in the heap, not copied there
  if (filledInPlace(t, fill)) return t;
  t.dispose();
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  fill(values);
  return tf.tensor(values, shape);
}

/**
 * tf.gather of a float32 matrix's rows (axis 0) or columns (axis 1), and of a vector's entries:
 * the same values, copied over host memory where the backend allows. tfjs-wasm's Gather turns
 * every output index into a location through a freshly allocated vector (a malloc and a free
 * per value): the weight-gradient product's active rows took 15-20% of a dense layer's step on
 * wasm+blas.
 */
export function gatherHost<T extends tf.Tensor1D | tf.Tensor2D>(
  t: T,
  idx: Int32Array,
  axis: 0 | 1 = 0,
): T {
  if (!hostView(t)) return tf.gather(t, idx, axis);
  const [r, c = 1] = t.shape;
  const shape = t.rank === 1 ? [idx.length] : axis === 0 ? [idx.length, c] : [r, idx.length];
  return fromHostAll(shape, (out) => {
    const src = hostView(t)!; // taken after fromHostAll's allocation, which may move the heap
    const n = idx.length;
    if (axis === 0 && c === 1) {
      for (let i = 0; i < n; i++) out[i] = src[idx[i]!]!;
    } else if (axis === 0) {
      for (let i = 0; i < n; i++) out.set(src.subarray(idx[i]! * c, (idx[i]! + 1) * c), i * c);
    } else {
      for (let row = 0; row < r; row++) {
        for (let i = 0; i < n; i++) out[row * n + i] = src[row * c + idx[i]!]!;
      }
    }
  }) as T;
}
