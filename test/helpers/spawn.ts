// Child Node processes for tests: each has a timeout, and every one still running is killed by
// killAll() (call it in an `after` hook).
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root (this file is dist/test/helpers/spawn.js once built). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the timeout killed the process. */
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

const running = new Set<ChildProcess>();

/**
 * Every child leads its own process group, so that a kill reaches what it started too (a shell,
 * npx and the node under it): a grandchild that outlives its parent keeps the test's pipes open
 * and the test file from ever exiting.
 */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

export interface Started {
  child: ChildProcess;
  /** Settles when the process has exited (or was killed by the timeout). */
  result: Promise<RunResult>;
  /** Sends `signal` to the process and everything it started (its process group). */
  killGroup(signal: NodeJS.Signals): void;
  /** Output so far. */
  stdout(): string;
  stderr(): string;
}

/** Starts `node ...args`; the timeout kills it with SIGKILL. */
export function startNode(args: string[], opts: RunOptions): Started {
  return startCommand(process.execPath, args, opts);
}

/** Starts any program, tracked like startNode (timeout, killAll). */
export function startCommand(command: string, args: string[], opts: RunOptions): Started {
  // No FFX_* from the caller's environment (the CLI reads flags from it) but ours; CI=1: the
  // coordinator prints plain lines, not a TTY progress bar.
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FFX_')) env[k] = v;
  env.CI = '1';
  // Metrics endpoints on free loopback ports: tests never clash over 9464+.
  env.FFX_METRICS_PORT = '0';
  env.FFX_METRICS_HOST = '127.0.0.1';
  const child = spawn(command, args, {
    cwd: opts.cwd ?? ROOT,
    env: { ...env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  running.add(child);
  let stdout = '';
  let stderr = '';
  let timedOut = false;
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child, 'SIGKILL');
  }, opts.timeoutMs);
  const result = new Promise<RunResult>((resolveRun, reject) => {
    child.on('error', (err) => {
      clearTimeout(timer);
      running.delete(child);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      resolveRun({ code, signal, stdout, stderr, timedOut });
    });
  });
  return {
    child,
    result,
    killGroup: (signal) => killGroup(child, signal),
    stdout: () => stdout,
    stderr: () => stderr,
  };
}

/** Runs `node ...args` to completion (or the timeout, which kills it with SIGKILL). */
export function runNode(args: string[], opts: RunOptions): Promise<RunResult> {
  return startNode(args, opts).result;
}

/** Resolves once `text()` matches `pattern` (polled), rejects after `timeoutMs`. */
export async function waitForOutput(
  text: () => string,
  pattern: RegExp,
  timeoutMs: number,
): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = pattern.exec(text());
    if (m) return m;
    if (Date.now() > deadline)
      throw new Error(
        `no output matching ${pattern} within ${timeoutMs} ms:\n${text().slice(-2000)}`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs an ES module given as source text (`node --input-type=module -e`). */
export function runModule(source: string, opts: RunOptions): Promise<RunResult> {
  return runNode(['--input-type=module', '-e', source], opts);
}

/** Kills every child started here that has not exited yet. */
export function killAll(): void {
  for (const child of running) killGroup(child, 'SIGKILL');
  running.clear();
}

/** Starts `ffx-stage --layer N` (or `2-3`) on a free loopback port, wasm with one thread. */
export function startStage(
  layer: number | string,
  coordinator: string,
  timeoutMs: number,
  extra: string[] = [],
): Started {
  const args = [
    '--layer',
    String(layer),
    '--coordinator',
    coordinator,
    '--listen',
    'tcp://127.0.0.1:*',
  ];
  args.push('--backend', 'wasm', '--threads', '1', ...extra);
  return startNode([resolve(ROOT, 'dist', 'src', 'cli', 'ffx-stage.js'), ...args], { timeoutMs });
}

/** Whether a process with this pid exists (signal 0 checks without sending anything). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}
