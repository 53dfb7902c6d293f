// The coordinator's side of a distributed run: registers the stages, hands out the config and
// topology, feeds the first stage, and collects what stages report. A stage that stops
// heartbeating fails the run with an error that names its layer, instead of a hang.
import { hostname } from 'node:os';
import { Pull, Router } from 'zeromq';
import type { RunConfig } from '../config/config.js';
import type { ModelState } from '../checkpoint/checkpoint-file.js';
import { layerTensors } from '../core/ff-network.js';
import { FfxError, addressError, isErrorCode, type ErrorCode } from '../errors.js';
import type { CoordinatorMetrics } from '../metrics/index.js';
import { isProtocolError } from '../transport/errors.js';
import {
  PROTOCOL_VERSION,
  decodeControl,
  encodeControl,
  encodeData,
  type DataHeaderInit,
  type ControlMessage,
  type HelloMessage,
  type ResultMessage,
} from '../transport/wire.js';
import { SerialSender, closeAll, dataPush } from '../transport/sockets.js';
import type { Push } from 'zeromq';

export class ClusterError extends FfxError {
  /** 1-based layers concerned, when the error is about particular stages. */
  readonly layers: number[];
  constructor(code: ErrorCode, message: string, layers: number[] = []) {
    super(code, message);
    this.layers = layers;
  }
}

export interface ClusterOptions {
  /** Control endpoint to bind, e.g. tcp://0.0.0.0:5555. */
  bind: string;
  /** Host stages use to reach this coordinator's results socket (default: from `bind`). */
  advertiseHost?: string;
  /** How long to wait for every stage to say hello and ready. */
  registerTimeoutMs: number;
  /** A stage silent for this long (no heartbeat, no result) has failed. */
  heartbeatTimeoutMs: number;
  log: (line: string) => void;
  metrics?: CoordinatorMetrics;
  /** Aborting it fails the run with its reason (e.g. on SIGINT): every wait rejects at once. */
  signal?: AbortSignal;
}

interface StageInfo {
  hello: HelloMessage;
  identity: Buffer;
  lastSeen: number;
  ready: boolean;
}

type Listener = (msg: ResultMessage) => void;

export class Cluster {
  readonly numLayers: number;
  readonly stages = new Map<number, StageInfo>();
  readonly run: string;
  private readonly router = new Router({ linger: 500 });
  private readonly routerOut = new SerialSender(this.router);
  private readonly results = new Pull({ linger: 0 });
  private feed: Push | null = null;
  private readonly listeners = new Set<Listener>();
  private watchdog: NodeJS.Timeout | null = null;
  private failure: Error | null = null;
  private readonly failureWaiters = new Set<(err: Error) => void>();
  private readonly onAbort = () => this.fail(this.opts.signal!.reason as Error);
  private closed = false;
  private readonly opts: ClusterOptions;

  constructor(numLayers: number, run: string, opts: ClusterOptions) {
    this.numLayers = numLayers;
    this.run = run;
    this.opts = opts;
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    if (opts.signal?.aborted) this.onAbort();
  }

  /**
   * Binds, waits for all stages, sends them the run's config (and, resuming, each its layer's
   * part of the checkpoint); resolves when all are ready.
   */
  async start(cfg: RunConfig, mode: 'train' | 'eval', state?: ModelState): Promise<void> {
    const { opts } = this;
    opts.metrics?.setStagesSource(() => ({
      expected: this.numLayers,
      registered: this.stages.size,
      up: [...this.stages.values()].filter(
        (s) => Date.now() - s.lastSeen <= opts.heartbeatTimeoutMs,
      ).length,
    }));
    await this.router.bind(opts.bind).catch((err: unknown) => {
      throw addressError(err, opts.bind, 'coordinator: cannot bind its control socket');
    });
    const controlEndpoint = this.router.lastEndpoint ?? opts.bind;
    const host = opts.advertiseHost ?? hostOf(controlEndpoint);
    await this.results.bind(
      `tcp://${host === '127.0.0.1' || host === 'localhost' ? host : '0.0.0.0'}:*`,
    );
    const resultsEndpoint = (this.results.lastEndpoint ?? '').replace('0.0.0.0', host);
    opts.log(
      `coordinator: control ${controlEndpoint}, results ${resultsEndpoint}; waiting for ${this.numLayers} stages`,
    );
    void this.controlLoop();
    void this.resultsLoop();

    await this.until(() => this.stages.size === this.numLayers, {
      ms: opts.registerTimeoutMs,
      error: () =>
        new ClusterError(
          'CLUSTER_MISSING_STAGES',
          `no hello from layer ${this.missing().join(', ')} within ${opts.registerTimeoutMs / 1000}s ` +
            `(start them with: ffx-stage --layer N --coordinator ${controlEndpoint.replace('0.0.0.0', hostname())})`,
          this.missing(),
        ),
    });
    for (let layer = 1; layer <= this.numLayers; layer++) {
      const st = this.stages.get(layer)!;
      const next = layer < this.numLayers ? this.stages.get(layer + 1)!.hello.endpoint : null;
      await this.routerOut.send([
        st.identity,
        encodeControl({
          type: 'config',
          run: this.run,
          layer,
          numLayers: this.numLayers,
          model: cfg.model,
          optimizer: cfg.optimizer,
          seed: cfg.seed,
          next,
          results: resultsEndpoint,
          mode,
          state: state ? Object.fromEntries(layerTensors(state.tensors, layer - 1)) : {},
          optimizerStep: state?.optimizerSteps[layer - 1] ?? 0,
        }),
      ]);
    }
    await this.until(() => [...this.stages.values()].every((s) => s.ready), {
      ms: opts.registerTimeoutMs,
      error: () => {
        const notReady = [...this.stages.entries()].filter(([, s]) => !s.ready).map(([l]) => l);
        return new ClusterError(
          'CLUSTER_NOT_READY',
          `layer ${notReady.join(', ')} did not get ready`,
          notReady,
        );
      },
    });
    this.feed = dataPush();
    this.feed.connect(this.stages.get(1)!.hello.endpoint);
    this.watchdog = setInterval(
      () => this.checkHeartbeats(),
      Math.min(500, opts.heartbeatTimeoutMs / 4),
    );
    for (const [layer, s] of [...this.stages.entries()].sort((a, b) => a[0] - b[0])) {
      opts.log(
        `coordinator: layer ${layer} ready on ${s.hello.host} pid ${s.hello.pid} (${s.hello.backend}) at ${s.hello.endpoint}`,
      );
    }
  }

