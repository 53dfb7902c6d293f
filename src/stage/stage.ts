// A pipeline stage: one FF layer in its own process. It binds its inbound PULL socket, says
// hello to the coordinator, receives the run's config and its downstream endpoint, then trains
// on whatever arrives and forwards this step's detached activations downstream, so that all
// stages work at once on consecutive batches.
import * as tf from '@tensorflow/tfjs';
import { hostname } from 'node:os';
import { Dealer, Pull, Push } from 'zeromq';
import type { BackendInfo } from '../backend/backend.js';
import type { FFLayer } from '../core/ff-layer.js';
import { buildLayer, type ModelConfig } from '../core/ff-network.js';
import type { OptimizerConfig } from '../core/optimizer.js';
import { isProtocolError } from '../transport/errors.js';
import {
  PROTOCOL_VERSION,
  decodeControl,
  decodeData,
  encodeControl,
  encodeData,
  type ConfigMessage,
  type DataHeader,
} from '../transport/wire.js';
import { SerialSender, closeAll, dataPull, dataPush } from '../transport/sockets.js';
import type { StageMetrics } from '../metrics/index.js';

export interface StageOptions {
  /** 1-based layer index. */
  layer: number;
  /** Coordinator control endpoint, e.g. tcp://10.0.0.1:5555. */
  coordinator: string;
  /** Where to bind the inbound data socket, e.g. tcp://0.0.0.0:6000 or tcp://127.0.0.1:* . */
  listen: string;
  /** Endpoint the upstream should connect to (default: the bound one, 0.0.0.0 -> hostname). */
  advertise?: string;
  backend: BackendInfo;
  log: (line: string) => void;
  heartbeatMs?: number;
  /** Give up when the coordinator sends no config within this long. */
  configTimeoutMs?: number;
  /** Prometheus metrics of this stage, when it exposes them. */
  metrics?: StageMetrics;
}

export class StageError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'StageError';
    this.code = code;
  }
}

/** Timing of a forward that did not happen (the last stage). */
const NOT_SENT = { encodeMs: 0, blockedMs: 0 } as const;

/** Messages a stage pulls ahead of the one it is handling. */
const PREFETCH = 2;

export class Stage {
  readonly opts: StageOptions;
  private readonly control = new Dealer({ linger: 0 });
  // The receive timeout lets serve() notice an abort while no data arrives.
  private readonly inbound: Pull = dataPull();
  private downstream: Push | null = null;
  private results = new Push({ linger: 1000 });
  private readonly controlOut = new SerialSender(this.control);
  private resultsOut = new SerialSender(this.results);
  private layer: FFLayer | null = null;
  private config: ConfigMessage | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private readonly rejectedCodes = new Set<string>();
  /** Set by a marker or the coordinator: how the current run ended. */
  private ending: 'end' | 'stop' | null = null;
  private closed = false;
  private configWaiter: ((msg: ConfigMessage | Error) => void) | null = null;
  // Messages received but not yet handled (see readLoop).
  private readonly pending: Buffer[][] = [];
  private readerWaiter: (() => void) | null = null;
  private consumerWaiter: (() => void) | null = null;
  private readerDone = false;
  private reading = false;
  private readError: Error | null = null;

  constructor(opts: StageOptions) {
    this.opts = opts;
    opts.metrics?.setInboundQueueDepth(() => this.pending.length);
  }

  /** The endpoint upstream connects to; valid after the first register(). */
  endpoint = '';

  /**
   * Serves runs until one ends with `stop`: register, take the config, serve until the
   * run's end marker, then wait for the next coordinator with the layer kept in memory (so
   * `ffx-coordinator eval` can evaluate what the stage holds).
   */
  async run(): Promise<void> {
    let timeoutMs = this.opts.configTimeoutMs ?? 120_000;
    for (;;) {
      await this.register(timeoutMs);
      const ending = await this.serve();
      if (ending === 'stop' || this.closed) return;
      this.opts.log(
        `layer ${this.opts.layer}: run over; keeping the layer, waiting for the next coordinator`,
      );
      timeoutMs = Infinity; // a server now: wait as long as it takes
    }
  }

