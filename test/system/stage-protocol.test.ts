// A real ffx-stage process driven by a scripted coordinator: it registers, takes its config,
// rejects each kind of malformed message with a reason (and keeps serving), trains on a valid
// one, answers a weights marker, ends the run on an end marker (acknowledged, then it says
// hello again), drops the run's leftovers, and exits 0 when told to stop.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { pack } from 'msgpackr';
import { Router, type Push } from 'zeromq';
import { closeAll, bindAny, dataPush } from '../../src/transport/sockets.js';
import {
  PROTOCOL_VERSION,
  decodeControl,
  encodeControl,
  encodeData,
  type ControlMessage,
} from '../../src/transport/wire.js';
import { killAll, ROOT, startNode, type Started } from '../helpers/spawn.js';
import { DEFAULT_CONFIG } from '../../src/config/config.js';

const IN = 20;

/** A header the encoder would refuse to write (it validates), packed directly. */
const rawHeader = (header: Record<string, unknown>): Buffer => pack(header);
const OUT = 8;

describe('ffx-stage protocol', () => {
  const router = new Router();
  let feed: Push;
  let stage: Started;
  /** The stage's DEALER, as the router sees it. */
  let identity: Buffer;

  /** The next control message of `type` from the stage (heartbeats and others skipped). */
  async function nextControl(type: ControlMessage['type']): Promise<ControlMessage> {
    for (;;) {
      const [, frame] = await router.receive();
      const msg = decodeControl(frame!);
      if (msg.type === type) return msg;
      // A stage that refuses (a config short of a key, say) says why: fail on it, not hang.
      if (msg.type === 'error') assert.fail(`waiting for ${type}, the stage said ${msg.message}`);
    }
  }

  const RESULTS = new Set(['stats', 'goodness', 'ack', 'rejected', 'weights']);

  /** The next result (they come on the control connection), heartbeats and hellos skipped. */
  async function nextResult(): Promise<ControlMessage> {
    for (;;) {
      const [, frame] = await router.receive();
      const msg = decodeControl(frame!);
      if (RESULTS.has(msg.type)) return msg;
    }
  }

  before(async () => {
    const control = await bindAny(router);
    stage = startNode(
      [
        join(ROOT, 'dist', 'src', 'cli', 'ffx-stage.js'),
        '--layer',
        '1',
        '--coordinator',
        control,
        '--listen',
        'tcp://127.0.0.1:*',
        '--backend',
        'cpu',
        '--heartbeat-ms',
        '200',
      ],
      { timeoutMs: 60_000 },
    );
    let hello: ControlMessage;
    for (;;) {
      const [id, frame] = await router.receive();
      hello = decodeControl(frame!);
      identity = id!;
      if (hello.type === 'hello') break;
    }
    assert.equal(hello.type === 'hello' && hello.layer, 1);
    assert.equal(hello.type === 'hello' && hello.version, PROTOCOL_VERSION);
    await router.send([
      identity,
      encodeControl({
        type: 'config',
        run: 'test',
        layer: 1,
        last: 1,
        replica: 1,
        replicas: 1,
        replicaEndpoints: [],
        replicaExchanges: [],
        replicaKeys: [],
        numLayers: 1,
        // Every model key a stage checks, so a new one cannot leave this config short.
        model: {
          ...DEFAULT_CONFIG.model,
          layers: [IN, OUT],
          goodness: 'sum',
          threshold: 2,
          overlayValue: 1,
        },
        optimizer: {
          type: 'adam',
          lr: 0.01,
          beta1: 0.9,
          beta2: 0.999,
          eps: 1e-8,
          momentum: 0.9,
          weightDecay: 0,
        },
        seed: 3,
        next: null,
        nextKey: '',
        prevKey: '',
        batchSize: 3,
        evalBatchSize: 10,
        shards: 1,
        linkTimeoutMs: 5000,
        mode: 'train',
        state: {},
        optimizerStep: 0,
        origin: null,
      }),
    ]);
    const ready = await nextControl('ready');
    assert.deepEqual(ready, { type: 'ready', layer: 1, run: 'test' });
    feed = dataPush(hello.type === 'hello' ? hello.endpoint : '');
  });

  after(() => {
    closeAll(feed, router);
    killAll();
  });

  const good = (seq: number) => {
    const x = new Float32Array(2 * 3 * IN).map((_, i) => ((i * 7) % 13) / 13);
    return encodeData(
      {
        kind: 'train',
        run: 'test',
        epoch: 0,
        seq,
        nPos: 3,
        lr: 0.01,
        tensors: [{ name: 'x', shape: [6, IN] }],
      },
      [x],
    );
  };

  /** A train message of 3 positive + 3 negative rows of `width`, every value `fill`. */
  const train = (width: number, fill: number) =>
    encodeData(
      {
        kind: 'train',
        run: 'test',
        epoch: 0,
        seq: 1,
        nPos: 3,
        lr: 0.01,
        tensors: [{ name: 'x', shape: [6, width] }],
      },
      [new Float32Array(6 * width).fill(fill)],
    );

  const cases: [string, () => Buffer[], string][] = [
    ['random bytes', () => [Buffer.from([0xc1, 0xff, 0x00, 0x13, 0x37])], 'BAD_FRAMES'],
    [
      'wrong version',
      () => {
        const f = good(1);
        return [
          rawHeader({
            v: 99,
            kind: 'train',
            run: 'test',
            epoch: 0,
            seq: 1,
            nPos: 3,
            tensors: [{ name: 'x', shape: [6, IN] }],
          }),
          f[1]!,
        ];
      },
      'BAD_VERSION',
    ],
    [
      'unknown kind',
      () => [
        rawHeader({
          v: PROTOCOL_VERSION,
          kind: 'gossip',
          run: 'test',
          epoch: 0,
          seq: 1,
          tensors: [],
        }),
      ],
      'BAD_KIND',
    ],
    [
      'truncated tensor frame',
      () => {
        const f = good(1);
        return [f[0]!, f[1]!.subarray(0, f[1]!.length - 4)];
      },
      'BAD_SHAPE',
    ],
    ['missing tensor frame', () => [good(1)[0]!], 'BAD_SHAPE'],
    ['wrong input width', () => train(IN + 1, 0), 'BAD_WIDTH'],
    ['non-finite input', () => train(IN, NaN), 'NON_FINITE'],
    [
      "a batch larger than the run's",
      () =>
        encodeData(
          {
            kind: 'train',
            run: 'test',
            epoch: 0,
            seq: 1,
            nPos: 4,
            lr: 0.01,
            tensors: [{ name: 'x', shape: [8, IN] }],
          },
          [new Float32Array(8 * IN)],
        ),
      'BAD_SHAPE',
    ],
    [
      'labels for a readout this layer does not have',
      () =>
        encodeData(
          {
            kind: 'train',
            run: 'test',
            epoch: 0,
            seq: 1,
            nPos: 3,
            lr: 0.01,
            tensors: [
              { name: 'x', shape: [9, IN] },
              { name: 'y', shape: [3] },
            ],
          },
          [new Float32Array(9 * IN), new Float32Array([1, 2, 3])],
        ),
      'BAD_SHAPE',
    ],
    [
      'a readout evaluation on a layer without one',
      () =>
        encodeData(
          {
            kind: 'eval',
            run: 'test',
            epoch: 0,
            seq: 1,
            images: 2,
            tensors: [{ name: 'x', shape: [2, IN] }],
          },
          [new Float32Array(2 * IN)],
        ),
      'BAD_SHAPE',
    ],
  ];

  for (const [name, frames, code] of cases) {
    it(`rejects ${name} with ${code} and keeps serving`, async () => {
      await feed.send(frames());
      const r = await nextResult();
      assert.equal(r.type, 'rejected');
      assert.equal(r.type === 'rejected' && r.code, code);
      assert.equal(r.type === 'rejected' && r.layer, 1);
      // Still alive and serving: a valid step is trained and reported.
      await feed.send(good(7));
      const s = await nextResult();
      assert.equal(s.type, 'stats');
      assert.ok(s.type === 'stats' && Number.isFinite(s.loss) && s.seq === 7);
    });
  }

  it('counts what it served and rejected on its /metrics endpoint', async () => {
    const url = /metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(stage.stderr())?.[1];
    assert.ok(url, stage.stderr());
    const text = await (await fetch(url)).text();
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      assert.ok(line, `no ${series} in\n${text}`);
      return Number(line.split(' ')[1]);
    };
    // Each malformed case once (two of them are BAD_SHAPE); one valid train step after each.
    const expected = new Map<string, number>();
    for (const [, , code] of cases) expected.set(code, (expected.get(code) ?? 0) + 1);
    for (const [code, n] of expected) {
      const series = `ffx_stage_rejected_messages_total{reason="${code}",role="stage",layer="1"}`;
      assert.equal(value(series), n, code);
    }
    assert.equal(
      value('ffx_stage_batches_total{phase="train",role="stage",layer="1"}'),
      cases.length,
    );
    assert.equal(
      value('ffx_stage_samples_total{phase="train",role="stage",layer="1"}'),
      3 * cases.length,
    );
    assert.ok(Number.isFinite(value('ffx_stage_loss{role="stage",layer="1"}')));
  });

  const marker = (op: 'weights' | 'end' | 'stop', id: number) =>
    encodeData({ kind: 'marker', run: 'test', epoch: 0, seq: 0, op, id, tensors: [] }, []);

  it('answers a weights marker with its layer and optimizer state', async () => {
    await feed.send(marker('weights', 4));
    const w = await nextResult();
    assert.ok(w.type === 'weights', w.type);
    assert.equal(w.run, 'test');
    // One valid step per malformed case: that many Adam updates.
    assert.equal(w.optimizerStep, cases.length);
    assert.deepEqual(Object.keys(w.tensors).sort(), [
      'layers.0.bias',
      'layers.0.bias.m',
      'layers.0.bias.v',
      'layers.0.weight',
      'layers.0.weight.m',
      'layers.0.weight.v',
    ]);
    assert.deepEqual(w.tensors['layers.0.weight']!.shape, [OUT, IN]);
  });

  it('ends the run on an end marker: acknowledged, then hello again, leftovers dropped', async () => {
    await feed.send(marker('end', 5));
    const ack = await nextResult();
    assert.deepEqual(ack, { type: 'ack', layer: 1, run: 'test', op: 'end', id: 5, epoch: 0 });
    // Between runs it keeps its layer and looks for the next coordinator.
    const hello = await nextControl('hello');
    assert.equal(hello.type === 'hello' && hello.layer, 1);
    // A message of the run that just ended is a leftover: dropped, counted, never answered.
    await feed.send(good(8));
    const url = /metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(stage.stderr())?.[1];
    assert.ok(url);
    const series = async (name: string) => {
      for (;;) {
        const text = await (await fetch(url)).text();
        const line = text.split('\n').find((l) => l.startsWith(`${name} `));
        assert.ok(line, `no ${name}`);
        if (Number(line.split(' ')[1]) > 0) return Number(line.split(' ')[1]);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    assert.equal(await series('ffx_stage_leftover_messages_total{role="stage",layer="1"}'), 1);
    assert.equal(await series('ffx_stage_state{state="between-runs",role="stage",layer="1"}'), 1);
  });

  it('exits 0 when the coordinator says stop', async () => {
    await router.send([identity, encodeControl({ type: 'stop', reason: 'test over' })]);
    const r = await stage.result;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /coordinator says stop \(test over\)/);
    // Each rejection reason was logged once, with the reason.
    assert.match(r.stderr, /rejected a message \(BAD_WIDTH\)/);
    assert.equal(r.stderr.match(/rejected a message \(BAD_SHAPE\)/g)?.length, 1);
    // Nothing was reported for the leftover: whatever is still queued holds no result.
    const late: string[] = [];
    const reading = (async () => {
      for (;;) {
        const [, frame] = await router.receive();
        late.push(decodeControl(frame!).type);
      }
    })().catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(
      late.filter((t) => RESULTS.has(t)),
      [],
    );
    void reading;
  });
});