  /** Sends one data message to the first stage; waits while the pipeline is full (backpressure). */
  async send(header: DataHeaderInit, tensors: Float32Array[]): Promise<void> {
    await this.guard(this.feed!.send(encodeData(header, tensors)));
  }

  /** Calls `fn` with every result message until the returned function is called. */
  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Resolves once `done()` is true (checked after each message), or rejects if the run fails,
   * or with `timeout.error()` after `timeout.ms`.
   */
  async until(done: () => boolean, timeout?: { ms: number; error: () => Error }): Promise<void> {
    if (done()) return;
    let unsubscribe = () => {};
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<void>((resolve, reject) => {
      const check = () => {
        if (done()) resolve();
      };
      // Progress arrives as results, or (registration) on the control socket.
      const unsubscribeResults = this.subscribe(check);
      this.controlChecks.add(check);
      unsubscribe = () => {
        unsubscribeResults();
        this.controlChecks.delete(check);
      };
      if (timeout) timer = setTimeout(() => reject(timeout.error()), timeout.ms);
    });
    try {
      await this.guard(wait);
    } finally {
      unsubscribe();
      clearTimeout(timer);
    }
  }

  private readonly controlChecks = new Set<() => void>();

  /** Rejects with the cluster's failure if one happens before `p` settles. */
  private async guard<T>(p: Promise<T>): Promise<T> {
    if (this.failure) throw this.failure;
    let reject: (err: Error) => void = () => {};
    const failed = new Promise<never>((_, r) => (reject = r));
    this.failureWaiters.add(reject);
    try {
      return await Promise.race([p, failed]);
    } finally {
      // One waiter per pending call, not one per call ever made.
      this.failureWaiters.delete(reject);
    }
  }

