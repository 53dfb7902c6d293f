// Options shared by ffx-coordinator and the ffx-launch launcher (which parses the same command
// line to learn the run's shape and passes it on to the coordinator).
import { rmdir } from 'node:fs/promises';
import type { Argv } from 'yargs';
import { BACKEND_CHOICES } from '../backend/backend.js';
import { loadConfig, parseSetOverrides, type RunConfig } from '../config/config.js';
import { dirname } from 'node:path';
import { securityOptions } from './security-options.js';
import { isFfxError } from '../errors.js';
import { log } from '../log.js';
import {
  LATEST,
  checkpointConfig,
  claimRunDir,
  resolveCheckpoint,
} from '../checkpoint/checkpoint-file.js';
import { DATASET_NAMES } from '../data/datasets.js';

export interface CommonArgs {
  config?: string;
  backend: string;
  threads?: number;
  set: string[];
  dataset?: string;
  'data-dir'?: string;
  layers?: string;
  seed?: number;
  quiet: boolean;
  verbose: boolean;
  local: boolean;
}

export function commonOptions<T>(y: Argv<T>) {
  return metricsOptions(y, 'default 9464')
    .option('config', { alias: 'c', type: 'string', describe: 'run config (JSON); see config/' })
    .option('local', {
      type: 'boolean',
      default: false,
      describe: 'run every layer in this process (no stages)',
    })
    .option('backend', {
      choices: BACKEND_CHOICES,
      default: 'auto' as const,
      describe: 'TensorFlow.js backend',
    })
    .option('threads', {
      type: 'number',
      describe: "compute threads: wasm's, or with wasm+blas the BLAS's (default: every core)",
    })
    .option('dataset', { choices: DATASET_NAMES, describe: 'dataset (overrides data.dataset)' })
    .option('data-dir', {
      type: 'string',
      describe: 'directory searched first for the data set files (IDX, or CIFAR-10 .bin)',
    })
    .option('layers', {
      type: 'string',
      describe:
        'widths from input to last layer, e.g. 784,1000,1000 (dense layers; conv layers go in the config or --set model.layers=JSON)',
    })
    .option('seed', { type: 'number', describe: 'run seed (overrides seed)' })
    .option('set', {
      type: 'string',
      array: true,
      default: [] as string[],
      describe: 'override any config key: --set train.epochs=3',
    })
    .option('quiet', {
      alias: 'q',
      type: 'boolean',
      default: false,
      describe: 'print only results, warnings and errors',
    })
    .option('verbose', verboseOption);
}

function overridesFrom(a: CommonArgs & Record<string, unknown>): Record<string, unknown> {
  const o: Record<string, unknown> = parseSetOverrides(a.set);
  const section = (k: string) =>
    (o[k] = (o[k] as Record<string, unknown> | undefined) ?? {}) as Record<string, unknown>;
  if (a.dataset) section('data').dataset = a.dataset;
  if (a['data-dir']) section('data').dataDir = a['data-dir'];
  if (a.layers) section('model').layers = a.layers.split(',').map((w) => Number(w.trim()));
  if (a.seed !== undefined) o.seed = a.seed;
  if (a.epochs !== undefined) section('train').epochs = a.epochs;
  if (a['batch-size'] !== undefined) section('train').batchSize = a['batch-size'];
  if (a.lr !== undefined) section('optimizer').lr = a.lr;
  if (a['eval-every'] !== undefined) section('train').evalEvery = a['eval-every'];
  if (a.out !== undefined) section('output').dir = a.out;
  return o;
}

/**
 * The run's config: `--config` and the flags over the defaults, or, given a checkpoint (resume,
 * eval --weights), over the config saved in it: the same model, data scaling and schedule. A
 * checkpoint does not say where outputs go: by default, beside it.
 */
export async function runConfig(
  a: CommonArgs & Record<string, unknown>,
  checkpoint?: string,
): Promise<RunConfig> {
  const saved = checkpoint ? await checkpointConfig(checkpoint) : undefined;
  if (saved) saved.output.dir = dirname(checkpoint!);
  return configOver(a, saved);
}

/** The run's config: --config and the flags over `base` (a checkpoint's, a stage's run's). */
export function configOver(
  a: CommonArgs & Record<string, unknown>,
  base?: RunConfig,
): Promise<RunConfig> {
  return loadConfig(a.config, overridesFrom(a), base);
}

/**
 * The checkpoint `--resume` names, if any: a file, or `latest`, the newest complete checkpoint
 * in the run's output directory (--out, or output.dir of --config). With none there yet,
 * `latest` starts the run from the beginning: the same command line serves a first start and a
 * restart by a supervisor (systemd, Kubernetes, ffx-launch).
 */
