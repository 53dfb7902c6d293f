// The wire format. Data messages are multipart: frame 0 is a small msgpack header, frames 1..n
// are the raw little-endian float32 bytes of each tensor (every Node target is little-endian).
// Control and result messages are one msgpack frame each. Everything received is validated
// here, so a stage or coordinator only ever sees well-formed messages or a ProtocolError.
import { Packr } from 'msgpackr';
import { NUM_CLASSES } from '../data/classes.js';
import { MAX_HEADER_BYTES } from './bounds.js';
import { ProtocolError } from './errors.js';

export const PROTOCOL_VERSION = 10;

/** The most replicas a stage may have (a bound on lists a peer sends). */
export const MAX_REPLICAS = 64;

// Plain msgpack maps (no msgpackr records), so any msgpack library can read a header.
const packr = new Packr({ useRecords: false, mapsAsObjects: true });

// ---------------------------------------------------------------------------------------------
// Data plane
// ---------------------------------------------------------------------------------------------

export const DATA_KINDS = ['train', 'eval', 'marker'] as const;
export type DataKind = (typeof DATA_KINDS)[number];

/**
 * `weights`: every stage sends its layer's state (a checkpoint, in band); `end`: the run is
 * over, the stage keeps its layer and waits for the next coordinator; `stop`: the stage exits.
 */
export const MARKER_OPS = ['weights', 'end', 'stop'] as const;
export type MarkerOp = (typeof MARKER_OPS)[number];

export interface TensorSpec {
  name: string;
  shape: number[];
}

interface HeaderBase {
  v: number;
  run: string;
  epoch: number;
  seq: number;
  tensors: TensorSpec[];
}

/**
 * Tensor 'x' (first) is [2 * nPos, d]: the positive rows, then the negative rows. In a run
 * with readouts, x is [3 * nPos, d] (then the neutral rows) and tensor 'y' [nPos] holds the
 * true labels (as floats), which the readouts train on. In a run of competitive layers, x is
 * [nPos, d], each image once as it is, and 'y' its labels; where the rows are images or conv
 * activations, x keeps their shape: [rows, h, w, c], channels last.
 */
export interface TrainHeader extends HeaderBase {
  kind: 'train';
  nPos: number;
  /** Learning rate for this step: the schedule is the coordinator's. */
  lr: number;
}

/**
 * Tensor 'x' (first) is [NUM_CLASSES * images, d], label-major: image i with label c is row
 * c * images + i; or, to evaluate the readouts, [images, d]: each image once, neutral label;
 * or, for competitive layers, [images, d]: each image once as it is.
 */
export interface EvalHeader extends HeaderBase {
  kind: 'eval';
  images: number;
}

/** In-band control that must stay ordered with the data; carries no tensors. */
export interface MarkerHeader extends HeaderBase {
  kind: 'marker';
  op: MarkerOp;
  id: number;
}

export type DataHeader = TrainHeader | EvalHeader | MarkerHeader;

/**
 * Every data header's fields besides `v`, `kind` and `tensors` (checked on their own), and each
 * kind's own: the rules decodeData checks, and the tables docs/protocol.md must list.
 */
export const HEADER_FIELDS = {
  run: 'string',
  epoch: 'uint',
  seq: 'uint',
} as const satisfies Record<Exclude<keyof HeaderBase, 'v' | 'tensors'>, Rule>;

export const DATA_FIELDS = {
  train: { nPos: 'posint', lr: 'finite' },
  eval: { images: 'posint' },
  marker: { op: MARKER_OPS, id: 'uint' },
} as const satisfies {
  [K in DataKind]: Record<
    Exclude<keyof Extract<DataHeader, { kind: K }>, keyof HeaderBase | 'kind'>,
    Rule
  >;
};

/** A header as a sender writes it: `v` is filled in by encodeData (a forwarded header may keep it). */
export type DataHeaderInit = WithOptionalV<DataHeader>;
// Distributes over the union, so `kind` still narrows the kind-specific fields.
type WithOptionalV<H> = H extends unknown ? Omit<H, 'v'> & { v?: number } : never;

export interface DataMessage {
  header: DataHeader;
  /** In the order of header.tensors. */
  tensors: Float32Array[];
}

