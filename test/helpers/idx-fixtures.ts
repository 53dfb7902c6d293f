import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

/** A ubyte IDX file: 00 00 08 ndims, big-endian sizes, data. */
export function idxBytes(dims: number[], data: ArrayLike<number>): Uint8Array {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header[2] = 0x08;
  header[3] = dims.length;
  dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([header, Buffer.from(Array.from(data))]);
}

export interface FakeDataset {
  train: number;
  test: number;
  rows?: number;
  cols?: number;
  gzip?: boolean;
  /** Pixel value of every image, to tell fixtures apart. */
  fill?: number;
}

/** The four standard files with count-dependent labels (i % 10) and constant pixels. */
export async function writeFakeDataset(
  dir: string,
  spec: FakeDataset,
): Promise<Record<string, Uint8Array>> {
  const { rows = 4, cols = 3, gzip = true, fill = 7 } = spec;
  await mkdir(dir, { recursive: true });
  const files: Record<string, Uint8Array> = {};
  for (const [prefix, count] of [
    ['train', spec.train],
    ['t10k', spec.test],
  ] as const) {
    const images = idxBytes([count, rows, cols], new Uint8Array(count * rows * cols).fill(fill));
    const labels = idxBytes(
      [count],
      Array.from({ length: count }, (_, i) => i % 10),
    );
    files[`${prefix}-images-idx3-ubyte`] = images;
    files[`${prefix}-labels-idx1-ubyte`] = labels;
  }
  for (const [name, bytes] of Object.entries(files)) {
    const out = gzip ? gzipSync(bytes) : bytes;
    await writeFile(join(dir, gzip ? `${name}.gz` : name), out);
    files[name] = out;
  }
  return files;
}
