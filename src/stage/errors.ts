// What a stage reports on purpose: the codes of ERROR_CODES.stage (errors.ts).
import { FfxError, type ErrorCode } from '../errors.js';

export class StageError extends FfxError<ErrorCode<'stage'>> {}
