// CurveZMQ for a multi-host run: every process has a key pair, every connection is encrypted
// and authenticated (RFC 26), and each process's ZAP handler (RFC 27) lets in only the keys it
// trusts, before any message reaches ffx's code.
//
//   keys/coordinator.key   this process's key pair (mode 0600): "public <z85>", "secret <z85>"
//   keys/trusted.pub       the cluster's public keys, one "<z85> <name>" a line; the names say
//                          who may do what: "coordinator", "stage-N" (layer N only) or "stage"
//
// Keys are Curve25519, the same as X25519: a stage proves it holds its secret key in its hello
// with an HMAC keyed by the secret it shares with the coordinator (helloProof), so a layer's
// registration is bound to a key, not to a claim.
import { createHmac, createPrivateKey, createPublicKey, diffieHellman } from 'node:crypto';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Router, curveKeyPair, type Socket } from 'zeromq';
import { FfxError, withFile } from '../errors.js';
import { layersOf, rangeName, type LayerRange } from './layer-range.js';

export interface KeyPair {
  /** Z85, 40 characters. */
  publicKey: string;
  secretKey: string;
}

/**
 * Makes the keys of a cluster in `dir` (created, mode 0700): coordinator.key, stage-1.key ..
 * stage-N.key (mode 0600), and trusted.pub with every public key; returns trusted.pub's path.
 */
export async function writeClusterKeys(dir: string, stages: LayerRange[]): Promise<string> {
  const names = ['coordinator', ...stages.map(stageKeyName)];
  await withFile(dir, `cannot create ${dir}`, () => mkdir(dir, { recursive: true, mode: 0o700 }));
  const lines = [
    '# ffx: the public keys this cluster trusts ("<key> <who>"); give it with --trust',
  ];
  for (const name of names) {
    const pair = generateKeyPair();
    await writeKeyPair(join(dir, `${name}.key`), pair);
    lines.push(`${pair.publicKey} ${name}`);
  }
  const trusted = join(dir, 'trusted.pub');
  await withFile(trusted, `cannot write ${trusted}`, () =>
    writeFile(trusted, lines.join('\n') + '\n'),
  );
  return trusted;
}

/** A trusted public key and the name that says what it may do. */
export interface TrustedKey {
  key: string;
  name: string;
}

/** Keys that cannot be read or do not fit: named with the file and line. */
export class KeyError extends FfxError<'KEY_INVALID'> {
  constructor(message: string) {
    super('KEY_INVALID', message);
  }
}

// ---------------------------------------------------------------------------------------------
// Z85 (ZeroMQ RFC 32): 4 bytes <-> 5 printable characters
// ---------------------------------------------------------------------------------------------

const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';
const Z85_INDEX = new Map([...Z85].map((c, i) => [c, i]));

export function z85Decode(text: string): Buffer {
  if (text.length % 5 !== 0)
    throw new KeyError(`a Z85 key has a multiple of 5 characters; got ${text.length}`);
  const out = Buffer.alloc((text.length / 5) * 4);
  for (let i = 0; i < text.length; i += 5) {
    let value = 0;
    for (let j = 0; j < 5; j++) {
      const digit = Z85_INDEX.get(text[i + j]!);
      if (digit === undefined) throw new KeyError(`"${text[i + j]}" is not a Z85 character`);
      value = value * 85 + digit;
    }
    if (value > 0xffffffff) throw new KeyError('not a Z85 key: a group overflows 32 bits');
    out.writeUInt32BE(value, (i / 5) * 4);
  }
  return out;
}

export function z85Encode(bytes: Uint8Array): string {
  if (bytes.length % 4 !== 0)
    throw new KeyError(`Z85 encodes multiples of 4 bytes; got ${bytes.length}`);
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let out = '';
  for (let i = 0; i < view.length; i += 4) {
    let value = view.readUInt32BE(i);
    const chunk: string[] = [];
    for (let j = 0; j < 5; j++) {
      chunk.unshift(Z85[value % 85]!);
      value = Math.floor(value / 85);
    }
    out += chunk.join('');
  }
  return out;
}

