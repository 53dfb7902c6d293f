// The optimizer kernels of kernels/optimizer.wat, instantiated over the wasm backend's heap.
import { readFileSync } from 'node:fs';
import { wasmHeap } from './host-memory.js';

export interface OptimizerKernels {
  /** Byte offsets of p, g, m, v; n floats (a multiple of 4). */
  adam(
    p: number,
    g: number,
    m: number,
    v: number,
    n: number,
    b1: number,
    b2: number,
    step: number,
    eps: number,
    l2: number,
    shrink: number,
  ): void;
  sgd(p: number, g: number, m: number, n: number, mu: number, lr: number, l2: number): void;
}

let cache: { memory: WebAssembly.Memory; kernels: OptimizerKernels | null } | undefined;

/**
 * The kernels for the active wasm backend, or null (another backend, or the .wasm files were
 * not built: `npm run build` assembles them). Loaded once per heap.
 */
export function optimizerKernels(): OptimizerKernels | null {
  const memory = wasmHeap();
  if (!memory) return null;
  if (cache?.memory === memory) return cache.kernels;
  const shared =
    typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  let kernels: OptimizerKernels | null = null;
  try {
    const bytes = readFileSync(
      new URL(`./kernels/optimizer${shared ? '-shared' : ''}.wasm`, import.meta.url),
    );
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
    kernels = instance.exports as unknown as OptimizerKernels;
  } catch {
    kernels = null; // the JS loop in optimizer.ts does the same work, slower
  }
  cache = { memory, kernels };
  return kernels;
}
