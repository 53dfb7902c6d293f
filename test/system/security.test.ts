// Only the cluster's own processes take part. With CurveZMQ keys every link is encrypted and a
// peer without an accepted key is refused before any message reaches ffx (it can neither
// register, nor send data, results or heartbeats), and a keyed run over tcp reproduces the
// single-process run bit for bit. Without keys, listeners stay on this host unless --insecure
// says otherwise, and a second hello for a registered layer is refused without taking it over.
import assert from 'node:assert/strict';
import { chmod, chown, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { Dealer } from 'zeromq';
import {
  derivePublicKey,
  generateKeyPair,
  helloProof,
  mayServe,
  readKeyPair,
  readTrusted,
  writeKeyPair,
  z85Decode,
  z85Encode,
  type KeyPair,
} from '../../src/transport/curve.js';
import { closeAll, dataPush, freePort } from '../../src/transport/sockets.js';
import {
  PROTOCOL_VERSION,
  decodeControl,
  encodeControl,
  encodeData,
} from '../../src/transport/wire.js';
import { killAll, ROOT, runNode, startNode, startStage, waitForOutput } from '../helpers/spawn.js';
import { smallRun, referenceRun } from '../helpers/runs.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

const RUN = smallRun(3);
const LAUNCH = [join(CLI, 'ffx-launch.js'), '--backend', 'wasm', '--stage-threads', '1', ...RUN];

describe('CurveZMQ keys', () => {
  it('Z85 is RFC 32 (its test vector) and round-trips', () => {
    const vector = Buffer.from([0x86, 0x4f, 0xd2, 0x6f, 0xb5, 0x59, 0xf7, 0x5b]);
    assert.equal(z85Encode(vector), 'HelloWorld');
    assert.deepEqual(z85Decode('HelloWorld'), vector);
    assert.throws(() => z85Decode('Hello'.slice(0, 4)), { code: 'KEY_INVALID' });
    assert.throws(() => z85Decode('Hell"'), { code: 'KEY_INVALID' });
  });

  it("a pair's public key is the X25519 public key of its secret; hello proofs agree both ways", () => {
    for (let i = 0; i < 3; i++) {
      const pair = generateKeyPair();
      assert.equal(derivePublicKey(pair.secretKey), pair.publicKey);
    }
    const stage = generateKeyPair();
    const coordinator = generateKeyPair();
    const proof = helloProof(
      stage.secretKey,
      coordinator.publicKey,
      { first: 2, last: 2 },
      'token',
    );
    assert.equal(
      helloProof(coordinator.secretKey, stage.publicKey, { first: 2, last: 2 }, 'token'),
      proof,
    );
    // Another layer, token or key gives another proof.
    assert.notEqual(
      helloProof(coordinator.secretKey, stage.publicKey, { first: 1, last: 1 }, 'token'),
      proof,
    );
    assert.notEqual(
      helloProof(coordinator.secretKey, stage.publicKey, { first: 2, last: 2 }, 'other'),
      proof,
    );
    const other = generateKeyPair();
    assert.notEqual(
      helloProof(coordinator.secretKey, other.publicKey, { first: 2, last: 2 }, 'token'),
      proof,
    );
    // A group's proof is bound to its whole range: layer 2 alone cannot pass for 2-3.
    assert.notEqual(
      helloProof(coordinator.secretKey, stage.publicKey, { first: 2, last: 3 }, 'token'),
      proof,
    );
  });

  it('a stage key serves the layers it is listed for: its own, its group, or any as "stage"', () => {
    const [a, b, c] = [generateKeyPair(), generateKeyPair(), generateKeyPair()].map(
      (k) => k.publicKey,
    );
    const trusted = [
      { key: a!, name: 'stage-2' },
      { key: a!, name: 'stage-3' },
      { key: b!, name: 'stage-1-2' },
      { key: c!, name: 'stage' },
      { key: b!, name: 'stage-4' },
    ];
    const range = (first: number, last = first) => ({ first, last });
    assert.ok(mayServe(trusted, a!, range(2)));
    assert.ok(mayServe(trusted, a!, range(2, 3)), 'listed for each layer of the group');
    assert.ok(!mayServe(trusted, a!, range(2, 4)), 'not for layer 4');
    assert.ok(mayServe(trusted, b!, range(1, 2)));
    assert.ok(!mayServe(trusted, b!, range(1)), 'stage-1-2 is that group, not layer 1 alone');
    assert.ok(!mayServe(trusted, b!, range(1, 3)));
    assert.ok(mayServe(trusted, c!, range(1, 5)));
  });

  describe('ffx-keys', () => {
    const tmp = tempDir('keys');

    it('makes owner-only key pairs and the trusted list, and will not overwrite them', async () => {
      const keys = tmp('keys');
      const r = await runNode([join(CLI, 'ffx-keys.js'), keys, '--stages', '2'], {
        timeoutMs: 20_000,
      });
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await stat(keys)).mode & 0o777, 0o700);
      const trusted = await readTrusted(join(keys, 'trusted.pub'));
      assert.deepEqual(
        trusted.map((t) => t.name),
        ['coordinator', 'stage-1', 'stage-2'],
      );
      for (const name of ['coordinator', 'stage-1', 'stage-2']) {
        const file = join(keys, `${name}.key`);
        assert.equal((await stat(file)).mode & 0o777, 0o600, file);
        const pair = await readKeyPair(file);
        assert.equal(trusted.find((t) => t.name === name)?.key, pair.publicKey);
      }
      const again = await runNode([join(CLI, 'ffx-keys.js'), keys, '--stages', '2'], {
        timeoutMs: 20_000,
      });
      assert.equal(again.code, 2);
      assert.match(again.stderr, /already holds coordinator, stage-1, stage-2: --force/);
    });

    it('--partition: a key per stage of the layout, named by its layers; a bad layout refused', async () => {
      const keys = tmp('partition-keys');
      const r = await runNode([join(CLI, 'ffx-keys.js'), keys, '--partition', '1-2,3,4-6'], {
        timeoutMs: 20_000,
      });
      assert.equal(r.code, 0, r.stderr);
      const trusted = await readTrusted(join(keys, 'trusted.pub'));
      assert.deepEqual(
        trusted.map((t) => t.name),
        ['coordinator', 'stage-1-2', 'stage-3', 'stage-4-6'],
      );
      const group = await readKeyPair(join(keys, 'stage-4-6.key'));
      assert.ok(mayServe(trusted, group.publicKey, { first: 4, last: 6 }));
      assert.ok(!mayServe(trusted, group.publicKey, { first: 4, last: 4 }));
      const gap = await runNode([join(CLI, 'ffx-keys.js'), tmp('gap-keys'), '--partition', '1,3'], {
        timeoutMs: 20_000,
      });
      assert.equal(gap.code, 2);
      assert.match(gap.stderr, /--partition "1,3": no stage holds layer 2/);
      const both = await runNode(
        [join(CLI, 'ffx-keys.js'), tmp('both-keys'), '--partition', '1,2', '--stages', '2'],
        { timeoutMs: 20_000 },
      );
      assert.equal(both.code, 2);
      assert.match(both.stderr, /mutually exclusive/);
    });

    it('refuses a secret key others may read, naming the file and the fix', async () => {
      const file = tmp('open.key');
      await writeKeyPair(file, generateKeyPair());
      const refused = (mode: string) => (e: Error) =>
        e.message.includes(`others may read it (mode ${mode}): chmod 600 ${file}`);
      await chmod(file, 0o644);
      await assert.rejects(readKeyPair(file), refused('0644'));
      // Group-readable: only a file root owns (a Kubernetes Secret with an fsGroup).
      await chmod(file, 0o640);
      if (process.getuid?.() === 0) {
        await readKeyPair(file);
        await chown(file, 65534, 65534);
      }
      await assert.rejects(readKeyPair(file), refused('0640'));
    });

    it('refuses a key file whose halves do not match, and a malformed trusted line, naming the file', async () => {
      const a = generateKeyPair();
      const b = generateKeyPair();
      const mixed = tmp('mixed.key');
      await writeFile(mixed, `public ${a.publicKey}\nsecret ${b.secretKey}\n`, { mode: 0o600 });
      await assert.rejects(readKeyPair(mixed), (e: Error) =>
        /mixed\.key: its public key/.test(e.message),
      );
      const bad = tmp('bad.pub');
      await writeFile(bad, `# ok\n${a.publicKey} stage\nnot-a-key stage-2\n`);
      await assert.rejects(readTrusted(bad), (e: Error) => /bad\.pub:3: expected/.test(e.message));
    });
  });
});

