// The backends the numeric tests run on: wasm always, and wasm+blas (the products on the
// machine's BLAS, through ffx-blas) where ffx-blas was built and finds a CBLAS library. CI sets
// FFX_REQUIRE_BLAS=1, and there a missing native path fails the tests instead of leaving them
// to wasm alone.
import { createRequire } from 'node:module';

let blas: { ok: boolean; why: string } | undefined;

/** Whether ffx-blas loads here, and if not, why. */
export function blasLoads(): { ok: boolean; why: string } {
  if (blas) return blas;
  try {
    createRequire(import.meta.url)('ffx-blas');
    blas = { ok: true, why: '' };
  } catch (err) {
    blas = { ok: false, why: (err as Error).message.split('\n')[0]! };
  }
  if (!blas.ok && process.env.FFX_REQUIRE_BLAS === '1') {
    throw new Error(`FFX_REQUIRE_BLAS=1, but ffx-blas does not load: ${blas.why}`);
  }
  return blas;
}

/** 'wasm', and 'wasm+blas' where it loads. */
export function testBackends(): ('wasm' | 'wasm+blas')[] {
  return blasLoads().ok ? ['wasm', 'wasm+blas'] : ['wasm'];
}
