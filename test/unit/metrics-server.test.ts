import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { Gauge, Registry } from 'prom-client';
import {
  MetricsServer,
  StageMetrics,
  createRegistry,
  isMetricsError,
  type MetricsErrorCode,
} from '../../src/metrics/index.js';

interface Reply {
  status: number;
  contentType: string | undefined;
  body: string;
}

function get(url: string, opts: { method?: string; agent?: Agent | false } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: opts.method ?? 'GET', agent: opts.agent ?? false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'], body }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

function expectCode(code: MetricsErrorCode, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(isMetricsError(err, code), `expected MetricsError ${code}, got ${String(err)}`);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

const servers: MetricsServer[] = [];

async function start(registry: Registry, port = 0): Promise<MetricsServer> {
  const server = await MetricsServer.start(registry, { port });
  servers.push(server);
  return server;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

function stageRegistry(): Registry {
  const registry = createRegistry('stage', { layer: '1' });
  new StageMetrics(registry, 1).onTrainStep({
    samples: 8,
    stepSeconds: 0.01,
    loss: NaN,
    goodnessPos: 1,
    goodnessNeg: 0,
  });
  return registry;
}

describe('MetricsServer', () => {
  it('serves the registry at /metrics on an ephemeral port', async () => {
    const registry = stageRegistry();
    const server = await start(registry);
    assert.ok(server.port > 0);
    assert.equal(server.address, `http://127.0.0.1:${server.port}/metrics`);
    const res = await get(server.address);
    assert.equal(res.status, 200);
    assert.equal(res.contentType, registry.contentType);
    assert.match(res.body, /^# TYPE ffx_build_info gauge$/m);
    assert.match(res.body, /^ffx_stage_batches_total\{phase="train",role="stage",layer="1"\} 1$/m);
    assert.match(res.body, /^ffx_stage_loss\{role="stage",layer="1"\} nan$/im);
    const query = await get(`${server.address}?name[]=ffx_stage_loss`);
    assert.equal(query.status, 200);
    const head = await get(server.address, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
  });

  it('answers 404 off /metrics and 405 to other methods', async () => {
    const server = await start(stageRegistry());
    const base = `http://127.0.0.1:${server.port}`;
    for (const path of ['/', '/metric', '/metrics/x', '/favicon.ico']) {
      const res = await get(base + path);
      assert.equal(res.status, 404, path);
      assert.match(res.body, /\/metrics/);
    }
    const post = await get(server.address, { method: 'POST' });
    assert.equal(post.status, 405);
  });

  it('answers 500 when collecting fails, and keeps serving', async () => {
    const registry = new Registry();
    let fail = true;
    new Gauge({
      name: 'test_flaky',
      help: 'fails on demand',
      registers: [registry],
      collect() {
        if (fail) throw new Error('source gone');
        this.set(1);
      },
    });
    const server = await start(registry);
    const bad = await get(server.address);
    assert.equal(bad.status, 500);
    assert.match(bad.body, /source gone/);
    fail = false;
    const good = await get(server.address);
    assert.equal(good.status, 200);
    assert.match(good.body, /^test_flaky 1$/m);
  });

  it('refuses a port outside 0..65535 or not an integer, naming the value', async () => {
    const registry = new Registry();
    await assert.rejects(
      MetricsServer.start(registry, { port: 70000 }),
      expectCode('METRICS_BAD_PORT', /^metrics port must be an integer 0\.\.65535; got 70000$/),
    );
    for (const port of [-1, 1.5, NaN, '9464' as unknown as number]) {
      await assert.rejects(
        MetricsServer.start(registry, { port }),
        expectCode('METRICS_BAD_PORT', new RegExp(`got ${String(port).replace('.', '\\.')}$`)),
      );
    }
    await assert.rejects(
      MetricsServer.start(registry, { host: '', port: 0 }),
      expectCode('METRICS_BAD_HOST'),
    );
  });

  it('reports a port in use with its host:port', async () => {
    const first = await start(new Registry());
    await assert.rejects(
      start(new Registry(), first.port),
      expectCode(
        'METRICS_PORT_IN_USE',
        new RegExp(`127\\.0\\.0\\.1:${first.port} is already in use`),
      ),
    );
    // The first server is unaffected.
    assert.equal((await get(first.address)).status, 200);
  });

  it('takes any free port instead of a default one in use (anyIfTaken)', async () => {
    const first = await start(new Registry());
    const second = await MetricsServer.start(new Registry(), {
      port: first.port,
      anyIfTaken: true,
    });
    servers.push(second);
    assert.notEqual(second.port, first.port);
    assert.equal((await get(second.address)).status, 200);
    assert.equal((await get(first.address)).status, 200);
  });

  it('close() stops listening, drops keep-alive connections and can be called twice', async () => {
    const server = await MetricsServer.start(stageRegistry(), { port: 0 });
    const agent = new Agent({ keepAlive: true });
    try {
      assert.equal((await get(server.address, { agent })).status, 200);
      // The scraper's connection stays open; close() must not wait for it to time out.
      assert.equal(Object.values(agent.freeSockets).flat().length, 1);
      await server.close();
      await server.close();
      await assert.rejects(get(server.address), { code: 'ECONNREFUSED' });
    } finally {
      agent.destroy();
      await server.close();
    }
  });
});
