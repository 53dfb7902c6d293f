// CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html): six files of 3073-byte
// records, one label byte (0..9) then 32x32 red, green and blue planes. Read into channels-last
// Splits; when no local copy is found, the official .tar.gz is downloaded with its SHA-256 checked
// and unpacked by the small tar reader below into the cache.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { CIFAR10_ARCHIVE, type Dataset, type LoadOptions, type Split } from './dataset-types.js';
import { isDir, isFile } from './files.js';
import { downloadVerified } from './download.js';
import { DataError, isDataError } from './errors.js';

export const CIFAR10_ROWS = 32;
export const CIFAR10_COLS = 32;
export const CIFAR10_CHANNELS = 3;
const PIXELS = CIFAR10_ROWS * CIFAR10_COLS; // one colour plane
/** Bytes of one record: the label, then the red, green and blue planes. */
export const CIFAR10_RECORD_BYTES = 1 + CIFAR10_CHANNELS * PIXELS;
/** Records in each file of the official archive; smaller files are accepted. */
export const CIFAR10_RECORDS_PER_FILE = 10_000;

export const CIFAR10_TRAIN_FILES = [
  'data_batch_1.bin',
  'data_batch_2.bin',
  'data_batch_3.bin',
  'data_batch_4.bin',
  'data_batch_5.bin',
] as const;
export const CIFAR10_TEST_FILE = 'test_batch.bin';
export const CIFAR10_FILES = [...CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE] as const;

/** The directory the official archive unpacks to. */
export const CIFAR10_ARCHIVE_DIR = 'cifar-10-batches-bin';
export { CIFAR10_ARCHIVE };
export const CIFAR10_MIRRORS: readonly string[] = ['https://www.cs.toronto.edu/~kriz/'];
/** SHA-256 of cifar-10-binary.tar.gz (170,052,171 bytes; the published MD5 is c32a1d4a...). */
export const CIFAR10_ARCHIVE_SHA256 =
  'c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd';

/** The official archive inflates to about 185 MB; one that inflates past this is refused. */
const ARCHIVE_MAX_BYTES = 512 * 1024 ** 2;

/**
 * Finds and reads CIFAR-10: in dataDir, dataDir/cifar10 and the cifar-10-batches-bin directory
 * of each, then in <cacheRoot>/datasets/cifar10/cifar-10-batches-bin; else downloads the archive
 * there (unless opts.download is false). `cacheRoot` is the ffx cache directory.
 */
export async function loadCifar10(opts: LoadOptions, cacheRoot: string): Promise<Dataset> {
  const name = 'cifar10';
  const log = opts.log ?? (() => {});
  const cacheBase = join(cacheRoot, 'datasets', name);
  const cacheDir = join(cacheBase, CIFAR10_ARCHIVE_DIR);

  const candidates: Array<[string, string]> = [];
  if (opts.dataDir !== undefined) {
    for (const dir of [resolve(opts.dataDir), resolve(opts.dataDir, name)]) {
      candidates.push([dir, 'data dir'], [join(dir, CIFAR10_ARCHIVE_DIR), 'data dir']);
    }
  }
  candidates.push([cacheDir, 'cache']);

  const searched: string[] = [];
  const seen = new Set<string>();
  for (const [dir, kind] of candidates) {
    if (seen.has(dir)) continue;
    seen.add(dir);
    const problem = await missingFiles(dir);
    if (problem === undefined) {
      log(`${name}: reading ${dir}`);
      return readCifar10Dir(dir);
    }
    searched.push(`  ${dir} (${kind}): ${problem}`);
  }

  const urls = (opts.mirrors ?? CIFAR10_MIRRORS).map((m) => new URL(CIFAR10_ARCHIVE, m).href);
  let downloadNote = 'not attempted (download disabled)';
  if (opts.download !== false) {
    try {
      await downloadAndUnpack(urls, cacheBase, opts);
      const problem = await missingFiles(cacheDir);
      if (problem === undefined) return readCifar10Dir(cacheDir);
      downloadNote = `finished but ${cacheDir} is ${problem}`;
    } catch (err) {
      if (!isDataError(err, 'DATASET_DOWNLOAD')) throw err;
      downloadNote = `failed: ${err.message}`;
    }
  }
  const files = CIFAR10_FILES.map((f) => `      ${f}`);
  throw new DataError(
    'DATASET_NOT_FOUND',
    [
      `${name}: dataset files not found.`,
      'Searched:',
      ...searched,
      `Download: ${downloadNote}`,
      'To fix, on a machine with network access download the CIFAR-10 binary version,',
      `  ${urls.join(' or ')}`,
      `and unpack it (tar xzf ${CIFAR10_ARCHIVE}) in ${cacheBase}/, or in a directory DIR given`,
      `as --data-dir DIR; it unpacks to ${CIFAR10_ARCHIVE_DIR}/, holding these 6 files:`,
      ...files,
      `(the 6 files may also be put straight in DIR or DIR/${name}).`,
    ].join('\n'),
  );
}

