// A pipeline stage: one FF layer, or a run of consecutive layers (a group), in its own process.
// It binds its inbound PULL socket, says hello to the coordinator, takes the run's config and
// its downstream endpoint, then trains on whatever arrives and forwards this step's detached
// activations downstream, so that all stages work at once on consecutive batches. Within a
// group the activations pass from layer to layer in memory, and each layer reports its own
// stats, goodness and weights. A stage may run as replicas (--replica R/N): the primary (1)
// is the stage the run sees; it passes each train batch to the others, each computes its
// shards, and the primary sums them (replicas.ts). After a run it keeps its layers and waits
// for the next coordinator. The protocol is described in docs/protocol.md.
//
// The stage is a dispatcher: each message goes to the handler of its kind, if the state the
// stage is in accepts it (stage-states.ts, which also lists every transition; enter() refuses
// any other). Checking a config and building the run's layers is run-setup.ts; hellos, the
// config deadline and the coordinator watch are registration.ts; heartbeats heartbeat.ts.
// Each state change is logged (--verbose) and exported as ffx_stage_state{state}:
//
// STATE DIAGRAM (from stage-states.ts; test/unit/stage-states.test.ts keeps it so)
//   waiting       --config-->  configured
//   waiting       --stop marker, stop, SIGTERM/SIGINT, fatal-->  closing
//   configured    --train-->  training
//   configured    --eval-->  evaluating
//   configured    --end marker, abort, coordinator lost or replaced-->  between-runs
//   configured    --stop marker, stop, SIGTERM/SIGINT, fatal-->  closing
//   training      --eval-->  evaluating
//   training      --end marker, abort, coordinator lost or replaced-->  between-runs
//   training      --stop marker, stop, SIGTERM/SIGINT, fatal-->  closing
//   evaluating    --train-->  training
//   evaluating    --end marker, abort, coordinator lost or replaced-->  between-runs
//   evaluating    --stop marker, stop, SIGTERM/SIGINT, fatal-->  closing
//   between-runs  --config-->  configured
//   between-runs  --stop marker, stop, SIGTERM/SIGINT, fatal-->  closing
// END STATE DIAGRAM
//
// Every wait can be cut short: close() ends the inbox, the run's sockets and the timers, so the
// stage leaves promptly from any state.
import * as tf from '@tensorflow/tfjs';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Dealer, type Push } from 'zeromq';
import type { BackendInfo } from '../backend/backend.js';
import { FFLayer } from '../core/ff-layer.js';
import type { Layer, ModelConfig } from '../core/ff-network.js';
import { describeRange, rowShape } from '../core/model-shape.js';
import { layerPrefix } from '../core/ff-network.js';
import { readFloats } from '../core/host-memory.js';
import { addressError, type ErrorCode } from '../errors.js';
import { RateLimitedLog, log } from '../log.js';
import type { StageMetrics } from '../metrics/index.js';
import {
  CONTROL_MAX_BYTES,
  INBOUND_HWM,
  PAST_RUNS,
  PRE_CONFIG_MAX_BYTES,
} from '../transport/bounds.js';
import {
  ZapHandler,
  curveClient,
  curveServer,
  helloProof,
  stageKeyName,
  watchHandshakes,
  type HandshakeFailure,
  type KeyPair,
} from '../transport/curve.js';
import { ProtocolError, isProtocolError } from '../transport/errors.js';
import {
  LINGER_MS,
  SerialSender,
  closeAll,
  dataPull,
  dataPush,
  handshake,
} from '../transport/sockets.js';
import {
  PROTOCOL_VERSION,
  checkData,
  decodeControl,
  decodeData,
  encodeControl,
  encodeData,
  type ConfigMessage,
  type HeldRun,
  type ControlMessage,
  type DataHeader,
  type DataMessage,
  type EvalHeader,
  type MarkerHeader,
  type PartsMessage,
  type ResultMessage,
  type UpdateMessage,
  type TrainHeader,
} from '../transport/wire.js';
import { StageError } from './errors.js';
import { rangeLabel, type LayerRange } from '../transport/layer-range.js';
import { Heartbeat } from './heartbeat.js';
import { DEFAULT_INBOX_LIMITS, Inbox, type InboxLimits } from './inbox.js';
import {
  Mailbox,
  RunOver,
  messageTensors,
  partOf,
  partsFit,
  partsTensors,
  updateFits,
  updateOf,
} from './replicas.js';
import {
  ownShards,
  shardLabels,
  shardSizes,
  type ShardPart,
  type ShardedLayer,
} from '../core/shards.js';
import { Registration } from './registration.js';
import { largestDataMessage, setUpRun } from './run-setup.js';
import {
  STAGE_STATES,
  STAGE_INPUTS,
  accepts,
  checkTransition,
  serving,
  type StageInput,
  type StageState,
} from './stage-states.js';

export { STAGE_STATES, StageError, type StageState };

export interface StageOptions {
  /** The layers served (1-based): one, or a run of consecutive layers. */
  layers: LayerRange;
  /**
   * Which replica of its stage this process is (1-based; 1 is the primary, which the rest of
   * the pipeline sees), of how many; and where its exchange socket binds (with replicas).
   */
  replica?: { index: number; count: number; listen: string };
  /** Coordinator control endpoint, e.g. tcp://10.0.0.1:5555. */
  coordinator: string;
  /** Where to bind the inbound data socket, e.g. tcp://0.0.0.0:6000 or tcp://127.0.0.1:* . */
  listen: string;
  /** Endpoint the upstream should connect to (default: the bound one, 0.0.0.0 -> hostname). */
  advertise?: string;
  backend: BackendInfo;
  heartbeatMs?: number;
  /**
   * Serving a run, a coordinator silent for this long (it answers every heartbeat) is lost:
   * the stage drops the run and waits for a new coordinator.
   */
  coordinatorTimeoutMs?: number;
  /** Give up when the first coordinator sends no config within this long. */
  configTimeoutMs?: number;
  /** Prometheus metrics of this stage, when it exposes them. */
  metrics?: StageMetrics;
  inbox?: InboxLimits;
  /**
   * CurveZMQ: this stage's key pair and the coordinator's public key. Without, sockets are
   * plain (for loopback, or --insecure).
   */
  security?: StageSecurity;
}