export interface DecodeExpect {
  /** The input width this stage accepts: x.shape[1] must equal it. */
  width?: number;
  /**
   * The shape of a row this stage takes: [d] (x is [rows, d]), or an image's [h, w, c] (x is
   * [rows, h, w, c], channels last). With it, x's shape after the rows must be exactly this.
   */
  row?: readonly number[];
  /** Scan every tensor for NaN and +-Infinity (one read pass, no copy). */
  checkFinite?: boolean;
}

/**
 * Frames for one data message. The tensor frames are views on the arrays' memory, not copies,
 * and zeromq sends frames over 128 bytes from that memory after send() has resolved: the sender
 * hands the arrays over and must not write to them afterwards.
 */
export function encodeData(init: DataHeaderInit, tensors: readonly Float32Array[]): Buffer[] {
  // The receiver's rules, applied at the sender too: a bad message fails where it was made.
  const header = checkDataHeader({ ...init, v: PROTOCOL_VERSION });
  checkFrameCount(header, tensors.length);
  header.tensors.forEach((spec, i) => {
    const t = tensors[i]!;
    const n = elementCount(spec.shape);
    if (t.length !== n) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `tensor '${spec.name}' shape ${fmtShape(spec.shape)} needs ${n} values, array ${i} has ${t.length}`,
      );
    }
  });
  return [packr.pack(header), ...tensors.map(bytesOf)];
}

/**
 * Decodes and validates a data message: header fields, shapes against frame sizes, and what
 * `expect` asks for (see checkData).
 */
export function decodeData(frames: readonly Uint8Array[], expect: DecodeExpect = {}): DataMessage {
  return malformedIfThrows('data message', () => decodeDataUnchecked(frames, expect));
}

function decodeDataUnchecked(frames: readonly Uint8Array[], expect: DecodeExpect): DataMessage {
  const [head, ...body] = frames;
  // A header is a few hundred bytes: a large frame 0 is refused before decoding costs anything.
  if (head !== undefined && head.byteLength > MAX_HEADER_BYTES) {
    throw new ProtocolError(
      'BAD_FRAMES',
      `data header (frame 0) of ${head.byteLength} bytes; at most ${MAX_HEADER_BYTES}`,
    );
  }
  if (head === undefined) throw new ProtocolError('BAD_FRAMES', 'data message has no frames');
  const header = checkDataHeader(unpackMap(head, 'data header (frame 0)'));
  checkFrameCount(header, body.length);
  const tensors = header.tensors.map((spec, i) => {
    const frame = body[i]!;
    const bytes = elementCount(spec.shape) * 4;
    if (frame.byteLength !== bytes) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `tensor '${spec.name}' shape ${fmtShape(spec.shape)} needs ${bytes} bytes, ` +
          `frame ${i + 1} has ${frame.byteLength}`,
      );
    }
    return float32View(frame);
  });
  const msg = { header, tensors };
  checkData(msg, expect);
  return msg;
}

/**
 * What a receiver checks once it knows the message is for it: the input width, and (one read
 * pass) that every value is finite.
 */
export function checkData(msg: DataMessage, expect: DecodeExpect): void {
  const { header, tensors } = msg;
  const x = header.tensors[0];
  if (
    expect.row !== undefined &&
    x !== undefined &&
    x.shape.slice(1).join() !== expect.row.join()
  ) {
    throw new ProtocolError(
      'BAD_WIDTH',
      `tensor '${x.name}' shape ${fmtShape(x.shape)}: this stage takes rows of shape ` +
        `${fmtShape([...expect.row])}, as [rows, ${expect.row.length === 1 ? 'd' : 'h, w, c'}]`,
    );
  }
  if (expect.width !== undefined && x !== undefined && rowWidth(x.shape) !== expect.width) {
    throw new ProtocolError(
      'BAD_WIDTH',
      `tensor '${x.name}' shape ${fmtShape(x.shape)} has width ${rowWidth(x.shape)}, ` +
        `this stage expects ${expect.width}`,
    );
  }
  if (expect.checkFinite) {
    header.tensors.forEach((spec, i) => checkFinite(spec, tensors[i]!));
  }
  const y = header.tensors[1]?.name === 'y' ? tensors[1] : undefined;
  y?.forEach((label, i) => {
    if (!Number.isInteger(label) || label < 0 || label >= NUM_CLASSES) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `tensor 'y' holds labels 0..${NUM_CLASSES - 1}; y[${i}] is ${label}`,
      );
    }
  });
}