export async function resumeFile(
  a: CommonArgs & Record<string, unknown>,
): Promise<string | undefined> {
  const arg = a.resume as string | undefined;
  if (arg !== LATEST) return arg;
  const cfg = await loadConfig(a.config, overridesFrom(a));
  try {
    return await resolveCheckpoint(arg, cfg.output.dir);
  } catch (err) {
    if (!isFfxError(err, 'CHECKPOINT_NOT_FOUND')) throw err;
    log.info(
      `--resume latest: no checkpoint in ${cfg.output.dir} yet; starting from the beginning`,
    );
    return undefined;
  }
}

/** How the coordinator meets its stages (distributed train and eval). */
export function clusterOptions<T>(y: Argv<T>) {
  return securityOptions(y)
    .option('bind', {
      type: 'string',
      default: 'tcp://127.0.0.1:5555',
      describe:
        'control endpoint stages connect to (distributed runs; tcp://0.0.0.0:PORT for other hosts needs --key or --insecure)',
    })
    .option('register-timeout', {
      type: 'number',
      default: 120,
      describe: 'seconds to wait for every stage to register',
    })
    .option('heartbeat-timeout', {
      type: 'number',
      default: 10,
      describe:
        'seconds of silence after which a stage counts as lost (plus twice the longest silence it showed while healthy)',
    })
    .option('progress-timeout', {
      type: 'number',
      default: 300,
      describe:
        'seconds a stage may heartbeat without a result while it has work, before it counts as stuck',
    })
    .option('recovery-timeout', {
      type: 'number',
      default: 300,
      describe:
        'after a lost or stuck stage: seconds to wait for every layer to have a stage again before giving up',
    })
    .option('max-recoveries', {
      type: 'number',
      default: 5,
      describe: 'rollbacks to the last checkpoint a run may make before it fails (0: none)',
    })
    .option('stop-stages', {
      type: 'boolean',
      default: false,
      describe: 'make the stages exit at the end (default: they wait for the next coordinator)',
    });
}

/** Options of `train` (the launcher's too). */
export function trainOptions<T>(y: Argv<T>) {
  return clusterOptions(y)
    .option('json', {
      type: 'boolean',
      default: false,
      describe:
        'JSON lines on stdout (events: log, epoch-start, progress, epoch, result) instead of text',
    })
    .option('epochs', { type: 'number', describe: 'overrides train.epochs' })
    .option('batch-size', { type: 'number', describe: 'overrides train.batchSize' })
    .option('lr', { type: 'number', describe: 'overrides optimizer.lr' })
    .option('eval-every', {
      type: 'number',
      describe: 'evaluate every N epochs (0: at the end)',
    })
    .option('out', {
      alias: 'o',
      type: 'string',
      describe: 'output directory (overrides output.dir)',
    })
    .option('resume', {
      type: 'string',
      describe:
        'continue from a checkpoint .safetensors, or "latest": the newest complete checkpoint in the output directory (none yet: from the beginning)',
    })
    .option('overwrite', {
      type: 'boolean',
      default: false,
      describe:
        'write over a run already in the output directory (default: the run goes to DIR-2, DIR-3, ...)',
    });
}

/**
 * The output directory of a new run: the configured one, or the next free DIR-N when that one
 * holds a run already and neither --overwrite nor --resume says to use it (said on the log).
 * Returns what gives a DIR-N made here back when the run fails before writing to it (a port in
 * use, say): no empty directory is left behind.
 */
export async function claimOutput(
  a: CommonArgs & Record<string, unknown>,
  cfg: RunConfig,
): Promise<() => Promise<void>> {
  const dir = cfg.output.dir;
  if (a.resume !== undefined) return async () => {};
  const claimed = await claimRunDir(dir, a.overwrite as boolean);
  cfg.output.dir = claimed;
  if (claimed === dir) return async () => {};
  log.info(
    `${dir} holds a run already: this one writes to ${claimed} ` +
      '(--overwrite replaces it, --resume latest continues it)',
  );
  // rmdir removes only an empty directory.
  return () => rmdir(claimed).catch(() => {});
}

/** --verbose: debug lines (e.g. a stage's state changes), and stack traces with errors. */
export const verboseOption = {
  type: 'boolean',
  default: false,
  describe: 'print debug lines, and a stack trace with an error',
} as const;

/** The /metrics endpoint of a process (`port` says what the default port is). */
export function metricsOptions<T>(y: Argv<T>, port: string) {
  return y
    .option('metrics', {
      type: 'boolean',
      default: true,
      describe: 'serve Prometheus metrics (--no-metrics to turn off)',
    })
    .option('metrics-host', {
      type: 'string',
      default: '127.0.0.1',
      describe: 'interface of the /metrics endpoint (0.0.0.0 for a Prometheus on another host)',
    })
    .option('metrics-port', {
      type: 'number',
      describe: `port of the /metrics endpoint (${port}; 0 = any free port)`,
    });
}

/** Why /metrics is not on its default port: that one was taken (no --metrics-port given). */
export function portNote(
  asked: number | undefined,
  defaultPort: number,
  server: { port: number },
): string {
  return asked === undefined && server.port !== defaultPort
    ? ` (port ${defaultPort} is taken: another ffx process on this host? --metrics-port chooses)`
    : '';
}
