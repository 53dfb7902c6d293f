// Backend selection. A process can choose a tfjs backend only once, so every case runs in its own
// child process (with a timeout, killed in cleanup) and reports what it saw as one JSON line.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { FAKE_VERSIONS_HOOKS } from '../helpers/fake-versions.js';
import { blasLoads } from '../helpers/backends.js';
import { killAll, ROOT, runModule } from '../helpers/spawn.js';

const BACKEND_JS = join(ROOT, 'dist', 'src', 'backend', 'backend.js');
const LOG_JS = join(ROOT, 'dist', 'src', 'log.js');
const TIMEOUT_MS = 30_000;

interface ErrorInfo {
  name: string;
  code: string;
  message: string;
}
interface Report {
  info?: {
    name: string;
    package: string;
    device: string;
    threads: number;
    simd: boolean;
    memoryLimitBytes: number | null;
  };
  error?: ErrorInfo;
  logs: string[];
  /** What the process log (src/log.ts) printed: warnings. */
  processLog: string[];
  /** What console.warn printed (TensorFlow.js warns through it). */
  warned?: string[];
  [key: string]: unknown;
}

/**
 * Runs `body` (ES module statements) in a fresh Node process with `b` = backend.js, `tf` =
 * @tensorflow/tfjs, `log` = a logger collecting into the report, and `out` = extra report
 * fields; the process log goes to `out.processLog`. A throw from the body is reported as
 * `error`; `err(fn)` captures one from a call. `fakes` makes packages look like other releases
 * to ffx's imports (helpers/fake-versions.ts).
 */
