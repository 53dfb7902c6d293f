// Picks the TensorFlow.js backend once per process.
//
// The native packages (@tensorflow/tfjs-node-gpu, @tensorflow/tfjs-node) are optional
// dependencies: their install downloads libtensorflow, which fails without a network, so
// `auto` probes them and falls back to wasm with its matrix products on the machine's BLAS
// (wasm+blas: blas.ts, where ffx-blas was built), to plain wasm (XNNPACK + SIMD) and finally
// to pure JS. A backend that was asked for by name and cannot load is an error, never a
// fallback.
import { createRequire } from 'node:module';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { availableParallelism } from 'node:os';
import { setWasmPaths, getThreadsCount, version_wasm } from '@tensorflow/tfjs-backend-wasm';
import { initWasmThreaded, WASM_THREADS_VERSION } from './wasm-threads.js';
import { loadBlasAddon, useBlasKernels, type BlasAddon } from './blas.js';
import { FfxError, type ErrorCode } from '../errors.js';
import { log as processLog } from '../log.js';

export const BACKEND_CHOICES = ['auto', 'tensorflow', 'wasm+blas', 'wasm', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];
export type BackendName = Exclude<BackendChoice, 'auto'>;

export interface BackendInfo {
  name: BackendName;
  /** npm package that provides the kernels (and with wasm+blas, the BLAS library and CPU kernels). */
  package: string;
  device: 'gpu' | 'cpu';
  /** Compute threads the backend uses (native backends manage their own pool: 0 = unknown). */
  threads: number;
  simd: boolean;
  /** Largest tensor memory the backend can address, or Infinity. */
  memoryLimitBytes: number;
}

export class BackendError extends FfxError<ErrorCode<'backend'>> {
  readonly backend: string;
  constructor(
    code: ErrorCode<'backend'>,
    backend: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.backend = backend;
  }
}

export interface BackendOptions {
  /**
   * Run on a GPU, with tfjs-node-gpu and nothing else: 'gpu' (any it sees), or an index (sets
   * CUDA_VISIBLE_DEVICES before the library loads).
   */
  device?: number | 'gpu';
  /**
   * Compute threads for wasm (default: every core). A pipeline stage that shares a machine
   * with other stages sets its share, e.g. 1.
   */
  threads?: number;
  log?: (line: string) => void;
}

// wasm32 addresses 4 GiB; the emscripten heap cannot grow past it and tfjs 4.22 corrupts
// tensors silently when an allocation runs over, so callers check their working set first.
const WASM_MEMORY_LIMIT = 4 * 1024 ** 3;

let active: BackendInfo | undefined;

/** The backend chosen by initBackend, or an error if none was chosen yet. */
export function activeBackend(): BackendInfo {
  if (!active) throw new BackendError('BACKEND_NOT_READY', 'none', 'initBackend() was not called');
  return active;
}

