// The shape of src/ as docs/architecture.md draws it: no import cycles (type imports included), layers
// that only import downward, and the training schedule in one driver that neither executor
// owns.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { ROOT } from '../helpers/spawn.js';

const SRC = join(ROOT, 'src');

/** Every .ts file under src/, relative to src/ (e.g. "coordinator/driver.ts"). */
function sources(dir = SRC): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? sources(join(dir, e.name))
      : e.name.endsWith('.ts')
        ? [relative(SRC, join(dir, e.name))]
        : [],
  );
}

/** The src/ files a file imports (static imports and re-exports, type-only ones included). */
function importsOf(file: string): string[] {
  const text = readFileSync(join(SRC, file), 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+'(\.[^']+)'/gm)) {
    out.push(relative(SRC, resolve(dirname(join(SRC, file)), m[1]!.replace(/\.js$/, '.ts'))));
  }
  return out;
}

const graph = new Map(sources().map((f) => [f, importsOf(f)]));

/** Folder of a src/ file ('' for files at the top, e.g. errors.ts). */
const folder = (f: string) => (f.includes('/') ? f.split('/')[0]! : '');

describe('architecture of src/', () => {
  it('finds the files and their imports', () => {
    assert.ok(graph.size > 40, `${graph.size} files`);
    assert.ok(graph.get('coordinator/driver.ts')!.includes('coordinator/executor.ts'));
    for (const [file, deps] of graph) {
      for (const d of deps) assert.ok(graph.has(d), `${file} imports ${d}, which does not exist`);
    }
  });

  it('has no import cycle', () => {
    const state = new Map<string, 'open' | 'done'>();
    const stack: string[] = [];
    const visit = (f: string): void => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'open') {
        assert.fail(`import cycle: ${[...stack.slice(stack.indexOf(f)), f].join(' -> ')}`);
      }
      state.set(f, 'open');
      stack.push(f);
      for (const d of graph.get(f) ?? []) visit(d);
      stack.pop();
      state.set(f, 'done');
    };
    for (const f of graph.keys()) visit(f);
  });

  it('imports only downward: cli -> coordinator/stage/report -> checkpoint -> config/metrics -> core/transport -> data/backend', () => {
    const rank: Record<string, number> = {
      cli: 6,
      coordinator: 5,
      stage: 5,
      report: 5,
      checkpoint: 4,
      config: 3,
      metrics: 3,
      core: 2,
      transport: 2,
      data: 1,
      backend: 1,
      '': 0, // errors.ts, log.ts
    };
    for (const [file, deps] of graph) {
      for (const d of deps) {
        const [from, to] = [folder(file), folder(d)];
        assert.ok(from in rank && to in rank, `${file}: unknown folder`);
        assert.ok(
          from === to || rank[to]! < rank[from]!,
          `${file} (${from}) imports ${d} (${to}): against the layering`,
        );
      }
    }
    // core and transport never import each other.
    for (const [file, deps] of graph) {
      for (const d of deps) {
        assert.ok(
          !(folder(file) === 'core' && folder(d) === 'transport') &&
            !(folder(file) === 'transport' && folder(d) === 'core'),
          `${file} imports ${d}`,
        );
      }
    }
  });

  it('keeps the schedule in the driver: only the CLI picks an executor', () => {
    for (const exec of ['coordinator/local-executor.ts', 'coordinator/pipeline-executor.ts']) {
      const users = [...graph].filter(([, deps]) => deps.includes(exec)).map(([f]) => f);
      assert.deepEqual(
        users.filter((f) => folder(f) !== 'cli'),
        [],
        `${exec} is imported by ${users.join(', ')}`,
      );
    }
    // The executors compute; the learning-rate schedule and the cadence live in driver.ts.
    for (const [file] of graph) {
      if (!['coordinator', 'stage'].includes(folder(file))) continue;
      if (file === 'coordinator/driver.ts') continue;
      const text = readFileSync(join(SRC, file), 'utf8');
      assert.doesNotMatch(text, /learningRateAt\(/, `${file} computes the learning rate`);
      assert.doesNotMatch(text, /checkpointEvery|evalEvery/, `${file} decides the cadence`);
    }
  });
});
