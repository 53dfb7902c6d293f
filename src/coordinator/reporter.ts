// What a training run tells its user: a live progress line on a TTY, periodic plain lines
// elsewhere (CI logs, files), or nothing but errors with `quiet`.
import type { EpochRecord } from './epoch-record.js';
import type { EvalResult } from '../core/predict.js';
import { formatConfusion } from '../core/predict.js';

export interface Reporter {
  log(line: string): void;
  /** What the user must see even with `quiet`: a recovery, a checkpoint that failed. */
  warn(line: string): void;
  startEpoch(epoch: number, epochs: number, batches: number): void;
  /** After each batch: batches done this epoch, samples done this epoch, loss per layer. */
  batch(done: number, samples: number, losses: number[]): void;
  endEpoch(record: EpochRecord): void;
}

export interface ConsoleReporterOptions {
  out?: NodeJS.WritableStream & { isTTY?: boolean };
  quiet?: boolean;
  /** Force the TTY progress bar on or off (default: on when `out` is a TTY and CI is unset). */
  tty?: boolean;
}

/** Set to 1 by ffx-launch: its terminal shows the bar this process draws (stderr is a pipe). */
export const PROGRESS_BAR_ENV = 'PROGRESS_BAR_FOR_FFX';

export class ConsoleReporter implements Reporter {
  private readonly out: NodeJS.WritableStream;
  private readonly quiet: boolean;
  private readonly tty: boolean;
  private epoch = 0;
  private epochs = 0;
  private batches = 0;
  private t0 = 0;
  private lastDraw = 0;
  private nextPlain = 0;

  constructor(opts: ConsoleReporterOptions = {}) {
    const out = opts.out ?? process.stderr;
    this.out = out;
    this.quiet = opts.quiet ?? false;
    const terminal =
      Boolean((out as { isTTY?: boolean }).isTTY) || process.env[PROGRESS_BAR_ENV] === '1';
    this.tty = opts.tty ?? (terminal && !process.env.CI);
  }

  log(line: string): void {
    if (!this.quiet) this.warn(line);
  }

  warn(line: string): void {
    this.clearLine();
    this.out.write(`${line}\n`);
  }

  startEpoch(epoch: number, epochs: number, batches: number): void {
    this.epoch = epoch;
    this.epochs = epochs;
    this.batches = batches;
    this.t0 = performance.now();
    this.lastDraw = 0;
    this.nextPlain = 0.25;
  }

  batch(done: number, samples: number, losses: number[]): void {
    if (this.quiet) return;
    const now = performance.now();
    const frac = done / this.batches;
    const rate = samples / ((now - this.t0) / 1000);
    const eta = ((now - this.t0) / 1000) * (1 / frac - 1);
    const loss = losses.map((l, i) => `L${i + 1} ${l.toFixed(3)}`).join(' ');
    if (this.tty) {
      if (now - this.lastDraw < 100 && done < this.batches) return; // ~10 redraws a second
      this.lastDraw = now;
      const width = 24;
      const filled = Math.round(frac * width);
      const bar =
        '='.repeat(filled) +
        (filled < width ? '>' : '') +
        ' '.repeat(Math.max(0, width - filled - 1));
      this.out.write(
        `\repoch ${this.epoch}/${this.epochs} [${bar}] ${done}/${this.batches} ${rate.toFixed(0)} samples/s ` +
          `ETA ${formatSeconds(eta)} loss ${loss}\x1b[K`,
      );
    } else if (frac >= this.nextPlain && done < this.batches) {
      // Plain logs: a line at each quarter of an epoch.
      this.nextPlain += 0.25;
      this.out.write(
        `epoch ${this.epoch}/${this.epochs} ${(frac * 100).toFixed(0)}% ${rate.toFixed(0)} samples/s ETA ${formatSeconds(eta)} loss ${loss}\n`,
      );
    }
  }

