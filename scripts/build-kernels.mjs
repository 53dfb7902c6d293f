/* global WebAssembly */
// Assembles src/core/kernels/*.wat into dist/src/core/kernels/*.wasm (run by `npm run build`).
// Each kernel module imports the tfjs wasm backend's memory, whose type differs between the
// single-threaded backend (plain memory) and the threaded one (shared, max 4 GiB), so every
// .wat is built twice: NAME.wasm and NAME-shared.wasm.
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src', 'core', 'kernels');
const out = join(root, 'dist', 'src', 'core', 'kernels');
const wabt = await wabtInit();
mkdirSync(out, { recursive: true });
for (const file of readdirSync(src).filter((f) => f.endsWith('.wat'))) {
  const text = readFileSync(join(src, file), 'utf8');
  for (const [suffix, limits] of [
    ['', ''],
    ['-shared', '65536 shared'],
  ]) {
    const mod = wabt.parseWat(file, text.replace('MEMORY_LIMITS', limits), {
      simd: true,
      threads: true,
    });
    const { buffer } = mod.toBinary({});
    // wabt.js's validate() rejects shared memories whatever the features say; V8 validates the
    // module when it is compiled, which the build does here.
    new WebAssembly.Module(buffer);
    writeFileSync(join(out, file.replace(/\.wat$/, `${suffix}.wasm`)), buffer);
    mod.destroy();
  }
}