/** Chooses and initialises the backend. Calling it again with the same choice is a no-op. */
export async function initBackend(
  choice: BackendChoice,
  options: BackendOptions = {},
): Promise<BackendInfo> {
  if (!(BACKEND_CHOICES as readonly string[]).includes(choice)) {
    throw new BackendError(
      'BACKEND_UNKNOWN',
      String(choice),
      `backend must be one of ${BACKEND_CHOICES.join(', ')}; got "${String(choice)}"`,
    );
  }
  if (options.threads !== undefined) checkThreads(options.threads);
  if (active && (choice === 'auto' || choice === active.name)) return active;
  if (active) {
    throw new BackendError(
      'BACKEND_ALREADY_SET',
      choice,
      `backend "${active.name}" is already active in this process; cannot switch to "${choice}"`,
    );
  }
  const log = options.log ?? (() => {});
  let info: BackendInfo;
  if (options.device !== undefined) {
    // A GPU was asked for: falling back to a CPU backend would be a silent surprise.
    if (choice !== 'auto' && choice !== 'tensorflow') {
      throw new BackendError(
        'BACKEND_UNAVAILABLE',
        choice,
        `a GPU device runs on backend "tensorflow" (@tensorflow/tfjs-node-gpu), not "${choice}"`,
      );
    }
    info = await loadTensorflowGpu(options).catch((err: unknown) => {
      throw new BackendError(
        'BACKEND_UNAVAILABLE',
        'tensorflow',
        `GPU device ${String(options.device)} asked for, but ${(err as Error).message}`,
        { cause: err },
      );
    });
  } else if (choice === 'auto') {
    const failures: string[] = [];
    let got: BackendInfo | undefined;
    for (const attempt of [loadTensorflowGpu, loadTensorflowCpu, loadWasmBlas, loadWasm, loadCpu]) {
      try {
        got = await attempt(options);
        break;
      } catch (err) {
        failures.push((err as Error).message);
        // The native path is left out where it was not built: say why, once, in words.
        if (attempt === loadWasmBlas)
          log(
            `backend auto: no native BLAS (${(err as Error).message}); matrix products run on wasm`,
          );
      }
    }
    if (!got) {
      throw new BackendError(
        'BACKEND_UNAVAILABLE',
        'auto',
        `no backend could load:\n  ${failures.join('\n  ')}`,
      );
    }
    const skipped = failures.filter((f) => !f.startsWith(BLAS_PACKAGE));
    if (skipped.length > 0)
      log(`backend auto: skipped ${skipped.map((f) => f.split(':')[0]).join(', ')}`);
    info = got;
  } else if (choice === 'tensorflow') {
    try {
      info = await loadTensorflowGpu(options);
    } catch (gpuErr) {
      try {
        info = await loadTensorflowCpu(options);
      } catch (cpuErr) {
        throw new BackendError(
          'BACKEND_UNAVAILABLE',
          'tensorflow',
          'backend "tensorflow" needs @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node, and neither loads ' +
            `(${(gpuErr as Error).message}; ${(cpuErr as Error).message}). Their install downloads libtensorflow: ` +
            'run `npm install @tensorflow/tfjs-node` on a machine with network access, or use --backend wasm.',
        );
      }
    }
  } else if (choice === 'wasm+blas') {
    info = await loadWasmBlas(options);
  } else if (choice === 'wasm') {
    info = await loadWasm(options);
  } else {
    info = await loadCpu(options);
  }
  active = info;
  log(
    `backend ${info.name} (${info.package}, ${info.device}` +
      (info.name.startsWith('wasm')
        ? `, simd ${info.simd ? 'on' : 'off'}, ${info.threads} thread${info.threads === 1 ? '' : 's'}`
        : '') +
      ')',
  );
  return info;
}

async function importOptional(pkg: string): Promise<void> {
  try {
    await import(pkg);
  } catch (err) {
    throw new BackendError(
      'BACKEND_UNAVAILABLE',
      'tensorflow',
      `${pkg}: ${(err as Error).message.split('\n')[0]}`,
      {
        cause: err,
      },
    );
  }
}

async function useBackend(name: string, pkg: string): Promise<void> {
  // tf.setBackend resolves false (and tfjs logs) instead of throwing when initialisation fails.
  const ok = await tf.setBackend(name);
  await tf.ready();
  if (!ok || tf.getBackend() !== name) {
    throw new BackendError(
      'BACKEND_UNAVAILABLE',
      name,
      `${pkg}: backend "${name}" failed to initialise`,
    );
  }
}

async function loadTensorflowGpu(options: BackendOptions): Promise<BackendInfo> {
  if (typeof options.device === 'number') {
    process.env.CUDA_VISIBLE_DEVICES = String(options.device);
  }
  await importOptional('@tensorflow/tfjs-node-gpu');
  await useBackend('tensorflow', '@tensorflow/tfjs-node-gpu');
  return {
    name: 'tensorflow',
    package: '@tensorflow/tfjs-node-gpu',
    device: 'gpu',
    threads: 0,
    simd: true,
    memoryLimitBytes: Infinity,
  };
}

async function loadTensorflowCpu(_options: BackendOptions): Promise<BackendInfo> {
  await importOptional('@tensorflow/tfjs-node');
  await useBackend('tensorflow', '@tensorflow/tfjs-node');
  return {
    name: 'tensorflow',
    package: '@tensorflow/tfjs-node',
    device: 'cpu',
    threads: 0,
    simd: true,
    memoryLimitBytes: Infinity,
  };
}

export const MAX_WASM_THREADS = 8; // emscripten's pre-spawned pthread pool

/** A thread count wasm can use; refused before any backend is tried (auto would fall past it). */
function checkThreads(threads: number): void {
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_WASM_THREADS) {
    throw new BackendError(
      'BACKEND_BAD_THREADS',
      'wasm',
      `threads must be an integer from 1 to ${MAX_WASM_THREADS}; got ${threads}`,
    );
  }
}

