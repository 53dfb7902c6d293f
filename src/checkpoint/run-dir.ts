// A run directory's files besides the checkpoints (checkpoint-file.ts), and the writer of its
// epoch log. metrics.jsonl holds one JSON line per epoch of the run's final lineage: a resumed
// run keeps the lines of the epochs it starts after, and a rollback drops those it trains again,
// so the file always reads as one uninterrupted run. The report (src/report) reads it back.
import { appendFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { withFile } from '../errors.js';
import { writeFileAtomic } from './atomic-file.js';

export const RUN_FILES = {
  /** The resolved config, written as the run starts. */
  config: 'config.json',
  /** One line per epoch. */
  metrics: 'metrics.jsonl',
  /** The final evaluation, written as the run ends. */
  eval: 'eval.json',
  /** The run's report (src/report), written as the run ends. */
  report: 'report.html',
  /** Where the run ran: the backend each layer computed on (they round differently). */
  run: 'run.json',
  /** The run's lineage (coordinator/lineage.ts): recoveries and work trained again. */
  lineage: 'lineage.json',
} as const;

/** metrics.jsonl of a run directory: the epoch records of the run's lineage, in order. */
export class MetricsLog {
  readonly file: string;
  /** The lines of the lineage, as the file holds them (earlier runs' lines included). */
  private lines: string[] = [];

  constructor(dir: string) {
    this.file = join(dir, RUN_FILES.metrics);
  }

  /**
   * Starts the log of a run that begins after `epoch` epochs: the file keeps the lines of those
   * epochs (a resumed run's lineage) and loses everything later, or starts empty. With
   * `continued` (a coordinator taking a run over), returns the lines it drops: epochs the run
   * had trained past `epoch`, trained again now.
   */
  async open(epoch: number, continued: boolean): Promise<unknown[]> {
    const text = continued || epoch > 0 ? await readFile(this.file, 'utf8').catch(() => '') : '';
    const all = text.split('\n').filter((l) => l !== '');
    this.lines = epoch > 0 ? all.filter((l) => lineEpoch(l) <= epoch) : [];
    await this.rewrite();
    if (!continued) return [];
    return all
      .filter((l) => lineEpoch(l) > epoch && lineEpoch(l) < Infinity)
      .map((l) => JSON.parse(l));
  }

  /** One epoch's record (an object with its 1-based `epoch`), appended. */
  async append(record: { epoch: number }): Promise<void> {
    const line = JSON.stringify(record);
    this.lines.push(line);
    await withFile(this.file, `cannot append to ${this.file}`, () =>
      appendFile(this.file, line + '\n'),
    );
  }

  /** Back to the state after `epoch` epochs: later lines are dropped from the file. */
  async rewind(epoch: number): Promise<void> {
    this.lines = this.lines.filter((l) => lineEpoch(l) <= epoch);
    await this.rewrite();
  }

  private rewrite(): Promise<void> {
    return writeFileAtomic(this.file, this.lines.map((l) => l + '\n').join(''), 'metrics');
  }
}

/** The epoch of a metrics.jsonl line (Infinity if it has none: dropped on a rewind). */
function lineEpoch(line: string): number {
  try {
    const epoch = (JSON.parse(line) as { epoch?: unknown }).epoch;
    return typeof epoch === 'number' ? epoch : Infinity;
  } catch {
    return Infinity;
  }
}
