// The guards on tfjs internals (host-memory.ts) and on the SIMD kernel (wasm-kernels.ts): with
// another tfjs release, or a kernel that does not load, the optimizer falls back to a slower path
// that computes the same bits, and the log says so once. A process picks its backend once and
// the fake releases need module hooks, so each case runs in a child process (with a timeout,
// killed in cleanup) that reports as one JSON line; the reference is an unmodified child.
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { cpuInternalsProblem, wasmInternalsProblem } from '../../src/core/host-memory.js';
import { DEFAULT_OPTIMIZER, type OptimizerConfig } from '../../src/core/optimizer.js';
import { FAKE_VERSIONS_HOOKS } from '../helpers/fake-versions.js';
import { assertSameBits, FLUSH_STEPS } from '../helpers/optimizer-paths.js';
import { killAll, ROOT, runModule } from '../helpers/spawn.js';

const TIMEOUT_MS = 30_000;
const CONFIGS: OptimizerConfig[] = [
  { ...DEFAULT_OPTIMIZER, type: 'adam', lr: 0.01, weightDecay: 0.1 },
  { ...DEFAULT_OPTIMIZER, type: 'adamw', lr: 0.01, weightDecay: 0.1 },
  { ...DEFAULT_OPTIMIZER, type: 'sgd', lr: 0.1, momentum: 0.9, weightDecay: 0.1 },
];
const OPS_FALLBACK = 'the optimizer update runs as tfjs ops, ~3x slower';

interface Run {
  inPlace: boolean[];
  /** p and the slots as float32 bit patterns. */
  bits: number[][];
}
interface Report {
  /** What hostView, wasmHeapOffset and wasmHeap gave for a float32 tensor (non-null?). */
  view: boolean;
  offset: boolean;
  heap: boolean;
  /** runFlushScenario(config, 'fused') for each of CONFIGS. */
  runs: Run[];
  processLog: string[];
}

interface ChildOptions {
  backend: 'wasm' | 'cpu';
  /** Packages that look like other releases to ffx's imports (helpers/fake-versions.ts). */
  fakes?: Record<string, Record<string, string>>;
  /** A copy of dist/ to run instead of the build's own. */
  dist?: string;
}