  /** Says hello (again every 2 s until answered), then sets up the run the config describes. */
  async register(timeoutMs: number): Promise<ConfigMessage> {
    const { opts } = this;
    if (!this.endpoint) {
      await this.inbound.bind(opts.listen);
      const bound = this.inbound.lastEndpoint ?? opts.listen;
      this.endpoint = opts.advertise ?? bound.replace('0.0.0.0', hostname());
      this.control.connect(opts.coordinator);
      void this.controlLoop();
      this.heartbeat = setInterval(() => {
        this.controlOut
          .send(encodeControl({ type: 'heartbeat', layer: opts.layer, t: Date.now() }))
          .catch(() => {});
      }, opts.heartbeatMs ?? 1000);
      opts.log(
        `layer ${opts.layer}: listening on ${this.endpoint}, coordinator ${opts.coordinator}`,
      );
    }
    const hello = encodeControl({
      type: 'hello',
      layer: opts.layer,
      version: PROTOCOL_VERSION,
      backend: opts.backend.name,
      endpoint: this.endpoint,
      pid: process.pid,
      host: hostname(),
    });
    let config: ConfigMessage;
    for (;;) {
      config = await new Promise<ConfigMessage>((resolve, reject) => {
        const again = setInterval(() => void this.controlOut.send(hello).catch(() => {}), 2000);
        const timer =
          timeoutMs < Infinity
            ? setTimeout(
                () =>
                  this.configWaiter?.(
                    new StageError(
                      'STAGE_NO_CONFIG',
                      `no config from the coordinator at ${opts.coordinator} within ${timeoutMs / 1000}s`,
                    ),
                  ),
                timeoutMs,
              )
            : undefined;
        this.configWaiter = (msg) => {
          clearInterval(again);
          clearTimeout(timer);
          this.configWaiter = null;
          if (msg instanceof Error) reject(msg);
          else resolve(msg);
        };
        void this.controlOut.send(hello).catch(() => {});
      });
      try {
        this.setUp(config);
        break;
      } catch (err) {
        if (!(err instanceof StageError)) throw err;
        // This coordinator cannot use this stage; say why, and stay available.
        opts.log(err.message);
        await this.controlOut.send(
          encodeControl({
            type: 'error',
            run: config.run,
            layer: opts.layer,
            code: err.code,
            message: err.message,
          }),
        );
      }
    }
    await this.controlOut.send(encodeControl({ type: 'ready', layer: opts.layer }));
    const { inDim, outDim } = this.layer!.config;
    opts.log(
      `layer ${opts.layer}/${config.numLayers}: ${inDim}-${outDim}, run ${config.run} (${config.mode}), ` +
        `downstream ${config.next ?? '(last stage)'}, results ${config.results}`,
    );
    return config;
  }

  private setUp(config: ConfigMessage): void {
    const index = this.opts.layer - 1;
    if (config.mode === 'eval') {
      const widths = (config.model as ModelConfig).layers;
      const held = this.layer?.config;
      if (!held || held.inDim !== widths[index] || held.outDim !== widths[index + 1]) {
        const has = held ? `${held.inDim}-${held.outDim}` : 'no trained layer';
        throw new StageError(
          'STAGE_NO_WEIGHTS',
          `layer ${this.opts.layer}: asked to evaluate ${widths[index]}-${widths[index + 1]}, but this stage holds ${has}`,
        );
      }
    } else {
      this.layer?.dispose();
      this.layer = null;
      const layer = buildLayer(
        config.model as ModelConfig,
        config.optimizer as OptimizerConfig,
        config.seed,
        index,
      );
      if (Object.keys(config.state).length > 0) {
        // Resuming: the checkpoint's weights and optimizer state replace the fresh ones.
        try {
          layer.importState(`layers.${index}`, new Map(Object.entries(config.state)));
        } catch (err) {
          layer.dispose();
          throw new StageError(
            'STAGE_BAD_STATE',
            `layer ${this.opts.layer}: cannot resume: ${(err as Error).message}`,
          );
        }
        layer.optimizer.step = config.optimizerStep;
      }
      this.layer = layer;
    }
    this.config = config;
    this.ending = null;
    closeAll(this.downstream, this.results);
    this.downstream = null;
    if (config.next) this.downstream = dataPush(config.next);
    this.results = new Push({ linger: 1000 });
    this.resultsOut = new SerialSender(this.results);
    this.results.connect(config.results);
  }

  /** Serves data until the run's end marker passes, or the coordinator says stop. */
  async serve(): Promise<'end' | 'stop'> {
    this.inbound.receiveTimeout = 500;
    this.readerDone = false;
    this.reading = true;
    const reader = this.readLoop();
    try {
      while (!this.ending && !this.closed) {
        const t0 = performance.now();
        const frames = await this.nextMessage();
        if (!frames) break;
        try {
          await this.handle(frames, performance.now() - t0);
        } catch (err) {
          if (this.ending || this.closed) break; // a send cut short by a stop
          throw err;
        }
      }
    } finally {
      // The reader must be gone before the next run's reader starts (one receive at a time).
      this.reading = false;
      this.wakeReader();
      await reader;
    }
    if (this.readError) throw this.readError;
    return this.ending ?? 'stop';
  }

