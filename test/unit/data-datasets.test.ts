import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import {
  defaultCacheDir,
  IDX_FILE_NAMES,
  loadDataset,
  type DatasetName,
  type FetchLike,
  type Split,
} from '../../src/data/datasets.js';
import { isDataError, type DataErrorCode } from '../../src/data/errors.js';
import { idxBytes, writeFakeDataset } from '../helpers/idx-fixtures.js';
import { tempDir } from '../helpers/temp-dir.js';

const SYSTEM_FASHION = '/usr/share/datasets/fashion-mnist';

function classCounts(split: Split): number[] {
  const counts = new Array<number>(10).fill(0);
  for (const l of split.labels) counts[l]!++;
  return counts;
}

function rejectsWith(code: DataErrorCode, ...mentions: string[]) {
  return (err: unknown): boolean => {
    assert.ok(isDataError(err), `expected a DataError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const m of mentions)
      assert.ok(err.message.includes(m), `message should mention ${m}:\n${err.message}`);
    return true;
  };
}

const tmp = tempDir('datasets');
let n = 0;
const freshDir = (): string => tmp(`d${n++}`);

describe('fashion-mnist-sample', () => {
  it('loads 8,000 / 2,000 28x28 images with every class present', async () => {
    const ds = await loadDataset('fashion-mnist-sample');
    assert.equal(ds.name, 'fashion-mnist-sample');
    assert.ok(ds.source.endsWith(join('data', 'fashion-mnist-sample')), ds.source);
    for (const [split, count] of [
      [ds.train, 8000],
      [ds.test, 2000],
    ] as const) {
      assert.equal(split.count, count);
      assert.equal(split.rows, 28);
      assert.equal(split.cols, 28);
      assert.equal(split.images.length, count * 28 * 28);
      assert.equal(split.labels.length, count);
      assert.ok(split.labels.every((l) => l <= 9));
      assert.ok(
        classCounts(split).every((c) => c > 0),
        `all 10 classes: ${classCounts(split)}`,
      );
    }
    // The split is two views of one buffer, test right after train.
    assert.equal(ds.train.images.buffer, ds.test.images.buffer);
    assert.equal(ds.test.images.byteOffset, ds.train.images.byteOffset + 8000 * 784);
  });
});

describe('fashion-mnist from the Debian package', () => {
  // CI installs dataset-fashion-mnist; a missing package is a failure, not a skip.
  it('loads 60,000 / 10,000 from /usr/share/datasets/fashion-mnist', async () => {
    const ds = await loadDataset('fashion-mnist', { cacheDir: freshDir(), download: false });
    assert.equal(ds.source, SYSTEM_FASHION);
    assert.equal(ds.train.count, 60000);
    assert.equal(ds.test.count, 10000);
    assert.equal(ds.train.rows * ds.train.cols, 784);
    assert.deepEqual(classCounts(ds.train), new Array(10).fill(6000));
    assert.deepEqual(classCounts(ds.test), new Array(10).fill(1000));

    const sample = await loadDataset('fashion-mnist-sample');
    const px = 784;
    assert.deepEqual(sample.train.images, ds.train.images.subarray(0, 8000 * px));
    assert.deepEqual(sample.test.images, ds.train.images.subarray(8000 * px, 10000 * px));
    assert.deepEqual(sample.test.labels, ds.train.labels.subarray(8000, 10000));
  });
});

describe('lookup order', () => {
  it('prefers --data-dir, as is or with /<name>, over the cache and the system dir', async () => {
    const cacheDir = freshDir();
    const dataDir = freshDir();
    await writeFakeDataset(join(cacheDir, 'datasets', 'fashion-mnist'), { train: 30, test: 5 });

    let ds = await loadDataset('fashion-mnist', { cacheDir, download: false });
    assert.equal(ds.source, join(cacheDir, 'datasets', 'fashion-mnist'), 'cache beats system');
    assert.equal(ds.train.count, 30);

    await writeFakeDataset(join(dataDir, 'fashion-mnist'), { train: 20, test: 10, gzip: false });
    ds = await loadDataset('fashion-mnist', { dataDir, cacheDir, download: false });
    assert.equal(ds.source, join(dataDir, 'fashion-mnist'));
    assert.equal(ds.train.count, 20);
    assert.equal(ds.test.count, 10);
    assert.deepEqual([ds.train.rows, ds.train.cols], [4, 3]);

    await writeFakeDataset(dataDir, { train: 12, test: 6 });
    ds = await loadDataset('fashion-mnist', { dataDir, cacheDir, download: false });
    assert.equal(ds.source, dataDir, '<dataDir> itself comes before <dataDir>/<name>');
    assert.equal(ds.train.count, 12);
  });

  it('refuses a data directory that does not exist, for every dataset', async () => {
    for (const name of ['fashion-mnist', 'fashion-mnist-sample'] as const) {
      await assert.rejects(
        loadDataset(name, { dataDir: '/nonexistent/ffx', cacheDir: freshDir(), download: false }),
        (e: Error & { code?: string }) =>
          e.code === 'DATASET_NOT_FOUND' &&
          e.message ===
            'the data directory /nonexistent/ffx (--data-dir, data.dataDir) does not exist',
      );
    }
  });

  it('skips a directory with only some of the files', async () => {
    const dataDir = freshDir();
    await writeFakeDataset(dataDir, { train: 12, test: 6 });
    await rm(join(dataDir, 't10k-labels-idx1-ubyte.gz'));
    const ds = await loadDataset('fashion-mnist', {
      dataDir,
      cacheDir: freshDir(),
      download: false,
    });
    assert.equal(ds.source, SYSTEM_FASHION);
  });
});

describe('validation of found files', () => {
  it('rejects image and label counts that differ, naming both files', async () => {
    const dataDir = freshDir();
    await writeFakeDataset(dataDir, { train: 20, test: 10 });
    await writeFile(
      join(dataDir, 'train-labels-idx1-ubyte.gz'),
      gzipSync(idxBytes([19], new Uint8Array(19))),
    );
    await assert.rejects(
      loadDataset('mnist', { dataDir, cacheDir: freshDir(), download: false }),
      rejectsWith(
        'IDX_COUNT_MISMATCH',
        join(dataDir, 'train-images-idx3-ubyte.gz'),
        join(dataDir, 'train-labels-idx1-ubyte.gz'),
        '20 images',
        '19 labels',
      ),
    );
  });

  it('rejects labels outside 0..9', async () => {
    const dataDir = freshDir();
    await writeFakeDataset(dataDir, { train: 3, test: 3 });
    await writeFile(
      join(dataDir, 't10k-labels-idx1-ubyte.gz'),
      gzipSync(idxBytes([3], [1, 10, 2])),
    );
    await assert.rejects(
      loadDataset('mnist', { dataDir, cacheDir: freshDir(), download: false }),
      rejectsWith('DATASET_BAD_LABEL', join(dataDir, 't10k-labels-idx1-ubyte.gz'), 'label 1 is 10'),
    );
  });

  it('rejects images that are not 3-D', async () => {
    const dataDir = freshDir();
    await writeFakeDataset(dataDir, { train: 3, test: 3 });
    await writeFile(
      join(dataDir, 'train-images-idx3-ubyte.gz'),
      gzipSync(idxBytes([3, 4], new Uint8Array(12))),
    );
    await assert.rejects(
      loadDataset('mnist', { dataDir, cacheDir: freshDir(), download: false }),
      rejectsWith('DATASET_BAD_SHAPE', join(dataDir, 'train-images-idx3-ubyte.gz'), '3-D'),
    );
  });

  it('rejects an unknown dataset name', async () => {
    await assert.rejects(
      loadDataset('cifar' as DatasetName),
      rejectsWith('DATASET_UNKNOWN', 'cifar', 'mnist'),
    );
  });
});

describe('not found', () => {
  it('says where it looked, what to put where, and how to install the Debian package', async () => {
    const dataDir = freshDir();
    await mkdir(dataDir);
    const cacheDir = freshDir();
    const systemDir = freshDir();
    await writeFakeDataset(systemDir, { train: 2, test: 2 });
    await rm(join(systemDir, 'train-images-idx3-ubyte.gz'));
    await assert.rejects(
      loadDataset('fashion-mnist', { dataDir, cacheDir, download: false, systemDirs: [systemDir] }),
      rejectsWith(
        'DATASET_NOT_FOUND',
        `${dataDir} (data dir): missing ${IDX_FILE_NAMES.map((f) => `${f}[.gz]`).join(', ')}`,
        `${join(dataDir, 'fashion-mnist')} (data dir): does not exist`,
        `${join(cacheDir, 'datasets', 'fashion-mnist')} (cache): does not exist`,
        `${systemDir} (system): missing train-images-idx3-ubyte[.gz]`,
        'download disabled',
        `${join(cacheDir, 'datasets', 'fashion-mnist')}/`,
        '--data-dir DIR',
        ...IDX_FILE_NAMES.map((f) => `${f}.gz`),
        'apt-get install dataset-fashion-mnist',
      ),
    );
  });

  it('reports the download error after trying every mirror', async () => {
    const urls: string[] = [];
    const failing: FetchLike = async (url) => {
      urls.push(url);
      throw new TypeError('fetch failed', {
        cause: new Error('getaddrinfo ENOTFOUND example.invalid'),
      });
    };
    const cacheDir = freshDir();
    await assert.rejects(
      loadDataset('mnist', { cacheDir, systemDirs: [], fetchImpl: failing, progress: false }),
      (err: unknown) => {
        rejectsWith(
          'DATASET_NOT_FOUND',
          'Download: failed',
          'fetch failed: getaddrinfo ENOTFOUND example.invalid',
        )(err);
        assert.ok(!(err as Error).message.includes('apt-get'), 'no Debian package for MNIST');
        return true;
      },
    );
    assert.deepEqual(urls, [
      'https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz',
      'https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz',
    ]);
    assert.deepEqual(await readdir(join(cacheDir, 'datasets', 'mnist')), [], 'nothing left behind');
  });
});

describe('download from a 127.0.0.1 mirror', () => {
  let server: Server;
  let base: string;
  let served: Record<string, Uint8Array> = {};
  let requests: string[] = [];

  before(async () => {
    served = await writeFakeDataset(freshDir(), { train: 40, test: 10, fill: 3 });
    server = createServer((req, res) => {
      const url = req.url ?? '';
      requests.push(url);
      const m = /^\/good\/(.+)\.gz$/.exec(url);
      if (url.startsWith('/hang/')) return; // never answers
      const body = m ? served[m[1]!] : undefined;
      if (!body) {
        res.writeHead(404).end('not here');
        return;
      }
      res.writeHead(200, { 'content-length': body.length }).end(body);
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterEach(() => {
    requests = [];
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise((ok) => server.close(ok));
  });

  const sha256 = (): Record<string, string> =>
    Object.fromEntries(
      Object.entries(served).map(([k, v]) => [k, createHash('sha256').update(v).digest('hex')]),
    );

  it('falls through a failing mirror, verifies checksums and caches the files', async () => {
    const cacheDir = freshDir();
    const lines: string[] = [];
    const ds = await loadDataset('mnist', {
      cacheDir,
      systemDirs: [],
      mirrors: [`${base}/missing/`, `${base}/good/`],
      sha256: sha256(),
      progress: false,
      log: (l) => lines.push(l),
    });
    const dir = join(cacheDir, 'datasets', 'mnist');
    assert.equal(ds.source, dir);
    assert.equal(ds.train.count, 40);
    assert.equal(ds.test.count, 10);
    assert.ok(ds.train.images.every((p) => p === 3));
    assert.deepEqual((await readdir(dir)).sort(), IDX_FILE_NAMES.map((f) => `${f}.gz`).sort());
    assert.equal(requests.length, 8, 'each file: one 404, then the good mirror');
    assert.ok(
      lines.some((l) => l.includes(`downloading ${base}/good/train-images-idx3-ubyte.gz`)),
      lines.join('\n'),
    );

    // A second load reads the cache and never touches the network.
    const noNetwork: FetchLike = () => Promise.reject(new Error('network used'));
    const again = await loadDataset('mnist', { cacheDir, systemDirs: [], fetchImpl: noNetwork });
    assert.equal(again.source, dir);
  });

  it('rejects a checksum mismatch, keeps nothing and does not try other mirrors', async () => {
    const cacheDir = freshDir();
    const wrong = { ...sha256(), 'train-labels-idx1-ubyte': '0'.repeat(64) };
    await assert.rejects(
      loadDataset('mnist', {
        cacheDir,
        systemDirs: [],
        mirrors: [`${base}/good/`, `${base}/missing/`],
        sha256: wrong,
        progress: false,
      }),
      rejectsWith('DATASET_CHECKSUM', `${base}/good/train-labels-idx1-ubyte.gz`, '0'.repeat(64)),
    );
    assert.deepEqual(requests, [
      '/good/train-images-idx3-ubyte.gz',
      '/good/train-labels-idx1-ubyte.gz',
    ]);
    // The file verified before the bad one stays; the bad one and its temp file are gone.
    assert.deepEqual(await readdir(join(cacheDir, 'datasets', 'mnist')), [
      'train-images-idx3-ubyte.gz',
    ]);
  });

  // The message says the 200 ms timeout fired; the test's own limit only guards against a hang.
  it(
    'gives up on a mirror that does not answer within timeoutMs',
    { timeout: 10_000 },
    async () => {
      await assert.rejects(
        loadDataset('mnist', {
          cacheDir: freshDir(),
          systemDirs: [],
          mirrors: [`${base}/hang/`],
          timeoutMs: 200,
          progress: false,
        }),
        rejectsWith('DATASET_NOT_FOUND', `${base}/hang/train-images-idx3-ubyte.gz: timed out`),
      );
    },
  );
});

describe('defaultCacheDir', () => {
  const saved = {
    FFX_CACHE_DIR: process.env.FFX_CACHE_DIR,
    XDG_CACHE_HOME: process.env.XDG_CACHE_HOME,
  };
  after(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('uses $FFX_CACHE_DIR, then $XDG_CACHE_HOME/ffx, then ~/.cache/ffx', () => {
    process.env.FFX_CACHE_DIR = '/a/ffx-cache';
    process.env.XDG_CACHE_HOME = '/b';
    assert.equal(defaultCacheDir(), '/a/ffx-cache');
    delete process.env.FFX_CACHE_DIR;
    assert.equal(defaultCacheDir(), '/b/ffx');
    delete process.env.XDG_CACHE_HOME;
    assert.ok(defaultCacheDir().endsWith(join('.cache', 'ffx')));
  });
});