async function inChild(opts: ChildOptions): Promise<Report> {
  const dist = opts.dist ?? join(ROOT, 'dist');
  const url = (...p: string[]) => JSON.stringify(pathToFileURL(join(dist, ...p)).href);
  const source = `
    ${opts.fakes ? `(await import('node:module')).register(${JSON.stringify(FAKE_VERSIONS_HOOKS)}, { data: ${JSON.stringify(opts.fakes)} });` : ''}
    const tf = await import('@tensorflow/tfjs');
    const out = { processLog: [] };
    (await import(${url('src', 'log.js')})).configureLog({ sink: (l) => out.processLog.push(l) });
    const hm = await import(${url('src', 'core', 'host-memory.js')});
    const paths = await import(${url('test', 'helpers', 'optimizer-paths.js')});
    await (await import(${url('src', 'backend', 'backend.js')})).initBackend(
      ${JSON.stringify(opts.backend)}, { threads: 1 });
    const t = tf.ones([4]);
    out.view = hm.hostView(t) !== null;
    out.offset = hm.wasmHeapOffset(t) !== null;
    out.heap = hm.wasmHeap() !== null;
    hm.hostWritten(t); // a no-op where no view was handed out; must not throw
    t.dispose();
    out.runs = ${JSON.stringify(CONFIGS)}.map((c) => {
      const r = paths.runFlushScenario(c, 'fused');
      const bits = r.values.map((v) => Array.from(new Uint32Array(v.buffer, v.byteOffset, v.length)));
      return { inPlace: r.inPlace, bits };
    });
    console.log('REPORT ' + JSON.stringify(out));
  `;
  const r = await runModule(source, { timeoutMs: TIMEOUT_MS });
  assert.equal(r.timedOut, false, `child timed out\n${r.stderr}`);
  assert.equal(r.code, 0, `child exited ${r.code}\n${r.stderr}`);
  const line = r.stdout.split('\n').find((l) => l.startsWith('REPORT '));
  assert.ok(line, `no report in stdout:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line.slice('REPORT '.length)) as Report;
}

const floats = (bits: number[]) => new Float32Array(Uint32Array.from(bits).buffer);

/** Same bits as the reference for every config, and the path each step took. */
function assertSameRuns(got: Report, ref: Report, inPlace: boolean): void {
  CONFIGS.forEach((c, k) => {
    const [g, r] = [got.runs[k]!, ref.runs[k]!];
    assert.deepEqual(g.inPlace, Array<boolean>(FLUSH_STEPS).fill(inPlace), `${c.type}: path`);
    assert.equal(g.bits.length, r.bits.length);
    g.bits.forEach((b, i) => assertSameBits(floats(b), floats(r.bits[i]!), `${c.type} [${i}]`));
  });
}

let reference: Report;

before(async () => {
  // The unmodified build: kernel and JS tail, no warnings.
  reference = await inChild({ backend: 'wasm' });
});

after(() => killAll());

describe('host memory on the pinned tfjs', () => {
  it('hands out views and runs the fused update, silently', () => {
    assert.deepEqual([reference.view, reference.offset, reference.heap], [true, true, true]);
    for (const run of reference.runs) assert.ok(run.inPlace.every((x) => x));
    assert.deepEqual(reference.processLog, []);
  });
});

describe('host memory with another tfjs release', () => {
  it('wasm: no views, the tfjs-ops update with the same bits, one warning', async () => {
    const r = await inChild({
      backend: 'wasm',
      fakes: { '@tensorflow/tfjs-backend-wasm': { version_wasm: '4.99.0' } },
    });
    assert.deepEqual([r.view, r.offset, r.heap], [false, false, false]);
    assertSameRuns(r, reference, false);
    // Once for the whole run (3 optimizers, 8 steps each).
    assert.deepEqual(r.processLog, [
      'warning: wasm backend internals are not the ones ffx reads ' +
        `(@tensorflow/tfjs-backend-wasm 4.99.0, not 4.22.0): ${OPS_FALLBACK}`,
    ]);
  });

  it('cpu: no views, the tfjs-ops update with the same bits as wasm, one warning', async () => {
    const r = await inChild({
      backend: 'cpu',
      fakes: { '@tensorflow/tfjs': { version_core: '4.99.0' } },
    });
    assert.deepEqual([r.view, r.offset, r.heap], [false, false, false]);
    assertSameRuns(r, reference, false);
    assert.deepEqual(r.processLog, [
      'warning: cpu backend internals are not the ones ffx reads ' +
        `(@tensorflow/tfjs-core 4.99.0, not 4.22.0): ${OPS_FALLBACK}`,
    ]);
  });
});

describe('host memory internals of another shape', () => {
  // What the version check cannot see: a patch release that renamed a field. The real backend's
  // internals pass (the reference run above used them).
  const heap = () => ({
    HEAPU8: new Uint8Array(16),
    wasmMemory: new WebAssembly.Memory({ initial: 1 }),
    tfjs: { disposeData: () => {}, registerTensor: () => {} },
  });
  it('wasm: names the first missing piece', () => {
    const dataIdMap = new Map();
    assert.equal(wasmInternalsProblem(undefined), 'no dataIdMap.get');
    assert.equal(wasmInternalsProblem({ dataIdMap: {}, wasm: heap() }), 'no dataIdMap.get');
    assert.equal(wasmInternalsProblem({ dataIdMap }), 'no wasm.HEAPU8');
    assert.equal(
      wasmInternalsProblem({ dataIdMap, wasm: { ...heap(), HEAPU8: new Float32Array(4) } }),
      'no wasm.HEAPU8',
    );
    assert.equal(
      wasmInternalsProblem({ dataIdMap, wasm: { ...heap(), wasmMemory: undefined } }),
      'no wasm.wasmMemory or wasm.asm.memory',
    );
    assert.equal(
      wasmInternalsProblem({ dataIdMap, wasm: { ...heap(), tfjs: { disposeData: () => {} } } }),
      'no wasm.tfjs.registerTensor',
    );
    assert.equal(
      wasmInternalsProblem({ dataIdMap, wasm: { ...heap(), tfjs: { registerTensor: () => {} } } }),
      'no wasm.tfjs.disposeData',
    );
    assert.equal(wasmInternalsProblem({ dataIdMap, wasm: heap() }), 'no makeOutput');
    const makeOutput = () => ({});
    assert.equal(wasmInternalsProblem({ dataIdMap, makeOutput, wasm: heap() }), null);
    // The plain (not threaded) build keeps its memory under asm.
    const plain = { ...heap(), wasmMemory: undefined, asm: { memory: heap().wasmMemory } };
    assert.equal(wasmInternalsProblem({ dataIdMap, makeOutput, wasm: plain }), null);
  });

  it('cpu: needs data.get', () => {
    assert.equal(cpuInternalsProblem({}), 'no data.get');
    assert.equal(cpuInternalsProblem({ data: new Map() }), null);
  });
});

describe('the SIMD optimizer kernel', () => {
  // A copy of dist/ beside a link to node_modules, with the kernel removed or broken.
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'ffx-kernel-'));
    cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const kernel = () => join(dir, 'dist', 'src', 'core', 'kernels', 'optimizer.wasm');
  const cases = [
    { what: 'missing', breakIt: () => unlinkSync(kernel()), error: /ENOENT/ },
    {
      what: 'not wasm',
      breakIt: () => writeFileSync(kernel(), 'not a module'),
      error: /WebAssembly\.Module\(\)/,
    },
  ];
  for (const c of cases) {
    it(`${c.what}: the JS loop does the whole update, same bits, one warning`, async () => {
      c.breakIt();
      const r = await inChild({ backend: 'wasm', dist: join(dir, 'dist') });
      assert.deepEqual([r.view, r.offset, r.heap], [true, true, true]);
      assertSameRuns(r, reference, true);
      assert.equal(r.processLog.length, 1, r.processLog.join('\n'));
      const line = r.processLog[0]!;
      assert.ok(line.startsWith(`warning: cannot load the SIMD optimizer kernel ${kernel()} (`));
      assert.match(line, c.error);
      assert.ok(line.includes('the optimizer update runs as a JS loop, ~3x slower'), line);
    });
  }
});
