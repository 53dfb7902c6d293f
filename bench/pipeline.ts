// Is the pipelining real? Trains the same network on the same data once in the single-process
// reference and once as a pipeline of one ffx-stage per layer (ffx-launch), every process
// limited to one compute thread, and prints samples/s of both and their ratio (the median of
// --repeat runs of each, alternated, since a shared VM's speed drifts by 10% or more), the
// ideal ratio (the local epoch's time over its slowest layer's: what a pipeline with no
// overhead would reach), the efficiency (ratio / ideal), the transport's share of a stage's
// step (decode + encode, over compute + those), and how long each stage sat idle (waiting for
// input) or blocked (waiting for room downstream).
//
// With --keys, each repeat also runs the pipeline with CurveZMQ on every link (ffx-launch
// --keys), alternated with the plain one, and prints what encryption costs.
//
// Each --layout is a way to lay the layers out (ffx-launch --partition SPEC, or stages=K for
// ffx-launch --stages K; default: one stage per layer). Beside what each layout measures, the
// planner's prediction for it (coordinator/planner.ts, from the local run's per-layer step
// times) and how far off it was.
//
//   npm run bench:pipeline
//   npm run bench:pipeline -- --layers 784,2000,300,300,300 --layout 1-2,3-4 --layout stages=2
//   npm run bench:pipeline -- --layers 784,2000,300,300,300 --shards 2 --layout 1,2-4 --layout 1x2,2-4
//   npm run bench:pipeline -- --layers 784,1000,784 --images 20000 --batch 1000 --repeat 1
//   npm run bench:pipeline -- --transport tcp --keys
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hideBin, yargs } from '../src/cli/yargs.js';
import type { EpochRecord } from '../src/coordinator/epoch-record.js';
import { PIPELINE_MALLOC_ENV, PIPELINE_NODE_FLAGS } from '../src/cli/pipeline-process.js';
import { onePerLayer, parsePartition, partitionName } from '../src/config/partition.js';
import { predict, type LayerCost } from '../src/coordinator/planner.js';

const cli = (name: string) => fileURLToPath(new URL(`../src/cli/${name}.js`, import.meta.url));
const root = fileURLToPath(new URL('../../', import.meta.url));

