// The safetensors format (https://github.com/huggingface/safetensors), float32 only:
//   8-byte little-endian header length N, N bytes of JSON header, then the raw tensor bytes.
//   header = { "__metadata__": { string: string }, name: { dtype: "F32", shape, data_offsets } }
// Python reads the files ffx writes with `safetensors.numpy.load_file(path)`.
import { FfxError } from '../errors.js';

export interface NamedTensor {
  shape: number[];
  data: Float32Array;
}

export class SafetensorsError extends FfxError<'SAFETENSORS_INVALID'> {
  readonly source: string;
  constructor(source: string, message: string) {
    super('SAFETENSORS_INVALID', `${source}: ${message}`);
    this.source = source;
  }
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export function encodeSafetensors(
  tensors: Map<string, NamedTensor>,
  metadata: Record<string, string> = {},
): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of tensors) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new SafetensorsError(
        name,
        `shape [${t.shape.join(', ')}] holds ${count} values, data has ${t.data.length}`,
      );
    }
    header[name] = {
      dtype: 'F32',
      shape: t.shape,
      data_offsets: [offset, offset + t.data.byteLength],
    };
    offset += t.data.byteLength;
  }
  // The spec pads the header with spaces so the data starts 8-byte aligned.
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors.values()) {
    // Raw bytes in the machine's order: safetensors is little-endian, as is every platform
    // Node.js ships for.
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    out.set(bytes, at);
    at += bytes.length;
  }
  return out;
}

export function decodeSafetensors(
  buf: Uint8Array,
  source = 'safetensors',
): { tensors: Map<string, NamedTensor>; metadata: Record<string, string> } {
  if (buf.length < 8)
    throw new SafetensorsError(
      source,
      `file is ${buf.length} bytes, shorter than the 8-byte header length`,
    );
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (8 + n > buf.length)
    throw new SafetensorsError(
      source,
      `header length ${n} runs past the end of the file (${buf.length} bytes)`,
    );
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + 8, n).toString('utf8')) as Record<
      string,
      unknown
    >;
  } catch (err) {
    throw new SafetensorsError(source, `header is not JSON (${(err as Error).message})`);
  }
  const dataStart = 8 + n;
  const tensors = new Map<string, NamedTensor>();
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new SafetensorsError(source, 'header is not a JSON object');
  }
  const metadata = ((header as Record<string, unknown>).__metadata__ ?? {}) as Record<
    string,
    string
  >;
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const e = raw as Partial<HeaderEntry> | null;
    const dims = e?.shape;
    const offsets = e?.data_offsets;
    if (
      !Array.isArray(dims) ||
      !dims.every((d) => Number.isInteger(d) && d >= 0) ||
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isInteger(o))
    ) {
      throw new SafetensorsError(
        source,
        `tensor "${name}" needs integer "shape" and "data_offsets" [begin, end]`,
      );
    }
    if (e!.dtype !== 'F32')
      throw new SafetensorsError(
        source,
        `tensor "${name}" has dtype ${e!.dtype}; only F32 is supported`,
      );
    const [begin, end] = offsets as [number, number];
    const count = dims.reduce((a, b) => a * b, 1);
    if (begin < 0 || end - begin !== count * 4 || dataStart + end > buf.length) {
      throw new SafetensorsError(
        source,
        `tensor "${name}" [${dims.join(', ')}] has bad data_offsets [${begin}, ${end}]`,
      );
    }
    // Copy: the source buffer's alignment is not guaranteed to suit a Float32Array view.
    const data = new Float32Array(count);
    new Uint8Array(data.buffer).set(buf.subarray(dataStart + begin, dataStart + end));
    tensors.set(name, { shape: dims, data });
  }
  return { tensors, metadata };
}
