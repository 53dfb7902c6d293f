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

export function runMain(main: () => Promise<unknown>): void {
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
