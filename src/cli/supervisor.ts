// ffx-launch's process supervisor: it starts the run's processes, starts one again when a
// signal killed it (kill -9, the OOM killer), up to a bound per process, and decides when the
// run is over: when the main process (the coordinator) exits 0. Then the others get a grace
// period to leave on their own (they saw the stop marker) before everything left is stopped:
// SIGTERM, then SIGKILL. Any other failure ends the run, as does interrupt().
import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:os';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** What to run: started again with `args(true)` after a signal killed it. */
export interface ChildSpec {
  name: string;
  /** The Node script, and its arguments for a first start (false) or a restart (true). */
  script: string;
  args: (restart: boolean) => string[];
  env: NodeJS.ProcessEnv;
}

export interface Child {
  spec: ChildSpec;
  proc: ChildProcess;
  exited: Promise<Exit>;
  /** How many times this process was started again. */
  restarts: number;
}

export interface SupervisorOptions {
  /** Times each process is started again after a signal killed it. */
  maxRestarts: number;
  /** How long the others may take to leave once the main process has exited 0. */
  graceMs: number;
  /** Options of `node` itself that every process starts with (V8's heap settings). */
  nodeFlags?: readonly string[];
  /** Called for each process started: relays its output. */
  started: (child: Child) => void;
  log: (line: string) => void;
}

/** A process's exit status as a shell reports it: 128 + the signal's number for a signal. */
export function statusOf(e: Exit): number {
  return e.code ?? 128 + (e.signal ? (constants.signals[e.signal] ?? 0) : 0);
}

/** "exited with status 1", or "was killed by SIGKILL (status 137)". */
export function describeExit(e: Exit): string {
  return e.signal
    ? `was killed by ${e.signal} (status ${statusOf(e)})`
    : `exited with status ${e.code}`;
}

export class Supervisor {
  private readonly children: Child[] = [];
  private interrupted = false;
  private wake: () => void = () => {};
  /** Resolves (null) on interrupt(): every wait of the supervisor races it. */
  private readonly interruption = new Promise<null>((r) => (this.wake = () => r(null)));

  constructor(private readonly opts: SupervisorOptions) {}

  /** Starts a process; the first started is the main one, whose exit 0 ends the run. */
  start(spec: ChildSpec): Child {
    const child = this.spawn(spec, 0);
    this.children.push(child);
    return child;
  }

  /** "coordinator (pid 1), stage 1 (pid 2), ..." */
  pids(): string {
    return this.children.map((c) => `${c.spec.name} (pid ${c.proc.pid})`).join(', ');
  }

  /** Ends the run now (Ctrl-C): run() stops everything and resolves 'interrupted'. */
  interrupt(): void {
    this.interrupted = true;
    this.wake();
  }

  /**
   * Watches the processes until the run is over; then stops what is left. Resolves 'ok', or
   * 'interrupted', or a sentence saying which process failed and how.
   */
  async run(): Promise<'ok' | 'interrupted' | string> {
    const outcome = (await this.watch()) ?? (await this.grace());
    await this.stopAll(3000);
    if (this.interrupted) return 'interrupted';
    return outcome ?? 'ok';
  }

  /** Until the main process exits 0 (null), a failure (its description), or an interrupt. */
  private async watch(): Promise<string | null | undefined> {
    const watching = new Set(this.children);
    for (;;) {
      if (this.interrupted) return undefined;
      const next = await Promise.race([
        this.interruption,
        ...[...watching].map((c) => c.exited.then((exit) => ({ c, exit }))),
      ]);
      if (next === null || this.interrupted) return undefined;
      const { c, exit } = next;
      watching.delete(c);
      if (statusOf(exit) === 0) {
        // The main process is done: the run is. Another may exit 0 first (it saw the stop
        // marker while the coordinator was still writing).
        if (c === this.children[0]) return null;
        continue;
      }
      if (exit.signal && c.restarts < this.opts.maxRestarts) {
        const again = this.spawn(c.spec, c.restarts + 1);
        this.children[this.children.indexOf(c)] = again;
        watching.add(again);
        this.opts.log(
          `${c.spec.name} ${describeExit(exit)}; started again as pid ${again.proc.pid} ` +
            `(restart ${again.restarts} of ${this.opts.maxRestarts})`,
        );
        continue;
      }
      return `${c.spec.name} ${describeExit(exit)}`;
    }
  }

  /**
   * After the main process exited 0, the others leave on their own (they got the stop marker).
   * One started again after that has no run to join and waits for the next coordinator: it is
   * stopped, and is no failure; any other one still here missed the end of the run.
   */
  private async grace(): Promise<string | undefined> {
    if (this.interrupted) return undefined;
    const { children } = this;
    const exits = await Promise.race([
      Promise.all(children.map((c) => c.exited)),
      this.interruption,
      new Promise<null>((r) => setTimeout(() => r(null), this.opts.graceMs).unref()),
    ]);
    if (this.interrupted) return undefined;
    if (exits === null) {
      const stuck = children.filter((c) => c !== children[0] && c.proc.exitCode === null);
      const late = stuck.filter((c) => c.restarts > 0);
      for (const c of late)
        this.opts.log(`${c.spec.name} was started again after the run ended; stopping it`);
      if (late.length < stuck.length) {
        return `stages did not exit within ${this.opts.graceMs / 1000}s after the run`;
      }
      return undefined;
    }
    const i = exits.findIndex((e) => statusOf(e) !== 0);
    return i >= 0 ? `${children[i]!.spec.name} ${describeExit(exits[i]!)}` : undefined;
  }

  /** SIGTERM to every live process, SIGKILL to those still alive after `graceMs`. */
  private async stopAll(graceMs: number): Promise<void> {
    const live = this.children.filter(
      (c) => c.proc.exitCode === null && c.proc.signalCode === null,
    );
    for (const c of live) c.proc.kill('SIGTERM');
    await Promise.race([
      Promise.all(live.map((c) => c.exited)),
      new Promise((r) => setTimeout(r, graceMs).unref()),
    ]);
    for (const c of live) {
      if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
    }
  }

  private spawn(spec: ChildSpec, restarts: number): Child {
    const argv = [...(this.opts.nodeFlags ?? []), spec.script, ...spec.args(restarts > 0)];
    const proc = spawn(process.execPath, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: spec.env,
    });
    const exited = new Promise<Exit>((resolve) =>
      proc.on('exit', (code, signal) => resolve({ code, signal })),
    );
    const child = { spec, proc, exited, restarts };
    this.opts.started(child);
    return child;
  }
}
