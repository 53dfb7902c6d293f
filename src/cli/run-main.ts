// The one place that turns errors into exit codes: library code throws typed errors with a
// `code`; the user sees their message (and a stack only for unexpected ones, or with FFX_DEBUG).

/** Exit status for a usage or configuration problem, as opposed to a failure while running. */
export const EXIT_USAGE = 2;

const USER_ERROR_NAMES = new Set([
  'ConfigError',
  'DataError',
  'BackendError',
  'SafetensorsError',
  'CheckpointError',
  'UsageError',
  'ClusterError',
  'StageError',
  'ProtocolError',
  'LaunchError',
]);

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
        const known = USER_ERROR_NAMES.has(e.name) || USER_ERROR_NAMES.has(e.constructor.name);
        const code = (e as { code?: unknown }).code;
        process.stderr.write(
          `error${typeof code === 'string' ? ` [${code}]` : ''}: ${e.message}\n`,
        );
        if (!known || process.env.FFX_DEBUG) process.stderr.write(`${e.stack ?? ''}\n`);
        process.exitCode =
          e.name === 'ConfigError' || e.constructor.name === 'UsageError' ? EXIT_USAGE : 1;
      },
    );
}
