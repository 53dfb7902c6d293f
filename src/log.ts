// The process's diagnostic log: one line per event. A CLI points it at its output (stderr, or a
// reporter that keeps a progress bar intact) and turns debug lines on with --verbose; library
// code below the CLIs (core, backend, stage) writes here instead of printing.

export type LogLevel = 'debug' | 'info' | 'warn';

export interface LogOptions {
  /** Where lines go (default: stderr). */
  sink?: (line: string) => void;
  /** Print debug lines too. */
  verbose?: boolean;
}

let sink: (line: string) => void = (line) => process.stderr.write(`${line}\n`);
let verbose = false;
const warned = new Set<string>();

/** Sets where lines go and whether debug lines are printed; returns the previous settings. */
export function configureLog(opts: LogOptions): Required<LogOptions> {
  const before = { sink, verbose };
  if (opts.sink) sink = opts.sink;
  if (opts.verbose !== undefined) verbose = opts.verbose;
  return before;
}

export function isVerbose(): boolean {
  return verbose;
}

export const log = {
  debug(line: string): void {
    if (verbose) sink(`debug: ${line}`);
  },
  info(line: string): void {
    sink(line);
  },
  warn(line: string): void {
    sink(`warning: ${line}`);
  },
  /** A warning printed once per process for `key` (a fallback that would repeat every step). */
  warnOnce(key: string, line: string): void {
    if (warned.has(key)) return;
    warned.add(key);
    sink(`warning: ${line}`);
  },
};

/**
 * Lines about events a peer can cause at will (a rejected or dropped message): at most one per
 * key a minute, each saying how many like it went unlogged since the one before.
 */
export class RateLimitedLog {
  private readonly last = new Map<string, { at: number; unlogged: number }>();

  constructor(
    private readonly write: (line: string) => void,
    private readonly intervalMs = 60_000,
  ) {}

  line(key: string, text: string): void {
    const now = Date.now();
    const seen = this.last.get(key);
    if (seen && now - seen.at < this.intervalMs) {
      seen.unlogged++;
      return;
    }
    const more = seen?.unlogged ? ` (and ${seen.unlogged} more like it since the last line)` : '';
    this.last.set(key, { at: now, unlogged: 0 });
    this.write(`${text}${more}`);
  }
}

/** "1 epoch", "3 epochs": a count and its noun. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}