function checkDataHeader(h: Obj): DataHeader {
  if (h.v !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      'BAD_VERSION',
      `header.v is ${show(h.v)}, this build speaks protocol version ${PROTOCOL_VERSION}`,
    );
  }
  if (!DATA_KINDS.includes(h.kind as DataKind)) {
    throw new ProtocolError(
      'BAD_KIND',
      `header.kind must be one of ${DATA_KINDS.join(', ')}; got ${show(h.kind)}`,
    );
  }
  for (const [key, rule] of Object.entries({
    ...HEADER_FIELDS,
    ...DATA_FIELDS[h.kind as DataKind],
  }) as [string, Rule][]) {
    check(h, 'header', key, rule);
  }
  const tensors = checkTensorSpecs(h.tensors);
  const header = h as unknown as DataHeader;

  if (header.kind === 'marker') {
    if (tensors.length !== 0) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `a marker carries no tensors; header.tensors lists ${tensors.length}`,
      );
    }
    return header;
  }
  const x = tensors[0];
  if (x === undefined || x.name !== 'x' || (x.shape.length !== 2 && x.shape.length !== 4)) {
    throw new ProtocolError(
      'BAD_SHAPE',
      `a ${header.kind} message starts with a tensor 'x' [rows, d] or [rows, h, w, c]; got ` +
        (x === undefined ? 'no tensors' : `'${x.name}' ${fmtShape(x.shape)}`),
    );
  }
  let rows: number[];
  let why: string;
  if (header.kind === 'train') {
    const n = header.nPos;
    const y = tensors[1];
    if (tensors.length > 2 || (y && (y.name !== 'y' || y.shape.join() !== String(n)))) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `a train message carries 'x' and optionally 'y' [${n}]; got ` +
          tensors.map((t) => `'${t.name}' ${fmtShape(t.shape)}`).join(', '),
      );
    }
    rows = y ? [3 * n, n] : [2 * n];
    why = y ? `3 * nPos = ${3 * n} or nPos = ${n} (with labels 'y')` : `2 * nPos = 2 * ${n}`;
  } else {
    if (tensors.length !== 1) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `an eval message carries one tensor 'x'; got ${tensors.length}`,
      );
    }
    rows = [NUM_CLASSES * header.images, header.images];
    why = `${NUM_CLASSES} * images = ${NUM_CLASSES * header.images} or images = ${header.images}`;
  }
  if (!rows.includes(x.shape[0]!)) {
    throw new ProtocolError(
      'BAD_SHAPE',
      `tensor 'x' shape ${fmtShape(x.shape)} must have ${why} rows`,
    );
  }
  return header;
}

function checkTensorSpecs(value: unknown): TensorSpec[] {
  if (!Array.isArray(value)) {
    throw new ProtocolError('BAD_HEADER', `header.tensors must be an array; got ${show(value)}`);
  }
  const names = new Set<string>();
  value.forEach((spec: unknown, i) => {
    const where = `header.tensors[${i}]`;
    if (!isPlainObject(spec)) {
      throw new ProtocolError('BAD_HEADER', `${where} must be a map; got ${show(spec)}`);
    }
    check(spec, where, 'name', 'string');
    const name = spec.name as string;
    if (names.has(name)) {
      throw new ProtocolError('BAD_HEADER', `${where}.name ${show(name)} is used twice`);
    }
    names.add(name);
    checkShape(spec.shape, `tensor '${name}'`);
  });
  return value as TensorSpec[];
}

function checkShape(shape: unknown, what: string): asserts shape is number[] {
  if (!Array.isArray(shape) || !shape.every(isUint)) {
    throw new ProtocolError(
      'BAD_SHAPE',
      `${what} shape must be an array of integers >= 0; got ${show(shape)}`,
    );
  }
  if (!Number.isSafeInteger(elementCount(shape) * 4)) {
    throw new ProtocolError('BAD_SHAPE', `${what} shape ${fmtShape(shape)} is too large`);
  }
}