describe('listeners stay on this host without keys', () => {
  after(() => killAll());

  it('a stage listening beyond this host without keys: exit 2, unless --insecure', async () => {
    const control = 'tcp://127.0.0.1:1';
    const r = await runNode(
      [
        join(CLI, 'ffx-stage.js'),
        '--layer',
        '1',
        '--coordinator',
        control,
        '--listen',
        'tcp://0.0.0.0:*',
        '--no-metrics',
      ],
      { timeoutMs: 20_000 },
    );
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /^error \[USAGE\]: --listen tcp:\/\/0\.0\.0\.0:\* listens beyond this host without encryption or authentication: give --key and --trust .* or --insecure/m,
    );
    const open = startNode(
      [
        join(CLI, 'ffx-stage.js'),
        '--layer',
        '1',
        '--coordinator',
        control,
        '--listen',
        'tcp://0.0.0.0:*',
        '--insecure',
        '--backend',
        'cpu',
        '--no-metrics',
      ],
      { timeoutMs: 20_000 },
    );
    await waitForOutput(open.stderr, /layer 1: listening on tcp:\/\//, 15_000);
    open.child.kill('SIGTERM');
    assert.equal((await open.result).code, 0);
  });

  it('a coordinator binding beyond this host without keys: exit 2', async () => {
    const r = await runNode(
      [join(CLI, 'ffx-coordinator.js'), 'train', '--bind', 'tcp://0.0.0.0:5999', '--no-metrics'],
      { timeoutMs: 20_000 },
    );
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--bind tcp:\/\/0\.0\.0\.0:5999 listens beyond this host/);
  });

  it('the defaults are loopback: data sockets and /metrics', async () => {
    for (const cli of ['ffx-stage.js', 'ffx-coordinator.js']) {
      const args = cli === 'ffx-stage.js' ? ['--help'] : ['train', '--help'];
      const r = await runNode([join(CLI, cli), ...args], { timeoutMs: 20_000 });
      assert.match(r.stdout, /--metrics-host[\s\S]*?\[default: "127\.0\.0\.1"\]/, cli);
      if (cli === 'ffx-stage.js') assert.match(r.stdout, /\[default: "tcp:\/\/127\.0\.0\.1:\*"\]/);
    }
  });
});

