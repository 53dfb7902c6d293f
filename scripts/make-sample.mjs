#!/usr/bin/env node
// Regenerates data/fashion-mnist-sample/ from the Debian package dataset-fashion-mnist:
// the first 10,000 training images and labels, as gzipped IDX (level 9).
// Usage: node scripts/make-sample.mjs [SOURCE_DIR]   (default /usr/share/datasets/fashion-mnist)
import { Buffer } from 'node:buffer';
import console from 'node:console';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';

const COUNT = 10000;
const source = process.argv[2] ?? '/usr/share/datasets/fashion-mnist';
const outDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'data', 'fashion-mnist-sample');

/** Keeps the first COUNT items of a ubyte IDX file; the count is the first dimension. */
function head(idx, file) {
  const ndims = idx[3];
  if (idx[0] !== 0 || idx[1] !== 0 || idx[2] !== 0x08 || ndims < 1) {
    throw new Error(`${file}: not an unsigned-byte IDX file`);
  }
  const header = Buffer.from(idx.subarray(0, 4 + 4 * ndims));
  const count = header.readUInt32BE(4);
  if (count < COUNT) throw new Error(`${file}: has ${count} items, need ${COUNT}`);
  let itemBytes = 1;
  for (let i = 1; i < ndims; i++) itemBytes *= header.readUInt32BE(4 + 4 * i);
  header.writeUInt32BE(COUNT, 4);
  return Buffer.concat([header, idx.subarray(header.length, header.length + COUNT * itemBytes)]);
}

mkdirSync(outDir, { recursive: true });
for (const name of ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte']) {
  const file = join(source, `${name}.gz`);
  const idx = head(gunzipSync(readFileSync(file)), file);
  // zlib writes mtime 0 and no file name, so the output depends only on the input and zlib.
  const gz = gzipSync(idx, { level: 9 });
  const out = join(outDir, `${name}.gz`);
  writeFileSync(out, gz);
  const sha = (b) => createHash('sha256').update(b).digest('hex');
  console.log(`${out}: ${gz.length} bytes; IDX sha256 ${sha(idx)}`);
}