  /**
   * Pulls messages into a small queue while the handler computes or sends, so the next batch is
   * decoded-ready when the step ends; its length is the stage's inbound queue depth. What the
   * queue holds when a run ends belongs to the next run and stays for it.
   */
  private async readLoop(): Promise<void> {
    while (this.reading && !this.ending && !this.closed) {
      if (this.pending.length >= PREFETCH) {
        await new Promise<void>((r) => (this.readerWaiter = r));
        continue;
      }
      let frames: Buffer[];
      try {
        frames = await this.inbound.receive();
      } catch (err) {
        if (this.ending || this.closed) break;
        if ((err as { code?: string }).code === 'EAGAIN') continue; // the receive timeout: check flags
        this.readError = err as Error;
        break;
      }
      this.pending.push(frames);
      this.wakeConsumer();
    }
    this.readerDone = true;
    this.wakeConsumer();
  }

  /** The next queued message, or null when the run ends; waiting here is the pipeline bubble. */
  private async nextMessage(): Promise<Buffer[] | null> {
    for (;;) {
      const frames = this.pending.shift();
      if (frames) {
        this.wakeReader();
        return frames;
      }
      if (this.readerDone || this.ending || this.closed) return null;
      await new Promise<void>((r) => (this.consumerWaiter = r));
    }
  }

  private wakeConsumer(): void {
    const w = this.consumerWaiter;
    this.consumerWaiter = null;
    w?.();
  }

  private wakeReader(): void {
    const w = this.readerWaiter;
    this.readerWaiter = null;
    w?.();
  }

  private async controlLoop(): Promise<void> {
    while (!this.closed) {
      let frame: Buffer | undefined;
      try {
        [frame] = await this.control.receive();
      } catch {
        return; // closed
      }
      let msg;
      try {
        msg = decodeControl(frame!);
      } catch (err) {
        if (!isProtocolError(err)) throw err;
        this.opts.log(`layer ${this.opts.layer}: ignored a bad control message (${err.code})`);
        continue;
      }
      if (msg.type === 'config') {
        this.configWaiter?.(msg);
      } else if (msg.type === 'error') {
        this.configWaiter?.(new StageError(msg.code, msg.message));
      } else if (msg.type === 'abort') {
        this.opts.log(`layer ${this.opts.layer}: coordinator aborted the run (${msg.reason})`);
        this.ending = 'end';
        // Unblocks a send waiting on a downstream stage that may be gone.
        closeAll(this.downstream);
        this.downstream = null;
      } else if (msg.type === 'stop') {
        this.opts.log(`layer ${this.opts.layer}: coordinator says stop (${msg.reason})`);
        this.ending = 'stop';
        this.configWaiter?.(
          new StageError('STAGE_STOPPED', `coordinator stopped the run: ${msg.reason}`),
        );
        // Unblocks a receive, and a send waiting on a downstream stage that may be gone.
        closeAll(this.inbound, this.downstream);
      }
    }
  }

