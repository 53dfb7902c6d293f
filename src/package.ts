// ffx's own package.json, found by walking up from this module: the same code runs from src/
// (tests, tsx) and from dist/src/ (the build), and an installed ffx lives under node_modules.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface FfxPackage {
  /** The directory holding ffx's package.json (and config/, data/, grafana/, ...). */
  root: string;
  version: string;
}

let found: FfxPackage | null | undefined;

/** ffx's package root and version, or null when no package.json above names ffx. */
export function ffxPackage(): FfxPackage | null {
  if (found !== undefined) return found;
  found = null;
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'ffx') {
        found = { root: dir, version: typeof pkg.version === 'string' ? pkg.version : 'unknown' };
        return found;
      }
    } catch {
      // No (readable) package.json here; keep walking up.
    }
    if (dirname(dir) === dir) return found;
  }
}
