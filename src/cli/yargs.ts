// yargs through its CommonJS build. The ESM build's cliui replaces wrap-ansi with a stub that
// breaks help text every N characters, mid-word ("counts as fail" / "ed"); the CommonJS build
// wraps at spaces.
import { createRequire } from 'node:module';
import type yargsFactory from 'yargs';
import type { Argv, MiddlewareFunction } from 'yargs';
import type * as helpers from 'yargs/helpers';
import { MAX_WASM_THREADS } from '../backend/backend.js';
import { UsageError } from '../errors.js';

const require = createRequire(import.meta.url);

export const yargs = require('yargs') as typeof yargsFactory;
export const { hideBin } = require('yargs/helpers') as typeof helpers;

/** What middleware sees of the yargs instance that parses a command. */
interface ParserView {
  $0: string;
  getOptions(): {
    key: Record<string, unknown>;
    alias: Record<string, string[]>;
    number: string[];
  };
}

/**
 * A parser for an ffx command line `args`: flags from the environment (flagsFromEnv), and a
 * number flag given something that is not one, or an integer flag of INT_FLAGS out of its
 * range, is a usage error (exit 2) that names the flag and what it was given.
 */
export function ffxYargs(args: string[]): Argv {
  const check = (argv: Record<string, unknown>, parser: ParserView) => {
    const { number, alias } = parser.getOptions();
    for (const flag of number) {
      const value = argv[flag];
      if (value === undefined) continue;
      const names = [flag, ...(alias[flag] ?? [])];
      const what = () => JSON.stringify(given(args, names) ?? value);
      if (typeof value !== 'number' || Number.isNaN(value)) {
        throw new UsageError(`--${flag} must be a number; got ${what()}`);
      }
      const range = INT_FLAGS[flag];
      if (range && !(Number.isInteger(value) && value >= range[0] && value <= range[1])) {
        throw new UsageError(
          `--${flag} must be an integer from ${range[0]} to ${range[1]}; got ${what()}`,
        );
      }
    }
  };
  return flagsFromEnv(yargs(args)).middleware(
    check as unknown as MiddlewareFunction,
    true,
  ) as unknown as Argv;
}

/** Integer flags the command line itself bounds (config values are checked by config.ts). */
const INT_FLAGS: Readonly<Record<string, readonly [number, number]>> = {
  threads: [1, MAX_WASM_THREADS],
  'stage-threads': [1, MAX_WASM_THREADS],
  'metrics-port': [0, 65_535],
  'max-restarts': [0, 1_000_000],
  'max-recoveries': [0, 1_000_000],
};

/** The text a flag was given on the command line (the last one), or in FFX_<FLAG>. */
function given(args: readonly string[], names: readonly string[]): string | undefined {
  for (let i = args.length - 1; i >= 0; i--) {
    for (const name of names) {
      const flag = name.length === 1 ? `-${name}` : `--${name}`;
      if (args[i] === flag) return args[i + 1];
      if (args[i]!.startsWith(`${flag}=`)) return args[i]!.slice(flag.length + 1);
    }
  }
  return process.env[`FFX_${names[0]!.toUpperCase().replace(/-/g, '_')}`];
}

/** FFX_* variables that ffx reads itself, not as a flag (the dataset cache, ffx-blas's BLAS). */
const NOT_FLAGS: ReadonlySet<string> = new Set(['FFX_CACHE_DIR', 'FFX_BLAS_LIB']);
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
