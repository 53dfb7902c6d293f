// The coordinator's side of a distributed run: registers the stages, hands out the config and
// topology, feeds the first stage, and collects what stages report. Its phase says where it is:
//
//   registering --every stage ready--> running --a stage lost or stalled, an error--> failed
//   failed --register() again (a rollback)--> recovering --every stage ready--> running
//   (any phase) --close()--> closed
//
// While running it watches every stage (liveness.ts): one it no longer hears from is lost, one
// that heartbeats but makes no progress with work outstanding is stalled. Either fails the
// attempt with an error that names the layer; the executor may then start another attempt
// (register()) with the stages that are there, replacements included.
import { hostname } from 'node:os';
import { Router, type Push } from 'zeromq';
import type { RunConfig } from '../config/config.js';
import type { ModelState } from '../checkpoint/checkpoint-file.js';
import { layerTensors } from '../core/ff-network.js';
import { modelWidths, type LayerSpec } from '../core/model-shape.js';
import { FfxError, addressError, isErrorCode, type ErrorCode } from '../errors.js';
import { RateLimitedLog, plural } from '../log.js';
import type { CoordinatorMetrics, DropReason } from '../metrics/index.js';
import { Liveness } from './liveness.js';
import { inRun, layersOf, rangeLabel, type LayerRange } from '../transport/layer-range.js';
import { UNREGISTERED_MAX_BYTES } from '../transport/bounds.js';
import { isProtocolError } from '../transport/errors.js';
import {
  MAX_REPLICAS,
  PROTOCOL_VERSION,
  decodeControl,
  encodeControl,
  encodeData,
  isResult,
  type DataHeaderInit,
  type ControlMessage,
  type HelloMessage,
  type ResultMessage,
} from '../transport/wire.js';
import { LINGER_MS, SerialSender, closeAll, dataPush, handshake } from '../transport/sockets.js';
import {
  ZapHandler,
  curveClient,
  curveServer,
  helloProof,
  mayServe,
  watchHandshakes,
  type KeyPair,
  type TrustedKey,
} from '../transport/curve.js';

/** Failures of a stage that another attempt, with that stage back or replaced, gets past. */
const RECOVERABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'CLUSTER_STAGE_LOST',
  'CLUSTER_STAGE_STALLED',
  'STAGE_STOPPED',
]);

export class ClusterError extends FfxError {
  /** 1-based layers concerned, when the error is about particular stages. */
  readonly layers: number[];
  constructor(code: ErrorCode, message: string, layers: number[] = []) {
    super(code, message);
    this.layers = layers;
  }

  /** Whether training can go on after this, from a checkpoint, with the stages back. */
  get recoverable(): boolean {
    return RECOVERABLE.has(this.code);
  }
}

export interface ClusterOptions {
  /** Control endpoint to bind, e.g. tcp://0.0.0.0:5555. */
  bind: string;
  /**
   * The largest message a stage may send (a layer's weights and optimizer state, an eval
   * batch's goodness): ZeroMQ drops a connection that sends more, unread.
   */
  maxMessageBytes: number;
  /** How long to wait for every stage to say hello and ready. */
  registerTimeoutMs: number;
  /**
   * A stage silent for this long (no heartbeat, no result) is lost; the timeout grows by twice
   * the longest silence the stage showed while healthy (a slow or congested link).
   */
  heartbeatTimeoutMs: number;
  /** A stage with work outstanding and no result for this long is stalled. */
  progressTimeoutMs: number;
  log: (line: string) => void;
  metrics?: CoordinatorMetrics;
  /** Aborting it fails the run with its reason (e.g. on SIGINT): every wait rejects at once. */
  signal?: AbortSignal;
  /**
   * CurveZMQ: this coordinator's key pair and the keys it trusts. Without, sockets are plain
   * (for loopback, or --insecure).
   */
  security?: { keys: KeyPair; trusted: TrustedKey[] };
}

/** A registered stage: one process, serving the layers its hello names. */
interface StageInfo {
  hello: HelloMessage;
  identity: Buffer;
  ready: boolean;
}

/** The layers a hello names. */
const rangeOf = (hello: HelloMessage): LayerRange => ({ first: hello.layer, last: hello.last });

/**
 * The liveness clock of a stage's replica r > 1 (the primary's are its layers'): numbers past
 * any layer's.
 */
const REPLICA_SLOT = 1_000_000;
const replicaSlot = (first: number, replica: number) => replica * REPLICA_SLOT + first;
/** "layers 2-3" or "layers 2-3 replica 2/3": a stage process named in a line. */
const processLabel = (h: HelloMessage) =>
  rangeLabel(rangeOf(h)) + (h.replicas > 1 ? ` replica ${h.replica}/${h.replicas}` : '');

export type ClusterPhase = 'registering' | 'running' | 'recovering' | 'failed' | 'closed';

