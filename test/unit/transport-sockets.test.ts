import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { afterEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Dealer, Router, type Socket } from 'zeromq';
import {
  DATA_SOCKET_BUFFER_BYTES,
  SerialSender,
  bindAny,
  closeAll,
  dataPull,
  dataPush,
  freePort,
  setMaxMessageSizeForBind,
} from '../../src/transport/sockets.js';
import {
  PROTOCOL_VERSION,
  decodeControl,
  decodeData,
  encodeControl,
  encodeData,
} from '../../src/transport/wire.js';

// Every socket a test opens is closed after it, pass or fail.
const open: Socket[] = [];
function track<S extends Socket>(s: S): S {
  open.push(s);
  return s;
}
afterEach(() => {
  closeAll(...open.splice(0));
});

/** 'pending' if `p` has not settled within `ms`: a liveness probe, not a speed assertion. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<'settled' | 'pending'> {
  const timer = sleep(ms, 'pending' as const);
  return Promise.race([p.then(() => 'settled' as const), timer]);
}

function trainFrames(seq: number, nPos: number, d: number): Buffer[] {
  const x = new Float32Array(2 * nPos * d);
  for (let i = 0; i < x.length; i++) x[i] = seq + i / 1024;
  return encodeData(
    {
      kind: 'train',
      run: 'r',
      epoch: 0,
      seq,
      nPos,
      lr: 0.001,
      tensors: [{ name: 'x', shape: [2 * nPos, d] }],
    },
    [x],
  );
}

describe('freePort and bindAny', () => {
  it('freePort returns a port that can then be listened on', async () => {
    const port = await freePort();
    assert.ok(Number.isInteger(port) && port > 0 && port < 65536);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', resolve);
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('bindAny returns the concrete ephemeral endpoint', async () => {
    const pull = track(dataPull());
    const endpoint = await bindAny(pull);
    assert.match(endpoint, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(endpoint, 'tcp://127.0.0.1:0');
  });

  it('closeAll tolerates null, undefined and already closed sockets', () => {
    const push = dataPush();
    push.close();
    assert.doesNotThrow(() => closeAll(push, null, undefined, dataPull()));
  });
});

describe('setMaxMessageSizeForBind', () => {
  it("sets the bound for the next bind without zeromq.js's spurious warning, and lets other warnings through", async () => {
    // A stage's inbox rebinds at every run's config; a bind that failed once (the old listener
    // still holding the port) made zeromq.js warn on every later option change.
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    try {
      const ep = `tcp://127.0.0.1:${await freePort()}`;
      const s = track(dataPull());
      const holder = track(dataPull());
      await s.bind(ep);
      await s.unbind(ep);
      await holder.bind(ep);
      await assert.rejects(s.bind(ep), /in use/i);
      await holder.unbind(ep);
      for (let waited = 0; ; waited += 10) {
        try {
          await s.bind(ep);
          break;
        } catch (err) {
          if (waited > 2000) throw err;
          await sleep(10);
        }
      }
      await s.unbind(ep);
      // What zeromq.js does without the helper: the warning this test must not see below.
      s.maxMessageSize = 1000;
      await sleep(10);
      assert.equal(warnings.length, 1, 'zeromq.js warns here (else the check below is vacuous)');
      setMaxMessageSizeForBind(s, 2000);
      process.emitWarning('an unrelated warning');
      await sleep(10);
      assert.equal(s.maxMessageSize, 2000);
      assert.deepEqual(warnings.slice(1), ['an unrelated warning']);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('PUSH -> PULL over tcp', () => {
  it('data sockets ask the kernel for MB-sized buffers on both ends', async () => {
    const pull = track(dataPull());
    const push = track(dataPush(await bindAny(pull)));
    assert.equal(push.sendBufferSize, DATA_SOCKET_BUFFER_BYTES);
    assert.equal(pull.receiveBufferSize, DATA_SOCKET_BUFFER_BYTES);
  });

  it('100 multipart train messages arrive in order and decode', async () => {
    const pull = track(dataPull());
    const endpoint = await bindAny(pull);
    const push = track(dataPush(endpoint));
    const n = 100;
    const nPos = 4;
    const d = 784;

    // Sending and receiving run together: with a high-water mark of 4 neither side can finish alone.
    const sending = (async () => {
      for (let seq = 0; seq < n; seq++) await push.send(trainFrames(seq, nPos, d));
    })();
    for (let seq = 0; seq < n; seq++) {
      const frames = await pull.receive();
      assert.equal(frames.length, 2);
      const { header, tensors } = decodeData(frames, { width: d, checkFinite: true });
      assert.equal(header.kind, 'train');
      assert.equal(header.seq, seq);
      const x = tensors[0]!;
      assert.equal(x.length, 2 * nPos * d);
      assert.equal(x[0], seq);
      assert.equal(x[x.length - 1], seq + (x.length - 1) / 1024);
    }
    await sending;
  });
});

describe('DEALER -> ROUTER control', () => {
  it('hello is answered with config addressed to that stage', async () => {
    const router = track(new Router({ linger: 0 }));
    const endpoint = await bindAny(router);
    const dealer = track(new Dealer({ linger: 0, routingId: 'stage-1' }));
    dealer.connect(endpoint);

    await dealer.send(
      encodeControl({
        type: 'hello',
        layer: 1,
        last: 1,
        replica: 1,
        replicas: 1,
        version: PROTOCOL_VERSION,
        backend: 'cpu',
        endpoint: 'tcp://127.0.0.1:7001',
        exchange: '',
        pid: process.pid,
        host: 'localhost',
        token: 't',
        key: '',
        proof: '',
        holds: null,
      }),
    );
    const [id, frame] = await router.receive();
    assert.equal(id!.toString(), 'stage-1');
    const hello = decodeControl(frame!);
    assert.ok(hello.type === 'hello');
    assert.equal(hello.layer, 1);
    assert.equal(hello.version, PROTOCOL_VERSION);

    await router.send([
      id!,
      encodeControl({
        type: 'config',
        run: 'r1',
        layer: hello.layer,
        last: hello.layer,
        replica: 1,
        replicas: 1,
        replicaEndpoints: [],
        replicaExchanges: [],
        replicaKeys: [],
        numLayers: 2,
        model: { layers: [784, 500, 500] },
        optimizer: { kind: 'adam' },
        seed: 1,
        next: 'tcp://127.0.0.1:7002',
        nextKey: '',
        prevKey: '',
        batchSize: 100,
        evalBatchSize: 1000,
        shards: 1,
        linkTimeoutMs: 5000,
        mode: 'train',
        state: {},
        optimizerStep: 0,
        origin: null,
      }),
    ]);
    const [reply] = await dealer.receive();
    const config = decodeControl(reply!);
    assert.ok(config.type === 'config');
    assert.equal(config.layer, 1);
    assert.equal(config.next, 'tcp://127.0.0.1:7002');
    assert.deepEqual(config.model, { layers: [784, 500, 500] });
  });

  it('SerialSender keeps concurrent sends in order instead of failing with EBUSY', async () => {
    const router = track(new Router({ linger: 0 }));
    const endpoint = await bindAny(router);
    const dealer = track(new Dealer({ linger: 0, sendHighWaterMark: 1 }));
    dealer.connect(endpoint);
    const out = new SerialSender(dealer);

    // Fired without awaiting, as a heartbeat timer and a message handler would.
    const sends = Array.from({ length: 20 }, (_, i) =>
      out.send(encodeControl({ type: 'heartbeat', layer: i, token: 't' })),
    );
    for (let i = 0; i < 20; i++) {
      const [, frame] = await router.receive();
      const msg = decodeControl(frame!);
      assert.ok(msg.type === 'heartbeat');
      assert.equal(msg.layer, i);
    }
    await Promise.all(sends);
    await out.idle();
  });
});

describe('backpressure', () => {
  it('send() waits at the high-water mark while nobody receives; nothing is lost', async () => {
    const hwm = 2;
    const port = await freePort();
    const endpoint = `tcp://127.0.0.1:${port}`;
    // Connect before the receiver exists: zeromq queues up to the high-water mark, then blocks.
    const push = track(dataPush(endpoint, { highWaterMark: hwm }));
    const total = 10;

    let queued = 0;
    let blocked: Promise<void> | null = null;
    for (let seq = 0; seq < total; seq++) {
      const p = push.send(trainFrames(seq, 2, 8));
      if ((await settlesWithin(p, 200)) === 'pending') {
        blocked = p;
        break;
      }
      queued++;
    }
    assert.ok(blocked !== null, `send() never blocked after ${queued} messages`);
    assert.ok(queued >= 1 && queued <= hwm, `${queued} sends resolved with high-water mark ${hwm}`);
    assert.equal(
      await settlesWithin(blocked, 200),
      'pending',
      'still waiting while nobody receives',
    );

    const pull = track(dataPull({ highWaterMark: hwm }));
    await pull.bind(endpoint);
    const sending = (async () => {
      await blocked;
      for (let seq = queued + 1; seq < total; seq++) await push.send(trainFrames(seq, 2, 8));
    })();
    for (let seq = 0; seq < total; seq++) {
      const { header } = decodeData(await pull.receive(), { width: 8 });
      assert.equal(header.seq, seq);
    }
    await sending;
  });

  it('a bound receiver that does not read stops the sender after a bounded number of messages', async () => {
    const pull = track(dataPull());
    const endpoint = await bindAny(pull);
    const push = track(dataPush(endpoint));
    // 256 KiB messages, so the kernel's socket buffers fill after a few dozen at most.
    const nPos = 128;
    const d = 256;
    const cap = 400;

    let queued = 0;
    let blocked: Promise<void> | null = null;
    while (queued < cap) {
      const p = push.send(trainFrames(queued, nPos, d));
      if ((await settlesWithin(p, 300)) === 'pending') {
        blocked = p;
        break;
      }
      queued++;
    }
    assert.ok(blocked !== null, `send() never blocked in ${cap} messages`);

    const total = queued + 1 + 5;
    const sending = (async () => {
      await blocked;
      for (let seq = queued + 1; seq < total; seq++) await push.send(trainFrames(seq, nPos, d));
    })();
    for (let seq = 0; seq < total; seq++) {
      const { header, tensors } = decodeData(await pull.receive(), { width: d });
      assert.equal(header.seq, seq);
      assert.equal(tensors[0]![0], seq);
    }
    await sending;
  });
});
