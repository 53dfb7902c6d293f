import { mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { ffxPackage } from '../package.js';
import { loadCifar10 } from './cifar10.js';
import {
  DATASET_NAMES,
  IDX_FILE_NAMES,
  type Dataset,
  type DatasetName,
  type IdxFileName,
  type LoadOptions,
  type Split,
} from './dataset-types.js';
import { isDir, isFile } from './files.js';
import { downloadVerified } from './download.js';
import { DataError, isDataError } from './errors.js';
import { readIdxFile, type IdxArray } from './idx.js';

export {
  DATASET_NAMES,
  IDX_FILE_NAMES,
  type Dataset,
  type DatasetName,
  type FetchLike,
  type IdxFileName,
  type LoadOptions,
  type Split,
} from './dataset-types.js';

interface RemoteDataset {
  mirrors: readonly string[];
  /** SHA-256 of the .gz files as the mirrors serve them. */
  sha256: Record<IdxFileName, string>;
  systemDir: string;
  aptPackage?: string;
}

const REMOTE: Record<Exclude<DatasetName, 'fashion-mnist-sample' | 'cifar10'>, RemoteDataset> = {
  mnist: {
    // torchvision's mirror first; both serve LeCun's original files (torchvision checks the same
    // MD5s against either).
    mirrors: [
      'https://ossci-datasets.s3.amazonaws.com/mnist/',
      'https://storage.googleapis.com/cvdf-datasets/mnist/',
    ],
    // From tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt (cvdf mirror).
    sha256: {
      'train-images-idx3-ubyte': '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609',
      'train-labels-idx1-ubyte': '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c',
      't10k-images-idx3-ubyte': '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
      't10k-labels-idx1-ubyte': 'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6',
    },
    systemDir: '/usr/share/datasets/mnist',
  },
  'fashion-mnist': {
    mirrors: ['http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'],
    // From tensorflow/datasets, tensorflow_datasets/url_checksums/fashion_mnist.txt. Debian's
    // copies are not byte-identical: its .gz headers lack the embedded file name (each file is
    // exactly len(name)+1 bytes shorter), so their SHA-256 cannot stand in for these.
    sha256: {
      'train-images-idx3-ubyte': '3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84',
      'train-labels-idx1-ubyte': 'a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845',
      't10k-images-idx3-ubyte': '346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073',
      't10k-labels-idx1-ubyte': '67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5',
    },
    systemDir: '/usr/share/datasets/fashion-mnist',
    aptPackage: 'dataset-fashion-mnist',
  },
};

const SAMPLE_TRAIN = 8000;
const SAMPLE_TEST = 2000;

export function isDatasetName(name: string): name is DatasetName {
  return (DATASET_NAMES as readonly string[]).includes(name);
}

/** $FFX_CACHE_DIR, else $XDG_CACHE_HOME/ffx, else ~/.cache/ffx. */
export function defaultCacheDir(): string {
  const env = process.env;
  if (env.FFX_CACHE_DIR) return resolve(env.FFX_CACHE_DIR);
  if (env.XDG_CACHE_HOME) return resolve(env.XDG_CACHE_HOME, 'ffx');
  return join(homedir(), '.cache', 'ffx');
}

export async function loadDataset(name: DatasetName, opts: LoadOptions = {}): Promise<Dataset> {
  if (!isDatasetName(name)) {
    throw new DataError(
      'DATASET_UNKNOWN',
      `unknown dataset '${String(name)}'; expected one of ${DATASET_NAMES.join(', ')}`,
    );
  }
  // Where the user says the data is: not there is an error, never a quiet look elsewhere.
  if (opts.dataDir !== undefined && !(await isDir(resolve(opts.dataDir)))) {
    throw new DataError(
      'DATASET_NOT_FOUND',
      `the data directory ${opts.dataDir} (--data-dir, data.dataDir) does not exist`,
    );
  }
  if (name === 'fashion-mnist-sample') return loadSample();
  if (name === 'cifar10') return loadCifar10(opts, opts.cacheDir ?? defaultCacheDir());
  const remote = REMOTE[name];
  const cacheDir = join(opts.cacheDir ?? defaultCacheDir(), 'datasets', name);
  const log = opts.log ?? (() => {});

  const candidates: Array<[string, string]> = [];
  if (opts.dataDir !== undefined) {
    candidates.push([resolve(opts.dataDir), 'data dir'], [resolve(opts.dataDir, name), 'data dir']);
  }
  candidates.push([cacheDir, 'cache']);
  for (const dir of opts.systemDirs ?? [remote.systemDir])
    candidates.push([resolve(dir), 'system']);

  const searched: string[] = [];
  const seen = new Set<string>();
  for (const [dir, kind] of candidates) {
    if (seen.has(dir)) continue;
    seen.add(dir);
    const found = await findFiles(dir);
    if (found.paths) {
      log(`${name}: reading ${dir}`);
      return loadFromDir(name, dir, found.paths);
    }
    searched.push(`  ${dir} (${kind}): ${found.problem}`);
  }

  let downloadNote = 'not attempted (download disabled)';
  if (opts.download !== false) {
    try {
      await downloadAll(remote, cacheDir, opts);
      const found = await findFiles(cacheDir);
      if (found.paths) return loadFromDir(name, cacheDir, found.paths);
      downloadNote = `finished but ${cacheDir} is ${found.problem}`;
    } catch (err) {
      if (!isDataError(err, 'DATASET_DOWNLOAD')) throw err;
      downloadNote = `failed: ${err.message}`;
    }
  }
  throw new DataError(
    'DATASET_NOT_FOUND',
    notFoundMessage(name, remote, cacheDir, searched, downloadNote, opts),
  );
}

function notFoundMessage(
  name: string,
  remote: RemoteDataset,
  cacheDir: string,
  searched: string[],
  downloadNote: string,
  opts: LoadOptions,
): string {
  const lines = [
    `${name}: dataset files not found.`,
    'Searched:',
    ...searched,
    `Download: ${downloadNote}`,
    'To fix, either:',
    `  - put these 4 files (gzipped .gz or plain) in ${cacheDir}/, or in a directory DIR given as --data-dir DIR:`,
    ...IDX_FILE_NAMES.map((f) => `      ${f}.gz`),
    `    (from ${(opts.mirrors ?? remote.mirrors).join(' or ')}, on a machine with network access)`,
  ];
  if (remote.aptPackage) {
    lines.push(
      `  - or on Debian/Ubuntu: sudo apt-get install ${remote.aptPackage} (installs them in ${remote.systemDir})`,
    );
  }
  return lines.join('\n');
}

type Found =
  | { paths: Record<IdxFileName, string>; problem?: undefined }
  | { paths?: undefined; problem: string };

/** The four files in dir, plain preferred over .gz (no gunzip needed), or what is missing. */
async function findFiles(dir: string): Promise<Found> {
  if (!(await isDir(dir))) return { problem: 'does not exist' };
  const paths: Partial<Record<IdxFileName, string>> = {};
  const missing: string[] = [];
  for (const file of IDX_FILE_NAMES) {
    const plain = join(dir, file);
    const gz = `${plain}.gz`;
    if (await isFile(plain)) paths[file] = plain;
    else if (await isFile(gz)) paths[file] = gz;
    else missing.push(`${file}[.gz]`);
  }
  if (missing.length > 0) return { problem: `missing ${missing.join(', ')}` };
  return { paths: paths as Record<IdxFileName, string> };
}

async function loadFromDir(
  name: DatasetName,
  dir: string,
  paths: Record<IdxFileName, string>,
): Promise<Dataset> {
  const [trainImages, trainLabels, testImages, testLabels] = await Promise.all(
    IDX_FILE_NAMES.map((f) => readIdxFile(paths[f])),
  );
  const train = makeSplit(
    trainImages!,
    trainLabels!,
    paths['train-images-idx3-ubyte'],
    paths['train-labels-idx1-ubyte'],
  );
  const test = makeSplit(
    testImages!,
    testLabels!,
    paths['t10k-images-idx3-ubyte'],
    paths['t10k-labels-idx1-ubyte'],
  );
  if (train.rows !== test.rows || train.cols !== test.cols) {
    throw new DataError(
      'DATASET_BAD_SHAPE',
      `${paths['t10k-images-idx3-ubyte']}: test images are ${test.rows}x${test.cols}, but training images (${paths['train-images-idx3-ubyte']}) are ${train.rows}x${train.cols}`,
      paths['t10k-images-idx3-ubyte'],
    );
  }
  return { name, train, test, source: dir };
}

/** Checks that an images file and a labels file belong together. */
function makeSplit(
  images: IdxArray,
  labels: IdxArray,
  imagesFile: string,
  labelsFile: string,
): Split {
  if (images.dims.length !== 3) {
    throw new DataError(
      'DATASET_BAD_SHAPE',
      `${imagesFile}: images must be 3-D [count, rows, cols], got ${images.dims.length}-D [${images.dims.join(', ')}]`,
      imagesFile,
    );
  }
  if (labels.dims.length !== 1) {
    throw new DataError(
      'DATASET_BAD_SHAPE',
      `${labelsFile}: labels must be 1-D [count], got ${labels.dims.length}-D [${labels.dims.join(', ')}]`,
      labelsFile,
    );
  }
  const [count, rows, cols] = images.dims as [number, number, number];
  const labelCount = labels.dims[0]!;
  if (count !== labelCount) {
    throw new DataError(
      'IDX_COUNT_MISMATCH',
      `${imagesFile} has ${count} images but ${labelsFile} has ${labelCount} labels`,
      imagesFile,
    );
  }
  const data = labels.data;
  for (let i = 0; i < data.length; i++) {
    if (data[i]! > 9) {
      throw new DataError(
        'DATASET_BAD_LABEL',
        `${labelsFile}: label ${i} is ${data[i]}, expected 0..9`,
        labelsFile,
      );
    }
  }
  return { images: images.data, labels: data, count, rows, cols, channels: 1 };
}

/** ffx's package root: the shipped sample lives under it. */
function packageRoot(): string {
  const pkg = ffxPackage();
  if (!pkg)
    throw new DataError('DATASET_NOT_FOUND', "cannot find ffx's package.json above this module");
  return pkg.root;
}

/** The first 10,000 Fashion-MNIST training images, split 8,000 / 2,000 by views. */
async function loadSample(): Promise<Dataset> {
  const dir = join(packageRoot(), 'data', 'fashion-mnist-sample');
  const imagesFile = join(dir, 'train-images-idx3-ubyte.gz');
  const labelsFile = join(dir, 'train-labels-idx1-ubyte.gz');
  const all = makeSplit(
    await readIdxFile(imagesFile),
    await readIdxFile(labelsFile),
    imagesFile,
    labelsFile,
  );
  if (all.count !== SAMPLE_TRAIN + SAMPLE_TEST) {
    throw new DataError(
      'DATASET_BAD_SHAPE',
      `${imagesFile}: the sample must hold ${SAMPLE_TRAIN + SAMPLE_TEST} images, has ${all.count}`,
      imagesFile,
    );
  }
  const px = all.rows * all.cols;
  const part = (from: number, to: number): Split => ({
    images: all.images.subarray(from * px, to * px),
    labels: all.labels.subarray(from, to),
    count: to - from,
    rows: all.rows,
    cols: all.cols,
    channels: 1,
  });
  return {
    name: 'fashion-mnist-sample',
    train: part(0, SAMPLE_TRAIN),
    test: part(SAMPLE_TRAIN, all.count),
    source: dir,
  };
}

/** Downloads the missing .gz files into dir; files already there are kept. */
async function downloadAll(remote: RemoteDataset, dir: string, opts: LoadOptions): Promise<void> {
  await mkdir(dir, { recursive: true });
  const mirrors = opts.mirrors ?? remote.mirrors;
  for (const file of IDX_FILE_NAMES) {
    const target = join(dir, `${file}.gz`);
    if ((await isFile(target)) || (await isFile(join(dir, file)))) continue;
    await downloadVerified(
      mirrors.map((mirror) => new URL(`${file}.gz`, mirror).href),
      target,
      (opts.sha256?.[file] ?? remote.sha256[file]).toLowerCase(),
      opts,
    );
  }
}