function checkFrameCount(header: DataHeader, frames: number): void {
  if (frames !== header.tensors.length) {
    const names = header.tensors.map((t) => `'${t.name}'`).join(', ');
    throw new ProtocolError(
      'BAD_SHAPE',
      `header.tensors lists ${header.tensors.length} tensor(s) [${names}], ` +
        `the message has ${frames} tensor frame(s)`,
    );
  }
}

function checkFinite(spec: TensorSpec, t: Float32Array): void {
  // x * 0 is 0 for every finite x and NaN for NaN and +-Inf: four independent sums make the
  // common, all-finite case one multiply-add per value (~2.5x faster than Number.isFinite
  // per element, on every message a stage receives); the slow loop only names the culprit.
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const n4 = t.length & ~3;
  for (let i = 0; i < n4; i += 4) {
    s0 += t[i]! * 0;
    s1 += t[i + 1]! * 0;
    s2 += t[i + 2]! * 0;
    s3 += t[i + 3]! * 0;
  }
  for (let i = n4; i < t.length; i++) s0 += t[i]! * 0;
  if (s0 + s1 + s2 + s3 === 0) return;
  for (let i = 0; i < t.length; i++) {
    if (!Number.isFinite(t[i]!)) {
      const cols = spec.shape.length >= 2 ? rowWidth(spec.shape) : 0;
      const at = cols > 0 ? `row ${Math.floor(i / cols)}, column ${i % cols}` : `index ${i}`;
      throw new ProtocolError('NON_FINITE', `tensor '${spec.name}' has ${t[i]} at ${at}`);
    }
  }
}

/** Values per row of a tensor [rows, ...]: the product of its other dimensions. */
function rowWidth(shape: readonly number[]): number {
  return shape.slice(1).reduce((a, b) => a * b, 1);
}

/**
 * float32 values on a frame's bytes without a per-element copy: a view when the frame is
 * 4-byte aligned in its ArrayBuffer (zeromq's own frames are), otherwise one bulk copy, because
 * a Float32Array cannot start at an unaligned offset.
 */
function float32View(bytes: Uint8Array): Float32Array {
  const n = bytes.byteLength >>> 2;
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Float32Array(n);
  new Uint8Array(out.buffer).set(bytes.subarray(0, n * 4));
  return out;
}