  private async handle(frames: Buffer[], waitMs: number): Promise<void> {
    const layer = this.layer!;
    const metrics = this.opts.metrics;
    const bytes = frames.reduce((n, f) => n + f.length, 0);
    let msg: ReturnType<typeof decodeData>;
    const tDecode = performance.now();
    try {
      msg = decodeData(frames, { width: layer.config.inDim, checkFinite: true });
    } catch (err) {
      if (!isProtocolError(err)) throw err;
      metrics?.onReceived('invalid', bytes);
      metrics?.onInputWait(waitMs / 1000);
      await this.reject(err.code, err.message);
      return;
    }
    const { header, tensors } = msg;
    const decodeMs = performance.now() - tDecode;
    metrics?.onReceived(header.kind, bytes);
    if (header.kind === 'marker' || header.run !== this.config!.run) {
      metrics?.onInputWait(waitMs / 1000);
    }
    if (header.run !== this.config!.run) {
      // Left over from an aborted run: not this run's data.
      await this.reject(
        'BAD_RUN',
        `message of run ${header.run}, this stage serves run ${this.config!.run}`,
      );
      return;
    }
    if (header.kind === 'marker') {
      await this.forward(header, []);
      if (!this.downstream) {
        await this.resultsOut.send(
          encodeControl({
            type: 'ack',
            layer: this.opts.layer,
            op: header.op,
            id: header.id,
            epoch: header.epoch,
          }),
        );
      }
      if (header.op === 'weights') await this.sendWeights(header.epoch);
      if (header.op === 'end' || header.op === 'stop') this.ending = header.op;
      return;
    }
    const x = tensors[0]!;
    const rows = header.tensors[0]!.shape[0]!;
    if (header.kind === 'train') {
      const t0 = performance.now();
      const input = tf.tensor2d(x, [rows, layer.config.inDim]);
      const lr = header.lr ?? (this.config!.optimizer as OptimizerConfig).lr;
      const { h, stats } = layer.trainStep(input, header.nPos, lr);
      input.dispose();
      // The last stage has nowhere to send its activations: no copy out of the backend.
      const out = this.downstream ? (h.dataSync() as Float32Array) : null;
      const [loss, goodnessPos, goodnessNeg] = stats.dataSync();
      tf.dispose([h, stats]);
      const stepMs = performance.now() - t0;
      const { encodeMs, blockedMs } = out ? await this.forward(header, [out]) : NOT_SENT;
      const transportMs = decodeMs + encodeMs;
      await this.resultsOut.send(
        encodeControl({
          type: 'stats',
          layer: this.opts.layer,
          epoch: header.epoch,
          seq: header.seq,
          loss: loss!,
          goodnessPos: goodnessPos!,
          goodnessNeg: goodnessNeg!,
          stepMs,
          waitMs,
          transportMs,
          blockedMs,
        }),
      );
      metrics?.onTrainStep({
        samples: header.nPos,
        stepSeconds: stepMs / 1000,
        waitSeconds: waitMs / 1000,
        transportSeconds: transportMs / 1000,
        sendSeconds: blockedMs / 1000,
        epoch: header.epoch + 1,
        loss: loss!,
        goodnessPos: goodnessPos!,
        goodnessNeg: goodnessNeg!,
      });
      return;
    }
    // eval: goodness of every overlaid row to the coordinator, activations downstream.
    const t0 = performance.now();
    const input = tf.tensor2d(x, [rows, layer.config.inDim]);
    const h = layer.forward(input);
    input.dispose();
    const g = layer.goodness(h);
    const goodness = g.dataSync() as Float32Array;
    const out = this.downstream ? (h.dataSync() as Float32Array) : null;
    tf.dispose([h, g]);
    const stepMs = performance.now() - t0;
    const sent = out ? await this.forward(header, [out]) : NOT_SENT;
    metrics?.onEval({
      samples: header.images,
      stepSeconds: stepMs / 1000,
      waitSeconds: waitMs / 1000,
      transportSeconds: (decodeMs + sent.encodeMs) / 1000,
      sendSeconds: sent.blockedMs / 1000,
      epoch: header.epoch + 1,
    });
    await this.resultsOut.send(
      encodeControl({
        type: 'goodness',
        layer: this.opts.layer,
        epoch: header.epoch,
        seq: header.seq,
        images: header.images,
        g: goodness,
      }),
    );
  }

  /** Counted and reported to the coordinator, logged once per reason; the stage keeps serving. */
  private async reject(code: string, reason: string): Promise<void> {
    this.opts.metrics?.onRejected(code);
    if (!this.rejectedCodes.has(code)) {
      this.rejectedCodes.add(code);
      this.opts.log(`layer ${this.opts.layer}: rejected a message (${code}): ${reason}`);
    }
    await this.resultsOut.send(
      encodeControl({ type: 'rejected', layer: this.opts.layer, code, reason }),
    );
  }

  /** Sends the message on with this stage's activations as its tensor. */
  private async forward(
    header: DataHeader,
    tensors: Float32Array[],
  ): Promise<{ encodeMs: number; blockedMs: number }> {
    if (!this.downstream) return NOT_SENT;
    const t0 = performance.now();
    const outDim = this.layer!.config.outDim;
    const shaped = header.tensors
      .slice(0, tensors.length)
      .map((t) => ({ name: t.name, shape: [t.shape[0]!, outDim] }));
    const frames = encodeData({ ...header, tensors: shaped }, tensors);
    this.opts.metrics?.onSent(
      header.kind,
      frames.reduce((n, f) => n + f.length, 0),
    );
    const t1 = performance.now();
    // Resolves once zeromq has queued the message: waits only while the next stage's queue is full.
    await this.downstream.send(frames);
    return { encodeMs: t1 - t0, blockedMs: performance.now() - t1 };
  }

  private async sendWeights(epoch: number): Promise<void> {
    const layer = this.layer!;
    const state = layer.exportState(`layers.${this.opts.layer - 1}`, true);
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [name, t] of state) tensors[name] = t;
    await this.resultsOut.send(
      encodeControl({
        type: 'weights',
        layer: this.opts.layer,
        epoch,
        optimizerStep: layer.optimizer.step,
        tensors,
      }),
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    await this.resultsOut.idle();
    closeAll(this.inbound, this.downstream, this.results, this.control);
    this.layer?.dispose();
    this.layer = null;
  }
}