describe('a run with keys, and peers without them', () => {
  const path = tempDir('curve');

  it('refuses every unknown key, and reproduces the local run bit for bit over tcp', async () => {
    const local = await referenceRun(RUN);

    const run = startNode(
      [
        ...LAUNCH,
        '--transport',
        'tcp',
        '--keys',
        path('keys'),
        '--verbose',
        '--out',
        path('curve'),
      ],
      { timeoutMs: 120_000 },
    );
    await waitForOutput(run.stderr, /\[coordinator\] epoch 1\/3 \d+% /, 60_000);
    const control = /coordinator on (tcp:\/\/127\.0\.0\.1:\d+)/.exec(run.stderr())![1]!;
    const stage1 = /layer 1 ready on .* at (tcp:\/\/127\.0\.0\.1:\d+)/.exec(run.stderr())![1]!;
    const trusted = await readTrusted(path('keys', 'trusted.pub'));
    const coordinatorKey = trusted.find((t) => t.name === 'coordinator')!.key;
    const stranger = generateKeyPair();
    const stage2 = await readKeyPair(path('keys', 'stage-2.key'));

    // A stranger's key, on the control socket: hello, heartbeat, a forged result.
    const hello = encodeControl({
      type: 'hello',
      layer: 1,
      last: 1,
      replica: 1,
      replicas: 1,
      version: PROTOCOL_VERSION,
      backend: 'wasm',
      endpoint: 'tcp://127.0.0.1:1',
      exchange: '',
      pid: 1,
      host: hostname(),
      token: 'x',
      key: stranger.publicKey,
      proof: helloProof(stranger.secretKey, coordinatorKey, { first: 1, last: 1 }, 'x'),
      holds: null,
    });
    const control1 = curveDealer(stranger, coordinatorKey, control);
    const plain = new Dealer({ linger: 0 });
    plain.connect(control);
    const forged = [
      hello,
      encodeControl({ type: 'heartbeat', layer: 1, token: 'x' }),
      encodeControl({ type: 'rejected', layer: 1, run: 'x', code: 'BAD_FRAMES', reason: 'forged' }),
    ];
    // Data into stage 1: from a stranger, and from a key the cluster trusts but that is not
    // stage 1's upstream (stage 2's).
    const data = encodeData(
      {
        kind: 'train',
        run: 'x',
        epoch: 0,
        seq: 0,
        nPos: 1,
        lr: 1,
        tensors: [{ name: 'x', shape: [2, 784] }],
      },
      [new Float32Array(2 * 784).fill(1)],
    );
    const pushes = [stranger, stage2].map((keys) => {
      const p = dataPush();
      p.curveServerKey = /* stage 1's key */ trusted.find((t) => t.name === 'stage-1')!.key;
      p.curvePublicKey = keys.publicKey;
      p.curveSecretKey = keys.secretKey;
      p.connect(stage1);
      return p;
    });
    const plainPush = dataPush(stage1);
    // A refused peer's send may never complete: one still pending makes the next throw (EBUSY)
    // at once. Whatever was sent, nothing may come back.
    const attempt = (socket: { send(m: unknown): Promise<void> }, m: unknown) => {
      try {
        void socket.send(m).catch(() => {});
      } catch {
        // busy with the previous one
      }
    };
    try {
      for (const m of forged) {
        attempt(control1, m);
        attempt(plain, m);
      }
      for (const p of [...pushes, plainPush]) attempt(p, data);
      // Nothing comes back to a refused peer.
      const answer = await Promise.race([
        control1.receive().then(
          () => 'answered',
          () => 'closed',
        ),
        sleep(1500).then(() => 'silence'),
      ]);
      assert.equal(answer, 'silence');
    } finally {
      closeAll(control1, plain, plainPush, ...pushes);
    }

    const r = await run.result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(r.stderr, /data over tcp with CurveZMQ/);
    // Refused at the connection, by each ZAP handler: counted, logged, never registered.
    assert.match(
      r.stderr,
      /\[coordinator\] dropped a connection from \S+ whose key \S{40} is not trusted as a stage/,
    );
    // The peer without keys never reaches ZAP: its failed handshake is named all the same.
    assert.match(
      r.stderr,
      /\[coordinator\] dropped a connection that failed the CurveZMQ handshake/,
    );
    assert.match(r.stderr, /\[stage 1\] refused a connection whose key is not the upstream's/);
    assert.doesNotMatch(r.stderr, /replacing pid|hello from layer 1 \(.*pid 1,/);
    assert.equal(
      await maxWeightDiff(join(local, 'model.safetensors'), path('curve', 'model.safetensors')),
      0,
    );
  });
});

describe('key mismatches are named on both sides', () => {
  const tmp = tempDir('mismatch');

  it('a stage with an untrusted key, and one without keys, each say why; so does the coordinator', async () => {
    for (const dir of ['keys', 'other']) {
      const made = await runNode([join(CLI, 'ffx-keys.js'), tmp(dir), '--stages', '2'], {
        timeoutMs: 20_000,
      });
      assert.equal(made.code, 0, made.stderr);
    }
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const coordinator = startNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        ...RUN,
        '--bind',
        control,
        '--key',
        tmp('keys', 'coordinator.key'),
        '--trust',
        tmp('keys', 'trusted.pub'),
        '--register-timeout',
        '15',
        '--out',
        tmp('run'),
      ],
      { timeoutMs: 60_000 },
    );
    await waitForOutput(coordinator.stderr, /waiting for 2 stages/, 30_000);
    // Stage 1: a key of another cluster (trusting this coordinator: its --trust is the right
    // file); stage 2: no keys at all.
    const untrusted = startStage(1, control, 60_000, [
      '--key',
      tmp('other', 'stage-1.key'),
      '--trust',
      tmp('keys', 'trusted.pub'),
    ]);
    const keyless = startStage(2, control, 60_000);
    const started = performance.now();
    const other = (await readKeyPair(tmp('other', 'stage-1.key'))).publicKey;
    await waitForOutput(
      untrusted.stderr,
      new RegExp(
        `refused this stage's key ${other.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: its --trust file does not list it for layer 1`,
      ),
      10_000,
    );
    await waitForOutput(
      keyless.stderr,
      /refused a connection without keys: it uses CurveZMQ, so this stage needs --key and --trust/,
      10_000,
    );
    await waitForOutput(
      coordinator.stderr,
      /dropped a connection from \S+ whose key \S{40} is not trusted as a stage/,
      10_000,
    );
    await waitForOutput(
      coordinator.stderr,
      /dropped a connection that failed the CurveZMQ handshake: a peer without keys/,
      10_000,
    );
    // Within the default heartbeat timeout (10 s), on both sides.
    assert.ok(performance.now() - started < 10_000);
    const r = await coordinator.result;
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /error \[CLUSTER_MISSING_STAGES\]: no hello from layer 1, 2 within 15s; \d+ connections? failed the key check meanwhile \(above\): if the stages run, check their --key and --trust/,
    );
  });

  it('a coordinator whose --trust file does not list its key is refused at start-up', async () => {
    const r = await runNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        ...RUN,
        '--key',
        tmp('other', 'coordinator.key'),
        '--trust',
        tmp('keys', 'trusted.pub'),
        '--out',
        tmp('wrong-key'),
      ],
      { timeoutMs: 30_000 },
    );
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /error \[KEY_INVALID\]: .*trusted\.pub lists \S+ as the coordinator's key, but --key .*coordinator\.key holds \S+: stages that trust/,
    );
  });

  it('a trusted.pub anyone may write is refused', async () => {
    const file = tmp('keys', 'trusted.pub');
    await chmod(file, 0o666);
    await assert.rejects(readTrusted(file), (e: Error) =>
      e.message.includes(`anyone may change it (mode 0666): chmod 644 ${file}`),
    );
    await chmod(file, 0o644);
    await readTrusted(file);
  });
});

