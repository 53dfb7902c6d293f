import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pack } from 'msgpackr';
import {
  PROTOCOL_ERROR_CODES,
  ProtocolError,
  isProtocolError,
  type ProtocolErrorCode,
} from '../../src/transport/errors.js';
import {
  PROTOCOL_VERSION,
  decodeControl,
  decodeData,
  encodeControl,
  encodeData,
  type ControlMessage,
  type DataHeaderInit,
} from '../../src/transport/wire.js';

const D = 784;

/** [rows, d] with values that are exact in float32 and differ per position. */
function ramp(rows: number, d: number, scale = 0.25): Float32Array {
  const t = new Float32Array(rows * d);
  for (let i = 0; i < t.length; i++) t[i] = (i % 1000) * scale - 100;
  return t;
}

type TrainInit = Extract<DataHeaderInit, { kind: 'train' }>;

function trainHeader(nPos = 100, d = D): TrainInit {
  return {
    kind: 'train',
    run: 'r1',
    epoch: 2,
    seq: 17,
    nPos,
    lr: 0.001,
    tensors: [{ name: 'x', shape: [2 * nPos, d] }],
  };
}

/** Frames built by hand, so a test can send what encodeData refuses to produce. */
function rawFrames(header: Record<string, unknown>, ...tensors: Uint8Array[]): Buffer[] {
  return [pack(header), ...tensors.map((t) => Buffer.from(t.buffer, t.byteOffset, t.byteLength))];
}

function validTrainRaw(): { header: Record<string, unknown>; x: Float32Array } {
  const x = ramp(8, D);
  return {
    header: {
      v: PROTOCOL_VERSION,
      kind: 'train',
      run: 'r1',
      epoch: 0,
      seq: 3,
      nPos: 4,
      lr: 0.001,
      tensors: [{ name: 'x', shape: [8, D] }],
    },
    x,
  };
}

