// A temporary directory for the tests of one describe(): made before them, removed after them
// (every process they started is killed first, so none still writes there).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { killAll } from './spawn.js';

/**
 * Registers the before/after hooks of the enclosing describe() for a directory `ffx-<name>-*`;
 * returns `tmp`, where `tmp('a', 'b')` is a path inside it (`tmp()` the directory itself).
 */
export function tempDir(name: string): (...parts: string[]) => string {
  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), `ffx-${name}-`));
  });
  after(() => {
    killAll();
    rmSync(dir, { recursive: true, force: true });
  });
  return (...parts) => {
    if (!dir) throw new Error(`tempDir('${name}') is used before its before() hook ran`);
    return join(dir, ...parts);
  };
}
