// Zero-copy access to tensor storage on backends that keep it in JS-visible memory.
//
// wasm keeps every tensor in the module's heap and pure-JS cpu in typed arrays, so an
// elementwise update (the optimizer) can run as one fused pass over the storage (a SIMD
// kernel on wasm, a JS loop on cpu) instead of a dozen tfjs ops that each stream the whole
// weight matrix through memory.
import * as tf from '@tensorflow/tfjs';

interface WasmBackendInternals {
  dataIdMap: {
    get(id: object): { id: number; memoryOffset: number; refCount: number } | undefined;
  };
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
interface CpuBackendInternals {
  data: { get(id: object): { values?: unknown; refCount: number } | undefined };
}

/**
 * A Float32Array aliasing a float32 tensor's storage, or null where the backend keeps it out of
 * reach (native TensorFlow, GPU). The view is valid only until the next tfjs call: the wasm heap
 * may grow and detach it. With `exclusive`, also null unless the tensor is the storage's only
 * owner, so writing through the view cannot change another tensor.
 */
export function hostView(t: tf.Tensor, exclusive = false): Float32Array | null {
  if (t.dtype !== 'float32') return null;
  const name = tf.getBackend();
  if (name === 'wasm') {
    const b = tf.backend() as unknown as WasmBackendInternals;
    const d = b.dataIdMap.get(t.dataId);
    if (!d || (exclusive && d.refCount !== 1)) return null;
    return new Float32Array(b.wasm.HEAPU8.buffer, d.memoryOffset, t.size);
  }
  if (name === 'cpu') {
    const b = tf.backend() as unknown as CpuBackendInternals;
    const d = b.data.get(t.dataId);
    if (!d || !(d.values instanceof Float32Array) || (exclusive && d.refCount !== 1)) return null;
    return d.values;
  }
  return null;
}

/**
 * Byte offset of a float32 tensor's storage in the wasm backend's heap (null on other backends,
 * or with `exclusive` when the storage is shared with another tensor).
 */
export function wasmHeapOffset(t: tf.Tensor, exclusive = false): number | null {
  if (t.dtype !== 'float32' || tf.getBackend() !== 'wasm') return null;
  const d = (tf.backend() as unknown as WasmBackendInternals).dataIdMap.get(t.dataId);
  if (!d || (exclusive && d.refCount !== 1)) return null;
  return d.memoryOffset;
}

/** The wasm backend's heap, for kernels that work on tensors in place. */
export function wasmHeap(): WebAssembly.Memory | null {
  if (tf.getBackend() !== 'wasm') return null;
  const w = (tf.backend() as unknown as WasmBackendInternals).wasm;
  const memory = w.wasmMemory ?? w.asm?.memory;
  return memory instanceof WebAssembly.Memory ? memory : null;
}

/**
 * Call after writing through a hostView. The wasm backend's XNNPACK kernels cache weights
 * packed for the matMul, keyed by tensor id, on the assumption that a tensor never changes;
 * re-registering the id drops those caches (the memory itself is untouched).
 */
export function hostWritten(t: tf.Tensor): void {
  if (tf.getBackend() !== 'wasm') return;
  const b = tf.backend() as unknown as WasmBackendInternals;
  const d = b.dataIdMap.get(t.dataId);
  if (!d) return;
  b.wasm.tfjs.disposeData(d.id);
  b.wasm.tfjs.registerTensor(d.id, t.size, d.memoryOffset);
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
