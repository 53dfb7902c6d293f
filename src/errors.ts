// Every error ffx reports on purpose: one base class, one union of stable codes. Library code
// throws subclasses of FfxError; the CLIs classify by class and code (exit status, one line),
// never by the error's name or message. Anything else that reaches a CLI is a bug, printed
// with its stack.

/** Stable codes, by the module that throws them. Callers branch on these, never on text. */
export const ERROR_CODES = {
  usage: ['USAGE', 'BAD_ENDPOINT', 'REPORT_NOT_A_RUN'],
  config: [
    'CONFIG_INVALID',
    'CONFIG_UNKNOWN_KEY',
    'CONFIG_NOT_FOUND',
    'CONFIG_NOT_JSON',
    'CONFIG_BAD_SET',
  ],
  data: [
    'IDX_BAD_MAGIC',
    'IDX_UNSUPPORTED_TYPE',
    'IDX_BAD_DIMS',
    'IDX_TRUNCATED',
    'IDX_TRAILING_BYTES',
    'IDX_BAD_GZIP',
    'IDX_COUNT_MISMATCH',
    'DATASET_BAD_SHAPE',
    'DATASET_BAD_LABEL',
    'DATASET_NOT_FOUND',
    'DATASET_CHECKSUM',
    'DATASET_DOWNLOAD',
    'DATASET_UNKNOWN',
    'BAD_ARGUMENT',
  ],
  backend: [
    'BACKEND_UNKNOWN',
    'BACKEND_UNAVAILABLE',
    'BACKEND_ALREADY_SET',
    'BACKEND_BAD_THREADS',
    'BACKEND_NOT_READY',
    'BACKEND_OUT_OF_MEMORY',
  ],
  checkpoint: [
    'SAFETENSORS_INVALID',
    'CHECKPOINT_MISMATCH', // does not fit the model
    'CHECKPOINT_CORRUPT', // a checksum or the metadata is wrong
    'CHECKPOINT_NOT_FOUND', // --resume latest, and no checkpoint yet
  ],
  protocol: [
    'BAD_FRAMES', // no frames, header not msgpack, header not a map
    'BAD_VERSION', // header.v is not PROTOCOL_VERSION
    'BAD_KIND', // unknown data kind or control type
    'BAD_HEADER', // a field is missing or has the wrong type or range
    'BAD_SHAPE', // shapes vs. byte lengths, bad dims, frame count vs. tensor count
    'BAD_WIDTH', // input width differs from what this stage expects
    'NON_FINITE', // NaN or +-Infinity where values are checked
  ],
  metrics: [
    'METRICS_BAD_PORT', // port not an integer 0..65535
    'METRICS_BAD_HOST', // host not a non-empty string
    'METRICS_PORT_IN_USE', // EADDRINUSE on host:port
    'METRICS_LISTEN_FAILED', // any other listen error (EADDRNOTAVAIL, EACCES, ...)
    'METRICS_BAD_ROLE', // role is not 'stage' or 'coordinator'
    'METRICS_BAD_LABEL', // a default label with a bad name, a reserved name or an empty value
    'METRICS_BAD_LAYER', // layer / numLayers not a positive integer, or not the registry's layer
    'METRICS_DUPLICATE', // a metric registered twice on one registry
  ],
  /** Files and sockets at the edges: the system error, named with its path or address. */
  system: ['FILE_ACCESS', 'FILE_NO_SPACE', 'ADDRESS_IN_USE', 'ADDRESS_UNAVAILABLE'],
  run: ['NON_FINITE_LOSS', 'NON_FINITE_WEIGHTS', 'RUN_INTERRUPTED'],
  cluster: [
    'CLUSTER_MISSING_STAGES',
    'CLUSTER_NOT_READY',
    'CLUSTER_STAGE_LOST', // no heartbeat
    'CLUSTER_STAGE_STALLED', // heartbeats, but no progress with work outstanding
    /** The coordinator cannot reach the first stage at the address it advertised. */
    'CLUSTER_LINK_DOWN',
    /** A stage reported an error the coordinator has no code for. */
    'CLUSTER_STAGE_ERROR',
  ],
  stage: [
    'STAGE_NO_CONFIG',
    'STAGE_NO_WEIGHTS',
    'STAGE_BAD_STATE',
    'STAGE_BAD_CONFIG',
    'STAGE_STOPPED',
    'STAGE_REFUSED',
    /** A stage cannot reach the next one at the address that one advertised. */
    'STAGE_LINK_DOWN',
    /** A live stage serves the layer: the newcomer waits (it takes over if that one is lost). */
    'STAGE_LAYER_TAKEN',
    /** A coordinator heard from a stage it has not registered: a new coordinator, say hello. */
    'STAGE_UNKNOWN',
  ],
  launch: ['LAUNCH_FAILED'],
  /** CurveZMQ key files: unreadable, malformed, or without the key a process needs. */
  keys: ['KEY_INVALID'],
} as const;

