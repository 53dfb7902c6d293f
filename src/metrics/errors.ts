/** Stable codes for a metrics setup that cannot work; callers branch on these, not on text. */
export const METRICS_ERROR_CODES = [
  'METRICS_BAD_PORT', // port not an integer 0..65535
  'METRICS_BAD_HOST', // host not a non-empty string
  'METRICS_PORT_IN_USE', // EADDRINUSE on host:port
  'METRICS_LISTEN_FAILED', // any other listen error (EADDRNOTAVAIL, EACCES, ...)
  'METRICS_BAD_ROLE', // role is not 'stage' or 'coordinator'
  'METRICS_BAD_LABEL', // a default label with a bad name, a reserved name or an empty value
  'METRICS_BAD_LAYER', // layer / numLayers not a positive integer, or not the registry's layer
  'METRICS_DUPLICATE', // a metric registered twice on one registry
] as const;

export type MetricsErrorCode = (typeof METRICS_ERROR_CODES)[number];

export class MetricsError extends Error {
  override readonly name = 'MetricsError';
  readonly code: MetricsErrorCode;
  /** The offending value (a port, a label, a layer), for callers that report it. */
  readonly value: unknown;

  constructor(code: MetricsErrorCode, message: string, value?: unknown, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.value = value;
  }
}

export function isMetricsError(err: unknown, code?: MetricsErrorCode): err is MetricsError {
  return err instanceof MetricsError && (code === undefined || err.code === code);
}
