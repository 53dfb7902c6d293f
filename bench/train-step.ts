// FF train-step throughput against the same backend's bare matMul, and against the machine's
// BLAS on the same shapes (its practical limit).
//
//   npm run bench                         every backend that loads here, default shapes
//   npm run bench -- --backend wasm+blas --threads 2 --batch 100 --shapes 784x2000
//
// Then the conv layers' step against the bare conv on the same backend (conv-step.ts).
//
// A step does two matrix products of 2B*in*out multiply-adds each, the forward pass
// Z = Xn W^T and the weight gradient dW = dZ^T Xn (rows = 2B), so its "achieved GFLOP/s" is
// 2 * 2*2B*in*out / step time; it includes what a stage does with a step's results (reading the
// stats, copying the activations out for the next stage). Two references: the same two products
// as the backend's bare matMuls on operands of the same shapes, timed the same way (the batch
// operand repacked each call, as in a step), and the same two products as bare CBLAS sgemm calls
// through ffx-blas on --threads threads (where it is built): what this machine can do at all.
// The process runs with the allocator and heap settings ffx-launch gives stages
// (cli/pipeline-process.ts).
import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { hideBin, yargs } from '../src/cli/yargs.js';
import { initBackend, type BackendChoice } from '../src/backend/backend.js';
import { loadBlasAddon, type BlasAddon } from '../src/backend/blas.js';
import { PIPELINE_MALLOC_ENV, PIPELINE_NODE_FLAGS } from '../src/cli/pipeline-process.js';
import { FFLayer } from '../src/core/ff-layer.js';
import { hostWritten, readFloats } from '../src/core/host-memory.js';
import { DEFAULT_OPTIMIZER } from '../src/core/optimizer.js';
import { timeIt } from './time-it.js';
import { benchConvLayers, printConvTable, type ConvRow } from './conv-step.js';

interface Row {
  backend: string;
  shape: string;
  batch: number;
  stepMs: number;
  samplesPerSec: number;
  stepGflops: number;
  /** The step's two products, bare: forward shape, gradient shape, and both together. */
  fwdGflops: number;
  gradGflops: number;
  matmulGflops: number;
  /** The two products as bare sgemm calls (NaN without ffx-blas). */
  blasGflops: number;
}

function benchShape(
  backend: string,
  threads: number,
  inDim: number,
  outDim: number,
  batch: number,
  minMs: number,
): Row {
  const rows = 2 * batch;
  const layer = new FFLayer(
    { inDim, outDim, goodness: 'mean', negate: false, threshold: 1, normEps: 1e-8, seed: 1 },
    DEFAULT_OPTIMIZER,
  );
  const x = tf.randomUniform([rows, inDim], 0, 1, 'float32', 2) as tf.Tensor2D;
  const stepMs = timeIt(() => {
    const { h, stats } = layer.trainStep(x, batch, 1e-3);
    stats.dataSync(); // the trainer reads the stats every step: part of the cost
    readFloats(h); // and the activations go to the next stage, as a stage copies them out
    h.dispose();
    stats.dispose();
  }, minMs);
  const w = layer.weight;
  const xT = tf.transpose(x);
  const dzT = tf.randomUniform([outDim, rows], 0, 1, 'float32', 3) as tf.Tensor2D;
  // In a step the right-hand operand (the batch) is new every time, so XNNPACK packs it every
  // time; forget the packed copy before each call so the bare product pays for that too.
  const bare = (a: tf.Tensor2D, b: tf.Tensor2D) =>
    timeIt(() => {
      hostWritten(b);
      const y = tf.matMul(a, b);
      y.dataSync();
      y.dispose();
    }, minMs / 2);
  const fwdMs = bare(w, xT);
  const gradMs = bare(dzT, x);
  layer.dispose();
  tf.dispose([x, xT, dzT]);
  const flop = 2 * rows * inDim * outDim;
  const blasMs = blasReference(rows, inDim, outDim, threads, minMs / 2);
  return {
    backend,
    shape: `${inDim}-${outDim}`,
    batch,
    stepMs,
    samplesPerSec: (batch / stepMs) * 1000,
    stepGflops: (2 * flop) / stepMs / 1e6,
    fwdGflops: flop / fwdMs / 1e6,
    gradGflops: flop / gradMs / 1e6,
    matmulGflops: (2 * flop) / (fwdMs + gradMs) / 1e6,
    blasGflops: (2 * flop) / blasMs / 1e6,
  };
}

/**
 * The step's two products as bare sgemm calls on ffx-blas's threads (ms for both; NaN where
 * ffx-blas does not load): Z = Xn W^T [rows, out] and dW = dZ^T Xn [out, in].
 */
