#!/usr/bin/env node
// ffx-coordinator: feeds data, drives epochs, aggregates goodness into predictions.
//   ffx-coordinator train --local --config config/fashion-mnist-fast.json
//   ffx-coordinator eval --local --config config/fashion-mnist-fast.json --weights runs/.../model.safetensors
import { hideBin, yargs } from './yargs.js';
import { initBackend, type BackendChoice } from '../backend/backend.js';
import type { RunConfig } from '../config/config.js';
import { FFNetwork } from '../core/ff-network.js';
import { classNames } from '../data/class-names.js';
import { loadCheckpoint } from '../coordinator/checkpoint.js';
import { evaluate, prepareData, trainLocal } from '../coordinator/local-trainer.js';
import { evalDistributed, trainDistributed } from '../coordinator/distributed-trainer.js';
import type { EvalResult } from '../core/predict.js';
import {
  ConsoleReporter,
  JsonReporter,
  formatEval,
  formatSeconds,
  type Reporter,
} from '../coordinator/reporter.js';
import { runMain } from './run-main.js';
import {
  CoordinatorMetrics,
  DEFAULT_METRICS_PORT,
  MetricsServer,
  createRegistry,
} from '../metrics/metrics.js';
import {
  clusterOptions,
  commonOptions,
  runConfig,
  trainOptions,
  type CommonArgs,
} from './run-options.js';
import { UsageError } from '../errors.js';

async function train(a: CommonArgs & Record<string, unknown>): Promise<void> {
  const resume = a.resume as string | undefined;
  const cfg = await runConfig(a, resume);
  const reporter = a.json ? new JsonReporter() : new ConsoleReporter({ quiet: a.quiet });
  let backend = 'none'; // distributed: the stages do the tensor math
  if (a.local) {
    backend = (
      await initBackend(a.backend as BackendChoice, {
        threads: a.threads,
        log: (l) => reporter.log(l),
      })
    ).name;
  }
  const exporter = await startMetrics(a, cfg, backend, reporter);
  try {
    const metrics = exporter?.metrics;
    const result = a.local
      ? await trainLocal(cfg, { reporter, metrics, resume })
      : await trainDistributed(cfg, { reporter, metrics, resume, ...clusterArgs(a) });
    if (reporter instanceof JsonReporter) {
      reporter.emit('result', {
        ...result.final,
        seconds: result.seconds,
        weightsFile: result.weightsFile,
      });
    } else {
      console.log(formatEval(result.final, classNames(cfg.data.dataset)));
      console.log(`trained in ${formatSeconds(result.seconds)}; weights: ${result.weightsFile}`);
    }
  } finally {
    await exporter?.server.close();
  }
}

/** The coordinator's /metrics endpoint, unless --no-metrics. */
async function startMetrics(
  a: Record<string, unknown>,
  cfg: RunConfig,
  backend: string,
  reporter: Reporter,
): Promise<{ metrics: CoordinatorMetrics; server: MetricsServer } | undefined> {
  if (!a.metrics) return undefined;
  const registry = createRegistry('coordinator', {}, { backend });
  const metrics = new CoordinatorMetrics(registry, { numLayers: cfg.model.layers.length - 1 });
  const server = await MetricsServer.start(registry, {
    host: a['metrics-host'] as string,
    port: (a['metrics-port'] as number | undefined) ?? DEFAULT_METRICS_PORT,
  });
  reporter.log(`coordinator: metrics on ${server.address}`);
  return { metrics, server };
}

async function evalCommand(a: CommonArgs & Record<string, unknown>): Promise<void> {
  const split = a.split as 'test' | 'train';
  const reporter = new ConsoleReporter({ quiet: a.quiet });
  let cfg: RunConfig;
  let result: EvalResult;
  if (!a.local) {
    // The layers the running stages hold; the config says what the model looks like.
    if (a.weights)
      throw new UsageError("--weights goes with --local; without it, eval uses the stages' layers");
    cfg = await runConfig(a);
    const exporter = await startMetrics(a, cfg, 'none', reporter);
    try {
      result = await evalDistributed(cfg, split, {
        reporter,
        metrics: exporter?.metrics,
        ...clusterArgs(a),
      });
      exporter?.metrics.onEval(result);
    } finally {
      await exporter?.server.close();
    }
  } else {
    if (!a.weights) throw new UsageError('eval --local needs --weights FILE');
    cfg = await runConfig(a, a.weights as string);
    await initBackend(a.backend as BackendChoice, {
      threads: a.threads,
      log: (l) => reporter.log(l),
    });
    const data = await prepareData(cfg, (l) => reporter.log(l));
    const net = new FFNetwork(cfg.model, cfg.optimizer, cfg.seed);
    try {
      await loadCheckpoint(net, a.weights as string, cfg.model);
      result = evaluate(net, data[split], data.dim, cfg);
    } finally {
      net.dispose();
    }
  }
  console.log(
    formatEval(result, classNames(cfg.data.dataset)).replace('test accuracy', `${split} accuracy`),
  );
  if (a.json) console.log(JSON.stringify({ split, ...result }));
}

function clusterArgs(a: Record<string, unknown>) {
  return {
    bind: a.bind as string,
    advertiseHost: a.advertise as string | undefined,
    registerTimeoutMs: (a['register-timeout'] as number) * 1000,
    heartbeatTimeoutMs: (a['heartbeat-timeout'] as number) * 1000,
    stopStages: a['stop-stages'] as boolean,
  };
}

export function buildCli(argv: string[]) {
  return (
    yargs(argv)
      .scriptName('ffx-coordinator')
      .env('FFX')
      .command(
        'train',
        'train a network: across ffx-stage workers, or every layer in this process with --local',
        (y) =>
          trainOptions(commonOptions(y))
            .example(
              '$0 train --local --config config/fashion-mnist-fast.json',
              'train on Fashion-MNIST (~10 min on 2 cores)',
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
            .option('json', {
              type: 'boolean',
              default: false,
              describe: 'also print the result as JSON',
            }),
        (a) => evalCommand(a as unknown as CommonArgs & Record<string, unknown>),
      )
      .demandCommand(1, 'name a command: train or eval')
      .strict()
      // Errors go to runMain (exit codes, messages), not yargs's usage dump.
      .fail((msg, err) => {
        throw err ?? new UsageError(msg);
      })
      .help()
      .epilog(
        'Flags can also come from the environment as FFX_<FLAG> (e.g. FFX_BACKEND=wasm, FFX_DATA_DIR=/data). ' +
          'Precedence: flags > environment > config file > defaults.',
      )
  );
}

runMain(() => buildCli(hideBin(process.argv)).parseAsync());
