// safetensors: the bytes ffx writes follow the spec, files built by hand per the spec decode,
// and every malformed file is a SafetensorsError that names the file.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decodeSafetensors,
  encodeSafetensors,
  SafetensorsError,
  type NamedTensor,
} from '../../src/core/safetensors.js';

const FILE = 'runs/x/model.safetensors';

/** A file per the spec: u64 LE header length, the header JSON as given, then the data bytes. */
function buildFile(header: unknown, data: number[] = [], headerText?: string): Uint8Array {
  const json = Buffer.from(headerText ?? JSON.stringify(header), 'utf8');
  const out = Buffer.alloc(8 + json.length + 4 * data.length);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  data.forEach((v, i) => out.writeFloatLE(v, 8 + json.length + 4 * i));
  return out;
}

function headerOf(file: Uint8Array): { n: number; text: string } {
  const b = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  const n = Number(b.readBigUInt64LE(0));
  return { n, text: b.subarray(8, 8 + n).toString('utf8') };
}

/** Asserts `fn` throws a SafetensorsError for FILE whose message matches `re`. */
function assertInvalid(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SafetensorsError, `not a SafetensorsError: ${String(err)}`);
    assert.equal(err.code, 'SAFETENSORS_INVALID');
    assert.equal(err.source, FILE);
    assert.ok(err.message.startsWith(`${FILE}: `), err.message);
    assert.match(err.message, re);
    return true;
  });
}

describe('encodeSafetensors / decodeSafetensors', () => {
  it('round-trips tensors (order, shapes, values) and metadata', () => {
    const tensors = new Map<string, NamedTensor>([
      ['layers.0.weight', { shape: [3, 2], data: Float32Array.from([1, -2, 3.5, 1e-30, -0, 7]) }],
      ['layers.0.bias', { shape: [2], data: Float32Array.from([Infinity, 0.1]) }],
      ['step', { shape: [], data: Float32Array.from([42]) }],
    ]);
    const metadata = { format: 'ffx-checkpoint-v1', epoch: '3', note: 'ü ✓' };
    const { tensors: got, metadata: meta } = decodeSafetensors(
      encodeSafetensors(tensors, metadata),
    );
    assert.deepEqual(meta, metadata);
    assert.deepEqual([...got.keys()], [...tensors.keys()]);
    for (const [name, t] of tensors) assert.deepEqual(got.get(name), t, name);
    assert.ok(Object.is(got.get('layers.0.weight')!.data[4], -0), '-0 survives bit for bit');
  });

  it('writes exactly the spec layout: u64 LE length, JSON header, contiguous LE floats', () => {
    const file = encodeSafetensors(
      new Map([
        ['a', { shape: [2], data: Float32Array.from([1.5, -2]) }],
        ['b', { shape: [1, 1], data: Float32Array.from([0.25]) }],
      ]),
      { k: 'v' },
    );
    const { n, text } = headerOf(file);
    // Data offsets count from the end of the header, tensors back to back in insertion order.
    const json =
      '{"__metadata__":{"k":"v"},' +
      '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
      '"b":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]}}';
    assert.equal(text.trimEnd(), json);
    assert.match(text.slice(json.length), /^ *$/, 'padding is spaces');
    assert.equal(file.length, 8 + n + 12);
    const data = Buffer.from(file.buffer, file.byteOffset + 8 + n, 12);
    assert.deepEqual(
      [data.readFloatLE(0), data.readFloatLE(4), data.readFloatLE(8)],
      [1.5, -2, 0.25],
    );
  });

  it('pads the header with spaces so the data starts 8-byte aligned', () => {
    // Names of length 1..8 walk the header length through every residue mod 8.
    const residues = new Set<number>();
    for (let len = 1; len <= 8; len++) {
      const name = 'x'.repeat(len);
      const file = encodeSafetensors(new Map([[name, { shape: [1], data: Float32Array.of(len) }]]));
      const { n, text } = headerOf(file);
      assert.equal((8 + n) % 8, 0, `name length ${len}: header length ${n}`);
      residues.add(JSON.stringify(JSON.parse(text)).length % 8);
      assert.equal(decodeSafetensors(file).tensors.get(name)!.data[0], len);
    }
    assert.equal(residues.size, 8, 'every amount of padding, 0..7, was exercised');
  });

  it('writes no __metadata__ when there is none, and an empty file holds no tensors', () => {
    const file = encodeSafetensors(new Map());
    assert.equal(headerOf(file).text.trimEnd(), '{}');
    const { tensors, metadata } = decodeSafetensors(file);
    assert.equal(tensors.size, 0);
    assert.deepEqual(metadata, {});
  });

  it('rejects a tensor whose data does not fill its shape, naming the tensor', () => {
    assert.throws(
      () => encodeSafetensors(new Map([['w', { shape: [2, 3], data: new Float32Array(5) }]])),
      (err: unknown) =>
        err instanceof SafetensorsError &&
        err.source === 'w' &&
        /shape \[2, 3\] holds 6 values, data has 5/.test(err.message),
    );
  });
});

