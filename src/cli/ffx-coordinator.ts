#!/usr/bin/env node
// ffx-coordinator: feeds data, drives epochs, aggregates goodness into predictions.
//   ffx-coordinator train --local --config config/fashion-mnist-fast.json
//   ffx-coordinator eval --local --config config/fashion-mnist-fast.json --weights runs/.../model.safetensors
import { describeLayers } from '../core/model-shape.js';
import { ffxYargs, hideBin } from './yargs.js';
import { initBackend, type BackendChoice } from '../backend/backend.js';
import { describePlan, planPartition, profileLayers, type Plan } from '../coordinator/planner.js';
import { partitionName } from '../config/partition.js';
import { LATEST, readCheckpoint } from '../checkpoint/checkpoint-file.js';
import { checkEvalRule, type RunConfig } from '../config/config.js';
import { classNames } from '../data/class-names.js';
import { ruleLayers } from '../core/predict.js';
import { evaluateSplit, train as trainRun } from '../coordinator/driver.js';
import type { Executor } from '../coordinator/executor.js';
import { LocalExecutor } from '../coordinator/local-executor.js';
import {
  PipelineExecutor,
  heldConfig,
  type PipelineOptions,
} from '../coordinator/pipeline-executor.js';
import {
  ConsoleReporter,
  JsonReporter,
  formatEval,
  formatSeconds,
  type Reporter,
} from '../coordinator/reporter.js';
import { writeReport } from '../report/report.js';
import { writeComparison } from '../report/compare.js';
import { runMain } from './run-main.js';
import {
  CoordinatorMetrics,
  DEFAULT_METRICS_PORT,
  MetricsServer,
  createRegistry,
} from '../metrics/index.js';
import {
  claimOutput,
  configOver,
  clusterOptions,
  commonOptions,
  portNote,
  resumeFile,
  runConfig,
  trainOptions,
  type CommonArgs,
} from './run-options.js';
import { FfxError, InterruptedError, UsageError } from '../errors.js';
import { configureLog, plural } from '../log.js';
import { parseEndpoint } from './endpoint.js';
import { checkExposure, loadCoordinatorSecurity, type SecurityArgs } from './security-options.js';
import { watchParent } from './parent-watch.js';

/** JSON lines with --json, else text (a progress bar on a terminal). */
function reporterFor(a: CommonArgs & Record<string, unknown>): JsonReporter | ConsoleReporter {
  return a.json ? new JsonReporter({ quiet: a.quiet }) : new ConsoleReporter({ quiet: a.quiet });
}

async function train(a: CommonArgs & Record<string, unknown>): Promise<void> {
  checkBind(a);
  const resume = await resumeFile(a);
  const cfg = await runConfig(a, resume);
  const reporter = reporterFor(a);
  configureLog({ sink: (l) => reporter.log(l), verbose: a.verbose });
  const release = await claimOutput(a, cfg);
  try {
    await trainIn(a, cfg, resume, reporter);
  } catch (err) {
    await release();
    throw err;
  }
}

/** train, once the run has its output directory. */
async function trainIn(
  a: CommonArgs & Record<string, unknown>,
  cfg: RunConfig,
  resume: Awaited<ReturnType<typeof resumeFile>>,
  reporter: Reporter,
): Promise<void> {
  const exporter = await startProcess(a, cfg, reporter);
  const metrics = exporter?.metrics;
  try {
    const executor: Executor = a.local
      ? new LocalExecutor(cfg)
      : new PipelineExecutor(cfg, await pipelineOptions(a, 'train', reporter, metrics));
    metrics?.onRun(executor.run, cfg.name);
    const result = await trainRun(cfg, executor, {
      reporter,
      metrics,
      resume,
      maxRecoveries: a['max-recoveries'] as number,
      // A coordinator taking the run over (--resume) continues its lineage: the run's
      // directory's with `latest`, the checkpoint's otherwise.
      continues:
        a.resume === undefined ? undefined : a.resume === LATEST ? 'directory' : 'checkpoint',
    });
    const reportFile = await runReport(cfg.output.dir, reporter);
    if (reporter instanceof JsonReporter) {
      reporter.emit('result', {
        ...result.final,
        seconds: result.seconds,
        weightsFile: result.weightsFile,
        reportFile,
        recoveries: result.recoveries,
        replayed: result.replayed,
      });
    } else {
      console.log(formatEval(result.final, classNames(cfg.data.dataset)));
      console.log(
        `trained in ${formatSeconds(result.seconds)} (wall time, evaluations and checkpoints ` +
          `included); weights: ${result.weightsFile}`,
      );
      if (reportFile) console.log(`report: ${reportFile}`);
    }
  } finally {
    await exporter?.server.close();
  }
}