type Listener = (msg: ResultMessage) => void;

/** A Cluster that discovers what the stages hold (heldConfig) takes hellos of any layer up to this. */
export const DISCOVERY_LAYERS = 1024;

/**
 * What a hello says its stage holds, if it says so in a usable form (it comes from the
 * network): the training run (without attempt suffixes: `a1b2c3d4.2~1` -> `a1b2c3d4`), its
 * model's layer widths, and its config (checked as a config file's by whoever uses it).
 */
function heldOf(
  hello: HelloMessage,
): { run: string; widths: number[]; config: unknown } | undefined {
  const h = hello.holds as { run?: unknown; config?: unknown } | null;
  if (typeof h !== 'object' || h === null || typeof h.run !== 'string') return undefined;
  const model = (h.config as { model?: unknown } | null | undefined)?.model;
  const layers = (model as { layers?: unknown } | null | undefined)?.layers;
  if (!Array.isArray(layers) || layers.length < 2 || layers.length > DISCOVERY_LAYERS + 1)
    return undefined;
  let widths: number[];
  try {
    widths = modelWidths(layers as LayerSpec[]);
  } catch {
    return undefined;
  }
  const usable = widths.every((w) => Number.isSafeInteger(w) && w > 0);
  return usable ? { run: h.run.split(/[.~]/)[0]!, widths, config: h.config } : undefined;
}

export class Cluster {
  readonly numLayers: number;
  /** Each layer's stage: a stage of several layers is there under each of them. */
  readonly stages = new Map<number, StageInfo>();
  /** The replicas (2, 3, ...) of stages with replicas, by replicaSlot. */
  private readonly replicas = new Map<number, StageInfo>();
  /** The current attempt's run id: every message of the attempt carries it. */
  run: string;
  private readonly router: Router;
  private readonly routerOut: SerialSender;
  private controlEndpoint = '';
  private phaseNow: ClusterPhase = 'registering';
  /** Attempts registered so far: the first registers, every later one recovers. */
  private attempts = 0;
  private feed: Push | null = null;
  private readonly listeners = new Set<Listener>();
  private readonly liveness: Liveness;
  private watchdog: NodeJS.Timeout | null = null;
  /** What failed the current attempt: every wait of the attempt rejects with it. */
  private readonly failure = new FailureLatch();
  private readonly onAbort = () => this.fail(this.opts.signal!.reason as Error);
  private readonly opts: ClusterOptions;
  private readonly dropLog: RateLimitedLog;
  private zap: ZapHandler | null = null;
  /** Connections refused for their keys (or for having none): named when stages are missing. */
  private refusedKeys = 0;
  private readonly controlChecks = new Set<() => void>();

  constructor(numLayers: number, run: string, opts: ClusterOptions) {
    this.numLayers = numLayers;
    this.run = run;
    this.opts = opts;
    this.dropLog = new RateLimitedLog(opts.log);
    this.liveness = new Liveness(numLayers, opts);
    this.router = new Router({ linger: LINGER_MS, maxMessageSize: opts.maxMessageBytes });
    if (opts.security) curveServer(this.router, opts.security.keys, 'control');
    this.routerOut = new SerialSender(this.router);
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    if (opts.signal?.aborted) this.onAbort();
    opts.metrics?.setStagesSource(() => ({
      expected: this.numLayers,
      registered: this.stages.size,
      up: [...this.stages.keys()].filter((layer) => !this.liveness.isSilent(layer)).length,
    }));
    opts.metrics?.setStageAgesSource(() =>
      Array.from({ length: this.numLayers }, (_, i) => ({
        heartbeat: this.liveness.silenceMs(i + 1) / 1000,
        progress: this.liveness.progressMs(i + 1) / 1000,
      })),
    );
  }

  /** The backend each layer's stage named in its hello ('?' for a layer without a stage). */
  backends(): string[] {
    return Array.from(
      { length: this.numLayers },
      (_, i) => this.stages.get(i + 1)?.hello.backend ?? '?',
    );
  }

  /** Where the cluster is: see the top of this file. */
  get phase(): ClusterPhase {
    return this.phaseNow;
  }

