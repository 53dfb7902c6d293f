#!/usr/bin/env node
// ffx-launch: a whole distributed run on one machine: ffx-stage processes (one per layer, or as
// --partition lays the layers out) and an ffx-coordinator, on free loopback ports, their output prefixed per process. A child killed by
// a signal (kill -9, the OOM killer) is started again, up to --max-restarts times: a stage
// rejoins and the coordinator rolls the run back to its last checkpoint; a coordinator comes
// back with --resume latest and takes the stages over. Any other failure, or Ctrl-C, tears
// everything down; the exit status says whether the run succeeded. The children watch the
// launcher and leave if it dies, even by SIGKILL.
//   ffx-launch --config config/demo.json [any ffx-coordinator train flag]
//   ffx-launch --config config/demo.json --layers 784,256,256,256,256 --partition 1-2,3-4
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { availableParallelism, tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { ffxYargs, hideBin } from './yargs.js';
import { freePort } from '../transport/sockets.js';
import { runMain } from './run-main.js';
import {
  claimOutput,
  commonOptions,
  resumeFile,
  runConfig,
  trainOptions,
  type CommonArgs,
} from './run-options.js';
import { FfxError, UsageError } from '../errors.js';
import { PIPELINE_MALLOC_ENV, PIPELINE_NODE_FLAGS } from './pipeline-process.js';
import { PARENT_ENV } from './parent-watch.js';
import { Terminal, relay } from './relay.js';
import { PROGRESS_BAR_ENV } from '../coordinator/reporter.js';
import type { RunConfig } from '../config/config.js';
import type { BackendChoice } from '../backend/backend.js';
import { plural } from '../log.js';
import { LATEST } from '../checkpoint/checkpoint-file.js';
import { stageKeyName, writeClusterKeys } from '../transport/curve.js';
import { parseLayerRange, rangeLabel, rangeName } from '../transport/layer-range.js';
import { onePerLayer, parsePartition, partitionName, type Partition } from '../config/partition.js';
import { Supervisor, type ChildSpec } from './supervisor.js';

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
/** The launcher's stderr, shared by its children's lines and the coordinator's progress bar. */
const terminal = new Terminal(process.stderr);
/** Its stdout: the children's results (no bar there). */
const results = new Terminal(process.stdout);

/**
 * Flags of `ffx-coordinator train` that make no sense here: hidden from --help, and refused
 * with the reason.
 */
const NOT_HERE: Record<string, string> = {
  local: 'ffx-launch runs stages; for a single process use ffx-coordinator train --local',
  bind: 'ffx-launch picks the control endpoint itself (on 127.0.0.1)',
  key: 'ffx-launch gives each process its key: use --keys DIR',
  trust: 'ffx-launch gives each process the trusted keys: use --keys DIR',
  insecure: 'ffx-launch listens on this host only',
  threads: "ffx-launch trains no layer itself: --stage-threads sets each stage's threads",
  'metrics-host': 'ffx-launch serves /metrics on 127.0.0.1, on free ports it prints',
  'metrics-port': 'ffx-launch serves /metrics on 127.0.0.1, on free ports it prints',
};

async function main(): Promise<void> {
  const argv = hideBin(process.argv);
  const a = await parseArgs(argv);
  const cfg = await runConfig(a, await resumeFile(a));
  const release = await claimOutput(a, cfg);
  const outcome = await launch(a, cfg, argv).catch(async (err: unknown) => {
    await release();
    throw err;
  });
  if (outcome !== 'ok') await release();
  if (outcome === 'interrupted') process.exitCode = 130;
  else if (outcome !== 'ok') throw new LaunchError(outcome);
}

/** The stages and the coordinator of the run, until they are done. */
async function launch(
  a: CommonArgs & Record<string, unknown>,
  cfg: RunConfig,
  argv: string[],
): Promise<Awaited<ReturnType<Supervisor['run']>>> {
  const plan = await planLaunch(a, cfg, argv);
  terminal.line(
    `ffx-launch: ${plural(plan.stages, 'stage')} (${partitionName(plan.partition)}; ` +
      `${plural(plan.threads, 'thread')} each) + coordinator on ` +
      `${plan.control}; data over ${a.transport}${a.keys ? ' with CurveZMQ' : ''}; ` +
      `dataset ${cfg.data.dataset}`,
  );
  const supervisor = new Supervisor({
    maxRestarts: a['max-restarts'] as number,
    graceMs: (a.grace as number) * 1000,
    nodeFlags: PIPELINE_NODE_FLAGS,
    log: (line) => terminal.line(`ffx-launch: ${line}`),
    started: ({ spec, proc }) => {
      // "[stage 2] ..." says who: the child's own "layer 2: " (or "coordinator: ") would
      // repeat it.
      const own =
        spec.name === 'coordinator'
          ? 'coordinator: '
          : `${rangeLabel(parseLayerRange(spec.name.split(' ')[1]!.split('/')[0]!))}: `;
      relay(proc.stderr!, terminal, `[${spec.name}]`, own);
      relay(proc.stdout!, results, `[${spec.name}]`, own);
    },
  });
  for (const spec of plan.specs) supervisor.start(spec);
  terminal.line(`ffx-launch: started ${supervisor.pids()}`);
  if (plan.metricsPorts.length > 0) {
    terminal.line(
      `ffx-launch: metrics at ${plan.metricsPorts.map((p) => `http://127.0.0.1:${p}/metrics`).join(' ')} ` +
        '(coordinator, then the stages from layer 1)',
    );
  }
  const onSignal = () => {
    terminal.line('ffx-launch: interrupted, stopping every process');
    supervisor.interrupt();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const outcome = await supervisor.run();
  if (plan.socketDir) await rm(plan.socketDir, { recursive: true, force: true });
  return outcome;
}

/** The command line: ffx-coordinator train's flags (less those that make no sense here), and the launcher's own. */
async function parseArgs(argv: string[]): Promise<CommonArgs & Record<string, unknown>> {
  const options = trainOptions(commonOptions(ffxYargs(argv)));
  for (const flag of Object.keys(NOT_HERE)) options.hide(flag);
  const a = (await options
    .scriptName('ffx-launch')
    .usage('$0 --config FILE [ffx-coordinator train flags]')
    .usage(
      'Run a distributed training on this machine: one ffx-stage per layer (or per group of --partition) and a coordinator.',
    )
    .option('partition', {
      type: 'string',
      describe:
        'lay the layers out on stages: groups of consecutive layers, one process each, or xR replicas of one (train.shards a multiple of R), e.g. 1-2,3x2 (default: one stage per layer)',
    })
    .option('stages', {
      type: 'number',
      describe:
        "up to K stage processes, planned: measures each layer's step here (a few steps at the run's batch), then runs the groups (and replicas, where train.shards allows) that make the slowest stage fastest, and prints them",
    })
    .conflicts('stages', 'partition')
    .option('stage-threads', {
      type: 'number',
      describe: 'compute threads per stage (default: cores / layers, at least 1)',
    })
    .option('transport', {
      choices: ['ipc', 'tcp'],
      default: process.platform === 'win32' ? 'tcp' : 'ipc',
      describe: 'data links between the processes: Unix sockets, or tcp on 127.0.0.1',
    })
    .option('grace', {
      type: 'number',
      default: 10,
      describe: 'seconds stages get to exit after the run',
    })
    .option('keys', {
      type: 'string',
      describe:
        'CurveZMQ on every link: the keys ffx-keys made in this directory (made here if it has none)',
    })
    .option('max-restarts', {
      type: 'number',
      default: 3,
      describe:
        'times each process is started again after it is killed by a signal (a stage rejoins; the coordinator resumes from the latest checkpoint)',
    })
    .strict()
    .fail((msg, err) => {
      throw err ?? new UsageError(msg);
    })
    .help()
    .parseAsync()) as unknown as CommonArgs & Record<string, unknown>;
  for (const [flag, why] of Object.entries(NOT_HERE)) {
    if (argv.some((x) => new RegExp(`^--(no-)?${flag}(=|$)`).test(x))) {
      throw new UsageError(`--${flag}: ${why}`);
    }
  }
  // The defaults match no shipped config: a run without one would train what nobody asked for.
  if (a.config === undefined && a.resume === undefined) {
    throw new UsageError(
      'ffx-launch needs --config FILE (e.g. config/demo.json) or --resume CHECKPOINT',
    );
  }
  return a;
}

/** The launcher's own flags: everything else on its command line goes to the coordinator. */
const OWN_FLAGS = new Set([
  '--partition',
  '--stages',
  '--stage-threads',
  '--transport',
  '--grace',
  '--max-restarts',
  '--keys',
  '--backend',
  '--out', // given to the coordinator as claimed
  '-o',
]);

interface LaunchPlan {
  partition: Partition;
  stages: number;
  threads: number;
  control: string;
  /** The coordinator first (its exit 0 ends the run), then the stages from layer 1. */
  specs: ChildSpec[];
  /** Metrics ports handed out: the coordinator's, then the stages'. */
  metricsPorts: number[];
  /** Where ipc sockets live, to remove at the end (null: tcp, or Linux's abstract namespace). */
  socketDir: string | null;
}

/** Every process of the run, on free loopback ports (and sockets) of its own. */
async function planLaunch(
  a: CommonArgs & Record<string, unknown>,
  cfg: RunConfig,
  argv: string[],
): Promise<LaunchPlan> {
  const layers = cfg.model.layers.length - 1;
  const spec = a.partition as string | undefined;
  const planned = a.stages as number | undefined;
  const partition =
    planned !== undefined
      ? await plannedPartition(a, cfg, planned)
      : spec === undefined
        ? onePerLayer(layers)
        : parsePartition(spec, layers);
  const replicated = partition.find((s) => cfg.train.shards % s.replicas !== 0);
  if (replicated) {
    throw new UsageError(
      `--partition ${spec}: ${rangeName(replicated.layers)}x${replicated.replicas} needs ` +
        `train.shards a multiple of ${replicated.replicas} (it is ${cfg.train.shards}): ` +
        `--set train.shards=${replicated.replicas}`,
    );
  }
  const stages = partition.reduce((n, s) => n + s.replicas, 0);
  const threads =
    (a['stage-threads'] as number | undefined) ??
    Math.max(1, Math.floor(availableParallelism() / stages));
  const control = `tcp://127.0.0.1:${await freePort()}`;
  // Loopback tcp costs the sending side's ZeroMQ I/O thread ~7% of a core per stage link (the
  // kernel runs the receiver's network stack on the sender's time); Unix sockets do not. On
  // Linux they live in the abstract namespace: no files, nothing left behind whatever happens.
  const abstract = process.platform === 'linux';
  const socketDir =
    a.transport === 'ipc' && !abstract ? await mkdtemp(join(tmpdir(), 'ffx-launch-')) : null;
  const socketTag = `ffx-launch-${process.pid}-${randomBytes(4).toString('hex')}`;
  const dataEndpoint = (name: string) => {
    if (a.transport !== 'ipc') return 'tcp://127.0.0.1:*';
    return socketDir ? `ipc://${join(socketDir, name)}` : `ipc://@${socketTag}-${name}`;
  };
  const keysDir = a.keys as string | undefined;
  const keyArgs = (name: string) =>
    keysDir ? ['--key', join(keysDir, `${name}.key`), '--trust', join(keysDir, 'trusted.pub')] : [];
  if (keysDir && !existsSync(join(keysDir, 'trusted.pub'))) {
    await writeClusterKeys(
      keysDir,
      partition.map((s) => s.layers),
    );
  }
  const forwarded: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!.split('=')[0]!;
    if (OWN_FLAGS.has(flag)) {
      if (!argv[i]!.includes('=')) i++; // skip its value
      continue;
    }
    forwarded.push(argv[i]!);
  }
  // On a terminal, the coordinator draws its progress bar, and it stays on the last row.
  const bar = Boolean(process.stderr.isTTY) && !process.env.CI;
  // Every child leaves by itself if this launcher dies, even by SIGKILL (parent-watch.ts).
  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
    ...PIPELINE_MALLOC_ENV,
    ...process.env,
    [PARENT_ENV]: String(process.pid),
    ...extra,
  });
  const metricsPorts: number[] = [];
  const metricsArgs = async (): Promise<string[]> => {
    if (!a.metrics) return ['--no-metrics'];
    const port = await freePort();
    metricsPorts.push(port);
    return ['--metrics-host', '127.0.0.1', '--metrics-port', String(port)];
  };
  const coordinatorMetrics = await metricsArgs();
  const specs: ChildSpec[] = [
    {
      name: 'coordinator',
      script: here('./ffx-coordinator.js'),
      env: env(bar ? { [PROGRESS_BAR_ENV]: '1' } : {}),
      // Started again, it continues the run in its directory, whatever that holds: from the
      // run's latest checkpoint when there is one, else from where the run started (the
      // user's --resume, or the beginning: `--resume latest` without a checkpoint starts over
      // in the same directory, where a new run would move to DIR-2).
      args: (restart) => [
        'train',
        ...(!restart
          ? forwarded
          : existsSync(join(cfg.output.dir, LATEST)) || a.resume === undefined
            ? [...withoutFlag(forwarded, '--resume'), '--resume', LATEST]
            : forwarded),
        '--out',
        cfg.output.dir,
        '--bind',
        control,
        '--stop-stages',
        ...keyArgs('coordinator'),
        ...coordinatorMetrics,
      ],
    },
  ];
  for (const { layers: range, replicas } of partition) {
    for (let replica = 1; replica <= replicas; replica++) {
      const tag = replicas > 1 ? `${stageKeyName(range)}-r${replica}` : stageKeyName(range);
      const stageArgs = [
        '--layer',
        rangeName(range),
        '--coordinator',
        control,
        '--listen',
        dataEndpoint(tag),
        ...(replicas > 1 ? ['--replica', `${replica}/${replicas}`] : []),
        '--backend',
        String(a.backend),
        '--threads',
        String(threads),
        ...keyArgs(stageKeyName(range)),
        ...(a.verbose ? ['--verbose'] : []),
        ...(await metricsArgs()),
      ];
      specs.push({
        name: `stage ${rangeName(range)}${replicas > 1 ? `/${replica}` : ''}`,
        script: here('./ffx-stage.js'),
        env: env(),
        args: () => stageArgs,
      });
    }
  }
  return { partition, stages, threads, control, specs, metricsPorts, socketDir };
}

