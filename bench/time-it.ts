// The benchmarks' timer.

/** Milliseconds per call of `fn`, after two warm-up calls, over at least `minMs`. */
export function timeIt(fn: () => void, minMs: number): number {
  fn(); // warm-up: kernels compiled, buffers allocated
  fn();
  let reps = 0;
  const t0 = performance.now();
  do {
    fn();
    reps++;
  } while (performance.now() - t0 < minMs);
  return (performance.now() - t0) / reps;
}