  endEpoch(r: EpochRecord): void {
    if (this.quiet) return;
    this.clearLine();
    const layers = r.layers
      .map(
        (s, i) =>
          `L${i + 1} loss ${s.loss.toFixed(4)} g+ ${s.goodnessPos.toFixed(3)} g- ${s.goodnessNeg.toFixed(3)}`,
      )
      .join(' | ');
    let line = `epoch ${r.epoch}/${this.epochs} ${r.seconds.toFixed(1)}s ${r.samplesPerSec.toFixed(0)} samples/s lr ${r.lr.toExponential(2)} | ${layers}`;
    if (r.eval?.goodness && r.eval.readout) {
      line +=
        ` | test acc goodness ${pct(r.eval.goodness.accuracy)}, ` +
        `readout ${pct(r.eval.readout.accuracy)} (${r.eval.rule})`;
    } else if (r.eval) {
      line += ` | test acc ${pct(r.eval.accuracy)} (${r.eval.rule})`;
    }
    this.out.write(`${line}\n`);
  }

  private clearLine(): void {
    if (this.tty) this.out.write('\r\x1b[K');
  }
}

export function pct(x: number): string {
  return `${(100 * x).toFixed(2)}%`;
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${s.toFixed(0)}s`;
}

/** The evaluation summary printed at the end of a run or by `ffx-coordinator eval`. */
export function formatEval(r: EvalResult, classNames?: readonly string[]): string {
  const sets = (e: EvalResult) =>
    e.perLayerSet.map((s) => `${s.name} ${pct(s.accuracy)}`).join(', ');
  const how = r.method === 'readout' ? 'readout log-probabilities' : 'goodness';
  const both =
    r.goodness && r.readout
      ? [
          `per layer set, goodness: ${sets(r.goodness)}`,
          `per layer set, readout: ${sets(r.readout)}`,
        ]
      : [`per layer set: ${sets(r)}`];
  const weights = r.weights
    ? [
        `fitted: the rule's layers weighted ${r.weights.map((w) => w.toPrecision(3)).join(', ')} (chosen on held-out training images)`,
      ]
    : [];
  return [
    `test accuracy ${pct(r.accuracy)} (${r.count} images, ${how} summed over ${r.rule})`,
    ...both,
    ...weights,
    'confusion matrix (rows: true label, columns: predicted):',
    formatConfusion(r.confusion, classNames),
  ].join('\n');
}

/** JSON lines for machines (`--json`): one object per event, `event` names it. */
export class JsonReporter implements Reporter {
  private readonly out: NodeJS.WritableStream;
  private epoch = 0;
  private batches = 0;
  private t0 = 0;
  private nextReport = 0;

  /** --quiet: no `log` or `progress` events, as the text output has only results then. */
  private readonly quiet: boolean;

  constructor(opts: { out?: NodeJS.WritableStream; quiet?: boolean } = {}) {
    this.out = opts.out ?? process.stdout;
    this.quiet = opts.quiet ?? false;
  }

  emit(event: string, fields: Record<string, unknown>): void {
    if (this.quiet && (event === 'log' || event === 'progress')) return;
    this.out.write(`${JSON.stringify({ time: new Date().toISOString(), event, ...fields })}\n`);
  }

  log(message: string): void {
    this.emit('log', { message });
  }

  warn(message: string): void {
    this.emit('warning', { message });
  }

  startEpoch(epoch: number, epochs: number, batches: number): void {
    this.epoch = epoch;
    this.batches = batches;
    this.t0 = performance.now();
    this.nextReport = 0.25;
    this.emit('epoch-start', { epoch, epochs, batches });
  }

  batch(done: number, samples: number, losses: number[]): void {
    const frac = done / this.batches;
    if (frac < this.nextReport || done === this.batches) return;
    this.nextReport += 0.25;
    const seconds = (performance.now() - this.t0) / 1000;
    this.emit('progress', {
      epoch: this.epoch,
      batches: done,
      of: this.batches,
      samplesPerSec: samples / seconds,
      etaSeconds: seconds * (1 / frac - 1),
      // NaN is not JSON: a diverged layer reads null.
      losses: losses.map((l) => (Number.isFinite(l) ? l : null)),
    });
  }

  endEpoch(record: EpochRecord): void {
    this.emit('epoch', { ...record });
  }
}
