#!/usr/bin/env node
// ffx-stage: one FF layer of a distributed run, or a run of consecutive layers (a group), in
// its own process (one per GPU or node).
//   ffx-stage --layer 1 --coordinator tcp://10.0.0.1:5555
//   ffx-stage --layer 2-3 --coordinator tcp://10.0.0.1:5555
import { ffxYargs, hideBin } from './yargs.js';
import {
  BACKEND_CHOICES,
  MAX_WASM_THREADS,
  initBackend,
  type BackendChoice,
} from '../backend/backend.js';
import { defaultStageThreads } from './stage-threads.js';
import { Stage } from '../stage/stage.js';
import {
  DEFAULT_METRICS_PORT,
  MetricsServer,
  StageMetrics,
  createRegistry,
} from '../metrics/index.js';
import { runMain } from './run-main.js';
import { metricsOptions, portNote, verboseOption } from './run-options.js';
import { configureLog, log } from '../log.js';
import { UsageError } from '../errors.js';
import { parseEndpoint } from './endpoint.js';
import { checkExposure, loadStageSecurity, securityOptions } from './security-options.js';
import { watchParent } from './parent-watch.js';
import { parseLayerRange, rangeLabel, type LayerRange } from '../transport/layer-range.js';

/** --layer: N or FIRST-LAST. */
function parseLayers(value: string): LayerRange {
  try {
    return parseLayerRange(value);
  } catch (err) {
    throw new UsageError(`--layer: ${(err as Error).message}`);
  }
}

/**
 * --replica R/N, and where its exchange socket binds: beside --listen (any free port of its
 * host, or the ipc path with -exchange).
 */
function parseReplica(
  value: string | undefined,
  listen: string,
): { index: number; count: number; listen: string } | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{1,2})\/(\d{1,2})$/.exec(value);
  const [index, count] = [Number(m?.[1]), Number(m?.[2])];
  if (!m || index < 1 || index > count) {
    throw new UsageError(`--replica must be R/N with 1 <= R <= N (e.g. 2/2); got "${value}"`);
  }
  const exchange = listen.startsWith('tcp://')
    ? listen.replace(/:(\d+|\*)$/, ':*')
    : `${listen}-exchange`;
  return { index, count, listen: exchange };
}

/** --device: GPU, or a GPU's index. */
function parseDevice(value: string | undefined): number | 'gpu' | undefined {
  if (value === undefined) return undefined;
  if (/^gpu$/i.test(value)) return 'gpu';
  if (/^\d+$/.test(value)) return Number(value);
  throw new UsageError(`--device must be GPU or a GPU's index (0, 1, ...); got "${value}"`);
}

export function buildCli(argv: string[]) {
  return securityOptions(metricsOptions(ffxYargs(argv), `default ${DEFAULT_METRICS_PORT} + layer`))
    .scriptName('ffx-stage')
    .usage('$0 --layer N|FIRST-LAST --coordinator tcp://HOST:PORT [options]')
    .usage('Serve one FF layer of a distributed run, or a group of consecutive layers.')
    .config('config', 'a JSON file of these flags, e.g. {"coordinator": "tcp://10.0.0.1:5555"}')
    .alias('config', 'c') // as in every ffx command
    .option('layer', {
      alias: 'l',
      type: 'string',
      demandOption: true,
      describe:
        'which layer this stage trains (1-based), or a group of consecutive layers, e.g. 2-3 (activations pass between them in memory)',
    })
    .option('replica', {
      type: 'string',
      describe:
        "this stage's replica R/N (1/2, 2/2): N processes share its layers' batches (train.shards a multiple of N); 1 is the primary",
    })
    .option('coordinator', {
      type: 'string',
      demandOption: true,
      describe: "coordinator's control endpoint",
    })
    .option('listen', {
      type: 'string',
      default: 'tcp://127.0.0.1:*',
      describe:
        'where to bind the inbound data socket (* = any free port; beyond this host, e.g. tcp://0.0.0.0:6000, needs --key or --insecure)',
    })
    .option('advertise', {
      type: 'string',
      describe: 'endpoint the upstream stage should connect to (default: the bound one)',
    })
    .option('backend', {
      choices: BACKEND_CHOICES,
      default: 'auto' as const,
      describe: 'TensorFlow.js backend',
    })
    .option('device', {
      type: 'string',
      describe:
        'run on a GPU (tfjs-node-gpu, no fallback): GPU for any, or an index 0, 1, ... (sets CUDA_VISIBLE_DEVICES)',
    })
    .option('threads', {
      type: 'number',
      describe:
        "compute threads, wasm's or with wasm+blas the BLAS's (default: the cores over the ffx stages on this host, so several don't oversubscribe it)",
    })
    .option('heartbeat-ms', {
      type: 'number',
      default: 1000,
      describe: 'heartbeat interval to the coordinator',
    })
    .option('coordinator-timeout', {
      type: 'number',
      default: 30,
      describe:
        'seconds without a word from the coordinator, during a run, after which the stage drops the run and waits for a new coordinator',
    })
    .option('verbose', verboseOption)
    .example('$0 --layer 2 --coordinator tcp://10.0.0.1:5555', 'serve layer 2')
    .example(
      '$0 --layer 2-3 --coordinator tcp://10.0.0.1:5555',
      'serve layers 2 and 3 in one process',
    )
    .epilog(
      'Flags can also come from the environment as FFX_<FLAG> (FFX_LAYER=2 FFX_COORDINATOR=tcp://...) ' +
        'or from a --config JSON file. Precedence: flags > environment > file. ' +
        'After a run the stage keeps its layer and waits for the next coordinator; ' +
        'SIGTERM or SIGINT stops it in any state. Protocol: docs/protocol.md.',
    )
    .strict()
    .fail((msg, err) => {
      throw err ?? new UsageError(runConfigGiven(msg) ?? msg);
    })
    .help();
}

