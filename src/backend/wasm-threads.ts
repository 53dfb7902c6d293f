/**
 * Multithreaded (threaded-simd) @tensorflow/tfjs-backend-wasm 4.22.0 in Node.js >= 20.
 *
 * Why this is needed: in Node the backend hard-codes WASM_HAS_MULTITHREAD_SUPPORT=false.
 * Forcing the flag is not enough, because the threaded path
 *   1. builds the pthread worker script as a Blob URL (Node's Worker only takes file paths), and
 *   2. sends the emscripten factory to each worker as a Blob
 *      ("var WasmBackendModuleThreadedSimd = " + factory.toString()); the worker cannot read a
 *      blob: URL, and the function text references rollup-bundle-scoped names
 *      (require$$0/1/3/4, commonjsGlobal, _scriptDir, __values/__read/__spreadArray) that do
 *      not exist in the worker.
 * This function, only while `tf.setBackend('wasm')` runs, captures those two Blobs' text, writes them
 * (the factory with a prelude defining the missing names) to temp .cjs files, and hands their
 * absolute paths to worker_threads. Afterwards it restores Blob, URL.createObjectURL and
 * globalThis.Worker, deletes the temp files, and unrefs the pthread workers so they do not keep
 * the process alive.
 */
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount, setThreadsCount, version_wasm } from '@tensorflow/tfjs-backend-wasm';
import * as fs from 'node:fs';
import os from 'node:os'; // default export = the CJS module object the bundle's require('os') sees
import * as path from 'node:path';
import {
  Worker as NodeWorker,
  type TransferListItem,
  type WorkerOptions,
} from 'node:worker_threads';

// Names the threaded emscripten factory uses that live in the rollup scope of
// dist/tf-backend-wasm.node.js (4.22.0). Evaluated in the pthread worker's global scope, where
// the worker script has already put `require`, `location` and `self` on the global object.
const FACTORY_PRELUDE = `var require$$0 = require('fs'), require$$1 = require('path'),
  require$$3 = require('perf_hooks'), require$$4 = require('os');
var commonjsGlobal = globalThis;
var _scriptDir = location.href;
function __values(o) { return o[Symbol.iterator](); }
function __read(o, n) { var a = Array.from(o); return n === undefined ? a : a.slice(0, n); }
function __spreadArray(to, from) { return to.concat(Array.prototype.slice.call(from)); }
`;

// emscripten pre-spawns a pool of 8 workers (PThread.initMainThread, pthreadPoolSize = 8);
// all are loaded during init. More threads would need workers created after the patches are gone.
const POOL_SIZE = 8;

/**
 * The tfjs-backend-wasm release this is written for: FACTORY_PRELUDE mirrors its node bundle's
 * rollup-scoped names (re-check on upgrade). Callers check it and fall back to one thread.
 */
export const WASM_THREADS_VERSION = '4.22.0';