  /** Fails the run: every pending wait, and every later one, rejects with `err`. */
  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const w of this.failureWaiters) w(err);
    this.failureWaiters.clear();
  }

  private missing(): number[] {
    const out: number[] = [];
    for (let l = 1; l <= this.numLayers; l++) if (!this.stages.has(l)) out.push(l);
    return out;
  }

  private checkHeartbeats(): void {
    const now = Date.now();
    for (const [layer, s] of this.stages) {
      if (now - s.lastSeen > this.opts.heartbeatTimeoutMs) {
        if (!this.failure) this.opts.metrics?.onStageLost(layer);
        this.fail(
          new ClusterError(
            'CLUSTER_STAGE_LOST',
            `layer ${layer} (pid ${s.hello.pid} on ${s.hello.host}) stopped answering: no heartbeat for ` +
              `${((now - s.lastSeen) / 1000).toFixed(1)}s`,
            [layer],
          ),
        );
      }
    }
  }

  private async controlLoop(): Promise<void> {
    while (!this.closed) {
      let identity: Buffer;
      let frame: Buffer | undefined;
      try {
        [identity, frame] = (await this.router.receive()) as [Buffer, Buffer?];
      } catch {
        return; // closed
      }
      let msg;
      try {
        msg = decodeControl(frame ?? Buffer.alloc(0));
      } catch (err) {
        if (!isProtocolError(err)) throw err;
        this.logOnce(
          `control:${err.code}`,
          `ignored a bad control message (${err.code}): ${err.message}`,
        );
        continue;
      }
      if (msg.type === 'hello') {
        const problem = this.checkHello(msg);
        if (problem) {
          this.opts.log(`coordinator: refused a stage: ${problem}`);
          await this.routerOut.send([
            identity,
            encodeControl({
              type: 'error',
              run: this.run,
              layer: msg.layer,
              code: 'STAGE_REFUSED',
              message: problem,
            }),
          ]);
          continue;
        }
        this.stages.set(msg.layer, { hello: msg, identity, lastSeen: Date.now(), ready: false });
        this.opts.log(
          `coordinator: hello from layer ${msg.layer} (${msg.host}, pid ${msg.pid}, ${msg.backend})`,
        );
      } else if (msg.type === 'ready' || msg.type === 'heartbeat') {
        const s = this.stages.get(msg.layer);
        if (s) {
          s.lastSeen = Date.now();
          if (msg.type === 'ready' && msg.run === this.run) s.ready = true;
        }
      } else if (msg.type === 'error' && msg.run === this.run) {
        const code = isErrorCode(msg.code) ? msg.code : 'CLUSTER_STAGE_ERROR';
        this.fail(new ClusterError(code, `layer ${msg.layer}: ${msg.message}`, [msg.layer]));
      }
      for (const check of this.controlChecks) check();
    }
  }

  private readonly logged = new Set<string>();

  /** Logs a line once per key: junk on a socket must not flood the log. */
  private logOnce(key: string, line: string): void {
    if (this.logged.has(key)) return;
    this.logged.add(key);
    this.opts.log(`coordinator: ${line} (logged once)`);
  }

  private checkHello(msg: HelloMessage): string | null {
    if (msg.version !== PROTOCOL_VERSION) {
      return `layer ${msg.layer} speaks protocol ${msg.version}, this coordinator ${PROTOCOL_VERSION}`;
    }
    if (!Number.isInteger(msg.layer) || msg.layer < 1 || msg.layer > this.numLayers) {
      return `layer ${msg.layer} is not in this run (layers 1..${this.numLayers})`;
    }
    const existing = this.stages.get(msg.layer);
    if (existing && existing.hello.pid !== msg.pid) {
      return `layer ${msg.layer} is already served by pid ${existing.hello.pid} on ${existing.hello.host}`;
    }
    return null;
  }

  private async resultsLoop(): Promise<void> {
    while (!this.closed) {
      let frame: Buffer | undefined;
      try {
        [frame] = await this.results.receive();
      } catch {
        return;
      }
      let msg;
      try {
        msg = decodeControl(frame!);
      } catch (err) {
        if (!isProtocolError(err)) throw err;
        this.logOnce(`result:${err.code}`, `ignored a bad result (${err.code}): ${err.message}`);
        continue;
      }
      if (!isResult(msg) || msg.run !== this.run || !this.stages.has(msg.layer)) {
        this.logOnce(
          `result:${msg.type}`,
          `ignored a '${msg.type}' on the results socket, not of this run`,
        );
        continue;
      }
      this.stages.get(msg.layer)!.lastSeen = Date.now(); // a busy stage's results are signs of life
      if (msg.type === 'rejected') {
        this.opts.metrics?.onRejected(msg.layer, msg.code);
        // A batch that a stage refused never completes: fail now rather than wait forever.
        this.fail(
          new ClusterError(
            'CLUSTER_MESSAGE_REJECTED',
            `layer ${msg.layer} rejected a message (${msg.code}): ${msg.reason}`,
            [msg.layer],
          ),
        );
      }
      for (const fn of this.listeners) {
        try {
          fn(msg);
        } catch (err) {
          this.fail(err as Error); // a listener refused the result: the run cannot go on
        }
      }
    }
  }

  /**
   * After a failure, tells every stage to exit (`stop`) or to drop the run and wait for the
   * next coordinator (`abort`); best effort.
   */
  async stopAll(reason: string, exit: boolean): Promise<void> {
    const msg = encodeControl(
      exit ? { type: 'stop', reason } : { type: 'abort', run: this.run, reason },
    );
    for (const s of this.stages.values()) {
      await this.routerOut.send([s.identity, msg]).catch(() => {});
    }
  }

  close(): void {
    this.closed = true;
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    if (this.watchdog) clearInterval(this.watchdog);
    closeAll(this.feed, this.results, this.router);
  }
}

function hostOf(endpoint: string): string {
  const m = /^tcp:\/\/([^:]+|\[[^\]]+\]):/.exec(endpoint);
  const host = m?.[1] ?? '127.0.0.1';
  return host === '0.0.0.0' || host === '*' ? hostname() : host;
}

const RESULT_TYPES: ReadonlySet<string> = new Set<ResultMessage['type']>([
  'stats',
  'goodness',
  'ack',
  'rejected',
  'weights',
]);

function isResult(msg: ControlMessage): msg is ResultMessage {
  return RESULT_TYPES.has(msg.type);
}
