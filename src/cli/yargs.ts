// yargs through its CommonJS build. The ESM build's cliui replaces wrap-ansi with a stub that
// breaks help text every N characters, mid-word ("counts as fail" / "ed"); the CommonJS build
// wraps at spaces.
import { createRequire } from 'node:module';
import type yargsFactory from 'yargs';
import type { Argv, MiddlewareFunction } from 'yargs';
import type * as helpers from 'yargs/helpers';

const require = createRequire(import.meta.url);

export const yargs = require('yargs') as typeof yargsFactory;
export const { hideBin } = require('yargs/helpers') as typeof helpers;

/** What middleware sees of the yargs instance that parses a command. */
interface ParserView {
  $0: string;
  getOptions(): { key: Record<string, unknown>; alias: Record<string, string[]> };
}

/** FFX_* variables that ffx reads itself, not as a flag (the dataset cache's directory). */
const NOT_FLAGS: ReadonlySet<string> = new Set(['FFX_CACHE_DIR']);
const warned = new Set<string>();

/**
 * Flags from the environment as FFX_<FLAG>, without the surprise of yargs's strict mode, for
 * which every FFX_* variable is an argument: one that names no flag of the command (one ffx
 * reads itself, like FFX_CACHE_DIR, a flag of another command, or a typo) is left out, and
 * reported once unless ffx reads it.
 */
export function flagsFromEnv<T>(y: Argv<T>): Argv<T> {
  // yargs passes middleware its instance too (its types say only argv): the command's options.
  const leaveOut = (argv: Record<string, unknown>, parser: ParserView) => {
    const { key, alias } = parser.getOptions();
    const known = new Set([...Object.keys(key), ...Object.values(alias).flat()]);
    for (const name of Object.keys(process.env)) {
      if (!name.startsWith('FFX_')) continue;
      const kebab = name.slice(4).toLowerCase().replace(/_/g, '-');
      const camel = kebab.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
      if (known.has(kebab) || known.has(camel)) continue;
      delete argv[kebab];
      delete argv[camel];
      if (!NOT_FLAGS.has(name) && !warned.has(name)) {
        warned.add(name);
        process.stderr.write(`warning: ${name} names no flag of ${parser.$0}: ignored\n`);
      }
    }
  };
  return y.env('FFX').middleware(leaveOut as unknown as MiddlewareFunction<T>, true);
}
