/**
 * Stable codes for a message that cannot be accepted. Stages count rejections by code (a metric
 * label) and report them to the coordinator, so callers branch on these, never on message text.
 */
export const PROTOCOL_ERROR_CODES = [
  'BAD_FRAMES', // no frames, header not msgpack, header not a map
  'BAD_VERSION', // header.v is not PROTOCOL_VERSION
  'BAD_KIND', // unknown data kind or control type
  'BAD_HEADER', // a field is missing or has the wrong type or range
  'BAD_SHAPE', // shapes vs. byte lengths, bad dims, frame count vs. tensor count
  'BAD_WIDTH', // input width differs from what this stage expects
  'NON_FINITE', // NaN or +-Infinity where values are checked
] as const;

export type ProtocolErrorCode = (typeof PROTOCOL_ERROR_CODES)[number];

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly code: ProtocolErrorCode;

  constructor(code: ProtocolErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

export function isProtocolError(err: unknown, code?: ProtocolErrorCode): err is ProtocolError {
  return err instanceof ProtocolError && (code === undefined || err.code === code);
}