/**
 * The tensor backend (a local run's: the stages do a distributed run's tensor math) and the
 * coordinator's /metrics endpoint, unless --no-metrics.
 */
async function startProcess(
  a: CommonArgs & Record<string, unknown>,
  cfg: RunConfig,
  reporter: Reporter,
): Promise<{ metrics: CoordinatorMetrics; server: MetricsServer } | undefined> {
  let backend = 'none';
  if (a.local) {
    const log = (l: string) => reporter.log(l);
    backend = (await initBackend(a.backend as BackendChoice, { threads: a.threads, log })).name;
  }
  if (!a.metrics) return undefined;
  const registry = createRegistry('coordinator', {}, { backend });
  const numLayers = cfg.model.layers.length - 1;
  const rule = ruleLayers(numLayers, cfg.eval);
  const metrics = new CoordinatorMetrics(registry, { numLayers, rule });
  const asked = a['metrics-port'] as number | undefined;
  const server = await MetricsServer.start(registry, {
    host: a['metrics-host'] as string,
    port: asked ?? DEFAULT_METRICS_PORT,
    anyIfTaken: asked === undefined,
  });
  reporter.log(
    `coordinator: metrics on ${server.address}${portNote(asked, DEFAULT_METRICS_PORT, server)}`,
  );
  return { metrics, server };
}

async function evalCommand(a: CommonArgs & Record<string, unknown>): Promise<void> {
  checkBind(a);
  const split = a.split as 'test' | 'train';
  const reporter = reporterFor(a);
  configureLog({ sink: (l) => reporter.log(l), verbose: a.verbose });
  const weights = a.weights as string | undefined;
  if (a.local && !weights) throw new UsageError('eval --local needs --weights FILE');
  // Without --local: the layers the running stages hold; the config says what the model is.
  if (!a.local && weights)
    throw new UsageError("--weights goes with --local; without it, eval uses the stages' layers");
  let cfg = await runConfig(a, weights);
  const pipeline = a.local ? undefined : await pipelineOptions(a, 'eval', reporter, undefined);
  if (pipeline && a.config === undefined) {
    // The stages know the run their layers come from: that run's config is the base, under
    // this command line's flags.
    cfg = await configOver(a, await heldConfig(pipeline));
    reporter.log(
      `coordinator: no --config: evaluating what the stages hold, ${describeLayers(cfg.model.layers)} ` +
        `(run config "${cfg.name}", data ${cfg.data.dataset})`,
    );
  }
  const rule = a.rule as 'both' | 'goodness' | 'readout';
  checkEvalRule(cfg, rule);
  const exporter = await startProcess(a, cfg, reporter);
  let result;
  try {
    const metrics = exporter?.metrics;
    const state = a.local
      ? (await readCheckpoint(weights!, cfg.model, cfg.train.epochs)).state
      : undefined;
    const executor: Executor = pipeline
      ? new PipelineExecutor(cfg, { ...pipeline, metrics })
      : new LocalExecutor(cfg);
    metrics?.onRun(executor.run, cfg.name);
    result = await evaluateSplit(cfg, executor, split, {
      reporter,
      state,
      ...(rule !== 'both' && { only: rule }),
    });
    metrics?.onEval(result);
  } finally {
    await exporter?.server.close();
  }
  if (reporter instanceof JsonReporter) {
    reporter.emit('result', { split, ...result });
  } else {
    console.log(
      formatEval(result, classNames(cfg.data.dataset)).replace(
        'test accuracy',
        `${split} accuracy`,
      ),
    );
  }
}

/** The run's report, written as it ends; a report that cannot be written does not fail the run. */
async function runReport(dir: string, reporter: Reporter): Promise<string | undefined> {
  try {
    return (await writeReport(dir)).file;
  } catch (err) {
    const code = err instanceof FfxError ? `[${err.code}] ` : '';
    reporter.warn(`warning: no report: ${code}${(err as Error).message}`);
    return undefined;
  }
}

async function reportCommand(dirs: string[], out: string | undefined): Promise<void> {
  const { file, notes } =
    dirs.length === 1
      ? await writeReport(dirs[0]!, out)
      : await writeComparison(dirs, out ?? COMPARISON);
  for (const note of notes) console.error(`note: ${note}`);
  console.log(`report: ${file}`);
}

