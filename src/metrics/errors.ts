import { ERROR_CODES, FfxError, type ErrorCode } from '../errors.js';

/** Stable codes for a metrics setup that cannot work; callers branch on these, not on text. */
export const METRICS_ERROR_CODES = ERROR_CODES.metrics;

export type MetricsErrorCode = ErrorCode<'metrics'>;

export class MetricsError extends FfxError<MetricsErrorCode> {
  /** The offending value (a port, a label, a layer), for callers that report it. */
  readonly value: unknown;

  constructor(code: MetricsErrorCode, message: string, value?: unknown, options?: ErrorOptions) {
    super(code, message, options);
    this.value = value;
  }
}

export function isMetricsError(err: unknown, code?: MetricsErrorCode): err is MetricsError {
  return err instanceof MetricsError && (code === undefined || err.code === code);
}
