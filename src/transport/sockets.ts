// Socket helpers. The stable side binds and the moving side connects: a stage binds its inbound
// PULL and the upstream PUSH connects to it, so the upstream's queue survives a restart.
import { createServer } from 'node:net';
import { Pull, Push, type MessageLike, type Socket } from 'zeromq';
import { DATA_HWM } from './bounds.js';

/**
 * How long close() may keep flushing queued messages (e.g. the final stop marker, a stage's
 * last word to its coordinator) in the background: a live peer takes them in milliseconds,
 * and a peer that is gone would otherwise hold process exit. Under 500 ms, after which
 * zeromq.js, exiting, warns that it is "Waiting for queued ZeroMQ messages to be delivered".
 */
export const LINGER_MS = 400;

/**
 * The kernel's buffer on each side of a data link. A message of activations is MBs; with the
 * usual 208 KiB default every one crosses in many reads and writes, each waking ZeroMQ's I/O
 * thread (measured, 784-1000-1000 at batch 100 on 2 cores, 3 pairs of runs: the 2-stage
 * pipeline 4-7% faster, 1-1.8 s less CPU an epoch). The kernel caps it at net.core.wmem_max and
 * rmem_max (4 MiB on common distributions).
 */
export const DATA_SOCKET_BUFFER_BYTES = 4 * 1024 ** 2;

export interface DataSocketOptions {
  highWaterMark?: number;
  lingerMs?: number;
}

/** Binds to an ephemeral TCP port on `host` and returns the concrete endpoint to advertise. */
export async function bindAny(socket: Socket, host = '127.0.0.1'): Promise<string> {
  await socket.bind(`tcp://${host}:*`);
  const endpoint = socket.lastEndpoint;
  if (endpoint === null) throw new Error(`bound tcp://${host}:* but zeromq reports no endpoint`);
  // Binding to 0.0.0.0 gives tcp://0.0.0.0:port, which a peer cannot connect to: the caller
  // must then advertise its own host name.
  return endpoint;
}

/**
 * Resolves true once `socket` completes a ZMTP handshake with a peer (connected, and with
 * CurveZMQ, authenticated), false after `ms`. Call it before connect().
 */
export function handshake(socket: Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.events.off('handshake', onHandshake);
      resolve(ok);
    };
    const onHandshake = () => done(true);
    const timer = setTimeout(() => done(false), ms);
    socket.events.on('handshake', onHandshake);
  });
}

/** A PUSH for the data path; connects to `endpoint` when given. */
export function dataPush(endpoint?: string, options: DataSocketOptions = {}): Push {
  const push = new Push({
    sendHighWaterMark: options.highWaterMark ?? DATA_HWM,
    sendBufferSize: DATA_SOCKET_BUFFER_BYTES,
    linger: options.lingerMs ?? LINGER_MS,
  });
  if (endpoint !== undefined) push.connect(endpoint);
  return push;
}

/** A PULL for the data path, not yet bound (see bindAny). */
export function dataPull(options: DataSocketOptions = {}): Pull {
  return new Pull({
    receiveHighWaterMark: options.highWaterMark ?? DATA_HWM,
    receiveBufferSize: DATA_SOCKET_BUFFER_BYTES,
    linger: options.lingerMs ?? LINGER_MS,
  });
}

/** Closes every socket given; never throws, so it is safe in `finally` and cleanup paths. */
const NEXT_BIND_WARNING = 'will not take effect until next connect/bind';

/**
 * Sets the largest message an unbound `socket` accepts, for the bind that follows. zeromq.js 6
 * counts a bind that failed (EADDRINUSE while an old listener lets go of its port) as an
 * endpoint, so once a rebind has retried it believes the socket is still bound and warns, on
 * every later rebind, that the option waits for the next bind: that bind is the next call, so
 * the warning is dropped (any other warning passes).
 */
export function setMaxMessageSizeForBind(socket: Socket, bytes: number): void {
  const emit = process.emitWarning;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    if (String(warning).includes(NEXT_BIND_WARNING)) return;
    (emit as (...a: unknown[]) => void).call(process, warning, ...rest);
  }) as typeof process.emitWarning;
  try {
    socket.maxMessageSize = bytes;
  } finally {
    process.emitWarning = emit;
  }
}

export function closeAll(...sockets: (Socket | null | undefined)[]): void {
  for (const s of sockets) {
    try {
      s?.close();
    } catch {
      // Already closed or mid-teardown: nothing left to release.
    }
  }
}

/** A free TCP port on `host` right now (another process may take it before it is used). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('no port assigned'))));
    });
  });
}

interface Sendable {
  send(message: MessageLike | MessageLike[]): Promise<void>;
}

/**
 * Queues sends on one socket in order. zeromq allows a single pending send() per socket and
 * rejects a second with EBUSY; control and result sockets are written from several places (a
 * heartbeat timer, the message handler), so they go through one of these. Not for the data path:
 * this queue is unbounded, and data must feel the high-water mark directly.
 */
export class SerialSender {
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly socket: Sendable) {}

  /** Resolves when this message is queued in zeromq; rejects with the socket's error. */
  send(message: MessageLike | MessageLike[]): Promise<void> {
    const sent = this.tail.then(() => this.socket.send(message));
    // A failed send is reported to its caller only; later sends still go out.
    this.tail = sent.catch(() => undefined);
    return sent;
  }

  /** Resolves once everything sent so far has been handed to zeromq (or failed). */
  idle(): Promise<void> {
    return this.tail;
  }
}