/**
 * --stages K: each layer's step measured in this process, on the backend and threads each
 * stage will have, then the best split into K stages (coordinator/planner.ts), printed.
 */
async function plannedPartition(
  a: CommonArgs & Record<string, unknown>,
  cfg: RunConfig,
  stages: number,
): Promise<Partition> {
  if (!Number.isInteger(stages) || stages < 1) {
    throw new UsageError(`--stages must be a positive integer; got ${stages}`);
  }
  const threads =
    (a['stage-threads'] as number | undefined) ??
    Math.max(1, Math.floor(availableParallelism() / stages));
  // Only a planned launch computes here: the tensor libraries load for it alone.
  const { initBackend } = await import('../backend/backend.js');
  const { describePlan, planPartition, profileLayers } = await import('../coordinator/planner.js');
  const backend = await initBackend(a.backend as BackendChoice, { threads });
  const plan = planPartition(
    profileLayers(cfg),
    stages,
    cfg.train.batchSize,
    Infinity,
    (r) => cfg.train.shards % r === 0,
  );
  terminal.line(
    `ffx-launch: plan for up to ${plural(stages, 'stage')} from each layer's step measured here ` +
      `(${backend.name}, ${plural(threads, 'thread')}): --partition ${partitionName(plan.partition)}`,
  );
  for (const line of describePlan(plan)) terminal.line(`ffx-launch: ${line}`);
  const cores = availableParallelism();
  const processes = plan.partition.reduce((n, s) => n + s.replicas, 0);
  if (processes * threads + 1 > cores) {
    // The prediction has each stage on cores of its own, as on machines of their own.
    terminal.line(
      `ffx-launch: note: ${plural(processes, 'stage')} of ${plural(threads, 'thread')} ` +
        `and the coordinator share this machine's ${plural(cores, 'core')}: expect less than predicted`,
    );
  }
  return plan.partition;
}

/** `args` without `flag` and its value (`--flag v` or `--flag=v`). */
function withoutFlag(args: string[], flag: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) i++;
    else if (!args[i]!.startsWith(`${flag}=`)) out.push(args[i]!);
  }
  return out;
}

export class LaunchError extends FfxError<'LAUNCH_FAILED'> {
  constructor(message: string) {
    super('LAUNCH_FAILED', message);
  }
}

runMain(main);
