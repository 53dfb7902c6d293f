import { FfxError, type ErrorCode } from '../errors.js';

/** Stable codes: callers (the CLI, tests) branch on these, never on message text. */
export type DataErrorCode = ErrorCode<'data'>;

export class DataError extends FfxError<DataErrorCode> {
  /** The file the problem is in, when there is one. */
  readonly file?: string;

  constructor(code: DataErrorCode, message: string, file?: string, options?: ErrorOptions) {
    super(code, message, options);
    if (file !== undefined) this.file = file;
  }
}

export function isDataError(err: unknown, code?: DataErrorCode): err is DataError {
  return err instanceof DataError && (code === undefined || err.code === code);
}
