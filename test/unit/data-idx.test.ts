import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { DataError, isDataError, type DataErrorCode } from '../../src/data/errors.js';
import { parseIdx, readIdxFile } from '../../src/data/idx.js';
import { idxBytes } from '../helpers/idx-fixtures.js';
import { tempDir } from '../helpers/temp-dir.js';

function rejectsWith(code: DataErrorCode, file: string) {
  return (err: unknown): boolean => {
    assert.ok(isDataError(err), `expected a DataError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.ok(err.message.includes(file), `message should name ${file}: ${err.message}`);
    assert.equal(err.file, file);
    return true;
  };
}

describe('parseIdx', () => {
  it('reads a hand-built 3-D file as a view of the input', () => {
    // 2 images of 2x3: header 00 00 08 03 | 2 | 2 | 3, then 12 bytes.
    const buf = new Uint8Array([
      0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255,
    ]);
    const idx = parseIdx(buf, 'x.idx');
    assert.deepEqual(idx.dims, [2, 2, 3]);
    assert.deepEqual(Array.from(idx.data), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255]);
    assert.equal(idx.data.buffer, buf.buffer, 'no copy');
    assert.equal(idx.data.byteOffset, 16);
  });

  it('reads 1-D and 4-D files', () => {
    assert.deepEqual(parseIdx(idxBytes([3], [7, 8, 9]), 'a').dims, [3]);
    const four = parseIdx(idxBytes([1, 2, 1, 2], [1, 2, 3, 4]), 'b');
    assert.deepEqual(four.dims, [1, 2, 1, 2]);
    assert.deepEqual(Array.from(four.data), [1, 2, 3, 4]);
  });

  it('rejects a wrong magic', () => {
    const buf = idxBytes([2], [1, 2]);
    buf[0] = 0x1f;
    assert.throws(() => parseIdx(buf, 'bad-magic'), rejectsWith('IDX_BAD_MAGIC', 'bad-magic'));
  });

  it('rejects data types other than unsigned byte, naming the type', () => {
    const buf = idxBytes([1], [0, 0, 0, 0]);
    buf[2] = 0x0d;
    buf.set([0, 0, 0, 1], 4);
    assert.throws(
      () => parseIdx(buf.subarray(0, 12), 'floats'),
      (err: unknown) =>
        rejectsWith('IDX_UNSUPPORTED_TYPE', 'floats')(err) &&
        (err as DataError).message.includes('float32'),
    );
  });

  it('rejects 0 or more than 4 dimensions', () => {
    assert.throws(
      () => parseIdx(new Uint8Array([0, 0, 8, 0]), 'zero'),
      rejectsWith('IDX_BAD_DIMS', 'zero'),
    );
    const five = idxBytes([1, 1, 1, 1, 1], [0]);
    assert.throws(() => parseIdx(five, 'five'), rejectsWith('IDX_BAD_DIMS', 'five'));
  });

  it('rejects truncated headers and data, saying what the header promised', () => {
    assert.throws(
      () => parseIdx(new Uint8Array([0, 0]), 'tiny'),
      rejectsWith('IDX_TRUNCATED', 'tiny'),
    );
    const full = idxBytes([60000, 28, 28], []);
    assert.throws(
      () => parseIdx(full.subarray(0, 10), 'short-header'),
      rejectsWith('IDX_TRUNCATED', 'short-header'),
    );
    const truncated = new Uint8Array(16 + 1000);
    truncated.set(full.subarray(0, 16));
    assert.throws(
      () => parseIdx(truncated, 'train-images-idx3-ubyte.gz'),
      (err: unknown) => {
        rejectsWith('IDX_TRUNCATED', 'train-images-idx3-ubyte.gz')(err);
        assert.equal(
          (err as DataError).message,
          'train-images-idx3-ubyte.gz: truncated: header says 60000x28x28 = 47040000 bytes of data, file has 1000',
        );
        return true;
      },
    );
  });

  it('rejects trailing bytes', () => {
    const buf = idxBytes([3], [1, 2, 3, 4, 5]);
    assert.throws(
      () => parseIdx(buf, 'trailing'),
      (err: unknown) =>
        rejectsWith('IDX_TRAILING_BYTES', 'trailing')(err) &&
        (err as DataError).message.includes('2 trailing bytes'),
    );
  });
});

describe('readIdxFile', () => {
  const tmp = tempDir('idx');

  const bytes = idxBytes([2, 2], [10, 20, 30, 40]);

  it('reads plain files', async () => {
    const path = tmp('plain-idx1-ubyte');
    await writeFile(path, bytes);
    const idx = await readIdxFile(path);
    assert.deepEqual(idx.dims, [2, 2]);
    assert.deepEqual(Array.from(idx.data), [10, 20, 30, 40]);
    assert.ok(!Buffer.isBuffer(idx.data), 'a plain Uint8Array, not a Buffer');
  });

  it('detects gzip by its magic bytes, not by the file name', async () => {
    const named = tmp('x.gz');
    const unnamed = tmp('gzipped-without-suffix');
    await writeFile(named, gzipSync(bytes));
    await writeFile(unnamed, gzipSync(bytes));
    for (const path of [named, unnamed]) {
      assert.deepEqual(Array.from((await readIdxFile(path)).data), [10, 20, 30, 40]);
    }
  });

  it('names the file for a corrupt gzip stream', async () => {
    const gz = gzipSync(bytes);
    const path = tmp('corrupt.gz');
    await writeFile(path, gz.subarray(0, gz.length - 12));
    await assert.rejects(readIdxFile(path), rejectsWith('IDX_BAD_GZIP', path));
    const garbage = Buffer.from(gz);
    garbage.fill(0xff, 10, 20);
    await writeFile(path, garbage);
    await assert.rejects(readIdxFile(path), rejectsWith('IDX_BAD_GZIP', path));
  });

  it('names the file, with its path, for a truncated gzipped file', async () => {
    const path = tmp('train-images-idx3-ubyte.gz');
    await writeFile(path, gzipSync(idxBytes([5, 2, 2], []).subarray(0, 16)));
    await assert.rejects(readIdxFile(path), rejectsWith('IDX_TRUNCATED', path));
  });
});
