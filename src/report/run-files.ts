// What a report is made of: a run directory's config.json, metrics.jsonl and eval.json, read
// as untrusted input. A line or field that is not what the driver writes is left out and
// counted, never trusted: the report of a half-written or hand-edited run still opens.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RUN_FILES } from '../checkpoint/run-dir.js';
import { UsageError, withFile } from '../errors.js';

export interface LayerPoint {
  loss: number;
  goodnessPos: number;
  goodnessNeg: number;
}

export interface StagePoint {
  stepSeconds: number;
  waitSeconds: number;
  transportSeconds: number;
  blockedSeconds: number;
}

export interface EvalPoint {
  count: number;
  accuracy: number;
  rule: string;
  perLayerSet: { name: string; accuracy: number }[];
  /** confusion[true][predicted]; empty if the file had none that is square. */
  confusion: number[][];
  /** A run with readouts: accuracy per layer set of each rule, side by side. */
  byRule?: { goodness: SetAccuracy[]; readout: SetAccuracy[] };
}

type SetAccuracy = { name: string; accuracy: number };

export interface EpochPoint {
  epoch: number;
  seconds: number;
  samplesPerSec: number;
  lr: number;
  layers: LayerPoint[];
  stages: StagePoint[];
  /** Within the epoch, in batch order; empty if the record has none (or a bad one). */
  curve: CurvePoint[];
  eval?: EvalPoint;
}

export interface CurvePoint {
  /** 1-based; the epoch's last point's is its number of batches. */
  batch: number;
  lr: number;
  layers: LayerPoint[];
}

export interface RunFiles {
  dir: string;
  /** config.json as written (the resolved config), for display. */
  config: Record<string, unknown>;
  /** In epoch order, one per epoch (a later line for the same epoch wins). */
  epochs: EpochPoint[];
  /** eval.json: the final test evaluation; undefined for a run that has not finished. */
  final: EvalPoint | undefined;
  /** metrics.jsonl lines that are not epoch records, left out. */
  skippedLines: number;
  /** Files there but not what a run writes (eval.json, run.json), left out. */
  unreadable: string[];
  /** run.json: the backend each layer computed on; empty where the file is missing or bad. */
  backends: string[];
}

/** Reads a run directory; a directory without a readable config.json is not a run. */
export async function readRunFiles(dir: string): Promise<RunFiles> {
  const config = await readJson(join(dir, RUN_FILES.config));
  if (!isObject(config)) {
    throw new UsageError(
      config === undefined
        ? `${dir} is not a run directory: it has no config.json (a run writes one as it starts)`
        : `${join(dir, RUN_FILES.config)} is not a run's config (not a JSON object): ` +
            'edited or damaged since the run wrote it',
      'REPORT_NOT_A_RUN',
    );
  }
  const metrics = join(dir, RUN_FILES.metrics);
  const text = await withFile(metrics, `cannot read ${metrics}`, () =>
    readFile(metrics, 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return '';
      throw err;
    }),
  );
  const byEpoch = new Map<number, EpochPoint>();
  let skippedLines = 0;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const point = epochPoint(parse(line));
    if (point) byEpoch.set(point.epoch, point);
    else skippedLines++;
  }
  const epochs = [...byEpoch.values()].sort((a, b) => a.epoch - b.epoch);
  const unreadable: string[] = [];
  const evalJson = await readJson(join(dir, RUN_FILES.eval));
  const final = evalPoint(evalJson);
  if (evalJson !== undefined && !final) unreadable.push(RUN_FILES.eval);
  const run = await readJson(join(dir, RUN_FILES.run));
  const backends = isObject(run)
    ? all(run.backends, (b) => (typeof b === 'string' ? b : undefined))
    : undefined;
  if (run !== undefined && !backends) unreadable.push(RUN_FILES.run);
  return { dir, config, epochs, final, skippedLines, unreadable, backends: backends ?? [] };
}

/**
 * A file's JSON; undefined if it is missing, null if it is there but not JSON (JSON's own null
 * is no file a run writes either).
 */
async function readJson(file: string): Promise<unknown> {
  const text = await withFile(file, `cannot read ${file}`, () =>
    readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR' || err.code === 'EISDIR')
        return undefined;
      throw err;
    }),
  );
  return text === undefined ? undefined : (parse(text) ?? null);
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** The numeric fields `keys` of `v`, or undefined unless every one is a finite number. */
function numbers<K extends string>(v: unknown, keys: readonly K[]): Record<K, number> | undefined {
  if (!isObject(v)) return undefined;
  const out = {} as Record<K, number>;
  for (const k of keys) {
    const x = v[k];
    if (!finite(x)) return undefined;
    out[k] = x;
  }
  return out;
}

/** Each element through `f`; undefined if `v` is not an array or any element fails. */
function all<T>(v: unknown, f: (x: unknown) => T | undefined): T[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: T[] = [];
  for (const x of v) {
    const y = f(x);
    if (y === undefined) return undefined;
    out.push(y);
  }
  return out;
}

const LAYER_KEYS = ['loss', 'goodnessPos', 'goodnessNeg'] as const;
const STAGE_KEYS = ['stepSeconds', 'waitSeconds', 'transportSeconds', 'blockedSeconds'] as const;

function epochPoint(v: unknown): EpochPoint | undefined {
  const head = numbers(v, ['epoch', 'seconds', 'samplesPerSec', 'lr'] as const);
  if (!head || !Number.isInteger(head.epoch) || head.epoch < 1 || !isObject(v)) return undefined;
  const layers = all(v.layers, (x) => numbers(x, LAYER_KEYS));
  const stages = all(v.stages, (x) => numbers(x, STAGE_KEYS));
  if (!layers || !stages || layers.length === 0) return undefined;
  // A curve that is not what the driver writes is left out whole (the epoch's means stay).
  const parsed = all(v.curve, (x) => {
    const p = numbers(x, ['batch', 'lr'] as const);
    const ls = isObject(x) ? all(x.layers, (l) => numbers(l, LAYER_KEYS)) : undefined;
    return p && Number.isInteger(p.batch) && p.batch >= 1 && ls?.length === layers.length
      ? { ...p, layers: ls }
      : undefined;
  });
  const ordered = parsed?.every((p, i) => i === 0 || p.batch > parsed[i - 1]!.batch);
  const curve = ordered ? parsed! : [];
  const point: EpochPoint = { ...head, layers, stages, curve };
  const ev = evalPoint(v.eval);
  if (ev) point.eval = ev;
  return point;
}

function evalPoint(v: unknown): EvalPoint | undefined {
  const head = numbers(v, ['count', 'accuracy'] as const);
  if (!head || !isObject(v)) return undefined;
  const sets = (w: unknown): SetAccuracy[] =>
    (isObject(w) &&
      all(w.perLayerSet, (x) =>
        isObject(x) && typeof x.name === 'string' && finite(x.accuracy)
          ? { name: x.name, accuracy: x.accuracy }
          : undefined,
      )) ||
    [];
  const confusion = all(v.confusion, (row) => all(row, (c) => (finite(c) ? c : undefined))) ?? [];
  const square = confusion.every((row) => row.length === confusion.length);
  const point: EvalPoint = {
    ...head,
    rule: typeof v.rule === 'string' ? v.rule : 'all',
    perLayerSet: sets(v),
    confusion: square ? confusion : [],
  };
  const [goodness, readout] = [sets(v.goodness), sets(v.readout)];
  if (goodness.length > 0 && readout.length > 0) point.byRule = { goodness, readout };
  return point;
}
