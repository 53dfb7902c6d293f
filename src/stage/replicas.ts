// What replicas of a stage say to each other, on their exchange sockets: a replica sends its
// primary (replica 1) the parts of each layer's step for the shards it computed; the primary
// sums every part in shard order (as one process would), applies the update and sends the
// summed gradient back, which each replica applies: every replica ends each batch with the same
// bits. The mailbox reads an exchange socket all the time, so that a message waited for is
// never taken by a wait given up (a run aborted mid-step).
import * as tf from '@tensorflow/tfjs';
import type { ShardPart, ShardedLayer } from '../core/shards.js';
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

/** Tensors by name as a message's. */
export function messageTensors(named: Record<string, tf.Tensor>): Record<string, WeightsTensor> {
  return Object.fromEntries(Object.entries(named).map(([k, t]) => [k, tensorOf(t)]));
}

/** Parts of shards `shards` as a message's tensors: `k.h`, `k.g`, `k.loss` and `k.<term>`. */
export function partsTensors(shards: number[], parts: ShardPart[]): Record<string, WeightsTensor> {
  const out: Record<string, WeightsTensor> = {};
  parts.forEach((p, i) => {
    const loss = { shape: [1], data: Float32Array.of(p.loss.dataSync()[0]!) };
    const named = { ...messageTensors({ h: p.h, g: p.g, ...p.terms }), loss };
    for (const [name, t] of Object.entries(named)) out[`${shards[i]!}.${name}`] = t;
  });
  return out;
}

type Shapes = Pick<ShardedLayer, 'partShapes' | 'updateShapes'>;

const shapeIs = (t: WeightsTensor | undefined, shape: number[]) =>
  t !== undefined && t.shape.length === shape.length && t.shape.every((n, i) => n === shape[i]);

/**
 * Whether a parts message holds shards `ks` of `layer`, each of `sizes[k]` positive rows, every
 * tensor the layer's part has in its shape: anything else (a peer's junk, without keys) is
 * never taken, so never fails a step.
 */
export function partsFit(msg: PartsMessage, ks: number[], sizes: number[], layer: Shapes): boolean {
  return ks.every((k) =>
    Object.entries(layer.partShapes(sizes[k]!)).every(([name, shape]) =>
      shapeIs(msg.tensors[`${k}.${name}`], shape),
    ),
  );
}

/** Whether an update holds every tensor of `layer`'s, in its shape. */
export function updateFits(msg: UpdateMessage, layer: Shapes): boolean {
  return Object.entries(layer.updateShapes()).every(([name, shape]) =>
    shapeIs(msg.tensors[name], shape),
  );
}

/** An update's tensors (one that updateFits), owned by the caller. */
export function updateOf(msg: UpdateMessage, layer: Shapes): Record<string, tf.Tensor> {
  return Object.fromEntries(
    Object.entries(layer.updateShapes()).map(([name, shape]) => [
      name,
      tf.tensor(msg.tensors[name]!.data, shape),
    ]),
  );
}

/** Shard k's part from a parts message that partsFit (tensors the caller owns). */
export function partOf(msg: PartsMessage, k: number, size: number, layer: Shapes): ShardPart {
  const t = (name: string) => msg.tensors[`${k}.${name}`]!;
  const shapes = layer.partShapes(size);
  const terms = Object.keys(shapes).filter((name) => !['h', 'g', 'loss'].includes(name));
  return {
    h: tf.tensor2d(t('h').data, shapes.h as [number, number]),
    g: tf.tensor1d(t('g').data),
    loss: tf.scalar(t('loss').data[0]!),
    terms: Object.fromEntries(terms.map((name) => [name, tf.tensor(t(name).data, shapes[name])])),
  };
}