  /** Binds the control socket and starts reading it. */
  async bind(): Promise<void> {
    const { opts } = this;
    const security = opts.security;
    if (security) {
      // Any stage key may connect; which layer it may serve is checked at its hello.
      this.zap = await ZapHandler.start(
        (_, key) => security.trusted.some((t) => t.key === key && t.name.startsWith('stage')),
        (_, key, address) => {
          this.refusedKeys++;
          this.drop(
            'unauthenticated',
            `a connection from ${address} whose key ${key ?? '(none)'} is not trusted as a ` +
              "stage (not in --trust as 'stage' or 'stage-N')",
            'zap',
          );
        },
      );
    }
    // A peer that fails the security handshake never reaches ZAP, nor this code: say why.
    watchHandshakes(this.router, (kind) => {
      if (kind === 'auth') return; // the ZAP refusal above said it, naming the key
      this.refusedKeys++;
      this.drop(
        'unauthenticated',
        security
          ? 'a connection that failed the CurveZMQ handshake: a peer without keys (give it ' +
              '--key and --trust), one that expects another coordinator key, or not ZeroMQ'
          : 'a connection that failed the ZeroMQ handshake: a peer with CurveZMQ keys (this ' +
              'coordinator runs without --key and --trust), or not ZeroMQ',
        `handshake:${kind}`,
      );
    });
    await this.router.bind(opts.bind).catch((err: unknown) => {
      throw addressError(err, opts.bind, 'coordinator: cannot bind its control socket');
    });
    this.controlEndpoint = this.router.lastEndpoint ?? opts.bind;
    opts.log(
      `coordinator: control ${this.controlEndpoint}; ` +
        (this.numLayers === DISCOVERY_LAYERS
          ? 'asking the stages what they hold'
          : `waiting for ${this.numLayers} stages`),
    );
    void this.controlLoop();
    this.watchdog = setInterval(
      () => this.watch(),
      Math.min(500, opts.heartbeatTimeoutMs / 4, opts.progressTimeoutMs / 4),
    );
  }

  /**
   * One attempt: waits for every layer's stage, sends each the config of run `run` (and its
   * layer's part of `state`), resolves when all are ready and the feed is connected. A stage
   * that goes silent meanwhile is dropped and the round starts over (`<run>~1`, ...) with its
   * replacement, since its neighbour's config names its endpoint.
   */
  async register(
    cfg: RunConfig,
    mode: 'train' | 'eval',
    state: ModelState | undefined,
    run: string,
    timeoutMs = this.opts.registerTimeoutMs,
  ): Promise<void> {
    if (!(this.opts.signal?.aborted ?? false)) this.failure.reset();
    this.attempts++;
    if (!this.failure.error) this.phaseNow = this.attempts === 1 ? 'registering' : 'recovering';
    closeAll(this.feed);
    this.feed = null;
    this.liveness.resetProgress();
    const deadline = Date.now() + timeoutMs;
    const left = () => Math.max(0, deadline - Date.now());
    const endpoint = this.controlEndpoint.replace('0.0.0.0', hostname());
    for (let round = 0; ; round++) {
      this.run = round === 0 ? run : `${run}~${round}`;
      for (const s of [...this.stages.values(), ...this.replicas.values()]) s.ready = false;
      // Evaluation is the primaries' alone: replicas only share training steps.
      const replicas = mode === 'train';
      const missingReplicas = () => (replicas ? this.missingReplicas() : '');
      await this.until(() => this.stages.size === this.numLayers && missingReplicas() === '', {
        ms: left(),
        error: () =>
          new ClusterError(
            'CLUSTER_MISSING_STAGES',
            (this.missing().length > 0
              ? `no hello from layer ${this.missing().join(', ')} within ${timeoutMs / 1000}s`
              : `no hello from ${missingReplicas()} within ${timeoutMs / 1000}s`) +
              (this.refusedKeys > 0
                ? `; ${plural(this.refusedKeys, 'connection')} failed the key check meanwhile ` +
                  "(above): if the stages run, check their --key and --trust against this coordinator's"
                : ` (start them with: ffx-stage --layer N --coordinator ${endpoint}` +
                  (this.opts.security ? ' --key STAGE.key --trust trusted.pub)' : ')')),
            this.missing(),
          ),
      });
      // Downstream first, each ready before the next: a stage raises its message-size limit
      // when it takes its config, before its upstream (configured next) connects to it.
      // A stage's replicas before it: the primary connects to them once configured.
      const sentTo = new Map<StageInfo, Buffer>();
      const silent = () =>
        [...this.stages.keys(), ...this.replicas.keys()].filter((l) => this.liveness.isSilent(l));
      const changed = () =>
        silent().length > 0 ||
        [...sentTo].some(([st, id]) => !st.identity.equals(id) || !this.isRegistered(id));
      for (const primary of this.stageList().reverse()) {
        for (const st of [...(replicas ? this.replicasOf(primary) : []), primary]) {
          if (changed()) break;
          sentTo.set(st, st.identity);
          await this.routerOut.send([st.identity, this.configFor(st, primary, cfg, mode, state)]);
          await this.until(() => st.ready || changed(), {
            ms: left(),
            error: () =>
              new ClusterError(
                'CLUSTER_NOT_READY',
                `${processLabel(st.hello)} did not get ready`,
                layersOf(rangeOf(st.hello)),
              ),
          });
        }
      }
      if (!changed()) break;
      const lost = silent();
      this.opts.log(
        `coordinator: layer ${lost.join(', ') || '?'} went silent or was replaced while ` +
          'registering; starting over',
      );
      for (const layer of lost) this.opts.metrics?.onStageLost(layer);
      await this.stopAll('a stage went silent while registering', false);
    }
    this.feed = dataPush();
    const first = this.stages.get(1)!.hello;
    if (this.opts.security) curveClient(this.feed, this.opts.security.keys, first.key);
    const linked = handshake(this.feed, this.opts.heartbeatTimeoutMs);
    this.feed.connect(first.endpoint);
    for (const s of this.stageList()) {
      this.opts.log(
        `coordinator: ${rangeLabel(rangeOf(s.hello))} ready on ${s.hello.host} pid ${s.hello.pid} (${s.hello.backend}) at ${s.hello.endpoint}`,
      );
    }
    // Every stage reached the next before it said ready; the coordinator reaches the first.
    if (!(await linked)) {
      throw new ClusterError(
        'CLUSTER_LINK_DOWN',
        `the coordinator cannot reach layer 1 at ${first.endpoint} within ` +
          `${this.opts.heartbeatTimeoutMs / 1000}s: the address layer 1 advertises (check its ` +
          '--advertise, and that this host can reach it)',
        [1],
      );
    }
    this.phaseNow = 'running';
  }