/** A run config given as a stage's --config (its keys are unknown flags here) says so. */
function runConfigGiven(msg: string): string | undefined {
  const unknown = /^Unknown arguments?: (.*)$/.exec(msg)?.[1]?.split(', ') ?? [];
  if (!unknown.some((k) => ['model', 'optimizer', 'train', 'data'].includes(k))) return undefined;
  return (
    `--config: that is a run config (it has ${unknown.join(', ')}): a stage takes its run config ` +
    "from the coordinator (give it to ffx-coordinator train or ffx-launch); a stage's --config " +
    'holds its own flags, e.g. {"coordinator": "tcp://10.0.0.1:5555"}'
  );
}

async function main(): Promise<void> {
  const a = await buildCli(hideBin(process.argv)).parseAsync();
  configureLog({ verbose: a.verbose });
  const layers = parseLayers(a.layer);
  const name = rangeLabel(layers);
  const device = parseDevice(a.device);
  const coordinator = parseEndpoint(a.coordinator, '--coordinator', 'connect');
  const listen = parseEndpoint(a.listen, '--listen', 'bind');
  checkExposure(listen, '--listen', a);
  const security = await loadStageSecurity(a);
  const replica = parseReplica(a.replica, listen);
  let threads = a.threads;
  if (threads === undefined) {
    const share = defaultStageThreads();
    threads = Math.min(share.threads, MAX_WASM_THREADS);
    if (share.stages > 1) {
      log.info(
        `${name}: ${share.stages} ffx stages on this host: ${threads} compute thread(s) each (--threads to choose)`,
      );
    }
  }
  const backend = await initBackend(a.backend as BackendChoice, {
    device,
    threads,
    log: (l) => log.info(l),
  });
  let metrics: StageMetrics | undefined;
  let server: MetricsServer | undefined;
  if (a.metrics) {
    // The process's series carry its first layer; each layer's steps its own (StageMetrics).
    const registry = createRegistry(
      'stage',
      { layer: String(layers.first) },
      { backend: backend.name },
    );
    metrics = new StageMetrics(registry, layers.first, { last: layers.last });
    const asked = a['metrics-port'];
    const port = DEFAULT_METRICS_PORT + layers.first;
    server = await MetricsServer.start(registry, {
      host: a['metrics-host'],
      port: asked ?? port,
      anyIfTaken: asked === undefined,
    });
    log.info(`${name}: metrics on ${server.address}${portNote(asked, port, server)}`);
  }
  const stage = new Stage({
    layers,
    replica,
    coordinator,
    listen,
    advertise: a.advertise,
    backend,
    heartbeatMs: a['heartbeat-ms'],
    coordinatorTimeoutMs: a['coordinator-timeout'] * 1000,
    security,
    metrics,
  });
  // SIGTERM/SIGINT end the stage from any state, including while it waits for a coordinator.
  const onSignal = (signal: NodeJS.Signals) => {
    log.info(`${name}: ${signal}, stopping`);
    void stage.close(signal);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  watchParent(() => void stage.close('its launcher is gone'));
  try {
    await stage.run();
    log.info(`${name}: stopped`);
  } finally {
    await stage.close();
    await server?.close();
  }
}

runMain(main);
