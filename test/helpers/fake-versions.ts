// Module hooks (node:module register) for a child process that pretends a package is another
// release: importing a listed package from ESM gives its real exports with some replaced, e.g.
// { '@tensorflow/tfjs-backend-wasm': { version_wasm: '4.99.0' } }. Only ESM imports see the
// fakes; the packages' own require() calls load the real thing, so tfjs still works.
//
//   register(FAKE_VERSIONS_HOOKS, { data: fakes });   // before the first import of the package

/** This module's URL, for register(). */
export const FAKE_VERSIONS_HOOKS = import.meta.url;

type Fakes = Record<string, Record<string, string>>;
interface Resolved {
  url: string;
  format?: string | null;
}
interface Loaded {
  format: string;
  source?: string | ArrayBuffer | Uint8Array;
  shortCircuit?: boolean;
}

const MARK = 'ffx-fake-versions';
let fakes: Fakes = {};

export function initialize(data: Fakes): void {
  fakes = data;
}

export async function resolve(
  specifier: string,
  context: { parentURL?: string },
  next: (specifier: string, context: unknown) => Promise<Resolved>,
): Promise<Resolved & { shortCircuit?: boolean }> {
  const real = await next(specifier, context);
  // The wrapper's own import of the package gets the real one.
  if (!Object.hasOwn(fakes, specifier) || context.parentURL?.includes(MARK)) return real;
  const url = `${real.url}?${MARK}=${encodeURIComponent(specifier)}`;
  return { url, format: 'module', shortCircuit: true };
}

export async function load(
  url: string,
  context: unknown,
  next: (url: string, context: unknown) => Promise<Loaded>,
): Promise<Loaded> {
  const at = url.indexOf(`?${MARK}=`);
  if (at < 0) return next(url, context);
  const specifier = decodeURIComponent(url.slice(at + MARK.length + 2));
  const lines = [`export * from ${JSON.stringify(url.slice(0, at))};`];
  // A module's own export wins over a name from `export *`.
  for (const [name, value] of Object.entries(fakes[specifier] ?? {})) {
    lines.push(`export const ${name} = ${JSON.stringify(value)};`);
  }
  return { format: 'module', source: lines.join('\n'), shortCircuit: true };
}