/** A Z85 Curve25519 key: 40 characters, 32 bytes. */
export function isKey(text: string): boolean {
  try {
    return text.length === 40 && z85Decode(text).length === 32;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Key files
// ---------------------------------------------------------------------------------------------

export function generateKeyPair(): KeyPair {
  return curveKeyPair();
}

/** Writes a key pair, readable by its owner only. */
export async function writeKeyPair(file: string, pair: KeyPair): Promise<void> {
  const text = `# ffx CurveZMQ key pair: keep secret\npublic ${pair.publicKey}\nsecret ${pair.secretKey}\n`;
  await withFile(file, `cannot write key ${file}`, async () => {
    await writeFile(file, text, { mode: 0o600 });
    await chmod(file, 0o600);
  });
}

/**
 * A key pair file. Like ssh with a private key, refuses one that others may read: a secret key
 * anyone on the host can copy authenticates nothing. As PostgreSQL does for its TLS key, a file
 * owned by root may be readable by its group (a Kubernetes Secret mounted with an fsGroup).
 */
export async function readKeyPair(file: string): Promise<KeyPair> {
  const { mode, uid } = await withFile(file, `cannot read key ${file}`, () => stat(file));
  const groupMayRead = uid === 0 && (mode & 0o030) === 0;
  if (
    process.platform !== 'win32' &&
    ((mode & 0o007) !== 0 || ((mode & 0o070) !== 0 && !groupMayRead))
  ) {
    const octal = (mode & 0o777).toString(8).padStart(4, '0');
    throw new KeyError(
      `${file} holds a secret key but others may read it (mode ${octal}): chmod 600 ${file}`,
    );
  }
  const text = await withFile(file, `cannot read key ${file}`, () => readFile(file, 'utf8'));
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*(public|secret)\s+(\S+)\s*$/.exec(line);
    if (m) fields.set(m[1]!, m[2]!);
  }
  const publicKey = fields.get('public');
  const secretKey = fields.get('secret');
  if (!publicKey || !secretKey || !isKey(publicKey) || !isKey(secretKey)) {
    throw new KeyError(
      `${file}: needs a "public <z85>" and a "secret <z85>" line (ffx-keys makes them)`,
    );
  }
  if (derivePublicKey(secretKey) !== publicKey) {
    throw new KeyError(`${file}: its public key is not the one of its secret key`);
  }
  return { publicKey, secretKey };
}

/** The trusted keys: "<z85> <name>" a line; blank lines and # comments are skipped. */
export async function readTrusted(file: string): Promise<TrustedKey[]> {
  // Whoever may write the file decides who joins the cluster: as much a secret as a key.
  const { mode } = await withFile(file, `cannot read trusted keys ${file}`, () => stat(file));
  if ((mode & 0o002) !== 0) {
    const octal = (mode & 0o777).toString(8).padStart(4, '0');
    throw new KeyError(
      `${file} decides who may join the cluster but anyone may change it (mode ${octal}): ` +
        `chmod 644 ${file}`,
    );
  }
  const text = await withFile(file, `cannot read trusted keys ${file}`, () =>
    readFile(file, 'utf8'),
  );
  const keys: TrustedKey[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^(\S+)\s+(coordinator|stage|stage-\d+(?:-\d+)?)$/.exec(line);
    if (!m || !isKey(m[1]!)) {
      throw new KeyError(
        `${file}:${i + 1}: expected "<z85 public key> coordinator|stage|stage-N|stage-FIRST-LAST"; got "${line.slice(0, 60)}"`,
      );
    }
    keys.push({ key: m[1]!, name: m[2]! });
  });
  return keys;
}

/** A name's key among the trusted ones (e.g. the coordinator's), or an error naming the file. */
export function trustedKeyOf(trusted: TrustedKey[], name: string, file: string): string {
  const entry = trusted.find((t) => t.name === name);
  if (!entry) throw new KeyError(`${file} lists no "${name}" key`);
  return entry.key;
}

/** The name a stage's key has in trusted.pub: stage-2 for layer 2, stage-2-3 for layers 2-3. */
export function stageKeyName(layers: LayerRange): string {
  return `stage-${rangeName(layers)}`;
}

/**
 * Whether `key` may serve a stage of `layers`: listed as "stage" (any), as that stage's name
 * (stage-2, stage-2-3), or as every one of its layers (stage-2 and stage-3).
 */
export function mayServe(trusted: TrustedKey[], key: string, layers: LayerRange): boolean {
  const names = new Set(trusted.filter((t) => t.key === key).map((t) => t.name));
  return (
    names.has('stage') ||
    names.has(stageKeyName(layers)) ||
    layersOf(layers).every((l) => names.has(`stage-${l}`))
  );
}

// ---------------------------------------------------------------------------------------------
// X25519 and the hello proof
// ---------------------------------------------------------------------------------------------

// DER wrappers of a raw X25519 key (RFC 8410): Node's crypto takes keys in these forms.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

function privateKeyOf(secretZ85: string) {
  return createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, z85Decode(secretZ85)]),
    format: 'der',
    type: 'pkcs8',
  });
}

function publicKeyOf(publicZ85: string) {
  return createPublicKey({
    key: Buffer.concat([SPKI_PREFIX, z85Decode(publicZ85)]),
    format: 'der',
    type: 'spki',
  });
}

