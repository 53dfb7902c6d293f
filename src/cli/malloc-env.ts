/**
 * glibc serves allocations over 128 KiB with fresh mmaps, so every message buffer (a batch of
 * activations is MBs) costs page faults and zeroing in the kernel: ~10% of a stage's time, on
 * cores the stages need. A high threshold keeps them in the reusable heap (measured: the
 * 2-stage pipeline goes from 1.62x to 1.71x a single process). The user's own settings win;
 * the README shows them for stages started by hand.
 */
export const PIPELINE_MALLOC_ENV = {
  MALLOC_MMAP_THRESHOLD_: String(1024 ** 3),
  MALLOC_TRIM_THRESHOLD_: String(4 * 1024 ** 3),
};
