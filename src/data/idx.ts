import { readFile } from 'node:fs/promises';
import { createGunzip } from 'node:zlib';
import { DataError } from './errors.js';

/** An IDX array of unsigned bytes; `data` is row-major with shape `dims`. */
export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

const UBYTE = 0x08;
const TYPE_NAMES: Record<number, string> = {
  0x09: 'signed byte',
  0x0b: 'int16',
  0x0c: 'int32',
  0x0d: 'float32',
  0x0e: 'float64',
};

/** No IDX file ffx reads is near this size; a gzip that inflates past it is refused. */
export const IDX_MAX_BYTES = 2 * 1024 ** 3;

/**
 * Parses an IDX file: magic 00 00 <type> <ndims>, ndims big-endian uint32 sizes, then the data.
 * `source` names the file in error messages. The returned data is a view of `buf`, not a copy.
 */
export function parseIdx(buf: Uint8Array, source: string): IdxArray {
  if (buf.length < 4) {
    throw new DataError(
      'IDX_TRUNCATED',
      `${source}: truncated: ${buf.length} bytes, an IDX header needs at least 4`,
      source,
    );
  }
  const [z0, z1, type, ndims] = buf as unknown as [number, number, number, number];
  if (z0 !== 0 || z1 !== 0) {
    const magic = Array.from(buf.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new DataError(
      'IDX_BAD_MAGIC',
      `${source}: not an IDX file: magic bytes are ${magic}, expected 00 00 08 <ndims>`,
      source,
    );
  }
  if (type !== UBYTE) {
    const what = TYPE_NAMES[type] ?? 'unknown';
    throw new DataError(
      'IDX_UNSUPPORTED_TYPE',
      `${source}: unsupported IDX data type 0x${type.toString(16).padStart(2, '0')} (${what}); only unsigned byte (0x08) is supported`,
      source,
    );
  }
  if (ndims < 1 || ndims > 4) {
    throw new DataError(
      'IDX_BAD_DIMS',
      `${source}: IDX header has ${ndims} dimensions, expected 1 to 4`,
      source,
    );
  }
  const headerBytes = 4 + 4 * ndims;
  if (buf.length < headerBytes) {
    throw new DataError(
      'IDX_TRUNCATED',
      `${source}: truncated: a ${ndims}-D IDX header needs ${headerBytes} bytes, file has ${buf.length}`,
      source,
    );
  }
  const view = new DataView(buf.buffer, buf.byteOffset, headerBytes);
  const dims: number[] = [];
  for (let i = 0; i < ndims; i++) dims.push(view.getUint32(4 + 4 * i, false));
  const expected = dims.reduce((a, b) => a * b, 1);
  const actual = buf.length - headerBytes;
  const shape = `${dims.join('x')} = ${expected} bytes of data, file has ${actual}`;
  if (actual < expected) {
    throw new DataError('IDX_TRUNCATED', `${source}: truncated: header says ${shape}`, source);
  }
  if (actual > expected) {
    throw new DataError(
      'IDX_TRAILING_BYTES',
      `${source}: ${actual - expected} trailing bytes: header says ${shape}`,
      source,
    );
  }
  return { dims, data: buf.subarray(headerBytes) };
}

/** Reads an IDX file, gunzipping it when it starts with the gzip magic (whatever its name). */
export async function readIdxFile(path: string): Promise<IdxArray> {
  const raw = await readFile(path);
  let bytes: Uint8Array = raw;
  if (raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b) bytes = await gunzipIdx(raw, path);
  // A plain Uint8Array view, so callers never get Buffer's non-copying slice() by surprise.
  return parseIdx(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), path);
}

/**
 * Inflates a gzipped IDX file, never past the size its own header declares (the header is the
 * first bytes out) nor past IDX_MAX_BYTES: a small file that would inflate to gigabytes is
 * refused as soon as it runs over, not after.
 */
function gunzipIdx(raw: Uint8Array, path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let limit = IDX_MAX_BYTES;
    const gunzip = createGunzip();
    const fail = (
      code: 'IDX_BAD_GZIP' | 'IDX_TRAILING_BYTES',
      message: string,
      cause?: unknown,
    ) => {
      gunzip.destroy();
      reject(new DataError(code, `${path}: ${message}`, path, cause ? { cause } : undefined));
    };
    gunzip.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (limit === IDX_MAX_BYTES && size >= 4) {
        const head = chunks.length === 1 ? chunk : Buffer.concat(chunks);
        const ndims = head[3]!;
        if (size >= 4 + 4 * ndims) {
          let declared = 4 + 4 * ndims;
          let count = 1;
          for (let i = 0; i < ndims; i++) count *= head.readUInt32BE(4 + 4 * i);
          declared += count;
          limit = Math.min(declared, IDX_MAX_BYTES);
        }
      }
      if (size > limit) {
        fail(
          'IDX_TRAILING_BYTES',
          `inflates past the ${limit} bytes its IDX header declares (or the ${IDX_MAX_BYTES}-byte limit); refused`,
        );
      }
    });
    gunzip.on('error', (err) => fail('IDX_BAD_GZIP', `corrupt gzip data: ${err.message}`, err));
    gunzip.on('end', () => resolve(Buffer.concat(chunks, size)));
    gunzip.end(raw);
  });
}
