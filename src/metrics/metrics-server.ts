// The scrape endpoint: GET /metrics renders the registry, everything else is 404. One server
// per process, owned by whoever started it, closed with close(). The HTTP server runs on a
// thread of its own (metrics-worker.ts), so a scrape is answered at once whatever this thread
// is computing; this thread renders the registry when asked, and once a second in any case, so
// that a scrape that comes mid-step (the first one of a process, an ad-hoc curl, a scraper
// whose interval is long) gets numbers at most a second and a step old; the scrape's
// ffx_metrics_rendering_age_seconds says how old.
import { Worker } from 'node:worker_threads';
import type { Registry } from 'prom-client';
import { MetricsError } from './errors.js';
import type { FromWorker, ToWorker, WorkerSettings } from './metrics-worker.js';

/** How often the rendering a scrape falls back on is renewed. */
const REFRESH_MS = 1000;

/** The coordinator's /metrics port; stage N uses this + N. */
export const DEFAULT_METRICS_PORT = 9464;

export interface MetricsServerOptions {
  /** Interface to listen on (default 127.0.0.1; 0.0.0.0 for a scraper on another host). */
  host?: string;
  /** TCP port, 0..65535; 0 picks a free one (see `port` / `address` once started). */
  port: number;
  /**
   * A default port rather than one asked for: when it is in use (a second process on this
   * host), take any free one instead of failing. Check `port` for the one taken.
   */
  anyIfTaken?: boolean;
}

export class MetricsServer {
  readonly host: string;
  /** The port listened on (the one picked, for port 0). */
  readonly port: number;
  private readonly worker: Worker;
  private readonly registry: Registry;
  private readonly refresher: NodeJS.Timeout;
  private closing: Promise<void> | null = null;

  private constructor(worker: Worker, registry: Registry, host: string, port: number) {
    this.worker = worker;
    this.registry = registry;
    this.host = host;
    this.port = port;
    worker.on('message', (m: FromWorker) => {
      if (m.type === 'collect') void this.render(m.id);
    });
    // A rendering a second at most old waits in the worker for the scrapes that come while
    // this thread is in a long step (whoever scrapes, however rarely).
    this.refresher = setInterval(() => void this.render(0), REFRESH_MS).unref();
    void this.render(0); // now, while this thread is free: the first scrape may come mid-step
  }

  /** Listens on host:port; resolves once listening, or rejects with a MetricsError. */
  static async start(registry: Registry, opts: MetricsServerOptions): Promise<MetricsServer> {
    try {
      return await MetricsServer.listen(registry, opts);
    } catch (err) {
      const taken = err instanceof MetricsError && err.code === 'METRICS_PORT_IN_USE';
      if (!taken || !opts.anyIfTaken) throw err;
      return MetricsServer.listen(registry, { ...opts, port: 0 });
    }
  }

  private static async listen(
    registry: Registry,
    opts: MetricsServerOptions,
  ): Promise<MetricsServer> {
    const { host = '127.0.0.1', port } = opts;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
      throw new MetricsError(
        'METRICS_BAD_PORT',
        `metrics port must be an integer 0..65535; got ${String(port)}`,
        port,
      );
    }
    if (typeof host !== 'string' || host === '') {
      throw new MetricsError(
        'METRICS_BAD_HOST',
        `metrics host must be a non-empty string; got ${JSON.stringify(host)}`,
        host,
      );
    }
    const settings: WorkerSettings = { host, port };
    const worker = new Worker(new URL('./metrics-worker.js', import.meta.url), {
      workerData: settings,
    });
    const where = `${formatHost(host)}:${port}`;
    const listening = await new Promise<number>((resolve, reject) => {
      worker.once('message', (m: FromWorker) => {
        if (m.type === 'listening') resolve(m.port);
        else if (m.type === 'error') reject(listenError(m, where, port));
      });
      worker.once('error', (err) =>
        reject(
          new MetricsError(
            'METRICS_LISTEN_FAILED',
            `cannot serve metrics on ${where}: ${err.message}`,
            where,
            {
              cause: err,
            },
          ),
        ),
      );
    });
    return new MetricsServer(worker, registry, host, listening);
  }

  /** The scrape URL, e.g. http://127.0.0.1:9464/metrics. */
  get address(): string {
    return `http://${formatHost(this.host)}:${this.port}/metrics`;
  }

  /** Stops listening and drops open connections (keep-alive scrapers); resolves when closed. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.refresher);
      const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
      this.worker.postMessage({ type: 'close' } satisfies ToWorker);
      const done = await Promise.race([
        exited.then(() => true),
        new Promise<false>((r) => setTimeout(() => r(false), 2000).unref()),
      ]);
      if (!done) await this.worker.terminate();
    })();
    return this.closing;
  }

  /** Renders the registry for the worker (id 0: a refresh no scrape waits for). */
  private async render(id: number): Promise<void> {
    let answer: ToWorker;
    const renderedAt = Date.now();
    try {
      const body = await this.registry.metrics();
      const { contentType } = this.registry;
      answer = { type: 'rendered', id, status: 200, contentType, body, renderedAt };
    } catch (err) {
      answer = {
        type: 'rendered',
        id,
        status: 500,
        contentType: 'text/plain; charset=utf-8',
        body: `collecting metrics failed: ${String(err)}\n`,
        renderedAt,
      };
    }
    if (!this.closing) this.worker.postMessage(answer);
  }
}

function listenError(m: { code: string; message: string }, where: string, port: number) {
  return m.code === 'EADDRINUSE'
    ? new MetricsError(
        'METRICS_PORT_IN_USE',
        `metrics port ${where} is already in use; pick another with --metrics-port, or --metrics-port 0 for any free one`,
        port,
      )
    : new MetricsError(
        'METRICS_LISTEN_FAILED',
        `cannot serve metrics on ${where}: ${m.message}`,
        where,
      );
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
