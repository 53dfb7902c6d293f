// yargs through its CommonJS build. The ESM build's cliui replaces wrap-ansi with a stub that
// breaks help text every N characters, mid-word ("counts as fail" / "ed"); the CommonJS build
// wraps at spaces.
import { createRequire } from 'node:module';
import type yargsFactory from 'yargs';
import type * as helpers from 'yargs/helpers';

const require = createRequire(import.meta.url);

export const yargs = require('yargs') as typeof yargsFactory;
export const { hideBin } = require('yargs/helpers') as typeof helpers;
