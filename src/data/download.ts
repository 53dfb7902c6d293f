// Downloads with a checksum: streamed to a temporary file beside the target while hashed, and
// renamed into place only when the SHA-256 is the expected one. Mirrors are tried in turn; a
// wrong checksum is not a flaky mirror and stops at once.
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { DataError, isDataError } from './errors.js';

export type FetchLike = (url: string, init: { signal: AbortSignal }) => Promise<Response>;

export interface DownloadOptions {
  log?: (line: string) => void;
  /** Draw a progress bar on stderr while downloading, when stderr is a TTY. Default true. */
  progress?: boolean;
  fetchImpl?: FetchLike;
  /** Give up on a mirror that sends nothing for this long (ms). Default 5000. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 5000;

/**
 * Fetches the first of `urls` (the same file on each mirror) that answers into `target`,
 * checked against `sha256` (lower-case hex).
 */
export async function downloadVerified(
  urls: readonly string[],
  target: string,
  sha256: string,
  opts: DownloadOptions,
): Promise<void> {
  const failures: string[] = [];
  for (const url of urls) {
    try {
      await downloadFile(url, target, sha256, opts);
      return;
    } catch (err) {
      // A wrong checksum is not a flaky mirror: it must stop the run, not be retried elsewhere.
      if (isDataError(err, 'DATASET_CHECKSUM')) throw err;
      failures.push(`${url}: ${describeError(err)}`);
    }
  }
  const name = target.slice(target.lastIndexOf('/') + 1);
  throw new DataError(
    'DATASET_DOWNLOAD',
    `could not download ${name} (${failures.join('; ') || 'no mirrors'})`,
    target,
  );
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  // fetch() reports "fetch failed" and keeps the useful part (ENOTFOUND, ECONNREFUSED) in cause.
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
  return `${err.message}${cause}`;
}

/** Streams url to a temp file beside target while hashing it, then renames it into place. */
async function downloadFile(
  url: string,
  target: string,
  expectedSha256: string,
  opts: DownloadOptions,
): Promise<void> {
  const fetchImpl = opts.fetchImpl ?? fetch;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const tmp = `${target}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const abort = new AbortController();
  // One timer for both "no answer" and "stalled": refreshed on every chunk.
  const timer = setTimeout(
    () => abort.abort(new Error(`timed out: nothing received for ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    const res = await fetchImpl(url, { signal: abort.signal });
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw new Error(`HTTP ${res.status} ${res.statusText}`.trim());
    }
    timer.refresh();
    const total = Number(res.headers.get('content-length')) || 0;
    const report = progressReporter(url, total, opts);
    const hash = createHash('sha256');
    let received = 0;
    const body = res.body;
    await pipeline(async function* () {
      for await (const chunk of body as AsyncIterable<Uint8Array>) {
        timer.refresh();
        hash.update(chunk);
        received += chunk.length;
        report(received, false);
        yield chunk;
      }
    }, createWriteStream(tmp));
    report(received, true);
    const actual = hash.digest('hex');
    if (actual !== expectedSha256) {
      throw new DataError(
        'DATASET_CHECKSUM',
        `${url}: SHA-256 mismatch: expected ${expectedSha256}, got ${actual} (${received} bytes); the download was discarded`,
        target,
      );
    }
    await rename(tmp, target);
  } catch (err) {
    if (abort.signal.aborted && !isDataError(err)) throw abort.signal.reason;
    throw err;
  } finally {
    clearTimeout(timer);
    await rm(tmp, { force: true });
  }
}

/** A bar on a TTY; elsewhere a log line at start, every 25% and at the end. */
function progressReporter(
  url: string,
  total: number,
  opts: DownloadOptions,
): (received: number, done: boolean) => void {
  const file = url.slice(url.lastIndexOf('/') + 1);
  const human = (n: number): string =>
    n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`;
  const size = total > 0 ? human(total) : 'unknown size';
  const log = opts.log ?? (() => {});
  const stderr = process.stderr;
  if (opts.progress !== false && stderr.isTTY) {
    let last = 0;
    return (received, done) => {
      const now = Date.now();
      if (!done && now - last < 100) return;
      last = now;
      const width = 30;
      const frac = total > 0 ? Math.min(received / total, 1) : 0;
      const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
      const pct = total > 0 ? `${Math.floor(frac * 100)}%`.padStart(4) : '';
      stderr.write(`\r${file} [${bar}] ${pct} ${human(received)} / ${size}`);
      if (done) stderr.write('\n');
    };
  }
  log(`downloading ${url} (${size})`);
  let quarter = 0;
  return (received, done) => {
    if (done) {
      log(`downloaded ${file} (${human(received)})`);
      return;
    }
    const q = total > 0 ? Math.floor((4 * received) / total) : 0;
    if (q > quarter && q < 4) {
      quarter = q;
      log(`${file}: ${q * 25}% of ${size}`);
    }
  };
}
