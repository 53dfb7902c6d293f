// A child process that must not outlive the one that started it (ffx-launch's stages and
// coordinator): when the parent dies, even by SIGKILL, the child is re-parented, and this
// notices within a second. Set by the parent in the child's environment (its name does not
// start with FFX: yargs reads every such variable as a flag).
import { log } from '../log.js';

/** The environment variable holding the pid of the parent a process must not outlive. */
export const PARENT_ENV = 'LAUNCHER_PID_FOR_FFX';

/**
 * Calls `onGone` once when the parent named in LAUNCHER_PID_FOR_FFX has gone; does nothing when the
 * variable is not set. The check does not keep the process alive.
 */
export function watchParent(onGone: () => void): void {
  const parent = Number(process.env[PARENT_ENV]);
  if (!Number.isInteger(parent) || parent <= 0) return;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    log.info(`the process that started this one (pid ${parent}) is gone: exiting`);
    onGone();
  }, 1000);
  timer.unref();
}
