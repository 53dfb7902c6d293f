// A stage's inbound queue: messages read from its PULL socket ahead of the one being handled,
// so the next batch is ready the moment a step ends. It is bounded in messages and in bytes:
// when either bound is reached it stops reading, the socket's own small queue fills, and
// ZeroMQ's high-water mark holds the upstream back. Nothing is dropped here.
import type { Pull } from 'zeromq';
import { INBOX_BYTES, INBOX_MESSAGES } from '../transport/bounds.js';
import { setMaxMessageSizeForBind } from '../transport/sockets.js';

export interface InboxLimits {
  /** Messages queued ahead of the one being handled. */
  messages: number;
  /**
   * Bytes queued: reading stops once they reach this; a message larger than the bound is
   * still taken when the queue is empty (so at most bytes + one message are held).
   */
  bytes: number;
}

/** How long rebind() waits for ZeroMQ to let go of the old listener's port. */
const REBIND_WAIT_MS = 2000;

/** Two messages ahead keep a stage busy; 256 MiB holds two of the largest evaluation batches. */
export const DEFAULT_INBOX_LIMITS: InboxLimits = { messages: INBOX_MESSAGES, bytes: INBOX_BYTES };

export class Inbox {
  private readonly queue: Buffer[][] = [];
  private queuedBytes = 0;
  private closed = false;
  private readError: Error | null = null;
  private wakeReader: (() => void) | null = null;
  private wakeConsumer: (() => void) | null = null;
  private readonly reading: Promise<void>;
  /** A rebind() under way: the socket takes no receive() until it is done. */
  private rebinding: Promise<void> | null = null;

  /** The endpoint bind() bound (with the port ZeroMQ picked for `*`). */
  endpoint = '';

  /** Takes over `socket`: reads from it until close(), once bound. */
  constructor(
    private readonly socket: Pull,
    private readonly limits: InboxLimits = DEFAULT_INBOX_LIMITS,
  ) {
    this.reading = this.readLoop();
  }

  /** Binds the socket to `endpoint`; resolves with the endpoint bound. */
  async bind(endpoint: string): Promise<string> {
    await this.socket.bind(endpoint);
    this.endpoint = this.socket.lastEndpoint ?? endpoint;
    return this.endpoint;
  }

  /**
   * Binds the same endpoint again with `maxBytes` the largest message ZeroMQ accepts (a larger
   * one drops its connection before it is read into memory). A listener takes its options when
   * it binds; unbinding also drops every connection it accepted.
   */
  async rebind(maxBytes: number): Promise<void> {
    const done = this.bindAgain(this.endpoint, maxBytes);
    this.rebinding = done.then(
      () => {},
      () => {},
    );
    try {
      await done;
    } finally {
      this.rebinding = null;
    }
  }

  private async bindAgain(endpoint: string, maxBytes: number): Promise<void> {
    await this.socket.unbind(endpoint);
    setMaxMessageSizeForBind(this.socket, maxBytes);
    // ZeroMQ's I/O thread closes the old listener after unbind() resolves; on a busy machine
    // the port can still be held for a moment.
    for (let waited = 0; ; waited += 10) {
      try {
        await this.socket.bind(endpoint);
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== 'EADDRINUSE' || waited >= REBIND_WAIT_MS) throw err;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  /** Messages queued, not yet taken by next(). */
  get depth(): number {
    return this.queue.length;
  }

  /** Bytes of the messages queued. */
  get bytes(): number {
    return this.queuedBytes;
  }

  /**
   * The oldest message, waiting for one if none is queued; null once the inbox is closed.
   * Throws the socket's error if reading failed.
   */
  async next(): Promise<Buffer[] | null> {
    for (;;) {
      const frames = this.queue.shift();
      if (frames) {
        this.queuedBytes -= size(frames);
        this.wake('reader');
        return frames;
      }
      if (this.readError) throw this.readError;
      if (this.closed) return null;
      await new Promise<void>((r) => (this.wakeConsumer = r));
    }
  }

  /** Stops reading and closes the socket; a pending next() resolves null. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.socket.close(); // rejects a pending receive()
    this.wake('reader');
    this.wake('consumer');
    await this.reading;
  }

  private full(): boolean {
    return (
      this.queue.length >= this.limits.messages ||
      (this.queue.length > 0 && this.queuedBytes >= this.limits.bytes)
    );
  }

  private async readLoop(): Promise<void> {
    while (!this.closed) {
      if (this.full()) {
        await new Promise<void>((r) => (this.wakeReader = r));
        continue;
      }
      let frames: Buffer[];
      try {
        if (this.rebinding) await this.rebinding;
        frames = await this.socket.receive();
      } catch (err) {
        // A receive() that came as a rebind started (ZeroMQ refuses it): again, once bound.
        if (this.rebinding && /blocked by a bind/.test((err as Error).message)) continue;
        if (!this.closed) this.readError = err as Error;
        break;
      }
      this.queue.push(frames);
      this.queuedBytes += size(frames);
      this.wake('consumer');
    }
    this.wake('consumer');
  }

  private wake(who: 'reader' | 'consumer'): void {
    const w = who === 'reader' ? this.wakeReader : this.wakeConsumer;
    if (who === 'reader') this.wakeReader = null;
    else this.wakeConsumer = null;
    w?.();
  }
}

function size(frames: Buffer[]): number {
  let n = 0;
  for (const f of frames) n += f.length;
  return n;
}