export interface StageSecurity {
  keys: KeyPair;
  coordinatorKey: string;
}

/** Timing of a forward that did not happen (the last stage). */
const NOT_SENT = { encodeMs: 0, blockedMs: 0 } as const;

/** One run this stage serves: its config and the sockets that belong to it. */
interface Run {
  readonly config: ConfigMessage;
  readonly id: string;
  /** Null for the last stage. */
  readonly downstream: Push | null;
  /** Whether `downstream` reached the next stage in time (true for the last stage). */
  readonly linked: Promise<boolean>;
  /** Ended, aborted or closed: nothing more is sent for it. */
  over: boolean;
  /** Aborted when the run is over: a step waiting for a replica gives up. */
  readonly ended: AbortController;
  /** A primary's links to its replicas: their data sockets (the input) and exchange sockets. */
  readonly relay: Push[];
  readonly updates: Push[];
  /** A replica's link to its primary's exchange socket (its parts). */
  readonly partsOut: Push | null;
}

export class Stage {
  readonly opts: StageOptions;
  /** The endpoint upstream connects to; set once run() has bound the inbound socket. */
  endpoint = '';
  private state: StageState = 'waiting';
  /** The layers held, first to last (empty before the first run). */
  private layers: Layer[] = [];
  private current: Run | null = null;
  /** Ids of the runs served before (the last PAST_RUNS): their leftovers are known as such. */
  private readonly pastRuns: string[] = [];
  private readonly inbox: Inbox;
  private readonly control = new Dealer({ linger: 0, maxMessageSize: CONTROL_MAX_BYTES });
  private readonly controlOut = new SerialSender(this.control);
  /** A random secret of this process: its hellos and heartbeats carry it, so no one else's count. */
  private readonly token = randomBytes(16).toString('hex');
  /** Hellos, the config deadline and the coordinator watch; heartbeats (from run() on). */
  private registration: Registration | null = null;
  private heartbeat: Heartbeat | null = null;
  private zap: ZapHandler | null = null;
  /** With replicas: the exchange socket (parts and updates) and what it has received. */
  private exchange: Inbox | null = null;
  private mailbox: Mailbox | null = null;
  private exchangeEndpoint = '';
  /** Why the stage gave up, thrown by run(). */
  private fatal: Error | null = null;
  /** The run that trained the layers held, and its config (said in every hello). */
  private trainedBy: HeldRun | null = null;
  /** The last reason the coordinator's socket failed its handshake (keys), for STAGE_NO_CONFIG. */
  private handshakeProblem = '';
  private readonly rejectionLog = new RateLimitedLog((line) => log.info(line));
  /** Debug lines about leftovers: a peer that knows an old run's id can send any number. */
  private readonly leftoverLog = new RateLimitedLog((line) => log.debug(line));

  constructor(opts: StageOptions) {
    this.opts = opts;
    const inbound = dataPull({ highWaterMark: INBOUND_HWM });
    // Until a config says how large this run's messages are, a stranger gets little room.
    inbound.maxMessageSize = PRE_CONFIG_MAX_BYTES;
    if (opts.security) {
      curveServer(inbound, opts.security.keys, 'data');
      curveClient(this.control, opts.security.keys, opts.security.coordinatorKey);
    }
    this.inbox = new Inbox(inbound, opts.inbox ?? DEFAULT_INBOX_LIMITS);
    opts.metrics?.setInboundQueueDepth(() => this.inbox.depth);
    opts.metrics?.setInboundQueueBytes(() => this.inbox.bytes);
    opts.metrics?.setState(this.state);
  }

  /** "layer 2" or "layers 2-3": how this stage's lines and errors name it. */
  get name(): string {
    return rangeLabel(this.opts.layers);
  }