function bytesOf(t: Float32Array): Buffer {
  return Buffer.from(t.buffer, t.byteOffset, t.byteLength);
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

const fmtShape = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

// ---------------------------------------------------------------------------------------------
// Control and results: one msgpack frame each, both on the control connection (a stage's
// DEALER to the coordinator's ROUTER), so every result comes from the connection that
// registered its layer
// ---------------------------------------------------------------------------------------------

// No envelope version here: hello.version carries it, so a coordinator can still decode a hello
// from a stage of another version and answer it with an 'error' instead of dropping it.

/** Stage -> coordinator: registration. */
export interface HelloMessage {
  type: 'hello';
  /** The layers the stage holds: `layer` to `last` (equal for a stage of one layer). */
  layer: number;
  last: number;
  /** Which of its stage's replicas it is (1-based; replica 1 is the primary), of how many. */
  replica: number;
  replicas: number;
  version: number;
  backend: string;
  /** Where this stage's inbound PULL listens; the upstream connects to it. */
  endpoint: string;
  /** A replica's exchange PULL (its replicas' gradients and updates); empty without replicas. */
  exchange: string;
  pid: number;
  host: string;
  /** A random secret of this stage process: its heartbeats carry it. */
  token: string;
  /**
   * With CURVE keys: this stage's public key (Z85), and the proof that it holds the secret key
   * (hex HMAC-SHA256, keyed by the X25519 secret it shares with the coordinator, of
   * `ffx-hello:<layers>:<token>`, layers as "2" or "2-3"). Empty strings without keys.
   */
  key: string;
  proof: string;
  /**
   * The layers the stage holds from its last training run: that run's id and config (a
   * coordinator evaluating without a config takes it from its stages); null if none.
   */
  holds: HeldRun | null;
}

/** A stage's trained layer: the run that trained it, and that run's config (`origin`). */
export interface HeldRun {
  run: string;
  config: unknown;
}

/** Coordinator -> stage: the run's single source of hyper-parameters. */
export interface ConfigMessage {
  type: 'config';
  run: string;
  /** The layers the stage serves: `layer` to `last`, as its hello said. */
  layer: number;
  last: number;
  /** Its replica of how many, as its hello said. */
  replica: number;
  replicas: number;
  /**
   * With replicas: every replica's data endpoint, exchange endpoint and key (CURVE; else
   * empty strings), in replica order; empty lists without.
   */
  replicaEndpoints: string[];
  replicaExchanges: string[];
  replicaKeys: string[];
  numLayers: number;
  model: unknown;
  optimizer: unknown;
  seed: number;
  /** Downstream stage's endpoint; null for the last stage. */
  next: string | null;
  /** With CURVE keys: the downstream stage's public key (Z85); else empty. */
  nextKey: string;
  /**
   * With CURVE keys: the upstream's public key (the coordinator's for layer 1): the only key
   * this stage's data socket lets in for the run; else empty.
   */
  prevKey: string;
  /** The largest batch the run sends: positive samples per train message, images per eval. */
  batchSize: number;
  evalBatchSize: number;
  /** The run's train.shards: how a batch's gradient is summed (see core/ff-layer.ts). */
  shards: number;
  /**
   * How long the stage may take to reach `next` (a finished ZMTP handshake) before it reports
   * the link down, rather than hang on it.
   */
  linkTimeoutMs: number;
  /** 'train' builds a fresh layer; 'eval' keeps the layer the stage holds (an error if none). */
  mode: 'train' | 'eval';
  /**
   * 'train' resuming from a checkpoint: the layers' tensors as the checkpoint names them
   * (`layers.<i>.weight`, `.bias`, and the optimizer's slots) and their optimizer step count
   * (the same for every layer of a run). Empty for fresh layers.
   */
  state: Record<string, WeightsTensor>;
  optimizerStep: number;
  /**
   * The run's resolved config, as its config.json: not used to compute, kept with the layer a
   * training run leaves and said in the stage's hellos (HelloMessage.holds).
   */
  origin: unknown;
}

/** Stage -> coordinator: the config is applied; data for `run` may come. */
export interface ReadyMessage {
  type: 'ready';
  layer: number;
  run: string;
}

/**
 * Stage -> coordinator, every --heartbeat-ms, from the stage's heartbeat thread (its own
 * socket: the `token` of the stage's hello says whose), and the coordinator's answer, echoed:
 * the sender is alive.
 */
export interface HeartbeatMessage {
  type: 'heartbeat';
  layer: number;
  token: string;
}

/** Coordinator -> stage: `run` is abandoned; drop it and wait for the next coordinator. */
export interface AbortMessage {
  type: 'abort';
  run: string;
  reason: string;
}

/** Coordinator -> stage: exit. */
export interface StopMessage {
  type: 'stop';
  reason: string;
}

export interface ErrorMessage {
  type: 'error';
  /** The run the error concerns: a stage's error can reach a later coordinator. */
  run: string;
  layer: number;
  code: string;
  message: string;
}

/** Per train step. Numbers may be NaN: a diverging layer must still be reported. */
export interface StatsMessage {
  type: 'stats';
  layer: number;
  run: string;
  epoch: number;
  seq: number;
  loss: number;
  goodnessPos: number;
  goodnessNeg: number;
  /** Compute time of the step. */
  stepMs: number;
  /** Time the stage sat idle waiting for this message (the pipeline's bubble). */
  waitMs: number;
  /** Time spent decoding this message and encoding the activations. */
  transportMs: number;
  /** With a readout: its logits for the batch's neutral rows [nPos, classes]; else empty. */
  logits: Float32Array;
  /** Time the send downstream waited for room (backpressure from a slower next stage). */
  blockedMs: number;
}

/**
 * Per eval batch: goodness of every overlaid row, [NUM_CLASSES * images] label-major like the
 * input.
 */
export interface GoodnessMessage {
  type: 'goodness';
  layer: number;
  run: string;
  epoch: number;
  seq: number;
  images: number;
  g: Float32Array;
}

/** The last stage saw an `end` or `stop` marker: everything before it has passed every stage. */
export interface AckMessage {
  type: 'ack';
  layer: number;
  run: string;
  op: 'end' | 'stop';
  id: number;
  epoch: number;
}

/**
 * A stage skipped a malformed message, or one naming a run it does not know. `run` is the run
 * the stage serves: a message that may have been one of its batches.
 */
export interface RejectedMessage {
  type: 'rejected';
  layer: number;
  run: string;
  code: string;
  reason: string;
}

export interface WeightsTensor {
  shape: number[];
  data: Float32Array;
}

/** A stage's parameters (and optimizer state) in answer to a 'weights' marker. */
export interface WeightsMessage {
  type: 'weights';
  layer: number;
  run: string;
  epoch: number;
  optimizerStep: number;
  tensors: Record<string, WeightsTensor>;
}

export type ResultMessage =
  StatsMessage | GoodnessMessage | AckMessage | RejectedMessage | WeightsMessage;

/**
 * Replica -> its primary, on the primary's exchange socket: the parts of one layer's step for
 * the shards it computed (`<k>.h`, `<k>.g`, `<k>.loss`, `<k>.dw`, `<k>.db` per shard k).
 */
export interface PartsMessage {
  type: 'parts';
  run: string;
  seq: number;
  layer: number;
  replica: number;
  tensors: Record<string, WeightsTensor>;
}

/** Primary -> each replica, on its exchange socket: one layer's summed gradient (`dw`, `db`). */
export interface UpdateMessage {
  type: 'update';
  run: string;
  seq: number;
  layer: number;
  tensors: Record<string, WeightsTensor>;
}

/** The messages a stage sends the coordinator about a run's work (the rest is control). */
export const RESULT_TYPES = [
  'stats',
  'goodness',
  'ack',
  'rejected',
  'weights',
] as const satisfies readonly ResultMessage['type'][];

export function isResult(msg: ControlMessage): msg is ResultMessage {
  return (RESULT_TYPES as readonly string[]).includes(msg.type);
}

export type ControlMessage =
  | HelloMessage
  | ConfigMessage
  | ReadyMessage
  | HeartbeatMessage
  | StopMessage
  | AbortMessage
  | ErrorMessage
  | ResultMessage
  | PartsMessage
  | UpdateMessage;

export type ControlType = ControlMessage['type'];

type Rule =
  | 'string'
  | 'strings'
  | 'uint'
  | 'posint'
  | 'int'
  | 'number'
  | 'finite'
  | 'present'
  | readonly string[];
// 'f32' and 'tensors' carry float32 data, moved as msgpack bin (see encodeControl).
type FieldRule = Rule | 'string|null' | 'f32' | 'tensors';

/** Every control and result message's fields: the rules decodeControl checks. */
export const CONTROL_FIELDS = {
  hello: {
    layer: 'uint',
    last: 'uint',
    replica: 'posint',
    replicas: 'posint',
    version: 'uint',
    backend: 'string',
    endpoint: 'string',
    exchange: 'string',
    pid: 'uint',
    host: 'string',
    token: 'string',
    key: 'string',
    proof: 'string',
    holds: 'present',
  },
  config: {
    run: 'string',
    layer: 'uint',
    last: 'uint',
    replica: 'posint',
    replicas: 'posint',
    replicaEndpoints: 'strings',
    replicaExchanges: 'strings',
    replicaKeys: 'strings',
    numLayers: 'posint',
    model: 'present',
    optimizer: 'present',
    origin: 'present',
    seed: 'int',
    next: 'string|null',
    nextKey: 'string',
    prevKey: 'string',
    batchSize: 'posint',
    evalBatchSize: 'posint',
    shards: 'posint',
    linkTimeoutMs: 'posint',
    mode: ['train', 'eval'],
    state: 'tensors',
    optimizerStep: 'uint',
  },
  ready: { layer: 'uint', run: 'string' },
  heartbeat: { layer: 'uint', token: 'string' },
  stop: { reason: 'string' },
  abort: { run: 'string', reason: 'string' },
  error: { run: 'string', layer: 'uint', code: 'string', message: 'string' },
  stats: {
    layer: 'uint',
    run: 'string',
    epoch: 'uint',
    seq: 'uint',
    loss: 'number',
    goodnessPos: 'number',
    goodnessNeg: 'number',
    stepMs: 'number',
    waitMs: 'number',
    transportMs: 'number',
    blockedMs: 'number',
    logits: 'f32',
  },
  goodness: {
    layer: 'uint',
    run: 'string',
    epoch: 'uint',
    seq: 'uint',
    images: 'posint',
    g: 'f32',
  },
  ack: { layer: 'uint', run: 'string', op: ['end', 'stop'], id: 'uint', epoch: 'uint' },
  rejected: { layer: 'uint', run: 'string', code: 'string', reason: 'string' },
  weights: {
    layer: 'uint',
    run: 'string',
    epoch: 'uint',
    optimizerStep: 'uint',
    tensors: 'tensors',
  },
  parts: { run: 'string', seq: 'uint', layer: 'uint', replica: 'posint', tensors: 'tensors' },
  update: { run: 'string', seq: 'uint', layer: 'uint', tensors: 'tensors' },
} as const satisfies {
  [T in ControlType]: Record<
    Exclude<keyof Extract<ControlMessage, { type: T }>, 'type'>,
    FieldRule
  >;
};

const CONTROL_TYPES = Object.keys(CONTROL_FIELDS) as ControlType[];

/**
 * One frame. Float32Arrays travel as msgpack bin holding their raw bytes: msgpackr 1.12 packs a
 * bare Float32Array element by element into bytes (1.5 becomes 0x01) unless `moreTypes` is on,
 * and bin is readable by any msgpack library.
 */
export function encodeControl(msg: ControlMessage): Buffer {
  const obj = checkControl(msg as unknown as Obj, 'encode');
  return packr.pack(obj);
}

export function decodeControl(frame: Uint8Array): ControlMessage {
  return malformedIfThrows('control message', () =>
    checkControl(unpackMap(frame, 'control message'), 'decode'),
  ) as unknown as ControlMessage;
}

/**
 * Runs a decoder on a peer's bytes: whatever it throws is a ProtocolError (the message is
 * malformed), never an exception that takes the receiver down.
 */
function malformedIfThrows<T>(what: string, decode: () => T): T {
  try {
    return decode();
  } catch (err) {
    if (err instanceof ProtocolError) throw err;
    throw new ProtocolError('BAD_HEADER', `${what}: cannot be read (${String(err).slice(0, 80)})`);
  }
}

/** Validates a control message; returns a shallow copy with float32 fields converted for `dir`. */
function checkControl(msg: Obj, dir: 'encode' | 'decode'): Obj {
  const type = msg.type as ControlType;
  if (!CONTROL_TYPES.includes(type)) {
    throw new ProtocolError(
      'BAD_KIND',
      `control message type must be one of ${CONTROL_TYPES.join(', ')}; got ${show(msg.type)}`,
    );
  }
  const out: Obj = { ...msg };
  for (const [key, rule] of Object.entries(CONTROL_FIELDS[type]) as [string, FieldRule][]) {
    if (rule === 'f32') {
      out[key] = convertF32(msg[key], `${type}.${key}`, dir);
    } else if (rule === 'tensors') {
      out[key] = convertTensors(msg[key], `${type}.${key}`, dir);
    } else if (rule === 'string|null') {
      if (msg[key] !== null) check(msg, type, key, 'string');
    } else {
      check(msg, type, key, rule);
    }
  }
  if (type === 'goodness') {
    const g = out.g as Uint8Array | Float32Array;
    const n = g.byteLength / 4;
    const rows = NUM_CLASSES * (msg.images as number);
    if (n !== rows) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `goodness.g has ${n} values, ${NUM_CLASSES} * images = ${NUM_CLASSES} * ${show(msg.images)} = ${rows} needed`,
      );
    }
  }
  return out;
}

