// The one place that turns errors into exit codes. Library code throws FfxErrors with a stable
// `code`; the user sees one line, `error [CODE]: message`, and a stack trace only with
// --verbose, or for an error that is not an FfxError (a bug, which is worth the stack).
import { InterruptedError, USAGE_CODES, isFfxError } from '../errors.js';
import { isVerbose } from '../log.js';
import { constants } from 'node:os';

/** Exit status for a usage or configuration problem, as opposed to a failure while running. */
export const EXIT_USAGE = 2;

/** The exit status for an error: 2 for usage, 128 + signal for an interruption, else 1. */
export function exitStatus(err: unknown): number {
  if (err instanceof InterruptedError) return 128 + (constants.signals[err.signal] ?? 0);
  if (isFfxError(err)) return USAGE_CODES.has(err.code) ? EXIT_USAGE : 1;
  return 1;
}

/**
 * Output to a reader that is gone is dropped, not fatal. ffx-launch's children write into its
 * pipes: killed, it takes their read ends along, and the next line a child writes (say, that
 * its launcher is gone) failed with EPIPE, an uncaught error that ended the process mid-way
 * (the coordinator without aborting its run in band, a stage by SIGABRT as zeromq's heartbeat
 * thread was torn down with its socket open). The same for `ffx-coordinator plan | head`.
 */
function dropOutputToClosedPipes(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err;
    });
  }
}

export function runMain(main: () => Promise<unknown>): void {
  dropOutputToClosedPipes();
  // yargs with .fail() throws synchronously: start inside a promise so both paths land here.
  Promise.resolve()
    .then(main)
    .then(
      () => {
        process.exitCode = process.exitCode ?? 0;
      },
      (err: unknown) => {
        const e = err instanceof Error ? err : new Error(String(err));
        const known = isFfxError(e);
        process.stderr.write(`error${known ? ` [${e.code}]` : ''}: ${e.message}\n`);
        if (!known || isVerbose()) process.stderr.write(`${e.stack ?? ''}\n`);
        process.exitCode = exitStatus(e);
      },
    );
}
