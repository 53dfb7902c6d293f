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

type Dims = { inDim: number; outDim: number };

const shapeIs = (t: WeightsTensor | undefined, shape: number[]) =>
  t !== undefined && t.shape.length === shape.length && t.shape.every((n, i) => n === shape[i]);

/**
 * Whether a parts message holds shards `ks` of a layer of `dims`, each of `sizes[k]` positive
 * rows: anything else (a peer's junk, without keys) is never taken, so never fails a step.
 */
export function partsFit(msg: PartsMessage, ks: number[], sizes: number[], dims: Dims): boolean {
  return ks.every((k) => {
    const rows = 2 * sizes[k]!;
    const t = (name: string) => msg.tensors[`${k}.${name}`];
    return (
      shapeIs(t('h'), [rows, dims.outDim]) &&
      shapeIs(t('g'), [rows]) &&
      shapeIs(t('loss'), [1]) &&
      shapeIs(t('dw'), [dims.outDim, dims.inDim]) &&
      shapeIs(t('db'), [dims.outDim])
    );
  });
}

/** Whether an update holds a layer of `dims`'s gradient. */
export function updateFits(msg: UpdateMessage, dims: Dims): boolean {
  return (
    shapeIs(msg.tensors.dw, [dims.outDim, dims.inDim]) && shapeIs(msg.tensors.db, [dims.outDim])
  );
}

/** Shard k's part from a parts message that partsFit (tensors the caller owns). */
export function partOf(msg: PartsMessage, k: number, dims: Dims): ShardPart {
  const t = (name: string) => msg.tensors[`${k}.${name}`]!;
  const rows = t('g').shape[0]!;
  return {
    h: tf.tensor2d(t('h').data, [rows, dims.outDim]),
    g: tf.tensor1d(t('g').data),
    loss: tf.scalar(t('loss').data[0]!),
    dw: tf.tensor2d(t('dw').data, [dims.outDim, dims.inDim]),
    db: tf.tensor1d(t('db').data),
  };
}