async function inChild(
  body: string,
  fakes?: Record<string, Record<string, string>>,
  env: NodeJS.ProcessEnv = {},
): Promise<Report> {
  const source = `
    ${fakes ? `(await import('node:module')).register(${JSON.stringify(FAKE_VERSIONS_HOOKS)}, { data: ${JSON.stringify(fakes)} });` : ''}
    const b = await import(${JSON.stringify(pathToFileURL(BACKEND_JS).href)});
    const tf = await import('@tensorflow/tfjs');
    const logs = [];
    const log = (l) => logs.push(l);
    const out = { logs, processLog: [] };
    (await import(${JSON.stringify(pathToFileURL(LOG_JS).href)})).configureLog({
      sink: (l) => out.processLog.push(l),
    });
    const describe = (e) => ({ name: e.name, code: e.code, message: e.message });
    const err = async (fn) => { try { await fn(); return null; } catch (e) { return describe(e); } };
    try {
      ${body}
    } catch (e) {
      out.error = describe(e);
    }
    console.log('REPORT ' + JSON.stringify(out));
  `;
  const r = await runModule(source, { timeoutMs: TIMEOUT_MS, env });
  assert.equal(r.timedOut, false, `child timed out (did it fail to exit?)\n${r.stderr}`);
  assert.equal(r.code, 0, `child exited ${r.code}\n${r.stderr}`);
  const line = r.stdout.split('\n').find((l) => l.startsWith('REPORT '));
  assert.ok(line, `no report in stdout:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line.slice('REPORT '.length)) as Report;
}

// The integrator may add a wasm `threads` option; test it only where backend.js reads it.

after(() => killAll());

describe('initBackend', () => {
  it("'wasm' loads tfjs-backend-wasm with SIMD, and asking again is a no-op", async () => {
    const r = await inChild(`
      const info = await b.initBackend('wasm', { log });
      out.info = info;
      out.tfBackend = tf.getBackend();
      out.sameAgain = (await b.initBackend('wasm')) === info;
      out.sameAuto = (await b.initBackend('auto')) === info;
      out.active = b.activeBackend() === info;
      // 4 GiB address space, 75% usable: 2 GiB fits, 3.5 GiB does not.
      out.fits = await err(() => b.checkMemoryBudget(2 * 1024 ** 3, 'small'));
      out.tooBig = await err(() => b.checkMemoryBudget(3.5 * 1024 ** 3, 'a batch of 9000'));
    `);
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    assert.equal(r.info!.name, 'wasm');
    assert.equal(r.info!.package, '@tensorflow/tfjs-backend-wasm');
    assert.equal(r.info!.device, 'cpu');
    assert.equal(r.info!.simd, true);
    assert.ok(r.info!.threads >= 1);
    assert.equal(r.info!.memoryLimitBytes, 4 * 1024 ** 3);
    assert.equal(r.tfBackend, 'wasm');
    assert.equal(r.sameAgain, true);
    assert.equal(r.sameAuto, true, "'auto' keeps whatever is active");
    assert.equal(r.active, true);
    assert.match(
      r.logs.join('\n'),
      /^backend wasm \(@tensorflow\/tfjs-backend-wasm, cpu, simd on, \d+ threads?\)$/m,
    );
    assert.equal(r.fits, null);
    const tooBig = r.tooBig as ErrorInfo;
    assert.equal(tooBig.code, 'BACKEND_OUT_OF_MEMORY');
    assert.match(
      tooBig.message,
      /^a batch of 9000 needs about 3\.50 GiB, more than the wasm backend/,
    );
  });

  it("'cpu' loads the pure-JS backend, with no memory limit and no banner", async () => {
    const r = await inChild(`
      const warned = [];
      console.warn = (...a) => warned.push(a.join(' '));
      out.info = await b.initBackend('cpu', { log });
      out.tfBackend = tf.getBackend();
      out.huge = await err(() => b.checkMemoryBudget(1e12, 'huge'));
      tf.tensor([1, 2]).dataSync();
      out.warned = warned;
    `);
    // TensorFlow.js's advice to install tfjs-node, on the first tensor: ffx chose this backend.
    assert.deepEqual(r.warned, []);
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    assert.equal(r.info!.name, 'cpu');
    assert.equal(r.info!.package, '@tensorflow/tfjs-backend-cpu');
    assert.equal(r.info!.simd, false);
    assert.equal(r.info!.threads, 1);
    assert.equal(r.info!.memoryLimitBytes, null, 'Infinity (JSON null)');
    assert.equal(r.tfBackend, 'cpu');
    assert.equal(r.huge, null);
  });

  it("'auto' takes wasm with its products on BLAS where ffx-blas loads, and says which path", async () => {
    // @tensorflow/tfjs-node(-gpu) are optional dependencies that cannot install offline.
    const r = await inChild(`out.info = await b.initBackend('auto', { log });`);
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    const lines = r.logs.join('\n');
    if (blasLoads().ok) {
      assert.equal(r.info!.name, 'wasm+blas');
      assert.deepEqual(r.logs.slice(0, 1), [
        'backend auto: skipped @tensorflow/tfjs-node-gpu, @tensorflow/tfjs-node',
      ]);
      assert.match(
        r.logs[1]!,
        /^backend wasm\+blas \(@tensorflow\/tfjs-backend-wasm \+ ffx-blas \(lib\S+\.so[.\d]*(, \w+ kernels)?\), cpu, simd on, \d+ threads?\)$/,
      );
    } else {
      assert.equal(r.info!.name, 'wasm');
      assert.match(
        lines,
        /^backend auto: no native BLAS \(ffx-blas: .*\); matrix products run on wasm$/m,
      );
      assert.match(lines, /^backend wasm /m);
    }
  });

  it('without a CBLAS library, auto says so once and runs on wasm; wasm+blas is an error', async () => {
    const env = { FFX_BLAS_LIB: '/nonexistent/libcblas.so.3' };
    const auto = await inChild(`out.info = await b.initBackend('auto', { log });`, undefined, env);
    assert.equal(auto.error, undefined, JSON.stringify(auto.error));
    assert.equal(auto.info!.name, 'wasm');
    const said = auto.logs.filter((l) => l.includes('native BLAS'));
    assert.equal(said.length, 1, auto.logs.join('\n'));
    assert.match(
      said[0]!,
      /^backend auto: no native BLAS \(ffx-blas: .*\); matrix products run on wasm$/,
    );
    if (blasLoads().ok) assert.match(said[0]!, /\/nonexistent\/libcblas\.so\.3/);
    const named = await inChild(
      `out.failure = await err(() => b.initBackend('wasm+blas'));`,
      undefined,
      env,
    );
    const f = named.failure as ErrorInfo;
    assert.equal(f.code, 'BACKEND_UNAVAILABLE');
    assert.match(f.message, /^ffx-blas: /);
  });

  it("'tensorflow' fails with BACKEND_UNAVAILABLE and says how to install it", async () => {
    // Asked for by name, a backend that cannot load is an error, never a silent fallback; the
    // process is left without a backend, so another choice still works.
    const r = await inChild(`
      out.failure = await err(() => b.initBackend('tensorflow', { log }));
      out.notReady = await err(() => b.activeBackend());
      out.info = await b.initBackend('cpu');
    `);
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    const f = r.failure as ErrorInfo;
    assert.equal(f.name, 'BackendError');
    assert.equal(f.code, 'BACKEND_UNAVAILABLE');
    assert.match(f.message, /@tensorflow\/tfjs-node-gpu or @tensorflow\/tfjs-node/);
    assert.match(f.message, /npm install @tensorflow\/tfjs-node/);
    assert.match(f.message, /--backend wasm/);
    assert.equal((r.notReady as ErrorInfo).code, 'BACKEND_NOT_READY');
    assert.equal(r.info!.name, 'cpu');
  });

  it('an unknown name is BACKEND_UNKNOWN and lists the choices', async () => {
    const r = await inChild(`out.failure = await err(() => b.initBackend('webgpu'));`);
    const f = r.failure as ErrorInfo;
    assert.equal(f.code, 'BACKEND_UNKNOWN');
    assert.equal(
      f.message,
      'backend must be one of auto, tensorflow, wasm+blas, wasm, cpu; got "webgpu"',
    );
  });

  it('switching backends in one process is BACKEND_ALREADY_SET and keeps the first', async () => {
    const r = await inChild(`
      await b.initBackend('cpu');
      out.failure = await err(() => b.initBackend('wasm'));
      out.tfBackend = tf.getBackend();
      out.active = b.activeBackend().name;
    `);
    const f = r.failure as ErrorInfo;
    assert.equal(f.code, 'BACKEND_ALREADY_SET');
    assert.equal(
      f.message,
      'backend "cpu" is already active in this process; cannot switch to "wasm"',
    );
    assert.equal(r.tfBackend, 'cpu');
    assert.equal(r.active, 'cpu');
  });

  it('activeBackend before initBackend is BACKEND_NOT_READY', async () => {
    const r = await inChild(`out.failure = await err(() => b.activeBackend());`);
    assert.equal((r.failure as ErrorInfo).code, 'BACKEND_NOT_READY');
  });
});

describe('initBackend wasm threads', () => {
  // A threaded wasm backend must compute the same numbers as plain JS and must not keep the
  // process alive: the child exits on its own (the helper fails on a timeout).
  const matMulCheck = `
    const n = 96;
    const a = Float32Array.from({ length: n * n }, (_, i) => ((i * 7) % 13) - 6);
    const c = Float32Array.from({ length: n * n }, (_, i) => ((i * 5) % 11) - 5);
    const got = tf.matMul(tf.tensor2d(a, [n, n]), tf.tensor2d(c, [n, n])).dataSync();
    let maxDiff = 0;
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += a[i * n + k] * c[k * n + j];
        maxDiff = Math.max(maxDiff, Math.abs(got[i * n + j] - s));
      }
    out.maxDiff = maxDiff;
  `;

  for (const threads of [1, 2]) {
    it(`threads: ${threads} gives info.threads ${threads} and exact small-integer products`, async () => {
      const r = await inChild(`
        out.info = await b.initBackend('wasm', { threads: ${threads}, log });
        ${matMulCheck}
      `);
      assert.equal(r.error, undefined, JSON.stringify(r.error));
      assert.equal(r.info!.name, 'wasm');
      assert.equal(r.info!.threads, threads);
      assert.match(r.logs.join('\n'), new RegExp(`simd on, ${threads} threads?\\)`));
      // Integer inputs with sums far below 2^24: float32 products are exact.
      assert.equal(r.maxDiff, 0);
    });
  }

  it('another tfjs-backend-wasm release runs 1 thread, with a warning, not a failure', async () => {
    // wasm-threads.ts patches the 4.22.0 bundle's internals; with any other release ffx runs
    // the stock single-threaded backend, and says so once.
    const r = await inChild(
      `
        out.info = await b.initBackend('wasm', { threads: 2, log });
        ${matMulCheck}
      `,
      { '@tensorflow/tfjs-backend-wasm': { version_wasm: '4.99.0' } },
    );
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    assert.equal(r.info!.name, 'wasm');
    assert.equal(r.info!.threads, 1);
    assert.match(r.logs.join('\n'), /simd on, 1 thread\)/);
    const warnings = r.processLog.filter((l) => l.includes('thread'));
    assert.deepEqual(warnings, [
      "warning: @tensorflow/tfjs-backend-wasm 4.99.0 is not the 4.22.0 that ffx's threaded " +
        'start is written for: wasm runs 1 thread, not 2',
    ]);
    assert.equal(r.maxDiff, 0);
  });

  it('a GPU device asked for runs on tfjs-node-gpu or fails, never on a CPU backend', async () => {
    const r = await inChild(`
      out.wasm = await err(() => b.initBackend('wasm', { device: 'gpu' }));
      out.auto = await err(() => b.initBackend('auto', { device: 0 }));
      out.visible = process.env.CUDA_VISIBLE_DEVICES ?? null;
    `);
    assert.equal((r.wasm as ErrorInfo).code, 'BACKEND_UNAVAILABLE');
    assert.match((r.wasm as ErrorInfo).message, /a GPU device runs on backend "tensorflow"/);
    // Not installable here: auto must not fall back to wasm.
    assert.equal((r.auto as ErrorInfo).code, 'BACKEND_UNAVAILABLE');
    assert.match((r.auto as ErrorInfo).message, /^GPU device 0 asked for, but /);
    assert.equal(r.visible, '0');
  });

  it('rejects a thread count outside 1..8, with any backend choice', async () => {
    const r = await inChild(`
      out.zero = await err(() => b.initBackend('wasm', { threads: 0 }));
      out.nine = await err(() => b.initBackend('wasm', { threads: 9 }));
      out.half = await err(() => b.initBackend('wasm', { threads: 1.5 }));
      // auto does not fall past it to another backend.
      out.auto = await err(() => b.initBackend('auto', { threads: 0 }));
    `);
    for (const k of ['zero', 'nine', 'half', 'auto']) {
      assert.equal((r[k] as ErrorInfo).code, 'BACKEND_BAD_THREADS', k);
      assert.match((r[k] as ErrorInfo).message, /threads must be an integer from 1 to 8/);
    }
  });
});