/** The public key of a secret key (the CurveZMQ pair is an X25519 pair). */
export function derivePublicKey(secretZ85: string): string {
  const der = createPublicKey(privateKeyOf(secretZ85)).export({ format: 'der', type: 'spki' });
  return z85Encode(der.subarray(der.length - 32));
}

/**
 * A stage's proof, in its hello, that it holds the secret key of `key`: an HMAC of the layer and
 * its token, keyed by the X25519 secret only it and the coordinator can compute.
 */
export function helloProof(
  mySecret: string,
  theirPublic: string,
  layers: LayerRange,
  token: string,
): string {
  const shared = diffieHellman({
    privateKey: privateKeyOf(mySecret),
    publicKey: publicKeyOf(theirPublic),
  });
  return createHmac('sha256', shared)
    .update(`ffx-hello:${rangeName(layers)}:${token}`)
    .digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

/** A socket that accepts CURVE clients (it binds): its connections are checked by ZAP. */
export function curveServer(socket: Socket, keys: KeyPair, domain: ZapDomain): void {
  socket.zapDomain = domain;
  socket.zapEnforceDomain = true; // no ZAP handler: no connection
  socket.curveServer = true;
  socket.curveSecretKey = keys.secretKey;
}

/** A socket that connects to a CURVE server whose public key is `serverKey`. */
export function curveClient(socket: Socket, keys: KeyPair, serverKey: string): void {
  socket.curveServerKey = serverKey;
  socket.curvePublicKey = keys.publicKey;
  socket.curveSecretKey = keys.secretKey;
}

/** What a server socket serves, so the ZAP handler can apply the right rule. */
export type ZapDomain = 'control' | 'data' | 'exchange';

/**
 * The process's ZAP handler (RFC 27): every CURVE server socket of this process asks it about
 * each new connection; `allow(domain, publicKey)` answers. A refused peer's connection is
 * closed by ZeroMQ before it delivers a message.
 */
export class ZapHandler {
  private readonly socket = new Router({ linger: 0 });
  private closed = false;

  private constructor(
    private readonly allow: (domain: string, key: string) => boolean,
    private readonly onRefused: (domain: string, key: string | null, address: string) => void,
  ) {}

  /**
   * Answers ZeroMQ's authentication requests with `allow`; `onRefused` hears of each refusal:
   * the domain, the peer's public key (null for a mechanism other than CURVE) and its address.
   */
  static async start(
    allow: (domain: string, key: string) => boolean,
    onRefused: (domain: string, key: string | null, address: string) => void = () => {},
  ): Promise<ZapHandler> {
    const zap = new ZapHandler(allow, onRefused);
    await zap.socket.bind('inproc://zeromq.zap.01');
    void zap.serve();
    return zap;
  }

  private async serve(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await this.socket.receive();
      } catch {
        return; // closed
      }
      // [routing id, empty, version, request id, domain, address, identity, mechanism, creds...]
      const [id, empty, version, requestId, domain, address, , mechanism, credential] = frames;
      if (!id || !empty || !requestId) continue;
      const d = domain?.toString() ?? '';
      const key =
        mechanism?.toString() === 'CURVE' && credential?.length === 32
          ? z85Encode(credential)
          : null;
      const ok = version?.toString() === '1.0' && key !== null && this.allow(d, key);
      if (!ok) this.onRefused(d, key, address?.toString() ?? '?');
      // A socket closed meanwhile throws at once, not through the promise.
      if (this.closed) return;
      try {
        await this.socket.send([
          id,
          empty,
          '1.0',
          requestId,
          ok ? '200' : '400',
          ok ? 'OK' : 'not trusted',
          '',
          '',
        ]);
      } catch {
        return; // closed
      }
    }
  }

  close(): void {
    this.closed = true;
    this.socket.close();
  }
}

/** How a ZeroMQ security handshake failed, as the socket's monitor reports it. */
export type HandshakeFailure = 'auth' | 'protocol' | 'other';

/**
 * Calls `onFailure` for every failed security handshake of `socket` (ZeroMQ drops such a
 * connection without a word to the application): 'auth', the server refused the client's key;
 * 'protocol', the two sides disagree on security (one has keys, the other none); 'other', the
 * connection broke in the handshake (a client that knows the wrong server key sees this).
 */
export function watchHandshakes(
  socket: Socket,
  onFailure: (kind: HandshakeFailure, endpoint: string) => void,
): void {
  const kinds: HandshakeFailure[] = ['auth', 'protocol', 'other'];
  for (const kind of kinds) {
    socket.events.on(`handshake:error:${kind}`, (e: { address?: string }) =>
      onFailure(kind, e.address ?? '?'),
    );
  }
}