/** Where a comparison of runs goes by default: this directory. */
const COMPARISON = 'ffx-compare.html';

/** A distributed command's --bind, checked before anything starts. */
function checkBind(a: Record<string, unknown>): void {
  if (a.local) return;
  const bind = parseEndpoint(a.bind as string, '--bind', 'bind');
  checkExposure(bind, '--bind', a as unknown as SecurityArgs);
}

/**
 * How the coordinator meets its stages. SIGINT or SIGTERM aborts the run: the stages are told
 * to drop it (and wait for the next coordinator) before this process exits.
 */
async function pipelineOptions(
  a: Record<string, unknown>,
  mode: 'train' | 'eval',
  reporter: Reporter,
  metrics: CoordinatorMetrics | undefined,
): Promise<PipelineOptions> {
  const interrupt = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    reporter.log(`coordinator: ${signal}, aborting the run`);
    interrupt.abort(new InterruptedError(signal));
  };
  // Once: a second Ctrl-C ends the process at once.
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  // Started by ffx-launch, which is gone: as if hung up on.
  watchParent(() => onSignal('SIGHUP'));
  return {
    mode,
    bind: a.bind as string,
    registerTimeoutMs: (a['register-timeout'] as number) * 1000,
    heartbeatTimeoutMs: (a['heartbeat-timeout'] as number) * 1000,
    progressTimeoutMs: (a['progress-timeout'] as number) * 1000,
    recoveryTimeoutMs: (a['recovery-timeout'] as number) * 1000,
    stopStages: a['stop-stages'] as boolean,
    log: (l) => reporter.log(l),
    metrics,
    signal: interrupt.signal,
    security: await loadCoordinatorSecurity(a as unknown as SecurityArgs),
  };
}

/** `plan`: each layer measured on this machine, then the best layout for 1..--nodes nodes. */
async function planCommand(a: CommonArgs & Record<string, unknown>): Promise<void> {
  const cfg = await runConfig(a, undefined);
  const nodes = a.nodes as number;
  const gbps = a['link-gbps'] as number | undefined;
  if (!Number.isInteger(nodes) || nodes < 1) {
    throw new UsageError(`--nodes must be a positive integer; got ${nodes}`);
  }
  if (gbps !== undefined && !(gbps > 0)) {
    throw new UsageError(`--link-gbps must be a positive number; got ${gbps}`);
  }
  const log = (l: string) => process.stderr.write(`${l}\n`);
  const backend = await initBackend(a.backend as BackendChoice, { threads: a.threads, log });
  const costs = profileLayers(cfg);
  const out = (l: string) => process.stdout.write(`${l}\n`);
  out(
    `model ${describeLayers(cfg.model.layers)}, batch ${cfg.train.batchSize}, measured on this machine ` +
      `(${backend.name}, ${plural(backend.threads, 'thread')} a stage): ` +
      costs.map((c, i) => `layer ${i + 1} ${(c.stepSeconds * 1000).toFixed(1)} ms`).join(', '),
  );
  const bandwidth = gbps === undefined ? Infinity : (gbps * 1e9) / 8;
  if (gbps !== undefined) {
    out(
      `links ${gbps} Gbit/s: ` +
        costs
          .slice(0, -1)
          .map((c, i) => `${i + 1}->${i + 2} ${((c.outBytes / bandwidth) * 1000).toFixed(2)} ms`)
          .join(', ') +
        ' a batch',
    );
  }
  // Replicas of a stage split its batches' shards: any R that divides train.shards.
  const shards = cfg.train.shards;
  const replicasAllowed = (r: number) => shards % r === 0;
  let best: Plan | null = null;
  for (let k = 1; k <= nodes; k++) {
    const plan = planPartition(costs, k, cfg.train.batchSize, bandwidth, replicasAllowed);
    const used = plan.partition.reduce((n, s) => n + s.replicas, 0);
    out(
      `${plural(k, 'node')}: --partition ${partitionName(plan.partition)}` +
        (used < k ? ` (${plural(used, 'node')} do as well)` : ''),
    );
    for (const line of describePlan(plan)) out(line);
    if (!best || plan.samplesPerSec > best.samplesPerSec) best = plan;
  }
  out(
    `best: ffx-launch --partition ${partitionName(best!.partition)} ` +
      '(on one machine, ffx-launch --stages K plans for its cores)',
  );
  if (shards === 1 && nodes > costs.length) {
    out(
      `more nodes than layers: replicas of a stage need train.shards a multiple of their count ` +
        `(e.g. --set train.shards=${nodes - costs.length + 1}), and no peer normalisation or readouts`,
    );
  }
}