/** What is wrong with dir as a CIFAR-10 directory, or undefined when all six files are there. */
async function missingFiles(dir: string): Promise<string | undefined> {
  if (!(await isDir(dir))) return 'does not exist';
  const missing: string[] = [];
  for (const file of CIFAR10_FILES) if (!(await isFile(join(dir, file)))) missing.push(file);
  return missing.length > 0 ? `missing ${missing.join(', ')}` : undefined;
}

/** Reads the six files of dir (all must be there) into a channels-last Dataset. */
export async function readCifar10Dir(dir: string): Promise<Dataset> {
  const train = await readCifar10Files(CIFAR10_TRAIN_FILES.map((f) => join(dir, f)));
  const test = await readCifar10Files([join(dir, CIFAR10_TEST_FILE)]);
  return { name: 'cifar10', train, test, source: dir };
}

/**
 * Reads CIFAR-10 binary files, in order, into one Split: images [count, 32, 32, 3], channels
 * last. A missing file, a size that is not whole records, and a label past 9 are refused.
 */
export async function readCifar10Files(paths: readonly string[]): Promise<Split> {
  const missing: string[] = [];
  const sizes: number[] = [];
  for (const path of paths) {
    const size = await stat(path).then(
      (s) => (s.isFile() ? s.size : -1),
      () => -1,
    );
    if (size < 0) missing.push(path);
    sizes.push(size);
  }
  if (missing.length > 0) {
    throw new DataError('DATASET_NOT_FOUND', `cifar10: missing ${missing.join(', ')}`, missing[0]);
  }
  sizes.forEach((size, i) => checkSize(size, paths[i]!));
  const count = sizes.reduce((a, b) => a + b, 0) / CIFAR10_RECORD_BYTES;
  const images = new Uint8Array(count * 3 * PIXELS);
  const labels = new Uint8Array(count);
  let at = 0;
  for (const [i, path] of paths.entries()) {
    const buf = await readFile(path);
    if (buf.length !== sizes[i]) {
      throw new DataError(
        'DATASET_BAD_SHAPE',
        `${path}: changed while being read (${sizes[i]} bytes, then ${buf.length})`,
        path,
      );
    }
    const n = buf.length / CIFAR10_RECORD_BYTES;
    decodeRecords(buf, path, images.subarray(at * 3 * PIXELS), labels.subarray(at, at + n));
    at += n;
  }
  return {
    images,
    labels,
    count,
    rows: CIFAR10_ROWS,
    cols: CIFAR10_COLS,
    channels: CIFAR10_CHANNELS,
  };
}

function checkSize(size: number, path: string): void {
  if (size === 0 || size % CIFAR10_RECORD_BYTES !== 0) {
    const what = size === 0 ? 'is empty' : `is ${size} bytes`;
    throw new DataError(
      'DATASET_BAD_SHAPE',
      `${path}: ${what}, not a whole number of ${CIFAR10_RECORD_BYTES}-byte CIFAR-10 records (${Math.floor(size / CIFAR10_RECORD_BYTES)} records and ${size % CIFAR10_RECORD_BYTES} bytes over)`,
      path,
    );
  }
}

/**
 * Decodes whole 3073-byte records: labels into `labels`, and each record's red, green and blue
 * planes (CHW) interleaved into `images` as HWC. `source` names the file in errors.
 */
export function decodeRecords(
  buf: Uint8Array,
  source: string,
  images: Uint8Array,
  labels: Uint8Array,
): void {
  checkSize(buf.length, source);
  const n = buf.length / CIFAR10_RECORD_BYTES;
  for (let r = 0; r < n; r++) {
    const base = r * CIFAR10_RECORD_BYTES;
    const label = buf[base]!;
    if (label > 9) {
      throw new DataError(
        'DATASET_BAD_LABEL',
        `${source}: record ${r} (byte offset ${base}) has label ${label}, expected 0..9`,
        source,
      );
    }
    labels[r] = label;
    const red = base + 1;
    const green = red + PIXELS;
    const blue = green + PIXELS;
    let o = r * 3 * PIXELS;
    for (let p = 0; p < PIXELS; p++) {
      images[o++] = buf[red + p]!;
      images[o++] = buf[green + p]!;
      images[o++] = buf[blue + p]!;
    }
  }
}

/**
 * Makes <base>/cifar-10-batches-bin from the official archive: a copy already in <base> with the
 * right SHA-256 is used, else it is downloaded there. The archive is removed once unpacked.
 */