describe('decodeSafetensors on files built by hand', () => {
  it('reads an unpadded header, out-of-order offsets and an unaligned buffer', () => {
    // What another writer may produce: no padding (header length 113, not a multiple of 8),
    // tensors listed in a different order than their bytes, and the file handed over as a view
    // at an odd byte offset of a larger buffer.
    const header = {
      second: { dtype: 'F32', shape: [3], data_offsets: [8, 20] },
      first: { dtype: 'F32', shape: [2, 1], data_offsets: [0, 8] },
    };
    const raw = buildFile(header, [10, 20, 1, 2, 3]);
    assert.notEqual((raw.length - 20) % 8, 0, 'the header is unaligned');
    const host = new Uint8Array(raw.length + 3);
    host.set(raw, 3);
    const { tensors, metadata } = decodeSafetensors(host.subarray(3), FILE);
    assert.deepEqual(metadata, {});
    assert.deepEqual(tensors.get('first'), { shape: [2, 1], data: Float32Array.from([10, 20]) });
    assert.deepEqual(tensors.get('second'), { shape: [3], data: Float32Array.from([1, 2, 3]) });
  });
});

describe('decodeSafetensors errors name the file', () => {
  const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

  it('a file shorter than the 8-byte length', () => {
    assertInvalid(() => decodeSafetensors(new Uint8Array(5), FILE), /5 bytes, shorter than/);
  });

  it('a header length that runs past the end (truncated header)', () => {
    const file = buildFile(ok, [1, 2]);
    const { n } = headerOf(file);
    assertInvalid(
      () => decodeSafetensors(file.subarray(0, 8 + n - 1), FILE),
      new RegExp(`header length ${n} runs past the end of the file \\(${8 + n - 1} bytes\\)`),
    );
  });

  it('truncated data', () => {
    const file = buildFile(ok, [1, 2]);
    assertInvalid(
      () => decodeSafetensors(file.subarray(0, file.length - 1), FILE),
      /tensor "w" \[2\] has bad data_offsets \[0, 8\]/,
    );
  });

  it('a header that is not JSON', () => {
    assertInvalid(() => decodeSafetensors(buildFile(null, [], '{"w": {'), FILE), /not JSON/);
  });

  it('a dtype other than F32', () => {
    const file = buildFile({ w: { dtype: 'F16', shape: [2], data_offsets: [0, 4] } }, [0]);
    assertInvalid(
      () => decodeSafetensors(file, FILE),
      /tensor "w" has dtype F16; only F32 is supported/,
    );
  });

  it('offsets that do not span shape x 4 bytes', () => {
    const file = buildFile({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, [1, 2, 3]);
    assertInvalid(() => decodeSafetensors(file, FILE), /tensor "w" \[3\] has bad data_offsets/);
  });

  it('offsets past the end of the data', () => {
    const file = buildFile({ w: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, [1, 2]);
    assertInvalid(() => decodeSafetensors(file, FILE), /bad data_offsets \[4, 12\]/);
  });

  it('offsets before the start of the data', () => {
    const file = buildFile({ w: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, [1]);
    assertInvalid(() => decodeSafetensors(file, FILE), /bad data_offsets \[-4, 0\]/);
  });

  it('an entry without shape or data_offsets', () => {
    const file = buildFile({ w: { dtype: 'F32' } });
    assertInvalid(() => decodeSafetensors(file, FILE), /tensor "w"/);
  });
});