export function buildCli(argv: string[]) {
  return (
    ffxYargs(argv)
      .scriptName('ffx-coordinator')
      .command(
        'train',
        'train a network: across ffx-stage workers, or every layer in this process with --local',
        (y) =>
          trainOptions(commonOptions(y))
            .example(
              '$0 train --local --config config/fashion-mnist-fast.json',
              'train on Fashion-MNIST (about 2 min on 2 cores with native BLAS, 4 on plain wasm)',
            )
            .example(
              '$0 train --local --config config/demo.json --epochs 1',
              'a quick run on the shipped sample',
            ),
        (a) => train(a as unknown as CommonArgs & Record<string, unknown>),
      )
      .command(
        'eval',
        'evaluate the layers running stages hold (or saved weights with --local): accuracy, ' +
          'per-layer-set accuracy, confusion matrix',
        (y) =>
          clusterOptions(commonOptions(y))
            .option('weights', {
              alias: 'w',
              type: 'string',
              describe:
                'with --local: model.safetensors or a checkpoint (its stored config is the base; --config and flags override it)',
            })
            .option('split', {
              choices: ['test', 'train'] as const,
              default: 'test' as const,
              describe: 'which split to evaluate',
            })
            .option('rule', {
              choices: ['both', 'goodness', 'readout'] as const,
              default: 'both' as const,
              describe:
                'how to predict: goodness (10 passes per image), readout (one pass; needs model.readout), or both side by side',
            })
            .option('json', {
              type: 'boolean',
              default: false,
              describe: 'JSON lines on stdout (events: log, result) instead of text',
            }),
        (a) => evalCommand(a as unknown as CommonArgs & Record<string, unknown>),
      )
      .command(
        'plan',
        "lay a run's layers out on N nodes like this one: measures each layer's step here, then prints " +
          'the best stages for 1..N nodes with their predicted samples/s, the links included',
        (y) =>
          trainOptions(commonOptions(y))
            .option('nodes', {
              type: 'number',
              default: 4,
              describe: 'the most stages (machines) to plan for',
            })
            .option('link-gbps', {
              type: 'number',
              describe: "the links' bandwidth in Gbit/s (default: links cost nothing)",
            })
            .example(
              '$0 plan -c config/fashion-mnist-fast.json --nodes 4 --link-gbps 10',
              'plans for 1 to 4 nodes joined by 10 Gbit/s links',
            ),
        (a) => planCommand(a as unknown as CommonArgs & Record<string, unknown>),
      )
      .command(
        'report <run-dir..>',
        "write a run's report: one HTML file with its loss, goodness, accuracy, throughput, " +
          'timing, confusion matrix and config, that opens from disk (a run writes it as it ends); ' +
          'given several runs, one page that compares them',
        (y) =>
          y
            .positional('run-dir', {
              type: 'string',
              array: true,
              demandOption: true,
              describe:
                'a run directory (output.dir): config.json, metrics.jsonl, eval.json; or several',
            })
            .option('out', {
              alias: 'o',
              type: 'string',
              describe: `where to write it (default: RUN_DIR/report.html; comparing runs, ./${COMPARISON})`,
            })
            .example('$0 report runs/demo', 'writes runs/demo/report.html')
            .example(
              '$0 report runs/a runs/b --out a-vs-b.html',
              'both runs on the same charts, with what their configs set differently',
            ),
        (a) => reportCommand(a['run-dir'] as string[], a.out),
      )
      .demandCommand(1, 'name a command: train, eval, plan or report')
      .recommendCommands()
      .strict()
      // Errors go to runMain (exit codes, messages), not yargs's usage dump.
      .fail((msg, err) => {
        const suggestion = /^Did you mean (\S+)\?$/.exec(msg)?.[1];
        throw (
          err ??
          new UsageError(
            suggestion ? `unknown command ${argv[0]}: did you mean ${suggestion}?` : msg,
          )
        );
      })
      .help()
      .epilog(
        'Flags can also come from the environment as FFX_<FLAG> (e.g. FFX_BACKEND=wasm, FFX_DATA_DIR=/data). ' +
          'Precedence: flags > environment > config file > defaults.',
      )
  );
}

runMain(() => buildCli(hideBin(process.argv)).parseAsync());
