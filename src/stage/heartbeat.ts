// Heartbeats to the coordinator from a worker thread (heartbeat-worker.ts): they keep going
// while the stage's main thread computes a long step.
import { Worker } from 'node:worker_threads';
import type { KeyPair } from '../transport/curve.js';

export interface HeartbeatSettings {
  coordinator: string;
  layer: number;
  /** The stage's hello token: the coordinator knows its heartbeats by it. */
  token: string;
  intervalMs: number;
  /** CurveZMQ, as the stage's control socket has it. */
  security?: { keys: KeyPair; coordinatorKey: string };
}

/** What the worker passes on: the coordinator answered, possibly with an error for a run. */
export interface HeartbeatNews {
  heard: true;
  error?: { run: string; code: string };
}

export class Heartbeat {
  private readonly worker: Worker;

  constructor(settings: HeartbeatSettings, onNews: (news: HeartbeatNews) => void) {
    this.worker = new Worker(new URL('./heartbeat-worker.js', import.meta.url), {
      workerData: settings,
    });
    this.worker.on('message', onNews);
    // A heartbeat that cannot start is not worth the stage: it is logged by the caller's
    // coordinator (as a lost stage) soon enough.
    this.worker.on('error', () => {});
    this.worker.unref(); // never what keeps the process alive
  }

  /**
   * Starts the heartbeats (once a coordinator has registered the stage: before, one could reach
   * it ahead of the stage's hello, and count as a stranger's).
   */
  start(): void {
    this.worker.postMessage('start');
  }

  /**
   * Stops the heartbeats. The worker closes its socket and ends by itself (a thread ended with
   * a ZeroMQ socket open takes the process down); terminated only if it does not.
   */
  async close(): Promise<void> {
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage('close');
    const done = await Promise.race([
      exited.then(() => true),
      new Promise<false>((r) => setTimeout(() => r(false), 1000).unref()),
    ]);
    if (!done) await this.worker.terminate();
  }
}
