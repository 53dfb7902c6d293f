import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { gunzipSync, gzipSync } from 'node:zlib';
import {
  CIFAR10_ARCHIVE,
  CIFAR10_ARCHIVE_DIR,
  CIFAR10_ARCHIVE_SHA256,
  CIFAR10_FILES,
  CIFAR10_RECORD_BYTES,
  CIFAR10_TEST_FILE,
  CIFAR10_TRAIN_FILES,
} from '../../src/data/cifar10.js';
import { DATASET_NAMES, loadDataset, type FetchLike } from '../../src/data/datasets.js';
import { isDataError, type DataErrorCode } from '../../src/data/errors.js';
import { writeCifarSample } from '../helpers/cifar10.js';
import { tempDir } from '../helpers/temp-dir.js';

const OFFICIAL_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz';

function rejectsWith(code: DataErrorCode, ...mentions: string[]) {
  return (err: unknown): boolean => {
    assert.ok(isDataError(err), `expected a DataError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const m of mentions)
      assert.ok(err.message.includes(m), `message should mention ${m}:\n${err.message}`);
    return true;
  };
}

/** A minimal ustar archive: regular files ('0'), or directories ('5') for names ending in '/'. */
function tarBytes(entries: Array<[string, Uint8Array]>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, data] of entries) {
    const h = Buffer.alloc(512);
    const dir = name.endsWith('/');
    h.write(name, 0, 100, 'latin1');
    h.write('0000644\0', 100, 'latin1');
    h.write('0000000\0', 108, 'latin1');
    h.write('0000000\0', 116, 'latin1');
    h.write(`${data.length.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
    h.write('00000000000\0', 136, 'latin1');
    h.write(' '.repeat(8), 148, 'latin1');
    h.write(dir ? '5' : '0', 156, 'latin1');
    h.write('ustar\0', 257, 'latin1');
    h.write('00', 263, 'latin1');
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    parts.push(h, Buffer.from(data), Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Serves `body` for every URL, recording the URLs asked for. */
function serving(body: Uint8Array, urls: string[] = []): FetchLike {
  return async (url) => {
    urls.push(url);
    return new Response(new Uint8Array(body), {
      headers: { 'content-length': String(body.length) },
    });
  };
}

const noNetwork: FetchLike = () => Promise.reject(new Error('network used'));

const tmp = tempDir('cifar10');
let n = 0;
const freshDir = (): string => tmp(`d${n++}`);

describe('cifar10 from a directory', () => {
  it('is a dataset name', () => {
    assert.ok(DATASET_NAMES.includes('cifar10'));
  });

  it('reads counts and labels, and turns each record from CHW into HWC', async () => {
    const dataDir = freshDir();
    await writeCifarSample(dataDir, 3, 4, 42);
    const ds = await loadDataset('cifar10', { dataDir, cacheDir: freshDir(), download: false });
    assert.equal(ds.name, 'cifar10');
    assert.equal(ds.source, dataDir);
    assert.equal(ds.train.count, 15);
    assert.equal(ds.test.count, 4);
    for (const split of [ds.train, ds.test]) {
      assert.deepEqual([split.rows, split.cols, split.channels], [32, 32, 3]);
      assert.equal(split.images.length, split.count * 32 * 32 * 3);
      assert.equal(split.labels.length, split.count);
    }
    assert.deepEqual([...ds.train.labels], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4]);
    assert.deepEqual([...ds.test.labels], [0, 1, 2, 3]);

    const check = async (files: readonly string[], images: Uint8Array): Promise<void> => {
      let i = 0;
      for (const file of files) {
        const raw = await readFile(join(dataDir, file));
        for (let rec = 0; rec * CIFAR10_RECORD_BYTES < raw.length; rec++, i++) {
          const base = rec * CIFAR10_RECORD_BYTES;
          for (let r = 0; r < 32; r++) {
            for (let c = 0; c < 32; c++) {
              for (let k = 0; k < 3; k++) {
                const got = images[((i * 32 + r) * 32 + c) * 3 + k];
                const want = raw[base + 1 + k * 1024 + r * 32 + c];
                if (got !== want) {
                  assert.fail(`${file} record ${rec}, (${r}, ${c}, ${k}): ${got} != ${want}`);
                }
              }
            }
          }
        }
      }
    };
    await check(CIFAR10_TRAIN_FILES, ds.train.images);
    await check([CIFAR10_TEST_FILE], ds.test.images);

    // One hand-made record, so the check above cannot pass by accident (e.g. a constant image).
    const record = new Uint8Array(CIFAR10_RECORD_BYTES);
    record[0] = 7;
    record[1 + 0 * 1024 + 0 * 32 + 1] = 11; // red at (0, 1)
    record[1 + 1 * 1024 + 2 * 32 + 3] = 22; // green at (2, 3)
    record[1 + 2 * 1024 + 31 * 32 + 31] = 33; // blue at (31, 31)
    await writeFile(join(dataDir, CIFAR10_TEST_FILE), record);
    const one = await loadDataset('cifar10', { dataDir, cacheDir: freshDir(), download: false });
    assert.deepEqual([...one.test.labels], [7]);
    const at = (r: number, c: number, k: number): number => one.test.images[(r * 32 + c) * 3 + k]!;
    assert.equal(at(0, 1, 0), 11);
    assert.equal(at(2, 3, 1), 22);
    assert.equal(at(31, 31, 2), 33);
    assert.equal(
      one.test.images.reduce((a, b) => a + b, 0),
      66,
    );
  });

  it('writes the same sample for the same seed, another for another seed', async () => {
    const [a, b, c] = [freshDir(), freshDir(), freshDir()];
    await writeCifarSample(a, 2, 1, 5);
    await writeCifarSample(b, 2, 1, 5);
    await writeCifarSample(c, 2, 1, 6);
    for (const file of CIFAR10_FILES) {
      const [x, y, z] = await Promise.all([a, b, c].map((d) => readFile(join(d, file))));
      assert.deepEqual(x, y, file);
      assert.notDeepEqual(x, z, file);
    }
  });

  it('looks in dataDir, dataDir/cifar-10-batches-bin, dataDir/cifar10[/...], then the cache', async () => {
    const dataDir = freshDir();
    const cacheDir = freshDir();
    await mkdir(dataDir);
    const opts = { dataDir, cacheDir, download: false, fetchImpl: noNetwork };
    const load = async (): Promise<[string, number]> => {
      const ds = await loadDataset('cifar10', opts);
      return [ds.source, ds.train.count];
    };
    const cache = join(cacheDir, 'datasets', 'cifar10', CIFAR10_ARCHIVE_DIR);
    await writeCifarSample(cache, 1, 1, 1);
    assert.deepEqual(await load(), [cache, 5]);
    await writeCifarSample(join(dataDir, 'cifar10', CIFAR10_ARCHIVE_DIR), 2, 1, 1);
    assert.deepEqual(await load(), [join(dataDir, 'cifar10', CIFAR10_ARCHIVE_DIR), 10]);
    await writeCifarSample(join(dataDir, 'cifar10'), 3, 1, 1);
    assert.deepEqual(await load(), [join(dataDir, 'cifar10'), 15]);
    await writeCifarSample(join(dataDir, CIFAR10_ARCHIVE_DIR), 4, 1, 1);
    assert.deepEqual(await load(), [join(dataDir, CIFAR10_ARCHIVE_DIR), 20]);
    await writeCifarSample(dataDir, 5, 1, 1);
    assert.deepEqual(await load(), [dataDir, 25]);
  });
});

describe('cifar10 validation', () => {
  it('refuses a file that is not whole records, naming it and its size', async () => {
    const dataDir = freshDir();
    await writeCifarSample(dataDir, 3, 4, 1);
    const file = join(dataDir, 'data_batch_2.bin');
    const bytes = await readFile(file);
    await writeFile(file, bytes.subarray(0, bytes.length - 10));
    const size = String(3 * CIFAR10_RECORD_BYTES - 10);
    await assert.rejects(
      loadDataset('cifar10', { dataDir, cacheDir: freshDir(), download: false }),
      rejectsWith('DATASET_BAD_SHAPE', file, size, '3073'),
    );
    await writeFile(file, new Uint8Array(0));
    await assert.rejects(
      loadDataset('cifar10', { dataDir, cacheDir: freshDir(), download: false }),
      rejectsWith('DATASET_BAD_SHAPE', file, 'is empty'),
    );
  });

  it('refuses a label past 9, naming the file and the record', async () => {
    const dataDir = freshDir();
    await writeCifarSample(dataDir, 3, 4, 1);
    const file = join(dataDir, CIFAR10_TEST_FILE);
    const bytes = await readFile(file);
    bytes[2 * CIFAR10_RECORD_BYTES] = 10;
    await writeFile(file, bytes);
    await assert.rejects(
      loadDataset('cifar10', { dataDir, cacheDir: freshDir(), download: false }),
      rejectsWith('DATASET_BAD_LABEL', file, 'record 2', 'label 10'),
    );
  });

  it('names a missing file', async () => {
    const dataDir = freshDir();
    await writeCifarSample(dataDir, 3, 4, 1);
    await rm(join(dataDir, 'data_batch_4.bin'));
    await assert.rejects(
      loadDataset('cifar10', { dataDir, cacheDir: freshDir(), download: false }),
      rejectsWith('DATASET_NOT_FOUND', `${dataDir} (data dir): missing data_batch_4.bin`),
    );
  });
});

describe('cifar10 not found', () => {
  it('says where it looked, what to download and where to put it', async () => {
    const dataDir = freshDir();
    await mkdir(dataDir);
    const cacheDir = freshDir();
    const cacheBase = join(cacheDir, 'datasets', 'cifar10');
    await assert.rejects(
      loadDataset('cifar10', { dataDir, cacheDir, download: false, fetchImpl: noNetwork }),
      rejectsWith(
        'DATASET_NOT_FOUND',
        `${dataDir} (data dir): missing ${CIFAR10_FILES.join(', ')}`,
        `${join(dataDir, CIFAR10_ARCHIVE_DIR)} (data dir): does not exist`,
        `${join(dataDir, 'cifar10')} (data dir): does not exist`,
        `${join(dataDir, 'cifar10', CIFAR10_ARCHIVE_DIR)} (data dir): does not exist`,
        `${join(cacheBase, CIFAR10_ARCHIVE_DIR)} (cache): does not exist`,
        'download disabled',
        OFFICIAL_URL,
        `tar xzf ${CIFAR10_ARCHIVE}`,
        `${cacheBase}/`,
        '--data-dir DIR',
        ...CIFAR10_FILES,
      ),
    );
  });

  it('reports an unreachable network the same way, after trying the official URL', async () => {
    const urls: string[] = [];
    const failing: FetchLike = async (url) => {
      urls.push(url);
      throw new TypeError('fetch failed', {
        cause: new Error('getaddrinfo ENOTFOUND www.cs.toronto.edu'),
      });
    };
    const cacheDir = freshDir();
    await assert.rejects(
      loadDataset('cifar10', { cacheDir, fetchImpl: failing, progress: false }),
      rejectsWith(
        'DATASET_NOT_FOUND',
        'Download: failed',
        'getaddrinfo ENOTFOUND',
        OFFICIAL_URL,
        join(cacheDir, 'datasets', 'cifar10', CIFAR10_ARCHIVE_DIR),
      ),
    );
    assert.deepEqual(urls, [OFFICIAL_URL]);
    assert.deepEqual(await readdir(join(cacheDir, 'datasets', 'cifar10')), []);
  });
});

describe('cifar10 download', () => {
  /** A .tar.gz like the official one, with a small sample; `extra` entries are added first. */
  async function archive(extra: Array<[string, Uint8Array]> = []): Promise<Buffer> {
    const dir = freshDir();
    await writeCifarSample(dir, 3, 4, 9);
    const entries: Array<[string, Uint8Array]> = [
      ...extra,
      [`${CIFAR10_ARCHIVE_DIR}/`, new Uint8Array(0)],
      [`${CIFAR10_ARCHIVE_DIR}/batches.meta.txt`, Buffer.from('airplane\nautomobile\n')],
      [`${CIFAR10_ARCHIVE_DIR}/readme.html`, Buffer.alloc(1000, 0x41)],
    ];
    for (const file of CIFAR10_FILES) {
      entries.push([`${CIFAR10_ARCHIVE_DIR}/${file}`, await readFile(join(dir, file))]);
    }
    return gzipSync(tarBytes(entries));
  }

  it('downloads the archive, checks its SHA-256, unpacks it into the cache', async () => {
    const tgz = await archive();
    const urls: string[] = [];
    const cacheDir = freshDir();
    const lines: string[] = [];
    const ds = await loadDataset('cifar10', {
      cacheDir,
      mirrors: ['http://mirror.invalid/c/'],
      fetchImpl: serving(tgz, urls),
      sha256: { [CIFAR10_ARCHIVE]: sha256(tgz) },
      progress: false,
      log: (l) => lines.push(l),
    });
    assert.deepEqual(urls, [`http://mirror.invalid/c/${CIFAR10_ARCHIVE}`]);
    const base = join(cacheDir, 'datasets', 'cifar10');
    const dir = join(base, CIFAR10_ARCHIVE_DIR);
    assert.equal(ds.source, dir);
    assert.equal(ds.train.count, 15);
    assert.equal(ds.test.count, 4);
    assert.deepEqual([...ds.test.labels], [0, 1, 2, 3]);
    assert.deepEqual(await readdir(base), [CIFAR10_ARCHIVE_DIR], 'the archive is removed');
    assert.deepEqual((await readdir(dir)).sort(), [...CIFAR10_FILES].sort(), 'only the 6 files');
    const sample = freshDir();
    await writeCifarSample(sample, 3, 4, 9);
    for (const file of CIFAR10_FILES) {
      assert.deepEqual(await readFile(join(dir, file)), await readFile(join(sample, file)), file);
    }
    assert.ok(
      lines.some((l) => l.includes(`downloading http://mirror.invalid/c/${CIFAR10_ARCHIVE}`)),
      lines.join('\n'),
    );

    // The next load reads the cache, without the network.
    const again = await loadDataset('cifar10', { cacheDir, fetchImpl: noNetwork });
    assert.equal(again.source, dir);
    assert.deepEqual(again.train.images, ds.train.images);
  });

  it('refuses an archive with the wrong SHA-256 and keeps nothing', async () => {
    const tgz = await archive();
    const cacheDir = freshDir();
    await assert.rejects(
      loadDataset('cifar10', {
        cacheDir,
        fetchImpl: serving(tgz),
        sha256: { [CIFAR10_ARCHIVE]: '0'.repeat(64) },
        progress: false,
      }),
      rejectsWith('DATASET_CHECKSUM', OFFICIAL_URL, '0'.repeat(64), sha256(tgz)),
    );
    assert.deepEqual(await readdir(join(cacheDir, 'datasets', 'cifar10')), []);
    // Without an override, the official archive's checksum is the one expected.
    await assert.rejects(
      loadDataset('cifar10', { cacheDir, fetchImpl: serving(tgz), progress: false }),
      rejectsWith('DATASET_CHECKSUM', CIFAR10_ARCHIVE_SHA256),
    );
  });

  for (const unsafe of ['../escaped.bin', '/tmp/ffx-cifar10-absolute.bin', 'a/../../x.bin']) {
    it(`refuses an archive with the entry name '${unsafe}'`, async () => {
      const tgz = await archive([[unsafe, Buffer.from('evil')]]);
      const cacheDir = freshDir();
      await assert.rejects(
        loadDataset('cifar10', {
          cacheDir,
          fetchImpl: serving(tgz),
          sha256: { [CIFAR10_ARCHIVE]: sha256(tgz) },
          progress: false,
        }),
        rejectsWith('DATASET_BAD_SHAPE', 'unsafe', unsafe),
      );
      assert.deepEqual(await readdir(cacheDir), ['datasets']);
      assert.deepEqual(
        await readdir(join(cacheDir, 'datasets', 'cifar10', CIFAR10_ARCHIVE_DIR)),
        [],
      );
    });
  }

  it('refuses a truncated archive and corrupt gzip data', async () => {
    const full = await archive();
    const cutTar = gzipSync(gunzipSync(full).subarray(0, 512 * 10 + 100));
    const cutGz = full.subarray(0, full.length - 100);
    for (const [tgz, why] of [
      [cutTar, 'truncated in entry'],
      [cutGz, 'corrupt gzip data'],
    ] as const) {
      await assert.rejects(
        loadDataset('cifar10', {
          cacheDir: freshDir(),
          fetchImpl: serving(tgz),
          sha256: { [CIFAR10_ARCHIVE]: sha256(tgz) },
          progress: false,
        }),
        rejectsWith('DATASET_BAD_SHAPE', CIFAR10_ARCHIVE, why),
      );
    }
  });
});