function convertF32(v: unknown, where: string, dir: 'encode' | 'decode'): Buffer | Float32Array {
  if (dir === 'encode') {
    if (!(v instanceof Float32Array)) {
      throw new ProtocolError('BAD_HEADER', `${where} must be a Float32Array; got ${show(v)}`);
    }
    return bytesOf(v);
  }
  if (!(v instanceof Uint8Array) || v.byteLength % 4 !== 0) {
    throw new ProtocolError(
      'BAD_HEADER',
      `${where} must be binary float32 data (a multiple of 4 bytes); got ${show(v)}`,
    );
  }
  return float32View(v);
}

function convertTensors(v: unknown, where: string, dir: 'encode' | 'decode'): Obj {
  if (!isPlainObject(v)) {
    throw new ProtocolError('BAD_HEADER', `${where} must be a map of tensors; got ${show(v)}`);
  }
  const out: Obj = {};
  for (const [name, t] of Object.entries(v)) {
    const at = `${where}[${JSON.stringify(name)}]`;
    if (!isPlainObject(t)) {
      throw new ProtocolError('BAD_HEADER', `${at} must be {shape, data}; got ${show(t)}`);
    }
    checkShape(t.shape, at);
    const data = convertF32(t.data, `${at}.data`, dir);
    const n = elementCount(t.shape);
    if (data.byteLength !== n * 4) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `${at} shape ${fmtShape(t.shape)} needs ${n} values, data has ${data.byteLength / 4}`,
      );
    }
    out[name] = { shape: t.shape, data };
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Shared validation
// ---------------------------------------------------------------------------------------------

