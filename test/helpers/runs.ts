// The small training run the distributed tests share.
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

/**
 * The same run as a pipeline (`args`: its flags), started by ffx-launch over loopback TCP, one
 * wasm thread a stage; resolves when it is done, its outputs in `out`.
 */
export function trainPipelined(
  args: string[],
  out: string,
  timeoutMs = 90_000,
): Promise<RunResult> {
  return runNode(
    [
      join(ROOT, 'dist', 'src', 'cli', 'ffx-launch.js'),
      '--transport',
      'tcp',
      '--backend',
      'wasm',
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
 * thread as the stages use; resolves when it is done, its outputs in `out`.
 */
export function trainLocally(args: string[], out: string, timeoutMs = 90_000): Promise<RunResult> {
  return runNode(
    [
      join(ROOT, 'dist', 'src', 'cli', 'ffx-coordinator.js'),
      'train',
      '--local',
      '--backend',
      'wasm',
      '--threads',
      '1',
      ...args,
      '--quiet',
      '--out',
      out,
    ],
    { timeoutMs },
  );
}
