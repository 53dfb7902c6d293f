#!/usr/bin/env node
// ffx-launch: a whole distributed run on one machine: L ffx-stage processes and an
// ffx-coordinator, on free loopback ports, their output prefixed per process. Any child's
// failure, or Ctrl-C, tears everything down; the exit status says whether the run succeeded.
//   ffx-launch --config config/demo.json [any ffx-coordinator train flag]
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { availableParallelism, tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { hideBin, yargs } from './yargs.js';
import { freePort } from '../transport/sockets.js';
import { runMain } from './run-main.js';
import { commonOptions, runConfig, trainOptions, type CommonArgs } from './run-options.js';
import { FfxError, UsageError } from '../errors.js';
import { PIPELINE_MALLOC_ENV } from './malloc-env.js';

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));

interface Child {
  name: string;
  proc: ChildProcess;
  exited: Promise<number>;
}

async function main(): Promise<void> {
  const argv = hideBin(process.argv);
  const a = (await trainOptions(commonOptions(yargs(argv)))
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
    .env('FFX')
    .strict()
    .fail((msg, err) => {
      throw err ?? new UsageError(msg);
    })
    .help()
    .parseAsync()) as unknown as CommonArgs & Record<string, unknown>;
  if (a.local)
    throw new UsageError(
      'ffx-launch runs stages; for a single process use ffx-coordinator train --local',
    );
  if (a.bind && argv.some((x) => x.startsWith('--bind')))
    throw new UsageError('ffx-launch picks --bind itself');
  const cfg = await runConfig(a, a.resume as string | undefined);
  const layers = cfg.model.layers.length - 1;
  const threads =
    (a['stage-threads'] as number | undefined) ??
    Math.max(1, Math.floor(availableParallelism() / layers));
  const port = await freePort();
  const control = `tcp://127.0.0.1:${port}`;
  // Loopback tcp costs the sending side's ZeroMQ I/O thread ~7% of a core per stage link (the
  // kernel runs the receiver's network stack on the sender's time); Unix sockets do not.
  const socketDir = a.transport === 'ipc' ? await mkdtemp(join(tmpdir(), 'ffx-launch-')) : null;
  const dataEndpoint = (layer: number) =>
    socketDir ? `ipc://${join(socketDir, `stage-${layer}`)}` : 'tcp://127.0.0.1:*';
  process.stderr.write(
    `ffx-launch: ${layers} stages (${threads} thread${threads === 1 ? '' : 's'} each) + coordinator on ${control}; ` +
      `data over ${a.transport}; dataset ${cfg.data.dataset}\n`,
  );

  // The coordinator gets the user's flags minus the launcher's own.
  const own = new Set([
    '--stage-threads',
    '--transport',
    '--grace',
    '--threads',
    '--backend',
    '--metrics-port',
    '--metrics-host',
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
  const start = (name: string, script: string, args: string[]) => {
    const proc = spawn(process.execPath, [here(script), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...PIPELINE_MALLOC_ENV, ...process.env },
    });
    for (const stream of [proc.stdout, proc.stderr]) {
      createInterface({ input: stream! }).on('line', (line) => {
        (stream === proc.stdout ? process.stdout : process.stderr).write(`[${name}] ${line}\n`);
      });
    }
    const exited = new Promise<number>((resolve) =>
      proc.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))),
    );
    children.push({ name, proc, exited });
  };
  // The stages are this launcher's: they leave with the run.
  // Every process on a free loopback port of its own: no clash with anything else running.
  const metricsPorts: number[] = [];
  const metricsArgs = async (): Promise<string[]> => {
    if (!a.metrics) return ['--no-metrics'];
    const port = await freePort();
    metricsPorts.push(port);
    return ['--metrics-host', '127.0.0.1', '--metrics-port', String(port)];
  };
  start('coordinator', './ffx-coordinator.js', [
    'train',
    ...forwarded,
    '--bind',
    control,
    '--stop-stages',
    ...(await metricsArgs()),
  ]);
  for (let layer = 1; layer <= layers; layer++) {
    start(`stage ${layer}`, './ffx-stage.js', [
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
      ...(a.verbose ? ['--verbose'] : []),
      ...(await metricsArgs()),
    ]);
  }
  process.stderr.write(
    `ffx-launch: started ${children.map((c) => `${c.name} (pid ${c.proc.pid})`).join(', ')}\n`,
  );
  if (metricsPorts.length > 0) {
    process.stderr.write(
      `ffx-launch: metrics at ${metricsPorts.map((p) => `http://127.0.0.1:${p}/metrics`).join(' ')} ` +
        '(coordinator, then stage 1..L)\n',
    );
  }

  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    process.stderr.write('ffx-launch: interrupted, stopping every process\n');
    void stopAll(children, 0);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  // The run is over when the coordinator exits; it fails early when any child exits non-zero.
  // A stage may exit 0 first: it saw the stop marker while the coordinator was still writing.
  const coordinator = children[0]!;
  let failed: string | null = null;
  const pending = new Set(children);
  while (pending.has(coordinator) && !interrupted) {
    const { c, code } = await Promise.race(
      [...pending].map((c) => c.exited.then((code) => ({ c, code }))),
    );
    pending.delete(c);
    if (code !== 0) failed = `${c.name} exited with status ${code}`;
    if (failed) break;
  }
  if (!failed && !interrupted) {
    // Stages got the stop marker and leave on their own.
    const grace = (a.grace as number) * 1000;
    const codes = await Promise.race([
      Promise.all(children.map((c) => c.exited)),
      new Promise<null>((r) => setTimeout(() => r(null), grace).unref()),
    ]);
    if (codes === null) failed = `stages did not exit within ${grace / 1000}s after the run`;
    else {
      const i = codes.findIndex((code) => code !== 0);
      if (i >= 0) failed = `${children[i]!.name} exited with status ${codes[i]}`;
    }
  }
  await stopAll(children, 3000);
  if (socketDir) await rm(socketDir, { recursive: true, force: true });
  if (interrupted) process.exitCode = 130;
  else if (failed) throw new LaunchError(failed);
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
