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
}

export class StageError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'StageError';
    this.code = code;
  }
}

export class Stage {
  readonly opts: StageOptions;
  private readonly control = new Dealer({ linger: 0 });
  private readonly inbound: Pull = dataPull();
  private downstream: Push | null = null;
  private readonly results = new Push({ linger: 1000 });
  private readonly controlOut = new SerialSender(this.control);
  private readonly resultsOut = new SerialSender(this.results);
  private layer: FFLayer | null = null;
  private config: ConfigMessage | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private readonly rejectedCodes = new Set<string>();
  private stopped = false;

  constructor(opts: StageOptions) {
    this.opts = opts;
  }

  /** The endpoint upstream connects to; valid after start(). */
  endpoint = '';

  /** Binds, registers with the coordinator, and builds the layer from the config it sends. */
  async start(): Promise<ConfigMessage> {
    const { opts } = this;
    await this.inbound.bind(opts.listen);
    const bound = this.inbound.lastEndpoint ?? opts.listen;
    this.endpoint = opts.advertise ?? bound.replace('0.0.0.0', hostname());
    this.control.connect(opts.coordinator);
    await this.controlOut.send(
      encodeControl({
        type: 'hello',
        layer: opts.layer,
        version: PROTOCOL_VERSION,
        backend: opts.backend.name,
        endpoint: this.endpoint,
        pid: process.pid,
        host: hostname(),
      }),
    );
    opts.log(
      `layer ${opts.layer}: listening on ${this.endpoint}, hello sent to ${opts.coordinator}`,
    );
    const config = await this.awaitConfig(opts.configTimeoutMs ?? 120_000);
    this.config = config;
    this.layer = buildLayer(
      config.model as ModelConfig,
      config.optimizer as OptimizerConfig,
      config.seed,
      opts.layer - 1,
    );
    if (config.next) {
      this.downstream = dataPush();
      this.downstream.connect(config.next);
    }
    this.results.connect(config.results);
    this.heartbeat = setInterval(() => {
      this.controlOut
        .send(encodeControl({ type: 'heartbeat', layer: opts.layer, t: Date.now() }))
        .catch(() => {});
    }, opts.heartbeatMs ?? 1000);
    await this.controlOut.send(encodeControl({ type: 'ready', layer: opts.layer }));
    const { inDim, outDim } = this.layer.config;
    opts.log(
      `layer ${opts.layer}/${config.numLayers}: ${inDim}-${outDim}, run ${config.run}, ` +
        `downstream ${config.next ?? '(last stage)'}, results ${config.results}`,
    );
    return config;
  }

  private async awaitConfig(timeoutMs: number): Promise<ConfigMessage> {
    const timer = setTimeout(() => this.control.close(), timeoutMs);
    try {
      for (;;) {
        const [frame] = await this.control.receive();
        const msg = decodeControl(frame!);
        if (msg.type === 'config') return msg;
        if (msg.type === 'stop')
          throw new StageError('STAGE_STOPPED', `coordinator stopped the run: ${msg.reason}`);
        if (msg.type === 'error') throw new StageError(msg.code, msg.message);
      }
    } catch (err) {
      if (this.control.closed) {
        throw new StageError(
          'STAGE_NO_CONFIG',
          `no config from the coordinator at ${this.opts.coordinator} within ${timeoutMs / 1000}s`,
        );
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Serves data until a stop marker passes through or the coordinator says stop. */
  async serve(): Promise<void> {
    // Ends when close() closes the control socket.
    void this.watchControl();
    try {
      while (!this.stopped) {
        let frames: Buffer[];
        const t0 = performance.now();
        try {
          frames = await this.inbound.receive();
        } catch (err) {
          if (this.stopped) break;
          throw err;
        }
        try {
          await this.handle(frames, performance.now() - t0);
        } catch (err) {
          if (this.stopped) break; // a send cut short by a stop
          throw err;
        }
      }
    } finally {
      this.stopped = true;
    }
  }

  private async watchControl(): Promise<void> {
    while (!this.stopped) {
      let frame: Buffer | undefined;
      try {
        [frame] = await this.control.receive();
      } catch {
        return; // closed
      }
      const msg = decodeControl(frame!);
      if (msg.type === 'stop') {
        this.opts.log(`layer ${this.opts.layer}: coordinator says stop (${msg.reason})`);
        this.stopped = true;
        // Also unblocks a send waiting on a downstream stage that may be gone.
        closeAll(this.inbound, this.downstream);
      }
    }
  }

  private async handle(frames: Buffer[], waitMs: number): Promise<void> {
    const layer = this.layer!;
    let msg: ReturnType<typeof decodeData>;
    const tDecode = performance.now();
    try {
      msg = decodeData(frames, { width: layer.config.inDim, checkFinite: true });
    } catch (err) {
      if (!isProtocolError(err)) throw err;
      // Counted and reported, logged once per reason; the stage keeps serving.
      if (!this.rejectedCodes.has(err.code)) {
        this.rejectedCodes.add(err.code);
        this.opts.log(`layer ${this.opts.layer}: rejected a message (${err.code}): ${err.message}`);
      }
      await this.resultsOut.send(
        encodeControl({
          type: 'rejected',
          layer: this.opts.layer,
          code: err.code,
          reason: err.message,
        }),
      );
      return;
    }
    const { header, tensors } = msg;
    const decodeMs = performance.now() - tDecode;
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
      if (header.op === 'stop') this.stopped = true;
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
      const out = h.dataSync() as Float32Array;
      const [loss, goodnessPos, goodnessNeg] = stats.dataSync();
      tf.dispose([h, stats]);
      const stepMs = performance.now() - t0;
      const tSend = performance.now();
      await this.forward(header, [out]);
      const transportMs = decodeMs + performance.now() - tSend;
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
        }),
      );
      return;
    }
    // eval: goodness of every overlaid row to the coordinator, activations downstream.
    const input = tf.tensor2d(x, [rows, layer.config.inDim]);
    const h = layer.forward(input);
    input.dispose();
    const g = layer.goodness(h);
    const goodness = g.dataSync() as Float32Array;
    const out = this.downstream ? (h.dataSync() as Float32Array) : null;
    tf.dispose([h, g]);
    if (out) await this.forward(header, [out]);
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

  /** Sends the message on with this stage's activations as its tensor. */
  private async forward(header: DataHeader, tensors: Float32Array[]): Promise<void> {
    if (!this.downstream) return;
    const outDim = this.layer!.config.outDim;
    const shaped = header.tensors
      .slice(0, tensors.length)
      .map((t) => ({ name: t.name, shape: [t.shape[0]!, outDim] }));
    await this.downstream.send(encodeData({ ...header, tensors: shaped }, tensors));
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
    this.stopped = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    await this.resultsOut.idle();
    closeAll(this.inbound, this.downstream, this.results, this.control);
    this.layer?.dispose();
    this.layer = null;
  }
}