type Obj = Record<string, unknown>;

function unpackMap(bytes: Uint8Array, what: string): Obj {
  let value: unknown;
  try {
    value = packr.unpack(bytes);
  } catch (err) {
    throw new ProtocolError(
      'BAD_FRAMES',
      `${what} is not msgpack (${bytes.byteLength} bytes): ${(err as Error).message}`,
      { cause: err },
    );
  }
  // Plain objects only: msgpackr turns some random bytes into extension values (Date, C1Type).
  if (!isPlainObject(value)) {
    throw new ProtocolError('BAD_FRAMES', `${what} must be a msgpack map; got ${show(value)}`);
  }
  return value;
}

function isPlainObject(v: unknown): v is Obj {
  if (typeof v !== 'object' || v === null) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

const isUint = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

const RULES: Record<Exclude<Rule, readonly string[]>, [(v: unknown) => boolean, string]> = {
  string: [(v) => typeof v === 'string', 'a string'],
  strings: [
    (v) => Array.isArray(v) && v.length <= MAX_REPLICAS && v.every((x) => typeof x === 'string'),
    `a list of at most ${MAX_REPLICAS} strings`,
  ],
  uint: [isUint, 'an integer >= 0'],
  posint: [(v) => isUint(v) && v > 0, 'an integer >= 1'],
  int: [(v) => Number.isSafeInteger(v), 'an integer'],
  number: [(v) => typeof v === 'number', 'a number'],
  finite: [(v) => Number.isFinite(v), 'a finite number'],
  present: [(v) => v !== undefined, 'present'],
};

function check(obj: Obj, where: string, key: string, rule: Rule): void {
  const v = obj[key];
  const [ok, what] =
    typeof rule === 'string'
      ? RULES[rule]
      : [(x: unknown) => rule.includes(x as string), `one of ${rule.join(', ')}`];
  if (!ok(v)) {
    const got = v === undefined && !(key in obj) ? 'nothing (missing)' : show(v);
    throw new ProtocolError('BAD_HEADER', `${where}.${key} must be ${what}; got ${got}`);
  }
}

/** A short, readable rendering of a bad value for an error message. */
function show(v: unknown): string {
  let s: string;
  try {
    if (typeof v === 'string') s = JSON.stringify(v);
    else if (typeof v === 'number' || typeof v === 'bigint' || v === undefined) s = String(v);
    else if (ArrayBuffer.isView(v)) s = `${v.constructor.name}(${v.byteLength} bytes)`;
    else if (typeof v === 'object' && v !== null && !isPlainObject(v) && !Array.isArray(v)) {
      s = typeof v.constructor?.name === 'string' ? v.constructor.name : 'object';
    } else {
      // A peer's map can hold BigInts (JSON.stringify throws) and a non-function toString
      // (String() throws): what it shows must never be what fails.
      s = JSON.stringify(v, (_, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x)) ?? 'null';
    }
  } catch {
    s = Array.isArray(v) ? `array(${v.length})` : typeof v;
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