  private configFor(
    st: StageInfo,
    primary: StageInfo,
    cfg: RunConfig,
    mode: 'train' | 'eval',
    state: ModelState | undefined,
  ): Buffer {
    const { first, last } = rangeOf(st.hello);
    const replica = st.hello.replica;
    // A replica's only upstream and downstream is its primary.
    const next = last < this.numLayers && replica === 1 ? this.stages.get(last + 1)!.hello : null;
    const replicated = mode === 'train' && primary.hello.replicas > 1;
    const group = replicated ? [primary, ...this.replicasOf(primary)] : [];
    return encodeControl({
      type: 'config',
      run: this.run,
      layer: first,
      last,
      replica,
      replicas: replicated ? primary.hello.replicas : 1,
      replicaEndpoints: group.map((s) => s.hello.endpoint),
      replicaExchanges: group.map((s) => s.hello.exchange),
      replicaKeys: group.map((s) => s.hello.key),
      numLayers: this.numLayers,
      model: cfg.model,
      optimizer: cfg.optimizer,
      seed: cfg.seed,
      next: next?.endpoint ?? null,
      nextKey: next?.key ?? '',
      prevKey:
        replica > 1
          ? primary.hello.key
          : first > 1
            ? this.stages.get(first - 1)!.hello.key
            : (this.opts.security?.keys.publicKey ?? ''),
      batchSize: cfg.train.batchSize,
      evalBatchSize: cfg.eval.batchSize,
      shards: cfg.train.shards,
      linkTimeoutMs: this.opts.heartbeatTimeoutMs,
      mode,
      state: state
        ? Object.fromEntries(
            layersOf({ first, last }).flatMap((l) => [...layerTensors(state.tensors, l - 1)]),
          )
        : {},
      // The same for every layer of a run (checkpoint-file.ts checks it).
      optimizerStep: state?.optimizerSteps[first - 1] ?? 0,
      origin: cfg,
    });
  }

  /** Sends one data message to the first stage; waits while the pipeline is full (backpressure). */
  async send(header: DataHeaderInit, tensors: Float32Array[]): Promise<void> {
    await this.failure.guard(this.feed!.send(encodeData(header, tensors)));
    // Every stage answers a batch and a weights marker; an end or stop marker only the last.
    if (header.kind !== 'marker' || header.op === 'weights') this.liveness.sent();
  }

