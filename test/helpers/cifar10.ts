// Small CIFAR-10 directories in the binary format, for tests: the six files of the official
// archive's cifar-10-batches-bin/, with fewer records.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CIFAR10_RECORD_BYTES,
  CIFAR10_TEST_FILE,
  CIFAR10_TRAIN_FILES,
} from '../../src/data/cifar10.js';

/** mulberry32: a tiny deterministic generator of bytes. */
function byteStream(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) & 0xff;
  };
}

/**
 * Writes data_batch_1..5.bin (`perBatch` records each) and test_batch.bin (`testCount`) to
 * `dir`: pseudo-random pixels from `seed`, labels cycling 0..9 over each split (the training
 * records counted across the five batches in order, the test records from 0).
 */
export async function writeCifarSample(
  dir: string,
  perBatch: number,
  testCount: number,
  seed: number,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const next = byteStream(seed);
  const records = (count: number, firstLabel: number): Uint8Array => {
    const buf = new Uint8Array(count * CIFAR10_RECORD_BYTES);
    for (let r = 0; r < count; r++) {
      const base = r * CIFAR10_RECORD_BYTES;
      buf[base] = (firstLabel + r) % 10;
      for (let p = 1; p < CIFAR10_RECORD_BYTES; p++) buf[base + p] = next();
    }
    return buf;
  };
  for (const [i, file] of CIFAR10_TRAIN_FILES.entries()) {
    await writeFile(join(dir, file), records(perBatch, i * perBatch));
  }
  await writeFile(join(dir, CIFAR10_TEST_FILE), records(testCount, 0));
}
