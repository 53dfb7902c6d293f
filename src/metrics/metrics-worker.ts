// The /metrics HTTP server, on a thread of its own (metrics-server.ts starts it). A process's
// main thread is busy for as long as a training step takes (a second or more for a wide layer
// on a CPU); a server there would answer a scrape only between steps, and Prometheus would see
// the target flap exactly while a run goes on. Here a scrape asks the main thread for a fresh
// rendering and waits for it a moment (FRESH_WAIT_MS); if the main thread is in a step, the
// scrape gets the last rendering instead, at most a step old, and says how old in
// ffx_metrics_rendering_age_seconds.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';

export interface WorkerSettings {
  host: string;
  port: number;
}

/** Worker -> main. */
export type FromWorker =
  | { type: 'listening'; port: number }
  | { type: 'error'; code: string; message: string }
  | { type: 'collect'; id: number };

/** Main -> worker: a rendering (the answer to collect `id`, or a refresh: id 0), or close. */
export type ToWorker =
  | {
      type: 'rendered';
      id: number;
      status: number;
      contentType: string;
      body: string;
      /** Date.now() as the main thread began the rendering. */
      renderedAt: number;
    }
  | { type: 'close' };

/** How long a scrape waits for the main thread's fresh rendering before taking the last one. */
const FRESH_WAIT_MS = 25;

const { host, port } = workerData as WorkerSettings;
const post = (m: FromWorker) => parentPort!.postMessage(m);

type Rendering = Extract<ToWorker, { type: 'rendered' }>;
let last: Rendering | null = null;
let nextId = 1;
const waiting = new Map<number, (r: Rendering) => void>();
/** Scrapes that came before any rendering, while the main thread was busy. */
const first: ((r: Rendering) => void)[] = [];

function reply(res: ServerResponse, status: number, type: string, body: string): void {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

/** The main thread's rendering, if it comes within FRESH_WAIT_MS; else the last one (if any). */
function rendering(): Promise<Rendering | null> {
  const id = nextId++;
  post({ type: 'collect', id });
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      waiting.delete(id);
      resolve(last);
    }, FRESH_WAIT_MS);
    waiting.set(id, (r) => {
      clearTimeout(timer);
      resolve(r);
    });
  });
}

async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  if (path !== '/metrics') {
    reply(res, 404, 'text/plain; charset=utf-8', 'not found: metrics are at /metrics\n');
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    reply(res, 405, 'text/plain; charset=utf-8', `method ${req.method} not allowed\n`);
    return;
  }
  // The first scrape of a process whose main thread is busy waits for its first rendering.
  const r = (await rendering()) ?? (await new Promise<Rendering>((ok) => first.push(ok)));
  reply(res, r.status, r.contentType, withAge(r)); // node sends no body for HEAD
}

/** The rendering's age gauge (rendered as 0) set to its age now, to the millisecond. */
const AGE_LINE = /^(ffx_metrics_rendering_age_seconds(?:\{[^}\n]*\})?) .*$/m;

function withAge(r: Rendering): string {
  const age = Math.max(0, Date.now() - r.renderedAt) / 1000;
  return r.body.replace(AGE_LINE, (_, series: string) => `${series} ${age}`);
}

const server = createServer((req, res) => void serve(req, res));
server.once('error', (err: NodeJS.ErrnoException) => {
  post({ type: 'error', code: err.code ?? 'UNKNOWN', message: err.message });
  parentPort!.close();
});
server.listen({ host, port }, () => {
  // Errors after listening (rare: too many open files) are per connection; the server goes on.
  server.on('error', () => {});
  post({ type: 'listening', port: (server.address() as AddressInfo).port });
});

parentPort!.on('message', (m: ToWorker) => {
  if (m.type === 'rendered') {
    if (m.status === 200) last = m;
    waiting.get(m.id)?.(m);
    waiting.delete(m.id);
    if (last) for (const ok of first.splice(0)) ok(last);
  } else {
    server.close(() => parentPort!.close());
    server.closeAllConnections();
  }
});