async function loadWasm(options: BackendOptions): Promise<BackendInfo> {
  const pkg = '@tensorflow/tfjs-backend-wasm';
  // Started already (by wasm+blas, whose kernels then could not be used): as it is.
  if (tf.getBackend() === 'wasm') return wasmInfo(pkg, true);
  const threads = options.threads ?? Math.min(availableParallelism(), MAX_WASM_THREADS);
  // In Node the .wasm binaries must be given as file paths; the default is a URL relative to
  // the page, which does not exist here.
  const require = createRequire(import.meta.url);
  setWasmPaths(path.join(path.dirname(require.resolve(`${pkg}/package.json`)), 'dist') + path.sep);
  const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) as boolean;
  if (!simd) {
    throw new BackendError(
      'BACKEND_UNAVAILABLE',
      'wasm',
      `${pkg}: this Node.js has no WebAssembly SIMD; use --backend cpu`,
    );
  }
  // Another tfjs-backend-wasm release may still run, single-threaded: slower, not wrong.
  const threaded = threads > 1 && version_wasm === WASM_THREADS_VERSION;
  if (threads > 1 && !threaded) {
    processLog.warnOnce(
      'wasm-threads:version',
      `${pkg} ${version_wasm} is not the ${WASM_THREADS_VERSION} that ffx's threaded start is ` +
        `written for: wasm runs 1 thread, not ${threads}`,
    );
  }
  if (threaded) {
    // tfjs turns threads off in Node; wasm-threads.ts works around the reasons why.
    try {
      await initWasmThreaded(threads);
    } catch (err) {
      throw new BackendError(
        'BACKEND_UNAVAILABLE',
        'wasm',
        `${pkg}: starting ${threads} threads failed (${(err as Error).message}); try --threads 1`,
        { cause: err },
      );
    }
  } else {
    await useBackend('wasm', pkg);
  }
  return wasmInfo(pkg, simd);
}

function wasmInfo(pkg: string, simd: boolean): BackendInfo {
  return {
    name: 'wasm',
    package: pkg,
    device: 'cpu',
    threads: getThreadsCount(),
    simd,
    memoryLimitBytes: WASM_MEMORY_LIMIT,
  };
}

const BLAS_PACKAGE = 'ffx-blas';

/**
 * wasm, with its matrix products on the machine's CBLAS through ffx-blas (blas.ts), on as many
 * threads as wasm. Fails, before wasm starts, where ffx-blas was not built or finds no CBLAS.
 */
async function loadWasmBlas(options: BackendOptions): Promise<BackendInfo> {
  let blas: BlasAddon;
  try {
    blas = loadBlasAddon();
  } catch (err) {
    throw new BackendError(
      'BACKEND_UNAVAILABLE',
      'wasm+blas',
      `${BLAS_PACKAGE}: ${(err as Error).message}`,
    );
  }
  // The products run on the BLAS's threads; wasm, left with the elementwise work, on one:
  // its thread pool spins after each operation and would take the cores the products need
  // (measured: a 784-2000 step at batch 100 took 13.5 ms with 2 wasm threads, 9.8 with 1).
  const threads = options.threads ?? Math.min(availableParallelism(), MAX_WASM_THREADS);
  const wasm = await loadWasm({ ...options, threads: 1 });
  try {
    useBlasKernels(blas, threads);
  } catch (err) {
    throw new BackendError(
      'BACKEND_UNAVAILABLE',
      'wasm+blas',
      `${BLAS_PACKAGE}: ${(err as Error).message}`,
    );
  }
  const cpu = blas.corename ? `, ${blas.corename} kernels` : '';
  return {
    ...wasm,
    name: 'wasm+blas',
    package: `${wasm.package} + ${BLAS_PACKAGE} (${blas.library}${cpu})`,
    threads,
  };
}

async function loadCpu(_options: BackendOptions): Promise<BackendInfo> {
  await useBackend('cpu', '@tensorflow/tfjs-backend-cpu');
  // Its first tensor prints a banner advising tfjs-node; ffx chose this backend and said so.
  (tf.backend() as { firstUse?: boolean }).firstUse = false;
  return {
    name: 'cpu',
    package: '@tensorflow/tfjs-backend-cpu',
    device: 'cpu',
    threads: 1,
    simd: false,
    memoryLimitBytes: Infinity,
  };
}

/**
 * Whether the active backend's matrix products take a transposed operand as cheaply as a plain
 * one (its sgemm does; XNNPACK on wasm repacks it, ~13x slower): layers then skip explicit
 * transposes (core/ff-layer.ts).
 */
export function matMulTransposesFree(): boolean {
  return active?.name === 'wasm+blas';
}

/** Throws a clear error when a working set would not fit the backend's address space. */
export function checkMemoryBudget(bytes: number, what: string): void {
  const limit = activeBackend().memoryLimitBytes;
  // Headroom: tfjs allocates temporaries and the heap is fragmented.
  if (bytes > limit * 0.75) {
    throw new BackendError(
      'BACKEND_OUT_OF_MEMORY',
      activeBackend().name,
      `${what} needs about ${(bytes / 1024 ** 3).toFixed(2)} GiB, more than the ${activeBackend().name} backend can ` +
        `safely address (${(limit / 1024 ** 3).toFixed(0)} GiB); reduce the batch size or layer width`,
    );
  }
}