async function main(): Promise<void> {
  const a = await yargs(hideBin(process.argv))
    .option('layers', { type: 'string', default: '784,1000,1000' })
    .option('dataset', { type: 'string', default: 'fashion-mnist' })
    .option('backend', {
      choices: ['auto', 'wasm+blas', 'wasm'],
      default: 'auto',
      describe: 'the backend of every process (auto: wasm+blas where ffx-blas is built)',
    })
    .option('images', { type: 'number', default: 60000, describe: 'training images (one epoch)' })
    .option('batch', {
      type: 'string',
      default: '100,1000',
      describe: 'comma-separated batch sizes',
    })
    .option('transport', {
      choices: ['ipc', 'tcp'],
      default: 'ipc',
      describe: "the pipeline's data links (ffx-launch --transport)",
    })
    .option('keys', {
      type: 'boolean',
      default: false,
      describe: 'also run the pipeline with CurveZMQ keys (ffx-launch --keys) and print the cost',
    })
    .option('layout', {
      type: 'string',
      array: true,
      describe:
        'a layout of the pipeline: a --partition SPEC (1-2,3-4) or stages=K (ffx-launch --stages K); repeatable (default: one stage per layer)',
    })
    .option('shards', {
      type: 'number',
      default: 1,
      describe: 'train.shards of every run (a layout with replicas xR needs a multiple of R)',
    })
    .option('repeat', {
      type: 'number',
      default: 3,
      describe: 'runs of each mode per batch size (the median counts)',
    })
    .check((v) => (Number.isInteger(v.repeat) && v.repeat >= 1) || '--repeat must be 1 or more')
    .strict()
    .parse();
  const dir = await mkdtemp(join(tmpdir(), 'ffx-bench-pipeline-'));
  const rows: string[][] = [];
  const keyedRows: string[][] = [];
  try {
    for (const batch of a.batch.split(',')) {
      const common = [
        '--config',
        join(root, 'config', 'fashion-mnist-fast.json'),
        '--dataset',
        a.dataset,
        '--layers',
        a.layers,
        '--batch-size',
        batch,
        '--epochs',
        '1',
        '--set',
        `data.trainLimit=${a.images}`,
        '--set',
        'data.testLimit=1000',
        '--set',
        'train.evalEvery=0',
        '--set',
        'train.cooldown=0',
        '--set',
        `train.shards=${a.shards}`,
        '--backend',
        a.backend,
        '--quiet',
      ];
      const run = async (
        name: string,
        args: string[],
      ): Promise<{ record: EpochRecord; partition?: string }> => {
        const out = join(dir, `${name}-${batch}`);
        // Both runs under the allocator and heap settings ffx-launch gives its children.
        const r = spawnSync(
          process.execPath,
          [...PIPELINE_NODE_FLAGS, ...args, ...common, '--out', out],
          {
            encoding: 'utf8',
            env: { ...PIPELINE_MALLOC_ENV, ...process.env },
          },
        );
        if (r.status !== 0) throw new Error(`${name} run failed:\n${r.stderr.slice(-3000)}`);
        const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n');
        return {
          record: JSON.parse(lines[lines.length - 1]!) as EpochRecord,
          // A planned launch (--stages K) says which partition it chose.
          partition: /--partition (\S+)/.exec(r.stderr)?.[1],
        };
      };
      const layouts = a.layout ?? [partitionName(onePerLayer(a.layers.split(',').length - 1))];
      const launchArgs = (layout: string) => {
        const k = /^stages=(\d+)$/.exec(layout)?.[1];
        return k ? ['--stages', k] : ['--partition', layout];
      };
      const runs: {
        local: EpochRecord;
        piped: { record: EpochRecord; partition: string }[];
        keyed?: EpochRecord;
      }[] = [];
      const pipeline = ['--stage-threads', '1', '--transport', a.transport];
      for (let i = 0; i < a.repeat; i++) {
        const local = await run(`local-${i}`, [
          cli('ffx-coordinator'),
          'train',
          '--local',
          '--threads',
          '1',
        ]);
        const piped = [];
        for (const [j, layout] of layouts.entries()) {
          const r = await run(`pipeline-${i}-${j}`, [
            cli('ffx-launch'),
            ...pipeline,
            ...launchArgs(layout),
          ]);
          piped.push({ record: r.record, partition: r.partition ?? layout });
        }
        const keyed = a.keys
          ? await run(`keyed-${i}`, [cli('ffx-launch'), ...pipeline, '--keys', join(dir, 'keys')])
          : undefined;
        runs.push({ local: local.record, piped, keyed: keyed?.record });
      }
      const local = median(runs.map((r) => r.local));
      // The planner's inputs as the local run measured them: each layer's step per batch.
      const costs: LayerCost[] = (local.stages ?? []).map((s, l) => ({
        stepSeconds: s.stepSeconds / local.batches[l]!,
        outBytes: 0,
      }));
      for (const [j] of layouts.entries()) {
        const piped = median(runs.map((r) => r.piped[j]!.record));
        const partition = runs[0]!.piped[j]!.partition;
        const ratio = piped.samplesPerSec / local.samplesPerSec;
        const plan = predict(costs, parsePartition(partition, costs.length), Number(batch));
        const ideal = plan.idealSpeedup;
        const predicted = local.samplesPerSec * ideal;
        const idle = (piped.stages ?? []).map((s) => `${s.waitSeconds.toFixed(1)}s`);
        const blocked = (piped.stages ?? []).map((s) => `${s.blockedSeconds.toFixed(1)}s`);
        rows.push([
          batch,
          partition,
          local.samplesPerSec.toFixed(0),
          piped.samplesPerSec.toFixed(0),
          predicted.toFixed(0),
          `${((100 * (piped.samplesPerSec - predicted)) / predicted).toFixed(0)}%`,
          ratio.toFixed(2),
          ideal.toFixed(2),
          `${((100 * ratio) / ideal).toFixed(0)}%`,
          transportShares(piped),
          idle.join(' / '),
          blocked.join(' / '),
        ]);
      }
      if (a.keys) {
        const piped = median(runs.map((r) => r.piped[0]!.record));
        const keyed = median(runs.map((r) => r.keyed!));
        keyedRows.push([
          batch,
          piped.samplesPerSec.toFixed(0),
          keyed.samplesPerSec.toFixed(0),
          `${((100 * (piped.samplesPerSec - keyed.samplesPerSec)) / piped.samplesPerSec).toFixed(1)}%`,
        ]);
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const head = [
    'batch',
    'layout',
    'local samples/s',
    'pipeline samples/s',
    'predicted',
    'off by',
    'ratio',
    'ideal',
    'efficiency',
    'transport share per stage',
    'stage idle',
    'stage blocked on send',
  ];
  console.log(
    `${a.layers} on ${a.images} ${a.dataset} images, backend ${a.backend}, 1 thread per process, data over ` +
      `${a.transport}, median of ${a.repeat} runs`,
  );
  printTable(head, rows);
  if (a.keys) {
    console.log(
      '\nCurveZMQ on every link (ffx-launch --keys), alternated with the plain pipeline ' +
        "(encryption runs in ZeroMQ's I/O threads, outside the stages' transport time)",
    );
    printTable(['batch', 'plain samples/s', 'CurveZMQ samples/s', 'cost'], keyedRows);
  }
}

function printTable(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}

/** Each stage's transport time over its step's (compute and transport). */
function transportShares(r: EpochRecord): string {
  return (r.stages ?? [])
    .map(
      (s) => `${((100 * s.transportSeconds) / (s.stepSeconds + s.transportSeconds)).toFixed(1)}%`,
    )
    .join(' / ');
}

/** The run with the median samples/s. */
function median(records: EpochRecord[]): EpochRecord {
  const sorted = [...records].sort((x, y) => x.samplesPerSec - y.samplesPerSec);
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
