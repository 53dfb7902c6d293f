#!/usr/bin/env node
// ffx-launch: a whole distributed run on one machine: L ffx-stage processes and an
// ffx-coordinator, on free loopback ports, their output prefixed per process. A child killed by
// a signal (kill -9, the OOM killer) is started again, up to --max-restarts times: a stage
// rejoins and the coordinator rolls the run back to its last checkpoint; a coordinator comes
// back with --resume latest and takes the stages over. Any other failure, or Ctrl-C, tears
// everything down; the exit status says whether the run succeeded. The children watch the
// launcher and leave if it dies, even by SIGKILL.
//   ffx-launch --config config/demo.json [any ffx-coordinator train flag]
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { availableParallelism, constants, tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { flagsFromEnv, hideBin, yargs } from './yargs.js';
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
import { PIPELINE_MALLOC_ENV } from './malloc-env.js';
import { PARENT_ENV } from './parent-watch.js';
import { Terminal, relay } from './relay.js';
import { PROGRESS_BAR_ENV } from '../coordinator/reporter.js';
import { LATEST } from '../checkpoint/checkpoint-file.js';
import { writeClusterKeys } from '../transport/curve.js';

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
/** The launcher's stderr, shared by its children's lines and the coordinator's progress bar. */
const terminal = new Terminal(process.stderr);
/** Its stdout: the children's results (no bar there). */
const results = new Terminal(process.stdout);

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface Child {
  name: string;
  script: string;
  /** The command line; `restart` is true when the child is started again. */
  args: (restart: boolean) => string[];
  proc: ChildProcess;
  exited: Promise<Exit>;
  restarts: number;
}

/** A process's exit status as a shell reports it: 128 + the signal's number for a signal. */
function statusOf(e: Exit): number {
  return e.code ?? 128 + (e.signal ? (constants.signals[e.signal] ?? 0) : 0);
}

/** "exited with status 1", or "was killed by SIGKILL (status 137)". */
function describeExit(e: Exit): string {
  return e.signal
    ? `was killed by ${e.signal} (status ${statusOf(e)})`
    : `exited with status ${e.code}`;
}

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
  const options = trainOptions(commonOptions(flagsFromEnv(yargs(argv))));
  for (const flag of Object.keys(NOT_HERE)) options.hide(flag);
  const a = (await options
    .scriptName('ffx-launch')
    .usage('$0 --config FILE [ffx-coordinator train flags]')
    .usage('Run a distributed training on this machine: one ffx-stage per layer and a coordinator.')
    .option('stage-threads', {
      type: 'number',
      describe: 'wasm threads per stage (default: cores / layers, at least 1)',
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
  const cfg = await runConfig(a, await resumeFile(a));
  await claimOutput(a, cfg);
  const layers = cfg.model.layers.length - 1;
  const threads =
    (a['stage-threads'] as number | undefined) ??
    Math.max(1, Math.floor(availableParallelism() / layers));
  const port = await freePort();
  const control = `tcp://127.0.0.1:${port}`;
  // Loopback tcp costs the sending side's ZeroMQ I/O thread ~7% of a core per stage link (the
  // kernel runs the receiver's network stack on the sender's time); Unix sockets do not. On
  // Linux they live in the abstract namespace: no files, nothing left behind whatever happens.
  const abstract = process.platform === 'linux';
  const socketDir =
    a.transport === 'ipc' && !abstract ? await mkdtemp(join(tmpdir(), 'ffx-launch-')) : null;
  const socketTag = `ffx-launch-${process.pid}-${randomBytes(4).toString('hex')}`;
  const dataEndpoint = (layer: number) => {
    if (a.transport !== 'ipc') return 'tcp://127.0.0.1:*';
    return socketDir
      ? `ipc://${join(socketDir, `stage-${layer}`)}`
      : `ipc://@${socketTag}-stage-${layer}`;
  };
  const keysDir = a.keys as string | undefined;
  const keyArgs = (name: string) =>
    keysDir ? ['--key', join(keysDir, `${name}.key`), '--trust', join(keysDir, 'trusted.pub')] : [];
  if (keysDir && !existsSync(join(keysDir, 'trusted.pub'))) await writeClusterKeys(keysDir, layers);
  terminal.line(
    `ffx-launch: ${layers} stages (${threads} thread${threads === 1 ? '' : 's'} each) + coordinator on ${control}; ` +
      `data over ${a.transport}${keysDir ? ' with CurveZMQ' : ''}; dataset ${cfg.data.dataset}`,
  );

  // The coordinator gets the user's flags minus the launcher's own.
  const own = new Set([
    '--stage-threads',
    '--transport',
    '--grace',
    '--max-restarts',
    '--keys',
    '--backend',
    '--out', // given to the coordinator as claimed (below)
    '-o',
  ]);
  const forwarded: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!.split('=')[0]!;
    if (own.has(flag)) {
      if (!argv[i]!.includes('=')) i++; // skip its value
      continue;
    }
    forwarded.push(argv[i]!);
  }
  const children: Child[] = [];
  // On a terminal, the coordinator draws its progress bar, and it stays on the last row.
  const bar = Boolean(process.stderr.isTTY) && !process.env.CI;
  const spawnChild = (c: Omit<Child, 'proc' | 'exited'>): Child => {
    const proc = spawn(process.execPath, [here(c.script), ...c.args(c.restarts > 0)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // The child leaves by itself if this launcher dies, even by SIGKILL (parent-watch.ts).
      env: {
        ...PIPELINE_MALLOC_ENV,
        ...process.env,
        [PARENT_ENV]: String(process.pid),
        ...(bar && c.name === 'coordinator' ? { [PROGRESS_BAR_ENV]: '1' } : {}),
      },
    });
    // "[stage 2] ..." says who: the child's own "layer 2: " (or "coordinator: ") would repeat it.
    const own = c.name === 'coordinator' ? 'coordinator: ' : `layer ${c.name.split(' ')[1]}: `;
    relay(proc.stderr!, terminal, `[${c.name}]`, own);
    relay(proc.stdout!, results, `[${c.name}]`, own);
    const exited = new Promise<Exit>((resolve) =>
      proc.on('exit', (code, signal) => resolve({ code, signal })),
    );
    return { ...c, proc, exited };
  };
  // Every process on a free loopback port of its own: no clash with anything else running.
  const metricsPorts: number[] = [];
  const metricsArgs = async (): Promise<string[]> => {
    if (!a.metrics) return ['--no-metrics'];
    const port = await freePort();
    metricsPorts.push(port);
    return ['--metrics-host', '127.0.0.1', '--metrics-port', String(port)];
  };
  const coordinatorMetrics = await metricsArgs();
  children.push(
    spawnChild({
      name: 'coordinator',
      script: './ffx-coordinator.js',
      restarts: 0,
      // Started again, it resumes from the run's latest checkpoint when there is one.
      args: (restart) => [
        'train',
        ...(restart && existsSync(join(cfg.output.dir, LATEST))
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
    }),
  );
  for (let layer = 1; layer <= layers; layer++) {
    const stageArgs = [
      '--layer',
      String(layer),
      '--coordinator',
      control,
      '--listen',
      dataEndpoint(layer),
      '--backend',
      String(a.backend),
      '--threads',
      String(threads),
      ...keyArgs(`stage-${layer}`),
      ...(a.verbose ? ['--verbose'] : []),
      ...(await metricsArgs()),
    ];
    children.push(
      spawnChild({
        name: `stage ${layer}`,
        script: './ffx-stage.js',
        restarts: 0,
        args: () => stageArgs,
      }),
    );
  }
  const pids = () => children.map((c) => `${c.name} (pid ${c.proc.pid})`).join(', ');
  terminal.line(`ffx-launch: started ${pids()}`);
  if (metricsPorts.length > 0) {
    terminal.line(
      `ffx-launch: metrics at ${metricsPorts.map((p) => `http://127.0.0.1:${p}/metrics`).join(' ')} ` +
        '(coordinator, then stage 1..L)',
    );
  }

  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    terminal.line('ffx-launch: interrupted, stopping every process');
    void stopAll(children, 0);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  // The run is over when the coordinator exits 0. A stage may exit 0 first: it saw the stop
  // marker while the coordinator was still writing. A child killed by a signal is started
  // again (bounded); any other failure ends the run.
  const maxRestarts = a['max-restarts'] as number;
  let failed: string | null = null;
  const watching = new Set(children);
  for (;;) {
    const { c, exit } = await Promise.race(
      [...watching].map((c) => c.exited.then((exit) => ({ c, exit }))),
    );
    if (interrupted) break;
    watching.delete(c);
    const isCoordinator = c === children[0];
    if (statusOf(exit) === 0) {
      if (isCoordinator) break;
      continue;
    }
    if (exit.signal && c.restarts < maxRestarts) {
      const again = spawnChild({ ...c, restarts: c.restarts + 1 });
      children[children.indexOf(c)] = again;
      watching.add(again);
      terminal.line(
        `ffx-launch: ${c.name} ${describeExit(exit)}; started again as pid ${again.proc.pid} ` +
          `(restart ${again.restarts} of ${maxRestarts})`,
      );
      continue;
    }
    failed = `${c.name} ${describeExit(exit)}`;
    break;
  }
  if (!failed && !interrupted) {
    // Stages got the stop marker and leave on their own.
    const grace = (a.grace as number) * 1000;
    const exits = await Promise.race([
      Promise.all(children.map((c) => c.exited)),
      new Promise<null>((r) => setTimeout(() => r(null), grace).unref()),
    ]);
    if (exits === null) {
      // A stage started again after the coordinator sent its stop marker has no run to join
      // and waits for the next coordinator: stopped below, it is no failure. Any other stage
      // still here missed the end of the run.
      const stuck = children.filter((c) => c !== children[0] && c.proc.exitCode === null);
      const late = stuck.filter((c) => c.restarts > 0);
      for (const c of late) {
        terminal.line(`ffx-launch: ${c.name} was started again after the run ended; stopping it`);
      }
      if (late.length < stuck.length) {
        failed = `stages did not exit within ${grace / 1000}s after the run`;
      }
    } else {
      const i = exits.findIndex((e) => statusOf(e) !== 0);
      if (i >= 0) failed = `${children[i]!.name} ${describeExit(exits[i]!)}`;
    }
  }
  await stopAll(children, 3000);
  if (socketDir) await rm(socketDir, { recursive: true, force: true });
  if (interrupted) process.exitCode = 130;
  else if (failed) throw new LaunchError(failed);
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

/** SIGTERM to every live child, SIGKILL to those still alive after `graceMs`. */
async function stopAll(children: Child[], graceMs: number): Promise<void> {
  const live = children.filter((c) => c.proc.exitCode === null && c.proc.signalCode === null);
  for (const c of live) c.proc.kill('SIGTERM');
  await Promise.race([
    Promise.all(live.map((c) => c.exited)),
    new Promise((r) => setTimeout(r, graceMs).unref()),
  ]);
  for (const c of live)
    if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
}

runMain(main);
