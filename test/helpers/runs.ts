// The small training run the distributed tests share, and the single-process references they
// are compared with.
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, runNode, type RunResult } from './spawn.js';

/**
 * Flags of a 784-256-256 run on 3,000 images of the shipped sample (30 batches of 100 an
 * epoch), evaluated at the end only: a few seconds an epoch as a pipeline here.
 */
export function smallRun(epochs: number, testLimit = 500): string[] {
  return [
    '--config',
    join(ROOT, 'config', 'demo.json'),
    '--layers',
    '784,256,256',
    '--set',
    'model.threshold=256',
    '--set',
    'data.trainLimit=3000',
    '--set',
    `data.testLimit=${testLimit}`,
    '--set',
    'train.evalEvery=0',
    '--epochs',
    String(epochs),
  ];
}

/** The backend a run computes on, and the compute threads of the single-process reference. */
export interface OnBackend {
  backend: 'wasm' | 'wasm+blas';
  /**
   * The reference's threads. On wasm both orders of a product's sums coincide with one thread
   * each; on wasm+blas the bits do not depend on threads, and the reference takes 2 (the stages
   * 1) to show it.
   */
  threads: number;
}

export const ON_WASM: OnBackend = { backend: 'wasm', threads: 1 };

/** How the numeric tests run on `backend` (helpers/backends.ts says which are here). */
export function onBackend(backend: OnBackend['backend']): OnBackend {
  return backend === 'wasm' ? ON_WASM : { backend, threads: 2 };
}

/**
 * The same run as a pipeline (`args`: its flags), started by ffx-launch over loopback TCP, one
 * thread a stage; resolves when it is done, its outputs in `out`.
 */
export function trainPipelined(
  args: string[],
  out: string,
  timeoutMs = 90_000,
  on: OnBackend = ON_WASM,
): Promise<RunResult> {
  return runNode(
    [
      join(ROOT, 'dist', 'src', 'cli', 'ffx-launch.js'),
      '--transport',
      'tcp',
      '--backend',
      on.backend,
      '--stage-threads',
      '1',
      ...args,
      '--out',
      out,
    ],
    { timeoutMs },
  );
}

/**
 * The single-process reference of a run (`args`: its flags), on the wasm backend with one
 * thread as the stages use (or as `on` says); resolves when it is done, its outputs in `out`.
 */
export function trainLocally(
  args: string[],
  out: string,
  timeoutMs = 90_000,
  on: OnBackend = ON_WASM,
): Promise<RunResult> {
  return runNode(
    [
      join(ROOT, 'dist', 'src', 'cli', 'ffx-coordinator.js'),
      'train',
      '--local',
      '--backend',
      on.backend,
      '--threads',
      String(on.threads),
      ...args,
      '--quiet',
      '--out',
      out,
    ],
    { timeoutMs },
  );
}

let buildHash: string | undefined;

/** A hash of the build under test (dist/src): references trained by another build are not reused. */
function currentBuild(): string {
  if (buildHash) return buildHash;
  const hash = createHash('sha256');
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : 1,
    )) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else hash.update(p).update(readFileSync(p));
    }
  };
  walk(join(ROOT, 'dist', 'src'));
  return (buildHash = hash.digest('hex').slice(0, 16));
}

/**
 * The single-process reference of a run (`args`: its flags, as trainLocally takes them),
 * trained once per build and shared by every test that compares a distributed run with it,
 * whichever test file asks first: a run directory in the system's temp dir, keyed by the build
 * and the flags, moved into place only once complete. Resolves with its path.
 */
export async function referenceRun(
  args: string[],
  on: OnBackend = ON_WASM,
  timeoutMs = 120_000,
): Promise<string> {
  const root = join(tmpdir(), 'ffx-test-references');
  const build = join(root, currentBuild());
  const key = JSON.stringify([on, args]);
  const dir = join(build, createHash('sha256').update(key).digest('hex').slice(0, 16));
  if (existsSync(join(dir, 'model.safetensors'))) return dir;
  mkdirSync(build, { recursive: true });
  // References of other builds are stale.
  for (const old of readdirSync(root)) {
    if (join(root, old) !== build) rmSync(join(root, old), { recursive: true, force: true });
  }
  const partial = mkdtempSync(join(build, 'partial-'));
  const r = await trainLocally(args, partial, timeoutMs, on);
  if (r.code !== 0) {
    rmSync(partial, { recursive: true, force: true });
    throw new Error(`the reference run failed (${r.code}):\n${r.stderr.slice(-3000)}`);
  }
  try {
    renameSync(partial, dir);
  } catch {
    rmSync(partial, { recursive: true, force: true }); // another test file made it meanwhile
  }
  return dir;
}