  /**
   * Serves runs until a stop (marker, control message, or close()): registers, serves the run
   * its config describes, and after it waits for the next coordinator with the layers kept (so
   * `ffx-coordinator eval` can evaluate what the stage holds). Throws what made it give up.
   */
  async run(): Promise<void> {
    const { opts } = this;
    if (opts.security) {
      // Data comes only from the upstream of the run served: no one's before a config. (The
      // handler is up before the socket binds: ZeroMQ asks it about every connection.)
      this.zap = await ZapHandler.start(
        (domain, key) =>
          (domain === 'data' && key === this.current?.config.prevKey) ||
          (domain === 'exchange' && (this.current?.config.replicaKeys.includes(key) ?? false)),
        () => {
          this.opts.metrics?.onRejected('UNAUTHENTICATED');
          this.logRejection(
            'UNAUTHENTICATED',
            "refused a connection whose key is not the upstream's",
          );
        },
      );
    }
    try {
      const bound = await this.inbox.bind(opts.listen);
      this.endpoint = opts.advertise ?? bound.replace('0.0.0.0', hostname());
    } catch (err) {
      await this.shutdown();
      throw addressError(err, opts.listen, `${this.name}: cannot listen for data`);
    }
    if (opts.replica && opts.replica.count > 1) {
      const pull = dataPull({ highWaterMark: 64 });
      pull.maxMessageSize = CONTROL_MAX_BYTES;
      if (opts.security) curveServer(pull, opts.security.keys, 'exchange');
      this.exchange = new Inbox(pull, { messages: 64, bytes: CONTROL_MAX_BYTES });
      this.mailbox = new Mailbox(this.exchange, (err) =>
        this.logRejection(`exchange:${err.code}`, `ignored a bad exchange message (${err.code})`),
      );
      try {
        const bound = await this.exchange.bind(opts.replica.listen);
        // Advertised as the data endpoint is, with the port bound.
        const port = /:(\d+)$/.exec(bound)?.[1];
        this.exchangeEndpoint =
          opts.advertise && port && bound.startsWith('tcp://')
            ? opts.advertise.replace(/:\d+$/, `:${port}`)
            : bound.replace('0.0.0.0', hostname());
      } catch (err) {
        await this.shutdown();
        throw addressError(
          err,
          opts.replica.listen,
          `${this.name}: cannot listen for its replicas`,
        );
      }
    }
    // A refused key or a key mismatch drops the connection inside ZeroMQ: say so at once.
    watchHandshakes(this.control, (kind) => {
      this.handshakeProblem = this.handshakeFailure(kind);
      this.logRejection(`handshake:${kind}`, this.handshakeProblem);
    });
    this.control.connect(opts.coordinator);
    void this.controlLoop();
    const intervalMs = opts.heartbeatMs ?? 1000;
    this.heartbeat = new Heartbeat(
      {
        coordinator: opts.coordinator,
        layer: opts.layers.first,
        token: this.token,
        intervalMs,
        security: opts.security,
      },
      (news) => {
        this.registration?.heard();
        if (news.error) this.onError(news.error.run, news.error.code, '');
      },
    );
    this.registration = new Registration(
      { checkIntervalMs: intervalMs, coordinatorTimeoutMs: opts.coordinatorTimeoutMs ?? 30_000 },
      {
        hello: () => this.sendControl(this.hello()),
        noConfig: (timeoutMs) => this.fail(this.noConfigError(timeoutMs)),
        serving: () => this.current !== null,
        coordinatorLost: (silentMs) => this.onCoordinatorLost(silentMs),
      },
    );
    log.info(`${this.name}: listening on ${this.endpoint}, coordinator ${opts.coordinator}`);
    this.register(opts.configTimeoutMs ?? 120_000);
    try {
      for (;;) {
        const t0 = performance.now();
        const frames = await this.inbox.next();
        if (!frames) break;
        await this.dispatch(frames, performance.now() - t0);
        // With messages queued, the loop above never waits on I/O: let the event loop take
        // control messages (abort, stop), signals and timers between two messages.
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      await this.shutdown();
    }
    if (this.fatal) throw this.fatal;
  }

  /**
   * Ends the stage from any state; run() then returns. A run it serves is told why (`reason`,
   * e.g. "SIGTERM"), so its coordinator fails at once instead of waiting for a heartbeat.
   * Safe to call more than once.
   */
  async close(reason = 'closing'): Promise<void> {
    if (this.state === 'closing') return;
    const run = this.current;
    this.enter('closing', reason);
    this.registration?.stop();
    if (run) {
      this.sendControl({
        type: 'error',
        run: run.id,
        layer: this.opts.layers.first,
        code: 'STAGE_STOPPED',
        message: `the stage stopped (${reason}) during the run`,
      });
      // Long enough for that last word to go out; otherwise unsent control messages (hellos
      // to a coordinator that is not there) must not hold the exit.
      this.control.linger = LINGER_MS;
      this.endRun(run, reason);
    }
    await this.inbox.close();
  }

  // -------------------------------------------------------------------------------------------
  // States
  // -------------------------------------------------------------------------------------------

  /** The one way the state changes: along a transition of stage-states.ts, or a thrown bug. */
  /**
   * The shape of a row of the stage's input (its first layer's) or output (its last layer's):
   * [d] for FF layers, [h, w, c] for a competitive layer's images or conv activations.
   */
  private rowShape(side: 'in' | 'out'): number[] {
    const layer = side === 'in' ? this.layers[0]! : this.layers.at(-1)!;
    if (layer instanceof FFLayer) return [side === 'in' ? layer.config.inDim : layer.config.outDim];
    return rowShape(side === 'in' ? layer.config.inShape : layer.outShape);
  }

  /** The layout of the batches this stage's layers take. */
  private inputKind(): InputKind {
    const first = this.layers[0]!;
    return first instanceof FFLayer ? (first.readout ? 'readout' : 'ff') : 'competitive';
  }

  private enter(next: StageState, why: string): void {
    if (this.state === next) return;
    checkTransition(this.state, next);
    log.debug(`${this.name}: ${this.state} -> ${next} (${why})`);
    this.state = next;
    this.opts.metrics?.setState(next);
  }

  /** Says hello now and every few seconds until a config arrives (not while closing). */
  private register(timeoutMs: number): void {
    if (this.state !== 'closing') this.registration?.register(timeoutMs);
  }

  private hello(): ControlMessage {
    const { layers, security } = this.opts;
    return {
      type: 'hello',
      layer: layers.first,
      last: layers.last,
      replica: this.opts.replica?.index ?? 1,
      replicas: this.opts.replica?.count ?? 1,
      version: PROTOCOL_VERSION,
      backend: this.opts.backend.name,
      endpoint: this.endpoint,
      exchange: this.exchangeEndpoint,
      pid: process.pid,
      host: hostname(),
      token: this.token,
      key: security?.keys.publicKey ?? '',
      proof: security
        ? helloProof(security.keys.secretKey, security.coordinatorKey, layers, this.token)
        : '',
      holds: this.layers.length > 0 ? this.trainedBy : null,
    };
  }

  private noConfigError(timeoutMs: number): StageError {
    return new StageError(
      'STAGE_NO_CONFIG',
      `no config from the coordinator at ${this.opts.coordinator} within ${timeoutMs / 1000}s` +
        (this.handshakeProblem
          ? `: ${this.handshakeProblem}`
          : this.opts.security
            ? ''
            : ' (if it uses CurveZMQ keys, this stage needs --key and --trust too)'),
    );
  }

  /** What a failed handshake with the coordinator means, in the words a user can act on. */
  private handshakeFailure(kind: HandshakeFailure): string {
    const { coordinator, layers, security } = this.opts;
    if (kind === 'auth') {
      return (
        `the coordinator at ${coordinator} refused this stage's key ${security?.keys.publicKey}: ` +
        `its --trust file does not list it for ${this.name} (as ${stageKeyName(layers)} or stage)`
      );
    }
    if (!security) {
      return (
        `the coordinator at ${coordinator} refused a connection without keys: it uses ` +
        'CurveZMQ, so this stage needs --key and --trust (ffx-keys makes them)'
      );
    }
    return kind === 'protocol'
      ? `the coordinator at ${coordinator} runs without CurveZMQ keys, and this stage with ` +
          '(--key, --trust): give both or neither'
      : `the CurveZMQ handshake with the coordinator at ${coordinator} failed: its key is not ` +
          "the one this stage's --trust lists as 'coordinator'";
  }

  /** The coordinator of the run served went silent: drop the run, wait for a new one. */
  private onCoordinatorLost(silentMs: number): void {
    const run = this.current;
    if (!run) return;
    log.info(
      `${this.name}: lost the coordinator (not heard from for ` +
        `${(silentMs / 1000).toFixed(0)}s); dropping run ${run.id}, waiting for a coordinator`,
    );
    this.opts.metrics?.onCoordinatorLost();
    this.endRun(run, 'the coordinator is lost');
    this.register(Infinity);
  }

  /** The stage cannot go on: remember why, and close. */
  private fail(err: Error): void {
    this.fatal ??= err;
    void this.close();
  }

  /** A run is over (ended, aborted, or the stage closes): its sockets go, its id is kept. */
  private endRun(run: Run, why: string): void {
    if (run.over) return;
    run.over = true;
    this.pastRuns.push(run.id);
    if (this.pastRuns.length > PAST_RUNS) this.pastRuns.shift();
    if (this.current === run) {
      this.current = null;
      this.opts.metrics?.onRun(undefined);
    }
    // Closing the data socket unblocks a send waiting on a downstream stage that may be gone;
    // what it had queued (e.g. a forwarded end marker) still goes out during its linger.
    run.ended.abort();
    closeAll(run.downstream, run.partsOut, ...run.relay, ...run.updates);
    if (this.state !== 'closing') this.enter('between-runs', why);
  }

  private async shutdown(): Promise<void> {
    this.enter('closing', 'shutting down');
    this.registration?.close();
    await this.heartbeat?.close();
    if (this.current) this.endRun(this.current, 'the stage is closing');
    await this.inbox.close();
    await this.exchange?.close();
    this.zap?.close();
    // The last results (e.g. the ack of a stop marker) go out before the socket closes. The
    // socket lingers only for a last word (that ack, STAGE_STOPPED): between runs it holds
    // nothing but hellos, to a coordinator that may be gone, which must not hold the exit.
    await Promise.race([this.controlOut.idle(), delay(LINGER_MS)]);
    closeAll(this.control);
    for (const l of this.layers) l.dispose();
    this.layers = [];
  }

  // -------------------------------------------------------------------------------------------
  // Control messages (coordinator -> stage), one handler each
  // -------------------------------------------------------------------------------------------

  private async controlLoop(): Promise<void> {
    while (this.state !== 'closing') {
      let frame: Buffer | undefined;
      try {
        [frame] = await this.control.receive();
      } catch {
        return; // closed
      }
      let msg: ControlMessage;
      try {
        msg = decodeControl(frame!);
      } catch (err) {
        if (!isProtocolError(err)) throw err;
        this.logRejection(`control:${err.code}`, `ignored a bad control message (${err.code})`);
        continue;
      }
      this.registration?.heard();
      if (!isStageInput(msg.type)) {
        log.debug(`${this.name}: ignored a '${msg.type}' control message`);
        continue;
      }
      if (!accepts(this.state, msg.type)) {
        this.notNow(msg);
        continue;
      }
      switch (msg.type) {
        case 'config':
          await this.onConfig(msg);
          break;
        case 'abort':
          this.onAbort(msg.run, msg.reason);
          break;
        case 'stop':
          log.info(`${this.name}: coordinator says stop (${msg.reason})`);
          // The coordinator knows: end the run quietly, then close.
          if (this.current) this.endRun(this.current, 'the coordinator said stop');
          void this.close('the coordinator said stop');
          break;
        case 'error':
          this.onError(msg.run, msg.code, msg.message);
          break;
        case 'heartbeat':
          break; // the coordinator is alive: noted above
      }
    }
  }

  /** A control message the current state does not act on. */
  private notNow(msg: ControlMessage): void {
    if (msg.type === 'config') {
      // Hellos go out only while waiting: a config now is a late answer to an old one.
      log.info(
        `${this.name}: ignored a config for run ${msg.run} while serving run ${this.current?.id}`,
      );
    } else if (msg.type === 'abort') {
      log.debug(`${this.name}: ignored an abort of run ${msg.run}, not served here`);
    }
  }

  private async onConfig(config: ConfigMessage): Promise<void> {
    const { layers } = this.opts;
    const layer = layers.first;
    let run: Run;
    try {
      const held = this.layers;
      const built = setUpRun(config, layers, held, this.opts.replica?.index ?? 1);
      if (built[0] !== held[0]) for (const l of held) l.dispose();
      this.layers = built;
      if (config.mode === 'train') this.trainedBy = { run: config.run, config: config.origin };
      const link = config.next ? this.downstreamTo(config) : null;
      // A primary reaches its replicas' data and exchange sockets, a replica its primary's.
      const { replicaEndpoints: data, replicaExchanges: exchanges, replicaKeys: keys } = config;
      const peer = (endpoint: string, key: string) => {
        const push = dataPush(undefined, { highWaterMark: 64 });
        if (this.opts.security) curveClient(push, this.opts.security.keys, key);
        push.connect(endpoint);
        return push;
      };
      const primary = config.replica === 1;
      run = {
        config,
        id: config.run,
        downstream: link?.push ?? null,
        linked: link?.linked ?? Promise.resolve(true),
        over: false,
        ended: new AbortController(),
        relay: primary ? data.slice(1).map((e, i) => peer(e, keys[i + 1]!)) : [],
        updates: primary ? exchanges.slice(1).map((e, i) => peer(e, keys[i + 1]!)) : [],
        partsOut: !primary && config.replicas > 1 ? peer(exchanges[0]!, keys[0]!) : null,
      };
      this.mailbox?.keepOnly(config.run);
    } catch (err) {
      if (!(err instanceof StageError)) throw err;
      // This coordinator cannot use this stage; say why, and stay available.
      log.info(err.message);
      this.sendControl({
        type: 'error',
        run: config.run,
        layer,
        code: err.code,
        message: err.message,
      });
      return;
    }
    // The largest message this run can send here: ZeroMQ cuts off a larger one itself. A
    // listener takes its limits when it binds, so it binds again (the same endpoint); strangers
    // connected before are dropped with the old listener.
    try {
      await this.inbox.rebind(largestDataMessage(config, this.layers[0]!.config.inDim));
    } catch (err) {
      this.fail(
        addressError(
          err,
          this.inbox.endpoint,
          `${this.name}: cannot listen for data again`,
        ) as Error,
      );
      return;
    }
    if (!(await run.linked)) {
      // The next stage advertised an address this host cannot reach: say which, and stay
      // available (a corrected stage gets a new config).
      closeAll(run.downstream, run.partsOut, ...run.relay, ...run.updates);
      const next = layers.last + 1;
      const message =
        `cannot reach layer ${next} at ${config.next} within ${config.linkTimeoutMs / 1000}s: ` +
        `the address layer ${next} advertises (check its --advertise, and that this host can reach it)`;
      log.info(`${this.name}: ${message}`);
      this.sendControl({ type: 'error', run: config.run, layer, code: 'STAGE_LINK_DOWN', message });
      return;
    }
    this.registration?.stop();
    this.current = run;
    this.opts.metrics?.onRun(run.id);
    this.heartbeat?.start();
    this.enter('configured', `config of run ${config.run}`);
    this.sendControl({ type: 'ready', layer, run: run.id });
    const { first, last } = this.opts.layers;
    log.info(
      `${this.name}/${config.numLayers}: ${describeRange((config.model as ModelConfig).layers, first, last)}, run ${config.run} (${config.mode}), ` +
        `downstream ${config.next ?? '(last stage)'}`,
    );
  }

  private onAbort(runId: string, reason: string): void {
    const run = this.current;
    if (!run || run.id !== runId) {
      log.debug(`${this.name}: ignored an abort of run ${runId}, not served here`);
      return;
    }
    log.info(
      `${this.name}: coordinator aborted run ${runId} (${reason}); ` +
        `${this.inbox.depth} message(s) queued`,
    );
    this.endRun(run, `run ${runId} aborted`);
    this.register(Infinity);
  }

  /**
   * The coordinator refused this stage. Its layer served by another (live) stage: wait, saying
   * hello, to take over if that one is lost. Anything else (wrong layer, protocol): exit.
   */
  private onError(runId: string, code: string, message: string): void {
    const run = this.current;
    if (run && code === 'STAGE_UNKNOWN' && runId !== run.id) {
      // The coordinator at the other end is not this run's: a new one took the address.
      log.info(`${this.name}: a new coordinator answers; dropping run ${run.id}, saying hello`);
      this.endRun(run, 'a new coordinator');
      this.register(Infinity);
      return;
    }
    // Without a run the stage is saying hello anyway; serving one, a refusal is not for it.
    if (code === 'STAGE_UNKNOWN' || serving(this.state) || this.state === 'closing') return;
    if (code === 'STAGE_LAYER_TAKEN') {
      this.logRejection(code, `the coordinator says: ${message}; waiting to take over`);
      return;
    }
    this.fail(
      new StageError('STAGE_REFUSED', `the coordinator refused this stage (${code}): ${message}`),
    );
  }

  // -------------------------------------------------------------------------------------------
  // Data messages (upstream -> stage), one handler per kind
  // -------------------------------------------------------------------------------------------

  /** Decodes a message, checks it belongs to the run served, and hands it to its handler. */
  private async dispatch(frames: Buffer[], waitMs: number): Promise<void> {
    const metrics = this.opts.metrics;
    const bytes = frames.reduce((n, f) => n + f.length, 0);
    const run = this.current;
    const tDecode = performance.now();
    let msg: DataMessage;
    try {
      msg = decodeData(frames);
      if (run && msg.header.run === run.id) {
        checkBatch(msg.header, run.config, this.inputKind());
        checkData(msg, { row: this.rowShape('in'), checkFinite: true });
      }
    } catch (err) {
      if (!isProtocolError(err)) throw err;
      metrics?.onReceived('invalid', bytes);
      metrics?.onInputWait(waitMs / 1000);
      // It may have been one of this run's batches: the coordinator must know.
      await this.reject(run, err.code, err.message);
      return;
    }
    const { header } = msg;
    metrics?.onReceived(header.kind, bytes);
    if (!run || header.run !== run.id || !accepts(this.state, header.kind)) {
      metrics?.onInputWait(waitMs / 1000);
      this.foreign(header, run);
      return;
    }
    const decodeMs = performance.now() - tDecode;
    try {
      switch (header.kind) {
        case 'train':
          await this.onTrain(run, header, msg.tensors, waitMs, decodeMs, frames);
          break;
        case 'eval':
          await this.onEval(run, header, msg.tensors[0]!, waitMs, decodeMs);
          break;
        case 'marker':
          metrics?.onInputWait(waitMs / 1000);
          await this.onMarker(run, header, frames);
          break;
      }
    } catch (err) {
      // A send cut short, or a wait for a replica given up: the run was aborted or the stage
      // is closing.
      if (run.over || err instanceof RunOver) return;
      throw err;
    }
  }

  /**
   * A message of another run. Leftovers of a run this stage served (still queued when it was
   * aborted) are dropped and counted; anything else is rejected here, and not reported: it was
   * never one of the current run's batches.
   */
  private foreign(header: DataHeader, run: Run | null): void {
    if (this.pastRuns.includes(header.run)) {
      this.opts.metrics?.onLeftover();
      this.leftoverLog.line(
        'leftover',
        `${this.name}: dropped a leftover ${header.kind} of run ${header.run}`,
      );
      return;
    }
    const serving = run ? `this stage serves run ${run.id}` : 'this stage serves no run';
    this.opts.metrics?.onRejected('BAD_RUN');
    this.logRejection('BAD_RUN', `rejected a message of run ${header.run} (BAD_RUN): ${serving}`);
  }

  private async onTrain(
    run: Run,
    header: TrainHeader,
    [x, y]: Float32Array[],
    waitMs: number,
    decodeMs: number,
    frames: Buffer[],
  ): Promise<void> {
    if (run.config.mode === 'eval') {
      this.opts.metrics?.onInputWait(waitMs / 1000);
      await this.reject(run, 'BAD_KIND', `a train message in run ${run.id}, which only evaluates`);
      return;
    }
    this.enter('training', `train batch ${header.seq} of epoch ${header.epoch + 1}`);
    const inDim = this.layers[0]!.config.inDim;
    const batch = tf.tensor2d(x!, [x!.length / inDim, inDim]);
    if (run.config.replicas > 1 && run.config.replica > 1) {
      await this.replicaStep(run, header, batch, y);
      return;
    }
    // A primary's replicas get the batch as it came, and compute their shards of it.
    for (const push of run.relay) await push.send(frames);
    const { steps, h: input } =
      run.config.replicas > 1
        ? await this.primaryStep(run, header, batch, y)
        : this.localStep(header, batch, y);
    // The last stage has nowhere to send its activations: no copy out of the backend.
    const t1 = performance.now();
    const out = run.downstream ? readFloats(input) : null;
    input.dispose();
    steps.at(-1)!.stepMs += performance.now() - t1;
    // The labels travel on with the activations: every readout downstream trains on them.
    const sent = y ? [out!, y] : [out!];
    const { encodeMs, blockedMs } = out ? await this.forward(run, header, sent) : NOT_SENT;
    // The wait and the decoding are the first layer's, the encoding and the send the last's.
    for (const [i, step] of steps.entries()) {
      const first = i === 0;
      const last = i === steps.length - 1;
      const timing = {
        stepMs: step.stepMs,
        waitMs: first ? waitMs : 0,
        transportMs: (first ? decodeMs : 0) + (last ? encodeMs : 0),
        blockedMs: last ? blockedMs : 0,
      };
      const layer = this.opts.layers.first + i;
      await this.sendResult(run, {
        type: 'stats',
        layer,
        run: run.id,
        epoch: header.epoch,
        seq: header.seq,
        loss: step.loss,
        goodnessPos: step.goodnessPos,
        goodnessNeg: step.goodnessNeg,
        ...timing,
        logits: step.logits,
      });
      this.opts.metrics?.onTrainStep({
        layer,
        samples: header.nPos,
        stepSeconds: timing.stepMs / 1000,
        waitSeconds: timing.waitMs / 1000,
        transportSeconds: timing.transportMs / 1000,
        sendSeconds: timing.blockedMs / 1000,
        epoch: header.epoch + 1,
        loss: step.loss,
        goodnessPos: step.goodnessPos,
        goodnessNeg: step.goodnessNeg,
      });
    }
  }

  /** Layer after layer, the activations in memory; each layer's step timed on its own. */
  private localStep(
    header: TrainHeader,
    batch: tf.Tensor2D,
    y: Float32Array | undefined,
  ): { steps: LayerStepResult[]; h: tf.Tensor2D } {
    const steps: LayerStepResult[] = [];
    let input = batch;
    for (const layer of this.layers) {
      const t0 = performance.now();
      const { h, stats, logits } = layer.trainStep(input, header.nPos, header.lr, y);
      input.dispose();
      input = h;
      const readout = logits ? (logits.dataSync() as Float32Array) : new Float32Array(0);
      steps.push({ ...readStats(stats), logits: readout, stepMs: performance.now() - t0 });
      tf.dispose([stats, logits]);
    }
    return { steps, h: input };
  }

  /**
   * A primary's step: each layer's parts for its own shards, its replicas' parts for theirs,
   * combined in shard order and applied (the layer's combineParts, as one process does), the
   * update sent back to every replica. Returns the whole batch's activations.
   */
  private async primaryStep(
    run: Run,
    header: TrainHeader,
    batch: tf.Tensor2D,
    labels: Float32Array | undefined,
  ): Promise<{ steps: LayerStepResult[]; h: tf.Tensor2D }> {
    const { shards, replicas } = run.config;
    const layers: ShardedLayer[] = this.layers;
    const { sizes, own, inputs: first } = ownRows(run.config, header.nPos, batch, layers[0]!);
    const ownLabels = labels && shardLabels(labels, sizes, own);
    let inputs = first;
    const steps: LayerStepResult[] = [];
    let whole: tf.Tensor2D | null = null;
    for (const [i, layer] of layers.entries()) {
      const t0 = performance.now();
      const layerNo = this.opts.layers.first + i;
      const mine = layer.shardParts(
        inputs,
        own.map((k) => sizes[k]!),
        header.nPos,
        ownLabels,
      );
      tf.dispose(inputs);
      inputs = mine.map((p) => p.h.clone());
      const all: ShardPart[] = new Array<ShardPart>(sizes.length);
      own.forEach((k, j) => (all[k] = mine[j]!));
      for (let r = 1; r < replicas; r++) {
        const theirs = ownShards(sizes.length, shards, r, replicas);
        if (theirs.length === 0) continue;
        const msg = await this.mailbox!.take(
          (m): m is PartsMessage =>
            m.type === 'parts' &&
            m.run === run.id &&
            m.seq === header.seq &&
            m.layer === layerNo &&
            m.replica === r + 1 &&
            partsFit(m, theirs, sizes, layer),
          run.ended.signal,
        );
        for (const k of theirs) all[k] = partOf(msg, k, sizes[k]!, layer);
      }
      const step = layer.combineParts(all, header.nPos, header.lr);
      const update = encodeControl({
        type: 'update',
        run: run.id,
        seq: header.seq,
        layer: layerNo,
        tensors: messageTensors(step.update),
      });
      for (const push of run.updates) await push.send(update);
      steps.push({
        ...readStats(step.stats),
        logits: new Float32Array(0),
        stepMs: performance.now() - t0,
      });
      whole?.dispose();
      whole = step.h;
      tf.dispose([step.stats, ...Object.values(step.update)]);
    }
    tf.dispose(inputs);
    return { steps, h: whole! };
  }

  /**
   * A replica's step (not the primary): each layer's parts for its shards to the primary, then
   * the update it sends back, applied. Nothing goes downstream or to the coordinator.
   */
  private async replicaStep(
    run: Run,
    header: TrainHeader,
    batch: tf.Tensor2D,
    labels: Float32Array | undefined,
  ): Promise<void> {
    const { replica } = run.config;
    const t0 = performance.now();
    const layers: ShardedLayer[] = this.layers;
    const { sizes, own, inputs: first } = ownRows(run.config, header.nPos, batch, layers[0]!);
    const ownLabels = labels && shardLabels(labels, sizes, own);
    let inputs = first;
    for (const [i, layer] of layers.entries()) {
      const layerNo = this.opts.layers.first + i;
      const mine = layer.shardParts(
        inputs,
        own.map((k) => sizes[k]!),
        header.nPos,
        ownLabels,
      );
      tf.dispose(inputs);
      inputs = mine.map((p) => p.h);
      if (own.length > 0) {
        await run.partsOut!.send(
          encodeControl({
            type: 'parts',
            run: run.id,
            seq: header.seq,
            layer: layerNo,
            replica,
            tensors: partsTensors(own, mine),
          }),
        );
      }
      for (const p of mine) tf.dispose([p.g, p.loss, ...Object.values(p.terms)]);
      const msg = await this.mailbox!.take(
        (m): m is UpdateMessage =>
          m.type === 'update' &&
          m.run === run.id &&
          m.seq === header.seq &&
          m.layer === layerNo &&
          updateFits(m, layer),
        run.ended.signal,
      );
      const update = updateOf(msg, layer);
      layer.applyUpdate(update, header.lr);
      tf.dispose(Object.values(update));
    }
    tf.dispose(inputs);
    this.opts.metrics?.onTrainStep({
      samples: header.nPos,
      stepSeconds: (performance.now() - t0) / 1000,
      epoch: header.epoch + 1,
      loss: NaN,
      goodnessPos: NaN,
      goodnessNeg: NaN,
    });
  }

  /** Goodness of every overlaid row (each layer's) to the coordinator, activations downstream. */
  private async onEval(
    run: Run,
    header: EvalHeader,
    x: Float32Array,
    waitMs: number,
    decodeMs: number,
  ): Promise<void> {
    this.enter('evaluating', `eval batch ${header.seq}`);
    const rows = header.tensors[0]!.shape[0]!;
    const steps: { g: Float32Array; stepMs: number }[] = [];
    let input = tf.tensor2d(x, [rows, this.layers[0]!.config.inDim]);
    for (const layer of this.layers) {
      const t0 = performance.now();
      const h = layer.forward(input);
      input.dispose();
      input = h;
      // One row per image: a competitive layer's class goodness, or (neutral labels) the
      // readout's log-probabilities, label-major as goodness is.
      const g =
        rows === header.images && layer instanceof FFLayer
          ? tf.tidy(() => tf.transpose(layer.readoutScores(h)).reshape([-1]))
          : layer.goodness(h);
      steps.push({ g: g.dataSync() as Float32Array, stepMs: performance.now() - t0 });
      g.dispose();
    }
    const t1 = performance.now();
    const out = run.downstream ? readFloats(input) : null;
    input.dispose();
    steps.at(-1)!.stepMs += performance.now() - t1;
    const sent = out ? await this.forward(run, header, [out]) : NOT_SENT;
    for (const [i, step] of steps.entries()) {
      const [first, last] = [i === 0, i === steps.length - 1];
      const layer = this.opts.layers.first + i;
      this.opts.metrics?.onEval({
        layer,
        samples: header.images,
        stepSeconds: step.stepMs / 1000,
        waitSeconds: first ? waitMs / 1000 : 0,
        transportSeconds: ((first ? decodeMs : 0) + (last ? sent.encodeMs : 0)) / 1000,
        sendSeconds: last ? sent.blockedMs / 1000 : 0,
        epoch: header.epoch + 1,
      });
      await this.sendResult(run, {
        type: 'goodness',
        layer,
        run: run.id,
        epoch: header.epoch,
        seq: header.seq,
        images: header.images,
        g: step.g,
      });
    }
  }

  /** Markers pass every stage in order with the data: `weights`, `end`, `stop`. */
  private async onMarker(run: Run, header: MarkerHeader, frames: Buffer[]): Promise<void> {
    await this.forward(run, header, []);
    // A primary's replicas end their runs with it; they hold its weights, and report nothing.
    if (header.op !== 'weights') for (const push of run.relay) await push.send(frames);
    const replica = run.config.replicas > 1 && run.config.replica > 1;
    if (header.op === 'weights' && replica) return;
    if (header.op === 'weights') {
      for (const [i, layer] of this.layers.entries()) {
        const index = this.opts.layers.first - 1 + i;
        await this.sendResult(run, {
          type: 'weights',
          layer: index + 1,
          run: run.id,
          epoch: header.epoch,
          optimizerStep: layer.steps,
          tensors: Object.fromEntries(layer.exportState(layerPrefix(index), true)),
        });
      }
      return;
    }
    // end or stop: the last stage's ack tells the coordinator every stage has seen it.
    if (!run.downstream && !replica) {
      await this.sendResult(run, {
        type: 'ack',
        layer: this.opts.layers.first,
        run: run.id,
        op: header.op,
        id: header.id,
        epoch: header.epoch,
      });
    }
    if (header.op === 'stop') {
      this.control.linger = LINGER_MS; // for the ack above
      this.endRun(run, `run ${run.id} ended with stop`);
      await this.close('stop marker');
      return;
    }
    this.endRun(run, `run ${run.id} ended`);
    log.info(
      `${this.name}: run ${run.id} over; keeping the layer${this.layers.length > 1 ? 's' : ''}, waiting for the next coordinator`,
    );
    this.register(Infinity);
  }

  // -------------------------------------------------------------------------------------------
  // Sending
  // -------------------------------------------------------------------------------------------

  /** Sends the message on with this stage's activations as its tensor. */
  private async forward(
    run: Run,
    header: DataHeader,
    tensors: Float32Array[],
  ): Promise<{ encodeMs: number; blockedMs: number }> {
    if (!run.downstream) return NOT_SENT;
    const t0 = performance.now();
    const row = this.rowShape('out');
    // 'x' becomes the last layer's activations, in their shape; other tensors ('y') pass on as
    // they came.
    const shaped = header.tensors
      .slice(0, tensors.length)
      .map((t, i) => (i === 0 ? { name: t.name, shape: [t.shape[0]!, ...row] } : t));
    const frames = encodeData({ ...header, tensors: shaped }, tensors);
    this.opts.metrics?.onSent(
      header.kind,
      frames.reduce((n, f) => n + f.length, 0),
    );
    const t1 = performance.now();
    // Resolves once zeromq has queued the message: waits only while the next stage's queue is full.
    await run.downstream.send(frames);
    return { encodeMs: t1 - t0, blockedMs: performance.now() - t1 };
  }

  /** The PUSH to the next stage of `config`'s run (CurveZMQ with its key, when keys are on). */
  private downstreamTo(config: ConfigMessage): { push: Push; linked: Promise<boolean> } {
    const push = dataPush();
    if (this.opts.security) curveClient(push, this.opts.security.keys, config.nextKey);
    const linked = handshake(push, config.linkTimeoutMs);
    try {
      push.connect(config.next!);
    } catch (err) {
      closeAll(push);
      throw new StageError(
        'STAGE_BAD_CONFIG',
        `${this.name}: config of run ${config.run}: cannot connect to next ` +
          `${JSON.stringify(config.next)}: ${(err as Error).message}`,
      );
    }
    return { push, linked };
  }

  /** Results go on the control connection: the one that registered this stage's layers. */
  private async sendResult(run: Run, msg: ResultMessage): Promise<void> {
    if (run.over) return;
    await this.controlOut.send(encodeControl(msg));
  }

  /** Best effort: a control message that cannot go out is not worth failing for. */
  private sendControl(msg: ControlMessage): void {
    this.controlOut.send(encodeControl(msg)).catch(() => {});
  }

  /**
   * A malformed message, counted and logged (once a minute per reason); reported to the
   * coordinator of the run served (it may have been one of its batches). The stage goes on.
   */
  private async reject(
    run: Run | null,
    code: ErrorCode<'protocol'>,
    reason: string,
  ): Promise<void> {
    this.opts.metrics?.onRejected(code);
    this.logRejection(code, `rejected a message (${code}): ${reason}`);
    if (run) {
      await this.sendResult(run, {
        type: 'rejected',
        layer: this.opts.layers.first,
        run: run.id,
        code,
        reason,
      });
    }
  }

  /** A line about a message refused: once a minute per kind at most (peers choose how many). */
  private logRejection(key: string, line: string): void {
    this.rejectionLog.line(key, `${this.name}: ${line}`);
  }
}

/**
 * The shards of a batch this replica of `config`'s stage computes, and their rows (the batch
 * itself is released): the shard sizes of the whole batch, its own shards' indexes and inputs.
 */
function ownRows(
  config: ConfigMessage,
  nPos: number,
  batch: tf.Tensor2D,
  first: ShardedLayer,
): { sizes: number[]; own: number[]; inputs: tf.Tensor2D[] } {
  const sizes = shardSizes(nPos, config.shards);
  const own = ownShards(sizes.length, config.shards, config.replica - 1, config.replicas);
  const inputs = own.map((k) => first.shardInput(batch, nPos, sizes, k));
  batch.dispose();
  return { sizes, own, inputs };
}

interface LayerStepResult {
  loss: number;
  goodnessPos: number;
  goodnessNeg: number;
  logits: Float32Array;
  stepMs: number;
}

/** A step's [loss, mean goodness of positive rows, of negative rows]. */
function readStats(stats: tf.Tensor1D): { loss: number; goodnessPos: number; goodnessNeg: number } {
  const [loss, goodnessPos, goodnessNeg] = stats.dataSync() as Float32Array;
  return { loss: loss!, goodnessPos: goodnessPos!, goodnessNeg: goodnessNeg! };
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/**
 * What a stage's layers take: FF rows (pos; neg) without labels, with readouts (pos; neg;
 * neutral) and labels, or competitive (each image once) with labels.
 */
type InputKind = 'ff' | 'readout' | 'competitive';

/**
 * A batch of the layout the stage's layers take, no larger than the run's: the size this
 * stage checked its memory for.
 */
function checkBatch(header: DataHeader, config: ConfigMessage, kind: InputKind): void {
  const labelled = kind !== 'ff';
  if (header.kind === 'train' && (header.tensors.length === 2) !== labelled) {
    throw new ProtocolError(
      'BAD_SHAPE',
      labelled
        ? `a train message of this run carries the labels 'y' (its layers are ${kind})`
        : "a train message of this run carries no labels 'y' (its layers have no readouts)",
    );
  }
  const rows = header.kind === 'marker' ? 0 : header.tensors[0]!.shape[0]!;
  if (
    header.kind === 'train' &&
    rows !== (kind === 'competitive' ? 1 : 3) * header.nPos &&
    labelled
  ) {
    throw new ProtocolError(
      'BAD_SHAPE',
      `a train message of this run has ${kind === 'competitive' ? 'nPos' : '3 * nPos'} rows (its layers are ${kind}); got ${rows}`,
    );
  }
  if (header.kind === 'eval' && (rows === header.images) !== (kind === 'competitive')) {
    if (kind === 'ff')
      throw new ProtocolError('BAD_SHAPE', 'a readout evaluation, but this layer has no readout');
    if (kind === 'competitive')
      throw new ProtocolError(
        'BAD_SHAPE',
        'an evaluation with label overlays, but competitive layers take each image once',
      );
  }
  const [n, max, what] =
    header.kind === 'train'
      ? [header.nPos, config.batchSize, 'nPos']
      : header.kind === 'eval'
        ? [header.images, config.evalBatchSize, 'images']
        : [0, 0, ''];
  if (n > max) {
    throw new ProtocolError('BAD_SHAPE', `header.${what} is ${n}, more than this run's ${max}`);
  }
}

function isStageInput(type: string): type is StageInput & ControlMessage['type'] {
  return (STAGE_INPUTS as readonly string[]).includes(type);
}