function blasReference(
  rows: number,
  inDim: number,
  outDim: number,
  threads: number,
  minMs: number,
): number {
  let blas: BlasAddon;
  try {
    blas = loadBlasAddon();
  } catch {
    return NaN;
  }
  blas.setThreads(threads);
  const fill = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i));
  const [xn, w, dz] = [fill(rows * inDim), fill(outDim * inDim), fill(rows * outDim)];
  const [z, dw] = [new Float32Array(rows * outDim), new Float32Array(outDim * inDim)];
  return timeIt(() => {
    blas.sgemm(false, true, rows, outDim, inDim, 1, xn, 0, inDim, w, 0, inDim, 0, z, 0, outDim);
    blas.sgemm(true, false, outDim, inDim, rows, 1, dz, 0, outDim, xn, 0, inDim, 0, dw, 0, inDim);
  }, minMs);
}

function printTable(rows: Row[]): void {
  const head = [
    'backend',
    'layer',
    'batch',
    'step ms',
    'samples/s',
    'step GFLOP/s',
    'matMul fwd',
    'matMul grad',
    'matMul both',
    'step/matMul',
    'BLAS GEMM',
    'step/BLAS',
  ];
  const body = rows.map((r) => [
    r.backend,
    r.shape,
    String(r.batch),
    r.stepMs.toFixed(1),
    r.samplesPerSec.toFixed(0),
    r.stepGflops.toFixed(1),
    r.fwdGflops.toFixed(1),
    r.gradGflops.toFixed(1),
    r.matmulGflops.toFixed(1),
    `${((100 * r.stepGflops) / r.matmulGflops).toFixed(0)}%`,
    !Number.isFinite(r.blasGflops) ? '-' : r.blasGflops.toFixed(1),
    !Number.isFinite(r.blasGflops) ? '-' : `${((100 * r.stepGflops) / r.blasGflops).toFixed(0)}%`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log(line(head));
  for (const b of body) console.log(line(b));
}

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .option('backend', { type: 'string', describe: 'one backend (default: every one that loads)' })
    .option('shapes', {
      type: 'string',
      default: '784x2000,2000x2000',
      describe: 'comma-separated INxOUT',
    })
    .option('batch', {
      type: 'string',
      default: '100,1000',
      describe: 'comma-separated batch sizes (pos rows)',
    })
    .option('min-ms', {
      type: 'number',
      default: 2000,
      describe: 'time each measurement at least this long',
    })
    .option('threads', {
      type: 'number',
      describe: 'compute threads, of wasm and of the BLAS (default: every core)',
    })
    .option('conv-batch', {
      type: 'number',
      default: 128,
      describe: 'batch of the conv layers table (0: no conv table)',
    })
    .option('json', { type: 'boolean', default: false })
    .strict()
    .parse();
  if (!argv.backend || !stageAllocator()) {
    // One backend per process: run a child per backend, each printing JSON rows, with the
    // allocator and heap settings of a stage.
    const all: Row[] = [];
    const conv: ConvRow[] = [];
    for (const b of argv.backend ? [argv.backend] : ['tensorflow', 'wasm+blas', 'wasm', 'cpu']) {
      // Pure JS is ~30x slower: keep its run short.
      const slow = b === 'cpu';
      const args = [
        ...PIPELINE_NODE_FLAGS,
        fileURLToPath(import.meta.url),
        '--backend',
        b,
        '--json',
        '--shapes',
        argv.shapes,
      ];
      args.push('--batch', slow ? argv.batch.split(',')[0]! : argv.batch);
      if (argv.threads) args.push('--threads', String(argv.threads));
      args.push('--min-ms', String(slow ? 500 : argv['min-ms']));
      args.push('--conv-batch', String(slow ? 0 : argv['conv-batch']));
      const child = spawnSync(process.execPath, args, {
        encoding: 'utf8',
        env: { ...PIPELINE_MALLOC_ENV, ...process.env },
      });
      if (child.status !== 0) {
        console.log(
          `${b}: not available (${(child.stderr.trim().split('\n').pop() ?? '').slice(0, 160)})`,
        );
        continue;
      }
      const got = JSON.parse(child.stdout.trim().split('\n').pop()!) as {
        ff: Row[];
        conv: ConvRow[];
      };
      all.push(...got.ff);
      conv.push(...got.conv);
    }
    printTable(all);
    printConvTable(conv);
    return;
  }
  const info = await initBackend(argv.backend as BackendChoice, { threads: argv.threads });
  const rows: Row[] = [];
  for (const shape of argv.shapes.split(',')) {
    const [i, o] = shape.split('x').map(Number);
    for (const batch of argv.batch.split(',').map(Number)) {
      rows.push(benchShape(info.name, info.threads, i!, o!, batch, argv['min-ms']));
    }
  }
  const convRows =
    argv['conv-batch'] > 0 ? benchConvLayers(info.name, argv['conv-batch'], argv['min-ms']) : [];
  if (argv.json) console.log(JSON.stringify({ ff: rows, conv: convRows }));
  else {
    printTable(rows);
    printConvTable(convRows);
  }
}

/** Whether this process runs with a stage's allocator and heap settings. */
function stageAllocator(): boolean {
  return (
    Object.keys(PIPELINE_MALLOC_ENV).every((k) => process.env[k] !== undefined) &&
    PIPELINE_NODE_FLAGS.every((f) => process.execArgv.includes(f))
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