export async function initWasmThreaded(threads: number): Promise<void> {
  if (!Number.isInteger(threads) || threads < 1 || threads > POOL_SIZE) {
    throw new Error(`initWasmThreaded: threads must be an integer in [1, ${POOL_SIZE}]`);
  }
  if (version_wasm !== WASM_THREADS_VERSION) {
    throw new Error(
      `initWasmThreaded: written for tfjs-backend-wasm ${WASM_THREADS_VERSION}, found ${version_wasm}`,
    );
  }
  // (not tf.findBackend: it would start initializing the backend)
  const engine = tf.engine() as unknown as {
    registry: Record<string, unknown>;
    pendingBackendInit?: unknown;
  };
  if (engine.registry['wasm'] != null || engine.pendingBackendInit != null) {
    throw new Error('initWasmThreaded: a backend is already initialized/initializing as wasm');
  }

  const g = globalThis as Record<string, unknown>;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tfjs-wasm-mt-'));
  const blobText = new WeakMap<object, string>();
  const urlText = new Map<string, string>();
  const fileByText = new Map<string, string>();
  const workers: NodeWorker[] = [];
  let settled = false;

  const toFile = (text: string): string => {
    let file = fileByText.get(text);
    if (file === undefined) {
      file = path.join(dir, `script${fileByText.size}.cjs`); // .cjs: CommonJS even under "type":"module"
      fs.writeFileSync(file, text);
      fileByText.set(text, file);
    }
    return file;
  };

  const OrigBlob = globalThis.Blob;
  class CapturingBlob extends OrigBlob {
    constructor(parts?: BlobPart[], options?: BlobPropertyBag) {
      super(parts, options);
      if (Array.isArray(parts) && parts.every((p) => typeof p === 'string')) {
        blobText.set(this, (parts as string[]).join(''));
      }
    }
  }

  const origCreateObjectURL = URL.createObjectURL;
  const capturingCreateObjectURL = (obj: Blob): string => {
    const url = origCreateObjectURL.call(URL, obj);
    const text = blobText.get(obj);
    if (text !== undefined) urlText.set(url, text);
    return url;
  };

  class PthreadWorker extends NodeWorker {
    constructor(url: string | URL, options?: WorkerOptions) {
      let target = url;
      if (typeof url === 'string' && url.startsWith('blob:')) {
        const text = urlText.get(url);
        if (text === undefined) throw new Error(`initWasmThreaded: unknown blob URL ${url}`);
        urlText.delete(url);
        URL.revokeObjectURL(url);
        target = toFile(text);
      }
      super(target, options);
      workers.push(this);
      if (settled) super.unref();
    }
    // emscripten's {cmd:'load'} carries the factory as a Blob (mainScriptUrlOrBlob): swap in a path.
    override postMessage(msg: unknown, transferList?: readonly TransferListItem[]): void {
      const m = msg as { cmd?: unknown; urlOrBlob?: unknown } | null;
      if (m && m.cmd === 'load' && m.urlOrBlob != null && typeof m.urlOrBlob !== 'string') {
        const text = blobText.get(m.urlOrBlob as object);
        if (text === undefined)
          throw new Error('initWasmThreaded: cannot read mainScriptUrlOrBlob');
        msg = { ...m, urlOrBlob: toFile(FACTORY_PRELUDE + text) };
      }
      super.postMessage(msg, transferList);
    }
    // emscripten ref()s a worker while its pthread runs; XNNPACK's pool threads never finish,
    // so once initialized keep them unref'd (otherwise Node never exits).
    override ref(): void {
      if (!settled) super.ref();
    }
  }

  const blobDesc = Object.getOwnPropertyDescriptor(g, 'Blob');
  const workerDesc = Object.getOwnPropertyDescriptor(g, 'Worker');
  let assignedWorker: unknown = workerDesc?.value; // the factory does `globalThis.Worker = worker_threads.Worker`
  let workerAssigned = false;

  Object.defineProperty(g, 'Blob', { value: CapturingBlob, writable: true, configurable: true });
  Object.defineProperty(g, 'Worker', {
    configurable: true,
    get: () => PthreadWorker,
    set: (v: unknown) => {
      assignedWorker = v;
      workerAssigned = true;
    },
  });
  URL.createObjectURL = capturingCreateObjectURL;
  // backend.cc caps the pool at emscripten_num_logical_cores() / 2 (a static initialised when the
  // module starts; in Node that is os.cpus().length). On a 2-core box that caps it at 1 thread,
  // so report 2 * threads logical cores while the module starts.
  const origCpus = os.cpus;
  const fakeCpus = (): os.CpuInfo[] => {
    const real = origCpus.call(os);
    const n = Math.max(real.length, 2 * threads);
    return Array.from({ length: n }, (_, i) => real[i % real.length]!);
  };
  (os as { cpus: typeof os.cpus }).cpus = fakeCpus;

  const prevFlag = tf.env().getFlags()['WASM_HAS_MULTITHREAD_SUPPORT'];
  try {
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
    setThreadsCount(threads);
    const ok = await tf.setBackend('wasm');
    if (!ok) throw new Error('initWasmThreaded: tf.setBackend("wasm") failed (see warning above)');
    await tf.ready();
  } catch (e) {
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', prevFlag ?? false); // Node default is false
    throw e;
  } finally {
    settled = true;
    if (os.cpus === fakeCpus) (os as { cpus: typeof os.cpus }).cpus = origCpus;
    if (blobDesc) Object.defineProperty(g, 'Blob', blobDesc);
    if (URL.createObjectURL === capturingCreateObjectURL) URL.createObjectURL = origCreateObjectURL;
    if (workerAssigned) {
      // Leave what stock emscripten leaves behind (globalThis.Worker = worker_threads.Worker).
      Object.defineProperty(g, 'Worker', {
        value: assignedWorker,
        writable: true,
        configurable: true,
        enumerable: workerDesc?.enumerable ?? true,
      });
    } else if (workerDesc) {
      Object.defineProperty(g, 'Worker', workerDesc);
    } else {
      delete g['Worker'];
    }
    for (const w of workers) w.unref();
    for (const url of urlText.keys()) URL.revokeObjectURL(url);
    // All pool workers have read both scripts once the module is ready.
    fs.rmSync(dir, { recursive: true, force: true });
  }

  const actual = getThreadsCount();
  if (actual !== threads) {
    throw new Error(`initWasmThreaded: XNNPACK reports ${actual} threads, expected ${threads}`);
  }
}
