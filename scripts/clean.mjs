// Removes dist/ before a build, so a source file moved or deleted leaves no compiled copy behind
// for `node --test dist/test/` to run.
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

rmSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'dist'), {
  recursive: true,
  force: true,
});