async function downloadAndUnpack(
  urls: readonly string[],
  base: string,
  opts: LoadOptions,
): Promise<void> {
  await mkdir(base, { recursive: true });
  const archive = join(base, CIFAR10_ARCHIVE);
  const expected = (opts.sha256?.[CIFAR10_ARCHIVE] ?? CIFAR10_ARCHIVE_SHA256).toLowerCase();
  if (!(await isFile(archive)) || (await sha256File(archive)) !== expected) {
    await downloadVerified(urls, archive, expected, opts);
  }
  (opts.log ?? (() => {}))(`cifar10: unpacking ${archive}`);
  await extractCifar10Archive(archive, join(base, CIFAR10_ARCHIVE_DIR));
  await rm(archive, { force: true });
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/**
 * Unpacks the six CIFAR-10 files of a .tar.gz (entries cifar-10-batches-bin/<file>) into
 * `dest`; other entries are skipped. Each file is written beside its target and renamed into
 * place. Absolute names and names with '..' are refused, as are malformed archives.
 */
export async function extractCifar10Archive(archive: string, dest: string): Promise<void> {
  const bad = (message: string, cause?: unknown): DataError =>
    new DataError(
      'DATASET_BAD_SHAPE',
      `${archive}: ${message}`,
      archive,
      cause ? { cause } : undefined,
    );
  const wanted = new Set<string>(CIFAR10_FILES);
  await mkdir(dest, { recursive: true });
  const gunzip = createGunzip();
  const input = createReadStream(archive);
  input.on('error', (err) => gunzip.destroy(err));
  input.pipe(gunzip);
  const reader = new ByteReader(gunzip[Symbol.asyncIterator]() as AsyncIterator<Buffer>);
  try {
    for (;;) {
      const header = await reader.take(512);
      if (header === undefined || header.every((b) => b === 0)) break;
      const entry = parseTarHeader(header, bad);
      const name = entry.name.replace(/^(\.\/)+/, '');
      if (name.startsWith('/') || name.split('/').includes('..')) {
        throw bad(`refusing the unsafe entry name '${entry.name}'`);
      }
      const padded = Math.ceil(entry.size / 512) * 512;
      if (reader.total + padded > ARCHIVE_MAX_BYTES) {
        throw bad(`inflates past ${ARCHIVE_MAX_BYTES} bytes; refused`);
      }
      const [dir, file, ...rest] = name.split('/');
      const isWanted =
        entry.regular && dir === CIFAR10_ARCHIVE_DIR && rest.length === 0 && wanted.has(file!);
      if (!isWanted) {
        if (!(await reader.skip(padded))) throw bad(`truncated in entry '${entry.name}'`);
        continue;
      }
      if (entry.size > CIFAR10_RECORDS_PER_FILE * CIFAR10_RECORD_BYTES) {
        throw bad(`entry '${entry.name}' is ${entry.size} bytes, more than 10,000 records`);
      }
      const body = await reader.take(padded);
      if (body === undefined) throw bad(`truncated in entry '${entry.name}'`);
      const target = join(dest, file!);
      const tmp = `${target}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
      try {
        await writeFile(tmp, body.subarray(0, entry.size));
        await rename(tmp, target);
      } finally {
        await rm(tmp, { force: true });
      }
    }
  } catch (err) {
    if (err instanceof DataError) throw err;
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('Z_')) {
      throw bad(`corrupt gzip data: ${(err as Error).message}`, err);
    }
    throw err;
  } finally {
    gunzip.destroy();
    input.destroy();
  }
}

interface TarEntry {
  name: string;
  size: number;
  /** A regular file (typeflag '0' or NUL), not a directory, link or extended header. */
  regular: boolean;
}

/** A ustar (or old GNU) header: name 0..100, size 124..136 (octal), checksum 148..156, type 156. */
function parseTarHeader(h: Buffer, bad: (message: string) => DataError): TarEntry {
  const field = (from: number, to: number): string => {
    const end = h.indexOf(0, from);
    return h.toString('latin1', from, end >= 0 && end < to ? end : to);
  };
  const octal = (from: number, to: number, what: string): number => {
    const text = field(from, to).trim();
    if (!/^[0-7]+$/.test(text)) throw bad(`bad tar header: ${what} field is '${text}'`);
    return parseInt(text, 8);
  };
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  if (octal(148, 156, 'checksum') !== sum) throw bad('bad tar header: checksum mismatch');
  let name = field(0, 100);
  // ustar keeps the leading part of long names in a prefix field.
  if (field(257, 262) === 'ustar') {
    const prefix = field(345, 500);
    if (prefix) name = `${prefix}/${name}`;
  }
  if ((h[124]! & 0x80) !== 0) throw bad(`entry '${name}' is too large (base-256 size)`);
  const size = octal(124, 136, 'size');
  const type = h[156]!;
  return { name, size, regular: type === 0 || type === 0x30 };
}

/** Exact-length reads over a stream of Buffers. */
class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes taken or skipped so far. */
  total = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<boolean> {
    while (this.buffered < n) {
      const next = await this.source.next();
      if (next.done) return false;
      this.chunks.push(next.value);
      this.buffered += next.value.length;
    }
    return true;
  }

  /** The next n bytes; undefined when the stream ends before them. */
  async take(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill(n))) return undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const restBuf = all.subarray(n);
    this.chunks = restBuf.length > 0 ? [restBuf] : [];
    this.buffered = restBuf.length;
    this.total += n;
    return out;
  }

  /** Drops the next n bytes without keeping them; false when the stream ends first. */
  async skip(n: number): Promise<boolean> {
    let left = n;
    while (left > 0) {
      if (this.buffered === 0 && !(await this.fill(1))) return false;
      const head = this.chunks[0]!;
      const k = Math.min(left, head.length);
      if (k === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(k);
      this.buffered -= k;
      left -= k;
    }
    this.total += n;
    return true;
  }
}
