// The process settings ffx-launch gives the pipeline's processes (the coordinator and every
// stage). The README shows them for processes started by hand, and the deploy files carry them.

/**
 * glibc serves allocations over 128 KiB with fresh mmaps, so every message buffer (a batch of
 * activations is MBs) costs page faults and zeroing in the kernel: ~10% of a stage's time, on
 * cores the stages need. A high threshold keeps them in the reusable heap (measured: the
 * 2-stage pipeline goes from 1.62x to 1.71x a single process). The user's own settings win.
 */
export const PIPELINE_MALLOC_ENV = {
  MALLOC_MMAP_THRESHOLD_: String(1024 ** 3),
  MALLOC_TRIM_THRESHOLD_: String(4 * 1024 ** 3),
};

/**
 * V8's heap settings. A process of the pipeline holds ~25 MB of JS objects, and V8 sizes the
 * limit that starts its next full collection from that (about twice it), and collects again
 * whenever the process looks idle (the memory reducer): a stage that waits for its next batch
 * looks idle many times a second. Each full collection marks the whole heap on every core, so
 * the 2-stage pipeline of 784-1000-1000 at batch 100 made 30-50 of them a process an epoch,
 * about 3.5 s of CPU on the 2 cores that run the stages' steps. A first limit of 128 MB and no
 * memory reducer leave the collections that received messages ask for (zeromq hands each one
 * over as external memory, freed when collected: 14-17 an epoch in the last stage, 2-4 in
 * the others), and the pipeline 5-16% faster (3 pairs of runs). V8 reads them at start-up
 * only, so they are options of `node` itself (NODE_OPTIONS does not take them).
 */
export const PIPELINE_NODE_FLAGS: readonly string[] = [
  '--initial-heap-size=128',
  '--no-memory-reducer',
];
