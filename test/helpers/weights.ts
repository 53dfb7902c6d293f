// Comparing two runs' weight files.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { decodeSafetensors } from '../../src/core/safetensors.js';

/**
 * The largest |a - b| over every tensor of two safetensors files (weights and optimizer slots);
 * asserts that both hold the same names and shapes.
 */
export async function maxWeightDiff(fileA: string, fileB: string): Promise<number> {
  const a = decodeSafetensors(await readFile(fileA), fileA).tensors;
  const b = decodeSafetensors(await readFile(fileB), fileB).tensors;
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  let worst = 0;
  for (const [name, t] of a) {
    const u = b.get(name)!;
    assert.deepEqual(u.shape, t.shape, name);
    for (let i = 0; i < t.data.length; i++)
      worst = Math.max(worst, Math.abs(t.data[i]! - u.data[i]!));
  }
  return worst;
}
