import { ERROR_CODES, FfxError, type ErrorCode } from '../errors.js';

/**
 * Stable codes for a message that cannot be accepted. Stages count rejections by code (a metric
 * label) and report them to the coordinator, so callers branch on these, never on message text.
 */
export const PROTOCOL_ERROR_CODES = ERROR_CODES.protocol;

export type ProtocolErrorCode = ErrorCode<'protocol'>;

export class ProtocolError extends FfxError<ProtocolErrorCode> {}

export function isProtocolError(err: unknown, code?: ProtocolErrorCode): err is ProtocolError {
  return err instanceof ProtocolError && (code === undefined || err.code === code);
}