  /** Calls `fn` with every result message of the current attempt until the returned function is called. */
  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Resolves once `done()` is true (checked after each message), or rejects if the attempt
   * fails, or with `timeout.error()` after `timeout.ms`.
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
      await this.failure.guard(wait);
    } finally {
      unsubscribe();
      clearTimeout(timer);
    }
  }

  /**
   * Ends the current attempt: every stage is told to drop its run (`abort`) and wait for the
   * next config, or, with `exit`, to exit (`stop`); best effort. Lost stages are forgotten, so
   * a replacement may take their layer.
   */
  async stopAll(reason: string, exit: boolean): Promise<void> {
    const msg = encodeControl(
      exit ? { type: 'stop', reason } : { type: 'abort', run: this.run, reason },
    );
    for (const s of [...this.stageList(), ...this.replicas.values()]) {
      await this.routerOut.send([s.identity, msg]).catch(() => {});
    }
    for (const s of this.stageList()) {
      if (this.liveness.failedThisAttempt(s.hello.layer)) this.forget(s);
    }
    for (const [slot, s] of this.replicas) {
      if (this.liveness.failedThisAttempt(slot)) this.forget(s);
    }
  }

  close(): void {
    this.phaseNow = 'closed';
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    if (this.watchdog) clearInterval(this.watchdog);
    closeAll(this.feed, this.router);
    this.zap?.close();
  }

  /**
   * For an eval without a config, on a Cluster made to discover (DISCOVERY_LAYERS): the config
   * of the training run the stages' layers come from, once a stage of each layer of one run
   * (as many as that run's model has) has said hello holding its layer.
   */
  async heldConfig(timeoutMs: number): Promise<unknown> {
    let config: unknown;
    await this.until(() => (config = this.oneHeldRun()) !== undefined, {
      ms: timeoutMs,
      error: () =>
        new ClusterError(
          'CLUSTER_MISSING_STAGES',
          `no trained run whose every layer a stage holds within ${timeoutMs / 1000}s ` +
            `(${this.heldSummary()}): give the run's --config (its directory has config.json)`,
          [],
        ),
    });
    return config;
  }

  private oneHeldRun(): unknown {
    for (const { hello } of this.stages.values()) {
      const held = heldOf(hello);
      if (!held) continue;
      const whole = held.widths.slice(1).every((_, i) => {
        const h = this.stages.get(i + 1);
        const other = h && heldOf(h.hello);
        return other?.run === held.run && other.widths.join() === held.widths.join();
      });
      if (whole) return held.config;
    }
    return undefined;
  }

  /** What the stages heard from hold: "layer 1: run a1b2 784-500-500; layer 2: nothing". */
  private heldSummary(): string {
    if (this.stages.size === 0) return 'no stage said hello';
    return [...this.stages.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([layer, { hello }]) => {
        const held = heldOf(hello);
        return `layer ${layer}: ${held ? `run ${held.run} ${held.widths.join('-')}` : 'no trained layer'}`;
      })
      .join('; ');
  }

  /** Fails the attempt: every pending wait, and every later one, rejects with `err`. */
  private fail(err: Error): void {
    if (!this.failure.set(err)) return;
    if (this.phaseNow !== 'closed') this.phaseNow = 'failed';
  }

  private missing(): number[] {
    const out: number[] = [];
    for (let l = 1; l <= this.numLayers; l++) if (!this.stages.has(l)) out.push(l);
    return out;
  }

  /** While running: the liveness rule's verdict fails the attempt, naming the layer. */
  private watch(): void {
    if (this.phaseNow !== 'running') return; // registration has its own timeout
    const v = this.liveness.verdict();
    if (!v) return;
    const s = v.layer >= REPLICA_SLOT ? this.replicas.get(v.layer) : this.stages.get(v.layer);
    const layers = s ? rangeOf(s.hello) : { first: v.layer, last: v.layer };
    const who = s
      ? `${processLabel(s.hello)} (pid ${s.hello.pid} on ${s.hello.host})`
      : rangeLabel(layers);
    if (v.kind === 'lost') {
      this.opts.metrics?.onStageLost(layers.first);
      this.fail(
        new ClusterError(
          'CLUSTER_STAGE_LOST',
          `${who} stopped answering: no heartbeat for ${(v.silentMs / 1000).toFixed(1)}s`,
          layersOf(layers),
        ),
      );
    } else {
      this.opts.metrics?.onStageStalled(v.layer);
      // A replacement may take the layers, or the stage again.
      for (const layer of layersOf(layers)) this.liveness.stalled(layer);
      this.fail(
        new ClusterError(
          'CLUSTER_STAGE_STALLED',
          `${who} is alive but made no progress for ` +
            `${(v.waitedMs / 1000).toFixed(1)}s with work outstanding`,
          layersOf(layers),
        ),
      );
    }
  }

  private async controlLoop(): Promise<void> {
    while (this.phaseNow !== 'closed') {
      let identity: Buffer;
      let frame: Buffer | undefined;
      try {
        [identity, frame] = (await this.router.receive()) as [Buffer, Buffer?];
      } catch {
        return; // closed
      }
      // Only a registered stage sends more than a hello's worth (results, weights): anyone
      // else's large message is dropped unread, before decoding costs anything.
      if ((frame?.length ?? 0) > UNREGISTERED_MAX_BYTES && !this.isRegistered(identity)) {
        this.drop('foreign', 'a large message from a connection that registered no layer');
        continue;
      }
      let msg: ControlMessage;
      try {
        msg = decodeControl(frame ?? Buffer.alloc(0));
      } catch (err) {
        if (!isProtocolError(err)) throw err;
        this.drop('malformed', `a bad control message (${err.code}): ${err.message}`);
        continue;
      }
      if (msg.type === 'hello') {
        await this.onHello(msg, identity);
      } else if (msg.type === 'heartbeat') {
        await this.onHeartbeat(msg.layer, msg.token, identity);
      } else if (isResult(msg) || msg.type === 'ready' || msg.type === 'error') {
        this.onStageMessage(msg, identity);
      } else {
        this.drop('foreign', `a '${msg.type}', which only a coordinator sends`);
      }
      for (const check of this.controlChecks) check();
    }
  }

  /**
   * A message of a stage: taken only from the connection that registered its layer, and only
   * for the current attempt; anything else is dropped and counted, and never fails a run.
   */
  private onStageMessage(
    msg: ResultMessage | Extract<ControlMessage, { type: 'ready' | 'error' }>,
    identity: Buffer,
  ): void {
    const replica = this.replicaByIdentity(identity);
    const s =
      replica &&
      msg.type !== 'stats' &&
      msg.type !== 'goodness' &&
      msg.type !== 'weights' &&
      msg.type !== 'ack'
        ? replica
        : this.stages.get(msg.layer);
    if (!s || !s.identity.equals(identity)) {
      this.drop(
        'foreign',
        `a '${msg.type}' for layer ${msg.layer} from a stage not registered for it`,
      );
      return;
    }
    this.heard(s); // a busy stage's results are signs of life
    if (msg.run !== this.run) {
      this.drop('stale', `a '${msg.type}' of run ${msg.run}, not the current ${this.run}`);
      return;
    }
    if (msg.type === 'stats' || msg.type === 'goodness' || msg.type === 'weights') {
      this.liveness.answered(msg.layer);
    }
    if (msg.type === 'ready') {
      s.ready = true;
    } else if (msg.type === 'error') {
      const code = isErrorCode(msg.code) ? msg.code : 'CLUSTER_STAGE_ERROR';
      // A stage's messages name their layer already ("layer 2: ..."): once is enough.
      const name = rangeLabel(rangeOf(s.hello));
      const message = msg.message.replace(new RegExp(`^${name}: `), '');
      this.fail(
        new ClusterError(code, `${processLabel(s.hello)}: ${message}`, layersOf(rangeOf(s.hello))),
      );
    } else {
      // A stage's rejection is counted; the run goes on. A batch of the run that was refused
      // would never complete, and the progress check would roll the run back.
      if (msg.type === 'rejected') this.opts.metrics?.onRejected(msg.layer, msg.code);
      for (const fn of this.listeners) {
        try {
          fn(msg);
        } catch (err) {
          this.fail(err as Error); // a listener refused the result: the run cannot go on
        }
      }
    }
  }

  /** From a stage's heartbeat thread, on a socket of its own: known by its hello's token. */
  private async onHeartbeat(layer: number, token: string, identity: Buffer): Promise<void> {
    const s = [this.stages.get(layer), ...this.replicas.values()].find(
      (x) => x !== undefined && x.hello.layer === layer && x.hello.token === token,
    );
    if (s) {
      this.heard(s);
      // Heartbeats both ways: a registered stage learns its coordinator is alive.
      await this.routerOut
        .send([identity, encodeControl({ type: 'heartbeat', layer, token })])
        .catch(() => {});
      return;
    }
    // A stage still in a run of a coordinator that is gone (or a stranger): tell it at once,
    // so a stage says hello to this one instead of waiting out its coordinator timeout.
    this.drop('unregistered', `a heartbeat for layer ${layer} from a stage not registered`);
    await this.routerOut
      .send([
        identity,
        encodeControl({
          type: 'error',
          run: '', // the run's id is for its stages only: with it, junk could pass for data
          layer,
          code: 'STAGE_UNKNOWN',
          message: 'this coordinator has not registered this stage: say hello',
        }),
      ])
      .catch(() => {});
  }

  private async onHello(msg: HelloMessage, identity: Buffer): Promise<void> {
    const refusal = this.checkHello(msg, identity);
    if (refusal) {
      const [code, problem] = refusal;
      this.drop('refused', `a hello: ${problem}`);
      await this.routerOut.send([
        identity,
        encodeControl({ type: 'error', run: '', layer: msg.layer, code, message: problem }),
      ]);
      return;
    }
    const layers = rangeOf(msg);
    if (msg.replica > 1) {
      this.onReplicaHello(msg, identity);
      return;
    }
    const known = this.stages.get(msg.layer);
    if (known?.identity.equals(identity)) {
      known.hello = msg; // the same stage again: it may have been between runs
      this.heard(known);
      return;
    }
    // The stages this one replaces: every one holding one of its layers (checkHello let it in
    // only because they are lost).
    const replaced = [...new Set(layersOf(layers).map((l) => this.stages.get(l)))].filter(
      (s): s is StageInfo => s !== undefined,
    );
    if (replaced.length > 0 && this.phaseNow === 'running') {
      // A replacement for a stage of the running attempt: the attempt cannot go on without it.
      const gone = replaced[0]!;
      this.opts.metrics?.onStageLost(gone.hello.layer);
      this.fail(
        new ClusterError(
          'CLUSTER_STAGE_LOST',
          `${rangeLabel(rangeOf(gone.hello))} (pid ${gone.hello.pid} on ${gone.hello.host}) stopped answering; ` +
            `pid ${msg.pid} on ${msg.host} takes its place`,
          layersOf(rangeOf(gone.hello)),
        ),
      );
    }
    for (const s of replaced) this.forget(s);
    const info: StageInfo = { hello: msg, identity, ready: false };
    for (const layer of layersOf(layers)) {
      this.stages.set(layer, info);
      this.liveness.joined(layer);
    }
    this.opts.log(
      `coordinator: hello from ${rangeLabel(layers)} (${msg.host}, pid ${msg.pid}, ${msg.backend}), ` +
        `data at ${msg.endpoint}` +
        (replaced.length > 0
          ? `; replacing pid ${replaced.map((s) => s.hello.pid).join(', ')}`
          : ''),
    );
  }

  /** A replica (2, 3, ...) of a stage: registered beside its primary, replacing a lost one. */
  private onReplicaHello(msg: HelloMessage, identity: Buffer): void {
    const slot = replicaSlot(msg.layer, msg.replica);
    const known = this.replicas.get(slot);
    if (known?.identity.equals(identity)) {
      known.hello = msg;
      this.heard(known);
      return;
    }
    if (known && this.phaseNow === 'running') {
      this.opts.metrics?.onStageLost(msg.layer);
      this.fail(
        new ClusterError(
          'CLUSTER_STAGE_LOST',
          `${processLabel(known.hello)} (pid ${known.hello.pid} on ${known.hello.host}) stopped ` +
            `answering; pid ${msg.pid} on ${msg.host} takes its place`,
          layersOf(rangeOf(msg)),
        ),
      );
    }
    if (known) this.forget(known);
    this.replicas.set(slot, { hello: msg, identity, ready: false });
    this.liveness.joined(slot);
    this.opts.log(
      `coordinator: hello from ${processLabel(msg)} (${msg.host}, pid ${msg.pid}, ${msg.backend})` +
        (known ? `; replacing pid ${known.hello.pid}` : ''),
    );
  }

  /** Every registered stage once, from upstream. */
  private stageList(): StageInfo[] {
    return [...new Set(this.stages.values())].sort((a, b) => a.hello.layer - b.hello.layer);
  }

  /** The replicas 2, 3, ... of a primary registered so far, in order. */
  private replicasOf(primary: StageInfo): StageInfo[] {
    const out: StageInfo[] = [];
    for (let r = 2; r <= primary.hello.replicas; r++) {
      const s = this.replicas.get(replicaSlot(primary.hello.layer, r));
      if (s && s.hello.last === primary.hello.last && s.hello.replicas === primary.hello.replicas) {
        out.push(s);
      }
    }
    return out;
  }

  /** The replicas the registered stages lack, named ("layers 2-3 replica 2/2"), or ''. */
  private missingReplicas(): string {
    const missing: string[] = [];
    for (const p of this.stageList()) {
      for (let r = 2; r <= p.hello.replicas; r++) {
        const s = this.replicas.get(replicaSlot(p.hello.layer, r));
        if (!s || s.hello.last !== p.hello.last || s.hello.replicas !== p.hello.replicas) {
          missing.push(`${rangeLabel(rangeOf(p.hello))} replica ${r}/${p.hello.replicas}`);
        }
      }
    }
    return missing.join(', ');
  }

  /** A stage is gone: its layers are free for a replacement. */
  private forget(s: StageInfo): void {
    if (s.hello.replica > 1) {
      const slot = replicaSlot(s.hello.layer, s.hello.replica);
      if (this.replicas.get(slot) === s) {
        this.replicas.delete(slot);
        this.liveness.left(slot);
      }
      return;
    }
    for (const layer of layersOf(rangeOf(s.hello))) {
      if (this.stages.get(layer) === s) {
        this.stages.delete(layer);
        this.liveness.left(layer);
      }
    }
  }

  /** A sign of life from a stage: for each of its layers. */
  private heard(s: StageInfo): void {
    if (s.hello.replica > 1) this.liveness.heard(replicaSlot(s.hello.layer, s.hello.replica));
    else for (const layer of layersOf(rangeOf(s.hello))) this.liveness.heard(layer);
  }

  private isRegistered(identity: Buffer): boolean {
    return [...this.stages.values(), ...this.replicas.values()].some((s) =>
      s.identity.equals(identity),
    );
  }

  private replicaByIdentity(identity: Buffer): StageInfo | undefined {
    return [...this.replicas.values()].find((s) => s.identity.equals(identity));
  }

  /**
   * Why a hello cannot be accepted, or null. A layer held by a stage this coordinator still
   * hears from cannot be taken, whatever the newcomer claims: it is told to wait (it says hello
   * again, and gets the layer once that one is lost). Refusals name no pid or host.
   */
  private checkHello(msg: HelloMessage, identity: Buffer): [ErrorCode, string] | null {
    if (msg.version !== PROTOCOL_VERSION) {
      const problem = `layer ${msg.layer} speaks protocol ${msg.version}, this coordinator ${PROTOCOL_VERSION}`;
      return ['STAGE_REFUSED', problem];
    }
    if (
      !/^(tcp:\/\/[^\s/]+:\d{1,5}|ipc:\/\/\S+)$/.test(msg.endpoint) ||
      msg.endpoint.length > 256
    ) {
      return ['STAGE_REFUSED', `its data endpoint is not a tcp://HOST:PORT or ipc:// address`];
    }
    const layers = rangeOf(msg);
    if (!inRun(layers, this.numLayers)) {
      return [
        'STAGE_REFUSED',
        `${msg.layer === msg.last ? `layer ${msg.layer} is` : `layers ${msg.layer}-${msg.last} are`} ` +
          `not in this run (layers 1..${this.numLayers})`,
      ];
    }
    const security = this.opts.security;
    if (security) {
      // Bound to a key: one listed for these layers, whose secret the stage proves it holds.
      if (!mayServe(security.trusted, msg.key, layers)) {
        return ['STAGE_REFUSED', `this stage's key is not trusted to serve ${rangeLabel(layers)}`];
      }
      if (msg.proof !== helloProof(security.keys.secretKey, msg.key, layers, msg.token)) {
        return ['STAGE_REFUSED', `this stage's hello does not prove it holds its key`];
      }
    }
    if (
      !Number.isInteger(msg.replicas) ||
      msg.replicas > MAX_REPLICAS ||
      msg.replica > msg.replicas ||
      (msg.replicas > 1 && !/^(tcp:\/\/[^\s/]+:\d{1,5}|ipc:\/\/\S+)$/.test(msg.exchange))
    ) {
      return [
        'STAGE_REFUSED',
        `replica ${msg.replica}/${msg.replicas} is not a replica, or has no exchange endpoint`,
      ];
    }
    if (msg.replica > 1) {
      const existing = this.replicas.get(replicaSlot(msg.layer, msg.replica));
      const slot = replicaSlot(msg.layer, msg.replica);
      if (existing && !existing.identity.equals(identity) && !this.liveness.isSilent(slot)) {
        return [
          'STAGE_LAYER_TAKEN',
          `${processLabel(msg)} is served by another stage, heard from lately`,
        ];
      }
      return null;
    }
    // Every layer in exactly one stage: one held by another stage heard from lately is an
    // overlap (the newcomer waits, and takes the layers once that one is lost).
    for (const layer of layersOf(layers)) {
      const existing = this.stages.get(layer);
      if (existing && !existing.identity.equals(identity) && !this.liveness.isSilent(layer)) {
        const theirs = rangeOf(existing.hello);
        return [
          'STAGE_LAYER_TAKEN',
          layers.first === layers.last && theirs.first === theirs.last
            ? `layer ${layer} is served by another stage, heard from lately`
            : `${rangeLabel(layers)} overlap ${rangeLabel(theirs)} of another stage, heard from ` +
              `lately, at layer ${layer}`,
        ];
      }
    }
    return null;
  }

  /**
   * Something from the network this coordinator will not act on: counted, and logged at most
   * once a minute per reason (or per `key`, one of a fixed few), with how many went unlogged.
   */
  private drop(reason: DropReason, what: string, key: string = reason): void {
    this.opts.metrics?.onDropped(reason);
    this.dropLog.line(key, `coordinator: dropped ${what}`);
  }
}

/**
 * The failure of an attempt, once it happens: every wait guarded by it rejects with the error,
 * pending ones at once and later ones when they start, until reset() (the next attempt).
 */
class FailureLatch {
  error: Error | null = null;
  private readonly waiters = new Set<(err: Error) => void>();

  /** Sets the failure (the first one wins); false if one was set already. */
  set(err: Error): boolean {
    if (this.error) return false;
    this.error = err;
    for (const w of this.waiters) w(err);
    this.waiters.clear();
    return true;
  }

  reset(): void {
    this.error = null;
  }

  /** `p`, unless the attempt fails first: then its failure. */
  async guard<T>(p: Promise<T>): Promise<T> {
    if (this.error) throw this.error;
    let reject: (err: Error) => void = () => {};
    const failed = new Promise<never>((_, r) => (reject = r));
    this.waiters.add(reject);
    try {
      return await Promise.race([p, failed]);
    } finally {
      // One waiter per pending call, not one per call ever made.
      this.waiters.delete(reject);
    }
  }
}
