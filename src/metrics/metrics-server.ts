// The scrape endpoint: GET /metrics renders the registry, everything else is 404. One server
// per process, owned by whoever started it, closed with close().
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { MetricsError } from './errors.js';

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
  private readonly server: Server;
  private closing: Promise<void> | null = null;

  private constructor(server: Server, host: string, port: number) {
    this.server = server;
    this.host = host;
    this.port = port;
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
    const server = createServer((req, res) => void serve(registry, req, res));
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        const where = `${formatHost(host)}:${port}`;
        reject(
          err.code === 'EADDRINUSE'
            ? new MetricsError(
                'METRICS_PORT_IN_USE',
                `metrics port ${where} is already in use; pick another with the metrics port option, or 0 for any free port`,
                port,
                { cause: err },
              )
            : new MetricsError(
                'METRICS_LISTEN_FAILED',
                `cannot serve metrics on ${where}: ${err.message}`,
                where,
                { cause: err },
              ),
        );
      };
      server.once('error', onError);
      server.listen({ host, port }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    // Errors after listening (rare: e.g. too many open files) are per connection; the server
    // keeps going. Without a listener one would crash the process.
    server.on('error', () => {});
    return new MetricsServer(server, host, (server.address() as AddressInfo).port);
  }

  /** The scrape URL, e.g. http://127.0.0.1:9464/metrics. */
  get address(): string {
    return `http://${formatHost(this.host)}:${this.port}/metrics`;
  }

  /** Stops listening and drops open connections (keep-alive scrapers); resolves when closed. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    return this.closing;
  }
}

async function serve(registry: Registry, req: IncomingMessage, res: ServerResponse): Promise<void> {
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
  let body: string;
  try {
    body = await registry.metrics();
  } catch (err) {
    reply(res, 500, 'text/plain; charset=utf-8', `collecting metrics failed: ${String(err)}\n`);
    return;
  }
  reply(res, 200, registry.contentType, body); // node sends no body for HEAD
}

function reply(res: ServerResponse, status: number, type: string, body: string): void {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
