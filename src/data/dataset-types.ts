// The types of the data sets ffx reads (datasets.ts loads them; cifar10.ts reads CIFAR-10).
import type { DownloadOptions, FetchLike } from './download.js';

/** The name of CIFAR-10's archive (cifar10.ts downloads it). */
export const CIFAR10_ARCHIVE = 'cifar-10-binary.tar.gz';

/** One split; images are [count, rows, cols, channels], channels last (1 for grey images). */
export interface Split {
  images: Uint8Array;
  labels: Uint8Array;
  count: number;
  rows: number;
  cols: number;
  channels: number;
}

export type DatasetName = 'mnist' | 'fashion-mnist' | 'fashion-mnist-sample' | 'cifar10';

export const DATASET_NAMES: readonly DatasetName[] = [
  'mnist',
  'fashion-mnist',
  'fashion-mnist-sample',
  'cifar10',
];

export interface Dataset {
  name: DatasetName;
  train: Split;
  test: Split;
  /** The directory the files were read from. */
  source: string;
}

export type { FetchLike };

export interface LoadOptions extends DownloadOptions {
  /**
   * Searched first, both as is and with /<name> appended (for cifar10 also the
   * cifar-10-batches-bin directory of each).
   */
  dataDir?: string;
  /** Defaults to defaultCacheDir(); downloads go to <cacheDir>/datasets/<name>/. */
  cacheDir?: string;
  /** Download from the public mirrors when no local copy is found. Default true. */
  download?: boolean;
  /** Base URLs (ending in '/') to download from instead of the public mirrors. */
  mirrors?: readonly string[];
  /**
   * Expected SHA-256 of the downloaded files, instead of the built-in ones (tests): the .gz
   * files by their IDX name, CIFAR-10's archive by 'cifar-10-binary.tar.gz'.
   */
  sha256?: Partial<Record<IdxFileName | typeof CIFAR10_ARCHIVE, string>>;
  /** System directories to search instead of /usr/share/datasets/<name> (tests; not cifar10). */
  systemDirs?: readonly string[];
}

export const IDX_FILE_NAMES = [
  'train-images-idx3-ubyte',
  'train-labels-idx1-ubyte',
  't10k-images-idx3-ubyte',
  't10k-labels-idx1-ubyte',
] as const;
export type IdxFileName = (typeof IDX_FILE_NAMES)[number];