describe('a second hello for a registered layer (no keys)', () => {
  const tmp = tempDir('hello');

  it('is refused, whatever pid it claims, and the layer stays with its stage', async () => {
    const out = (...p: string[]) => tmp(...p);
    const reference = await runNode([...LAUNCH, '--quiet', '--out', out('reference')], {
      timeoutMs: 90_000,
    });
    assert.equal(reference.code, 0, reference.stderr);
    const run = startNode([...LAUNCH, '--out', out('challenged')], { timeoutMs: 120_000 });
    await waitForOutput(run.stderr, /\[coordinator\] epoch 1\/3 \d+% /, 60_000);
    const control = /coordinator on (tcp:\/\/127\.0\.0\.1:\d+)/.exec(run.stderr())![1]!;
    const pid = Number(/stage 1 \(pid (\d+)\)/.exec(run.stderr())![1]);
    const rogue = new Dealer({ linger: 0 });
    rogue.connect(control);
    try {
      await rogue.send(
        encodeControl({
          type: 'hello',
          layer: 1,
          last: 1,
          replica: 1,
          replicas: 1,
          version: PROTOCOL_VERSION,
          backend: 'wasm',
          endpoint: 'tcp://127.0.0.1:1',
          exchange: '',
          pid, // the real stage's
          host: hostname(),
          token: 'rogue',
          key: '',
          proof: '',
          holds: null,
        }),
      );
      const [frame] = await rogue.receive();
      const answer = decodeControl(frame!);
      assert.equal(answer.type, 'error');
      assert.equal(answer.type === 'error' && answer.code, 'STAGE_LAYER_TAKEN');
      // It names no pid or host of the stage that holds the layer.
      assert.ok(
        answer.type === 'error' && !answer.message.includes(String(pid)),
        answer.type === 'error' ? answer.message : '',
      );
    } finally {
      rogue.close();
    }
    const r = await run.result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.doesNotMatch(r.stderr, /replacing pid|recovering/);
    assert.equal(
      await maxWeightDiff(
        out('reference', 'model.safetensors'),
        out('challenged', 'model.safetensors'),
      ),
      0,
    );
  });
});

function curveDealer(keys: KeyPair, serverKey: string, endpoint: string): Dealer {
  const d = new Dealer({ linger: 0 });
  d.curveServerKey = serverKey;
  d.curvePublicKey = keys.publicKey;
  d.curveSecretKey = keys.secretKey;
  d.connect(endpoint);
  return d;
}
