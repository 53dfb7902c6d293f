// What replicas of a stage say to each other, on their exchange sockets: a replica sends its
// primary (replica 1) the parts of each layer's step for the shards it computed; the primary
// sums every part in shard order (as one process would), applies the update and sends the
// summed gradient back, which each replica applies: every replica ends each batch with the same
// bits. The mailbox reads an exchange socket all the time, so that a message waited for is
// never taken by a wait given up (a run aborted mid-step).
import * as tf from '@tensorflow/tfjs';
import type { ShardPart } from '../core/ff-layer.js';
import { isProtocolError, type ProtocolError } from '../transport/errors.js';
import {
  decodeControl,
  type PartsMessage,
  type UpdateMessage,
  type WeightsTensor,
} from '../transport/wire.js';
import type { Inbox } from './inbox.js';

/** A run ended while one of its steps waited for a replica. */
export class RunOver extends Error {}

type Exchange = PartsMessage | UpdateMessage;

/** The most messages kept for later (a primary's replicas run at most a batch ahead). */
const KEPT = 1024;

export class Mailbox {
  private readonly items: Exchange[] = [];
  private wake: (() => void) | null = null;

  constructor(
    private readonly inbox: Inbox,
    private readonly onBad: (err: ProtocolError) => void,
  ) {
    void this.pump();
  }

  /** The first message `pick` takes, waiting for it; RunOver once `signal` aborts. */
  async take<T extends Exchange>(pick: (m: Exchange) => m is T, signal: AbortSignal): Promise<T> {
    for (;;) {
      const i = this.items.findIndex(pick);
      if (i >= 0) return this.items.splice(i, 1)[0] as T;
      if (signal.aborted) throw new RunOver();
      let onAbort = () => {};
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        onAbort = resolve;
        signal.addEventListener('abort', onAbort, { once: true });
      });
      signal.removeEventListener('abort', onAbort);
      this.wake = null;
    }
  }

  /** Forgets what other runs sent (leftovers of an aborted one). */
  keepOnly(run: string): void {
    for (let i = this.items.length - 1; i >= 0; i--) {
      if (this.items[i]!.run !== run) this.items.splice(i, 1);
    }
  }

  private async pump(): Promise<void> {
    for (;;) {
      const frames = await this.inbox.next();
      if (!frames) break;
      try {
        const msg = decodeControl(frames[0] ?? Buffer.alloc(0));
        if (msg.type !== 'parts' && msg.type !== 'update') continue;
        this.items.push(msg);
        if (this.items.length > KEPT) this.items.shift();
        this.wake?.();
      } catch (err) {
        if (!isProtocolError(err)) throw err;
        this.onBad(err);
      }
    }
    this.wake?.();
  }
}

const tensorOf = (t: tf.Tensor): WeightsTensor => ({
  shape: [...t.shape],
  data: t.dataSync() as Float32Array,
});

/** Parts of shards `shards` as a message's tensors. */
export function partsTensors(shards: number[], parts: ShardPart[]): Record<string, WeightsTensor> {
  const out: Record<string, WeightsTensor> = {};
  parts.forEach((p, i) => {
    const k = shards[i]!;
    out[`${k}.h`] = tensorOf(p.h);
    out[`${k}.g`] = tensorOf(p.g);
    out[`${k}.loss`] = tensorOf(tf.reshape(p.loss, [1]));
    out[`${k}.dw`] = tensorOf(p.dw);
    out[`${k}.db`] = tensorOf(p.db);
  });
  return out;
}

/** Shard k's part from a parts message (tensors the caller owns), or an error naming it. */
export function partOf(
  msg: PartsMessage,
  k: number,
  dims: { inDim: number; outDim: number },
): ShardPart {
  const get = (name: string, shape: (n: number) => number[]) => {
    const t = msg.tensors[`${k}.${name}`];
    if (!t) throw new Error(`replica ${msg.replica} sent no ${k}.${name}`);
    const want = shape(t.shape[0] ?? 0);
    if (t.shape.join() !== want.join()) {
      throw new Error(`replica ${msg.replica}: ${k}.${name} is [${t.shape}], not [${want}]`);
    }
    return t.data;
  };
  const h = get('h', (n) => [n, dims.outDim]);
  const rows = h.length / dims.outDim;
  return {
    h: tf.tensor2d(h, [rows, dims.outDim]),
    g: tf.tensor1d(get('g', () => [rows])),
    loss: tf.scalar(get('loss', () => [1])[0]!),
    dw: tf.tensor2d(
      get('dw', () => [dims.outDim, dims.inDim]),
      [dims.outDim, dims.inDim],
    ),
    db: tf.tensor1d(get('db', () => [dims.outDim])),
  };
}
