// A stage's default share of the machine: the cores over the ffx stages running on it, so that
// several stages on one host (systemd instances, stages started by hand) do not each take
// every core. Counted once, at start-up, from /proc (Linux); elsewhere every core.
import { readFileSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** The ffx-stage processes running on this host (this one included), 1 where unknown. */
export function stagesOnHost(): number {
  let n = 0;
  try {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        if (argv.some((arg) => /(^|\/)ffx-stage(\.js)?$/.test(arg))) n++;
      } catch {
        // Gone meanwhile, or not ours to read.
      }
    }
  } catch {
    return 1; // no /proc
  }
  return Math.max(1, n);
}

/** Threads for a stage not told how many: its share of the cores, at least 1. */
export function defaultStageThreads(): { threads: number; stages: number } {
  const stages = stagesOnHost();
  return { threads: Math.max(1, Math.floor(availableParallelism() / stages)), stages };
}