type Codes = typeof ERROR_CODES;
export type ErrorDomain = keyof Codes;
export type ErrorCode<D extends ErrorDomain = ErrorDomain> = Codes[D][number];

const ALL_CODES: ReadonlySet<string> = new Set(Object.values(ERROR_CODES).flat());

/** True when `code` is one of ffx's error codes (e.g. one that arrived over the network). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && ALL_CODES.has(code);
}

/** Codes that mean "the command line or config cannot work as given" (exit status 2). */
export const USAGE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ...ERROR_CODES.usage,
  ...ERROR_CODES.config,
  ...ERROR_CODES.keys,
]);

export class FfxError<C extends ErrorCode = ErrorCode> extends Error {
  readonly code: C;
  constructor(code: C, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
  override get name(): string {
    return this.constructor.name;
  }
}

export function isFfxError<C extends ErrorCode>(err: unknown, code?: C): err is FfxError<C> {
  return err instanceof FfxError && (code === undefined || err.code === code);
}

/** A command line that cannot run as given: exit status 2. */
export class UsageError extends FfxError<ErrorCode<'usage'>> {
  constructor(message: string, code: ErrorCode<'usage'> = 'USAGE') {
    super(code, message);
  }
}

/** A run stopped on purpose (SIGINT, SIGTERM): exit status 128 + the signal's number. */
export class InterruptedError extends FfxError<'RUN_INTERRUPTED'> {
  readonly signal: NodeJS.Signals;
  constructor(signal: NodeJS.Signals) {
    super('RUN_INTERRUPTED', `interrupted by ${signal}`);
    this.signal = signal;
  }
}

/** A system error (from fs or a socket), re-thrown as a coded error naming the path or address. */
export class SystemError extends FfxError<ErrorCode<'system'>> {
  /** The file or address concerned. */
  readonly target: string;
  /** The errno code (EACCES, ENOSPC, ...). */
  readonly errno: string;
  constructor(
    code: ErrorCode<'system'>,
    target: string,
    errno: string,
    message: string,
    cause: unknown,
  ) {
    super(code, message, { cause });
    this.target = target;
    this.errno = errno;
  }
}

const FILE_ACCESS = new Set(['EACCES', 'EPERM', 'EROFS', 'ENOTDIR', 'EISDIR', 'ENOENT', 'ELOOP']);
const FILE_NO_SPACE = new Set(['ENOSPC', 'EFBIG', 'EDQUOT']);

/**
 * `err` as a SystemError when it is a system error about a file (`what` says which, e.g.
 * "cannot write checkpoint runs/x/model.safetensors"); any other error is returned unchanged.
 */
export function fileError(err: unknown, path: string, what: string): unknown {
  const errno = (err as { code?: unknown } | null)?.code;
  if (typeof errno !== 'string') return err;
  const reason = (err as Error).message.replace(/^[A-Z]+: /, '');
  if (FILE_NO_SPACE.has(errno)) {
    return new SystemError('FILE_NO_SPACE', path, errno, `${what}: ${reason}`, err);
  }
  if (FILE_ACCESS.has(errno)) {
    return new SystemError('FILE_ACCESS', path, errno, `${what}: ${reason}`, err);
  }
  return err;
}

/** Runs `fn`; a system error about `path` is re-thrown as a SystemError (see fileError). */
export async function withFile<T>(path: string, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw fileError(err, path, what);
  }
}

/** `err` as a SystemError when it is EADDRINUSE / EADDRNOTAVAIL on `address`; else unchanged. */
export function addressError(err: unknown, address: string, what: string): unknown {
  const errno = (err as { code?: unknown } | null)?.code;
  if (errno === 'EADDRINUSE') {
    return new SystemError(
      'ADDRESS_IN_USE',
      address,
      errno,
      `${what}: ${address} is in use by another process`,
      err,
    );
  }
  if (errno === 'EADDRNOTAVAIL' || errno === 'EACCES' || errno === 'EINVAL') {
    return new SystemError(
      'ADDRESS_UNAVAILABLE',
      address,
      errno,
      `${what}: cannot bind ${address} (${errno}: not an address of this host, or not allowed)`,
      err,
    );
  }
  return err;
}
