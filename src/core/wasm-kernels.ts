// The optimizer kernels of kernels/optimizer.wat, instantiated over the wasm backend's heap.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { log } from '../log.js';
import { wasmHeap } from './host-memory.js';
import type { OptimizerKernels } from '../backend/wasm-internals.js';

export type { OptimizerKernels };

// Parameter counts: a .wasm built from another optimizer.wat would take its arguments shifted.
const ARITY: Record<keyof OptimizerKernels, number> = { adam: 15, sgd: 9 };

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
  const url = new URL(`./kernels/optimizer${shared ? '-shared' : ''}.wasm`, import.meta.url);
  let kernels: OptimizerKernels | null = null;
  try {
    const module = new WebAssembly.Module(readFileSync(url));
    const exports = new WebAssembly.Instance(module, { env: { memory } }).exports;
    for (const [name, arity] of Object.entries(ARITY)) {
      const fn = exports[name];
      if (typeof fn !== 'function' || fn.length !== arity) {
        throw new Error(`export ${name} is not a function of ${arity} parameters (a stale build?)`);
      }
    }
    kernels = exports as unknown as OptimizerKernels;
  } catch (err) {
    // The JS loop in optimizer.ts does the same work, slower.
    log.warnOnce(
      'wasm-kernels:optimizer',
      `cannot load the SIMD optimizer kernel ${fileURLToPath(url)} (${(err as Error).message}): ` +
        'the optimizer update runs as a JS loop, ~3x slower (`npm run build` assembles the kernels)',
    );
  }
  cache = { memory, kernels };
  return kernels;
}