function rejects(code: ProtocolErrorCode, ...mentions: string[]) {
  return (err: unknown): boolean => {
    assert.ok(isProtocolError(err), `expected a ProtocolError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const m of mentions) {
      assert.ok(err.message.includes(m), `message should mention ${m}: ${err.message}`);
    }
    return true;
  };
}

/** Same bytes, not just equal numbers (NaN payloads and -0 included). */
function assertSameBytes(a: Float32Array, b: Float32Array): void {
  assert.ok(
    Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
      Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    ),
  );
}

describe('ProtocolError', () => {
  it('has a stable code and a type guard that can match it', () => {
    const err = new ProtocolError('BAD_SHAPE', 'tensor x is wrong');
    assert.ok(err instanceof Error);
    assert.equal(err.name, 'ProtocolError');
    assert.ok(isProtocolError(err));
    assert.ok(isProtocolError(err, 'BAD_SHAPE'));
    assert.ok(PROTOCOL_ERROR_CODES.includes(err.code));
    assert.equal(isProtocolError(err, 'BAD_WIDTH'), false);
    assert.equal(isProtocolError(new Error('x')), false);
  });
});

describe('data round trips', () => {
  it('train: header and bytes survive, and the decoded tensor is a view, not a copy', () => {
    const x = ramp(200, D);
    const frames = encodeData(trainHeader(), [x]);
    assert.equal(frames.length, 2);
    assert.equal(frames[1]!.buffer, x.buffer, 'encoding does not copy the tensor');

    const { header, tensors } = decodeData(frames, { width: D, checkFinite: true });
    assert.deepEqual(header, { ...trainHeader(), v: PROTOCOL_VERSION });
    assert.equal(tensors.length, 1);
    assertSameBytes(tensors[0]!, x);
    assert.equal(tensors[0]!.buffer, x.buffer, 'aligned frame decodes as a view');
  });

  it('train: lr travels, and is required', () => {
    const frames = encodeData({ ...trainHeader(2, 3), lr: 0.03 }, [ramp(4, 3)]);
    const { header } = decodeData(frames);
    assert.ok(header.kind === 'train');
    assert.equal(header.lr, 0.03);
    const noLr: Record<string, unknown> = { ...trainHeader(2, 3) };
    delete noLr.lr;
    assert.throws(
      () => encodeData(noLr as unknown as DataHeaderInit, [ramp(4, 3)]),
      rejects('BAD_HEADER', 'header.lr', 'missing'),
    );
  });

  it('eval: [10 * images, d] label-major', () => {
    const images = 3;
    const x = ramp(10 * images, 5);
    const init: DataHeaderInit = {
      kind: 'eval',
      run: 'r1',
      epoch: 1,
      seq: 0,
      images,
      tensors: [{ name: 'x', shape: [30, 5] }],
    };
    const { header, tensors } = decodeData(encodeData(init, [x]), { width: 5 });
    assert.deepEqual(header, { ...init, v: PROTOCOL_VERSION });
    assertSameBytes(tensors[0]!, x);
  });

  it('marker: one frame, no tensors', () => {
    const init: DataHeaderInit = {
      kind: 'marker',
      run: 'r1',
      epoch: 4,
      seq: 99,
      op: 'weights',
      id: 7,
      tensors: [],
    };
    const frames = encodeData(init, []);
    assert.equal(frames.length, 1);
    const { header, tensors } = decodeData(frames, { width: D, checkFinite: true });
    assert.deepEqual(header, { ...init, v: PROTOCOL_VERSION });
    assert.deepEqual(tensors, []);
  });

  it('a forwarded header keeps its extra fields and gets the current version', () => {
    const x = ramp(4, 3);
    const first = decodeData(encodeData({ ...trainHeader(2, 3), lr: 0.5 }, [x])).header;
    const again = decodeData(
      encodeData({ ...first, tensors: [{ name: 'x', shape: [4, 3] }] }, [x]),
    );
    assert.deepEqual(again.header, first);
  });

  it("a readout run's labels 'y' round-trip after x, which then has 3 * nPos rows", () => {
    const x = ramp(6, 3);
    const y = new Float32Array([3, 9]);
    const init = trainHeader(2, 3);
    init.tensors = [
      { name: 'x', shape: [6, 3] },
      { name: 'y', shape: [2] },
    ];
    const { tensors } = decodeData(encodeData(init, [x, y]), { checkFinite: true });
    assertSameBytes(tensors[0]!, x);
    assertSameBytes(tensors[1]!, y);
    // Any other extra tensor, 2 * nPos rows with labels, or labels that are no class: refused.
    const other = { ...init, tensors: [init.tensors[0]!, { name: 'w', shape: [2] }] };
    assert.throws(() => encodeData(other, [x, y]), rejects('BAD_SHAPE', "'w' [2]"));
    const short = { ...init, tensors: [{ name: 'x', shape: [4, 3] }, init.tensors[1]!] };
    assert.throws(() => encodeData(short, [ramp(4, 3), y]), rejects('BAD_SHAPE', '3 * nPos'));
    for (const bad of [10, 2.5, -1]) {
      const frames = encodeData(init, [x, new Float32Array([1, bad])]);
      assert.throws(
        () => decodeData(frames, { checkFinite: true }),
        rejects('BAD_SHAPE', `y[1] is ${bad}`),
      );
    }
  });

  it('an eval message of neutral rows (one per image, for the readouts) round-trips', () => {
    const x = ramp(3, 4);
    const header = { kind: 'eval' as const, run: 'r', epoch: 0, seq: 0, images: 3 };
    const { tensors } = decodeData(
      encodeData({ ...header, tensors: [{ name: 'x', shape: [3, 4] }] }, [x]),
    );
    assertSameBytes(tensors[0]!, x);
  });

  it('an unaligned frame decodes correctly through one bulk copy', () => {
    const x = ramp(8, D);
    const [head] = encodeData(trainHeader(4), [x]);
    const backing = Buffer.alloc(x.byteLength + 1);
    backing.set(new Uint8Array(x.buffer), 1);
    const unaligned = backing.subarray(1);
    assert.equal(unaligned.byteOffset % 4, 1);

    const { tensors } = decodeData([head!, unaligned], { width: D });
    assertSameBytes(tensors[0]!, x);
    assert.notEqual(tensors[0]!.buffer, backing.buffer);
  });

  it('accepts plain Uint8Array frames', () => {
    const x = ramp(8, D);
    const frames = encodeData(trainHeader(4), [x]).map((f) => new Uint8Array(f));
    assertSameBytes(decodeData(frames).tensors[0]!, x);
  });
});

describe('malformed data messages are rejected with a code and the field named', () => {
  it('no frames', () => {
    assert.throws(() => decodeData([]), rejects('BAD_FRAMES', 'no frames'));
  });

  it('random bytes as the header', () => {
    const junk = Buffer.from('this is not msgpack at all');
    assert.throws(() => decodeData([junk]), rejects('BAD_FRAMES', 'frame 0', 'not msgpack'));
  });

  it('a header that is msgpack but not a map', () => {
    assert.throws(() => decodeData([pack([1, 2, 3])]), rejects('BAD_FRAMES', 'map', '[1,2,3]'));
    assert.throws(() => decodeData([pack(42)]), rejects('BAD_FRAMES', 'map', '42'));
  });

  it('a value no string can show (a BigInt beside a non-function toString) is a ProtocolError', () => {
    // {toString: 1, a: <uint64 1>}, which msgpackr reads as a BigInt: JSON.stringify and
    // String() both throw on it, and a TypeError from the decoder once took a process down.
    const str = (t: string) => Buffer.concat([Buffer.from([0xa0 | t.length]), Buffer.from(t)]);
    const evil = Buffer.concat([
      Buffer.from([0x82]),
      str('toString'),
      Buffer.from([0x01]),
      str('a'),
      Buffer.from([0xcf, 0, 0, 0, 0, 0, 0, 0, 1]),
    ]);
    const header = Buffer.concat([Buffer.from([0x81]), str('v'), evil]);
    assert.throws(() => decodeData([header]), rejects('BAD_VERSION', 'header.v'));
    const hello = Buffer.concat([
      Buffer.from([0x82]),
      str('type'),
      str('hello'),
      str('layer'),
      evil,
    ]);
    assert.throws(
      () => decodeControl(hello),
      (err: unknown) => isProtocolError(err),
    );
  });

  it('a header frame over 64 KiB is refused before it is decoded', () => {
    const big = pack({ v: PROTOCOL_VERSION, pad: 'x'.repeat(70_000) });
    assert.throws(() => decodeData([big]), rejects('BAD_FRAMES', 'frame 0', 'at most 65536'));
  });

  it('any random header bytes give a ProtocolError, never another exception', () => {
    let seed = 12345;
    const next = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
    for (let i = 0; i < 500; i++) {
      const junk = Buffer.from(Array.from({ length: 1 + (next() % 40) }, next));
      assert.throws(() => decodeData([junk]), isProtocolError);
    }
  });

  it('wrong version', () => {
    const { header, x } = validTrainRaw();
    const other = PROTOCOL_VERSION + 1;
    const frames = rawFrames({ ...header, v: other }, new Uint8Array(x.buffer));
    assert.throws(
      () => decodeData(frames),
      rejects('BAD_VERSION', 'header.v', String(other), String(PROTOCOL_VERSION)),
    );
  });

  it('missing version', () => {
    const { header, x } = validTrainRaw();
    delete header.v;
    const frames = rawFrames(header, new Uint8Array(x.buffer));
    assert.throws(() => decodeData(frames), rejects('BAD_VERSION', 'header.v', 'undefined'));
  });

  it('unknown kind', () => {
    const { header, x } = validTrainRaw();
    const frames = rawFrames({ ...header, kind: 'bogus' }, new Uint8Array(x.buffer));
    assert.throws(() => decodeData(frames), rejects('BAD_KIND', 'header.kind', '"bogus"'));
  });

  it('missing seq', () => {
    const { header, x } = validTrainRaw();
    delete header.seq;
    const frames = rawFrames(header, new Uint8Array(x.buffer));
    assert.throws(() => decodeData(frames), rejects('BAD_HEADER', 'header.seq', 'missing'));
  });

  it('mistyped fields', () => {
    const { header, x } = validTrainRaw();
    const bytes = new Uint8Array(x.buffer);
    const cases: [Record<string, unknown>, string][] = [
      [{ epoch: -1 }, 'header.epoch'],
      [{ seq: 1.5 }, 'header.seq'],
      [{ run: 7 }, 'header.run'],
      [{ nPos: 0 }, 'header.nPos'],
      [{ lr: 'fast' }, 'header.lr'],
      [{ tensors: 'x' }, 'header.tensors'],
      [{ tensors: [{ shape: [8, D] }] }, 'header.tensors[0].name'],
    ];
    for (const [patch, field] of cases) {
      assert.throws(
        () => decodeData(rawFrames({ ...header, ...patch }, bytes)),
        rejects('BAD_HEADER', field),
      );
    }
  });

  it('truncated tensor frame', () => {
    const { header, x } = validTrainRaw();
    const frames = rawFrames(header, new Uint8Array(x.buffer, 0, x.byteLength - 4));
    assert.throws(
      () => decodeData(frames),
      rejects('BAD_SHAPE', `tensor 'x' shape [8, 784] needs 25088 bytes, frame 1 has 25084`),
    );
  });

  it('extra frame', () => {
    const { header, x } = validTrainRaw();
    const frames = rawFrames(header, new Uint8Array(x.buffer), new Uint8Array(8));
    assert.throws(() => decodeData(frames), rejects('BAD_SHAPE', '1 tensor', '2 tensor frame'));
  });

  it('missing frame', () => {
    const { header } = validTrainRaw();
    assert.throws(
      () => decodeData(rawFrames(header)),
      rejects('BAD_SHAPE', "'x'", '0 tensor frame'),
    );
  });

  it('shape does not match the bytes', () => {
    const { header, x } = validTrainRaw();
    const frames = rawFrames(
      { ...header, tensors: [{ name: 'x', shape: [8, 100] }] },
      new Uint8Array(x.buffer),
    );
    assert.throws(
      () => decodeData(frames),
      rejects('BAD_SHAPE', '[8, 100]', '3200 bytes', '25088'),
    );
  });

  it('negative or fractional dims', () => {
    const { header, x } = validTrainRaw();
    for (const shape of [
      [8, -784],
      [8, 78.4],
    ]) {
      const frames = rawFrames(
        { ...header, tensors: [{ name: 'x', shape }] },
        new Uint8Array(x.buffer),
      );
      assert.throws(() => decodeData(frames), rejects('BAD_SHAPE', "tensor 'x'", String(shape[1])));
    }
  });

  it('train rows other than 2 * nPos', () => {
    const { header, x } = validTrainRaw();
    const frames = rawFrames({ ...header, nPos: 3 }, new Uint8Array(x.buffer));
    assert.throws(() => decodeData(frames), rejects('BAD_SHAPE', 'nPos', '2 * 3', '[8, 784]'));
  });

  it('eval rows other than 10 * images', () => {
    const x = ramp(20, 4);
    const header = {
      v: PROTOCOL_VERSION,
      kind: 'eval',
      run: 'r',
      epoch: 0,
      seq: 0,
      images: 3,
      tensors: [{ name: 'x', shape: [20, 4] }],
    };
    assert.throws(
      () => decodeData(rawFrames(header, new Uint8Array(x.buffer))),
      rejects('BAD_SHAPE', 'images', '10 * images = 30', '[20, 4]'),
    );
  });

  it('a marker with tensors or a bad op', () => {
    const marker = {
      v: PROTOCOL_VERSION,
      kind: 'marker',
      run: 'r',
      epoch: 0,
      seq: 0,
      op: 'stop',
      id: 1,
    };
    assert.throws(
      () =>
        decodeData(
          rawFrames({ ...marker, tensors: [{ name: 'x', shape: [1] }] }, new Uint8Array(4)),
        ),
      rejects('BAD_SHAPE', 'marker'),
    );
    assert.throws(
      () => decodeData(rawFrames({ ...marker, op: 'explode', tensors: [] })),
      rejects('BAD_HEADER', 'header.op', '"explode"'),
    );
  });

  it('wrong width', () => {
    const x = ramp(8, 500);
    const frames = encodeData(trainHeader(4, 500), [x]);
    assert.throws(
      () => decodeData(frames, { width: D }),
      rejects('BAD_WIDTH', "'x'", '500', '784'),
    );
  });

  it('images and conv activations keep their shape [rows, h, w, c], held to the row expected', () => {
    const x = ramp(4 * 28 * 28, 1);
    const header: TrainInit = {
      ...trainHeader(4),
      tensors: [
        { name: 'x', shape: [4, 28, 28, 1] },
        { name: 'y', shape: [4] },
      ],
    };
    const y = Float32Array.from([0, 3, 9, 1]);
    const msg = decodeData(encodeData(header, [x, y]), { row: [28, 28, 1], checkFinite: true });
    assert.deepEqual(msg.header.tensors[0]!.shape, [4, 28, 28, 1]);
    assert.throws(
      () => decodeData(encodeData(header, [x, y]), { row: [28, 1, 28] }),
      rejects('BAD_WIDTH', '[4, 28, 28, 1]', 'rows of shape [28, 1, 28]'),
    );
    // The same values flat are not the same message: the stage takes images.
    const flat = { ...header, tensors: [{ name: 'x', shape: [4, 784] }, header.tensors[1]!] };
    assert.throws(
      () => decodeData(encodeData(flat, [x, y]), { row: [28, 28, 1] }),
      rejects('BAD_WIDTH', '[4, 784]'),
    );
    const rank3 = {
      ...header,
      v: PROTOCOL_VERSION,
      tensors: [{ name: 'x', shape: [4, 28, 28] }, header.tensors[1]!],
    };
    assert.throws(
      () => decodeData(rawFrames(rank3, new Uint8Array(x.buffer), new Uint8Array(y.buffer))),
      rejects('BAD_SHAPE', '[rows, d] or [rows, h, w, c]'),
    );
  });

  it('NaN or Infinity with checkFinite, and not without it', () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const x = ramp(8, D);
      x[3 * D + 5] = bad;
      const frames = encodeData(trainHeader(4), [x]);
      assert.throws(
        () => decodeData(frames, { checkFinite: true }),
        rejects('NON_FINITE', "tensor 'x'", String(bad), 'row 3, column 5'),
      );
      assert.doesNotThrow(() => decodeData(frames));
    }
    // Every position counts: each of the fast check's four lanes, and the tail past them
    // (2 x 7 = 14 values: 12 in lanes, 2 after).
    for (const [at, where] of [
      [0, 'row 0, column 0'],
      [6, 'row 0, column 6'],
      [11, 'row 1, column 4'],
      [13, 'row 1, column 6'],
    ] as const) {
      const x = ramp(2, 7);
      x[at] = Infinity;
      assert.throws(
        () => decodeData(encodeData(trainHeader(1, 7), [x]), { checkFinite: true }),
        rejects('NON_FINITE', where),
      );
    }
    const huge = ramp(2, 7).fill(3.4e38);
    assert.doesNotThrow(() =>
      decodeData(encodeData(trainHeader(1, 7), [huge]), { checkFinite: true }),
    );
  });

  it('encodeData refuses to build a bad message', () => {
    assert.throws(() => encodeData(trainHeader(4), [ramp(7, D)]), rejects('BAD_SHAPE', "'x'"));
    assert.throws(() => encodeData(trainHeader(4), []), rejects('BAD_SHAPE', '0 tensor frame'));
    assert.throws(
      () => encodeData({ ...trainHeader(4), seq: -1 }, [ramp(8, D)]),
      rejects('BAD_HEADER', 'header.seq'),
    );
  });
});

describe('control and result messages', () => {
  const g = new Float32Array(20);
  for (let i = 0; i < g.length; i++) g[i] = 1.5 * i - 7.25;

  const messages: ControlMessage[] = [
    {
      type: 'hello',
      layer: 1,
      last: 1,
      replica: 1,
      replicas: 1,
      version: PROTOCOL_VERSION,
      backend: 'wasm',
      endpoint: 'tcp://10.0.0.2:6000',
      exchange: '',
      pid: 4242,
      host: 'node-a',
      token: '0123abcd',
      key: '',
      proof: '',
      holds: { run: 'a1b2c3d4~1', config: { model: { layers: [784, 500, 500], threshold: 2 } } },
    },
    {
      type: 'config',
      run: 'r1',
      layer: 1,
      last: 1,
      replica: 1,
      replicas: 1,
      replicaEndpoints: [],
      replicaExchanges: [],
      replicaKeys: [],
      numLayers: 2,
      model: { layers: [784, 500, 500], threshold: 2 },
      optimizer: { kind: 'adam', lr: 0.001 },
      seed: 7,
      next: 'tcp://10.0.0.3:6000',
      nextKey: '',
      prevKey: '',
      batchSize: 100,
      evalBatchSize: 1000,
      shards: 1,
      linkTimeoutMs: 5000,
      mode: 'train',
      state: {
        'layers.0.weight': { shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, 1e-30, -7]) },
        'layers.0.bias': { shape: [2], data: new Float32Array([0.25, -0.5]) },
      },
      optimizerStep: 1200,
      origin: { name: 'demo', model: { layers: [784, 500, 500], threshold: 2 } },
    },
    {
      type: 'config',
      run: 'r1',
      layer: 2,
      last: 2,
      replica: 1,
      replicas: 1,
      replicaEndpoints: [],
      replicaExchanges: [],
      replicaKeys: [],
      numLayers: 2,
      model: null,
      optimizer: null,
      seed: -3,
      next: null,
      nextKey: '',
      prevKey: '',
      batchSize: 1,
      evalBatchSize: 1,
      shards: 1,
      linkTimeoutMs: 5000,
      mode: 'train',
      state: {},
      optimizerStep: 0,
      origin: null,
    },
    { type: 'ready', layer: 1, run: 'r1' },
    { type: 'heartbeat', layer: 1, token: '0123abcd' },
    { type: 'stop', reason: 'done' },
    { type: 'abort', run: 'r1', reason: 'interrupted by SIGINT' },
    { type: 'error', run: 'r1', layer: 2, code: 'BAD_VERSION', message: 'stage speaks 2' },
    {
      type: 'stats',
      layer: 1,
      run: 'r1',
      epoch: 0,
      seq: 5,
      loss: 0.6931471805599453,
      goodnessPos: 2.5,
      goodnessNeg: NaN,
      stepMs: 3.25,
      waitMs: 0,
      transportMs: 0.5,
      blockedMs: 0.25,
      logits: new Float32Array(0),
    },
    { type: 'ack', layer: 2, run: 'r1', op: 'end', id: 3, epoch: 0 },
    { type: 'rejected', layer: 1, run: 'r1', code: 'BAD_WIDTH', reason: 'width 500, expects 784' },
  ];

  for (const msg of messages) {
    it(`${msg.type} round-trips`, () => {
      assert.deepEqual(decodeControl(encodeControl(msg)), msg);
    });
  }

  it('goodness: g comes back as a Float32Array with the same bytes', () => {
    const msg: ControlMessage = {
      type: 'goodness',
      layer: 2,
      run: 'r1',
      epoch: 1,
      seq: 4,
      images: 2,
      g,
    };
    const back = decodeControl(encodeControl(msg));
    assert.ok(back.type === 'goodness');
    assert.ok(back.g instanceof Float32Array);
    assertSameBytes(back.g, g);
    assert.deepEqual({ ...back, g: null }, { ...msg, g: null });
  });

  it('goodness: g as a subarray encodes only its own bytes', () => {
    const big = new Float32Array(25).fill(9);
    big.set(g, 3);
    const view = big.subarray(3, 23);
    const back = decodeControl(
      encodeControl({
        type: 'goodness',
        layer: 1,
        run: 'r1',
        epoch: 0,
        seq: 0,
        images: 2,
        g: view,
      }),
    );
    assert.ok(back.type === 'goodness');
    assertSameBytes(back.g, g);
  });

  it('goodness: g must have 10 * images values', () => {
    assert.throws(
      () =>
        encodeControl({ type: 'goodness', layer: 1, run: 'r1', epoch: 0, seq: 0, images: 3, g }),
      rejects('BAD_SHAPE', 'goodness.g', '20', '30'),
    );
    const frame = pack({
      type: 'goodness',
      layer: 1,
      run: 'r1',
      epoch: 0,
      seq: 0,
      images: 3,
      g: Buffer.alloc(80),
    });
    assert.throws(() => decodeControl(frame), rejects('BAD_SHAPE', 'goodness.g'));
    const odd = pack({
      type: 'goodness',
      layer: 1,
      run: 'r1',
      epoch: 0,
      seq: 0,
      images: 2,
      g: Buffer.alloc(79),
    });
    assert.throws(() => decodeControl(odd), rejects('BAD_HEADER', 'goodness.g'));
  });

  it('weights: named tensors with shapes round-trip', () => {
    const w = new Float32Array([1, -2, 3.5, 4, 5, 6]);
    const b = new Float32Array([0.125, -0.5]);
    const msg: ControlMessage = {
      type: 'weights',
      layer: 1,
      run: 'r1',
      epoch: 3,
      optimizerStep: 600,
      tensors: {
        'layers.0.weight': { shape: [3, 2], data: w },
        'layers.0.bias': { shape: [2], data: b },
      },
    };
    const back = decodeControl(encodeControl(msg));
    assert.ok(back.type === 'weights');
    assert.deepEqual(Object.keys(back.tensors), ['layers.0.weight', 'layers.0.bias']);
    assert.deepEqual(back.tensors['layers.0.weight']!.shape, [3, 2]);
    assertSameBytes(back.tensors['layers.0.weight']!.data, w);
    assertSameBytes(back.tensors['layers.0.bias']!.data, b);
    assert.throws(
      () => encodeControl({ ...msg, tensors: { w: { shape: [4, 2], data: w } } }),
      rejects('BAD_SHAPE', 'weights.tensors["w"]', '[4, 2]'),
    );
  });

  it('unknown type, missing fields, wrong types, junk bytes', () => {
    assert.throws(() => decodeControl(pack({ type: 'launch' })), rejects('BAD_KIND', '"launch"'));
    assert.throws(() => decodeControl(pack({ layer: 1 })), rejects('BAD_KIND', 'type'));
    assert.throws(
      () =>
        decodeControl(
          pack({
            type: 'hello',
            layer: 1,
            last: 1,
            replica: 1,
            replicas: 1,
            version: 1,
            backend: 'cpu',
            pid: 1,
            host: 'h',
          }),
        ),
      rejects('BAD_HEADER', 'hello.endpoint', 'missing'),
    );
    assert.throws(
      () => decodeControl(pack({ type: 'ready', layer: '1' })),
      rejects('BAD_HEADER', 'ready.layer', '"1"'),
    );
    assert.throws(
      () => decodeControl(pack({ type: 'ack', layer: 1, run: 'r', op: 'nope', id: 1, epoch: 0 })),
      rejects('BAD_HEADER', 'ack.op', '"nope"'),
    );
    assert.throws(
      () =>
        encodeControl({
          type: 'config',
          run: 'r',
          layer: 1,
          last: 1,
          replica: 1,
          replicas: 1,
          replicaEndpoints: [],
          replicaExchanges: [],
          replicaKeys: [],
          numLayers: 1,
          model: {},
          optimizer: {},
          seed: 1,
          next: 5 as unknown as string,
          nextKey: '',
          prevKey: '',
          batchSize: 1,
          evalBatchSize: 1,
          shards: 1,
          linkTimeoutMs: 5000,
          mode: 'train',
          state: {},
          optimizerStep: 0,
          origin: null,
        }),
      rejects('BAD_HEADER', 'config.next'),
    );
    assert.throws(() => decodeControl(Buffer.from([0xc1, 0xc1])), rejects('BAD_FRAMES'));
    assert.throws(() => decodeControl(Buffer.alloc(0)), rejects('BAD_FRAMES'));
  });
});
