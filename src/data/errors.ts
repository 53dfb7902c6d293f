/** Stable codes: callers (the CLI, tests) branch on these, never on message text. */
export type DataErrorCode =
  | 'IDX_BAD_MAGIC'
  | 'IDX_UNSUPPORTED_TYPE'
  | 'IDX_BAD_DIMS'
  | 'IDX_TRUNCATED'
  | 'IDX_TRAILING_BYTES'
  | 'IDX_BAD_GZIP'
  | 'IDX_COUNT_MISMATCH'
  | 'DATASET_BAD_SHAPE'
  | 'DATASET_BAD_LABEL'
  | 'DATASET_NOT_FOUND'
  | 'DATASET_CHECKSUM'
  | 'DATASET_DOWNLOAD'
  | 'DATASET_UNKNOWN'
  | 'BAD_ARGUMENT';

export class DataError extends Error {
  override readonly name = 'DataError';
  readonly code: DataErrorCode;
  /** The file the problem is in, when there is one. */
  readonly file?: string;

  constructor(code: DataErrorCode, message: string, file?: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    if (file !== undefined) this.file = file;
  }
}

export function isDataError(err: unknown, code?: DataErrorCode): err is DataError {
  return err instanceof DataError && (code === undefined || err.code === code);
}
